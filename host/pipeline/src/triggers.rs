//! Trigger matching: whether a push or pull request event runs the pipeline, decided by its
//! `on:` block (branch, tag and path filters, globs or `re:` regular expressions, `!` to
//! deselect; pull request `types`), with the reason when it does not.

use crate::model::{Filters, Triggers};

/// What happened in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerEvent {
    /// Commits pushed to a branch.
    Push {
        /// The branch, without `refs/heads/`.
        branch: String,
        /// The files the push changed, when known.
        changed_files: Option<Vec<String>>,
    },
    /// A tag pushed.
    Tag {
        /// The tag, without `refs/tags/`.
        tag: String,
    },
    /// A pull request opened or updated.
    PullRequest {
        /// What happened: `opened`, `synchronize` or `reopened`.
        action: String,
        /// The branch it targets.
        base: String,
        /// The files it changes, when known.
        changed_files: Option<Vec<String>>,
    },
}

/// Whether `event` runs a pipeline whose `on:` is `on`: `Ok(())`, or `Err` with the reason
/// (e.g. "branch `dev` is not in on.push.branches"). Without an `on:` block every push, tag
/// and pull request runs; with one, only the events it lists. Path filters pass when the
/// changed files are not known.
pub fn decide(on: Option<&Triggers>, event: &TriggerEvent) -> Result<(), String> {
    let Some(on) = on else { return Ok(()) };
    match event {
        TriggerEvent::Push { branch, changed_files } => {
            let Some(f) = &on.push else { return Err("the pipeline's `on:` has no `push`".into()) };
            if f.branches.is_empty() && !f.tags.is_empty() {
                return Err(format!("branch `{branch}`: on.push lists tags only"));
            }
            names(branch, "on.push", &f.branches, &f.branches_ignore, "branch", "branches")?;
            paths(f, changed_files.as_deref(), "on.push")
        }
        TriggerEvent::Tag { tag } => {
            // A tag runs for `on.tag`, or for `on.push` when that lists tags.
            let (f, at) = match (&on.tag, &on.push) {
                (Some(f), _) => (f, "on.tag"),
                (None, Some(f)) if !f.tags.is_empty() || !f.tags_ignore.is_empty() => (f, "on.push"),
                _ => return Err(format!("tag `{tag}`: the pipeline's `on:` has no tag trigger")),
            };
            names(tag, at, &f.tags, &f.tags_ignore, "tag", "tags")
        }
        TriggerEvent::PullRequest { action, base, changed_files } => {
            let Some(f) = &on.pull_request else {
                return Err("the pipeline's `on:` has no `pull_request`".into());
            };
            if !f.types.is_empty() && !f.types.iter().any(|t| t == action) {
                return Err(format!("pull request action `{action}` is not in on.pull_request.types"));
            }
            names(base, "on.pull_request", &f.branches, &f.branches_ignore, "target branch", "branches")?;
            paths(f, changed_files.as_deref(), "on.pull_request")
        }
    }
}

fn names(name: &str, at: &str, include: &[String], exclude: &[String], what: &str, key: &str) -> Result<(), String> {
    if !include.is_empty() && !selected(include, name) {
        return Err(format!("{what} `{name}` is not in {at}.{key}"));
    }
    if let Some(p) = exclude.iter().find(|p| matches(p, name)) {
        return Err(format!("{what} `{name}` matches {at}.{key}-ignore `{p}`"));
    }
    Ok(())
}

fn paths(f: &Filters, changed: Option<&[String]>, at: &str) -> Result<(), String> {
    let Some(changed) = changed else { return Ok(()) };
    if !f.paths.is_empty() && !changed.iter().any(|file| selected(&f.paths, file)) {
        return Err(format!("no changed file matches {at}.paths"));
    }
    if !f.paths_ignore.is_empty()
        && !changed.is_empty()
        && changed.iter().all(|file| f.paths_ignore.iter().any(|p| matches(p, file)))
    {
        return Err(format!("every changed file matches {at}.paths-ignore"));
    }
    Ok(())
}

/// Whether a list of patterns selects `text`: patterns apply in order, a pattern starting with
/// `!` deselects what it matches, and the last one that matches decides (`['release/*',
/// '!release/old*']`).
pub fn selected(patterns: &[String], text: &str) -> bool {
    patterns.iter().fold(false, |chosen, p| match p.strip_prefix('!') {
        Some(negated) if matches(negated, text) => false,
        Some(_) => chosen,
        None => chosen || matches(p, text),
    })
}

