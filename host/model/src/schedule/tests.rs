//! The scheduler's decisions on small plans, one rule at a time.

use super::*;
use chengis_pipeline::{LintOptions, PlanInputs, lint_and_plan};

fn plan(yaml: &str) -> Plan {
    let no_vars = |_: &str| None;
    let params = Default::default();
    let inputs = PlanInputs { params: &params, vars: &no_vars, max_matrix: 25 };
    lint_and_plan(yaml, "t.yml", &LintOptions::default(), &inputs).expect("plans").0
}

/// `if:` evaluated the simple way: absent means `success()`.
fn cond(job: &PlannedJob, status: ExprStatus) -> Result<bool, String> {
    Ok(match job.condition.as_deref() {
        None | Some("success()") => status == ExprStatus::Success,
        Some("always()") => true,
        Some("failure()") => status == ExprStatus::Failure,
        Some("false") => false,
        Some(other) => return Err(format!("cannot evaluate {other}")),
    })
}

fn run(plan: &Plan, states: &[JobState], build: BuildView) -> Vec<Decision> {
    let views: Vec<JobView> =
        plan.jobs.iter().zip(states).map(|(job, s)| JobView { job, state: *s, stop_requested: false }).collect();
    decide(&views, build, &mut cond)
}

fn start(id: &str) -> Decision {
    Decision::Start { job: id.into() }
}

fn end(id: &str, status: Status, reason: &str) -> Decision {
    Decision::End { job: id.into(), status, reason: reason.into() }
}

const CHAIN: &str = "jobs:\n  a:\n    steps: [{run: x}]\n  b:\n    needs: a\n    steps: [{run: x}]\n  c:\n    needs: b\n    if: always()\n    steps: [{run: x}]\n";

#[test]
fn roots_start_first() {
    let p = plan(CHAIN);
    assert_eq!(run(&p, &[JobState::Waiting; 3], BuildView::default()), vec![start("a")]);
}

#[test]
fn a_failure_skips_dependants_and_always_still_runs() {
    let p = plan(CHAIN);
    let states = [JobState::Done(Status::Failure), JobState::Waiting, JobState::Waiting];
    assert_eq!(
        run(&p, &states, BuildView::default()),
        vec![end("b", Status::Skipped, "needs `a`, which ended `failure`"), start("c")]
    );
}

#[test]
fn the_build_ends_once_every_job_did() {
    let p = plan(CHAIN);
    let states = [JobState::Done(Status::Failure), JobState::Done(Status::Skipped), JobState::Done(Status::Success)];
    assert_eq!(run(&p, &states, BuildView::default()), vec![Decision::Finish { status: Status::Failure }]);
    let skipped_only =
        [JobState::Done(Status::Success), JobState::Done(Status::Skipped), JobState::Done(Status::Skipped)];
    assert_eq!(run(&p, &skipped_only, BuildView::default()), vec![Decision::Finish { status: Status::Success }]);
}

#[test]
fn a_false_condition_skips_and_the_build_still_ends() {
    let p = plan("jobs:\n  a:\n    if: ${{ false }}\n    steps: [{run: x}]\n");
    let views: Vec<JobView> =
        p.jobs.iter().map(|job| JobView { job, state: JobState::Waiting, stop_requested: false }).collect();
    let mut never = |_: &PlannedJob, _: ExprStatus| Ok(false);
    assert_eq!(
        decide(&views, BuildView::default(), &mut never),
        vec![end("a", Status::Skipped, "its `if` condition is false"), Decision::Finish { status: Status::Success }]
    );
}

#[test]
fn an_invalid_condition_is_an_error() {
    let p = plan("jobs:\n  a:\n    if: ${{ false }}\n    steps: [{run: x}]\n");
    let views: Vec<JobView> =
        p.jobs.iter().map(|job| JobView { job, state: JobState::Waiting, stop_requested: false }).collect();
    let mut broken = |_: &PlannedJob, _: ExprStatus| Err("unknown context `nope`".to_string());
    assert_eq!(
        decide(&views, BuildView::default(), &mut broken),
        vec![end("a", Status::Error, "unknown context `nope`"), Decision::Finish { status: Status::Error }]
    );
}

