//! Sample WIT values for the runtime's tests and benchmark.

#![allow(dead_code, reason = "each test binary uses a different part")]

use chengis_plugin_host::bindings::notifier::{Event, EventKind};
use chengis_plugin_host::bindings::step_executor::Invocation;
use chengis_plugin_host::types::{Build, Commit, Job, KeyValue, Status, Step};

pub fn build() -> Build {
    Build {
        id: 9,
        number: 42,
        pipeline: "web".into(),
        status: Status::Success,
        commit: Commit {
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
}

pub fn event() -> Event {
    Event { kind: EventKind::BuildFinished, build: build(), job: None }
}

pub fn invocation() -> Invocation {
    Invocation {
        build: build(),
        job: Job { id: 1, name: "test".into(), status: Status::Running, image: None, duration_ms: None },
        step: Step { index: 0, name: "run".into(), uses: "script@0.1.0".into() },
        env: vec![KeyValue { key: "GREETING".into(), value: "hello".into() }],
    }
}
