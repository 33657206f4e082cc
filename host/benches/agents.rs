//! Benchmarks of remote agents over HTTP on loopback, printing figures:
//! - lease round trip: `POST /api/v1/agent/lease` that returns one prepared job, and a renewal
//!   (p50, p99), against `chengis serve --agents 0` with SQLite;
//! - jobs per second end to end: one build of 400 `true` jobs through one server and 4
//!   `chengis agent` processes (2 executors each);
//! - log lines per second from an agent to the server and out over SSE (a job printing 200,000
//!   lines, followed live).
//!
//! Run with `cargo bench -p chengis --bench agents` (`-- jobs` for one of `lease`, `jobs`, `log`).

mod common;

use common::repo;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Proc, String) {
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let (child, url) = common::serve(&dir.join("data"), &db, "0");
    (Proc(child), url)
}

fn agent(dir: &Path, url: &str, token: &str, name: &str) -> Proc {
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(["agent", "--server", url, "--token", token, "--name", name, "--labels", "linux"])
            .args(["--executors", "2"])
            .arg("--work-dir")
            .arg(&work)
            .stdout(Stdio::null())
            // CHENGIS_BENCH_AGENT_LOG=DIR keeps each agent's log there (with CHENGIS_LOG).
            .stderr(match std::env::var_os("CHENGIS_BENCH_AGENT_LOG") {
                Some(d) => Stdio::from(std::fs::File::create(Path::new(&d).join(format!("{name}.log"))).unwrap()),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap(),
    )
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(h: &ureq::Agent, url: &str, body: Value, auth: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = h.post(url);
    match auth {
        Some((token, name)) => {
            req = req.header("Authorization", &format!("Bearer {token}")).header("Chengis-Agent", name)
        }
        None => req = req.header("Authorization", common::BEARER),
    }
    let mut resp = req.send_json(body).unwrap();
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(h: &ureq::Agent, url: &str) -> Value {
    h.get(url).header("Authorization", common::BEARER).call().unwrap().body_mut().read_json().unwrap()
}

fn token(h: &ureq::Agent, url: &str) -> String {
    let (status, v) = post(h, &format!("{url}/api/v1/agent-tokens"), json!({"name": "bench"}), None);
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Polls the build every `every` until it ends.
fn wait_finished(h: &ureq::Agent, url: &str, id: i64, within: Duration, every: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let b = get(h, &format!("{url}/api/v1/builds/{id}"));
        if !matches!(b["build"]["status"].as_str(), Some("queued" | "running")) {
            return b;
        }
        assert!(Instant::now() < deadline, "build {id} did not finish: {}", b["build"]);
        std::thread::sleep(every);
    }
}

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn many_jobs(n: usize) -> String {
    let mut p = String::from("name: many\njobs:\n");
    for i in 0..n {
        p.push_str(&format!("  j{i}:\n    steps:\n      - run: \"true\"\n"));
    }
    p
}

/// Lease round trips with a hand-driven agent: lease one job, renew it, finish it.
fn lease_round_trip(dir: &Path) {
    let (_server, url) = serve(dir);
    let h = http();
    let tok = token(&h, &url);
    let auth = Some((tok.as_str(), "bench"));
    let info = json!({"name": "bench", "labels": ["linux"], "executors": 1, "cpus": 2, "memory_mb": 1024});
    assert_eq!(post(&h, &format!("{url}/api/v1/agent/register"), info, auth).0, 200);
    let n = 200;
    let repo = repo(&dir.join("many"), &many_jobs(n));
    post(&h, &format!("{url}/api/v1/jobs"), json!({"name": "many", "repo_url": repo}), None);
    let (_, b) = post(&h, &format!("{url}/api/v1/jobs/many/builds"), json!({}), None);
    let id = b["id"].as_i64().unwrap();
    // Wait until the plan is queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&h, &format!("{url}/api/v1/builds/{id}"))["jobs"].as_array().map_or(0, Vec::len) < n {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut leases, mut renews, mut empties) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let start = Instant::now();
        let (status, v) =
            post(&h, &format!("{url}/api/v1/agent/lease"), json!({"capacity": 1, "labels": ["linux"]}), auth);
        leases.push(start.elapsed());
        assert_eq!(status, 200, "{v}");
        let a = &v["assignments"][0];
        let lease = a["lease"].clone();
        let entry = lease["entry"].as_i64().unwrap();
        let start = Instant::now();
        let (status, _) = post(&h, &format!("{url}/api/v1/agent/leases/{entry}/renew"), json!({"lease": lease}), auth);
        renews.push(start.elapsed());
        assert_eq!(status, 200);
        let body = json!({"lease": lease, "status": "success", "outputs": {}, "sandbox": "bench"});
        let (status, v) = post(&h, &format!("{url}/api/v1/agent/leases/{entry}/finish"), body, auth);
        assert_eq!(status, 200, "{v}");
    }
    for _ in 0..100 {
        let start = Instant::now();
        let (status, _) =
            post(&h, &format!("{url}/api/v1/agent/lease"), json!({"capacity": 1, "labels": ["linux"]}), auth);
        empties.push(start.elapsed());
        assert_eq!(status, 200);
    }
    println!(
        "lease round trip over HTTP (SQLite, loopback, {n} jobs): lease with one prepared job p50 {:.2} ms, p99 {:.2} ms; \
         renew p50 {:.2} ms, p99 {:.2} ms; empty poll p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut leases, 0.5),
        pct(&mut leases, 0.99),
        pct(&mut renews, 0.5),
        pct(&mut renews, 0.99),
        pct(&mut empties, 0.5),
        pct(&mut empties, 0.99),
    );
}

/// One build of 400 `true` jobs through 4 agents.
fn jobs_per_second(dir: &Path) {
    let (_server, url) = serve(dir);
    let h = http();
    let tok = token(&h, &url);
    let _agents: Vec<Proc> = (0..4).map(|i| agent(dir, &url, &tok, &format!("agent-{i}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&h, &format!("{url}/api/v1/agents"))["agents"].as_array().map_or(0, Vec::len) < 4 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = std::env::var("CHENGIS_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let repo = repo(&dir.join("many"), &many_jobs(n));
    post(&h, &format!("{url}/api/v1/jobs"), json!({"name": "many", "repo_url": repo}), None);
    let start = Instant::now();
    let (_, b) = post(&h, &format!("{url}/api/v1/jobs/many/builds"), json!({}), None);
    let id = b["id"].as_i64().unwrap();
    // The figure comes from the jobs' own times: poll seldom, so as not to load the server.
    let build = wait_finished(&h, &url, id, Duration::from_secs(600), Duration::from_millis(250));
    let wall = start.elapsed();
    assert_eq!(build["build"]["status"], "success", "{}", build["build"]);
    // Time from the first job's start to the last job's end (planning excluded).
    let jobs = build["jobs"].as_array().unwrap();
    let first = jobs.iter().filter_map(|j| j["job"]["started_ms"].as_i64()).min().unwrap();
    let last = jobs.iter().filter_map(|j| j["job"]["finished_ms"].as_i64()).max().unwrap();
    let run = Duration::from_millis((last - first).max(1) as u64);
    println!(
        "end to end, 4 agents x 2 executors, one build of {n} `true` jobs (SQLite): {:.0} jobs/s from the first job's start \
         to the last job's end ({:.2} s), {:.0} jobs/s including planning ({:.2} s)",
        n as f64 / run.as_secs_f64(),
        run.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
}

/// 200,000 lines from a job on a remote agent, followed over SSE as they arrive.
fn log_lines(dir: &Path) {
    let (_server, url) = serve(dir);
    let h = http();
    let tok = token(&h, &url);
    let _agent = agent(dir, &url, &tok, "agent-log");
    let lines = 200_000u64;
    let pipeline = format!("name: log\njobs:\n  j:\n    steps:\n      - run: seq 1 {lines}\n");
    let repo = repo(&dir.join("log"), &pipeline);
    post(&h, &format!("{url}/api/v1/jobs"), json!({"name": "log", "repo_url": repo}), None);
    let start = Instant::now();
    let (_, b) = post(&h, &format!("{url}/api/v1/jobs/log/builds"), json!({}), None);
    let id = b["id"].as_i64().unwrap();
    // Follow from the start: the stream waits for the job to exist.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&h, &format!("{url}/api/v1/builds/{id}"))["jobs"].as_array().map_or(0, Vec::len) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut resp = h
        .get(&format!("{url}/api/v1/builds/{id}/jobs/j/logs/stream"))
        .header("Authorization", common::BEARER)
        .call()
        .unwrap();
    let mut seen = 0u64;
    for line in BufReader::new(resp.body_mut().as_reader()).lines() {
        if line.unwrap().starts_with("event: line") {
            seen += 1;
            if seen == lines {
                break;
            }
        }
    }
    // From the trigger to the last line read over SSE: planning, checkout and the agent's
    // batches through the server included.
    let took = start.elapsed();
    wait_finished(&h, &url, id, Duration::from_secs(120), Duration::from_millis(20));
    println!(
        "log lines from a remote agent to the server and out over SSE: {lines} lines in {:.2} s from the trigger to the \
         last line read, {:.0} lines/s",
        took.as_secs_f64(),
        lines as f64 / took.as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // A name given after `--` runs only the benches whose name contains it (for profiling).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let benches = [("lease", lease_round_trip as fn(&Path)), ("jobs", jobs_per_second), ("log", log_lines)];
    for (i, (name, bench)) in benches.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        bench(&d);
    }
}
