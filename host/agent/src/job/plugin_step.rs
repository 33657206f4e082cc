//! `uses:` steps: the step-executor plugin named by the step runs with the step's `with:` (over
//! the plugin's server-side config), only the secrets its grant allows, and the job's sandbox
//! for the commands it runs; what it sets becomes the step's outputs and env.

use super::bridge::{SandboxTarget, StepLog, StepSandbox};
use super::{JobEnv, Written};
use crate::context::{self, Contexts, set_var};
use crate::executors::{StepExecutor, StepExecutors, secret_granted};
use chengis_model::events::{RunEvent, TestCaseReport, TestOutcome, TestSuiteReport, test_counts};
use chengis_model::status::Status;
use chengis_pipeline::plan::{Piece, PlannedStep};
use chengis_plugin_host::bindings::step_executor;
use chengis_plugin_host::{CallContext, outputs, types};
use chengis_runner::exec::docker::JobSandbox;
use chengis_runner::exec::{HostProcess, LineSink, StepBackend};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The secret names a text's expressions read (`secrets.NAME`).
fn secrets_read(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("secrets.") {
        let tail = &rest[at + "secrets.".len()..];
        let name: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.push(name);
        }
        rest = tail;
    }
    out
}

/// Runs a `uses:` step; returns its status, reason and what it wrote.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    executors: &Arc<dyn StepExecutors>,
    step: &PlannedStep,
    uses: &str,
    index: usize,
    env: &JobEnv,
    ctx: &Contexts,
    step_env: Vec<(String, String)>,
    limit: Option<Duration>,
    job_id: &str,
    sandbox: Option<&Arc<JobSandbox>>,
) -> (Status, Option<String>, Written) {
    let fail = |reason: String| (Status::Error, Some(reason), Written::default());
    let executor = match executors.step_executor(uses).await {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let record = executor.record.clone();
    // `${{ secrets.X }}` in `with:` only for secrets the plugin's grant allows.
    let granted = |name: &str| secret_granted(&record, name);
    for (key, text) in &step.with {
        for piece in &text.0 {
            if let Piece::Expr(src) = piece
                && let Some(name) = secrets_read(src).into_iter().find(|n| !granted(n))
            {
                return fail(format!(
                    "with.{key}: plugin `{}` {} is not granted secret `{name}` (an admin can grant it: `chengis plugin allow {} --grant secret:{name}`)",
                    record.name, record.version, record.name
                ));
            }
        }
    }
    let mut with = indexmap::IndexMap::new();
    for (key, text) in &step.with {
        match context::render(text, ctx) {
            Ok(v) => {
                with.insert(key.clone(), v);
            }
            Err(e) => return fail(format!("with.{key}: {e}")),
        }
    }
    let secrets: HashMap<String, String> = match &ctx.secrets {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| granted(k))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => HashMap::new(),
    };
    let target = match sandbox {
        Some(s) => SandboxTarget {
            backend: s.clone() as Arc<dyn StepBackend>,
            workspace: std::path::PathBuf::from(chengis_runner::exec::docker::spec::WORKSPACE),
            env: step_env.clone(),
            host: None,
        },
        None => {
            let mut all = env.host_env.clone();
            context::merge_vars(&mut all, &step_env);
            if let Err(e) = super::sandbox_home(env, &mut all) {
                return (Status::Error, Some(e), Written::default());
            }
            SandboxTarget {
                backend: Arc::new(HostProcess),
                workspace: env.workspace.clone(),
                env: all,
                host: env.host.clone(),
            }
        }
    };
    // The step's time limit stops the commands the plugin runs (and so the plugin's wait).
    let cancel = env.cancel.child();
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = limit.map(|limit| {
        let (cancel, timed_out) = (cancel.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
            cancel.cancel();
        })
    });
    let call = StepCall {
        with,
        secrets,
        build: env.plugin_build.clone().unwrap_or_else(|| types::Build {
            id: 0,
            number: 0,
            pipeline: String::new(),
            status: types::Status::Running,
            commit: types::Commit {
                sha: String::new(),
                repository: String::new(),
                branch: None,
                tag: None,
                message: String::new(),
                author: String::new(),
            },
            trigger: String::new(),
            url: None,
            duration_ms: None,
        }),
        job: types::Job {
            id: 0,
            name: job_id.to_string(),
            status: types::Status::Running,
            image: None,
            duration_ms: None,
        },
        step: types::Step { index: index as u32, name: step.name.clone(), uses: uses.to_string() },
        env: step_env,
        target,
        workspace: env.workspace.clone(),
        log: StepLog::new(env.log.step(LineSink::Events {
            tx: env.events.clone(),
            job: job_id.to_string(),
            step: index,
        })),
        masker: env.log.masker().clone(),
        output_cap: env.log.cap(),
        cancel: cancel.clone(),
        kill_grace: env.kill_grace,
    };
    let outcome = run_call(executor, call).await;
    if let Some(timer) = timer {
        timer.abort();
    }
    if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
        let limit = chengis_model::human_duration(limit.unwrap_or_default());
        return (Status::TimedOut, Some(format!("timed out after {limit}")), Written::default());
    }
    if env.cancel.is_cancelled() {
        return (Status::Cancelled, Some("was cancelled".into()), Written::default());
    }
    match outcome {
        Err(reason) => (Status::Failure, Some(reason), Written::default()),
        Ok(outcome) => {
            let mut written = Written::default();
            for (k, v) in outcome.env {
                set_var(&mut written.env, &k, v);
            }
            for (k, v) in outcome.outputs {
                set_var(&mut written.outputs, &k, v);
            }
            let suites: Vec<TestSuiteReport> = outcome.tests.iter().map(suite_report).collect();
            let (passed, failed, skipped) = test_counts(&suites);
            if !suites.is_empty() {
                let event = RunEvent::Tests { job: job_id.to_string(), step: index, suites };
                let _ = env.events.send(event).await;
            }
            if failed > 0 {
                let total = passed + failed + skipped;
                return (Status::Failure, Some(format!("{failed} of {total} tests failed")), written);
            }
            (Status::Success, None, written)
        }
    }
}

