//! `github-status`: reports Chengis build and job statuses as GitHub commit statuses
//! (`POST {api-url}/repos/{owner}/{repo}/statuses/{sha}`) on github.com or GitHub Enterprise
//! Server, with the token from a granted secret. See README.md for the state table.

use chengis_plugin_sdk::scm;
use chengis_plugin_sdk::scm_status::StatusUpdate;
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Manifest, ScmStatus, Status, export};
use serde_json::{Map, Value, json};

/// The API base URL used when `api-url` is not set.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The secret read when `token-secret` is not set.
pub const DEFAULT_TOKEN_SECRET: &str = "GITHUB_TOKEN";
/// GitHub refuses longer descriptions (422 "description is too long (maximum is 140 characters)").
pub const DESCRIPTION_LIMIT: usize = 140;
/// The longest context sent (GitHub stores up to 255 characters).
pub const CONTEXT_LIMIT: usize = 255;
/// The hosts whose repositories the default API URL serves.
const PUBLIC_HOSTS: &[&str] = &["github.com", "www.github.com", "ssh.github.com"];
/// The forge's name in messages.
const FORGE: &str = "GitHub";

/// The `github-status` plugin.
pub struct GithubStatus;

/// The GitHub state (`error`, `failure`, `pending`, `success`) for a Chengis status, and the
/// note the description gets when the state alone cannot say it.
pub fn github_state(status: Status) -> (&'static str, Option<&'static str>) {
    match status {
        Status::Pending => ("pending", None),
        Status::Running => ("pending", Some("Running")),
        Status::Success => ("success", None),
        Status::Failure => ("failure", None),
        Status::Cancelled => ("error", Some("Cancelled")),
        Status::Skipped => ("success", Some("Skipped")),
        Status::Error => ("error", None),
    }
}

impl ScmStatus for GithubStatus {
    fn manifest() -> Manifest {
        Manifest::new(
            "github-status",
            "0.1.0",
            "Reports build and job statuses as GitHub commit statuses",
            Kind::ScmStatus,
        )
        .outbound_http("https://api.github.com:443")
        .outbound_http("https://*:*")
        .outbound_http("http://*:*")
        .secret(DEFAULT_TOKEN_SECRET)
        .config(
            "api-url",
            "The REST API base URL: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server",
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
            "for GitHub Enterprise Server set api-url to https://HOST/api/v3",
        )?;
        let (owner, name) = repository.owner_and_name()?;
        if update.context.trim().is_empty() {
            return Err(Failure::new("the status update has no context (e.g. chengis/build)"));
        }
        let token = scm::token(host, &Self::manifest(), "token-secret", DEFAULT_TOKEN_SECRET)?;

        let (state, note) = github_state(update.state);
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
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("Authorization", format!("Bearer {token}"))
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

/// GitHub's error message: `message`, with the `errors[].message` (or `field` and `code`) of
/// a validation failure in parentheses; the body's first line when it is not JSON.
fn error_detail(response: &HttpResponse) -> Option<String> {
    let Ok(body) = serde_json::from_slice::<Value>(&response.body) else { return scm::body_excerpt(&response.body) };
    let message = body.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
    let errors: Vec<String> = body
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            Value::String(text) => Some(text.clone()),
            Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_string).or_else(|| {
                let field = o.get("field").and_then(Value::as_str)?;
                Some(format!("{field}: {}", o.get("code").and_then(Value::as_str).unwrap_or("invalid")))
            }),
            _ => None,
        })
        .collect();
    match (message.is_empty(), errors.is_empty()) {
        (true, true) => scm::body_excerpt(&response.body),
        (false, true) => Some(message),
        (true, false) => Some(errors.join("; ")),
        (false, false) => Some(format!("{message} ({})", errors.join("; "))),
    }
}

