//! [`Runtime`]: the process's one wasmtime [`Engine`] (epoch interruption on, a ticker thread
//! advancing it, optionally the pooling allocator), the linkers of the four worlds, and the
//! compiled-component cache. It turns component bytes into a [`Plugin`]: trust check, compile
//! (or cached load), world detection, linking into an `InstancePre`, manifest read with no
//! capabilities, and the capability checker for the operator's grants.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{notifier, policy, scm_status, step_executor, types};
use crate::cache::{CacheOutcome, ComponentCache};
use crate::capability::{Capability, Checker, Grants};
use crate::error::{ErrorKind, PluginError, PluginLabel};
use crate::limits::Limits;
use crate::plugin::InstanceSlots;
use crate::plugin::{CallContext, Plugin, Pre, Session, World};
use crate::state::CallState;
use crate::trust::{Digest, TrustPolicy};

/// How often the ticker thread advances the engine's epoch; deadlines are counted in ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// With pooling: how much of a plugin's memory stays resident between instances.
const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;

/// The `wasi:clocks` interface whose sleeps [`bound_sleeps`] replaces (the version wasmtime-wasi
/// links; guests importing older 0.2 versions are matched to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The WIT package version this host runs.
pub const WIT_PACKAGE: &str = "chengis:plugin@0.1.0";

/// How a [`Runtime`] is set up.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Whether to use the pooling instance allocator (faster instantiation, memory reserved
    /// up front).
    pub pooling: bool,
    /// With pooling: how many instances may be live at once.
    pub max_instances: u32,
    /// The largest memory cap a plugin may be given ([`Limits::memory_bytes`] is clamped).
    pub max_memory_bytes: usize,
    /// With pooling: how much of an instance's linear memory stays resident for the next
    /// instance in its slot (dirty pages reset in place instead of faulted in again).
    pub keep_resident_bytes: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            pooling: true,
            max_instances: 128,
            max_memory_bytes: 256 * 1024 * 1024,
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
        }
    }
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin runtime: {0}")]
pub struct RuntimeError(String);

/// What `inspect` learns about a component without trusting it.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The sha256 of its bytes.
    pub digest: Digest,
    /// The world it implements.
    pub world: World,
    /// Its manifest, read with no capabilities.
    pub manifest: types::Manifest,
}

struct Linkers {
    step_executor: Linker<CallState>,
    notifier: Linker<CallState>,
    scm_status: Linker<CallState>,
    policy: Linker<CallState>,
}

/// The plugin runtime: one per process.
pub struct Runtime {
    engine: Engine,
    linkers: Arc<Linkers>,
    cache: Option<ComponentCache>,
    max_memory_bytes: usize,
    slots: Arc<InstanceSlots>,
}

