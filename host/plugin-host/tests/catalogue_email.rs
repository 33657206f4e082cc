//! The builtin `email` notifier loaded by the real host, sending to a real SMTP server
//! (aiosmtpd from PyPI, started by `tests/smtp/server.py` on 127.0.0.1): STARTTLS with a
//! private CA and AUTH, clear text when STARTTLS is not offered, the refusal of a port that
//! was not granted, and the server's error replies (a rejected recipient, a wrong password,
//! an untrusted certificate) as failures with the reply text.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use chengis_plugin_host::bindings::notifier::Event;
use chengis_plugin_host::types::Status;
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin, PluginError};
use common::{MemoryLog, components, fixtures};
use serde_json::Value;

/// A running `tests/smtp/server.py`; stopped when dropped.
struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts the server with these options (`--tls`, `--auth USER:PASSWORD`, `--reject ADDRESS`).
    fn start(options: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}): the email tests need python3 with aiosmtpd (`python3 -m pip install aiosmtpd`)")
            });
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse() else {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            let _ = child.kill();
            panic!(
                "the SMTP test server {} did not start ({}): {stderr}\n\
                 It needs aiosmtpd from PyPI: `python3 -m pip install aiosmtpd`",
                script.display(),
                child.wait().map(|s| s.to_string()).unwrap_or_default()
            );
        };
        SmtpServer { child, port, dir }
    }

    /// The messages it accepted, in order (see server.py for the fields).
    fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect()
    }

    /// The PEM of the private CA that signed its certificate (servers started with `--tls`).
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tls/ca.pem")).unwrap()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The email component, loaded with `grants`.
fn load(grants: &[&str]) -> Plugin {
    let bytes = components::component("chengis-plugin-email");
    let runtime = common::runtime_with(true);
    let manifest = runtime.inspect(&bytes).unwrap().manifest;
    assert_eq!(manifest.name, "email");
    runtime
        .load(
            &bytes,
            &Allowlist::from_iter([Digest::of(&bytes)]),
            Grants::parse(grants.iter().copied()).unwrap(),
            Limits::default(),
        )
        .unwrap()
}

/// Calls `notify` with this configuration (and `SMTP_PASSWORD` when given).
fn notify(
    plugin: &Plugin,
    config: &[(String, String)],
    password: Option<&str>,
    event: &Event,
) -> (Result<(), PluginError>, Arc<MemoryLog>) {
    let log = MemoryLog::new();
    let ctx = CallContext {
        config: config.to_vec(),
        secrets: password.map(|p| HashMap::from([("SMTP_PASSWORD".to_string(), p.to_string())])).unwrap_or_default(),
        log: Some(log.clone()),
        ..CallContext::default()
    };
    (plugin.notify(&ctx, event), log)
}

/// A failed build of `web` #42 on main, after a success, with HTML-unsafe and non-ASCII text.
fn failed_build() -> Event {
    let mut event = fixtures::event();
    event.build.status = Status::Failure;
    event.build.commit.message = "Fix <b>bold</b> & \"quotes\"\n\nDetails".into();
    event.build.commit.author = "Zoë Dev <zoe@example.com>".into();
    event.build.url = Some("https://ci.example/web/builds/9?tab=log&x=1".into());
    event.build.duration_ms = Some(61_500);
    event.previous_status = Some(Status::Success);
    event
}

/// The configuration for `server`, with `extra` keys set or replaced.
fn config(server: &SmtpServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let port = server.port.to_string();
    let mut config: Vec<(String, String)> = [
        ("smtp-host", "127.0.0.1"),
        ("smtp-port", port.as_str()),
        ("from", "Chengis CI <ci@example.com>"),
        ("to", "dev@example.com, ops@example.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in extra {
        config.retain(|(k, _)| k != key);
        config.push((key.to_string(), value.to_string()));
    }
    config
}

fn part<'a>(message: &'a Value, content_type: &str) -> &'a str {
    let parts = message["parsed"]["parts"].as_array().unwrap();
    let part = parts
        .iter()
        .find(|p| p["content_type"] == content_type)
        .unwrap_or_else(|| panic!("no {content_type} part: {message:#}"));
    assert_eq!(part["charset"], "utf-8");
    part["text"].as_str().unwrap()
}

