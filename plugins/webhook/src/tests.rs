//! Native tests of the webhook notifier against the SDK's fake host: the exact request and
//! document, the signature, the `events` filter, and retries with backoff on 5xx and
//! connection errors but not on 4xx.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use chengis_plugin_sdk::log::Level;
use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::outputs::TestSuite;
use chengis_plugin_sdk::sandbox::{Command, Exit};
use chengis_plugin_sdk::testing::{FakeHost, capability_grants, header, sample_event, sample_job};
use chengis_plugin_sdk::types::{Job, Status};
use chengis_plugin_sdk::{Config, HttpError, HttpResponse};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::*;

const URL: &str = "https://hooks.example.com/chengis";
const KEY: &str = "s3cret-key";
const NOW: u64 = 1_700_000_000;

/// A failed build of the SDK's sample after a success, with a commit message that needs
/// escaping in JSON.
fn event() -> Event {
    let mut event =
        Event { previous_status: Some(Status::Success), ..sample_event(EventKind::BuildFinished, Status::Failure) };
    event.build.commit.message = "Fix the thing\n\nBody \"quoted\"".into();
    event
}

/// A fake host whose HTTP answers come from a queue, one per request (the SDK's `FakeHost`
/// answers every request to a URL alike); everything else is the `FakeHost`'s.
struct Sequence {
    inner: FakeHost,
    answers: RefCell<VecDeque<Result<HttpResponse, HttpError>>>,
}

impl Sequence {
    fn new(inner: FakeHost, answers: Vec<Result<HttpResponse, HttpError>>) -> Self {
        Sequence { inner, answers: RefCell::new(answers.into()) }
    }
}

impl Host for Sequence {
    fn log(&self, level: Level, message: &str) {
        self.inner.log(level, message);
    }
    fn config(&self) -> Config {
        self.inner.config()
    }
    fn secret(&self, name: &str) -> Option<String> {
        self.inner.secret(name)
    }
    fn exec(&self, command: &Command) -> Result<Exit, String> {
        self.inner.exec(command)
    }
    fn set_output(&self, name: &str, value: &str) {
        self.inner.set_output(name, value);
    }
    fn set_env(&self, name: &str, value: &str) {
        self.inner.set_env(name, value);
    }
    fn report_tests(&self, suite: &TestSuite) {
        self.inner.report_tests(suite);
    }
    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let canned = self.answers.borrow_mut().pop_front();
        // Record the request in the inner host (its own answer is ignored).
        let _ = self.inner.http(request);
        canned.unwrap_or_else(|| Err(HttpError("no more answers".into())))
    }
}

fn host() -> FakeHost {
    FakeHost::new().with_config("url", URL).with_secret("WEBHOOK_SECRET", KEY)
}

fn ok() -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse::new(200, "ok"))
}

/// Delivers `event` on `host` with canned answers; returns the result and the waits.
fn run(
    host: FakeHost,
    event: &Event,
    answers: Vec<Result<HttpResponse, HttpError>>,
) -> (Sequence, Result<(), Failure>, Vec<u64>) {
    let host = Sequence::new(host, answers);
    let mut waits = Vec::new();
    let result = deliver(&host, event, NOW, &mut |d: Duration| waits.push(d.as_millis() as u64));
    (host, result, waits)
}

#[test]
fn manifest_requests_any_host_and_the_default_secret() {
    let manifest = Webhook::manifest();
    assert_eq!((manifest.name.as_str(), manifest.version.as_str()), ("webhook", "0.1.0"));
    assert_eq!(capability_grants(&manifest), ["http:https://*:*", "http:http://*:*", "secret:WEBHOOK_SECRET"]);
    let keys: Vec<_> = manifest.config.iter().map(|f| (f.name.as_str(), f.required, f.default.as_deref())).collect();
    assert_eq!(
        keys,
        [
            ("url", true, None),
            ("secret-name", false, Some("WEBHOOK_SECRET")),
            ("events", false, Some("build-started,build-finished,job-started,job-finished")),
            ("retries", false, Some("3")),
            ("backoff-ms", false, Some("500")),
        ]
    );
}

