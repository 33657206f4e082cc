//! The `users`, `sessions`, `api_tokens` and `audit_log` tables: who may sign in (argon2id
//! hashes only), their browser sessions and API tokens (SHA-256 digests of random secrets), and
//! the hash-chained log of security-relevant actions.

use super::{Store, StoreError, now_ms, secret_digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A user's role: admin > developer > viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads builds, logs and jobs.
    Viewer,
    /// Also triggers, cancels and retries builds and manages jobs and their secrets.
    Developer,
    /// Everything: users, plugins, agents, server settings, webhook replay, the audit log.
    Admin,
}

impl Role {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserRecord {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Disabled users cannot sign in; their sessions and tokens stop working.
    pub active: bool,
    /// Bumped by a password change or disabling: older sessions and tokens stop working.
    #[serde(skip)]
    pub session_version: i64,
    /// Failed sign-ins since the last good one.
    pub failed_logins: i64,
    /// Locked until then (ms since the epoch; 0 = not locked).
    pub locked_until_ms: i64,
    /// Creation time.
    pub created_ms: i64,
}

/// An API token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Its id.
    pub id: i64,
    /// Its owner.
    pub user_id: i64,
    /// A name to recognise it by.
    pub name: String,
    /// What it may do (`builds:read`, ...).
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_ms: i64,
    /// Expiry, if any.
    pub expires_ms: Option<i64>,
    /// Last use.
    pub last_used_ms: Option<i64>,
    /// When revoked.
    pub revoked_ms: Option<i64>,
    /// The token it was made with, if any: it is valid only while that one is (revoking the
    /// parent revokes it; its expiry is never later than the parent's).
    pub parent_id: Option<i64>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub id: i64,
    /// When.
    pub at_ms: i64,
    /// Who (a username, `agent:NAME`, `anonymous`, or `system`).
    pub actor: String,
    /// The client's address.
    pub ip: String,
    /// What (`login.success`, `token.create`, `build.trigger`, ...).
    pub action: String,
    /// On what (`user:ada`, `build:12`, `plugin:slack`, ...).
    pub target: String,
    /// Extra facts (never a secret).
    pub details: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// SHA-256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

/// What the audit chain check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerdict {
    /// Entries checked.
    pub entries: i64,
    /// The first problem, if any (`entry 7: hash does not match its fields`).
    pub problem: Option<String>,
}

const USER: &str =
    "SELECT id, username, role, active, session_version, failed_logins, locked_until_ms, created_ms FROM users";

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<UserRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let active: i64 = row.try_get("active")?;
    Ok(UserRecord {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt { what: "user role", detail: format!("unknown role `{role}`") })?,
        active: active != 0,
        session_version: row.try_get("session_version")?,
        failed_logins: row.try_get("failed_logins")?,
        locked_until_ms: row.try_get("locked_until_ms")?,
        created_ms: row.try_get("created_ms")?,
    })
}

const TOKEN: &str =
    "SELECT id, user_id, name, scopes, created_ms, expires_ms, last_used_ms, revoked_ms, parent_id FROM api_tokens";

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    token_from_columns(row, "id", "created_ms")
}

/// A token from a row whose id and creation time columns are named `id` and `created` (a row
/// joined with its user renames them).
fn token_from_columns(row: &sqlx::any::AnyRow, id: &str, created: &str) -> Result<TokenRecord, StoreError> {
    let scopes: String = row.try_get("scopes")?;
    Ok(TokenRecord {
        id: row.try_get(id)?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        scopes: serde_json::from_str(&scopes)
            .map_err(|e| StoreError::Corrupt { what: "token scopes", detail: e.to_string() })?,
        created_ms: row.try_get(created)?,
        expires_ms: row.try_get("expires_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        parent_id: row.try_get("parent_id")?,
    })
}

/// The longest audit field kept, in characters; longer ones are cut with [`TRUNCATED`].
pub const AUDIT_FIELD_MAX: usize = 256;
/// What marks a cut audit field.
pub const TRUNCATED: &str = "…[truncated]";

/// `text`, cut to [`AUDIT_FIELD_MAX`] characters (marker included) when longer.
pub fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().count() <= AUDIT_FIELD_MAX {
        return text.into();
    }
    let keep = AUDIT_FIELD_MAX - TRUNCATED.chars().count();
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(TRUNCATED);
    out.into()
}

