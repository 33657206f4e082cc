//! `chengis run`: lint, plan and run a pipeline on this machine with the local executor.

use super::Format;
use super::error::{CliError, as_usage, usage};
use super::render::Renderer;
use crate::engine::{RunOptions, envfile, run_plan};
use crate::exec::docker::DockerRuntime;
use crate::exec::{CancelSignal, SecretMasker};
use crate::pipeline::{self as files, render_json, render_text};
use crate::status::Status;
use anyhow::{Context, bail};
use chengis_pipeline::plan::Plan;
use chengis_pipeline::{LintOptions, PlanInputs, lint_and_plan};
use clap::Args;
use indexmap::IndexMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `chengis run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file; without it, the pipeline of the current directory.
    pub file: Option<PathBuf>,
    /// Run only this job and the jobs it needs (repeatable; a job id or a matrix job's full id).
    #[arg(long = "job", value_name = "ID")]
    pub jobs: Vec<String>,
    /// Set a parameter (repeatable).
    #[arg(long = "param", value_name = "K=V", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// Provide a secret (repeatable); prefer --secrets-file, command lines are visible to others.
    #[arg(long = "secret", value_name = "K=V", value_parser = key_value)]
    pub secrets: Vec<(String, String)>,
    /// Read secrets from a file of `NAME=value` lines (`NAME<<EOF` for multi-line values).
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The workspace the steps run in; defaults to the root of the git repository holding the
    /// pipeline file (as on the server).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Most jobs running at once; defaults to the number of cores.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Output format: a live view, or one JSON event per line.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Most combinations a matrix may expand to.
    #[arg(long, default_value_t = chengis_pipeline::matrix::DEFAULT_MAX_COMBINATIONS)]
    pub max_matrix: usize,
    /// Time between SIGTERM and SIGKILL when a step times out or is cancelled.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub kill_grace: Duration,
    /// Output kept per step (over both streams), such as `10MiB`; the rest is dropped with a warning.
    #[arg(long, default_value = "10MiB", value_parser = size)]
    pub output_cap: u64,
    /// Container settings for jobs that name an image.
    #[command(flatten)]
    pub docker: super::docker::DockerArgs,
    /// Where `uses:` plugins come from: a data directory with its own trust allowlist
    /// (`chengis plugin --data-dir DIR ...`) [default: ~/.cache/chengis/run, builtins pinned].
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    chengis_pipeline::duration::parse_duration(s)
}

fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().map_err(|_| format!("expected a size such as 10MiB, got `{s}`"))?;
    let unit = match s[split..].trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(unit).ok_or_else(|| format!("size `{s}` is too large"))
}

/// Runs `chengis run`; the exit code is 0 only when the pipeline succeeded.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir()?;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => files::find(&cwd).map_err(as_usage)?,
    };
    let opts = LintOptions { max_matrix: args.max_matrix, ..LintOptions::default() };
    let src = files::read(&file, opts.max_bytes).map_err(as_usage)?;
    let name = file.display().to_string();
    let params: IndexMap<String, String> = args.params.iter().cloned().collect();
    let vars = |k: &str| std::env::var(k).ok();
    let inputs = PlanInputs { params: &params, vars: &vars, max_matrix: args.max_matrix };
    let color_err = std::io::stderr().is_terminal();
    let plan = match lint_and_plan(&src, &name, &opts, &inputs) {
        Ok((plan, warnings)) => {
            if !warnings.is_empty() && args.format == Format::Text {
                eprint!("{}", render_text(&warnings, &src, color_err));
            }
            plan
        }
        Err(diags) => {
            match args.format {
                Format::Text => eprint!("{}", render_text(&diags, &src, color_err)),
                Format::Json => {
                    println!("{}", serde_json::json!({"event": "lint_failed", "diagnostics": render_json(&diags)}))
                }
            }
            return Ok(1);
        }
    };
    let plan = select_jobs(plan, &args.jobs).map_err(as_usage)?;
    let mut secrets: IndexMap<String, String> = IndexMap::new();
    if let Some(path) = &args.secrets_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read secrets file {}: {e}", path.display())))?;
        let parsed =
            envfile::parse(&text).map_err(|e| CliError::Usage(format!("secrets file {}: {e}", path.display())))?;
        for (k, v) in parsed {
            secrets.insert(k, v);
        }
    }
    secrets.extend(args.secrets.iter().cloned());
    let masker = SecretMasker::new(secrets.values().cloned()).map_err(|e| CliError::Usage(e.to_string()))?;
    let workspace = match &args.workspace {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("cannot create workspace {}", w.display()))?;
            w.canonicalize()?
        }
        None => repo_root(&file)?,
    };
    let parallel = args.parallel.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if parallel == 0 {
        usage!("--parallel must be at least 1");
    }
    let run_opts = RunOptions {
        git: git_context(&workspace),
        workspace,
        parallel,
        secrets,
        inherited_env: std::env::vars().collect(),
        kill_grace: args.kill_grace,
        output_cap: args.output_cap,
        build_number: 1,
        docker: DockerRuntime::new(format!("run@{}", hostname()), args.docker.settings()?),
        plugins: None,
    };
    // The plugins the pipeline's `uses:` steps name (`name` of `name@version`).
    let used: Vec<String> = plan
        .jobs
        .iter()
        .flat_map(|j| &j.steps)
        .filter_map(|s| s.uses.as_deref())
        .map(|u| u.split('@').next().unwrap_or(u).to_string())
        .collect();
    let uses_plugins = !used.is_empty();
    let uses_docker = plan.jobs.iter().any(|j| j.image.is_some() || j.steps.iter().any(|s| s.image.is_some()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let docker = run_opts.docker.clone();
    let mut run_opts = run_opts;
    let plugin_dir = args.plugin_dir.clone();
    let status = runtime.block_on(async move {
        if uses_plugins {
            run_opts.plugins = Some(local_plugins(plugin_dir, &used).await?);
        }
        if uses_docker {
            // Containers of earlier runs whose `chengis run` process is gone (killed, crashed).
            if let Err(e) = docker.reap(|_, lease| lease_process_alive(lease)).await {
                tracing::debug!("reaper: {e}");
            }
        }
        let cancel = CancelSignal::new();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let color = std::io::stdout().is_terminal();
        let multi = plan.jobs.len() > 1;
        let renderer = tokio::spawn(Renderer::new(args.format, color, multi).run(rx));
        let on_ctrl_c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ncancelling: stopping running steps (Ctrl-C again to force)");
                on_ctrl_c.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let summary = run_plan(plan, run_opts, masker, cancel, tx).await;
        let _ = renderer.await;
        Ok::<Status, anyhow::Error>(summary.status)
    })?;
    Ok(match status {
        Status::Success => 0,
        Status::Cancelled => 130,
        _ => 1,
    })
}

/// The plugin platform of local runs: an allowlist of its own (a SQLite file in `dir`, by
/// default `~/.cache/chengis/run`) with the builtin plugins among `used` pinned (only those are
/// compiled); `chengis plugin --data-dir DIR install ...` adds others. Compiled components are
/// cached there too.
async fn local_plugins(dir: Option<PathBuf>, used: &[String]) -> anyhow::Result<Arc<crate::plugins::PluginService>> {
    let dir = match dir {
        Some(d) => d,
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            cache.join("chengis/run")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = crate::store::Store::open(&format!("sqlite://{}", dir.join("chengis.db").display())).await?;
    let service = crate::plugins::PluginService::new(store, &dir)?;
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    service.install_builtins_named(Some(&used)).await?;
    Ok(Arc::new(service))
}

/// True when a local run's lease label (`pid:N`) names a live process.
fn lease_process_alive(lease: &str) -> bool {
    lease
        .strip_prefix("pid:")
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Keeps the selected jobs and everything they need, in plan order.
fn select_jobs(mut plan: Plan, wanted: &[String]) -> anyhow::Result<Plan> {
    if wanted.is_empty() {
        return Ok(plan);
    }
    let mut keep: Vec<String> = Vec::new();
    for w in wanted {
        let matched: Vec<String> =
            plan.jobs.iter().filter(|j| &j.id == w || &j.key == w).map(|j| j.id.clone()).collect();
        if matched.is_empty() {
            let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
            bail!("no job `{w}` in this pipeline; jobs: {}", ids.join(", "));
        }
        keep.extend(matched);
    }
    let mut i = 0;
    while i < keep.len() {
        if let Some(job) = plan.jobs.iter().find(|j| j.id == keep[i]) {
            for n in &job.needs {
                if !keep.contains(n) {
                    keep.push(n.clone());
                }
            }
        }
        i += 1;
    }
    plan.jobs.retain(|j| keep.contains(&j.id));
    Ok(plan)
}

/// The workspace of a pipeline file: the root of the git repository holding it (as on the
/// server), else the parent of `.chengis/`, else the file's folder.
fn repo_root(file: &Path) -> anyhow::Result<PathBuf> {
    let abs = file.canonicalize().with_context(|| format!("cannot resolve {}", file.display()))?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    // As on the server, where jobs run at the root of the repository's checkout: the git
    // repository holding the file, when there is one.
    if let Some(root) = dir.ancestors().find(|d| d.join(".git").exists()) {
        return Ok(root.to_path_buf());
    }
    Ok(match dir.file_name() {
        Some(n) if n == ".chengis" => dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        _ => dir,
    })
}

/// The `git` context of a workspace that is a git checkout (empty otherwise).
fn git_context(dir: &Path) -> serde_json::Value {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).current_dir(dir).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(sha) = git(&["rev-parse", "HEAD"]) else {
        return serde_json::json!({});
    };
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD").unwrap_or_default();
    let info = git(&["log", "-1", "--format=%an%x00%ae%x00%B"]).unwrap_or_default();
    let mut parts = info.splitn(3, '\0');
    serde_json::json!({
        "sha": sha,
        "short_sha": sha.chars().take(8).collect::<String>(),
        "branch": branch,
        "author": parts.next().unwrap_or_default(),
        "author_email": parts.next().unwrap_or_default(),
        "message": parts.next().unwrap_or_default().trim(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("10MiB"), Ok(10 << 20));
        assert_eq!(size("512"), Ok(512));
        assert!(size("10 parsecs").is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(key_value("=x").is_err());
        assert!(key_value("nope").is_err());
    }
}
