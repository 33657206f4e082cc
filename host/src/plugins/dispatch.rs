//! Build events and plans turned into plugin calls: `uses:` steps to step executors, build and
//! job status changes to notifiers and SCM status reporters, plans to policies. Every call runs
//! on a blocking thread; a failing plugin is an error for that step, notification or policy,
//! never for the server.

use super::{PluginService, PluginServiceError};
use crate::status::Status;
use crate::store::builds::BuildSummary;
use chengis_pipeline::model::{Notify, When};
use chengis_plugin_host::bindings::{notifier, policy, scm_status};
use chengis_plugin_host::{CallContext, ErrorKind, World, types};
use std::collections::HashMap;
use std::sync::Arc;

/// Every Chengis status as the plugin interface says it; `timed_out` is a failure there (the
/// interface has no separate state), said explicitly rather than by a default branch.
pub fn wit_status(s: Status) -> types::Status {
    match s {
        Status::Queued => types::Status::Pending,
        Status::Running => types::Status::Running,
        Status::Success => types::Status::Success,
        Status::Failure => types::Status::Failure,
        Status::TimedOut => types::Status::Failure,
        Status::Cancelled => types::Status::Cancelled,
        Status::Skipped => types::Status::Skipped,
        Status::Error => types::Status::Error,
    }
}

/// A build as plugins see it.
pub fn wit_build(b: &BuildSummary, pipeline: &str, repository: &str) -> types::Build {
    types::Build {
        id: b.id as u64,
        number: b.number as u64,
        pipeline: pipeline.to_string(),
        status: wit_status(b.status),
        commit: types::Commit {
            sha: b.commit_sha.clone(),
            repository: repository.to_string(),
            branch: Some(b.branch.clone()).filter(|s| !s.is_empty() && !s.starts_with("refs/tags/")),
            tag: b.branch.strip_prefix("refs/tags/").map(str::to_string),
            message: b.commit_message.clone(),
            author: b.commit_author.clone(),
        },
        trigger: b.trigger.clone(),
        url: None,
        duration_ms: b.started_ms.zip(b.finished_ms).map(|(s, f)| (f - s).max(0) as u64),
    }
}

/// Server-side config key of a notifier: which events the host sends it without a pipeline's
/// `notify:` (`always`/`all`: every build and job event; `finished`; `success`; `failure`).
/// The plugin's own keys (e.g. slack's `on`) filter further.
pub const NOTIFY_KEY: &str = "chengis.notify";

/// Sends `event` to the notifiers of the pipeline's `notify:` entries whose `on:` matches, and
/// to every allowed notifier whose server-side `chengis.notify` matches.
pub async fn notify(
    service: Arc<PluginService>,
    entries: &[Notify],
    event: notifier::Event,
    secrets: HashMap<String, String>,
) {
    let finished = event.kind == notifier::EventKind::BuildFinished;
    let success = event.build.status == types::Status::Success;
    let mut calls: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for n in entries {
        let wanted = match n.on.unwrap_or(When::Always) {
            When::Always => true,
            When::OnSuccess => success,
            When::OnFailure => !success,
        };
        // Pipeline notifications are about finished builds.
        if finished && wanted {
            calls.push((n.uses.clone(), n.with.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
        }
    }
    if let Ok(allowed) = service.allowed(World::Notifier).await {
        let mut configs = service.store().plugin_configs().await.unwrap_or_default();
        for (record, _) in allowed {
            let config = configs.remove(&record.name).unwrap_or_default();
            let on = config.get(NOTIFY_KEY).and_then(|v| v.as_str()).map(str::to_string);
            let Some(on) = on else { continue };
            let matches = match on.as_str() {
                "always" | "all" => true,
                "finished" => finished,
                "success" => finished && success,
                "failure" => finished && !success,
                _ => false,
            };
            if matches && !calls.iter().any(|(u, _)| u.split('@').next() == Some(record.name.as_str())) {
                calls.push((record.name.clone(), Vec::new()));
            }
        }
    }
    for (reference, with) in calls {
        let (record, plugin) = match service.resolve(&reference, World::Notifier).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(notifier = %reference, "{e}");
                continue;
            }
        };
        let mut config: Vec<(String, String)> = server_config(&service, &record.name).await;
        chengis_model::env::merge_vars(&mut config, &with);
        let ctx = server_call(&record.name, config, secrets.clone());
        let event = event.clone();
        let result = tokio::task::spawn_blocking(move || plugin.notify(&ctx, &event)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(notifier = %record.name, "{e}"),
            Err(e) => tracing::warn!(notifier = %record.name, "notifier task: {e}"),
        }
    }
}

