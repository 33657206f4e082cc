//! A fake host for native unit tests of plugins: give it configuration, secrets, canned HTTP
//! responses and a fake sandbox, call your plugin's trait methods with it, then assert on the
//! log lines, outputs, commands and requests it recorded. Also the sample values those tests
//! start from ([`sample_build`], [`sample_job`], and per world [`sample_event`],
//! [`sample_status_update`], [`planned_job`] and [`sample_plan`]; a test changes the fields it
//! is about) and small helpers to read what a plugin produced ([`config`], [`header`],
//! [`capability_grants`]).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::config::Config;
use crate::host::Host;
use crate::http::{HttpError, HttpRequest, HttpResponse};
use crate::log::Level;
use crate::outputs::TestSuite;
use crate::sandbox::{Command, Exit};
use crate::types::{Build, Capability, Commit, Job, Manifest, Status};

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

/// A configuration of these `(key, value)` pairs, for tests of a plugin's settings parsing.
pub fn config(pairs: &[(&str, &str)]) -> Config {
    Config::new(pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())))
}

/// The commit id of [`sample_build`]'s commit (short form `0123456`).
pub const SAMPLE_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The sample build that plugin tests start from: build 9, number 42 of pipeline `web`,
/// status success, triggered by `push` for commit [`SAMPLE_SHA`] of
/// `https://git.example/web.git` on branch `main` (no tag) with message `Fix` by
/// `A <a@example.com>`, linked at `https://ci.example/builds/9`, running for 61.5 s.
pub fn sample_build() -> Build {
    Build {
        id: 9,
        number: 42,
        pipeline: "web".into(),
        status: Status::Success,
        commit: Commit {
            sha: SAMPLE_SHA.into(),
            repository: "https://git.example/web.git".into(),
            branch: Some("main".into()),
            tag: None,
            message: "Fix".into(),
            author: "A <a@example.com>".into(),
        },
        trigger: "push".into(),
        url: Some("https://ci.example/builds/9".into()),
        duration_ms: Some(61_500),
    }
}

/// A sample job: id 3, this name and status, no image, no duration yet.
pub fn sample_job(name: &str, status: Status) -> Job {
    Job { id: 3, name: name.into(), status, image: None, duration_ms: None }
}

/// A sample step invocation: step 0 named `s` of `uses`, in the running job `j` of
/// [`sample_build`] (running), with an empty environment.
#[cfg(feature = "step-executor")]
pub fn sample_invocation(uses: &str) -> crate::step_executor::Invocation {
    use crate::types::Step;
    crate::step_executor::Invocation {
        build: Build { status: Status::Running, ..sample_build() },
        job: sample_job("j", Status::Running),
        step: Step { index: 0, name: "s".into(), uses: uses.into() },
        env: Vec::new(),
    }
}

/// A sample notifier event of `kind` about [`sample_build`] with this status; a job event
/// carries `sample_job("test", status)`. No previous status.
#[cfg(feature = "notifier")]
pub fn sample_event(kind: crate::notifier::EventKind, status: Status) -> crate::notifier::Event {
    use crate::notifier::{Event, EventKind};
    let job = matches!(kind, EventKind::JobStarted | EventKind::JobFinished).then(|| sample_job("test", status));
    Event { kind, build: Build { status, ..sample_build() }, job, previous_status: None }
}

/// A sample status update for the job `test (os=linux)` of [`sample_build`] (running) in
/// `repository`, in state `state`, with context `chengis/test (os=linux)` and description
/// `Tests passed`.
#[cfg(feature = "scm-status")]
pub fn sample_status_update(state: Status, repository: &str) -> crate::scm_status::StatusUpdate {
    let mut build = Build { status: Status::Running, ..sample_build() };
    build.commit.repository = repository.into();
    crate::scm_status::StatusUpdate {
        build,
        job: Some(sample_job("test (os=linux)", state)),
        state,
        context: "chengis/test (os=linux)".into(),
        description: "Tests passed".into(),
    }
}

/// A planned job with this name and image, and nothing else: no needs, steps, services or
/// step images, not privileged, no Docker socket, no approval gate.
#[cfg(feature = "policy")]
pub fn planned_job(name: &str, image: Option<&str>) -> crate::policy::PlannedJob {
    crate::policy::PlannedJob {
        name: name.into(),
        image: image.map(Into::into),
        needs: Vec::new(),
        uses: Vec::new(),
        services: Vec::new(),
        step_images: Vec::new(),
        privileged: false,
        docker_socket: false,
        approval: false,
    }
}

/// A plan of these jobs for pipeline `web`, pushed, for [`sample_build`]'s commit, no actor.
#[cfg(feature = "policy")]
pub fn sample_plan(jobs: Vec<crate::policy::PlannedJob>) -> crate::policy::Plan {
    crate::policy::Plan {
        pipeline: "web".into(),
        commit: sample_build().commit,
        trigger: "push".into(),
        actor: None,
        jobs,
    }
}

/// The value of the first header of `request` named exactly `name` (same case, so that a test
/// also checks how the plugin spells it), if it has one.
pub fn header<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
    request.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// A manifest's capabilities as an operator grants them (`chengis plugin allow NAME --grant
/// ...`): `http:https://api.github.com:443`, `tcp:smtp.example.com:587`, `secret:TOKEN`,
/// `workspace:read`, `workspace:write`, `exec`.
pub fn capability_grants(manifest: &Manifest) -> Vec<String> {
    manifest
        .capabilities
        .iter()
        .map(|capability| match capability {
            Capability::OutboundHttp(pattern) => format!("http:{pattern}"),
            Capability::OutboundTcp(target) => format!("tcp:{target}"),
            Capability::Secret(name) => format!("secret:{name}"),
            Capability::WorkspaceRead => "workspace:read".into(),
            Capability::WorkspaceWrite => "workspace:write".into(),
            Capability::SandboxExec => "exec".into(),
        })
        .collect()
}
