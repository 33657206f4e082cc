//! Integration tests of `chengis serve`: the real binary on 127.0.0.1:0 with a temporary data
//! directory, real git repositories (file:// and `git daemon`), on SQLite and, when
//! `CHENGIS_TEST_DATABASE_URL` is set, on PostgreSQL (required when `CHENGIS_TEST_REQUIRE`
//! names `postgres`).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod docker_support;
mod support;
use support::*;

/// Reads SSE `line` events until `stop` of them or `end`; returns (id, text) pairs.
fn read_sse(url: &str, last_event_id: Option<u64>, stop: usize) -> (Vec<(u64, String)>, bool) {
    let mut req = admin_get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", &id.to_string());
    }
    let mut resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = BufReader::new(resp.body_mut().as_reader());
    let (mut out, mut event, mut data, mut id) = (Vec::new(), String::new(), String::new(), 0u64);
    for line in reader.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if event == "end" {
                return (out, true);
            }
            if event == "line" {
                let v: Value = serde_json::from_str(&data).unwrap();
                out.push((id, v["text"].as_str().unwrap().to_string()));
                if out.len() >= stop {
                    return (out, false);
                }
            }
            event.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().into();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap();
        }
    }
    (out, false)
}

const PIPELINE: &str = r#"
jobs:
  build:
    steps:
      - id: v
        run: |
          echo "commit $GIT_SHORT_COMMIT branch $GIT_BRANCH agent $CHENGIS_AGENT_NAME"
          echo "version=2.0" >> "$CHENGIS_OUTPUT"
  count:
    needs: build
    steps:
      - env:
          TOKEN: ${{ secrets.TOKEN }}
        run: |
          echo "version ${{ needs.build.outputs.version }} token $TOKEN"
          for i in $(seq 1 40); do echo "line $i"; sleep 0.02; done
"#;

#[test]
fn builds_run_end_to_end_with_logs_sse_cancel_and_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), PIPELINE);
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        let (st, _) = call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        assert_eq!(st, 201);
        let (st, _) = call("PUT", &format!("{}/api/v1/secrets/TOKEN", s.url), Some(json!({"value": "tok-12345"})));
        assert_eq!(st, 204);
        let (st, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
        assert_eq!(st, 201, "{b}");
        let id = b["id"].as_i64().unwrap();

        // Follow the log of `count` live, drop the connection, resume with Last-Event-ID.
        wait_build(&s, id, |b| b["jobs"].as_array().is_some_and(|j| j.len() == 2));
        let stream = format!("{}/api/v1/builds/{id}/jobs/count/logs/stream", s.url);
        let (first, _) = read_sse(&stream, None, 10);
        let resume = first.last().unwrap().0;
        let (rest, ended) = read_sse(&stream, Some(resume), usize::MAX);
        assert!(ended);
        let ids: Vec<u64> = first.iter().chain(&rest).map(|(i, _)| *i).collect();
        assert_eq!(ids, (1..=41).collect::<Vec<u64>>(), "no gap, no duplicate");
        assert_eq!(first[0].1, "version 2.0 token ***");

        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        assert_eq!(b["jobs"][1]["steps"][0]["status"], "success");
        let build_log = log_texts(&s, id, "build");
        assert!(
            build_log[0].starts_with("commit ") && build_log[0].contains("branch main agent embedded-0@"),
            "{build_log:?}"
        );
        assert_eq!(log_texts(&s, id, "count").len(), 41);

        // Build events over SSE end once the build finished.
        let mut resp = admin_get(&format!("{}/api/v1/builds/{id}/events", s.url)).call().unwrap();
        let mut body = String::new();
        resp.body_mut().as_reader().read_to_string(&mut body).unwrap();
        assert!(
            body.contains("event: build_status") && body.contains("\"success\"") && body.contains("event: end"),
            "{body}"
        );
        assert!(body.contains("event: step_status") && body.contains("event: job_status"), "{body}");

        // Cancel a running build: the step is stopped through the lease within seconds.
        let slow = repo(
            &tmp.path().join(format!("slow{n}")),
            "jobs:\n  s:\n    steps:\n      - run: echo started; sleep 60\n",
        );
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "slow", "repo_url": slow})));
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/slow/builds", s.url), Some(json!({"branch": "main"})));
        let slow_id = b["id"].as_i64().unwrap();
        wait_build(&s, slow_id, |b| b["jobs"][0]["steps"][0]["status"] == "running");
        let started = Instant::now();
        let (st, _) = call("POST", &format!("{}/api/v1/builds/{slow_id}/cancel", s.url), None);
        assert_eq!(st, 200);
        let b = wait_build(&s, slow_id, |b| b["jobs"][0]["job"]["status"] == "cancelled");
        assert!(started.elapsed() < Duration::from_secs(20), "cancel took {:?}", started.elapsed());
        assert_eq!(b["build"]["status"], "cancelled");
        assert_eq!(b["jobs"][0]["steps"][0]["status"], "cancelled");

        // Retry: a new attempt linked to the original.
        let (st, r) = call("POST", &format!("{}/api/v1/builds/{id}/retry", s.url), None);
        assert_eq!(st, 201, "{r}");
        assert_eq!((r["attempt"].as_i64(), r["root_build_id"].as_i64()), (Some(2), Some(id)));
        let r = wait_build(&s, r["id"].as_i64().unwrap(), finished);
        assert_eq!(r["build"]["status"], "success");

        // Listing with filters and a cursor.
        let (_, page) = call("GET", &format!("{}/api/v1/builds?job=app&limit=1", s.url), None);
        assert_eq!(page["builds"].as_array().unwrap().len(), 1);
        let cursor = page["next_cursor"].as_i64().unwrap();
        let (_, older) = call("GET", &format!("{}/api/v1/builds?job=app&limit=1&before={cursor}", s.url), None);
        assert_eq!(older["builds"][0]["id"].as_i64(), Some(id));
        let (_, cancelled) = call("GET", &format!("{}/api/v1/builds?status=cancelled", s.url), None);
        assert_eq!(cancelled["builds"][0]["id"].as_i64(), Some(slow_id));
    }
}

