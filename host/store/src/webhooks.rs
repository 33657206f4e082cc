//! Webhook state: each job's webhook secrets (the current one and, during a rotation, the
//! previous one, encrypted like every other secret) and the log of deliveries with their
//! compressed payloads, which also tells a repeated delivery from a new one: by its delivery
//! id, and by the digest of its body (a signed body replayed under a new id), both per job and
//! provider, for as long as deliveries are kept.

use super::secrets::{MasterKeys, SecretScope, open_row};
use super::{Store, StoreError, now_ms};
use flate2::Compression;
use serde::Serialize;
use sqlx::Row;

/// The name of the current webhook secret in the job's webhook scope.
const CURRENT: &str = "current";
/// The name of the secret it replaced, still accepted until the next change.
const PREVIOUS: &str = "previous";

/// A delivery to record.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// The job it was sent to.
    pub job: &'a str,
    /// `github`, `gitlab`, ...
    pub provider: &'a str,
    /// The forge's event name (`push`, `Merge Request Hook`, ...).
    pub event: &'a str,
    /// The forge's delivery id, when it sent one.
    pub delivery_id: Option<&'a str>,
    /// The digest of the body, when a second delivery of the same body must start nothing
    /// (`None` for an operator's replay of a recorded delivery).
    pub body_digest: Option<&'a str>,
    /// The raw body.
    pub payload: &'a [u8],
}

/// Raw deflate (fast level) with one compressor per thread, reset between payloads: a new
/// compressor allocates and zeroes its tables every time.
fn deflate(data: &[u8]) -> Result<Vec<u8>, flate2::CompressError> {
    use flate2::{Compress, FlushCompress, Status};
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Compress> = std::cell::RefCell::new(Compress::new(Compression::fast(), false));
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 128);
        loop {
            let consumed = usize::try_from(c.total_in()).unwrap_or(data.len()).min(data.len());
            if c.compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)? == Status::StreamEnd {
                return Ok(out);
            }
            out.reserve(out.capacity().max(4096));
        }
    })
}

/// A delivery on its way to the database.
#[derive(Debug)]
struct DeliveryRow {
    job: String,
    provider: String,
    event: String,
    delivery_id: Option<String>,
    body_digest: Option<String>,
    /// Deflate-compressed.
    payload: Vec<u8>,
    received_ms: i64,
    outcome: DeliveryOutcome,
}

type Reply = tokio::sync::oneshot::Sender<Result<Option<i64>, StoreError>>;

/// Most deliveries written in one transaction.
const BATCH: usize = 128;

/// The one task that writes deliveries: it takes what is waiting (up to [`BATCH`]) and commits
/// it at once.
#[derive(Debug)]
pub(super) struct DeliveryWriter {
    tx: tokio::sync::mpsc::Sender<(DeliveryRow, Reply)>,
}

impl DeliveryWriter {
    fn start(store: Store) -> DeliveryWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(DeliveryRow, Reply)>(4 * BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                store.write_deliveries(batch).await;
            }
        });
        DeliveryWriter { tx }
    }
}

/// One recorded delivery, without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// Its id (for replay).
    pub id: i64,
    /// The job.
    pub job: String,
    /// The provider.
    pub provider: String,
    /// The forge's event name.
    pub event: String,
    /// The forge's delivery id.
    pub delivery_id: Option<String>,
    /// The repository the event named.
    pub repository: String,
    /// The ref it named.
    pub git_ref: String,
    /// The commit it named.
    pub commit_sha: String,
    /// `accepted`, `ignored`, `invalid`, `skipped` or `failed`.
    pub status: String,
    /// Why, for anything but `accepted`.
    pub detail: Option<String>,
    /// The build it started.
    pub build_id: Option<i64>,
    /// Milliseconds from receiving it to answering.
    pub processing_ms: i64,
    /// When it arrived.
    pub received_ms: i64,
}

/// What became of a delivery.
#[derive(Debug, Clone, Default)]
pub struct DeliveryOutcome {
    /// The repository the event named.
    pub repository: String,
    /// The ref it named.
    pub git_ref: String,
    /// The commit it named.
    pub commit_sha: String,
    /// `accepted`, `ignored`, `invalid`, `skipped` or `failed`.
    pub status: &'static str,
    /// Why.
    pub detail: Option<String>,
    /// The build it started.
    pub build_id: Option<i64>,
    /// Milliseconds from receiving it to answering.
    pub processing_ms: i64,
}

impl Store {
    /// Sets the job's webhook secret; the one it replaces stays valid as the previous secret
    /// (two active secrets during a rotation), the one before that is dropped.
    pub async fn set_webhook_secret(&self, keys: &MasterKeys, job: &str, secret: &str) -> Result<(), StoreError> {
        let scope = SecretScope::Webhook(job.to_string());
        let column = scope.column();
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM secrets WHERE scope = $1 AND name = $2")
            .bind(&column)
            .bind(PREVIOUS)
            .execute(&mut *tx)
            .await?;
        // The old current becomes the previous one: re-encrypted, since the name is bound to
        // the ciphertext.
        let old =
            sqlx::query("SELECT scope, name, key_id, nonce, ciphertext FROM secrets WHERE scope = $1 AND name = $2")
                .bind(&column)
                .bind(CURRENT)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        if let Some(row) = old {
            let (_, _, previous) = open_row(keys, &row)?;
            self.set_secret(keys, &scope, PREVIOUS, &previous).await?;
        }
        self.set_secret(keys, &scope, CURRENT, secret).await
    }

