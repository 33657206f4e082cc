//! Parsing TAP (Test Anything Protocol, versions 12 to 14) into one test suite per file: test
//! points (`ok 1 - name`, `not ok 2 - name # SKIP why`, `# TODO`), the plan (`1..N`), `Bail
//! out!`, YAML diagnostic blocks (`message:` or `error:`, `duration_ms:`) and TAP 14 subtests
//! (indented by four spaces, reported as leaf tests named `parent > child`).

use chengis_plugin_sdk::outputs::{TestCase, TestOutcome, TestSuite};

use crate::report::{Parsed, message};

/// A test point's directive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Directive {
    None,
    Skip(String),
    Todo(String),
}

/// One test point as read.
struct Point {
    /// Its indentation in spaces (subtests are indented).
    indent: usize,
    ok: bool,
    name: String,
    directive: Directive,
    /// From its YAML block.
    message: Option<String>,
    duration_ms: u64,
    /// Whether it sums up subtests listed before it (then the subtests are reported instead).
    parent: bool,
}

impl Point {
    /// A failure that counts: `not ok` without a SKIP or TODO directive.
    fn failed(&self) -> bool {
        !self.ok && self.directive == Directive::None
    }
}

/// Parses the TAP `text` of `file` (its path relative to the workspace) into one suite named
/// after the file. A file with neither a plan nor a test point is [`Parsed::NotAReport`].
pub fn parse(text: &str, file: &str) -> Parsed {
    let mut points: Vec<Point> = Vec::new();
    let mut plan: Option<usize> = None;
    let mut bailed: Option<String> = None;
    // `# Subtest: NAME` headings by nesting level (indent / 4).
    let mut headings: Vec<Option<String>> = Vec::new();
    let mut yaml: Option<(usize, Vec<String>)> = None;
    let mut after_point = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let indent = line.len() - line.trim_start_matches(' ').len();
        let trimmed = line.trim();
        if let Some((base, lines)) = yaml.as_mut() {
            if trimmed == "..." && indent == *base {
                let (_, lines) = yaml.take().unwrap_or_default();
                if let Some(point) = points.last_mut() {
                    apply_yaml(point, &lines);
                }
            } else {
                lines.push(line.get(*base..).unwrap_or(trimmed).to_string());
            }
            continue;
        }
        if trimmed == "---" && after_point && points.last().is_some_and(|p| indent > p.indent) {
            yaml = Some((indent, Vec::new()));
            continue;
        }
        after_point = false;
        let level = indent / 4;
        if let Some(rest) = trimmed.strip_prefix("ok").filter(|r| r.is_empty() || r.starts_with(' ')) {
            points.push(point(indent, true, rest, &headings, level));
            after_point = true;
        } else if let Some(rest) = trimmed.strip_prefix("not ok").filter(|r| r.is_empty() || r.starts_with(' ')) {
            points.push(point(indent, false, rest, &headings, level));
            after_point = true;
        } else if let Some(reason) = trimmed.strip_prefix("Bail out!") {
            bailed = Some(reason.trim().to_string());
            break;
        } else if let Some(name) = trimmed.strip_prefix("# Subtest:") {
            headings.truncate(level);
            headings.resize(level, None);
            headings.push(Some(name.trim().to_string()));
        } else if indent == 0
            && let Some(count) = trimmed.strip_prefix("1..").and_then(|r| r.split([' ', '#']).next())
            && let Ok(count) = count.parse::<usize>()
        {
            plan = Some(count);
        }
    }
    if let Some((_, lines)) = yaml.take()
        && let Some(point) = points.last_mut()
    {
        apply_yaml(point, &lines);
    }
    if plan.is_none() && points.is_empty() && bailed.is_none() {
        return Parsed::NotAReport("it has neither a TAP plan (1..N) nor a test line (ok / not ok)".into());
    }
    mark_parents(&mut points);
    let mut cases: Vec<TestCase> = Vec::new();
    for (i, point) in points.iter().enumerate() {
        // A parent is reported only when it failed without a failing subtest (e.g. in a hook).
        if point.parent && (!point.failed() || children(&points, i).iter().any(Point::failed)) {
            continue;
        }
        let (outcome, detail) = match (&point.directive, point.ok) {
            (Directive::Skip(why), _) => (TestOutcome::Skipped, Some(why.clone())),
            (Directive::Todo(why), false) => (TestOutcome::Skipped, Some(format!("TODO {why}"))),
            (Directive::Todo(_) | Directive::None, true) => (TestOutcome::Passed, None),
            (Directive::None, false) => (TestOutcome::Failed, None),
        };
        let text = point.message.clone().or(detail).unwrap_or_default();
        cases.push(TestCase {
            name: point.name.clone(),
            classname: file.to_string(),
            outcome,
            duration_ms: point.duration_ms,
            message: message(None, &text),
        });
    }
    let top = points.iter().filter(|p| p.indent == 0).count();
    let problem = match (&bailed, plan) {
        (Some(reason), _) => Some(format!("Bail out! {reason}")),
        (None, Some(planned)) if planned != top => {
            Some(format!("the plan announced {planned} tests, the file has {top}"))
        }
        (None, None) => Some(format!("no plan line (1..N): the run may have stopped early after {top} tests")),
        (None, Some(_)) => None,
    };
    if let Some(problem) = problem {
        cases.push(TestCase {
            name: "(tap plan)".into(),
            classname: file.to_string(),
            outcome: TestOutcome::Errored,
            duration_ms: 0,
            message: message(Some(problem), ""),
        });
    }
    let suites = if cases.is_empty() { Vec::new() } else { vec![TestSuite { name: file.to_string(), cases }] };
    Parsed::Suites(suites)
}

