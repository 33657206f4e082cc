//! The user-facing throughput bench (issue 25): what a user of `chengis serve` feels, printed
//! as figures (nothing here asserts a speed). Every figure comes from the real `chengis serve`
//! binary on a fresh data directory, running the trivial job (one step, `echo hello`) on its
//! embedded agent with the server's default settings (host steps `sandboxed`, the default;
//! `CHENGIS_BENCH_HOST_STEPS` overrides it) apart from `--executors` and `--rate-limit 0/1m`
//! (the bench's own requests are not throttled). Parts:
//!
//! - `rate`: builds/s for N trivial builds triggered one after another over ONE kept-alive
//!   HTTP connection (`POST /api/v1/jobs/{name}/builds`), from the first trigger until the last
//!   build is final (the largest `finished_ms` the server recorded), with `--executors 2` and
//!   with `--executors 6`;
//! - `cli`: the same N with one `chengis build trigger` process per trigger (`--executors 6`);
//! - `latency`: trigger-to-finished p50/p95 over 50 sequential builds (after one warm-up build),
//!   (a) triggering over the API and following the build's SSE event stream until its final
//!   `build_status`, (b) as the wall time of `chengis build trigger --wait`;
//! - `sql`: SQL statements per build, counted from sqlx's own statement log
//!   (`CHENGIS_LOG=sqlx::query=debug`, one log record per statement executed) over the N
//!   builds of a rate run, with the statements of an equally long idle period and of the
//!   bench's own completion polls reported beside it (and subtracted for the net figure);
//! - `rss`: VmRSS of the idle server after its first start, after one password sign-in
//!   (`POST /api/v1/login`) and after the N builds (each after 2 s idle);
//! - `start`: first start on a fresh data directory (spawn until the API answers an
//!   authenticated request) and a restart on the same data directory after SIGTERM.
//!
//! Each on SQLite, and on PostgreSQL when `CHENGIS_TEST_DATABASE_URL` is set (a fresh database
//! `chengis_bench_<pid>_<n>` per server, dropped at the end).
//!
//! Run with `cargo bench -p chengis --bench throughput`. Environment: `CHENGIS_BENCH_PARTS`
//! (comma-separated subset of `rate,cli,latency,sql,rss,start`; default all),
//! `CHENGIS_BENCH_N` (builds per rate run, default 200), `CHENGIS_BENCH_LATENCY_N` (default
//! 50), `CHENGIS_BENCH_DATABASES` (`sqlite,postgres`), `CHENGIS_BENCH_KEEP=1` (keep the
//! temporary directory with the servers' logs and print its path).

mod common;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The job every build runs.
const JOB: &str = "hello";
/// Its pipeline: one host step.
const PIPELINE: &str = "name: hello\njobs:\n  hello:\n    steps:\n      - run: echo hello\n";
/// Build statuses after which nothing changes.
const FINAL: &[&str] = &["success", "failure", "cancelled", "timed_out", "skipped", "error"];
/// The sqlx statement log filter of the `sql` part.
const SQL_LOG: &str = "warn,chengis::plugins=info,sqlx::query=debug";

/// What to run.
struct Plan {
    parts: Vec<String>,
    n: usize,
    latency_n: usize,
    host_steps: Option<String>,
}

