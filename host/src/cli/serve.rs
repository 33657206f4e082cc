//! `chengis serve`: the server with its embedded agent. Every setting comes from a flag, a
//! `CHENGIS_*` variable, a TOML file (`--config`) or a default, in that order of precedence.

use super::docker::DockerArgs;
use super::error::{as_usage, usage};
use super::storage::{STORAGE_KEYS, StorageArgs};
use crate::agent::{AgentConfig, run_agent};
use crate::engine::builds::BuildContext;
use crate::exec::CancelSignal;
use crate::exec::docker::DockerRuntime;
use crate::plugins::PluginService;
use crate::server::{AppState, router};
use crate::store::secrets::MasterKeys;
use crate::store::{Store, redact_url};
use anyhow::{Context, bail};
use chengis_runner::sandbox::{HostPolicy, HostSteps};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `chengis serve` (and `chengis migrate`, which shares the database settings).
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CHENGIS_LISTEN")]
    pub listen: Option<String>,
    /// Data directory: database, master key, mirrors, caches, artifacts [default: ./chengis-data].
    #[arg(long, env = "CHENGIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The embedded agents' work directory: workspaces and step files, outside the data
    /// directory [default: the data directory's path with `-work` appended].
    #[arg(long, env = "CHENGIS_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// How steps without an image run on the embedded agents: `sandboxed` (as the step user
    /// when root, under Landlock: no access to the data directory), `docker` (refused: give
    /// them an image) or `trusted` (with the server's authority) [default: sandboxed].
    #[arg(long, env = "CHENGIS_HOST_STEPS")]
    pub host_steps: Option<String>,
    /// The unprivileged user sandboxed steps run as when the server runs as root
    /// [default: nobody].
    #[arg(long, env = "CHENGIS_STEP_USER")]
    pub step_user: Option<String>,
    /// Database URL: sqlite://PATH or postgres://... [default: SQLite in the data directory].
    #[arg(long, env = "CHENGIS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Jobs the embedded agent runs at once [default: the number of cores].
    #[arg(long, env = "CHENGIS_EXECUTORS")]
    pub executors: Option<usize>,
    /// Embedded agents: 1 (default) or 0 to run none.
    #[arg(long, env = "CHENGIS_AGENTS")]
    pub agents: Option<usize>,
    /// How long a lease lasts without renewal, such as `10s`.
    #[arg(long, env = "CHENGIS_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Times a job is run again after its agent was lost before it is marked `error`.
    #[arg(long, env = "CHENGIS_MAX_ATTEMPTS")]
    pub max_attempts: Option<i64>,
    /// The URL people reach this server at, for links in notifications and commit statuses
    /// [default: http:// + the listen address].
    #[arg(long, env = "CHENGIS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Webhook deliveries accepted per job and minute; more are answered 429 [default: 120].
    #[arg(long, env = "CHENGIS_WEBHOOK_RATE_LIMIT")]
    pub webhook_rate_limit: Option<usize>,
    /// How long recorded webhook deliveries are kept, such as `30d` [default: 30d]. A body seen
    /// within this window is answered `duplicate` and starts nothing.
    #[arg(long, env = "CHENGIS_WEBHOOK_RETENTION")]
    pub webhook_retention: Option<String>,
    /// Most jobs one pipeline may plan, matrix combinations counted; a pipeline over it ends
    /// its build `error` with the linter's message [default: 256].
    #[arg(long, env = "CHENGIS_MAX_JOBS")]
    pub max_jobs: Option<usize>,
    /// Live streams (build events and logs) one user may hold open at once; more are answered
    /// 429 [default: 16].
    #[arg(long, env = "CHENGIS_MAX_STREAMS_PER_USER")]
    pub max_streams_per_user: Option<usize>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "CHENGIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CHENGIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Badges need a signed-in viewer (by default `/badge/...` is public).
    #[arg(long, env = "CHENGIS_PRIVATE_BADGES")]
    pub private_badges: bool,
    /// Client addresses (IPv6: /64 networks) whose failed sign-ins, within the lockout period,
    /// lock an account; one address counts once, so one client alone never locks an account
    /// (it waits longer after each failure instead) [default: 5].
    #[arg(long, env = "CHENGIS_LOGIN_MAX_FAILURES")]
    pub login_max_failures: Option<i64>,
    /// How long a locked account stays locked, such as `15m` [default: 15m].
    #[arg(long, env = "CHENGIS_LOGIN_LOCKOUT")]
    pub login_lockout: Option<String>,
    /// Sign-in attempts per client address as COUNT/PERIOD [default: 20/1m].
    #[arg(long, env = "CHENGIS_LOGIN_RATE_LIMIT")]
    pub login_rate_limit: Option<String>,
    /// API and page requests per user (or per address, signed out) as COUNT/PERIOD; more are
    /// answered 429 with Retry-After [default: 3000/1m].
    #[arg(long, env = "CHENGIS_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` headers give the client's address
    /// (for rate limits, sign-in backoff and the audit log), comma-separated addresses or
    /// networks such as `10.0.0.0/8,127.0.0.1`. Without it those headers are ignored.
    #[arg(long, env = "CHENGIS_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// A TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "CHENGIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Container settings.
    #[command(flatten)]
    pub docker: DockerArgs,
    /// Cache, artifact and retention settings.
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The keys of the config file (`ServeConfig` with the container settings flattened in).
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "work_dir",
    "host_steps",
    "step_user",
    "database_url",
    "executors",
    "agents",
    "lease_ttl",
    "max_attempts",
    "public_url",
    "webhook_rate_limit",
    "webhook_retention",
    "max_jobs",
    "max_streams_per_user",
    "tls_cert",
    "tls_key",
    "private_badges",
    "login_max_failures",
    "login_lockout",
    "login_rate_limit",
    "rate_limit",
    "trusted_proxies",
    "docker_allow_privileged",
    "docker_allow_socket",
    "docker_memory",
    "docker_cpus",
    "docker_pids",
];

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// The embedded agents' work directory.
    pub work_dir: Option<PathBuf>,
    /// How steps without an image run.
    pub host_steps: Option<String>,
    /// The user sandboxed steps run as (when root).
    pub step_user: Option<String>,
    /// Database URL.
    pub database_url: Option<String>,
    /// Executors.
    pub executors: Option<usize>,
    /// Embedded agents.
    pub agents: Option<usize>,
    /// Lease duration.
    pub lease_ttl: Option<String>,
    /// Attempts.
    pub max_attempts: Option<i64>,
    /// Public URL for links.
    pub public_url: Option<String>,
    /// Webhook deliveries per job and minute.
    pub webhook_rate_limit: Option<usize>,
    /// How long webhook deliveries are kept.
    pub webhook_retention: Option<String>,
    /// Most jobs one pipeline may plan.
    pub max_jobs: Option<usize>,
    /// Live streams one user may hold open at once.
    pub max_streams_per_user: Option<usize>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Badges need a signed-in viewer.
    pub private_badges: Option<bool>,
    /// Failed sign-ins that lock an account.
    pub login_max_failures: Option<i64>,
    /// How long an account stays locked.
    pub login_lockout: Option<String>,
    /// Sign-in attempts per address and per username (COUNT/PERIOD).
    pub login_rate_limit: Option<String>,
    /// Requests per user or address (COUNT/PERIOD).
    pub rate_limit: Option<String>,
    /// Proxies whose forwarding headers are believed (comma-separated networks).
    pub trusted_proxies: Option<String>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Container settings.
    #[serde(flatten)]
    pub docker: DockerArgs,
    /// Cache, artifact and retention settings.
    #[serde(flatten)]
    pub storage: StorageArgs,
}

