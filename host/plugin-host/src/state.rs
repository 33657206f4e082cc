//! The data of one plugin store ([`CallState`]) and the host side of every import: logging,
//! configuration, secrets, sandbox exec, step outputs, and the `wasi:http` gate. Every import
//! that touches a capability asks the plugin's [`Checker`] first; a denial is logged, recorded
//! (so that the call's error names it even if the guest swallows it) and, except for HTTP
//! (where `wasi:http` has its own `HTTP-request-denied` error), traps the guest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::{config, log, outputs, sandbox, secrets, types};
use crate::capability::{Checker, Denial, WorkspaceAccess};
use crate::error::{ErrorKind, PluginLabel};
use crate::limits::{Limits, MemoryLimiter};
use crate::plugin::{CallContext, StepOutcome};
use crate::sandbox::{ExecRequest, LogLevel, LogSink};

/// The guest's monotonic clock: nanoseconds since the store was created.
struct CallClock(Instant);

impl HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A `wasi:clocks` sleep that ends no later than the call's deadline, after which the epoch
/// deadline stops the guest.
struct BoundedSleep(tokio::time::Instant);

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedSleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

/// Where the guest sees the job workspace.
pub(crate) const WORKSPACE_GUEST_PATH: &str = "/workspace";

/// A host import ran past the call's deadline.
#[derive(Debug, thiserror::Error)]
#[error("a host call ran past the plugin call's deadline")]
pub(crate) struct HostCallTimedOut;

/// The guest wrote more step outputs than allowed.
#[derive(Debug, thiserror::Error)]
#[error("step outputs are over the limit")]
pub(crate) struct OutputsTooLarge {
    size: usize,
    limit: usize,
}

/// Log lines of one call, cut to the call's limits, sent to the caller's sink.
struct CallLog {
    label: PluginLabel,
    sink: Option<Arc<dyn LogSink>>,
    written: usize,
    cut: bool,
    limit: usize,
    line_limit: usize,
}

impl CallLog {
    fn emit(&mut self, level: LogLevel, text: &str) {
        for line in text.lines() {
            if self.cut {
                return;
            }
            let mut end = line.len().min(self.line_limit);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            let line = &line[..end];
            self.written += line.len() + 1;
            if self.written > self.limit {
                self.cut = true;
                if let Some(sink) = &self.sink {
                    sink.line(LogLevel::Warn, &format!("{}: log cut after {} bytes", self.label, self.limit));
                }
                return;
            }
            if let Some(sink) = &self.sink {
                sink.line(level, line);
            }
        }
    }
}

