//! Test results of builds: the cases that step executors reported (e.g. the junit plugin),
//! stored per build and job so that later features can score flaky tests.

use super::{Store, StoreError};
use chengis_model::reports::TestSuiteReport;
use serde::Serialize;
use sqlx::Row;

/// One stored test case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    /// The planned job id it ran in.
    pub job: String,
    /// The step index that reported it.
    pub step: i64,
    /// The suite's name.
    pub suite: String,
    /// Class, module or file.
    pub classname: String,
    /// The test's name.
    pub name: String,
    /// `passed`, `failed`, `skipped` or `errored`.
    pub outcome: String,
    /// How long it took.
    pub duration_ms: i64,
    /// The failure message, if any.
    pub message: Option<String>,
}

impl Store {
    /// Stores the suites a step reported, replacing what an earlier attempt of the same step
    /// stored; refused when `lease` is no longer held (a newer attempt owns the job).
    pub async fn record_tests(
        &self,
        lease: &super::queue::Lease,
        build_id: i64,
        step: i64,
        suites: &[TestSuiteReport],
    ) -> Result<(), StoreError> {
        let held = super::builds::held_at(3);
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!("DELETE FROM test_results WHERE build_job_id = $1 AND step_idx = $2 AND {held}"))
            .bind(lease.build_job_id)
            .bind(step)
            .bind(lease.entry)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?;
        for suite in suites {
            for case in &suite.cases {
                let done = sqlx::query(&format!(
                    "INSERT INTO test_results (build_id, build_job_id, step_idx, suite, classname, name, outcome, \
                     duration_ms, message) SELECT $5, $1, $2, $6, $7, $8, $9, $10, $11 WHERE {held}"
                ))
                .bind(lease.build_job_id)
                .bind(step)
                .bind(lease.entry)
                .bind(lease.token)
                .bind(build_id)
                .bind(&suite.name)
                .bind(&case.classname)
                .bind(&case.name)
                .bind(case.outcome.as_str())
                .bind(i64::try_from(case.duration_ms).unwrap_or(i64::MAX))
                .bind(&case.message)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::StaleLease { entry: lease.entry, token: lease.token });
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The test results of a build, by job, step and the order they were reported.
    pub async fn test_results(&self, build_id: i64) -> Result<Vec<TestResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT j.job_key, t.step_idx, t.suite, t.classname, t.name, t.outcome, t.duration_ms, t.message \
             FROM test_results t JOIN build_jobs j ON j.id = t.build_job_id WHERE t.build_id = $1 ORDER BY t.id",
        )
        .bind(build_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TestResult {
                    job: r.try_get(0)?,
                    step: r.try_get(1)?,
                    suite: r.try_get(2)?,
                    classname: r.try_get(3)?,
                    name: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    duration_ms: r.try_get(6)?,
                    message: r.try_get(7)?,
                })
            })
            .collect()
    }
}