impl ServeArgs {
    /// Merges flags/env over the file over the defaults; a config file that cannot be read or
    /// holds unknown keys is bad usage.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        self.merged().map_err(|e| super::error::as_usage(e).into())
    }

    fn merged(&self) -> anyhow::Result<ServeConfig> {
        let file: ServeConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let table: toml::Table =
                    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
                let known = |k: &str| CONFIG_KEYS.contains(&k) || STORAGE_KEYS.contains(&k);
                if let Some(key) = table.keys().find(|k| !known(k)) {
                    bail!(
                        "config file {}: unknown key `{key}`; known keys: {}, {}",
                        path.display(),
                        CONFIG_KEYS.join(", "),
                        STORAGE_KEYS.join(", ")
                    );
                }
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => ServeConfig::default(),
        };
        let data_dir = self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("chengis-data"));
        let database_url = self
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("chengis.db").display()));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let listen = self.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        Ok(ServeConfig {
            listen: Some(listen.clone()),
            public_url: Some(
                self.public_url
                    .clone()
                    .or(file.public_url)
                    .unwrap_or_else(|| format!("http://{listen}"))
                    .trim_end_matches('/')
                    .to_string(),
            ),
            work_dir: Some(self.work_dir.clone().or(file.work_dir).unwrap_or_else(|| sibling_work_dir(&data_dir))),
            host_steps: Some(self.host_steps.clone().or(file.host_steps).unwrap_or_else(|| "sandboxed".into())),
            step_user: self.step_user.clone().or(file.step_user),
            data_dir: Some(data_dir),
            database_url: Some(database_url),
            executors: Some(self.executors.or(file.executors).unwrap_or(cores)),
            agents: Some(self.agents.or(file.agents).unwrap_or(1)),
            lease_ttl: Some(self.lease_ttl.clone().or(file.lease_ttl).unwrap_or_else(|| "10s".into())),
            max_attempts: Some(self.max_attempts.or(file.max_attempts).unwrap_or(2)),
            webhook_rate_limit: Some(self.webhook_rate_limit.or(file.webhook_rate_limit).unwrap_or(120)),
            webhook_retention: Some(
                self.webhook_retention.clone().or(file.webhook_retention).unwrap_or_else(|| "30d".into()),
            ),
            max_jobs: Some(self.max_jobs.or(file.max_jobs).unwrap_or(chengis_pipeline::check::DEFAULT_MAX_JOBS)),
            max_streams_per_user: Some(
                self.max_streams_per_user
                    .or(file.max_streams_per_user)
                    .unwrap_or(crate::server::stream::DEFAULT_STREAMS_PER_USER),
            ),
            tls_cert: self.tls_cert.clone().or(file.tls_cert),
            tls_key: self.tls_key.clone().or(file.tls_key),
            private_badges: Some(self.private_badges || file.private_badges.unwrap_or(false)),
            login_max_failures: Some(self.login_max_failures.or(file.login_max_failures).unwrap_or(5)),
            login_lockout: Some(self.login_lockout.clone().or(file.login_lockout).unwrap_or_else(|| "15m".into())),
            login_rate_limit: Some(
                self.login_rate_limit.clone().or(file.login_rate_limit).unwrap_or_else(|| "20/1m".into()),
            ),
            rate_limit: Some(self.rate_limit.clone().or(file.rate_limit).unwrap_or_else(|| "3000/1m".into())),
            trusted_proxies: self.trusted_proxies.clone().or(file.trusted_proxies),
            docker: self.docker.over(&file.docker),
            storage: self.storage.over(&file.storage),
        })
    }
}

