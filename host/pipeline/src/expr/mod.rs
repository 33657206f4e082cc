//! The `${{ }}` expression language: GitHub-Actions-like literals, contexts, operators and
//! functions, with a real parser, semantic checks at byte offsets, and an evaluator over JSON
//! values.
//!
//! Semantics follow GitHub Actions: values are [`serde_json::Value`]; `==` is loose (different
//! types compare as numbers, strings ignore case); `&&`/`||` short-circuit and return an
//! operand; reading a missing property gives `null`, never an error; names of contexts,
//! properties and functions ignore case.
//!
//! - `lexer`: text to tokens with offsets.
//! - `parser`: tokens to an [`Expr`] (precedence from tightest: `.`/`[]`/calls, `!`,
//!   `< <= > >=`, `== !=`, `&&`, `||`), with the size and nesting limits.
//! - `eval`: the evaluator, coercion, loose equality and truthiness.
//! - `functions`: the function table (arity, usage) and implementations.
//! - `template`: strings with embedded `${{ }}`.

mod eval;
mod functions;
mod lexer;
mod parser;
mod template;

pub use eval::{EvalContext, EvalError, Status, to_display_string, truthy};
pub use template::{Template, TemplatePart, parse_template};

use thiserror::Error;

/// The contexts an expression may read.
pub const CONTEXTS: &[&str] = &["env", "params", "secrets", "matrix", "git", "build", "needs", "steps"];
/// Longest expression source accepted, in bytes.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting accepted: each parenthesis, index bracket, function call, `!` and chained
/// comparison is a level.
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

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A node of the syntax tree. Chains (`a.b[c].d`, `x && y && z`) are flat so that long
/// ones do not make a deep tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Lit(serde_json::Value),
    /// A context name as written, at its offset.
    Context {
        name: String,
        offset: usize,
    },
    /// `base.prop[index]...`.
    Access {
        base: Box<Node>,
        steps: Vec<Step>,
    },
    Not(Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    /// A function call; `offset` is that of the name.
    Call {
        name: String,
        offset: usize,
        args: Vec<Node>,
    },
}

/// One step of an access chain.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// `.name`
    Prop(String),
    /// `[expr]`
    Index(Node),
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

/// The canonical name of a known context, matched case-insensitively like GitHub Actions.
pub(crate) fn known_context(name: &str) -> Option<&'static str> {
    CONTEXTS.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

impl Expr {
    /// Every semantic problem: unknown contexts, unknown functions, wrong numbers of arguments,
    /// in source order, at offsets into the source given to [`parse`].
    pub fn check(&self) -> Vec<ExprError> {
        let mut errors = Vec::new();
        walk(&self.root, &mut |n| match n {
            Node::Context { name, offset } if known_context(name).is_none() => {
                let e = ExprError::new(*offset, format!("unknown context `{name}`"));
                let list = CONTEXTS.join(", ");
                errors.push(match suggest(name, CONTEXTS) {
                    Some(s) => e.with_help(format!("did you mean `{s}`? contexts: {list}")),
                    None => e.with_help(format!("contexts: {list}")),
                });
            }
            Node::Call { name, offset, args } => match functions::lookup(name) {
                None => {
                    let e = ExprError::new(*offset, format!("unknown function `{name}`"));
                    let list = functions::names().join(", ");
                    errors.push(match suggest(name, &functions::names()) {
                        Some(s) => e.with_help(format!("did you mean `{s}`? functions: {list}")),
                        None => e.with_help(format!("functions: {list}")),
                    });
                }
                Some(f) if !f.accepts(args.len()) => {
                    errors.push(
                        ExprError::new(*offset, f.arity_message(args.len())).with_help(format!("usage: {}", f.usage)),
                    );
                }
                Some(_) => {}
            },
            _ => {}
        });
        errors
    }

    /// True when it calls `success`, `failure`, `always` or `cancelled` (then a job or step
    /// `if` does not get the implicit `success() &&`).
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

    /// Context reads with their static path: `needs.build.outputs.v` gives
    /// `("needs", ["build", "outputs", "v"])`, `env['X-Y']` gives `("env", ["X-Y"])`. The path
    /// ends at the first index that is not a string literal; contexts inside such an index are
    /// listed after the chain. Known context names are given in their canonical (lowercase)
    /// spelling.
    pub fn contexts(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        context_chains(&self.root, &mut out);
        out
    }

    /// Evaluates against `ctx`.
    pub fn eval(&self, ctx: &dyn EvalContext) -> Result<serde_json::Value, EvalError> {
        eval::eval(&self.root, ctx)
    }
}

/// The closest of `candidates` to `name`, ignoring case, when it is close enough to be a typo.
fn suggest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&name, &c.to_ascii_lowercase()), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Collects the context chains under `node` for [`Expr::contexts`].
fn context_chains(node: &Node, out: &mut Vec<(String, Vec<String>)>) {
    let (name, steps): (&String, &[Step]) = match node {
        Node::Context { name, .. } => (name, &[]),
        Node::Access { base, steps } => match base.as_ref() {
            Node::Context { name, .. } => (name, steps),
            other => {
                context_chains(other, out);
                for s in steps {
                    if let Step::Index(i) = s {
                        context_chains(i, out);
                    }
                }
                return;
            }
        },
        Node::Lit(_) => return,
        Node::Not(inner) => return context_chains(inner, out),
        Node::Cmp(_, a, b) => {
            context_chains(a, out);
            return context_chains(b, out);
        }
        Node::And(items) | Node::Or(items) | Node::Call { args: items, .. } => {
            return items.iter().for_each(|i| context_chains(i, out));
        }
    };
    let path = steps
        .iter()
        .map_while(|s| match s {
            Step::Prop(p) => Some(p.clone()),
            Step::Index(Node::Lit(serde_json::Value::String(p))) => Some(p.clone()),
            Step::Index(_) => None,
        })
        .collect();
    out.push((known_context(name).map_or_else(|| name.clone(), str::to_string), path));
    for s in steps {
        if let Step::Index(i) = s {
            context_chains(i, out);
        }
    }
}

/// Visits `node` and everything under it, parents first, in source order.
fn walk(node: &Node, f: &mut dyn FnMut(&Node)) {
    f(node);
    match node {
        Node::Lit(_) | Node::Context { .. } => {}
        Node::Access { base, steps } => {
            walk(base, f);
            for s in steps {
                if let Step::Index(i) = s {
                    walk(i, f);
                }
            }
        }
        Node::Not(inner) => walk(inner, f),
        Node::Cmp(_, a, b) => {
            walk(a, f);
            walk(b, f);
        }
        Node::And(items) | Node::Or(items) | Node::Call { args: items, .. } => items.iter().for_each(|a| walk(a, f)),
    }
}

#[cfg(test)]
mod tests;
