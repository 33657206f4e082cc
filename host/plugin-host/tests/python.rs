//! A plugin written in Python (examples/plugin-python, built with componentize-py) loads and
//! runs in the same host as the Rust plugins: plugins are language-neutral.

mod common;

use chengis_plugin_host::bindings::notifier::{Event, EventKind};
use chengis_plugin_host::{Allowlist, CallContext, Digest, Grants, Limits, World};
use common::{MemoryLog, components, fixtures};
use std::sync::Arc;

#[test]
fn the_python_notifier_runs_in_the_host() {
    let bytes = components::python_notifier();
    let runtime = common::runtime_with(true);
    let inspection = runtime.inspect(&bytes).unwrap();
    assert_eq!(inspection.world, World::Notifier);
    assert_eq!(inspection.manifest.name, "py-console");
    assert_eq!(inspection.manifest.config[0].name, "prefix");

    let plugin =
        runtime.load(&bytes, &Allowlist::from_iter([Digest::of(&bytes)]), Grants::none(), Limits::default()).unwrap();
    let log = MemoryLog::new();
    let ctx = CallContext {
        config: vec![("prefix".into(), "[ci]".into())],
        log: Some(log.clone()),
        ..CallContext::default()
    };
    plugin.notify(&ctx, &fixtures::event()).unwrap();
    let job = chengis_plugin_host::types::Job {
        id: 1,
        name: "test".into(),
        status: chengis_plugin_host::types::Status::Failure,
        image: None,
        duration_ms: None,
    };
    plugin
        .notify(
            &ctx,
            &Event { kind: EventKind::JobFinished, build: fixtures::build(), job: Some(job), previous_status: None },
        )
        .unwrap();
    assert_eq!(log.lines(), ["[ci] build-finished: web #42 success", "[ci] job-finished: web #42 success (job test)"]);

    // A failure raised in Python is the plugin's error, named, and the host keeps serving.
    let mut empty = fixtures::event();
    empty.build.pipeline.clear();
    let err = plugin.notify(&CallContext::default(), &empty).unwrap_err().to_string();
    assert!(err.contains("py-console") && err.contains("the event names no pipeline"), "{err}");
    let log2 = Arc::new(common::MemoryLog::default());
    let ctx2 = CallContext { log: Some(log2.clone()), ..CallContext::default() };
    plugin.notify(&ctx2, &fixtures::event()).unwrap();
    assert_eq!(log2.lines(), ["[py] build-finished: web #42 success"]);
}
