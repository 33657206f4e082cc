//! Benchmark: what `chengis run` adds per step. Runs a 20-step pipeline of `true` through the
//! release binary and the same 20 commands as one shell script, and prints both and the
//! per-step overhead. Run with `cargo bench -p chengis --bench run_overhead`.

use std::process::Command;
use std::time::{Duration, Instant};

const STEPS: usize = 20;
const RUNS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut cmd: impl FnMut() -> Command) -> Duration {
    let mut samples = Vec::new();
    for i in 0..=RUNS {
        let start = Instant::now();
        let out = cmd().output().expect("spawn");
        let took = start.elapsed();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if i > 0 {
            samples.push(took);
        }
    }
    median(samples)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("jobs:\n  j:\n    steps:\n");
    let mut script = String::new();
    let mut spawning = String::new();
    for _ in 0..STEPS {
        yaml.push_str("      - run: \"true\"\n");
        script.push_str("true\n");
        spawning.push_str("sh -e -c true\n");
    }
    let file = dir.path().join("chengis.yml");
    std::fs::write(&file, yaml).expect("write");
    let sh = dir.path().join("steps.sh");
    std::fs::write(&sh, script).expect("write");
    let sh_spawning = dir.path().join("spawning.sh");
    std::fs::write(&sh_spawning, spawning).expect("write");
    let chengis = time(|| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chengis"));
        c.arg("run").arg(&file).args(["--format", "json"]);
        c
    });
    let shell = time(|| {
        let mut c = Command::new("sh");
        c.arg(&sh);
        c
    });
    let spawning = time(|| {
        let mut c = Command::new("sh");
        c.arg(&sh_spawning);
        c
    });
    let per_step = chengis.saturating_sub(shell) / STEPS as u32;
    let per_step_vs_spawn = chengis.saturating_sub(spawning) / STEPS as u32;
    println!("chengis run, {STEPS} steps of `true`: median {:.1} ms over {RUNS} runs", ms(chengis));
    println!("one shell script with the same {STEPS} commands: median {:.1} ms", ms(shell));
    println!("one shell script spawning `sh -e -c true` {STEPS} times: median {:.1} ms", ms(spawning));
    println!("overhead per step vs the script: {:.2} ms", ms(per_step));
    println!("overhead per step vs spawning the same shells: {:.2} ms", ms(per_step_vs_spawn));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
