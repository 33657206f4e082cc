//! The conformance suite: every pipeline under `tests/conformance/` (a `NAME.yml` and its
//! `NAME.expected.json`) runs through every executor, and each observed outcome is compared with
//! the expected one: `chengis run --format json`, a server with its embedded agent, and a server
//! with `--agents 0` plus one remote `chengis agent`. Cases whose jobs use a `chengis-test/`
//! image need Docker: without it they are skipped, unless `CHENGIS_TEST_REQUIRE` names `docker`.
//!
//! Every case runs on every executor before anything is asserted; the test then prints one
//! readable diff per failing case and executor. `CHENGIS_BLESS=1` rewrites the expected files'
//! statuses and reasons from the `chengis run` outcome (see `tests/conformance/README.md`).

#[allow(dead_code, reason = "the images and object listing serve the other Docker tests")]
mod docker_support;
mod support;

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Server, call};

/// Where the cases live.
const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/conformance");
/// How long one build (or one `chengis run`) may take once it started before it counts as hung.
const BUILD_LIMIT: Duration = Duration::from_secs(60);
/// How long the builds of one server may take altogether, queueing included.
const SERVER_LIMIT: Duration = Duration::from_secs(150);
/// `chengis run` processes at a time.
const RUN_THREADS: usize = 3;

/// The ways a pipeline is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Executor {
    /// `chengis run FILE --format json`.
    Run,
    /// `chengis serve` with its embedded agent.
    Embedded,
    /// `chengis serve --agents 0` and one `chengis agent` process.
    Remote,
}

impl Executor {
    const ALL: [Executor; 3] = [Executor::Run, Executor::Embedded, Executor::Remote];

    /// The name used in expected files (`exclude`) and reports.
    fn key(self) -> &'static str {
        match self {
            Executor::Run => "run",
            Executor::Embedded => "embedded",
            Executor::Remote => "remote",
        }
    }
}

/// One pipeline and what must come of it.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    yaml: String,
    expected: Value,
    expected_path: PathBuf,
    /// Its jobs name a `chengis-test/` image.
    docker: bool,
}

impl Case {
    fn map(&self, key: &str) -> Vec<(String, String)> {
        self.expected[key]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default()
    }

    fn params(&self) -> Vec<(String, String)> {
        self.map("params")
    }

    fn secrets(&self) -> Vec<(String, String)> {
        self.map("secrets")
    }

    fn cancel_marker(&self) -> Option<String> {
        self.expected["cancel_after_log"].as_str().map(str::to_string)
    }

    /// Why `executor` does not run this case, if it does not.
    fn excluded(&self, executor: Executor) -> Option<String> {
        self.expected["exclude"][executor.key()].as_str().map(str::to_string)
    }
}

fn load_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(CASES).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".yml")) else {
            continue;
        };
        let yaml = std::fs::read_to_string(&path).unwrap();
        let expected_path = path.with_file_name(format!("{name}.expected.json"));
        let text = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (every case needs its expected file)", expected_path.display()));
        let expected: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        check_expected_keys(name, &expected);
        let docker = yaml.contains("image: chengis-test/");
        cases.push(Case { name: name.to_string(), yaml, expected, expected_path, docker });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// A typo in an expected file must not turn a check off silently.
fn check_expected_keys(name: &str, expected: &Value) {
    const TOP: &[&str] = &["status", "jobs", "order", "absent", "params", "secrets", "cancel_after_log", "exclude"];
    const JOB: &[&str] = &["status", "reason", "reason_contains", "outputs", "logs", "logs_absent", "steps"];
    const STEP: &[&str] = &["name", "status", "reason", "reason_contains"];
    let object = expected.as_object().unwrap_or_else(|| panic!("{name}: the expected file is not an object"));
    for k in object.keys() {
        assert!(TOP.contains(&k.as_str()), "{name}: unknown key `{k}` in the expected file");
    }
    assert!(expected["status"].is_string(), "{name}: `status` is required");
    for (job, spec) in expected["jobs"].as_object().unwrap_or_else(|| panic!("{name}: `jobs` is required")) {
        for k in spec.as_object().unwrap_or_else(|| panic!("{name}: job `{job}` is not an object")).keys() {
            assert!(JOB.contains(&k.as_str()), "{name}: unknown key `{k}` in job `{job}`");
        }
        for step in spec["steps"].as_array().into_iter().flatten() {
            for k in step.as_object().unwrap().keys() {
                assert!(STEP.contains(&k.as_str()), "{name}: unknown key `{k}` in a step of `{job}`");
            }
        }
    }
    for (executor, reason) in expected["exclude"].as_object().into_iter().flatten() {
        assert!(
            ["run", "embedded", "remote"].contains(&executor.as_str()),
            "{name}: unknown executor `{executor}` in `exclude`"
        );
        assert!(
            reason.as_str().is_some_and(|r| !r.trim().is_empty()),
            "{name}: exclusion of {executor} needs a reason"
        );
    }
}