#[test]
fn cancel_ends_waiting_jobs_and_stops_started_ones() {
    let p = plan(CHAIN);
    let states = [JobState::Running, JobState::Waiting, JobState::Waiting];
    let build = BuildView { cancelled: true, post: None };
    // `b` and `c` wait for `a` to stop; then `b` ends and `c` (`always()`) runs.
    assert_eq!(run(&p, &states, build), vec![Decision::Stop { job: "a".into(), reason: BUILD_CANCELLED.into() }]);
    let stopped = [JobState::Done(Status::Cancelled), JobState::Waiting, JobState::Waiting];
    assert_eq!(run(&p, &stopped, build), vec![end("b", Status::Cancelled, BUILD_CANCELLED), start("c")]);
    // A running `always()` job is not stopped.
    let cleaning = [JobState::Done(Status::Cancelled), JobState::Done(Status::Cancelled), JobState::Running];
    assert_eq!(run(&p, &cleaning, build), vec![]);
    let done =
        [JobState::Done(Status::Cancelled), JobState::Done(Status::Cancelled), JobState::Done(Status::Cancelled)];
    assert_eq!(run(&p, &done, build), vec![Decision::Finish { status: Status::Cancelled }]);
}

const MATRIX: &str = "jobs:\n  t:\n    strategy:\n      matrix: {n: [1, 2, 3]}\n      max-parallel: 2\n    steps: [{run: x}]\n  after:\n    needs: t\n    steps: [{run: x}]\n";

#[test]
fn max_parallel_holds_combinations_back() {
    let p = plan(MATRIX);
    let d = run(&p, &[JobState::Waiting; 4], BuildView::default());
    assert_eq!(d.len(), 2, "{d:?}");
    let states = [JobState::Done(Status::Success), JobState::Running, JobState::Waiting, JobState::Waiting];
    assert_eq!(run(&p, &states, BuildView::default()), vec![start(&p.jobs[2].id)]);
}

#[test]
fn fail_fast_cancels_the_other_combinations() {
    let p = plan(MATRIX);
    let states = [JobState::Done(Status::Failure), JobState::Running, JobState::Waiting, JobState::Waiting];
    let d = run(&p, &states, BuildView::default());
    let reason = "another combination of `t` failed (fail-fast)";
    assert_eq!(
        d,
        vec![
            end(&p.jobs[2].id, Status::Cancelled, reason),
            Decision::Stop { job: p.jobs[1].id.clone(), reason: reason.into() },
        ]
    );
    // `after` waits for the running combination to stop, then is skipped.
    let stopped = [
        JobState::Done(Status::Failure),
        JobState::Done(Status::Cancelled),
        JobState::Done(Status::Cancelled),
        JobState::Waiting,
    ];
    assert_eq!(
        run(&p, &stopped, BuildView::default()),
        vec![
            end("after", Status::Skipped, &format!("needs `{}`, which ended `failure`", p.jobs[0].id)),
            Decision::Finish { status: Status::Failure }
        ]
    );
}

const POST: &str =
    "jobs:\n  a:\n    steps: [{run: x}]\npost:\n  always: [{run: echo always}]\n  on-failure: [{run: echo failed}]\n";

#[test]
fn post_runs_after_every_job_and_then_the_build_ends() {
    let p = plan(POST);
    let waiting = BuildView { cancelled: false, post: Some(JobState::Waiting) };
    let d = run(&p, &[JobState::Done(Status::Failure)], waiting);
    assert_eq!(d, vec![Decision::StartPost { status: Status::Failure }]);
    let post = post_job(&p, Status::Failure).expect("post steps");
    assert_eq!(post.steps.len(), 2);
    assert!(post_job(&p, Status::Success).is_some_and(|j| j.steps.len() == 1));
    let running = BuildView { cancelled: false, post: Some(JobState::Running) };
    assert_eq!(run(&p, &[JobState::Done(Status::Failure)], running), vec![]);
    let done = BuildView { cancelled: false, post: Some(JobState::Done(Status::Success)) };
    assert_eq!(run(&p, &[JobState::Done(Status::Failure)], done), vec![Decision::Finish { status: Status::Failure }]);
}

#[test]
fn post_does_not_run_after_a_cancel() {
    let p = plan(POST);
    let build = BuildView { cancelled: true, post: Some(JobState::Waiting) };
    assert_eq!(
        run(&p, &[JobState::Done(Status::Cancelled)], build),
        vec![end(POST_JOB, Status::Cancelled, BUILD_CANCELLED), Decision::Finish { status: Status::Cancelled }]
    );
}
