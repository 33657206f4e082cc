//! Where `uses:` steps find their step executors: a trait the job runner asks, answered by the
//! server's trust allowlist (the embedded agent and `chengis run`) or by a remote agent's
//! in-memory copy of the server's decisions (`remote::plugins`). Also the rules both
//! share: the operator's per-plugin limits and which secrets a plugin's grants allow.

use chengis_model::records::PluginRecord;
use chengis_plugin_host::{Limits, Plugin};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Server-side config key: the per-call time limit of a plugin.
pub const LIMIT_TIMEOUT: &str = "chengis.timeout";
/// Server-side config key: the memory cap of a plugin.
pub const LIMIT_MEMORY: &str = "chengis.memory";

/// An allowed step executor, loaded, with the plugin's server-side config (the host's own
/// `chengis.*` keys left out).
#[derive(Clone)]
pub struct StepExecutor {
    /// Its allowlist record (grants).
    pub record: PluginRecord,
    /// The loaded component.
    pub plugin: Plugin,
    /// Its server-side configuration.
    pub config: Vec<(String, String)>,
}

/// A boxed future, for a trait the runner holds as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a job runner asks for a `uses:` step.
pub trait StepExecutors: Send + Sync + std::fmt::Debug {
    /// The allowed step executor `reference` (`name` or `name@version`) names, loaded with step
    /// limits; `Err`: why it cannot run (unknown, not allowed, modified), said for the log.
    fn step_executor<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<StepExecutor, String>>;
}

/// `base` with the operator's per-plugin overrides from its server-side config:
/// `chengis.timeout` (a duration such as `30s`) and `chengis.memory` (a size such as `128m`).
/// These keys are the host's and never reach the plugin.
pub fn limits_from_config(name: &str, config: &Map<String, Value>, base: Limits) -> Limits {
    let text = |key: &str| config.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let mut limits = base;
    if let Some(t) = text(LIMIT_TIMEOUT) {
        match chengis_pipeline::duration::parse_duration(&t) {
            Ok(d) => limits.timeout = d,
            Err(e) => tracing::warn!(plugin = %name, "{LIMIT_TIMEOUT} `{t}`: {e}"),
        }
    }
    if let Some(m) = text(LIMIT_MEMORY) {
        match chengis_pipeline::container::parse_memory(&m) {
            Ok(bytes) => limits.memory_bytes = bytes as usize,
            Err(e) => tracing::warn!(plugin = %name, "{LIMIT_MEMORY} `{m}`: {e}"),
        }
    }
    limits
}

/// The base limits of a step executor: a step is bounded by its own `timeout:`, and its outputs
/// and test reports (thousands of cases from a junit step) may be larger than a notification's.
pub fn step_limits(base: Limits) -> Limits {
    Limits { timeout: Duration::from_secs(24 * 3600), output_bytes: 32 * 1024 * 1024, ..base }
}

/// A plugin's server-side config as it reaches the plugin: the host's `chengis.*` keys left
/// out, every value as text.
pub fn plugin_config(config: &Map<String, Value>) -> Vec<(String, String)> {
    config
        .iter()
        .filter(|(k, _)| !k.starts_with("chengis."))
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect()
}

/// Whether the granted capabilities of `record` include secret `name`.
pub fn secret_granted(record: &PluginRecord, name: &str) -> bool {
    record.granted.iter().any(|g| g == &format!("secret:{name}"))
}
