//! Rule lists in configuration, as the builtin policies write them: one rule per line or per
//! `;`-separated part, blank lines and `#` comments skipped, every rule known by its line
//! number ([`lines`], [`parse`]); and the failure that lists every invalid line as an
//! `invalid-rule` diagnostic ([`invalid`]).

use crate::config::{Config, ConfigError};
use crate::types::{Diagnostic, Failure, Severity};

/// One rule as written: its line number and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLine<'a> {
    /// Its line number, from 1 (`;` counts as a line break).
    pub line: usize,
    /// The rule as written, trimmed.
    pub text: &'a str,
}

/// `line 2 `deny docker.io/*``: how messages name the rule on `line` written as `text`.
pub fn describe(line: usize, text: &str) -> String {
    format!("line {line} `{text}`")
}

/// A line of a rule list that is not a valid rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Its line number, from 1.
    pub line: usize,
    /// The line as written, trimmed.
    pub text: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", describe(self.line, &self.text), self.message)
    }
}

/// The rule lines of `text`: one per line or per `;`-separated part, numbered from 1, trimmed;
/// blank lines and lines starting with `#` are left out (but counted).
pub fn lines(text: &str) -> impl Iterator<Item = RuleLine<'_>> {
    text.split(['\n', ';'])
        .enumerate()
        .map(|(index, raw)| RuleLine { line: index + 1, text: raw.trim() })
        .filter(|rule| !rule.text.is_empty() && !rule.text.starts_with('#'))
}

/// Parses every rule line of `text` with `parse_line` (which says what is wrong with a line).
/// Every invalid line is reported, with its number; a text with no rule at all is an error
/// whose message ends with `syntax` (e.g. "a rule is `allow <glob>` or `deny <glob>`").
pub fn parse<R>(
    text: &str,
    syntax: &str,
    mut parse_line: impl FnMut(RuleLine<'_>) -> Result<R, String>,
) -> Result<Vec<R>, Vec<RuleError>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for line in lines(text) {
        match parse_line(line) {
            Ok(rule) => rules.push(rule),
            Err(message) => errors.push(RuleError { line: line.line, text: line.text.into(), message }),
        }
    }
    if rules.is_empty() && errors.is_empty() {
        errors.push(RuleError {
            line: 1,
            text: text.trim().into(),
            message: format!("there are no rules, only blank lines and comments; {syntax}"),
        });
    }
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

/// The raw text of the required key `key`, untrimmed, so that line numbers are those the
/// operator wrote.
pub fn required_text<'c>(config: &'c Config, key: &str) -> Result<&'c str, ConfigError> {
    config.get(key).ok_or_else(|| ConfigError { key: key.into(), message: "is required but not set".into() })
}

/// The failure for invalid rules under the configuration key `key`: `invalid configuration:
/// config key "KEY": N invalid rule(s)`, with one `invalid-rule` diagnostic per invalid line
/// (field `with.KEY`).
pub fn invalid(key: &str, errors: Vec<RuleError>) -> Failure {
    let count = errors.len();
    Failure {
        message: format!(
            "invalid configuration: config key {key:?}: {count} invalid rule{}",
            if count == 1 { "" } else { "s" }
        ),
        diagnostics: errors
            .into_iter()
            .map(|error| Diagnostic {
                severity: Severity::Error,
                code: "invalid-rule".into(),
                message: error.to_string(),
                field: Some(format!("with.{key}")),
                help: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: RuleLine<'_>) -> Result<(usize, String), String> {
        match line.text.strip_prefix("rule ") {
            Some(rest) => Ok((line.line, rest.to_string())),
            None => Err(format!("not a rule: {}", line.text)),
        }
    }

    #[test]
    fn lines_semicolons_comments_and_numbers() {
        let found: Vec<_> = lines("# head\n\nrule a; rule b\r\n  rule c  \n;").map(|l| (l.line, l.text)).collect();
        assert_eq!(found, [(3, "rule a"), (4, "rule b"), (5, "rule c")]);
        assert_eq!(parse("\n rule x", "SYNTAX", words), Ok(vec![(2, "x".to_string())]));
    }

    #[test]
    fn every_invalid_line_and_an_empty_list_are_errors() {
        let errors = parse("rule a\nnope\nrule b; also", "SYNTAX", words).unwrap_err();
        let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["line 2 `nope`: not a rule: nope", "line 4 `also`: not a rule: also"]);
        let errors = parse(" # only\n\n", "SYNTAX", words).unwrap_err();
        assert_eq!(errors[0].to_string(), "line 1 `# only`: there are no rules, only blank lines and comments; SYNTAX");
    }

    #[test]
    fn the_failure_lists_every_line_under_the_key() {
        let errors = parse("nope", "S", words).unwrap_err();
        let failure = invalid("rules", errors);
        assert_eq!(failure.message, r#"invalid configuration: config key "rules": 1 invalid rule"#);
        assert_eq!(failure.diagnostics.len(), 1);
        let diagnostic = &failure.diagnostics[0];
        assert_eq!((diagnostic.code.as_str(), diagnostic.field.as_deref()), ("invalid-rule", Some("with.rules")));
        assert_eq!(diagnostic.message, "line 1 `nope`: not a rule: nope");
        let two = invalid("rules", parse("a\nb", "S", words).unwrap_err());
        assert!(two.message.ends_with("2 invalid rules"), "{}", two.message);
    }

    #[test]
    fn the_text_is_required_and_untrimmed() {
        let config = Config::new([("rules".to_string(), "\n rule a".to_string())]);
        assert_eq!(required_text(&config, "rules"), Ok("\n rule a"));
        let error = required_text(&Config::default(), "rules").unwrap_err();
        assert_eq!(error.to_string(), r#"config key "rules": is required but not set"#);
    }
}
