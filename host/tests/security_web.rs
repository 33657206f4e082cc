//! Trust boundaries of the web-facing parts of `chengis serve` (issue 24): webhook replays,
//! abandoned live streams and oversized pipelines. The real binary on 127.0.0.1:0, on SQLite
//! and, when `CHENGIS_TEST_DATABASE_URL` is set, on PostgreSQL.

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::*;

fn build_count(s: &Server, job: &str) -> usize {
    let (_, builds) = call("GET", &format!("{}/api/v1/builds?job={job}", s.url), None);
    builds["builds"].as_array().unwrap().len()
}

const SECRET: &str = "replay-webhook-secret-0123";

/// The headers of a signed delivery of `body` by `provider` with delivery id `id` (the generic
/// format signs the id and `timestamp` too); `None` leaves the id out.
fn signed(provider: &str, body: &str, id: Option<&str>, timestamp: &str) -> Vec<(&'static str, String)> {
    let mut h: Vec<(&'static str, String)> = match provider {
        "github" => vec![
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(SECRET, body))),
        ],
        "gitlab" => vec![("X-Gitlab-Event", "Push Hook".into()), ("X-Gitlab-Token", SECRET.into())],
        "gitea" => vec![("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", hmac_hex(SECRET, body))],
        "bitbucket" => {
            vec![("X-Event-Key", "repo:push".into()), ("X-Hub-Signature", format!("sha256={}", hmac_hex(SECRET, body)))]
        }
        _ => {
            let signed = format!("{}.{timestamp}.{body}", id.unwrap_or(""));
            vec![
                ("X-Chengis-Timestamp", timestamp.into()),
                ("X-Chengis-Signature", format!("sha256={}", hmac_hex(SECRET, &signed))),
            ]
        }
    };
    if let Some(id) = id {
        let header = match provider {
            "github" => "X-GitHub-Delivery",
            "gitlab" => "X-Gitlab-Event-UUID",
            "gitea" => "X-Gitea-Delivery",
            "bitbucket" => "X-Request-UUID",
            _ => "X-Chengis-Delivery",
        };
        h.push((header, id.to_string()));
    }
    h
}

#[test]
fn webhook_deliveries_without_an_id_or_replayed_under_a_new_one_start_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  build:\n    steps:\n      - run: 'true'\n");
    let fixture = |provider: &str, name: &str| {
        let path = format!("{}/../tests/fixtures/webhooks/{provider}/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let bodies = [
        ("github", fixture("github", "push_branch")),
        ("gitlab", fixture("gitlab", "push_branch")),
        ("gitea", fixture("gitea", "push_branch")),
        ("bitbucket", fixture("bitbucket", "repo_push_branch")),
        ("generic", fixture("generic", "push_branch")),
    ];
    let missing_header = [
        ("github", "X-GitHub-Delivery"),
        ("gitlab", "Idempotency-Key` or `X-Gitlab-Event-UUID"),
        ("gitea", "X-Gitea-Delivery` or `X-GitHub-Delivery"),
        ("bitbucket", "X-Request-UUID"),
        ("generic", "X-Chengis-Delivery"),
    ];
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        let (st, v) = call(
            "POST",
            &format!("{}/api/v1/jobs", s.url),
            Some(json!({"name": "app", "repo_url": url, "webhook_secret": SECRET})),
        );
        assert_eq!(st, 201, "{v}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
        for ((provider, body), (_, header)) in bodies.iter().zip(missing_header) {
            let hook_url = format!("{}/hooks/{provider}/app", s.url);
            // Without a delivery id: 400, naming the header, and nothing recorded or started.
            let (st, v) = hook(&hook_url, &signed(provider, body, None, &now), body);
            assert_eq!((st, v["error"]["code"].as_str()), (400, Some("missing_delivery_id")), "{provider}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{header}`")), "{provider}: {message}");
            // The first delivery builds.
            let (st, v) = hook(&hook_url, &signed(provider, body, Some("first-delivery"), &now), body);
            assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{provider}: {v}");
            // The same signed body under a new delivery id is a replay: 200 duplicate, no build.
            let (st, v) = hook(&hook_url, &signed(provider, body, Some("second-delivery"), &now), body);
            assert_eq!(
                (st, v["status"].as_str(), v["triggered"].as_bool()),
                (200, Some("duplicate"), Some(false)),
                "{provider}: {v}"
            );
            assert!(v["reason"].as_str().unwrap().contains("body was received before"), "{provider}: {v}");
            // The forge's own retry (same id) is a duplicate too, said so.
            let (st, v) = hook(&hook_url, &signed(provider, body, Some("first-delivery"), &now), body);
            assert_eq!((st, v["status"].as_str()), (200, Some("duplicate")), "{provider}: {v}");
            assert!(v["reason"].as_str().unwrap().contains("delivery id was received before"), "{provider}: {v}");
        }
        // The generic format signs its id: a captured request with the id swapped is not authentic.
        let generic = &bodies[4].1;
        let mut swapped = signed("generic", generic, Some("first-delivery"), &now);
        swapped.retain(|(k, _)| *k != "X-Chengis-Delivery");
        swapped.push(("X-Chengis-Delivery", "third-delivery".into()));
        let (st, v) = hook(&format!("{}/hooks/generic/app", s.url), &swapped, generic);
        assert_eq!((st, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
        // ...and the former scheme (timestamp and body only) is refused.
        let old = vec![
            ("X-Chengis-Delivery", "fourth-delivery".to_string()),
            ("X-Chengis-Timestamp", now.clone()),
            ("X-Chengis-Signature", format!("sha256={}", hmac_hex(SECRET, &format!("{now}.{generic}")))),
        ];
        let (st, _) = hook(&format!("{}/hooks/generic/app", s.url), &old, generic);
        assert_eq!(st, 401);
        // One build per provider; only the first deliveries were recorded.
        assert_eq!(build_count(&s, "app"), 5, "{db}");
        let (_, list) = call("GET", &format!("{}/api/v1/webhooks?job=app", s.url), None);
        let ids: Vec<&str> =
            list["deliveries"].as_array().unwrap().iter().map(|d| d["delivery_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["first-delivery"; 5], "{list}");
        // An operator's replay still runs again (it is meant to).
        let first = list["deliveries"][0]["id"].as_i64().unwrap();
        let (st, v) = call("POST", &format!("{}/api/v1/webhooks/{first}/replay", s.url), None);
        assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{v}");
        assert_eq!(build_count(&s, "app"), 6);
    }
}

/// Opens `path` as an SSE stream with the admin token; answers the status and the connection
/// (positioned after the response head).
fn open_stream(base: &str, path: &str) -> (u16, TcpStream) {
    let addr = base.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {BEARER}\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "connection closed in the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, conn)
}

#[test]
fn live_streams_end_when_their_client_leaves_and_each_user_holds_at_most_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  build:\n    steps:\n      - run: sleep 120\n");
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &["--max-streams-per-user", "2"]);
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "slow", "repo_url": url})));
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/slow/builds", s.url), None);
        let id = b["id"].as_i64().unwrap();
        wait_build(&s, id, |b| b["jobs"][0]["steps"][0]["status"] == "running" || finished(b));
        let events = format!("/api/v1/builds/{id}/events");
        let logs = format!("/api/v1/builds/{id}/jobs/build/logs/stream");
        // Two streams are the cap; a third is 429 with a JSON error naming it.
        let (st, first) = open_stream(&s.url, &events);
        assert_eq!(st, 200);
        let (st, _second) = open_stream(&s.url, &logs);
        assert_eq!(st, 200);
        let (st, v) = call("GET", &format!("{}{events}", s.url), None);
        assert_eq!((st, v["error"]["code"].as_str()), (429, Some("too_many_streams")), "{v}");
        assert_eq!(v["error"]["details"]["limit"], 2, "{v}");
        // The first client leaves while its stream waits (the job runs on and writes nothing).
        // Its task ends and frees the slot: the slot is held by the task that reads the store,
        // so a free slot shows that the abandoned stream stopped reading it.
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        let third = loop {
            let (st, conn) = open_stream(&s.url, &events);
            if st == 200 {
                break conn;
            }
            assert_eq!(st, 429);
            assert!(Instant::now() < deadline, "the abandoned stream still holds its slot after 10 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(third);
        call("POST", &format!("{}/api/v1/builds/{id}/cancel", s.url), None);
        wait_build(&s, id, finished);
    }
}

