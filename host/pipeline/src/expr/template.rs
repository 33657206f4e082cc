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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Status;
    use serde_json::{Value, json};

    struct Ctx(Value);

    impl EvalContext for Ctx {
        fn context(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
        fn status(&self) -> Status {
            Status::Success
        }
        fn hash_files(&self, _: &[String]) -> Result<String, String> {
            Err("no workspace".into())
        }
    }

    fn render(s: &str) -> Result<String, EvalError> {
        let ctx = Ctx(json!({"env": {"NAME": "World", "N": 3}, "matrix": {"os": ["linux", "mac"]}}));
        parse_template(s).unwrap_or_else(|e| panic!("{s}: {e:?}")).render(&ctx)
    }

    fn sources(s: &str) -> Vec<(String, usize)> {
        parse_template(s)
            .unwrap_or_else(|e| panic!("{s}: {e:?}"))
            .parts
            .into_iter()
            .filter_map(|p| match p {
                TemplatePart::Expr { source, offset, .. } => Some((source, offset)),
                TemplatePart::Literal(_) => None,
            })
            .collect()
    }

    #[test]
    fn renders_values_into_text() {
        assert_eq!(render("Hello ${{ env.NAME }}!").unwrap(), "Hello World!");
        assert_eq!(render("${{env.N}}${{ env.N }}").unwrap(), "33");
        assert_eq!(render("x${{ env.MISSING }}y").unwrap(), "xy");
        assert_eq!(render("${{ matrix.os }}").unwrap(), r#"["linux","mac"]"#);
        assert_eq!(render("${{ 1.0 }} ${{ 0.5 }} ${{ true }}").unwrap(), "1 0.5 true");
        assert_eq!(render("").unwrap(), "");
        assert_eq!(render("plain $HOME ${VAR} { } }}").unwrap(), "plain $HOME ${VAR} { } }}");
        assert_eq!(render("${{ hashFiles('x') }}").unwrap_err(), EvalError::HashFiles("no workspace".into()));
    }

    #[test]
    fn parts_and_offsets() {
        let t = parse_template("a ${{ env.X }} b").unwrap();
        assert_eq!(t.parts.len(), 3);
        assert!(matches!(&t.parts[0], TemplatePart::Literal(s) if s == "a "));
        assert!(matches!(&t.parts[2], TemplatePart::Literal(s) if s == " b"));
        assert_eq!(sources("a ${{ env.X }} b"), [(" env.X ".to_string(), 5)]);
        assert_eq!(sources("é${{1}}${{2}}"), [("1".to_string(), 5), ("2".to_string(), 11)]);
        assert!(!parse_template("no expressions $HOME").unwrap().has_expressions());
        assert!(parse_template("${{ 1 }}").unwrap().has_expressions());
    }

    #[test]
    fn closing_braces_inside_string_literals_do_not_end_the_expression() {
        assert_eq!(sources("${{ format('}}{0}', 'x') }} end"), [(" format('}}{0}', 'x') ".to_string(), 3)]);
        assert_eq!(render("${{ format('}}{0}', 'x') }} end").unwrap(), "}x end");
        assert_eq!(render("${{ 'it''s }}' }}").unwrap(), "it's }}");
    }

    #[test]
    fn errors_are_at_template_offsets() {
        let e = parse_template("a ${{ b").unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (2, "`${{` is not closed by `}}`"));
        let e = parse_template("${{ 1 }} ${{ 'open }}").unwrap_err();
        assert_eq!(e.offset, 9, "an unterminated string swallows the `}}`, so the `${{` is unclosed");
        assert_eq!(parse_template("x ${{ env.A == }}").unwrap_err().offset, 15);
        assert_eq!(parse_template("x ${{ }}").unwrap_err().message, "empty expression");
        let errs = parse_template("ok ${{ nope.x }} and ${{ env.A || contain('a', 'b') }}").unwrap().check();
        let got: Vec<_> = errs.iter().map(|e| (e.offset, e.message.as_str())).collect();
        assert_eq!(got, [(7, "unknown context `nope`"), (34, "unknown function `contain`")]);
    }
}
