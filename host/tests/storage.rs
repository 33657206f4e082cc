//! Integration tests of caches, artifacts and retention on the real `chengis serve` binary with
//! real git repositories, on SQLite and, when `CHENGIS_TEST_DATABASE_URL` is set, PostgreSQL:
//! a second build restores the cache (seen by a marker file), restore-keys pick the newest
//! prefix match, branches cannot overwrite the default branch's entries, concurrent saves leave
//! one entry, a corrupted archive is a miss, artifacts pass from `build` to `deploy` and
//! download with ranges, stage results are reused, retention deletes exactly what it should,
//! and a critically full disk makes builds wait.

use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

mod support;
use support::*;

const CACHE_PIPELINE: &str = r#"
jobs:
  build:
    cache:
      - key: deps-${{ hashFiles('lock.txt') }}
        restore-keys: deps-
        paths: deps
    steps:
      - run: |
          if [ -f deps/marker ]; then echo "CACHE HIT marker=$(cat deps/marker)"; else echo "CACHE MISS"; fi
          mkdir -p deps && cp lock.txt deps/marker
          sleep "${SLEEP:-0}"
        env:
          SLEEP: ${{ params.sleep }}
params:
  sleep:
    default: "0"
"#;

fn commit(dir: &Path, file: &str, content: &str) -> String {
    std::fs::write(dir.join(file), content).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", &format!("{file}={content}")]);
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn trigger(s: &Server, job: &str, body: Value) -> i64 {
    let (st, b) = call("POST", &format!("{}/api/v1/jobs/{job}/builds", s.url), Some(body));
    assert_eq!(st, 201, "{b}");
    b["id"].as_i64().unwrap()
}

fn run(s: &Server, job: &str, body: Value) -> (i64, Value) {
    let id = trigger(s, job, body);
    let b = wait_build(s, id, finished);
    (id, b)
}

fn caches(s: &Server) -> Vec<Value> {
    let (st, v) = call("GET", &format!("{}/api/v1/caches", s.url), None);
    assert_eq!(st, 200, "{v}");
    v["caches"].as_array().unwrap().clone()
}

fn joined(s: &Server, id: i64, job: &str) -> String {
    log_texts(s, id, job).join("\n")
}

#[test]
fn caches_restore_scope_race_and_survive_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let dir = tmp.path().join(format!("repo{n}"));
        let url = repo(&dir, CACHE_PIPELINE);
        commit(&dir, "lock.txt", "a");
        let data = tmp.path().join(format!("data{n}"));
        let s = start(&data, db, &[]);
        let (st, _) = call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        assert_eq!(st, 201);

        // First build: a miss, then saved for main. Second build of the same commit: restored.
        let (first, b) = run(&s, "app", json!({}));
        assert_eq!(b["build"]["status"], "success", "{b}");
        let log = joined(&s, first, "build");
        assert!(log.contains("CACHE MISS") && log.contains("cache `deps-") && log.contains("saved for main"), "{log}");
        let (second, _) = run(&s, "app", json!({}));
        let log = joined(&s, second, "build");
        assert!(log.contains("CACHE HIT marker=a") && log.contains("restored `deps-"), "{log}");
        assert!(log.contains("hit on the exact key, not saved again"), "{log}");
        let main_entry = caches(&s);
        assert_eq!(main_entry.len(), 1, "{main_entry:?}");
        assert_eq!(main_entry[0]["scope"], "main");

        // restore-keys: a new lock restores the newest `deps-` entry, then saves its own.
        commit(&dir, "lock.txt", "b");
        let (third, _) = run(&s, "app", json!({}));
        let log = joined(&s, third, "build");
        assert!(log.contains("CACHE HIT marker=a") && log.contains("restored (restore-key)"), "{log}");
        std::thread::sleep(Duration::from_millis(20));
        commit(&dir, "lock.txt", "c");
        let (fourth, _) = run(&s, "app", json!({}));
        let log = joined(&s, fourth, "build");
        assert!(log.contains("CACHE HIT marker=b"), "the newest prefix match is b's entry: {log}");
        assert_eq!(caches(&s).len(), 3);

        // A feature branch reads main's entries but writes only its own scope.
        git(&dir, &["checkout", "-qb", "feature"]);
        commit(&dir, "lock.txt", "f");
        let (feat, _) = run(&s, "app", json!({"branch": "feature"}));
        let log = joined(&s, feat, "build");
        assert!(log.contains("CACHE HIT marker=c") && log.contains("saved for feature"), "{log}");
        git(&dir, &["checkout", "-q", "main"]);
        let before: Vec<Value> = caches(&s).into_iter().filter(|e| e["scope"] == "main").collect();
        commit(&dir, "lock.txt", "f");
        let (main_f, _) = run(&s, "app", json!({}));
        let log = joined(&s, main_f, "build");
        assert!(
            !log.contains("marker=f") && log.contains("restored (restore-key)"),
            "main never sees the feature branch's entry: {log}"
        );
        let after: Vec<Value> = caches(&s).into_iter().filter(|e| e["scope"] == "main").collect();
        for e in &before {
            let same = after.iter().find(|a| a["key"] == e["key"]).expect("main's entries stay");
            assert_eq!(same["sha256"], e["sha256"], "main's entry {} was not overwritten", e["key"]);
        }

        // Two builds saving one new key at once: one entry, intact, restored by the next build.
        let main_entries = || caches(&s).into_iter().filter(|e| e["scope"] == "main").count();
        assert_eq!(main_entries(), 4, "a, b, c and f");
        commit(&dir, "lock.txt", "race");
        let (x, y) = (
            trigger(&s, "app", json!({"params": {"sleep": "2"}})),
            trigger(&s, "app", json!({"params": {"sleep": "2"}})),
        );
        for id in [x, y] {
            let b = wait_build(&s, id, finished);
            assert_eq!(b["build"]["status"], "success", "{b}");
        }
        let logs = [joined(&s, x, "build"), joined(&s, y, "build")];
        assert!(logs.iter().all(|l| l.contains("CACHE HIT marker=f")), "both restored by prefix: {logs:?}");
        assert_eq!(
            logs.iter().filter(|l| l.contains("another build saved this key first")).count(),
            1,
            "exactly one save lost the race: {logs:?}"
        );
        assert_eq!(main_entries(), 5, "one entry for the raced key");
        let (after_race, _) = run(&s, "app", json!({}));
        assert!(joined(&s, after_race, "build").contains("CACHE HIT marker=race"));

        // A corrupted archive is a miss with a warning, deleted, and saved afresh.
        for e in std::fs::read_dir(data.join("caches")).unwrap().flatten() {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(e.path(), bytes).unwrap();
        }
        let (corrupt, b) = run(&s, "app", json!({}));
        assert_eq!(b["build"]["status"], "success", "{b}");
        let log = joined(&s, corrupt, "build");
        assert!(
            log.contains("is unusable") && log.contains("treated as a miss") && log.contains("CACHE MISS"),
            "{log}"
        );
        assert!(log.contains("saved for main"), "{log}");
        let (healed, _) = run(&s, "app", json!({}));
        assert!(joined(&s, healed, "build").contains("CACHE HIT marker=race"));

        // The storage report counts lookups and hits.
        let (st, r) = call("GET", &format!("{}/api/v1/storage", s.url), None);
        assert_eq!(st, 200, "{r}");
        assert!(r["caches"]["lookups"].as_i64().unwrap() >= 10, "{r}");
        let rate = r["caches"]["hit_rate"].as_f64().unwrap();
        assert!(rate > 0.5 && rate < 1.0, "{r}");
        assert!(r["disk"]["free_bytes"].as_u64().unwrap() > 0 && r["disk"]["state"] == "ok", "{r}");

        // The CLI lists and deletes entries.
        let (code, out, err) = cli(&s.url, &["cache", "list", "--job", "app"], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("deps-") && out.contains("main") && out.contains("feature"), "{out}");
        let id = caches(&s)[0]["id"].as_i64().unwrap();
        let (code, _, err) = cli(&s.url, &["cache", "rm", &id.to_string()], None);
        assert_eq!(code, 0, "{err}");
        assert!(caches(&s).iter().all(|e| e["id"].as_i64() != Some(id)));
        let (code, _, err) = cli(&s.url, &["cache", "rm", &id.to_string()], None);
        assert_ne!(code, 0);
        assert!(err.contains("not found"), "{err}");
    }
}