/// Reports a status to every allowed SCM status plugin that has a server-side configuration.
pub async fn report_status(
    service: Arc<PluginService>,
    update: scm_status::StatusUpdate,
    secrets: HashMap<String, String>,
) {
    let Ok(allowed) = service.allowed(World::ScmStatus).await else { return };
    for (record, plugin) in allowed {
        let config = server_config(&service, &record.name).await;
        if config.is_empty() {
            continue;
        }
        let plugin = match plugin {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(reporter = %record.name, "{e}");
                continue;
            }
        };
        // A failed report is logged and tried again with backoff (the forge may be briefly
        // down); it never changes the build. Denials and broken plugins are not retried.
        for attempt in 0..REPORT_ATTEMPTS {
            let ctx = server_call(&record.name, config.clone(), secrets.clone());
            let (plugin, update) = (plugin.clone(), update.clone());
            let error = match tokio::task::spawn_blocking(move || plugin.report_status(&ctx, &update)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => e,
                Err(e) => {
                    tracing::warn!(reporter = %record.name, "status task: {e}");
                    break;
                }
            };
            let retry = attempt + 1 < REPORT_ATTEMPTS
                && matches!(error.kind, ErrorKind::Failed(_) | ErrorKind::TimedOut(_) | ErrorKind::Host(_));
            if !retry {
                tracing::warn!(reporter = %record.name, "{error}");
                break;
            }
            let wait = REPORT_BACKOFF * 2u32.pow(attempt);
            tracing::warn!(reporter = %record.name, "{error}; trying again in {} ms", wait.as_millis());
            tokio::time::sleep(wait).await;
        }
    }
}

/// Attempts at reporting one status.
const REPORT_ATTEMPTS: u32 = 3;
/// The wait before the second attempt; it doubles after each.
const REPORT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// What the policies said about a plan.
#[derive(Debug, Default)]
pub struct PolicyVerdict {
    /// Reasons to deny (empty: allowed).
    pub denials: Vec<String>,
    /// Warnings of allowing policies.
    pub warnings: Vec<String>,
}

/// Asks every allowed policy about `plan` (builtin ones once configured); a policy that fails
/// denies (fail closed).
pub async fn check_policies(
    service: Arc<PluginService>,
    plan: policy::Plan,
) -> Result<PolicyVerdict, PluginServiceError> {
    let mut verdict = PolicyVerdict::default();
    for (record, plugin) in service.allowed(World::Policy).await? {
        let config = server_config(&service, &record.name).await;
        // The builtin policies ship allowed but have nothing to enforce until an operator
        // writes their rules; an installed policy runs as soon as it is allowed.
        if record.builtin && config.is_empty() {
            continue;
        }
        let plugin = match plugin {
            Ok(p) => p,
            Err(e) => {
                verdict.denials.push(format!("{e} (a policy that cannot run denies)"));
                continue;
            }
        };
        let ctx = server_call(&record.name, config, HashMap::new());
        let plan = plan.clone();
        let label = format!("policy `{}` {}", record.name, record.version);
        match tokio::task::spawn_blocking(move || plugin.check_policy(&ctx, &plan)).await {
            Ok(Ok(policy::Decision::Allow(diags))) => {
                verdict.warnings.extend(diags.iter().map(|d| format!("{label}: {}", d.message)))
            }
            Ok(Ok(policy::Decision::Deny(diags))) => {
                if diags.is_empty() {
                    verdict.denials.push(format!("{label}: denied"));
                }
                verdict.denials.extend(diags.iter().map(|d| {
                    let field = d.field.as_deref().map(|f| format!(" at `{f}`")).unwrap_or_default();
                    let help = d.help.as_deref().map(|h| format!(" (help: {h})")).unwrap_or_default();
                    format!("{label}: [{}]{field} {}{help}", d.code, d.message)
                }));
            }
            Ok(Err(e)) => verdict.denials.push(format!("{e} (a failing policy denies)")),
            Err(e) => verdict.denials.push(format!("{label}: {e} (a failing policy denies)")),
        }
    }
    Ok(verdict)
}

/// The plan as policies see it.
pub fn policy_plan(plan: &chengis_pipeline::Plan, build: &BuildSummary, sha: &str, repository: &str) -> policy::Plan {
    let mut summary = build.clone();
    summary.commit_sha = sha.to_string();
    policy::Plan {
        pipeline: plan.name.clone(),
        commit: wit_build(&summary, &plan.name, repository).commit,
        trigger: build.trigger.clone(),
        actor: Some(build.who.clone()).filter(|w| !w.is_empty()),
        jobs: plan
            .jobs
            .iter()
            .map(|j| {
                let image = |i: &chengis_pipeline::Text| i.as_literal().unwrap_or_else(|| "(expression)".into());
                policy::PlannedJob {
                    name: j.id.clone(),
                    image: j.image.as_ref().map(image),
                    needs: j.needs.clone(),
                    uses: j.steps.iter().filter_map(|s| s.uses.clone()).collect(),
                    services: j.services.values().map(|s| s.image.clone()).collect(),
                    step_images: j.steps.iter().filter_map(|s| s.image.as_ref().map(image)).collect(),
                    privileged: j.container.privileged,
                    docker_socket: j.container.docker_socket,
                    approval: j.approval.is_some(),
                }
            })
            .collect(),
    }
}

