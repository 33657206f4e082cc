//! The agent protocol: the lease an agent holds, the reports it sends, and its lease calls, one
//! Rust type each: what an agent sends about a lease it holds and what the server answers. The remote agent's client and the server's route both
//! speak these types; neither builds or picks apart JSON by hand.
//!
//! On the wire a call is `POST /api/v1/agent/leases/{entry}/{action}` with the call's fields
//! and `lease` in one JSON object; the answer is the call's [`LeaseCall::Answer`].

use crate::log::LogLine;
use crate::records::{ArtifactFile, CacheEntry, NewArtifactFile, PluginRecord};
use crate::reports::TestSuiteReport;
use crate::status::Status;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A claim on a queue row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The queue row.
    pub entry: i64,
    /// The build job to run.
    pub build_job_id: i64,
    /// The fencing token: writes with an older one are refused.
    pub token: i64,
    /// When the lease runs out unless renewed (ms since the epoch).
    pub expires_ms: i64,
    /// How many times the row has been leased, this one included.
    pub attempt: i64,
    /// The agent whose expired lease this one replaces (it was lost), if any.
    pub lost_from: Option<String>,
    /// The lease's secret, sent only to the agent that took the lease: every call about the
    /// lease presents it (in the body, or in the [`LEASE_SECRET_HEADER`] of a transfer).
    /// Absent from leases of older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<LeaseSecret>,
}

/// The header that carries a lease's secret on blob, cache and plugin transfers (a header, not
/// the URL's query, so that no access log or proxy records it).
pub const LEASE_SECRET_HEADER: &str = "Chengis-Lease-Secret";

/// A lease's secret (256 random bits in hex). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseSecret(pub String);

impl LeaseSecret {
    /// The secret itself, to send to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for LeaseSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseSecret(..)")
    }
}

/// Log lines and updates of a running job sent together (the lines first).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Reports {
    /// Numbered log lines, consecutive.
    #[serde(default)]
    pub lines: Vec<LogLine>,
    /// Step and test updates, in the order they happened.
    #[serde(default)]
    pub updates: Vec<Update>,
}

impl Reports {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.updates.is_empty()
    }
}

/// What an agent reports about a running job besides log lines.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Update {
    /// A step started.
    StepStarted {
        /// Step index.
        step: usize,
        /// Display name.
        name: String,
        /// When (ms since the epoch).
        at_ms: i64,
        /// Number of the step's first log line (absent from older agents).
        #[serde(default)]
        first_line: Option<u64>,
    },
    /// A step finished.
    StepFinished {
        /// Step index.
        step: usize,
        /// Display name.
        name: String,
        /// Result.
        status: Status,
        /// Exit code, when the process exited.
        exit_code: Option<i32>,
        /// Why, when it did not succeed.
        reason: Option<String>,
        /// When it started (ms since the epoch).
        started_ms: Option<i64>,
        /// When it ended.
        at_ms: i64,
    },
    /// A step reported test results.
    Tests {
        /// Step index.
        step: usize,
        /// The suites.
        suites: Vec<TestSuiteReport>,
    },
}

/// The lease calls, as named in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseAction {
    /// [`Renew`].
    Renew,
    /// [`LogOffset`].
    LogOffset,
    /// [`Log`].
    Log,
    /// [`Update`] (one step or test update).
    Update,
    /// [`Reports`] (lines and updates together).
    Report,
    /// [`Finish`].
    Finish,
    /// [`Downloads`].
    Downloads,
    /// [`Artifacts`].
    Artifacts,
    /// [`CacheFind`].
    CacheFind,
    /// [`ResultFind`].
    ResultFind,
    /// [`ResultRecord`].
    ResultRecord,
    /// [`Plugins`].
    Plugins,
}

