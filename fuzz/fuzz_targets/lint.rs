//! Fuzz target: the linter and planner must never panic, whatever the input.
#![no_main]

use chengis_pipeline::{LintOptions, PlanInputs, lint_and_plan};
use indexmap::IndexMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let params = IndexMap::new();
    let vars = |_: &str| None;
    let inputs = PlanInputs { params: &params, vars: &vars, max_matrix: 25 };
    let _ = lint_and_plan(src, "fuzz.yml", &LintOptions::default(), &inputs);
    let _ = chengis_pipeline::expr::parse(src).map(|e| e.check());
});
