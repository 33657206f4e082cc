//! [`Host`]: what a plugin can ask of Chengis. In a component it is the world's host type
//! (`StepHost`, `EventHost`, `PolicyHost`: the WIT imports that world has); in native unit
//! tests it is [`crate::testing::FakeHost`].

use crate::config::Config;
use crate::http::{HttpError, HttpRequest, HttpResponse};
use crate::log::Level;
use crate::outputs::TestSuite;
use crate::sandbox::{Command, Exit};

/// The host's services, as seen by a plugin. Calls that need a capability the plugin lacks
/// make the real host stop the plugin with a message naming the missing grant.
pub trait Host {
    /// Writes one log line (or several, split on `\n`).
    fn log(&self, level: Level, message: &str);

    /// The plugin's configuration.
    fn config(&self) -> Config;

    /// Reads a granted secret; `None` when it is granted but has no value.
    fn secret(&self, name: &str) -> Option<String>;

    /// Runs a command in the job's sandbox (step executors with `sandbox-exec`).
    fn exec(&self, command: &Command) -> Result<Exit, String>;

    /// Sets a step output (step executors).
    fn set_output(&self, name: &str, value: &str);

    /// Sets an environment variable for later steps (step executors).
    fn set_env(&self, name: &str, value: &str);

    /// Records test results (step executors).
    fn report_tests(&self, suite: &TestSuite);

    /// Sends an HTTP request (with a granted `outbound-http` capability).
    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError>;

    /// Writes an info line.
    fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }
}

/// Implements [`Host`] for a world's host type over the imports that world has; the methods of
/// imports the world lacks fail without referencing them, so the component does not import
/// what its world does not provide.
#[cfg(target_arch = "wasm32")]
macro_rules! wasm_host {
    ($(#[$doc:meta])* $name:ident, secrets: $secrets:tt, http: $http:tt, step: $step:tt) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Host for $name {
            fn log(&self, level: Level, message: &str) {
                crate::bindings::chengis::plugin::log::log(level, message);
            }

            fn config(&self) -> Config {
                Config::new(crate::bindings::chengis::plugin::config::all().into_iter().map(|kv| (kv.key, kv.value)))
            }

            fn secret(&self, name: &str) -> Option<String> {
                wasm_host!(@if $secrets {
                    crate::bindings::chengis::plugin::secrets::get(name)
                } else {
                    panic!("secret {name:?}: policies cannot read secrets")
                })
            }

            fn exec(&self, command: &Command) -> Result<Exit, String> {
                wasm_host!(@if $step {
                    crate::bindings::chengis::plugin::sandbox::exec(command)
                } else {
                    Err(format!("{:?}: only step executors can run commands", command.argv))
                })
            }

            fn set_output(&self, name: &str, value: &str) {
                wasm_host!(@if $step {
                    crate::bindings::chengis::plugin::outputs::set_output(name, value)
                } else {
                    panic!("output {name:?} = {value:?}: only step executors set outputs")
                })
            }

            fn set_env(&self, name: &str, value: &str) {
                wasm_host!(@if $step {
                    crate::bindings::chengis::plugin::outputs::set_env(name, value)
                } else {
                    panic!("env {name:?} = {value:?}: only step executors set environment variables")
                })
            }

            fn report_tests(&self, suite: &TestSuite) {
                wasm_host!(@if $step {
                    crate::bindings::chengis::plugin::outputs::report_tests(suite)
                } else {
                    panic!("test suite {:?}: only step executors report tests", suite.name)
                })
            }

            fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
                wasm_host!(@if $http {
                    crate::http::send(request)
                } else {
                    Err(HttpError(format!("{}: policies have no network", request.url)))
                })
            }
        }
    };
    (@if true $yes:block else $no:block) => { $yes };
    (@if false $yes:block else $no:block) => { $no };
}

#[cfg(target_arch = "wasm32")]
wasm_host!(
    /// The host of a step executor: every import.
    StepHost, secrets: true, http: true, step: true
);

#[cfg(target_arch = "wasm32")]
wasm_host!(
    /// The host of a notifier or SCM status reporter: log, config, secrets and HTTP.
    EventHost, secrets: true, http: true, step: false
);

#[cfg(target_arch = "wasm32")]
wasm_host!(
    /// The host of a policy: log and config only.
    PolicyHost, secrets: false, http: false, step: false
);
