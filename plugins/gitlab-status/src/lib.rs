//! `gitlab-status`: reports Chengis build and job statuses as GitLab commit statuses
//! (`POST {api-url}/projects/{id}/statuses/{sha}`) on gitlab.com or a self-hosted GitLab, with
//! the token from a granted secret. The project is the clone URL's path (nested groups
//! included, URL-encoded) or the `project-id` override. See README.md for the state table.

use chengis_plugin_sdk::scm;
use chengis_plugin_sdk::scm_status::StatusUpdate;
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Manifest, ScmStatus, Status, export};
use serde_json::{Map, Value, json};

/// The API base URL used when `api-url` is not set.
pub const DEFAULT_API_URL: &str = "https://gitlab.com/api/v4";
/// The secret read when `token-secret` is not set.
pub const DEFAULT_TOKEN_SECRET: &str = "GITLAB_TOKEN";
/// GitLab's limit for `description` ("Must be 255 characters or fewer").
pub const DESCRIPTION_LIMIT: usize = 255;
/// GitLab's limit for `name` (a 255-character column).
pub const NAME_LIMIT: usize = 255;
/// The hosts whose repositories the default API URL serves.
const PUBLIC_HOSTS: &[&str] = &["gitlab.com", "www.gitlab.com", "altssh.gitlab.com"];
/// What GitLab answers (400) when a status is posted again in the state it already has.
const SAME_STATE: &str = "Cannot transition status via";
/// The forge's name in messages.
const FORGE: &str = "GitLab";

/// The `gitlab-status` plugin.
pub struct GitlabStatus;

/// The GitLab state (`pending`, `running`, `success`, `failed`, `canceled`) for a Chengis
/// status, and the note the description gets when the state alone cannot say it.
///
/// Recent GitLab versions also accept `skipped`; it is not used, so that older self-hosted
/// instances accept every status.
pub fn gitlab_state(status: Status) -> (&'static str, Option<&'static str>) {
    match status {
        Status::Pending => ("pending", None),
        Status::Running => ("running", None),
        Status::Success => ("success", None),
        Status::Failure => ("failed", None),
        Status::Cancelled => ("canceled", None),
        Status::Skipped => ("success", Some("Skipped")),
        Status::Error => ("failed", Some("Error")),
    }
}