/// A step as observed.
#[derive(Debug, Clone, Default)]
struct ObsStep {
    name: String,
    status: String,
    reason: Option<String>,
}

/// A job as observed.
#[derive(Debug, Clone, Default)]
struct ObsJob {
    status: String,
    reason: Option<String>,
    /// `None` where the executor does not show outputs (`chengis run`'s events carry none).
    outputs: Option<Map<String, Value>>,
    logs: Vec<String>,
    steps: Vec<ObsStep>,
    /// When it started and ended, on one clock per executor (event positions for `chengis run`,
    /// milliseconds on the server).
    start: Option<i64>,
    end: Option<i64>,
}

/// A build as observed.
#[derive(Debug, Clone, Default)]
struct Observed {
    status: String,
    jobs: BTreeMap<String, ObsJob>,
    /// What went wrong around the run (a hang, a missing final event, stderr).
    notes: Vec<String>,
    /// Jobs still `queued` or `running` when the build already had its final status (servers).
    unfinished_at_end: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Comparison

fn compare(case: &Case, obs: &Observed) -> Vec<String> {
    let exp = &case.expected;
    let mut diffs = Vec::new();
    let want = exp["status"].as_str().unwrap_or_default();
    if obs.status != want {
        diffs.push(format!("build status: expected `{want}`, got `{}`", obs.status));
    }
    if !obs.unfinished_at_end.is_empty() {
        diffs.push(format!(
            "the build was already final while these jobs had not ended: {}",
            obs.unfinished_at_end.join(", ")
        ));
    }
    let jobs = exp["jobs"].as_object().cloned().unwrap_or_default();
    for key in obs.jobs.keys() {
        if !jobs.contains_key(key) {
            let j = &obs.jobs[key];
            diffs.push(format!(
                "unexpected job `{key}` ({}{})",
                j.status,
                j.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
    }
    for (key, spec) in &jobs {
        let Some(job) = obs.jobs.get(key) else {
            diffs.push(format!("job `{key}`: missing (expected `{}`)", spec["status"].as_str().unwrap_or_default()));
            continue;
        };
        diffs.extend(compare_job(key, spec, job));
    }
    for rule in exp["order"].as_array().into_iter().flatten() {
        let rule = rule.as_str().unwrap_or_default();
        let (a, b) = rule.split_once('<').unwrap_or_else(|| panic!("{}: order rule `{rule}` is not `a<b`", case.name));
        let (Some(ja), Some(jb)) = (obs.jobs.get(a), obs.jobs.get(b)) else {
            diffs.push(format!("order `{rule}`: a job is missing"));
            continue;
        };
        match (ja.end, jb.start) {
            (Some(end), Some(start)) if end <= start => {}
            (end, start) => diffs.push(format!(
                "order `{rule}`: `{a}` ended at {} but `{b}` started at {}",
                end.map_or("(never)".into(), |v| v.to_string()),
                start.map_or("(never)".into(), |v| v.to_string())
            )),
        }
    }
    let secrets: Vec<String> = case.secrets().into_iter().map(|(_, v)| v).collect();
    for text in exp["absent"].as_array().into_iter().flatten() {
        let text = text.as_str().unwrap_or_default();
        // Reasons quote a step's script (its default name), so only a secret's value is looked
        // for there.
        let in_reasons = secrets.iter().any(|v| v == text);
        for (key, job) in &obs.jobs {
            let mut places: Vec<String> =
                job.logs.iter().filter(|l| l.contains(text)).map(|l| format!("log line {l:?}")).collect();
            if in_reasons && job.reason.as_deref().is_some_and(|r| r.contains(text)) {
                places.push(format!("reason {:?}", job.reason.as_deref().unwrap_or_default()));
            }
            for (name, value) in job.outputs.iter().flatten() {
                if value.as_str().unwrap_or_default().contains(text) {
                    places.push(format!("output `{name}` = {value}"));
                }
            }
            for step in job.steps.iter().filter(|_| in_reasons) {
                if step.reason.as_deref().is_some_and(|r| r.contains(text)) {
                    places.push(format!("step reason {:?}", step.reason.as_deref().unwrap_or_default()));
                }
            }
            for place in places {
                diffs.push(format!("job `{key}`: {text:?} must not appear, found in {place}"));
            }
        }
    }
    diffs
}

fn compare_job(key: &str, spec: &Value, job: &ObsJob) -> Vec<String> {
    let mut diffs = Vec::new();
    let want = spec["status"].as_str().unwrap_or_default();
    if job.status != want {
        diffs.push(format!(
            "job `{key}`: status expected `{want}`, got `{}`{}",
            job.status,
            job.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    diffs.extend(compare_reason(&format!("job `{key}`"), spec, job.reason.as_deref()));
    if let (Some(want), Some(got)) = (spec["outputs"].as_object(), &job.outputs)
        && want != got
    {
        diffs.push(format!(
            "job `{key}`: outputs expected {}, got {}",
            Value::Object(want.clone()),
            Value::Object(got.clone())
        ));
    }
    let mut missing = Vec::new();
    for line in spec["logs"].as_array().into_iter().flatten() {
        let line = line.as_str().unwrap_or_default();
        if !job.logs.iter().any(|l| l == line) {
            missing.push(line.to_string());
        }
    }
    if !missing.is_empty() {
        diffs.push(format!("job `{key}`: log lines missing {missing:?}; the log was {:?}", job.logs));
    }
    for text in spec["logs_absent"].as_array().into_iter().flatten() {
        let text = text.as_str().unwrap_or_default();
        if let Some(l) = job.logs.iter().find(|l| l.contains(text)) {
            diffs.push(format!("job `{key}`: {text:?} must not be logged, found {l:?}"));
        }
    }
    if let Some(steps) = spec["steps"].as_array() {
        if steps.len() != job.steps.len() {
            let got: Vec<&str> = job.steps.iter().map(|s| s.status.as_str()).collect();
            diffs.push(format!("job `{key}`: expected {} steps, got {} {got:?}", steps.len(), job.steps.len()));
        }
        for (i, (want, got)) in steps.iter().zip(&job.steps).enumerate() {
            let what = format!("job `{key}` step {i}");
            if want["status"].as_str().is_some_and(|s| s != got.status) {
                diffs.push(format!(
                    "{what}: status expected `{}`, got `{}`{}",
                    want["status"].as_str().unwrap_or_default(),
                    got.status,
                    got.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
            if want["name"].as_str().is_some_and(|n| n != got.name) {
                diffs.push(format!(
                    "{what}: name expected {:?}, got {:?}",
                    want["name"].as_str().unwrap_or_default(),
                    got.name
                ));
            }
            diffs.extend(compare_reason(&what, want, got.reason.as_deref()));
        }
    }
    diffs
}

fn compare_reason(what: &str, spec: &Value, got: Option<&str>) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(want) = spec["reason"].as_str()
        && got != Some(want)
    {
        diffs.push(format!("{what}: reason expected {want:?}, got {:?}", got.unwrap_or("(none)")));
    }
    if let Some(want) = spec["reason_contains"].as_str()
        && !got.is_some_and(|g| g.contains(want))
    {
        diffs.push(format!("{what}: reason should contain {want:?}, got {:?}", got.unwrap_or("(none)")));
    }
    diffs
}

// ---------------------------------------------------------------------------------------------
// `chengis run`

fn run_local(case: &Case, root: &Path) -> Observed {
    let dir = root.join("run").join(&case.name);
    support::repo(&dir, &case.yaml);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chengis"));
    cmd.arg("run")
        .arg(dir.join("chengis.yml"))
        .args(["--format", "json", "--parallel", "4", "--workspace"])
        .arg(&dir)
        .current_dir(&dir);
    for (k, v) in case.params() {
        cmd.arg("--param").arg(format!("{k}={v}"));
    }
    for (k, v) in case.secrets() {
        cmd.arg("--secret").arg(format!("{k}={v}"));
    }
    if case.yaml.contains("uses:") {
        cmd.arg("--plugin-dir").arg(root.join("run").join(format!("{}.plugins", case.name)));
    }
    let stderr_path = root.join("run").join(format!("{}.stderr", case.name));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let marker = case.cancel_marker();
    let deadline = Instant::now() + BUILD_LIMIT;
    let mut events = Vec::new();
    let mut notes = Vec::new();
    let mut interrupted = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let event: Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(e) => {
                        notes.push(format!("not a JSON event ({e}): {line}"));
                        continue;
                    }
                };
                if !interrupted && event["event"] == "log" && marker.as_deref().is_some_and(|m| event["text"] == m) {
                    signal(&child, nix::sys::signal::Signal::SIGINT);
                    interrupted = true;
                }
                events.push(event);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                notes.push(format!("chengis run did not finish within {} s: killed", BUILD_LIMIT.as_secs()));
                let _ = child.kill();
                break;
            }
        }
    }
    let exit = child.wait().unwrap();
    let _ = reader.join();
    if marker.is_some() && !interrupted {
        notes.push("the cancel marker never appeared, nothing was interrupted".into());
    }
    let mut obs = observe_events(&events);
    if obs.status.is_empty() {
        obs.status = format!("(no run_finished event; {exit})");
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        notes.push(format!("stderr: {}", stderr.trim()));
        if let Some(last) = events.last() {
            notes.push(format!("last event: {last}"));
        }
    }
    obs.notes.extend(notes);
    obs
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// The outcome in `chengis run`'s JSON events; the event positions are the clock.
fn observe_events(events: &[Value]) -> Observed {
    let mut obs = Observed::default();
    let mut steps: HashMap<String, BTreeMap<u64, ObsStep>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let job_id = e["job"].as_str().unwrap_or_default().to_string();
        let at = i as i64;
        match e["event"].as_str().unwrap_or_default() {
            "job_started" => obs.jobs.entry(job_id).or_default().start = Some(at),
            "job_finished" => {
                let job = obs.jobs.entry(job_id).or_default();
                job.status = e["status"].as_str().unwrap_or_default().to_string();
                job.reason = e["reason"].as_str().map(str::to_string);
                job.end = Some(at);
            }
            "step_finished" => {
                let step = ObsStep {
                    name: e["name"].as_str().unwrap_or_default().to_string(),
                    status: e["status"].as_str().unwrap_or_default().to_string(),
                    reason: e["reason"].as_str().map(str::to_string),
                };
                steps.entry(job_id).or_default().insert(e["step"].as_u64().unwrap_or_default(), step);
            }
            "log" => obs.jobs.entry(job_id).or_default().logs.push(e["text"].as_str().unwrap_or_default().to_string()),
            "run_finished" => obs.status = e["status"].as_str().unwrap_or_default().to_string(),
            _ => {}
        }
    }
    for (job, s) in steps {
        obs.jobs.entry(job).or_default().steps = s.into_values().collect();
    }
    obs
}

fn run_all_locally(cases: &[Case], root: &Path) -> BTreeMap<String, Observed> {
    let queue = Arc::new(Mutex::new(cases.to_vec()));
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = (0..RUN_THREADS)
        .map(|_| {
            let (queue, results, root) = (queue.clone(), results.clone(), root.to_path_buf());
            std::thread::spawn(move || {
                loop {
                    let Some(case) = queue.lock().unwrap().pop() else { break };
                    let obs = run_local(&case, &root);
                    results.lock().unwrap().insert(case.name.clone(), obs);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::mem::take(&mut *results.lock().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A `chengis agent` process, killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `chengis serve` on a free port with a SQLite database in `data`, its log in `data/server.log`.
fn start_server(data: &Path, extra: &[&str]) -> Server {
    std::fs::create_dir_all(data).unwrap();
    let db = format!("sqlite://{}", data.join("db.sqlite").display());
    let log = std::fs::File::create(data.join("server.log")).unwrap();
    support::start_with(data, &db, extra, &[], Stdio::from(log))
}

fn start_agent(dir: &Path, server: &str, name: &str, extra: &[&str]) -> AgentProcess {
    let (code, out, err) = support::cli(server, &["agent-token", "create", "--name", name], None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["agent", "--server", server, "--token", &token, "--name", name, "--labels", "linux"])
        .arg("--work-dir")
        .arg(&work)
        .args(extra)
        .env("CHENGIS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call("GET", &format!("{server}/api/v1/agents"), None);
        if v["agents"].as_array().into_iter().flatten().any(|a| a["name"] == name && a["status"] == "online") {
            break;
        }
        assert!(Instant::now() < deadline, "agent {name} never came online: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    AgentProcess(child)
}

/// The job names a server knows a case by.
fn server_job(case: &Case) -> String {
    case.name.clone()
}

fn create_and_trigger(url: &str, case: &Case, repo_url: &str) -> Result<i64, String> {
    let job = server_job(case);
    let (status, v) = call(
        "POST",
        &format!("{url}/api/v1/jobs"),
        Some(json!({"name": job, "repo_url": repo_url, "default_branch": "main"})),
    );
    if status != 201 {
        return Err(format!("creating the job: {status} {v}"));
    }
    for (k, value) in case.secrets() {
        let (status, v) = call("PUT", &format!("{url}/api/v1/secrets/{k}?job={job}"), Some(json!({"value": value})));
        if status != 204 {
            return Err(format!("setting secret {k}: {status} {v}"));
        }
    }
    let params: Map<String, Value> = case.params().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let (status, v) = call("POST", &format!("{url}/api/v1/jobs/{job}/builds"), Some(json!({"params": params})));
    if status != 201 {
        return Err(format!("triggering: {status} {v}"));
    }
    v["id"].as_i64().ok_or_else(|| format!("no build id in {v}"))
}

fn job_logs(url: &str, id: i64, job: &str) -> Vec<String> {
    let job = job.replace(' ', "%20");
    let (status, v) = call("GET", &format!("{url}/api/v1/builds/{id}/jobs/{job}/logs"), None);
    if status != 200 {
        return Vec::new();
    }
    v["lines"].as_array().into_iter().flatten().map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// The outcome of build `id` as the API shows it.
fn observe_build(url: &str, id: i64) -> Observed {
    let (_, b) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
    let mut obs =
        Observed { status: b["build"]["status"].as_str().unwrap_or_default().to_string(), ..Default::default() };
    for j in b["jobs"].as_array().into_iter().flatten() {
        let key = j["job"]["job_key"].as_str().unwrap_or_default().to_string();
        let steps = j["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| ObsStep {
                name: s["name"].as_str().unwrap_or_default().to_string(),
                status: s["status"].as_str().unwrap_or_default().to_string(),
                reason: s["reason"].as_str().map(str::to_string),
            })
            .collect();
        let job = ObsJob {
            status: j["job"]["status"].as_str().unwrap_or_default().to_string(),
            reason: j["job"]["reason"].as_str().map(str::to_string),
            outputs: Some(j["job"]["outputs"].as_object().cloned().unwrap_or_default()),
            logs: job_logs(url, id, &key),
            steps,
            start: j["job"]["started_ms"].as_i64(),
            end: j["job"]["finished_ms"].as_i64(),
        };
        obs.jobs.insert(key, job);
    }
    obs
}

/// A build being waited for.
struct Pending {
    case: String,
    id: i64,
    marker: Option<String>,
    cancelled: bool,
    /// When a job of it was first seen started.
    started: Option<Instant>,
}

/// Runs `cases` on one server: all triggered at once, then waited for together.
fn run_on_server(
    executor: Executor,
    cases: &[Case],
    root: &Path,
    repos: &HashMap<String, String>,
) -> BTreeMap<String, Observed> {
    let dir = root.join(executor.key());
    let (server, _agent) = match executor {
        Executor::Embedded => (start_server(&dir.join("data"), &["--executors", "4"]), None),
        _ => {
            let server = start_server(&dir.join("data"), &["--agents", "0"]);
            let agent = start_agent(&dir, &server.url, "conformance-agent", &["--executors", "4"]);
            (server, Some(agent))
        }
    };
    let url = server.url.clone();
    let mut results = BTreeMap::new();
    let mut pending = Vec::new();
    for case in cases {
        match create_and_trigger(&url, case, &repos[&case.name]) {
            Ok(id) => pending.push(Pending {
                case: case.name.clone(),
                id,
                marker: case.cancel_marker(),
                cancelled: false,
                started: None,
            }),
            Err(e) => {
                results.insert(
                    case.name.clone(),
                    Observed { status: "(not triggered)".into(), notes: vec![e], ..Default::default() },
                );
            }
        }
    }
    let all_deadline = Instant::now() + SERVER_LIMIT;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for mut p in pending {
            let (_, b) = call("GET", &format!("{url}/api/v1/builds/{}", p.id), None);
            let jobs = b["jobs"].as_array().cloned().unwrap_or_default();
            if p.started.is_none() && jobs.iter().any(|j| !j["job"]["started_ms"].is_null()) {
                p.started = Some(Instant::now());
            }
            if support::finished(&b) {
                // A final build must have only final jobs; if not, say so, then give the jobs a
                // few seconds to end so the rest of the comparison means something.
                let open = |b: &Value| -> Vec<String> {
                    b["jobs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|j| matches!(j["job"]["status"].as_str(), Some("queued" | "running")))
                        .map(|j| {
                            format!(
                                "`{}` ({})",
                                j["job"]["job_key"].as_str().unwrap_or_default(),
                                j["job"]["status"].as_str().unwrap_or_default()
                            )
                        })
                        .collect()
                };
                let unfinished_at_end = open(&b);
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace
                    && !open(&call("GET", &format!("{url}/api/v1/builds/{}", p.id), None).1).is_empty()
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                let mut obs = observe_build(&url, p.id);
                obs.unfinished_at_end = unfinished_at_end;
                if p.marker.is_some() && !p.cancelled {
                    obs.notes.push("the build ended before the cancel marker was seen".into());
                }
                results.insert(p.case.clone(), obs);
                continue;
            }
            if let Some(marker) = p.marker.as_deref().filter(|_| !p.cancelled) {
                let seen = jobs.iter().filter(|j| !j["job"]["started_ms"].is_null()).any(|j| {
                    job_logs(&url, p.id, j["job"]["job_key"].as_str().unwrap_or_default()).iter().any(|l| l == marker)
                });
                if seen {
                    let (status, v) = call("POST", &format!("{url}/api/v1/builds/{}/cancel", p.id), None);
                    assert_eq!(status, 200, "cancelling build {} of {}: {v}", p.id, p.case);
                    p.cancelled = true;
                }
            }
            let hung = p.started.is_some_and(|s| s.elapsed() > BUILD_LIMIT) || Instant::now() > all_deadline;
            if hung {
                let mut obs = observe_build(&url, p.id);
                obs.notes.push(format!(
                    "the build did not finish (still `{}`) within {} s of starting ({} s for all builds): cancelled by the test",
                    obs.status,
                    BUILD_LIMIT.as_secs(),
                    SERVER_LIMIT.as_secs()
                ));
                obs.status = format!("(unfinished: {})", obs.status);
                let _ = call("POST", &format!("{url}/api/v1/builds/{}/cancel", p.id), None);
                results.insert(p.case.clone(), obs);
                continue;
            }
            still.push(p);
        }
        pending = still;
        std::thread::sleep(Duration::from_millis(200));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// Blessing

/// Rewrites the expected file of `case` from the `chengis run` outcome: the build status and the
/// jobs' statuses and reasons (a `reason_contains` is kept as written); jobs are added and
/// removed to match. Everything else (logs, outputs, order, options) is left as written. A file
/// is rewritten (pretty-printed) only when one of those changed.
fn bless(case: &Case, obs: &Observed) {
    let mut exp = case.expected.clone();
    exp["status"] = Value::String(obs.status.clone());
    let old = exp["jobs"].as_object().cloned().unwrap_or_default();
    let mut jobs = Map::new();
    for (key, job) in &obs.jobs {
        let mut spec = old.get(key).cloned().unwrap_or_else(|| json!({}));
        spec["status"] = Value::String(job.status.clone());
        let spec_map = spec.as_object_mut().unwrap();
        if !spec_map.contains_key("reason_contains") {
            match &job.reason {
                Some(r) if spec_map.contains_key("reason") || !old.contains_key(key) => {
                    spec_map.insert("reason".into(), Value::String(r.clone()));
                }
                None => {
                    spec_map.remove("reason");
                }
                _ => {}
            }
        }
        jobs.insert(key.clone(), spec);
    }
    exp["jobs"] = Value::Object(jobs);
    if exp == case.expected {
        return;
    }
    eprintln!("conformance: blessed {}", case.expected_path.display());
    std::fs::write(&case.expected_path, serde_json::to_string_pretty(&exp).unwrap() + "\n").unwrap();
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_case_on_every_executor() {
    let started = Instant::now();
    let cases = load_cases();
    assert!(cases.len() >= 40, "only {} cases under {CASES}", cases.len());
    let docker = cases.iter().any(|c| c.docker) && docker_support::docker_ready();
    let runnable: Vec<Case> = cases.iter().filter(|c| docker || !c.docker).cloned().collect();
    let skipped_docker = cases.len() - runnable.len();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // One repository per case for the servers (each clones it), one working copy per case for
    // `chengis run`.
    let mut repos = HashMap::new();
    for case in &runnable {
        repos.insert(case.name.clone(), support::repo(&root.join("repos").join(&case.name), &case.yaml));
    }
    let for_executor =
        |e: Executor| -> Vec<Case> { runnable.iter().filter(|c| c.excluded(e).is_none()).cloned().collect() };

    let (run_cases, embedded_cases, remote_cases) =
        (for_executor(Executor::Run), for_executor(Executor::Embedded), for_executor(Executor::Remote));
    let observed: BTreeMap<Executor, BTreeMap<String, Observed>> = std::thread::scope(|s| {
        let embedded = s.spawn(|| run_on_server(Executor::Embedded, &embedded_cases, root, &repos));
        let remote = s.spawn(|| run_on_server(Executor::Remote, &remote_cases, root, &repos));
        let local = run_all_locally(&run_cases, root);
        BTreeMap::from([
            (Executor::Run, local),
            (Executor::Embedded, embedded.join().unwrap()),
            (Executor::Remote, remote.join().unwrap()),
        ])
    });

    let blessing = std::env::var("CHENGIS_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut passed: BTreeMap<Executor, (usize, usize)> = BTreeMap::new();
    for case in &runnable {
        for executor in Executor::ALL {
            if let Some(reason) = case.excluded(executor) {
                eprintln!("conformance: {} not on {}: {reason}", case.name, executor.key());
                continue;
            }
            let obs = &observed[&executor][&case.name];
            if blessing && executor == Executor::Run {
                bless(case, obs);
            }
            let mut diffs = compare(case, obs);
            let counts = passed.entry(executor).or_default();
            if diffs.is_empty() {
                if case.docker { counts.1 += 1 } else { counts.0 += 1 }
            } else {
                diffs.extend(obs.notes.iter().map(|n| format!("note: {n}")));
                failures.push(format!("--- {} on {}:\n    {}", case.name, executor.key(), diffs.join("\n    ")));
            }
        }
    }
    let docker_cases = runnable.iter().filter(|c| c.docker).count();
    // The counts go to the process's stderr directly, past the test harness's capture, so that
    // every run (CI's included) shows them.
    let mut summary = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        summary,
        "conformance: {} cases x 3 executors (+{docker_cases} docker{}), {:.0} s",
        runnable.len() - docker_cases,
        if skipped_docker > 0 { format!(", {skipped_docker} docker cases skipped: no Docker") } else { String::new() },
        started.elapsed().as_secs_f64()
    );
    for executor in Executor::ALL {
        let total =
            |docker: bool| runnable.iter().filter(|c| c.docker == docker && c.excluded(executor).is_none()).count();
        let (plain, boxed) = passed.get(&executor).copied().unwrap_or_default();
        let _ = writeln!(
            summary,
            "conformance: {:<8} passed {plain}/{} (+{boxed}/{} docker)",
            executor.key(),
            total(false),
            total(true)
        );
    }
    {
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(summary.as_bytes());
    }
    if blessing {
        println!(
            "conformance: CHENGIS_BLESS=1 rewrote the expected files from the `chengis run` outcome; review the diff"
        );
    }
    assert!(failures.is_empty(), "{} case/executor mismatches:\n{}", failures.len(), failures.join("\n"));
}

const LOST: &str = r#"
name: lost
jobs:
  work:
    steps:
      - run: echo "start on $CHENGIS_AGENT_NAME"; sleep 30; echo "work must not finish"
  report:
    needs: work
    if: always()
    steps:
      - run: echo "report saw ${{ needs.work.result }}"
"#;

/// The remote-agent scenario no static case can express: the agent running a job is killed
/// (`kill -9`) mid-job, and so is the one that took it over; with `--max-attempts 2` the job
/// ends `error` naming the lost agent, the `if: always()` dependant still runs, and the build
/// reaches a final status.
#[test]
fn a_job_whose_agents_keep_getting_lost_ends_error_when_attempts_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), &["--agents", "0", "--lease-ttl", "2s", "--max-attempts", "2"]);
    let url = server.url.clone();
    let repo_url = support::repo(&dir.path().join("repo"), LOST);
    let (status, v) = call(
        "POST",
        &format!("{url}/api/v1/jobs"),
        Some(json!({"name": "lost", "repo_url": repo_url, "default_branch": "main"})),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call("POST", &format!("{url}/api/v1/jobs/lost/builds"), Some(json!({})));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    for name in ["lost-a", "lost-b"] {
        let mut agent = start_agent(dir.path(), &url, name, &[]);
        let line = format!("start on {name}");
        let deadline = Instant::now() + Duration::from_secs(40);
        while !job_logs(&url, id, "work").contains(&line) {
            let (_, b) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
            assert!(Instant::now() < deadline, "{name} never started the job: {b}");
            std::thread::sleep(Duration::from_millis(100));
        }
        signal(&agent.0, nix::sys::signal::Signal::SIGKILL);
        let _ = agent.0.wait();
    }
    // A third agent polls: the server finds the job's attempts used up, ends it, and hands out
    // the dependant.
    let _survivor = start_agent(dir.path(), &url, "lost-c", &[]);
    let deadline = Instant::now() + BUILD_LIMIT;
    let build = loop {
        let (_, b) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
        if support::finished(&b) || Instant::now() > deadline {
            break b;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let obs = observe_build(&url, id);
    let work = &obs.jobs["work"];
    assert_eq!(work.status, "error", "{build}");
    let reason = work.reason.clone().unwrap_or_default();
    assert!(reason.contains("agent lost-b lost"), "{reason}");
    assert!(!work.logs.iter().any(|l| l.contains("must not finish")), "{:?}", work.logs);
    let report = &obs.jobs["report"];
    assert_eq!(
        report.status,
        "success",
        "the `if: always()` dependant of the job that ran out of attempts did not run (waited {} s): {build}",
        BUILD_LIMIT.as_secs()
    );
    assert!(report.logs.contains(&"report saw error".to_string()), "{:?}", report.logs);
    assert_eq!(obs.status, "error", "{build}");
    let open: Vec<&ObsStep> = work.steps.iter().filter(|s| s.status == "running").collect();
    assert!(open.is_empty(), "steps of the ended job still show `running`: {open:?}");
}

/// Uses a secret, and has a dependant that runs whatever happened.
const UNPREPARABLE: &str = r#"name: unpreparable
jobs:
  work:
    env:
      KEY: ${{ secrets.API_KEY }}
    steps:
      - run: echo "must not run"
  after:
    needs: work
    if: always()
    steps:
      - run: echo "must not run either"
"#;

/// A job whose secrets cannot be decrypted (the master key was replaced) plans, cannot be
/// prepared, and ends `error` with the real reason, on the embedded agent and on a remote one;
/// the build moves on and ends; nobody blames a lost agent.
#[test]
fn a_job_that_cannot_be_prepared_ends_error_with_the_reason_on_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let repo_url = support::repo(&dir.path().join("repo"), UNPREPARABLE);
    for remote in [false, true] {
        let data = dir.path().join(if remote { "remote" } else { "embedded" });
        let extra: &[&str] = if remote { &["--agents", "0"] } else { &[] };
        {
            let server = start_server(&data, extra);
            let url = &server.url;
            let job = json!({"name": "prep", "repo_url": repo_url, "default_branch": "main"});
            let (status, v) = call("POST", &format!("{url}/api/v1/jobs"), Some(job));
            assert_eq!(status, 201, "{v}");
            let (status, v) =
                call("PUT", &format!("{url}/api/v1/secrets/API_KEY"), Some(json!({"value": "key-12345"})));
            assert_eq!(status, 204, "{v}");
        }
        // Another master key: the stored secret can no longer be decrypted.
        std::fs::write(data.join("master.key"), format!("{}\n", "ab".repeat(32))).unwrap();
        let server = start_server(&data, extra);
        let url = server.url.clone();
        let _agent = remote.then(|| start_agent(dir.path(), &url, "prep-agent", &[]));
        let (status, v) = call("POST", &format!("{url}/api/v1/jobs/prep/builds"), Some(json!({})));
        assert_eq!(status, 201, "{v}");
        let id = v["id"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let b = loop {
            let (_, b) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
            if b["build"]["status"] != "queued" && b["build"]["status"] != "running" {
                break b;
            }
            assert!(Instant::now() < deadline, "the build never ended (remote: {remote}): {b}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(b["build"]["status"], "error", "remote: {remote}: {b}");
        let jobs = b["jobs"].as_array().unwrap();
        let names: Vec<&str> = jobs.iter().filter_map(|j| j["job"]["job_key"].as_str()).collect();
        assert_eq!(names, ["work", "after"], "{b}");
        for job in jobs {
            assert_eq!(job["job"]["status"], "error", "remote: {remote}: {job}");
            let reason = job["job"]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("could not be prepared") && reason.contains("master key"), "{reason}");
            assert!(!reason.contains("lost"), "{reason}");
        }
    }
}

/// A build is cancelled after its remote agent died mid-job (`kill -9`): nobody is left to stop
/// the job, so the server ends it once its lease runs out, and the build ends `cancelled`.
#[test]
fn a_cancel_ends_the_build_when_the_agent_that_held_its_job_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), &["--agents", "0", "--lease-ttl", "2s"]);
    let url = server.url.clone();
    let pipeline = "name: orphan\njobs:\n  work:\n    steps:\n      - run: echo started; sleep 60\n";
    let repo_url = support::repo(&dir.path().join("repo"), pipeline);
    let job = json!({"name": "orphan", "repo_url": repo_url, "default_branch": "main"});
    let (status, v) = call("POST", &format!("{url}/api/v1/jobs"), Some(job));
    assert_eq!(status, 201, "{v}");
    let (status, v) = call("POST", &format!("{url}/api/v1/jobs/orphan/builds"), Some(json!({})));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let agent = start_agent(dir.path(), &url, "orphan-agent", &[]);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !job_logs(&url, id, "work").iter().any(|l| l == "started") {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&agent.0, nix::sys::signal::Signal::SIGKILL);
    let (status, b) = call("POST", &format!("{url}/api/v1/builds/{id}/cancel"), None);
    assert_eq!(status, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let b = loop {
        let (_, b) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
        if b["build"]["status"] == "cancelled" {
            break b;
        }
        assert!(Instant::now() < deadline, "the build never ended: {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let work = &b["jobs"][0];
    assert_eq!(work["job"]["status"], "cancelled", "{b}");
    assert!(work["job"]["reason"].as_str().unwrap_or_default().contains("stopped answering"), "{b}");
    assert!(work["steps"].as_array().unwrap().iter().all(|s| s["status"] != "running"), "{b}");
}
