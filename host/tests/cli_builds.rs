//! `chengis build ...` against a real `chengis serve`: builds referred to as `JOB#NUMBER`
//! (`hello#3`) as well as by id for show, logs, cancel and retry; bad references refused with
//! their own name; log lines labelled with their job; `trigger --wait` following the build's
//! event stream with each job's result and the exit code of the build's; and `who` recording the
//! user (signed in with `chengis login`, or the owner of an API token) instead of `api`.

use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

mod support;
use support::*;

/// Two jobs, the second after the first, no skipped ones.
const PASSING: &str = r#"
jobs:
  build:
    steps:
      - run: echo b1; echo b2
  test:
    needs: build
    steps:
      - run: sleep 1; echo t1
"#;

/// One job passes, the other fails; nothing depends on the failing one (so nothing is skipped).
const FAILING: &str = r#"
jobs:
  ok:
    steps:
      - run: echo fine
  bad:
    steps:
      - name: breaks
        run: echo broken; exit 3
"#;

const SLOW: &str = "jobs:\n  s:\n    steps:\n      - run: echo started; sleep 60\n";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn build_of(s: &Server, id: i64) -> Value {
    let (st, b) = call("GET", &format!("{}/api/v1/builds/{id}", s.url), None);
    assert_eq!(st, 200, "{b}");
    b
}

#[test]
fn job_numbers_resolve_for_show_logs_cancel_and_retry_and_bad_references_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = repo(&tmp.path().join("hello"), PASSING);
    let slow = repo(&tmp.path().join("slow"), SLOW);
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        for (name, url) in [("slow", &slow), ("hello", &hello)] {
            assert_eq!(cli(&s.url, &["job", "create", name, "--repo", url], None).0, 0);
        }
        // A build of another job first, so that ids and numbers differ: hello#1 is build 2.
        let (code, out, err) = cli(&s.url, &["build", "trigger", "slow"], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "build slow#1 queued (id 1)\n");

        // --wait: each job's result as it ends, then the build's; exit 0; promptly.
        let (code, out, err) = cli(&s.url, &["build", "trigger", "hello", "--wait"], None);
        let returned = now_ms();
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("build hello#1 queued (id 2); waiting"), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("job build: success (") && lines[0].ends_with(')'), "{out}");
        assert!(
            lines[1].starts_with("job test: success (1s)") || lines[1].starts_with("job test: success (2s)"),
            "{out}"
        );
        assert!(lines[2].starts_with("build hello#1 (id 2): success ("), "{out}");
        let b = build_of(&s, 2);
        let ended = b["build"]["finished_ms"].as_i64().unwrap();
        assert!(returned - ended < 1000, "--wait returned {} ms after the build finished", returned - ended);

        // show: by job number and by id, the same build, with durations and who.
        let (code, shown, err) = cli(&s.url, &["build", "show", "hello#1"], None);
        assert_eq!(code, 0, "{err}");
        assert!(shown.starts_with("build hello#1 (id 2): success (attempt 1, main "), "{shown}");
        assert!(shown.contains("  triggered by manual (admin), took "), "{shown}");
        assert!(shown.contains("  job test: success (1s)") || shown.contains("  job test: success (2s)"), "{shown}");
        assert_eq!(cli(&s.url, &["build", "show", "2"], None).1, shown);
        let (_, json_out, _) = cli(&s.url, &["build", "show", "hello#1", "--format", "json"], None);
        let v: Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!((v["build"]["id"].as_i64(), v["build"]["number"].as_i64()), (Some(2), Some(1)));
        let (st, api) = call("GET", &format!("{}/api/v1/jobs/hello/builds/1", s.url), None);
        assert_eq!((st, &api["build"]), (200, &v["build"]));

        // logs: every job in order, each line labelled; the same by id and when following.
        let (code, logs, err) = cli(&s.url, &["build", "logs", "hello#1"], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(logs, "[build] b1\n[build] b2\n[test] t1\n");
        assert_eq!(cli(&s.url, &["build", "logs", "2"], None).1, logs);
        assert_eq!(cli(&s.url, &["build", "logs", "hello#1", "--follow"], None).1, logs);
        assert_eq!(cli(&s.url, &["build", "logs", "hello#1", "--job", "test"], None).1, "[test] t1\n");

        // retry by job number: a new build of the same job, attributed to the caller.
        let (code, out, err) = cli(&s.url, &["build", "retry", "hello#1"], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "build hello#2 (id 3) queued: attempt 2 of build hello#1\n");
        let b = wait_build(&s, 3, finished);
        assert_eq!((b["build"]["status"].as_str(), b["build"]["who"].as_str()), (Some("success"), Some("admin")));

        // cancel by job number.
        wait_build(&s, 1, |b| b["build"]["status"] == "running");
        let (code, out, err) = cli(&s.url, &["build", "cancel", "slow#1"], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "build slow#1 (id 1) is cancelled\n");
        assert_eq!(wait_build(&s, 1, finished)["build"]["status"], "cancelled");

        // Bad references: refused before any call, naming the reference, exit 2.
        for (cmd, reference, says) in [
            ("show", "hello#", "`hello#` has no build number after `#`"),
            ("logs", "hello#x", "`hello#x`: `x` is not a build number"),
            ("cancel", "#3", "`#3` names no job before `#`"),
            ("retry", "hello#0", "`hello#0`: `0` is not a build number"),
            ("show", "hello", "`hello` is not a build"),
        ] {
            let (code, out, err) = cli(&s.url, &["build", cmd, reference], None);
            assert_eq!(code, 2, "{cmd} {reference}: {out}{err}");
            assert!(err.contains(says), "{cmd} {reference}: {err}");
        }
        // Unknown job, unknown number: the server's 404, named.
        for cmd in ["show", "logs", "cancel", "retry"] {
            let (code, _, err) = cli(&s.url, &["build", cmd, "nope#1"], None);
            assert_ne!(code, 0);
            assert!(err.contains("build nope#1: job `nope` not found (HTTP 404)"), "{cmd}: {err}");
            let (code, _, err) = cli(&s.url, &["build", cmd, "hello#99"], None);
            assert_ne!(code, 0);
            assert!(
                err.contains("build hello#99: build number 99 of job `hello` not found (HTTP 404)"),
                "{cmd}: {err}"
            );
        }
        let (code, _, err) = cli(&s.url, &["build", "show", "99"], None);
        assert_ne!(code, 0);
        assert!(err.contains("build 99: build 99 not found (HTTP 404)"), "{err}");
    }
}

