//! A remote agent (`chengis agent --server URL --token T`): registers, long-polls for leases
//! with its labels and free capacity, runs each job exactly as the embedded agent does, and
//! reports over HTTP. Every call goes through one retry helper, so the agent lives through
//! server restarts, 5xx answers and network cuts; `SIGTERM` drains it.

pub mod blobs;
pub mod peer;
pub mod plugins;

use crate::assignment::Leased;
use crate::runner::AgentConfig;
use chengis_model::protocol::Lease;
use chengis_model::protocol::{AgentInfo, Needs};
use chengis_model::protocol::{AgentState, LeasePoll, Registered};
use chengis_runner::exec::CancelSignal;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// What went wrong calling the server.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The token was refused (unknown or revoked).
    #[error("the server refused the agent token ({0}); create a new one with `chengis agent-token create`")]
    Unauthorized(String),
    /// A newer lease owns the job.
    #[error("stale lease: {0}")]
    Stale(String),
    /// The server refused the call for good.
    #[error("{what}: {message} (HTTP {status})")]
    Refused {
        /// The call.
        what: String,
        /// The server's message.
        message: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server stayed unreachable (or kept failing) for the whole retry window.
    #[error("{what}: gave up after {tries} tries over {window:?}: {last}")]
    Unreachable {
        /// The call.
        what: String,
        /// Attempts made.
        tries: u32,
        /// Time since the first failure.
        window: Duration,
        /// The last error.
        last: String,
    },
    /// The agent's own setup failed (CA file, working directory).
    #[error("{0}")]
    Setup(String),
}

impl From<RemoteError> for crate::peer::PeerError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Stale(msg) => crate::peer::PeerError::Stale(msg),
            other => crate::peer::PeerError::Server(Box::new(other)),
        }
    }
}

/// One failed attempt, classified.
pub(crate) enum Attempt {
    /// Worth trying again (network error, 5xx, 429, 408), after at least this long.
    Retry(String, Option<Duration>),
    /// Final.
    Fail(RemoteError),
}

/// The agent's HTTP client: base URL, token, TLS roots. Its `Debug` never shows the token.
pub struct Client {
    base: String,
    token: String,
    name: String,
    http: ureq::Agent,
    /// Longest time a call keeps retrying after its first failure (lease polls retry forever).
    pub retry_window: Duration,
}