/// A reported WIT test suite as the engine's own event type.
fn suite_report(suite: &outputs::TestSuite) -> TestSuiteReport {
    let cases = suite
        .cases
        .iter()
        .map(|c| TestCaseReport {
            name: c.name.clone(),
            classname: c.classname.clone(),
            outcome: match c.outcome {
                outputs::TestOutcome::Passed => TestOutcome::Passed,
                outputs::TestOutcome::Failed => TestOutcome::Failed,
                outputs::TestOutcome::Skipped => TestOutcome::Skipped,
                outputs::TestOutcome::Errored => TestOutcome::Errored,
            },
            duration_ms: c.duration_ms,
            message: c.message.clone(),
        })
        .collect();
    TestSuiteReport { name: suite.name.clone(), cases }
}

/// One `uses:` step to run.
struct StepCall {
    with: indexmap::IndexMap<String, String>,
    secrets: HashMap<String, String>,
    build: types::Build,
    job: types::Job,
    step: types::Step,
    env: Vec<(String, String)>,
    target: SandboxTarget,
    workspace: std::path::PathBuf,
    log: StepLog,
    masker: chengis_runner::exec::SecretMasker,
    output_cap: u64,
    cancel: chengis_runner::exec::CancelSignal,
    kill_grace: Duration,
}

/// Runs a step executor on a blocking thread; returns what it set.
async fn run_call(executor: StepExecutor, call: StepCall) -> Result<chengis_plugin_host::StepOutcome, String> {
    let StepExecutor { record, plugin, mut config } = executor;
    chengis_model::env::merge_vars(&mut config, &call.with.into_iter().collect::<Vec<_>>());
    let log = Arc::new(call.log);
    let sandbox = StepSandbox {
        handle: tokio::runtime::Handle::current(),
        target: call.target,
        masker: call.masker,
        cancel: call.cancel,
        kill_grace: call.kill_grace,
        output_cap: call.output_cap,
    };
    let ctx = CallContext {
        config,
        secrets: call.secrets,
        log: Some(log.clone()),
        sandbox: Some(Arc::new(sandbox)),
        workspace: Some(call.workspace),
    };
    let invocation = step_executor::Invocation {
        build: call.build,
        job: call.job,
        step: call.step,
        env: call.env.into_iter().map(|(key, value)| types::KeyValue { key, value }).collect(),
    };
    let result = tokio::task::spawn_blocking(move || plugin.run_step(&ctx, &invocation)).await;
    let outcome = match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("plugin `{}` {}: {e}", record.name, record.version)),
    };
    // The cap warning, when the plugin's lines reached it.
    if let Ok(log) = Arc::try_unwrap(log) {
        log.finish().await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_are_found() {
        assert_eq!(secrets_read("secrets.A_1 == secrets.b"), ["A_1", "b"]);
        assert!(secrets_read("env.X").is_empty());
    }
}