impl Runtime {
    /// A runtime with the default options and this cache directory.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        Runtime::with_options(RuntimeOptions { cache_dir, ..RuntimeOptions::default() })
    }

    /// A runtime with these options.
    pub fn with_options(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        if options.pooling {
            let mut pooling = PoolingAllocationConfig::default();
            pooling
                .total_component_instances(options.max_instances)
                .total_core_instances(options.max_instances * 8)
                .total_memories(options.max_instances * 2)
                .total_tables(options.max_instances * 4)
                .total_stacks(options.max_instances)
                .max_memory_size(options.max_memory_bytes);
            if PoolingAllocationConfig::is_pagemap_scan_available() {
                // Reset only the pages an instance dirtied (PAGEMAP_SCAN, Linux 6.7+) and keep
                // them resident, so that the next instance takes no page faults: measured
                // 44 -> 16 µs for new store + instantiate + call. Without the ioctl this would
                // memset the whole prefix, which costs more than it saves.
                pooling
                    .linear_memory_keep_resident(options.keep_resident_bytes)
                    .table_keep_resident(64 * 1024)
                    .pagemap_scan(Enabled::Yes);
            }
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        }
        let engine = Engine::new(&config).map_err(|e| RuntimeError(e.to_string()))?;
        let linkers = Linkers::new(&engine).map_err(|e| RuntimeError(e.to_string()))?;
        start_ticker(&engine)?;
        let cache = options.cache_dir.map(|dir| ComponentCache::new(dir, &engine, &config));
        let slots = InstanceSlots::new(options.pooling.then_some(options.max_instances));
        Ok(Runtime { engine, linkers: Arc::new(linkers), cache, max_memory_bytes: options.max_memory_bytes, slots })
    }

    /// Loads a trusted component: refuses it unless `trust` allows its digest, then compiles
    /// (or loads the cached artifact), links it for its world, reads its manifest with no
    /// capabilities, and grants it the intersection of its requests and `grants`.
    pub fn load(
        &self,
        bytes: &[u8],
        trust: &dyn TrustPolicy,
        grants: Grants,
        limits: Limits,
    ) -> Result<Plugin, PluginError> {
        let digest = Digest::of(bytes);
        if !trust.is_allowed(&digest) {
            return Err(PluginError::new(&PluginLabel::Digest(digest), ErrorKind::NotTrusted { digest }));
        }
        let (component, _) = self.compile(&digest, bytes)?;
        self.prepare(&component, digest, &grants, limits)
    }

    /// Reads what a component is without trusting it: its world and its manifest, with no
    /// capabilities at all. This is the only way an untrusted component is ever run.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, PluginError> {
        let digest = Digest::of(bytes);
        let (component, _) = self.compile(&digest, bytes)?;
        let plugin = self.prepare(&component, digest, &Grants::none(), Limits::default())?;
        Ok(Inspection { digest, world: plugin.world(), manifest: plugin.manifest })
    }

    /// Compiles a component, or loads it from the cache; says which happened.
    pub fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<(Component, CacheOutcome), PluginError> {
        let compiled = match &self.cache {
            Some(cache) => cache.load(&self.engine, digest, bytes),
            None => Component::new(&self.engine, bytes).map(|c| (c, CacheOutcome::Compiled)),
        };
        compiled.map_err(|e| PluginError::new(&PluginLabel::Digest(*digest), ErrorKind::Compile(error_text(&e))))
    }

    fn prepare(
        &self,
        component: &Component,
        digest: Digest,
        grants: &Grants,
        limits: Limits,
    ) -> Result<Plugin, PluginError> {
        let label = PluginLabel::Digest(digest);
        let fail = |kind| PluginError::new(&label, kind);
        let world = detect_world(&self.engine, component).map_err(|m| fail(ErrorKind::UnknownWorld(m)))?;
        let linker = match world {
            World::StepExecutor => &self.linkers.step_executor,
            World::Notifier => &self.linkers.notifier,
            World::ScmStatus => &self.linkers.scm_status,
            World::Policy => &self.linkers.policy,
        };
        let link_error = |e: wasmtime::Error| fail(ErrorKind::Link { world: world.name(), reason: error_text(&e) });
        let pre = linker.instantiate_pre(component).map_err(link_error)?;
        let pre = Pre::new(world, pre).map_err(link_error)?;
        let limits = Limits { memory_bytes: limits.memory_bytes.min(self.max_memory_bytes), ..limits };
        let deny_all = Arc::new(Checker::deny_all());
        let manifest =
            Session::new(&self.engine, &self.slots, &pre, label.clone(), deny_all, limits, &CallContext::default())?
                .manifest()?;
        let requested = validate_manifest(&manifest, world).map_err(|m| fail(ErrorKind::InvalidManifest(m)))?;
        let label = PluginLabel::Named { name: manifest.name.clone(), version: manifest.version.clone() };
        Ok(Plugin {
            engine: self.engine.clone(),
            slots: self.slots.clone(),
            label,
            digest,
            manifest,
            checker: Arc::new(Checker::new(requested, grants)),
            limits,
            pre,
        })
    }
}

