//! The `rules` configuration: parsing `only <job-glob> on <refs>`, `approval <job-glob> on
//! <refs>` and `privileged on <refs>` lines, and matching job names and build refs.

use chengis_plugin_sdk::rules;
use globset::{GlobBuilder, GlobMatcher};

/// What a rule restricts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `only <job-glob> on <refs>`: matching jobs run only on these refs.
    Only,
    /// `approval <job-glob> on <refs>`: matching jobs on these refs need an approval gate.
    Approval,
    /// `privileged on <refs>`: privileged or Docker-socket jobs run only on these refs.
    Privileged,
}

/// A glob as written and compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The glob as written.
    pub text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    fn new(text: &str, what: &str) -> Result<Self, String> {
        let glob = GlobBuilder::new(text).build().map_err(|e| format!("invalid {what} glob `{text}`: {}", e.kind()))?;
        Ok(Pattern { text: text.into(), matcher: glob.compile_matcher() })
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }
}

/// One rule of the `rules` configuration.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its line number, from 1 (`;` counts as a line break).
    pub line: usize,
    /// The rule as written, trimmed.
    pub text: String,
    /// What it restricts.
    pub kind: RuleKind,
    /// The job-name glob (`None` for `privileged`, which is about every job).
    pub jobs: Option<Pattern>,
    /// The ref globs after `on`.
    pub refs: Vec<Pattern>,
}

impl Rule {
    /// Whether the rule is about the job named `name`.
    pub fn covers_job(&self, name: &str) -> bool {
        self.jobs.as_ref().is_none_or(|jobs| jobs.is_match(name))
    }

    /// Whether one of the build's refs matches one of the rule's ref globs.
    pub fn covers_refs(&self, build_refs: &[String]) -> bool {
        build_refs.iter().any(|r| self.refs.iter().any(|glob| glob.is_match(r)))
    }

    /// The rule's refs as `` `main`, `tag:v*` ``.
    pub fn refs_text(&self) -> String {
        self.refs.iter().map(|r| format!("`{}`", r.text)).collect::<Vec<_>>().join(", ")
    }

    /// `line 2 `only deploy* on main``: how messages name the rule.
    pub fn describe(&self) -> String {
        rules::describe(self.line, &self.text)
    }
}

pub use chengis_plugin_sdk::rules::RuleError;

const SYNTAX: &str = "a rule is `only <job-glob> on <ref-glob>, ...`, `approval <job-glob> on <ref-glob>, ...` or `privileged on <ref-glob>, ...`";

/// Parses the `rules` text: one rule per line or per `;`-separated part; blank lines and lines
/// starting with `#` are skipped. Every invalid line is reported, with its number.
pub fn parse(text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    rules::parse(text, SYNTAX, |line| {
        let (kind, jobs, refs) = parse_line(line.text)?;
        Ok(Rule { line: line.line, text: line.text.into(), kind, jobs, refs })
    })
}

type Parsed = (RuleKind, Option<Pattern>, Vec<Pattern>);

