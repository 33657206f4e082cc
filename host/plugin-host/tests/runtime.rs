//! The runtime end to end with the real builtin plugins: loading, the compiled-component
//! cache, trust, inspection, world detection, calls and capabilities.

mod common;

use std::sync::Arc;

use chengis_plugin_host::cache::CacheOutcome;
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Runtime, RuntimeOptions, World};
use common::components::component;
use common::fixtures::{event, invocation};
use common::{MemoryLog, ProcessSandbox, runtime_with};

fn trusting(bytes: &[u8]) -> Allowlist {
    Allowlist::from_iter([Digest::of(bytes)])
}

#[test]
fn console_notifier_logs_the_event() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-console");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();
    assert_eq!(plugin.world(), World::Notifier);
    assert_eq!(plugin.manifest().name, "console");
    assert_eq!(plugin.label().to_string(), r#"plugin "console" 0.1.0"#);
    let log = MemoryLog::new();
    let ctx =
        CallContext { config: vec![("prefix".into(), "[ci]".into())], log: Some(log.clone()), ..Default::default() };
    plugin.notify(&ctx, &event()).unwrap();
    assert_eq!(log.lines(), ["[ci] web #42 (main@0123456) finished: success in 1.5 s"]);
}

#[test]
fn script_step_runs_in_the_sandbox_with_its_output_in_the_log() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-script");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::parse(["exec"]).unwrap(), Limits::default()).unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("data.txt"), "from the workspace\n").unwrap();
    let log = MemoryLog::new();
    let ctx = CallContext {
        config: vec![("run".into(), "echo \"$GREETING\"; cat data.txt; echo oops >&2".into())],
        log: Some(log.clone()),
        sandbox: Some(Arc::new(ProcessSandbox { workspace: workspace.path().into() })),
        ..Default::default()
    };
    let outcome = plugin.run_step(&ctx, &invocation()).unwrap();
    assert_eq!(outcome.outputs, [("exit-code".to_string(), "0".to_string())]);
    let mut lines = log.lines();
    lines.sort();
    assert_eq!(lines, ["from the workspace", "hello", "oops"]);

    let ctx = CallContext { config: vec![("run".into(), "exit 3".into())], ..ctx };
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert_eq!(error.to_string(), r#"plugin "script" 0.1.0: failed: the script exited with code 3"#);
}

#[test]
fn exec_without_the_grant_is_denied_with_the_grant_to_add() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-script");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();
    let ctx = CallContext { config: vec![("run".into(), "true".into())], ..Default::default() };
    let error = plugin.run_step(&ctx, &invocation()).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Denied(_)), "{error}");
    assert_eq!(
        error.to_string(),
        r#"plugin "script" 0.1.0: running a command in the sandbox denied: the operator has not granted it (grant `exec` to allow it)"#
    );
}

#[test]
fn compiled_components_are_cached_on_disk_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = component("chengis-plugin-console");
    let digest = Digest::of(&bytes);
    let options = RuntimeOptions { cache_dir: Some(dir.path().into()), ..Default::default() };
    let first = Runtime::with_options(options.clone()).unwrap();
    assert_eq!(first.compile(&digest, &bytes).unwrap().1, CacheOutcome::Compiled);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().starts_with(&digest.hex()));
    let second = Runtime::with_options(options.clone()).unwrap();
    assert_eq!(second.compile(&digest, &bytes).unwrap().1, CacheOutcome::Hit);
    second.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();

    // A corrupt artifact is recompiled, not trusted.
    std::fs::write(dir.path().join(&files[0]), b"garbage").unwrap();
    assert_eq!(second.compile(&digest, &bytes).unwrap().1, CacheOutcome::Compiled);
    // An engine with other settings keys its artifacts apart.
    let other = Runtime::with_options(RuntimeOptions { pooling: false, ..options }).unwrap();
    let outcome = other.compile(&digest, &bytes).unwrap().1;
    let count = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(outcome == CacheOutcome::Compiled && count == 2 || outcome == CacheOutcome::Hit && count == 1);
}

#[test]
fn a_tampered_byte_is_refused_by_the_allowlist() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-console");
    let allowlist = trusting(&bytes);
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = runtime.load(&tampered, &allowlist, Grants::none(), Limits::default()).err().unwrap();
    assert!(matches!(error.kind, ErrorKind::NotTrusted { .. }));
    let digest = Digest::of(&tampered);
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {}: {digest} is not in the trust allowlist; allow it before loading (inspecting is allowed)",
            digest.short()
        )
    );
    runtime.load(&bytes, &allowlist, Grants::none(), Limits::default()).unwrap();
}

