//! The builtin SCM status reporters (`github-status`, `gitlab-status`, `gitea-status`,
//! `bitbucket-status`) loaded by the real host and reporting to a fake forge on 127.0.0.1 that
//! checks the documented request (method, exact path, auth header, JSON body) and answers like
//! the forge does, errors included: a wrong token, an unknown repository, an invalid field, a
//! too-long description, GitLab's "same state again" 400 and Bitbucket's overwrite by key.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chengis_plugin_host::bindings::scm_status::StatusUpdate;
use chengis_plugin_host::types::{Build, Commit, Job, Status};
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin, Runtime};
use common::MemoryLog;
use common::components::component;
use common::fake_http::{Answer, FakeServer, Recorded, json_answer};
use serde_json::{Value, json};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Every Chengis status, in WIT order.
const STATUSES: [Status; 7] = [
    Status::Pending,
    Status::Running,
    Status::Success,
    Status::Failure,
    Status::Cancelled,
    Status::Skipped,
    Status::Error,
];

fn load(runtime: &Runtime, package: &str, grants: &[&str]) -> Plugin {
    let bytes = component(package);
    let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
    runtime.load(&bytes, &allowlist, Grants::parse(grants.iter().copied()).unwrap(), Limits::default()).unwrap()
}

fn context(config: &[(&str, String)], secret: &str, token: &str, log: &Arc<MemoryLog>) -> CallContext {
    CallContext {
        config: config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        secrets: HashMap::from([(secret.to_string(), token.to_string())]),
        log: Some(log.clone()),
        ..CallContext::default()
    }
}

fn update(state: Status, repository: &str, context: &str, description: &str) -> StatusUpdate {
    StatusUpdate {
        build: Build {
            id: 9,
            number: 42,
            pipeline: "web".into(),
            status: Status::Running,
            commit: Commit {
                sha: SHA.into(),
                repository: repository.into(),
                branch: Some("main".into()),
                tag: None,
                message: "Fix the thing".into(),
                author: "A <a@example.com>".into(),
            },
            trigger: "push".into(),
            url: Some("https://ci.example/builds/9".into()),
            duration_ms: None,
        },
        job: Some(Job { id: 3, name: "test (os=linux)".into(), status: state, image: None, duration_ms: None }),
        state,
        context: context.into(),
        description: description.into(),
    }
}

fn json_body(request: &Recorded) -> Value {
    serde_json::from_slice(&request.body).unwrap_or(Value::Null)
}

fn text_len(body: &Value, field: &str) -> usize {
    body[field].as_str().map_or(0, |s| s.chars().count())
}

/// Asserts that a failed call is the plugin's own failure with exactly this message.
fn assert_failed(result: Result<(), chengis_plugin_host::PluginError>, plugin: &str, expected: &str, token: &str) {
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    let message = error.to_string();
    assert_eq!(message, format!("plugin {plugin:?} 0.1.0: failed: {expected}"));
    assert!(!message.contains(token), "{message}");
}

// ----- GitHub -----------------------------------------------------------------------------

const GITHUB_TOKEN: &str = "ghp_realHostS3cret";

/// Answers like GitHub's `POST /repos/{owner}/{repo}/statuses/{sha}` for `acme/web` behind a
/// GitHub Enterprise API root `/api/v3`.
fn github(request: &Recorded) -> Answer {
    let docs = "https://docs.github.com/rest/commits/statuses#create-a-commit-status";
    if request.header("authorization") != Some(format!("Bearer {GITHUB_TOKEN}").as_str()) {
        return json_answer(401, json!({"message": "Bad credentials", "documentation_url": docs}));
    }
    if request.method != "POST" || request.path != format!("/api/v3/repos/acme/web/statuses/{SHA}") {
        return json_answer(404, json!({"message": "Not Found", "documentation_url": docs}));
    }
    let body = json_body(request);
    let invalid = |field: &str, message: &str| {
        json_answer(
            422,
            json!({"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom", "field": field, "message": message}], "documentation_url": docs}),
        )
    };
    if !["error", "failure", "pending", "success"].contains(&body["state"].as_str().unwrap_or_default()) {
        return invalid("state", "state is not included in the list");
    }
    if body["context"] == "chengis/full" {
        return json_answer(
            422,
            json!({"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom", "message": "This SHA and context has reached the maximum number of statuses."}], "documentation_url": docs}),
        );
    }
    if text_len(&body, "description") > 140 {
        return invalid("description", "description is too long (maximum is 140 characters)");
    }
    json_answer(
        201,
        json!({"id": 1, "state": body["state"], "context": body["context"], "description": body["description"], "target_url": body["target_url"]}),
    )
}

