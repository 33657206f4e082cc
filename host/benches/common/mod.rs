//! Shared by the benches: a git repository holding one pipeline file, and a running
//! `chengis serve`.
#![allow(dead_code)] // each bench uses what it needs

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The admin API token the bench servers get (`CHENGIS_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "chgu_be4c0000000000000000000000000000000000000000000000000000000000001";
/// Its `Authorization` header value.
pub const BEARER: &str = "Bearer chgu_be4c0000000000000000000000000000000000000000000000000000000000001";
/// The first admin's password (`CHENGIS_ADMIN_PASSWORD`), user `admin`.
pub const ADMIN_PASSWORD: &str = "bench admin password";

/// Starts `chengis serve` on a free loopback port with `agents` embedded agents, the database
/// `db` and the data directory `data`; returns the child and its URL.
pub fn serve(data: &Path, db: &str, agents: &str) -> (Child, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_chengis"))
        // The benches poll as fast as they can: no per-user request limit.
        .args(["serve", "--listen", "127.0.0.1:0", "--agents", agents, "--database-url", db, "--rate-limit", "0/1m"])
        .arg("--data-dir")
        .arg(data)
        .env("CHENGIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CHENGIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        // CHENGIS_BENCH_SERVER_LOG=FILE keeps the server's log (with RUST_LOG) for profiling.
        .stderr(match std::env::var_os("CHENGIS_BENCH_SERVER_LOG") {
            Some(file) => Stdio::from(std::fs::File::create(file).unwrap()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (server, line.trim().trim_start_matches("chengis listening on ").to_string())
}

/// Creates a git repository at `dir` whose one commit on `main` holds `chengis.yml` with
/// `pipeline`; returns its `file://` URL.
pub fn repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(dir)
                .env("GIT_AUTHOR_NAME", "b")
                .env("GIT_AUTHOR_EMAIL", "b@b")
                .env("GIT_COMMITTER_NAME", "b")
                .env("GIT_COMMITTER_EMAIL", "b@b")
                .status()
                .unwrap()
                .success()
        )
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("chengis.yml"), pipeline).unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "x"]);
    format!("file://{}", dir.display())
}

/// Enqueues build job `build_job` and leases it as the agent `bench` (the benches that write
/// logs as an agent would).
pub async fn lease_alone(store: &chengis::store::Store, build_job: i64) -> chengis::store::queue::Lease {
    use chengis::store::queue::{LeaseRequest, Priority};
    store.enqueue(build_job, Priority::Normal, &[]).await.unwrap();
    let request = LeaseRequest {
        agent: "bench",
        labels: &[],
        capacity: 1,
        ttl: std::time::Duration::from_secs(600),
        max_attempts: 2,
        free: None,
        defer: None,
        registered_ms: None,
    };
    store.lease(&request).await.unwrap().remove(0)
}
