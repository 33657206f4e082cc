//! A loaded [`Plugin`] and its entry points. Each call gets a fresh store (a [`Session`] for
//! callers that make several calls in a row, e.g. the steps of one job), bounded by the
//! plugin's [`Limits`] and by the capabilities its [`Checker`] allows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use crate::bindings::{notifier, outputs, policy, scm_status, step_executor, types};
use crate::capability::Checker;
use crate::error::{ErrorKind, PluginError, PluginLabel};
use crate::limits::Limits;
use crate::runtime::EPOCH_TICK;
use crate::sandbox::{LogSink, Sandbox};
use crate::state::CallState;
use crate::trust::Digest;

/// The four worlds of `chengis:plugin@0.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `step-executor`: runs `uses:` steps.
    StepExecutor,
    /// `notifier`: tells people about builds.
    Notifier,
    /// `scm-status`: reports commit statuses.
    ScmStatus,
    /// `policy`: allows or denies build plans.
    Policy,
}

impl World {
    /// The world's name in WIT.
    pub fn name(self) -> &'static str {
        match self {
            World::StepExecutor => "step-executor",
            World::Notifier => "notifier",
            World::ScmStatus => "scm-status",
            World::Policy => "policy",
        }
    }

    /// The manifest kind that belongs to this world.
    pub fn kind(self) -> types::Kind {
        match self {
            World::StepExecutor => types::Kind::StepExecutor,
            World::Notifier => types::Kind::Notifier,
            World::ScmStatus => types::Kind::ScmStatus,
            World::Policy => types::Kind::Policy,
        }
    }
}

/// The inputs of one call (or session) besides the entry point's own argument.
#[derive(Clone, Default)]
pub struct CallContext {
    /// The plugin's configuration (`with:` over the server-side config).
    pub config: Vec<(String, String)>,
    /// Secret values the caller resolved; the plugin reads only those its grants allow.
    pub secrets: HashMap<String, String>,
    /// Where log lines go; dropped when `None`.
    pub log: Option<Arc<dyn LogSink>>,
    /// The job's sandbox, for step executors.
    pub sandbox: Option<Arc<dyn Sandbox>>,
    /// The job workspace on the host, preopened at `/workspace` when the plugin may access it.
    pub workspace: Option<PathBuf>,
}

/// What a successful step left behind.
#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    /// Outputs set with `set-output`, in order.
    pub outputs: Vec<(String, String)>,
    /// Environment variables set with `set-env`, in order.
    pub env: Vec<(String, String)>,
    /// Test suites reported.
    pub tests: Vec<outputs::TestSuite>,
}

/// A world's pre-instantiated component.
#[derive(Clone)]
pub(crate) enum Pre {
    StepExecutor(step_executor::StepExecutorPre<CallState>),
    Notifier(notifier::NotifierPre<CallState>),
    ScmStatus(scm_status::ScmStatusPre<CallState>),
    Policy(policy::PolicyPre<CallState>),
}

impl Pre {
    pub(crate) fn new(world: World, pre: InstancePre<CallState>) -> wasmtime::Result<Self> {
        Ok(match world {
            World::StepExecutor => Pre::StepExecutor(step_executor::StepExecutorPre::new(pre)?),
            World::Notifier => Pre::Notifier(notifier::NotifierPre::new(pre)?),
            World::ScmStatus => Pre::ScmStatus(scm_status::ScmStatusPre::new(pre)?),
            World::Policy => Pre::Policy(policy::PolicyPre::new(pre)?),
        })
    }

    fn world(&self) -> World {
        match self {
            Pre::StepExecutor(_) => World::StepExecutor,
            Pre::Notifier(_) => World::Notifier,
            Pre::ScmStatus(_) => World::ScmStatus,
            Pre::Policy(_) => World::Policy,
        }
    }
}

enum Instance {
    StepExecutor(step_executor::StepExecutor),
    Notifier(notifier::Notifier),
    ScmStatus(scm_status::ScmStatus),
    Policy(policy::Policy),
}

/// A plugin ready to be called: compiled, linked, its manifest read and its capabilities set.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) engine: Engine,
    pub(crate) slots: Arc<InstanceSlots>,
    pub(crate) label: PluginLabel,
    pub(crate) digest: Digest,
    pub(crate) manifest: types::Manifest,
    pub(crate) checker: Arc<Checker>,
    pub(crate) limits: Limits,
    pub(crate) pre: Pre,
}

