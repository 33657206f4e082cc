//! The `log_chunks` table: a job's log lines in chunks (offset range = line numbers), written
//! only by the current lease holder, compressed at rest (deflate of JSON lines).

use super::queue::Lease;
use super::{Store, StoreError};
use crate::exec::LogLine;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use sqlx::Row;
use std::io::{Read, Write};

fn compress(lines: &[LogLine]) -> Vec<u8> {
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
    for l in lines {
        // Serializing a LogLine cannot fail: it holds only strings and numbers.
        let _ = serde_json::to_writer(&mut enc, l);
        let _ = enc.write_all(b"\n");
    }
    enc.finish().unwrap_or_default()
}

fn decompress(data: &[u8]) -> Result<Vec<LogLine>, StoreError> {
    let mut text = String::new();
    DeflateDecoder::new(data)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::Corrupt { what: "log chunk", detail: e.to_string() })?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| StoreError::Corrupt { what: "log line", detail: e.to_string() }))
        .collect()
}

impl Store {
    /// Appends lines (numbered consecutively) for the job `lease` holds; refused when the lease
    /// is stale. A chunk that was already stored (a retried append) is not stored twice.
    pub async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else { return Ok(()) };
        // One statement: the fencing check and the insert are atomic on both backends (a
        // read-then-write transaction could not upgrade its lock under SQLite's WAL).
        let done = sqlx::query(
            "INSERT INTO log_chunks (build_job_id, first_offset, last_offset, data) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM queue WHERE id = $5 AND fencing_token = $6) \
             ON CONFLICT (build_job_id, first_offset) DO NOTHING",
        )
        .bind(lease.build_job_id)
        .bind(first.number as i64)
        .bind(last.number as i64)
        .bind(compress(lines))
        .bind(lease.entry)
        .bind(lease.token)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            // Either a chunk already stored (a retried append) or a stale lease.
            self.check_lease(lease).await?;
        }
        Ok(())
    }

    /// Appends lines written by the server itself (not by an agent), such as planning errors.
    pub async fn append_server_log(&self, build_job_id: i64, lines: &[LogLine]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else { return Ok(()) };
        sqlx::query("INSERT INTO log_chunks (build_job_id, first_offset, last_offset, data) VALUES ($1, $2, $3, $4)")
            .bind(build_job_id)
            .bind(first.number as i64)
            .bind(last.number as i64)
            .bind(compress(lines))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Lines numbered `from` and later, at most `limit`, in order.
    pub async fn read_log(&self, build_job_id: i64, from: u64, limit: usize) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT data FROM log_chunks WHERE build_job_id = $1 AND last_offset >= $2 ORDER BY first_offset",
        )
        .bind(build_job_id)
        .bind(from as i64)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        let mut next = from;
        for row in rows {
            let data: Vec<u8> = row.try_get("data")?;
            for line in decompress(&data)? {
                // Chunks retried after a reconnect may overlap: keep each number once.
                if line.number >= next {
                    next = line.number + 1;
                    out.push(line);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The number the next line of a job's log will get (1 for an empty log).
    pub async fn next_log_offset(&self, build_job_id: i64) -> Result<u64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(last_offset) FROM log_chunks WHERE build_job_id = $1")
            .bind(build_job_id)
            .fetch_one(self.pool())
            .await?;
        Ok(last.map_or(1, |l| l as u64 + 1))
    }
}
