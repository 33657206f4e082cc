//! `gitea-status`: reports Chengis build and job statuses as Gitea commit statuses
//! (`POST {api-url}/repos/{owner}/{repo}/statuses/{sha}`) on gitea.com or a self-hosted Gitea
//! (or Forgejo), with the token from a granted secret. See README.md for the state table.

use chengis_plugin_sdk::scm::{self, Repository, RepositoryUrlError};
use chengis_plugin_sdk::scm_status::StatusUpdate;
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Manifest, ScmStatus, Status, export};
use serde_json::{Map, Value, json};

/// The API base URL used when `api-url` is not set.
pub const DEFAULT_API_URL: &str = "https://gitea.com/api/v1";
/// The secret read when `token-secret` is not set.
pub const DEFAULT_TOKEN_SECRET: &str = "GITEA_TOKEN";
/// The longest description sent. Gitea stores descriptions as text with no documented API
/// limit; 255 characters keeps the commit status list readable and matches GitLab.
pub const DESCRIPTION_LIMIT: usize = 255;
/// The longest context sent.
pub const CONTEXT_LIMIT: usize = 255;
/// The hosts whose repositories the default API URL serves.
const PUBLIC_HOSTS: &[&str] = &["gitea.com", "www.gitea.com"];
/// The forge's name in messages.
const FORGE: &str = "Gitea";

/// The `gitea-status` plugin.
pub struct GiteaStatus;

/// The Gitea state (`pending`, `success`, `error`, `failure`, `warning`) for a Chengis status,
/// and the note the description gets when the state alone cannot say it.
pub fn gitea_state(status: Status) -> (&'static str, Option<&'static str>) {
    match status {
        Status::Pending => ("pending", None),
        Status::Running => ("pending", Some("Running")),
        Status::Success => ("success", None),
        Status::Failure => ("failure", None),
        Status::Cancelled => ("warning", Some("Cancelled")),
        Status::Skipped => ("success", Some("Skipped")),
        Status::Error => ("error", None),
    }
}

impl ScmStatus for GiteaStatus {
    fn manifest() -> Manifest {
        Manifest::new("gitea-status", "0.1.0", "Reports build and job statuses as Gitea commit statuses", Kind::ScmStatus)
            .outbound_http("https://gitea.com:443")
            .outbound_http("https://*:*")
            .outbound_http("http://*:*")
            .secret(DEFAULT_TOKEN_SECRET)
            .config(
                "api-url",
                "The REST API base URL: https://gitea.com/api/v1, or https://HOST/api/v1 for a self-hosted Gitea or Forgejo",
                false,
                Some(DEFAULT_API_URL),
            )
            .config(
            "repository",
            "The repository to report on (owner/repo), instead of the one the clone URL names",
            false,
            None,
        )
        .config("token-secret", "The granted secret holding the API token", false, Some(DEFAULT_TOKEN_SECRET))
    }

    fn report(host: &dyn Host, update: StatusUpdate) -> Result<(), Failure> {
        let configured = scm::base_url(host, "api-url")?;
        let commit = &update.build.commit;
        scm::check_commit_sha(&commit.sha)?;
        let repository = scm::repository(
            host,
            &commit.repository,
            configured.is_some(),
            PUBLIC_HOSTS,
            "for a self-hosted Gitea or Forgejo set api-url to https://HOST/api/v1",
        )?;
        let (owner, name) = owner_and_name(&repository)?;
        if update.context.trim().is_empty() {
            return Err(Failure::new("the status update has no context (e.g. chengis/build)"));
        }
        let token = scm::token(host, &Self::manifest(), "token-secret", DEFAULT_TOKEN_SECRET)?;

        let (state, note) = gitea_state(update.state);
        let description =
            note.map_or_else(|| update.description.trim().to_string(), |n| scm::with_note(&update.description, n));
        let mut body = Map::new();
        body.insert("state".into(), json!(state));
        body.insert("context".into(), json!(scm::truncate_chars(update.context.trim(), CONTEXT_LIMIT)));
        if !description.is_empty() {
            body.insert("description".into(), json!(scm::truncate_chars(&description, DESCRIPTION_LIMIT)));
        }
        if let Some(url) = update.build.url.as_deref().filter(|u| !u.is_empty()) {
            body.insert("target_url".into(), json!(url));
        }

        let base = configured.as_deref().unwrap_or(DEFAULT_API_URL);
        let url = format!(
            "{base}/repos/{}/{}/statuses/{}",
            scm::encode_path_segment(owner),
            scm::encode_path_segment(name),
            commit.sha
        );
        let request = HttpRequest::post(url, Value::Object(body).to_string())
            .header("Accept", "application/json")
            .header("Authorization", format!("token {token}"))
            .header("Content-Type", "application/json")
            .header("User-Agent", "chengis");
        let response = host.http(&request).map_err(|e| Failure::new(format!("{FORGE}: {e}")))?;
        if !response.is_success() {
            return Err(scm::api_failure(FORGE, response.status, error_detail(&response).as_deref(), &token));
        }
        let short = &commit.sha[..7];
        host.info(&format!("{FORGE}: {} is {state} on {owner}/{name}@{short}", update.context.trim()));
        Ok(())
    }
}

