//! The durable queue: one row per runnable build job, leased by agents with an expiry and a
//! fencing token.
//!
//! Order: each row gets `rank_ms = enqueued_ms + delay(priority)` with delays high 0,
//! normal 60 s, low 300 s, and the lowest rank leases first. A low-priority job enqueued at `t`
//! therefore outranks every job enqueued after `t + 300 s`, whatever its priority: aging without
//! a background task, and an index (`rank_ms, id`) serves the order.
//!
//! Leasing claims a row with one conditional `UPDATE ... RETURNING` (the row must be free or its
//! lease expired), which is atomic on both backends; on PostgreSQL the candidates are read with
//! `FOR UPDATE SKIP LOCKED` inside the same transaction so concurrent leasers never wait on each
//! other. Every claim increments the row's fencing token; renewals, completions and any other
//! write carry the token and are refused once it is stale. An expired lease makes the row
//! leasable again (at-least-once); after `max_attempts` claims the job is marked `error`.
//!
//! Every claim also draws a random secret, returned only in the claim's [`Lease`]; the row keeps
//! its SHA-256. The fencing token says which claim is current, the secret who made it: the agent
//! API accepts a call about a lease only from the agent that holds it with its secret
//! ([`Store::held_by`]). The embedded agent's leases carry a secret too, unchecked in-process.

use super::agents::Needs;
use super::{Backend, Store, StoreError, now_ms};
use chengis_model::Status;
use sqlx::Row;
use subtle::ConstantTimeEq;

pub use chengis_model::protocol::{Lease, LeaseSecret};
use std::time::Duration;

/// Queue priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Ahead of everything enqueued in the same 60 s.
    High,
    /// The default.
    #[default]
    Normal,
    /// Behind everything enqueued in the next 300 s.
    Low,
}

impl Priority {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses the stored text (unknown text is `normal`).
    pub fn parse(s: &str) -> Priority {
        match s {
            "high" => Priority::High,
            "low" => Priority::Low,
            _ => Priority::Normal,
        }
    }

    fn delay_ms(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 60_000,
            Priority::Low => 300_000,
        }
    }

    fn code(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// Says whether a job (by its labels and needs) is left for a better-placed agent.
pub type Defer<'a> = dyn Fn(&[String], Needs) -> bool + Sync + 'a;

/// What an agent asks for.
#[derive(Clone)]
pub struct LeaseRequest<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The agent's labels; a job is eligible when its labels are a subset.
    pub labels: &'a [String],
    /// Most jobs to lease now.
    pub capacity: usize,
    /// Lease duration.
    pub ttl: Duration,
    /// Claims after which an expired job is marked `error` instead of run again.
    pub max_attempts: i64,
    /// The agent's free resources; jobs needing more are left for others (`None`: no limit).
    pub free: Option<Needs>,
    /// Jobs (by labels and needs) to leave for a better-placed agent.
    pub defer: Option<&'a Defer<'a>>,
    /// When the agent (re)registered: a job whose lease this agent took before then and let
    /// expire goes to another agent (the agent is alive and polling, yet lost it); after a
    /// restart or a re-registration it may take the job again. `None`: no such rule.
    pub registered_ms: Option<i64>,
}

/// The answer to a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Keep going; the lease now runs until this time.
    Continue(i64),
    /// Cancellation was requested: stop the job (the lease is still valid until it finishes).
    Cancel(i64),
}

/// What [`Store::lease_batch`] did: the leases it granted, and the build jobs it ended `error`
/// because their agents kept getting lost (`max_attempts`); the caller moves their builds on.
#[derive(Debug, Default)]
pub struct LeaseBatch {
    /// The granted leases.
    pub leases: Vec<Lease>,
    /// Build jobs ended `error` here, with the reason.
    pub exhausted: Vec<(i64, String)>,
}

/// Why [`Store::held_by`] refused a call about a lease that is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHolder {
    /// Another agent holds the lease.
    Owner,
    /// The call presented no secret, or not the lease's.
    Secret,
}

/// A build job's row in the queue, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    /// The build job.
    pub build_job_id: i64,
    /// An agent holds (or held) a lease on it.
    pub leased: bool,
    /// A stop was asked of whoever runs it.
    pub cancel_requested: bool,
}

/// What [`Store::stop_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// An agent runs it: it was asked to stop (seen at its next renewal).
    Asked,
    /// Nobody had leased it: it left the queue and ended `cancelled`.
    Removed,
    /// It is not in the queue.
    NotQueued,
}

