//! YAML loading: turns text into a tree of [`Node`]s that keep their source positions.
//!
//! We use `saphyr-parser` (the maintained successor of yaml-rust2) and build our own tree from
//! its event stream instead of a generic `Value`, for three reasons: every node keeps its span
//! for diagnostics; scalars keep their raw text, so `on`, `3.10` or `yes` are never turned into
//! booleans or floats behind the author's back (the model decides what a scalar means); and
//! aliases are shared (`Rc`) with their expanded size counted, so a "billion laughs" document
//! is refused after a bounded amount of work instead of exhausting memory.

use crate::diag::Pos;
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::rc::Rc;
use thiserror::Error;

/// The most nodes a document may expand to once aliases are followed.
pub const MAX_EXPANDED_NODES: u64 = 100_000;
/// The deepest nesting of collections accepted.
pub const MAX_DEPTH: usize = 64;

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: NodeKind,
    /// Where the node starts.
    pub pos: Pos,
    /// Character offset of the node's start in the source.
    pub start: usize,
    /// Character offset just past the node's end in the source.
    pub end: usize,
    /// How many nodes this one stands for once aliases are expanded (itself included).
    pub weight: u64,
}

/// The content of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar with its raw text and whether it was quoted or a block.
    Scalar {
        /// The scalar's text after YAML unescaping.
        value: String,
        /// True when the scalar was plain (unquoted, not a block).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Rc<Node>>),
    /// A mapping, in source order; duplicate keys are kept so the linter can report them.
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

impl Node {
    /// True for a plain `~`, `null`, `Null`, `NULL` or empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A short name of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// Why a document could not be loaded.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LoadError {
    /// The text is not valid YAML.
    #[error("invalid YAML: {message}")]
    Syntax {
        /// Where the parser stopped.
        pos: Pos,
        /// The parser's explanation.
        message: String,
    },
    /// Aliases expand to too many nodes.
    #[error(
        "YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes; refusing to load (is this a \"billion laughs\" document?)"
    )]
    TooLarge {
        /// The alias that crossed the limit.
        pos: Pos,
    },
    /// Collections nest too deeply.
    #[error("YAML nests deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The collection that crossed the limit.
        pos: Pos,
    },
    /// An alias names an anchor that does not exist (or is still open, i.e. recursive).
    #[error("alias refers to an unknown or recursive anchor")]
    BadAlias {
        /// The alias.
        pos: Pos,
    },
    /// The file holds more than one YAML document.
    #[error("a pipeline file holds exactly one YAML document; found a second one")]
    MultipleDocuments {
        /// The start of the second document.
        pos: Pos,
    },
    /// The file holds no document at all.
    #[error("the pipeline file is empty")]
    Empty,
}

impl LoadError {
    /// Where the problem is.
    pub fn pos(&self) -> Pos {
        match self {
            LoadError::Syntax { pos, .. }
            | LoadError::TooLarge { pos }
            | LoadError::TooDeep { pos }
            | LoadError::BadAlias { pos }
            | LoadError::MultipleDocuments { pos } => *pos,
            LoadError::Empty => Pos { line: 1, column: 1 },
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos { line: span.start.line() as u32, column: span.start.col() as u32 + 1 }
}

enum Open {
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>, Option<Rc<Node>>),
}

struct Frame {
    open: Open,
    anchor: usize,
    pos: Pos,
    start: usize,
    weight: u64,
}

/// Loads one YAML document; a file with no document, or only a null, is [`LoadError::Empty`].
pub fn load(src: &str) -> Result<Rc<Node>, LoadError> {
    let mut parser = Parser::new_from_str(src);
    let mut anchors: HashMap<usize, Rc<Node>> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Rc<Node>> = None;
    let mut total: u64 = 0;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| LoadError::Syntax {
            pos: Pos { line: e.marker().line() as u32, column: e.marker().col() as u32 + 1 },
            message: e.info().to_string(),
        })?;
        let pos = pos_of(&span);
        let finished: Option<(Rc<Node>, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                if root.is_some() {
                    return Err(LoadError::MultipleDocuments { pos });
                }
                None
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let node = Node {
                    kind: NodeKind::Scalar { value: value.into_owned(), plain: style == ScalarStyle::Plain },
                    pos,
                    start: span.start.index(),
                    end: span.end.index(),
                    weight: 1,
                };
                Some((Rc::new(node), anchor))
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or(LoadError::BadAlias { pos })?;
                Some((node, 0))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(LoadError::TooDeep { pos });
                }
                let open = if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq(Vec::new())
                } else {
                    Open::Map(Vec::new(), None)
                };
                stack.push(Frame { open, anchor, pos, start: span.start.index(), weight: 1 });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame =
                    stack.pop().ok_or(LoadError::Syntax { pos, message: "unbalanced collection end".into() })?;
                let kind = match frame.open {
                    Open::Seq(items) => NodeKind::Seq(items),
                    Open::Map(entries, _) => NodeKind::Map(entries),
                };
                let node =
                    Node { kind, pos: frame.pos, start: frame.start, end: span.end.index(), weight: frame.weight };
                Some((Rc::new(node), frame.anchor))
            }
        };
        let Some((node, anchor)) = finished else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        total = total.saturating_add(node.weight);
        if total > MAX_EXPANDED_NODES.saturating_mul(4) || node.weight > MAX_EXPANDED_NODES {
            return Err(LoadError::TooLarge { pos });
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(frame) => {
                frame.weight = frame.weight.saturating_add(node.weight);
                if frame.weight > MAX_EXPANDED_NODES {
                    return Err(LoadError::TooLarge { pos });
                }
                match &mut frame.open {
                    Open::Seq(items) => items.push(node),
                    Open::Map(entries, key) => match key.take() {
                        None => *key = Some(node),
                        Some(k) => entries.push((k, node)),
                    },
                }
            }
        }
    }
    match root {
        Some(r) if !r.is_null() => Ok(r),
        _ => Err(LoadError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_raw_scalars() {
        let root = load("on: push\npython: 3.10\nx: [yes, '1']\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else { panic!("not a map") };
        assert_eq!(entries[0].0.as_scalar(), Some("on"));
        assert_eq!(entries[1].1.as_scalar(), Some("3.10"));
        assert_eq!(entries[1].1.pos, Pos { line: 2, column: 9 });
        let NodeKind::Seq(items) = &entries[2].1.kind else { panic!("not a seq") };
        assert_eq!(items[0].as_scalar(), Some("yes"));
    }

    #[test]
    fn aliases_are_shared() {
        let root = load("a: &x {k: v}\nb: *x\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else { panic!() };
        assert!(Rc::ptr_eq(&entries[0].1, &entries[1].1));
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        let mut doc =
            String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!("a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
        }
        let start = std::time::Instant::now();
        let err = load(&doc).unwrap_err();
        assert!(matches!(err, LoadError::TooLarge { .. }), "{err:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(load(&doc), Err(LoadError::TooDeep { .. })));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = load("a: b\n  c: d\n").unwrap_err();
        assert!(matches!(err, LoadError::Syntax { .. }));
        assert_eq!(err.pos().line, 2);
    }

    #[test]
    fn empty_and_multi_document() {
        assert_eq!(load("").unwrap_err(), LoadError::Empty);
        assert_eq!(load("# only a comment\n").unwrap_err(), LoadError::Empty);
        assert!(matches!(load("a: 1\n---\nb: 2\n"), Err(LoadError::MultipleDocuments { .. })));
    }
}
