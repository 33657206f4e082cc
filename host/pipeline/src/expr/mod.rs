//! The `${{ }}` expression language: GitHub-Actions-like literals, contexts, operators and
//! functions, with a real parser, semantic checks at byte offsets, and an evaluator over JSON
//! values.
//!
//! - `lexer`: text to tokens with offsets.
//! - `parser`: tokens to an [`Expr`] (precedence: `!`, comparisons, `==`/`!=`, `&&`, `||`).
//! - `eval`: the evaluator, loose equality and truthiness.
//! - `functions`: the function table and implementations.
//! - `template`: strings with embedded `${{ }}`.

mod eval;
mod functions;
mod lexer;
mod parser;
mod template;

pub use eval::{EvalContext, EvalError, Status, to_display_string, truthy};
pub use template::{Template, TemplatePart, parse_template};

use crate::diag::did_you_mean;
use thiserror::Error;

/// The contexts an expression may read.
pub const CONTEXTS: &[&str] = &["env", "params", "secrets", "matrix", "git", "build", "needs", "steps"];
/// Longest expression source accepted.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A problem in an expression, at a byte offset of its source.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ExprError {
    /// Byte offset into the source given to [`parse`] (or the template).
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when known.
    pub help: Option<String>,
}

impl ExprError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError { offset, message: message.into(), help: None }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// A node of the syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Lit(serde_json::Value),
    Context { name: String, offset: usize },
    Prop(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call { name: String, offset: usize, args: Vec<Node> },
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub(crate) root: Node,
}

/// Parses the text between `${{` and `}}`; stops at the first syntax error.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    if src.len() > MAX_SOURCE {
        return Err(ExprError::new(
            0,
            format!("the expression is {} bytes, more than the limit of {MAX_SOURCE}", src.len()),
        ));
    }
    let tokens = lexer::lex(src)?;
    Ok(Expr { root: parser::parse(&tokens, src.len())? })
}

impl Expr {
    /// Every semantic problem: unknown contexts, unknown functions, wrong numbers of arguments.
    pub fn check(&self) -> Vec<ExprError> {
        let mut errors = Vec::new();
        walk(&self.root, &mut |n| match n {
            Node::Context { name, offset } if !CONTEXTS.contains(&name.as_str()) => {
                let e = ExprError::new(*offset, format!("unknown context `{name}`"));
                errors.push(match did_you_mean(name, CONTEXTS.iter().copied()) {
                    Some(s) => e.with_help(format!("did you mean `{s}`? contexts: {}", CONTEXTS.join(", "))),
                    None => e.with_help(format!("contexts: {}", CONTEXTS.join(", "))),
                });
            }
            Node::Call { name, offset, args } => match functions::lookup(name) {
                None => {
                    let e = ExprError::new(*offset, format!("unknown function `{name}`"));
                    let names = functions::names();
                    errors.push(match did_you_mean(name, names.iter().copied()) {
                        Some(s) => e.with_help(format!("did you mean `{s}`?")),
                        None => e.with_help(format!("functions: {}", names.join(", "))),
                    });
                }
                Some(f) if args.len() < f.min || args.len() > f.max => {
                    let takes = match (f.min, f.max) {
                        (a, b) if a == b => format!("{a}"),
                        (a, usize::MAX) => format!("at least {a}"),
                        (a, b) => format!("{a} to {b}"),
                    };
                    errors.push(ExprError::new(
                        *offset,
                        format!(
                            "`{}` takes {takes} argument{}, found {}",
                            f.name,
                            if f.max == 1 || (f.min == 1 && f.max == usize::MAX) { "" } else { "s" },
                            args.len()
                        ),
                    ));
                }
                Some(_) => {}
            },
            _ => {}
        });
        errors
    }

    /// True when it calls `success`, `failure`, `always` or `cancelled`.
    pub fn uses_status_function(&self) -> bool {
        let mut found = false;
        walk(&self.root, &mut |n| {
            if let Node::Call { name, .. } = n
                && functions::lookup(name).is_some_and(|f| f.status)
            {
                found = true;
            }
        });
        found
    }

    /// Context reads with their static path (`needs.build.outputs.v` gives
    /// `("needs", ["build", "outputs", "v"])`); a dynamic index ends the path.
    pub fn contexts(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        chains(&self.root, false, &mut out);
        out
    }

    /// Evaluates against `ctx`.
    pub fn eval(&self, ctx: &dyn EvalContext) -> Result<serde_json::Value, EvalError> {
        eval::eval(&self.root, ctx)
    }
}

fn walk(node: &Node, f: &mut dyn FnMut(&Node)) {
    f(node);
    match node {
        Node::Lit(_) | Node::Context { .. } => {}
        Node::Prop(inner, _) | Node::Not(inner) => walk(inner, f),
        Node::Index(a, b) | Node::Bin(_, a, b) => {
            walk(a, f);
            walk(b, f);
        }
        Node::Call { args, .. } => args.iter().for_each(|a| walk(a, f)),
    }
}

fn static_path(node: &Node) -> Option<(String, Vec<String>)> {
    match node {
        Node::Context { name, .. } => Some((name.clone(), Vec::new())),
        Node::Prop(inner, key) => static_path(inner).map(|(c, mut p)| {
            p.push(key.clone());
            (c, p)
        }),
        Node::Index(inner, idx) => {
            let (c, mut p) = static_path(inner)?;
            if let Node::Lit(serde_json::Value::String(s)) = idx.as_ref() {
                p.push(s.clone());
            }
            Some((c, p))
        }
        _ => None,
    }
}

fn chains(node: &Node, in_chain: bool, out: &mut Vec<(String, Vec<String>)>) {
    match node {
        Node::Context { .. } | Node::Prop(..) | Node::Index(..) if !in_chain => {
            if let Some(p) = static_path(node) {
                out.push(p);
            }
            chains_inner(node, out);
        }
        _ => chains_inner(node, out),
    }
}

fn chains_inner(node: &Node, out: &mut Vec<(String, Vec<String>)>) {
    match node {
        Node::Lit(_) | Node::Context { .. } => {}
        Node::Prop(inner, _) => chains(inner, true, out),
        Node::Index(inner, idx) => {
            chains(inner, true, out);
            chains(idx, false, out);
        }
        Node::Not(inner) => chains(inner, false, out),
        Node::Bin(_, a, b) => {
            chains(a, false, out);
            chains(b, false, out);
        }
        Node::Call { args, .. } => args.iter().for_each(|a| chains(a, false, out)),
    }
}

#[cfg(test)]
mod tests;