impl LeaseAction {
    /// Every action, for error messages.
    pub const ALL: [LeaseAction; 12] = [
        LeaseAction::Renew,
        LeaseAction::LogOffset,
        LeaseAction::Log,
        LeaseAction::Update,
        LeaseAction::Report,
        LeaseAction::Finish,
        LeaseAction::Downloads,
        LeaseAction::Artifacts,
        LeaseAction::CacheFind,
        LeaseAction::ResultFind,
        LeaseAction::ResultRecord,
        LeaseAction::Plugins,
    ];

    /// The name in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseAction::Renew => "renew",
            LeaseAction::LogOffset => "log-offset",
            LeaseAction::Log => "log",
            LeaseAction::Update => "update",
            LeaseAction::Report => "report",
            LeaseAction::Finish => "finish",
            LeaseAction::Downloads => "downloads",
            LeaseAction::Artifacts => "artifacts",
            LeaseAction::CacheFind => "cache-find",
            LeaseAction::ResultFind => "result-find",
            LeaseAction::ResultRecord => "result-record",
            LeaseAction::Plugins => "plugins",
        }
    }

    /// The action named `name` in a URL.
    pub fn parse(name: &str) -> Option<LeaseAction> {
        LeaseAction::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// A call about a held lease: its action and the type of its answer.
pub trait LeaseCall: Serialize + DeserializeOwned {
    /// The action it is.
    const ACTION: LeaseAction;
    /// What the server answers.
    type Answer: Serialize + DeserializeOwned;
}

/// The body of a lease call: the lease and the call's own fields.
#[derive(Debug, Deserialize)]
pub struct LeaseBody {
    /// The lease the call is about.
    pub lease: Lease,
    /// The call's fields.
    #[serde(flatten)]
    pub rest: Value,
}

impl LeaseBody {
    /// The call in the body, or why it is not one.
    pub fn call<C: LeaseCall>(&self) -> Result<C, String> {
        serde_json::from_value(self.rest.clone()).map_err(|e| format!("invalid {} call: {e}", C::ACTION.as_str()))
    }
}

/// The JSON of `call` about `lease`, as sent.
pub fn body<C: LeaseCall>(lease: &Lease, call: &C) -> Value {
    let mut body = serde_json::to_value(call).unwrap_or_else(|_| Value::Object(Default::default()));
    if !body.is_object() {
        body = Value::Object(Default::default());
    }
    body["lease"] = serde_json::to_value(lease).unwrap_or_default();
    body
}

/// An answer with nothing in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {}

/// Extend the lease.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Renew {}

/// Whether the job should stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewAnswer {
    /// Cancellation was requested.
    pub cancel: bool,
}

impl LeaseCall for Renew {
    const ACTION: LeaseAction = LeaseAction::Renew;
    type Answer = RenewAnswer;
}

/// The number the job's next log line gets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogOffset {}

/// The next line number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogOffsetAnswer {
    /// The next free line number.
    pub next: u64,
}

impl LeaseCall for LogOffset {
    const ACTION: LeaseAction = LeaseAction::LogOffset;
    type Answer = LogOffsetAnswer;
}

/// Numbered log lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Log {
    /// Consecutive lines.
    pub lines: Vec<LogLine>,
}

/// The last line number stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acknowledged {
    /// The number of the last line stored (0: none).
    pub acknowledged: u64,
}

impl LeaseCall for Log {
    const ACTION: LeaseAction = LeaseAction::Log;
    type Answer = Acknowledged;
}

impl LeaseCall for Update {
    const ACTION: LeaseAction = LeaseAction::Update;
    type Answer = Done;
}

impl LeaseCall for Reports {
    const ACTION: LeaseAction = LeaseAction::Report;
    type Answer = Acknowledged;
}

/// The job's end, with the reports not sent yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finish {
    /// Its final status.
    pub status: Status,
    /// Why, when it did not succeed.
    pub reason: Option<String>,
    /// Its outputs, when it ran.
    pub outputs: Option<Value>,
    /// The sandbox it ran in, when it ran.
    pub sandbox: Option<String>,
    /// What the agent had not reported when the steps ended.
    #[serde(flatten)]
    pub unsent: Reports,
}