impl ScmStatus for GitlabStatus {
    fn manifest() -> Manifest {
        Manifest::new(
            "gitlab-status",
            "0.1.0",
            "Reports build and job statuses as GitLab commit statuses",
            Kind::ScmStatus,
        )
        .outbound_http("https://gitlab.com:443")
        .outbound_http("https://*:*")
        .outbound_http("http://*:*")
        .secret(DEFAULT_TOKEN_SECRET)
        .config(
            "api-url",
            "The REST API base URL: https://gitlab.com/api/v4, or https://HOST/api/v4 for a self-hosted GitLab",
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
        .config(
            "project-id",
            "The project's numeric id or full path (group/sub/project); the clone URL's path when not set",
            false,
            None,
        )
    }

    fn report(host: &dyn Host, update: StatusUpdate) -> Result<(), Failure> {
        let configured = scm::base_url(host, "api-url")?;
        let commit = &update.build.commit;
        scm::check_commit_sha(&commit.sha)?;
        let project = match host.config().optional::<String>("project-id")? {
            Some(id) => project_from_config(&id)?,
            None => {
                let repository = scm::repository(
                    host,
                    &commit.repository,
                    configured.is_some(),
                    PUBLIC_HOSTS,
                    "for a self-hosted GitLab set api-url to https://HOST/api/v4",
                )?;
                repository.path()
            }
        };
        if update.context.trim().is_empty() {
            return Err(Failure::new("the status update has no context (e.g. chengis/build)"));
        }
        let token = scm::token(host, &Self::manifest(), "token-secret", DEFAULT_TOKEN_SECRET)?;

        let (state, note) = gitlab_state(update.state);
        let description =
            note.map_or_else(|| update.description.trim().to_string(), |n| scm::with_note(&update.description, n));
        let name = scm::truncate_chars(update.context.trim(), NAME_LIMIT);
        let mut body = Map::new();
        body.insert("state".into(), json!(state));
        body.insert("name".into(), json!(name));
        if !description.is_empty() {
            body.insert("description".into(), json!(scm::truncate_chars(&description, DESCRIPTION_LIMIT)));
        }
        if let Some(url) = update.build.url.as_deref().filter(|u| !u.is_empty()) {
            body.insert("target_url".into(), json!(url));
        }
        if let Some(reference) = commit.branch.as_deref().or(commit.tag.as_deref()).filter(|r| !r.is_empty()) {
            body.insert("ref".into(), json!(reference));
        }

        let base = configured.as_deref().unwrap_or(DEFAULT_API_URL);
        let url = format!("{base}/projects/{}/statuses/{}", scm::encode_path_segment(&project), commit.sha);
        let request = HttpRequest::post(url, Value::Object(body).to_string())
            .header("Accept", "application/json")
            .header("PRIVATE-TOKEN", token.as_str())
            .header("Content-Type", "application/json")
            .header("User-Agent", "chengis");
        let response = host.http(&request).map_err(|e| Failure::new(format!("{FORGE}: {e}")))?;
        let short = &commit.sha[..7];
        if !response.is_success() {
            let detail = error_detail(&response);
            if response.status == 400 && detail.as_deref().is_some_and(|d| d.contains(SAME_STATE)) {
                host.info(&format!("{FORGE}: {name} is already {state} on {project}@{short} (nothing to change)"));
                return Ok(());
            }
            return Err(scm::api_failure(FORGE, response.status, detail.as_deref(), &token));
        }
        host.info(&format!("{FORGE}: {name} is {state} on {project}@{short}"));
        Ok(())
    }
}

/// The project from `project-id`: a number, or a path whose surrounding slashes are dropped.
fn project_from_config(id: &str) -> Result<String, Failure> {
    let id = id.trim().trim_matches('/');
    if id.is_empty() {
        return Err(chengis_plugin_sdk::ConfigError {
            key: "project-id".into(),
            message: "is empty: expected a project id (1234) or path (group/project)".into(),
        }
        .into());
    }
    Ok(id.to_string())
}

/// GitLab's error message: `message` (text, or `{field: [problems]}` for validation errors),
/// or `error` with `error_description` (OAuth errors); the body's first line otherwise.
fn error_detail(response: &HttpResponse) -> Option<String> {
    let Ok(body) = serde_json::from_slice::<Value>(&response.body) else { return scm::body_excerpt(&response.body) };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    let detail = match (body.get("message"), body.get("error")) {
        (Some(Value::Object(fields)), _) => {
            fields.iter().map(|(field, problems)| format!("{field} {}", text(problems))).collect::<Vec<_>>().join("; ")
        }
        (Some(message), _) => text(message),
        (None, Some(error)) => match body.get("error_description") {
            Some(description) => format!("{}: {}", text(error), text(description)),
            None => text(error),
        },
        (None, None) => return scm::body_excerpt(&response.body),
    };
    Some(detail)
}

export!(GitlabStatus as scm_status);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{
        FakeHost, SAMPLE_SHA as SHA, capability_grants, header, sample_status_update as update,
    };
    const TOKEN: &str = "glpat-s3cretT0ken";

    fn host(status: u16, body: &str) -> FakeHost {
        FakeHost::new()
            .with_secret("GITLAB_TOKEN", TOKEN)
            .with_http_response("https://", HttpResponse::new(status, body))
    }

