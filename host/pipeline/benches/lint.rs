//! Benchmark: lint (parse, decode, check, plan) of a generated 2,000-line pipeline with 200 jobs.
//! Prints figures; run with `cargo bench -p chengis-pipeline --bench lint`.

use chengis_pipeline::{LintOptions, PlanInputs, lint, lint_and_plan};
use indexmap::IndexMap;
use std::time::{Duration, Instant};

fn pipeline(jobs: usize) -> String {
    let mut s =
        String::from("name: big\non:\n  push:\n    branches: [main, \"release/*\"]\nenv:\n  A: one\n  B: two\njobs:\n");
    for i in 0..jobs {
        s.push_str(&format!("  job{i}:\n    name: Job number {i}\n"));
        if i > 0 {
            s.push_str(&format!("    needs: [job{}]\n", i - 1));
        }
        s.push_str("    timeout: 10m\n    env:\n      LEVEL: \"3\"\n    steps:\n");
        s.push_str("      - name: build\n        run: make build\n");
        s.push_str("      - name: test\n        if: ${{ success() && env.LEVEL == '3' }}\n        run: make test\n");
    }
    s
}

fn measure(label: &str, iterations: u32, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    println!("{label}: median {:.2} ms, min {:.2} ms over {iterations} runs", ms(median), ms(times[0]));
    median
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let src = pipeline(200);
    println!("pipeline: {} lines, {} bytes, 200 jobs", src.lines().count(), src.len());
    let opts = LintOptions::default();
    measure("lint", 50, || {
        let linted = lint(&src, "big.yml", &opts);
        assert!(!linted.has_errors(), "{:?}", linted.diagnostics.first());
    });
    let params = IndexMap::new();
    let vars = |_: &str| None;
    let inputs = PlanInputs { params: &params, vars: &vars, max_matrix: 25 };
    measure("lint + plan", 50, || {
        assert!(lint_and_plan(&src, "big.yml", &opts, &inputs).is_ok());
    });
}
