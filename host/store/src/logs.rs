//! The `log_chunks` table: a job's log lines in chunks (offset range = line numbers), written
//! only by the current lease holder, compressed at rest (deflate of JSON lines).

use super::queue::Lease;
use super::{Store, StoreError};
use chengis_model::log::{LogLine, Stream};
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use sqlx::Row;
use std::io::{Read, Write};

// A chunk is a deflate stream of records: line number, stream, time (ms) and text length as
// little-endian integers, then the text. Compact and cheap to write and read back.
fn compress(lines: &[LogLine]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(lines.iter().map(|l| l.text.len() + 21).sum());
    for l in lines {
        raw.extend_from_slice(&l.number.to_le_bytes());
        raw.push(match l.stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => 2,
        });
        raw.extend_from_slice(&l.time_ms.to_le_bytes());
        raw.extend_from_slice(&(l.text.len() as u32).to_le_bytes());
        raw.extend_from_slice(l.text.as_bytes());
    }
    let mut enc = DeflateEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(&raw);
    enc.finish().unwrap_or_default()
}

fn decompress(data: &[u8]) -> Result<Vec<LogLine>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt { what: "log chunk", detail: detail.to_string() };
    let mut raw = Vec::new();
    DeflateDecoder::new(data).read_to_end(&mut raw).map_err(|e| corrupt(&e.to_string()))?;
    let mut out = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        if rest.len() < 21 {
            return Err(corrupt("truncated record"));
        }
        let number = u64::from_le_bytes(rest[0..8].try_into().map_err(|_| corrupt("number"))?);
        let stream = match rest[8] {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            2 => Stream::System,
            other => return Err(corrupt(&format!("unknown stream {other}"))),
        };
        let time_ms = u64::from_le_bytes(rest[9..17].try_into().map_err(|_| corrupt("time"))?);
        let len = u32::from_le_bytes(rest[17..21].try_into().map_err(|_| corrupt("length"))?) as usize;
        let text = rest.get(21..21 + len).ok_or_else(|| corrupt("truncated text"))?;
        out.push(LogLine { number, stream, time_ms, text: String::from_utf8_lossy(text).into_owned() });
        rest = &rest[21 + len..];
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip() {
        let lines = vec![
            LogLine { number: 7, stream: Stream::Stderr, time_ms: 1_795_000_000_000, text: "héllo ✓".into() },
            LogLine { number: 8, stream: Stream::System, time_ms: 1, text: String::new() },
        ];
        assert_eq!(decompress(&compress(&lines)).unwrap(), lines);
        assert!(decompress(b"garbage").is_err());
    }
}