/// The hash of an audit entry: SHA-256 over its id, time and fields (actor, ip, action, target,
/// details, the previous entry's hash), each length-prefixed.
fn audit_hash(id: i64, at_ms: i64, fields: [&str; 6]) -> String {
    let mut h = Sha256::new();
    h.update(id.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    for field in fields {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Store {
    /// Creates a user; `Conflict` when the name is taken.
    pub async fn create_user(&self, username: &str, password_hash: &str, role: Role) -> Result<UserRecord, StoreError> {
        if self.user_by_name(username).await?.is_some() {
            return Err(StoreError::Conflict(format!("user `{username}`")));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(format!("user `{username}`")),
            e => e.into(),
        })?;
        self.user(id).await
    }

    /// A user by id.
    pub async fn user(&self, id: i64) -> Result<UserRecord, StoreError> {
        let row = sqlx::query(&format!("{USER} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        user_from_row(&row)
    }

    /// A user and their password hash, by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<(UserRecord, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, role, active, session_version, failed_logins, locked_until_ms, created_ms, password_hash \
             FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((user_from_row(&r)?, r.try_get("password_hash")?))).transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(&format!("{USER} ORDER BY username")).fetch_all(self.pool()).await?;
        rows.iter().map(user_from_row).collect()
    }

    /// How many active admins there are.
    pub async fn active_admins(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND active = 1")
            .fetch_one(self.pool())
            .await?)
    }

    /// Sets a new password hash, unlocks the account and ends every session and token.
    pub async fn set_password(&self, id: i64, password_hash: &str) -> Result<UserRecord, StoreError> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, session_version = session_version + 1, failed_logins = 0, \
             locked_until_ms = 0 WHERE id = $2",
        )
        .bind(password_hash)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1").bind(id).execute(self.pool()).await?;
        self.user(id).await
    }

    /// Changes a user's role.
    pub async fn set_role(&self, id: i64, role: Role) -> Result<UserRecord, StoreError> {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(id)
            .execute(self.pool())
            .await?;
        self.user(id).await
    }

    /// Enables or disables a user; disabling ends every session and token.
    pub async fn set_active(&self, id: i64, active: bool) -> Result<UserRecord, StoreError> {
        sqlx::query("UPDATE users SET active = $1, session_version = session_version + $2 WHERE id = $3")
            .bind(i64::from(active))
            .bind(i64::from(!active))
            .bind(id)
            .execute(self.pool())
            .await?;
        self.user(id).await
    }

    /// Counts a failed sign-in of account `id` from client address `ip` (a network key: one
    /// address, or one IPv6 /64). Failures are counted per address: an address that failed
    /// several times counts once, so one client alone can never lock an account. When failures
    /// from `max` different addresses happened since `since_ms` (and since the last good
    /// sign-in or lockout), the account is locked until `lock_until_ms` and the count starts
    /// over. Returns the user as it is now.
    pub async fn login_failed(
        &self,
        id: i64,
        ip: &str,
        max: i64,
        since_ms: i64,
        lock_until_ms: i64,
    ) -> Result<UserRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1 AND at_ms < $2")
            .bind(id)
            .bind(since_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO login_failures (user_id, ip, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, ip) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(id)
        .bind(ip)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let addresses: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE user_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if addresses >= max {
            sqlx::query("UPDATE users SET failed_logins = $1, locked_until_ms = $2 WHERE id = $3")
                .bind(addresses)
                .bind(lock_until_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM login_failures WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
        } else {
            sqlx::query("UPDATE users SET failed_logins = $1 WHERE id = $2")
                .bind(addresses)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.user(id).await
    }

    /// Clears the failed sign-ins (and any lock) after a good one.
    pub async fn login_succeeded(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until_ms = 0 WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    /// Opens a session for `user` lasting `ttl_ms`; returns the cookie secret and the session's
    /// CSRF token.
    pub async fn create_session(&self, user: &UserRecord, ttl_ms: i64) -> Result<(String, String), StoreError> {
        let (secret, csrf) = (super::new_secret("chgs_"), super::new_secret(""));
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sessions (digest, user_id, session_version, csrf, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(secret_digest(&secret))
        .bind(user.id)
        .bind(user.session_version)
        .bind(&csrf)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(self.pool())
        .await?;
        // Expired sessions go when new ones come.
        sqlx::query("DELETE FROM sessions WHERE expires_ms < $1").bind(now).execute(self.pool()).await?;
        Ok((secret, csrf))
    }

    /// The user and CSRF token of a live session: not expired, user active, same session
    /// version (the lookup is by digest: no variable-time comparison of secrets).
    pub async fn session(&self, secret: &str) -> Result<Option<(UserRecord, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.role, u.active, u.session_version, u.failed_logins, u.locked_until_ms, u.created_ms, \
             s.csrf FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.digest = $1 AND s.expires_ms > $2 AND u.active = 1 AND u.session_version = s.session_version",
        )
        .bind(secret_digest(secret))
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((user_from_row(&r)?, r.try_get("csrf")?))).transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, secret: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE digest = $1").bind(secret_digest(secret)).execute(self.pool()).await?;
        Ok(())
    }

    /// Creates an API token for `user`, made through token `parent` when given (the new token
    /// is then valid only while the parent is); returns its record and the secret (shown once).
    /// The caller checks that the scopes and expiry are within the parent's.
    pub async fn create_api_token(
        &self,
        user: &UserRecord,
        name: &str,
        scopes: &[String],
        expires_ms: Option<i64>,
        parent: Option<i64>,
    ) -> Result<(TokenRecord, String), StoreError> {
        let secret = super::new_secret("chgu_");
        let record = self.insert_api_token(user, name, scopes, &secret, expires_ms, parent).await?;
        Ok((record, secret))
    }

    /// Records `secret` as an API token of `user` (for a secret made elsewhere, such as
    /// `CHENGIS_ADMIN_TOKEN`).
    pub async fn add_api_token_secret(
        &self,
        user: &UserRecord,
        name: &str,
        scopes: &[String],
        secret: &str,
    ) -> Result<TokenRecord, StoreError> {
        self.insert_api_token(user, name, scopes, secret, None, None).await
    }

    async fn insert_api_token(
        &self,
        user: &UserRecord,
        name: &str,
        scopes: &[String],
        secret: &str,
        expires_ms: Option<i64>,
        parent: Option<i64>,
    ) -> Result<TokenRecord, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_tokens (user_id, name, digest, scopes, session_version, created_ms, expires_ms, parent_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(user.id)
        .bind(name)
        .bind(secret_digest(secret))
        .bind(serde_json::to_string(scopes).unwrap_or_else(|_| "[]".into()))
        .bind(user.session_version)
        .bind(now_ms())
        .bind(expires_ms)
        .bind(parent)
        .fetch_one(self.pool())
        .await?;
        let row = sqlx::query(&format!("{TOKEN} WHERE id = $1")).bind(id).fetch_one(self.pool()).await?;
        token_from_row(&row)
    }

    /// The owner and record of a live API token (not revoked or expired, owner active and at the
    /// same session version), in one query. Its last use is written at most once a minute, so
    /// reads through a token do not each cost a database write.
    pub async fn api_token(&self, secret: &str) -> Result<Option<(UserRecord, TokenRecord)>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT u.id, u.username, u.role, u.active, u.session_version, u.failed_logins, u.locked_until_ms, \
             u.created_ms, t.id AS token_id, t.user_id, t.name, t.scopes, t.created_ms AS token_created_ms, \
             t.expires_ms, t.last_used_ms, t.revoked_ms, t.parent_id FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.digest = $1 AND t.revoked_ms IS NULL AND (t.expires_ms IS NULL OR t.expires_ms > $2) \
             AND u.active = 1 AND u.session_version = t.session_version \
             AND (t.parent_id IS NULL OR EXISTS (SELECT 1 FROM api_tokens p WHERE p.id = t.parent_id \
             AND p.revoked_ms IS NULL AND (p.expires_ms IS NULL OR p.expires_ms > $2)))",
        )
        .bind(secret_digest(secret))
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (user, token) = (user_from_row(&row)?, token_from_columns(&row, "token_id", "token_created_ms")?);
        if token.last_used_ms.is_none_or(|t| now - t >= 60_000) {
            sqlx::query("UPDATE api_tokens SET last_used_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(token.id)
                .execute(self.pool())
                .await?;
        }
        Ok(Some((user, token)))
    }

    /// The API tokens of a user (or of everyone).
    pub async fn api_tokens(&self, user_id: Option<i64>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(&format!("{TOKEN} WHERE ($1 = 0 OR user_id = $1) ORDER BY id"))
            .bind(user_id.unwrap_or(0))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token (of `user_id`, when given) and every token made through it, at any
    /// depth; `NotFound` when there is no such live token.
    pub async fn revoke_api_token(&self, id: i64, user_id: Option<i64>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1 WHERE id = $2 AND ($3 = 0 OR user_id = $3) AND revoked_ms IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(user_id.unwrap_or(0))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("live API token {id}")));
        }
        sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1 WHERE revoked_ms IS NULL AND id IN (\
             WITH RECURSIVE below(id) AS (SELECT id FROM api_tokens WHERE parent_id = $2 \
             UNION SELECT t.id FROM api_tokens t JOIN below b ON t.parent_id = b.id) SELECT id FROM below)",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends an entry to the audit chain; each field is cut to [`AUDIT_FIELD_MAX`]
    /// characters (with [`TRUNCATED`] at the end), so no request can grow the log by more than
    /// a bounded amount. The entry's id is the head's plus one and the head
    /// moves in the same transaction (a write first, so SQLite takes its lock at once); a
    /// concurrent append makes one of the two retry.
    pub async fn audit(
        &self,
        actor: &str,
        ip: &str,
        action: &str,
        target: &str,
        details: &str,
    ) -> Result<(), StoreError> {
        let cut = [bounded(actor), bounded(ip), bounded(action), bounded(target), bounded(details)];
        let [actor, ip, action, target, details] = [&*cut[0], &*cut[1], &*cut[2], &*cut[3], &*cut[4]];
        for _ in 0..20 {
            let row =
                sqlx::query("SELECT last_id, last_hash FROM audit_head WHERE one = 1").fetch_one(self.pool()).await?;
            let (last_id, last_hash): (i64, String) = (row.try_get("last_id")?, row.try_get("last_hash")?);
            let (id, at) = (last_id + 1, now_ms());
            let hash = audit_hash(id, at, [actor, ip, action, target, details, &last_hash]);
            let mut tx = self.pool().begin().await?;
            let moved =
                sqlx::query("UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE one = 1 AND last_id = $3")
                    .bind(id)
                    .bind(&hash)
                    .bind(last_id)
                    .execute(&mut *tx)
                    .await?;
            if moved.rows_affected() == 0 {
                drop(tx);
                continue;
            }
            sqlx::query(
                "INSERT INTO audit_log (id, at_ms, actor, ip, action, target, details, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(at)
            .bind(actor)
            .bind(ip)
            .bind(action)
            .bind(target)
            .bind(details)
            .bind(&last_hash)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(());
        }
        Err(StoreError::Conflict("the audit log head (too many concurrent appends)".into()))
    }

    /// Audit entries after `after_id`, oldest first, at most `limit`.
    pub async fn audit_entries(&self, after_id: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_query("WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit).await
    }

    /// The newest audit entries before `before_id` (all when 0), newest first, at most `limit`.
    pub async fn audit_newest(&self, before_id: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_query("WHERE ($1 = 0 OR id < $1) ORDER BY id DESC LIMIT $2", before_id, limit).await
    }

    async fn audit_query(&self, clause: &str, a: i64, b: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, at_ms, actor, ip, action, target, details, prev_hash, hash FROM audit_log {clause}"
        ))
        .bind(a)
        .bind(b)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    ip: r.try_get("ip")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    details: r.try_get("details")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }

    /// Walks the whole chain: ids consecutive from 1, each hash matching its fields and the
    /// previous hash, and the last entry matching the head.
    pub async fn verify_audit(&self) -> Result<AuditVerdict, StoreError> {
        let (mut expected_id, mut prev, mut checked) = (1i64, String::new(), 0i64);
        loop {
            let page = self.audit_entries(expected_id - 1, 1000).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                let problem = if e.id != expected_id {
                    Some(format!("entry {expected_id} is missing (next is {})", e.id))
                } else if e.prev_hash != prev {
                    Some(format!("entry {}: does not follow the entry before it", e.id))
                } else if audit_hash(e.id, e.at_ms, [&e.actor, &e.ip, &e.action, &e.target, &e.details, &e.prev_hash])
                    != e.hash
                {
                    Some(format!("entry {}: its hash does not match its fields (modified)", e.id))
                } else {
                    None
                };
                if problem.is_some() {
                    return Ok(AuditVerdict { entries: checked, problem });
                }
                checked += 1;
                expected_id += 1;
                prev = e.hash.clone();
            }
        }
        let row = sqlx::query("SELECT last_id, last_hash FROM audit_head WHERE one = 1").fetch_one(self.pool()).await?;
        let (last_id, last_hash): (i64, String) = (row.try_get("last_id")?, row.try_get("last_hash")?);
        let problem = (last_id != checked || last_hash != prev).then(|| {
            format!(
                "the log ends at entry {checked} but its head records entry {last_id} (entries removed from the end)"
            )
        });
        Ok(AuditVerdict { entries: checked, problem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::stores;

    async fn user(store: &Store, name: &str) -> UserRecord {
        store.create_user(name, "hash", Role::Admin).await.unwrap()
    }

    #[tokio::test]
    async fn revoking_a_token_revokes_every_token_made_through_it() {
        for (store, _dir) in stores().await {
            let ada = user(&store, "ada").await;
            let scopes = vec!["builds:read".to_string()];
            let (root, root_secret) = store.create_api_token(&ada, "root", &scopes, None, None).await.unwrap();
            let (child, child_secret) = store.create_api_token(&ada, "c", &scopes, None, Some(root.id)).await.unwrap();
            let (_, grandchild) = store.create_api_token(&ada, "g", &scopes, None, Some(child.id)).await.unwrap();
            let (_, other) = store.create_api_token(&ada, "other", &scopes, None, None).await.unwrap();
            assert_eq!(child.parent_id, Some(root.id));
            for s in [&root_secret, &child_secret, &grandchild, &other] {
                assert!(store.api_token(s).await.unwrap().is_some());
            }
            store.revoke_api_token(root.id, Some(ada.id)).await.unwrap();
            for s in [&root_secret, &child_secret, &grandchild] {
                assert!(store.api_token(s).await.unwrap().is_none(), "still live after its ancestor's revocation");
            }
            assert!(store.api_token(&other).await.unwrap().is_some(), "an unrelated token lives on");
            let listed = store.api_tokens(Some(ada.id)).await.unwrap();
            assert_eq!(listed.iter().filter(|t| t.revoked_ms.is_some()).count(), 3);
        }
    }

    #[tokio::test]
    async fn a_token_whose_parent_expired_is_refused() {
        for (store, _dir) in stores().await {
            let ada = user(&store, "ada").await;
            let scopes = vec!["builds:read".to_string()];
            let (root, _) = store.create_api_token(&ada, "root", &scopes, None, None).await.unwrap();
            let (_, child) = store.create_api_token(&ada, "c", &scopes, None, Some(root.id)).await.unwrap();
            assert!(store.api_token(&child).await.unwrap().is_some());
            sqlx::query("UPDATE api_tokens SET expires_ms = 1 WHERE id = $1")
                .bind(root.id)
                .execute(store.pool())
                .await
                .unwrap();
            assert!(store.api_token(&child).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn one_address_never_locks_an_account_several_do() {
        for (store, _dir) in stores().await {
            let ada = user(&store, "ada").await;
            let far = now_ms() + 60_000;
            for _ in 0..20 {
                let u = store.login_failed(ada.id, "192.0.2.1", 3, 0, far).await.unwrap();
                assert_eq!((u.failed_logins, u.locked_until_ms), (1, 0), "one address counts once");
            }
            let u = store.login_failed(ada.id, "192.0.2.2", 3, 0, far).await.unwrap();
            assert_eq!((u.failed_logins, u.locked_until_ms), (2, 0));
            // Failures older than the window do not count.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let u = store.login_failed(ada.id, "192.0.2.3", 3, now_ms(), far).await.unwrap();
            assert_eq!((u.failed_logins, u.locked_until_ms), (1, 0), "old failures were forgotten: {u:?}");
            store.login_failed(ada.id, "192.0.2.4", 3, 0, far).await.unwrap();
            let u = store.login_failed(ada.id, "192.0.2.5", 3, 0, far).await.unwrap();
            assert_eq!(u.locked_until_ms, far, "three addresses lock");
            // A new password clears the lock (the recovery path).
            let u = store.set_password(ada.id, "new-hash").await.unwrap();
            assert_eq!((u.failed_logins, u.locked_until_ms), (0, 0));
        }
    }

    #[tokio::test]
    async fn audit_fields_are_bounded() {
        for (store, _dir) in stores().await {
            let long = "x".repeat(1 << 20);
            store
                .audit(&long, "127.0.0.1", "login.failure", &format!("user:{long}"), "é".repeat(300).as_str())
                .await
                .unwrap();
            store.audit("ada", "127.0.0.1", "login.success", "user:ada", "short").await.unwrap();
            let entries = store.audit_entries(0, 10).await.unwrap();
            let e = &entries[0];
            for field in [&e.actor, &e.target, &e.details] {
                assert_eq!(field.chars().count(), AUDIT_FIELD_MAX, "{field}");
                assert!(field.ends_with(TRUNCATED));
            }
            assert_eq!(entries[1].details, "short");
            assert!(store.verify_audit().await.unwrap().problem.is_none());
        }
    }
}
