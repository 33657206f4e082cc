//! Constant-time authenticity checks shared by the providers: an HMAC-SHA256 hex signature in a
//! header (GitHub, Gitea, Bitbucket, the generic format) and a shared token (GitLab).

use super::{VerifyError, header_str};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// HMAC-SHA256.
type HmacSha256 = Hmac<Sha256>;

/// Checks the header `name`, `prefix` + hex HMAC-SHA256 of `body`, against each secret. The hex
/// digits may be of either case; `None` as prefix also tolerates a `sha256=` prefix.
pub(super) fn hmac_header(
    headers: &HeaderMap,
    name: &'static str,
    prefix: Option<&str>,
    body: &[u8],
    secrets: &[&[u8]],
) -> Result<(), VerifyError> {
    let signature = signature_bytes(headers, name, prefix)?;
    hmac_matches(&signature, &[body], secrets)
}

/// Reads and hex-decodes a 32-byte signature from the header `name`.
pub(super) fn signature_bytes(
    headers: &HeaderMap,
    name: &'static str,
    prefix: Option<&str>,
) -> Result<Vec<u8>, VerifyError> {
    let raw = headers.get(name).ok_or(VerifyError::Missing { header: name })?;
    let text = raw.to_str().map_err(|_| VerifyError::Malformed { header: name })?.trim();
    let hex_digits = match prefix {
        Some(prefix) => text.strip_prefix(prefix).ok_or(VerifyError::Malformed { header: name })?,
        None => text.strip_prefix("sha256=").unwrap_or(text),
    };
    let bytes = hex::decode(hex_digits).map_err(|_| VerifyError::Malformed { header: name })?;
    if bytes.len() != 32 {
        return Err(VerifyError::Malformed { header: name });
    }
    Ok(bytes)
}

/// Whether `signature` is the HMAC-SHA256 of the concatenated `parts` under any of `secrets`.
/// Every secret is tried (no early exit), each comparison in constant time.
pub(super) fn hmac_matches(signature: &[u8], parts: &[&[u8]], secrets: &[&[u8]]) -> Result<(), VerifyError> {
    let mut matched = false;
    for secret in secrets {
        // HMAC accepts keys of any length, so this never fails; a failure would only mean "no match".
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else { continue };
        for part in parts {
            mac.update(part);
        }
        matched |= mac.verify_slice(signature).is_ok();
    }
    if matched { Ok(()) } else { Err(VerifyError::Mismatch) }
}

/// Checks a shared token in the header `name` against each secret. Both sides are hashed first,
/// so the comparison takes the same time whatever the lengths.
pub(super) fn token_header(headers: &HeaderMap, name: &'static str, secrets: &[&[u8]]) -> Result<(), VerifyError> {
    if headers.get(name).is_none() {
        return Err(VerifyError::Missing { header: name });
    }
    let token = header_str(headers, name).ok_or(VerifyError::Malformed { header: name })?;
    let token_digest = Sha256::digest(token.as_bytes());
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        matched |= Sha256::digest(secret).ct_eq(&token_digest);
    }
    if bool::from(matched) { Ok(()) } else { Err(VerifyError::Mismatch) }
}
