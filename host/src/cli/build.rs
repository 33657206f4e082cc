//! `chengis build ...`: trigger, list, show, logs, cancel and retry builds, referred to by their
//! global id (`42`) or by job and number (`hello#3`); `trigger --wait` follows the build's
//! event stream and prints each job's result as it ends.

use super::Format;
use super::client::{Client, ClientArgs, StreamError, enc, print, print_list, s};
use super::error::CliError;
use anyhow::{anyhow, bail};
use chengis_model::human_duration;
use clap::Subcommand;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A build on the command line: its global id (`42`) or its job's name and the build's number
/// within that job (`hello#3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildRef {
    /// The global build id.
    Id(i64),
    /// Build `number` of job `job`.
    Number {
        /// The job's name.
        job: String,
        /// The build's number within the job.
        number: i64,
    },
}

/// Why a build reference does not parse; each names the reference as typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildRefError {
    /// Neither a number nor `JOB#NUMBER`.
    #[error("`{0}` is not a build: give a build id (42) or JOB#NUMBER (hello#3)")]
    NotABuild(String),
    /// `#3`.
    #[error("`{0}` names no job before `#`: give JOB#NUMBER (hello#3)")]
    NoJob(String),
    /// `hello#`.
    #[error("`{0}` has no build number after `#`: give JOB#NUMBER (hello#3)")]
    NoNumber(String),
    /// `hello#x`, `hello#0`.
    #[error("`{reference}`: `{number}` is not a build number (1, 2, 3, ...)")]
    BadNumber {
        /// The reference as typed.
        reference: String,
        /// What followed `#`.
        number: String,
    },
}

/// A positive whole number (build ids and numbers start at 1).
fn positive(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|n| *n > 0)
}

impl FromStr for BuildRef {
    type Err = BuildRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((job, number)) = text.rsplit_once('#') else {
            return positive(text).map(BuildRef::Id).ok_or_else(|| BuildRefError::NotABuild(text.into()));
        };
        if job.trim().is_empty() {
            return Err(BuildRefError::NoJob(text.into()));
        }
        if number.is_empty() {
            return Err(BuildRefError::NoNumber(text.into()));
        }
        match positive(number) {
            Some(number) => Ok(BuildRef::Number { job: job.to_string(), number }),
            None => Err(BuildRefError::BadNumber { reference: text.into(), number: number.into() }),
        }
    }
}

impl std::fmt::Display for BuildRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildRef::Id(id) => write!(f, "{id}"),
            BuildRef::Number { job, number } => write!(f, "{job}#{number}"),
        }
    }
}

impl BuildRef {
    /// The build with its jobs and steps (`GET /api/v1/builds/{id}` or
    /// `GET /api/v1/jobs/{job}/builds/{number}`); errors name the reference.
    fn fetch(&self, c: &Client) -> anyhow::Result<Value> {
        let path = match self {
            BuildRef::Id(id) => format!("/api/v1/builds/{id}"),
            BuildRef::Number { job, number } => format!("/api/v1/jobs/{}/builds/{number}", enc(job)),
        };
        c.get_as(&format!("build {self}"), &path)
    }

    /// The global id, asking the server only for `JOB#NUMBER`.
    fn id(&self, c: &Client) -> anyhow::Result<i64> {
        match self {
            BuildRef::Id(id) => Ok(*id),
            BuildRef::Number { .. } => build_id(&self.fetch(c)?["build"]),
        }
    }
}

fn build_id(build: &Value) -> anyhow::Result<i64> {
    build["id"].as_i64().ok_or_else(|| anyhow!("the server answered without a build id"))
}