#[test]
fn bad_input_gets_json_errors_never_500() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        let raw = |method: &str, path: &str, ctype: &str, body: Vec<u8>| -> (u16, Value) {
            let agent = http();
            let url = format!("{}{path}", s.url);
            let mut resp = match method {
                "POST" => agent
                    .post(&url)
                    .header("authorization", BEARER)
                    .header("content-type", ctype)
                    .send(&body[..])
                    .unwrap(),
                _ => agent.get(&url).header("authorization", BEARER).call().unwrap(),
            };
            let status = resp.status().as_u16();
            let mut text = String::new();
            resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
            (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
        };
        let cases: Vec<(u16, (u16, Value))> = vec![
            (400, raw("POST", "/api/v1/jobs", "application/json", b"{not json".to_vec())),
            (
                400,
                raw(
                    "POST",
                    "/api/v1/jobs",
                    "application/json",
                    br#"{"name":"a","repo_url":"x","colour":"red"}"#.to_vec(),
                ),
            ),
            (400, raw("POST", "/api/v1/jobs", "application/json", br#"{"name":"bad name!","repo_url":"x"}"#.to_vec())),
            (415, raw("POST", "/api/v1/jobs", "text/plain", b"hello".to_vec())),
            (413, oversized(&s.url)),
            (400, raw("GET", "/api/v1/builds/abc", "", vec![])),
            (404, raw("GET", "/api/v1/builds/999999", "", vec![])),
            (404, raw("GET", "/api/v1/jobs/nope", "", vec![])),
            (404, raw("GET", "/api/v1/nothing-here", "", vec![])),
            (400, raw("GET", "/api/v1/builds?status=great", "", vec![])),
            (400, raw("GET", "/api/v1/builds?limit=0", "", vec![])),
            (404, raw("POST", "/api/v1/jobs/nope/builds", "application/json", b"{}".to_vec())),
        ];
        for (want, (got, body)) in cases {
            assert_eq!(got, want, "{body}");
            assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
        }
        let (st, _) = call(
            "POST",
            &format!("{}/api/v1/jobs", s.url),
            Some(json!({"name": "app", "repo_url": "file:///nowhere"})),
        );
        assert_eq!(st, 201);
        let (st, v) = call(
            "PUT",
            &format!("{}/api/v1/jobs/app", s.url),
            Some(json!({"default_branch": "trunk", "pipeline_path": "ci/x.yml"})),
        );
        assert_eq!(
            (st, v["default_branch"].as_str(), v["repo_url"].as_str()),
            (200, Some("trunk"), Some("file:///nowhere"))
        );
        let (st, v) = call("PUT", &format!("{}/api/v1/jobs/app", s.url), Some(json!({"pipeline_path": null})));
        assert_eq!((st, v["pipeline_path"].is_null()), (200, true));
        let (st, v) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), Some(json!({"priority": "urgent"})));
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("urgent"));
        let (st, v) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), Some(json!({"commit": "abc"})));
        assert_eq!(st, 400, "{v}");
        let (st, v) = call("PUT", &format!("{}/api/v1/secrets/PIN", s.url), Some(json!({"value": "123"})));
        assert_eq!(st, 400, "{v}");
        let (st, v) = call("GET", &format!("{}/api/v1/secrets", s.url), None);
        assert_eq!((st, v["secrets"].as_array().unwrap().len()), (200, 0));
        let (st, v) = call("GET", &format!("{}/ready", s.url), None);
        assert_eq!((st, v["database"].as_str()), (200, Some("ok")));
        assert_eq!(call("GET", &format!("{}/health", s.url), None).0, 200);
    }
}

#[test]
fn broken_pipelines_end_the_build_with_the_diagnostics() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  a:\n    needs: [zz]\n    steps: []\n");
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "bad", "repo_url": url})));
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/bad/builds", s.url), None);
        let b = wait_build(&s, b["id"].as_i64().unwrap(), finished);
        assert_eq!(b["build"]["status"], "error");
        let reason = b["build"]["reason"].as_str().unwrap();
        assert!(reason.contains("chengis.yml:3:") && reason.contains("unknown-need"), "{reason}");
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/bad/builds", s.url), Some(json!({"branch": "nope"})));
        let b = wait_build(&s, b["id"].as_i64().unwrap(), finished);
        assert!(b["build"]["reason"].as_str().unwrap().contains("branch `nope` not found"), "{b}");
    }
}

#[test]
fn kill_9_mid_build_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(
        &tmp.path().join("repo"),
        "jobs:\n  j:\n    steps:\n      - run: echo \"attempt $(date +%s%N)\"; echo before-crash; sleep 3; echo after\n",
    );
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let data = tmp.path().join(format!("data{n}"));
        let mut s = start(&data, db, &["--lease-ttl", "2s"]);
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
        let id = b["id"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !log_texts_opt(&s, id).iter().any(|l| l == "before-crash") {
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = log_texts_opt(&s, id);
        s.child.kill().unwrap(); // SIGKILL
        s.child.wait().unwrap();
        drop(s);
        let s = start(&data, db, &["--lease-ttl", "2s"]);
        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        let after = log_texts(&s, id, "j");
        assert_eq!(&after[..before.len()], &before[..], "lines acknowledged before the crash are kept");
        assert!(
            after.iter().filter(|l| l.starts_with("attempt ")).count() == 2,
            "ran again after the lease expired: {after:?}"
        );
        assert_eq!(after.last().map(String::as_str), Some("after"));
    }
}