/// The `wasi:http` hooks: every outbound request goes through the capability checker.
pub(crate) struct HttpGate {
    checker: Arc<Checker>,
    denials: Arc<Mutex<Vec<Denial>>>,
    deadline: Arc<Mutex<Instant>>,
}

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        if let Err(denial) = self.checker.check_http(&scheme, &host, port) {
            self.denials.lock().unwrap_or_else(PoisonError::into_inner).push(denial);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let deadline = *self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let cap = |timeout: Option<Duration>| Some(timeout.map_or(remaining, |t| t.min(remaining)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let io: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

/// The data of one plugin store.
pub(crate) struct CallState {
    pub(crate) label: PluginLabel,
    pub(crate) limits: Limits,
    pub(crate) limiter: MemoryLimiter,
    checker: Arc<Checker>,
    deadline: Arc<Mutex<Instant>>,
    denials: Arc<Mutex<Vec<Denial>>>,
    wasi: WasiCtx,
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    http_gate: HttpGate,
    config: Vec<(String, String)>,
    secrets: HashMap<String, String>,
    sandbox: Option<Arc<dyn crate::sandbox::Sandbox>>,
    log: CallLog,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    printed: (usize, usize),
    clock_origin: Instant,
    /// Whether the guest asked to sleep past the call's deadline (its sleep was cut there);
    /// see [`CallState::slept_to_deadline`].
    pub(crate) overslept: bool,
    output_bytes: usize,
    pub(crate) step: StepOutcome,
}

impl CallState {
    /// The state for calls of `label` with `checker`'s capabilities and `ctx`'s inputs.
    pub(crate) fn new(
        label: PluginLabel,
        checker: Arc<Checker>,
        limits: Limits,
        ctx: &CallContext,
    ) -> Result<Self, ErrorKind> {
        let stdout = MemoryOutputPipe::new(limits.log_bytes);
        let stderr = MemoryOutputPipe::new(limits.log_bytes);
        let mut wasi = WasiCtxBuilder::new();
        let clock_origin = Instant::now();
        wasi.stdout(stdout.clone()).stderr(stderr.clone()).monotonic_clock(CallClock(clock_origin));
        if let (Some(access), Some(workspace)) = (checker.workspace_access(), &ctx.workspace) {
            preopen_workspace(&mut wasi, workspace, access)?;
        }
        let deadline = Arc::new(Mutex::new(Instant::now() + limits.timeout));
        let denials = Arc::new(Mutex::new(Vec::new()));
        allow_tcp_targets(&mut wasi, &checker, &denials);
        let mut config = ctx.config.clone();
        config.sort();
        Ok(CallState {
            log: CallLog {
                label: label.clone(),
                sink: ctx.log.clone(),
                written: 0,
                cut: false,
                limit: limits.log_bytes,
                line_limit: limits.log_line_bytes,
            },
            label,
            limits,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            http_gate: HttpGate { checker: checker.clone(), denials: denials.clone(), deadline: deadline.clone() },
            checker,
            deadline,
            denials,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            config,
            secrets: ctx.secrets.clone(),
            sandbox: ctx.sandbox.clone(),
            stdout,
            stderr,
            printed: (0, 0),
            clock_origin,
            overslept: false,
            output_bytes: 0,
            step: StepOutcome::default(),
        })
    }

    /// Starts a new call: a fresh deadline and no denials yet.
    pub(crate) fn begin_call(&mut self) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + self.limits.timeout;
        self.overslept = false;
        self.denials.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// The first capability denial of the current call, if any.
    pub(crate) fn first_denial(&self) -> Option<Denial> {
        self.denials.lock().unwrap_or_else(PoisonError::into_inner).first().cloned()
    }

    /// Ends a call: logs the denials and forwards what the guest printed to the log.
    pub(crate) fn end_call(&mut self) {
        let mut guard = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if !guard.is_empty() {
            let denials = std::mem::take(&mut *guard);
            drop(guard);
            let label = self.label.clone();
            for denial in &denials {
                self.log.emit(LogLevel::Warn, &format!("{label}: {denial}"));
            }
            // Keep the denials for the error classification that follows.
            *self.denials.lock().unwrap_or_else(PoisonError::into_inner) = denials;
        } else {
            drop(guard);
        }
        // What the guest printed since the last call (most calls print nothing).
        let (out_done, err_done) = self.printed;
        let stdout = self.stdout.contents();
        if stdout.len() > out_done {
            self.log.emit(LogLevel::Info, &String::from_utf8_lossy(&stdout[out_done..]));
        }
        let stderr = self.stderr.contents();
        if stderr.len() > err_done {
            self.log.emit(LogLevel::Warn, &String::from_utf8_lossy(&stderr[err_done..]));
        }
        self.printed = (stdout.len(), stderr.len());
    }

    /// Turns a failed call into the error a user should see, by the host's own state.
    pub(crate) fn classify(&self, error: &wasmtime::Error) -> ErrorKind {
        if self.limiter.exceeded() {
            return ErrorKind::MemoryExceeded { limit_bytes: self.limits.memory_bytes };
        }
        if let Some(denial) = error.downcast_ref::<Denial>() {
            return ErrorKind::Denied(denial.clone());
        }
        if matches!(error.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt))
            || error.downcast_ref::<HostCallTimedOut>().is_some()
        {
            return ErrorKind::TimedOut(self.limits.timeout);
        }
        if let Some(too_large) = error.downcast_ref::<OutputsTooLarge>() {
            return ErrorKind::OutputTooLarge { what: "step outputs", size: too_large.size, limit: too_large.limit };
        }
        if let Some(denial) = self.first_denial() {
            return ErrorKind::Denied(denial);
        }
        let mut message = error.root_cause().to_string();
        if let Some(said) = self.last_stderr_line() {
            message.push_str(&format!(" (the plugin's last words: {said})"));
        }
        ErrorKind::Trap(message)
    }

    /// The last line the guest wrote to stderr (where a Rust panic message goes), cut short.
    fn last_stderr_line(&self) -> Option<String> {
        let stderr = self.stderr.contents();
        let text = String::from_utf8_lossy(&stderr);
        let line = text.lines().rev().find(|line| !line.trim().is_empty() && !line.starts_with("note: "))?;
        Some(line.chars().take(300).collect())
    }

    /// A pollable for a `wasi:clocks` sleep of `requested`, cut at the call's deadline.
    pub(crate) fn sleep(&mut self, requested: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let remaining = self.remaining();
        if requested > remaining {
            self.overslept = true;
        }
        let end = tokio::time::Instant::now() + requested.min(remaining);
        let sleep = self.table.push(BoundedSleep(end))?;
        subscribe(&mut self.table, sleep)
    }

    /// A pollable for a `wasi:clocks` sleep until the guest's monotonic instant `when`.
    pub(crate) fn sleep_until(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = Duration::from_nanos(CallClock(self.clock_origin).now());
        self.sleep(Duration::from_nanos(when).saturating_sub(now))
    }

    /// Whether the call slept until its deadline: a sleep was cut at the deadline and the
    /// deadline has passed. (A cut sleep that ended early, because what the guest polled
    /// with it became ready first, e.g. a socket with a timeout, is no timeout.)
    pub(crate) fn slept_to_deadline(&self) -> bool {
        self.overslept && self.remaining().is_zero()
    }

    fn deny(&mut self, denial: Denial) -> wasmtime::Error {
        self.denials.lock().unwrap_or_else(PoisonError::into_inner).push(denial.clone());
        wasmtime::Error::new(denial)
    }

    fn remaining(&self) -> Duration {
        self.deadline.lock().unwrap_or_else(PoisonError::into_inner).saturating_duration_since(Instant::now())
    }

    fn count_output(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.output_bytes += bytes;
        if self.output_bytes > self.limits.output_bytes {
            return Err(wasmtime::Error::new(OutputsTooLarge {
                size: self.output_bytes,
                limit: self.limits.output_bytes,
            }));
        }
        Ok(())
    }
}

/// Lets the guest connect to the addresses of its granted `tcp:HOST:PORT` destinations (and
/// look names up, which it needs to find them). A plugin that requests outbound TCP gets the
/// sockets, but every other address is refused and recorded as a denial naming the grant that
/// would allow it; a plugin that requests none has no sockets at all.
fn allow_tcp_targets(wasi: &mut WasiCtxBuilder, checker: &Checker, denials: &Arc<Mutex<Vec<Denial>>>) {
    use std::net::{SocketAddr, ToSocketAddrs};
    use wasmtime_wasi::sockets::SocketAddrUse;
    if !checker.requests_tcp() {
        return;
    }
    let targets = checker.tcp_targets();
    let allowed: Vec<SocketAddr> = targets
        .iter()
        .filter_map(|t| Some((t.host.as_str(), t.port?)))
        .flat_map(|target| target.to_socket_addrs().map(Iterator::collect::<Vec<_>>).unwrap_or_default())
        .collect();
    let allowed = Arc::new(allowed);
    let denials = denials.clone();
    wasi.allow_tcp(true).allow_ip_name_lookup(!targets.is_empty()).socket_addr_check(move |addr, usage| {
        let ok = match usage {
            // The implicit bind before a connect uses the wildcard address and port 0.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            _ => false,
        };
        if !ok && !matches!(usage, SocketAddrUse::TcpBind) {
            let denial = Denial {
                what: format!("outbound TCP to {addr}"),
                why: format!(
                    "the operator has not granted it (grant `tcp:{}:{}` or `tcp:HOST:{}` to allow it)",
                    addr.ip(),
                    addr.port(),
                    addr.port()
                ),
            };
            denials.lock().unwrap_or_else(PoisonError::into_inner).push(denial);
        }
        Box::pin(async move { ok })
    });
}

fn preopen_workspace(wasi: &mut WasiCtxBuilder, workspace: &Path, access: WorkspaceAccess) -> Result<(), ErrorKind> {
    let perms = match access {
        WorkspaceAccess::Read => FsPerms::ReadOnly,
        WorkspaceAccess::Write => FsPerms::ReadWrite,
    };
    wasi.preopened_dir(workspace, WORKSPACE_GUEST_PATH, perms)
        .map(|_| ())
        .map_err(|e| ErrorKind::Host(format!("cannot open the workspace {}: {e}", workspace.display())))
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http_gate }
    }
}

