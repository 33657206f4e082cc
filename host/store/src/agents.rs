//! The `agents` and `agent_tokens` tables: who pulls work (registered name, labels, capacity,
//! resources, last heartbeat) and the tokens remote agents present (SHA-256 digests only).

use super::{Store, StoreError, now_ms};
use sqlx::Row;

pub use chengis_model::protocol::{AgentInfo, Needs};

/// A registered agent as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentRecord {
    /// What it registered.
    #[serde(flatten)]
    pub info: AgentInfo,
    /// Runs inside the server process.
    pub embedded: bool,
    /// `online`, `draining`, `offline` (silent longer than the lease time) or `revoked`.
    pub status: String,
    /// When it registered (ms since the epoch).
    pub registered_ms: i64,
    /// Its last call (ms since the epoch).
    pub last_seen_ms: i64,
    /// Build jobs it holds a lease on now.
    pub current_jobs: Vec<i64>,
}

/// An agent token as listed (never the secret).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentTokenRecord {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_ms: i64,
    /// Its last use.
    pub last_used_ms: Option<i64>,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
}

use super::secret_digest as digest;

impl Store {
    /// Records (or refreshes) an agent's registration (the embedded agents register so).
    pub async fn register_agent(
        &self,
        info: &AgentInfo,
        embedded: bool,
        token_id: Option<i64>,
    ) -> Result<(), StoreError> {
        self.upsert_agent(info, embedded, token_id, "").await?;
        Ok(())
    }

    /// Records (or refreshes) the registration of a remote agent presenting token `token_id`;
    /// false, and nothing written, when the name belongs to an embedded agent or to another
    /// live token: a name is bound to the token that registered it until that token is revoked.
    pub async fn register_remote_agent(&self, info: &AgentInfo, token_id: i64) -> Result<bool, StoreError> {
        let guard = " WHERE agents.embedded = 0 AND (agents.token_id IS NULL OR agents.token_id = $11 \
             OR EXISTS (SELECT 1 FROM agent_tokens t WHERE t.id = agents.token_id AND t.revoked_ms IS NOT NULL))";
        self.upsert_agent(info, false, Some(token_id), guard).await
    }

    async fn upsert_agent(
        &self,
        info: &AgentInfo,
        embedded: bool,
        token_id: Option<i64>,
        guard: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let labels = serde_json::to_string(&info.labels).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(&format!(
            "INSERT INTO agents (name, labels, executors, os, arch, cpus, memory_mb, docker, version, embedded, state, token_id, registered_ms, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'online', $11, $12, $12) \
             ON CONFLICT (name) DO UPDATE SET labels = $2, executors = $3, os = $4, arch = $5, cpus = $6, memory_mb = $7, \
             docker = $8, version = $9, embedded = $10, state = 'online', token_id = $11, registered_ms = $12, last_seen_ms = $12{guard}"
        ))
        .bind(&info.name)
        .bind(labels)
        .bind(info.executors)
        .bind(&info.os)
        .bind(&info.arch)
        .bind(info.cpus)
        .bind(info.memory_mb)
        .bind(i64::from(info.docker))
        .bind(&info.version)
        .bind(i64::from(embedded))
        .bind(token_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether agent `name` is registered by token `token_id` (and is not embedded): `None`
    /// when no agent of that name is registered.
    pub async fn agent_bound_to(&self, name: &str, token_id: i64) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query("SELECT token_id, embedded FROM agents WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            let bound: Option<i64> = r.try_get("token_id")?;
            let embedded: i64 = r.try_get("embedded")?;
            Ok(embedded == 0 && bound == Some(token_id))
        })
        .transpose()
    }

