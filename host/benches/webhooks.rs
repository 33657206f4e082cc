//! Webhook receiver throughput, printing figures: verified deliveries per second through the
//! real `chengis serve` (SQLite), each a 25 KB GitHub-style payload signed with HMAC-SHA256 and
//! a unique delivery id, from 16 keep-alive connections on loopback; and the latency p50/p99
//! of each answer. The deliveries are `star` events, verified, recorded (payload compressed)
//! and acknowledged but starting no build, so that the figure is the receiver's, not the
//! planner's; a second run posts pushes that are verified, recorded and start a build each.
//!
//! Run with `cargo bench -p chengis --bench webhooks`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-webhook-secret-0123";
const CONNECTIONS: usize = 16;

fn serve(data: &std::path::Path) -> (std::process::Child, String) {
    let db = format!("sqlite://{}", data.join("db.sqlite").display());
    let mut server = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--agents", "0", "--webhook-rate-limit", "0", "--database-url", &db])
        .arg("--data-dir")
        .arg(data)
        .env("CHENGIS_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chengis serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    (server, line.trim().trim_start_matches("chengis listening on ").to_string())
}

fn sign(body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A push-shaped payload of about 25 KB.
fn payload(event: &str) -> String {
    let files: Vec<String> = (0..950).map(|i| format!("src/module_{i:04}/file.rs")).collect();
    let sha = "a".repeat(40);
    let body = serde_json::json!({
        "action": if event == "star" { "created" } else { "" },
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha, "created": false, "deleted": false,
        "commits": [{"id": sha, "message": "bench", "added": files, "removed": [], "modified": []}],
        "repository": {"full_name": "acme/bench", "clone_url": "https://github.com/acme/bench.git"},
    });
    body.to_string()
}

fn run(base: &str, event: &str, total: usize) {
    let body = Arc::new(payload(event));
    let signature = Arc::new(sign(&body));
    let next = Arc::new(AtomicUsize::new(0));
    let url = Arc::new(format!("{base}/hooks/github/bench"));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (body, signature, next, url) = (body.clone(), signature.clone(), next.clone(), url.clone());
            let event = event.to_string();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    let mut resp = agent
                        .post(url.as_str())
                        .header("X-GitHub-Event", event.as_str())
                        .header("X-GitHub-Delivery", format!("{event}-{n}"))
                        .header("X-Hub-Signature-256", signature.as_str())
                        .content_type("application/json")
                        .send(body.as_bytes())
                        .expect("post");
                    assert!(matches!(resp.status().as_u16(), 200 | 202), "status {}", resp.status());
                    // Read the answer to its end, so that the connection goes back to the pool
                    // (keep-alive) instead of being closed.
                    let _ = resp.body_mut().read_to_vec();
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{event:<5} deliveries: {total} x {} bytes, {CONNECTIONS} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        body.len(),
        total as f64 / elapsed.as_secs_f64(),
        p(0.50).as_secs_f64() * 1000.0,
        p(0.99).as_secs_f64() * 1000.0
    );
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut server, base) = serve(tmp.path());
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let job = serde_json::json!({"name": "bench", "repo_url": "file:///nonexistent", "webhook_secret": SECRET});
    agent.post(format!("{base}/api/v1/jobs")).send_json(job).expect("create job");
    run(&base, "star", 400); // warm-up
    for _ in 0..3 {
        run(&base, "star", 10_000);
    }
    run(&base, "push", 2_000);
    let _ = server.kill();
    let _ = server.wait();
}
