//! End-to-end test of cron schedules: the real `chengis serve` binary with a server-side schedule
//! firing every two seconds (two servers on one database fire each slot once), killed across
//! two slots and restarted (one catch-up build), on SQLite and, when
//! `CHENGIS_TEST_DATABASE_URL` is set, on PostgreSQL.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::*;

/// Starts `chengis serve` on a free port; its log goes to `data/server.log`.
fn start(data: &Path, db: &str) -> Server {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("server.log")).unwrap();
    start_with(data, db, &[], &[("CHENGIS_LOG", "warn,chengis::engine::cron=info")], Stdio::from(log))
}

/// The job's builds, oldest first.
fn builds(s: &Server) -> Vec<Value> {
    let (st, v) = call("GET", &format!("{}/api/v1/builds?job=nightly&limit=200", s.url), None);
    assert_eq!(st, 200, "{v}");
    let mut out = v["builds"].as_array().unwrap().clone();
    out.reverse();
    out
}

/// Polls the builds until `until` holds (at most 30 s).
fn wait_builds(s: &Server, what: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = builds(s);
        if until(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "{what}: {b:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(args)
        .args(["--server", url])
        .env("CHENGIS_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn scenario(tmp: &Path, db: &str) {
    let repo = tmp.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("chengis.yml"), "jobs:\n  hello:\n    steps:\n      - run: echo scheduled\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "pipeline"]);

    // Two servers on one database: every slot must fire once, not once per server.
    let a = start(&tmp.join("a"), db);
    let job = json!({"name": "nightly", "repo_url": format!("file://{}", repo.display())});
    assert_eq!(call("POST", &format!("{}/api/v1/jobs", a.url), Some(job)).0, 201);
    let b = start(&tmp.join("b"), db);
    let (st, bad) =
        call("POST", &format!("{}/api/v1/schedules", a.url), Some(json!({"job": "nightly", "cron": "* * *"})));
    assert_eq!((st, bad["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}");
    let (st, bad) = call(
        "POST",
        &format!("{}/api/v1/schedules", a.url),
        Some(json!({"job": "nightly", "cron": "* * * * *", "timezone": "Mars/Base"})),
    );
    assert_eq!(st, 400, "{bad}");
    let (st, sched) =
        call("POST", &format!("{}/api/v1/schedules", b.url), Some(json!({"job": "nightly", "cron": "*/2 * * * * *"})));
    assert_eq!(st, 201, "{sched}");
    assert_eq!((sched["source"].as_str(), sched["timezone"].as_str()), (Some("api"), Some("UTC")));
    let id = sched["id"].as_i64().unwrap();

    let fired = wait_builds(&a, "two scheduled builds", |b| b.len() >= 2);
    for b in &fired {
        assert_eq!((b["trigger"].as_str(), b["who"].as_str()), (Some("schedule"), Some("scheduler")), "{b}");
    }
    let times: Vec<i64> = fired.iter().map(|b| b["queued_ms"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 1_000), "a slot fired twice: {times:?}");
    wait_builds(&a, "a scheduled build succeeds", |b| b.iter().any(|b| b["status"] == "success"));
    let (ok, text) = cli(&a.url, &["schedule", "list", "--job", "nightly"]);
    assert!(ok && text.contains("*/2 * * * * *") && text.contains("api"), "{text}");

    // Both servers down across two slots (and more): one catch-up build on restart.
    drop(b);
    drop(a);
    std::thread::sleep(Duration::from_millis(4_500));
    let restarted_ms = now_ms();
    let a = start(&tmp.join("a"), db);
    let new_builds = |all: &[Value]| -> Vec<Value> {
        all.iter().filter(|b| b["queued_ms"].as_i64().unwrap() >= restarted_ms).cloned().collect()
    };
    let all = wait_builds(&a, "the catch-up build and the next slot's", |b| new_builds(b).len() >= 2);
    let new = new_builds(&all);
    assert_eq!(new[0]["who"], "scheduler (catch-up)", "{new:#?}");
    assert!(new[1..].iter().all(|b| b["who"] == "scheduler" && b["trigger"] == "schedule"), "{new:#?}");
    let catch_ups = all.iter().filter(|b| b["who"] == "scheduler (catch-up)").count();
    assert_eq!(catch_ups, 1, "{all:#?}");
    let log = std::fs::read_to_string(tmp.join("a").join("server.log")).unwrap();
    assert!(log.contains("running once to catch up"), "{log}");

    // Removing it stops it.
    let (ok, text) = cli(&a.url, &["schedule", "rm", &id.to_string()]);
    assert!(ok, "{text}");
    let (_, list) = call("GET", &format!("{}/api/v1/schedules", a.url), None);
    assert_eq!(list["schedules"], json!([]));
    assert_eq!(call("DELETE", &format!("{}/api/v1/schedules/{id}", a.url), None).0, 404);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn schedules_fire_each_slot_once_and_catch_up_once_after_downtime() {
    let tmp = tempfile::tempdir().unwrap();
    let dbs = databases(tmp.path());
    std::thread::scope(|scope| {
        for (n, db) in dbs.iter().enumerate() {
            let dir = tmp.path().join(format!("db{n}"));
            scope.spawn(move || scenario(&dir, db));
        }
    });
}
