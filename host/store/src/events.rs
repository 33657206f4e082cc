//! The `build_events` table: status changes of a build and its jobs, in order, for SSE.

use super::{Store, StoreError, now_ms};
use serde::Serialize;
use sqlx::Row;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildEvent {
    /// Increasing id (the SSE event id).
    pub id: i64,
    /// Kind, such as `build_status` or `job_status`.
    pub kind: String,
    /// Details.
    pub payload: serde_json::Value,
    /// When.
    pub created_ms: i64,
}

impl Store {
    /// Records an event of a build.
    pub async fn add_event(&self, build_id: i64, kind: &str, payload: &serde_json::Value) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO build_events (build_id, kind, payload, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(build_id)
        .bind(kind)
        .bind(payload.to_string())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?)
    }

    /// Records several events of a build in order, up to 500 per statement (far below the
    /// databases' limits on bound values).
    pub async fn add_events(&self, build_id: i64, events: &[(&str, serde_json::Value)]) -> Result<(), StoreError> {
        for chunk in events.chunks(500) {
            let rows: Vec<String> =
                (0..chunk.len()).map(|i| format!("($1, ${}, ${}, $2)", 2 * i + 3, 2 * i + 4)).collect();
            let sql =
                format!("INSERT INTO build_events (build_id, kind, payload, created_ms) VALUES {}", rows.join(", "));
            let mut query = sqlx::query(&sql).bind(build_id).bind(now_ms());
            for (kind, payload) in chunk {
                query = query.bind(*kind).bind(payload.to_string());
            }
            query.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// The payload of a build's first event of `kind` (one indexed lookup, whatever the number of
    /// events).
    pub async fn first_event(&self, build_id: i64, kind: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let payload: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM build_events WHERE build_id = $1 AND kind = $2 ORDER BY id LIMIT 1",
        )
        .bind(build_id)
        .bind(kind)
        .fetch_optional(self.pool())
        .await?;
        Ok(payload.map(|p| serde_json::from_str(&p).unwrap_or(serde_json::Value::String(p))))
    }

    /// Events of a build with an id greater than `after`.
    pub async fn events_after(&self, build_id: i64, after: i64) -> Result<Vec<BuildEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, payload, created_ms FROM build_events WHERE build_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(build_id)
        .bind(after)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The newest event of `kind` of build `build_id`, if any.
    pub async fn last_event(&self, build_id: i64, kind: &str) -> Result<Option<BuildEvent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, kind, payload, created_ms FROM build_events WHERE build_id = $1 AND kind = $2 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(build_id)
        .bind(kind)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<BuildEvent, StoreError> {
    let payload: String = row.try_get("payload")?;
    Ok(BuildEvent {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        created_ms: row.try_get("created_ms")?,
    })
}