impl LeaseCall for Finish {
    const ACTION: LeaseAction = LeaseAction::Finish;
    type Answer = Done;
}

/// The artifact files the job's `download:` names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Downloads {}

/// The files, or why the job cannot start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownloadsAnswer {
    /// The files to place.
    #[serde(default)]
    pub files: Vec<ArtifactFile>,
    /// Why the job cannot start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LeaseCall for Downloads {
    const ACTION: LeaseAction = LeaseAction::Downloads;
    type Answer = DownloadsAnswer;
}

/// Artifact files the agent uploaded, to record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Artifacts {
    /// The files.
    pub files: Vec<NewArtifactFile>,
}

/// How many were recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactsAnswer {
    /// Files recorded.
    pub kept: usize,
}

impl LeaseCall for Artifacts {
    const ACTION: LeaseAction = LeaseAction::Artifacts;
    type Answer = ArtifactsAnswer;
}

/// The cache entry for a key (or one of its restore keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheFind {
    /// The exact key.
    pub key: String,
    /// Prefixes to fall back to.
    #[serde(default)]
    pub restore_keys: Vec<String>,
}

/// The entry found, or the log lines saying why there is none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheFindAnswer {
    /// The entry to download.
    #[serde(default)]
    pub entry: Option<CacheEntry>,
    /// Why there is none.
    #[serde(default)]
    pub lines: Vec<String>,
}

impl LeaseCall for CacheFind {
    const ACTION: LeaseAction = LeaseAction::CacheFind;
    type Answer = CacheFindAnswer;
}

/// Whether an earlier result of the same stage can stand for this job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultFind {
    /// The stage's fingerprint (64 hex digits).
    pub fingerprint: String,
}

/// Whether the earlier result was reused (the job then ended on the server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultFindAnswer {
    /// Reused: the agent stops here.
    pub reused: bool,
}

impl LeaseCall for ResultFind {
    const ACTION: LeaseAction = LeaseAction::ResultFind;
    type Answer = ResultFindAnswer;
}

/// Records this job's result for its stage fingerprint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The stage's fingerprint (64 hex digits).
    pub fingerprint: String,
}

/// Whether it was recorded (builds of forks record nothing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRecordAnswer {
    /// Recorded.
    pub recorded: bool,
}

impl LeaseCall for ResultRecord {
    const ACTION: LeaseAction = LeaseAction::ResultRecord;
    type Answer = ResultRecordAnswer;
}

/// The step executors the job's `uses:` steps name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plugins {
    /// `name` or `name@version`.
    pub references: Vec<String>,
}

/// One allowed step executor with its server-side config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedPlugin {
    /// Its allowlist record (digest, grants).
    pub record: PluginRecord,
    /// Its server-side config.
    #[serde(default)]
    pub config: serde_json::Map<String, Value>,
}

/// The allowed ones, and why the others are not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PluginsAnswer {
    /// Allowed, with grants and config.
    #[serde(default)]
    pub plugins: Vec<ResolvedPlugin>,
    /// Not allowed or unknown, by name, with why.
    #[serde(default)]
    pub unresolved: BTreeMap<String, String>,
    /// The server runs no plugin platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LeaseCall for Plugins {
    const ACTION: LeaseAction = LeaseAction::Plugins;
    type Answer = PluginsAnswer;
}

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AgentInfo {
    /// Unique name (lease owner).
    pub name: String,
    /// Labels a job's `runs-on` must be a subset of.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Jobs at once.
    pub executors: i64,
    /// Operating system (`linux`, ...).
    #[serde(default)]
    pub os: String,
    /// CPU architecture (`x86_64`, ...).
    #[serde(default)]
    pub arch: String,
    /// CPU cores.
    #[serde(default)]
    pub cpus: i64,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: i64,
    /// Whether a Docker engine answers on the agent's host.
    #[serde(default)]
    pub docker: bool,
    /// The agent's Chengis version.
    #[serde(default)]
    pub version: String,
}

