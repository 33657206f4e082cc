//! The `rules` configuration: parsing `allow <glob>`, `deny <glob>` and `allow-registry <glob>`
//! lines into ordered glob rules, and finding the first rule that matches an image.

use chengis_plugin_sdk::rules;
use globset::{GlobBuilder, GlobMatcher};

use crate::reference::ImageRef;

/// What a rule does with the images it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `allow <glob>`: the normalised reference matches the glob.
    Allow,
    /// `deny <glob>`: the normalised reference matches the glob.
    Deny,
    /// `allow-registry <glob>`: the registry host (with port) matches the glob.
    AllowRegistry,
}

/// One rule of the `rules` configuration.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its line number, from 1 (`;` counts as a line break).
    pub line: usize,
    /// The rule as written, trimmed.
    pub text: String,
    /// What it does.
    pub action: Action,
    matcher: GlobMatcher,
}

impl Rule {
    /// Whether the rule applies to `image` (whose normalised text is `normalised`).
    pub fn matches(&self, image: &ImageRef, normalised: &str) -> bool {
        match self.action {
            Action::Allow | Action::Deny => self.matcher.is_match(normalised),
            Action::AllowRegistry => self.matcher.is_match(&image.registry),
        }
    }

    /// `line 2 `deny docker.io/*``: how messages name the rule.
    pub fn describe(&self) -> String {
        rules::describe(self.line, &self.text)
    }
}

pub use chengis_plugin_sdk::rules::RuleError;

const SYNTAX: &str = "a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`";

/// Parses the `rules` text: one rule per line or per `;`-separated part; blank lines and lines
/// starting with `#` are skipped. Every invalid line is reported, with its number.
pub fn parse(text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    rules::parse(text, SYNTAX, |line| {
        let (action, matcher) = parse_line(line.text)?;
        Ok(Rule { line: line.line, text: line.text.into(), action, matcher })
    })
}

fn parse_line(line: &str) -> Result<(Action, GlobMatcher), String> {
    let mut words = line.split_whitespace();
    let keyword = words.next().unwrap_or_default();
    let action = match keyword {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "allow-registry" => Action::AllowRegistry,
        other => return Err(format!("unknown action `{other}`; {SYNTAX}")),
    };
    let Some(pattern) = words.next() else {
        return Err(format!("`{keyword}` needs a glob; {SYNTAX}"));
    };
    if words.next().is_some() {
        return Err(format!("`{keyword}` takes one glob, without spaces; {SYNTAX}"));
    }
    let glob = GlobBuilder::new(pattern).build().map_err(|e| format!("invalid glob `{pattern}`: {}", e.kind()))?;
    Ok((action, glob.compile_matcher()))
}

/// The first rule that applies to `image`, if any.
pub fn first_match<'r>(rules: &'r [Rule], image: &ImageRef) -> Option<&'r Rule> {
    let normalised = image.to_string();
    rules.iter().find(|rule| rule.matches(image, &normalised))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::normalise;

    fn matching(rules: &str, image: &str) -> Option<String> {
        let rules = parse(rules).unwrap();
        first_match(&rules, &normalise(image).unwrap()).map(Rule::describe)
    }

    #[test]
    fn first_match_wins_in_order() {
        let rules = "deny docker.io/library/node:14*\nallow docker.io/library/node:*\ndeny *";
        assert_eq!(matching(rules, "node:14.2").as_deref(), Some("line 1 `deny docker.io/library/node:14*`"));
        assert_eq!(matching(rules, "node:20").as_deref(), Some("line 2 `allow docker.io/library/node:*`"));
        assert_eq!(matching(rules, "ruby").as_deref(), Some("line 3 `deny *`"));
        // Order matters: the catch-all first shadows the rest.
        let rules = "deny *\nallow docker.io/library/node:*";
        assert_eq!(matching(rules, "node:20").as_deref(), Some("line 1 `deny *`"));
    }

    #[test]
    fn globs_match_the_normalised_reference() {
        // `node` is not how the image is matched: `docker.io/library/node:latest` is.
        assert_eq!(matching("allow node", "node"), None);
        assert_eq!(matching("allow node*", "node"), None);
        assert!(matching("allow docker.io/library/node:latest", "node").is_some());
        assert!(matching("allow docker.io/library/*", "node:20").is_some());
        // `*` also crosses `/`.
        assert!(matching("allow ghcr.io/org/*", "ghcr.io/org/team/app:1").is_some());
        assert!(matching("allow {ghcr.io,quay.io}/org/*", "quay.io/org/app").is_some());
        assert!(matching("allow ghcr.io/org/app:1.?", "ghcr.io/org/app:1.2").is_some());
        assert!(matching("allow ghcr.io/org/app:1.?", "ghcr.io/org/app:1.22").is_none());
    }

    #[test]
    fn allow_registry_matches_the_registry_host_only() {
        assert!(matching("allow-registry docker.io", "node").is_some());
        assert!(matching("allow-registry registry.example:5000", "registry.example:5000/app").is_some());
        assert!(matching("allow-registry registry.example", "registry.example:5000/app").is_none());
        assert!(matching("allow-registry *.example*", "registry.example:5000/app").is_some());
        assert!(matching("allow-registry ghcr.io", "docker.io/ghcr.io/app").is_none());
        assert!(matching("allow-registry ghcr.io", "user/ghcr.io").is_none());
    }

    #[test]
    fn separators_comments_and_line_numbers() {
        let rules = parse("# images\n\nallow-registry ghcr.io; deny docker.io/*\r\n  allow *  ").unwrap();
        let described: Vec<_> = rules.iter().map(|r| (r.line, r.action, r.text.as_str())).collect();
        assert_eq!(
            described,
            [
                (3, Action::AllowRegistry, "allow-registry ghcr.io"),
                (4, Action::Deny, "deny docker.io/*"),
                (5, Action::Allow, "allow *"),
            ]
        );
    }

    #[test]
    fn every_invalid_line_is_reported_with_its_number() {
        let errors = parse("allow ghcr.io/*\nalow node\ndeny\ndeny a b\nallow [oops\nallow-registry").unwrap_err();
        let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "line 2 `alow node`: unknown action `alow`; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
                "line 3 `deny`: `deny` needs a glob; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
                "line 4 `deny a b`: `deny` takes one glob, without spaces; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
                "line 5 `allow [oops`: invalid glob `[oops`: unclosed character class; missing ']'",
                "line 6 `allow-registry`: `allow-registry` needs a glob; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
            ]
        );
    }

    #[test]
    fn rules_with_no_rule_are_an_error() {
        let errors = parse("# nothing yet\n\n ; ").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("there are no rules"), "{}", errors[0].message);
    }
}
