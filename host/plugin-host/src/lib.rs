//! The Chengis plugin runtime: loads WebAssembly components written against the
//! `chengis:plugin@0.1.0` worlds and runs them under hard limits, with only the capabilities
//! an operator granted, and only when the caller's trust allowlist pins their digest.
//!
//! # Layout
//!
//! - [`bindings`]: the `bindgen!` expansion of the four worlds (the slow part to compile).
//! - [`runtime`]: [`Runtime`] (and [`RuntimeOptions`]): one wasmtime engine per process,
//!   loading trusted components and inspecting untrusted ones.
//! - [`plugin`]: [`Plugin`], a loaded plugin and its entry points (one store per call), and
//!   [`Session`], one live instance for several calls.
//! - [`capability`]: requested vs granted capabilities and the one checker.
//! - [`trust`]: digests and the [`TrustPolicy`] the caller backs with its allowlist.
//! - [`limits`]: per-call limits and the memory limiter.
//! - [`sandbox`]: the [`Sandbox`] and [`LogSink`] traits the executors implement.
//! - [`cache`]: the on-disk cache of compiled components.
//! - [`error`]: [`PluginError`], which names the plugin and version in every message.
//! - `state` (private): the per-call store data and the host side of every import.
//!
//! # Example
//!
//! ```no_run
//! use chengis_plugin_host::{Allowlist, CallContext, Digest, Grants, Limits, Runtime};
//! use chengis_plugin_host::types::{Build, Commit, Status};
//! use chengis_plugin_host::bindings::notifier::{Event, EventKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(Some("/var/lib/chengis/plugin-cache".into()))?;
//! let bytes = std::fs::read("console.wasm")?;
//! let allowlist = Allowlist::from_iter([Digest::of(&bytes)]);
//! let plugin = runtime.load(&bytes, &allowlist, Grants::none(), Limits::default())?;
//! let event = Event {
//!     kind: EventKind::BuildFinished,
//!     build: Build {
//!         id: 1, number: 1, pipeline: "demo".into(), status: Status::Success,
//!         commit: Commit {
//!             sha: "0".repeat(40), repository: "demo".into(), branch: Some("main".into()),
//!             tag: None, message: "Initial commit".into(), author: "A <a@example.com>".into(),
//!         },
//!         trigger: "push".into(), url: None, duration_ms: Some(1200),
//!     },
//!     job: None,
//!     previous_status: None,
//! };
//! plugin.notify(&CallContext::default(), &event)?;
//! # Ok(())
//! # }
//! ```

pub mod bindings;
pub mod cache;
pub mod capability;
pub mod error;
pub mod limits;
pub mod plugin;
pub mod runtime;
pub mod sandbox;
mod state;
pub mod trust;

pub use bindings::{outputs, sandbox as wit_sandbox, types};
pub use capability::{Capability, CapabilityParseError, Checker, Denial, Grants, HostPattern, TcpTarget};
pub use error::{ErrorKind, PluginError, PluginLabel};
pub use limits::Limits;
pub use plugin::{CallContext, Plugin, Session, StepOutcome, World};
pub use runtime::{Inspection, Runtime, RuntimeError, RuntimeOptions, WIT_PACKAGE};
pub use sandbox::{ExecOutcome, ExecRequest, LogLevel, LogSink, Sandbox, SandboxError};
pub use trust::{Allowlist, Digest, TrustPolicy};
