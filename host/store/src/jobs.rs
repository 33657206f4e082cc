//! The `jobs` table: what to build (name, repository, default branch, pipeline path, parameters).

use super::{Store, StoreError, now_ms};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Repository URL.
    pub repo_url: String,
    /// Branch built when a trigger names none.
    pub default_branch: String,
    /// Pipeline file inside the repository; `None` means the documented lookup order.
    pub pipeline_path: Option<String>,
    /// Check out git submodules too.
    pub submodules: bool,
    /// Only the newest N finished builds are kept (None: all).
    pub keep_builds: Option<i64>,
    /// Builds of pull requests from forks get the job's secrets too (an admin's choice; off by
    /// default: a fork's pipeline file could send them anywhere).
    pub fork_secrets: bool,
    /// Creation time (ms since the epoch).
    pub created_ms: i64,
}

/// What creating a job takes.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Unique name.
    pub name: String,
    /// Repository URL.
    pub repo_url: String,
    /// Default branch.
    pub default_branch: String,
    /// Pipeline file path.
    pub pipeline_path: Option<String>,
    /// Check out git submodules too.
    pub submodules: bool,
}

/// What updating a job changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct JobUpdate<'a> {
    /// New repository URL.
    pub repo_url: Option<&'a str>,
    /// New default branch.
    pub default_branch: Option<&'a str>,
    /// New pipeline path (`Some(None)` clears it).
    pub pipeline_path: Option<Option<&'a str>>,
    /// Check out submodules or not.
    pub submodules: Option<bool>,
    /// Give pull requests from forks the job's secrets or not.
    pub fork_secrets: Option<bool>,
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, sqlx::Error> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        repo_url: row.try_get("repo_url")?,
        default_branch: row.try_get("default_branch")?,
        pipeline_path: row.try_get("pipeline_path")?,
        submodules: row.try_get::<i64, _>("submodules")? != 0,
        keep_builds: row.try_get("keep_builds")?,
        fork_secrets: row.try_get::<i64, _>("fork_secrets")? != 0,
        created_ms: row.try_get("created_ms")?,
    })
}

const COLUMNS: &str =
    "id, name, repo_url, default_branch, pipeline_path, submodules, keep_builds, fork_secrets, created_ms";

/// True for a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Creates a job; a taken name is [`StoreError::Conflict`].
    pub async fn create_job(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        let sql = format!(
            "INSERT INTO jobs (name, repo_url, default_branch, pipeline_path, created_ms, submodules) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&job.name)
            .bind(&job.repo_url)
            .bind(&job.default_branch)
            .bind(&job.pipeline_path)
            .bind(now_ms())
            .bind(i64::from(job.submodules))
            .fetch_one(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) { StoreError::Conflict(format!("job `{}`", job.name)) } else { e.into() }
            })?;
        Ok(job_from_row(&row)?)
    }

    /// The job called `name`.
    pub async fn job(&self, name: &str) -> Result<JobRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE name = $1");
        let row = sqlx::query(&sql).bind(name).fetch_optional(self.pool()).await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("job `{name}`")))?;
        Ok(job_from_row(&row)?)
    }

    /// All jobs by name.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(job_from_row).collect::<Result<_, _>>()?)
    }

    /// Changes a job (`None` keeps a field).
    pub async fn update_job(&self, name: &str, change: &JobUpdate<'_>) -> Result<JobRecord, StoreError> {
        let current = self.job(name).await?;
        let path = match change.pipeline_path {
            Some(p) => p.map(str::to_string),
            None => current.pipeline_path.clone(),
        };
        sqlx::query(
            "UPDATE jobs SET repo_url = $1, default_branch = $2, pipeline_path = $3, submodules = $4, fork_secrets = $5 WHERE id = $6",
        )
        .bind(change.repo_url.unwrap_or(&current.repo_url))
        .bind(change.default_branch.unwrap_or(&current.default_branch))
        .bind(path)
        .bind(i64::from(change.submodules.unwrap_or(current.submodules)))
        .bind(i64::from(change.fork_secrets.unwrap_or(current.fork_secrets)))
        .bind(current.id)
        .execute(self.pool())
        .await?;
        self.job(name).await
    }

    /// Deletes a job and everything built for it.
    pub async fn delete_job(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("job `{name}`")));
        }
        // Its secrets and webhook secrets go with it: a new job of the same name starts clean.
        sqlx::query("DELETE FROM secrets WHERE scope = $1 OR scope = $2")
            .bind(super::secrets::SecretScope::Job(name.to_string()).column())
            .bind(super::secrets::SecretScope::Webhook(name.to_string()).column())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
