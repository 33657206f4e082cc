//! Benchmarks of the server core, printing figures:
//! - queue throughput: lease + complete per second with 8 concurrent leasers (SQLite, and
//!   PostgreSQL when `CHENGIS_TEST_DATABASE_URL` is set);
//! - trigger-to-first-log-line latency p50/p95 of an `echo` job through the real `chengis serve`;
//! - log ingestion MB/s into the store while two live SSE readers follow the same log through
//!   `chengis serve`.
//!
//! Run with `cargo bench -p chengis --bench server`.

mod common;

use chengis::exec::{LogLine, Stream};
use chengis::status::Status;
use chengis::store::Store;
use chengis::store::builds::NewBuild;
use chengis::store::jobs::NewJob;
use chengis::store::queue::{LeaseRequest, Priority};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

async fn build_jobs(store: &Store, n: usize) -> Vec<i64> {
    let job = store
        .create_job(&NewJob {
            name: format!("bench-{}", chengis::store::now_ms()),
            repo_url: "file:///x".into(),
            default_branch: "main".into(),
            pipeline_path: None,
            submodules: false,
        })
        .await
        .unwrap();
    let build = store.create_build(job.id, &NewBuild::default()).await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(store.create_build_job(build.id, &format!("j{i}"), &serde_json::json!({})).await.unwrap());
    }
    ids
}

async fn queue_throughput(label: &str, url: &str) {
    let store = Store::open(url).await.unwrap();
    let n = 2000;
    for id in build_jobs(&store, n).await {
        store.enqueue(id, Priority::Normal, &[]).await.unwrap();
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let agent = format!("bench-{a}");
            let mut done = 0usize;
            loop {
                let req = LeaseRequest {
                    agent: &agent,
                    labels: &[],
                    capacity: 1,
                    ttl: Duration::from_secs(30),
                    max_attempts: 2,
                    free: None,
                    defer: None,
                    registered_ms: None,
                };
                let leases = store.lease(&req).await.unwrap();
                if leases.is_empty() {
                    return done;
                }
                for l in leases {
                    store.complete(&l, Status::Success, None).await.unwrap();
                    done += 1;
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "queue ({label}): {total} lease+complete with 8 leasers in {secs:.2} s = {:.0} leases/s",
        total as f64 / secs
    );
}

/// Follows a job's log over SSE until `want` lines arrived; returns how long that took.
fn follow(url: String, want: u64, start: Instant) -> Duration {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent.get(&url).header("Authorization", common::BEARER).call().unwrap();
    let mut seen = 0u64;
    for line in BufReader::new(resp.body_mut().as_reader()).lines() {
        if line.unwrap().starts_with("event: line") {
            seen += 1;
            if seen == want {
                break;
            }
        }
    }
    start.elapsed()
}

async fn log_ingestion(dir: &std::path::Path) {
    let db = format!("sqlite://{}", dir.join("logs.db").display());
    let store = Store::open(&db).await.unwrap();
    let job = store
        .create_job(&NewJob {
            name: "logs".into(),
            repo_url: "file:///x".into(),
            default_branch: "main".into(),
            pipeline_path: None,
            submodules: false,
        })
        .await
        .unwrap();
    let build = store.create_build(job.id, &NewBuild::default()).await.unwrap();
    let id = store.add_build_job(build.id, "j", "{}", &[]).await.unwrap();
    let lease = common::lease_alone(&store, id).await;
    let (mut server, base) = common::serve(&dir.join("data"), &db, "0");
    let total_lines: u64 = 400_000;
    let batch = 500u64;
    let start = Instant::now();
    let stream = format!("{base}/api/v1/builds/{}/jobs/j/logs/stream", build.id);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let url = stream.clone();
            std::thread::spawn(move || follow(url, total_lines, start))
        })
        .collect();
    let mut n = 1u64;
    let mut bytes_written = 0usize;
    while n <= total_lines {
        let lines: Vec<LogLine> = (n..n + batch)
            .map(|number| LogLine {
                number,
                stream: Stream::Stdout,
                time_ms: 1_795_000_000_000 + number,
                text: format!(
                    "   Compiling crate-{} v0.{}.{} (/work/src/crate-{}) in {}.{:03}s: {:x}",
                    number % 997,
                    number % 13,
                    number % 7,
                    number % 997,
                    number % 60,
                    number % 1000,
                    number.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ),
            })
            .collect();
        bytes_written += lines.iter().map(|l| l.text.len() + 1).sum::<usize>();
        store.append_log(&lease, &lines).await.unwrap();
        n += batch;
    }
    let write = start.elapsed().as_secs_f64();
    let read: Vec<Duration> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let _ = server.kill();
    let _ = server.wait();
    let mb = bytes_written as f64 / (1 << 20) as f64;
    println!(
        "log ingestion (SQLite): {mb:.0} MiB of varied log lines in {batch}-line chunks in {write:.2} s = {:.0} MiB/s, \
         with 2 live SSE readers on `chengis serve` (they had every line after {:.2} s and {:.2} s)",
        mb / write,
        read[0].as_secs_f64(),
        read[1].as_secs_f64()
    );
}

fn trigger_to_first_log() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo(&dir.path().join("repo"), "jobs:\n  j:\n    steps:\n      - run: echo hello\n");
    let db = format!("sqlite://{}", dir.path().join("trigger.db").display());
    let (mut server, base) = common::serve(&dir.path().join("data"), &db, "1");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    agent
        .post(&format!("{base}/api/v1/jobs"))
        .header("Authorization", common::BEARER)
        .send_json(serde_json::json!({"name": "echo", "repo_url": repo}))
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..41 {
        let start = Instant::now();
        let mut resp = agent
            .post(&format!("{base}/api/v1/jobs/echo/builds"))
            .header("Authorization", common::BEARER)
            .send_empty()
            .unwrap();
        let b: serde_json::Value = resp.body_mut().read_json().unwrap();
        let id = b["id"].as_i64().unwrap();
        loop {
            let mut r = agent
                .get(&format!("{base}/api/v1/builds/{id}/jobs/j/logs"))
                .header("Authorization", common::BEARER)
                .call()
                .unwrap();
            if r.status().is_success() {
                let v: serde_json::Value = r.body_mut().read_json().unwrap();
                if !v["lines"].as_array().unwrap().is_empty() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if i > 0 {
            samples.push(start.elapsed());
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "trigger to first log line (echo job, SQLite, {} builds): p50 {:.1} ms, p95 {:.1} ms",
        samples.len(),
        pct(0.5),
        pct(0.95)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        queue_throughput("SQLite", &format!("sqlite://{}", dir.path().join("q.db").display())).await;
        if let Ok(url) = std::env::var("CHENGIS_TEST_DATABASE_URL") {
            queue_throughput("PostgreSQL", &url).await;
        }
        log_ingestion(dir.path()).await;
    });
    trigger_to_first_log();
}
