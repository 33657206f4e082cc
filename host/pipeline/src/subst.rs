//! Shell-style variable substitution for non-shell fields: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR:?message}` and `$$`. `${{ }}` expressions are left alone.

use thiserror::Error;

/// A substitution that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubstError {
    /// `${VAR:?message}` on an unset or empty variable.
    #[error("{message}")]
    Unset {
        /// The variable.
        name: String,
        /// The author's message (or a default one).
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
}

impl SubstError {
    /// Byte offset of the offending `$` in the input.
    pub fn offset(&self) -> usize {
        match self {
            SubstError::Unset { offset, .. }
            | SubstError::Unterminated { offset }
            | SubstError::BadName { offset, .. } => *offset,
        }
    }
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Finds the `}` closing a `${` whose content starts at `from`, allowing nested `${...}`.
fn closing(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Substitutes variables in `s`, looking them up with `lookup`.
pub fn substitute(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, SubstError> {
    walk(s, 0, Some(lookup)).map(|o| o.unwrap_or_default())
}

/// Syntax errors only (unterminated `${`, bad names), for the linter.
pub fn check_syntax(s: &str) -> Vec<SubstError> {
    match walk(s, 0, None) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e],
    }
}

/// Looks a variable up by name.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn walk(s: &str, base: usize, lookup: Option<Lookup<'_>>) -> Result<Option<String>, SubstError> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut lit = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&s[lit..i]);
        let at = base + i;
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') if b.get(i + 2) == Some(&b'{') => {
                // A `${{ }}` expression: copied as it is.
                let end = s[i..].find("}}").map_or(b.len(), |e| i + e + 2);
                out.push_str(&s[i..end]);
                i = end;
            }
            Some(b'{') => {
                let close = closing(s, i + 2).ok_or(SubstError::Unterminated { offset: at })?;
                let inner = &s[i + 2..close];
                let name_end = inner.bytes().position(|c| !is_name(c)).unwrap_or(inner.len());
                let name = &inner[..name_end];
                let rest = &inner[name_end..];
                if name.is_empty() || !is_name_start(name.as_bytes()[0]) {
                    return Err(SubstError::BadName { text: s[i..=close].to_string(), offset: at });
                }
                let value = lookup.and_then(|l| l(name)).filter(|v| !v.is_empty());
                if let Some(default) = rest.strip_prefix(":-") {
                    let default = walk(default, base + i + 2 + name_end + 2, lookup)?;
                    out.push_str(&value.or(default).unwrap_or_default());
                } else if let Some(message) = rest.strip_prefix(":?") {
                    match (lookup, value) {
                        (Some(_), None) => {
                            let message =
                                if message.is_empty() { format!("{name} is not set") } else { message.to_string() };
                            return Err(SubstError::Unset { name: name.to_string(), message, offset: at });
                        }
                        (_, v) => out.push_str(&v.unwrap_or_default()),
                    }
                } else if rest.is_empty() {
                    out.push_str(&value.unwrap_or_default());
                } else {
                    return Err(SubstError::BadName { text: s[i..=close].to_string(), offset: at });
                }
                i = close + 1;
            }
            Some(&c) if is_name_start(c) => {
                let end = b[i + 1..].iter().position(|c| !is_name(*c)).map_or(b.len(), |p| i + 1 + p);
                let name = &s[i + 1..end];
                out.push_str(&lookup.and_then(|l| l(name)).unwrap_or_default());
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
        lit = i;
    }
    out.push_str(&s[lit..]);
    Ok(lookup.map(|_| out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            "REG" => Some("registry.local".into()),
            _ => None,
        }
    }

    fn sub(s: &str) -> Result<String, SubstError> {
        substitute(s, &vars)
    }

    #[test]
    fn forms() {
        assert_eq!(sub("$HOME/x").unwrap(), "/home/me/x");
        assert_eq!(sub("${HOME}x").unwrap(), "/home/mex");
        assert_eq!(sub("${NOPE:-fallback}").unwrap(), "fallback");
        assert_eq!(sub("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(sub("${NOPE:-${REG}/app}").unwrap(), "registry.local/app");
        assert_eq!(sub("$$HOME costs $5").unwrap(), "$HOME costs $5");
        assert_eq!(sub("$NOPE").unwrap(), "");
        assert_eq!(sub("a ${{ env.X }} b").unwrap(), "a ${{ env.X }} b");
    }

    #[test]
    fn required() {
        let e = sub("x ${NOPE:?set NOPE first}").unwrap_err();
        assert_eq!(e, SubstError::Unset { name: "NOPE".into(), message: "set NOPE first".into(), offset: 2 });
        assert_eq!(sub("${NOPE:?}").unwrap_err().to_string(), "NOPE is not set");
        assert_eq!(sub("${REG:?x}").unwrap(), "registry.local");
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(check_syntax("${HOME"), vec![SubstError::Unterminated { offset: 0 }]);
        assert!(matches!(check_syntax("a ${1X}")[..], [SubstError::BadName { offset: 2, .. }]));
        assert!(matches!(check_syntax("${A%b}")[..], [SubstError::BadName { .. }]));
        assert!(check_syntax("${A:?unset} ${B:-x} $C $$ ${{ x }}").is_empty());
    }
}
