//! The server side of the plugin platform: the trust allowlist kept in the store, installing and
//! inspecting components, the builtin catalogue, and the plugin calls the engine makes (`uses:`
//! steps, notifiers, SCM status reporters, policies). The wasmtime runtime itself lives in the
//! `chengis-plugin-host` crate.
//!
//! # Layout
//! - this file: [`PluginService`], the allowlist and component files; it answers the job
//!   runner's [`StepExecutors`] questions for the embedded agent and `chengis run`.
//! - [`dispatch`]: build events and plans turned into notifier, SCM status and policy calls.
//!
//! `uses:` steps themselves run in the agent crate (`chengis_agent::plugin_step`).

pub mod dispatch;

use crate::store::plugins::{NewPlugin, PluginRecord, TrustState};
use crate::store::{Store, StoreError};
use chengis_plugin_host::{
    Allowlist, Capability, Digest, Grants, Inspection, Limits, Plugin, PluginError, Runtime, RuntimeError, World, types,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// The builtin plugins shipped inside the binary: file name and component bytes.
pub const BUILTINS: &[(&str, &[u8])] = &[
    ("console.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_console.wasm"))),
    ("script.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_script.wasm"))),
    ("slack.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_slack.wasm"))),
    ("webhook.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_webhook.wasm"))),
    ("email.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_email.wasm"))),
    ("github-status.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_github_status.wasm"))),
    ("gitlab-status.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_gitlab_status.wasm"))),
    ("gitea-status.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_gitea_status.wasm"))),
    ("bitbucket-status.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_bitbucket_status.wasm"))),
    ("image-policy.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_image_policy.wasm"))),
    ("branch-protection.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_branch_protection.wasm"))),
    ("junit.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_junit.wasm"))),
    ("http.wasm", include_bytes!(concat!(env!("OUT_DIR"), "/chengis_plugin_http.wasm"))),
];

pub use chengis_agent::executors::{LIMIT_MEMORY, LIMIT_TIMEOUT, StepExecutor, StepExecutors};

/// What can go wrong managing or calling plugins, said so that an operator can act.
#[derive(Debug, Error)]
pub enum PluginServiceError {
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The plugin failed or was refused by the runtime.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No plugin answers to the reference.
    #[error("no {world} plugin `{reference}` is installed; `chengis plugin list` shows what is")]
    NotFound {
        /// The reference (`name` or `name@version`).
        reference: String,
        /// The world looked for.
        world: &'static str,
    },
    /// The plugin is installed but not allowed.
    #[error(
        "plugin `{name}` {version} is {state} in the trust allowlist; an admin can allow it with `chengis plugin allow {name}`"
    )]
    NotAllowed {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// Its state.
        state: &'static str,
    },
    /// The stored component's bytes no longer match the digest that was allowed.
    #[error(
        "plugin `{name}` {version}: {path} does not match the allowed digest {digest}; it was modified and is refused"
    )]
    Tampered {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// The file.
        path: String,
        /// The allowed digest.
        digest: String,
    },
    /// A grant could not be parsed.
    #[error("invalid grant: {0}")]
    Grant(String),
}

/// The plugin platform of one server: runtime, allowlist and loaded plugins.
pub struct PluginService {
    runtime: Runtime,
    store: Store,
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Plugin>>,
    limits: Limits,
    announcer: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Announcement>>,
    public_url: std::sync::OnceLock<String>,
    /// The last answer of [`PluginService::has_server_listeners`]: the store's plugin change
    /// count it was read at, when, and the answer.
    listeners: Mutex<Option<(u64, std::time::Instant, bool)>>,
    /// Every plugin's server-side config as last read (one query): the store's plugin change
    /// count then, when, and the configs. Trust decisions are always read from the store.
    configs: Mutex<Option<(u64, std::time::Instant, Arc<HashMap<String, serde_json::Map<String, serde_json::Value>>>)>>,
}

/// How long an answer of [`PluginService::has_server_listeners`] is reused while this process
/// changed no plugin: a change made by another process (`chengis plugin config`, another server
/// sharing the database) is seen within this time.
const LISTENERS_KEPT: std::time::Duration = std::time::Duration::from_secs(2);

/// One status change to tell notifiers and SCM status reporters about.
struct Announcement {
    keys: std::sync::Arc<crate::store::secrets::MasterKeys>,
    build_id: i64,
    change: dispatch::Change,
}

impl std::fmt::Debug for PluginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginService").field("dir", &self.dir).finish()
    }
}

/// The WIT name of a world.
pub fn world_name(world: World) -> &'static str {
    world.name()
}

