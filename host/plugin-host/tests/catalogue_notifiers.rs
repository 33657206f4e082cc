//! The builtin `slack` and `webhook` notifiers loaded by the real host and run against a local
//! HTTP server on 127.0.0.1 that checks the documented request and answers like the real
//! service, errors included.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chengis_plugin_host::bindings::notifier::Event;
use chengis_plugin_host::types::Status;
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin};
use common::fake_http::{Answer, FakeServer};
use common::{MemoryLog, components, fixtures};
use sha2::{Digest as _, Sha256};

/// Loads the builtin component `package`, trusted, with `grants`.
fn load(package: &str, grants: &[&str]) -> Plugin {
    let bytes = components::component(package);
    let runtime = common::runtime_with(true);
    runtime
        .load(
            &bytes,
            &Allowlist::from_iter([Digest::of(&bytes)]),
            Grants::parse(grants.iter().copied()).unwrap(),
            Limits::default(),
        )
        .unwrap()
}

/// A plain-text answer, as Slack gives them (`ok`, `no_service`, ...).
fn text_answer(status: u16, body: &str) -> Answer {
    (status, vec![("Content-Type".into(), "text/plain; charset=utf-8".into())], body.into())
}

fn context(config: &[(&str, &str)], secrets: &[(&str, &str)], log: &Arc<MemoryLog>) -> CallContext {
    CallContext {
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        log: Some(log.clone()),
        ..CallContext::default()
    }
}

fn finished(status: Status, previous: Option<Status>) -> Event {
    let mut event = fixtures::event();
    event.build.status = status;
    event.build.url = Some("https://ci.example.com/builds/9".into());
    event.previous_status = previous;
    event
}

// ---- slack ----------------------------------------------------------------------------------

const SLACK_PATH: &str = "/services/T000/B000/XXXXSECRETXXXX";
const SLACK_GRANTS: &[&str] = &["http:http://127.0.0.1:*", "secret:SLACK_WEBHOOK_URL"];

#[test]
fn slack_posts_the_block_kit_message_to_the_webhook() {
    let server = FakeServer::start(|_| text_answer(200, "ok"));
    let plugin = load("chengis-plugin-slack", SLACK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}{SLACK_PATH}", server.url());
    let ctx = context(&[], &[("SLACK_WEBHOOK_URL", &url)], &log);
    plugin.notify(&ctx, &finished(Status::Failure, Some(Status::Success))).unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", SLACK_PATH));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some("chengis-slack/0.1.0"));
    let body = request.json();
    assert_eq!(body["text"], "web #42 failed (main @ 0123456)");
    let attachments = body["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["color"], "#e01e5a");
    let blocks = attachments[0]["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[0]["text"]["text"], "*<https://ci.example.com/builds/9|web #42>* failed");
    let fields: Vec<&str> =
        blocks[1]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "*Status*\nFailed",
            "*Job*\nweb",
            "*Build*\n#42",
            "*Branch*\nmain",
            "*Commit*\n`0123456` Fix the thing",
            "*Duration*\n1.5 s"
        ]
    );
    assert_eq!(blocks[2]["elements"][0]["text"], "Triggered by push · A");
    assert_eq!(blocks[3]["elements"][0]["text"], "<https://ci.example.com/builds/9|View build #42>");
    assert_eq!(log.lines(), ["slack: posted web #42 failed"]);
}

#[test]
fn slack_on_filtering_posts_a_fix_but_not_a_second_success() {
    let server = FakeServer::start(|_| text_answer(200, "ok"));
    let plugin = load("chengis-plugin-slack", SLACK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}{SLACK_PATH}", server.url());
    let ctx = context(&[("on", "fixed")], &[("SLACK_WEBHOOK_URL", &url)], &log);
    plugin.notify(&ctx, &finished(Status::Success, Some(Status::Failure))).unwrap();
    plugin.notify(&ctx, &finished(Status::Success, Some(Status::Success))).unwrap();
    plugin.notify(&ctx, &finished(Status::Failure, Some(Status::Success))).unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "only the fix is posted");
    let body = requests[0].json();
    assert_eq!(body["text"], "web #42 fixed (main @ 0123456)");
    assert_eq!(body["attachments"][0]["color"], "#2eb886");
    assert_eq!(body["attachments"][0]["blocks"][1]["fields"][0]["text"], "*Status*\nFixed");
}

