//! `bitbucket-status`: reports Chengis build and job statuses as Bitbucket Cloud commit build
//! statuses (`POST {api-url}/repositories/{workspace}/{repo_slug}/commit/{sha}/statuses/build`),
//! one stable `key` per context so that later states overwrite earlier ones, with the token
//! from a granted secret. See README.md for the state table.

use base64::Engine as _;
use chengis_plugin_sdk::scm;
use chengis_plugin_sdk::scm_status::StatusUpdate;
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Manifest, ScmStatus, Status, export};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The API base URL used when `api-url` is not set.
pub const DEFAULT_API_URL: &str = "https://api.bitbucket.org/2.0";
/// The secret read when `token-secret` is not set.
pub const DEFAULT_TOKEN_SECRET: &str = "BITBUCKET_TOKEN";
/// The longest key sent; a longer context gets a shortened, hashed key.
pub const KEY_LIMIT: usize = 40;
/// The longest description sent.
pub const DESCRIPTION_LIMIT: usize = 255;
/// The longest name sent.
pub const NAME_LIMIT: usize = 255;
/// The hosts whose repositories the default API URL serves.
const PUBLIC_HOSTS: &[&str] = &["bitbucket.org", "www.bitbucket.org", "altssh.bitbucket.org"];
/// The forge's name in messages.
const FORGE: &str = "Bitbucket";

/// The `bitbucket-status` plugin.
pub struct BitbucketStatus;

/// The Bitbucket state (`INPROGRESS`, `SUCCESSFUL`, `FAILED`, `STOPPED`) for a Chengis status,
/// and the note the description gets when the state alone cannot say it.
pub fn bitbucket_state(status: Status) -> (&'static str, Option<&'static str>) {
    match status {
        Status::Pending => ("INPROGRESS", None),
        Status::Running => ("INPROGRESS", None),
        Status::Success => ("SUCCESSFUL", None),
        Status::Failure => ("FAILED", None),
        Status::Cancelled => ("STOPPED", None),
        Status::Skipped => ("SUCCESSFUL", Some("Skipped")),
        Status::Error => ("FAILED", Some("Error")),
    }
}