impl Client {
    /// A client for `server` (http:// or https://); `ca_file`: PEM roots to trust instead of the
    /// built-in ones (for a private CA or a self-signed server certificate).
    pub fn new(server: &str, token: &str, name: &str, ca_file: Option<&Path>) -> Result<Client, RemoteError> {
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent(format!("chengis-agent/{}", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            builder = builder.tls_config(tls_roots(path).map_err(RemoteError::Setup)?);
        }
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
            name: name.to_string(),
            http: builder.build().into(),
            retry_window: Duration::from_secs(300),
        })
    }

    /// Sends one request made by `request` (given the HTTP agent, the base URL and the
    /// `Authorization` value; it adds its own headers and body) and classifies the answer.
    pub(crate) fn send(
        &self,
        what: &str,
        request: impl FnOnce(&ureq::Agent, &str, &str, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, Attempt> {
        let auth = format!("Bearer {}", self.token);
        let mut resp = match request(&self.http, &self.base, &auth, &self.name) {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Retry(e.to_string(), None)),
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut text = String::new();
        let _ = resp.body_mut().with_config().limit(1 << 20).reader().read_to_string(&mut text);
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
        Err(match status {
            401 | 403 => Attempt::Fail(RemoteError::Unauthorized(message)),
            // The name is another token's: no lease is involved, and trying again cannot help.
            409 if value["error"]["code"] == "agent_name_taken" => {
                Attempt::Fail(RemoteError::Refused { what: what.to_string(), message, status })
            }
            409 => Attempt::Fail(RemoteError::Stale(message)),
            408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}: {message}"), retry_after),
            _ => Attempt::Fail(RemoteError::Refused { what: what.to_string(), message, status }),
        })
    }

    /// One attempt at `POST path` with a JSON body; the JSON answer.
    fn attempt(&self, what: &str, path: &str, body: &Value) -> Result<Value, Attempt> {
        let mut resp = self.send(what, |http, base, auth, name| {
            http.post(&format!("{base}{path}"))
                .header("Authorization", auth)
                .header("Chengis-Agent", name)
                .send_json(body)
        })?;
        let mut text = String::new();
        if let Err(e) = resp.body_mut().with_config().limit(64 << 20).reader().read_to_string(&mut text) {
            return Err(Attempt::Retry(format!("reading the answer: {e}"), None));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `POST path`, retried by [`Backoff`] while the failure is transient and `window`
    /// (measured from the first failure; default 5 minutes) has not run out.
    pub async fn call<T: DeserializeOwned>(
        self: &Arc<Self>,
        what: &str,
        path: &str,
        body: Value,
        window: Option<Duration>,
    ) -> Result<T, RemoteError> {
        let mut backoff = Backoff::new(window.unwrap_or(self.retry_window));
        loop {
            let (me, w, p, b) = (self.clone(), what.to_string(), path.to_string(), body.clone());
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || me.attempt(&w, &p, &b))
                .await
                .unwrap_or_else(|e| Err(Attempt::Retry(e.to_string(), None)));
            tracing::trace!("{what}: answered in {} µs", started.elapsed().as_micros());
            match outcome {
                Ok(v) => {
                    backoff.succeeded(what);
                    return serde_json::from_value(v).map_err(|e| RemoteError::Refused {
                        what: what.to_string(),
                        message: format!("unexpected answer: {e}"),
                        status: 200,
                    });
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(last, at_least)) => tokio::time::sleep(backoff.next(what, last, at_least)?).await,
            }
        }
    }

    /// [`call`](Self::call) for blocking code (blob and cache transfers, which run on the
    /// blocking pool): `attempt` is retried by the same [`Backoff`].
    pub(crate) fn retry_blocking<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(&Client) -> Result<T, Attempt>,
    ) -> Result<T, RemoteError> {
        let mut backoff = Backoff::new(self.retry_window);
        loop {
            match attempt(self) {
                Ok(v) => {
                    backoff.succeeded(what);
                    return Ok(v);
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(last, at_least)) => std::thread::sleep(backoff.next(what, last, at_least)?),
            }
        }
    }

    /// A call about a held lease (see [`super::protocol`]), answered with its typed answer.
    pub async fn lease_call<C: chengis_model::protocol::LeaseCall>(
        self: &Arc<Self>,
        lease: &Lease,
        call: &C,
    ) -> Result<C::Answer, RemoteError> {
        let action = C::ACTION.as_str();
        let what = format!("{action} (build job {})", lease.build_job_id);
        let path = format!("/api/v1/agent/leases/{}/{action}", lease.entry);
        self.call(&what, &path, chengis_model::protocol::body(lease, call), None).await
    }
}

/// A TLS configuration that trusts only the certificates in the PEM file `path` (a private CA,
/// or a self-signed server certificate).
pub fn tls_roots(path: &Path) -> Result<ureq::tls::TlsConfig, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("the CA file {} is not valid PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("the CA file {} holds no certificate", path.display()));
    }
    Ok(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build())
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The retry policy of every agent call: exponential backoff from 100 ms doubling to 5 s, each
/// wait scaled by a random factor (or at least the server's `Retry-After`), until `window` has
/// passed since the first failure.
struct Backoff {
    window: Duration,
    first_failure: Option<Instant>,
    pause: Duration,
    tries: u32,
}

impl Backoff {
    fn new(window: Duration) -> Backoff {
        Backoff { window, first_failure: None, pause: Duration::from_millis(100), tries: 0 }
    }