#[test]
fn github_status_posts_the_documented_request() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(github);
    let plugin = load(&runtime, "chengis-plugin-github-status", &["http:http://127.0.0.1:*", "secret:GITHUB_TOKEN"]);
    let log = MemoryLog::new();
    let ctx = context(&[("api-url", format!("{}/api/v3/", server.url()))], "GITHUB_TOKEN", GITHUB_TOKEN, &log);

    let forms = [
        "https://git.example.com/acme/web.git",
        "git@git.example.com:acme/web.git",
        "ssh://git@git.example.com:2222/acme/web",
    ];
    for repository in forms {
        plugin
            .report_status(&ctx, &update(Status::Success, repository, "chengis/test (os=linux)", "Tests passed"))
            .unwrap();
    }
    let requests = server.requests();
    assert_eq!(requests.len(), forms.len());
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/api/v3/repos/acme/web/statuses/{SHA}"));
        assert_eq!(request.header("authorization"), Some("Bearer ghp_realHostS3cret"));
        assert_eq!(request.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some("chengis"));
        assert_eq!(
            request.json(),
            json!({"state": "success", "context": "chengis/test (os=linux)", "description": "Tests passed", "target_url": "https://ci.example/builds/9"})
        );
    }
    assert_eq!(log.lines()[0], "GitHub: chengis/test (os=linux) is success on acme/web@0123456");
    assert!(!log.text().contains(GITHUB_TOKEN));
}

