//! What the JUnit and TAP parsers share: their result type and the small conversions (seconds
//! to milliseconds, failure messages, byte offsets to lines and columns).

use chengis_plugin_sdk::outputs::TestSuite;

/// The longest failure message kept per test case, in bytes; longer ones are cut with `…`
/// (the host caps what a step may report in all).
pub const MAX_MESSAGE: usize = 4096;

/// What a report file held.
#[derive(Debug)]
pub enum Parsed {
    /// Its suites (those without cases left out).
    Suites(Vec<TestSuite>),
    /// A well-formed file of another kind (e.g. a `pom.xml` a glob matched), and why.
    NotAReport(String),
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A duration in seconds (`"0.25"`, `"1,234.5"`) in whole milliseconds; 0 when unreadable.
pub fn millis(seconds: &str) -> u64 {
    let cleaned: String = seconds.trim().chars().filter(|c| *c != ',').collect();
    match cleaned.parse::<f64>() {
        // `as` saturates: huge values become u64::MAX, not garbage.
        Ok(s) if s.is_finite() && s > 0.0 => (s * 1000.0).round() as u64,
        _ => 0,
    }
}

/// A case's message from a `message` attribute and a body text (stack trace, details): both,
/// one per line, when both are set and differ; `None` when neither is. Cut to [`MAX_MESSAGE`].
pub fn message(attribute: Option<String>, body: &str) -> Option<String> {
    let attribute = attribute.map(|a| a.trim().to_string()).filter(|a| !a.is_empty());
    let body = body.trim();
    let text = match attribute {
        Some(a) if body.is_empty() || body == a => a,
        Some(a) => format!("{a}\n{body}"),
        None if body.is_empty() => return None,
        None => body.to_string(),
    };
    Some(truncate(text, MAX_MESSAGE))
}

/// `text` cut to at most `max` bytes (on a character boundary), ending with `…` when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\ncd", 99), (2, 3));
        assert_eq!(line_column("é\né", 5), (2, 2));
        assert_eq!(line_column("é\né", 4), (2, 1), "inside a character: its start");
    }

    #[test]
    fn seconds_to_millis() {
        assert_eq!(millis("0.0125"), 13);
        assert_eq!(millis(" 2 "), 2000);
        assert_eq!(millis("1,234.5"), 1_234_500);
        assert_eq!(millis(""), 0);
        assert_eq!(millis("-1"), 0);
        assert_eq!(millis("NaN"), 0);
        assert_eq!(millis("1e300"), u64::MAX);
    }

    #[test]
    fn messages_combine_and_are_capped() {
        assert_eq!(message(Some(" a ".into()), " b "), Some("a\nb".into()));
        assert_eq!(message(Some("a".into()), "a"), Some("a".into()));
        assert_eq!(message(Some(String::new()), ""), None);
        assert_eq!(message(None, " trace "), Some("trace".into()));
        let long = message(None, &"é".repeat(5000)).unwrap();
        assert!(long.len() <= MAX_MESSAGE && long.ends_with('…'), "{}", long.len());
        assert_eq!(truncate("abcdef".into(), 5), "ab…");
    }
}
