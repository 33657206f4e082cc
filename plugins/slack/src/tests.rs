//! Native tests of the slack notifier against the SDK's fake host: the exact message, the `on`
//! and `events` filters, and Slack's error answers (which must never echo the webhook URL).

use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::testing::{FakeHost, capability_grants, sample_event, sample_job};
use chengis_plugin_sdk::types::{Job, Status};
use chengis_plugin_sdk::{HttpResponse, Notifier};
use serde_json::{Value, json};

use super::*;

const URL: &str = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX";

/// A finished build of the SDK's sample, with a commit message that needs escaping, a full
/// author name and a duration of minutes.
fn finished(status: Status, previous: Option<Status>) -> Event {
    let mut event = Event { previous_status: previous, ..sample_event(EventKind::BuildFinished, status) };
    event.build.commit.message = "Fix <the> thing & more\n\nLonger body".into();
    event.build.commit.author = "Ada Lovelace <ada@example.com>".into();
    event.build.duration_ms = Some(185_000);
    event
}

fn host() -> FakeHost {
    FakeHost::new().with_secret("SLACK_WEBHOOK_URL", URL).with_http_response(URL, HttpResponse::new(200, "ok"))
}

fn body(host: &FakeHost) -> Value {
    serde_json::from_slice(&host.requests()[0].body).unwrap()
}

#[test]
fn manifest_requests_slack_and_the_default_secret() {
    let manifest = Slack::manifest();
    assert_eq!((manifest.name.as_str(), manifest.version.as_str()), ("slack", "0.1.0"));
    assert_eq!(
        capability_grants(&manifest),
        ["http:https://hooks.slack.com:443", "http:https://*:*", "http:http://*:*", "secret:SLACK_WEBHOOK_URL"]
    );
    let keys: Vec<_> = manifest.config.iter().map(|f| (f.name.as_str(), f.default.as_deref())).collect();
    assert_eq!(
        keys,
        [("webhook-secret", Some("SLACK_WEBHOOK_URL")), ("on", Some("failure,fixed")), ("events", Some("build"))]
    );
}

#[test]
fn a_failed_build_posts_the_block_kit_message() {
    let host = host();
    Slack::notify(&host, finished(Status::Failure, Some(Status::Success))).unwrap();
    let requests = host.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].url, URL);
    assert_eq!(
        requests[0].headers,
        [
            ("Content-Type".to_string(), "application/json".to_string()),
            ("User-Agent".into(), "chengis-slack/0.1.0".into())
        ]
    );
    assert_eq!(
        body(&host),
        json!({
            "text": "web #42 failed (main @ 0123456)",
            "attachments": [{
                "color": "#e01e5a",
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": "*<https://ci.example/builds/9|web #42>* failed"}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": "*Status*\nFailed"},
                        {"type": "mrkdwn", "text": "*Job*\nweb"},
                        {"type": "mrkdwn", "text": "*Build*\n#42"},
                        {"type": "mrkdwn", "text": "*Branch*\nmain"},
                        {"type": "mrkdwn", "text": "*Commit*\n`0123456` Fix &lt;the&gt; thing &amp; more"},
                        {"type": "mrkdwn", "text": "*Duration*\n3 m 5 s"},
                    ]},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "Triggered by push · Ada Lovelace"}]},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "<https://ci.example/builds/9|View build #42>"}]},
                ],
            }],
        })
    );
    assert_eq!(host.log_text(), "slack: posted web #42 failed\n");
}

#[test]
fn a_job_message_names_pipeline_and_job_and_a_tag_without_url() {
    let host = host().with_config("events", "build,job").with_config("on", "always");
    let mut event = finished(Status::Running, None);
    event.kind = EventKind::JobFinished;
    event.build.url = None;
    event.build.commit.branch = None;
    event.build.commit.tag = Some("v1.2.0".into());
    event.job = Some(Job { duration_ms: Some(850), ..sample_job("test", Status::Error) });
    Slack::notify(&host, event).unwrap();
    let body = body(&host);
    assert_eq!(body["text"], "web #42: job test errored (v1.2.0 @ 0123456)");
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["color"], "#a30200");
    assert_eq!(attachment["blocks"][0]["text"]["text"], "*web #42* job *test* errored");
    let fields: Vec<&str> =
        attachment["blocks"][1]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "*Status*\nErrored",
            "*Job*\nweb / test",
            "*Build*\n#42",
            "*Tag*\nv1.2.0",
            "*Commit*\n`0123456` Fix &lt;the&gt; thing &amp; more",
            "*Duration*\n850 ms"
        ]
    );
    // No link block without a build URL.
    assert_eq!(attachment["blocks"].as_array().unwrap().len(), 3);
}

#[test]
fn on_filters_by_outcome() {
    // Default `failure,fixed`: a fixed build posts, a second success does not, a failure does.
    let host = host();
    Slack::notify(&host, finished(Status::Success, Some(Status::Failure))).unwrap();
    assert_eq!(host.requests().len(), 1);
    let fixed = body(&host);
    assert_eq!(fixed["text"], "web #42 fixed (main @ 0123456)");
    assert_eq!(fixed["attachments"][0]["color"], "#2eb886");
    Slack::notify(&host, finished(Status::Success, Some(Status::Success))).unwrap();
    Slack::notify(&host, finished(Status::Success, None)).unwrap();
    Slack::notify(&host, finished(Status::Cancelled, Some(Status::Success))).unwrap();
    assert_eq!(host.requests().len(), 1);
    Slack::notify(&host, finished(Status::Error, Some(Status::Failure))).unwrap();
    assert_eq!(host.requests().len(), 2);

    // `success` posts every success (a fixed one too), not failures.
    let host = self::host().with_config("on", "success");
    Slack::notify(&host, finished(Status::Success, None)).unwrap();
    Slack::notify(&host, finished(Status::Success, Some(Status::Error))).unwrap();
    Slack::notify(&host, finished(Status::Failure, None)).unwrap();
    assert_eq!(host.requests().len(), 2);

    // `always` posts a cancelled build too.
    let host = self::host().with_config("on", "always");
    Slack::notify(&host, finished(Status::Cancelled, None)).unwrap();
    assert_eq!(body(&host)["attachments"][0]["color"], "#9e9e9e");
}

