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
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thiserror::Error;

/// A builtin plugin shipped inside the binary.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name: the name its manifest gives, and its file name without `.wasm`.
    pub name: &'static str,
    /// The world it implements (checked against the component when it is pinned).
    pub world: World,
    /// The component's bytes.
    pub bytes: &'static [u8],
    /// The sha256 of `bytes` (`sha256:` and 64 hex digits), computed by the build script: a
    /// start checks which builtins are pinned without hashing them.
    pub digest: &'static str,
}

macro_rules! builtin {
    ($name:literal, $world:expr, $file:literal) => {
        Builtin {
            name: $name,
            world: $world,
            bytes: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".wasm")),
            digest: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".sha256")),
        }
    };
}

/// The builtin plugins shipped inside the binary, in the order a fresh server compiles them:
/// the policies first (every trigger may ask them), then the step executors, then the rest.
pub const BUILTINS: &[Builtin] = &[
    builtin!("image-policy", World::Policy, "chengis_plugin_image_policy"),
    builtin!("branch-protection", World::Policy, "chengis_plugin_branch_protection"),
    builtin!("script", World::StepExecutor, "chengis_plugin_script"),
    builtin!("junit", World::StepExecutor, "chengis_plugin_junit"),
    builtin!("http", World::StepExecutor, "chengis_plugin_http"),
    builtin!("console", World::Notifier, "chengis_plugin_console"),
    builtin!("slack", World::Notifier, "chengis_plugin_slack"),
    builtin!("webhook", World::Notifier, "chengis_plugin_webhook"),
    builtin!("email", World::Notifier, "chengis_plugin_email"),
    builtin!("github-status", World::ScmStatus, "chengis_plugin_github_status"),
    builtin!("gitlab-status", World::ScmStatus, "chengis_plugin_gitlab_status"),
    builtin!("gitea-status", World::ScmStatus, "chengis_plugin_gitea_status"),
    builtin!("bitbucket-status", World::ScmStatus, "chengis_plugin_bitbucket_status"),
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
    /// A builtin plugin could not be pinned (see the server's log from its start).
    #[error("the builtin plugin `{name}` could not be pinned: {reason}")]
    Builtin {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Where the pinning of the builtin plugins stands (see
/// [`PluginService::install_builtins_in_background`]).
#[derive(Debug, Clone, Default)]
pub struct BuiltinProgress {
    /// Builtins not pinned yet: compiling, or waiting for their turn.
    pub pending: BTreeSet<&'static str>,
    /// Builtins that could not be pinned, with why.
    pub failed: BTreeMap<&'static str, String>,
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
    configs: Mutex<Option<(u64, std::time::Instant, Arc<Configs>)>>,
    /// The builtins still being pinned in the background, and those that failed.
    builtins: tokio::sync::watch::Sender<BuiltinProgress>,
}

/// Every plugin's server-side config, by name.
type Configs = HashMap<String, serde_json::Map<String, serde_json::Value>>;

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
            builtins: tokio::sync::watch::Sender::new(BuiltinProgress::default()),
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
        self.install_inspected(bytes, &inspection, allow, grants, by, builtin).await
    }

    /// [`PluginService::install`] of a component already inspected.
    async fn install_inspected(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        allow: bool,
        grants: &[String],
        by: &str,
        builtin: bool,
    ) -> Result<PluginRecord, PluginServiceError> {
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

    /// Like [`PluginService::install_builtins`], for the builtins named in `names` only (all
    /// when `None`): a local run pins (and so compiles) only the builtins its pipeline uses.
    pub async fn install_builtins_named(
        &self,
        names: Option<&[&str]>,
    ) -> Result<Vec<PluginRecord>, PluginServiceError> {
        let mut out = Vec::new();
        for b in BUILTINS {
            if names.is_some_and(|names| !names.contains(&b.name)) {
                continue;
            }
            // Already pinned (every start but the first): no need to compile it to read its
            // manifest.
            if let Some(existing) = self.store.plugin_by_digest(b.digest).await? {
                out.push(existing);
                continue;
            }
            let inspection = self.inspect(b.bytes)?;
            out.push(self.pin_builtin(b, &inspection).await?);
        }
        Ok(out)
    }

    /// Pins the builtin plugins that are not pinned yet, compiling them on a thread of their
    /// own, and returns their names: none on every start but the first of a database (and the
    /// first after an upgrade that changed a builtin). What runs meanwhile never goes around
    /// them: [`PluginService::resolve`] of a builtin's name waits until it is pinned, and so do
    /// [`PluginService::allowed`] and [`PluginService::has_server_listeners`] for a builtin that
    /// has a server-side configuration (without one, a builtin does nothing unless a pipeline
    /// names it). It logs one line when it starts and one when it is done, and then gives
    /// Cranelift's working memory back to the OS.
    pub async fn install_builtins_in_background(self: &Arc<Self>) -> Result<Vec<&'static str>, PluginServiceError> {
        let pinned: HashSet<String> = self.store.plugins().await?.into_iter().map(|p| p.digest).collect();
        let missing: Vec<&'static Builtin> = BUILTINS.iter().filter(|b| !pinned.contains(b.digest)).collect();
        let names: Vec<&'static str> = missing.iter().map(|b| b.name).collect();
        if missing.is_empty() {
            return Ok(names);
        }
        self.builtins.send_modify(|p| p.pending.extend(names.iter().copied()));
        tracing::info!(
            "compiling {} builtin plugins in the background ({}); builds that use one wait for it",
            names.len(),
            names.join(", ")
        );
        let started = Instant::now();
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(&'static Builtin, Result<Inspection, PluginError>)>();
        let compiler = self.clone();
        let thread = std::thread::Builder::new().name("chengis-builtins".into()).spawn(move || {
            for b in missing {
                // Stops when the server does (nobody receives any more).
                if tx.send((b, compiler.runtime.inspect(b.bytes))).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = thread {
            self.fail_pending(&format!("cannot start the thread that compiles them: {e}"));
            return Err(PluginServiceError::Builtin { name: names.join(", "), reason: e.to_string() });
        }
        let service = self.clone();
        tokio::spawn(async move {
            while let Some((b, inspected)) = rx.recv().await {
                let pinned = match inspected {
                    Ok(inspection) => service.pin_builtin(b, &inspection).await,
                    Err(e) => Err(e.into()),
                };
                match &pinned {
                    Ok(p) => {
                        tracing::debug!(plugin = %p.name, version = %p.version, digest = %p.digest, "builtin plugin pinned")
                    }
                    Err(e) => tracing::error!(plugin = b.name, "cannot pin the builtin plugin: {e}"),
                }
                service.builtins.send_modify(|p| {
                    p.pending.remove(b.name);
                    if let Err(e) = pinned {
                        p.failed.insert(b.name, e.to_string());
                    }
                });
            }
            // Whatever is still pending will never be pinned by this process (the thread
            // stopped early): its waiters get an error instead of waiting for ever.
            service.fail_pending("the thread that compiled it stopped");
            let failed = service.builtin_progress().failed.len();
            if failed == 0 {
                tracing::info!("builtin plugins compiled and pinned in {:.1}s", started.elapsed().as_secs_f64());
            } else {
                tracing::error!("{failed} builtin plugin(s) could not be pinned; the lines above say why");
            }
            // Cranelift's working memory is free now: give it back.
            crate::memory::release();
        });
        Ok(names)
    }

    fn fail_pending(&self, reason: &str) {
        self.builtins.send_modify(|p| {
            for name in std::mem::take(&mut p.pending) {
                p.failed.insert(name, reason.to_string());
            }
        });
    }

    /// Where the pinning of the builtin plugins stands.
    pub fn builtin_progress(&self) -> BuiltinProgress {
        self.builtins.borrow().clone()
    }

    /// Records an inspected builtin as allowed, with what it requests granted but for outbound
    /// HTTP or TCP to `*` destinations, which the operator narrows by granting.
    async fn pin_builtin(&self, b: &Builtin, inspection: &Inspection) -> Result<PluginRecord, PluginServiceError> {
        if inspection.world != b.world || inspection.manifest.name != b.name {
            return Err(PluginServiceError::Builtin {
                name: b.name.to_string(),
                reason: format!(
                    "the component is the {} plugin `{}`, not the {} plugin the binary lists",
                    inspection.world.name(),
                    inspection.manifest.name,
                    b.world.name()
                ),
            });
        }
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
        self.install_inspected(b.bytes, inspection, true, &grants, "chengis (builtin)", true).await
    }

    /// Waits until the builtin `name` (if it is one) is pinned; why it could not be, if so.
    async fn settle_builtin(&self, name: &str) -> Option<String> {
        let mut progress = self.builtins.subscribe();
        // The sender lives as long as `self`, so this wait ends only when `name` is settled.
        progress.wait_for(|p| !p.pending.contains(name)).await.ok().and_then(|p| p.failed.get(name).cloned())
    }

    /// Waits for the pending builtins of `world` that have a server-side configuration (the
    /// others do nothing until a pipeline names them, which [`PluginService::resolve`] waits for).
    async fn settle_configured_builtins(&self, world: World) -> Result<(), PluginServiceError> {
        let pending: Vec<&'static str> = {
            let progress = self.builtins.borrow();
            BUILTINS.iter().filter(|b| b.world == world && progress.pending.contains(b.name)).map(|b| b.name).collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let configs = self.store.plugin_configs().await?;
        for name in pending {
            if configs.get(name).is_some_and(|c| !c.is_empty()) {
                // A failed builtin is not in the allowlist: the caller sees it missing, and
                // the log says why.
                let _ = self.settle_builtin(name).await;
            }
        }
        Ok(())
    }

    /// The allowed plugin of `world` that `reference` (`name` or `name@version`) names, loaded:
    /// the newest allowed version when no version is given.
    pub async fn resolve(&self, reference: &str, world: World) -> Result<(PluginRecord, Plugin), PluginServiceError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        let failed_builtin = self.settle_builtin(name).await;
        let candidates: Vec<PluginRecord> = self
            .store
            .plugins()
            .await?
            .into_iter()
            .filter(|p| p.name == name && p.world == world.name() && version.is_none_or(|v| v == p.version))
            .collect();
        let Some(record) = candidates.iter().find(|p| p.state == TrustState::Allowed).cloned() else {
            if let (None, Some(reason)) = (candidates.first(), failed_builtin) {
                return Err(PluginServiceError::Builtin { name: name.to_string(), reason });
            }
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
        self.settle_configured_builtins(world).await?;
        let mut seen = HashSet::new();
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
        self.settle_configured_builtins(World::Notifier).await?;
        self.settle_configured_builtins(World::ScmStatus).await?;
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