#[test]
fn posts_the_signed_document() {
    let (host, result, waits) = run(host(), &event(), vec![ok()]);
    result.unwrap();
    assert!(waits.is_empty());
    let requests = host.inner.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.url.as_str()), ("POST", URL));
    let body = String::from_utf8(request.body.clone()).unwrap();
    // The exact bytes: fields in their documented order, null for what is absent.
    assert_eq!(
        body,
        r#"{"kind":"build-finished","build":{"id":9,"number":42,"pipeline":"web","status":"failure","trigger":"push","url":"https://ci.example/builds/9","duration_ms":61500,"commit":{"sha":"0123456789abcdef0123456789abcdef01234567","repository":"https://git.example/web.git","branch":"main","tag":null,"message":"Fix the thing\n\nBody \"quoted\"","author":"A <a@example.com>"}},"job":null,"previous_status":"success"}"#
    );
    let names: Vec<&str> = request.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "Content-Type",
            "User-Agent",
            "X-Chengis-Event",
            "X-Chengis-Timestamp",
            "X-Chengis-Signature",
            "X-Chengis-Delivery"
        ]
    );
    assert_eq!(header(request, "Content-Type").unwrap(), "application/json");
    assert_eq!(header(request, "User-Agent").unwrap(), "chengis-webhook/0.1.0");
    assert_eq!(header(request, "X-Chengis-Event").unwrap(), "build-finished");
    assert_eq!(header(request, "X-Chengis-Timestamp").unwrap(), "1700000000");
    assert_eq!(header(request, "X-Chengis-Delivery").unwrap(), signature::delivery_id(9, "build-finished", None, NOW));
    // The receiver's check: HMAC-SHA256(key, "<timestamp>.<body>") in lowercase hex.
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("{NOW}.{body}").as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header(request, "X-Chengis-Signature").unwrap(), expected);
    assert_eq!(
        host.inner.log_text(),
        "webhook: delivered build-finished to https://hooks.example.com/chengis (200 OK)\n"
    );
}

#[test]
fn a_job_event_carries_the_job() {
    let mut event = event();
    event.kind = EventKind::JobStarted;
    event.previous_status = None;
    event.job = Some(Job { image: Some("rust:1".into()), ..sample_job("test", Status::Running) });
    let (host, result, _) = run(host(), &event, vec![ok()]);
    result.unwrap();
    let request = &host.inner.requests()[0];
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["kind"], "job-started");
    assert_eq!(
        body["job"],
        json!({"id": 3, "name": "test", "status": "running", "image": "rust:1", "duration_ms": null})
    );
    assert_eq!(body["previous_status"], json!(null));
    assert_eq!(header(request, "X-Chengis-Event").unwrap(), "job-started");
    assert_eq!(
        header(request, "X-Chengis-Delivery").unwrap(),
        signature::delivery_id(9, "job-started", Some("test"), NOW)
    );
}

#[test]
fn events_filters_kinds() {
    let mut started = event();
    started.kind = EventKind::BuildStarted;
    let (host, result, _) = run(host().with_config("events", "build-finished"), &started, vec![ok()]);
    result.unwrap();
    assert!(host.inner.requests().is_empty());
    assert_eq!(host.inner.log_text(), "webhook: build-started is not in `events`; nothing sent\n");
}

#[test]
fn retries_5xx_with_doubling_backoff_then_succeeds() {
    let answers = vec![Ok(HttpResponse::new(503, "busy")), Ok(HttpResponse::new(502, "")), ok()];
    let (host, result, waits) = run(host(), &event(), answers);
    result.unwrap();
    assert_eq!(waits, [500, 1000]);
    let requests = host.inner.requests();
    assert_eq!(requests.len(), 3);
    // A retry is the same delivery: same body, timestamp, signature and id.
    assert!(requests.iter().all(|r| r == &requests[0]));
    assert_eq!(
        host.inner.log_text(),
        "webhook: https://hooks.example.com/chengis answered 503 Service Unavailable: busy; retrying in 500 ms (attempt 1 of 4)\n\
         webhook: https://hooks.example.com/chengis answered 502 Bad Gateway; retrying in 1000 ms (attempt 2 of 4)\n\
         webhook: delivered build-finished to https://hooks.example.com/chengis (200 OK, attempt 3 of 4)\n"
    );
}