/// `chengis build ...`.
#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Start a build.
    Trigger {
        /// Job name.
        job: String,
        /// Branch to build.
        #[arg(long, conflicts_with = "commit")]
        branch: Option<String>,
        /// Exact commit to build.
        #[arg(long)]
        commit: Option<String>,
        /// Parameter (repeatable).
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        /// Follow the build, printing each job's result as it ends; exit non-zero unless the
        /// build succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// List builds, newest first.
    List {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Builds older than this id (the previous page's `next_cursor`).
        #[arg(long)]
        before: Option<i64>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show a build with its jobs and steps.
    Show {
        /// Build id (42) or JOB#NUMBER (hello#3).
        build: BuildRef,
    },
    /// Print a build's logs, each line labelled with its job (`[test] ...`).
    Logs {
        /// Build id (42) or JOB#NUMBER (hello#3).
        build: BuildRef,
        /// Only this job (planned id); default: every job in order.
        #[arg(long)]
        job: Option<String>,
        /// Keep following until the job ends.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a build.
    Cancel {
        /// Build id (42) or JOB#NUMBER (hello#3).
        build: BuildRef,
    },
    /// Run a finished build again as a new attempt.
    Retry {
        /// Build id (42) or JOB#NUMBER (hello#3).
        build: BuildRef,
    },
}

fn build_line(b: &Value) -> String {
    format!(
        "{:<6} {:<16} #{:<5} {:<10} {:<12} {:<8} {:<9} {}\n",
        s(&b["id"]),
        s(&b["job"]),
        s(&b["number"]),
        s(&b["status"]),
        s(&b["branch"]),
        s(&b["commit_sha"]).chars().take(8).collect::<String>(),
        took(b).unwrap_or_else(|| "-".into()),
        b["reason"].as_str().unwrap_or("")
    )
}

/// `hello#3`: how a build is referred to.
fn reference(b: &Value) -> String {
    format!("{}#{}", s(&b["job"]), s(&b["number"]))
}

/// How long a build or job took (`2s`, `1m 5s`), once it finished: from its start (a build that
/// never started: from when it was queued) to its end.
fn took(v: &Value) -> Option<String> {
    let end = v["finished_ms"].as_i64()?;
    let start = v["started_ms"].as_i64().or_else(|| v["queued_ms"].as_i64())?;
    let ms = u64::try_from(end.saturating_sub(start)).unwrap_or(0);
    Some(human_duration(Duration::from_millis(ms)))
}

/// `job test: success (2s)`, with the reason when there is one.
fn job_line(j: &Value) -> String {
    let job = &j["job"];
    let time = took(job).map(|t| format!(" ({t})")).unwrap_or_default();
    let why = job["reason"].as_str().or(j["waiting_reason"].as_str()).map(|r| format!(": {r}")).unwrap_or_default();
    format!("job {}: {}{time}{why}\n", s(&job["job_key"]), s(&job["status"]))
}

/// `build hello#3 (id 42): success (5s)`, with the reason when there is one.
fn final_line(detail: &Value) -> String {
    let b = &detail["build"];
    let time = took(b).map(|t| format!(" ({t})")).unwrap_or_default();
    let why = b["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
    format!("build {} (id {}): {}{time}{why}\n", reference(b), s(&b["id"]), s(&b["status"]))
}

fn is_final(status: &str) -> bool {
    !matches!(status, "queued" | "running" | "")
}

/// Runs `chengis build ...`.
pub fn build(args: &ClientArgs, cmd: BuildCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        BuildCommand::Trigger { job, branch, commit, params, wait } => {
            let mut p = serde_json::Map::new();
            for kv in params {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--param takes NAME=VALUE, got `{kv}`")))?;
                p.insert(k.to_string(), Value::String(v.to_string()));
            }
            let v = c.post(
                &format!("/api/v1/jobs/{}/builds", enc(&job)),
                json!({"branch": branch, "commit": commit, "params": p}),
            )?;
            let id = build_id(&v)?;
            if !wait {
                print(args.format, &v, |v| format!("build {} queued (id {id})\n", reference(v)));
                return Ok(0);
            }
            if args.format == Format::Text {
                eprintln!("build {} queued (id {id}); waiting", reference(&v));
            }
            let last = wait_for(&c, args.format, id)?;
            print(args.format, &last, final_line);
            Ok(if last["build"]["status"] == "success" { 0 } else { 1 })
        }
        BuildCommand::List { job, status, branch, before, limit } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("job", job), ("status", status), ("branch", branch)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            if let Some(b) = before {
                q.push(format!("before={b}"));
            }
            let v = c.get(&format!("/api/v1/builds?{}", q.join("&")))?;
            let empty = if q.len() > 1 { "no builds match" } else { "no builds" };
            print_list(args.format, &v, "builds", empty, |v| {
                let mut out = format!(
                    "{:<6} {:<16} {:<6} {:<10} {:<12} {:<8} {:<9} REASON\n",
                    "ID", "JOB", "NUMBER", "STATUS", "BRANCH", "COMMIT", "TOOK"
                );
                for b in v["builds"].as_array().into_iter().flatten() {
                    out.push_str(&build_line(b));
                }
                if let Some(next) = v["next_cursor"].as_i64() {
                    out.push_str(&format!("older: --before {next}\n"));
                }
                out
            });
            Ok(0)
        }
        BuildCommand::Show { build } => {
            let v = build.fetch(&c)?;
            print(args.format, &v, show_text);
            Ok(0)
        }
        BuildCommand::Logs { build, job, follow } => {
            let b = build.fetch(&c)?;
            let id = build_id(&b["build"])?;
            let keys: Vec<String> = match job {
                Some(j) => vec![j],
                None => b["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|j| j["job"]["job_key"].as_str().map(str::to_string))
                    .collect(),
            };
            for key in keys {
                if follow {
                    follow_logs(&c, args.format, id, &key)?;
                } else {
                    let what = format!("the log of job `{key}` of build {build}");
                    let mut offset = 1;
                    loop {
                        let v =
                            c.get_as(&what, &format!("/api/v1/builds/{id}/jobs/{}/logs?offset={offset}", enc(&key)))?;
                        let lines = v["lines"].as_array().map(Vec::as_slice).unwrap_or_default();
                        for line in lines {
                            print_line(args.format, &key, line);
                        }
                        match v["next_offset"].as_u64() {
                            Some(next) if !lines.is_empty() && next > offset => offset = next,
                            _ => break,
                        }
                    }
                }
            }
            Ok(0)
        }
        BuildCommand::Cancel { build } => {
            let id = build.id(&c)?;
            let v =
                c.post_as(&format!("cancelling build {build}"), &format!("/api/v1/builds/{id}/cancel"), json!({}))?;
            print(args.format, &v, |v| format!("build {} (id {id}) is {}\n", reference(v), s(&v["status"])));
            Ok(0)
        }
        BuildCommand::Retry { build } => {
            let id = build.id(&c)?;
            let v = c.post_as(&format!("retrying build {build}"), &format!("/api/v1/builds/{id}/retry"), json!({}))?;
            print(args.format, &v, |v| {
                format!(
                    "build {} (id {}) queued: attempt {} of build {build}\n",
                    reference(v),
                    s(&v["id"]),
                    s(&v["attempt"])
                )
            });
            Ok(0)
        }
    }
}

fn show_text(v: &Value) -> String {
    let b = &v["build"];
    let mut out = format!(
        "build {} (id {}): {} (attempt {}, {} {})\n",
        reference(b),
        s(&b["id"]),
        s(&b["status"]),
        s(&b["attempt"]),
        s(&b["branch"]),
        s(&b["commit_sha"]).chars().take(8).collect::<String>()
    );
    if let Some(subject) = b["commit_message"].as_str().and_then(|m| m.lines().next()).filter(|m| !m.is_empty()) {
        out.push_str(&format!("  {subject} ({})\n", s(&b["commit_author"])));
    }
    let total = took(b).map(|t| format!(", took {t}")).unwrap_or_default();
    out.push_str(&format!("  triggered by {} ({}){total}\n", s(&b["trigger"]), s(&b["who"])));
    if let Some(r) = b["reason"].as_str() {
        out.push_str(&format!("  {r}\n"));
    }
    for w in v["policy"]["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("  policy warning: {}\n", s(w)));
    }
    for j in v["jobs"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}", job_line(j)));
        for st in j["steps"].as_array().into_iter().flatten() {
            let step_took = took(st).map(|t| format!(" ({t})")).unwrap_or_default();
            out.push_str(&format!("    {} {}{step_took}\n", s(&st["status"]), s(&st["name"])));
        }
    }
    out
}

fn print_line(format: Format, job: &str, line: &Value) {
    match format {
        Format::Json => println!("{}", json!({"job": job, "line": line})),
        Format::Text => println!("[{job}] {}", line["text"].as_str().unwrap_or("")),
    }
}

/// One server-sent event.
struct SseEvent {
    kind: String,
    data: String,
    id: Option<String>,
}

/// Reads server-sent events from `body` and hands each to `on` until it returns `true` (done:
/// `Ok(true)`) or the stream ends or breaks (`Ok(false)`).
fn read_events(body: impl std::io::Read, mut on: impl FnMut(SseEvent) -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    let reader = BufReader::new(body);
    let (mut kind, mut data, mut id) = (String::new(), String::new(), None);
    for line in reader.lines() {
        let Ok(line) = line else { return Ok(false) };
        if line.is_empty() {
            if !kind.is_empty() || !data.is_empty() {
                let event =
                    SseEvent { kind: std::mem::take(&mut kind), data: std::mem::take(&mut data), id: id.take() };
                if on(event)? {
                    return Ok(true);
                }
            }
            kind.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_string());
        }
    }
    Ok(false)
}

/// Follows a job's log over SSE, reconnecting with `Last-Event-ID` after a drop.
fn follow_logs(c: &Client, format: Format, id: i64, job: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/builds/{id}/jobs/{}/logs/stream", enc(job));
    let mut last: Option<String> = None;
    for _attempt in 0..100 {
        let resp = match c.stream(&path, last.as_deref(), None) {
            Ok(r) => r,
            Err(StreamError::Refused(e)) => return Err(e.context(format!("following the log of job `{job}`"))),
            Err(StreamError::Unreachable(_)) => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let ended = read_events(resp.into_body().into_reader(), |e| {
            if e.kind == "end" {
                return Ok(true);
            }
            if e.kind == "line"
                && let Ok(v) = serde_json::from_str::<Value>(&e.data)
            {
                print_line(format, job, &v);
                last = e.id;
            }
            Ok(false)
        })?;
        if ended {
            return Ok(());
        }
    }
    bail!("lost the log stream of job `{job}` too many times")
}

/// How long one connection to the event stream is kept before it is opened again (resuming at
/// the last event): bounds the wait on a connection that died without the client noticing.
const STREAM_WINDOW: Duration = Duration::from_secs(60);

/// Follows build `id`'s event stream until the build is final, printing each job's result as it
/// ends (text format); returns the build as `GET /api/v1/builds/{id}` answers once it is final.
/// After a drop it reads the build once (final: done) and reconnects at the last event.
fn wait_for(c: &Client, format: Format, id: i64) -> anyhow::Result<Value> {
    let path = format!("/api/v1/builds/{id}/events");
    let build_path = format!("/api/v1/builds/{id}");
    let mut printed: HashSet<String> = HashSet::new();
    let mut report = |detail: &Value| {
        for j in detail["jobs"].as_array().into_iter().flatten() {
            let key = s(&j["job"]["job_key"]);
            if is_final(j["job"]["status"].as_str().unwrap_or("")) && printed.insert(key) && format == Format::Text {
                print!("{}", job_line(j));
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
        }
    };
    let mut last: Option<String> = None;
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let finished = match c.stream(&path, last.as_deref(), Some(STREAM_WINDOW)) {
            Ok(resp) => {
                failing_since = None;
                backoff = Duration::from_millis(100);
                read_events(resp.into_body().into_reader(), |e| {
                    if e.id.is_some() {
                        last = e.id.clone();
                    }
                    let payload: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                    let status = payload["payload"]["status"].as_str().unwrap_or("");
                    match e.kind.as_str() {
                        "end" => Ok(true),
                        "build_status" if is_final(status) => Ok(true),
                        "job_status" if is_final(status) => {
                            // The build says how long the job took; a failed read is made
                            // good by the next event or the end.
                            if let Ok(detail) = c.get(&build_path) {
                                report(&detail);
                            }
                            Ok(false)
                        }
                        _ => Ok(false),
                    }
                })?
            }
            Err(StreamError::Refused(e)) => return Err(e.context(format!("following build {id}"))),
            Err(StreamError::Unreachable(e)) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    return Err(e.context(format!("lost the event stream of build {id} for a minute")));
                }
                false
            }
        };
        // Finished, dropped or refused: the build itself says whether it is over.
        match c.get(&build_path) {
            Ok(detail) if finished || is_final(detail["build"]["status"].as_str().unwrap_or("")) => {
                report(&detail);
                return Ok(detail);
            }
            Ok(detail) => report(&detail),
            Err(e) if failing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) => return Err(e),
            Err(_) => {
                failing_since.get_or_insert_with(Instant::now);
            }
        }
        std::thread::sleep(backoff);
        if failing_since.is_some() {
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_references_parse() {
        assert_eq!("42".parse(), Ok(BuildRef::Id(42)));
        assert_eq!("hello#3".parse(), Ok(BuildRef::Number { job: "hello".into(), number: 3 }));
        assert_eq!("a#b#7".parse(), Ok(BuildRef::Number { job: "a#b".into(), number: 7 }));
        assert_eq!("hello#3".parse::<BuildRef>().map(|r| r.to_string()), Ok("hello#3".to_string()));
    }

    #[test]
    fn bad_build_references_name_themselves() {
        let err = |t: &str| t.parse::<BuildRef>().unwrap_err().to_string();
        assert_eq!(err("hello#"), "`hello#` has no build number after `#`: give JOB#NUMBER (hello#3)");
        assert_eq!(err("hello#x"), "`hello#x`: `x` is not a build number (1, 2, 3, ...)");
        assert_eq!(err("hello#0"), "`hello#0`: `0` is not a build number (1, 2, 3, ...)");
        assert_eq!(err("hello#-1"), "`hello#-1`: `-1` is not a build number (1, 2, 3, ...)");
        assert_eq!(err("#3"), "`#3` names no job before `#`: give JOB#NUMBER (hello#3)");
        assert_eq!(err("hello"), "`hello` is not a build: give a build id (42) or JOB#NUMBER (hello#3)");
        assert_eq!(err("0"), "`0` is not a build: give a build id (42) or JOB#NUMBER (hello#3)");
        assert!(err("hello#99999999999999999999").contains("is not a build number"));
    }

    #[test]
    fn durations_and_results_read_like_people_say_them() {
        let j = json!({"job": {"job_key": "test", "status": "success", "started_ms": 1_000, "finished_ms": 3_000}});
        assert_eq!(job_line(&j), "job test: success (2s)\n");
        let j = json!({"job": {"job_key": "lint", "status": "failure", "reason": "step `x` exited with code 1",
            "started_ms": 0, "finished_ms": 65_000}});
        assert_eq!(job_line(&j), "job lint: failure (1m 5s): step `x` exited with code 1\n");
        let j = json!({"job": {"job_key": "q", "status": "running", "started_ms": 0, "finished_ms": null}});
        assert_eq!(job_line(&j), "job q: running\n");
        let b = json!({"build": {"id": 42, "job": "hello", "number": 3, "status": "success",
            "queued_ms": 0, "started_ms": 100, "finished_ms": 450}});
        assert_eq!(final_line(&b), "build hello#3 (id 42): success (350ms)\n");
    }
}