impl Plugin {
    /// The plugin's manifest.
    pub fn manifest(&self) -> &types::Manifest {
        &self.manifest
    }

    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        self.pre.world()
    }

    /// `plugin "name" version`, as errors name it.
    pub fn label(&self) -> &PluginLabel {
        &self.label
    }

    /// Instantiates the plugin in a fresh store, for one or more calls.
    pub fn session(&self, ctx: &CallContext) -> Result<Session, PluginError> {
        Session::new(&self.engine, &self.slots, &self.pre, self.label.clone(), self.checker.clone(), self.limits, ctx)
    }

    /// Sends one notification (notifier plugins).
    pub fn notify(&self, ctx: &CallContext, event: &notifier::Event) -> Result<(), PluginError> {
        self.session(ctx)?.notify(event)
    }

    /// Runs one step (step-executor plugins).
    pub fn run_step(
        &self,
        ctx: &CallContext,
        invocation: &step_executor::Invocation,
    ) -> Result<StepOutcome, PluginError> {
        self.session(ctx)?.run_step(invocation)
    }

    /// Reports one commit status (scm-status plugins).
    pub fn report_status(&self, ctx: &CallContext, update: &scm_status::StatusUpdate) -> Result<(), PluginError> {
        self.session(ctx)?.report_status(update)
    }

    /// Checks one build plan (policy plugins).
    pub fn check_policy(&self, ctx: &CallContext, plan: &policy::Plan) -> Result<policy::Decision, PluginError> {
        self.session(ctx)?.check_policy(plan)
    }
}

/// A live instance of a plugin in its own store. Each call is bounded by the plugin's limits
/// on its own; after a failed call the session refuses further calls.
pub struct Session {
    store: Store<CallState>,
    instance: Instance,
    broken: bool,
    _slot: SlotGuard,
}

/// Counts the live instances, so that a full pool is a clear error rather than a failed
/// instantiation (the pooling allocator has a fixed number of slots).
#[derive(Debug)]
pub(crate) struct InstanceSlots {
    live: std::sync::atomic::AtomicU32,
    max: Option<u32>,
}

impl InstanceSlots {
    pub(crate) fn new(max: Option<u32>) -> Arc<Self> {
        Arc::new(InstanceSlots { live: std::sync::atomic::AtomicU32::new(0), max })
    }

    fn take(self: &Arc<Self>) -> Option<SlotGuard> {
        use std::sync::atomic::Ordering;
        let taken = self.live.fetch_add(1, Ordering::AcqRel);
        if self.max.is_some_and(|max| taken >= max) {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard(self.clone()))
    }
}