/// The default work directory of the embedded agents: beside the data directory, its name
/// with `-work` appended.
fn sibling_work_dir(data_dir: &std::path::Path) -> PathBuf {
    let name = data_dir.file_name().map_or_else(|| "chengis-data".into(), |n| n.to_string_lossy().into_owned());
    data_dir.with_file_name(format!("{name}-work"))
}

/// The host-step policy of the embedded agents: the mode, the step user, the directories
/// steps must not reach (checked), the running-step records (under the data directory). Makes
/// the data directory private to this user and the work directory's parents searchable by the
/// step user.
fn host_policy(
    cfg: &ServeConfig,
    data_dir: &std::path::Path,
    work_dir: &std::path::Path,
) -> anyhow::Result<Arc<HostPolicy>> {
    use std::os::unix::fs::PermissionsExt;
    let mode: HostSteps = cfg.host_steps.as_deref().unwrap_or("sandboxed").parse().map_err(as_usage)?;
    if let Err(e) = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!("cannot make the data directory {} private (mode 700): {e}", data_dir.display());
    }
    let policy =
        HostPolicy::new(mode, cfg.step_user.as_deref(), &[data_dir, work_dir], data_dir.join("running-steps"))?;
    if policy.user.is_some() {
        chengis_runner::sandbox::searchable(work_dir);
    }
    match policy.describe() {
        Ok(text) => tracing::info!("{text}"),
        Err(text) => tracing::warn!("{text}"),
    }
    Ok(Arc::new(policy))
}

/// Deletes recorded webhook deliveries older than `retention`, at start and every hour.
async fn prune_webhook_deliveries(store: Store, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let before = crate::store::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match store.prune_deliveries(before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("deleted {n} webhook deliveries older than {}", humantime::format_duration(retention))
            }
            Err(e) => tracing::warn!("pruning webhook deliveries: {e}"),
        }
    }
}

/// A `COUNT/PERIOD` rate such as `20/1m` as a limiter.
fn rate(s: &str, what: &str) -> anyhow::Result<crate::server::webhooks::route::RateLimiter> {
    let (count, period) =
        s.split_once('/').ok_or_else(|| anyhow::anyhow!("{what} `{s}`: write COUNT/PERIOD, such as 20/1m"))?;
    let count: usize = count.trim().parse().map_err(|_| anyhow::anyhow!("{what} `{s}`: `{count}` is not a count"))?;
    Ok(crate::server::webhooks::route::RateLimiter::with_window(count, duration(period.trim(), what)?))
}