export!(GithubStatus as scm_status);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{
        FakeHost, SAMPLE_SHA as SHA, capability_grants, header, sample_status_update as update,
    };
    const TOKEN: &str = "ghp_s3cretT0ken";

    fn host(status: u16, body: &str) -> FakeHost {
        FakeHost::new()
            .with_secret("GITHUB_TOKEN", TOKEN)
            .with_http_response("https://", HttpResponse::new(status, body))
    }

    fn created() -> FakeHost {
        host(201, r#"{"id":1,"state":"success"}"#)
    }

    fn body(host: &FakeHost) -> Value {
        serde_json::from_slice(&host.requests()[0].body).unwrap()
    }

    #[test]
    fn sends_the_documented_request() {
        let host = created();
        GithubStatus::report(&host, update(Status::Success, "https://github.com/acme/web.git")).unwrap();
        let requests = host.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, format!("https://api.github.com/repos/acme/web/statuses/{SHA}"));
        assert_eq!(header(request, "Authorization"), Some("Bearer ghp_s3cretT0ken"));
        assert_eq!(header(request, "Accept"), Some("application/vnd.github+json"));
        assert_eq!(header(request, "X-GitHub-Api-Version"), Some("2022-11-28"));
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
        assert_eq!(host.log_text(), "GitHub: chengis/test (os=linux) is success on acme/web@0123456\n");
    }

    #[test]
    fn maps_every_status_explicitly() {
        let cases = [
            (Status::Pending, "pending", "Tests passed"),
            (Status::Running, "pending", "Running: Tests passed"),
            (Status::Success, "success", "Tests passed"),
            (Status::Failure, "failure", "Tests passed"),
            (Status::Cancelled, "error", "Cancelled: Tests passed"),
            (Status::Skipped, "success", "Skipped: Tests passed"),
            (Status::Error, "error", "Tests passed"),
        ];
        for (status, state, description) in cases {
            let host = created();
            GithubStatus::report(&host, update(status, "git@github.com:acme/web.git")).unwrap();
            let sent = body(&host);
            assert_eq!(sent["state"], state, "{status:?}");
            assert_eq!(sent["description"], description, "{status:?}");
        }
    }

    #[test]
    fn clone_url_forms_and_enterprise_api_url() {
        for repository in
            ["git@ghe.example:acme/web.git", "ssh://git@ghe.example:2222/acme/web", "https://u@ghe.example/acme/web/"]
        {
            let host = created().with_config("api-url", "https://ghe.example/api/v3/");
            GithubStatus::report(&host, update(Status::Success, repository)).unwrap();
            assert_eq!(host.requests()[0].url, format!("https://ghe.example/api/v3/repos/acme/web/statuses/{SHA}"));
        }
    }

    #[test]
    fn default_api_url_only_serves_github_com() {
        let host = created();
        let failure =
            GithubStatus::report(&host, update(Status::Success, "https://ghe.example/acme/web.git")).unwrap_err();
        assert!(
            failure.message.contains(r#"is not on github.com"#) && failure.message.contains("api-url"),
            "{}",
            failure.message
        );
        assert!(host.requests().is_empty());
    }

    #[test]
    fn long_descriptions_are_cut_and_missing_fields_left_out() {
        let host = created();
        let mut long = update(Status::Failure, "https://github.com/acme/web");
        long.description = "é".repeat(300);
        long.build.url = None;
        GithubStatus::report(&host, long).unwrap();
        let sent = body(&host);
        let description = sent["description"].as_str().unwrap();
        assert_eq!(description.chars().count(), DESCRIPTION_LIMIT);
        assert!(description.ends_with('…'));
        assert!(sent.get("target_url").is_none());

        let host = created();
        let mut empty = update(Status::Success, "https://github.com/acme/web");
        empty.description = " ".into();
        GithubStatus::report(&host, empty).unwrap();
        assert!(body(&host).get("description").is_none());
    }

    #[test]
    fn error_answers_name_github_status_and_message_not_the_token() {
        let answer = r#"{"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","field":"state","message":"state is not included in the list"}],"documentation_url":"https://docs.github.com/rest"}"#;
        let failure = GithubStatus::report(&host(422, answer), update(Status::Success, "https://github.com/acme/web"))
            .unwrap_err();
        assert_eq!(
            failure.message,
            "GitHub answered 422 Unprocessable Entity: Validation Failed (state is not included in the list)"
        );
        let failure = GithubStatus::report(
            &host(401, r#"{"message":"Bad credentials"}"#),
            update(Status::Success, "https://github.com/acme/web"),
        )
        .unwrap_err();
        assert_eq!(failure.message, "GitHub answered 401 Unauthorized: Bad credentials");
        let echo = format!(r#"{{"message":"token {TOKEN} is not valid"}}"#);
        let failure = GithubStatus::report(&host(403, &echo), update(Status::Success, "https://github.com/acme/web"))
            .unwrap_err();
        assert_eq!(failure.message, "GitHub answered 403 Forbidden: token *** is not valid");
        let failure = GithubStatus::report(
            &host(502, "<html>Bad gateway</html>"),
            update(Status::Success, "https://github.com/acme/web"),
        )
        .unwrap_err();
        assert_eq!(failure.message, "GitHub answered 502 Bad Gateway: <html>Bad gateway</html>");
        let errors_only = r#"{"errors":[{"field":"context","code":"missing"}]}"#;
        let failure =
            GithubStatus::report(&host(422, errors_only), update(Status::Success, "https://github.com/acme/web"))
                .unwrap_err();
        assert_eq!(failure.message, "GitHub answered 422 Unprocessable Entity: context: missing");
    }

    #[test]
    fn bad_inputs_fail_before_any_request() {
        let host = created();
        let mut short = update(Status::Success, "https://github.com/acme/web");
        short.build.commit.sha = "0123456".into();
        assert!(GithubStatus::report(&host, short).unwrap_err().message.contains("not a full 40-character"));
        let failure = GithubStatus::report(&host, update(Status::Success, "web")).unwrap_err();
        assert!(failure.message.starts_with(r#"repository URL "web" is not a clone URL"#), "{}", failure.message);
        let failure = GithubStatus::report(&host, update(Status::Success, "https://github.com/acme")).unwrap_err();
        assert!(failure.message.contains("expected OWNER/REPO"), "{}", failure.message);
        let mut no_context = update(Status::Success, "https://github.com/acme/web");
        no_context.context = String::new();
        assert!(GithubStatus::report(&host, no_context).unwrap_err().message.contains("no context"));
        let no_token = FakeHost::new().with_http_response("https://", HttpResponse::new(201, "{}"));
        let failure =
            GithubStatus::report(&no_token, update(Status::Success, "https://github.com/acme/web")).unwrap_err();
        assert!(failure.message.contains(r#"secret "GITHUB_TOKEN""#), "{}", failure.message);
        let bad_url = created().with_config("api-url", "api.github.com");
        let failure =
            GithubStatus::report(&bad_url, update(Status::Success, "https://github.com/acme/web")).unwrap_err();
        assert!(failure.message.contains(r#"config key "api-url""#), "{}", failure.message);
        assert!(host.requests().is_empty() && no_token.requests().is_empty() && bad_url.requests().is_empty());
    }

    #[test]
    fn manifest_requests_the_public_api_any_configured_host_and_the_token() {
        let manifest = GithubStatus::manifest();
        assert_eq!(manifest.kinds, [Kind::ScmStatus]);
        assert_eq!(
            capability_grants(&manifest),
            ["http:https://api.github.com:443", "http:https://*:*", "http:http://*:*", "secret:GITHUB_TOKEN"]
        );
        let keys: Vec<_> = manifest.config.iter().map(|c| (c.name.as_str(), c.default.as_deref())).collect();
        assert_eq!(
            keys,
            [("api-url", Some(DEFAULT_API_URL)), ("repository", None), ("token-secret", Some(DEFAULT_TOKEN_SECRET))]
        );
    }
}