fn kind_name(kind: &types::Kind) -> &'static str {
    match kind {
        types::Kind::StepExecutor => "step-executor",
        types::Kind::Notifier => "notifier",
        types::Kind::ScmStatus => "scm-status",
        types::Kind::Policy => "policy",
    }
}

/// The requested capabilities of a manifest as grant texts (`http:...`, `secret:NAME`, ...).
pub fn requested(manifest: &types::Manifest) -> Vec<String> {
    manifest
        .capabilities
        .iter()
        .map(|c| Capability::from_wit(c).map_or_else(|e| format!("invalid ({e})"), |c| c.to_string()))
        .collect()
}

impl PluginService {
    /// A service over `store`, keeping components in `data_dir/plugins` and compiled artifacts
    /// in `data_dir/plugin-cache`.
    pub fn new(store: Store, data_dir: &Path) -> Result<PluginService, PluginServiceError> {
        let runtime = Runtime::new(Some(data_dir.join("plugin-cache")))?;
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(&dir)
            .map_err(|source| PluginServiceError::Io { path: dir.display().to_string(), source })?;
        Ok(PluginService {
            runtime,
            store,
            dir,
            loaded: Mutex::new(HashMap::new()),
            limits: Limits::default(),
            announcer: std::sync::OnceLock::new(),
            public_url: std::sync::OnceLock::new(),
            listeners: Mutex::new(None),
            configs: Mutex::new(None),
        })
    }