/// The sign-in and rate-limit settings of the configuration.
fn auth_settings(cfg: &ServeConfig, tls: bool) -> anyhow::Result<crate::server::auth::AuthSettings> {
    use crate::server::auth::{LoginBackoff, TrustedProxies};
    let login = cfg.login_rate_limit.as_deref().unwrap_or("20/1m");
    let lockout = duration(cfg.login_lockout.as_deref().unwrap_or("15m"), "login_lockout")?;
    let trusted_proxies = TrustedProxies::parse(cfg.trusted_proxies.as_deref().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?;
    if !trusted_proxies.0.is_empty() {
        tracing::info!(
            "believing X-Forwarded-For/Forwarded from {}",
            cfg.trusted_proxies.as_deref().unwrap_or_default()
        );
    }
    Ok(crate::server::auth::AuthSettings {
        tls,
        public_badges: !cfg.private_badges.unwrap_or(false),
        max_failures: cfg.login_max_failures.unwrap_or(5).max(1),
        lockout,
        login_limit: rate(login, "login_rate_limit")?,
        login_backoff: LoginBackoff::new(LoginBackoff::FREE_FAILURES, lockout.max(Duration::from_secs(1))),
        request_limit: rate(cfg.rate_limit.as_deref().unwrap_or("3000/1m"), "rate_limit")?,
        trusted_proxies,
    })
}

fn duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    chengis_pipeline::duration::parse_duration(s).map_err(|e| anyhow::anyhow!("{what} `{s}`: {e}"))
}

/// Opens the store named by the configuration (creating the data directory).
pub async fn open_store(cfg: &ServeConfig) -> anyhow::Result<Store> {
    let data_dir = cfg.data_dir.clone().unwrap_or_default();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    Ok(Store::open(cfg.database_url.as_deref().unwrap_or_default()).await?)
}

/// Loads the master key from `CHENGIS_MASTER_KEY` or the key file in the data directory.
pub fn master_keys(data_dir: &std::path::Path) -> anyhow::Result<MasterKeys> {
    if let Some(hex) = super::startup_var("CHENGIS_MASTER_KEY") {
        return Ok(MasterKeys::from_hex(&hex)?);
    }
    let path = data_dir.join("master.key");
    let (keys, created) = MasterKeys::load_or_create(&path)?;
    if created {
        tracing::warn!(path = %path.display(), "created a new master key for secrets; back it up: without it stored secrets cannot be read");
    }
    Ok(keys)
}