#[test]
fn github_status_maps_every_status_and_reports_errors() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(github);
    let plugin = load(&runtime, "chengis-plugin-github-status", &["http:http://127.0.0.1:*", "secret:GITHUB_TOKEN"]);
    let log = MemoryLog::new();
    let config = [("api-url", format!("{}/api/v3", server.url()))];
    let ctx = context(&config, "GITHUB_TOKEN", GITHUB_TOKEN, &log);
    for status in STATUSES {
        plugin.report_status(&ctx, &update(status, "https://git.example.com/acme/web", "chengis/build", "")).unwrap();
    }
    let sent: Vec<(String, String)> = server
        .requests()
        .iter()
        .map(|r| {
            (
                r.json()["state"].as_str().unwrap().to_string(),
                r.json()["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("pending", ""),
        ("pending", "Running"),
        ("success", ""),
        ("failure", ""),
        ("error", "Cancelled"),
        ("success", "Skipped"),
        ("error", ""),
    ];
    assert_eq!(sent, expected.map(|(s, d)| (s.to_string(), d.to_string())));

    // A description over GitHub's 140 characters is cut, so GitHub accepts it.
    let long = "x".repeat(500);
    plugin
        .report_status(&ctx, &update(Status::Failure, "https://git.example.com/acme/web", "chengis/build", &long))
        .unwrap();
    let last = server.requests().last().unwrap().json();
    assert_eq!(text_len(&last, "description"), 140);

    // Error answers: the forge, the status and GitHub's message; never the token.
    let wrong_token = context(&config, "GITHUB_TOKEN", "ghp_wrong", &log);
    assert_failed(
        plugin.report_status(
            &wrong_token,
            &update(Status::Success, "https://git.example.com/acme/web", "chengis/build", ""),
        ),
        "github-status",
        "GitHub answered 401 Unauthorized: Bad credentials",
        "ghp_wrong",
    );
    assert_failed(
        plugin.report_status(
            &ctx,
            &update(Status::Success, "https://git.example.com/acme/gone.git", "chengis/build", ""),
        ),
        "github-status",
        "GitHub answered 404 Not Found: Not Found",
        GITHUB_TOKEN,
    );
    assert_failed(
        plugin.report_status(&ctx, &update(Status::Success, "https://git.example.com/acme/web", "chengis/full", "")),
        "github-status",
        "GitHub answered 422 Unprocessable Entity: Validation Failed (This SHA and context has reached the maximum number of statuses.)",
        GITHUB_TOKEN,
    );
    // An invalid commit id or repository fails before any request.
    let before = server.requests().len();
    let mut short = update(Status::Success, "https://git.example.com/acme/web", "chengis/build", "");
    short.build.commit.sha = "0123456".into();
    assert_failed(
        plugin.report_status(&ctx, &short),
        "github-status",
        r#"commit "0123456" is not a full 40-character hexadecimal commit id"#,
        GITHUB_TOKEN,
    );
    assert_failed(
        plugin.report_status(&ctx, &update(Status::Success, "https://u:pw@git.example.com/acme", "chengis/build", "")),
        "github-status",
        r#"repository URL "git.example.com/acme" has the path "acme", expected OWNER/REPO"#,
        GITHUB_TOKEN,
    );
    assert_eq!(server.requests().len(), before);
    assert!(!log.text().contains(GITHUB_TOKEN));
}

#[test]
fn github_status_needs_the_operators_grants() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(github);
    let log = MemoryLog::new();
    let ctx = context(&[("api-url", format!("{}/api/v3", server.url()))], "GITHUB_TOKEN", GITHUB_TOKEN, &log);
    let status = update(Status::Success, "https://git.example.com/acme/web", "chengis/build", "");

    let no_secret = load(&runtime, "chengis-plugin-github-status", &["http:http://127.0.0.1:*"]);
    let message = no_secret.report_status(&ctx, &status).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"plugin "github-status" 0.1.0: reading secret "GITHUB_TOKEN" denied: the operator has not granted it (grant `secret:GITHUB_TOKEN` to allow it)"#
    );

    let no_http = load(&runtime, "chengis-plugin-github-status", &["secret:GITHUB_TOKEN"]);
    let message = no_http.report_status(&ctx, &status).unwrap_err().to_string();
    let port = server.port();
    assert_eq!(
        message,
        format!(
            "plugin \"github-status\" 0.1.0: outbound HTTP to http://127.0.0.1:{port} denied: the operator has not granted it (grant `http:http://127.0.0.1:{port}` to allow it)"
        )
    );
    assert!(server.requests().is_empty());
}

// ----- GitLab -----------------------------------------------------------------------------

const GITLAB_TOKEN: &str = "glpat-realHostS3cret";

/// Answers like GitLab's `POST /api/v4/projects/:id/statuses/:sha` for the project
/// `acme/platform/web` (id 1234), including the 400 for a status posted again in the state it
/// already has (pending again, running again).
fn gitlab() -> impl Fn(&Recorded) -> Answer + Send + Sync + 'static {
    let states: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    move |request: &Recorded| {
        if request.header("private-token") != Some(GITLAB_TOKEN) {
            return json_answer(401, json!({"message": "401 Unauthorized"}));
        }
        let known = [
            format!("/api/v4/projects/acme%2Fplatform%2Fweb/statuses/{SHA}"),
            format!("/api/v4/projects/1234/statuses/{SHA}"),
        ];
        if request.method != "POST" || !known.contains(&request.path) {
            return json_answer(404, json!({"message": "404 Project Not Found"}));
        }
        let body = json_body(request);
        let state = body["state"].as_str().unwrap_or_default().to_string();
        if !["pending", "running", "success", "failed", "canceled"].contains(&state.as_str()) {
            return json_answer(400, json!({"error": "state does not have a valid value"}));
        }
        if text_len(&body, "description") > 255 {
            return json_answer(400, json!({"message": {"description": ["is too long (maximum is 255 characters)"]}}));
        }
        let name = body["name"].as_str().unwrap_or("default").to_string();
        let mut states = states.lock().unwrap();
        let previous = states.insert(name.clone(), state.clone());
        if previous.as_deref() == Some(state.as_str()) && (state == "pending" || state == "running") {
            let event = if state == "pending" { "enqueue" } else { "run" };
            return json_answer(
                400,
                json!({"message": format!("Cannot transition status via :{event} from :{state} (Reason(s): Status cannot transition via \"{event}\")")}),
            );
        }
        json_answer(
            201,
            json!({"id": 93, "sha": SHA, "ref": body["ref"], "status": state, "name": name, "target_url": body["target_url"], "description": body["description"]}),
        )
    }
}