#[test]
fn container_jobs_run_on_the_embedded_agent_and_a_restart_reaps_what_kill_9_left() {
    if !docker_support::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(
        &tmp.path().join("repo"),
        &format!(
            "jobs:\n  j:\n    image: {}\n    pull: never\n    user: \"1000\"\n    services:\n      web:\n        image: {}\n        ports: [80]\n    steps:\n      - run: echo \"in $CHENGIS_WORKSPACE as $(id -u)\"; touch written-by-1000; test -f .git/HEAD && test ! -e .git/objects/info/alternates && echo self-contained-git; echo before-crash; sleep 3; wget -qO- http://web/\n",
            docker_support::IMAGE,
            docker_support::SERVICE_IMAGE
        ),
    );
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let data = tmp.path().join("data");
    let mut s = start(&data, &db, &["--lease-ttl", "2s"]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
    let id = b["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_texts_opt(&s, id).iter().any(|l| l == "before-crash") {
        assert!(Instant::now() < deadline, "the step never started: {:?}", log_texts_opt(&s, id));
        std::thread::sleep(Duration::from_millis(50));
    }
    let label = format!("chengis.build={id}");
    let before = docker_support::objects("container", &label);
    assert_eq!(before.len(), 2, "job and service containers");
    s.child.kill().unwrap(); // SIGKILL: the agent cannot clean up
    s.child.wait().unwrap();
    drop(s);
    assert_eq!(docker_support::objects("container", &label), before, "the killed agent's containers are left");

    let s = start(&data, &db, &["--lease-ttl", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker_support::objects("container", &label).iter().any(|c| before.contains(c)) {
        assert!(Instant::now() < deadline, "the restarted server did not reap the killed agent's containers");
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = wait_build(&s, id, finished);
    assert_eq!(b["build"]["status"], "success", "{b}");
    let lines = log_texts(&s, id, "j");
    assert!(lines.contains(&"in /workspace as 1000".to_string()), "{lines:?}");
    // Only the workspace is mounted: its .git holds its own objects (no alternates to the
    // agent's object cache, which the container cannot see).
    assert!(lines.contains(&"self-contained-git".to_string()), "{lines:?}");
    assert_eq!(b["jobs"][0]["job"]["sandbox"], "docker:chengis-test/busybox", "{b}");
    assert_eq!(lines.last().map(String::as_str), Some("hello from the service"));
    assert!(docker_support::objects("container", &label).is_empty(), "the finished job left containers");
    assert!(docker_support::objects("network", &label).is_empty(), "the finished job left its network");
}

/// Kills a child's whole process group when dropped (also when the test fails).
struct KillGroup(Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Posts a 2 MiB body over a raw connection: the server may answer 413 and close before the
/// body is written, so write errors are expected and ignored; the answer is what counts.
fn oversized(base: &str) -> (u16, Value) {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let body = vec![b' '; 2 << 20];
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {BEARER}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body));
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn log_texts_opt(s: &Server, id: i64) -> Vec<String> {
    let (status, v) = call("GET", &format!("{}/api/v1/builds/{id}/jobs/j/logs", s.url), None);
    if status != 200 {
        return Vec::new();
    }
    v["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn repositories_served_by_git_daemon_build() {
    let tmp = tempfile::tempdir().unwrap();
    repo(&tmp.path().join("served/app"), "jobs:\n  j:\n    steps:\n      - run: echo from-daemon $GIT_SHORT_COMMIT\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // `git daemon` runs git-daemon as a child: give it its own process group, kill the group,
    // and keep it off our stdout so it can never hold the test's pipes open.
    use std::os::unix::process::CommandExt;
    let daemon = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--base-path={}", tmp.path().join("served").display()))
        .arg(tmp.path().join("served"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = KillGroup(daemon);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        call(
            "POST",
            &format!("{}/api/v1/jobs", s.url),
            Some(json!({"name": "d", "repo_url": format!("git://127.0.0.1:{port}/app")})),
        );
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/d/builds", s.url), None);
        let id = b["id"].as_i64().unwrap();
        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        assert!(log_texts(&s, id, "j")[0].starts_with("from-daemon "));
    }
}

#[test]
fn configuration_precedence_and_redaction() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("chengis.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nexecutors = 3\ndatabase_url = \"postgres://ci:hunter2@db/chengis\"\nagents = 0\ndocker_memory = \"1g\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["serve", "--print-config", "--executors", "5"])
        .arg("--config")
        .arg(&file)
        .env("CHENGIS_LISTEN", "127.0.0.1:7001")
        .env("CHENGIS_EXECUTORS", "4")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:7001\""), "env beats file: {text}");
    assert!(text.contains("executors = 5"), "flag beats env: {text}");
    assert!(text.contains("agents = 0"), "file beats default: {text}");
    assert!(text.contains("docker_memory = \"1g\""), "container settings from the file: {text}");
    assert!(text.contains("postgres://ci:***@db/chengis") && !text.contains("hunter2"), "{text}");
    std::fs::write(&file, "listn = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

#[test]
fn the_cli_drives_the_server_and_rotates_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let good = repo(
        &tmp.path().join("good"),
        "jobs:\n  j:\n    steps:\n      - env:\n          T: ${{ secrets.TOKEN }}\n        run: echo \"token $T\"; echo done\n",
    );
    let bad = repo(&tmp.path().join("bad"), "jobs:\n  j:\n    steps:\n      - run: echo failing; exit 3\n");
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let data = tmp.path().join(format!("data{n}"));
        let s = start(&data, db, &[]);
        assert_eq!(cli(&s.url, &["job", "create", "app", "--repo", &good], None).0, 0);
        assert_eq!(cli(&s.url, &["job", "create", "bad", "--repo", &bad], None).0, 0);
        let (code, _, err) = cli(&s.url, &["job", "create", "app", "--repo", &good], None);
        assert_eq!(code, 6, "a conflict: {err}");
        assert!(err.contains("already exists"), "{err}");
        let (_, out, _) = cli(&s.url, &["job", "list", "--format", "json"], None);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["jobs"].as_array().unwrap().len(), 2);
        assert_eq!(cli(&s.url, &["secret", "set", "TOKEN"], Some("from-stdin-secret\n")).0, 0);
        assert_eq!(cli(&s.url, &["secret", "list"], None).1, "TOKEN\n");

        let (code, out, _) = cli(&s.url, &["build", "trigger", "app", "--wait"], None);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("success"), "{out}");
        let (code, _, _) = cli(&s.url, &["build", "trigger", "bad", "--wait", "--branch", "main"], None);
        assert_eq!(code, 1, "--wait exits non-zero unless the build succeeded");
        let (_, out, _) = cli(&s.url, &["build", "list", "--job", "app", "--format", "json"], None);
        let id = serde_json::from_str::<Value>(&out).unwrap()["builds"][0]["id"].as_i64().unwrap();
        let (_, logs, _) = cli(&s.url, &["build", "logs", &id.to_string()], None);
        assert_eq!(logs, "[j] token ***\n[j] done\n");
        let (_, followed, _) = cli(&s.url, &["build", "logs", &id.to_string(), "--follow"], None);
        assert_eq!(followed, logs);
        let (_, shown, _) = cli(&s.url, &["build", "show", &id.to_string()], None);
        assert!(shown.contains("job j: success"), "{shown}");

        // Rotate the master key with the server stopped; secrets still decrypt afterwards.
        drop(s);
        let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(["secret", "rotate-key", "--database-url", db])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("CHENGIS_MASTER_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("re-encrypted 1 secret"));
        assert_eq!(std::fs::read_to_string(data.join("master.key")).unwrap().lines().count(), 2);
        let s = start(&data, db, &[]);
        let (code, _, _) = cli(&s.url, &["build", "trigger", "app", "--wait"], None);
        assert_eq!(code, 0);
        let (_, out, _) = cli(&s.url, &["build", "list", "--job", "app", "--format", "json"], None);
        let id = serde_json::from_str::<Value>(&out).unwrap()["builds"][0]["id"].as_i64().unwrap();
        assert_eq!(cli(&s.url, &["build", "logs", &id.to_string()], None).1, "[j] token ***\n[j] done\n");

        // Rotate again while the server runs: it picks the new key up (no restart), decrypts
        // the re-encrypted secret for the next build and encrypts new secrets with the new key.
        let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(["secret", "rotate-key", "--database-url", db])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("CHENGIS_MASTER_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(data.join("master.key")).unwrap().lines().count(), 3);
        let (code, out, _) = cli(&s.url, &["build", "trigger", "app", "--wait"], None);
        assert_eq!(code, 0, "a build after an online rotation: {out}");
        assert_eq!(cli(&s.url, &["secret", "set", "TOKEN"], Some("set-after-rotation\n")).0, 0);
        let (code, out, _) = cli(&s.url, &["build", "trigger", "app", "--wait"], None);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn openapi_describes_every_api_route() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &["--agents", "0"]);
    let (st, doc) = call("GET", &format!("{}/api/v1/openapi.json", s.url), None);
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every API route of the route table is described (the access test checks that the table
    // holds every route of the router), and nothing else is.
    let mut expected: Vec<(&str, String)> = chengis::server::auth::rules::RULES
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/") && r.path != "/api/v1/openapi.json")
        .map(|r| (r.path, r.method.to_ascii_lowercase()))
        .collect();
    expected.sort();
    let paths = doc["paths"].as_object().unwrap();
    let mut described: Vec<(&str, String)> = paths
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (p.as_str(), m.clone())))
        .filter(|(_, m)| m != "parameters")
        .collect();
    described.sort();
    assert_eq!(described, expected);
    for schema in [
        "JobRecord",
        "BuildSummary",
        "BuildDetail",
        "LogLine",
        "ErrorBody",
        "TriggerRequest",
        "Status",
        "ArtifactFile",
        "CacheEntry",
        "StorageReport",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "no schema {schema}");
    }
}

#[test]
fn submodules_are_checked_out_when_the_job_asks() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("vendored.txt"), "from the submodule\n").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-qm", "lib"]);
    let app = tmp.path().join("app");
    let url = repo(&app, "jobs:\n  j:\n    steps:\n      - run: cat sub/vendored.txt\n");
    git(
        &app,
        &["-c", "protocol.file.allow=always", "submodule", "add", "-q", &format!("file://{}", lib.display()), "sub"],
    );
    git(&app, &["commit", "-qm", "add submodule"]);
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    for (name, submodules, want) in [("plain", false, "failure"), ("with-sub", true, "success")] {
        let body = json!({"name": name, "repo_url": url, "submodules": submodules});
        assert_eq!(call("POST", &format!("{}/api/v1/jobs", s.url), Some(body)).0, 201);
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/{name}/builds", s.url), None);
        let id = b["id"].as_i64().unwrap();
        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["status"], want, "{name}: {b}");
        if submodules {
            assert_eq!(log_texts(&s, id, "j"), ["from the submodule"]);
        }
    }
}