    /// How long to wait after failure `last`, or the final error once the window has passed.
    fn next(&mut self, what: &str, last: String, at_least: Option<Duration>) -> Result<Duration, RemoteError> {
        self.tries += 1;
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.window {
            return Err(RemoteError::Unreachable {
                what: what.to_string(),
                tries: self.tries,
                window: since.elapsed(),
                last,
            });
        }
        let wait = at_least.unwrap_or(jitter(self.pause));
        tracing::warn!("{what}: {last}; retrying in {wait:?}");
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        Ok(wait)
    }

    fn succeeded(&self, what: &str) {
        if self.tries > 0 {
            tracing::info!("{what}: succeeded after {} failed tries", self.tries);
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.0), so agents that failed together do not retry in
/// lockstep.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hash of the time: varies per call and per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let r = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.5 + r / 2.0)
}

/// How a remote agent runs. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct RemoteConfig {
    /// The server's URL.
    pub server: String,
    /// The agent token.
    pub token: String,
    /// PEM roots to trust for an https:// server.
    pub ca_file: Option<PathBuf>,
    /// Where workspaces live.
    pub work_dir: PathBuf,
    /// How long a drain (`SIGTERM`) waits for running jobs before cancelling them.
    pub drain_deadline: Duration,
    /// What it registers: labels, executors, resources.
    pub info: AgentInfo,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("name", &self.name).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("work_dir", &self.work_dir)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Runs the agent until `drain` is cancelled (then lets running jobs finish, up to the drain
/// deadline) or the token is refused.
pub async fn run_remote(cfg: RemoteConfig, run: AgentConfig, drain: CancelSignal) -> Result<(), RemoteError> {
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| RemoteError::Setup(format!("cannot create {}: {e}", cfg.work_dir.display())))?;
    let client = Arc::new(Client::new(&cfg.server, &cfg.token, &cfg.info.name, cfg.ca_file.as_deref())?);
    let reg: Registered = client
        .call("register", "/api/v1/agent/register", serde_json::to_value(&cfg.info).unwrap_or_default(), None)
        .await?;
    let mut run = run;
    run.lease_ttl = Duration::from_millis(reg.lease_ttl_ms.max(1000));
    run.renew_every = Duration::from_millis(reg.renew_every_ms.clamp(200, reg.lease_ttl_ms.max(1000) / 2));
    tracing::info!(
        agent = %cfg.info.name,
        server = %cfg.server,
        labels = ?cfg.info.labels,
        executors = run.executors,
        "registered; polling for jobs"
    );
    // The agent's copy of the server's decisions for `uses:` steps (see `plugins`).
    let plugins = Arc::new(plugins::Mirror::open(&cfg.work_dir).map_err(RemoteError::Setup)?);
    let link = peer::RemotePeer::new(client.clone(), cfg.work_dir.clone(), plugins);
    let slots = Arc::new(Semaphore::new(run.executors.max(1)));
    let jobs = CancelSignal::new();
    // Set when a job's lease turned out stale: the agent registers again, which lets it take
    // back jobs it lost (see `LeaseRequest::registered_ms`).
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job_ended = Arc::new(tokio::sync::Notify::new());
    let mut running: Vec<(tokio::task::JoinHandle<()>, Needs)> = Vec::new();
    let total = Needs { cpu_millis: cfg.info.cpus * 1000, memory_mb: cfg.info.memory_mb };
    let outcome = loop {
        running.retain(|(h, _)| !h.is_finished());
        if drain.is_cancelled() {
            break Ok(());
        }
        let free = slots.available_permits();
        if free == 0 {
            // Poll again as soon as a job ends.
            tokio::select! {
                _ = job_ended.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = drain.cancelled() => {}
            }
            continue;
        }
        let used = running.iter().fold(Needs::default(), |a, (_, n)| Needs {
            cpu_millis: a.cpu_millis + n.cpu_millis,
            memory_mb: a.memory_mb + n.memory_mb,
        });
        let free_resources = (total.cpu_millis > 0 && total.memory_mb > 0).then(|| Needs {
            cpu_millis: (total.cpu_millis - used.cpu_millis).max(0),
            memory_mb: (total.memory_mb - used.memory_mb).max(0),
        });
        if lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let info = serde_json::to_value(&cfg.info).unwrap_or_default();
            if let Err(e) = client.call::<Registered>("register", "/api/v1/agent/register", info, None).await {
                tracing::warn!("registering again: {e}");
            }
        }
        let poll = LeasePoll { capacity: free, free: free_resources, labels: cfg.info.labels.clone(), wait_ms: 5000 };
        let body = serde_json::to_value(&poll).unwrap_or_default();
        // A lease poll retries for as long as it takes: the agent outlives server restarts.
        let poll = client.call::<Leased>("lease", "/api/v1/agent/lease", body, Some(Duration::MAX));
        tokio::pin!(poll);
        let leased = tokio::select! {
            r = &mut poll => r,
            _ = drain.cancelled() => {
                // The server stops this poll once it knows; whatever it leased before that
                // still runs here (dropping it would strand the job until its lease expires).
                announce(&client, "draining").await;
                poll.await
            }
        };
        let leased = match leased {
            Ok(l) => l,
            Err(e @ RemoteError::Unauthorized(_)) => break Err(e),
            Err(RemoteError::Stale(msg)) => {
                // The server does not know this agent (a fresh database): register again.
                tracing::warn!("lease: {msg}; registering again");
                let info = serde_json::to_value(&cfg.info).unwrap_or_default();
                if let Err(e) = client.call::<Registered>("register", "/api/v1/agent/register", info, None).await {
                    tracing::error!("register: {e}");
                }
                continue;
            }
            Err(e) => {
                tracing::error!("lease: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for a in leased.assignments {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let needs = Needs::of(&a.spec);
            let span = tracing::info_span!(
                "build_job",
                build = a.build_id,
                build_job = a.lease.build_job_id,
                job = %a.spec.id,
                attempt = a.lease.attempt
            );
            let (link, run, stop, lost, ended) =
                (link.clone(), run.clone(), jobs.clone(), lost.clone(), job_ended.clone());
            let handle = tokio::spawn(
                async move {
                    if let Err(e) = crate::runner::execute(&link, &run, a, Some(stop)).await {
                        tracing::error!("running the job: {e}");
                        if e.is_stale() {
                            lost.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                    ended.notify_one();
                }
                .instrument(span),
            );
            running.push((handle, needs));
        }
    };
    // Drain: no new leases; running jobs get until the deadline, then are cancelled (and still
    // report their end).
    running.retain(|(h, _)| !h.is_finished());
    if !running.is_empty() {
        tracing::info!("draining: waiting up to {:?} for {} running jobs", cfg.drain_deadline, running.len());
        announce(&client, "draining").await;
        let deadline = Instant::now() + cfg.drain_deadline;
        while running.iter().any(|(h, _)| !h.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if running.iter().any(|(h, _)| !h.is_finished()) {
            tracing::warn!("drain deadline passed: cancelling the jobs still running");
            jobs.cancel();
            for (h, _) in running {
                let _ = h.await;
            }
        }
    }
    if outcome.is_ok() {
        announce(&client, "drained").await;
    }
    outcome
}

/// Tells the server the agent is `draining` or `drained` (best effort, 5 s).
async fn announce(client: &Arc<Client>, state: &str) {
    let body = serde_json::to_value(AgentState { state: state.to_string() }).unwrap_or_default();
    if let Err(e) = client.call::<Value>(state, "/api/v1/agent/state", body, Some(Duration::from_secs(5))).await {
        tracing::warn!("telling the server the agent is {state}: {e}");
    }
}

/// The facts an agent registers about its host: OS, architecture, cores, memory, Docker.
pub fn host_facts(name: String, labels: Vec<String>, executors: usize, docker: bool) -> AgentInfo {
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    AgentInfo {
        name,
        labels,
        executors: executors as i64,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
        memory_mb,
        docker,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