#[test]
fn gitlab_status_posts_the_documented_request() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(gitlab());
    let plugin = load(&runtime, "chengis-plugin-gitlab-status", &["http:http://127.0.0.1:*", "secret:GITLAB_TOKEN"]);
    let log = MemoryLog::new();
    let ctx = context(&[("api-url", format!("{}/api/v4", server.url()))], "GITLAB_TOKEN", GITLAB_TOKEN, &log);

    let forms = [
        "https://gitlab.example.com/acme/platform/web.git",
        "git@gitlab.example.com:acme/platform/web.git",
        "ssh://git@gitlab.example.com:2222/acme/platform/web.git",
    ];
    for repository in forms {
        plugin
            .report_status(&ctx, &update(Status::Success, repository, "chengis/test (os=linux)", "Tests passed"))
            .unwrap();
    }
    let requests = server.requests();
    assert_eq!(requests.len(), forms.len());
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/api/v4/projects/acme%2Fplatform%2Fweb/statuses/{SHA}"));
        assert_eq!(request.header("private-token"), Some(GITLAB_TOKEN));
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some("chengis"));
        assert_eq!(
            request.json(),
            json!({"state": "success", "name": "chengis/test (os=linux)", "description": "Tests passed", "target_url": "https://ci.example/builds/9", "ref": "main"})
        );
    }

    // `project-id` overrides the clone URL.
    let by_id = context(
        &[("api-url", format!("{}/api/v4", server.url())), ("project-id", "1234".into())],
        "GITLAB_TOKEN",
        GITLAB_TOKEN,
        &log,
    );
    plugin
        .report_status(&by_id, &update(Status::Success, "https://mirror.example/web.git", "chengis/build", ""))
        .unwrap();
    assert_eq!(server.requests().last().unwrap().path, format!("/api/v4/projects/1234/statuses/{SHA}"));
    assert!(!log.text().contains(GITLAB_TOKEN));
}

