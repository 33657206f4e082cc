//! Builds on the server: trigger (record, then plan in the background), plan (pipeline file at
//! the commit, lint, plan, one build job per planned job), schedule (enqueue jobs whose needs
//! finished, derive the build's final status in one place), cancel and retry.

use super::checkout::Mirror;
use crate::status::Status;
use crate::store::builds::{BuildSummary, NewBuild};
use crate::store::queue::Priority;
use crate::store::{Store, StoreError};
use chengis_pipeline::{LintOptions, PIPELINE_PATHS, PlanInputs, lint_and_plan};
use indexmap::IndexMap;
use std::path::PathBuf;
use tokio::sync::broadcast;

/// Something changed that live readers (SSE, the embedded agent) may want to know now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// New log lines for a build job.
    Log(i64),
    /// A build or one of its jobs changed status.
    Build(i64),
    /// A job was enqueued.
    Enqueued,
}

/// What the build functions share: the store, the data directory and the notice bus.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The database.
    pub store: Store,
    /// Where mirrors and workspaces live.
    pub data_dir: PathBuf,
    /// Change notices.
    pub bus: broadcast::Sender<Notice>,
    /// Most matrix combinations per job.
    pub max_matrix: usize,
    /// Most planned jobs of one pipeline (`--max-jobs`); a pipeline over it ends its build
    /// `error` with the linter's `too-many-jobs`.
    pub max_jobs: usize,
    /// Secret keys (the planner reads the job's git credentials).
    pub keys: std::sync::Arc<crate::store::secrets::MasterKeys>,
    /// The plugin platform (step executors, notifiers, SCM status, policies).
    pub plugins: Option<std::sync::Arc<crate::plugins::PluginService>>,
    /// Cache, artifact and retention settings.
    pub storage: std::sync::Arc<super::disk::StorageConfig>,
}

/// What a trigger asks for.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Branch to build (the job's default branch when absent).
    #[serde(default)]
    pub branch: Option<String>,
    /// Exact commit to build.
    #[serde(default)]
    pub commit: Option<String>,
    /// Parameters.
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub params: IndexMap<String, String>,
    /// Queue priority of the build's jobs: `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// What a webhook said about the event (for trigger matching); not part of the API.
    #[serde(skip)]
    pub context: Option<TriggerContext>,
}

/// The repository event behind a webhook-triggered build, recorded as its `trigger` build
/// event; planning checks it against the pipeline's `on:` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TriggerContext {
    /// `push`, `tag` or `pull_request`.
    pub event: String,
    /// The pushed branch, or the pull request's head branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The pushed tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The branch a pull request targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The pull request's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_number: Option<u64>,
    /// What happened to the pull request: `opened`, `synchronize` or `reopened`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_action: Option<String>,
    /// The commit a push moved the branch from (all zeros or absent for a new branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The files the event changed, when the payload lists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_files: Option<Vec<String>>,
    /// The recorded webhook delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<i64>,
    /// A pull request whose head is in another repository (a fork): it writes no cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fork: bool,
}

/// Why the pipeline's `on:` does not run for the webhook event behind a build, if it does not
/// (builds started by hand or through the API always run).
fn not_triggered(context: Option<&TriggerContext>, plan: &chengis_pipeline::Plan) -> Option<String> {
    let event = context.and_then(TriggerContext::as_event)?;
    chengis_pipeline::triggers::decide(plan.on.as_ref(), &event).err()
}

impl TriggerContext {
    /// The event as the trigger matcher sees it.
    fn as_event(&self) -> Option<chengis_pipeline::triggers::TriggerEvent> {
        use chengis_pipeline::triggers::TriggerEvent;
        Some(match self.event.as_str() {
            "push" => TriggerEvent::Push { branch: self.branch.clone()?, changed_files: self.changed_files.clone() },
            "tag" => TriggerEvent::Tag { tag: self.tag.clone()? },
            "pull_request" => TriggerEvent::PullRequest {
                action: self.pr_action.clone().unwrap_or_else(|| "opened".into()),
                base: self.base.clone()?,
                changed_files: self.changed_files.clone(),
            },
            _ => return None,
        })
    }
}

impl BuildContext {
    fn notify(&self, n: Notice) {
        // No receiver is fine: nobody is watching.
        let _ = self.bus.send(n);
    }