    /// The job's active webhook secrets, current first (none when it has none).
    pub async fn webhook_secrets(&self, keys: &MasterKeys, job: &str) -> Result<Vec<String>, StoreError> {
        let column = SecretScope::Webhook(job.to_string()).column();
        // "current" sorts before "previous".
        let rows =
            sqlx::query("SELECT scope, name, key_id, nonce, ciphertext FROM secrets WHERE scope = $1 ORDER BY name")
                .bind(&column)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(|row| open_row(keys, row).map(|(_, _, value)| value)).collect()
    }

    /// Records a delivery with what became of it so far; `None` when the job already has one
    /// with the same provider and delivery id, or with the same provider and body digest (a
    /// repeat or a replay: it must start nothing; [`Store::delivery_seen`] tells which). Deliveries
    /// arriving together are written in one transaction by one writer (group commit), so
    /// concurrent receivers neither wait for each other's commits nor fight for SQLite's write
    /// lock; each answer still waits for its own row to be committed.
    pub async fn record_delivery(
        &self,
        d: &NewDelivery<'_>,
        outcome: &DeliveryOutcome,
    ) -> Result<Option<i64>, StoreError> {
        let payload = deflate(d.payload).map_err(|e| StoreError::Crypto(format!("compressing the payload: {e}")))?;
        let row = DeliveryRow {
            job: d.job.to_string(),
            provider: d.provider.to_string(),
            event: d.event.to_string(),
            delivery_id: d.delivery_id.map(str::to_string),
            body_digest: d.body_digest.map(str::to_string),
            payload,
            received_ms: now_ms(),
            outcome: outcome.clone(),
        };
        let writer = self.deliveries.get_or_init(|| DeliveryWriter::start(self.clone()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        if writer.tx.send((row, reply)).await.is_err() {
            return Err(StoreError::Crypto("the delivery writer stopped".into()));
        }
        answer.await.map_err(|_| StoreError::Crypto("the delivery writer stopped".into()))?
    }

    /// Inserts one delivery row on `conn`.
    async fn insert_delivery(conn: &mut sqlx::AnyConnection, row: &DeliveryRow) -> Result<Option<i64>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (job_id, provider, event, delivery_id, status, payload, received_ms, \
             repository, git_ref, commit_sha, detail, processing_ms, body_digest) \
             SELECT j.id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM jobs j WHERE j.name = $1 \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&row.job)
        .bind(&row.provider)
        .bind(&row.event)
        .bind(&row.delivery_id)
        .bind(row.outcome.status)
        .bind(&row.payload)
        .bind(row.received_ms)
        .bind(&row.outcome.repository)
        .bind(&row.outcome.git_ref)
        .bind(&row.outcome.commit_sha)
        .bind(&row.outcome.detail)
        .bind(row.outcome.processing_ms)
        .bind(&row.body_digest)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(id)
    }

    /// Writes a batch in one transaction; on any failure, each row on its own (so every
    /// caller gets its own answer).
    async fn write_deliveries(&self, batch: Vec<(DeliveryRow, Reply)>) {
        let together = async {
            let mut tx = self.pool().begin().await?;
            let mut ids = Vec::with_capacity(batch.len());
            for (row, _) in &batch {
                ids.push(Self::insert_delivery(&mut tx, row).await?);
            }
            tx.commit().await?;
            Ok::<_, StoreError>(ids)
        }
        .await;
        match together {
            Ok(ids) => {
                for ((_, reply), id) in batch.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                tracing::debug!(
                    "writing {} webhook deliveries together failed ({e}); writing them one by one",
                    batch.len()
                );
                for (row, reply) in batch {
                    let one = async {
                        let mut conn = self.pool().acquire().await?;
                        Self::insert_delivery(&mut conn, &row).await
                    }
                    .await;
                    let _ = reply.send(one);
                }
            }
        }
    }

