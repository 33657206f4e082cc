//! Reading the JSON event stream of `chengis run --format json` in tests.

#![allow(dead_code, reason = "each test binary uses a different part")]

use serde_json::Value;

/// One event per line; every line must be JSON.
pub fn parse_events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The log lines of `job`, in order.
pub fn logs(events: &[Value], job: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "log" && e["job"] == job)
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The `step_finished` event of step `index` of `job`.
pub fn step_event<'a>(events: &'a [Value], job: &str, index: usize) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["job"] == job && e["step"] == index)
        .unwrap_or_else(|| panic!("no step_finished for {job}#{index}: {events:?}"))
}

/// The `job_finished` event of `job`.
pub fn job_event<'a>(events: &'a [Value], job: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "job_finished" && e["job"] == job)
        .unwrap_or_else(|| panic!("no job_finished for {job}: {events:?}"))
}
