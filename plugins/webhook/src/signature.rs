//! Signing a delivery: `X-Chengis-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`
//! and the deterministic `X-Chengis-Delivery` id.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The `X-Chengis-Signature` value for `body` sent at `timestamp` (unix seconds), signed with `key`.
pub fn sign(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here; the fallback keeps
    // the plugin free of panics all the same.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A delivery id: the first 128 bits (hex) of SHA-256 over the build id, event kind, job name
/// and timestamp. The same event sent again (a retry) keeps its id, so receivers can drop
/// duplicates; two different events never share one.
pub fn delivery_id(build_id: u64, kind: &str, job: Option<&str>, timestamp: u64) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("{build_id}\n{kind}\n{}\n{timestamp}", job.unwrap_or("")).as_bytes());
    hex::encode(&hash.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hmac_of_timestamp_dot_body() {
        // The signed message is "<timestamp>.<body>", fed in three parts.
        let key = b"key";
        let signature = sign(key, 1700000000, b"{}");
        assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64, "{signature}");
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(signature, format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
        assert_ne!(signature, sign(key, 1700000001, b"{}"));
        assert_ne!(signature, sign(b"other", 1700000000, b"{}"));
    }

    #[test]
    fn matches_the_python_snippet_of_the_readme() {
        // `"sha256=" + hmac.new(b"s3cret-key", b"1700000000." + body, hashlib.sha256).hexdigest()`
        assert_eq!(
            sign(b"s3cret-key", 1700000000, br#"{"kind":"build-finished"}"#),
            "sha256=32e5bc3d30d40771f8edbe6b697c2bc01d6075e195b30be09121ccbcc589e6a4"
        );
    }

    #[test]
    fn known_vector() {
        // The widely published example HMAC_SHA256("key", "The quick brown fox ...").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let id = delivery_id(9, "build-finished", None, 1700000000);
        assert_eq!(id.len(), 32);
        assert_eq!(id, delivery_id(9, "build-finished", None, 1700000000));
        assert_ne!(id, delivery_id(9, "build-started", None, 1700000000));
        assert_ne!(id, delivery_id(9, "build-finished", Some("test"), 1700000000));
        assert_ne!(id, delivery_id(10, "build-finished", None, 1700000000));
        assert_ne!(id, delivery_id(9, "build-finished", None, 1700000001));
    }
}
