//! Docker execution through the engine API (bollard): one sandbox per job made of a private
//! bridge network, the service containers and a hardened job container in which every step
//! runs through the exec API; labels on everything and a reaper so nothing outlives its job.
//!
//! # Layout
//! - [`spec`]: the container and network definitions, hardening included (pure data).
//! - [`sandbox`]: starting and tearing down a job's sandbox, image pulls, services.
//! - `runner`: PID 1 of a job container, which runs the steps it is sent on its stdin.
//! - [`step`]: one step through the runner, with output capture, timeout, cancel and `oom`
//!   detection.
//! - [`reaper`]: removal of leftovers whose owner is gone.

mod reaper;
mod runner;
mod sandbox;
pub mod spec;
mod step;

pub use reaper::ReapReport;
pub use sandbox::{JobSandbox, SandboxRequest, ServiceRequest};

use bollard::Docker;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use tokio::sync::OnceCell;

/// Label holding the build of an object.
pub const LABEL_BUILD: &str = "chengis.build";
/// Label holding the job of an object.
pub const LABEL_JOB: &str = "chengis.job";
/// Label holding the agent that created an object.
pub const LABEL_AGENT: &str = "chengis.agent";
/// Label holding the lease (or local run) an object belongs to.
pub const LABEL_LEASE: &str = "chengis.lease";
/// Label holding the agent process (instance) that created an object.
pub const LABEL_INSTANCE: &str = "chengis.instance";
/// Label marking a named cache volume (kept across builds).
pub const LABEL_CACHE_VOLUME: &str = "chengis.cache-volume";

/// Something the Docker engine refused or could not do, said so that a pipeline author can act.
#[derive(Debug, Error)]
pub enum DockerError {
    /// The engine cannot be reached.
    #[error("cannot reach the Docker engine (is it running, and is DOCKER_HOST right?): {0}")]
    Connect(String),
    /// The image is missing and the pull policy forbids pulling it.
    #[error("image `{image}` is not on the Docker engine and `pull: never` forbids pulling it")]
    ImageMissing {
        /// The image.
        image: String,
    },
    /// Pulling the image failed.
    #[error("image `{image}` is not on the Docker engine and cannot be pulled: {reason}")]
    Pull {
        /// The image.
        image: String,
        /// What the engine said.
        reason: String,
    },
    /// The job asks for privileges the operator did not grant.
    #[error("job `{job}` asks for `{what}`, which the operator has not allowed for it ({how})")]
    NotAllowed {
        /// The job.
        job: String,
        /// What it asked for.
        what: String,
        /// How an operator allows it.
        how: String,
    },
    /// A service did not become ready.
    #[error("service `{name}` {reason}")]
    Service {
        /// The service.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// An engine call failed.
    #[error("{action}: {source}")]
    Api {
        /// What we were doing.
        action: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

impl DockerError {
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |source| DockerError::Api { action, source }
    }
}

/// What the operator decides about containers: default limits and the jobs allowed to run
/// privileged or with the Docker socket.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Memory limit of jobs that set none (bytes; `None`: no limit).
    pub default_memory: Option<u64>,
    /// CPU limit of jobs that set none (billionths of a CPU; `None`: no limit).
    pub default_nano_cpus: Option<u64>,
    /// Process limit of jobs that set none.
    pub default_pids: u32,
    /// Jobs allowed `privileged: true` (`*` for all).
    pub allow_privileged: Vec<String>,
    /// Jobs allowed `docker-socket: true` (`*` for all).
    pub allow_docker_socket: Vec<String>,
    /// How long services may take to become ready when the pipeline sets no `wait-timeout`.
    pub service_timeout: std::time::Duration,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            default_memory: None,
            default_nano_cpus: None,
            default_pids: 4096,
            allow_privileged: Vec::new(),
            allow_docker_socket: Vec::new(),
            service_timeout: std::time::Duration::from_secs(60),
        }
    }
}

impl DockerSettings {
    /// True when `job` is in `list` (or the list holds `*`).
    pub fn allows(list: &[String], job: &str) -> bool {
        list.iter().any(|j| j == "*" || j == job)
    }
}

/// The identity stamped on every object a sandbox creates.
#[derive(Debug, Clone, Default)]
pub struct SandboxLabels {
    /// Build id (or run number for local runs).
    pub build: String,
    /// Job id within the build.
    pub job: String,
    /// Lease (`<build job id>:<fencing token>`) or, for local runs, `pid:<pid>`.
    pub lease: String,
}

/// The process-wide Docker runtime of one agent: a lazily connected client, the operator's
/// settings, and the agent's identity for labels and reaping.
pub struct DockerRuntime {
    client: OnceCell<Result<Docker, String>>,
    settings: DockerSettings,
    agent: String,
    instance: String,
    counter: AtomicU64,
}

impl DockerRuntime {
    /// A runtime for `agent`; nothing is contacted until the first job needs Docker.
    pub fn new(agent: impl Into<String>, settings: DockerSettings) -> Arc<DockerRuntime> {
        Arc::new(DockerRuntime {
            client: OnceCell::new(),
            settings,
            agent: agent.into(),
            instance: random_token(),
            counter: AtomicU64::new(0),
        })
    }

    /// The agent name on labels.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// This process's instance id on labels.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The operator's settings.
    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    /// The connected client (API version negotiated with the engine).
    pub async fn client(&self) -> Result<&Docker, DockerError> {
        let result = self
            .client
            .get_or_init(|| async {
                let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
                docker.negotiate_version().await.map_err(|e| e.to_string())
            })
            .await;
        result.as_ref().map_err(|e| DockerError::Connect(e.clone()))
    }

    /// The labels of an object created for `owner`.
    pub(crate) fn labels(&self, owner: &SandboxLabels) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_BUILD.to_string(), owner.build.clone()),
            (LABEL_JOB.to_string(), owner.job.clone()),
            (LABEL_AGENT.to_string(), self.agent.clone()),
            (LABEL_LEASE.to_string(), owner.lease.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ])
    }

    /// A unique name for a new object: `chengis-<instance>-<n>-<what>`.
    pub(crate) fn name(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("chengis-{}-{n}-{what}", &self.instance[..12])
    }
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").field("agent", &self.agent).field("instance", &self.instance).finish()
    }
}

/// A random-enough token (24 hex digits): sha256 of pid, time, a counter and a stack address.
pub(crate) fn random_token() -> String {
    use sha2::{Digest, Sha256};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let marker = 0u8;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}-{}-{n}-{:p}", std::process::id(), now.as_nanos(), &marker);
    let digest = Sha256::digest(seed.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}