#[test]
fn gives_up_after_the_retries() {
    let host = host().with_config("retries", "2").with_config("backoff-ms", "100");
    let answers = vec![
        Err(HttpError("connection refused".into())),
        Ok(HttpResponse::new(500, "oops")),
        Ok(HttpResponse::new(500, "oops")),
    ];
    let (host, result, waits) = run(host, &event(), answers);
    assert_eq!(
        result.unwrap_err().message,
        "webhook: https://hooks.example.com/chengis answered 500 Internal Server Error: oops (gave up after 3 attempts)"
    );
    assert_eq!(waits, [100, 200]);
    assert_eq!(host.inner.requests().len(), 3);

    let (_, result, waits) =
        run(self::host().with_config("retries", "0"), &event(), vec![Err(HttpError("connection refused".into()))]);
    assert_eq!(
        result.unwrap_err().message,
        "webhook: https://hooks.example.com/chengis could not be reached: connection refused (gave up after 1 attempt)"
    );
    assert!(waits.is_empty());
}

#[test]
fn a_4xx_answer_is_not_retried() {
    let (host, result, waits) =
        run(host(), &event(), vec![Ok(HttpResponse::new(400, "{\"error\":\"bad signature\"}")), ok()]);
    assert_eq!(
        result.unwrap_err().message,
        r#"webhook: https://hooks.example.com/chengis answered 400 Bad Request: {"error":"bad signature"} (not retried)"#
    );
    assert!(waits.is_empty());
    assert_eq!(host.inner.requests().len(), 1);
}

#[test]
fn a_denied_destination_is_not_retried() {
    let denied =
        HttpError("POST https://hooks.example.com/chengis: denied by the host: this destination is not granted".into());
    let (host, result, waits) = run(host(), &event(), vec![Err(denied)]);
    let message = result.unwrap_err().message;
    assert!(
        message.starts_with("webhook: sending build-finished to https://hooks.example.com/chengis was denied: "),
        "{message}"
    );
    assert!(waits.is_empty());
    assert_eq!(host.inner.requests().len(), 1);
}

#[test]
fn a_missing_key_fails_before_sending() {
    for host in [
        FakeHost::new().with_config("url", URL),
        FakeHost::new().with_config("url", URL).with_secret("WEBHOOK_SECRET", ""),
    ] {
        let (host, result, _) = run(host, &event(), vec![ok()]);
        assert_eq!(
            result.unwrap_err().message,
            "webhook: secret WEBHOOK_SECRET (the HMAC key) is not set or empty: store a random key in it, \
             grant `secret:WEBHOOK_SECRET` to the plugin and give the same key to the receiver"
        );
        assert!(host.inner.requests().is_empty());
    }
    // `secret-name` picks another secret.
    let host =
        FakeHost::new().with_config("url", URL).with_config("secret-name", "HOOK_KEY").with_secret("HOOK_KEY", KEY);
    let (_, result, _) = run(host, &event(), vec![ok()]);
    result.unwrap();
}

#[test]
fn a_configuration_error_names_the_key() {
    let (host, result, _) = run(FakeHost::new().with_secret("WEBHOOK_SECRET", KEY), &event(), vec![ok()]);
    let failure = result.unwrap_err();
    assert_eq!(failure.message, r#"invalid configuration: config key "url": is required but not set"#);
    assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.url"));
    assert!(host.inner.requests().is_empty());
}

#[test]
fn urls_are_shown_without_credentials_or_query() {
    assert_eq!(
        display_url("https://user:pw@hooks.example.com:8443/a/b?token=x#f"),
        "https://hooks.example.com:8443/a/b"
    );
    assert_eq!(display_url("http://127.0.0.1:9000?x=1"), "http://127.0.0.1:9000");
    assert_eq!(display_url("http://h"), "http://h");
}
