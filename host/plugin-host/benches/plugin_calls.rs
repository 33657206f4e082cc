//! Prints p50/p99 of the plugin runtime's costs with the real `console` notifier component:
//! cold compile vs cached load, new store + instantiate + call (with and without the pooling
//! allocator), a call on a live instance, and the same notification as a native Rust call;
//! then each builtin plugin's component size and the time of its typical call (against local
//! stand-ins for the services they talk to).
//!
//! Run: `cargo bench -p chengis-plugin-host --bench plugin_calls [-- FILTER]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{components, fixtures};

use std::hint::black_box;
use std::time::{Duration, Instant};

use chengis_plugin_host::bindings::policy::PlannedJob;
use chengis_plugin_host::bindings::scm_status::StatusUpdate;
use chengis_plugin_host::{Allowlist, CallContext, Digest, Grants, Limits, Plugin, Runtime, RuntimeOptions};
use chengis_plugin_sdk::Notifier;
use chengis_plugin_sdk::testing::FakeHost;
use common::fake_http::{FakeServer, json_answer};
use std::collections::HashMap;
use std::sync::Arc;

/// `cargo bench --bench plugin_calls -- TEXT` measures only the figures whose name contains TEXT.
fn selected(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    filter.is_none_or(|f| name.contains(&f))
}

fn measure(name: &str, iterations: usize, mut f: impl FnMut()) {
    if !selected(name) {
        return;
    }
    // CHENGIS_BENCH_SCALE=N runs N times the iterations (for profiling one figure).
    let scale: usize = std::env::var("CHENGIS_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let iterations = iterations * scale.max(1);
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
        previous_status: None,
    };
    measure("native Rust call (same plugin code, fake host)", 20000, || {
        chengis_plugin_console::Console::notify(&host, native_event.clone()).unwrap();
    });

    // The same notifier world in Python (componentize-py): an interpreter inside the component.
    if selected("python: notify on a live instance") || selected("python: new store + instantiate + notify (pooling)") {
        python(&ctx, &event);
    }
    // The catalogue loads every builtin: only without a filter.
    if std::env::args().skip(1).all(|a| a.starts_with("--")) {
        catalogue();
    }
}