const ARTIFACT_PIPELINE: &str = r#"
jobs:
  build:
    artifacts:
      - name: app
        paths: [dist/]
      - name: report
        paths: report.txt
        if: always
        expire-in: 1s
    steps:
      - run: |
          mkdir -p dist/sub
          printf 'binary-%s' "$GIT_SHORT_COMMIT" > dist/app
          seq 1 1000 > dist/sub/numbers.txt
          echo "report" > report.txt
          echo "ran build"
  deploy:
    needs: build
    download: [app]
    cache-result: true
    steps:
      - run: |
          echo "deploying $(cat dist/app) with $(wc -l < dist/sub/numbers.txt) numbers"
          test ! -e report.txt && echo "no report here"
          echo "value=42" >> "$CHENGIS_OUTPUT"
"#;

#[test]
fn artifacts_flow_downstream_download_with_ranges_and_results_are_reused() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let dir = tmp.path().join(format!("repo{n}"));
        let url = repo(&dir, ARTIFACT_PIPELINE);
        let data = tmp.path().join(format!("data{n}"));
        let s = start(&data, db, &[]);
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        let (id, b) = run(&s, "app", json!({}));
        assert_eq!(b["build"]["status"], "success", "{b}");
        let log = joined(&s, id, "deploy");
        assert!(log.contains("download: placed 2 artifact files"), "{log}");
        assert!(
            log.contains("deploying binary-") && log.contains("with 1000 numbers") && log.contains("no report here"),
            "{log}"
        );

        // The API lists every file with its checksum; a download is streamed with ranges.
        let (st, v) = call("GET", &format!("{}/api/v1/builds/{id}/artifacts", s.url), None);
        assert_eq!(st, 200, "{v}");
        let files = v["artifacts"].as_array().unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["dist/app", "dist/sub/numbers.txt", "report.txt"], "{v}");
        let numbers = files.iter().find(|f| f["path"] == "dist/sub/numbers.txt").unwrap();
        let expected: String = (1..=1000).map(|i| format!("{i}\n")).collect();
        let file_url = format!("{}/api/v1/artifacts/{}", s.url, numbers["id"]);
        let mut resp = admin_get(&file_url).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-disposition"], "attachment; filename=\"numbers.txt\"");
        assert_eq!(resp.headers()["x-checksum-sha256"].to_str().unwrap(), numbers["sha256"].as_str().unwrap());
        assert_eq!(resp.body_mut().read_to_string().unwrap(), expected);
        let mut part = admin_get(&file_url).header("Range", "bytes=10-19").call().unwrap();
        assert_eq!(part.status().as_u16(), 206);
        assert_eq!(part.headers()["content-range"].to_str().unwrap(), format!("bytes 10-19/{}", expected.len()));
        assert_eq!(part.body_mut().read_to_string().unwrap(), expected[10..20]);
        let (st, e) = {
            let mut r = admin_get(&file_url).header("Range", "bytes=99999-").call().unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        };
        assert_eq!(st, 416, "{e}");

        // The CLI downloads a whole artifact at its paths.
        let out_dir = tmp.path().join(format!("out{n}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let (code, _, err) = cli(
            &s.url,
            &["artifact", "download", &id.to_string(), "--name", "app", "-o", out_dir.to_str().unwrap()],
            None,
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read_to_string(out_dir.join("dist/sub/numbers.txt")).unwrap(), expected);
        assert!(!out_dir.join("report.txt").exists());

        // A tampered blob is refused on download (409), never served.
        let app = files.iter().find(|f| f["path"] == "dist/app").unwrap();
        let sha = app["sha256"].as_str().unwrap();
        let blob = data.join("artifacts").join(&sha[..2]).join(sha);
        let original = std::fs::read(&blob).unwrap();
        std::fs::write(&blob, b"tampered").unwrap();
        let (st, v) = call("GET", &format!("{}/api/v1/artifacts/{}", s.url, app["id"]), None);
        assert_eq!(st, 409, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("corrupt"), "{v}");
        std::fs::write(&blob, original).unwrap();

        // Same commit again: deploy's result is reused (steps skipped), with its artifacts' files.
        let (again, b) = run(&s, "app", json!({}));
        assert_eq!(b["build"]["status"], "success", "{b}");
        let deploy = b["jobs"].as_array().unwrap().iter().find(|j| j["job"]["job_key"] == "deploy").unwrap().clone();
        assert_eq!(deploy["job"]["reason"], "result reused from build #1", "{deploy}");
        let log = joined(&s, again, "deploy");
        assert!(log.contains("result cache: build #1 ran this job") && !log.contains("deploying"), "{log}");
        assert_eq!(deploy["job"]["outputs"]["value"], "42", "{deploy}");

        // Deleting an artifact removes its rows; the CLI says how many.
        let (code, out, err) = cli(&s.url, &["artifact", "rm", &id.to_string(), "app"], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("deleted 2 files"), "{out}");
        let (st, _) = call("DELETE", &format!("{}/api/v1/builds/{id}/artifacts/app", s.url), None);
        assert_eq!(st, 404);
    }
}