impl Linkers {
    fn new(engine: &Engine) -> wasmtime::Result<Self> {
        use wasmtime::component::HasSelf;

        let base = |http: bool| -> wasmtime::Result<Linker<CallState>> {
            let mut linker = Linker::new(engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
            bound_sleeps(&mut linker)?;
            if http {
                wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
            }
            Ok(linker)
        };
        let mut step = base(true)?;
        step_executor::StepExecutor::add_to_linker::<_, HasSelf<_>>(&mut step, |s| s)?;
        let mut notify = base(true)?;
        notifier::Notifier::add_to_linker::<_, HasSelf<_>>(&mut notify, |s| s)?;
        let mut scm = base(true)?;
        scm_status::ScmStatus::add_to_linker::<_, HasSelf<_>>(&mut scm, |s| s)?;
        let mut pure = base(false)?;
        policy::Policy::add_to_linker::<_, HasSelf<_>>(&mut pure, |s| s)?;
        Ok(Linkers { step_executor: step, notifier: notify, scm_status: scm, policy: pure })
    }
}

/// Replaces the `wasi:clocks/monotonic-clock` subscriptions with ones that end at the call's
/// deadline: a guest blocked in a long sleep is a host call the epoch cannot interrupt.
fn bound_sleeps(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| {
        Ok((store.data_mut().sleep(Duration::from_nanos(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| Ok((store.data_mut().sleep_until(when)?,)))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("chengis-plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError(format!("cannot start the epoch thread: {e}")))
}

/// Which world a component implements, from its exports and its imports of our package.
fn detect_world(engine: &Engine, component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let ours = WIT_PACKAGE.split('@').next().unwrap_or(WIT_PACKAGE);
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix(ours)
            && let Some((_, version)) = rest.split_once('@')
            && !WIT_PACKAGE.ends_with(&format!("@{version}"))
        {
            return Err(format!(
                "the component was built for {ours}@{version} (it imports {name}); this host runs {WIT_PACKAGE} plugins"
            ));
        }
    }
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let has = |name: &str| exports.iter().any(|e| e == name);
    let world = if !has("manifest") {
        None
    } else if has("run") {
        Some(World::StepExecutor)
    } else if has("notify") {
        Some(World::Notifier)
    } else if has("report") {
        Some(World::ScmStatus)
    } else if has("check") {
        Some(World::Policy)
    } else {
        None
    };
    world.ok_or_else(|| {
        format!(
            "the component implements no {WIT_PACKAGE} world: it exports [{}], but a plugin exports \
             `manifest` and one of `run` (step-executor), `notify` (notifier), `report` (scm-status) \
             or `check` (policy)",
            exports.join(", ")
        )
    })
}

/// Checks a manifest and returns its requested capabilities.
fn validate_manifest(manifest: &types::Manifest, world: World) -> Result<Vec<Capability>, String> {
    let name_ok = !manifest.name.is_empty()
        && manifest.name.len() <= 64
        && manifest.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !manifest.name.starts_with('-');
    if !name_ok {
        return Err(format!("name {:?} must be 1-64 lowercase letters, digits and `-`", manifest.name));
    }
    let parts: Vec<&str> = manifest.version.split(['-', '+']).next().unwrap_or("").split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!("version {:?} must be semver, like 1.2.0", manifest.version));
    }
    if !manifest.kinds.contains(&world.kind()) {
        return Err(format!("kinds {:?} do not include the component's world, {}", manifest.kinds, world.name()));
    }
    manifest.capabilities.iter().map(|c| Capability::from_wit(c).map_err(|e| e.to_string())).collect()
}

/// Wasmtime's error with its causes, on one line.
fn error_text(error: &wasmtime::Error) -> String {
    error.chain().map(|cause| cause.to_string()).collect::<Vec<_>>().join(": ")
}
