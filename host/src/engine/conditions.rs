//! The server's answer to the scheduler's question "does this job's `if:` hold?": the contexts
//! a job's condition sees (`params`, `matrix`, `needs`, `build`, `git`, `env`, and `secrets` when
//! the condition names them), built from the stored build as an agent would see them.

use super::builds::BuildContext;
use super::context::{self, Contexts};
use crate::status::Status;
use crate::store::StoreError;
use crate::store::builds::BuildJobRecord;
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::{Plan, PlannedJob};
use serde_json::{Value, json};

/// `needs.<key>.result` and `needs.<key>.outputs` of `spec` from the build's jobs (for a matrix
/// job: all its combinations' outputs merged, the worst result), and the first need that did
/// not succeed.
pub fn needs_context(plan: &Plan, spec: &PlannedJob, jobs: &[BuildJobRecord]) -> (Value, Option<(String, Status)>) {
    let mut needs = serde_json::Map::new();
    let mut failed = None;
    for key in &spec.needs_keys {
        let mine: Vec<&BuildJobRecord> =
            jobs.iter().filter(|s| plan.jobs.iter().any(|p| p.id == s.job_key && &p.key == key)).collect();
        let mut outputs = serde_json::Map::new();
        for s in &mine {
            outputs.extend(s.outputs.clone());
            if s.status != Status::Success && failed.is_none() {
                failed = Some((key.clone(), s.status));
            }
        }
        let statuses: Vec<Status> = mine.iter().map(|s| s.status).collect();
        let result = chengis_model::schedule::needs_result(&statuses);
        needs.insert(key.clone(), json!({"result": result.as_str(), "outputs": outputs}));
    }
    (Value::Object(needs), failed)
}

/// The contexts of one build's job conditions, read once per scheduling pass.
pub struct Conditions<'a> {
    ctx: &'a BuildContext,
    build_id: i64,
    plan: &'a Plan,
    jobs: &'a [BuildJobRecord],
    base: Option<Contexts>,
}

impl<'a> Conditions<'a> {
    /// Conditions of build `build_id` with its plan and jobs.
    pub fn new(ctx: &'a BuildContext, build_id: i64, plan: &'a Plan, jobs: &'a [BuildJobRecord]) -> Self {
        Conditions { ctx, build_id, plan, jobs, base: None }
    }

    /// Reads what the conditions of `jobs` need (nothing when none has an `if:`).
    pub async fn load(&mut self, jobs: &[&PlannedJob]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let store = &self.ctx.store;
        let build = store.build_summary(self.build_id).await?;
        let trigger = self.ctx.trigger_context(self.build_id).await?;
        let mut base = Contexts {
            params: context::params(self.plan),
            build: json!({"id": build.id, "number": build.number, "job": build.job, "attempt": 1}),
            git: super::builds::git_context(&build, trigger.as_ref()),
            ..Contexts::default()
        };
        let wants_secrets = jobs.iter().any(|j| j.condition.as_deref().is_some_and(|c| c.contains("secrets")));
        if wants_secrets {
            let secrets = store.secrets_for_job(&self.ctx.keys, &build.job).await?;
            base.secrets = Value::Object(secrets.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
        }
        let mut env = Vec::new();
        for (k, text) in &self.plan.env {
            base.env = context::env_object(&env);
            if let Ok(v) = context::render(text, &base) {
                context::set_var(&mut env, k, v);
            }
        }
        base.env = context::env_object(&env);
        self.base = Some(base);
        Ok(())
    }

    /// Whether `job`'s `if:` holds when the expression functions see `status`.
    pub fn evaluate(&self, job: &PlannedJob, status: ExprStatus) -> Result<bool, String> {
        let mut ctx = self.base.clone().unwrap_or_default();
        if job.condition.is_some() {
            ctx.matrix = context::object(job.matrix.iter());
            ctx.needs = needs_context(self.plan, job, self.jobs).0;
        }
        ctx.status = Some(status);
        context::condition(job.condition.as_deref(), &ctx)
    }
}