#[test]
fn retention_deletes_exactly_what_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let url = repo(&dir, ARTIFACT_PIPELINE);
    let data = tmp.path().join("data");
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let s = start(&data, &db, &[]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    let (st, j) = call("PUT", &format!("{}/api/v1/jobs/app", s.url), Some(json!({"keep_builds": 2})));
    assert_eq!((st, j["keep_builds"].as_i64()), (200, Some(2)), "{j}");
    let ids: Vec<i64> = (0..3).map(|_| run(&s, "app", json!({})).0).collect();
    // The report expired after 1s; an old orphaned workspace and an unreferenced blob wait.
    std::thread::sleep(Duration::from_millis(1200));
    // Workspaces live in the work directory beside the data directory (issue 24).
    let orphan = tmp.path().join("data-work/workspaces").join("999999");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("junk"), "x").unwrap();
    let recent = tmp.path().join("data-work/workspaces").join("999998");
    std::fs::create_dir_all(&recent).unwrap();
    std::fs::create_dir_all(data.join("artifacts/ab")).unwrap();
    let stray = data.join("artifacts/ab").join("ab".repeat(32));
    std::fs::write(&stray, "stray").unwrap();
    for p in [&orphan, &stray] {
        let ok = std::process::Command::new("touch").args(["-d", "2 days ago"]).arg(p).status().unwrap().success();
        assert!(ok);
    }
    let (st, swept) = call("POST", &format!("{}/api/v1/storage/prune", s.url), None);
    assert_eq!(st, 200, "{swept}");
    assert_eq!(swept["builds"], 1, "keep the newest 2 of 3: {swept}");
    assert_eq!(swept["artifacts"], 2, "the two remaining builds' reports expired: {swept}");
    assert_eq!(swept["blobs"], 1, "only the stray blob: {swept}");
    assert_eq!(swept["workspaces"], 1, "only the old orphan: {swept}");
    let (st, _) = call("GET", &format!("{}/api/v1/builds/{}", s.url, ids[0]), None);
    assert_eq!(st, 404, "the oldest build is gone");
    for id in &ids[1..] {
        let (st, v) = call("GET", &format!("{}/api/v1/builds/{id}/artifacts", s.url), None);
        assert_eq!(st, 200);
        let names: Vec<&str> = v["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["app", "app"], "app stays, report expired: {v}");
    }
    assert!(!orphan.exists() && recent.exists() && !stray.exists());
    // Blobs still named by a row stay.
    let (_, v) = call("GET", &format!("{}/api/v1/builds/{}/artifacts", s.url, ids[2]), None);
    for f in v["artifacts"].as_array().unwrap() {
        let sha = f["sha256"].as_str().unwrap();
        assert!(data.join("artifacts").join(&sha[..2]).join(sha).exists());
    }
    // A second pass finds nothing more to do; the counters remember the first.
    let (_, again) = call("POST", &format!("{}/api/v1/storage/prune", s.url), None);
    assert_eq!(
        (again["builds"].as_i64(), again["artifacts"].as_i64(), again["workspaces"].as_i64()),
        (Some(0), Some(0), Some(0)),
        "{again}"
    );
    let (_, report) = call("GET", &format!("{}/api/v1/storage", s.url), None);
    assert_eq!(report["deleted"]["builds"], 1, "{report}");
    assert!(report["artifacts"]["count"].as_i64().unwrap() >= 4, "{report}");
}

#[test]
fn a_critically_full_disk_makes_builds_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  j:\n    steps:\n      - run: echo hi\n");
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let s = start(&tmp.path().join("data"), &db, &["--disk-critical-free", "1000000t", "--disk-warn-free", "1000000t"]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    let id = trigger(&s, "app", json!({}));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (_, b) = call("GET", &format!("{}/api/v1/builds/{id}", s.url), None);
        assert_eq!(b["build"]["status"], "queued", "the build waits, it does not fail: {b}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, r) = call("GET", &format!("{}/api/v1/storage", s.url), None);
    assert_eq!(r["disk"]["state"], "critical", "{r}");
}
