//! `chengis agent` (run a remote agent, or `list` the server's agents) and `chengis agent-token
//! create|list|revoke`.

use super::client::{Client, ClientArgs, enc, print, print_list, s};
use super::docker::DockerArgs;
use crate::agent::AgentConfig;
use crate::agent::remote::{RemoteConfig, RemoteError, host_facts, run_remote};
use crate::exec::CancelSignal;
use crate::exec::docker::DockerRuntime;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// `chengis agent ...`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// `list`; without a subcommand the agent runs.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The server's URL; `http://` when no scheme is given [default: http://127.0.0.1:8080;
    /// for `list`, the server last signed in to].
    #[arg(long, env = "CHENGIS_SERVER", global = true)]
    pub server: Option<String>,
    /// Output format (for `list`).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: super::Format,
    /// The agent token (from `chengis agent-token create`). On the command line it is visible
    /// to every process of the host (`/proc/<pid>/cmdline`): prefer `CHENGIS_AGENT_TOKEN` or
    /// `--token-file`.
    #[arg(long, env = "CHENGIS_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the agent token (read once at start).
    #[arg(long, env = "CHENGIS_AGENT_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// How steps without an image run: `sandboxed` (as the step user when root, under
    /// Landlock: no access to the agent's files or other workspaces), `docker` (refused: give
    /// them an image) or `trusted` (with the agent's authority).
    #[arg(long, env = "CHENGIS_HOST_STEPS", default_value = "sandboxed")]
    pub host_steps: String,
    /// The unprivileged user sandboxed steps run as when the agent runs as root [default: nobody].
    #[arg(long, env = "CHENGIS_STEP_USER")]
    pub step_user: Option<String>,
    /// Labels a job's `runs-on` must be a subset of (comma-separated).
    #[arg(long, value_delimiter = ',', env = "CHENGIS_AGENT_LABELS")]
    pub labels: Vec<String>,
    /// Jobs at once.
    #[arg(long, default_value_t = 2, env = "CHENGIS_EXECUTORS")]
    pub executors: usize,
    /// The agent's name (default: the host name).
    #[arg(long, env = "CHENGIS_AGENT_NAME")]
    pub name: Option<String>,
    /// PEM file of the CA (or self-signed certificate) that signed an https:// server's certificate.
    #[arg(long, env = "CHENGIS_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Where workspaces live.
    #[arg(long, env = "CHENGIS_WORK_DIR", default_value = "chengis-agent")]
    pub work_dir: PathBuf,
    /// How long `SIGTERM` lets running jobs finish before cancelling them, such as `10m`.
    #[arg(long, default_value = "10m")]
    pub drain_timeout: String,
    /// Docker settings for jobs that name an image.
    #[command(flatten)]
    pub docker: DockerArgs,
}

/// `chengis agent list`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List the server's agents: status, labels, capacity, current jobs, last heartbeat.
    List,
}

/// `chengis agent-token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an agent token; the token is printed as the last line.
    Create {
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List agent tokens (never their secrets).
    List,
    /// Revoke a token (id or name): agents using it stop at their next call.
    Revoke {
        /// Token id or name.
        token: String,
    },
}