    /// Queues a status change for the notifiers and SCM status reporters. One background task
    /// tells them in the order the changes happened (a forge must not see `pending` after
    /// `success`); plugins never hold up a build.
    pub fn announce(
        self: &std::sync::Arc<Self>,
        keys: std::sync::Arc<crate::store::secrets::MasterKeys>,
        build_id: i64,
        change: dispatch::Change,
    ) {
        let sender = self.announcer.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Announcement>();
            let service = std::sync::Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(a) = rx.recv().await {
                    let Some(service) = service.upgrade() else { return };
                    let store = service.store.clone();
                    if let Err(e) = dispatch::announce(&store, &a.keys, service, a.build_id, a.change).await {
                        tracing::warn!(build = a.build_id, "telling plugins about a status change: {e}");
                    }
                }
            });
            tx
        });
        let _ = sender.send(Announcement { keys, build_id, change });
    }

    /// Sets the URL people reach the server at (once; later calls are ignored): build links in
    /// notifications and commit statuses start with it.
    pub fn set_public_url(&self, url: String) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_string());
    }

    /// The link to a build, when the public URL is known.
    pub fn build_url(&self, build_id: i64) -> Option<String> {
        self.public_url.get().filter(|u| !u.is_empty()).map(|u| format!("{u}/api/v1/builds/{build_id}"))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads a component's world and manifest with no capabilities at all (the only way an
    /// untrusted component ever runs).
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, PluginServiceError> {
        Ok(self.runtime.inspect(bytes)?)
    }

    /// Installs a component: checks it is a component of a known world, copies it into the
    /// data directory under its digest and records it (allowed with `grants` when `allow`,
    /// else pending). Installing the same bytes again returns the existing record.
    pub async fn install(
        &self,
        bytes: &[u8],
        allow: bool,
        grants: &[String],
        by: &str,
        builtin: bool,
    ) -> Result<PluginRecord, PluginServiceError> {
        Grants::parse(grants.iter().map(String::as_str)).map_err(|e| PluginServiceError::Grant(e.to_string()))?;
        let inspection = self.inspect(bytes)?;
        let digest = inspection.digest.to_string();
        if let Some(existing) = self.store.plugin_by_digest(&digest).await? {
            return Ok(existing);
        }
        let path = self.dir.join(format!("{}.wasm", inspection.digest.hex()));
        let tmp = path.with_extension("wasm.tmp");
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| PluginServiceError::Io { path: p, source }
        };
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let m = &inspection.manifest;
        let record = NewPlugin {
            name: m.name.clone(),
            version: m.version.clone(),
            digest,
            world: inspection.world.name().to_string(),
            kinds: m.kinds.iter().map(|k| kind_name(k).to_string()).collect(),
            description: m.description.clone(),
            requested: requested(m),
            granted: grants.to_vec(),
            state: if allow { TrustState::Allowed } else { TrustState::Pending },
            path: path.display().to_string(),
            builtin,
            by: by.to_string(),
        };
        Ok(self.store.add_plugin(&record).await?)
    }

    /// Records the builtin plugins (allowed, with what they request granted, but for
    /// outbound HTTP or TCP to `*` destinations, which the operator narrows by granting) unless already
    /// recorded: done at every start, so a new binary pins its new builtins.
    pub async fn install_builtins(&self) -> Result<Vec<PluginRecord>, PluginServiceError> {
        self.install_builtins_named(None).await
    }

    /// Like [`PluginService::install_builtins`], for the builtins whose file is named after one
    /// of `names` only (all when `None`): a local run pins (and so compiles) only the builtins
    /// its pipeline uses.
    pub async fn install_builtins_named(
        &self,
        names: Option<&[&str]>,
    ) -> Result<Vec<PluginRecord>, PluginServiceError> {
        let mut out = Vec::new();
        for (file, bytes) in BUILTINS {
            let stem = file.trim_end_matches(".wasm");
            if names.is_some_and(|names| !names.contains(&stem)) {
                continue;
            }
            // Already pinned (every start but the first): no need to compile it to read its
            // manifest.
            if let Some(existing) = self.store.plugin_by_digest(&Digest::of(bytes).to_string()).await? {
                out.push(existing);
                continue;
            }
            let inspection = self.inspect(bytes)?;
            // What they request, except destinations the operator must name (`*` hosts).
            let grants: Vec<String> = inspection
                .manifest
                .capabilities
                .iter()
                .filter_map(|c| Capability::from_wit(c).ok())
                .filter(|c| match c {
                    Capability::OutboundHttp(p) => !p.is_any_host(),
                    Capability::OutboundTcp(t) => t.is_concrete(),
                    _ => true,
                })
                .map(|c| c.to_string())
                .collect();
            out.push(self.install(bytes, true, &grants, "chengis (builtin)", true).await?);
        }
        Ok(out)
    }

    /// The allowed plugin of `world` that `reference` (`name` or `name@version`) names, loaded:
    /// the newest allowed version when no version is given.
    pub async fn resolve(&self, reference: &str, world: World) -> Result<(PluginRecord, Plugin), PluginServiceError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        let candidates: Vec<PluginRecord> = self
            .store
            .plugins()
            .await?
            .into_iter()
            .filter(|p| p.name == name && p.world == world.name() && version.is_none_or(|v| v == p.version))
            .collect();
        let Some(record) = candidates.iter().find(|p| p.state == TrustState::Allowed).cloned() else {
            return Err(match candidates.first() {
                Some(p) => PluginServiceError::NotAllowed {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    state: p.state.as_str(),
                },
                None => PluginServiceError::NotFound { reference: reference.to_string(), world: world.name() },
            });
        };
        let limits = self.limits_for(&record, self.limits).await;
        let plugin = self.load_with(&record, limits)?;
        Ok((record, plugin))
    }

    /// `base` with the operator's per-plugin overrides from its server-side config:
    /// `chengis.timeout` (a duration such as `30s`) and `chengis.memory` (a size such as
    /// `128m`). These keys are the host's and never reach the plugin.
    pub async fn limits_for(&self, record: &PluginRecord, base: Limits) -> Limits {
        let config = self.config_of(&record.name).await;
        chengis_agent::executors::limits_from_config(&record.name, &config, base)
    }

    /// Like [`PluginService::resolve`] for a step executor, loaded with step limits: steps may
    /// run for as long as their commands do (the step's own `timeout:` stops them).
    pub async fn resolve_step_executor(&self, reference: &str) -> Result<(PluginRecord, Plugin), PluginServiceError> {
        let (record, _) = self.resolve(reference, World::StepExecutor).await?;
        let limits = self.limits_for(&record, chengis_agent::executors::step_limits(self.limits)).await;
        let plugin = self.load_with(&record, limits)?;
        Ok((record, plugin))
    }

    /// Every allowed plugin of `world` (newest version of each name), each loaded or with the
    /// reason it could not be (a modified file, a broken component): the caller decides
    /// whether that skips it (notifications) or fails closed (policies).
    pub async fn allowed(
        &self,
        world: World,
    ) -> Result<Vec<(PluginRecord, Result<Plugin, PluginServiceError>)>, PluginServiceError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for p in self.store.plugins().await? {
            if p.world == world.name() && p.state == TrustState::Allowed && seen.insert(p.name.clone()) {
                let limits = self.limits_for(&p, self.limits).await;
                let loaded = self.load_with(&p, limits);
                out.push((p, loaded));
            }
        }
        Ok(out)
    }

    /// Whether any plugin listens to status changes without a pipeline asking: an allowed
    /// notifier whose server-side config has `on`, or an allowed SCM status reporter with a
    /// server-side config.
    /// The answer is read again after this server changes a plugin or its config, and at
    /// least every [`LISTENERS_KEPT`] (every status change of every build asks).
    pub async fn has_server_listeners(&self) -> Result<bool, PluginServiceError> {
        let changes = self.store.plugin_changes();
        let kept = *self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at_changes, at, answer)) = kept
            && at_changes == changes
            && at.elapsed() < LISTENERS_KEPT
        {
            return Ok(answer);
        }
        let answer = self.read_server_listeners().await?;
        *self.listeners.lock().unwrap_or_else(|e| e.into_inner()) = Some((changes, std::time::Instant::now(), answer));
        Ok(answer)
    }

    /// The server-side configuration of plugin `name` (empty when none or unreadable), from
    /// the configs read at most [`LISTENERS_KEPT`] ago while this process changed no plugin: a
    /// build's policy checks, notifiers and `uses:` steps then cost no query each.
    pub async fn config_of(&self, name: &str) -> serde_json::Map<String, serde_json::Value> {
        let changes = self.store.plugin_changes();
        let kept = self.configs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let configs = match kept {
            Some((at_changes, at, configs)) if at_changes == changes && at.elapsed() < LISTENERS_KEPT => configs,
            _ => match self.store.plugin_configs().await {
                Ok(read) => {
                    let read = Arc::new(read);
                    *self.configs.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((changes, std::time::Instant::now(), read.clone()));
                    read
                }
                Err(e) => {
                    tracing::warn!(plugin = %name, "reading plugin configs: {e}");
                    return serde_json::Map::new();
                }
            },
        };
        configs.get(name).cloned().unwrap_or_default()
    }

    async fn read_server_listeners(&self) -> Result<bool, PluginServiceError> {
        let mut configs = self.store.plugin_configs().await?;
        for p in self.store.plugins().await? {
            if p.state != TrustState::Allowed {
                continue;
            }
            let config = configs.remove(&p.name).unwrap_or_default();
            let listens = match p.world.as_str() {
                "notifier" => config.contains_key(dispatch::NOTIFY_KEY),
                "scm-status" => config.keys().any(|k| !k.starts_with("chengis.")),
                _ => false,
            };
            if listens {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Loads an allowed record's component, checking its bytes against the allowed digest.
    fn load_with(&self, record: &PluginRecord, limits: Limits) -> Result<Plugin, PluginServiceError> {
        // Loaded plugins are reused while their file is unchanged (size and modification time);
        // a changed file is read and checked against the allowed digest again.
        let meta = std::fs::metadata(&record.path)
            .map_err(|source| PluginServiceError::Io { path: record.path.clone(), source })?;
        let stamp = (meta.len(), meta.modified().ok());
        let key = format!("{}|{}|{limits:?}|{stamp:?}", record.digest, record.granted.join(","));
        if let Some(p) = self.loaded.lock().ok().and_then(|l| l.get(&key).cloned()) {
            return Ok(p);
        }
        let bytes = std::fs::read(&record.path)
            .map_err(|source| PluginServiceError::Io { path: record.path.clone(), source })?;
        let digest = Digest::of(&bytes);
        if digest.to_string() != record.digest {
            return Err(PluginServiceError::Tampered {
                name: record.name.clone(),
                version: record.version.clone(),
                path: record.path.clone(),
                digest: record.digest.clone(),
            });
        }
        let grants = Grants::parse(record.granted.iter().map(String::as_str))
            .map_err(|e| PluginServiceError::Grant(e.to_string()))?;
        let allowlist = Allowlist::from_iter([digest]);
        let plugin = self.runtime.load(&bytes, &allowlist, grants, limits)?;
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.insert(key, plugin.clone());
        }
        Ok(plugin)
    }

    /// Whether the granted capabilities of `record` include secret `name`.
    pub fn secret_granted(record: &PluginRecord, name: &str) -> bool {
        chengis_agent::executors::secret_granted(record, name)
    }
}

impl StepExecutors for PluginService {
    fn step_executor<'a>(
        &'a self,
        reference: &'a str,
    ) -> chengis_agent::executors::BoxFuture<'a, Result<StepExecutor, String>> {
        Box::pin(async move {
            let (record, plugin) = self.resolve_step_executor(reference).await.map_err(|e| e.to_string())?;
            let config = chengis_agent::executors::plugin_config(&self.config_of(&record.name).await);
            Ok(StepExecutor { record, plugin, config })
        })
    }
}
