//! Bounded JSON reading for webhook payloads: the nesting-depth check run before parsing, the
//! `payload` field of form-encoded bodies, and [`Node`], a view of a JSON value that knows its
//! path so that a missing field is reported as `pull_request.head.sha`.

use super::{MAX_JSON_DEPTH, ParseError};
use serde_json::Value;

/// Parses `body` as JSON after checking that it nests no deeper than [`MAX_JSON_DEPTH`].
pub(super) fn parse_bounded(body: &[u8]) -> Result<Value, ParseError> {
    if depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(ParseError::TooDeep { limit: MAX_JSON_DEPTH });
    }
    serde_json::from_slice(body).map_err(|e| ParseError::Invalid { message: e.to_string() })
}

/// Checks that `body` is JSON nested at most [`MAX_JSON_DEPTH`] deep, without building it.
pub(super) fn validate_bounded(body: &[u8]) -> Result<(), ParseError> {
    if depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(ParseError::TooDeep { limit: MAX_JSON_DEPTH });
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ParseError::Invalid { message: e.to_string() })
}

/// Whether the arrays and objects in `body` nest deeper than `limit`, counting brackets outside
/// strings. Runs in one pass without allocating; on text that is not JSON its answer only
/// decides whether the error is `TooDeep` or `Invalid`.
pub(super) fn depth_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    // Jump from structural byte to structural byte; inside a string, from quote or backslash
    // to the next (memchr scans whole words at a time).
    while let Some(found) = memchr::memchr3(b'"', b'[', b'{', &body[i..]).map(|k| i + k) {
        // Closing brackets between `i` and `found` lower the depth.
        depth = depth.saturating_sub(memchr::memchr2_iter(b']', b'}', &body[i..found]).count());
        match body[found] {
            b'"' => {
                let mut j = found + 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[j..]) {
                        Some(k) if body[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k + 1;
                            break;
                        }
                        None => return false,
                    }
                    if j >= body.len() {
                        return false;
                    }
                }
                i = j;
            }
            _ => {
                depth += 1;
                if depth > limit {
                    return true;
                }
                i = found + 1;
            }
        }
    }
    false
}

/// The decoded value of the first `name=` field of an `application/x-www-form-urlencoded` body.
pub(super) fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (percent_decode(key)? == name.as_bytes()).then(|| percent_decode(value)).flatten()
    })
}

/// Decodes `+` and `%XX`; `None` on a broken escape.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// A JSON value together with its path from the payload's root.
#[derive(Debug, Clone)]
pub(super) struct Node<'a> {
    /// The value.
    value: &'a Value,
    /// Its path, such as `pull_request.head` or `push.changes[0]`; empty at the root.
    path: String,
}

impl<'a> Node<'a> {
    /// The payload's root.
    pub(super) fn root(value: &'a Value) -> Self {
        Node { value, path: String::new() }
    }

    /// The path of `key` below this node.
    pub(super) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// The value at the dotted path `key` below this node; `None` when absent or null.
    pub(super) fn get(&self, key: &str) -> Option<Node<'a>> {
        let mut value = self.value;
        for part in key.split('.') {
            value = value.get(part)?;
        }
        (!value.is_null()).then(|| Node { value, path: self.path_of(key) })
    }

    /// Like [`Node::get`], but absent or null is [`ParseError::Missing`].
    pub(super) fn req(&self, key: &str) -> Result<Node<'a>, ParseError> {
        self.get(key).ok_or_else(|| ParseError::Missing { field: self.path_of(key) })
    }

    /// The string at `key`; `None` when absent, null or not a string.
    pub(super) fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|n| n.value.as_str())
    }

    /// The string at `key`, which must be present.
    pub(super) fn req_str(&self, key: &str) -> Result<&'a str, ParseError> {
        let node = self.req(key)?;
        node.value.as_str().ok_or(ParseError::WrongType { field: node.path, expected: "a string" })
    }

    /// The boolean at `key`; `None` when absent, null or not a boolean.
    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|n| n.value.as_bool())
    }

    /// The unsigned integer at `key`, which must be present.
    pub(super) fn req_u64(&self, key: &str) -> Result<u64, ParseError> {
        let node = self.req(key)?;
        node.value.as_u64().ok_or(ParseError::WrongType { field: node.path, expected: "an unsigned integer" })
    }

    /// The unsigned integer at `key`; `None` when absent, null or not one.
    pub(super) fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|n| n.value.as_u64())
    }

    /// The array at `key`; `None` when absent, null or not an array.
    pub(super) fn array(&self, key: &str) -> Option<&'a Vec<Value>> {
        self.get(key).and_then(|n| n.value.as_array())
    }

    /// The elements of the array at `key` as nodes (`key[0]`, `key[1]`, ...); `None` when
    /// absent, null or not an array.
    pub(super) fn items(&self, key: &str) -> Option<Vec<Node<'a>>> {
        let node = self.get(key)?;
        let items = node.value.as_array()?;
        Some(items.iter().enumerate().map(|(i, value)| Node { value, path: format!("{}[{i}]", node.path) }).collect())
    }

    /// This node's path.
    pub(super) fn path(&self) -> &str {
        &self.path
    }
}
