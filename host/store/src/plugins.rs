//! The `plugins` table (the trust allowlist: identity, requested and granted capabilities, the
//! decision with who and when) and `plugin_configs` (server-side settings per plugin).

use super::jobs::is_unique_violation;
use super::{Store, StoreError, now_ms};
use sqlx::Row;
use sqlx::any::AnyRow;

pub use chengis_model::records::{PluginRecord, TrustState};

/// What installing a plugin records.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Digest.
    pub digest: String,
    /// World.
    pub world: String,
    /// Kinds.
    pub kinds: Vec<String>,
    /// Description.
    pub description: String,
    /// Requested capabilities.
    pub requested: Vec<String>,
    /// Granted capabilities.
    pub granted: Vec<String>,
    /// Decision.
    pub state: TrustState,
    /// Stored component.
    pub path: String,
    /// Shipped with Chengis.
    pub builtin: bool,
    /// Who installed (and decided, when the state is not pending).
    pub by: String,
}

const COLUMNS: &str = "id, name, version, digest, world, kinds, description, requested, granted, state, path, builtin, decided_by, decided_ms, created_ms";

fn list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn plugin_from_row(row: &AnyRow) -> Result<PluginRecord, sqlx::Error> {
    Ok(PluginRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        world: row.try_get("world")?,
        kinds: list(&row.try_get::<String, _>("kinds")?),
        description: row.try_get("description")?,
        requested: list(&row.try_get::<String, _>("requested")?),
        granted: list(&row.try_get::<String, _>("granted")?),
        state: TrustState::parse(&row.try_get::<String, _>("state")?),
        path: row.try_get("path")?,
        builtin: row.try_get::<i64, _>("builtin")? != 0,
        decided_by: row.try_get("decided_by")?,
        decided_ms: row.try_get("decided_ms")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// A number that changes whenever this process changes a plugin record or config (other
    /// servers sharing the database do not move it).
    pub fn plugin_changes(&self) -> u64 {
        self.plugin_changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn plugins_changed(&self) {
        self.plugin_changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records an installed plugin; the same name and version twice is a conflict.
    pub async fn add_plugin(&self, p: &NewPlugin) -> Result<PluginRecord, StoreError> {
        let decided = p.state != TrustState::Pending;
        let sql = format!(
            "INSERT INTO plugins (name, version, digest, world, kinds, description, requested, granted, state, path, builtin, decided_by, decided_ms, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING {COLUMNS}"
        );
        let now = now_ms();
        let row = sqlx::query(&sql)
            .bind(&p.name)
            .bind(&p.version)
            .bind(&p.digest)
            .bind(&p.world)
            .bind(json(&p.kinds))
            .bind(&p.description)
            .bind(json(&p.requested))
            .bind(json(&p.granted))
            .bind(p.state.as_str())
            .bind(&p.path)
            .bind(i64::from(p.builtin))
            .bind(decided.then(|| p.by.clone()))
            .bind(decided.then_some(now))
            .bind(now)
            .fetch_one(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!(
                        "plugin `{}` {} (or a plugin with digest {})",
                        p.name, p.version, p.digest
                    ))
                } else {
                    e.into()
                }
            })?;
        self.plugins_changed();
        Ok(plugin_from_row(&row)?)
    }

    /// Every recorded plugin, by name then newest first.
    pub async fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM plugins ORDER BY name, id DESC");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(plugin_from_row).collect::<Result<_, _>>()?)
    }

    /// The plugin with this digest, if recorded.
    pub async fn plugin_by_digest(&self, digest: &str) -> Result<Option<PluginRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM plugins WHERE digest = $1");
        let row = sqlx::query(&sql).bind(digest).fetch_optional(self.pool()).await?;
        Ok(row.as_ref().map(plugin_from_row).transpose()?)
    }

    /// Records a decision (and, when given, a new set of grants) for every version of `name`,
    /// or only `version`.
    pub async fn decide_plugin(
        &self,
        name: &str,
        version: Option<&str>,
        state: TrustState,
        granted: Option<&[String]>,
        by: &str,
    ) -> Result<Vec<PluginRecord>, StoreError> {
        let targets: Vec<PluginRecord> = self
            .plugins()
            .await?
            .into_iter()
            .filter(|p| p.name == name && version.is_none_or(|v| v == p.version))
            .collect();
        if targets.is_empty() {
            let what = version.map_or_else(|| format!("plugin `{name}`"), |v| format!("plugin `{name}` {v}"));
            return Err(StoreError::NotFound(what));
        }
        for p in &targets {
            let granted = granted.map_or_else(|| json(&p.granted), json);
            sqlx::query("UPDATE plugins SET state = $1, granted = $2, decided_by = $3, decided_ms = $4 WHERE id = $5")
                .bind(state.as_str())
                .bind(granted)
                .bind(by)
                .bind(now_ms())
                .bind(p.id)
                .execute(self.pool())
                .await?;
        }
        self.plugins_changed();
        let ids: Vec<i64> = targets.iter().map(|p| p.id).collect();
        Ok(self.plugins().await?.into_iter().filter(|p| ids.contains(&p.id)).collect())
    }

    /// Removes every version of `name` (or only `version`); returns what was removed.
    pub async fn remove_plugin(&self, name: &str, version: Option<&str>) -> Result<Vec<PluginRecord>, StoreError> {
        let targets: Vec<PluginRecord> = self
            .plugins()
            .await?
            .into_iter()
            .filter(|p| p.name == name && version.is_none_or(|v| v == p.version))
            .collect();
        if targets.is_empty() {
            return Err(StoreError::NotFound(format!("plugin `{name}`")));
        }
        for p in &targets {
            sqlx::query("DELETE FROM plugins WHERE id = $1").bind(p.id).execute(self.pool()).await?;
        }
        self.plugins_changed();
        Ok(targets)
    }

    /// The server-side configuration of plugin `name` (empty when none).
    pub async fn plugin_config(&self, name: &str) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
        let row = sqlx::query("SELECT config FROM plugin_configs WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        let text: Option<String> = row.map(|r| r.try_get("config")).transpose()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }

    /// The server-side configuration of every plugin that has one, by name (one query).
    pub async fn plugin_configs(
        &self,
    ) -> Result<std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>, StoreError> {
        let rows = sqlx::query("SELECT name, config FROM plugin_configs").fetch_all(self.pool()).await?;
        let mut out = std::collections::HashMap::new();
        for row in &rows {
            let text: String = row.try_get("config")?;
            out.insert(row.try_get("name")?, serde_json::from_str(&text).unwrap_or_default());
        }
        Ok(out)
    }

    /// Replaces the server-side configuration of plugin `name`.
    pub async fn set_plugin_config(
        &self,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let text = serde_json::Value::Object(config.clone()).to_string();
        sqlx::query(
            "INSERT INTO plugin_configs (name, config, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_ms = excluded.updated_ms",
        )
        .bind(name)
        .bind(text)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        self.plugins_changed();
        Ok(())
    }
}