/// The status key for a context: the context itself when it has at most [`KEY_LIMIT`]
/// characters, else its first 23 characters, `-` and 16 hex digits of its SHA-256. The same
/// context always gives the same key, so each state of a job overwrites the previous one.
pub fn status_key(context: &str) -> String {
    if context.chars().count() <= KEY_LIMIT {
        return context.to_string();
    }
    let digest = Sha256::digest(context.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let prefix: String = context.chars().take(KEY_LIMIT - 17).collect();
    format!("{prefix}-{hash}")
}

impl ScmStatus for BitbucketStatus {
    fn manifest() -> Manifest {
        Manifest::new(
            "bitbucket-status",
            "0.1.0",
            "Reports build and job statuses as Bitbucket Cloud commit build statuses",
            Kind::ScmStatus,
        )
        .outbound_http("https://api.bitbucket.org:443")
        .outbound_http("https://*:*")
        .outbound_http("http://*:*")
        .secret(DEFAULT_TOKEN_SECRET)
        .config("api-url", "The REST API base URL (a proxy or a test server)", false, Some(DEFAULT_API_URL))
        .config(
            "repository",
            "The repository to report on (owner/repo), instead of the one the clone URL names",
            false,
            None,
        )
        .config("token-secret", "The granted secret holding the access token or password", false, Some(DEFAULT_TOKEN_SECRET))
        .config(
            "username",
            "Send HTTP Basic auth as this user (app passwords, or the account e-mail for API tokens) instead of a Bearer token",
            false,
            None,
        )
    }

    fn report(host: &dyn Host, update: StatusUpdate) -> Result<(), Failure> {
        let configured = scm::base_url(host, "api-url")?;
        let username: Option<String> = host.config().optional("username")?;
        let commit = &update.build.commit;
        scm::check_commit_sha(&commit.sha)?;
        let repository = scm::repository(
            host,
            &commit.repository,
            configured.is_some(),
            PUBLIC_HOSTS,
            "this plugin reports to Bitbucket Cloud (bitbucket.org); Bitbucket Data Center has another API",
        )?;
        let (workspace, slug) = repository.owner_and_name()?;
        let context = update.context.trim();
        if context.is_empty() {
            return Err(Failure::new("the status update has no context (e.g. chengis/build)"));
        }
        let token = scm::token(host, &Self::manifest(), "token-secret", DEFAULT_TOKEN_SECRET)?;

        let (state, note) = bitbucket_state(update.state);
        let description =
            note.map_or_else(|| update.description.trim().to_string(), |n| scm::with_note(&update.description, n));
        let (workspace, slug) = (scm::encode_path_segment(workspace), scm::encode_path_segment(slug));
        let link = match update.build.url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => url.to_string(),
            None => format!("https://bitbucket.org/{workspace}/{slug}/commits/{}", commit.sha),
        };
        let key = status_key(context);
        let mut body = Map::new();
        body.insert("key".into(), json!(key));
        body.insert("state".into(), json!(state));
        body.insert("name".into(), json!(scm::truncate_chars(context, NAME_LIMIT)));
        body.insert("url".into(), json!(link));
        if !description.is_empty() {
            body.insert("description".into(), json!(scm::truncate_chars(&description, DESCRIPTION_LIMIT)));
        }
        if let Some(reference) = commit.branch.as_deref().or(commit.tag.as_deref()).filter(|r| !r.is_empty()) {
            body.insert("refname".into(), json!(reference));
        }

        let authorization = match username.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(user) => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
            }
            None => format!("Bearer {token}"),
        };
        let base = configured.as_deref().unwrap_or(DEFAULT_API_URL);
        let url = format!("{base}/repositories/{workspace}/{slug}/commit/{}/statuses/build", commit.sha);
        let request = HttpRequest::post(url, Value::Object(body).to_string())
            .header("Accept", "application/json")
            .header("Authorization", authorization)
            .header("Content-Type", "application/json")
            .header("User-Agent", "chengis");
        let response = host.http(&request).map_err(|e| Failure::new(format!("{FORGE}: {e}")))?;
        if !response.is_success() {
            return Err(scm::api_failure(FORGE, response.status, error_detail(&response).as_deref(), &token));
        }
        let short = &commit.sha[..7];
        host.info(&format!("{FORGE}: {context} (key {key}) is {state} on {workspace}/{slug}@{short}"));
        Ok(())
    }
}