#[test]
fn slack_error_answers_name_slack_and_the_status_but_not_the_url() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/services/gone" => text_answer(404, "no_service"),
        _ => (429, vec![("Retry-After".into(), "30".into())], "rate_limited".into()),
    });
    let plugin = load("chengis-plugin-slack", SLACK_GRANTS);
    for (path, expected) in [
        (
            "/services/gone",
            "slack: Slack answered 404 Not Found: no_service (the incoming webhook was disabled or removed",
        ),
        (
            "/services/busy",
            "slack: Slack answered 429 Too Many Requests: rate_limited (Slack is rate-limiting this webhook; retry after 30 s",
        ),
    ] {
        let log = MemoryLog::new();
        let url = format!("{}{path}", server.url());
        let ctx = context(&[("on", "always")], &[("SLACK_WEBHOOK_URL", &url)], &log);
        let error = plugin.notify(&ctx, &finished(Status::Failure, None)).unwrap_err();
        assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
        let message = error.to_string();
        assert!(message.starts_with(r#"plugin "slack" 0.1.0: "#), "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(path) && !message.contains(&server.url()), "leaks the webhook URL: {message}");
        assert!(!log.text().contains(path), "leaks the webhook URL: {}", log.text());
    }
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn slack_without_the_secret_grant_is_denied_naming_the_grant() {
    let plugin = load("chengis-plugin-slack", &["http:http://127.0.0.1:*"]);
    let log = MemoryLog::new();
    let ctx = context(&[], &[("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/x")], &log);
    let error = plugin.notify(&ctx, &finished(Status::Failure, None)).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    assert!(error.to_string().contains("secret:SLACK_WEBHOOK_URL"), "{error}");
}

// ---- webhook --------------------------------------------------------------------------------

const KEY: &str = "s3cret-key";
const WEBHOOK_GRANTS: &[&str] = &["http:http://127.0.0.1:*", "secret:WEBHOOK_SECRET"];

/// HMAC-SHA256 (RFC 2104) written out here, independently of the plugin's `hmac` crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_test_hmac_matches_a_published_vector() {
    assert_eq!(
        hmac_sha256(b"key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

#[test]
fn webhook_posts_a_signed_timestamped_document() {
    let server = FakeServer::start(|_| common::fake_http::json_answer(200, serde_json::json!({"ok": true})));
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}/hooks/chengis?team=ci", server.url());
    let ctx = context(&[("url", &url)], &[("WEBHOOK_SECRET", KEY)], &log);
    plugin.notify(&ctx, &finished(Status::Failure, Some(Status::Success))).unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/hooks/chengis?team=ci"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some("chengis-webhook/0.1.0"));
    assert_eq!(request.header("x-chengis-event"), Some("build-finished"));
    let timestamp: u64 = request.header("x-chengis-timestamp").unwrap().parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(timestamp <= now && now - timestamp < 60, "timestamp {timestamp} is not recent (now {now})");
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&request.body);
    assert_eq!(
        request.header("x-chengis-signature"),
        Some(format!("sha256={}", hmac_sha256(KEY.as_bytes(), &signed)).as_str())
    );
    assert_eq!(request.header("x-chengis-delivery").map(str::len), Some(32));
    assert_eq!(
        request.json(),
        serde_json::json!({
            "kind": "build-finished",
            "build": {
                "id": 9, "number": 42, "pipeline": "web", "status": "failure", "trigger": "push",
                "url": "https://ci.example.com/builds/9", "duration_ms": 1500,
                "commit": {
                    "sha": "0123456789abcdef0123456789abcdef01234567", "repository": "https://git.example/web.git",
                    "branch": "main", "tag": null, "message": "Fix the thing", "author": "A <a@example.com>",
                },
            },
            "job": null,
            "previous_status": "success",
        })
    );
    assert_eq!(log.lines(), [format!("webhook: delivered build-finished to {}/hooks/chengis (200 OK)", server.url())]);
}

#[test]
fn webhook_retries_5xx_with_backoff_until_it_succeeds() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let server = FakeServer::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => text_answer(503, "busy"),
        _ => text_answer(200, "ok"),
    });
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}/hook", server.url());
    let ctx = context(&[("url", &url), ("backoff-ms", "100")], &[("WEBHOOK_SECRET", KEY)], &log);
    let started = Instant::now();
    plugin.notify(&ctx, &finished(Status::Success, None)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "waited 100 + 200 ms between attempts");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Each attempt is the same delivery: same body, timestamp, signature and id.
    for request in &requests[1..] {
        assert_eq!(request.body, requests[0].body);
        for name in ["x-chengis-timestamp", "x-chengis-signature", "x-chengis-delivery"] {
            assert_eq!(request.header(name), requests[0].header(name), "{name}");
        }
    }
    assert_eq!(
        log.lines(),
        [
            format!("webhook: {url} answered 503 Service Unavailable: busy; retrying in 100 ms (attempt 1 of 4)"),
            format!("webhook: {url} answered 503 Service Unavailable: busy; retrying in 200 ms (attempt 2 of 4)"),
            format!("webhook: delivered build-finished to {url} (200 OK, attempt 3 of 4)"),
        ]
    );
}

