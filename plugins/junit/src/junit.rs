//! Parsing JUnit XML reports (the format of Surefire, Gradle, pytest, Jest, go-junit-report...)
//! into test suites: `<testsuites>`/`<testsuite>`/`<testcase>` with `<failure>`, `<error>` and
//! `<skipped>` children and `time` in seconds.

use chengis_plugin_sdk::outputs::{TestCase, TestOutcome, TestSuite};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::report::{Parsed, line_column, message, millis};

/// A `<testsuite>` being read.
struct OpenSuite {
    name: String,
    cases: Vec<TestCase>,
}

/// The `<failure>`, `<error>` or `<skipped>` element being read, whose text is the detail.
struct Detail {
    /// The depth of its element, to know when it ends.
    depth: usize,
    attribute: Option<String>,
    text: String,
}

/// What the parser has seen so far.
struct Parser<'f> {
    file: &'f str,
    /// How many elements are open.
    depth: usize,
    /// The suites finished, in document order of their end.
    suites: Vec<TestSuite>,
    /// The `<testsuite>` elements open, innermost last.
    open: Vec<OpenSuite>,
    /// Cases outside any `<testsuite>` (some tools write them): a suite named after the file.
    loose: Vec<TestCase>,
    /// The `<testcase>` open.
    case: Option<TestCase>,
    /// Its `<failure>`, `<error>` or `<skipped>` open.
    detail: Option<Detail>,
}

/// Parses the JUnit XML `text` of `file` (its path relative to the workspace). A well-formed
/// document whose root is neither `<testsuites>` nor `<testsuite>` is [`Parsed::NotAReport`];
/// malformed XML is an error naming the file, the line and the column.
pub fn parse(text: &str, file: &str) -> Result<Parsed, String> {
    let mut reader = Reader::from_str(text);
    // Where the problem is: the reader's error position, or the start of the event found wrong.
    let malformed = |position: u64, what: &dyn std::fmt::Display| {
        let (line, column) = line_column(text, usize::try_from(position).unwrap_or(usize::MAX));
        format!("{file}: malformed XML at line {line}, column {column}: {what}")
    };
    let mut parser =
        Parser { file, depth: 0, suites: Vec::new(), open: Vec::new(), loose: Vec::new(), case: None, detail: None };
    let mut root_seen = false;
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event().map_err(|e| malformed(reader.error_position(), &e))?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                if !root_seen {
                    let name = element.local_name();
                    if name.as_ref() != "testsuites" && name.as_ref() != "testsuite" {
                        let name = name.as_ref().to_string();
                        return Ok(Parsed::NotAReport(format!(
                            "its root element is <{name}>, not <testsuites> or <testsuite>"
                        )));
                    }
                    root_seen = true;
                }
                let empty = matches!(event, Event::Empty(_));
                parser.start(element, empty).map_err(|e| malformed(at, &e))?;
            }
            Event::End(element) => parser.end(element.local_name().as_ref()),
            Event::Text(text) => parser.text(&text.xml10_content()),
            Event::CData(text) => parser.text(&text.xml10_content()),
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(|e| malformed(at, &e))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference.xml10_content();
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| malformed(at, &format!("unknown entity &{name};")))?
                            .to_string()
                    }
                };
                parser.text(&resolved);
            }
            Event::Eof if !root_seen => {
                return Err(malformed(at, &"no root element (is the file empty?)"));
            }
            Event::Eof if parser.depth > 0 => {
                return Err(malformed(at, &"the file ends before its elements are closed"));
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    let mut suites = parser.suites;
    if !parser.loose.is_empty() {
        suites.push(TestSuite { name: file.to_string(), cases: parser.loose });
    }
    Ok(Parsed::Suites(suites))
}

