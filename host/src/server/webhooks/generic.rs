//! Chengis's own generic webhook format, for any system that can sign a request: a CI script, a
//! forge without a dedicated receiver, another Chengis server.
//!
//! # The request
//!
//! ```http
//! POST /hooks/generic/<job> HTTP/1.1
//! Content-Type: application/json
//! X-Chengis-Delivery: 3f1c2a7e-5b8d-4c1e-9f0a-2b3c4d5e6f70
//! X-Chengis-Timestamp: 1700000000
//! X-Chengis-Signature: sha256=<64 hex digits>
//!
//! {"ref": "refs/heads/main", "commit": "0123456789abcdef0123456789abcdef01234567"}
//! ```
//!
//! - `X-Chengis-Delivery`: the delivery's id, 1 to 128 printable ASCII characters without `.`
//!   (a UUID is a good choice), the same for every retry of one delivery. Required: without it
//!   the request is refused (400). A delivery id seen before for the job is a duplicate.
//! - `X-Chengis-Timestamp`: when the request was made, in Unix seconds (digits only). A request
//!   more than 300 s older or newer than the receiver's clock is refused as a replay
//!   ([`super::VerifyError::Stale`]).
//! - `X-Chengis-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with the hook's secret, of
//!   the delivery id, a `.`, the timestamp, a `.`, and the raw body bytes:
//!   `HMAC(secret, "<delivery>.<timestamp>.<body>")`. The id and the timestamp are signed, so a
//!   captured request cannot be sent again under a new id or a fresh timestamp; within the
//!   window the id makes it a duplicate, and the same body is processed once anyway.
//!
//! This is not the signing scheme of the `webhook` notifier plugin (which signs
//! `"<timestamp>.<body>"`): a receiver of this format needs the delivery id in the signature.
//!
//! Signing it from a shell:
//!
//! ```sh
//! id=$(cat /proc/sys/kernel/random/uuid)
//! ts=$(date +%s)
//! body='{"ref":"refs/heads/main","commit":"'"$(git rev-parse HEAD)"'"}'
//! sig=$(printf '%s.%s.%s' "$id" "$ts" "$body" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
//! curl -fsS -H "X-Chengis-Delivery: $id" -H "X-Chengis-Timestamp: $ts" \
//!   -H "X-Chengis-Signature: sha256=$sig" -H 'Content-Type: application/json' \
//!   -d "$body" https://ci.example.com/hooks/generic/<job>
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
use super::{Event, GENERIC_MAX_SKEW_SECS, ParseError, Provider, PushParts, VerifyError, wrong};
use axum::http::HeaderMap;

/// The header carrying the timestamp.
pub const TIMESTAMP_HEADER: &str = "x-chengis-timestamp";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-chengis-signature";
/// The header carrying the (required, signed) delivery id.
pub const DELIVERY_HEADER: &str = "x-chengis-delivery";

/// Checks the delivery id's presence, the timestamp against `now_unix`, then the signature of
/// `"<delivery>.<timestamp>.<body>"` against each secret.
pub(super) fn verify(headers: &HeaderMap, body: &[u8], secrets: &[&[u8]], now_unix: i64) -> Result<(), VerifyError> {
    let delivery = match super::delivery_id(Provider::Generic, headers) {
        Some(id) => id,
        None if headers.contains_key(DELIVERY_HEADER) => {
            return Err(VerifyError::Malformed { header: DELIVERY_HEADER });
        }
        None => return Err(VerifyError::Missing { header: DELIVERY_HEADER }),
    };
    let timestamp = timestamp(headers)?;
    let signature = signature_bytes(headers, SIGNATURE_HEADER, Some("sha256="))?;
    let age_secs = now_unix.saturating_sub(timestamp.1);
    if age_secs.unsigned_abs() > GENERIC_MAX_SKEW_SECS.unsigned_abs() {
        return Err(VerifyError::Stale { age_secs });
    }
    hmac_matches(&signature, &[delivery.as_bytes(), b".", timestamp.0.as_bytes(), b".", body], secrets)
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