#[test]
fn inspect_reads_the_manifest_without_trust_or_capabilities() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-test-hostile");
    let inspection = runtime.inspect(&bytes).unwrap();
    assert_eq!(inspection.world, World::StepExecutor);
    assert_eq!(inspection.digest, Digest::of(&bytes));
    assert_eq!(inspection.manifest.name, "hostile");
    assert_eq!(inspection.manifest.capabilities.len(), 4);
}

#[test]
fn an_unknown_world_is_refused_with_a_clear_message() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-test-unknown-world");
    let error = runtime.inspect(&bytes).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::UnknownWorld(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("implements no chengis:plugin@0.1.0 world: it exports [hello]"), "{message}");
    assert!(message.contains("`notify` (notifier)"), "{message}");

    let bytes = component("chengis-test-future-version");
    let error = runtime.inspect(&bytes).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::UnknownWorld(_)), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {}: the component was built for chengis:plugin@9.0.0 (it imports \
             chengis:plugin/log@9.0.0); this host runs chengis:plugin@0.1.0 plugins",
            Digest::of(&bytes).short()
        )
    );

    let error = runtime.inspect(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Compile(_)), "{error}");
}

#[test]
fn calling_the_wrong_entry_point_is_an_error() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-console");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();
    let error = plugin.run_step(&CallContext::default(), &invocation()).unwrap_err();
    assert_eq!(error.to_string(), r#"plugin "console" 0.1.0: is a notifier plugin, not a step-executor"#);
}

#[test]
fn a_session_serves_many_calls_on_one_instance() {
    let runtime = runtime_with(true);
    let bytes = component("chengis-plugin-console");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();
    let log = MemoryLog::new();
    let mut session = plugin.session(&CallContext { log: Some(log.clone()), ..Default::default() }).unwrap();
    for _ in 0..3 {
        session.notify(&event()).unwrap();
    }
    assert_eq!(log.lines().len(), 3);
}

#[test]
fn a_policy_decides_and_stays_pure() {
    use chengis_plugin_host::bindings::policy::Decision;

    let runtime = runtime_with(true);
    let bytes = component("chengis-test-policy");
    let plugin = runtime.load(&bytes, &trusting(&bytes), Grants::none(), Limits::default()).unwrap();
    assert_eq!(plugin.world(), World::Policy);
    let job = |name: &str, image: &str| common::fixtures::planned_job(name, Some(image));
    let plan = common::fixtures::plan(vec![
        job("build", "rust:1.95"),
        job("test", "registry.example:5000/app"),
        job("lint", "node:latest"),
    ]);
    let log = MemoryLog::new();
    let ctx = CallContext { log: Some(log.clone()), ..Default::default() };
    let Decision::Deny(reasons) = plugin.check_policy(&ctx, &plan).unwrap() else { panic!("expected a deny") };
    let fields: Vec<_> = reasons.iter().map(|r| r.field.clone().unwrap()).collect();
    assert_eq!(fields, ["jobs.test.image", "jobs.lint.image"]);
    assert_eq!(log.lines(), ["checked 3 jobs"]);

    // The policy world links no secrets (and no network): the SDK's policy host refuses.
    let ctx = CallContext { config: vec![("probe-secret".into(), "TOKEN".into())], ..Default::default() };
    let error = plugin.check_policy(&ctx, &plan).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Trap(_)), "{error}");
    assert!(error.to_string().contains("policies cannot read secrets"), "{error}");
}

#[test]
fn runtime_and_plugins_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Runtime>();
    shareable::<chengis_plugin_host::Plugin>();
    fn sendable<T: Send>() {}
    sendable::<chengis_plugin_host::Session>();
}

#[test]
fn a_full_instance_pool_is_a_clear_error_and_frees_up() {
    let bytes = component("chengis-plugin-console");
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let runtime = Runtime::with_options(RuntimeOptions {
        cache_dir: Some(cache),
        pooling: true,
        max_instances: 2,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let plugin =
        runtime.load(&bytes, &Allowlist::from_iter([Digest::of(&bytes)]), Grants::none(), Limits::default()).unwrap();
    let ctx = CallContext::default();
    let first = plugin.session(&ctx).unwrap();
    let _second = plugin.session(&ctx).unwrap();
    let err = plugin.notify(&ctx, &event()).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NoInstanceSlot(2)), "{err}");
    assert!(err.to_string().contains("all 2 plugin instances are in use"), "{err}");
    drop(first);
    plugin.notify(&ctx, &event()).unwrap();
}
