//! Benchmarks of the dashboard, printing figures:
//! - server time to render the home page with 10,000 builds in the database (p50, p99);
//! - server time to render a build page whose graph has 50 jobs (p50, p99);
//! - a real headless Chromium's time to show the first screen of a finished 200,000-line log
//!   (`performance.now()` when the viewer's first rows are in the DOM, from navigation start).
//!
//! Run with `cargo bench -p chengis --bench dashboard` (the browser figure needs `chromium`
//! and `chromedriver`; without them it is left out and says so).

mod common;

use chengis::exec::{LogLine, Stream};
use chengis::status::Status;
use chengis::store::Store;
use chengis::store::builds::NewBuild;
use chengis::store::jobs::NewJob;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUILDS: usize = 10_000;
const GRAPH_JOBS: usize = 50;
const LOG_LINES: u64 = 200_000;

/// Seeds the database: `BUILDS` finished builds over a few jobs (one transaction of raw rows,
/// the fast way to get history), a build with a 50-job DAG, and a finished 200,000-line log.
/// Returns (the 50-job build, the log's build, the log's job key).
async fn seed(url: &str) -> (i64, i64, String) {
    let store = Store::open(url).await.unwrap();
    let mut job_ids = Vec::new();
    for name in ["web", "api", "docs", "mobile"] {
        let job = store
            .create_job(&NewJob {
                name: name.into(),
                repo_url: format!("https://git.example.com/acme/{name}.git"),
                default_branch: "main".into(),
                pipeline_path: None,
                submodules: false,
            })
            .await
            .unwrap();
        job_ids.push(job.id);
    }
    let statuses = ["success", "success", "success", "failure", "cancelled"];
    let t0 = chengis::store::now_ms() - BUILDS as i64 * 60_000;
    let mut tx = store.pool().begin().await.unwrap();
    for i in 0..BUILDS {
        let q = t0 + i as i64 * 60_000;
        sqlx::query(
            "INSERT INTO builds (job_id, number, status, trigger, who, commit_sha, branch, attempt, queued_ms, started_ms, \
             finished_ms, params, priority, commit_message, commit_author) \
             VALUES ($1, $2, $3, 'push', 'ada', $4, $5, 1, $6, $7, $8, '{}', 'normal', $9, 'Ada <ada@example.com>')",
        )
        .bind(job_ids[i % job_ids.len()])
        .bind((i / job_ids.len() + 1) as i64)
        .bind(statuses[i % statuses.len()])
        .bind(format!("{:040x}", i * 7919))
        .bind(if i % 3 == 0 { "main" } else { "feature/faster-builds" })
        .bind(q)
        .bind(q + 1_000)
        .bind(q + 1_000 + (i as i64 % 300) * 1_000)
        .bind(format!("Make build {i} faster\n\nA longer body."))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for (k, id) in job_ids.iter().enumerate() {
        sqlx::query("UPDATE jobs SET next_number = $1 WHERE id = $2")
            .bind((BUILDS / job_ids.len() + 2 + k) as i64)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    // A build whose graph has 50 jobs over 5 levels, each needing two of the level before.
    let graph = store.create_build(job_ids[0], &NewBuild::default()).await.unwrap();
    store.transition_build(graph.id, Status::Running, None).await.unwrap();
    for i in 0..GRAPH_JOBS {
        let level = i / 10;
        let needs: Vec<String> = if level == 0 {
            vec![]
        } else {
            vec![format!("job-{}", (level - 1) * 10 + i % 10), format!("job-{}", (level - 1) * 10)]
        };
        let id = store.add_build_job(graph.id, &format!("job-{i}"), "{}", &needs).await.unwrap();
        if level < 3 {
            store.transition_build_job(id, Status::Running, None).await.unwrap();
            store.transition_build_job(id, Status::Success, None).await.unwrap();
        }
    }
    store.transition_build(graph.id, Status::Success, None).await.unwrap();

    // A finished job with a 200,000-line log, written through a lease as an agent would.
    let build = store.create_build(job_ids[1], &NewBuild::default()).await.unwrap();
    store.transition_build(build.id, Status::Running, None).await.unwrap();
    let bj = store.add_build_job(build.id, "test", "{}", &[]).await.unwrap();
    let lease = common::lease_alone(&store, bj).await;
    store.start_leased_job(&lease).await.unwrap();
    let mut n = 1u64;
    while n <= LOG_LINES {
        let chunk: Vec<LogLine> = (n..(n + 2000).min(LOG_LINES + 1))
            .map(|i| LogLine {
                number: i,
                stream: if i % 97 == 0 { Stream::Stderr } else { Stream::Stdout },
                time_ms: 0,
                text: if i % 50 == 0 {
                    format!("\u{1b}[32mok\u{1b}[0m test suite::case_{i} ... passed in {} ms", i % 37)
                } else {
                    format!("test suite::case_{i} ... ok")
                },
            })
            .collect();
        store.append_log(&lease, &chunk).await.unwrap();
        n += 2000;
    }
    store.complete(&lease, Status::Success, None).await.unwrap();
    store.transition_build(build.id, Status::Success, None).await.unwrap();
    (graph.id, build.id, "test".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Times `n` GETs of `url` (after a few warm-up ones); returns sorted milliseconds.
fn time_gets(url: &str, n: usize) -> Vec<f64> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = || {
        let mut resp = agent.get(url).header("Authorization", common::BEARER).call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        resp.body_mut().read_to_string().unwrap().len()
    };
    for _ in 0..5 {
        get();
    }
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            get();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

async fn browser_first_screen(base: &str, build: i64, job: &str) -> Option<Vec<f64>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let mut driver = match Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(d) => d,
        Err(e) => {
            println!("browser first screen: left out ({e}: install chromium and chromium-driver)");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let c = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    // Sign in through the form, as a person would.
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(fantoccini::Locator::Id("username")).await.unwrap().send_keys("admin").await.unwrap();
    c.find(fantoccini::Locator::Id("password")).await.unwrap().send_keys(common::ADMIN_PASSWORD).await.unwrap();
    c.find(fantoccini::Locator::Id("login-button")).await.unwrap().click().await.unwrap();
    let url = format!("{base}/builds/{build}/jobs/{job}/log");
    let mut times = Vec::new();
    for round in 0..8 {
        c.goto(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            let v = c.execute("return window.chengisLog && window.chengisLog.firstScreenMs", vec![]).await.unwrap();
            if let Some(ms) = v.as_f64() {
                break ms;
            }
            assert!(Instant::now() < deadline, "the log viewer never showed its first screen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Wait for the whole log, so the next round starts from a quiet page.
        loop {
            let v = c
                .execute("return window.chengisLog.loaded === true && window.chengisLog.lines.length", vec![])
                .await
                .unwrap();
            if v.as_u64() == Some(LOG_LINES) {
                break;
            }
            assert!(Instant::now() < deadline, "the log never loaded in full: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round > 0 {
            times.push(first);
        }
    }
    let _ = c.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    times.sort_by(f64::total_cmp);
    Some(times)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seeded = Instant::now();
    let (graph, log_build, log_job) = rt.block_on(seed(&db));
    println!(
        "seeded {BUILDS} builds, a {GRAPH_JOBS}-job graph and a {LOG_LINES}-line log in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let (mut server, base) = common::serve(&tmp.path().join("data"), &db, "0");

    let pages = [
        (format!("home page, {BUILDS} builds in the database"), "/".to_string(), " (target p50 < 15 ms)"),
        ("home page filtered (job, status, branch)".into(), "/?job=web&status=failure&branch=main".into(), ""),
        ("job page (trend of 50 builds)".into(), "/jobs/web".into(), ""),
        (format!("build page, {GRAPH_JOBS}-job graph"), format!("/builds/{graph}"), " (target p50 < 20 ms)"),
    ];
    for (what, path, target) in pages {
        let ms = time_gets(&format!("{base}{path}"), 300);
        println!("{what}: p50 {:.2} ms, p99 {:.2} ms{target}", percentile(&ms, 0.5), percentile(&ms, 0.99));
    }
    if let Some(times) = rt.block_on(browser_first_screen(&base, log_build, &log_job)) {
        println!(
            "browser: first screen of a finished {LOG_LINES}-line log: p50 {:.0} ms, max {:.0} ms over {} loads (target < 1 s)",
            percentile(&times, 0.5),
            times.last().copied().unwrap_or_default(),
            times.len()
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
