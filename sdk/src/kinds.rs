//! The trait of each plugin kind, the world modules with their own types, helpers to build
//! manifests and failures, and the [`export!`](crate::export) macro that turns an
//! implementation into the component's exports.

use crate::types::{Capability, ConfigField, Failure, Kind, Manifest, Status};

#[cfg(feature = "notifier")]
pub use crate::bindings::notifier;
#[cfg(feature = "policy")]
pub use crate::bindings::policy;
#[cfg(feature = "scm-status")]
pub use crate::bindings::scm_status;
#[cfg(feature = "step-executor")]
pub use crate::bindings::step_executor;

/// A step executor: runs `uses:` steps (feature `step-executor`).
#[cfg(feature = "step-executor")]
pub trait StepExecutor {
    /// Describes the plugin. Must not call the host.
    fn manifest() -> Manifest;
    /// Runs one step.
    fn run(host: &dyn crate::Host, invocation: step_executor::Invocation) -> Result<(), Failure>;
}

/// A notifier: tells people about builds (feature `notifier`).
#[cfg(feature = "notifier")]
pub trait Notifier {
    /// Describes the plugin. Must not call the host.
    fn manifest() -> Manifest;
    /// Sends the notification for one event.
    fn notify(host: &dyn crate::Host, event: notifier::Event) -> Result<(), Failure>;
}

/// An SCM status reporter (feature `scm-status`).
#[cfg(feature = "scm-status")]
pub trait ScmStatus {
    /// Describes the plugin. Must not call the host.
    fn manifest() -> Manifest;
    /// Reports one commit status.
    fn report(host: &dyn crate::Host, update: scm_status::StatusUpdate) -> Result<(), Failure>;
}

/// A policy check (feature `policy`). Policies are pure: the host gives them no network, no
/// files and no secrets.
#[cfg(feature = "policy")]
pub trait Policy {
    /// Describes the plugin. Must not call the host.
    fn manifest() -> Manifest;
    /// Decides about one build plan.
    fn check(host: &dyn crate::Host, plan: policy::Plan) -> Result<policy::Decision, Failure>;
}

impl Manifest {
    /// A manifest with no capabilities and no configuration keys.
    pub fn new(name: &str, version: &str, description: &str, kind: Kind) -> Self {
        Manifest {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            kinds: vec![kind],
            capabilities: Vec::new(),
            config: Vec::new(),
        }
    }

    /// Requests a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// Requests outbound HTTP to `scheme://host:port` (host may start with `*.`, port may be `*`).
    pub fn outbound_http(self, pattern: &str) -> Self {
        self.capability(Capability::OutboundHttp(pattern.into()))
    }

    /// Requests outbound TCP (`wasi:sockets`) to `host:port` (notifiers, e.g. SMTP).
    pub fn outbound_tcp(self, target: &str) -> Self {
        self.capability(Capability::OutboundTcp(target.into()))
    }

    /// Requests the secret `name`.
    pub fn secret(self, name: &str) -> Self {
        self.capability(Capability::Secret(name.into()))
    }

    /// Declares a configuration key.
    pub fn config(mut self, name: &str, description: &str, required: bool, default: Option<&str>) -> Self {
        self.config.push(ConfigField {
            name: name.into(),
            description: description.into(),
            required,
            default: default.map(Into::into),
        });
        self
    }
}

impl Status {
    /// The status as lowercase text, as the WIT names it: `success`, `failure`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }
}

impl Failure {
    /// A failure with this message and no diagnostics.
    pub fn new(message: impl Into<String>) -> Self {
        Failure { message: message.into(), diagnostics: Vec::new() }
    }
}

/// Exports a plugin: `export!(MyPlugin as notifier);` (or `step_executor`, `scm_status`,
/// `policy`). `MyPlugin` implements the kind's trait; the SDK feature of that kind must be on.
/// Outside `wasm32` it expands to nothing, so the crate also builds natively for tests.
#[macro_export]
macro_rules! export {
    ($plugin:ty as step_executor) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ChengisExport;
            impl $crate::step_executor::Guest for ChengisExport {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::StepExecutor>::manifest()
                }
                fn run(invocation: $crate::step_executor::Invocation) -> ::core::result::Result<(), $crate::Failure> {
                    <$plugin as $crate::StepExecutor>::run(&$crate::StepHost, invocation)
                }
            }
    $crate::step_executor::__export_step_executor!(ChengisExport with_types_in $crate::step_executor);
        };
    };
    ($plugin:ty as notifier) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ChengisExport;
            impl $crate::notifier::Guest for ChengisExport {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::Notifier>::manifest()
                }
                fn notify(event: $crate::notifier::Event) -> ::core::result::Result<(), $crate::Failure> {
                    <$plugin as $crate::Notifier>::notify(&$crate::EventHost, event)
                }
            }
    $crate::notifier::__export_notifier!(ChengisExport with_types_in $crate::notifier);
        };
    };
    ($plugin:ty as scm_status) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ChengisExport;
            impl $crate::scm_status::Guest for ChengisExport {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::ScmStatus>::manifest()
                }
                fn report(update: $crate::scm_status::StatusUpdate) -> ::core::result::Result<(), $crate::Failure> {
                    <$plugin as $crate::ScmStatus>::report(&$crate::EventHost, update)
                }
            }
    $crate::scm_status::__export_scm_status!(ChengisExport with_types_in $crate::scm_status);
        };
    };
    ($plugin:ty as policy) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ChengisExport;
            impl $crate::policy::Guest for ChengisExport {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::Policy>::manifest()
                }
                fn check(
                    plan: $crate::policy::Plan,
                ) -> ::core::result::Result<$crate::policy::Decision, $crate::Failure> {
                    <$plugin as $crate::Policy>::check(&$crate::PolicyHost, plan)
                }
            }
    $crate::policy::__export_policy!(ChengisExport with_types_in $crate::policy);
        };
    };
}