/// The owner and repository: the last two path segments (a Gitea served under a sub-path,
/// `https://HOST/gitea/owner/repo.git`, has more).
fn owner_and_name(repository: &Repository) -> Result<(&str, &str), RepositoryUrlError> {
    match repository.segments.as_slice() {
        [.., owner, name] => Ok((owner, name)),
        _ => repository.owner_and_name(),
    }
}

/// Gitea's error message: `message` (with the field errors of a 422 binding error array); the
/// body's first line when it is not JSON.
fn error_detail(response: &HttpResponse) -> Option<String> {
    let Ok(body) = serde_json::from_slice::<Value>(&response.body) else { return scm::body_excerpt(&response.body) };
    let detail = match &body {
        Value::Object(fields) => fields.get("message").and_then(Value::as_str).map(str::to_string),
        Value::Array(errors) => {
            let messages: Vec<&str> = errors.iter().filter_map(|e| e.get("message").and_then(Value::as_str)).collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        _ => None,
    };
    detail.filter(|d| !d.trim().is_empty()).or_else(|| scm::body_excerpt(&response.body))
}

export!(GiteaStatus as scm_status);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{
        FakeHost, SAMPLE_SHA as SHA, capability_grants, header, sample_status_update as update,
    };
    const TOKEN: &str = "gitea_s3cretT0ken";

    fn host(status: u16, body: &str) -> FakeHost {
        FakeHost::new()
            .with_secret("GITEA_TOKEN", TOKEN)
            .with_http_response("https://", HttpResponse::new(status, body))
    }

    fn created() -> FakeHost {
        host(201, r#"{"id":1,"status":"success"}"#)
    }

    fn body(host: &FakeHost) -> Value {
        serde_json::from_slice(&host.requests()[0].body).unwrap()
    }

    #[test]
    fn sends_the_documented_request() {
        let host = created();
        GiteaStatus::report(&host, update(Status::Success, "https://gitea.com/acme/web.git")).unwrap();
        let requests = host.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, format!("https://gitea.com/api/v1/repos/acme/web/statuses/{SHA}"));
        assert_eq!(header(request, "Authorization"), Some("token gitea_s3cretT0ken"));
        assert_eq!(header(request, "Accept"), Some("application/json"));
        assert_eq!(header(request, "Content-Type"), Some("application/json"));
        assert_eq!(header(request, "User-Agent"), Some("chengis"));
        assert_eq!(
            body(&host),
            json!({
                "state": "success",
                "context": "chengis/test (os=linux)",
                "description": "Tests passed",
                "target_url": "https://ci.example/builds/9",
            })
        );
        assert_eq!(host.log_text(), "Gitea: chengis/test (os=linux) is success on acme/web@0123456\n");
    }

    #[test]
    fn maps_every_status_explicitly() {
        let cases = [
            (Status::Pending, "pending", "Tests passed"),
            (Status::Running, "pending", "Running: Tests passed"),
            (Status::Success, "success", "Tests passed"),
            (Status::Failure, "failure", "Tests passed"),
            (Status::Cancelled, "warning", "Cancelled: Tests passed"),
            (Status::Skipped, "success", "Skipped: Tests passed"),
            (Status::Error, "error", "Tests passed"),
        ];
        for (status, state, description) in cases {
            let host = created();
            GiteaStatus::report(&host, update(status, "git@gitea.com:acme/web.git")).unwrap();
            let sent = body(&host);
            assert_eq!(sent["state"], state, "{status:?}");
            assert_eq!(sent["description"], description, "{status:?}");
        }
    }

    #[test]
    fn clone_url_forms_and_self_hosted_api_url() {
        for repository in [
            "git@git.example:acme/web.git",
            "ssh://git@git.example:2222/acme/web",
            "https://u:p@git.example:3000/acme/web.git",
            "https://git.example/gitea/acme/web/",
        ] {
            let host = created().with_config("api-url", "https://git.example/api/v1/");
            GiteaStatus::report(&host, update(Status::Success, repository)).unwrap();
            assert_eq!(host.requests()[0].url, format!("https://git.example/api/v1/repos/acme/web/statuses/{SHA}"));
        }
        let failure = GiteaStatus::report(&created(), update(Status::Success, "https://gitea.com/web")).unwrap_err();
        assert!(failure.message.contains("expected OWNER/REPO"), "{}", failure.message);
    }

    #[test]
    fn default_api_url_only_serves_gitea_com() {
        let host = created();
        let failure =
            GiteaStatus::report(&host, update(Status::Success, "https://git.example/acme/web.git")).unwrap_err();
        assert!(
            failure.message.contains("is not on gitea.com") && failure.message.contains("api-url"),
            "{}",
            failure.message
        );
        assert!(host.requests().is_empty());
    }

    #[test]
    fn long_descriptions_are_cut_and_missing_fields_left_out() {
        let host = created();
        let mut long = update(Status::Failure, "https://gitea.com/acme/web");
        long.description = "ö".repeat(400);
        long.build.url = None;
        GiteaStatus::report(&host, long).unwrap();
        let sent = body(&host);
        let description = sent["description"].as_str().unwrap();
        assert_eq!(description.chars().count(), DESCRIPTION_LIMIT);
        assert!(description.ends_with('…'));
        assert!(sent.get("target_url").is_none());
    }

    #[test]
    fn error_answers_name_gitea_status_and_message_not_the_token() {
        let cases = [
            (
                401,
                r#"{"message":"user does not exist [uid: 0, name: ]","url":"https://gitea.com/api/swagger"}"#,
                "Gitea answered 401 Unauthorized: user does not exist [uid: 0, name: ]",
            ),
            (
                404,
                r#"{"errors":null,"message":"not found","url":"https://gitea.com/api/swagger"}"#,
                "Gitea answered 404 Not Found: not found",
            ),
            (
                422,
                r#"[{"fieldNames":["State"],"classification":"InvalidState","message":"invalid state"}]"#,
                "Gitea answered 422 Unprocessable Entity: invalid state",
            ),
            (
                403,
                r#"{"message":"token gitea_s3cretT0ken lacks scope write:repository"}"#,
                "Gitea answered 403 Forbidden: token *** lacks scope write:repository",
            ),
            (500, "", "Gitea answered 500 Internal Server Error"),
        ];
        for (status, answer, expected) in cases {
            let failure =
                GiteaStatus::report(&host(status, answer), update(Status::Success, "https://gitea.com/acme/web"))
                    .unwrap_err();
            assert_eq!(failure.message, expected);
        }
    }

    #[test]
    fn bad_inputs_fail_before_any_request() {
        let host = created();
        let mut short = update(Status::Success, "https://gitea.com/acme/web");
        short.build.commit.sha = "0123456789abcdef0123456789abcdef0123456z".into();
        assert!(GiteaStatus::report(&host, short).unwrap_err().message.contains("not a full 40-character"));
        let failure = GiteaStatus::report(&host, update(Status::Success, "ftp://gitea.com/acme/web")).unwrap_err();
        assert!(failure.message.contains("unsupported scheme"), "{}", failure.message);
        let no_token = FakeHost::new().with_http_response("https://", HttpResponse::new(201, "{}"));
        let failure =
            GiteaStatus::report(&no_token, update(Status::Success, "https://gitea.com/acme/web")).unwrap_err();
        assert!(failure.message.contains(r#"secret "GITEA_TOKEN""#), "{}", failure.message);
        assert!(host.requests().is_empty() && no_token.requests().is_empty());
    }

    #[test]
    fn manifest_requests_the_public_api_any_configured_host_and_the_token() {
        let manifest = GiteaStatus::manifest();
        assert_eq!(manifest.kinds, [Kind::ScmStatus]);
        assert_eq!(
            capability_grants(&manifest),
            ["http:https://gitea.com:443", "http:https://*:*", "http:http://*:*", "secret:GITEA_TOKEN"]
        );
        let keys: Vec<_> = manifest.config.iter().map(|c| (c.name.as_str(), c.default.as_deref())).collect();
        assert_eq!(
            keys,
            [("api-url", Some(DEFAULT_API_URL)), ("repository", None), ("token-secret", Some(DEFAULT_TOKEN_SECRET))]
        );
    }
}
