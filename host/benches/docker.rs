//! Benchmark: container jobs. A 10-step `true` job in one container (steps through exec)
//! against 10 sequential `docker run --rm` of the same image, the per-step overhead, and the
//! container job start latency (job start to first step, read live from the event stream).
//! Needs a Docker engine and the test images (`tests/images/build.sh`). Run with
//! `cargo bench -p chengis --bench docker`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "chengis-test/busybox";
const STEPS: usize = 10;
const RUNS: usize = 9;

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a pipeline; returns the wall time, the time from `job_started` to the first
/// `step_started`, and the engine's step durations.
fn run(file: &Path, dir: &Path) -> (Duration, Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .arg("run")
        .arg(file)
        .args(["--format", "json", "--workspace"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn chengis");
    let mut job_started = None;
    let mut first_step = None;
    let mut steps = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match event["event"].as_str() {
            Some("job_started") => job_started = Some(Instant::now()),
            Some("step_started") if first_step.is_none() => first_step = Some(Instant::now()),
            Some("step_finished") => steps.push(Duration::from_millis(event["duration_ms"].as_u64().unwrap_or(0))),
            _ => {}
        }
    }
    assert!(child.wait().expect("wait").success(), "the pipeline failed");
    let start_latency = first_step.zip(job_started).map(|(f, j)| f - j).unwrap_or_default();
    (started.elapsed(), start_latency, steps)
}

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build.sh");
    assert!(Command::new("bash").arg(script).status().expect("build images").success(), "test images");
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = |steps: usize| {
        let mut yaml = format!("jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    steps:\n");
        for _ in 0..steps {
            yaml.push_str("      - run: \"true\"\n");
        }
        let file = dir.path().join(format!("steps-{steps}.yml"));
        std::fs::write(&file, yaml).expect("write");
        file
    };
    let (ten, one) = (pipeline(STEPS), pipeline(1));
    run(&ten, dir.path()); // warm-up
    let (mut t10, mut t1, mut latency, mut step_times) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (wall, start, steps) = run(&ten, dir.path());
        t10.push(wall);
        latency.push(start);
        step_times.extend(steps);
        t1.push(run(&one, dir.path()).0);
    }
    let mut docker_runs = Vec::new();
    for _ in 0..RUNS.min(5) {
        let started = Instant::now();
        for _ in 0..STEPS {
            let ok = Command::new("docker").args(["run", "--rm", IMAGE, "true"]).status().expect("docker run");
            assert!(ok.success());
        }
        docker_runs.push(started.elapsed());
    }
    let (c10, c1, d10) = (percentile(t10, 0.5), percentile(t1, 0.5), percentile(docker_runs, 0.5));
    let per_step = c10.saturating_sub(c1) / (STEPS as u32 - 1);
    println!("chengis run, a {STEPS}-step `true` job in one container: median {:.0} ms over {RUNS} runs", ms(c10));
    println!("{STEPS} sequential `docker run --rm {IMAGE} true`: median {:.0} ms", ms(d10));
    println!("speed-up: {:.1}x", d10.as_secs_f64() / c10.as_secs_f64());
    println!(
        "per-step overhead ((10-step job - 1-step job) / 9): {:.1} ms; step duration as the engine sees it p50 {:.0} ms, p99 {:.0} ms",
        ms(per_step),
        ms(percentile(step_times.clone(), 0.5)),
        ms(percentile(step_times, 0.99))
    );
    println!(
        "container job start latency (job start to first step: network + container): p50 {:.0} ms, p99 {:.0} ms",
        ms(percentile(latency.clone(), 0.5)),
        ms(percentile(latency, 0.99))
    );
}