struct Candidate {
    id: i64,
    build_job_id: i64,
    labels: Vec<String>,
    attempts: i64,
    owner: Option<String>,
    leased_ms: Option<i64>,
    needs: Needs,
}

impl Store {
    /// Puts a build job in the queue (see [`Store::enqueue_with`]).
    pub async fn enqueue(
        &self,
        build_job_id: i64,
        priority: Priority,
        labels: &[String],
    ) -> Result<Option<i64>, StoreError> {
        self.enqueue_with(build_job_id, priority, labels, Needs::default()).await
    }

    /// Puts a build job that needs `needs` of its agent in the queue; its queue entry id, or
    /// `None` when it is in the queue already or no longer `queued` (two schedulers of one
    /// build may both see it waiting: only one entry is made, and a job that ran meanwhile is
    /// not queued again).
    pub async fn enqueue_with(
        &self,
        build_job_id: i64,
        priority: Priority,
        labels: &[String],
        needs: Needs,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "[]".into());
        Ok(sqlx::query_scalar(
            "INSERT INTO queue (build_job_id, priority, rank_ms, labels, enqueued_ms, cpu_millis, memory_mb) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM build_jobs WHERE id = $1 AND status = 'queued') \
             ON CONFLICT (build_job_id) DO NOTHING RETURNING id",
        )
        .bind(build_job_id)
        .bind(priority.code())
        .bind(now + priority.delay_ms())
        .bind(labels)
        .bind(now)
        .bind(needs.cpu_millis)
        .bind(needs.memory_mb)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Leases up to `capacity` eligible jobs, best rank first (see [`Store::lease_batch`]; the
    /// jobs it ends for lost agents are left for the caller to schedule around).
    pub async fn lease(&self, req: &LeaseRequest<'_>) -> Result<Vec<Lease>, StoreError> {
        Ok(self.lease_batch(req).await?.leases)
    }

    /// Leases up to `capacity` eligible jobs, best rank first; a job whose lease expired after
    /// `max_attempts` claims ends `error` instead, and is listed in the answer.
    pub async fn lease_batch(&self, req: &LeaseRequest<'_>) -> Result<LeaseBatch, StoreError> {
        let mut conn = self.pool().acquire().await?;
        // SQLite: take the write lock up front (a deferred transaction that reads first could not
        // upgrade under contention); PostgreSQL: a plain transaction with SKIP LOCKED reads.
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        sqlx::query(begin).execute(&mut *conn).await?;
        match self.lease_in(&mut conn, req).await {
            Ok((leases, exhausted)) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                drop(conn);
                let mut ended = Vec::new();
                for c in exhausted {
                    let reason = format!(
                        "agent {} lost; the job was claimed {} times (max_attempts)",
                        c.owner.as_deref().unwrap_or("?"),
                        c.attempts
                    );
                    tracing::warn!(build_job = c.build_job_id, "{reason}");
                    match self.transition_build_job(c.build_job_id, Status::Error, Some(&reason)).await {
                        Ok(()) => {
                            self.end_running_steps(c.build_job_id, Status::Error, &reason).await?;
                            ended.push((c.build_job_id, reason))
                        }
                        Err(StoreError::IllegalTransition { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(LeaseBatch { leases, exhausted: ended })
            }
            Err(e) => {
                // Never hand a connection back to the pool inside a transaction.
                if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                    conn.detach();
                }
                Err(e)
            }
        }
    }

    async fn lease_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        req: &LeaseRequest<'_>,
    ) -> Result<(Vec<Lease>, Vec<Candidate>), StoreError> {
        let now = now_ms();
        let expires = now + req.ttl.as_millis() as i64;
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id, build_job_id, labels, attempts, lease_owner, leased_ms, cpu_millis, memory_mb FROM queue \
             WHERE (lease_owner IS NULL OR lease_expires_ms < $1) AND cancel_requested = 0 ORDER BY rank_ms, id LIMIT 64{lock}"
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&mut *conn).await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for row in rows {
            let labels: String = row.try_get("labels")?;
            candidates.push(Candidate {
                id: row.try_get("id")?,
                build_job_id: row.try_get("build_job_id")?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                attempts: row.try_get("attempts")?,
                owner: row.try_get("lease_owner")?,
                leased_ms: row.try_get("leased_ms")?,
                needs: Needs { cpu_millis: row.try_get("cpu_millis")?, memory_mb: row.try_get("memory_mb")? },
            });
        }
        let mut leases = Vec::new();
        let mut exhausted = Vec::new();
        for c in candidates {
            if leases.len() >= req.capacity {
                break;
            }
            if !c.labels.iter().all(|l| req.labels.contains(l)) {
                continue;
            }
            if req.free.is_some_and(|free| !c.needs.fits_in(free)) {
                continue;
            }
            if let (Some(owner), Some(registered)) = (&c.owner, req.registered_ms)
                && owner == req.agent
                && c.leased_ms.is_some_and(|at| at >= registered)
            {
                continue;
            }
            if req.defer.is_some_and(|defer| defer(&c.labels, c.needs)) {
                continue;
            }
            if c.owner.is_some() && c.attempts >= req.max_attempts {
                sqlx::query("DELETE FROM queue WHERE id = $1").bind(c.id).execute(&mut *conn).await?;
                exhausted.push(c);
                continue;
            }
            let secret = super::new_secret("chgl_");
            let claimed = sqlx::query(
                "UPDATE queue SET lease_owner = $1, lease_expires_ms = $2, fencing_token = fencing_token + 1, attempts = attempts + 1, \
                 leased_ms = $4, lease_secret = $5 WHERE id = $3 AND (lease_owner IS NULL OR lease_expires_ms < $4) \
                 RETURNING fencing_token, attempts",
            )
            .bind(req.agent)
            .bind(expires)
            .bind(c.id)
            .bind(now)
            .bind(super::secret_digest(&secret))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = claimed {
                // What an earlier claim of the row uploaded is no longer anyone's to record.
                sqlx::query("DELETE FROM lease_uploads WHERE entry = $1").bind(c.id).execute(&mut *conn).await?;
                leases.push(Lease {
                    entry: c.id,
                    build_job_id: c.build_job_id,
                    token: row.try_get("fencing_token")?,
                    expires_ms: expires,
                    attempt: row.try_get("attempts")?,
                    lost_from: c.owner.clone(),
                    secret: Some(LeaseSecret(secret)),
                });
            }
        }
        Ok((leases, exhausted))
    }

    /// Extends a lease; refused when the token is stale. Carries cancellation requests.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal, StoreError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        let row = sqlx::query(
            "UPDATE queue SET lease_expires_ms = $1 WHERE id = $2 AND fencing_token = $3 RETURNING cancel_requested",
        )
        .bind(expires)
        .bind(lease.entry)
        .bind(lease.token)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::StaleLease { entry: lease.entry, token: lease.token })?;
        let cancel: i64 = row.try_get("cancel_requested")?;
        Ok(if cancel != 0 { Renewal::Cancel(expires) } else { Renewal::Continue(expires) })
    }

    /// The current lease `token` on queue entry `entry`, when agent `owner` holds it and
    /// `secret` is its secret: the check of every call an agent makes about a lease. A lease
    /// that is no longer current (or was taken before leases had secrets) is
    /// [`StoreError::StaleLease`]; one held by another agent, or called without its secret, is
    /// `Ok(Err(_))`. The secret is compared by digest, in constant time.
    pub async fn held_by(
        &self,
        entry: i64,
        token: i64,
        owner: &str,
        secret: Option<&LeaseSecret>,
    ) -> Result<Result<Lease, NotHolder>, StoreError> {
        let row = sqlx::query(
            "SELECT build_job_id, lease_owner, lease_expires_ms, attempts, lease_secret FROM queue \
             WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL",
        )
        .bind(entry)
        .bind(token)
        .fetch_optional(self.pool())
        .await?;
        let stale = || StoreError::StaleLease { entry, token };
        let row = row.ok_or_else(stale)?;
        let holder: String = row.try_get("lease_owner")?;
        let stored: Option<String> = row.try_get("lease_secret")?;
        if holder.as_bytes().ct_eq(owner.as_bytes()).unwrap_u8() == 0 {
            return Ok(Err(NotHolder::Owner));
        }
        let Some(stored) = stored else { return Err(stale()) };
        let Some(secret) = secret else { return Ok(Err(NotHolder::Secret)) };
        if super::secret_digest(secret.expose()).as_bytes().ct_eq(stored.as_bytes()).unwrap_u8() == 0 {
            return Ok(Err(NotHolder::Secret));
        }
        Ok(Ok(Lease {
            entry,
            build_job_id: row.try_get("build_job_id")?,
            token,
            expires_ms: row.try_get("lease_expires_ms")?,
            attempt: row.try_get("attempts")?,
            lost_from: None,
            secret: Some(secret.clone()),
        }))
    }

    /// Fails unless `lease` still holds its row: the check every write by a lease holder makes.
    pub async fn check_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let held: Option<i64> = sqlx::query_scalar("SELECT id FROM queue WHERE id = $1 AND fencing_token = $2")
            .bind(lease.entry)
            .bind(lease.token)
            .fetch_optional(self.pool())
            .await?;
        held.map(|_| ()).ok_or(StoreError::StaleLease { entry: lease.entry, token: lease.token })
    }

    /// The build id and job key of the build job `lease` holds (refused when the lease is
    /// stale), in one query.
    pub async fn held_job(&self, lease: &Lease) -> Result<(i64, String), StoreError> {
        let row = sqlx::query(
            "SELECT bj.build_id, bj.job_key FROM queue q JOIN build_jobs bj ON bj.id = q.build_job_id \
             WHERE q.id = $1 AND q.fencing_token = $2 AND q.build_job_id = $3",
        )
        .bind(lease.entry)
        .bind(lease.token)
        .bind(lease.build_job_id)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => Ok((r.try_get("build_id")?, r.try_get("job_key")?)),
            None => Err(StoreError::StaleLease { entry: lease.entry, token: lease.token }),
        }
    }

    /// Finishes a leased job: removes its queue row and records the result, refused when the
    /// token is stale, in one transaction.
    pub async fn complete(&self, lease: &Lease, status: Status, reason: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM queue WHERE id = $1 AND fencing_token = $2")
            .bind(lease.entry)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StaleLease { entry: lease.entry, token: lease.token });
        }
        sqlx::query("DELETE FROM lease_uploads WHERE entry = $1").bind(lease.entry).execute(&mut *tx).await?;
        tx.commit().await?;
        match self.transition_build_job(lease.build_job_id, status, reason).await {
            Err(StoreError::IllegalTransition { from: Status::Queued, .. }) => {
                self.transition_build_job(lease.build_job_id, Status::Running, None).await?;
                self.transition_build_job(lease.build_job_id, status, reason).await
            }
            other => other,
        }
    }

    /// Ends the steps of build job `build_job_id` still recorded `running` (their agent is
    /// gone) with `status` and `reason`.
    pub async fn end_running_steps(&self, build_job_id: i64, status: Status, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE build_steps SET status = $1, reason = $2, finished_ms = $3 WHERE build_job_id = $4 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(now_ms())
        .bind(build_job_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Ends the jobs a stop was asked of whose agents stopped answering (their leases ran out):
    /// nobody is left to stop them, so they leave the queue and end `cancelled` here. Returns
    /// the build jobs ended, with the reason.
    pub async fn end_abandoned_stops(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let now = now_ms();
        let ids: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM queue WHERE cancel_requested = 1 AND lease_owner IS NOT NULL AND lease_expires_ms < $1 \
             RETURNING build_job_id",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let reason = "cancelled; its agent stopped answering before it stopped the job";
        let mut ended = Vec::new();
        for id in ids {
            match self.transition_build_job(id, Status::Cancelled, Some(reason)).await {
                Ok(()) => {
                    self.end_running_steps(id, Status::Cancelled, reason).await?;
                    ended.push((id, reason.to_string()));
                }
                Err(StoreError::IllegalTransition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }

    /// The queue rows of build `build_id`'s jobs.
    pub async fn queue_entries(&self, build_id: i64) -> Result<Vec<QueueEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT q.build_job_id, q.lease_owner, q.cancel_requested FROM queue q \
             JOIN build_jobs bj ON bj.id = q.build_job_id WHERE bj.build_id = $1",
        )
        .bind(build_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let owner: Option<String> = r.try_get("lease_owner")?;
                let cancel: i64 = r.try_get("cancel_requested")?;
                Ok(QueueEntry {
                    build_job_id: r.try_get("build_job_id")?,
                    leased: owner.is_some(),
                    cancel_requested: cancel != 0,
                })
            })
            .collect()
    }

    /// Stops build job `build_job_id`: asks the agent that leased it, or takes it out of the
    /// queue and ends it `cancelled` with `reason` when no agent has.
    pub async fn stop_job(&self, build_job_id: i64, reason: &str) -> Result<Stopped, StoreError> {
        let asked =
            sqlx::query("UPDATE queue SET cancel_requested = 1 WHERE build_job_id = $1 AND lease_owner IS NOT NULL")
                .bind(build_job_id)
                .execute(self.pool())
                .await?;
        if asked.rows_affected() > 0 {
            return Ok(Stopped::Asked);
        }
        let removed = sqlx::query("DELETE FROM queue WHERE build_job_id = $1 AND lease_owner IS NULL")
            .bind(build_job_id)
            .execute(self.pool())
            .await?;
        if removed.rows_affected() == 0 {
            return Ok(Stopped::NotQueued);
        }
        match self.transition_build_job(build_job_id, Status::Cancelled, Some(reason)).await {
            Ok(()) | Err(StoreError::IllegalTransition { .. }) => Ok(Stopped::Removed),
            Err(e) => Err(e),
        }
    }

    /// Rows waiting or running.
    pub async fn queue_depth(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM queue").fetch_one(self.pool()).await?)
    }
}

#[cfg(test)]
pub(crate) mod holder_tests {
    use super::*;
    use crate::testdb::stores;

    /// A new build job of a new job named `name`.
    pub(crate) async fn build_job(store: &Store, name: &str) -> i64 {
        let job = store
            .create_job(&crate::jobs::NewJob {
                name: name.into(),
                repo_url: "file:///r".into(),
                default_branch: "main".into(),
                pipeline_path: None,
                submodules: false,
            })
            .await
            .unwrap();
        let new = crate::builds::NewBuild { trigger: "manual".into(), ..Default::default() };
        let build = store.create_build(job.id, &new).await.unwrap();
        store.create_build_job(build.id, "j", &serde_json::json!({})).await.unwrap()
    }

    /// A lease request of agent `agent` for one job, lasting `ttl`.
    pub(crate) fn request(agent: &str, ttl: Duration) -> LeaseRequest<'_> {
        LeaseRequest {
            agent,
            labels: &[],
            capacity: 1,
            ttl,
            max_attempts: 5,
            free: None,
            defer: None,
            registered_ms: None,
        }
    }

    #[tokio::test]
    async fn only_the_agent_holding_a_lease_with_its_secret_may_call_about_it() {
        for (store, _dir) in stores().await {
            let bj = build_job(&store, "held").await;
            store.enqueue(bj, Priority::Normal, &[]).await.unwrap();
            let short = store.lease(&request("agent-a", Duration::from_millis(1))).await.unwrap().remove(0);
            let secret = short.secret.clone().expect("a lease carries its secret");
            assert!(secret.expose().len() >= 64, "too short a secret");
            // The row keeps only the secret's digest.
            let stored: Option<String> = sqlx::query_scalar("SELECT lease_secret FROM queue WHERE id = $1")
                .bind(short.entry)
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(stored, Some(crate::secret_digest(secret.expose())));

            let held = store.held_by(short.entry, short.token, "agent-a", Some(&secret)).await.unwrap().unwrap();
            assert_eq!((held.build_job_id, held.token, held.attempt), (bj, short.token, 1));
            let as_b = store.held_by(short.entry, short.token, "agent-b", Some(&secret)).await.unwrap();
            assert_eq!(as_b, Err(NotHolder::Owner));
            let bare = store.held_by(short.entry, short.token, "agent-a", None).await.unwrap();
            assert_eq!(bare, Err(NotHolder::Secret));
            let guessed = LeaseSecret("chgl_00".into());
            let wrong = store.held_by(short.entry, short.token, "agent-a", Some(&guessed)).await.unwrap();
            assert_eq!(wrong, Err(NotHolder::Secret));
            let stale = store.held_by(short.entry, short.token + 1, "agent-a", Some(&secret)).await.unwrap_err();
            assert!(matches!(stale, StoreError::StaleLease { .. }), "{stale}");

            // The next claim of the row, even by the same agent, draws a new secret: the old one
            // opens nothing, and the old token is stale.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let next = store.lease(&request("agent-a", Duration::from_secs(30))).await.unwrap().remove(0);
            assert_eq!(next.entry, short.entry);
            assert_ne!(next.secret, short.secret);
            let old = store.held_by(next.entry, next.token, "agent-a", Some(&secret)).await.unwrap();
            assert_eq!(old, Err(NotHolder::Secret));
            let stale = store.held_by(short.entry, short.token, "agent-a", Some(&secret)).await.unwrap_err();
            assert!(matches!(stale, StoreError::StaleLease { .. }), "{stale}");
            assert!(store.held_by(next.entry, next.token, "agent-a", next.secret.as_ref()).await.unwrap().is_ok());

            // A lease taken before leases had secrets is stale for the agent API.
            sqlx::query("UPDATE queue SET lease_secret = NULL WHERE id = $1")
                .bind(next.entry)
                .execute(store.pool())
                .await
                .unwrap();
            let before = store.held_by(next.entry, next.token, "agent-a", next.secret.as_ref()).await.unwrap_err();
            assert!(matches!(before, StoreError::StaleLease { .. }), "{before}");
        }
    }
}
