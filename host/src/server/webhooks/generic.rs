//! Chengis's own generic webhook format, for any system that can sign a request: a CI script, a
//! forge without a dedicated receiver, another Chengis server. It uses the same signing scheme
//! as Chengis's `webhook` notifier plugin (`plugins/webhook/README.md`), so one can feed the other.
//!
//! # The request
//!
//! ```http
//! POST /hooks/<hook> HTTP/1.1
//! Content-Type: application/json
//! X-Chengis-Timestamp: 1700000000
//! X-Chengis-Signature: sha256=<64 hex digits>
//! X-Chengis-Delivery: 3f1c2a...            (optional)
//!
//! {"ref": "refs/heads/main", "commit": "0123456789abcdef0123456789abcdef01234567"}
//! ```
//!
//! - `X-Chengis-Timestamp`: when the request was made, in Unix seconds (digits only). A request
//!   more than 300 s older or newer than the receiver's clock is refused as a replay
//!   ([`super::VerifyError::Stale`]).
//! - `X-Chengis-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with the hook's secret, of
//!   the timestamp, a `.`, and the raw body bytes: `HMAC(secret, "<timestamp>.<body>")`.
//! - `X-Chengis-Delivery`: an optional id (up to 128 printable ASCII characters), the same for
//!   every retry, by which repeats are dropped. Without it the delivery id is derived from the
//!   timestamp and the body, so an identical request replayed within the 5 minutes is a duplicate.
//!
//! Signing it from a shell:
//!
//! ```sh
//! ts=$(date +%s)
//! body='{"ref":"refs/heads/main","commit":"'"$(git rev-parse HEAD)"'"}'
//! sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
//! curl -fsS -H "X-Chengis-Timestamp: $ts" -H "X-Chengis-Signature: sha256=$sig" \
//!   -H 'Content-Type: application/json' -d "$body" https://ci.example.com/hooks/<hook>
//! ```
//!
//! # The body
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `ref` | yes | the full ref: `refs/heads/<branch>` or `refs/tags/<tag>` |
//! | `commit` | yes | the commit to build, 40 (or 64) hex digits; all zeros for a deleted ref |
//! | `before` | no | the commit the ref pointed at before |
//! | `changed_files` | no | the changed paths, for `on.push.paths` filters (absent: unknown) |
//! | `message` | no | the commit message |
//! | `repository` | no | the repository's clone URL; absent, [`super::Push::repository`] is `""` and the hook's own repository applies |
//! | `author`, `pusher` | no | who wrote and who pushed the commit |
//!
//! It always becomes an [`super::Event::Push`]; unknown keys are ignored.

use super::json::Node;
use super::verify::{hmac_matches, signature_bytes};
use super::{Event, GENERIC_MAX_SKEW_SECS, ParseError, PushParts, VerifyError, header_str, wrong};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The header carrying the timestamp.
pub const TIMESTAMP_HEADER: &str = "x-chengis-timestamp";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-chengis-signature";
/// The header carrying the optional delivery id.
pub const DELIVERY_HEADER: &str = "x-chengis-delivery";

/// Checks the timestamp against `now_unix`, then the signature against each secret.
pub(super) fn verify(headers: &HeaderMap, body: &[u8], secrets: &[&[u8]], now_unix: i64) -> Result<(), VerifyError> {
    let timestamp = timestamp(headers)?;
    let signature = signature_bytes(headers, SIGNATURE_HEADER, Some("sha256="))?;
    let age_secs = now_unix.saturating_sub(timestamp.1);
    if age_secs.unsigned_abs() > GENERIC_MAX_SKEW_SECS.unsigned_abs() {
        return Err(VerifyError::Stale { age_secs });
    }
    hmac_matches(&signature, &[timestamp.0.as_bytes(), b".", body], secrets)
}

/// The timestamp header as sent and as a number.
fn timestamp(headers: &HeaderMap) -> Result<(&str, i64), VerifyError> {
    let raw = headers.get(TIMESTAMP_HEADER).ok_or(VerifyError::Missing { header: TIMESTAMP_HEADER })?;
    let malformed = VerifyError::Malformed { header: TIMESTAMP_HEADER };
    let text = raw.to_str().map_err(|_| malformed.clone())?;
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    let value = text.parse().map_err(|_| malformed)?;
    Ok((text, value))
}

/// The delivery id when `X-Chengis-Delivery` is absent: the first 128 bits, in hex, of SHA-256
/// over the timestamp, a `.` and the body; `None` without a timestamp.
pub(super) fn fallback_delivery_id(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let timestamp = header_str(headers, TIMESTAMP_HEADER)?;
    let mut digest = Sha256::new();
    digest.update(timestamp.as_bytes());
    digest.update(b".");
    digest.update(body);
    Some(hex::encode(&digest.finalize()[..16]))
}

/// Parses the body into a push.
pub(super) fn parse(root: &Node<'_>) -> Result<Event, ParseError> {
    let changed_files = match root.array("changed_files") {
        Some(files) => Some(
            files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    f.as_str().map(str::to_owned).ok_or_else(|| wrong(&format!("changed_files[{i}]"), "a string"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None if root.get("changed_files").is_some() => return Err(wrong("changed_files", "an array of strings")),
        None => None,
    };
    let push = PushParts {
        repository: root.str("repository").unwrap_or_default().to_owned(),
        full_name: None,
        git_ref: root.req_str("ref")?.to_owned(),
        ref_field: "ref",
        before: root.str("before").map(str::to_owned),
        before_field: "before",
        after: root.req_str("commit")?.to_owned(),
        after_field: "commit",
        created: None,
        deleted: None,
        forced: false,
        changed_files: changed_files.map(|mut files| {
            files.sort();
            files.dedup();
            files
        }),
        message: root.str("message").map(str::to_owned),
        author: root.str("author").map(str::to_owned),
        pusher: root.str("pusher").map(str::to_owned),
    }
    .build()?;
    Ok(Event::Push(push))
}