#[test]
fn delivers_over_starttls_with_auth_to_a_real_smtp_server() {
    let server = SmtpServer::start(&["--tls", "--auth", "ci:s3cret-pw"]);
    let plugin = load(&[&format!("tcp:127.0.0.1:{}", server.port), "secret:SMTP_PASSWORD"]);
    let ca = server.ca_pem();
    let config = config(&server, &[("username", "ci"), ("tls-ca-cert", &ca)]);
    let (result, log) = notify(&plugin, &config, Some("s3cret-pw"), &failed_build());
    result.unwrap_or_else(|e| panic!("{e}\nlog: {}", log.text()));

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert_eq!(message["mail_from"], "ci@example.com");
    assert_eq!(message["rcpt_tos"], serde_json::json!(["dev@example.com", "ops@example.com"]));
    assert_eq!(message["tls"], true, "the session was not upgraded with STARTTLS");
    assert_eq!(message["login"], "ci");

    let parsed = &message["parsed"];
    assert_eq!(parsed["defects"], serde_json::json!([]), "{parsed:#}");
    let headers = &parsed["headers"];
    assert_eq!(headers["From"], "Chengis CI <ci@example.com>");
    assert_eq!(headers["To"], "dev@example.com, ops@example.com");
    assert_eq!(headers["Subject"], "[chengis] web #42 failure (main)");
    assert_eq!(headers["MIME-Version"], "1.0");
    assert!(headers["Message-ID"].as_str().unwrap().ends_with("@example.com>"), "{headers:#}");
    assert!(headers["Date"].as_str().unwrap().ends_with(" +0000"), "{headers:#}");
    let age = parsed["date_age_seconds"].as_f64().unwrap();
    assert!((-5.0..300.0).contains(&age), "the Date is {age} s off the wall clock: {headers:#}");
    assert_eq!(parsed["content_type"], "multipart/alternative");

    let text = part(message, "text/plain");
    assert!(text.starts_with("web #42 failed\r\n\r\n"), "{text}");
    for line in [
        "Pipeline: web",
        "Build:    #42",
        "Status:   failure",
        "Branch:   main",
        "Commit:   0123456 Fix <b>bold</b> & \"quotes\"",
        "Author:   Zoë Dev <zoe@example.com>",
        "Duration: 1 min 1 s",
        "Link:     https://ci.example/web/builds/9?tab=log&x=1",
    ] {
        assert!(text.contains(&format!("{line}\r\n")), "{line:?} missing from:\n{text}");
    }
    let html = part(message, "text/html");
    assert!(html.contains("<td>0123456 Fix &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quotes&quot;</td>"), "{html}");
    assert!(html.contains("<td>Zoë Dev &lt;zoe@example.com&gt;</td>"), "{html}");
    assert!(html.contains("<a href=\"https://ci.example/web/builds/9?tab=log&amp;x=1\">"), "{html}");
    assert!(!html.contains("<b>bold"));
    // Lines were CRLF on the wire and the password went only into AUTH.
    let raw = message["raw"].as_str().unwrap();
    assert!(!raw.replace("\r\n", "").contains('\n'));
    assert!(!raw.contains("s3cret"));
    let log = log.text();
    assert!(
        log.contains(&format!("e-mailed dev@example.com, ops@example.com about web #42 (failure) through 127.0.0.1:{}: 250 2.0.0 OK: queued as M1", server.port)),
        "{log}"
    );
    assert!(!log.contains("s3cret"));

    // A later success after that failure is "fixed"; a second success is not mailed.
    let mut fixed = fixtures::event();
    fixed.previous_status = Some(Status::Failure);
    notify(&plugin, &config, Some("s3cret-pw"), &fixed).0.unwrap();
    fixed.previous_status = Some(Status::Success);
    notify(&plugin, &config, Some("s3cret-pw"), &fixed).0.unwrap();
    let messages = server.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["parsed"]["headers"]["Subject"], "[chengis] web #42 fixed (main)");
}