#[test]
fn wait_prints_each_jobs_result_and_exits_by_the_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = repo(&tmp.path().join("failing"), FAILING);
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    assert_eq!(cli(&s.url, &["job", "create", "flaky", "--repo", &failing], None).0, 0);
    let (code, out, err) = cli(&s.url, &["build", "trigger", "flaky", "--wait"], None);
    let returned = now_ms();
    assert_eq!(code, 1, "{out}{err}");
    let mut jobs: Vec<&str> = out.lines().filter(|l| l.starts_with("job ")).collect();
    jobs.sort();
    assert_eq!(jobs.len(), 2, "{out}");
    assert!(jobs[0].starts_with("job bad: failure (") && jobs[0].contains("): step `breaks` "), "{out}");
    assert!(jobs[1].starts_with("job ok: success (") && jobs[1].ends_with(')'), "{out}");
    assert!(out.lines().last().unwrap().starts_with("build flaky#1 (id 1): failure ("), "{out}");
    let ended = build_of(&s, 1)["build"]["finished_ms"].as_i64().unwrap();
    assert!(returned - ended < 1000, "--wait returned {} ms after the build finished", returned - ended);

    // With --format json the answer is the final build, for tools.
    let (code, out, _) = cli(&s.url, &["build", "trigger", "flaky", "--wait", "--format", "json"], None);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["build"]["status"].as_str(), v["build"]["number"].as_i64()), (Some("failure"), Some(2)));

    // A build that cannot even be planned ends `error`: --wait says why and exits 1.
    let (st, _) = call("PUT", &format!("{}/api/v1/jobs/flaky", s.url), Some(json!({"pipeline_path": "missing.yml"})));
    assert_eq!(st, 200);
    let (code, out, _) = cli(&s.url, &["build", "trigger", "flaky", "--wait"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("build flaky#3 (id 3): error") && out.contains("missing.yml"), "{out}");
}

