//! From the YAML node tree to the typed model, reporting every problem with its position.
//!
//! `Decoder` holds the reading primitives (mappings with known keys, strings, lists, booleans,
//! durations, environment maps); `pipeline.rs` uses them to fill each model type. The decoder
//! never stops at the first problem: it records a diagnostic, skips the bad node and goes on.

mod pipeline;

use crate::diag::{Diagnostics, Pos, did_you_mean};
use crate::duration::parse_duration;
use crate::model::Pipeline;
use crate::yaml::{Node, NodeKind};
use indexmap::IndexMap;
use std::collections::HashMap;
use std::rc::Rc;

/// Where each node of the model came from, by field path (`jobs.build.steps[0].run`).
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    nodes: HashMap<String, Rc<Node>>,
}

impl SpanIndex {
    /// The node at `path`, if one was read there.
    pub fn node(&self, path: &str) -> Option<&Rc<Node>> {
        self.nodes.get(path)
    }

    /// The position of `path`, or of its closest recorded parent, or the file start.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(n) = self.nodes.get(p) {
                return n.pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }
}

/// The decoded pipeline and the positions of its nodes.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The model, with bad nodes left at their defaults.
    pub pipeline: Pipeline,
    /// Positions by field path.
    pub spans: SpanIndex,
}

/// Decodes `root` into a [`Pipeline`], recording problems in `diags`.
pub fn decode(root: &Rc<Node>, diags: &mut Diagnostics) -> Decoded {
    let mut d = Decoder { diags, spans: SpanIndex::default() };
    let pipeline = d.pipeline(root);
    Decoded { pipeline, spans: d.spans }
}

/// Joins a field path and a key.
pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Joins a field path and a list index.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// One entry of a mapping: its key text and value, with the key's node for positions.
pub(crate) struct Entry {
    pub key: String,
    pub key_node: Rc<Node>,
    pub value: Rc<Node>,
}

pub(crate) struct Decoder<'a> {
    pub diags: &'a mut Diagnostics,
    pub spans: SpanIndex,
}

