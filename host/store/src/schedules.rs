//! The `schedules` table: cron schedules of jobs with their next run. Rows come from the
//! pipeline's `on.schedule` (source `pipeline`) or from the API and CLI (source `api`).
//!
//! The scheduler claims a due row with a compare-and-set on `next_run_ms`
//! ([`Store::claim_schedule`]): the `UPDATE` only matches while the row still holds the slot the
//! scheduler read, so when several servers share one database exactly one of them moves the
//! row forward and fires that slot; the others see zero rows affected and fire nothing. No row
//! lock or advisory lock is held across the trigger. The cron arithmetic lives in
//! `engine::cron`; this module only stores the times it computes.

use super::{Store, StoreError, now_ms};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

/// Where a schedule comes from.
pub const SOURCE_PIPELINE: &str = "pipeline";
/// A schedule created through the API or the CLI.
pub const SOURCE_API: &str = "api";

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ScheduleRecord {
    /// Database id.
    pub id: i64,
    /// The job it builds.
    pub job: String,
    /// `pipeline` (from `on.schedule`) or `api`.
    pub source: String,
    /// The cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone the expression is read in, such as `UTC` or `Europe/Berlin`.
    pub timezone: String,
    /// Branch to build; the job's default branch when absent.
    pub branch: Option<String>,
    /// When it fires next (ms since the epoch).
    pub next_run_ms: i64,
    /// When it last fired.
    pub last_run_ms: Option<i64>,
    /// The build it last started.
    pub last_build_id: Option<i64>,
    /// Creation time (ms since the epoch).
    pub created_ms: i64,
}

/// What creating a schedule takes.
#[derive(Debug, Clone)]
pub struct NewSchedule<'a> {
    /// The job's name.
    pub job: &'a str,
    /// `pipeline` or `api`.
    pub source: &'a str,
    /// The cron expression (already validated).
    pub cron: &'a str,
    /// The time zone (already validated).
    pub timezone: &'a str,
    /// Branch to build, or the default branch.
    pub branch: Option<&'a str>,
    /// The first run (ms since the epoch).
    pub next_run_ms: i64,
}

const SELECT: &str = "SELECT s.id, j.name AS job, s.source, s.cron, s.timezone, s.branch, s.next_run_ms, \
    s.last_run_ms, s.last_build_id, s.created_ms FROM schedules s JOIN jobs j ON j.id = s.job_id";

fn schedule_from_row(row: &AnyRow) -> Result<ScheduleRecord, sqlx::Error> {
    Ok(ScheduleRecord {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        source: row.try_get("source")?,
        cron: row.try_get("cron")?,
        timezone: row.try_get("timezone")?,
        branch: row.try_get("branch")?,
        next_run_ms: row.try_get("next_run_ms")?,
        last_run_ms: row.try_get("last_run_ms")?,
        last_build_id: row.try_get("last_build_id")?,
        created_ms: row.try_get("created_ms")?,
    })
}