#[test]
fn a_pipeline_over_the_job_limit_ends_its_build_with_the_linters_message() {
    let tmp = tempfile::tempdir().unwrap();
    let mut many = String::from("jobs:\n");
    for i in 0..257 {
        many.push_str(&format!("  j{i}:\n    steps:\n      - run: 'true'\n"));
    }
    let many_url = repo(&tmp.path().join("many"), &many);
    let matrix = "name: m\njobs:\n  a:\n    steps:\n      - run: 'true'\n  b:\n    strategy:\n      matrix:\n        \
                  v: [1, 2, 3]\n    steps:\n      - run: 'true'\n";
    let matrix_url = repo(&tmp.path().join("matrix"), matrix);
    let three_url = repo(
        &tmp.path().join("three"),
        "jobs:\n  b:\n    strategy:\n      matrix:\n        v: [1, 2, 3]\n    steps:\n      - run: 'true'\n",
    );
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let trigger = |s: &Server, name: &str, url: &str| {
        let (st, v) = call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": name, "repo_url": url})));
        assert_eq!(st, 201, "{v}");
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/{name}/builds", s.url), None);
        wait_build(s, b["id"].as_i64().unwrap(), finished)
    };
    // The default limit: 256 jobs.
    let s = start(&tmp.path().join("data"), &db, &[]);
    let b = trigger(&s, "many", &many_url);
    assert_eq!(b["build"]["status"], "error", "{b}");
    let reason = b["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("chengis.yml:1:1: error[too-many-jobs]"), "{reason}");
    assert!(reason.contains("257 jobs") && reason.contains("limit of 256"), "{reason}");
    drop(s);
    // `--max-jobs`; matrix combinations count one by one.
    let s = start(&tmp.path().join("data"), &db, &["--max-jobs", "3"]);
    let b = trigger(&s, "matrix", &matrix_url);
    assert_eq!(b["build"]["status"], "error", "{b}");
    let reason = b["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("chengis.yml:2:1: error[too-many-jobs]"), "{reason}");
    assert!(reason.contains("4 jobs") && reason.contains("limit of 3"), "{reason}");
    let b = trigger(&s, "three", &three_url);
    assert_eq!(b["build"]["status"], "success", "{b}");
    // `chengis lint` says the same before anything is pushed.
    let path = tmp.path().join("many").join("chengis.yml");
    let out = Command::new(env!("CARGO_BIN_EXE_chengis")).arg("lint").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("too-many-jobs") && text.contains("limit of 256"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .arg("lint")
        .arg(&path)
        .args(["--max-jobs", "257"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