#[test]
fn http_repositories_use_the_jobs_git_token() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    repo(&work, "jobs:\n  j:\n    steps:\n      - run: echo fetched with a token\n");
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(tmp.path(), &["clone", "-q", "--bare", work.to_str().unwrap(), served.join("app.git").to_str().unwrap()]);
    use std::os::unix::process::CommandExt;
    let mut server = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/git_http_server.py"))
        .arg(&served)
        .arg("t0ken-for-tests")
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let _server = KillGroup(server);
    let url = format!("http://127.0.0.1:{}/app.git", port.trim());

    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "private", "repo_url": url})));
    let build = |s: &Server| {
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/private/builds", s.url), None);
        wait_build(s, b["id"].as_i64().unwrap(), finished)
    };
    let b = build(&s);
    assert_eq!(b["build"]["status"], "error");
    assert!(b["build"]["reason"].as_str().unwrap().contains("GIT_TOKEN"), "{b}");
    call("PUT", &format!("{}/api/v1/secrets/GIT_TOKEN?job=private", s.url), Some(json!({"value": "wrong-token"})));
    let b = build(&s);
    assert_eq!(b["build"]["status"], "error");
    let reason = b["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("refused") && !reason.contains("wrong-token"), "{reason}");
    call("PUT", &format!("{}/api/v1/secrets/GIT_TOKEN?job=private", s.url), Some(json!({"value": "t0ken-for-tests"})));
    let b = build(&s);
    assert_eq!(b["build"]["status"], "success", "{b}");
    let id = b["build"]["id"].as_i64().unwrap();
    assert_eq!(log_texts(&s, id, "j"), ["fetched with a token"]);
}

#[test]
fn ssh_repositories_use_the_jobs_key_and_known_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(sshd.exists(), "this test needs OpenSSH's sshd (.ci/run installs openssh-server)");
    let keygen =
        |args: &[&str]| assert!(Command::new("ssh-keygen").args(args).current_dir(dir).status().unwrap().success());
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", "host_key"]);
    keygen(&["-q", "-t", "ed25519", "-N", "", "-f", "other_host_key"]);
    keygen(&["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", "client_key"]);
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    use std::os::unix::process::CommandExt;
    let daemon = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = KillGroup(daemon);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let work = dir.join("work");
    repo(&work, "jobs:\n  j:\n    steps:\n      - run: echo fetched over ssh\n");
    git(dir, &["clone", "-q", "--bare", work.to_str().unwrap(), dir.join("app.git").to_str().unwrap()]);
    let url = format!("ssh://root@127.0.0.1:{port}{}", dir.join("app.git").display());
    let known = |key: &str| {
        let public = std::fs::read_to_string(dir.join(key)).unwrap();
        let mut f = public.split_whitespace();
        format!("[127.0.0.1]:{port} {} {}\n", f.next().unwrap(), f.next().unwrap())
    };

    let db = databases(dir).remove(0);
    let s = start(&dir.join("data"), &db, &[]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "viassh", "repo_url": url})));
    let secret = |name: &str, value: String| {
        let (st, v) =
            call("PUT", &format!("{}/api/v1/secrets/{name}?job=viassh", s.url), Some(json!({"value": value})));
        assert_eq!(st, 204, "{v}");
    };
    secret("GIT_SSH_KEY", std::fs::read_to_string(dir.join("client_key")).unwrap());
    secret("GIT_SSH_KNOWN_HOSTS", known("other_host_key.pub"));
    let build = |s: &Server| {
        let (_, b) = call("POST", &format!("{}/api/v1/jobs/viassh/builds", s.url), None);
        wait_build(s, b["id"].as_i64().unwrap(), finished)
    };
    let b = build(&s);
    assert_eq!(b["build"]["status"], "error");
    assert!(
        b["build"]["reason"].as_str().unwrap().contains("GIT_SSH_KNOWN_HOSTS"),
        "an unknown host key is refused: {b}"
    );
    secret("GIT_SSH_KNOWN_HOSTS", known("host_key.pub"));
    let b = build(&s);
    assert_eq!(b["build"]["status"], "success", "{b}");
    assert_eq!(log_texts(&s, b["build"]["id"].as_i64().unwrap(), "j"), ["fetched over ssh"]);
}

/// Runs `chengis plugin ARGS` against a server's data directory and database.
fn plugin_cli(data: &Path, db: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .arg("plugin")
        .arg("--data-dir")
        .arg(data)
        .args(["--database-url", db])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Builds a component crate of the workspace for wasm32-wasip2; returns its file.
fn component(package: &str) -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-components");
    let ok = Command::new(env!("CARGO"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "-p", package, "--target-dir"])
        .arg(&target)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .status()
        .unwrap()
        .success();
    assert!(ok, "building {package}");
    target.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")))
}

#[test]
fn builtin_digests_are_those_of_their_bytes() {
    // A start decides from these which builtins to compile and pin: a wrong one would compile
    // that builtin at every start (and never run it unverified: loads check the bytes).
    let mut names = std::collections::HashSet::new();
    for b in chengis::plugins::BUILTINS {
        assert_eq!(b.digest, chengis_plugin_host::Digest::of(b.bytes).to_string(), "{}", b.name);
        assert!(names.insert(b.name), "{} is listed twice", b.name);
    }
    assert_eq!(names.len(), 13);
}