    /// Records a build and starts planning it in the background.
    pub async fn trigger(
        &self,
        job: &str,
        req: TriggerRequest,
        trigger: &str,
        who: &str,
    ) -> Result<BuildSummary, StoreError> {
        let record = self.store.job(job).await?;
        let branch = req.branch.clone().unwrap_or(record.default_branch.clone());
        let build = self
            .store
            .create_build(
                record.id,
                &NewBuild {
                    trigger: trigger.into(),
                    who: who.into(),
                    commit_sha: req.commit.clone().unwrap_or_default(),
                    branch: branch.clone(),
                    root_build_id: None,
                    attempt: 1,
                    params: req.params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
                    priority: req.priority.unwrap_or_default(),
                },
            )
            .await?;
        self.store.add_event(build.id, "build_status", &serde_json::json!({"status": "queued"})).await?;
        if let Some(context) = &req.context {
            let payload = serde_json::to_value(context).unwrap_or_default();
            self.store.add_event(build.id, "trigger", &payload).await?;
        }
        let ctx = self.clone();
        let id = build.id;
        tokio::spawn(async move {
            if let Err(e) = ctx.plan(id).await {
                tracing::error!(build = id, "planning failed: {e}");
            }
        });
        self.store.build_summary(build.id).await
    }

    /// Plans a build: resolves the commit, reads the pipeline at it, plans, creates build jobs.
    /// A pipeline that does not lint or plan ends the build as `error` with the diagnostics, and
    /// so does any other failure while planning (a secret that cannot be decrypted, say): a
    /// build always reaches a final status.
    pub async fn plan(&self, build_id: i64) -> Result<(), StoreError> {
        match self.plan_build(build_id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let reason = format!("the build could not be planned: {e}");
                match self.store.build(build_id).await {
                    Ok(b) if !b.status.is_finished() && self.store.build_jobs(build_id).await?.is_empty() => {
                        self.fail_build(build_id, &reason).await?;
                    }
                    _ => {}
                }
                Err(e)
            }
        }
    }

    async fn plan_build(&self, build_id: i64) -> Result<(), StoreError> {
        let summary = self.store.build_summary(build_id).await?;
        let params = self.store.build_params(build_id).await?;
        let job = self.store.job(&summary.job).await?;
        let mirror_dir = self.data_dir.join("mirrors").join(format!("{}.git", job.id));
        let (url, branch, commit) = (job.repo_url.clone(), summary.branch.clone(), summary.commit_sha.clone());
        let pipeline_path = job.pipeline_path.clone();
        // Planning decrypts only the secrets the fetch needs.
        let git_secrets =
            self.store.secrets_named(&self.keys, &job.name, &super::checkout::GitCredentials::SECRETS).await?;
        let creds = super::checkout::GitCredentials::from_secrets(&git_secrets);
        // A webhook event without its changed files: they come from the mirror (the push's
        // `before`, or for a new branch or a force push, where it left the default branch).
        let mut context = self.trigger_context(build_id).await?;
        let diff_from = context
            .as_ref()
            .filter(|c| c.changed_files.is_none() && matches!(c.event.as_str(), "push" | "pull_request"))
            .map(|c| c.before.clone().filter(|b| !b.trim_matches('0').is_empty()).unwrap_or_default());
        let default_branch = job.default_branch.clone();
        type Fetched = (String, String, String, (String, String), Option<Vec<String>>);
        let fetched = tokio::task::spawn_blocking(move || -> Result<Fetched, String> {
            let known = Some(commit.as_str()).filter(|c| !c.is_empty());
            let mirror = Mirror::update_for(&mirror_dir, &url, creds.as_ref(), known).map_err(|e| e.to_string())?;
            let sha = if commit.is_empty() {
                mirror.branch_tip(&branch).map_err(|e| e.to_string())?
            } else {
                mirror.resolve_commit(&commit).map_err(|e| e.to_string())?
            };
            let paths: Vec<&str> = match &pipeline_path {
                Some(p) => vec![p.as_str()],
                None => PIPELINE_PATHS.to_vec(),
            };
            let (path, text) = mirror.read_first(&sha, &paths).map_err(|e| e.to_string())?;
            let info = mirror.commit_info(&sha).unwrap_or_default();
            let changed = diff_from.and_then(|before| mirror.changed_files(&before, &sha, &default_branch).ok());
            Ok((sha, path, text, info, changed))
        })
        .await
        .map_err(|e| StoreError::Crypto(format!("planning task: {e}")))?;
        let (sha, path, text, (message, author), changed) = match fetched {
            Ok(v) => v,
            Err(reason) => return self.fail_build(build_id, &reason).await,
        };
        if let (Some(c), Some(files)) = (context.as_mut(), changed) {
            c.changed_files = Some(files);
        }
        self.store.set_build_commit(build_id, &sha, &message, &author).await?;
        let summary =
            BuildSummary { commit_sha: sha.clone(), commit_message: message, commit_author: author, ..summary };
        let planned = {
            // Server-side `${VAR}` reads parameters and matrix values only, never the server's
            // own environment.
            let no_vars = |_: &str| None;
            let inputs = PlanInputs { params: &params, vars: &no_vars, max_matrix: self.max_matrix };
            let opts = LintOptions { max_matrix: self.max_matrix, max_jobs: self.max_jobs, ..LintOptions::default() };
            lint_and_plan(&text, &path, &opts, &inputs)
        };
        let mut plan = match planned {
            Ok((plan, _warnings)) => plan,
            Err(diags) => {
                let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                return self.fail_build(build_id, &format!("the pipeline does not plan:\n{}", text.join("\n"))).await;
            }
        };
        // `concurrency.group` is decided now, from the parameters and the event, and stored
        // in the plan as text: later builds compare their group with it.
        let params = super::context::params(&plan);
        if let Some(cc) = plan.concurrency.as_mut()
            && cc.group.contains("${{")
        {
            let contexts =
                super::context::Contexts { params, git: git_context(&summary, context.as_ref()), ..Default::default() };
            match super::context::render_str(&cc.group, &contexts) {
                Ok(group) => cc.group = group,
                Err(e) => return self.fail_build(build_id, &format!("concurrency.group: {e}")).await,
            }
        }
        // The default branch's pipeline decides the job's `on.schedule` entries.
        if summary.branch == job.default_branch {
            let crons: Vec<String> =
                plan.on.as_ref().map(|o| o.schedule.iter().map(|s| s.cron.clone()).collect()).unwrap_or_default();
            if let Err(e) = super::cron::sync_pipeline_schedules(&self.store, &job.name, &crons).await {
                tracing::warn!(build = build_id, "pipeline schedules not synced: {e}");
            }
        }
        if let Some(reason) = not_triggered(context.as_ref(), &plan) {
            tracing::info!(build = build_id, "not triggered: {reason}");
            let reason = format!("not triggered: {reason}");
            self.store.transition_build(build_id, Status::Skipped, Some(&reason)).await?;
            let event = serde_json::json!({"status": "skipped", "reason": reason});
            self.store.add_event(build_id, "build_status", &event).await?;
            self.notify(Notice::Build(build_id));
            return Ok(());
        }
        self.cancel_superseded(&summary, context.is_some(), &plan).await;
        if let Some(service) = &self.plugins {
            let policy_plan = crate::plugins::dispatch::policy_plan(&plan, &summary, &sha, &job.repo_url);
            match crate::plugins::dispatch::check_policies(service.clone(), policy_plan).await {
                Ok(verdict) => {
                    let event = serde_json::json!({"denials": verdict.denials, "warnings": verdict.warnings});
                    if !verdict.denials.is_empty() || !verdict.warnings.is_empty() {
                        self.store.add_event(build_id, "policy", &event).await?;
                    }
                    if !verdict.denials.is_empty() {
                        let reason = format!("denied by policy:\n{}", verdict.denials.join("\n"));
                        return self.fail_build(build_id, &reason).await;
                    }
                }
                Err(e) => return self.fail_build(build_id, &format!("the policies could not run: {e}")).await,
            }
        }
        let plan_json = serde_json::to_string(&plan).unwrap_or_default();
        self.store.set_build_plan(build_id, &plan_json).await?;
        for job in &plan.jobs {
            let spec = serde_json::to_string(job).unwrap_or_default();
            self.store.add_build_job(build_id, &job.id, &spec, &job.needs).await?;
        }
        // The post steps run as one more job once the others ended; which steps is decided
        // then, from how the build went.
        if chengis_model::schedule::has_post(&plan) {
            let needs: Vec<String> = plan.jobs.iter().map(|j| j.id.clone()).collect();
            let post = chengis_model::schedule::post_job(&plan, Status::Success)
                .or_else(|| chengis_model::schedule::post_job(&plan, Status::Failure));
            let spec = serde_json::to_string(&post).unwrap_or_default();
            self.store.add_build_job(build_id, chengis_model::schedule::POST_JOB, &spec, &needs).await?;
        }
        self.announce(build_id, crate::plugins::dispatch::Change::Queued);
        self.schedule(build_id).await
    }

    /// Cancels the builds this one supersedes. With `concurrency: {group, cancel-in-progress:
    /// true}`: the job's unfinished builds planned in the same group; with `cancel-in-progress:
    /// false`: none; without `concurrency:`, for a webhook build: the job's unfinished webhook
    /// builds of the same branch at other commits.
    async fn cancel_superseded(&self, build: &BuildSummary, from_webhook: bool, plan: &chengis_pipeline::Plan) {
        let group = match &plan.concurrency {
            Some(c) if !c.cancel_in_progress => return,
            Some(c) => Some(c.group.as_str()),
            None if from_webhook => None,
            None => return,
        };
        let filter = crate::store::builds::BuildFilter {
            job: Some(build.job.clone()),
            branch: group.is_none().then(|| build.branch.clone()),
            limit: 200,
            ..Default::default()
        };
        let Ok(builds) = self.store.list_builds(&filter).await else { return };
        for old in builds.into_iter().filter(|b| b.id < build.id && !b.status.is_finished()) {
            let superseded = match group {
                Some(group) => self
                    .store
                    .build_plan(old.id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|text| serde_json::from_str::<chengis_pipeline::Plan>(&text).ok())
                    .and_then(|p| p.concurrency)
                    .is_some_and(|c| c.group == group),
                None => old.who.starts_with("webhook:") && old.commit_sha != build.commit_sha,
            };
            if superseded {
                match self.cancel(old.id).await {
                    Ok(()) => tracing::info!(build = old.id, "superseded by build {}: cancelled", build.id),
                    Err(e) => tracing::debug!(build = old.id, "superseded, not cancelled: {e}"),
                }
            }
        }
    }

    /// The webhook event behind this build, if one started it (its `trigger` event).
    pub async fn trigger_context(&self, build_id: i64) -> Result<Option<TriggerContext>, StoreError> {
        let payload = self.store.first_event(build_id, "trigger").await?;
        Ok(payload.and_then(|p| serde_json::from_value::<TriggerContext>(p).ok()))
    }

    async fn fail_build(&self, build_id: i64, reason: &str) -> Result<(), StoreError> {
        tracing::warn!(build = build_id, "{reason}");
        self.store.transition_build(build_id, Status::Error, Some(reason)).await?;
        self.store
            .add_event(build_id, "build_status", &serde_json::json!({"status": "error", "reason": reason}))
            .await?;
        self.notify(Notice::Build(build_id));
        self.announce(build_id, crate::plugins::dispatch::Change::Build);
        Ok(())
    }

    /// Tells the notifier and SCM status plugins about a status change of the build (or of one
    /// of its jobs), in the background and in order: plugins never hold up a build.
    pub fn announce(&self, build_id: i64, change: crate::plugins::dispatch::Change) {
        if let Some(service) = &self.plugins {
            service.announce(self.keys.clone(), build_id, change);
        }
    }

    /// Asks the one scheduler ([`chengis_model::schedule::decide`]) what happens next in the
    /// build and carries it out: enqueue the jobs it starts, end the ones it skips or cancels,
    /// stop running ones (fail-fast, cancel), run the post job, end the build. Called after
    /// every change of a build; `ended`: the status of the job whose end led here, if one did
    /// (a success in a wide build that still runs needs no more than one small query).
    pub async fn schedule(&self, build_id: i64) -> Result<(), StoreError> {
        self.schedule_after(build_id, None).await
    }

    /// [`BuildContext::schedule`] after a job ended `ended`.
    pub async fn schedule_after(&self, build_id: i64, ended: Option<Status>) -> Result<(), StoreError> {
        use chengis_model::schedule::{BuildView, Decision, JobState, JobView, POST_JOB, decide, has_post, post_job};
        let state = self.store.schedule_state(build_id).await?;
        let build_status = state.status;
        let cancelled = build_status == Status::Cancelled || state.cancel_requested;
        // The common case of a wide build: a job succeeded, nothing new can start and jobs still
        // run; nothing for the scheduler to decide.
        if state.unenqueued == 0
            && state.unfinished > 0
            && ended.is_some_and(|s| !s.is_failure())
            && !build_status.is_finished()
            && !cancelled
        {
            self.notify(Notice::Build(build_id));
            return Ok(());
        }
        let records = self.store.build_jobs(build_id).await?;
        if records.is_empty() {
            // Not planned yet (or planning failed): nothing to schedule.
            return Ok(());
        }
        let plan = self.store.plan(build_id).await?;
        let queue = self.store.queue_entries(build_id).await?;
        let entry = |id: i64| queue.iter().find(|q| q.build_job_id == id);
        let record = |key: &str| records.iter().find(|r| r.job_key == key);
        let state_of = |key: &str| {
            record(key).map_or(JobState::Done(Status::Error), |r| JobState::of(r.status, entry(r.id).is_some()))
        };
        let views: Vec<JobView> = plan
            .jobs
            .iter()
            .map(|job| JobView {
                job,
                state: state_of(&job.id),
                stop_requested: record(&job.id).and_then(|r| entry(r.id)).is_some_and(|q| q.cancel_requested),
            })
            .collect();
        let build = BuildView { cancelled, post: has_post(&plan).then(|| state_of(POST_JOB)) };
        let mut conditions = super::conditions::Conditions::new(self, build_id, &plan, &records);
        let decisions = {
            // The conditions the scheduler may ask about: of waiting jobs, and of running ones
            // once the build is cancelled (a job whose `if:` holds then goes on).
            let needed: Vec<&chengis_pipeline::PlannedJob> = views
                .iter()
                .filter(|v| v.job.condition.is_some() && (v.state == JobState::Waiting || cancelled))
                .map(|v| v.job)
                .collect();
            conditions.load(&needed).await?;
            decide(&views, build, &mut |job, status| conditions.evaluate(job, status))
        };
        let priority = match decisions.iter().any(|d| matches!(d, Decision::Start { .. } | Decision::StartPost { .. }))
        {
            true => self.store.build_priority(build_id).await?,
            false => Default::default(),
        };
        let mut enqueued = false;
        // A job taken out of the queue ended here: the scheduler then has more to decide.
        let mut again = false;
        for decision in decisions {
            match decision {
                Decision::Start { job } => {
                    let Some(r) = record(&job) else { continue };
                    let spec = self.store.planned_job(r.id).await?;
                    let needs = crate::store::agents::Needs::of(&spec);
                    enqueued |= self.store.enqueue_with(r.id, priority, &spec.runs_on, needs).await?.is_some();
                }
                Decision::End { job, status, reason } => {
                    let Some(r) = record(&job) else { continue };
                    match self.store.transition_build_job(r.id, status, Some(&reason)).await {
                        Ok(()) => {}
                        // Another scheduler of the same build got there first.
                        Err(StoreError::IllegalTransition { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                    let event = serde_json::json!({"job": job, "status": status, "reason": reason});
                    self.store.add_event(build_id, "job_status", &event).await?;
                    self.announce(build_id, crate::plugins::dispatch::Change::Job(job, status));
                }
                Decision::Stop { job, reason } => {
                    let Some(r) = record(&job) else { continue };
                    if self.store.stop_job(r.id, &reason).await? == crate::store::queue::Stopped::Removed {
                        again = true;
                        let event = serde_json::json!({"job": job, "status": Status::Cancelled, "reason": reason});
                        self.store.add_event(build_id, "job_status", &event).await?;
                        self.announce(build_id, crate::plugins::dispatch::Change::Job(job, Status::Cancelled));
                    }
                }
                Decision::StartPost { status } => {
                    let Some(r) = record(POST_JOB) else { continue };
                    let Some(post) = post_job(&plan, status) else {
                        let reason = format!("no post steps for a build that ended `{status}`");
                        self.store.transition_build_job(r.id, Status::Skipped, Some(&reason)).await?;
                        let event = serde_json::json!({"job": POST_JOB, "status": Status::Skipped, "reason": reason});
                        self.store.add_event(build_id, "job_status", &event).await?;
                        // The build ends on the next pass.
                        return Box::pin(self.schedule_after(build_id, None)).await;
                    };
                    let spec = serde_json::to_string(&post).unwrap_or_default();
                    self.store.set_build_job_spec(r.id, &spec).await?;
                    enqueued |= self.store.enqueue_with(r.id, priority, &[], Default::default()).await?.is_some();
                }
                Decision::Finish { status } => {
                    if !build_status.is_finished() {
                        if build_status == Status::Queued && status != Status::Cancelled {
                            match self.store.transition_build(build_id, Status::Running, None).await {
                                Ok(()) | Err(StoreError::IllegalTransition { .. }) => {}
                                Err(e) => return Err(e),
                            }
                        }
                        match self.store.transition_build(build_id, status, None).await {
                            Ok(()) => {
                                let event = serde_json::json!({"status": status});
                                self.store.add_event(build_id, "build_status", &event).await?;
                                self.announce(build_id, crate::plugins::dispatch::Change::Build);
                            }
                            Err(StoreError::IllegalTransition { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        if enqueued {
            self.notify(Notice::Enqueued);
        }
        if again {
            return Box::pin(self.schedule_after(build_id, None)).await;
        }
        self.notify(Notice::Build(build_id));
        Ok(())
    }

    /// Ends build job `build_job_id`, which ended outside a lease's finish (its agent was lost
    /// too often), and moves its build on.
    pub async fn job_ended(&self, build_job_id: i64, reason: &str) -> Result<(), StoreError> {
        let job = self.store.build_job(build_job_id).await?;
        let event = serde_json::json!({"job": job.job_key, "status": job.status, "reason": reason});
        self.store.add_event(job.build_id, "job_status", &event).await?;
        self.announce(job.build_id, crate::plugins::dispatch::Change::Job(job.job_key.clone(), job.status));
        self.schedule_after(job.build_id, Some(job.status)).await
    }

    /// Cancels a build: the scheduler ends its waiting jobs and asks the running ones to stop;
    /// the build ends `cancelled` once every job has ended (within about a second: agents see
    /// the request when they renew their lease).
    pub async fn cancel(&self, build_id: i64) -> Result<(), StoreError> {
        let build = self.store.build(build_id).await?;
        if build.status.is_finished() || !self.store.request_build_cancel(build_id).await? {
            let from = self.store.build(build_id).await.map_or(build.status, |b| b.status);
            return Err(StoreError::IllegalTransition {
                what: format!("build {build_id}"),
                from,
                to: Status::Cancelled,
            });
        }
        tracing::info!(build = build_id, "cancel requested");
        self.schedule(build_id).await
    }

    /// Starts a new attempt of a finished build: same job, commit and branch, linked to the first.
    pub async fn retry(&self, build_id: i64, who: &str) -> Result<BuildSummary, StoreError> {
        let old = self.store.build_summary(build_id).await?;
        if !old.status.is_finished() {
            return Err(StoreError::Conflict(format!("build {build_id} is still {}; cancel it first", old.status)));
        }
        let job = self.store.job(&old.job).await?;
        let params = self.store.build_params(build_id).await?;
        let build = self
            .store
            .create_build(
                job.id,
                &NewBuild {
                    trigger: "retry".into(),
                    who: who.into(),
                    commit_sha: old.commit_sha.clone(),
                    branch: old.branch.clone(),
                    root_build_id: Some(old.root_build_id.unwrap_or(old.id)),
                    attempt: old.attempt + 1,
                    params: params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
                    priority: self.store.build_priority(build_id).await?,
                },
            )
            .await?;
        let ctx = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ctx.plan(build.id).await {
                tracing::error!(build = build.id, "planning failed: {e}");
            }
        });
        self.store.build_summary(build.id).await
    }
}

/// The `git` context of a server build: the commit (`sha`, `short_sha`, `branch`, `tag`,
/// `message`, `author`), the `event` that started it (`push`, `tag`, `pull_request`,
/// `schedule`, `manual`, ...) and, for pull requests, `pr` (`number`, `head`, `base`).
pub fn git_context(build: &BuildSummary, trigger: Option<&TriggerContext>) -> serde_json::Value {
    let (branch, tag) = match build.branch.strip_prefix("refs/tags/") {
        Some(tag) => (String::new(), tag.to_string()),
        None => (build.branch.clone(), String::new()),
    };
    let mut git = serde_json::json!({
        "sha": build.commit_sha,
        "short_sha": build.commit_sha.chars().take(8).collect::<String>(),
        "branch": branch,
        "tag": tag,
        "message": build.commit_message,
        "author": build.commit_author,
        "event": trigger.as_ref().map_or(build.trigger.as_str(), |t| t.event.as_str()),
    });
    if let Some(t) = trigger.filter(|t| t.event == "pull_request") {
        git["pr"] = serde_json::json!({"number": t.pr_number, "head": t.branch, "base": t.base});
    }
    git
}
