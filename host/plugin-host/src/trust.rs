//! Plugin identity and trust: the sha256 [`Digest`] of a component's bytes, and the
//! [`TrustPolicy`] through which the caller (the server, backed by its database) says which
//! digests may be instantiated.

use std::collections::HashSet;
use std::fmt;

use sha2::{Digest as _, Sha256};

/// The sha256 of a component's bytes: the identity that the trust allowlist pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Hashes component bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `sha256:` and the first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex()[..12])
    }

    /// Parses 64 hex digits, with or without a `sha256:` prefix.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Decides whether a component may be instantiated. The server implements it over its
/// allowlist table; [`Allowlist`] is the in-memory version.
pub trait TrustPolicy {
    /// Whether the component with this digest is allowed to run.
    fn is_allowed(&self, digest: &Digest) -> bool;
}

/// An in-memory set of allowed digests.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    allowed: HashSet<Digest>,
}

impl Allowlist {
    /// Adds a digest.
    pub fn allow(&mut self, digest: Digest) {
        self.allowed.insert(digest);
    }
}

impl FromIterator<Digest> for Allowlist {
    fn from_iter<I: IntoIterator<Item = Digest>>(iter: I) -> Self {
        Allowlist { allowed: iter.into_iter().collect() }
    }
}

impl TrustPolicy for Allowlist {
    fn is_allowed(&self, digest: &Digest) -> bool {
        self.allowed.contains(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_text() {
        let digest = Digest::of(b"component");
        assert_eq!(Digest::parse(&digest.to_string()), Some(digest));
        assert_eq!(Digest::parse(&digest.hex()), Some(digest));
        assert_eq!(Digest::parse("sha256:12"), None);
        assert!(digest.short().starts_with("sha256:") && digest.short().len() == 19);
    }

    #[test]
    fn allowlist_pins_exact_bytes() {
        let allowlist = Allowlist::from_iter([Digest::of(b"component")]);
        assert!(allowlist.is_allowed(&Digest::of(b"component")));
        assert!(!allowlist.is_allowed(&Digest::of(b"componenT")));
    }
}
