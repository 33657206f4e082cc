//! The `builds` and `build_jobs` tables: numbered builds per job and their jobs, with status
//! changes checked against the state machine of [`Status`].

use super::{Store, StoreError, now_ms, parse_status};
use chengis_model::Status;
use sqlx::Row;

/// What starting a build records.
#[derive(Debug, Clone, Default)]
pub struct NewBuild {
    /// Trigger kind: `manual`, `push`, `schedule`, `retry`, ...
    pub trigger: String,
    /// Who or what triggered it.
    pub who: String,
    /// Commit to build.
    pub commit_sha: String,
    /// Branch the commit is on.
    pub branch: String,
    /// For retries: the first build of the chain.
    pub root_build_id: Option<i64>,
    /// Attempt number (1 for a new build).
    pub attempt: i64,
    /// Parameters of the trigger (JSON object).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Queue priority of its jobs.
    pub priority: super::queue::Priority,
}

/// The fencing condition of writes by a lease holder: the queue row and its token are bound as
/// `$n` and `$n+1`.
pub(super) fn held_at(n: usize) -> String {
    format!("EXISTS (SELECT 1 FROM queue WHERE id = ${n} AND fencing_token = ${})", n + 1)
}

/// The tables whose rows carry a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusTable {
    Builds,
    BuildJobs,
}

impl StatusTable {
    fn name(self) -> &'static str {
        match self {
            StatusTable::Builds => "builds",
            StatusTable::BuildJobs => "build_jobs",
        }
    }

    fn what(self) -> &'static str {
        match self {
            StatusTable::Builds => "build",
            StatusTable::BuildJobs => "build job",
        }
    }
}

/// A build as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// Database id.
    pub id: i64,
    /// The job's id.
    pub job_id: i64,
    /// Number within the job, from 1.
    pub number: i64,
    /// Current status.
    pub status: Status,
    /// Attempt number.
    pub attempt: i64,
}

impl Store {
    /// Creates a queued build with the job's next number (numbers never repeat within a job).
    pub async fn create_build(&self, job_id: i64, b: &NewBuild) -> Result<BuildRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let number: i64 =
            sqlx::query_scalar("UPDATE jobs SET next_number = next_number + 1 WHERE id = $1 RETURNING next_number - 1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO builds (job_id, number, status, trigger, who, commit_sha, branch, attempt, root_build_id, queued_ms, params, priority) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(job_id)
        .bind(number)
        .bind(Status::Queued.as_str())
        .bind(&b.trigger)
        .bind(&b.who)
        .bind(&b.commit_sha)
        .bind(&b.branch)
        .bind(b.attempt.max(1))
        .bind(b.root_build_id)
        .bind(now_ms())
        .bind(serde_json::Value::Object(b.params.clone()).to_string())
        .bind(b.priority.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(BuildRecord { id, job_id, number, status: Status::Queued, attempt: b.attempt.max(1) })
    }

    /// Adds a job to a build, queued.
    pub async fn create_build_job(
        &self,
        build_id: i64,
        job_key: &str,
        spec: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO build_jobs (build_id, job_key, status, spec) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(build_id)
        .bind(job_key)
        .bind(Status::Queued.as_str())
        .bind(spec.to_string())
        .fetch_one(self.pool())
        .await?)
    }

    /// The status of a build job.
    pub async fn build_job_status(&self, id: i64) -> Result<Status, StoreError> {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM build_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        parse_status(&s.ok_or_else(|| StoreError::NotFound(format!("build job {id}")))?)
    }

    /// Moves a build job to `to`, refusing transitions the state machine forbids.
    pub async fn transition_build_job(&self, id: i64, to: Status, reason: Option<&str>) -> Result<(), StoreError> {
        self.transition(StatusTable::BuildJobs, id, to, reason).await
    }

    /// The status of a row of `table`.
    async fn status_in(&self, table: StatusTable, id: i64) -> Result<Status, StoreError> {
        let sql = format!("SELECT status FROM {} WHERE id = $1", table.name());
        let s: Option<String> = sqlx::query_scalar(&sql).bind(id).fetch_optional(self.pool()).await?;
        parse_status(&s.ok_or_else(|| StoreError::NotFound(format!("{} {id}", table.what())))?)
    }