/// What a job needs from the agent that runs it (`resources:` of the pipeline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Needs {
    /// Thousandths of a CPU core (0: no requirement).
    pub cpu_millis: i64,
    /// Memory in MiB (0: no requirement).
    pub memory_mb: i64,
}

impl Needs {
    /// What a planned job's `resources:` ask of its agent.
    pub fn of(spec: &chengis_pipeline::PlannedJob) -> Needs {
        Needs {
            cpu_millis: spec.container.nano_cpus.map_or(0, |n| (n / 1_000_000) as i64),
            memory_mb: spec.container.memory.map_or(0, |m| (m >> 20) as i64),
        }
    }

    /// Whether the job fits in `free` resources right now.
    pub fn fits_in(&self, free: Needs) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_mb <= free.memory_mb
    }

    /// Whether an agent with `cpus` cores and `memory_mb` MiB (0: unknown, fits all) can ever
    /// run the job.
    pub fn fits(&self, cpus: i64, memory_mb: i64) -> bool {
        (cpus <= 0 || self.cpu_millis <= cpus * 1000) && (memory_mb <= 0 || self.memory_mb <= memory_mb)
    }
}

/// What the server tells an agent that registered (`POST /api/v1/agent/register` with its
/// [`AgentInfo`]).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registered {
    /// Lease duration in ms.
    pub lease_ttl_ms: u64,
    /// How often to renew, in ms.
    pub renew_every_ms: u64,
}

/// A lease poll (`POST /api/v1/agent/lease`); the answer holds the prepared jobs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeasePoll {
    /// Most jobs to take now.
    pub capacity: usize,
    /// The agent's labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Free resources (omitted: no limit).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub free: Option<Needs>,
    /// Longest wait for work, in ms (at most half the time after which a silent agent is offline).
    #[serde(default)]
    pub wait_ms: u64,
}

/// An agent's state change (`POST /api/v1/agent/state`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// `draining` (running jobs finish, no new ones) or `drained` (stopped).
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_its_name() {
        for a in LeaseAction::ALL {
            assert_eq!(LeaseAction::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), Value::String(a.as_str().into()));
        }
        assert_eq!(LeaseAction::parse("drop-tables"), None);
    }

    #[test]
    fn a_body_carries_the_lease_beside_the_call() {
        let lease = Lease {
            entry: 3,
            build_job_id: 7,
            token: 2,
            expires_ms: 9,
            attempt: 1,
            lost_from: None,
            secret: Some(LeaseSecret("s3cr3t".into())),
        };
        let b = body(&lease, &ResultFind { fingerprint: "ab".into() });
        let parsed: LeaseBody = serde_json::from_value(b).unwrap();
        assert_eq!(parsed.lease, lease);
        assert_eq!(parsed.call::<ResultFind>().unwrap().fingerprint, "ab");
        let err = parsed.call::<Artifacts>().unwrap_err();
        assert!(err.starts_with("invalid artifacts call"), "{err}");
    }

    #[test]
    fn a_lease_secret_travels_in_json_but_never_in_debug_output() {
        let lease = Lease {
            entry: 1,
            build_job_id: 1,
            token: 1,
            expires_ms: 1,
            attempt: 1,
            lost_from: None,
            secret: Some(LeaseSecret("chgl_very_secret".into())),
        };
        assert_eq!(serde_json::to_value(&lease).unwrap()["secret"], "chgl_very_secret");
        assert!(!format!("{lease:?}").contains("very_secret"), "{lease:?}");
        let old: Lease = serde_json::from_str(
            r#"{"entry":1,"build_job_id":1,"token":1,"expires_ms":1,"attempt":1,"lost_from":null}"#,
        )
        .unwrap();
        assert_eq!(old.secret, None);
    }
}