#[test]
fn clear_text_when_starttls_is_not_offered_and_allowed() {
    let server = SmtpServer::start(&[]);
    let plugin = load(&[&format!("tcp:127.0.0.1:{}", server.port)]);

    // The default (`required`) refuses a server without STARTTLS.
    let (result, _) = notify(&plugin, &config(&server, &[]), None, &failed_build());
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert!(error.to_string().contains("does not offer STARTTLS, and `starttls` is `required`"), "{error}");
    assert!(server.messages().is_empty());

    let config = config(
        &server,
        &[
            ("starttls", "if-available"),
            // A socket timeout well inside the host's call deadline (see the plugin's README).
            ("timeout-seconds", "3"),
            ("subject", "Build {number} of {pipeline}: {status} — {short-sha}"),
        ],
    );
    let (result, log) = notify(&plugin, &config, None, &failed_build());
    result.unwrap_or_else(|e| panic!("{e}\nlog: {}", log.text()));
    assert!(
        log.text()
            .contains(&format!("SMTP server 127.0.0.1:{} does not offer STARTTLS: sending in clear text", server.port))
    );
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["tls"], false);
    // The non-ASCII subject arrives RFC 2047 encoded and decodes back.
    assert!(messages[0]["raw"].as_str().unwrap().contains("\r\nSubject: =?UTF-8?B?"));
    assert_eq!(messages[0]["parsed"]["headers"]["Subject"], "Build 42 of web: failure — 0123456");
}

#[test]
fn a_port_that_was_not_granted_is_refused() {
    let server = SmtpServer::start(&[]);
    let granted = SmtpServer::start(&[]);
    let plugin = load(&[&format!("tcp:127.0.0.1:{}", granted.port)]);
    let (result, _) = notify(&plugin, &config(&server, &[("starttls", "never")]), None, &failed_build());
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("outbound TCP to 127.0.0.1:{}", server.port)) && message.contains("denied"),
        "{message}"
    );
    assert!(server.messages().is_empty() && granted.messages().is_empty());

    // Without any tcp grant nothing is reachable, and the denial names the grant.
    let plugin = load(&[]);
    let (result, _) = notify(&plugin, &config(&server, &[("starttls", "never")]), None, &failed_build());
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    let message = error.to_string();
    let port = server.port;
    assert!(
        message.contains(&format!("outbound TCP to 127.0.0.1:{port} denied"))
            && message.contains(&format!("grant `tcp:127.0.0.1:{port}`")),
        "{message}"
    );
    assert!(server.messages().is_empty());
}

#[test]
fn smtp_error_replies_become_failures_with_the_reply_text() {
    let server = SmtpServer::start(&["--tls", "--auth", "ci:right", "--reject", "bad@example.com"]);
    let plugin = load(&[&format!("tcp:127.0.0.1:{}", server.port), "secret:SMTP_PASSWORD"]);
    let ca = server.ca_pem();

    // A rejected recipient: nothing is sent, the 550 and its text are the failure.
    let config_bad =
        config(&server, &[("username", "ci"), ("tls-ca-cert", &ca), ("to", "dev@example.com, bad@example.com")]);
    let (result, _) = notify(&plugin, &config_bad, Some("right"), &failed_build());
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert!(
        error.to_string().contains(&format!(
            "SMTP server 127.0.0.1:{} rejected 1 of 2 recipients, nothing was sent: <bad@example.com>: 550 5.1.1 <bad@example.com>: Recipient address rejected: User unknown",
            server.port
        )),
        "{error}"
    );

    // A wrong password: the 535 reply, never the password.
    let config_ok = config(&server, &[("username", "ci"), ("tls-ca-cert", &ca)]);
    let (result, log) = notify(&plugin, &config_ok, Some("wrong-pw"), &failed_build());
    let error = result.unwrap_err().to_string();
    assert!(error.contains("refused AUTH PLAIN (as \"ci\"): 535 5.7.8 Authentication credentials invalid"), "{error}");
    assert!(!error.contains("wrong-pw") && !log.text().contains("wrong-pw"));

    // A certificate from a CA the plugin does not trust: TLS fails, nothing is sent.
    let config_untrusted = config(&server, &[("username", "ci")]);
    let (result, _) = notify(&plugin, &config_untrusted, Some("right"), &failed_build());
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains(&format!("TLS with SMTP server 127.0.0.1:{} failed: invalid peer certificate", server.port)),
        "{error}"
    );

    assert!(server.messages().is_empty());
}