/// Reads a test point from what follows `ok` / `not ok`: `[N] [-] [description] [# directive]`.
fn point(indent: usize, ok: bool, rest: &str, headings: &[Option<String>], level: usize) -> Point {
    let rest = rest.trim_start();
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
    let rest = rest.strip_prefix("- ").or_else(|| rest.strip_prefix('-').filter(|r| r.is_empty())).unwrap_or(rest);
    // The description ends at the first `#` not escaped as `\#`.
    let mut description = String::new();
    let mut directive_text = None;
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped @ ('#' | '\\'))) => description.push(escaped),
                Some((_, other)) => description.extend(['\\', other]),
                None => description.push('\\'),
            },
            '#' => {
                directive_text = Some(&rest[i + 1..]);
                break;
            }
            c => description.push(c),
        }
    }
    let directive = directive_text.map_or(Directive::None, |text| {
        let text = text.trim_start();
        let word_end = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
        let word = text[..word_end].to_ascii_lowercase();
        let reason = text[word_end..].trim_start_matches(':').trim().to_string();
        if word.starts_with("skip") {
            Directive::Skip(reason)
        } else if word == "todo" {
            Directive::Todo(reason)
        } else {
            Directive::None
        }
    });
    let mut name = description.trim().to_string();
    let path: Vec<&str> = headings.iter().take(level).flatten().map(String::as_str).collect();
    if !path.is_empty() {
        name = format!("{} > {name}", path.join(" > "));
    }
    Point { indent, ok, name, directive, message: None, duration_ms: 0, parent: false }
}

/// Takes `message:` (or `error:`) and `duration_ms:` from a test point's YAML block (its lines
/// with the block's indentation removed).
fn apply_yaml(point: &mut Point, lines: &[String]) {
    let mut message = None;
    let mut error = None;
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        i += 1;
        let Some((key, value)) = line.split_once(':').filter(|(k, _)| !k.starts_with(' ') && !k.is_empty()) else {
            continue;
        };
        let value = value.trim();
        // A block scalar (`|`, `>-`, ...) continues on the more indented lines below.
        let value = if value.starts_with('|') || value.starts_with('>') {
            let folded = value.starts_with('>');
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].starts_with(' ') || lines[i].trim().is_empty()) {
                block.push(lines[i].trim());
                i += 1;
            }
            block.join(if folded { " " } else { "\n" }).trim().to_string()
        } else {
            unquote(value)
        };
        match key.trim() {
            "message" => message = Some(value),
            "error" => error = Some(value),
            "duration_ms" => {
                point.duration_ms =
                    value.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0).map_or(0, |v| v.round() as u64);
            }
            _ => {}
        }
    }
    point.message = message.or(error).filter(|m| !m.is_empty());
}

/// A YAML scalar without its quotes (`'it''s'`, `"a \"b\""`).
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\n", "\n").replace("\\\\", "\\")
    } else {
        value.to_string()
    }
}

/// Marks the points that sum up subtests: in TAP 14 a parent's line follows its subtests,
/// which are indented deeper.
fn mark_parents(points: &mut [Point]) {
    for i in 1..points.len() {
        if points[i - 1].indent > points[i].indent {
            points[i].parent = true;
        }
    }
}