#[test]
fn builtin_plugins_run_uses_steps_and_notifications() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(
        &tmp.path().join("repo"),
        r#"name: with-plugins
notify:
  - uses: console
    with:
      prefix: "[notify-test]"
jobs:
  build:
    steps:
      - id: s
        uses: script
        with:
          run: echo "from the script plugin"; echo hi > made-by-plugin
      - run: test -f made-by-plugin && echo "script exit ${{ steps.s.outputs.exit-code }}"
      - uses: script
        with:
          run: exit 4
        continue-on-error: true
      - uses: no-such-plugin
        continue-on-error: true
      - uses: script
        with:
          run: echo ${{ secrets.TOKEN }}
        continue-on-error: true
      - uses: script
        with:
          run: sleep 20
        continue-on-error: true
"#,
    );
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let data = tmp.path().join("data");
    let (s, log) = start_logged(&data, &db, &[]);
    // The operator's per-plugin limit: calls of `script` may take 2 s.
    let (code, _, err) = plugin_cli(&data, &db, &["config", "script", "--set", "chengis.timeout=2s"]);
    assert_eq!(code, 0, "{err}");
    // Triggered at once: a fresh server is still compiling its builtins (seconds in a debug
    // build), and the build's `uses:` steps and notification wait for them.
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
    let id = b["id"].as_i64().unwrap();
    // The server said what it does, and `/ready` says when it is done (the build may wait
    // longer than `wait_build` does on a loaded machine).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("compiling 13 builtin plugins in the background (image-policy, "), "{text}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (st, v) = call("GET", &format!("{}/ready", s.url), None);
        assert_eq!(st, 200, "{v}");
        match v["plugins"]["status"].as_str() {
            Some("ready") => break,
            Some("compiling") => assert!(Instant::now() < deadline, "builtins still compiling: {v}"),
            _ => panic!("unexpected /ready: {v}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = wait_build(&s, id, finished);
    let (code, out, err) = plugin_cli(&data, &db, &["list"]);
    assert_eq!(code, 0, "{err}");
    // A fresh server lists every builtin, allowed by digest, with its grants.
    for name in [
        "console",
        "slack",
        "webhook",
        "email",
        "github-status",
        "gitlab-status",
        "gitea-status",
        "bitbucket-status",
        "image-policy",
        "branch-protection",
        "script",
        "junit",
        "http",
    ] {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("{name} is not listed:\n{out}"));
        assert!(line.contains(" allowed ") && line.contains("sha256:") && line.ends_with("(builtin)"), "{line}");
    }
    assert!(out.contains("granted:   http:https://api.github.com:443, secret:GITHUB_TOKEN"), "{out}");
    assert!(out.contains("granted:   workspace:read"), "{out}");
    let lines = log_texts(&s, id, "build");
    assert!(lines.contains(&"from the script plugin".to_string()), "{lines:?} {b}");
    assert!(lines.contains(&"script exit 0".to_string()), "{lines:?}");
    let steps = &b["jobs"][0]["steps"];
    assert_eq!(steps[2]["status"], "failure", "{b}");
    assert!(steps[2]["reason"].as_str().unwrap().contains("exited with code 4"), "{b}");
    assert_eq!(steps[3]["status"], "error", "{b}");
    assert!(steps[3]["reason"].as_str().unwrap().contains("no step-executor plugin `no-such-plugin`"), "{b}");
    assert_eq!(steps[4]["status"], "error", "{b}");
    let reason = steps[4]["reason"].as_str().unwrap();
    assert!(reason.contains("not granted secret `TOKEN`") && reason.contains("--grant secret:TOKEN"), "{reason}");
    assert_eq!(steps[5]["status"], "failure", "{b}");
    let reason = steps[5]["reason"].as_str().unwrap();
    assert!(reason.contains("plugin \"script\" 0.1.0") && reason.contains("timed out after 2"), "{reason}");
    assert_eq!(b["build"]["status"], "success", "{b}");
    // The pipeline's `notify:` ran the console notifier for the finished build.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("[notify-test] with-plugins #1") && text.contains("finished: success") {
            break;
        }
        assert!(Instant::now() < deadline, "no console notification in the server log:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn policies_deny_builds_and_a_tampered_plugin_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(
        &tmp.path().join("repo"),
        "jobs:\n  pinned:\n    image: alpine:3.20\n    steps:\n      - run: 'true'\n  floating:\n    image: alpine\n    steps:\n      - run: 'true'\n",
    );
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let data = tmp.path().join("data");
    let s = start(&data, &db, &[]);
    let wasm = component("chengis-test-policy");
    let wasm = wasm.display().to_string();
    let (code, out, err) = plugin_cli(&data, &db, &["inspect", &wasm]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pinned-images") && out.contains("world:       policy"), "{out}");
    // Installed from a URL (a one-shot HTTP server on 127.0.0.1 serving the file).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = std::fs::read(&wasm).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let n = std::io::Read::read(&mut conn, &mut request).unwrap();
        let head = String::from_utf8_lossy(&request[..n]).to_string();
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        conn.write_all(&body).unwrap();
        head
    });
    let wasm_url = format!("http://127.0.0.1:{port}/policy.wasm");
    let (code, out, err) = plugin_cli(&data, &db, &["install", &wasm_url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("as pending"), "{out}");
    assert!(server.join().unwrap().starts_with("GET /policy.wasm "));
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    // Pending: not consulted, the build is planned (and then fails for lack of Docker images,
    // which does not matter here).
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
    let b = wait_build(&s, b["id"].as_i64().unwrap(), |b| {
        b["jobs"].as_array().is_some_and(|j| !j.is_empty()) || finished(b)
    });
    assert!(b["build"]["reason"].as_str().unwrap_or_default().find("policy").is_none(), "{b}");

    let (code, _, err) = plugin_cli(&data, &db, &["allow", "pinned-images"]);
    assert_eq!(code, 0, "{err}");
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
    let b = wait_build(&s, b["id"].as_i64().unwrap(), finished);
    assert_eq!(b["build"]["status"], "error", "{b}");
    let reason = b["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("denied by policy") && reason.contains("image-not-pinned"), "{reason}");
    assert!(reason.contains("floating") && !reason.contains("job pinned"), "{reason}");
    assert!(b["jobs"].as_array().unwrap().is_empty(), "a denied build queues nothing: {b}");
    // The API shows every reason on the build.
    let denials = b["policy"]["denials"].as_array().unwrap_or_else(|| panic!("no policy result: {b}"));
    assert!(denials.iter().any(|d| d.as_str().unwrap().contains("image-not-pinned")), "{b}");

    // A modified byte in the stored component: the allowlist no longer matches, the policy
    // cannot run, and the build is denied (fail closed).
    let stored = std::fs::read_dir(data.join("plugins"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let (_, out, _) = plugin_cli(&data, &db, &["inspect", &p.display().to_string()]);
            out.contains("pinned-images")
        })
        .unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None);
    let b = wait_build(&s, b["id"].as_i64().unwrap(), finished);
    let reason = b["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("does not match the allowed digest"), "{reason}");

    let (code, _, err) =
        plugin_cli(&data, &db, &["install", &tmp.path().join("repo/chengis.yml").display().to_string()]);
    assert_eq!(code, 2, "a file that is not a component is refused");
    assert!(err.contains("pinned") || !err.is_empty(), "{err}");
    let (code, _, err) =
        plugin_cli(&data, &db, &["install", &component("chengis-test-unknown-world").display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("world"), "{err}");
}

fn github_signature(secret: &str, body: &str) -> String {
    format!("sha256={}", hmac_hex(secret, body))
}

#[test]
fn signed_github_pushes_start_builds_once_and_everything_else_is_refused_or_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let url = repo(
        &dir,
        "jobs:\n  build:\n    steps:\n      - run: echo built $GIT_SHORT_COMMIT\n      - run: echo \"event=${{ git.event }} branch=${{ git.branch }} pr=${{ git.pr.number }} base=${{ git.pr.base }}\"\n",
    );
    let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap();
    let sha = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let sha_app = sha.clone();
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let s = start(&tmp.path().join("data"), &db, &["--webhook-rate-limit", "25"]);
    let secret = "first-webhook-secret-0123";
    let (st, _) = call(
        "POST",
        &format!("{}/api/v1/jobs", s.url),
        Some(json!({"name": "app", "repo_url": url, "webhook_secret": secret})),
    );
    assert_eq!(st, 201);
    let (st, e) = call(
        "POST",
        &format!("{}/api/v1/jobs", s.url),
        Some(json!({"name": "b", "repo_url": url, "webhook_secret": "short"})),
    );
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let hook_url = format!("{}/hooks/github/app", s.url);
    let push = |after: &str, deleted: bool| {
        json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": after, "created": false,
            "deleted": deleted, "forced": false, "compare": "https://github.com/acme/app/compare/x",
            "commits": [{"id": after, "message": "pipeline", "author": {"name": "A", "email": "a@example.com"},
                         "added": ["chengis.yml"], "removed": [], "modified": []}],
            "head_commit": {"id": after, "message": "pipeline", "author": {"name": "A", "email": "a@example.com"}},
            "repository": {"full_name": "acme/app", "clone_url": "https://github.com/acme/app.git"},
            "pusher": {"name": "a"}, "sender": {"login": "a"}
        })
        .to_string()
    };
    let headers = |event: &str, delivery: &str, signature: String| {
        vec![
            ("X-GitHub-Event", event.to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", signature),
        ]
    };
    // A correct delivery starts a build of the commit it names.
    let body = push(&sha, false);
    let (st, v) = hook(&hook_url, &headers("push", "d-1", github_signature(secret, &body)), &body);
    assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{v}");
    let b = wait_build(&s, v["build"].as_i64().unwrap(), finished);
    assert_eq!(b["build"]["status"], "success", "{b}");
    assert_eq!(b["build"]["commit_sha"], sha.as_str());
    assert_eq!(b["build"]["trigger"], "push");
    let lines = log_texts(&s, v["build"].as_i64().unwrap(), "build");
    assert!(lines.iter().any(|l| l == "event=push branch=main pr= base="), "{lines:?}");
    // A pull request builds its head commit; `git.pr` tells which.
    let pr = json!({"action": "opened", "number": 7,
        "pull_request": {"number": 7, "title": "Add x", "user": {"login": "a"},
                         "head": {"sha": sha, "ref": "feature", "repo": {"clone_url": "https://github.com/acme/app.git"}},
                         "base": {"ref": "main", "sha": sha}},
        "repository": {"full_name": "acme/app", "clone_url": "https://github.com/acme/app.git"}})
    .to_string();
    let (st, v) = hook(&hook_url, &headers("pull_request", "d-pr", github_signature(secret, &pr)), &pr);
    assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{v}");
    let b = wait_build(&s, v["build"].as_i64().unwrap(), finished);
    assert_eq!(b["build"]["status"], "success", "{b}");
    let lines = log_texts(&s, v["build"].as_i64().unwrap(), "build");
    assert!(lines.iter().any(|l| l == "event=pull_request branch=feature pr=7 base=main"), "{lines:?}");
    // The same delivery again starts nothing.
    let (st, v) = hook(&hook_url, &headers("push", "d-1", github_signature(secret, &body)), &body);
    assert_eq!((st, v["status"].as_str()), (200, Some("duplicate")), "{v}");
    // Wrong or missing signatures are 401 and start nothing.
    let (st, v) = hook(&hook_url, &headers("push", "d-2", github_signature("not-the-secret-xx", &body)), &body);
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (st, _) = hook(&hook_url, &[("X-GitHub-Event", "push".into()), ("X-GitHub-Delivery", "d-3".into())], &body);
    assert_eq!(st, 401);
    // A branch delete never builds; an unknown event is ignored; a ping pongs.
    let deleted = push(&"0".repeat(40), true);
    let (st, v) = hook(&hook_url, &headers("push", "d-4", github_signature(secret, &deleted)), &deleted);
    assert_eq!((st, v["status"].as_str()), (202, Some("skipped")), "{v}");
    let star = json!({"action": "created", "repository": {"full_name": "acme/app"}}).to_string();
    let (st, v) = hook(&hook_url, &headers("star", "d-5", github_signature(secret, &star)), &star);
    assert_eq!((st, v["status"].as_str()), (202, Some("ignored")), "{v}");
    // Rotation: after a new secret the old one still works, after another it does not.
    let (st, _) = call(
        "PUT",
        &format!("{}/api/v1/jobs/app", s.url),
        Some(json!({"webhook_secret": "second-webhook-secret-456"})),
    );
    assert_eq!(st, 200);
    // (Each ping its own body: a body is processed once per job, whatever its delivery id.)
    let ping = |n: u32| format!("{{\"zen\": \"ping {n}\"}}");
    let (st, v) = hook(&hook_url, &headers("ping", "d-6", github_signature(secret, &ping(6))), &ping(6));
    assert_eq!((st, v["status"].as_str()), (200, Some("pong")), "{v}");
    let (st, _) = call(
        "PUT",
        &format!("{}/api/v1/jobs/app", s.url),
        Some(json!({"webhook_secret": "third-webhook-secret-7890"})),
    );
    assert_eq!(st, 200);
    let (st, _) = hook(&hook_url, &headers("ping", "d-7", github_signature(secret, &ping(7))), &ping(7));
    assert_eq!(st, 401);
    let (st, v) =
        hook(&hook_url, &headers("ping", "d-8", github_signature("second-webhook-secret-456", &ping(8))), &ping(8));
    assert_eq!(st, 200, "{v}");
    // The CLI sets it too.
    let (code, out, err) =
        cli(&s.url, &["job", "update", "app", "--webhook-secret", "fourth-webhook-secret-000"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (st, v) =
        hook(&hook_url, &headers("ping", "d-9", github_signature("fourth-webhook-secret-000", &ping(9))), &ping(9));
    assert_eq!((st, v["status"].as_str()), (200, Some("pong")), "{v}");
    // Unknown provider or job: 404 JSON.
    let (st, v) = hook(&format!("{}/hooks/sourceforge/app", s.url), &[], "{}");
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (st, _) = hook(&format!("{}/hooks/github/nope", s.url), &[], "{}");
    assert_eq!(st, 404);
    // Every verified delivery is recorded: one build, the rest duplicate-free.
    let (_, list) = call("GET", &format!("{}/api/v1/webhooks?job=app", s.url), None);
    let statuses: Vec<&str> =
        list["deliveries"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ignored", "ignored", "ignored", "ignored", "skipped", "accepted", "accepted"], "{list}");
    let (_, builds) = call("GET", &format!("{}/api/v1/builds?job=app", s.url), None);
    assert_eq!(builds["builds"].as_array().unwrap().len(), 2, "{builds}");

    // The pipeline's `on:` decides: branch and path filters.
    let dir = tmp.path().join("filtered");
    let url = repo(
        &dir,
        "on:\n  push:\n    branches: [main]\n    paths: ['src/**']\njobs:\n  build:\n    steps:\n      - run: echo built\n",
    );
    let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap();
    let sha = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (st, _) = call(
        "POST",
        &format!("{}/api/v1/jobs", s.url),
        Some(json!({"name": "filtered", "repo_url": url, "webhook_secret": secret})),
    );
    assert_eq!(st, 201);
    let filtered = format!("{}/hooks/github/filtered", s.url);
    let push_to = |git_ref: &str, file: &str| {
        json!({"ref": git_ref, "before": "0".repeat(40), "after": sha, "created": false, "deleted": false,
               "commits": [{"id": sha, "message": "m", "added": [file], "removed": [], "modified": []}],
               "repository": {"full_name": "acme/filtered", "clone_url": "https://github.com/acme/filtered.git"}})
        .to_string()
    };
    let mut outcomes = Vec::new();
    for (n, (git_ref, file)) in
        [("refs/heads/dev", "src/a.rs"), ("refs/heads/main", "docs/a.md"), ("refs/heads/main", "src/a.rs")]
            .iter()
            .enumerate()
    {
        let body = push_to(git_ref, file);
        let (st, v) = hook(&filtered, &headers("push", &format!("f-{n}"), github_signature(secret, &body)), &body);
        assert_eq!(st, 202, "{v}");
        let b = wait_build(&s, v["build"].as_i64().unwrap(), finished);
        outcomes.push((
            b["build"]["status"].as_str().unwrap().to_string(),
            b["build"]["reason"].as_str().unwrap_or("").to_string(),
        ));
    }
    assert_eq!(outcomes[0].0, "skipped", "{outcomes:?}");
    assert!(outcomes[0].1.contains("branch `dev` is not in on.push.branches"), "{outcomes:?}");
    assert_eq!(outcomes[1].0, "skipped", "{outcomes:?}");
    assert!(outcomes[1].1.contains("no changed file matches on.push.paths"), "{outcomes:?}");
    assert_eq!(outcomes[2].0, "success", "{outcomes:?}");
    // Without file lists in the payload, the changed files come from the repository.
    let head = |dir: &Path| {
        String::from_utf8(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let mut verdicts = Vec::new();
    for (n, file) in ["src/lib.rs", "docs/guide.md"].iter().enumerate() {
        let before = head(&dir);
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::write(dir.join(file), "x\n").unwrap();
        git(&dir, &["add", "."]);
        git(&dir, &["commit", "-qm", file]);
        let after = head(&dir);
        let body = json!({"ref": "refs/heads/main", "before": before, "after": after, "created": false, "deleted": false,
                          "repository": {"full_name": "acme/filtered", "clone_url": "https://github.com/acme/filtered.git"}})
        .to_string();
        let (st, v) = hook(&filtered, &headers("push", &format!("g-{n}"), github_signature(secret, &body)), &body);
        assert_eq!(st, 202, "{v}");
        let b = wait_build(&s, v["build"].as_i64().unwrap(), finished);
        verdicts.push(b["build"]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(verdicts, ["success", "skipped"]);

    // Replay of a recorded delivery: processed again as a new delivery.
    let first = list["deliveries"].as_array().unwrap().last().unwrap()["id"].as_i64().unwrap();
    let (st, v) = call("POST", &format!("{}/api/v1/webhooks/{first}/replay", s.url), None);
    assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{v}");
    let b = wait_build(&s, v["build"].as_i64().unwrap(), finished);
    assert_eq!(b["build"]["commit_sha"], sha_app.as_str(), "{b}");
    let (st, v) = call("POST", &format!("{}/api/v1/webhooks/999999/replay", s.url), None);
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");

    // A new push to the branch cancels the running build of the older commit.
    let dir = tmp.path().join("slow");
    let url = repo(&dir, "jobs:\n  build:\n    steps:\n      - run: sleep 30\n");
    let old =
        String::from_utf8(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
    git(&dir, &["commit", "-q", "--allow-empty", "-m", "second"]);
    let new =
        String::from_utf8(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
    let (st, _) = call(
        "POST",
        &format!("{}/api/v1/jobs", s.url),
        Some(json!({"name": "slow", "repo_url": url, "webhook_secret": secret})),
    );
    assert_eq!(st, 201);
    let slow = format!("{}/hooks/github/slow", s.url);
    let mut ids = Vec::new();
    for (n, commit) in [&old, &new].iter().enumerate() {
        let body = push(commit, false);
        let (st, v) = hook(&slow, &headers("push", &format!("s-{n}"), github_signature(secret, &body)), &body);
        assert_eq!(st, 202, "{v}");
        ids.push(v["build"].as_i64().unwrap());
        if n == 0 {
            wait_build(&s, ids[0], |b| b["build"]["status"] == "running" || finished(b));
        }
    }
    let b = wait_build(&s, ids[0], finished);
    assert_eq!(b["build"]["status"], "cancelled", "{b}");
    call("POST", &format!("{}/api/v1/builds/{}/cancel", s.url, ids[1]), None);

    // `concurrency:` decides instead: one group cancels in progress (any trigger), and
    // `cancel-in-progress: false` keeps older webhook builds running.
    let dir = tmp.path().join("grouped");
    let url = repo(
        &dir,
        "concurrency:\n  group: deploy\n  cancel-in-progress: true\njobs:\n  build:\n    steps:\n      - run: sleep 30\n",
    );
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "grouped", "repo_url": url})));
    let (_, first) = call("POST", &format!("{}/api/v1/jobs/grouped/builds", s.url), None);
    let first = first["id"].as_i64().unwrap();
    wait_build(&s, first, |b| b["build"]["status"] == "running" || finished(b));
    let (_, second) = call("POST", &format!("{}/api/v1/jobs/grouped/builds", s.url), None);
    let b = wait_build(&s, first, finished);
    assert_eq!(b["build"]["status"], "cancelled", "{b}");
    call("POST", &format!("{}/api/v1/builds/{}/cancel", s.url, second["id"]), None);
    std::fs::write(
        dir.join("chengis.yml"),
        "concurrency:\n  group: deploy\njobs:\n  build:\n    steps:\n      - run: sleep 30\n",
    )
    .unwrap();
    git(&dir, &["commit", "-qam", "no cancelling"]);
    let keep = head(&dir);
    git(&dir, &["commit", "-q", "--allow-empty", "-m", "next"]);
    let next = head(&dir);
    call("PUT", &format!("{}/api/v1/jobs/grouped", s.url), Some(json!({"webhook_secret": secret})));
    let grouped = format!("{}/hooks/github/grouped", s.url);
    let mut kept = Vec::new();
    for (n, commit) in [&keep, &next].iter().enumerate() {
        let body = push(commit, false);
        let (_, v) = hook(&grouped, &headers("push", &format!("k-{n}"), github_signature(secret, &body)), &body);
        kept.push(v["build"].as_i64().unwrap());
        wait_build(&s, kept[n], |b| b["build"]["status"] == "running" || finished(b));
    }
    let (_, b) = call("GET", &format!("{}/api/v1/builds/{}", s.url, kept[0]), None);
    assert_eq!(b["build"]["status"], "running", "{b}");
    for id in kept {
        call("POST", &format!("{}/api/v1/builds/{id}/cancel", s.url), None);
    }

    // The group may be an expression of the parameters and the event, decided at planning:
    // a build for another target runs on, a build for the same target cancels the older one.
    let dir = tmp.path().join("per-target");
    let url = repo(
        &dir,
        "params:\n  target:\n    default: staging\nconcurrency:\n  group: deploy-${{ params.target }}-${{ git.event }}\n  \
         cancel-in-progress: true\njobs:\n  build:\n    steps:\n      - run: sleep 30\n",
    );
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "per-target", "repo_url": url})));
    let deploy = |target: &str| {
        let body = json!({"params": {"target": target}});
        let (st, v) = call("POST", &format!("{}/api/v1/jobs/per-target/builds", s.url), Some(body));
        assert_eq!(st, 201, "{v}");
        let id = v["id"].as_i64().unwrap();
        wait_build(&s, id, |b| b["build"]["status"] == "running" || finished(b));
        id
    };
    let (staging, prod) = (deploy("staging"), deploy("prod"));
    let staging_again = deploy("staging");
    let b = wait_build(&s, staging, finished);
    assert_eq!(b["build"]["status"], "cancelled", "{b}");
    let (_, b) = call("GET", &format!("{}/api/v1/builds/{prod}", s.url), None);
    assert_eq!(b["build"]["status"], "running", "another target's group is another group: {b}");
    for id in [prod, staging_again] {
        call("POST", &format!("{}/api/v1/builds/{id}/cancel", s.url), None);
    }

    // The rate limit: past it, 429 with Retry-After.
    let mut limited = None;
    for n in 0..40 {
        let mut resp = http()
            .post(&hook_url)
            .header("X-GitHub-Event", "ping")
            .header("X-GitHub-Delivery", format!("r-{n}"))
            .header("X-Hub-Signature-256", github_signature("fourth-webhook-secret-000", "{}"))
            .send("{}")
            .unwrap();
        if resp.status().as_u16() == 429 {
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let mut text = String::new();
            resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
            limited = Some((n, retry, text));
            break;
        }
    }
    let (n, retry, text) = limited.expect("no 429 within 40 deliveries");
    assert!(n > 5, "limited after {n}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1), "{text}");
    assert!(text.contains("rate_limited"), "{text}");
}

#[test]
fn every_forge_delivers_a_signed_push_from_its_documented_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  build:\n    steps:\n      - run: 'true'\n");
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let s = start(&tmp.path().join("data"), &db, &[]);
    let secret = "forge-webhook-secret-0123";
    let (st, _) = call(
        "POST",
        &format!("{}/api/v1/jobs", s.url),
        Some(json!({"name": "forge", "repo_url": url, "webhook_secret": secret})),
    );
    assert_eq!(st, 201);
    let fixture = |provider: &str, name: &str| {
        let path = format!("{}/../tests/fixtures/webhooks/{provider}/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    type Headers = Vec<(&'static str, String)>;
    let cases: Vec<(&str, String, Headers)> = {
        let github = fixture("github", "push_branch");
        let gitlab = fixture("gitlab", "push_branch");
        let gitea = fixture("gitea", "push_branch");
        let bitbucket = fixture("bitbucket", "repo_push_branch");
        let generic = fixture("generic", "push_branch");
        vec![
            (
                "github",
                github.clone(),
                vec![
                    ("X-GitHub-Event", "push".into()),
                    ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
                    ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(secret, &github))),
                ],
            ),
            (
                "gitlab",
                gitlab.clone(),
                vec![
                    ("X-Gitlab-Event", "Push Hook".into()),
                    ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e".into()),
                    ("X-Gitlab-Token", secret.into()),
                ],
            ),
            (
                "gitea",
                gitea.clone(),
                vec![
                    ("X-Gitea-Event", "push".into()),
                    ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473".into()),
                    ("X-Gitea-Signature", hmac_hex(secret, &gitea)),
                ],
            ),
            (
                "bitbucket",
                bitbucket.clone(),
                vec![
                    ("X-Event-Key", "repo:push".into()),
                    ("X-Request-UUID", "2d2d5c5a-8c1f-4a5b-9e3c-1f0e3a6b7c8d".into()),
                    ("X-Hub-Signature", format!("sha256={}", hmac_hex(secret, &bitbucket))),
                ],
            ),
            (
                "generic",
                generic.clone(),
                vec![
                    ("X-Chengis-Delivery", "3f1c2a7e-5b8d-4c1e-9f0a-2b3c4d5e6f70".into()),
                    ("X-Chengis-Timestamp", now.clone()),
                    (
                        "X-Chengis-Signature",
                        format!(
                            "sha256={}",
                            hmac_hex(secret, &format!("3f1c2a7e-5b8d-4c1e-9f0a-2b3c4d5e6f70.{now}.{generic}"))
                        ),
                    ),
                ],
            ),
        ]
    };
    for (provider, body, headers) in cases {
        let hook_url = format!("{}/hooks/{provider}/forge", s.url);
        let (st, v) = hook(&hook_url, &headers, &body);
        assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{provider}: {v}");
        assert!(v["build"].as_i64().is_some(), "{provider}: {v}");
        // Delivered again: a duplicate, no second build.
        let (st, v) = hook(&hook_url, &headers, &body);
        assert_eq!((st, v["status"].as_str()), (200, Some("duplicate")), "{provider}: {v}");
        // Signed with another secret: refused.
        let forged: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| {
                (*k, if k.contains("Signature") || k.contains("Token") { "sha256=00".to_string() } else { v.clone() })
            })
            .collect();
        let (st, _) = hook(&hook_url, &forged, &body);
        assert_eq!(st, 401, "{provider}");
    }
    let (_, builds) = call("GET", &format!("{}/api/v1/builds?job=forge", s.url), None);
    assert_eq!(builds["builds"].as_array().unwrap().len(), 5, "{builds}");
}

