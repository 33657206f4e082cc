//! Secret masking: every secret value (and each line of a multi-line one) becomes `***`, also
//! when a value arrives split across two reads of a pipe.

use aho_corasick::{AhoCorasick, MatchKind};
use thiserror::Error;

/// The shortest secret accepted; shorter values would mask half the log.
pub const MIN_SECRET_LEN: usize = 4;
const MASK: &[u8] = b"***";

/// A secret that cannot be masked safely.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaskError {
    /// A value (or a line of a multi-line value) is too short. The value itself is never shown.
    #[error(
        "secret #{index} (or one of its lines) is {len} characters long; secrets must have at least {MIN_SECRET_LEN}, because masking shorter values would hide ordinary text all over the log"
    )]
    TooShort {
        /// 1-based position of the secret in the list given.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The matcher could not be built.
    #[error("cannot build the secret matcher: {0}")]
    Build(String),
}

/// Masks a fixed set of secrets.
#[derive(Debug, Clone)]
pub struct SecretMasker {
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl SecretMasker {
    /// A masker for `secrets`; each line of a multi-line secret is masked on its own.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Result<SecretMasker, MaskError> {
        let mut patterns: Vec<String> = Vec::new();
        for (i, secret) in secrets.into_iter().enumerate() {
            let mut parts: Vec<&str> = vec![secret.as_str()];
            if secret.contains('\n') {
                parts.extend(secret.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()));
            }
            for p in parts {
                let len = p.chars().count();
                if len < MIN_SECRET_LEN {
                    return Err(MaskError::TooShort { index: i + 1, len });
                }
                patterns.push(p.to_string());
            }
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| MaskError::Build(e.to_string()))?,
            )
        };
        Ok(SecretMasker { matcher, longest })
    }

    /// A masker that masks nothing.
    pub fn none() -> SecretMasker {
        SecretMasker { matcher: None, longest: 0 }
    }

    /// Masks a whole string at once.
    pub fn mask_str(&self, s: &str) -> String {
        match &self.matcher {
            None => s.to_string(),
            Some(m) => m.replace_all(s, &vec!["***"; m.patterns_len()]),
        }
    }

    /// A streaming masker for one output stream.
    pub fn stream(&self) -> MaskStream {
        MaskStream { masker: self.clone(), pending: Vec::new() }
    }
}

/// Masks a stream fed in chunks, holding back just enough bytes to catch a secret split
/// across two chunks.
#[derive(Debug)]
pub struct MaskStream {
    masker: SecretMasker,
    pending: Vec<u8>,
}

impl MaskStream {
    /// Masks `chunk` (after what was held back) and appends what is final to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(matcher) = &self.masker.matcher else {
            out.extend_from_slice(chunk);
            return;
        };
        self.pending.extend_from_slice(chunk);
        let len = self.pending.len();
        // A match starting before `safe` is final: any longer candidate fits in the buffer.
        let safe = len.saturating_sub(self.masker.longest - 1);
        let mut cursor = 0;
        for m in matcher.find_iter(&self.pending) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&self.pending[cursor..m.start()]);
            out.extend_from_slice(MASK);
            cursor = m.end();
        }
        let emit_to = cursor.max(safe);
        out.extend_from_slice(&self.pending[cursor..emit_to]);
        self.pending.drain(..emit_to);
    }

    /// Masks and emits whatever is still held back (end of stream).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.pending);
        match &self.masker.matcher {
            None => out.extend_from_slice(&rest),
            Some(m) => {
                let mut cursor = 0;
                for found in m.find_iter(&rest) {
                    out.extend_from_slice(&rest[cursor..found.start()]);
                    out.extend_from_slice(MASK);
                    cursor = found.end();
                }
                out.extend_from_slice(&rest[cursor..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> SecretMasker {
        SecretMasker::new(secrets.iter().map(|s| s.to_string())).unwrap()
    }

    fn stream_all(m: &SecretMasker, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = m.stream();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn masks_every_split_point() {
        let m = masker(&["hunter22", "abcd", "abcdef"]);
        let text = b"x hunter22 y abcdef z abcd! abcdefabcd";
        let want = b"x *** y *** z ***! ******".to_vec();
        for split in 0..=text.len() {
            assert_eq!(stream_all(&m, &[&text[..split], &text[split..]]), want, "split at {split}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(stream_all(&m, &bytes), want);
    }

    #[test]
    fn longest_overlapping_secret_wins() {
        assert_eq!(masker(&["abcd", "abcdef"]).mask_str("abcdefg"), "***g");
    }

    #[test]
    fn multi_line_secret_lines_are_masked() {
        let m = masker(&["first-line\r\nsecond-line\n"]);
        assert_eq!(m.mask_str("a first-line b second-line c"), "a *** b *** c");
    }

    #[test]
    fn too_short_is_refused_without_showing_it() {
        let err = SecretMasker::new(["good-secret".to_string(), "abc".to_string()]).unwrap_err();
        assert_eq!(err, MaskError::TooShort { index: 2, len: 3 });
        assert!(!err.to_string().contains("abc"));
        assert!(SecretMasker::new(["long-enough\nab".to_string()]).is_err());
    }

    #[test]
    fn binary_output_passes_through() {
        let m = masker(&["s3cr3t"]);
        let data: Vec<u8> = (0..=255u8).chain(*b"s3cr3t").chain(0..=255u8).collect();
        let out = stream_all(&m, &[&data[..100], &data[100..]]);
        assert_eq!(out.len(), data.len() - 3);
        assert!(out.windows(3).any(|w| w == b"***"));
    }

    #[test]
    fn no_secrets_is_identity() {
        let m = SecretMasker::none();
        assert_eq!(stream_all(&m, &[b"abc", b"def"]), b"abcdef");
    }
}