/// One live instance; gives its slot back when dropped.
#[derive(Debug)]
struct SlotGuard(Arc<InstanceSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Session {
    pub(crate) fn new(
        engine: &Engine,
        slots: &Arc<InstanceSlots>,
        pre: &Pre,
        label: PluginLabel,
        checker: Arc<Checker>,
        limits: Limits,
        ctx: &CallContext,
    ) -> Result<Self, PluginError> {
        let slot = slots
            .take()
            .ok_or_else(|| PluginError::new(&label, ErrorKind::NoInstanceSlot(slots.max.unwrap_or_default())))?;
        let state =
            CallState::new(label.clone(), checker, limits, ctx).map_err(|kind| PluginError::new(&label, kind))?;
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        arm_deadline(&mut store);
        let instance = match pre {
            Pre::StepExecutor(pre) => pre.instantiate(&mut store).map(Instance::StepExecutor),
            Pre::Notifier(pre) => pre.instantiate(&mut store).map(Instance::Notifier),
            Pre::ScmStatus(pre) => pre.instantiate(&mut store).map(Instance::ScmStatus),
            Pre::Policy(pre) => pre.instantiate(&mut store).map(Instance::Policy),
        };
        match instance {
            Ok(instance) => Ok(Session { store, instance, broken: false, _slot: slot }),
            Err(error) => {
                let kind = store.data().classify(&error);
                Err(PluginError::new(&label, kind))
            }
        }
    }

    /// Reads the manifest (every world exports it).
    pub fn manifest(&mut self) -> Result<types::Manifest, PluginError> {
        let manifest = self.call(|store, instance| match instance {
            Instance::StepExecutor(i) => i.call_manifest(store),
            Instance::Notifier(i) => i.call_manifest(store),
            Instance::ScmStatus(i) => i.call_manifest(store),
            Instance::Policy(i) => i.call_manifest(store),
        })?;
        self.check_size("the manifest", manifest_size(&manifest))?;
        Ok(manifest)
    }

    /// Sends one notification (notifier plugins).
    pub fn notify(&mut self, event: &notifier::Event) -> Result<(), PluginError> {
        let result = self.call(|store, instance| match instance {
            Instance::Notifier(i) => i.call_notify(store, event).map(Some),
            _ => Ok(None),
        })?;
        let result = self.expect_world(result, World::Notifier)?;
        self.finish(result)
    }

    /// Runs one step (step-executor plugins).
    pub fn run_step(&mut self, invocation: &step_executor::Invocation) -> Result<StepOutcome, PluginError> {
        let result = self.call(|store, instance| match instance {
            Instance::StepExecutor(i) => i.call_run(store, invocation).map(Some),
            _ => Ok(None),
        })?;
        let result = self.expect_world(result, World::StepExecutor)?;
        let outcome = std::mem::take(&mut self.store.data_mut().step);
        self.finish(result).map(|()| outcome)
    }

    /// Reports one commit status (scm-status plugins).
    pub fn report_status(&mut self, update: &scm_status::StatusUpdate) -> Result<(), PluginError> {
        let result = self.call(|store, instance| match instance {
            Instance::ScmStatus(i) => i.call_report(store, update).map(Some),
            _ => Ok(None),
        })?;
        let result = self.expect_world(result, World::ScmStatus)?;
        self.finish(result)
    }

    /// Checks one build plan (policy plugins).
    pub fn check_policy(&mut self, plan: &policy::Plan) -> Result<policy::Decision, PluginError> {
        let result = self.call(|store, instance| match instance {
            Instance::Policy(i) => i.call_check(store, plan).map(Some),
            _ => Ok(None),
        })?;
        let result = self.expect_world(result, World::Policy)?;
        let decision = self.finish(result)?;
        let size = match &decision {
            policy::Decision::Allow(diagnostics) | policy::Decision::Deny(diagnostics) => {
                diagnostics.iter().map(diagnostic_size).sum()
            }
        };
        self.check_size("the policy decision", size)?;
        Ok(decision)
    }

    fn error(&self, kind: ErrorKind) -> PluginError {
        PluginError::new(&self.store.data().label, kind)
    }

    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.broken {
            return Err(self.error(ErrorKind::Host("the instance failed earlier; start a new session".into())));
        }
        self.store.data_mut().begin_call();
        arm_deadline(&mut self.store);
        let mut result = f(&mut self.store, &self.instance);
        self.store.data_mut().end_call();
        if result.is_ok() && self.store.data().slept_to_deadline() {
            // The guest slept past its deadline and was woken at it: a timeout even if it
            // finished before the epoch deadline caught it.
            result = Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
        }
        result.map_err(|error| {
            self.broken = true;
            let kind = self.store.data().classify(&error);
            self.error(kind)
        })
    }

    fn expect_world<R>(&self, result: Option<R>, expected: World) -> Result<R, PluginError> {
        let actual = match self.instance {
            Instance::StepExecutor(_) => World::StepExecutor,
            Instance::Notifier(_) => World::Notifier,
            Instance::ScmStatus(_) => World::ScmStatus,
            Instance::Policy(_) => World::Policy,
        };
        result.ok_or_else(|| self.error(ErrorKind::WrongWorld { expected: expected.name(), actual: actual.name() }))
    }

    /// Turns the guest's own `result` into ours: a failure is reported (or, when a capability
    /// was denied during the call, the denial is, since that is what the operator can fix).
    fn finish<T>(&self, result: Result<T, types::Failure>) -> Result<T, PluginError> {
        match result {
            Ok(value) => Ok(value),
            Err(failure) => {
                let size = failure.message.len() + failure.diagnostics.iter().map(diagnostic_size).sum::<usize>();
                self.check_size("the failure", size)?;
                if let Some(denial) = self.store.data().first_denial() {
                    return Err(self.error(ErrorKind::Denied(denial)));
                }
                let mut message = failure.message;
                for diagnostic in &failure.diagnostics {
                    message.push_str(&format!("; {}", diagnostic.message));
                    if let Some(field) = &diagnostic.field {
                        message.push_str(&format!(" ({field})"));
                    }
                }
                Err(self.error(ErrorKind::Failed(message)))
            }
        }
    }

    fn check_size(&self, what: &'static str, size: usize) -> Result<(), PluginError> {
        let limit = self.store.data().limits.output_bytes;
        if size > limit {
            return Err(self.error(ErrorKind::OutputTooLarge { what, size, limit }));
        }
        Ok(())
    }
}

/// Sets the store's epoch deadline to the call's timeout from now.
fn arm_deadline(store: &mut Store<CallState>) {
    let timeout = store.data().limits.timeout;
    let ticks = timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
}

fn diagnostic_size(diagnostic: &types::Diagnostic) -> usize {
    diagnostic.code.len()
        + diagnostic.message.len()
        + diagnostic.field.as_ref().map_or(0, String::len)
        + diagnostic.help.as_ref().map_or(0, String::len)
}

fn manifest_size(manifest: &types::Manifest) -> usize {
    let capabilities: usize = manifest
        .capabilities
        .iter()
        .map(|c| match c {
            types::Capability::OutboundHttp(text)
            | types::Capability::Secret(text)
            | types::Capability::OutboundTcp(text) => text.len() + 1,
            _ => 1,
        })
        .sum();
    let config: usize = manifest
        .config
        .iter()
        .map(|f| f.name.len() + f.description.len() + f.default.as_ref().map_or(0, String::len) + 1)
        .sum();
    manifest.name.len()
        + manifest.version.len()
        + manifest.description.len()
        + manifest.kinds.len()
        + capabilities
        + config
}
