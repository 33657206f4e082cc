//! A fake host for native unit tests of plugins: give it configuration, secrets, canned HTTP
//! responses and a fake sandbox, call your plugin's trait methods with it, then assert on the
//! log lines, outputs, commands and requests it recorded.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::config::Config;
use crate::host::Host;
use crate::http::{HttpError, HttpRequest, HttpResponse};
use crate::log::Level;
use crate::outputs::TestSuite;
use crate::sandbox::{Command, Exit};

type ExecFn = Box<dyn Fn(&Command, &dyn Fn(&str)) -> Result<Exit, String>>;

/// A host that records everything and answers from what the test set up.
pub struct FakeHost {
    config: Vec<(String, String)>,
    secrets: HashMap<String, String>,
    responses: Vec<(String, HttpResponse)>,
    exec: ExecFn,
    logs: RefCell<Vec<(Level, String)>>,
    outputs: RefCell<Vec<(String, String)>>,
    env: RefCell<Vec<(String, String)>>,
    tests: RefCell<Vec<TestSuite>>,
    commands: RefCell<Vec<Command>>,
    requests: RefCell<Vec<HttpRequest>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    /// A host with no configuration, no secrets, no HTTP responses, and a sandbox whose
    /// commands all exit 0 without output.
    pub fn new() -> Self {
        FakeHost {
            config: Vec::new(),
            secrets: HashMap::new(),
            responses: Vec::new(),
            exec: Box::new(|_, _| Ok(Exit { code: Some(0), timed_out: false })),
            logs: RefCell::default(),
            outputs: RefCell::default(),
            env: RefCell::default(),
            tests: RefCell::default(),
            commands: RefCell::default(),
            requests: RefCell::default(),
        }
    }

    /// Sets a configuration key.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Grants a secret with this value.
    pub fn with_secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.insert(name.into(), value.into());
        self
    }

    /// Answers requests whose URL starts with `url_prefix` with `response`.
    pub fn with_http_response(mut self, url_prefix: &str, response: HttpResponse) -> Self {
        self.responses.push((url_prefix.into(), response));
        self
    }

    /// Runs sandbox commands with `exec`, which gets the command and a function that writes
    /// a line of the command's output to the log.
    pub fn with_exec(mut self, exec: impl Fn(&Command, &dyn Fn(&str)) -> Result<Exit, String> + 'static) -> Self {
        self.exec = Box::new(exec);
        self
    }

    /// Every log line, with its level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    /// The log as text, one line per entry.
    pub fn log_text(&self) -> String {
        self.logs.borrow().iter().map(|(_, line)| format!("{line}\n")).collect()
    }

    /// Outputs set with `set_output`.
    pub fn outputs(&self) -> Vec<(String, String)> {
        self.outputs.borrow().clone()
    }

    /// Variables set with `set_env`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env.borrow().clone()
    }

    /// Test suites reported.
    pub fn tests(&self) -> Vec<TestSuite> {
        self.tests.borrow().clone()
    }

    /// Commands run in the sandbox.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.borrow().clone()
    }

    /// HTTP requests sent.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.borrow().clone()
    }
}

impl Host for FakeHost {
    fn log(&self, level: Level, message: &str) {
        let mut logs = self.logs.borrow_mut();
        logs.extend(message.lines().map(|line| (level, line.to_string())));
    }

    fn config(&self) -> Config {
        Config::new(self.config.iter().cloned())
    }

    fn secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).cloned()
    }

    fn exec(&self, command: &Command) -> Result<Exit, String> {
        self.commands.borrow_mut().push(command.clone());
        let write = |line: &str| self.log(Level::Info, line);
        (self.exec)(command, &write)
    }

    fn set_output(&self, name: &str, value: &str) {
        self.outputs.borrow_mut().push((name.into(), value.into()));
    }

    fn set_env(&self, name: &str, value: &str) {
        self.env.borrow_mut().push((name.into(), value.into()));
    }

    fn report_tests(&self, suite: &TestSuite) {
        self.tests.borrow_mut().push(suite.clone());
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        request.parts()?;
        self.requests.borrow_mut().push(request.clone());
        self.responses
            .iter()
            .find(|(prefix, _)| request.url.starts_with(prefix.as_str()))
            .map(|(_, response)| response.clone())
            .ok_or_else(|| HttpError(format!("{} {}: no canned response in the FakeHost", request.method, request.url)))
    }
}
