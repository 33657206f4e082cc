//! Shell-style variable substitution for non-shell fields (images, env values, paths, `with:`):
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$`. `${{ }}` expressions are
//! left alone for the expression layer.

use thiserror::Error;

/// Deepest nesting of substitutions inside defaults and messages (`${A:-${B:-${C}}}` is 3).
pub const MAX_NESTING: usize = 16;

/// A substitution that cannot be done, at the byte offset of its `$` in the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubstError {
    /// `${VAR:?message}` on an unset or empty variable.
    #[error("{message}")]
    Unset {
        /// The variable.
        name: String,
        /// The author's message, substituted (or a default one when it is empty).
        message: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${` without its `}`.
    #[error("`${{` is not closed by `}}`")]
    Unterminated {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${...}` whose name is not a variable name.
    #[error("`{text}` is not a valid variable reference: a name is letters, digits and `_`, not starting with a digit")]
    BadName {
        /// The reference as written.
        text: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A shell operator other than `:-` and `:?` (`${A-x}`, `${A%.*}`, `${A/x/y}`...).
    #[error("`{text}` is not supported: write `${{NAME}}`, `${{NAME:-default}}` or `${{NAME:?message}}`")]
    Unsupported {
        /// The reference as written.
        text: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// Defaults nested in defaults more than [`MAX_NESTING`] deep.
    #[error("substitutions nest more than {MAX_NESTING} levels deep")]
    TooDeep {
        /// Byte offset of the `$` that goes too deep.
        offset: usize,
    },
}

impl SubstError {
    /// Byte offset of the offending `$` in the input.
    pub fn offset(&self) -> usize {
        match self {
            SubstError::Unset { offset, .. }
            | SubstError::Unterminated { offset }
            | SubstError::BadName { offset, .. }
            | SubstError::Unsupported { offset, .. }
            | SubstError::TooDeep { offset } => *offset,
        }
    }
}

/// Substitutes variables in `s`, looking them up with `lookup` (`None`: unset). An unset
/// variable without a default becomes empty; the first error stops it.
pub fn substitute(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, SubstError> {
    let mut w = Walker { src: s, lookup: Some(lookup), errors: Vec::new() };
    let mut out = String::with_capacity(s.len());
    w.run(0, s.len(), 0, &mut out)?;
    Ok(out)
}

/// Every syntax error (unterminated `${`, bad names, unsupported operators, nesting too
/// deep), for the linter; nothing is looked up, so `${VAR:?}` is never an error here.
pub fn check_syntax(s: &str) -> Vec<SubstError> {
    let mut w = Walker { src: s, lookup: None, errors: Vec::new() };
    let mut sink = String::new();
    if let Err(e) = w.run(0, s.len(), 0, &mut sink) {
        w.errors.push(e);
    }
    w.errors
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The characters that start a shell parameter-expansion operator after a name.
const SHELL_OPERATORS: &[u8] = b"-=?+:#%/^,@[";

/// Looks a variable up by name; `None` when unset.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Walker<'a> {
    src: &'a str,
    /// `None` when only checking syntax.
    lookup: Option<Lookup<'a>>,
    /// Errors recorded while checking (a substitution returns its first error instead).
    errors: Vec<SubstError>,
}

impl Walker<'_> {
    /// Records `e` when checking (and goes on); returns it when substituting.
    fn fail(&mut self, e: SubstError) -> Result<(), SubstError> {
        if self.lookup.is_some() {
            return Err(e);
        }
        self.errors.push(e);
        Ok(())
    }

    /// Substitutes `src[from..to]` into `out`.
    fn run(&mut self, from: usize, to: usize, depth: usize, out: &mut String) -> Result<(), SubstError> {
        let src = self.src;
        let b = src.as_bytes();
        let mut i = from;
        while let Some(p) = src[i..to].find('$') {
            out.push_str(&src[i..i + p]);
            i += p;
            let next = if i + 1 < to { Some(b[i + 1]) } else { None };
            match next {
                Some(b'$') => {
                    out.push('$');
                    i += 2;
                }
                Some(b'{') if i + 2 < to && b[i + 2] == b'{' => {
                    // A `${{ }}` expression: copied as it is.
                    let end = expression_end(b, i + 3, to).map_or(to, |e| e + 2);
                    out.push_str(&src[i..end]);
                    i = end;
                }
                Some(b'{') => {
                    let Some(close) = closing(b, i + 2, to) else {
                        // Everything after is inside the unclosed `${`: nothing more to check.
                        return self.fail(SubstError::Unterminated { offset: i });
                    };
                    self.braced(i, close, depth, out)?;
                    i = close + 1;
                }
                Some(c) if is_name_start(c) => {
                    let end = b[i + 1..to].iter().position(|c| !is_name(*c)).map_or(to, |n| i + 1 + n);
                    out.push_str(&self.value(&src[i + 1..end]).unwrap_or_default());
                    i = end;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
        }
        out.push_str(&src[i..to]);
        Ok(())
    }

    /// The value of a variable; `None` when unset, and always when only checking.
    fn value(&self, name: &str) -> Option<String> {
        self.lookup.and_then(|l| l(name))
    }

    /// `${...}` from the `$` at `at` to the `}` at `close`.
    fn braced(&mut self, at: usize, close: usize, depth: usize, out: &mut String) -> Result<(), SubstError> {
        let src = self.src;
        let text = &src[at..=close];
        let inner = &src[at + 2..close];
        let name_len = inner.bytes().position(|c| !is_name(c)).unwrap_or(inner.len());
        let (name, rest) = inner.split_at(name_len);
        if !name.bytes().next().is_some_and(is_name_start) {
            return self.fail(SubstError::BadName { text: text.to_string(), offset: at });
        }
        let value = self.value(name).filter(|v| !v.is_empty());
        if rest.is_empty() {
            out.push_str(&value.unwrap_or_default());
            return Ok(());
        }
        let is_default = rest.starts_with(":-");
        if !is_default && !rest.starts_with(":?") {
            let e = if rest.bytes().next().is_some_and(|c| SHELL_OPERATORS.contains(&c)) {
                SubstError::Unsupported { text: text.to_string(), offset: at }
            } else {
                SubstError::BadName { text: text.to_string(), offset: at }
            };
            return self.fail(e);
        }
        // After the name and the two-character operator, up to the `}`.
        let operand = at + 2 + name_len + 2..close;
        if depth + 1 > MAX_NESTING {
            return self.fail(SubstError::TooDeep { offset: at });
        }
        match (self.lookup.is_some(), value, is_default) {
            // Checking: look inside the default or message too.
            (false, _, _) => self.run(operand.start, operand.end, depth + 1, out),
            (true, Some(v), _) => {
                out.push_str(&v);
                Ok(())
            }
            (true, None, true) => self.run(operand.start, operand.end, depth + 1, out),
            (true, None, false) => {
                let mut message = String::new();
                self.run(operand.start, operand.end, depth + 1, &mut message)?;
                if message.trim().is_empty() {
                    message = format!("{name} is not set or empty");
                }
                Err(SubstError::Unset { name: name.to_string(), message, offset: at })
            }
        }
    }
}

/// The `}` closing a `${` whose content starts at `from`, skipping nested `${...}`, `${{ }}`
/// expressions and `$$`.
fn closing(b: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = from;
    while j < to {
        match (b[j], b.get(j + 1).filter(|_| j + 1 < to), b.get(j + 2).filter(|_| j + 2 < to)) {
            (b'$', Some(b'$'), _) => j += 2,
            (b'$', Some(b'{'), Some(b'{')) => j = expression_end(b, j + 3, to).map_or(to, |e| e + 2),
            (b'$', Some(b'{'), _) => {
                depth += 1;
                j += 2;
            }
            (b'}', _, _) if depth == 0 => return Some(j),
            (b'}', _, _) => {
                depth -= 1;
                j += 1;
            }
            _ => j += 1,
        }
    }
    None
}

/// The `}}` ending a `${{` expression whose text starts at `from`; `}}` inside a quoted
/// string does not count.
fn expression_end(b: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut in_string = false;
    let mut j = from;
    while j + 1 < to {
        match b[j] {
            b'\'' => in_string = !in_string,
            b'}' if !in_string && b[j + 1] == b'}' => return Some(j),
            _ => {}
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            "REG" => Some("registry.local".into()),
            "TAG" => Some("1.2".into()),
            "_x1" => Some("under".into()),
            _ => None,
        }
    }

    fn sub(s: &str) -> Result<String, SubstError> {
        substitute(s, &vars)
    }

    fn ok(s: &str) -> String {
        sub(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(ok("$HOME/x"), "/home/me/x");
        assert_eq!(ok("${HOME}x"), "/home/mex");
        assert_eq!(ok("$REG/app:$TAG"), "registry.local/app:1.2");
        assert_eq!(ok("$TAG.0"), "1.2.0", "a name ends at the first non-name character");
        assert_eq!(ok("$_x1-${_x1}"), "under-under");
        assert_eq!(ok("$HOMEx"), "", "the longest name is taken, like a shell");
        assert_eq!(ok("$NOPE"), "");
        assert_eq!(ok("${NOPE}"), "");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(ok("héllo $TAG ü"), "héllo 1.2 ü");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn dollar_that_is_not_a_reference_stays() {
        assert_eq!(ok("$$HOME costs $5"), "$HOME costs $5");
        assert_eq!(ok("$$$$"), "$$");
        assert_eq!(ok("$$$TAG"), "$1.2");
        assert_eq!(ok("a $ b $"), "a $ b $");
        assert_eq!(ok("$-x $1 $/ $é"), "$-x $1 $/ $é");
        assert_eq!(ok("$}"), "$}");
    }

    #[test]
    fn expressions_are_left_alone() {
        assert_eq!(ok("a ${{ env.X }} b"), "a ${{ env.X }} b");
        assert_eq!(ok("${{ format('}}$HOME{0}', 1) }}$TAG"), "${{ format('}}$HOME{0}', 1) }}1.2");
        assert_eq!(ok("${{ unterminated $HOME"), "${{ unterminated $HOME", "the expression layer reports it");
        assert_eq!(ok("${NOPE:-${{ env.X }}}"), "${{ env.X }}");
    }

    #[test]
    fn defaults() {
        assert_eq!(ok("${NOPE:-fallback}"), "fallback");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback", "empty counts as unset");
        assert_eq!(ok("${TAG:-fallback}"), "1.2");
        assert_eq!(ok("${NOPE:-}"), "");
        assert_eq!(ok("${NOPE:-${REG}/app}"), "registry.local/app");
        assert_eq!(ok("${NOPE:-$REG/app:${TAG:-latest}}"), "registry.local/app:1.2");
        assert_eq!(ok("${NOPE:-${ALSO_NOPE:-deep}}"), "deep");
        assert_eq!(ok("${NOPE:-a:-b}"), "a:-b");
        assert_eq!(ok("${NOPE:-$$5}"), "$5");
        assert_eq!(ok("${NOPE:-{x}"), "{x", "a lone `{{` in a default is text");
    }

    #[test]
    fn defaults_are_only_looked_at_when_needed() {
        assert_eq!(ok("${TAG:-${MISSING:?never raised}}"), "1.2");
        let seen = RefCell::new(Vec::new());
        let lookup = |n: &str| {
            seen.borrow_mut().push(n.to_string());
            vars(n)
        };
        assert_eq!(substitute("${TAG:-$HOME}", &lookup), Ok("1.2".into()));
        assert_eq!(*seen.borrow(), ["TAG"]);
    }

    #[test]
    fn required() {
        let e = sub("x ${NOPE:?set NOPE first}").unwrap_err();
        assert_eq!(e, SubstError::Unset { name: "NOPE".into(), message: "set NOPE first".into(), offset: 2 });
        assert_eq!(e.to_string(), "set NOPE first");
        assert_eq!(e.offset(), 2);
        assert_eq!(sub("${NOPE:?}").unwrap_err().to_string(), "NOPE is not set or empty");
        assert_eq!(sub("${EMPTY:?must not be empty}").unwrap_err().to_string(), "must not be empty");
        assert_eq!(sub("${NOPE:?needed for $REG}").unwrap_err().to_string(), "needed for registry.local");
        assert_eq!(ok("${REG:?x}"), "registry.local");
        assert_eq!(sub("${A:-${B:?B or A is needed}}").unwrap_err().offset(), 5);
        assert_eq!(sub("$HOME ${NOPE:?first} ${NOPE2:?second}").unwrap_err().to_string(), "first");
    }

    #[test]
    fn syntax_errors_in_substitution() {
        assert_eq!(sub("x ${HOME"), Err(SubstError::Unterminated { offset: 2 }));
        assert_eq!(sub("${}"), Err(SubstError::BadName { text: "${}".into(), offset: 0 }));
        assert_eq!(sub("${1X}"), Err(SubstError::BadName { text: "${1X}".into(), offset: 0 }));
        assert_eq!(sub("${A B}"), Err(SubstError::BadName { text: "${A B}".into(), offset: 0 }));
        assert_eq!(sub("${A-x}"), Err(SubstError::Unsupported { text: "${A-x}".into(), offset: 0 }));
        assert_eq!(
            sub("${A%.*}").unwrap_err().to_string(),
            "`${A%.*}` is not supported: write `${NAME}`, `${NAME:-default}` or `${NAME:?message}`"
        );
        assert_eq!(
            sub("${1BAD}").unwrap_err().to_string(),
            "`${1BAD}` is not a valid variable reference: a name is letters, digits and `_`, not starting with a digit"
        );
        assert_eq!(sub("${HOME").unwrap_err().to_string(), "`${` is not closed by `}`");
    }

    #[test]
    fn check_reports_every_syntax_error() {
        assert_eq!(check_syntax("${HOME"), [SubstError::Unterminated { offset: 0 }]);
        assert_eq!(
            check_syntax("a ${1X} b ${A/x/y} ${OK} ${B:-${C D}} ${E"),
            [
                SubstError::BadName { text: "${1X}".into(), offset: 2 },
                SubstError::Unsupported { text: "${A/x/y}".into(), offset: 10 },
                SubstError::BadName { text: "${C D}".into(), offset: 30 },
                SubstError::Unterminated { offset: 38 },
            ]
        );
        assert!(check_syntax("${A:?unset} ${B:-x} $C $$ ${{ x }} $ ${{ '}}' }}").is_empty());
        assert!(check_syntax("${NOPE:?}").is_empty(), "checking looks nothing up");
    }

    #[test]
    fn nesting_is_capped() {
        let nested = |n: usize| "${A:-".repeat(n) + "x" + &"}".repeat(n);
        assert_eq!(ok(&nested(MAX_NESTING)), "x");
        assert_eq!(sub(&nested(MAX_NESTING + 1)), Err(SubstError::TooDeep { offset: 5 * MAX_NESTING }));
        assert_eq!(check_syntax(&nested(MAX_NESTING + 1)), [SubstError::TooDeep { offset: 5 * MAX_NESTING }]);
        let hostile = nested(100_000);
        assert!(matches!(sub(&hostile), Err(SubstError::TooDeep { .. })));
        assert_eq!(check_syntax(&hostile).len(), 1);
        let unclosed = "${A:-".repeat(100_000);
        assert_eq!(check_syntax(&unclosed), [SubstError::Unterminated { offset: 0 }]);
        let many = "${1}".repeat(50_000);
        assert_eq!(check_syntax(&many).len(), 50_000);
    }
}
