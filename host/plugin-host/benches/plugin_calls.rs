//! Prints p50/p99 of the plugin runtime's costs with the real `console` notifier component:
//! cold compile vs cached load, new store + instantiate + call (with and without the pooling
//! allocator), a call on a live instance, and the same notification as a native Rust call.
//!
//! Run: `cargo bench -p chengis-plugin-host --bench plugin_calls`

#[path = "../tests/common/components.rs"]
mod components;
#[path = "../tests/common/fixtures.rs"]
mod fixtures;

use std::hint::black_box;
use std::time::{Duration, Instant};

use chengis_plugin_host::{Allowlist, CallContext, Digest, Grants, Limits, Runtime, RuntimeOptions};
use chengis_plugin_sdk::Notifier;
use chengis_plugin_sdk::testing::FakeHost;

fn measure(name: &str, iterations: usize, mut f: impl FnMut()) {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!("{name:<52} p50 {:>12} p99 {:>12}  (n={iterations})", show(p50), show(p99));
}

fn show(duration: Duration) -> String {
    let ns = duration.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1000.0)
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1000.0)
    } else {
        format!("{:.2} ms", ns as f64 / 1_000_000.0)
    }
}

fn main() {
    let bytes = components::component("chengis-plugin-console");
    let digest = Digest::of(&bytes);
    let allowlist = Allowlist::from_iter([digest]);
    println!("console notifier component: {} bytes", bytes.len());

    let uncached = Runtime::with_options(RuntimeOptions { pooling: false, ..Default::default() }).unwrap();
    measure("cold compile (Component::new)", 20, || {
        black_box(uncached.compile(&digest, &bytes).unwrap());
    });
    let cache = std::env::temp_dir().join(format!("chengis-bench-cache-{}", std::process::id()));
    let cached =
        Runtime::with_options(RuntimeOptions { cache_dir: Some(cache.clone()), ..Default::default() }).unwrap();
    cached.compile(&digest, &bytes).unwrap();
    measure("cached load (deserialize_file of the artifact)", 500, || {
        black_box(cached.compile(&digest, &bytes).unwrap());
    });
    let _ = std::fs::remove_dir_all(&cache);

    let event = fixtures::event();
    let ctx = CallContext::default();
    for (label, pooling) in [("pooling", true), ("on-demand", false)] {
        let runtime = Runtime::with_options(RuntimeOptions { pooling, ..Default::default() }).unwrap();
        let plugin = runtime.load(&bytes, &allowlist, Grants::none(), Limits::default()).unwrap();
        measure(&format!("new store + instantiate ({label})"), 5000, || {
            black_box(plugin.session(&ctx).unwrap());
        });
        measure(&format!("new store + instantiate + notify ({label})"), 5000, || {
            plugin.notify(&ctx, &event).unwrap();
        });
    }

    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load(&bytes, &allowlist, Grants::none(), Limits::default()).unwrap();
    let mut session = plugin.session(&ctx).unwrap();
    measure("notify on a live instance", 20000, || {
        session.notify(&event).unwrap();
    });

    let host = FakeHost::new();
    let native_event = chengis_plugin_sdk::notifier::Event {
        kind: chengis_plugin_sdk::notifier::EventKind::BuildFinished,
        build: {
            use chengis_plugin_sdk::types;
            fixtures::sample_build!(types)
        },
        job: None,
    };
    measure("native Rust call (same plugin code, fake host)", 20000, || {
        chengis_plugin_console::Console::notify(&host, native_event.clone()).unwrap();
    });

    // The same notifier world in Python (componentize-py): an interpreter inside the component.
    let py = components::python_notifier();
    println!("python notifier component (componentize-py): {} bytes", py.len());
    let py_allowlist = Allowlist::from_iter([Digest::of(&py)]);
    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load(&py, &py_allowlist, Grants::none(), Limits::default()).unwrap();
    measure("python: new store + instantiate + notify (pooling)", 500, || {
        plugin.notify(&ctx, &event).unwrap();
    });
    let mut session = plugin.session(&ctx).unwrap();
    measure("python: notify on a live instance", 5000, || {
        session.notify(&event).unwrap();
    });
    let on_demand = Runtime::with_options(RuntimeOptions { pooling: false, ..Default::default() }).unwrap();
    let plugin = on_demand.load(&py, &py_allowlist, Grants::none(), Limits::default()).unwrap();
    measure("python: new store + instantiate + notify (on-demand)", 500, || {
        plugin.notify(&ctx, &event).unwrap();
    });
}