#[test]
fn gitlab_status_maps_every_status_tolerates_repeats_and_reports_errors() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(gitlab());
    let plugin = load(&runtime, "chengis-plugin-gitlab-status", &["http:http://127.0.0.1:*", "secret:GITLAB_TOKEN"]);
    let log = MemoryLog::new();
    let config = [("api-url", format!("{}/api/v4", server.url()))];
    let ctx = context(&config, "GITLAB_TOKEN", GITLAB_TOKEN, &log);
    let repository = "git@gitlab.example.com:acme/platform/web.git";
    for (i, status) in STATUSES.into_iter().enumerate() {
        let name = format!("chengis/job-{i}");
        plugin.report_status(&ctx, &update(status, repository, &name, "")).unwrap();
    }
    let sent: Vec<(String, String)> = server
        .requests()
        .iter()
        .map(|r| {
            (
                r.json()["state"].as_str().unwrap().to_string(),
                r.json()["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("pending", ""),
        ("running", ""),
        ("success", ""),
        ("failed", ""),
        ("canceled", ""),
        ("success", "Skipped"),
        ("failed", "Error"),
    ];
    assert_eq!(sent, expected.map(|(s, d)| (s.to_string(), d.to_string())));

    // The same state again: GitLab answers 400, the plugin logs it and succeeds.
    plugin.report_status(&ctx, &update(Status::Running, repository, "chengis/job-1", "")).unwrap();
    assert_eq!(
        log.lines().last().unwrap(),
        "GitLab: chengis/job-1 is already running on acme/platform/web@0123456 (nothing to change)"
    );
    plugin.report_status(&ctx, &update(Status::Pending, repository, "chengis/job-0", "")).unwrap();
    assert!(log.lines().last().unwrap().contains("already pending"));

    // A description over GitLab's 255 characters is cut, so GitLab accepts it.
    let long = "ä".repeat(1000);
    plugin.report_status(&ctx, &update(Status::Failure, repository, "chengis/long", &long)).unwrap();
    assert_eq!(text_len(&server.requests().last().unwrap().json(), "description"), 255);

    let wrong_token = context(&config, "GITLAB_TOKEN", "glpat-wrong", &log);
    assert_failed(
        plugin.report_status(&wrong_token, &update(Status::Success, repository, "chengis/build", "")),
        "gitlab-status",
        "GitLab answered 401 Unauthorized: 401 Unauthorized",
        "glpat-wrong",
    );
    assert_failed(
        plugin.report_status(
            &ctx,
            &update(Status::Success, "https://gitlab.example.com/acme/other.git", "chengis/build", ""),
        ),
        "gitlab-status",
        "GitLab answered 404 Not Found: 404 Project Not Found",
        GITLAB_TOKEN,
    );
    assert!(!log.text().contains(GITLAB_TOKEN));
}

// ----- Gitea ------------------------------------------------------------------------------

const GITEA_TOKEN: &str = "gitea_realHostS3cret";

/// Answers like Gitea's `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}` for `acme/web`.
fn gitea(request: &Recorded) -> Answer {
    let swagger = "https://gitea.example.com/api/swagger";
    if request.header("authorization") != Some(format!("token {GITEA_TOKEN}").as_str()) {
        return json_answer(401, json!({"message": "user does not exist [uid: 0, name: ]", "url": swagger}));
    }
    if request.method != "POST" || request.path != format!("/api/v1/repos/acme/web/statuses/{SHA}") {
        return json_answer(404, json!({"errors": null, "message": "The target couldn't be found.", "url": swagger}));
    }
    let body = json_body(request);
    if !["pending", "success", "error", "failure", "warning"].contains(&body["state"].as_str().unwrap_or_default()) {
        return json_answer(
            422,
            json!([{"fieldNames": ["State"], "classification": "InvalidState", "message": "invalid state"}]),
        );
    }
    json_answer(
        201,
        json!({"id": 7, "status": body["state"], "context": body["context"], "description": body["description"], "target_url": body["target_url"]}),
    )
}

#[test]
fn gitea_status_posts_the_documented_request_and_maps_every_status() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(gitea);
    let plugin = load(&runtime, "chengis-plugin-gitea-status", &["http:http://127.0.0.1:*", "secret:GITEA_TOKEN"]);
    let log = MemoryLog::new();
    let config = [("api-url", format!("{}/api/v1", server.url()))];
    let ctx = context(&config, "GITEA_TOKEN", GITEA_TOKEN, &log);

    let forms = [
        "https://gitea.example.com/acme/web.git",
        "git@gitea.example.com:acme/web.git",
        "ssh://git@gitea.example.com:2222/acme/web/",
    ];
    for repository in forms {
        plugin
            .report_status(&ctx, &update(Status::Success, repository, "chengis/test (os=linux)", "Tests passed"))
            .unwrap();
    }
    for request in server.requests() {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/api/v1/repos/acme/web/statuses/{SHA}"));
        assert_eq!(request.header("authorization"), Some("token gitea_realHostS3cret"));
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some("chengis"));
        assert_eq!(
            request.json(),
            json!({"state": "success", "context": "chengis/test (os=linux)", "description": "Tests passed", "target_url": "https://ci.example/builds/9"})
        );
    }
    assert_eq!(server.requests().len(), forms.len());

    let before = server.requests().len();
    for status in STATUSES {
        plugin.report_status(&ctx, &update(status, "https://gitea.example.com/acme/web", "chengis/build", "")).unwrap();
    }
    let sent: Vec<(String, String)> = server.requests()[before..]
        .iter()
        .map(|r| {
            (
                r.json()["state"].as_str().unwrap().to_string(),
                r.json()["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("pending", ""),
        ("pending", "Running"),
        ("success", ""),
        ("failure", ""),
        ("warning", "Cancelled"),
        ("success", "Skipped"),
        ("error", ""),
    ];
    assert_eq!(sent, expected.map(|(s, d)| (s.to_string(), d.to_string())));

    let long = "o".repeat(600);
    plugin
        .report_status(&ctx, &update(Status::Failure, "https://gitea.example.com/acme/web", "chengis/build", &long))
        .unwrap();
    assert_eq!(text_len(&server.requests().last().unwrap().json(), "description"), 255);

    let wrong_token = context(&config, "GITEA_TOKEN", "gitea_wrong", &log);
    assert_failed(
        plugin.report_status(
            &wrong_token,
            &update(Status::Success, "https://gitea.example.com/acme/web", "chengis/build", ""),
        ),
        "gitea-status",
        "Gitea answered 401 Unauthorized: user does not exist [uid: 0, name: ]",
        "gitea_wrong",
    );
    assert_failed(
        plugin
            .report_status(&ctx, &update(Status::Success, "https://gitea.example.com/acme/nope", "chengis/build", "")),
        "gitea-status",
        "Gitea answered 404 Not Found: The target couldn't be found.",
        GITEA_TOKEN,
    );
    assert!(!log.text().contains(GITEA_TOKEN));
}

// ----- Bitbucket Cloud --------------------------------------------------------------------

const BITBUCKET_TOKEN: &str = "ATCTTrealHostS3cret";

/// Answers like Bitbucket Cloud's `POST /2.0/repositories/{workspace}/{repo_slug}/commit/
/// {commit}/statuses/build` for `acme/web`: 201 for a new key, 200 when the key exists and the
/// status is overwritten.
fn bitbucket() -> impl Fn(&Recorded) -> Answer + Send + Sync + 'static {
    let keys: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    move |request: &Recorded| {
        let error = |status: u16, message: &str, detail: Value| {
            json_answer(status, json!({"type": "error", "error": {"message": message, "detail": detail}}))
        };
        let bearer = format!("Bearer {BITBUCKET_TOKEN}");
        let basic = format!("Basic {}", base64_of(&format!("jdoe:{BITBUCKET_TOKEN}")));
        if !request.header("authorization").is_some_and(|auth| auth == bearer || auth == basic) {
            return error(
                401,
                "Access token expired. Use your refresh token to obtain a new access token.",
                Value::Null,
            );
        }
        if request.method != "POST" || request.path != format!("/2.0/repositories/acme/web/commit/{SHA}/statuses/build")
        {
            return error(404, "Repository not found", Value::Null);
        }
        let body = json_body(request);
        if !["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"].contains(&body["state"].as_str().unwrap_or_default()) {
            return error(400, "Bad request", json!({"state": ["Invalid state"]}));
        }
        if body["url"].as_str().is_none_or(str::is_empty) {
            return error(400, "Bad request", json!({"url": ["This field is required."]}));
        }
        let key = body["key"].as_str().unwrap_or_default().to_string();
        if key.is_empty() || key.chars().count() > 40 {
            return error(400, "Bad request", json!({"key": ["Ensure this value has at most 40 characters."]}));
        }
        let existed =
            keys.lock().unwrap().insert(key.clone(), body["state"].as_str().unwrap_or_default().into()).is_some();
        json_answer(
            if existed { 200 } else { 201 },
            json!({"type": "build", "key": key, "state": body["state"], "name": body["name"], "url": body["url"], "description": body["description"]}),
        )
    }
}

#[test]
fn bitbucket_status_posts_the_documented_request() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(bitbucket());
    let plugin =
        load(&runtime, "chengis-plugin-bitbucket-status", &["http:http://127.0.0.1:*", "secret:BITBUCKET_TOKEN"]);
    let log = MemoryLog::new();
    let ctx = context(&[("api-url", format!("{}/2.0/", server.url()))], "BITBUCKET_TOKEN", BITBUCKET_TOKEN, &log);

    let forms = [
        "https://jdoe@bitbucket.org/acme/web.git",
        "git@bitbucket.org:acme/web.git",
        "ssh://git@bitbucket.org/acme/web.git",
    ];
    for repository in forms {
        plugin
            .report_status(&ctx, &update(Status::Running, repository, "chengis/test (os=linux)", "Tests running"))
            .unwrap();
    }
    let requests = server.requests();
    assert_eq!(requests.len(), forms.len());
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/2.0/repositories/acme/web/commit/{SHA}/statuses/build"));
        assert_eq!(request.header("authorization"), Some("Bearer ATCTTrealHostS3cret"));
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some("chengis"));
        assert_eq!(
            request.json(),
            json!({
                "key": "chengis/test (os=linux)",
                "state": "INPROGRESS",
                "name": "chengis/test (os=linux)",
                "url": "https://ci.example/builds/9",
                "description": "Tests running",
                "refname": "main",
            })
        );
    }

    // Without a build URL the link is the commit on bitbucket.org (Bitbucket requires `url`).
    let mut no_url = update(Status::Success, "git@bitbucket.org:acme/web.git", "chengis/build", "");
    no_url.build.url = None;
    plugin.report_status(&ctx, &no_url).unwrap();
    assert_eq!(
        server.requests().last().unwrap().json()["url"],
        format!("https://bitbucket.org/acme/web/commits/{SHA}")
    );

    // With `username`, HTTP Basic auth (app passwords, API tokens).
    let basic = context(
        &[("api-url", format!("{}/2.0", server.url())), ("username", "jdoe".into())],
        "BITBUCKET_TOKEN",
        BITBUCKET_TOKEN,
        &log,
    );
    plugin
        .report_status(&basic, &update(Status::Success, "git@bitbucket.org:acme/web.git", "chengis/build", ""))
        .unwrap();
    let expected = format!("Basic {}", base64_of(&format!("jdoe:{BITBUCKET_TOKEN}")));
    assert_eq!(server.requests().last().unwrap().header("authorization"), Some(expected.as_str()));
    assert!(!log.text().contains(BITBUCKET_TOKEN));
}

