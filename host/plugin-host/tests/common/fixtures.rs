//! Sample WIT values for the runtime's tests and benchmark.

#![allow(dead_code, unused_imports, reason = "each test binary and the benchmark use a different part")]

use chengis_plugin_host::bindings::notifier::{Event, EventKind};
use chengis_plugin_host::bindings::policy::{Plan, PlannedJob};
use chengis_plugin_host::bindings::step_executor::Invocation;
use chengis_plugin_host::types::{Build, Job, KeyValue, Status, Step};

/// A sample build in either copy of the WIT types (`types` names a module with `Build`,
/// `Commit` and `Status`: the host's bindings or the SDK's).
macro_rules! sample_build {
    ($types:ident) => {
        $types::Build {
            id: 9,
            number: 42,
            pipeline: "web".into(),
            status: $types::Status::Success,
            commit: $types::Commit {
                sha: "0123456789abcdef0123456789abcdef01234567".into(),
                repository: "https://git.example/web.git".into(),
                branch: Some("main".into()),
                tag: None,
                message: "Fix the thing".into(),
                author: "A <a@example.com>".into(),
            },
            trigger: "push".into(),
            url: None,
            duration_ms: Some(1500),
        }
    };
}
pub(crate) use sample_build;

pub fn build() -> Build {
    use chengis_plugin_host::types;
    sample_build!(types)
}

pub fn event() -> Event {
    Event { kind: EventKind::BuildFinished, build: build(), job: None, previous_status: None }
}

pub fn invocation() -> Invocation {
    Invocation {
        build: build(),
        job: Job { id: 1, name: "test".into(), status: Status::Running, image: None, duration_ms: None },
        step: Step { index: 0, name: "run".into(), uses: "script@0.1.0".into() },
        env: vec![KeyValue { key: "GREETING".into(), value: "hello".into() }],
    }
}

/// A planned job with this name and image, and nothing else: no needs, steps, services or step
/// images, not privileged, no Docker socket, no approval gate.
pub fn planned_job(name: &str, image: Option<&str>) -> PlannedJob {
    PlannedJob {
        name: name.into(),
        image: image.map(Into::into),
        needs: Vec::new(),
        uses: Vec::new(),
        services: Vec::new(),
        step_images: Vec::new(),
        privileged: false,
        docker_socket: false,
        approval: false,
    }
}

/// A plan of these jobs for pipeline `web`, pushed, for the sample build's commit, no actor.
pub fn plan(jobs: Vec<PlannedJob>) -> Plan {
    Plan { pipeline: "web".into(), commit: build().commit, trigger: "push".into(), actor: None, jobs }
}