impl Plan {
    fn has(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// A running `chengis serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// Kept open: the server's stdout.
    _stdout: ChildStdout,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and waits for it.
    fn stop(mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: the server did not stop within 30 s of SIGTERM; killing it");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a server keeps its state: a data directory and a database URL.
struct Place {
    data: PathBuf,
    db: String,
}

/// Databases to drop at the end.
struct Databases {
    base: Option<String>,
    created: Vec<String>,
}

impl Databases {
    fn postgres(&mut self, base: &str) -> String {
        let name = format!("chengis_bench_{}_{}", std::process::id(), self.created.len());
        rt().block_on(async {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(base).await.expect("connect to CHENGIS_TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
            let _ = admin.close().await;
        });
        self.base = Some(base.to_string());
        self.created.push(name.clone());
        with_database(base, &name)
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        let Some(base) = &self.base else { return };
        rt().block_on(async {
            use sqlx::Connection;
            let Ok(mut admin) = sqlx::PgConnection::connect(base).await else { return };
            for name in &self.created {
                if let Err(e) =
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await
                {
                    eprintln!("warning: could not drop database {name}: {e}");
                }
            }
            let _ = admin.close().await;
        });
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `base` with its database name replaced by `name` (query string kept).
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.find('?') {
        Some(q) => (&base[..q], &base[q..]),
        None => (base, ""),
    };
    let after_scheme = head.find("://").map_or(0, |i| i + 3);
    match head[after_scheme..].find('/') {
        Some(i) => format!("{}/{name}{query}", &head[..after_scheme + i]),
        None => format!("{head}/{name}{query}"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn read_value(resp: &mut ureq::http::Response<ureq::Body>) -> Value {
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn get(h: &ureq::Agent, url: &str) -> (u16, Value) {
    let mut resp = h.get(url).header("Authorization", common::BEARER).call().unwrap();
    (resp.status().as_u16(), read_value(&mut resp))
}

fn post(h: &ureq::Agent, url: &str, body: Value, bearer: bool) -> (u16, Value) {
    let mut req = h.post(url);
    if bearer {
        req = req.header("Authorization", common::BEARER);
    }
    let mut resp = req.send_json(body).unwrap();
    (resp.status().as_u16(), read_value(&mut resp))
}

/// Starts `chengis serve` at `place` with `executors` and waits until the API answers an
/// authenticated request; returns the server and the time from spawn to that answer.
fn start(plan: &Plan, place: &Place, executors: usize, log: &Path, sql_log: bool) -> (Server, Duration) {
    let began = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chengis"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0/1m", "--database-url", &place.db])
        .args(["--executors", &executors.to_string()])
        .arg("--data-dir")
        .arg(&place.data)
        .env("CHENGIS_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("CHENGIS_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env_remove("CHENGIS_DATABASE_URL")
        .env_remove("CHENGIS_EXECUTORS")
        .env_remove("CHENGIS_HOST_STEPS")
        .env_remove("CHENGIS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap()));
    if let Some(mode) = &plan.host_steps {
        cmd.args(["--host-steps", mode]);
    }
    if sql_log {
        cmd.env("CHENGIS_LOG", SQL_LOG);
    } else {
        cmd.env_remove("CHENGIS_LOG");
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Some(url) = line.trim().strip_prefix("chengis listening on ").map(str::to_string) else {
        let _ = child.kill();
        panic!("chengis serve did not start (first line {line:?}); see {}", log.display());
    };
    let h = http();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(resp) = h.get(&format!("{url}/api/v1/jobs")).header("Authorization", common::BEARER).call()
            && resp.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the API of {url} did not answer within 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = began.elapsed();
    (Server { child, url, _stdout: stdout.into_inner(), log: log.to_path_buf() }, took)
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// VmRSS after `idle` of quiet.
fn idle_rss(server: &Server, idle: Duration) -> f64 {
    std::thread::sleep(idle);
    rss_mib(server.pid())
}

fn create_job(server: &Server, repo: &str) {
    let (status, v) =
        post(&http(), &format!("{}/api/v1/jobs", server.url), json!({"name": JOB, "repo_url": repo}), true);
    assert_eq!(status, 201, "creating the job: {v}");
}

fn trigger(h: &ureq::Agent, server: &Server) -> i64 {
    let mut resp = h
        .post(&format!("{}/api/v1/jobs/{JOB}/builds", server.url))
        .header("Authorization", common::BEARER)
        .send_empty()
        .unwrap();
    let status = resp.status().as_u16();
    let v = read_value(&mut resp);
    assert_eq!(status, 201, "trigger: {v}");
    v["id"].as_i64().unwrap()
}

/// Polls (over its own connection, every `every`) until no build of the job is queued or
/// running; returns the number of polls (each is two requests).
fn wait_all_final(server: &Server, every: Duration) -> usize {
    let h = http();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut polls = 0;
    loop {
        polls += 1;
        let busy = ["queued", "running"].iter().any(|status| {
            let (code, v) = get(&h, &format!("{}/api/v1/builds?job={JOB}&status={status}&limit=1", server.url));
            assert_eq!(code, 200, "{v}");
            !v["builds"].as_array().unwrap().is_empty()
        });
        if !busy {
            return polls;
        }
        assert!(Instant::now() < deadline, "builds did not finish within 600 s");
        std::thread::sleep(every);
    }
}

/// The builds of the job with the given ids: id -> (status, finished_ms).
fn summaries(server: &Server, ids: &[i64]) -> BTreeMap<i64, (String, Option<i64>)> {
    let h = http();
    let want: std::collections::HashSet<i64> = ids.iter().copied().collect();
    let mut out = BTreeMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut url = format!("{}/api/v1/builds?job={JOB}&limit=200", server.url);
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let (code, v) = get(&h, &url);
        assert_eq!(code, 200, "{v}");
        for b in v["builds"].as_array().unwrap() {
            let id = b["id"].as_i64().unwrap();
            if want.contains(&id) {
                out.insert(id, (b["status"].as_str().unwrap_or("").to_string(), b["finished_ms"].as_i64()));
            }
        }
        match v["next_cursor"].as_i64() {
            Some(c) if out.len() < want.len() => before = Some(c),
            _ => return out,
        }
    }
}

/// The result of N builds.
struct Rate {
    n: usize,
    /// From the first trigger to the last build's end.
    secs: f64,
    /// Time spent triggering.
    trigger_secs: f64,
    /// Completion polls made (two requests each).
    polls: usize,
}

impl Rate {
    fn per_s(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

/// Triggers `n` builds one after another with `trigger_one`, waits for all of them and reads
/// the server's end time of the last one.
fn run_builds(server: &Server, n: usize, poll_every: Duration, mut trigger_one: impl FnMut() -> Option<i64>) -> Rate {
    let start_ms = now_ms();
    let start = Instant::now();
    let ids: Vec<i64> = (0..n).filter_map(|_| trigger_one()).collect();
    let trigger_secs = start.elapsed().as_secs_f64();
    let polls = wait_all_final(server, poll_every);
    let builds = if ids.len() == n {
        summaries(server, &ids)
    } else {
        // The CLI printed no ids: all builds of the job that began after the start.
        let all = summaries_since(server, start_ms);
        assert_eq!(all.len(), n, "expected {n} builds since the start");
        all
    };
    assert_eq!(builds.len(), n, "found {} of {n} builds", builds.len());
    let bad: Vec<_> = builds.iter().filter(|(_, (s, _))| s != "success").collect();
    assert!(
        bad.is_empty(),
        "{} of {n} builds did not succeed, such as {:?}; see {}",
        bad.len(),
        bad[0],
        server.log.display()
    );
    let end = builds.values().filter_map(|(_, f)| *f).max().unwrap();
    Rate { n, secs: (end - start_ms).max(1) as f64 / 1000.0, trigger_secs, polls }
}

/// Builds of the job queued at or after `since_ms`.
fn summaries_since(server: &Server, since_ms: i64) -> BTreeMap<i64, (String, Option<i64>)> {
    let h = http();
    let mut out = BTreeMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut url = format!("{}/api/v1/builds?job={JOB}&limit=200", server.url);
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let (_, v) = get(&h, &url);
        let mut older = false;
        for b in v["builds"].as_array().unwrap() {
            if b["queued_ms"].as_i64().unwrap_or(0) >= since_ms {
                let id = b["id"].as_i64().unwrap();
                out.insert(id, (b["status"].as_str().unwrap_or("").to_string(), b["finished_ms"].as_i64()));
            } else {
                older = true;
            }
        }
        match v["next_cursor"].as_i64() {
            Some(c) if !older => before = Some(c),
            _ => return out,
        }
    }
}

/// N builds triggered over one kept-alive connection.
fn rate_api(server: &Server, n: usize) -> Rate {
    let h = http();
    run_builds(server, n, Duration::from_millis(25), || Some(trigger(&h, server)))
}

fn cli(server: &Server) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chengis"));
    c.env("CHENGIS_TOKEN", common::ADMIN_TOKEN)
        .env("CHENGIS_SERVER", &server.url)
        .env_remove("CHENGIS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// N builds, one `chengis build trigger` process each.
fn rate_cli(server: &Server, n: usize) -> Rate {
    run_builds(server, n, Duration::from_millis(25), || {
        let status = cli(server).args(["build", "trigger", JOB]).status().unwrap();
        assert!(status.success(), "chengis build trigger: {status}");
        None
    })
}

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Triggers a build over the API and follows its event stream until its final status.
fn one_followed(h: &ureq::Agent, server: &Server) -> Duration {
    let began = Instant::now();
    let id = trigger(h, server);
    let mut resp = h
        .get(&format!("{}/api/v1/builds/{id}/events", server.url))
        .header("Authorization", common::BEARER)
        .header("Accept", "text/event-stream")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut kind = String::new();
    for line in BufReader::new(resp.body_mut().as_reader()).lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("event:") {
            kind = k.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            if kind == "end" {
                break;
            }
            let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            if kind == "build_status" && FINAL.contains(&v["payload"]["status"].as_str().unwrap_or("")) {
                assert_eq!(v["payload"]["status"], "success", "build {id}: {v}");
                return began.elapsed();
            }
        }
    }
    panic!("the event stream of build {id} ended before its final status");
}

/// Wall time of one `chengis build trigger --wait`.
fn one_waited(server: &Server) -> Duration {
    let began = Instant::now();
    let status = cli(server).args(["build", "trigger", JOB, "--wait"]).status().unwrap();
    let took = began.elapsed();
    assert!(status.success(), "chengis build trigger --wait: {status}");
    took
}

/// p50/p95 of `n` sequential builds after one warm-up.
fn latency(n: usize, mut one: impl FnMut() -> Duration) -> (f64, f64) {
    one();
    let mut samples: Vec<Duration> = (0..n).map(|_| one()).collect();
    (pct(&mut samples, 0.5), pct(&mut samples, 0.95))
}

/// Statement log records in `log` from byte `from` on, by the first word of sqlx's summary.
fn statements(log: &Path, from: u64) -> (u64, BTreeMap<String, u64>) {
    let bytes = std::fs::read(log).unwrap();
    let text = String::from_utf8_lossy(&bytes[(from as usize).min(bytes.len())..]).into_owned();
    let mut kinds = BTreeMap::new();
    let mut total = 0;
    for line in text.lines().filter(|l| l.contains(" sqlx::query")) {
        total += 1;
        let word = line
            .split_once("summary=\"")
            .map(|(_, rest)| rest.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_ascii_uppercase())
            .unwrap_or_default();
        *kinds.entry(if word.is_empty() { "?".into() } else { word }).or_insert(0) += 1;
    }
    (total, kinds)
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// SQL statements per build.
struct SqlCount {
    n: usize,
    total: u64,
    kinds: BTreeMap<String, u64>,
    /// Statements while idle, scaled to the run's length.
    background: f64,
    /// Statements of the bench's completion polls.
    polls: f64,
    secs: f64,
}

impl SqlCount {
    fn net_per_build(&self) -> f64 {
        (self.total as f64 - self.background - self.polls).max(0.0) / self.n as f64
    }
}

fn count_sql(server: &Server, n: usize) -> SqlCount {
    // Idle: what runs without builds (lease polls, timers).
    std::thread::sleep(Duration::from_secs(1));
    let idle_from = log_len(&server.log);
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let idle_secs = idle_start.elapsed().as_secs_f64();
    let (idle, _) = statements(&server.log, idle_from);
    // The cost of one completion poll (two list requests), measured alone.
    let poll_from = log_len(&server.log);
    let poll_start = Instant::now();
    let probes = 20;
    let h = http();
    for _ in 0..probes {
        for status in ["queued", "running"] {
            get(&h, &format!("{}/api/v1/builds?job={JOB}&status={status}&limit=1", server.url));
        }
    }
    let (poll_total, _) = statements(&server.log, poll_from);
    let per_poll =
        ((poll_total as f64 - idle as f64 / idle_secs * poll_start.elapsed().as_secs_f64()) / probes as f64).max(0.0);
    // The builds, over one connection, with completion polls every 250 ms.
    let from = log_len(&server.log);
    let run_start = Instant::now();
    let h = http();
    let rate = run_builds(server, n, Duration::from_millis(250), || Some(trigger(&h, server)));
    let secs = run_start.elapsed().as_secs_f64();
    let (total, kinds) = statements(&server.log, from);
    SqlCount { n, total, kinds, background: idle as f64 / idle_secs * secs, polls: per_poll * rate.polls as f64, secs }
}

/// One row of the summary.
struct Row {
    db: &'static str,
    what: String,
    figure: String,
}

fn run_database(plan: &Plan, db_label: &'static str, dir: &Path, dbs: &mut Databases, rows: &mut Vec<Row>) {
    let repo = common::repo(&dir.join("repo"), PIPELINE);
    let mut next = 0;
    let mut place = |dbs: &mut Databases| {
        next += 1;
        let data = dir.join(format!("data-{next}"));
        let db = match db_label {
            "PostgreSQL" => dbs.postgres(&std::env::var("CHENGIS_TEST_DATABASE_URL").unwrap()),
            _ => format!("sqlite://{}", dir.join(format!("db-{next}.sqlite")).display()),
        };
        Place { data, db }
    };
    let mut row = |what: String, figure: String| {
        println!("{db_label}: {what}: {figure}");
        rows.push(Row { db: db_label, what, figure });
    };
    let n = plan.n;
    let idle = Duration::from_secs(2);

    // Server A (2 executors): first start, RSS, sign-in, N builds, restart.
    if plan.has("start") || plan.has("rss") || plan.has("rate") {
        let p = place(dbs);
        let log = dir.join("server-a.log");
        let (server, first) = start(plan, &p, 2, &log, false);
        if plan.has("start") {
            row("first start on a fresh data directory (spawn until the API answers)".into(), ms(first));
        }
        if plan.has("rss") {
            row("idle RSS after first start".into(), mib(idle_rss(&server, idle)));
            let (status, v) = post(
                &http(),
                &format!("{}/api/v1/login", server.url),
                json!({"username": "admin", "password": common::ADMIN_PASSWORD}),
                false,
            );
            assert_eq!(status, 201, "sign-in: {v}");
            row("idle RSS after one password sign-in".into(), mib(idle_rss(&server, idle)));
        }
        create_job(&server, &repo);
        if plan.has("rate") || plan.has("rss") {
            let r = rate_api(&server, n);
            if plan.has("rate") {
                row(format!("{n} builds over one connection, --executors 2"), rate_figure(&r));
            }
            if plan.has("rss") {
                row(format!("idle RSS after {n} builds"), mib(idle_rss(&server, idle)));
            }
        }
        if plan.has("start") {
            server.stop();
            let (server, again) = start(plan, &p, 2, &log, false);
            row("restart on the same data directory (spawn until the API answers)".into(), ms(again));
            if plan.has("rss") {
                row("idle RSS after the restart".into(), mib(idle_rss(&server, idle)));
            }
            server.stop();
        }
    }

    // Server B (6 executors): rate, CLI rate, latency.
    if plan.has("rate") || plan.has("cli") || plan.has("latency") {
        let p = place(dbs);
        let (server, _) = start(plan, &p, 6, &dir.join("server-b.log"), false);
        create_job(&server, &repo);
        if plan.has("rate") {
            let r = rate_api(&server, n);
            row(format!("{n} builds over one connection, --executors 6"), rate_figure(&r));
        }
        if plan.has("cli") {
            let r = rate_cli(&server, n);
            row(format!("{n} builds, one `chengis build trigger` process each, --executors 6"), rate_figure(&r));
        }
        if plan.has("latency") {
            let h = http();
            let (p50, p95) = latency(plan.latency_n, || one_followed(&h, &server));
            row(
                format!(
                    "trigger to finished over {} sequential builds, following the SSE event stream",
                    plan.latency_n
                ),
                format!("p50 {p50:.1} ms, p95 {p95:.1} ms"),
            );
            let (p50, p95) = latency(plan.latency_n, || one_waited(&server));
            row(
                format!(
                    "trigger to finished over {} sequential `chengis build trigger --wait` (process wall time)",
                    plan.latency_n
                ),
                format!("p50 {p50:.1} ms, p95 {p95:.1} ms"),
            );
        }
        server.stop();
    }

    // Server C (2 executors, statement log): SQL statements per build.
    if plan.has("sql") {
        let p = place(dbs);
        let log = dir.join("server-c.log");
        let (server, _) = start(plan, &p, 2, &log, true);
        create_job(&server, &repo);
        let c = count_sql(&server, n);
        let kinds: Vec<String> = c.kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        row(
            format!("SQL statements per build ({n} builds over one connection, --executors 2, sqlx's statement log)"),
            format!(
                "{:.1} net ({} statements in {:.2} s: {}; less {:.0} of an idle server over as long and {:.0} of the bench's completion polls)",
                c.net_per_build(),
                c.total,
                c.secs,
                kinds.join(", "),
                c.background,
                c.polls
            ),
        );
        server.stop();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}

fn rate_figure(r: &Rate) -> String {
    format!(
        "{} builds/s ({:.2} s from the first trigger to the last build's end; triggering took {:.2} s)",
        if r.per_s() < 100.0 { format!("{:.1}", r.per_s()) } else { format!("{:.0}", r.per_s()) },
        r.secs,
        r.trigger_secs
    )
}

fn main() {
    let env_list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let env_num = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let plan = Plan {
        parts: env_list("CHENGIS_BENCH_PARTS", "rate,cli,latency,sql,rss,start"),
        n: env_num("CHENGIS_BENCH_N", 200),
        latency_n: env_num("CHENGIS_BENCH_LATENCY_N", 50),
        host_steps: std::env::var("CHENGIS_BENCH_HOST_STEPS").ok(),
    };
    let known = ["rate", "cli", "latency", "sql", "rss", "start"];
    if let Some(p) = plan.parts.iter().find(|p| !known.contains(&p.as_str())) {
        panic!("unknown part `{p}` in CHENGIS_BENCH_PARTS: {}", known.join(", "));
    }
    let mut databases = vec![];
    for d in env_list("CHENGIS_BENCH_DATABASES", "sqlite,postgres") {
        match d.as_str() {
            "sqlite" => databases.push("SQLite"),
            "postgres" | "postgresql" if std::env::var("CHENGIS_TEST_DATABASE_URL").is_ok() => {
                databases.push("PostgreSQL")
            }
            "postgres" | "postgresql" => println!("PostgreSQL: skipped (CHENGIS_TEST_DATABASE_URL is not set)"),
            other => panic!("unknown database `{other}` in CHENGIS_BENCH_DATABASES: sqlite, postgres"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var("CHENGIS_BENCH_KEEP").is_ok_and(|v| v == "1");
    println!(
        "throughput bench: parts {}, N = {}, latency over {} builds, host steps {} (the server's default unless \
         CHENGIS_BENCH_HOST_STEPS is set), running as uid {}, {} cores, load average {}",
        plan.parts.join(","),
        plan.n,
        plan.latency_n,
        plan.host_steps.as_deref().unwrap_or("sandboxed"),
        nix::unistd::getuid(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    let mut rows = Vec::new();
    let mut dbs = Databases { base: None, created: Vec::new() };
    for (i, label) in databases.into_iter().enumerate() {
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        run_database(&plan, label, &d, &mut dbs, &mut rows);
    }
    drop(dbs);
    println!("\n| database | what | figure |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.db, r.what, r.figure);
    }
    if keep {
        println!("kept {}", dir.keep().display());
    }
}
