//! Hostile components are contained: each attack fails that call with the right error, nothing
//! leaks, and the runtime keeps serving other plugins (and the same plugin) afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chengis_plugin_host::{
    Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin, PluginError, Runtime, StepOutcome,
};
use common::components::component;
use common::fixtures::{event, invocation};
use common::{MemoryLog, ProcessSandbox, runtime_with};

fn runtime() -> Runtime {
    runtime_with(true)
}

fn load(runtime: &Runtime, package: &str, grants: &[&str], limits: Limits) -> Plugin {
    let bytes = component(package);
    let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
    runtime.load(&bytes, &allowlist, Grants::parse(grants.iter().copied()).unwrap(), limits).unwrap()
}

fn attack(plugin: &Plugin, attack: &str, ctx: CallContext) -> Result<StepOutcome, PluginError> {
    let mut ctx = ctx;
    ctx.config.push(("attack".into(), attack.into()));
    plugin.run_step(&ctx, &invocation())
}

/// The plugin still works, and so does another one.
fn still_serving(runtime: &Runtime, plugin: &Plugin) {
    attack(plugin, "ok", CallContext::default()).unwrap();
    load(runtime, "chengis-plugin-console", &[], Limits::default()).notify(&CallContext::default(), &event()).unwrap();
}

fn output(outcome: &StepOutcome, name: &str) -> String {
    outcome.outputs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let runtime = runtime();
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let plugin = load(&runtime, "chengis-test-hostile", &[], limits);
    let started = Instant::now();
    let error = attack(&plugin, "spin", CallContext::default()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error.kind, ErrorKind::TimedOut(_)), "{error}");
    assert_eq!(error.to_string(), r#"plugin "hostile" 6.6.6: timed out after 300 ms"#);
    assert!(elapsed < Duration::from_secs(2), "stopped after {elapsed:?}");
    still_serving(&runtime, &plugin);
}

#[test]
fn a_long_sleep_is_cut_at_the_deadline() {
    let runtime = runtime();
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let plugin = load(&runtime, "chengis-test-hostile", &[], limits);
    let started = Instant::now();
    let error = attack(&plugin, "sleep", CallContext::default()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error.kind, ErrorKind::TimedOut(_)), "{error}");
    assert!(elapsed < Duration::from_secs(2), "stopped after {elapsed:?}");
    still_serving(&runtime, &plugin);
}

#[test]
fn a_spinning_plugin_does_not_hold_up_others() {
    let runtime = runtime();
    let limits = Limits { timeout: Duration::from_secs(3), ..Limits::default() };
    let spinner = load(&runtime, "chengis-test-hostile", &[], limits);
    let console = load(&runtime, "chengis-plugin-console", &[], Limits::default());
    let spinning = std::thread::spawn(move || attack(&spinner, "spin", CallContext::default()));
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for _ in 0..20 {
        console.notify(&CallContext::default(), &event()).unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "20 notifications took {:?}", started.elapsed());
    assert!(!spinning.is_finished(), "the spinner should still be running");
    assert!(matches!(spinning.join().unwrap().unwrap_err().kind, ErrorKind::TimedOut(_)));
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    for pooling in [true, false] {
        let runtime = runtime_with(pooling);
        let limits = Limits { memory_bytes: 32 * 1024 * 1024, ..Limits::default() };
        let plugin = load(&runtime, "chengis-test-hostile", &[], limits);
        let error = attack(&plugin, "allocate", CallContext::default()).unwrap_err();
        assert!(matches!(error.kind, ErrorKind::MemoryExceeded { .. }), "pooling {pooling}: {error}");
        assert_eq!(error.to_string(), r#"plugin "hostile" 6.6.6: exceeded its memory limit of 32 MiB"#);
        still_serving(&runtime, &plugin);
    }
}

fn workspace_with_secret_outside() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("outside.txt"), "TOP SECRET").unwrap();
    let workspace = root.path().join("workspace");
    std::fs::create_dir(&workspace).unwrap();
    std::fs::write(workspace.join("inside.txt"), "fine").unwrap();
    (root, workspace)
}