    /// The one status change of builds and build jobs: checked against the state machine and
    /// conditional on the status read, so two writers cannot both move a row from one state.
    async fn transition(
        &self,
        table: StatusTable,
        id: i64,
        to: Status,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let what = || format!("{} {id}", table.what());
        let from = self.status_in(table, id).await?;
        if table == StatusTable::Builds && from == to && to == Status::Running {
            return Ok(());
        }
        if !from.can_become(to) {
            return Err(StoreError::IllegalTransition { what: what(), from, to });
        }
        let sql = format!(
            "UPDATE {} SET status = $1, reason = COALESCE($2, reason), \
             started_ms = CASE WHEN $1 = 'running' THEN $3 ELSE started_ms END, \
             finished_ms = CASE WHEN $1 IN ('running', 'queued') THEN finished_ms ELSE $3 END \
             WHERE id = $4 AND status = $5",
            table.name()
        );
        let done = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .bind(from.as_str())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            let current = self.status_in(table, id).await?;
            return Err(StoreError::IllegalTransition { what: what(), from: current, to });
        }
        Ok(())
    }

    /// The id of build number `number` of job `job` (`hello#3`). Not found names the job when
    /// it does not exist, else the build.
    pub async fn build_id_by_number(&self, job: &str, number: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT j.id AS job_id, b.id AS build_id FROM jobs j \
             LEFT JOIN builds b ON b.job_id = j.id AND b.number = $2 WHERE j.name = $1",
        )
        .bind(job)
        .bind(number)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job `{job}`")))?;
        let id: Option<i64> = row.try_get("build_id")?;
        id.ok_or_else(|| StoreError::NotFound(format!("build number {number} of job `{job}`")))
    }

    /// A build by id.
    pub async fn build(&self, id: i64) -> Result<BuildRecord, StoreError> {
        let row = sqlx::query("SELECT id, job_id, number, status, attempt FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("build {id}")))?;
        let status: String = row.try_get("status")?;
        Ok(BuildRecord {
            id: row.try_get("id")?,
            job_id: row.try_get("job_id")?,
            number: row.try_get("number")?,
            status: parse_status(&status)?,
            attempt: row.try_get("attempt")?,
        })
    }
}

/// What the scheduler reads first about a build (see [`Store::schedule_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleState {
    /// The build's status.
    pub status: Status,
    /// A cancel was asked of it.
    pub cancel_requested: bool,
    /// Jobs queued but not in the queue yet.
    pub unenqueued: i64,
    /// Jobs not finished (queued or running).
    pub unfinished: i64,
}

/// A build job as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct BuildJobRecord {
    /// Database id.
    pub id: i64,
    /// The build.
    pub build_id: i64,
    /// Planned job id (`test (os=linux)`).
    pub job_key: String,
    /// Current status.
    pub status: Status,
    /// Why it ended as it did.
    pub reason: Option<String>,
    /// Planned ids it waits for.
    pub needs: Vec<String>,
    /// Outputs written by its steps.
    #[schema(value_type = Object)]
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// The sandbox it ran in (`local`, `docker:IMAGE`).
    pub sandbox: Option<String>,
    /// Start time.
    pub started_ms: Option<i64>,
    /// End time.
    pub finished_ms: Option<i64>,
}

/// A step of a build job as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StepRecord {
    /// Position in the job.
    pub idx: i64,
    /// Display name.
    pub name: String,
    /// Result.
    pub status: Status,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// Start time.
    pub started_ms: Option<i64>,
    /// End time.
    pub finished_ms: Option<i64>,
    /// Number of its first line in the job's log (where the dashboard folds the log).
    pub first_line: Option<i64>,
}

/// A row of a build listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct BuildSummary {
    /// Database id.
    pub id: i64,
    /// Job name.
    pub job: String,
    /// Number within the job.
    pub number: i64,
    /// Status.
    pub status: Status,
    /// Trigger kind.
    pub trigger: String,
    /// Who triggered it.
    pub who: String,
    /// Commit.
    pub commit_sha: String,
    /// Branch.
    pub branch: String,
    /// Attempt number.
    pub attempt: i64,
    /// The first build of a retry chain.
    pub root_build_id: Option<i64>,
    /// Why it ended as it did (planning errors, lost agents).
    pub reason: Option<String>,
    /// Times.
    pub queued_ms: i64,
    /// Start time.
    pub started_ms: Option<i64>,
    /// End time.
    pub finished_ms: Option<i64>,
    /// The commit's message (its first line is the subject), once planned.
    pub commit_message: String,
    /// The commit's author as `Name <email>`, once planned.
    pub commit_author: String,
}

