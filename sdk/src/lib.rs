//! # chengis-plugin-sdk
//!
//! Write Chengis plugins in Rust. A plugin is a WebAssembly component for one of the worlds of
//! `chengis:plugin@0.1.0` (see `wit/` in the Chengis repository): a step executor, a notifier,
//! an SCM status reporter or a policy check. With this crate you write a struct, implement the
//! trait of its kind, call [`export!`] once, and build it with
//! `cargo build --release --target wasm32-wasip2`. wit-bindgen stays out of sight.
//!
//! ## Layout
//!
//! - One trait per kind: [`StepExecutor`], [`Notifier`], [`ScmStatus`], [`Policy`], each
//!   behind the cargo feature of the same name (enable exactly one per plugin crate).
//! - [`Host`]: logging, configuration, secrets, sandbox exec, outputs, HTTP.
//! - [`Config`]: typed configuration with errors that name the key.
//! - [`HttpRequest`] / [`HttpResponse`]: HTTP over `wasi:http`, where granted.
//! - [`testing::FakeHost`]: a fake host for native `cargo test`, with sample builds, jobs,
//!   events, status updates and plans to start tests from.
//! - [`scm`]: helpers for SCM status reporters (clone URL parsing, path encoding, description
//!   limits, the API token from a granted secret, error answers without the token).
//! - `notify` (feature `notifier`): the `on:` filter of notifiers (`success`, `failure`,
//!   `fixed`, `always`, with the previous run's status).
//! - [`rules`]: rule lists in configuration (one rule per line or `;`, `#` comments, line
//!   numbers) and the `invalid-rule` failure, as the builtin policies use them.
//! - [`types`] and [`bindings`]: the WIT types and raw bindings, re-exported.
//!
//! ## Example: a notifier
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! chengis-plugin-sdk = { version = "0.1", features = ["notifier"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use chengis_plugin_sdk::{export, Failure, Host, Kind, Manifest, Notifier};
//! use chengis_plugin_sdk::notifier::{Event, EventKind};
//!
//! /// Posts "build #N of PIPELINE: STATUS" to a webhook.
//! pub struct Hook;
//!
//! impl Notifier for Hook {
//!     fn manifest() -> Manifest {
//!         Manifest::new("hook", "0.1.0", "Posts build results to a webhook", Kind::Notifier)
//!             .outbound_http("https://hooks.example.com:443")
//!             .config("url", "The webhook URL", true, None)
//!     }
//!
//!     fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
//!         if event.kind != EventKind::BuildFinished {
//!             return Ok(());
//!         }
//!         let url: String = host.config().required("url")?;
//!         let build = &event.build;
//!         let text = format!("build #{} of {}: {}", build.number, build.pipeline, build.status.as_str());
//!         let response = host
//!             .http(&chengis_plugin_sdk::HttpRequest::post(url, text.clone()))
//!             .map_err(|e| Failure::new(format!("webhook failed: {e}")))?;
//!         if !response.is_success() {
//!             return Err(Failure::new(format!("webhook answered {}", response.status)));
//!         }
//!         host.info(&format!("sent: {text}"));
//!         Ok(())
//!     }
//! }
//!
//! export!(Hook as notifier);
//!
//! // A native unit test against the fake host:
//! use chengis_plugin_sdk::testing::FakeHost;
//! use chengis_plugin_sdk::{HttpResponse, types::{Build, Commit, Status}};
//!
//! let host = FakeHost::new()
//!     .with_config("url", "https://hooks.example.com/x")
//!     .with_http_response("https://hooks.example.com/", HttpResponse::new(200, "ok"));
//! let build = Build {
//!     id: 7, number: 3, pipeline: "web".into(), status: Status::Success,
//!     commit: Commit {
//!         sha: "a".repeat(40), repository: "web".into(), branch: Some("main".into()), tag: None,
//!         message: "Fix".into(), author: "A <a@example.com>".into(),
//!     },
//!     trigger: "push".into(), url: None, duration_ms: Some(1500),
//! };
//! Hook::notify(&host, Event { kind: EventKind::BuildFinished, build, job: None, previous_status: None }).unwrap();
//! assert_eq!(host.requests()[0].body, b"build #3 of web: success");
//! assert_eq!(host.log_text(), "sent: build #3 of web: success\n");
//! ```

pub mod bindings;
pub mod config;
pub mod host;
pub mod http;
mod kinds;
#[cfg(feature = "notifier")]
pub mod notify;
pub mod rules;
pub mod scm;
pub mod testing;

pub use bindings::chengis::plugin::{log, outputs, sandbox, types};
pub use config::{Config, ConfigError};
pub use host::Host;
#[cfg(target_arch = "wasm32")]
pub use host::{EventHost, PolicyHost, StepHost};
pub use http::{HttpError, HttpRequest, HttpResponse};
pub use kinds::*;
pub use log::Level;
pub use types::{Capability, Diagnostic, Failure, Kind, Manifest, Severity, Status};

#[doc(hidden)]
pub use wit_bindgen;
