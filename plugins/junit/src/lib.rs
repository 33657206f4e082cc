//! `junit`: the builtin step executor that records test results. It finds JUnit XML and TAP
//! files in the job workspace (read-only, preopened at `/workspace`) by glob, parses them,
//! reports each suite to the host (`report-tests`, stored with the build) and sets the outputs
//! `passed`, `failed`, `skipped` and `files`.
//!
//! The call itself succeeds when the reports were read, whatever the tests' outcomes: the host
//! fails the step when a reported case failed or errored. It fails on configuration errors, on a
//! malformed or unreadable report, and (with `require: true`, the default) when nothing matched.
//!
//! Modules: [`walk`] finds the files, [`junit`] and [`tap`] parse them, [`report`] holds what
//! the parsers share.

pub mod junit;
pub mod report;
pub mod tap;
pub mod walk;

use std::path::Path;

use chengis_plugin_sdk::outputs::{TestOutcome, TestSuite};
use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{Capability, Failure, Host, Kind, Level, Manifest, StepExecutor, export};

use crate::report::Parsed;
use crate::walk::Patterns;

/// Where the host preopens the job workspace.
pub const WORKSPACE: &str = "/workspace";

/// The JUnit XML patterns used when `paths` is not set.
pub const DEFAULT_PATHS: &str = "**/TEST-*.xml,**/junit*.xml";

/// The largest report file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The most failure-message bytes reported per step in full; past it, messages are cut to
/// [`SHORT_MESSAGE`] bytes (the host caps what one step may report, names and messages together).
pub const MESSAGE_BUDGET: usize = 256 * 1024;

/// The length messages are cut to once [`MESSAGE_BUDGET`] is spent.
pub const SHORT_MESSAGE: usize = 256;

/// How many failed tests are listed in the log, at most.
const MAX_LOGGED_FAILURES: usize = 50;

/// The junit step executor.
pub struct Junit;

/// The tallies of the reported cases.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed or errored.
    pub failed: usize,
    /// Cases skipped (including TAP `not ok # TODO`).
    pub skipped: usize,
}