    /// Notes a call from `name` (its heartbeat), setting its state (`online`, `draining`,
    /// `drained`) when given; false when no such agent is registered.
    pub async fn agent_seen(&self, name: &str, state: Option<&str>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE agents SET last_seen_ms = $1, state = COALESCE($2, state) WHERE name = $3")
            .bind(now_ms())
            .bind(state)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Like [`Store::agent_seen`] for a lease poll, answering in the same statement with what
    /// the poll needs: the CPU cores, memory (MiB), registration time and state of agent
    /// `name` (`None` when it is not registered).
    pub async fn agent_polled(&self, name: &str, state: &str) -> Result<Option<PolledAgent>, StoreError> {
        let row = sqlx::query(
            "UPDATE agents SET last_seen_ms = $1, state = $2 WHERE name = $3 \
             RETURNING cpus, memory_mb, registered_ms, state",
        )
        .bind(now_ms())
        .bind(state)
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(PolledAgent {
                cpus: r.try_get("cpus")?,
                memory_mb: r.try_get("memory_mb")?,
                registered_ms: r.try_get("registered_ms")?,
                state: r.try_get("state")?,
            })
        })
        .transpose()
    }

    /// The state agent `name` last reported (`online`, `draining`, `drained`).
    pub async fn agent_state(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT state FROM agents WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Every registered agent; `silent_ms`: how long without a call makes one `offline`.
    pub async fn agents(&self, silent_ms: i64) -> Result<Vec<AgentRecord>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT a.name, a.labels, a.executors, a.os, a.arch, a.cpus, a.memory_mb, a.docker, a.version, a.embedded, a.state, \
             a.registered_ms, a.last_seen_ms, t.revoked_ms FROM agents a LEFT JOIN agent_tokens t ON t.id = a.token_id ORDER BY a.name",
        )
        .fetch_all(self.pool())
        .await?;
        let held = sqlx::query(
            "SELECT lease_owner, build_job_id FROM queue WHERE lease_owner IS NOT NULL AND lease_expires_ms >= $1",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let labels: String = row.try_get("labels")?;
            let last_seen_ms: i64 = row.try_get("last_seen_ms")?;
            let embedded = row.try_get::<i64, _>("embedded")? != 0;
            let revoked: Option<i64> = row.try_get("revoked_ms")?;
            let state: String = row.try_get("state")?;
            let status = if revoked.is_some() {
                "revoked".to_string()
            } else if state == "drained" {
                state
            } else if !embedded && now - last_seen_ms > silent_ms {
                "offline".to_string()
            } else {
                state
            };
            let mut current_jobs = Vec::new();
            for h in &held {
                if h.try_get::<String, _>("lease_owner")? == name {
                    current_jobs.push(h.try_get("build_job_id")?);
                }
            }
            out.push(AgentRecord {
                info: AgentInfo {
                    name,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    executors: row.try_get("executors")?,
                    os: row.try_get("os")?,
                    arch: row.try_get("arch")?,
                    cpus: row.try_get("cpus")?,
                    memory_mb: row.try_get("memory_mb")?,
                    docker: row.try_get::<i64, _>("docker")? != 0,
                    version: row.try_get("version")?,
                },
                embedded,
                status,
                registered_ms: row.try_get("registered_ms")?,
                last_seen_ms,
                current_jobs,
            });
        }
        Ok(out)
    }

    /// Creates an agent token; returns its id and the secret (shown once, stored as a digest).
    pub async fn create_agent_token(&self, name: &str) -> Result<(i64, String), StoreError> {
        let token = super::new_secret("chga_");
        let id: i64 =
            sqlx::query_scalar("INSERT INTO agent_tokens (name, digest, created_ms) VALUES ($1, $2, $3) RETURNING id")
                .bind(name)
                .bind(digest(&token))
                .bind(now_ms())
                .fetch_one(self.pool())
                .await?;
        Ok((id, token))
    }

    /// The id of the live (not revoked) token `token`, noting its use (written at most once a
    /// minute: an agent calls several times per job, and a read should not cost a write). The
    /// lookup is by digest, so no comparison of secrets happens in variable time.
    pub async fn check_agent_token(&self, token: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT id, last_used_ms FROM agent_tokens WHERE digest = $1 AND revoked_ms IS NULL")
            .bind(digest(token))
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.try_get("id")?;
        let last: Option<i64> = row.try_get("last_used_ms")?;
        let now = now_ms();
        if last.is_none_or(|t| now - t >= 60_000) {
            sqlx::query("UPDATE agent_tokens SET last_used_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        Ok(Some(id))
    }

    /// Every agent token.
    pub async fn agent_tokens(&self) -> Result<Vec<AgentTokenRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_ms, last_used_ms, revoked_ms FROM agent_tokens ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentTokenRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_ms: r.try_get("created_ms")?,
                    last_used_ms: r.try_get("last_used_ms")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                })
            })
            .collect()
    }

    /// Revokes token `id` (by id or by name); false when there is no such live token.
    pub async fn revoke_agent_token(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let id: i64 = id_or_name.parse().unwrap_or(-1);
        let done =
            sqlx::query("UPDATE agent_tokens SET revoked_ms = $1 WHERE (id = $2 OR name = $3) AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .bind(id_or_name)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Queued jobs no registered agent can ever take (labels or resources), with the reason
    /// recorded on the row; jobs that became takeable lose theirs. Returns how many wait.
    pub async fn mark_unmatchable(&self, silent_ms: i64) -> Result<usize, StoreError> {
        let agents: Vec<AgentRecord> =
            self.agents(silent_ms).await?.into_iter().filter(|a| a.status != "revoked").collect();
        let rows = sqlx::query(
            "SELECT id, labels, cpu_millis, memory_mb, waiting_reason FROM queue WHERE lease_owner IS NULL",
        )
        .fetch_all(self.pool())
        .await?;
        let mut waiting = 0;
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let labels: String = row.try_get("labels")?;
            let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
            let needs = Needs { cpu_millis: row.try_get("cpu_millis")?, memory_mb: row.try_get("memory_mb")? };
            let old: Option<String> = row.try_get("waiting_reason")?;
            let reason = unmatchable_reason(&labels, needs, &agents);
            if reason.is_some() {
                waiting += 1;
            }
            if reason != old {
                sqlx::query("UPDATE queue SET waiting_reason = $1 WHERE id = $2")
                    .bind(&reason)
                    .bind(id)
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(waiting)
    }

    /// Why the queued jobs of build `build_id` wait, by build job id (only those no agent can
    /// take have a reason).
    pub async fn waiting_reasons(&self, build_id: i64) -> Result<std::collections::HashMap<i64, String>, StoreError> {
        let rows = sqlx::query(
            "SELECT q.build_job_id, q.waiting_reason FROM queue q JOIN build_jobs j ON j.id = q.build_job_id \
             WHERE j.build_id = $1 AND q.waiting_reason IS NOT NULL",
        )
        .bind(build_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get("build_job_id")?, r.try_get("waiting_reason")?))).collect()
    }
}