    fn created() -> FakeHost {
        host(201, r#"{"id":93,"status":"success"}"#)
    }

    fn body(host: &FakeHost) -> Value {
        serde_json::from_slice(&host.requests()[0].body).unwrap()
    }

    #[test]
    fn sends_the_documented_request() {
        let host = created();
        GitlabStatus::report(&host, update(Status::Success, "https://gitlab.com/acme/platform/web.git")).unwrap();
        let requests = host.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, format!("https://gitlab.com/api/v4/projects/acme%2Fplatform%2Fweb/statuses/{SHA}"));
        assert_eq!(header(request, "PRIVATE-TOKEN"), Some(TOKEN));
        assert_eq!(header(request, "Accept"), Some("application/json"));
        assert_eq!(header(request, "Content-Type"), Some("application/json"));
        assert_eq!(header(request, "User-Agent"), Some("chengis"));
        assert_eq!(header(request, "Authorization"), None);
        assert_eq!(
            body(&host),
            json!({
                "state": "success",
                "name": "chengis/test (os=linux)",
                "description": "Tests passed",
                "target_url": "https://ci.example/builds/9",
                "ref": "main",
            })
        );
        assert_eq!(host.log_text(), "GitLab: chengis/test (os=linux) is success on acme/platform/web@0123456\n");
    }

    #[test]
    fn maps_every_status_explicitly() {
        let cases = [
            (Status::Pending, "pending", "Tests passed"),
            (Status::Running, "running", "Tests passed"),
            (Status::Success, "success", "Tests passed"),
            (Status::Failure, "failed", "Tests passed"),
            (Status::Cancelled, "canceled", "Tests passed"),
            (Status::Skipped, "success", "Skipped: Tests passed"),
            (Status::Error, "failed", "Error: Tests passed"),
        ];
        for (status, state, description) in cases {
            let host = created();
            GitlabStatus::report(&host, update(status, "git@gitlab.com:acme/web.git")).unwrap();
            let sent = body(&host);
            assert_eq!(sent["state"], state, "{status:?}");
            assert_eq!(sent["description"], description, "{status:?}");
        }
    }

