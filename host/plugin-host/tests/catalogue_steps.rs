//! The builtin step executors (`script`, `junit`, `http`) loaded by the real host: scripts run
//! through the sandbox import as local processes in a temporary workspace (bash, sh, python3
//! and, when installed, node; inline and from a file), test reports are read from a workspace
//! preopened read-only and come back as suites, cases and outputs, and HTTP steps call a fake
//! service on 127.0.0.1 that checks the exact request, with unexpected statuses and ungranted
//! destinations failing the step.

mod common;

use std::path::Path;
use std::sync::Arc;

use chengis_plugin_host::bindings::outputs::TestOutcome;
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin, Runtime, StepOutcome};
use common::components::component;
use common::fake_http::{FakeServer, json_answer};
use common::fixtures::invocation;
use common::{MemoryLog, ProcessSandbox, runtime_with};
use serde_json::json;

fn load(runtime: &Runtime, package: &str, grants: &[&str]) -> Plugin {
    let bytes = component(package);
    let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
    runtime.load(&bytes, &allowlist, Grants::parse(grants.iter().copied()).unwrap(), Limits::default()).unwrap()
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn outputs(outcome: &StepOutcome) -> Vec<(&str, &str)> {
    outcome.outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A call context running commands in `workspace` and keeping the log.
fn step_context(workspace: &Path, log: &Arc<MemoryLog>, pairs: &[(&str, &str)]) -> CallContext {
    CallContext {
        config: config(pairs),
        log: Some(log.clone()),
        sandbox: Some(Arc::new(ProcessSandbox { workspace: workspace.into() })),
        workspace: Some(workspace.into()),
        ..CallContext::default()
    }
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn node_installed() -> bool {
    std::process::Command::new("node").arg("--version").output().is_ok_and(|out| out.status.success())
}

#[test]
fn script_runs_inline_sources_with_each_interpreter() {
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-script", &["exec"]);
    let workspace = tempfile::tempdir().unwrap();
    let mut cases = vec![
        ("sh", r#"echo "sh $GREETING $1 $2""#, "sh hello one two words"),
        ("bash", r#"words=("$@"); echo "bash ${#words[@]} ${words[1]}""#, "bash 2 two words"),
        (
            "python",
            "import os, sys; print('python', os.environ['GREETING'], sys.argv[1:])",
            "python hello ['one', 'two words']",
        ),
    ];
    if node_installed() {
        cases.push((
            "node",
            "console.log('node', process.env.GREETING, process.argv.slice(1))",
            "node hello [ 'one', 'two words' ]",
        ));
    }
    for (lang, source, expected) in cases {
        let log = MemoryLog::new();
        let ctx =
            step_context(workspace.path(), &log, &[("lang", lang), ("source", source), ("args", "one 'two words'")]);
        let outcome = plugin.run_step(&ctx, &invocation()).unwrap_or_else(|e| panic!("{lang}: {e}"));
        assert_eq!(outputs(&outcome), [("exit-code", "0")], "{lang}");
        assert_eq!(log.lines(), [expected], "{lang}");
    }
}

#[test]
fn script_failures_carry_the_exit_code() {
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-script", &["exec"]);
    let workspace = tempfile::tempdir().unwrap();
    let log = MemoryLog::new();
    // bash runs with `-e -o pipefail`: the failing stage of the pipe stops the script.
    let ctx = step_context(workspace.path(), &log, &[("lang", "bash"), ("source", "false | true\necho not reached")]);
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert_eq!(error.to_string(), r#"plugin "script" 0.1.0: failed: the script exited with code 1"#);
    assert!(log.lines().is_empty(), "{:?}", log.lines());

    let ctx = step_context(workspace.path(), &log, &[("lang", "python"), ("source", "import sys; sys.exit(4)")]);
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert_eq!(error.to_string(), r#"plugin "script" 0.1.0: failed: the script exited with code 4"#);
}

#[test]
fn script_runs_a_file_from_the_workspace_in_a_workdir() {
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-script", &["exec"]);
    let workspace = tempfile::tempdir().unwrap();
    write(workspace.path(), "ci/check.sh", "echo \"in $(basename \"$PWD\") with $# args: $*\"\n");
    write(
        workspace.path(),
        "ci/check.py",
        "import os, sys\nprint('py in', os.path.basename(os.getcwd()), sys.argv[1:])\n",
    );
    std::fs::create_dir_all(workspace.path().join("app/web")).unwrap();
    let log = MemoryLog::new();
    let ctx = step_context(
        workspace.path(),
        &log,
        &[("lang", "bash"), ("file", "ci/check.sh"), ("workdir", "app/web"), ("args", "--fast x")],
    );
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();
    assert_eq!(outputs(&outcome), [("exit-code", "0")]);
    let ctx = step_context(workspace.path(), &log, &[("lang", "python"), ("file", "./ci/check.py")]);
    plugin.run_step(&ctx, &invocation()).unwrap();
    let expected = format!("py in {} []", workspace.path().file_name().unwrap().to_string_lossy());
    assert_eq!(log.lines(), ["in web with 2 args: --fast x".to_string(), expected]);

    let ctx = step_context(workspace.path(), &log, &[("file", "../outside.sh")]);
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"plugin "script" 0.1.0: failed: invalid configuration: config key "file": "../outside.sh" must stay inside the workspace (no `..`); "../outside.sh" must stay inside the workspace (no `..`) (with.file)"#
    );
}

const SUREFIRE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="com.example.CartTest" tests="3" failures="1" skipped="1" time="0.75">
    <testcase name="adds an item" classname="com.example.CartTest" time="0.5"/>
    <testcase name="removes an item" classname="com.example.CartTest" time="0.25">
      <failure message="expected 0 items, got 1" type="AssertionError">at CartTest.java:41</failure>
    </testcase>
    <testcase name="pays" classname="com.example.CartTest"><skipped message="no sandbox"/></testcase>
  </testsuite>
</testsuites>
"#;

const TAP: &str = "TAP version 13\n1..2\nok 1 - renders\n  ---\n  duration_ms: 12\n  ...\nok 2 - caches # SKIP cold\n";

#[test]
fn junit_reads_xml_and_tap_reports_from_the_workspace() {
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-junit", &["workspace:read"]);
    let workspace = tempfile::tempdir().unwrap();
    write(workspace.path(), "shop/target/surefire-reports/TEST-com.example.CartTest.xml", SUREFIRE);
    write(workspace.path(), "web/out/results.tap", TAP);
    write(workspace.path(), "node_modules/x/junit.xml", "not even XML");
    let log = MemoryLog::new();
    let ctx = step_context(workspace.path(), &log, &[("tap", "web/**/*.tap")]);
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();

    assert_eq!(outputs(&outcome), [("passed", "2"), ("failed", "1"), ("skipped", "2"), ("files", "2")]);
    let suites: Vec<_> = outcome.tests.iter().map(|s| (s.name.as_str(), s.cases.len())).collect();
    assert_eq!(suites, [("com.example.CartTest", 3), ("web/out/results.tap", 2)]);
    let cases: Vec<_> = outcome
        .tests
        .iter()
        .flat_map(|s| &s.cases)
        .map(|c| (c.name.as_str(), c.classname.as_str(), c.outcome, c.duration_ms, c.message.as_deref()))
        .collect();
    assert_eq!(
        cases,
        [
            ("adds an item", "com.example.CartTest", TestOutcome::Passed, 500, None),
            (
                "removes an item",
                "com.example.CartTest",
                TestOutcome::Failed,
                250,
                Some("expected 0 items, got 1\nat CartTest.java:41")
            ),
            ("pays", "com.example.CartTest", TestOutcome::Skipped, 0, Some("no sandbox")),
            ("renders", "web/out/results.tap", TestOutcome::Passed, 12, None),
            ("caches", "web/out/results.tap", TestOutcome::Skipped, 0, Some("cold")),
        ]
    );
    assert_eq!(
        log.lines(),
        [
            "5 tests in 2 files: 2 passed, 1 failed, 2 skipped",
            "failed: com.example.CartTest › removes an item: expected 0 items, got 1"
        ]
    );
}

#[test]
fn junit_fails_on_malformed_reports_missing_reports_and_without_the_workspace() {
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-junit", &["workspace:read"]);
    let workspace = tempfile::tempdir().unwrap();
    write(
        workspace.path(),
        "reports/TEST-broken.xml",
        "<testsuite name=\"a\">\n  <testcase name=\"b\">\n</testsuite>\n",
    );
    let log = MemoryLog::new();
    let error = plugin.run_step(&step_context(workspace.path(), &log, &[]), &invocation()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin \"junit\" 0.1.0: failed: reports/TEST-broken.xml: malformed XML at line 3, column 1: \
         ill-formed document: expected `</testcase>`, but `</testsuite>` was found"
    );

    let ctx = step_context(workspace.path(), &log, &[("paths", "build/*.xml")]);
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"plugin "junit" 0.1.0: failed: no test report matched build/*.xml in the workspace (set `require: false` to allow that)"#
    );
    let ctx = step_context(workspace.path(), &log, &[("paths", "build/*.xml"), ("require", "false")]);
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();
    assert_eq!(outputs(&outcome), [("passed", "0"), ("failed", "0"), ("skipped", "0"), ("files", "0")]);

    // Without the grant the host preopens nothing at /workspace.
    let ungranted = load(&runtime, "chengis-plugin-junit", &[]);
    let error = ungranted.run_step(&step_context(workspace.path(), &log, &[]), &invocation()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(r#"plugin "junit" 0.1.0: failed: cannot read the workspace at /workspace ("#),
        "{message}"
    );
    assert!(message.ends_with("); the plugin needs the `workspace:read` grant"), "{message}");
}

#[test]
fn http_sends_the_documented_request_and_sets_status_and_body() {
    let server = FakeServer::start(|request| {
        if request.method == "POST" && request.path == "/api/deploy?env=prod" {
            json_answer(201, json!({"id": 17, "state": "queued"}))
        } else {
            json_answer(404, json!({"error": "not found"}))
        }
    });
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-http", &["http:http://127.0.0.1:*"]);
    let log = MemoryLog::new();
    let url = format!("{}/api/deploy?env=prod", server.url());
    let ctx = CallContext {
        config: config(&[
            ("url", &url),
            ("method", "POST"),
            ("headers", "Authorization: Bearer t0k3n\nContent-Type: application/json\nX-Request-Id: 42"),
            ("body", r#"{"ref":"main","sha":"0123456"}"#),
        ]),
        log: Some(log.clone()),
        ..CallContext::default()
    };
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();
    assert_eq!(outputs(&outcome), [("status", "201"), ("body", r#"{"id":17,"state":"queued"}"#)]);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/api/deploy?env=prod"));
    assert_eq!(request.header("authorization"), Some("Bearer t0k3n"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-request-id"), Some("42"));
    assert_eq!(request.json(), json!({"ref": "main", "sha": "0123456"}));
    let port = server.port();
    assert_eq!(
        log.lines(),
        [format!("POST http://127.0.0.1:{port}/api/deploy?…"), "answered 201 Created (26 bytes)".to_string()]
    );
    assert!(!log.text().contains("t0k3n"));

    // A GET with the body output renamed and a 404 that the step expects.
    let ctx = CallContext {
        config: config(&[
            ("url", &format!("{}/missing", server.url())),
            ("expect-status", "200,404"),
            ("output", "page"),
        ]),
        ..CallContext::default()
    };
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();
    assert_eq!(outputs(&outcome), [("status", "404"), ("page", r#"{"error":"not found"}"#)]);
    let second = &server.requests()[1];
    assert_eq!((second.method.as_str(), second.path.as_str(), second.body.len()), ("GET", "/missing", 0));
}

#[test]
fn http_fails_on_an_unexpected_status_with_the_service_answer() {
    let server = FakeServer::start(|_| json_answer(503, json!({"message": "deploys are frozen"})));
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-http", &["http:http://127.0.0.1:*"]);
    let url = format!("{}/api/deploy", server.url());
    let ctx = CallContext { config: config(&[("url", &url), ("method", "PUT")]), ..CallContext::default() };
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            r#"plugin "http" 0.1.0: failed: PUT {url} answered 503 Service Unavailable, expected 2xx: {{"message":"deploys are frozen"}}"#
        )
    );
    assert_eq!(server.requests()[0].method, "PUT");
}

#[test]
fn http_to_a_destination_not_granted_is_denied() {
    let server = FakeServer::start(|_| json_answer(200, json!({})));
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-http", &["http:https://deploy.example.com:443"]);
    let ctx = CallContext {
        config: config(&[("url", &format!("{}/x", server.url()))]),
        log: Some(MemoryLog::new()),
        ..CallContext::default()
    };
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    let port = server.port();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin \"http\" 0.1.0: outbound HTTP to http://127.0.0.1:{port} denied: the operator has not granted it \
             (grant `http:http://127.0.0.1:{port}` to allow it)"
        )
    );
    assert!(server.requests().is_empty());
}

#[test]
fn http_to_a_closed_port_fails_the_step_with_the_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let runtime = runtime_with(true);
    let plugin = load(&runtime, "chengis-plugin-http", &["http:http://127.0.0.1:*"]);
    let ctx =
        CallContext { config: config(&[("url", &format!("http://127.0.0.1:{port}/x?k=v"))]), ..CallContext::default() };
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    let message = error.to_string();
    let prefix = format!(r#"plugin "http" 0.1.0: failed: GET http://127.0.0.1:{port}/x?… failed: "#);
    assert!(message.starts_with(&prefix), "{message}");
    assert!(!message.contains("k=v"), "{message}");
}