impl Decoder<'_> {
    pub fn record(&mut self, path: &str, node: &Rc<Node>) {
        self.spans.nodes.insert(path.to_string(), node.clone());
    }

    pub fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        self.diags.error("wrong-type", node.pos, path, format!("expected {expected}, found {}", node.type_name()));
    }

    /// Reads a mapping. With a non-empty `known`, unknown keys are reported (with a
    /// suggestion) and left out. `<<` merge keys are expanded; later keys win over merged ones.
    pub fn map(&mut self, node: &Rc<Node>, path: &str, known: &[&str]) -> Option<Vec<Entry>> {
        self.record(path, node);
        let NodeKind::Map(raw) = &node.kind else {
            self.wrong_type(node, path, "a mapping");
            return None;
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (k, v) in raw {
            let Some(key) = k.as_scalar().filter(|_| !k.is_null()) else {
                self.diags.error("wrong-type", k.pos, path, format!("a key must be a string, found {}", k.type_name()));
                continue;
            };
            if key == "<<" {
                self.merge(v, path, &mut entries);
                continue;
            }
            if let Some(first) = seen.get(key) {
                let code = if path == "jobs" { "duplicate-job" } else { "duplicate-key" };
                let what = if path == "jobs" { "job id" } else { "key" };
                self.diags
                    .error(code, k.pos, &child(path, key), format!("duplicate {what} `{key}`"))
                    .help(format!("`{key}` is already defined at line {}", first.line));
                continue;
            }
            seen.insert(key.to_string(), k.pos);
            if !known.is_empty() && !known.contains(&key) {
                let d = self.diags.error("unknown-key", k.pos, &child(path, key), format!("unknown key `{key}`"));
                match did_you_mean(key, known.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("valid keys here: {}", known.join(", "))),
                };
                continue;
            }
            entries.retain(|e| e.key != key);
            entries.push(Entry { key: key.to_string(), key_node: k.clone(), value: v.clone() });
        }
        Some(entries)
    }

    fn merge(&mut self, v: &Rc<Node>, path: &str, entries: &mut Vec<Entry>) {
        let sources: Vec<Rc<Node>> = match &v.kind {
            NodeKind::Seq(items) => items.clone(),
            _ => vec![v.clone()],
        };
        for s in sources {
            let NodeKind::Map(raw) = &s.kind else {
                self.diags.error("wrong-type", s.pos, path, "a `<<` merge key takes a mapping or a list of mappings");
                continue;
            };
            for (k, val) in raw {
                if let Some(key) = k.as_scalar()
                    && !entries.iter().any(|e| e.key == key)
                {
                    entries.push(Entry { key: key.to_string(), key_node: k.clone(), value: val.clone() });
                }
            }
        }
    }

    /// Reports required keys missing from `entries`.
    pub fn require(&mut self, node: &Node, path: &str, entries: &[Entry], keys: &[&str]) {
        for key in keys {
            if !entries.iter().any(|e| e.key == *key) {
                self.diags.error("missing-key", node.pos, path, format!("missing required key `{key}`"));
            }
        }
    }

    /// Reads a scalar as a string (numbers and booleans keep their text: `3.10` stays "3.10").
    pub fn string(&mut self, node: &Rc<Node>, path: &str) -> Option<String> {
        self.record(path, node);
        if node.is_null() {
            self.wrong_type(node, path, "a string");
            return None;
        }
        match node.as_scalar() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// Reads a list of strings; with `single`, a lone string is a list of one.
    pub fn strings(&mut self, node: &Rc<Node>, path: &str, single: bool) -> Vec<String> {
        self.record(path, node);
        match &node.kind {
            NodeKind::Seq(items) => {
                items.iter().enumerate().filter_map(|(i, item)| self.string(item, &index(path, i))).collect()
            }
            NodeKind::Scalar { .. } if single && !node.is_null() => self.string(node, path).into_iter().collect(),
            _ => {
                self.wrong_type(node, path, if single { "a string or a list of strings" } else { "a list of strings" });
                Vec::new()
            }
        }
    }

    /// Reads a list, calling `item` for each element.
    pub fn list<T>(
        &mut self,
        node: &Rc<Node>,
        path: &str,
        mut item: impl FnMut(&mut Self, &Rc<Node>, &str) -> Option<T>,
    ) -> Vec<T> {
        self.record(path, node);
        let NodeKind::Seq(items) = &node.kind else {
            self.wrong_type(node, path, "a list");
            return Vec::new();
        };
        items.iter().enumerate().filter_map(|(i, n)| item(self, n, &index(path, i))).collect()
    }

    /// Reads a YAML boolean (`true`/`false`, any case); quoted strings are not booleans.
    pub fn boolean(&mut self, node: &Rc<Node>, path: &str) -> Option<bool> {
        self.record(path, node);
        match &node.kind {
            NodeKind::Scalar { value, plain: true } => match value.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    self.diags.error(
                        "wrong-type",
                        node.pos,
                        path,
                        format!("expected `true` or `false`, found `{value}`"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, path, "`true` or `false`");
                None
            }
        }
    }

    /// Reads a non-negative integer.
    pub fn number<T: std::str::FromStr>(&mut self, node: &Rc<Node>, path: &str, what: &str) -> Option<T> {
        let s = self.string(node, path)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.diags.error("wrong-type", node.pos, path, format!("expected {what}, found `{s}`"));
                None
            }
        }
    }

    /// Reads a duration such as `90s`, `5m`, `1h30m` (a bare number is seconds).
    pub fn duration(&mut self, node: &Rc<Node>, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.contains("${{") {
            return Some(s);
        }
        match parse_duration(&s) {
            Ok(_) => Some(s),
            Err(e) => {
                self.diags
                    .error("invalid-duration", node.pos, path, format!("invalid duration `{s}`: {e}"))
                    .help("write a number with a unit: `90s`, `5m`, `1h30m`, `2d` (units ms, s, m, h, d)");
                None
            }
        }
    }

    /// Reads a map of scalars (environment, `with:`); with `env_names`, keys must be valid
    /// environment variable names.
    pub fn scalar_map(&mut self, node: &Rc<Node>, path: &str, env_names: bool) -> IndexMap<String, String> {
        let Some(entries) = self.map(node, path, &[]) else {
            return IndexMap::new();
        };
        let mut out = IndexMap::new();
        for e in entries {
            let p = child(path, &e.key);
            if env_names && !is_env_name(&e.key) {
                self.diags
                    .error(
                        "invalid-name",
                        e.key_node.pos,
                        &p,
                        format!("`{}` is not a valid environment variable name", e.key),
                    )
                    .help("use letters, digits and `_`, not starting with a digit");
                continue;
            }
            self.record(&p, &e.value);
            let value = if e.value.is_null() {
                Some(String::new())
            } else if let Some(s) = e.value.as_scalar() {
                Some(s.to_string())
            } else {
                self.wrong_type(&e.value, &p, "a string, number or boolean");
                None
            };
            if let Some(v) = value {
                out.insert(e.key, v);
            }
        }
        out
    }
}

/// The position of the character at byte `offset` of a scalar's value, found by locating the
/// value's text in the source; falls back to the node's start.
pub fn pos_in(src: &str, node: &Node, value: &str, offset: usize) -> Pos {
    if offset > 0 && offset >= value.trim_end().len() {
        // The end of the value (an expression that stops too early): just after its last character.
        let last = value.trim_end().len().saturating_sub(1);
        let at = (0..=last).rev().find(|i| value.is_char_boundary(*i)).unwrap_or(0);
        let p = pos_in(src, node, value, at);
        return Pos { line: p.line, column: p.column + 1 };
    }
    let needle: String = value.get(offset..).unwrap_or("").lines().next().unwrap_or("").chars().take(24).collect();
    let start = src.char_indices().nth(node.start).map_or(src.len(), |(b, _)| b);
    let end = src.char_indices().nth(node.end).map_or(src.len(), |(b, _)| b);
    let raw = src.get(start..end).unwrap_or("");
    if needle.is_empty() {
        return node.pos;
    }
    // The k-th occurrence of the needle in the value is its k-th occurrence in the source.
    let nth = value.get(..offset).map_or(0, |before| before.matches(needle.as_str()).count());
    let Some((at, _)) = raw.match_indices(needle.as_str()).nth(nth) else {
        return node.pos;
    };
    let before = &raw[..at];
    match before.rfind('\n') {
        None => Pos { line: node.pos.line, column: node.pos.column + before.chars().count() as u32 },
        Some(nl) => Pos {
            line: node.pos.line + before.matches('\n').count() as u32,
            column: before[nl + 1..].chars().count() as u32 + 1,
        },
    }
}

/// True for a valid environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