#[test]
fn webhook_does_not_retry_a_4xx_answer() {
    let server =
        FakeServer::start(|_| common::fake_http::json_answer(400, serde_json::json!({"error": "bad signature"})));
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}/hook", server.url());
    let ctx = context(&[("url", &url), ("backoff-ms", "100")], &[("WEBHOOK_SECRET", KEY)], &log);
    let error = plugin.notify(&ctx, &finished(Status::Success, None)).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            r#"plugin "webhook" 0.1.0: failed: webhook: {url} answered 400 Bad Request: {{"error":"bad signature"}} (not retried)"#
        )
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn webhook_to_a_host_not_granted_is_denied() {
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let ctx = context(
        &[("url", "https://hooks.example.com/chengis"), ("backoff-ms", "10")],
        &[("WEBHOOK_SECRET", KEY)],
        &log,
    );
    let error = plugin.notify(&ctx, &finished(Status::Success, None)).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    assert_eq!(
        error.to_string(),
        "plugin \"webhook\" 0.1.0: outbound HTTP to https://hooks.example.com:443 denied: the operator has not \
         granted it (grant `http:https://hooks.example.com:443` to allow it)"
    );
}

#[test]
fn webhook_without_a_key_fails_clearly() {
    let server = FakeServer::start(|_| text_answer(200, "ok"));
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("{}/hook", server.url());
    let ctx = context(&[("url", &url)], &[], &log);
    let error = plugin.notify(&ctx, &finished(Status::Success, None)).unwrap_err();
    assert!(error.to_string().contains("secret WEBHOOK_SECRET (the HMAC key) is not set or empty"), "{error}");
    assert!(server.requests().is_empty());
}

#[test]
fn webhook_retries_a_connection_error_then_gives_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let plugin = load("chengis-plugin-webhook", WEBHOOK_GRANTS);
    let log = MemoryLog::new();
    let url = format!("http://127.0.0.1:{port}/hook");
    let ctx = context(&[("url", &url), ("retries", "1"), ("backoff-ms", "10")], &[("WEBHOOK_SECRET", KEY)], &log);
    let error = plugin.notify(&ctx, &finished(Status::Success, None)).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("webhook: {url} could not be reached: ")), "{message}");
    assert!(message.ends_with("(gave up after 2 attempts)"), "{message}");
    assert!(log.text().contains("retrying in 10 ms (attempt 1 of 2)"), "{}", log.text());
}