#[test]
fn events_filters_by_kind() {
    let host = host().with_config("on", "always");
    let mut started = finished(Status::Running, None);
    started.kind = EventKind::BuildStarted;
    Slack::notify(&host, started).unwrap();
    let mut job = finished(Status::Failure, None);
    job.kind = EventKind::JobFinished;
    job.job = Some(sample_job("test", Status::Failure));
    Slack::notify(&host, job.clone()).unwrap();
    assert!(host.requests().is_empty(), "started builds and (by default) jobs are not posted");
    assert!(host.log_text().contains("slack: nothing to post for web #42 job test"), "{}", host.log_text());

    let host = self::host().with_config("on", "always").with_config("events", "job");
    Slack::notify(&host, job).unwrap();
    Slack::notify(&host, finished(Status::Failure, None)).unwrap();
    assert_eq!(host.requests().len(), 1);
}

#[test]
fn a_missing_or_bad_secret_fails_clearly() {
    let error = Slack::notify(&FakeHost::new(), finished(Status::Failure, None)).unwrap_err();
    assert!(error.message.starts_with("slack: secret SLACK_WEBHOOK_URL is not set"), "{}", error.message);
    let host = FakeHost::new().with_config("webhook-secret", "TEAM_HOOK").with_secret("TEAM_HOOK", "not a url");
    let error = Slack::notify(&host, finished(Status::Failure, None)).unwrap_err();
    assert!(error.message.contains("secret TEAM_HOOK does not hold an http(s) URL"), "{}", error.message);
    assert!(!error.message.contains("not a url"));
}

#[test]
fn a_configuration_error_names_the_key() {
    let host = host().with_config("on", "failures");
    let error = Slack::notify(&host, finished(Status::Failure, None)).unwrap_err();
    assert!(error.message.contains(r#"config key "on": unknown value "failures""#), "{}", error.message);
    assert_eq!(error.diagnostics[0].field.as_deref(), Some("with.on"));
    assert!(host.requests().is_empty());
}

fn answered(response: HttpResponse) -> String {
    let host = FakeHost::new().with_secret("SLACK_WEBHOOK_URL", URL).with_http_response(URL, response);
    let error = Slack::notify(&host, finished(Status::Failure, None)).unwrap_err().message;
    assert!(!error.contains("XXXXSECRETXXXX") && !error.contains("hooks.slack.com"), "leaks the URL: {error}");
    error
}

#[test]
fn slack_error_answers_are_clear_failures_without_the_url() {
    assert_eq!(
        answered(HttpResponse::new(404, "no_service")),
        "slack: Slack answered 404 Not Found: no_service (the incoming webhook was disabled or removed; \
         create a new one and update the secret; webhook from secret SLACK_WEBHOOK_URL)"
    );
    assert!(answered(HttpResponse::new(400, "invalid_payload")).starts_with(
        "slack: Slack answered 400 Bad Request: invalid_payload (Slack rejected the message as malformed"
    ));
    assert!(
        answered(HttpResponse::new(403, "invalid_token"))
            .contains("403 Forbidden: invalid_token (the webhook URL is not valid")
    );
    assert!(answered(HttpResponse::new(403, "action_prohibited")).contains("restricted posting"));
    assert!(answered(HttpResponse::new(404, "channel_not_found")).contains("channel no longer exists"));
    assert!(answered(HttpResponse::new(410, "channel_is_archived")).contains("410 Gone: channel_is_archived"));
    let mut limited = HttpResponse::new(429, "rate_limited");
    limited.headers.push(("Retry-After".into(), "30".into()));
    assert_eq!(
        answered(limited),
        "slack: Slack answered 429 Too Many Requests: rate_limited (Slack is rate-limiting this webhook; \
         retry after 30 s; webhook from secret SLACK_WEBHOOK_URL)"
    );
    assert!(
        answered(HttpResponse::new(500, "rollup_error"))
            .contains("500 Internal Server Error: rollup_error (Slack had a problem")
    );
    // An answer that echoes the URL is scrubbed.
    let echoed = answered(HttpResponse::new(400, format!("bad request to {URL}")));
    assert!(echoed.contains("bad request to <webhook URL>"), "{echoed}");
}

#[test]
fn a_transport_error_does_not_echo_the_url() {
    // The fake host has no answer for the URL: its error names the URL, which must be scrubbed.
    let host = FakeHost::new().with_secret("SLACK_WEBHOOK_URL", URL);
    let error = Slack::notify(&host, finished(Status::Failure, None)).unwrap_err().message;
    assert!(
        error.starts_with("slack: posting to the webhook of secret SLACK_WEBHOOK_URL failed: POST <webhook URL>"),
        "{error}"
    );
    assert!(!error.contains("XXXXSECRETXXXX"));
}