/// Runs `chengis agent ...`.
pub fn agent(args: AgentArgs) -> anyhow::Result<i32> {
    if let Some(AgentCommand::List) = args.command {
        let client = Client::new(&ClientArgs {
            server: args.server.clone(),
            format: args.format,
            ca_file: args.ca_file.clone(),
        })?;
        let v = client.get("/api/v1/agents")?;
        print_list(args.format, &v, "agents", "no agents", |v| {
            let mut out = format!(
                "{:<28} {:<9} {:<24} {:>5} {:>5} {:>8} {:<12} {}\n",
                "NAME", "STATUS", "LABELS", "EXEC", "CPUS", "MEM(MB)", "JOBS", "LAST SEEN"
            );
            let now = crate::store::now_ms();
            for a in v["agents"].as_array().into_iter().flatten() {
                let labels: Vec<String> =
                    a["labels"].as_array().into_iter().flatten().map(|l| s(l).to_string()).collect();
                let jobs: Vec<String> = a["current_jobs"].as_array().into_iter().flatten().map(s).collect();
                let seen = u64::try_from(now - a["last_seen_ms"].as_i64().unwrap_or(now)).unwrap_or(0);
                let seen = chengis_model::human_duration(std::time::Duration::from_millis(seen));
                out.push_str(&format!(
                    "{:<28} {:<9} {:<24} {:>5} {:>5} {:>8} {:<12} {seen} ago\n",
                    s(&a["name"]),
                    s(&a["status"]),
                    labels.join(","),
                    s(&a["executors"]),
                    s(&a["cpus"]),
                    s(&a["memory_mb"]),
                    if jobs.is_empty() { "-".to_string() } else { jobs.join(",") },
                ));
            }
            out
        });
        return Ok(0);
    }
    let server = super::client::normalize_server(args.server.as_deref().unwrap_or(super::client::DEFAULT_SERVER))?;
    let from_file = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let Some(token) = from_file.or_else(|| args.token.clone()).filter(|t| !t.is_empty()) else {
        return Err(super::error::CliError::Usage(
            "an agent token is required: CHENGIS_AGENT_TOKEN, --token-file F or --token T (create one with `chengis agent-token create`)".into(),
        )
        .into());
    };
    if std::env::args().any(|a| a == "--token" || a.starts_with("--token=")) {
        tracing::warn!(
            "--token on the command line is readable by every process on this host in /proc/<pid>/cmdline: pass \
             CHENGIS_AGENT_TOKEN or --token-file instead"
        );
    }
    let drain_deadline = humantime::parse_duration(&args.drain_timeout)
        .with_context(|| format!("--drain-timeout `{}` is not a duration such as 10m", args.drain_timeout))?;
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "agent".into())
    });
    let docker_settings = args.docker.settings()?;
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create the work directory {}", args.work_dir.display()))?;
    let work_dir = std::fs::canonicalize(&args.work_dir)?;
    let mode: chengis_runner::sandbox::HostSteps = args.host_steps.parse()?;
    let host = chengis_runner::sandbox::HostPolicy::new(
        mode,
        args.step_user.as_deref(),
        &[&work_dir],
        work_dir.join("running-steps"),
    )?;
    if host.user.is_some() {
        chengis_runner::sandbox::searchable(&work_dir);
    }
    match host.describe() {
        Ok(text) => tracing::info!("{text}"),
        Err(text) => tracing::warn!("{text}"),
    }
    // Steps an earlier process of this agent left running go before anything is leased.
    let killed = chengis_runner::sandbox::records::reap(&host.records);
    if killed > 0 {
        tracing::warn!("killed {killed} step process group(s) an earlier agent left running");
    }
    let host = std::sync::Arc::new(host);
    let docker_present =
        std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists();
    let info = host_facts(name.clone(), args.labels.clone(), args.executors, docker_present);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let run = AgentConfig {
            docker: DockerRuntime::new(format!("agent:{name}"), docker_settings),
            name: name.clone(),
            labels: args.labels.clone(),
            executors: args.executors.max(1),
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(1),
            max_attempts: 2,
            kill_grace: Duration::from_secs(10),
            output_cap: 10 << 20,
            host,
        };
        // Containers of an earlier process of this agent (killed mid-job) go first.
        if let Err(e) = run.docker.reap(|_, _| false).await {
            tracing::debug!("reaping leftovers: {e}");
        }
        let cfg = RemoteConfig { server: server.clone(), token, ca_file: args.ca_file.clone(), work_dir, drain_deadline, info };
        let drain = CancelSignal::new();
        let signal = drain.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("draining: no new jobs; running jobs may finish");
            signal.cancel();
        });
        eprintln!("chengis agent {name} working for {server}");
        match run_remote(cfg, run, drain).await {
            Ok(()) => {
                eprintln!("chengis agent {name}: drained, exiting");
                Ok(0)
            }
            Err(e @ RemoteError::Unauthorized(_)) => {
                eprintln!("error: {e}");
                Ok(super::error::DENIED)
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        }
    })
}

/// Runs `chengis agent-token ...`.
pub fn token(args: &ClientArgs, cmd: TokenCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        TokenCommand::Create { name } => {
            let v = c.post("/api/v1/agent-tokens", json!({"name": name}))?;
            print(args.format, &v, |v| {
                format!(
                    "created agent token {} ({}); it is shown only now:\n{}\n",
                    s(&v["id"]),
                    s(&v["name"]),
                    s(&v["token"])
                )
            });
        }
        TokenCommand::List => {
            let v = c.get("/api/v1/agent-tokens")?;
            print_list(args.format, &v, "tokens", "no agent tokens", |v| {
                let mut out = format!("{:>4} {:<24} {:<10}\n", "ID", "NAME", "STATE");
                for t in v["tokens"].as_array().into_iter().flatten() {
                    let state = if t["revoked_ms"].is_null() { "live" } else { "revoked" };
                    out.push_str(&format!("{:>4} {:<24} {state}\n", s(&t["id"]), s(&t["name"])));
                }
                out
            });
        }
        TokenCommand::Revoke { token } => {
            c.delete(&format!("/api/v1/agent-tokens/{}", enc(&token)))?;
            print(args.format, &json!({"revoked": token}), |_| format!("revoked agent token {token}\n"));
        }
    }
    Ok(0)
}