/// Standard base64, written out here so the test does not trust the plugin's encoder.
fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn bitbucket_status_maps_every_status_overwrites_by_key_and_reports_errors() {
    let runtime = common::runtime_with(true);
    let server = FakeServer::start(bitbucket());
    let plugin =
        load(&runtime, "chengis-plugin-bitbucket-status", &["http:http://127.0.0.1:*", "secret:BITBUCKET_TOKEN"]);
    let log = MemoryLog::new();
    let config = [("api-url", format!("{}/2.0", server.url()))];
    let ctx = context(&config, "BITBUCKET_TOKEN", BITBUCKET_TOKEN, &log);
    let repository = "https://bitbucket.org/acme/web";
    let long_context = "chengis/integration-tests (os=linux, arch=arm64, db=postgres)";
    for status in STATUSES {
        plugin.report_status(&ctx, &update(status, repository, long_context, "")).unwrap();
    }
    let requests = server.requests();
    let sent: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            (
                r.json()["state"].as_str().unwrap().to_string(),
                r.json()["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("INPROGRESS", ""),
        ("INPROGRESS", ""),
        ("SUCCESSFUL", ""),
        ("FAILED", ""),
        ("STOPPED", ""),
        ("SUCCESSFUL", "Skipped"),
        ("FAILED", "Error"),
    ];
    assert_eq!(sent, expected.map(|(s, d)| (s.to_string(), d.to_string())));
    // One stable key of at most 40 characters for the long context: every update overwrote
    // the first (Bitbucket answered 200 after the first 201).
    let keys: Vec<String> = requests.iter().map(|r| r.json()["key"].as_str().unwrap().to_string()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(keys[0].chars().count(), 40);
    assert_eq!(requests[0].json()["name"], long_context);

    let long = "z".repeat(400);
    plugin.report_status(&ctx, &update(Status::Failure, repository, "chengis/build", &long)).unwrap();
    assert_eq!(text_len(&server.requests().last().unwrap().json(), "description"), 255);

    let wrong_token = context(&config, "BITBUCKET_TOKEN", "ATCTTwrong", &log);
    assert_failed(
        plugin.report_status(&wrong_token, &update(Status::Success, repository, "chengis/build", "")),
        "bitbucket-status",
        "Bitbucket answered 401 Unauthorized: Access token expired. Use your refresh token to obtain a new access token.",
        "ATCTTwrong",
    );
    assert_failed(
        plugin.report_status(&ctx, &update(Status::Success, "https://bitbucket.org/acme/gone", "chengis/build", "")),
        "bitbucket-status",
        "Bitbucket answered 404 Not Found: Repository not found",
        BITBUCKET_TOKEN,
    );
    assert!(!log.text().contains(BITBUCKET_TOKEN));
}
