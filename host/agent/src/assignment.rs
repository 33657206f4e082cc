//! What the server hands an agent for one leased job ([`Assignment`]): the lease, the commit to
//! check out, the planned job, its secrets and expression contexts, and the server's artifact
//! rules. The same value reaches the embedded agent in-process and a remote agent as JSON.

use crate::context;
use chengis_model::protocol::Lease;
use chengis_pipeline::PlannedJob;
use serde_json::Value;
use std::collections::BTreeMap;

/// Everything an agent needs to run one leased job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// The lease (its fencing token goes with every write).
    pub lease: Lease,
    /// The build.
    pub build_id: i64,
    /// The build's number.
    pub build_number: i64,
    /// The job (server-side job name).
    pub job: String,
    /// The repository to check out.
    pub repo_url: String,
    /// Whether to check out submodules.
    pub submodules: bool,
    /// The commit to build.
    pub commit: String,
    /// The branch (or `refs/tags/...`), empty when unknown.
    pub branch: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline-level `env:`.
    pub plan_env: indexmap::IndexMap<String, chengis_pipeline::Text>,
    /// The planned job.
    pub spec: PlannedJob,
    /// The job's secrets (masked in every log line).
    pub secrets: BTreeMap<String, String>,
    /// Expression contexts: `params`, `matrix`, `needs`, `build`, `git`.
    pub contexts: BTreeMap<String, Value>,
    /// Whether every needed job succeeded (what `success()` answers).
    pub needs_ok: bool,
    /// The server's artifact and cache settings.
    pub artifact_rules: ArtifactRules,
    /// The build as step-executor plugins see it.
    #[serde(skip)]
    pub plugin_build: Option<chengis_plugin_host::types::Build>,
    /// The number the job's next log line gets (a job run again continues its log); absent
    /// from older servers, which the agent then asks.
    #[serde(default)]
    pub first_line: Option<u64>,
}

/// The server's artifact settings, for remote agents.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRules {
    /// Default lifetime of artifacts without `expire-in` (ms; none: kept until deleted).
    pub retention_ms: Option<u64>,
    /// Most bytes of artifacts per job.
    pub max_job: u64,
    /// Over the cap the job fails (else the artifact that crossed it is left out).
    pub fail_over_cap: bool,
    /// Largest cache archive.
    pub cache_max_entry: u64,
}

impl Assignment {
    /// The expression contexts of the job (`git` replaced when the checkout found more).
    pub fn contexts(&self, git: Option<Value>) -> context::Contexts {
        let get = |k: &str| self.contexts.get(k).cloned().unwrap_or(Value::Null);
        context::Contexts {
            params: get("params"),
            secrets: Value::Object(self.secrets.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
            matrix: get("matrix"),
            needs: get("needs"),
            build: get("build"),
            git: git.unwrap_or_else(|| get("git")),
            status: Some(if self.needs_ok {
                chengis_pipeline::expr::Status::Success
            } else {
                chengis_pipeline::expr::Status::Failure
            }),
            ..context::Contexts::default()
        }
    }
}

/// The answer to a lease poll: the jobs leased to the agent, prepared.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Leased {
    /// Prepared jobs (lease, checkout, spec, contexts, secrets).
    pub assignments: Vec<Assignment>,
}