fn parse_line(line: &str) -> Result<Parsed, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let keyword = words.first().copied().unwrap_or_default();
    let kind = match keyword {
        "only" => RuleKind::Only,
        "approval" => RuleKind::Approval,
        "privileged" => RuleKind::Privileged,
        other => return Err(format!("unknown rule `{other}`; {SYNTAX}")),
    };
    let Some(on) = words.iter().skip(1).position(|w| *w == "on").map(|i| i + 1) else {
        return Err(match kind {
            RuleKind::Privileged => "`privileged` needs `on <ref-glob>, ...`".to_string(),
            _ => format!("`{keyword}` needs `on <ref-glob>, ...` after the job glob"),
        });
    };
    let jobs = match (kind, on) {
        (RuleKind::Privileged, 1) => None,
        (RuleKind::Privileged, _) => {
            return Err("`privileged` takes no job glob: it is about every job that asks for `privileged` or `docker-socket`; write `privileged on <ref-glob>, ...`".into());
        }
        (_, 1) => return Err(format!("`{keyword}` needs a job glob before `on`")),
        (_, _) => Some(Pattern::new(&words[1..on].join(" "), "job")?),
    };
    let refs_text = words[on + 1..].join(" ");
    if refs_text.is_empty() {
        return Err(format!("`{keyword}` needs at least one ref glob after `on`"));
    }
    let refs = refs_text
        .split(',')
        .map(str::trim)
        .map(|glob| match glob {
            "" => {
                Err("an empty ref glob: separate ref globs with single commas, e.g. `main, release/*, tag:v*`".into())
            }
            glob if glob.contains(char::is_whitespace) => {
                Err(format!("ref glob `{glob}` has a space (refs have none): separate ref globs with commas"))
            }
            glob => Pattern::new(glob, "ref"),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((kind, jobs, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Rule {
        let mut rules = parse(text).unwrap();
        assert_eq!(rules.len(), 1);
        rules.remove(0)
    }

    fn refs(refs: &[&str]) -> Vec<String> {
        refs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn parses_every_kind() {
        let rule = one("only deploy* on main, release/*, tag:v*");
        assert_eq!(rule.kind, RuleKind::Only);
        assert_eq!(rule.jobs.as_ref().map(|j| j.text.as_str()), Some("deploy*"));
        assert_eq!(rule.refs_text(), "`main`, `release/*`, `tag:v*`");
        let rule = one("approval prod-* on main");
        assert_eq!((rule.kind, rule.refs.len()), (RuleKind::Approval, 1));
        let rule = one("privileged on main,tag:*");
        assert_eq!(rule.kind, RuleKind::Privileged);
        assert!(rule.jobs.is_none());
        assert_eq!(rule.refs_text(), "`main`, `tag:*`");
        // Job globs may have spaces (matrix job names do); refs cannot.
        let rule = one("only test (linux*) on main");
        assert!(rule.covers_job("test (linux, 1.95)"));
    }

    #[test]
    fn globs_match_jobs_and_refs() {
        let rule = one("only deploy* on main, release/*, tag:v*");
        assert!(rule.covers_job("deploy") && rule.covers_job("deploy-prod") && !rule.covers_job("predeploy"));
        assert!(rule.covers_refs(&refs(&["main"])));
        assert!(rule.covers_refs(&refs(&["release/1.0"])));
        assert!(rule.covers_refs(&refs(&["tag:v1.2.0"])));
        assert!(!rule.covers_refs(&refs(&["v1.2.0"])), "a branch named like a tag is not a tag");
        assert!(!rule.covers_refs(&refs(&["tag:main"])), "a tag named like a branch is not a branch");
        assert!(!rule.covers_refs(&refs(&["mainline"])));
        assert!(!rule.covers_refs(&refs(&[""])));
        assert!(rule.covers_refs(&refs(&["feature", "tag:v2"])), "any of the build's refs");
        // `*` matches every ref, tags and the empty ref included.
        let any = one("privileged on *");
        assert!(
            any.covers_refs(&refs(&[""])) && any.covers_refs(&refs(&["a/b/c"])) && any.covers_refs(&refs(&["tag:x"]))
        );
        assert!(any.covers_job("whatever"));
    }

    #[test]
    fn separators_comments_and_line_numbers() {
        let rules = parse("# protect\n\nonly deploy on main; privileged on main\r\n approval * on release/* ").unwrap();
        let lines: Vec<_> = rules.iter().map(|r| (r.line, r.kind, r.text.as_str())).collect();
        assert_eq!(
            lines,
            [
                (3, RuleKind::Only, "only deploy on main"),
                (4, RuleKind::Privileged, "privileged on main"),
                (5, RuleKind::Approval, "approval * on release/*"),
            ]
        );
    }

    #[test]
    fn every_invalid_line_is_reported_with_its_number() {
        let text = "only deploy on main\nonly deploy\nonly on main\napproval x on\nprivileged deploy on main\nprivileged\nprotect main\nonly x on main,,dev\nonly x on main dev\nonly [x on main\napproval x on {a";
        let errors = parse(text).unwrap_err();
        let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "line 2 `only deploy`: `only` needs `on <ref-glob>, ...` after the job glob",
                "line 3 `only on main`: `only` needs a job glob before `on`",
                "line 4 `approval x on`: `approval` needs at least one ref glob after `on`",
                "line 5 `privileged deploy on main`: `privileged` takes no job glob: it is about every job that asks for `privileged` or `docker-socket`; write `privileged on <ref-glob>, ...`",
                "line 6 `privileged`: `privileged` needs `on <ref-glob>, ...`",
                "line 7 `protect main`: unknown rule `protect`; a rule is `only <job-glob> on <ref-glob>, ...`, `approval <job-glob> on <ref-glob>, ...` or `privileged on <ref-glob>, ...`",
                "line 8 `only x on main,,dev`: an empty ref glob: separate ref globs with single commas, e.g. `main, release/*, tag:v*`",
                "line 9 `only x on main dev`: ref glob `main dev` has a space (refs have none): separate ref globs with commas",
                "line 10 `only [x on main`: invalid job glob `[x`: unclosed character class; missing ']'",
                "line 11 `approval x on {a`: invalid ref glob `{a`: unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)",
            ]
        );
    }

    #[test]
    fn rules_with_no_rule_are_an_error() {
        let errors = parse("  \n# later\n").unwrap_err();
        assert!(errors[0].message.starts_with("there are no rules"), "{}", errors[0].message);
    }
}