/// The subtests of the parent at `i`: the points right before it that are indented deeper.
fn children(points: &[Point], i: usize) -> &[Point] {
    let indent = points[i].indent;
    let start = points[..i].iter().rposition(|p| p.indent <= indent).map_or(0, |j| j + 1);
    &points[start..i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(text: &str) -> Vec<(String, TestOutcome, u64, Option<String>)> {
        match parse(text, "t/math.tap") {
            Parsed::Suites(suites) => {
                assert!(suites.len() <= 1);
                suites
                    .into_iter()
                    .flat_map(|s| s.cases)
                    .map(|c| {
                        assert_eq!(c.classname, "t/math.tap");
                        (c.name, c.outcome, c.duration_ms, c.message)
                    })
                    .collect()
            }
            Parsed::NotAReport(why) => panic!("not TAP: {why}"),
        }
    }

    fn case(
        name: &str,
        outcome: TestOutcome,
        ms: u64,
        message: Option<&str>,
    ) -> (String, TestOutcome, u64, Option<String>) {
        (name.into(), outcome, ms, message.map(Into::into))
    }

    #[test]
    fn tap13_points_directives_and_yaml() {
        let text = "TAP version 13\n1..6\nok 1 - adds\nnot ok 2 - divides\n  ---\n  message: 'expected 2, got 3'\n  \
                    severity: fail\n  data:\n    got: 3\n  ...\nok 3 # SKIP no network\nnot ok 4 - later # TODO not written\n\
                    ok 5 - escaped \\# hash # skipped: slow\nok 6 works without a dash\n# a comment\nrandom noise\n";
        assert_eq!(
            cases(text),
            [
                case("adds", TestOutcome::Passed, 0, None),
                case("divides", TestOutcome::Failed, 0, Some("expected 2, got 3")),
                case("", TestOutcome::Skipped, 0, Some("no network")),
                case("later", TestOutcome::Skipped, 0, Some("TODO not written")),
                case("escaped # hash", TestOutcome::Skipped, 0, Some("slow")),
                case("works without a dash", TestOutcome::Passed, 0, None),
            ]
        );
    }

    #[test]
    fn node_test_runner_subtests_are_reported_as_leaves() {
        let text = "TAP version 13
# Subtest: math
    # Subtest: adds
    ok 1 - adds
      ---
      duration_ms: 1.5
      ...
    # Subtest: divides
    not ok 2 - divides
      ---
      duration_ms: 2
      failureType: 'testCodeFailure'
      error: |-
        Expected values to be strictly equal:

        2 !== 3
      code: 'ERR_ASSERTION'
      ...
    1..2
not ok 1 - math
  ---
  duration_ms: 5
  type: 'suite'
  ...
# Subtest: setup
not ok 2 - setup
  ---
  error: 'hook failed'
  ...
1..2
# tests 2
";
        assert_eq!(
            cases(text),
            [
                case("math > adds", TestOutcome::Passed, 2, None),
                case(
                    "math > divides",
                    TestOutcome::Failed,
                    2,
                    Some("Expected values to be strictly equal:\n\n2 !== 3")
                ),
                case("setup", TestOutcome::Failed, 0, Some("hook failed")),
            ]
        );
    }

    #[test]
    fn a_failed_parent_without_failed_subtests_is_reported() {
        let text = "1..1\n    ok 1 - inner\n    1..1\nnot ok 1 - outer\n";
        assert_eq!(
            cases(text),
            [case("inner", TestOutcome::Passed, 0, None), case("outer", TestOutcome::Failed, 0, None)]
        );
    }

    #[test]
    fn plan_problems_and_bail_out_are_errored_cases() {
        let planned = cases("1..3\nok 1 - a\nok 2 - b\n");
        assert_eq!(
            planned.last().unwrap(),
            &case("(tap plan)", TestOutcome::Errored, 0, Some("the plan announced 3 tests, the file has 2"))
        );
        let unplanned = cases("ok 1 - a\n");
        assert_eq!(
            unplanned[1].3.as_deref(),
            Some("no plan line (1..N): the run may have stopped early after 1 tests")
        );
        let bailed = cases("1..5\nok 1 - a\nBail out! database down\nok 2 - never read\n");
        assert_eq!(bailed.len(), 2);
        assert_eq!(bailed[1].3.as_deref(), Some("Bail out! database down"));
        // A trailing plan is as good as a leading one; `1..0 # SKIP` is an empty run.
        assert_eq!(cases("ok 1 - a\r\n1..1\r\n"), [case("a", TestOutcome::Passed, 0, None)]);
        assert!(cases("1..0 # SKIP nothing to do\n").is_empty());
    }

    #[test]
    fn a_file_without_tap_is_not_a_report() {
        assert!(matches!(parse("hello\nworld\n", "x.tap"), Parsed::NotAReport(_)));
        assert!(matches!(parse("", "x.tap"), Parsed::NotAReport(_)));
        assert!(matches!(parse("okay 1\n", "x.tap"), Parsed::NotAReport(_)));
    }
}