#[test]
fn pull_requests_from_forks_get_no_secrets_unless_an_admin_opts_the_job_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let url = repo(
        &dir,
        "jobs:\n  build:\n    steps:\n      - env:\n          T: ${{ secrets.TOKEN }}\n        run: if [ -n \"$T\" ]; then echo has-secret; else echo no-secret; fi\n",
    );
    let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&dir).output().unwrap();
    let sha = String::from_utf8(out.stdout).unwrap().trim().to_string();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        let secret = "fork-webhook-secret-0123";
        let (st, _) = call(
            "POST",
            &format!("{}/api/v1/jobs", s.url),
            Some(json!({"name": "app", "repo_url": url, "webhook_secret": secret})),
        );
        assert_eq!(st, 201);
        assert_eq!(call("PUT", &format!("{}/api/v1/secrets/TOKEN", s.url), Some(json!({"value": "s3cr3t"}))).0, 204);
        let hook_url = format!("{}/hooks/github/app", s.url);
        // A pull request whose head lives in another repository; `title` makes each body new.
        let deliver = |delivery: &str, head_repo: &str| {
            let body = json!({"action": "opened", "number": 9,
                "pull_request": {"number": 9, "title": delivery, "user": {"login": "mallory"},
                                 "head": {"sha": sha, "ref": "evil", "repo": {"clone_url": head_repo}},
                                 "base": {"ref": "main", "sha": sha}},
                "repository": {"full_name": "acme/app", "clone_url": "https://github.com/acme/app.git"}})
            .to_string();
            let headers = [
                ("X-GitHub-Event", "pull_request".to_string()),
                ("X-GitHub-Delivery", delivery.to_string()),
                ("X-Hub-Signature-256", github_signature(secret, &body)),
            ];
            let (st, v) = hook(&hook_url, &headers, &body);
            assert_eq!((st, v["status"].as_str()), (202, Some("accepted")), "{v}");
            let id = v["build"].as_i64().unwrap();
            let b = wait_build(&s, id, finished);
            assert_eq!(b["build"]["status"], "success", "{b}");
            log_texts(&s, id, "build")
        };
        let fork = "https://github.com/mallory/app.git";
        assert_eq!(deliver("fork-1", fork), ["no-secret"], "a fork's pull request gets no secrets");
        assert_eq!(
            deliver("same-1", "https://github.com/acme/app.git"),
            ["has-secret"],
            "a pull request from the repository itself does"
        );
        // Only an admin opts the job in; a developer is refused with a JSON error.
        let (st, _) = call(
            "POST",
            &format!("{}/api/v1/users", s.url),
            Some(json!({"username": "dev", "password": "dev-password-1234", "role": "developer"})),
        );
        assert_eq!(st, 201);
        let (st, v) = call_as(
            "",
            "POST",
            &format!("{}/api/v1/login", s.url),
            Some(json!({"username": "dev", "password": "dev-password-1234"})),
        );
        assert_eq!(st, 201, "{v}");
        let dev = format!("Bearer {}", v["token"].as_str().unwrap());
        let (st, v) = call_as(&dev, "PUT", &format!("{}/api/v1/jobs/app", s.url), Some(json!({"fork_secrets": true})));
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
        assert_eq!(deliver("fork-2", fork), ["no-secret"]);
        let (st, v) = call("PUT", &format!("{}/api/v1/jobs/app", s.url), Some(json!({"fork_secrets": true})));
        assert_eq!((st, v["fork_secrets"].as_bool()), (200, Some(true)), "{v}");
        assert_eq!(deliver("fork-3", fork), ["has-secret"], "the admin opted the job in");
    }
}
