//! Strings with embedded `${{ }}` expressions.

use super::eval::{EvalContext, EvalError, to_display_string};
use super::{Expr, ExprError, parse};

/// A string with embedded `${{ }}` expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Literal text and expressions, in order.
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    /// Text as written.
    Literal(String),
    /// An expression.
    Expr {
        /// The parsed expression.
        expr: Expr,
        /// Its source (between `${{` and `}}`).
        source: String,
        /// Byte offset of the source in the template string.
        offset: usize,
    },
}

/// Finds the `}}` ending an expression that starts at `from`; `}}` inside a string literal
/// does not count.
fn end_of_expression(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = from;
    let mut in_string = false;
    while i < b.len() {
        match b[i] {
            b'\'' => in_string = !in_string,
            b'}' if !in_string && b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits `s` into literal text and parsed expressions; the first syntax error stops it.
pub fn parse_template(s: &str) -> Result<Template, ExprError> {
    let mut parts = Vec::new();
    let mut rest_start = 0;
    while let Some(found) = s[rest_start..].find("${{") {
        let open = rest_start + found;
        if open > rest_start {
            parts.push(TemplatePart::Literal(s[rest_start..open].to_string()));
        }
        let start = open + 3;
        let end = end_of_expression(s, start).ok_or_else(|| {
            ExprError::new(open, "`${{` is not closed by `}}`").with_help("end the expression with `}}`")
        })?;
        let source = &s[start..end];
        let expr = parse(source).map_err(|e| ExprError { offset: e.offset + start, ..e })?;
        parts.push(TemplatePart::Expr { expr, source: source.to_string(), offset: start });
        rest_start = end + 2;
    }
    if rest_start < s.len() || parts.is_empty() {
        parts.push(TemplatePart::Literal(s[rest_start..].to_string()));
    }
    Ok(Template { parts })
}

impl Template {
    /// True when it holds at least one expression.
    pub fn has_expressions(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, TemplatePart::Expr { .. }))
    }

    /// Every semantic problem of its expressions, at offsets in the template string.
    pub fn check(&self) -> Vec<ExprError> {
        self.parts
            .iter()
            .flat_map(|p| match p {
                TemplatePart::Expr { expr, offset, .. } => {
                    expr.check().into_iter().map(|e| ExprError { offset: e.offset + offset, ..e }).collect()
                }
                TemplatePart::Literal(_) => Vec::new(),
            })
            .collect()
    }

    /// The string with every expression replaced by its value.
    pub fn render(&self, ctx: &dyn EvalContext) -> Result<String, EvalError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Expr { expr, .. } => out.push_str(&to_display_string(&expr.eval(ctx)?)),
            }
        }
        Ok(out)
    }
}