impl Store {
    /// Creates a schedule for a job; an unknown job is [`StoreError::NotFound`].
    pub async fn create_schedule(&self, s: &NewSchedule<'_>) -> Result<ScheduleRecord, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO schedules (job_id, source, cron, timezone, branch, next_run_ms, created_ms) \
             SELECT j.id, $2, $3, $4, $5, $6, $7 FROM jobs j WHERE j.name = $1 RETURNING id",
        )
        .bind(s.job)
        .bind(s.source)
        .bind(s.cron)
        .bind(s.timezone)
        .bind(s.branch)
        .bind(s.next_run_ms)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        let id = id.ok_or_else(|| StoreError::NotFound(format!("job `{}`", s.job)))?;
        self.schedule(id).await
    }

    /// One schedule.
    pub async fn schedule(&self, id: i64) -> Result<ScheduleRecord, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("schedule {id}")))?;
        Ok(schedule_from_row(&row)?)
    }

    /// The schedules of one job, or of all jobs, by id.
    pub async fn schedules(&self, job: Option<&str>) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE ($1 = '' OR j.name = $1) ORDER BY s.id"))
            .bind(job.unwrap_or_default())
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(schedule_from_row).collect::<Result<_, _>>()?)
    }

    /// Deletes a schedule; an unknown id is [`StoreError::NotFound`].
    pub async fn delete_schedule(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id).execute(self.pool()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("schedule {id}")));
        }
        Ok(())
    }

    /// Schedules whose next run is at or before `now` (ms), oldest slot first.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE s.next_run_ms <= $1 ORDER BY s.next_run_ms, s.id LIMIT 500"))
            .bind(now)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(schedule_from_row).collect::<Result<_, _>>()?)
    }

    /// Claims the slot `expected` of schedule `id`: moves its next run to `next` and records
    /// `now` as its last run, only if the row still holds `expected`. True for the one caller
    /// that moved it (and so must fire the slot); false when another scheduler claimed it first
    /// or the schedule was deleted or replaced.
    pub async fn claim_schedule(&self, id: i64, expected: i64, next: i64, now: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE schedules SET next_run_ms = $1, last_run_ms = $2 WHERE id = $3 AND next_run_ms = $4")
                .bind(next)
                .bind(now)
                .bind(id)
                .bind(expected)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the build a schedule started.
    pub async fn set_schedule_build(&self, id: i64, build_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE schedules SET last_build_id = $1 WHERE id = $2")
            .bind(build_id)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Makes the job's pipeline schedules exactly `crons` (each with its first run, used only
    /// for an expression that is new): rows whose expression is gone are deleted, rows that
    /// stay keep their next and last run, new ones are added. Schedules from the API are not
    /// touched. Returns the pipeline schedules now stored.
    pub async fn replace_pipeline_schedules(
        &self,
        job: &str,
        crons: &[(String, i64)],
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let job_id: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE name = $1")
            .bind(job)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job `{job}`")))?;
        let existing = sqlx::query("SELECT id, cron FROM schedules WHERE job_id = $1 AND source = $2")
            .bind(job_id)
            .bind(SOURCE_PIPELINE)
            .fetch_all(&mut *tx)
            .await?;
        let mut kept: Vec<String> = Vec::new();
        for row in &existing {
            let (id, cron): (i64, String) = (row.try_get("id")?, row.try_get("cron")?);
            if crons.iter().any(|(c, _)| *c == cron) && !kept.contains(&cron) {
                kept.push(cron);
            } else {
                sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
        }
        let now = now_ms();
        for (cron, next) in crons {
            if kept.contains(cron) {
                continue;
            }
            kept.push(cron.clone());
            sqlx::query(
                "INSERT INTO schedules (job_id, source, cron, timezone, branch, next_run_ms, created_ms) \
                 VALUES ($1, $2, $3, 'UTC', NULL, $4, $5)",
            )
            .bind(job_id)
            .bind(SOURCE_PIPELINE)
            .bind(cron)
            .bind(*next)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(self.schedules(Some(job)).await?.into_iter().filter(|s| s.source == SOURCE_PIPELINE).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NewJob;
    use crate::testdb::stores;

    async fn job(store: &Store, name: &str) {
        let new = NewJob {
            name: name.into(),
            repo_url: "file:///nowhere".into(),
            default_branch: "main".into(),
            pipeline_path: None,
            submodules: false,
        };
        store.create_job(&new).await.expect("create job");
    }

    fn api<'a>(job: &'a str, cron: &'a str, next: i64) -> NewSchedule<'a> {
        NewSchedule { job, source: SOURCE_API, cron, timezone: "UTC", branch: None, next_run_ms: next }
    }

    #[tokio::test]
    async fn two_claims_of_one_slot_exactly_one_wins() {
        for (store, _dir) in stores().await {
            job(&store, "nightly").await;
            let s = store.create_schedule(&api("nightly", "*/2 * * * * *", 1_000)).await.expect("create");
            // Two schedulers read the same due row and race for the slot.
            let (a, b) = tokio::join!(
                store.claim_schedule(s.id, 1_000, 3_000, 1_500),
                store.claim_schedule(s.id, 1_000, 3_000, 1_600),
            );
            let wins = [a.expect("claim a"), b.expect("claim b")].iter().filter(|w| **w).count();
            assert_eq!(wins, 1, "{:?}", store.backend());
            // A stale claim after the winner moved the row loses too.
            assert!(!store.claim_schedule(s.id, 1_000, 3_000, 1_700).await.expect("stale claim"));
            let now = store.schedule(s.id).await.expect("read");
            assert_eq!(now.next_run_ms, 3_000);
            assert!(matches!(now.last_run_ms, Some(1_500 | 1_600)));
            assert!(store.due_schedules(2_999).await.expect("due").is_empty());
            assert_eq!(store.due_schedules(3_000).await.expect("due").len(), 1);
        }
    }

    #[tokio::test]
    async fn crud_and_cascade() {
        for (store, _dir) in stores().await {
            job(&store, "a").await;
            job(&store, "b").await;
            let branch =
                NewSchedule { branch: Some("release"), timezone: "Europe/Berlin", ..api("a", "0 3 * * *", 10) };
            let s = store.create_schedule(&branch).await.expect("create");
            assert_eq!(
                (s.job.as_str(), s.branch.as_deref(), s.timezone.as_str()),
                ("a", Some("release"), "Europe/Berlin")
            );
            store.create_schedule(&api("b", "0 4 * * *", 10)).await.expect("create b");
            assert!(matches!(store.create_schedule(&api("nope", "0 4 * * *", 10)).await, Err(StoreError::NotFound(_))));
            assert_eq!(store.schedules(None).await.expect("all").len(), 2);
            assert_eq!(store.schedules(Some("a")).await.expect("a").len(), 1);
            store.delete_schedule(s.id).await.expect("delete");
            assert!(matches!(store.delete_schedule(s.id).await, Err(StoreError::NotFound(_))));
            store.delete_job("b").await.expect("delete job");
            assert!(store.schedules(None).await.expect("none").is_empty());
        }
    }

    #[tokio::test]
    async fn pipeline_schedules_are_replaced_but_keep_their_slots() {
        for (store, _dir) in stores().await {
            job(&store, "p").await;
            store.create_schedule(&api("p", "0 1 * * *", 5)).await.expect("api schedule");
            let first = store
                .replace_pipeline_schedules("p", &[("0 3 * * *".into(), 100), ("0 4 * * *".into(), 200)])
                .await
                .expect("sync");
            assert_eq!(first.len(), 2);
            let kept = first.iter().find(|s| s.cron == "0 3 * * *").map(|s| s.id);
            store.claim_schedule(kept.unwrap_or_default(), 100, 150, 120).await.expect("claim");
            let second = store
                .replace_pipeline_schedules("p", &[("0 3 * * *".into(), 999), ("30 5 * * 1".into(), 300)])
                .await
                .expect("sync again");
            let crons: Vec<(&str, i64)> = second.iter().map(|s| (s.cron.as_str(), s.next_run_ms)).collect();
            assert_eq!(crons, [("0 3 * * *", 150), ("30 5 * * 1", 300)]);
            assert_eq!(second[0].id, kept.unwrap_or_default());
            assert!(store.replace_pipeline_schedules("p", &[]).await.expect("clear").is_empty());
            let left = store.schedules(Some("p")).await.expect("left");
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].source, SOURCE_API);
        }
    }
}