/// Filters of a build listing; `before` is the cursor (an id: builds older than it).
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    /// Only this job.
    pub job: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this branch.
    pub branch: Option<String>,
    /// Only builds with a smaller id.
    pub before: Option<i64>,
    /// Only builds with a larger id (the page just newer than a cursor; still newest first).
    pub after: Option<i64>,
    /// Page size.
    pub limit: i64,
}

const SUMMARY: &str = "SELECT b.id, j.name AS job, b.number, b.status, b.trigger, b.who, b.commit_sha, b.branch, b.attempt, \
    b.root_build_id, b.reason, b.queued_ms, b.started_ms, b.finished_ms, b.commit_message, b.commit_author \
    FROM builds b JOIN jobs j ON j.id = b.job_id";

fn summary_from_row(row: &sqlx::any::AnyRow) -> Result<BuildSummary, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(BuildSummary {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        number: row.try_get("number")?,
        status: parse_status(&status)?,
        trigger: row.try_get("trigger")?,
        who: row.try_get("who")?,
        commit_sha: row.try_get("commit_sha")?,
        branch: row.try_get("branch")?,
        attempt: row.try_get("attempt")?,
        root_build_id: row.try_get("root_build_id")?,
        reason: row.try_get("reason")?,
        queued_ms: row.try_get("queued_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        commit_message: row.try_get("commit_message")?,
        commit_author: row.try_get("commit_author")?,
    })
}

const STEP: &str =
    "SELECT build_job_id, idx, name, status, exit_code, reason, started_ms, finished_ms, first_line FROM build_steps";

fn step_from_row(row: &sqlx::any::AnyRow) -> Result<StepRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(StepRecord {
        idx: row.try_get("idx")?,
        name: row.try_get("name")?,
        status: parse_status(&status)?,
        exit_code: row.try_get("exit_code")?,
        reason: row.try_get("reason")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        first_line: row.try_get("first_line")?,
    })
}

fn build_job_from_row(row: &sqlx::any::AnyRow) -> Result<BuildJobRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let needs: String = row.try_get("needs")?;
    let outputs: String = row.try_get("outputs")?;
    Ok(BuildJobRecord {
        id: row.try_get("id")?,
        build_id: row.try_get("build_id")?,
        job_key: row.try_get("job_key")?,
        status: parse_status(&status)?,
        reason: row.try_get("reason")?,
        needs: serde_json::from_str(&needs)
            .map_err(|e| StoreError::Corrupt { what: "needs", detail: e.to_string() })?,
        outputs: serde_json::from_str(&outputs)
            .map_err(|e| StoreError::Corrupt { what: "outputs", detail: e.to_string() })?,
        sandbox: row.try_get("sandbox")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
    })
}

/// The columns [`build_job_from_row`] reads.
macro_rules! build_job_columns {
    () => {
        "id, build_id, job_key, status, reason, needs, outputs, sandbox, started_ms, finished_ms"
    };
}

/// A build job's planned job (the `spec` column), parsed.
fn parse_spec(spec: &str) -> Result<chengis_pipeline::PlannedJob, StoreError> {
    serde_json::from_str(spec).map_err(|e| StoreError::Corrupt { what: "job spec", detail: e.to_string() })
}

const BUILD_JOB: &str = concat!("SELECT ", build_job_columns!(), " FROM build_jobs");