/// Runs `chengis serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let cfg = args.resolve()?;
    if args.print_config {
        let mut shown = cfg.clone();
        shown.database_url = shown.database_url.map(|u| redact_url(&u));
        print!("{}", toml::to_string(&shown).unwrap_or_default());
        return Ok(0);
    }
    let lease_ttl = duration(cfg.lease_ttl.as_deref().unwrap_or("10s"), "lease_ttl").map_err(as_usage)?;
    let webhook_retention =
        duration(cfg.webhook_retention.as_deref().unwrap_or("30d"), "webhook_retention").map_err(as_usage)?;
    if lease_ttl < Duration::from_secs(2) {
        usage!("lease_ttl must be at least 2s: the agent renews every second");
    }
    let max_jobs = cfg.max_jobs.unwrap_or(chengis_pipeline::check::DEFAULT_MAX_JOBS);
    if max_jobs == 0 {
        usage!("max_jobs must be at least 1");
    }
    let max_streams = cfg.max_streams_per_user.unwrap_or(crate::server::stream::DEFAULT_STREAMS_PER_USER);
    if max_streams == 0 {
        usage!("max_streams_per_user must be at least 1");
    }
    cfg.storage.config(PathBuf::new()).map_err(as_usage)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::tls::acceptor(cert, key)?),
        (None, None) => None,
        _ => usage!("serving HTTPS needs both tls_cert and tls_key"),
    };
    let auth = Arc::new(auth_settings(&cfg, tls.is_some()).map_err(as_usage)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let store = open_store(&cfg).await?;
        crate::server::auth::bootstrap(&store).await.map_err(|e| anyhow::anyhow!("first admin: {e}"))?;
        // Absolute, so that workspace paths handed to steps do not depend on where they run.
        let data_dir = std::fs::canonicalize(cfg.data_dir.clone().unwrap_or_default())?;
        let work_dir = cfg.work_dir.clone().unwrap_or_else(|| sibling_work_dir(&data_dir));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create the work directory {}", work_dir.display()))?;
        let work_dir = std::fs::canonicalize(&work_dir)?;
        if work_dir.starts_with(&data_dir) || data_dir.starts_with(&work_dir) {
            usage!(
                "the work directory {} and the data directory {} must not hold one another: steps work in the \
                 work directory and must never reach the data",
                work_dir.display(),
                data_dir.display()
            );
        }
        let host = host_policy(&cfg, &data_dir, &work_dir)?;
        // Steps a killed predecessor left running go before anything is leased again.
        let killed = chengis_runner::sandbox::records::reap(&host.records);
        if killed > 0 {
            tracing::warn!("killed {killed} step process group(s) an earlier server left running");
        }
        let keys = Arc::new(master_keys(&data_dir)?);
        let (bus, _) = tokio::sync::broadcast::channel(1024);
        let plugins = Arc::new(PluginService::new(store.clone(), &data_dir)?);
        plugins.set_public_url(cfg.public_url.clone().unwrap_or_default());
        // The first start of a database compiles the builtins (seconds of Cranelift): the
        // server answers meanwhile, and whatever needs a builtin waits for it.
        plugins.install_builtins_in_background().await?;
        let mut storage = cfg.storage.config(data_dir.clone())?;
        storage.work_dir = work_dir.clone();
        storage.local_agents = (0..cfg.agents.unwrap_or(1)).map(agent_name).collect();
        let storage = Arc::new(storage);
        let ctx = BuildContext {
            store: store.clone(),
            data_dir: data_dir.clone(),
            bus,
            max_matrix: chengis_pipeline::matrix::DEFAULT_MAX_COMBINATIONS,
            max_jobs,
            keys: keys.clone(),
            plugins: Some(plugins),
            storage: storage.clone(),
        };
        recover(&ctx).await;
        let shutdown = CancelSignal::new();
        let docker_settings = cfg.docker.settings()?;
        for n in 0..cfg.agents.unwrap_or(1) {
            let name = agent_name(n);
            // Containers carry the agent name and the data directory, so that two servers on
            // one engine never reap each other's containers.
            let docker = DockerRuntime::new(format!("{name}:{}", short_digest(&data_dir)), docker_settings.clone());
            tokio::spawn(reap_periodically(docker.clone(), shutdown.clone()));
            let agent = AgentConfig {
                docker,
                name,
                labels: vec![std::env::consts::OS.to_string(), "local".into()],
                executors: cfg.executors.unwrap_or(2),
                lease_ttl,
                renew_every: Duration::from_secs(1),
                max_attempts: cfg.max_attempts.unwrap_or(2),
                kill_grace: Duration::from_secs(10),
                output_cap: 10 << 20,
                host: host.clone(),
            };
            let info = crate::agent::remote::host_facts(
                agent.name.clone(),
                agent.labels.clone(),
                agent.executors,
                docker_settings_available(),
            );
            store.register_agent(&info, true, None).await?;
            tokio::spawn(run_agent(ctx.clone(), keys.clone(), agent, shutdown.clone()));
        }
        tokio::spawn(watch_agents(ctx.clone(), lease_ttl, shutdown.clone()));
        tokio::spawn(crate::engine::cron::run_scheduler(ctx.clone(), shutdown.clone()));
        tokio::spawn(prune_webhook_deliveries(store.clone(), webhook_retention));
        tokio::spawn(crate::engine::disk::run_maintenance(store.clone(), storage, shutdown.clone()));
        let listen = cfg.listen.clone().unwrap_or_default();
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // What start-up freed (migrations, the engine's set-up) goes back to the OS.
        crate::memory::release();
        println!("chengis listening on {scheme}://{addr}");
        tracing::info!(%addr, database = %redact_url(cfg.database_url.as_deref().unwrap_or_default()), "serving");
        let hook_limiter = Arc::new(crate::server::webhooks::route::RateLimiter::new(cfg.webhook_rate_limit.unwrap_or(120)));
        let agents = crate::server::agent_api::AgentSettings {
            lease_ttl,
            renew_every: Duration::from_secs(1),
            max_attempts: cfg.max_attempts.unwrap_or(2),
            pollers: Default::default(),
        };
        let streams = Arc::new(crate::server::stream::Streams::new(max_streams));
        let app = router(AppState {
            builds: ctx,
            keys,
            hook_limiter,
            hook_cache: Default::default(),
            agents,
            auth,
            streams,
        })
            .into_make_service_with_connect_info::<crate::server::auth::ClientAddr>();
        let stop = shutdown.clone();
        let signalled = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            stop.cancel();
        };
        match tls {
            Some(acceptor) => {
                let listener = crate::server::tls::TlsListener::new(listener, acceptor)?;
                axum::serve(listener, app).with_graceful_shutdown(signalled).await?;
            }
            None => axum::serve(listener, app).with_graceful_shutdown(signalled).await?,
        }
        Ok::<i32, anyhow::Error>(0)
    })
}