/// Runs the step against the workspace at `root` (`/workspace` in the component): finds the
/// reports, parses every one before reporting any, reports the suites and sets the outputs.
pub fn record(host: &dyn Host, root: &Path) -> Result<Counts, Failure> {
    let config = host.config();
    let xml = Patterns::parse("paths", config.get("paths").unwrap_or(DEFAULT_PATHS))?;
    let tap = config.get("tap").map(|text| Patterns::parse("tap", text)).transpose()?;
    let require: bool = config.or("require", true)?;

    let mut lists = vec![&xml];
    lists.extend(tap.as_ref());
    if let Err(e) = std::fs::read_dir(root) {
        return Err(Failure::new(format!(
            "cannot read the workspace at {} ({e}); the plugin needs the `workspace:read` grant",
            root.display()
        )));
    }
    let files = walk::find(root, &lists).map_err(Failure::new)?;

    let mut suites: Vec<TestSuite> = Vec::new();
    let mut read = 0usize;
    for file in &files {
        let path = root.join(file);
        let size = std::fs::metadata(&path).map_err(|e| Failure::new(format!("cannot read {file}: {e}")))?.len();
        if size > MAX_FILE_BYTES {
            return Err(Failure::new(format!(
                "{file} is {size} bytes; reports over {MAX_FILE_BYTES} bytes are not read"
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| Failure::new(format!("cannot read {file}: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        // A file both lists match is JUnit XML: `paths` comes first.
        let parsed =
            if xml.matches(file) { junit::parse(&text, file).map_err(Failure::new)? } else { tap::parse(&text, file) };
        match parsed {
            Parsed::Suites(found) => {
                read += 1;
                suites.extend(found);
            }
            Parsed::NotAReport(why) => host.log(Level::Warn, &format!("{file} was skipped: {why}")),
        }
    }

    if read == 0 {
        let mut patterns = xml.texts.clone();
        patterns.extend(tap.iter().flat_map(|t| t.texts.iter().cloned()));
        let message = format!("no test report matched {} in the workspace", patterns.join(", "));
        if require {
            return Err(Failure::new(format!("{message} (set `require: false` to allow that)")));
        }
        host.log(Level::Warn, &message);
    }

    if fit_messages(&mut suites) {
        host.log(
            Level::Warn,
            &format!("failure messages past the first {MESSAGE_BUDGET} bytes were cut to {SHORT_MESSAGE} bytes each"),
        );
    }
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for suite in &suites {
        for case in &suite.cases {
            match case.outcome {
                TestOutcome::Passed => counts.passed += 1,
                TestOutcome::Skipped => counts.skipped += 1,
                TestOutcome::Failed | TestOutcome::Errored => {
                    counts.failed += 1;
                    failures.push((suite, case));
                }
            }
        }
        host.report_tests(suite);
    }
    let total = counts.passed + counts.failed + counts.skipped;
    host.info(&format!(
        "{total} tests in {read} files: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    ));
    for (suite, case) in failures.iter().take(MAX_LOGGED_FAILURES) {
        let first_line = case.message.as_deref().and_then(|m| m.lines().next()).unwrap_or("");
        let what = if case.outcome == TestOutcome::Errored { "errored" } else { "failed" };
        let separator = if first_line.is_empty() { "" } else { ": " };
        host.log(Level::Error, &format!("{what}: {} › {}{separator}{first_line}", suite.name, case.name));
    }
    if failures.len() > MAX_LOGGED_FAILURES {
        host.log(Level::Error, &format!("… and {} more", failures.len() - MAX_LOGGED_FAILURES));
    }
    host.set_output("passed", &counts.passed.to_string());
    host.set_output("failed", &counts.failed.to_string());
    host.set_output("skipped", &counts.skipped.to_string());
    host.set_output("files", &read.to_string());
    Ok(counts)
}

/// Cuts the messages that come after the first [`MESSAGE_BUDGET`] bytes of messages to
/// [`SHORT_MESSAGE`] bytes; whether any was cut.
fn fit_messages(suites: &mut [TestSuite]) -> bool {
    let mut used = 0usize;
    let mut cut = false;
    for message in suites.iter_mut().flat_map(|s| s.cases.iter_mut()).filter_map(|c| c.message.as_mut()) {
        used += message.len();
        if used > MESSAGE_BUDGET && message.len() > SHORT_MESSAGE {
            *message = report::truncate(std::mem::take(message), SHORT_MESSAGE);
            cut = true;
        }
    }
    cut
}

impl StepExecutor for Junit {
    fn manifest() -> Manifest {
        Manifest::new("junit", "0.1.0", "Records JUnit XML and TAP test results", Kind::StepExecutor)
            .capability(Capability::WorkspaceRead)
            .config(
                "paths",
                "JUnit XML files: globs relative to the workspace, separated by commas or newlines",
                false,
                Some(DEFAULT_PATHS),
            )
            .config("tap", "TAP files: globs relative to the workspace, separated by commas or newlines", false, None)
            .config("require", "Fail when no report matches (true or false)", false, Some("true"))
    }

    fn run(host: &dyn Host, _invocation: Invocation) -> Result<(), Failure> {
        record(host, Path::new(WORKSPACE)).map(|_| ())
    }
}

export!(Junit as step_executor);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::FakeHost;

    fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const SUREFIRE: &str = r#"<testsuite name="AppTest" time="0.5">
  <testcase name="starts" classname="com.x.AppTest" time="0.25"/>
  <testcase name="stops" classname="com.x.AppTest" time="0.125"><failure message="still running">at App.java:3</failure></testcase>
  <testcase name="later" classname="com.x.AppTest"><skipped/></testcase>
</testsuite>"#;

    const TAP: &str = "TAP version 14\n1..2\nok 1 - parses\nnot ok 2 - renders # TODO next week\n";

    fn outputs(host: &FakeHost) -> Vec<(String, String)> {
        host.outputs()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reports_junit_and_tap_suites_and_sets_the_counts() {
        let dir = workspace(&[
            ("app/target/surefire-reports/TEST-com.x.AppTest.xml", SUREFIRE),
            ("web/results.tap", TAP),
            ("web/pom.xml", "<project/>"),
        ]);
        let host = FakeHost::new().with_config("tap", "**/*.tap");
        let counts = record(&host, dir.path()).unwrap();
        assert_eq!(counts, Counts { passed: 2, failed: 1, skipped: 2 });
        let tests = host.tests();
        let names: Vec<_> = tests.iter().map(|s| (s.name.as_str(), s.cases.len())).collect();
        assert_eq!(names, [("AppTest", 3), ("web/results.tap", 2)]);
        let stops = &tests[0].cases[1];
        assert_eq!((stops.name.as_str(), stops.classname.as_str()), ("stops", "com.x.AppTest"));
        assert_eq!((stops.outcome, stops.duration_ms), (TestOutcome::Failed, 125));
        assert_eq!(stops.message.as_deref(), Some("still running\nat App.java:3"));
        assert_eq!(tests[1].cases[1].outcome, TestOutcome::Skipped);
        assert_eq!(outputs(&host), pairs(&[("passed", "2"), ("failed", "1"), ("skipped", "2"), ("files", "2")]));
        assert_eq!(
            host.log_text(),
            "5 tests in 2 files: 2 passed, 1 failed, 2 skipped\nfailed: AppTest › stops: still running\n"
        );
    }

    #[test]
    fn paths_replace_the_defaults_and_other_xml_is_skipped_with_a_warning() {
        let dir = workspace(&[
            ("junit.xml", SUREFIRE),
            ("out/report.xml", SUREFIRE.replace("AppTest\" time", "Other\" time").as_str()),
            ("out/config.xml", "<config/>"),
        ]);
        let host = FakeHost::new().with_config("paths", "out/*.xml");
        record(&host, dir.path()).unwrap();
        let names: Vec<_> = host.tests().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["Other"]);
        let warnings: Vec<_> = host.logs().into_iter().filter(|(l, _)| *l == Level::Warn).map(|(_, m)| m).collect();
        assert_eq!(
            warnings,
            ["out/config.xml was skipped: its root element is <config>, not <testsuites> or <testsuite>"]
        );
        assert_eq!(host.outputs()[3], ("files".to_string(), "1".to_string()));
    }

    #[test]
    fn nothing_found_fails_unless_not_required() {
        let dir = workspace(&[("README.md", "hi")]);
        let host = FakeHost::new().with_config("tap", "t/*.tap");
        let failure = record(&host, dir.path()).unwrap_err();
        assert_eq!(
            failure.message,
            "no test report matched **/TEST-*.xml, **/junit*.xml, t/*.tap in the workspace \
             (set `require: false` to allow that)"
        );
        assert!(host.outputs().is_empty());

        let host = FakeHost::new().with_config("require", "false");
        assert_eq!(record(&host, dir.path()).unwrap(), Counts::default());
        assert!(host.tests().is_empty());
        assert_eq!(outputs(&host), pairs(&[("passed", "0"), ("failed", "0"), ("skipped", "0"), ("files", "0")]));

        let failure = record(&FakeHost::new().with_config("require", "maybe"), dir.path()).unwrap_err();
        assert!(failure.message.starts_with(r#"invalid configuration: config key "require": expected true or false"#));

        let failure = record(&FakeHost::new(), Path::new("/nonexistent/workspace")).unwrap_err();
        assert!(
            failure.message.starts_with("cannot read the workspace at /nonexistent/workspace ("),
            "{}",
            failure.message
        );
        assert!(failure.message.ends_with("); the plugin needs the `workspace:read` grant"), "{}", failure.message);
    }

    #[test]
    fn a_malformed_report_fails_before_anything_is_reported() {
        let dir = workspace(&[
            ("a/TEST-good.xml", SUREFIRE),
            ("b/TEST-bad.xml", "<testsuite name=\"x\">\n  <testcase name=\"y\">\n</testsuite>\n"),
        ]);
        let host = FakeHost::new();
        let failure = record(&host, dir.path()).unwrap_err();
        assert!(
            failure.message.starts_with("b/TEST-bad.xml: malformed XML at line 3, column 1: "),
            "{}",
            failure.message
        );
        assert!(host.tests().is_empty(), "no partial report");
        assert!(host.outputs().is_empty());
    }

    #[test]
    fn many_failures_are_listed_up_to_a_limit() {
        let cases: String = (0..60).map(|i| format!("<testcase name=\"t{i}\"><error/></testcase>")).collect();
        let dir = workspace(&[("junit.xml", &format!("<testsuite name=\"s\">{cases}</testsuite>"))]);
        let host = FakeHost::new();
        assert_eq!(record(&host, dir.path()).unwrap().failed, 60);
        let errors: Vec<_> = host.logs().into_iter().filter(|(l, _)| *l == Level::Error).map(|(_, m)| m).collect();
        assert_eq!(errors.len(), MAX_LOGGED_FAILURES + 1);
        assert_eq!(errors[0], "errored: s › t0");
        assert_eq!(errors[MAX_LOGGED_FAILURES], "… and 10 more");
    }

    #[test]
    fn long_messages_past_the_budget_are_cut() {
        let trace = "x".repeat(4000);
        let cases: String = (0..100)
            .map(|i| format!("<testcase name=\"t{i}\"><failure message=\"m{i}\">{trace}</failure></testcase>"))
            .collect();
        let dir = workspace(&[("junit.xml", &format!("<testsuite name=\"s\">{cases}</testsuite>"))]);
        let host = FakeHost::new();
        record(&host, dir.path()).unwrap();
        let messages: Vec<_> = host.tests()[0].cases.iter().map(|c| c.message.clone().unwrap()).collect();
        let total: usize = messages.iter().map(String::len).sum();
        assert!(total <= MESSAGE_BUDGET + 4096 + 100 * SHORT_MESSAGE, "{total}");
        assert_eq!(messages[0], format!("m0\n{trace}"));
        assert!(messages[99].starts_with("m99\nxxx") && messages[99].len() <= SHORT_MESSAGE, "{}", messages[99]);
        assert!(host.log_text().contains("failure messages past the first 262144 bytes were cut to 256 bytes each"));
    }

    #[test]
    fn the_manifest_requests_only_reading_the_workspace() {
        let manifest = Junit::manifest();
        assert!(matches!(manifest.capabilities.as_slice(), [Capability::WorkspaceRead]));
        let keys: Vec<_> = manifest.config.iter().map(|c| (c.name.as_str(), c.default.as_deref())).collect();
        assert_eq!(keys, [("paths", Some(DEFAULT_PATHS)), ("tap", None), ("require", Some("true"))]);
    }
}