impl Parser<'_> {
    /// An opening element (or, when `empty`, an element without content).
    fn start(&mut self, element: &BytesStart<'_>, empty: bool) -> Result<(), String> {
        if !empty {
            self.depth += 1;
        }
        match element.local_name().as_ref() {
            "testsuite" if !empty => {
                let name = attribute(element, "name")?.filter(|n| !n.is_empty());
                self.open.push(OpenSuite { name: name.unwrap_or_else(|| self.file.into()), cases: Vec::new() });
            }
            "testcase" if self.case.is_none() => {
                let suite = self.open.last().map_or(self.file, |s| s.name.as_str());
                let classname = match attribute(element, "classname")? {
                    Some(c) if !c.is_empty() => c,
                    _ => attribute(element, "file")?.filter(|f| !f.is_empty()).unwrap_or_else(|| suite.to_string()),
                };
                let case = TestCase {
                    name: attribute(element, "name")?.unwrap_or_default(),
                    classname,
                    outcome: TestOutcome::Passed,
                    duration_ms: attribute(element, "time")?.map_or(0, |t| millis(&t)),
                    message: None,
                };
                if empty {
                    self.push_case(case);
                } else {
                    self.case = Some(case);
                }
            }
            kind @ ("failure" | "error" | "skipped") if self.detail.is_none() => {
                let Some(case) = self.case.as_mut() else { return Ok(()) };
                let outcome = match kind {
                    "failure" => TestOutcome::Failed,
                    "error" => TestOutcome::Errored,
                    _ => TestOutcome::Skipped,
                };
                // With several such children, the worst wins: failed, then errored, then skipped.
                if rank(outcome) <= rank(case.outcome) {
                    return Ok(());
                }
                case.outcome = outcome;
                let attribute = attribute(element, "message")?;
                if empty {
                    case.message = message(attribute, "");
                } else {
                    self.detail = Some(Detail { depth: self.depth, attribute, text: String::new() });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A closing element of this local name.
    fn end(&mut self, name: &str) {
        if self.detail.as_ref().is_some_and(|d| d.depth == self.depth) {
            if let (Some(detail), Some(case)) = (self.detail.take(), self.case.as_mut()) {
                case.message = message(detail.attribute, &detail.text);
            }
        } else if name == "testcase" {
            if let Some(case) = self.case.take() {
                self.push_case(case);
            }
        } else if name == "testsuite"
            && let Some(suite) = self.open.pop().filter(|s| !s.cases.is_empty())
        {
            self.suites.push(TestSuite { name: suite.name, cases: suite.cases });
        }
        self.depth = self.depth.saturating_sub(1);
    }

    /// Text content: kept only inside a `<failure>`, `<error>` or `<skipped>`.
    fn text(&mut self, text: &str) {
        if let Some(detail) = self.detail.as_mut() {
            detail.text.push_str(text);
        }
    }

    fn push_case(&mut self, case: TestCase) {
        match self.open.last_mut() {
            Some(suite) => suite.cases.push(case),
            None => self.loose.push(case),
        }
    }
}

/// How bad an outcome is, to keep the worst of a case's children.
fn rank(outcome: TestOutcome) -> u8 {
    match outcome {
        TestOutcome::Passed => 0,
        TestOutcome::Skipped => 1,
        TestOutcome::Errored => 2,
        TestOutcome::Failed => 3,
    }
}

/// The unescaped value of the attribute `name` (its local name), if present.
fn attribute(element: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        if attribute.key.local_name().as_ref() == name {
            return attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map(|v| Some(v.into_owned()))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites(text: &str) -> Vec<TestSuite> {
        match parse(text, "reports/TEST-x.xml").unwrap() {
            Parsed::Suites(suites) => suites,
            Parsed::NotAReport(why) => panic!("not a report: {why}"),
        }
    }

    fn outcomes(suite: &TestSuite) -> Vec<(&str, TestOutcome, u64, Option<&str>)> {
        suite.cases.iter().map(|c| (c.name.as_str(), c.outcome, c.duration_ms, c.message.as_deref())).collect()
    }

    #[test]
    fn surefire_style_suite_with_every_outcome() {
        let suites = suites(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.MathTest" tests="5" failures="1" errors="1" skipped="1" time="1.5">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="adds" classname="com.example.MathTest" time="0.012"/>
  <testcase name="divides" classname="com.example.MathTest" time="1,234.5">
    <failure message="expected: &lt;2&gt; but was: &lt;3&gt;" type="org.opentest4j.AssertionFailedError"><![CDATA[at MathTest.java:12]]></failure>
    <system-out>noise</system-out>
  </testcase>
  <testcase name="connects" classname="com.example.MathTest" time="0">
    <error type="java.io.IOException">refused &amp; gone&#33;</error>
  </testcase>
  <testcase name="later" classname="com.example.MathTest"><skipped message="not yet"/></testcase>
  <testcase name="flaky" time="0.0004"><skipped/><failure message="boom"/></testcase>
</testsuite>"#,
        );
        assert_eq!(suites.len(), 1);
        assert_eq!(suites[0].name, "com.example.MathTest");
        assert_eq!(
            outcomes(&suites[0]),
            [
                ("adds", TestOutcome::Passed, 12, None),
                ("divides", TestOutcome::Failed, 1_234_500, Some("expected: <2> but was: <3>\nat MathTest.java:12")),
                ("connects", TestOutcome::Errored, 0, Some("refused & gone!")),
                ("later", TestOutcome::Skipped, 0, Some("not yet")),
                ("flaky", TestOutcome::Failed, 0, Some("boom")),
            ]
        );
        assert_eq!(suites[0].cases[0].classname, "com.example.MathTest");
        // Without a classname, the case belongs to its suite.
        assert_eq!(suites[0].cases[4].classname, "com.example.MathTest");
    }

    #[test]
    fn testsuites_with_nested_and_unnamed_suites() {
        let suites = suites(
            r#"<testsuites name="jest tests">
  <testsuite name="outer">
    <testcase name="a" classname="outer" time="0.5"/>
    <testsuite name="inner"><testcase name="b" file="src/b.test.js"/></testsuite>
  </testsuite>
  <testsuite><testcase name="c" classname="" /></testsuite>
  <testsuite name="empty" tests="0"></testsuite>
  <testsuite name="self-closing"/>
  <testcase name="loose"/>
</testsuites>"#,
        );
        let names: Vec<_> = suites.iter().map(|s| (s.name.as_str(), s.cases.len())).collect();
        assert_eq!(names, [("inner", 1), ("outer", 1), ("reports/TEST-x.xml", 1), ("reports/TEST-x.xml", 1)]);
        assert_eq!(suites[0].cases[0].classname, "src/b.test.js");
        assert_eq!(suites[1].cases[0].duration_ms, 500);
        assert_eq!(suites[2].cases[0].classname, "reports/TEST-x.xml");
        assert_eq!(suites[3].cases[0].name, "loose");
    }

    #[test]
    fn pytest_output_with_namespaced_and_multiline_messages() {
        let suites = suites(
            "<testsuites><testsuite name=\"pytest\" errors=\"0\" failures=\"1\" skipped=\"1\">\
<testcase classname=\"tests.test_x\" name=\"test_eq\" time=\"0.001\"><failure message=\"assert 1 == 2\">\
def test_eq():\n&gt;       assert 1 == 2\nE       assert 1 == 2</failure></testcase>\
<testcase classname=\"tests.test_x\" name=\"test_skip\" time=\"0.000\">\
<skipped type=\"pytest.skip\" message=\"no network\">tests/test_x.py:9: no network</skipped></testcase>\
</testsuite></testsuites>",
        );
        assert_eq!(
            suites[0].cases[0].message.as_deref(),
            Some("assert 1 == 2\ndef test_eq():\n>       assert 1 == 2\nE       assert 1 == 2")
        );
        assert_eq!(suites[0].cases[1].message.as_deref(), Some("no network\ntests/test_x.py:9: no network"));
    }

    #[test]
    fn malformed_xml_names_the_file_line_and_column() {
        let error = parse("<testsuite name=\"a\">\n  <testcase name=\"b\">\n  </testsuite>", "TEST-a.xml").unwrap_err();
        assert_eq!(
            error,
            "TEST-a.xml: malformed XML at line 3, column 3: ill-formed document: \
             expected `</testcase>`, but `</testsuite>` was found"
        );
        let error = parse("<testsuite>\n<testcase name=\"x\"/>", "TEST-b.xml").unwrap_err();
        assert_eq!(
            error,
            "TEST-b.xml: malformed XML at line 2, column 21: the file ends before its elements are closed"
        );
        let error = parse("  \n", "TEST-c.xml").unwrap_err();
        assert!(error.ends_with("no root element (is the file empty?)"), "{error}");
        let error =
            parse("<testsuite>\n<testcase name=\"a\"><failure>&nope;</failure></testcase></testsuite>", "d.xml");
        assert!(error.as_ref().unwrap_err().contains("line 2, column"), "unknown entities are malformed: {error:?}");
        let error = parse("<testsuite><testcase name=\"a\" name=\"b\"/></testsuite>", "e.xml").unwrap_err();
        assert!(error.starts_with("e.xml: malformed XML at line 1, column "), "{error}");
    }

    #[test]
    fn other_xml_is_not_a_report() {
        let parsed = parse("<?xml version=\"1.0\"?>\n<project><modelVersion>4</modelVersion></project>", "pom.xml");
        assert!(
            matches!(parsed, Ok(Parsed::NotAReport(why)) if why == "its root element is <project>, not <testsuites> or <testsuite>")
        );
    }
}