impl Store {
    /// One build as a listing row.
    pub async fn build_summary(&self, id: i64) -> Result<BuildSummary, StoreError> {
        let sql = format!("{SUMMARY} WHERE b.id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.pool()).await?;
        summary_from_row(&row.ok_or_else(|| StoreError::NotFound(format!("build {id}")))?)
    }

    /// The status of the newest finished build of the same Chengis job before `build_id`, or
    /// with `job_key`, of that job in it: what notifiers compare with to say "fixed".
    pub async fn previous_status(&self, build_id: i64, job_key: Option<&str>) -> Result<Option<Status>, StoreError> {
        const FINISHED: &str = "('success', 'failure', 'cancelled', 'skipped', 'error')";
        let text: Option<String> = match job_key {
            None => {
                let sql = format!(
                    "SELECT p.status FROM builds b JOIN builds p ON p.job_id = b.job_id AND p.id < b.id \
                     WHERE b.id = $1 AND p.status IN {FINISHED} ORDER BY p.id DESC LIMIT 1"
                );
                sqlx::query_scalar(&sql).bind(build_id).fetch_optional(self.pool()).await?
            }
            Some(key) => {
                let sql = format!(
                    "SELECT pj.status FROM builds b JOIN builds p ON p.job_id = b.job_id AND p.id < b.id \
                     JOIN build_jobs pj ON pj.build_id = p.id AND pj.job_key = $2 \
                     WHERE b.id = $1 AND pj.status IN {FINISHED} ORDER BY p.id DESC LIMIT 1"
                );
                sqlx::query_scalar(&sql).bind(build_id).bind(key).fetch_optional(self.pool()).await?
            }
        };
        text.map(|t| super::parse_status(&t)).transpose()
    }

    /// Builds, newest first, filtered, one page: the newest ones, those just older than
    /// `before`, or those just newer than `after`.
    pub async fn list_builds(&self, f: &BuildFilter) -> Result<Vec<BuildSummary>, StoreError> {
        // Walking up from `after` reads the oldest of the newer builds first, then flips them.
        let order = if f.after.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "{SUMMARY} WHERE ($1 = '' OR j.name = $1) AND ($2 = '' OR b.status = $2) AND ($3 = '' OR b.branch = $3) \
             AND ($4 = 0 OR b.id < $4) AND b.id > $5 ORDER BY b.id {order} LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(f.job.clone().unwrap_or_default())
            .bind(f.status.map(|s| s.as_str().to_string()).unwrap_or_default())
            .bind(f.branch.clone().unwrap_or_default())
            .bind(f.before.unwrap_or(0))
            .bind(f.after.unwrap_or(0))
            .bind(f.limit.clamp(1, 200))
            .fetch_all(self.pool())
            .await?;
        let mut out: Vec<BuildSummary> = rows.iter().map(summary_from_row).collect::<Result<_, _>>()?;
        if f.after.is_some() {
            out.reverse();
        }
        Ok(out)
    }

    /// Every attempt of a retry chain, oldest first (`root` is the first build's id).
    pub async fn attempts(&self, root: i64) -> Result<Vec<BuildSummary>, StoreError> {
        let rows = sqlx::query(&format!("{SUMMARY} WHERE b.id = $1 OR b.root_build_id = $1 ORDER BY b.id"))
            .bind(root)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// The queue priority of a build's jobs.
    pub async fn build_priority(&self, build_id: i64) -> Result<super::queue::Priority, StoreError> {
        let text: String = sqlx::query_scalar("SELECT priority FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(self.pool())
            .await?;
        Ok(super::queue::Priority::parse(&text))
    }

    /// The trigger parameters of a build.
    pub async fn build_params(&self, build_id: i64) -> Result<indexmap::IndexMap<String, String>, StoreError> {
        let text: String =
            sqlx::query_scalar("SELECT params FROM builds WHERE id = $1").bind(build_id).fetch_one(self.pool()).await?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { what: "build params", detail: e.to_string() })
    }

    /// Stores the plan of a build (JSON).
    pub async fn set_build_plan(&self, build_id: i64, plan: &str) -> Result<(), StoreError> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _)| *id != build_id);
        sqlx::query("UPDATE builds SET plan = $1 WHERE id = $2").bind(plan).bind(build_id).execute(self.pool()).await?;
        Ok(())
    }

    /// The stored plan of a build.
    pub async fn build_plan(&self, build_id: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT plan FROM builds WHERE id = $1").bind(build_id).fetch_one(self.pool()).await?)
    }

    /// Moves a build to `to` (state machine checked; conditional on the status read).
    pub async fn transition_build(&self, id: i64, to: Status, reason: Option<&str>) -> Result<(), StoreError> {
        self.transition(StatusTable::Builds, id, to, reason).await
    }

    /// Adds a planned job to a build with the ids it needs.
    pub async fn add_build_job(
        &self,
        build_id: i64,
        job_key: &str,
        spec: &str,
        needs: &[String],
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO build_jobs (build_id, job_key, status, spec, needs) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(build_id)
        .bind(job_key)
        .bind(Status::Queued.as_str())
        .bind(spec)
        .bind(serde_json::to_string(needs).unwrap_or_else(|_| "[]".into()))
        .fetch_one(self.pool())
        .await?)
    }

    /// Replaces the planned job of build job `id` (the post job's steps are chosen when the
    /// build's other jobs have ended); only while it waits.
    pub async fn set_build_job_spec(&self, id: i64, spec: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE build_jobs SET spec = $1 WHERE id = $2 AND status = 'queued'")
            .bind(spec)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records the commit a build resolved to, with its message and author.
    pub async fn set_build_commit(&self, id: i64, sha: &str, message: &str, author: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE builds SET commit_sha = $1, commit_message = $2, commit_author = $3 WHERE id = $4")
            .bind(sha)
            .bind(message)
            .bind(author)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Asks an unfinished build to stop: the scheduler ends its waiting jobs, stops its running
    /// ones and ends the build `cancelled` once every job has ended; false when it had already
    /// finished.
    pub async fn request_build_cancel(&self, id: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE builds SET cancel_requested = 1 WHERE id = $1 AND status IN ('queued', 'running')")
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The jobs of a build, in plan order.
    pub async fn build_jobs(&self, build_id: i64) -> Result<Vec<BuildJobRecord>, StoreError> {
        let sql = format!("{BUILD_JOB} WHERE build_id = $1 ORDER BY id");
        let rows = sqlx::query(&sql).bind(build_id).fetch_all(self.pool()).await?;
        rows.iter().map(build_job_from_row).collect()
    }

    /// One build job.
    pub async fn build_job(&self, id: i64) -> Result<BuildJobRecord, StoreError> {
        let sql = format!("{BUILD_JOB} WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.pool()).await?;
        build_job_from_row(&row.ok_or_else(|| StoreError::NotFound(format!("build job {id}")))?)
    }

    /// The planned job (JSON) of a build job.
    pub async fn build_job_spec(&self, id: i64) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("SELECT spec FROM build_jobs WHERE id = $1").bind(id).fetch_one(self.pool()).await?)
    }

    /// Build job `id` and its planned job, parsed, in one query.
    pub async fn build_job_planned(
        &self,
        id: i64,
    ) -> Result<(BuildJobRecord, chengis_pipeline::PlannedJob), StoreError> {
        let sql = concat!("SELECT ", build_job_columns!(), ", spec FROM build_jobs WHERE id = $1");
        let row = sqlx::query(sql).bind(id).fetch_optional(self.pool()).await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("build job {id}")))?;
        let spec: String = row.try_get("spec")?;
        Ok((build_job_from_row(&row)?, parse_spec(&spec)?))
    }

    /// The planned job of build job `id`, parsed.
    pub async fn planned_job(&self, id: i64) -> Result<chengis_pipeline::PlannedJob, StoreError> {
        parse_spec(&self.build_job_spec(id).await?)
    }

    /// The plan of build `build_id`, parsed (an unplanned build is a corrupt plan here). The
    /// plans of the last 16 builds read are kept parsed.
    pub async fn plan(&self, build_id: i64) -> Result<std::sync::Arc<chengis_pipeline::Plan>, StoreError> {
        const KEPT: usize = 16;
        let cached = |plans: &super::RecentPlans| plans.iter().find(|(id, _)| *id == build_id).map(|(_, p)| p.clone());
        if let Some(plan) = cached(&self.plans.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(plan);
        }
        let plan: chengis_pipeline::Plan = serde_json::from_str(&self.build_plan(build_id).await?.unwrap_or_default())
            .map_err(|e| StoreError::Corrupt { what: "plan", detail: e.to_string() })?;
        let plan = std::sync::Arc::new(plan);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if cached(&plans).is_none() {
            if plans.len() >= KEPT {
                plans.pop_front();
            }
            plans.push_back((build_id, plan.clone()));
        }
        Ok(plan)
    }

    /// Records outputs and the sandbox of the build job `lease` holds (refused when stale).
    pub async fn set_build_job_result(
        &self,
        lease: &super::queue::Lease,
        outputs: &serde_json::Value,
        sandbox: &str,
    ) -> Result<(), StoreError> {
        let done =
            sqlx::query(&format!("UPDATE build_jobs SET outputs = $1, sandbox = $2 WHERE id = $3 AND {}", held_at(4)))
                .bind(outputs.to_string())
                .bind(sandbox)
                .bind(lease.build_job_id)
                .bind(lease.entry)
                .bind(lease.token)
                .execute(self.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StaleLease { entry: lease.entry, token: lease.token });
        }
        Ok(())
    }

    /// Marks the build job `lease` holds as running (refused when stale).
    pub async fn start_leased_job(&self, lease: &super::queue::Lease) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE build_jobs SET status = 'running', started_ms = $1 WHERE id = $2 AND status = 'queued' AND {}",
            held_at(3)
        ))
        .bind(now_ms())
        .bind(lease.build_job_id)
        .bind(lease.entry)
        .bind(lease.token)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            // Already running (a retried lease of the same job) is fine; a stale lease is not.
            self.check_lease(lease).await?;
        }
        Ok(())
    }

    /// Inserts or updates a step of the build job `lease` holds (refused when stale). One
    /// statement carries the fencing check, so the write is atomic on both backends (and never
    /// a read that must upgrade to a write under SQLite's WAL). A step's end does not know
    /// where its lines began, so an absent `first_line` keeps what its start recorded.
    pub async fn record_step(&self, lease: &super::queue::Lease, step: &StepRecord) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO build_steps (build_job_id, idx, name, status, exit_code, reason, started_ms, finished_ms, first_line) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE {} \
             ON CONFLICT (build_job_id, idx) DO UPDATE SET name = excluded.name, status = excluded.status, \
             exit_code = excluded.exit_code, reason = excluded.reason, started_ms = excluded.started_ms, \
             finished_ms = excluded.finished_ms, first_line = COALESCE(excluded.first_line, build_steps.first_line)",
            held_at(10)
        ))
        .bind(lease.build_job_id)
        .bind(step.idx)
        .bind(&step.name)
        .bind(step.status.as_str())
        .bind(step.exit_code)
        .bind(&step.reason)
        .bind(step.started_ms)
        .bind(step.finished_ms)
        .bind(step.first_line)
        .bind(lease.entry)
        .bind(lease.token)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StaleLease { entry: lease.entry, token: lease.token });
        }
        Ok(())
    }

    /// The steps of a build job.
    pub async fn steps(&self, build_job_id: i64) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query(&format!("{STEP} WHERE build_job_id = $1 ORDER BY idx"))
            .bind(build_job_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The steps of every job of a build in one query, by build job id.
    pub async fn steps_of_build(
        &self,
        build_id: i64,
    ) -> Result<std::collections::HashMap<i64, Vec<StepRecord>>, StoreError> {
        let rows = sqlx::query(&format!(
            "{STEP} WHERE build_job_id IN (SELECT id FROM build_jobs WHERE build_id = $1) ORDER BY build_job_id, idx"
        ))
        .bind(build_id)
        .fetch_all(self.pool())
        .await?;
        let mut out: std::collections::HashMap<i64, Vec<StepRecord>> = Default::default();
        for row in &rows {
            out.entry(row.try_get("build_job_id")?).or_default().push(step_from_row(row)?);
        }
        Ok(out)
    }

    /// Builds that are not finished (for recovery after a restart).
    pub async fn unfinished_builds(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM builds WHERE status IN ('queued', 'running') ORDER BY id")
            .fetch_all(self.pool())
            .await?)
    }

    /// In one query: the build's status and cancel request, how many of its jobs are queued
    /// but not in the queue yet, and how many have not finished, so that the scheduler reads no
    /// more when a job of a wide build ends and nothing else can start.
    pub async fn schedule_state(&self, build_id: i64) -> Result<ScheduleState, StoreError> {
        let row = sqlx::query(
            "SELECT status, cancel_requested, \
             (SELECT COUNT(*) FROM build_jobs j WHERE j.build_id = builds.id AND j.status = 'queued' \
               AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.build_job_id = j.id)) AS unenqueued, \
             (SELECT COUNT(*) FROM build_jobs j WHERE j.build_id = builds.id AND j.status IN ('queued', 'running')) AS unfinished \
             FROM builds WHERE id = $1",
        )
        .bind(build_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("build {build_id}")))?;
        let status: String = row.try_get("status")?;
        let cancel: i64 = row.try_get("cancel_requested")?;
        Ok(ScheduleState {
            status: parse_status(&status)?,
            cancel_requested: cancel != 0,
            unenqueued: row.try_get("unenqueued")?,
            unfinished: row.try_get("unfinished")?,
        })
    }
}