#[test]
fn files_outside_the_workspace_cannot_be_read() {
    let runtime = runtime();
    let (_root, workspace) = workspace_with_secret_outside();
    let plugin = load(&runtime, "chengis-test-hostile", &["workspace:read"], Limits::default());
    let ctx = CallContext { workspace: Some(workspace.clone()), ..Default::default() };
    let outcome = attack(&plugin, "read-files", ctx.clone()).unwrap();
    assert_eq!(output(&outcome, "inside"), "ok:fine");
    for probe in ["passwd", "dotdot", "relative"] {
        let result = output(&outcome, probe);
        assert!(result.starts_with("err:"), "{probe}: {result}");
        assert!(!result.contains("TOP SECRET") && !result.contains("root:"), "{probe}: {result}");
    }
    // Read-only: writing fails and leaves nothing behind.
    let error = attack(&plugin, "write-file", ctx).unwrap_err();
    assert!(error.to_string().contains("failed: write failed"), "{error}");
    assert!(!workspace.join("written.txt").exists());

    // Without a grant there is no workspace at all.
    let plugin = load(&runtime, "chengis-test-hostile", &[], Limits::default());
    let ctx = CallContext { workspace: Some(workspace.clone()), ..Default::default() };
    let outcome = attack(&plugin, "read-files", ctx).unwrap();
    assert!(output(&outcome, "inside").starts_with("err:"));

    // With the write grant, writing works.
    let plugin = load(&runtime, "chengis-test-hostile", &["workspace:write"], Limits::default());
    let ctx = CallContext { workspace: Some(workspace.clone()), ..Default::default() };
    attack(&plugin, "write-file", ctx).unwrap();
    assert_eq!(std::fs::read_to_string(workspace.join("written.txt")).unwrap(), "pwned");
}

/// Serves one HTTP request with `hello`, returning the port.
fn one_shot_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
        }
    });
    port
}