/// What a status change is about: the build, or one job of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The build was queued: SCM status reporters mark the build and every job pending
    /// (notifiers are not told; their first event is the build starting).
    Queued,
    /// The build's own status changed.
    Build,
    /// A job changed to this status.
    Job(String, Status),
}

/// Tells notifiers and SCM status reporters that the build (or one of its jobs) changed status.
pub async fn announce(
    store: &crate::store::Store,
    keys: &crate::store::secrets::MasterKeys,
    service: Arc<PluginService>,
    build_id: i64,
    change: Change,
) -> Result<(), PluginServiceError> {
    // The parsed plan is kept for the builds read last (every job of a wide build announces).
    let plan = store.plan(build_id).await.ok();
    let notifies = plan.as_ref().is_some_and(|p| !p.notify.is_empty());
    // Most status changes have nobody to tell: then read and decrypt nothing.
    if !notifies && !service.has_server_listeners().await? {
        return Ok(());
    }
    let summary = store.build_summary(build_id).await?;
    let record = store.job(&summary.job).await?;
    let pipeline = plan.as_ref().map_or_else(|| summary.job.clone(), |p| p.name.clone());
    let mut build = wit_build(&summary, &pipeline, &record.repo_url);
    build.url = service.build_url(build_id);
    let secrets: HashMap<String, String> = store.secrets_for_job(keys, &record.name).await?.into_iter().collect();
    let image_of = |key: &str| {
        plan.as_ref()
            .and_then(|p| p.jobs.iter().find(|j| j.id == key))
            .and_then(|j| j.image.as_ref())
            .and_then(|i| i.as_literal())
    };
    let wit_job = |key: &str, status: Status| types::Job {
        id: 0,
        name: key.to_string(),
        status: wit_status(status),
        image: image_of(key),
        duration_ms: None,
    };
    if change == Change::Queued {
        build.status = types::Status::Pending;
        let description = format!("build #{} queued", summary.number);
        let update = |job, context, description| scm_status::StatusUpdate {
            build: build.clone(),
            job,
            state: types::Status::Pending,
            context,
            description,
        };
        report_status(service.clone(), update(None, "chengis/build".into(), description), secrets.clone()).await;
        for job in plan.iter().flat_map(|p| &p.jobs) {
            let update = update(
                Some(wit_job(&job.id, Status::Queued)),
                format!("chengis/{}", job.id),
                format!("{}: queued", job.id),
            );
            report_status(service.clone(), update, secrets.clone()).await;
        }
        return Ok(());
    }
    let (kind, job, state, context) = match &change {
        Change::Job(key, status) => {
            let kind = if *status == Status::Running {
                notifier::EventKind::JobStarted
            } else {
                notifier::EventKind::JobFinished
            };
            (kind, Some(wit_job(key, *status)), wit_status(*status), format!("chengis/{key}"))
        }
        _ if summary.status.is_finished() => {
            (notifier::EventKind::BuildFinished, None, wit_status(summary.status), "chengis/build".to_string())
        }
        _ => (notifier::EventKind::BuildStarted, None, wit_status(summary.status), "chengis/build".to_string()),
    };
    let (description, job_key) = match &change {
        Change::Job(key, status) => (format!("{key}: {status}"), Some(key.as_str())),
        _ => (format!("build #{} {}", summary.number, summary.status), None),
    };
    let previous_status = store.previous_status(build_id, job_key).await?.map(wit_status);
    let event = notifier::Event { kind, build: build.clone(), job: job.clone(), previous_status };
    let entries = plan.map(|p| p.notify.clone()).unwrap_or_default();
    notify(service.clone(), &entries, event, secrets.clone()).await;
    let update = scm_status::StatusUpdate { build, job, state, context, description };
    report_status(service, update, secrets).await;
    Ok(())
}

/// The context of a call made by the server (no sandbox, no workspace): log lines go to the
/// server log.
fn server_call(plugin: &str, config: Vec<(String, String)>, secrets: HashMap<String, String>) -> CallContext {
    CallContext {
        config,
        secrets,
        log: Some(Arc::new(TracingLog { plugin: plugin.to_string() })),
        sandbox: None,
        workspace: None,
    }
}

/// The plugin's server-side configuration, without the host's own `chengis.*` keys.
async fn server_config(service: &PluginService, name: &str) -> Vec<(String, String)> {
    chengis_agent::executors::plugin_config(&service.config_of(name).await)
}

/// Notifier, reporter and policy log lines go to the server log.
struct TracingLog {
    plugin: String,
}

impl chengis_plugin_host::LogSink for TracingLog {
    fn line(&self, level: chengis_plugin_host::LogLevel, line: &str) {
        use chengis_plugin_host::LogLevel;
        match level {
            LogLevel::Debug => tracing::debug!(plugin = %self.plugin, "{line}"),
            LogLevel::Info => tracing::info!(plugin = %self.plugin, "{line}"),
            LogLevel::Warn => tracing::warn!(plugin = %self.plugin, "{line}"),
            LogLevel::Error => tracing::error!(plugin = %self.plugin, "{line}"),
        }
    }
}
