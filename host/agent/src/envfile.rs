//! The `$CHENGIS_ENV` and `$CHENGIS_OUTPUT` files: `NAME=value` lines and the `NAME<<EOF` form.

use thiserror::Error;

/// A malformed line in an env or output file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvFileError {
    /// A line is neither `NAME=value` nor `NAME<<DELIMITER`.
    #[error("line {line}: expected `NAME=value` or `NAME<<DELIMITER`")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A name is not a valid variable name.
    #[error("line {line}: `{name}` is not a valid name (letters, digits and `_`, not starting with a digit)")]
    BadName {
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
    },
    /// A multi-line value has no closing delimiter.
    #[error("line {line}: the value of `{name}` is not closed by a line holding only `{delimiter}`")]
    Unterminated {
        /// 1-based line of the opening.
        line: usize,
        /// The variable.
        name: String,
        /// The delimiter.
        delimiter: String,
    },
}

/// Parses an env/output file into `(name, value)` pairs in order; empty lines are ignored.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let heredoc = line.find("<<").filter(|h| line.find('=').is_none_or(|e| *h < e));
        if let Some(h) = heredoc {
            let name = &line[..h];
            let delimiter = &line[h + 2..];
            check_name(name, i + 1)?;
            if delimiter.is_empty() {
                return Err(EnvFileError::BadLine { line: i + 1 });
            }
            let mut value: Vec<&str> = Vec::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                let l = l.strip_suffix('\r').unwrap_or(l);
                if l == delimiter {
                    closed = true;
                    break;
                }
                value.push(l);
            }
            if !closed {
                return Err(EnvFileError::Unterminated {
                    line: i + 1,
                    name: name.to_string(),
                    delimiter: delimiter.to_string(),
                });
            }
            out.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            check_name(name, i + 1)?;
            out.push((name.to_string(), value.to_string()));
        } else {
            return Err(EnvFileError::BadLine { line: i + 1 });
        }
    }
    Ok(out)
}

fn check_name(name: &str, line: usize) -> Result<(), EnvFileError> {
    if chengis_pipeline::decode::is_env_name(name) {
        Ok(())
    } else {
        Err(EnvFileError::BadName { line, name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_multiline() {
        let text = "A=1\nB=x=y\n\nMSG<<EOF\nline one\nline two\nEOF\nC=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("MSG".into(), "line one\nline two".into()),
                ("C".into(), "".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A=1\nnonsense\n"), Err(EnvFileError::BadLine { line: 2 }));
        assert_eq!(parse("1A=x"), Err(EnvFileError::BadName { line: 1, name: "1A".into() }));
        assert!(matches!(parse("M<<END\nx\n"), Err(EnvFileError::Unterminated { line: 1, .. })));
    }

    #[test]
    fn value_with_heredoc_marker_after_equals() {
        assert_eq!(parse("A=x<<y").unwrap(), vec![("A".into(), "x<<y".into())]);
    }
}