    #[test]
    fn clone_url_forms_self_hosted_and_project_override() {
        for repository in [
            "git@git.example:acme/platform/web.git",
            "ssh://git@git.example:2222/acme/platform/web",
            "https://u:p@git.example:8443/acme/platform/web.git/",
        ] {
            let host = created().with_config("api-url", "https://git.example/api/v4/");
            GitlabStatus::report(&host, update(Status::Running, repository)).unwrap();
            assert_eq!(
                host.requests()[0].url,
                format!("https://git.example/api/v4/projects/acme%2Fplatform%2Fweb/statuses/{SHA}")
            );
        }
        let host = created().with_config("project-id", "1234");
        GitlabStatus::report(&host, update(Status::Running, "https://mirror.example/x.git")).unwrap();
        assert_eq!(host.requests()[0].url, format!("https://gitlab.com/api/v4/projects/1234/statuses/{SHA}"));
        let host = created().with_config("project-id", "/acme/web/");
        GitlabStatus::report(&host, update(Status::Running, "not a url")).unwrap();
        assert_eq!(host.requests()[0].url, format!("https://gitlab.com/api/v4/projects/acme%2Fweb/statuses/{SHA}"));
        let failure =
            GitlabStatus::report(&created().with_config("project-id", " "), update(Status::Running, "x")).unwrap_err();
        assert!(failure.message.contains(r#"config key "project-id""#), "{}", failure.message);
    }

    #[test]
    fn default_api_url_only_serves_gitlab_com() {
        let host = created();
        let failure =
            GitlabStatus::report(&host, update(Status::Success, "https://git.example/acme/web.git")).unwrap_err();
        assert!(
            failure.message.contains("is not on gitlab.com") && failure.message.contains("api-url"),
            "{}",
            failure.message
        );
        assert!(host.requests().is_empty());
    }

    #[test]
    fn long_descriptions_are_cut_and_missing_fields_left_out() {
        let host = created();
        let mut long = update(Status::Failure, "https://gitlab.com/acme/web");
        long.description = "ü".repeat(400);
        long.build.url = None;
        long.build.commit.branch = None;
        long.build.commit.tag = Some("v1.0".into());
        GitlabStatus::report(&host, long).unwrap();
        let sent = body(&host);
        let description = sent["description"].as_str().unwrap();
        assert_eq!(description.chars().count(), DESCRIPTION_LIMIT);
        assert!(description.ends_with('…'));
        assert!(sent.get("target_url").is_none());
        assert_eq!(sent["ref"], "v1.0");
    }

    #[test]
    fn repeating_a_state_is_not_an_error() {
        let answer = r#"{"message":"Cannot transition status via :run from :running (Reason(s): Status cannot transition via \"run\")"}"#;
        let host = host(400, answer);
        GitlabStatus::report(&host, update(Status::Running, "https://gitlab.com/acme/web")).unwrap();
        assert_eq!(
            host.log_text(),
            "GitLab: chengis/test (os=linux) is already running on acme/web@0123456 (nothing to change)\n"
        );
    }

    #[test]
    fn error_answers_name_gitlab_status_and_message_not_the_token() {
        let cases = [
            (401, r#"{"message":"401 Unauthorized"}"#, "GitLab answered 401 Unauthorized: 401 Unauthorized"),
            (404, r#"{"message":"404 Project Not Found"}"#, "GitLab answered 404 Not Found: 404 Project Not Found"),
            (
                400,
                r#"{"error":"state does not have a valid value"}"#,
                "GitLab answered 400 Bad Request: state does not have a valid value",
            ),
            (
                400,
                r#"{"message":{"name":["is too long","is invalid"]}}"#,
                "GitLab answered 400 Bad Request: name is too long, is invalid",
            ),
            (
                401,
                r#"{"error":"invalid_token","error_description":"Token was revoked. You have to re-authorize from the user."}"#,
                "GitLab answered 401 Unauthorized: invalid_token: Token was revoked. You have to re-authorize from the user.",
            ),
            (
                403,
                r#"{"message":"403 Forbidden - glpat-s3cretT0ken"}"#,
                "GitLab answered 403 Forbidden: 403 Forbidden - ***",
            ),
            (503, "upstream down", "GitLab answered 503 Service Unavailable: upstream down"),
        ];
        for (status, answer, expected) in cases {
            let failure =
                GitlabStatus::report(&host(status, answer), update(Status::Success, "https://gitlab.com/acme/web"))
                    .unwrap_err();
            assert_eq!(failure.message, expected);
        }
    }

    #[test]
    fn bad_inputs_fail_before_any_request() {
        let host = created();
        let mut short = update(Status::Success, "https://gitlab.com/acme/web");
        short.build.commit.sha = "xyz".into();
        assert!(GitlabStatus::report(&host, short).unwrap_err().message.contains("not a full 40-character"));
        let failure = GitlabStatus::report(&host, update(Status::Success, "")).unwrap_err();
        assert!(failure.message.contains("is empty"), "{}", failure.message);
        let no_token = FakeHost::new().with_http_response("https://", HttpResponse::new(201, "{}"));
        let failure =
            GitlabStatus::report(&no_token, update(Status::Success, "https://gitlab.com/acme/web")).unwrap_err();
        assert!(failure.message.contains(r#"secret "GITLAB_TOKEN""#), "{}", failure.message);
        assert!(host.requests().is_empty() && no_token.requests().is_empty());
    }

    #[test]
    fn manifest_requests_the_public_api_any_configured_host_and_the_token() {
        let manifest = GitlabStatus::manifest();
        assert_eq!(manifest.kinds, [Kind::ScmStatus]);
        assert_eq!(
            capability_grants(&manifest),
            ["http:https://gitlab.com:443", "http:https://*:*", "http:http://*:*", "secret:GITLAB_TOKEN"]
        );
        let keys: Vec<_> = manifest.config.iter().map(|c| (c.name.as_str(), c.default.as_deref())).collect();
        assert_eq!(
            keys,
            [
                ("api-url", Some(DEFAULT_API_URL)),
                ("repository", None),
                ("token-secret", Some(DEFAULT_TOKEN_SECRET)),
                ("project-id", None)
            ]
        );
    }
}