/// Why no agent in `agents` can ever run a job with `labels` and `needs`.
fn unmatchable_reason(labels: &[String], needs: Needs, agents: &[AgentRecord]) -> Option<String> {
    let labelled: Vec<&AgentRecord> =
        agents.iter().filter(|a| labels.iter().all(|l| a.info.labels.contains(l))).collect();
    if labelled.is_empty() {
        return Some(if agents.is_empty() {
            "no agent is registered".to_string()
        } else {
            format!("no agent has the labels [{}]", labels.join(", "))
        });
    }
    if !labelled.iter().any(|a| needs.fits(a.info.cpus, a.info.memory_mb)) {
        return Some(format!(
            "no agent with the labels [{}] has {} CPU and {} MiB of memory",
            labels.join(", "),
            needs.cpu_millis as f64 / 1000.0,
            needs.memory_mb
        ));
    }
    None
}

/// What a lease poll reads of its agent (see [`Store::agent_polled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledAgent {
    /// CPU cores.
    pub cpus: i64,
    /// Memory, MiB.
    pub memory_mb: i64,
    /// When it registered (ms since the epoch).
    pub registered_ms: i64,
    /// `online`, `draining` or `drained`.
    pub state: String,
}

#[cfg(test)]
mod binding_tests {
    use super::*;
    use crate::testdb::stores;

    fn info(name: &str) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            labels: vec!["linux".into()],
            executors: 1,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_mb: 1024,
            docker: false,
            version: "test".into(),
        }
    }

    #[tokio::test]
    async fn an_agent_name_is_bound_to_the_token_that_registered_it() {
        for (store, _dir) in stores().await {
            let (one, _) = store.create_agent_token("one").await.unwrap();
            let (two, _) = store.create_agent_token("two").await.unwrap();
            assert!(store.register_remote_agent(&info("a"), one).await.unwrap());
            assert!(store.register_remote_agent(&info("a"), one).await.unwrap(), "the same token registers again");
            let mut other = info("a");
            other.labels = vec!["stolen".into()];
            assert!(!store.register_remote_agent(&other, two).await.unwrap());
            let listed = store.agents(60_000).await.unwrap();
            assert_eq!(listed[0].info.labels, vec!["linux".to_string()], "the refused registration wrote nothing");
            assert_eq!(store.agent_bound_to("a", one).await.unwrap(), Some(true));
            assert_eq!(store.agent_bound_to("a", two).await.unwrap(), Some(false));
            assert_eq!(store.agent_bound_to("nobody", one).await.unwrap(), None);

            // An embedded agent's name is no remote token's.
            store.register_agent(&info("embedded-0@host"), true, None).await.unwrap();
            assert!(!store.register_remote_agent(&info("embedded-0@host"), one).await.unwrap());
            assert_eq!(store.agent_bound_to("embedded-0@host", one).await.unwrap(), Some(false));

            // Once its token is revoked, the name is free for another.
            assert!(store.revoke_agent_token("one").await.unwrap());
            assert!(store.register_remote_agent(&info("a"), two).await.unwrap());
            assert_eq!(store.agent_bound_to("a", two).await.unwrap(), Some(true));
        }
    }
}
