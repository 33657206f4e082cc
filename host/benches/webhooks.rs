//! Webhook receiver throughput, printing figures: verified deliveries per second through the
//! real `chengis serve` (SQLite), each a 25 KB GitHub-style payload signed with HMAC-SHA256 and
//! a unique delivery id (and a unique body: the receiver processes a body once), from 16 keep-alive connections on loopback driven by one thread (prepared
//! requests, like `wrk`, so that the generator takes little of the CPU); and the latency p50/p99
//! of each answer. The deliveries are `star` events, verified, recorded (payload compressed)
//! and acknowledged but starting no build, so that the figure is the receiver's, not the
//! planner's; a second run posts pushes that are verified, recorded and start a build each.
//!
//! Run with `cargo bench -p chengis --bench webhooks`.

use std::io::{BufRead, BufReader};
mod common;

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
        .env("CHENGIS_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("CHENGIS_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chengis serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    (server, line.trim().trim_start_matches("chengis listening on ").to_string())
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The HMAC state after the common part of every body (the delivery's own end is added to a
/// copy of it, so that signing a 25 KB body costs the generator a few bytes of hashing).
fn signer(prefix: &str) -> HmacSha256 {
    use hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(prefix.as_bytes());
    mac
}

/// The signature of `prefix` + `suffix`, from [`signer`]`(prefix)`.
fn sign(prefixed: &HmacSha256, suffix: &str) -> String {
    use hmac::Mac;
    let mut mac = prefixed.clone();
    mac.update(suffix.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The end of delivery `n`'s body: a field that makes each body unique, and the closing brace.
fn suffix(round: usize, n: usize) -> String {
    format!(",\"bench_delivery\":\"{round:04}-{n:08}\"}}")
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

/// Reads one HTTP/1.1 response from `conn` (status line, headers, a `Content-Length` body) and
/// returns its status code; `buf` keeps bytes read past it.
async fn read_response(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    use tokio::io::AsyncReadExt;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head is not UTF-8"))?;
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status code"))?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| bad("no Content-Length"))?;
            let total = end + 4 + length;
            while buf.len() < total {
                if conn.read_buf(buf).await? == 0 {
                    return Err(bad("connection closed inside a body"));
                }
            }
            buf.drain(..total);
            return Ok(status);
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(bad("connection closed before an answer"));
        }
    }
}

/// Posts `total` deliveries of `event` (delivery ids unique per `round`) over [`CONNECTIONS`] keep-alive connections from one
/// thread (like `wrk`: requests are prepared bytes, answers are read to their end), and prints
/// the rate and the latency percentiles.
fn run(addr: &str, event: &str, round: usize, total: usize) {
    // Every body is the payload without its closing brace, then its own `suffix`.
    let full = payload(event);
    let body = Arc::new(full[..full.len() - 1].to_string());
    let prefixed = Arc::new(signer(&body));
    let body_len = body.len() + suffix(round, 0).len();
    let head = Arc::new(format!(
        "POST /hooks/github/bench HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: {event}\r\nContent-Length: {body_len}\r\n",
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (body, head, next, prefixed) = (body.clone(), head.clone(), next.clone(), prefixed.clone());
                let (addr, event) = (addr.to_string(), event.to_string());
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                    conn.set_nodelay(true).expect("nodelay");
                    let mut buf = Vec::with_capacity(4096);
                    let mut request = Vec::with_capacity(head.len() + body.len() + 64);
                    let mut latencies = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            return latencies;
                        }
                        let end = suffix(round, n);
                        let signature = sign(&prefixed, &end);
                        request.clear();
                        request.extend_from_slice(head.as_bytes());
                        request.extend_from_slice(
                            format!(
                                "X-Hub-Signature-256: {signature}\r\nX-GitHub-Delivery: {event}-{round}-{n}\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        request.extend_from_slice(body.as_bytes());
                        request.extend_from_slice(end.as_bytes());
                        let t = Instant::now();
                        conn.write_all(&request).await.expect("send");
                        let status = read_response(&mut conn, &mut buf).await.expect("answer");
                        // 202: verified, recorded and acknowledged (a 200 would be a duplicate).
                        assert_eq!(status, 202, "delivery {n} of round {round}");
                        latencies.push(t.elapsed());
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("connection task"));
        }
        all
    });
    let elapsed = started.elapsed();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{event:<5} deliveries: {total} x {body_len} bytes, {CONNECTIONS} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
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
    agent
        .post(format!("{base}/api/v1/jobs"))
        .header("Authorization", common::BEARER)
        .send_json(job)
        .expect("create job");
    let addr = base.trim_start_matches("http://");
    run(addr, "star", 0, 400); // warm-up
    for round in 1..=3 {
        run(addr, "star", round, 10_000);
    }
    run(addr, "push", 0, 2_000);
    // Every delivery acknowledged was recorded: the newest one's id counts them all.
    let list: serde_json::Value = agent
        .get(format!("{base}/api/v1/webhooks?job=bench&limit=1"))
        .header("Authorization", common::BEARER)
        .call()
        .expect("list deliveries")
        .body_mut()
        .read_json()
        .expect("delivery list");
    let recorded = list["deliveries"][0]["id"].as_i64().unwrap_or(0);
    println!("recorded deliveries: {recorded}");
    assert_eq!(recorded, 400 + 3 * 10_000 + 2_000, "every acknowledged delivery is recorded");
    let _ = server.kill();
    let _ = server.wait();
}