/// Bitbucket's error message: `error.message`, with `error.detail` (text, or field errors) in
/// parentheses; the body's first line when it is not JSON.
fn error_detail(response: &HttpResponse) -> Option<String> {
    let Ok(body) = serde_json::from_slice::<Value>(&response.body) else { return scm::body_excerpt(&response.body) };
    let error = body.get("error");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or_default();
    let detail = match error.and_then(|e| e.get("detail")) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(fields)) => fields
            .iter()
            .map(|(field, problem)| match problem {
                Value::Array(items) => {
                    format!("{field}: {}", items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                }
                Value::String(text) => format!("{field}: {text}"),
                other => format!("{field}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    match (message.is_empty(), detail.is_empty()) {
        (true, true) => scm::body_excerpt(&response.body),
        (false, true) => Some(message.to_string()),
        (true, false) => Some(detail),
        (false, false) => Some(format!("{message} ({detail})")),
    }
}

export!(BitbucketStatus as scm_status);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{
        FakeHost, SAMPLE_SHA as SHA, capability_grants, header, sample_status_update as update,
    };
    const TOKEN: &str = "ATCTT3xFfGN0s3cretT0ken";

    fn host(status: u16, body: &str) -> FakeHost {
        FakeHost::new()
            .with_secret("BITBUCKET_TOKEN", TOKEN)
            .with_http_response("https://", HttpResponse::new(status, body))
    }

    fn created() -> FakeHost {
        host(201, r#"{"type":"build","key":"chengis/test (os=linux)","state":"SUCCESSFUL"}"#)
    }

    fn body(host: &FakeHost) -> Value {
        serde_json::from_slice(&host.requests()[0].body).unwrap()
    }

    #[test]
    fn sends_the_documented_request() {
        let host = created();
        BitbucketStatus::report(&host, update(Status::Success, "https://jdoe@bitbucket.org/acme/web.git")).unwrap();
        let requests = host.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.url,
            format!("https://api.bitbucket.org/2.0/repositories/acme/web/commit/{SHA}/statuses/build")
        );
        assert_eq!(header(request, "Authorization"), Some("Bearer ATCTT3xFfGN0s3cretT0ken"));
        assert_eq!(header(request, "Accept"), Some("application/json"));
        assert_eq!(header(request, "Content-Type"), Some("application/json"));
        assert_eq!(header(request, "User-Agent"), Some("chengis"));
        assert_eq!(
            body(&host),
            json!({
                "key": "chengis/test (os=linux)",
                "state": "SUCCESSFUL",
                "name": "chengis/test (os=linux)",
                "url": "https://ci.example/builds/9",
                "description": "Tests passed",
                "refname": "main",
            })
        );
        assert_eq!(
            host.log_text(),
            "Bitbucket: chengis/test (os=linux) (key chengis/test (os=linux)) is SUCCESSFUL on acme/web@0123456\n"
        );
    }

    #[test]
    fn basic_auth_with_a_username() {
        let host = created().with_config("username", "jdoe@example.com");
        BitbucketStatus::report(&host, update(Status::Success, "git@bitbucket.org:acme/web.git")).unwrap();
        let request = &host.requests()[0];
        let auth = header(request, "Authorization").unwrap();
        let encoded = auth.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(decoded, format!("jdoe@example.com:{TOKEN}").as_bytes());
    }

    #[test]
    fn maps_every_status_explicitly() {
        let cases = [
            (Status::Pending, "INPROGRESS", "Tests passed"),
            (Status::Running, "INPROGRESS", "Tests passed"),
            (Status::Success, "SUCCESSFUL", "Tests passed"),
            (Status::Failure, "FAILED", "Tests passed"),
            (Status::Cancelled, "STOPPED", "Tests passed"),
            (Status::Skipped, "SUCCESSFUL", "Skipped: Tests passed"),
            (Status::Error, "FAILED", "Error: Tests passed"),
        ];
        for (status, state, description) in cases {
            let host = created();
            BitbucketStatus::report(&host, update(status, "git@bitbucket.org:acme/web.git")).unwrap();
            let sent = body(&host);
            assert_eq!(sent["state"], state, "{status:?}");
            assert_eq!(sent["description"], description, "{status:?}");
            assert_eq!(sent["key"], "chengis/test (os=linux)", "{status:?}");
        }
    }

    #[test]
    fn keys_are_stable_and_at_most_40_characters() {
        assert_eq!(status_key("chengis/build"), "chengis/build");
        let exactly = "x".repeat(40);
        assert_eq!(status_key(&exactly), exactly);
        let long = "chengis/integration-tests (os=linux, arch=arm64, db=postgres)";
        let key = status_key(long);
        assert_eq!(key.chars().count(), 40);
        assert!(key.starts_with("chengis/integration-tes-"), "{key}");
        assert_eq!(key, status_key(long));
        assert_ne!(key, status_key("chengis/integration-tests (os=linux, arch=arm64, db=mysql)"));
        let host = created();
        let mut update = update(Status::Running, "https://bitbucket.org/acme/web");
        update.context = long.into();
        BitbucketStatus::report(&host, update).unwrap();
        assert_eq!(body(&host)["key"], key.as_str());
        assert_eq!(body(&host)["name"], long);
    }

    #[test]
    fn clone_url_forms_and_link_fallback() {
        for repository in [
            "git@bitbucket.org:acme/web.git",
            "ssh://git@bitbucket.org/acme/web.git",
            "https://jdoe:pw@bitbucket.org/acme/web/",
        ] {
            let host = created();
            let mut update = update(Status::Success, repository);
            update.build.url = None;
            update.build.commit.branch = None;
            BitbucketStatus::report(&host, update).unwrap();
            assert_eq!(
                host.requests()[0].url,
                format!("https://api.bitbucket.org/2.0/repositories/acme/web/commit/{SHA}/statuses/build")
            );
            let sent = body(&host);
            assert_eq!(sent["url"], format!("https://bitbucket.org/acme/web/commits/{SHA}"));
            assert!(sent.get("refname").is_none());
        }
        let failure = BitbucketStatus::report(&created(), update(Status::Success, "https://git.example/acme/web.git"))
            .unwrap_err();
        assert!(
            failure.message.contains("is not on bitbucket.org") && failure.message.contains("api-url"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn long_descriptions_are_cut() {
        let host = created();
        let mut long = update(Status::Failure, "https://bitbucket.org/acme/web");
        long.description = "ß".repeat(300);
        BitbucketStatus::report(&host, long).unwrap();
        let description = body(&host)["description"].as_str().unwrap().to_string();
        assert_eq!(description.chars().count(), DESCRIPTION_LIMIT);
        assert!(description.ends_with('…'));
    }

    #[test]
    fn error_answers_name_bitbucket_status_and_message_not_the_token() {
        let cases = [
            (
                401,
                r#"{"type":"error","error":{"message":"Access token expired."}}"#,
                "Bitbucket answered 401 Unauthorized: Access token expired.",
            ),
            (
                404,
                r#"{"type":"error","error":{"message":"Repository acme/web not found"}}"#,
                "Bitbucket answered 404 Not Found: Repository acme/web not found",
            ),
            (
                400,
                r#"{"type":"error","error":{"message":"Bad request","fields":{},"detail":{"state":["Invalid state"]}}}"#,
                "Bitbucket answered 400 Bad Request: Bad request (state: Invalid state)",
            ),
            (
                403,
                r#"{"type":"error","error":{"message":"Forbidden","detail":"token ATCTT3xFfGN0s3cretT0ken lacks repository:write"}}"#,
                "Bitbucket answered 403 Forbidden: Forbidden (token *** lacks repository:write)",
            ),
            (429, "Rate limit exceeded", "Bitbucket answered 429 Too Many Requests: Rate limit exceeded"),
        ];
        for (status, answer, expected) in cases {
            let failure = BitbucketStatus::report(
                &host(status, answer),
                update(Status::Success, "https://bitbucket.org/acme/web"),
            )
            .unwrap_err();
            assert_eq!(failure.message, expected);
        }
    }

    #[test]
    fn bad_inputs_fail_before_any_request() {
        let host = created();
        let mut short = update(Status::Success, "https://bitbucket.org/acme/web");
        short.build.commit.sha = String::new();
        assert!(BitbucketStatus::report(&host, short).unwrap_err().message.contains("not a full 40-character"));
        let failure = BitbucketStatus::report(&host, update(Status::Success, "https://bitbucket.org/acme/web/extra"))
            .unwrap_err();
        assert!(failure.message.contains("expected OWNER/REPO"), "{}", failure.message);
        let no_token = FakeHost::new().with_http_response("https://", HttpResponse::new(201, "{}"));
        let failure =
            BitbucketStatus::report(&no_token, update(Status::Success, "https://bitbucket.org/acme/web")).unwrap_err();
        assert!(failure.message.contains(r#"secret "BITBUCKET_TOKEN""#), "{}", failure.message);
        assert!(host.requests().is_empty() && no_token.requests().is_empty());
    }

    #[test]
    fn manifest_requests_the_public_api_any_configured_host_and_the_token() {
        let manifest = BitbucketStatus::manifest();
        assert_eq!(manifest.kinds, [Kind::ScmStatus]);
        assert_eq!(
            capability_grants(&manifest),
            ["http:https://api.bitbucket.org:443", "http:https://*:*", "http:http://*:*", "secret:BITBUCKET_TOKEN"]
        );
        let keys: Vec<_> = manifest.config.iter().map(|c| (c.name.as_str(), c.default.as_deref())).collect();
        assert_eq!(
            keys,
            [
                ("api-url", Some(DEFAULT_API_URL)),
                ("repository", None),
                ("token-secret", Some(DEFAULT_TOKEN_SECRET)),
                ("username", None)
            ]
        );
    }
}