/// After a restart: builds that were recorded but not planned are planned, and every unfinished
/// build is scheduled again (jobs whose leases expired are leased again by the agents).
async fn recover(ctx: &BuildContext) {
    let Ok(builds) = ctx.store.unfinished_builds().await else { return };
    for id in builds {
        let planned = ctx.store.build_plan(id).await.ok().flatten().is_some();
        let result = if planned { ctx.schedule(id).await } else { ctx.plan(id).await };
        if let Err(e) = result {
            tracing::warn!(build = id, "recovering: {e}");
        }
    }
}

/// Whether a Docker engine socket is present (what an embedded agent registers).
fn docker_settings_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
}

/// Every few seconds: records, on queued jobs that no registered agent can ever take (labels,
/// resources), why they wait, ends jobs asked to stop whose agents went silent (their builds
/// move on), and logs agents that went silent.
async fn watch_agents(ctx: BuildContext, lease_ttl: Duration, shutdown: CancelSignal) {
    let store = ctx.store.clone();
    let silent = crate::server::agent_api::silence_ms(lease_ttl);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut offline: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.end_abandoned_stops().await {
            Ok(ended) => {
                for (build_job, reason) in ended {
                    if let Err(e) = ctx.job_ended(build_job, &reason).await {
                        tracing::warn!(build_job, "moving the build on: {e}");
                    }
                }
            }
            Err(e) => tracing::debug!("agent watch: {e}"),
        }
        if let Err(e) = store.mark_unmatchable(silent).await {
            tracing::debug!("agent watch: {e}");
            continue;
        }
        if let Ok(agents) = store.agents(silent).await {
            for a in agents {
                let name = a.info.name.clone();
                if a.status == "offline" && offline.insert(name.clone()) {
                    tracing::warn!(agent = %name, "agent {name} lost: silent for over {silent} ms; its jobs are leased again when their leases expire");
                } else if a.status != "offline" && offline.remove(&name) {
                    tracing::info!(agent = %name, "agent {name} is back");
                }
            }
        }
    }
}

/// Removes containers left by an earlier process of this agent: at start-up, then every minute.
async fn reap_periodically(docker: Arc<DockerRuntime>, shutdown: CancelSignal) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match docker.reap(|_, _| false).await {
            Ok(r) if r.containers + r.networks > 0 => {
                tracing::info!(containers = r.containers, networks = r.networks, "reaped leftovers of an earlier run")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("reaper: {e}"),
        }
    }
}

/// The name of embedded agent `n`.
fn agent_name(n: usize) -> String {
    format!("embedded-{n}@{}", hostname())
}

fn short_digest(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(path.display().to_string().as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Runs `chengis migrate`.
pub fn migrate(args: ServeArgs) -> anyhow::Result<i32> {
    let cfg = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        open_store(&cfg).await?;
        println!("database is up to date: {}", redact_url(cfg.database_url.as_deref().unwrap_or_default()));
        Ok(0)
    })
}

/// Runs `chengis secret rotate-key`: a new key in the key file, every secret re-encrypted.
pub fn rotate_key(args: ServeArgs) -> anyhow::Result<i32> {
    if std::env::var_os("CHENGIS_MASTER_KEY").is_some() {
        usage!(
            "CHENGIS_MASTER_KEY is set: rotation writes the key file in the data directory; unset it (or rotate by re-setting secrets under the new variable)"
        );
    }
    let cfg = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = open_store(&cfg).await?;
        let path = cfg.data_dir.clone().unwrap_or_default().join("master.key");
        let (mut keys, _) = MasterKeys::load_or_create(&path)?;
        let id = keys.add_key(&path)?;
        let n = store.rotate_secrets(&keys).await?;
        println!(
            "new master key {id}; re-encrypted {n} secret(s); older keys stay in {} until you remove them",
            path.display()
        );
        Ok(0)
    })
}