#[test]
fn http_reaches_only_granted_destinations() {
    let runtime = runtime();
    let port = one_shot_http_server();
    let url = format!("http://127.0.0.1:{port}/ping");
    let ctx = CallContext { config: vec![("url".into(), url.clone())], ..Default::default() };

    let granted = load(&runtime, "chengis-test-hostile", &["http:http://127.0.0.1:*"], Limits::default());
    let outcome = attack(&granted, "http", ctx.clone()).unwrap();
    assert_eq!((output(&outcome, "status"), output(&outcome, "body")), ("200".into(), "hello".into()));

    let log = MemoryLog::new();
    let ungranted = load(&runtime, "chengis-test-hostile", &["http:https://hooks.example.com:443"], Limits::default());
    let error = attack(&ungranted, "http", CallContext { log: Some(log.clone()), ..ctx.clone() }).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            r#"plugin "hostile" 6.6.6: outbound HTTP to http://127.0.0.1:{port} denied: the operator has not granted it (grant `http:http://127.0.0.1:{port}` to allow it)"#
        )
    );
    assert!(log.text().contains("denied"), "{}", log.text());

    // A destination the manifest never asked for stays closed even when granted.
    let ctx = CallContext { config: vec![("url".into(), format!("http://localhost:{port}/"))], ..Default::default() };
    let overgranted = load(&runtime, "chengis-test-hostile", &["http:http://localhost:*"], Limits::default());
    let error = attack(&overgranted, "http", ctx).unwrap_err();
    assert!(error.to_string().contains(r#"add outbound-http("http://localhost:"#), "{error}");
    still_serving(&runtime, &granted);
}

#[test]
fn secrets_need_request_and_grant() {
    let runtime = runtime();
    let secrets =
        [("API_TOKEN".to_string(), "t0ken".to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), "aws".to_string())];
    let ctx = CallContext { secrets: secrets.into_iter().collect(), ..Default::default() };

    let plugin = load(&runtime, "chengis-test-hostile", &[], Limits::default());
    let error = attack(&plugin, "secret", ctx.clone()).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"plugin "hostile" 6.6.6: reading secret "API_TOKEN" denied: the operator has not granted it (grant `secret:API_TOKEN` to allow it)"#
    );

    let plugin = load(
        &runtime,
        "chengis-test-hostile",
        &["secret:API_TOKEN", "secret:AWS_SECRET_ACCESS_KEY"],
        Limits::default(),
    );
    assert_eq!(output(&attack(&plugin, "secret", ctx.clone()).unwrap(), "secret"), "t0ken");
    let error = attack(&plugin, "unrequested-secret", ctx).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    assert!(error.to_string().contains(r#"add secret("AWS_SECRET_ACCESS_KEY") to its capabilities"#), "{error}");
    still_serving(&runtime, &plugin);
}

#[test]
fn a_huge_return_value_is_refused() {
    let runtime = runtime();
    let plugin = load(&runtime, "chengis-test-hostile", &[], Limits::default());
    let error = attack(&plugin, "huge-return", CallContext::default()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::OutputTooLarge { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        r#"plugin "hostile" 6.6.6: the failure is 8388608 bytes, over the limit of 1048576 bytes"#
    );
    still_serving(&runtime, &plugin);
}

#[test]
fn a_flood_of_log_lines_is_cut() {
    let runtime = runtime();
    let limits = Limits { log_bytes: 64 * 1024, ..Limits::default() };
    let plugin = load(&runtime, "chengis-test-hostile", &[], limits);
    let log = MemoryLog::new();
    attack(&plugin, "huge-log", CallContext { log: Some(log.clone()), ..Default::default() }).unwrap();
    let lines = log.lines();
    assert_eq!(lines.len(), 64 * 1024 / 1025 + 1, "lines kept");
    assert_eq!(lines.last().unwrap(), r#"plugin "hostile" 6.6.6: log cut after 65536 bytes"#);
}

#[test]
fn a_panic_is_a_crash_of_that_call_only() {
    let runtime = runtime();
    let plugin = load(&runtime, "chengis-test-hostile", &[], Limits::default());
    let log = MemoryLog::new();
    let error = attack(&plugin, "panic", CallContext { log: Some(log.clone()), ..Default::default() }).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Trap(_)), "{error}");
    let message = error.to_string();
    assert!(message.starts_with(r#"plugin "hostile" 6.6.6: crashed: "#), "{message}");
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("the plugin panicked on purpose"), "{message}");
    assert!(log.text().contains("the plugin panicked on purpose"), "{}", log.text());
    still_serving(&runtime, &plugin);
}

#[test]
fn a_trap_in_the_manifest_refuses_the_component() {
    let runtime = runtime();
    let bytes = component("chengis-test-bad-manifest");
    let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
    let error = runtime.load(&bytes, &allowlist, Grants::none(), Limits::default()).err().unwrap();
    assert!(matches!(error.kind, ErrorKind::Trap(_)), "{error}");
    let message = error.to_string();
    assert!(message.starts_with(&format!("plugin {}: crashed: ", Digest::of(&bytes).short())), "{message}");
    assert!(message.contains("no manifest for you"), "{message}");
    assert!(runtime.inspect(&bytes).is_err());
    load(&runtime, "chengis-plugin-console", &[], Limits::default()).notify(&CallContext::default(), &event()).unwrap();
}

#[test]
fn a_command_that_outlives_the_call_is_stopped() {
    let runtime = runtime();
    let workspace = tempfile::tempdir().unwrap();
    let limits = Limits { timeout: Duration::from_millis(500), ..Limits::default() };
    let plugin = load(&runtime, "chengis-test-hostile", &["exec"], limits);
    let sandbox = Arc::new(ProcessSandbox { workspace: workspace.path().into() });
    let ctx = CallContext {
        config: vec![("script".into(), "echo started; sleep 30".into())],
        sandbox: Some(sandbox.clone()),
        ..Default::default()
    };
    let started = Instant::now();
    let error = attack(&plugin, "exec", ctx).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::TimedOut(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    // The command's own shorter timeout is the plugin's to handle.
    let ctx = CallContext {
        config: vec![("script".into(), "sleep 30".into()), ("timeout-ms".into(), "100".into())],
        sandbox: Some(sandbox.clone()),
        ..Default::default()
    };
    let outcome = attack(&plugin, "exec", ctx).unwrap();
    assert_eq!((output(&outcome, "code"), output(&outcome, "timed-out")), ("None".into(), "true".into()));

    // A workdir cannot leave the workspace.
    let ctx = CallContext {
        config: vec![("script".into(), "pwd".into()), ("workdir".into(), "../..".into())],
        sandbox: Some(sandbox),
        ..Default::default()
    };
    let error = attack(&plugin, "exec", ctx).unwrap_err();
    assert!(error.to_string().contains("must be relative to the workspace"), "{error}");
}

#[test]
fn outputs_env_and_test_results_are_collected_and_capped() {
    use chengis_plugin_host::outputs::TestOutcome;

    let runtime = runtime();
    let plugin = load(&runtime, "chengis-test-hostile", &[], Limits::default());
    let outcome = attack(&plugin, "report", CallContext::default()).unwrap();
    assert_eq!(outcome.env, [("DEPLOY_ENV".to_string(), "staging".to_string())]);
    assert_eq!(outcome.tests.len(), 1);
    let case = &outcome.tests[0].cases[0];
    assert_eq!(
        (case.name.as_str(), case.outcome, case.message.as_deref()),
        ("adds", TestOutcome::Failed, Some("1 + 1 != 3"))
    );

    let error = attack(&plugin, "many-outputs", CallContext::default()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::OutputTooLarge { what: "step outputs", .. }), "{error}");
    assert!(error.to_string().contains("over the limit of 1048576 bytes"), "{error}");
    still_serving(&runtime, &plugin);
}