/// Whether `pattern` (a glob, or a regular expression after `re:`) matches `text`. Invalid
/// patterns match nothing (the linter reports them).
pub fn matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_prefix("re:") {
        Some(re) => regex::Regex::new(re).is_ok_and(|re| re.is_match(text)),
        None => globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .is_ok_and(|g| g.compile_matcher().is_match(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(yaml_push: Filters) -> Triggers {
        Triggers { push: Some(yaml_push), ..Triggers::default() }
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn push(branch: &str, files: Option<&[&str]>) -> TriggerEvent {
        TriggerEvent::Push { branch: branch.into(), changed_files: files.map(list) }
    }

    #[test]
    fn without_on_everything_runs() {
        assert!(decide(None, &push("any", None)).is_ok());
        assert!(decide(None, &TriggerEvent::Tag { tag: "v1".into() }).is_ok());
    }

    #[test]
    fn branch_filters_with_ignore_and_regex() {
        let t = on(Filters {
            branches: list(&["main", "release/*", "re:^hotfix-\\d+$"]),
            branches_ignore: list(&["release/old*"]),
            ..Filters::default()
        });
        assert!(decide(Some(&t), &push("main", None)).is_ok());
        assert!(decide(Some(&t), &push("release/1.2", None)).is_ok());
        assert!(decide(Some(&t), &push("hotfix-12", None)).is_ok());
        assert_eq!(decide(Some(&t), &push("dev", None)).unwrap_err(), "branch `dev` is not in on.push.branches");
        assert!(decide(Some(&t), &push("release/a/b", None)).is_err(), "* does not cross /");
        assert!(decide(Some(&t), &push("release/old-1", None)).unwrap_err().contains("branches-ignore"));
    }

    #[test]
    fn negated_patterns_deselect_and_the_last_match_wins() {
        let t =
            on(Filters { branches: list(&["release/*", "!release/old*", "release/old-keep"]), ..Filters::default() });
        assert!(decide(Some(&t), &push("release/2", None)).is_ok());
        assert!(decide(Some(&t), &push("release/old-1", None)).is_err());
        assert!(decide(Some(&t), &push("release/old-keep", None)).is_ok());
        let t = on(Filters { paths: list(&["src/**", "!src/generated/**"]), ..Filters::default() });
        assert!(decide(Some(&t), &push("main", Some(&["src/generated/a.rs"]))).is_err());
        assert!(decide(Some(&t), &push("main", Some(&["src/generated/a.rs", "src/lib.rs"]))).is_ok());
    }

    #[test]
    fn path_filters_include_and_exclude() {
        let t = on(Filters { paths: list(&["src/**", "Cargo.toml"]), ..Filters::default() });
        assert!(decide(Some(&t), &push("main", Some(&["src/a/b.rs"]))).is_ok());
        assert!(decide(Some(&t), &push("main", Some(&["docs/x.md"]))).unwrap_err().contains("on.push.paths"));
        assert!(decide(Some(&t), &push("main", None)).is_ok(), "unknown files do not block");
        let t = on(Filters { paths_ignore: list(&["docs/**", "*.md"]), ..Filters::default() });
        assert!(
            decide(Some(&t), &push("main", Some(&["docs/a.md", "README.md"]))).unwrap_err().contains("paths-ignore")
        );
        assert!(decide(Some(&t), &push("main", Some(&["docs/a.md", "src/x.rs"]))).is_ok());
    }

    #[test]
    fn tags_and_pull_requests() {
        let t = Triggers {
            push: Some(Filters { tags: list(&["v*"]), ..Filters::default() }),
            pull_request: Some(Filters { branches: list(&["main"]), ..Filters::default() }),
            ..Triggers::default()
        };
        assert!(decide(Some(&t), &TriggerEvent::Tag { tag: "v1.0".into() }).is_ok());
        assert!(decide(Some(&t), &TriggerEvent::Tag { tag: "nightly".into() }).is_err());
        assert!(decide(Some(&t), &push("main", None)).unwrap_err().contains("tags only"));
        let pr =
            |base: &str| TriggerEvent::PullRequest { action: "opened".into(), base: base.into(), changed_files: None };
        assert!(decide(Some(&t), &pr("main")).is_ok());
        assert_eq!(decide(Some(&t), &pr("dev")).unwrap_err(), "target branch `dev` is not in on.pull_request.branches");
        let typed = Triggers {
            pull_request: Some(Filters { types: list(&["opened", "reopened"]), ..Filters::default() }),
            ..Triggers::default()
        };
        assert!(decide(Some(&typed), &pr("main")).is_ok());
        let sync = TriggerEvent::PullRequest { action: "synchronize".into(), base: "main".into(), changed_files: None };
        assert!(decide(Some(&typed), &sync).unwrap_err().contains("on.pull_request.types"));
        let only_push = on(Filters::default());
        assert!(decide(Some(&only_push), &pr("main")).unwrap_err().contains("no `pull_request`"));
    }
}