#[test]
fn builds_record_the_user_or_token_owner_who_started_them() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = repo(&tmp.path().join("hello"), PASSING);
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    assert_eq!(cli(&s.url, &["job", "create", "hello", "--repo", &hello], None).0, 0);
    for name in ["dora", "tom"] {
        let (st, v) = call(
            "POST",
            &format!("{}/api/v1/users", s.url),
            Some(json!({"username": name, "password": format!("{name}-password-1234"), "role": "developer"})),
        );
        assert_eq!(st, 201, "{v}");
    }

    // dora signs in with the CLI; what she triggers and retries is hers.
    let config = tmp.path().join("dora-config");
    let config_dir = config.to_str().unwrap();
    let env = [("CHENGIS_CONFIG_DIR", config_dir)];
    let (code, _, err) =
        cli_env(&s.url, &["login", "--username", "dora", "--password-stdin"], &env, Some("dora-password-1234\n"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli_env(&s.url, &["build", "trigger", "hello", "--wait"], &env, None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli_env(&s.url, &["build", "retry", "hello#1"], &env, None);
    assert_eq!(code, 0, "{err}");
    let (_, shown, _) = cli_env(&s.url, &["build", "show", "hello#1"], &env, None);
    assert!(shown.contains("triggered by manual (dora)"), "{shown}");

    // tom's API token (made with his password) starts builds as tom.
    let (st, v) = call_as(
        "",
        "POST",
        &format!("{}/api/v1/login", s.url),
        Some(json!({"username": "tom", "password": "tom-password-1234", "token_name": "ci"})),
    );
    assert_eq!(st, 201, "{v}");
    let tom = format!("Bearer {}", v["token"].as_str().unwrap());
    let (st, v) = call_as(&tom, "POST", &format!("{}/api/v1/tokens", s.url), Some(json!({"name": "bot"})));
    assert_eq!(st, 201, "{v}");
    let bot = v["token"].as_str().unwrap().to_string();
    let (code, _, err) = cli_env(&s.url, &["build", "trigger", "hello"], &[("CHENGIS_TOKEN", &bot)], None);
    assert_eq!(code, 0, "{err}");
    let (st, b) = call_as(&tom, "POST", &format!("{}/api/v1/jobs/hello/builds", s.url), None);
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["who"], "tom");

    let builds: Vec<(i64, String)> = (1..=4)
        .map(|number| {
            let (st, b) = call("GET", &format!("{}/api/v1/jobs/hello/builds/{number}", s.url), None);
            assert_eq!(st, 200, "{b}");
            (number, b["build"]["who"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        builds,
        [(1, "dora".to_string()), (2, "dora".to_string()), (3, "tom".to_string()), (4, "tom".to_string())]
    );
    // The admin token is the first admin's.
    let (_, b) = call("POST", &format!("{}/api/v1/jobs/hello/builds", s.url), None);
    assert_eq!(b["who"], "admin");
    for id in 1..=5 {
        wait_build(&s, id, finished);
    }
}

/// A TCP proxy in front of the server that can cut every open connection at once (a dropped
/// stream, as a restarted load balancer would cause); new connections keep working.
struct Cutter {
    port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cutter {
    fn start(target: &str) -> Cutter {
        use std::net::{TcpListener, TcpStream};
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&target) else { continue };
                kept.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cutter { port, open }
    }

    /// Cuts every open connection; returns how many there were.
    fn cut(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        let n = open.len();
        for c in open.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        n
    }
}

#[test]
fn wait_survives_a_dropped_event_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let slowish = repo(
        &tmp.path().join("slowish"),
        "jobs:\n  one:\n    steps:\n      - run: sleep 1; echo a\n  two:\n    needs: one\n    steps:\n      - run: sleep 2; echo b\n",
    );
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    assert_eq!(cli(&s.url, &["job", "create", "slowish", "--repo", &slowish], None).0, 0);
    let proxy = Cutter::start(&s.url);
    let child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["build", "trigger", "slowish", "--wait", "--server", &format!("http://127.0.0.1:{}", proxy.port)])
        .env("CHENGIS_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Cut the stream while job `one` runs and again while `two` runs.
    wait_build(&s, 1, |b| b["jobs"][0]["job"]["status"] == "running");
    assert!(proxy.cut() > 0, "the CLI was not connected");
    wait_build(&s, 1, |b| b["jobs"][1]["job"]["status"] == "running");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(proxy.cut() > 0, "the CLI did not reconnect");
    let out = child.wait_with_output().unwrap();
    let returned = now_ms();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "each job's result once, then the build's: {stdout}");
    assert!(lines[0].starts_with("job one: success (1s)"), "{stdout}");
    assert!(lines[1].starts_with("job two: success (2s)"), "{stdout}");
    assert!(lines[2].starts_with("build slowish#1 (id 1): success ("), "{stdout}");
    let ended = build_of(&s, 1)["build"]["finished_ms"].as_i64().unwrap();
    assert!(returned - ended < 1000, "--wait returned {} ms after the build finished", returned - ended);
}