    /// Whether the job already has a recorded delivery from `provider` with this delivery id
    /// (after [`Store::record_delivery`] answered `None`: otherwise it was the same body).
    pub async fn delivery_seen(&self, job: &str, provider: &str, delivery_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id \
             WHERE j.name = $1 AND d.provider = $2 AND d.delivery_id = $3",
        )
        .bind(job)
        .bind(provider)
        .bind(delivery_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Records what became of a delivery.
    pub async fn finish_delivery(&self, id: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET repository = $1, git_ref = $2, commit_sha = $3, status = $4, detail = $5, \
             build_id = $6, processing_ms = $7 WHERE id = $8",
        )
        .bind(&outcome.repository)
        .bind(&outcome.git_ref)
        .bind(&outcome.commit_sha)
        .bind(outcome.status)
        .bind(&outcome.detail)
        .bind(outcome.build_id)
        .bind(outcome.processing_ms)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A recorded delivery with its payload (decompressed).
    pub async fn delivery_payload(&self, id: i64) -> Result<(DeliveryRecord, Vec<u8>), StoreError> {
        use std::io::Read;
        let record = self
            .deliveries_where("d.id = $1", id, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("webhook delivery {id}")))?;
        let compressed: Vec<u8> = sqlx::query_scalar("SELECT payload FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        let mut payload = Vec::new();
        flate2::read::DeflateDecoder::new(&compressed[..])
            .read_to_end(&mut payload)
            .map_err(|e| StoreError::Corrupt { what: "webhook payload", detail: e.to_string() })?;
        Ok((record, payload))
    }

    /// Deletes the deliveries received before `before_ms`; returns how many.
    pub async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE received_ms < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// The newest deliveries (of one job, or of all), at most `limit`.
    pub async fn deliveries(&self, job: Option<&str>, limit: i64) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.deliveries_where("($1 = '' OR j.name = $1)", job.unwrap_or_default().to_string(), limit).await
    }

    async fn deliveries_where<T>(
        &self,
        condition: &str,
        value: T,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
    {
        let sql = format!(
            "SELECT d.id, j.name, d.provider, d.event, d.delivery_id, d.repository, d.git_ref, d.commit_sha, d.status, \
             d.detail, d.build_id, d.processing_ms, d.received_ms FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id \
             WHERE {condition} ORDER BY d.id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql).bind(value).bind(limit.clamp(1, 500)).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    id: r.try_get(0)?,
                    job: r.try_get(1)?,
                    provider: r.try_get(2)?,
                    event: r.try_get(3)?,
                    delivery_id: r.try_get(4)?,
                    repository: r.try_get(5)?,
                    git_ref: r.try_get(6)?,
                    commit_sha: r.try_get(7)?,
                    status: r.try_get(8)?,
                    detail: r.try_get(9)?,
                    build_id: r.try_get(10)?,
                    processing_ms: r.try_get(11)?,
                    received_ms: r.try_get(12)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod deflate_tests {
    #[test]
    fn the_reused_compressor_round_trips_every_payload() {
        use std::io::Read;
        for data in [Vec::new(), b"x".to_vec(), (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()] {
            for _ in 0..2 {
                let packed = super::deflate(&data).unwrap();
                let mut back = Vec::new();
                flate2::read::DeflateDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
                assert_eq!(back, data);
            }
        }
    }
}

#[cfg(test)]
mod digest_tests {
    use super::{DeliveryOutcome, NewDelivery};
    use crate::jobs::NewJob;
    use crate::testdb::stores;

    /// A push delivery of the same body each time.
    fn d<'a>(job: &'a str, provider: &'a str, id: &'a str, digest: Option<&'a str>) -> NewDelivery<'a> {
        let payload = br#"{"ref":"refs/heads/main"}"#;
        NewDelivery { job, provider, event: "push", delivery_id: Some(id), body_digest: digest, payload }
    }

    #[tokio::test]
    async fn a_body_is_processed_once_per_job_and_provider_whatever_its_delivery_id() {
        for (store, _dir) in stores().await {
            for name in ["one", "two"] {
                let job = NewJob {
                    name: name.into(),
                    repo_url: "file:///r".into(),
                    default_branch: "main".into(),
                    pipeline_path: None,
                    submodules: false,
                };
                store.create_job(&job).await.unwrap();
            }
            let outcome = DeliveryOutcome { status: "accepted", ..DeliveryOutcome::default() };
            let digest = "d".repeat(64);
            let digest = digest.as_str();
            assert!(store.record_delivery(&d("one", "github", "a", Some(digest)), &outcome).await.unwrap().is_some());
            // The same signed body under a new delivery id: a replay, recorded nowhere.
            assert_eq!(store.record_delivery(&d("one", "github", "b", Some(digest)), &outcome).await.unwrap(), None);
            assert!(!store.delivery_seen("one", "github", "b").await.unwrap(), "the replay left no row");
            assert!(store.delivery_seen("one", "github", "a").await.unwrap());
            // Another job or another provider is another hook: the body is new there.
            assert!(store.record_delivery(&d("two", "github", "a", Some(digest)), &outcome).await.unwrap().is_some());
            assert!(store.record_delivery(&d("one", "gitea", "a", Some(digest)), &outcome).await.unwrap().is_some());
            // An operator's replay carries no digest and is recorded.
            assert!(store.record_delivery(&d("one", "github", "replay-1", None), &outcome).await.unwrap().is_some());
            assert!(store.record_delivery(&d("one", "github", "replay-2", None), &outcome).await.unwrap().is_some());
            // Once pruned (past the retention), the digest is forgotten with its delivery.
            assert_eq!(store.prune_deliveries(crate::now_ms() + 1).await.unwrap(), 5);
            assert!(store.record_delivery(&d("one", "github", "c", Some(digest)), &outcome).await.unwrap().is_some());
        }
    }
}