/// The Python notifier.
fn python(ctx: &CallContext, event: &chengis_plugin_host::bindings::notifier::Event) {
    let py = components::python_notifier();
    println!("python notifier component (componentize-py): {} bytes", py.len());
    let py_allowlist = Allowlist::from_iter([Digest::of(&py)]);
    // CHENGIS_BENCH_KEEP_RESIDENT=BYTES tries another resident size (see RuntimeOptions).
    let keep = std::env::var("CHENGIS_BENCH_KEEP_RESIDENT").ok().and_then(|v| v.parse().ok());
    let options = RuntimeOptions {
        keep_resident_bytes: keep.unwrap_or(RuntimeOptions::default().keep_resident_bytes),
        ..Default::default()
    };
    let runtime = Runtime::with_options(options).unwrap();
    let plugin = runtime.load(&py, &py_allowlist, Grants::none(), Limits::default()).unwrap();
    measure("python: new store + instantiate (pooling)", 500, || {
        black_box(plugin.session(ctx).unwrap());
    });
    measure("python: new store + instantiate + notify (pooling)", 500, || {
        plugin.notify(ctx, event).unwrap();
    });
    let mut session = plugin.session(ctx).unwrap();
    measure("python: notify on a live instance", 5000, || {
        session.notify(event).unwrap();
    });
    let on_demand = Runtime::with_options(RuntimeOptions { pooling: false, ..Default::default() }).unwrap();
    let plugin = on_demand.load(&py, &py_allowlist, Grants::none(), Limits::default()).unwrap();
    measure("python: new store + instantiate + notify (on-demand)", 500, || {
        plugin.notify(ctx, event).unwrap();
    });
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Each builtin plugin: component size, and p50/p99 of its typical call with a new instance
/// (what the server does per notification, status, policy check or step).
fn catalogue() {
    println!();
    println!("builtin plugins: component size and typical call (new instance per call, pooling)");
    let runtime = Runtime::new(None).unwrap();
    let load = |package: &str, grants: &[&str]| -> Plugin {
        let bytes = components::component(package);
        let size = bytes.len();
        assert!(size < 2 * 1024 * 1024, "{package} is {size} bytes, over 2 MB");
        let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
        let plugin = runtime
            .load(&bytes, &allowlist, Grants::parse(grants.iter().copied()).unwrap(), Limits::default())
            .unwrap();
        print!("{:<18} {:>9} bytes  ", package.trim_start_matches("chengis-plugin-"), size);
        plugin
    };
    let server = FakeServer::start(|_| json_answer(201, serde_json::json!({"ok": true})));
    let base = server.url();
    let http = "http:http://127.0.0.1:*";
    let mut failed = fixtures::event();
    failed.build.status = chengis_plugin_host::types::Status::Failure;
    let secrets = |name: &str, value: &str| HashMap::from([(name.to_string(), value.to_string())]);

    let plugin = load("chengis-plugin-console", &[]);
    let ctx = CallContext::default();
    measure("notify", 2000, || plugin.notify(&ctx, &failed).unwrap());

    let plugin = load("chengis-plugin-slack", &[http, "secret:SLACK_WEBHOOK_URL"]);
    let ctx = CallContext {
        config: pairs(&[("on", "always")]),
        secrets: secrets("SLACK_WEBHOOK_URL", &format!("{base}/services/T0/B0/x")),
        ..CallContext::default()
    };
    measure("notify (POST to a local server)", 500, || plugin.notify(&ctx, &failed).unwrap());

    let plugin = load("chengis-plugin-webhook", &[http, "secret:WEBHOOK_SECRET"]);
    let ctx = CallContext {
        config: pairs(&[("url", &format!("{base}/hook"))]),
        secrets: secrets("WEBHOOK_SECRET", "k3y"),
        ..CallContext::default()
    };
    measure("notify (signed POST to a local server)", 500, || plugin.notify(&ctx, &failed).unwrap());

    let smtp = smtp_stand_in();
    let plugin = load("chengis-plugin-email", &[&format!("tcp:127.0.0.1:{smtp}")]);
    let port = smtp.to_string();
    let ctx = CallContext {
        config: pairs(&[
            ("smtp-host", "127.0.0.1"),
            ("smtp-port", &port),
            ("starttls", "never"),
            ("from", "ci@example.com"),
            ("to", "dev@example.com"),
            ("on", "always"),
        ]),
        ..CallContext::default()
    };
    measure("notify (SMTP to a local server, no TLS)", 200, || plugin.notify(&ctx, &failed).unwrap());

    let update = StatusUpdate {
        build: fixtures::build(),
        job: None,
        state: chengis_plugin_host::types::Status::Success,
        context: "chengis/build".into(),
        description: "build #42 success".into(),
    };
    for (package, secret, api) in [
        ("chengis-plugin-github-status", "GITHUB_TOKEN", format!("{base}/api/v3")),
        ("chengis-plugin-gitlab-status", "GITLAB_TOKEN", format!("{base}/api/v4")),
        ("chengis-plugin-gitea-status", "GITEA_TOKEN", format!("{base}/api/v1")),
        ("chengis-plugin-bitbucket-status", "BITBUCKET_TOKEN", format!("{base}/2.0")),
    ] {
        let plugin = load(package, &[http, &format!("secret:{secret}")]);
        let ctx = CallContext {
            config: pairs(&[("api-url", &api), ("repository", "acme/web")]),
            secrets: secrets(secret, "t0ken"),
            ..CallContext::default()
        };
        measure("report (POST to a local server)", 500, || plugin.report_status(&ctx, &update).unwrap());
    }

    let job = |name: &str, image: &str| PlannedJob {
        services: vec!["postgres:16".into()],
        ..fixtures::planned_job(name, Some(image))
    };
    let plan = fixtures::plan(vec![
        job("build", "rust:1.95"),
        job("test", "node:22"),
        job("deploy", "registry.example/app:1"),
    ]);
    let plugin = load("chengis-plugin-image-policy", &[]);
    let ctx = CallContext {
        config: pairs(&[("rules", "deny *:latest\nallow-registry registry.example\nallow docker.io/library/*")]),
        ..CallContext::default()
    };
    measure("check (3 jobs, 6 images, 3 rules)", 2000, || {
        plugin.check_policy(&ctx, &plan).unwrap();
    });
    let plugin = load("chengis-plugin-branch-protection", &[]);
    let ctx = CallContext {
        config: pairs(&[("rules", "only deploy* on main, tag:v*\nprivileged on main")]),
        ..CallContext::default()
    };
    measure("check (3 jobs, 2 rules)", 2000, || {
        plugin.check_policy(&ctx, &plan).unwrap();
    });

    let workspace = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(common::ProcessSandbox { workspace: workspace.path().into() });
    let step = |config: &[(&str, &str)]| CallContext {
        config: pairs(config),
        sandbox: Some(sandbox.clone()),
        workspace: Some(workspace.path().into()),
        ..CallContext::default()
    };
    let invocation = fixtures::invocation();
    let plugin = load("chengis-plugin-script", &["exec"]);
    let ctx = step(&[("lang", "sh"), ("source", "true")]);
    measure("run (sh -c true in a local sandbox)", 200, || {
        plugin.run_step(&ctx, &invocation).unwrap();
    });
    let cases: String = (0..100).map(|i| format!(r#"<testcase classname="web" name="t{i}" time="0.01"/>"#)).collect();
    std::fs::write(workspace.path().join("TEST-web.xml"), format!(r#"<testsuite name="web">{cases}</testsuite>"#))
        .unwrap();
    let plugin = load("chengis-plugin-junit", &["workspace:read"]);
    let ctx = step(&[("paths", "*.xml")]);
    measure("run (one JUnit file, 100 cases)", 500, || {
        plugin.run_step(&ctx, &invocation).unwrap();
    });
    let plugin = load("chengis-plugin-http", &[http]);
    let ctx = step(&[("url", &format!("{base}/health"))]);
    measure("run (GET a local server)", 500, || {
        plugin.run_step(&ctx, &invocation).unwrap();
    });
}

/// A minimal SMTP server on 127.0.0.1 that accepts every message (for the email plugin's
/// figure); returns its port.
fn smtp_stand_in() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream);
                let _ = out.write_all(b"220 localhost ESMTP\r\n");
                let mut line = String::new();
                let mut in_data = false;
                while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 queued\r\n"
                        } else {
                            b""
                        }
                    } else {
                        match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "EHLO" => b"250-localhost\r\n250 8BITMIME\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go on\r\n"
                            }
                            "QUIT" => {
                                let _ = out.write_all(b"221 bye\r\n");
                                break;
                            }
                            _ => b"250 ok\r\n",
                        }
                    };
                    let _ = out.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    port
}