impl types::Host for CallState {}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log.emit(level, &message);
    }
}

impl config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    fn all(&mut self) -> Vec<types::KeyValue> {
        self.config.iter().map(|(key, value)| types::KeyValue { key: key.clone(), value: value.clone() }).collect()
    }
}

impl secrets::Host for CallState {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        match self.checker.check_secret(&name) {
            Ok(()) => Ok(self.secrets.get(&name).cloned()),
            Err(denial) => Err(self.deny(denial)),
        }
    }
}

impl sandbox::Host for CallState {
    fn exec(&mut self, command: sandbox::Command) -> wasmtime::Result<Result<sandbox::Exit, String>> {
        if let Err(denial) = self.checker.check_exec() {
            return Err(self.deny(denial));
        }
        let Some(sandbox) = self.sandbox.clone() else {
            return Ok(Err("no sandbox is available to this call".into()));
        };
        if command.argv.is_empty() {
            return Ok(Err("the command is empty".into()));
        }
        if let Some(workdir) = &command.workdir
            && (Path::new(workdir).is_absolute() || Path::new(workdir).components().any(|c| c.as_os_str() == ".."))
        {
            return Ok(Err(format!("the workdir {workdir:?} must be relative to the workspace, without `..`")));
        }
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(wasmtime::Error::new(HostCallTimedOut));
        }
        let timeout = command.timeout_ms.map_or(remaining, |ms| Duration::from_millis(ms).min(remaining));
        let request = ExecRequest {
            argv: command.argv,
            env: command.env.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            workdir: command.workdir,
            timeout,
        };
        let log = &mut self.log;
        let outcome = sandbox.exec(&request, &mut |line| log.emit(LogLevel::Info, line));
        match outcome {
            Ok(outcome) if outcome.timed_out && self.remaining().is_zero() => {
                Err(wasmtime::Error::new(HostCallTimedOut))
            }
            Ok(outcome) => Ok(Ok(sandbox::Exit { code: outcome.code, timed_out: outcome.timed_out })),
            Err(error) => Ok(Err(error.0)),
        }
    }
}

impl outputs::Host for CallState {
    fn set_output(&mut self, name: String, value: String) -> wasmtime::Result<()> {
        self.count_output(name.len() + value.len())?;
        self.step.outputs.push((name, value));
        Ok(())
    }

    fn set_env(&mut self, name: String, value: String) -> wasmtime::Result<()> {
        self.count_output(name.len() + value.len())?;
        self.step.env.push((name, value));
        Ok(())
    }

    fn report_tests(&mut self, suite: outputs::TestSuite) -> wasmtime::Result<()> {
        let size = suite.name.len()
            + suite
                .cases
                .iter()
                .map(|c| c.name.len() + c.classname.len() + c.message.as_ref().map_or(0, String::len) + 16)
                .sum::<usize>();
        self.count_output(size)?;
        self.step.tests.push(suite);
        Ok(())
    }
}
