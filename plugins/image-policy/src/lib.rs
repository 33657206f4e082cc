//! `image-policy`: the builtin policy that allows or denies a build plan by the container
//! images it would run (every job image, service image and step image), with ordered glob rules
//! over Docker-normalised image references. A deny lists every refused image.
//!
//! Configuration (server-side): `rules` (required), ordered `allow <glob>`, `deny <glob>` and
//! `allow-registry <glob>` lines, first match wins; `default` (`deny` or `allow`) for images no
//! rule matches. See the README for the full syntax.

pub mod reference;
pub mod rules;

use std::collections::HashSet;

use chengis_plugin_sdk::policy::{Decision, Plan};
use chengis_plugin_sdk::{ConfigError, Diagnostic, Failure, Host, Kind, Manifest, Policy, Severity, export};

use crate::reference::{ImageRef, normalise};
use crate::rules::{Action, Rule};

/// The `image-policy` plugin.
pub struct ImagePolicy;

/// What happens to images that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmatched {
    Allow,
    Deny,
}

impl Policy for ImagePolicy {
    fn manifest() -> Manifest {
        Manifest::new("image-policy", "0.1.0", "Allowed registries and images as ordered glob rules", Kind::Policy)
            .config(
                "rules",
                "Ordered rules, one per line or separated by `;`: `allow <glob>`, `deny <glob>` (matched against the normalised image, e.g. docker.io/library/node:20) or `allow-registry <glob>` (the registry host); the first match wins",
                true,
                None,
            )
            .config("default", "What happens to images no rule matches: `deny` or `allow`", false, Some("deny"))
    }

    fn check(host: &dyn Host, plan: Plan) -> Result<Decision, Failure> {
        let config = host.config();
        let text = chengis_plugin_sdk::rules::required_text(&config, "rules")?;
        let rules = rules::parse(text).map_err(|errors| chengis_plugin_sdk::rules::invalid("rules", errors))?;
        let default = match config.optional::<String>("default")?.as_deref() {
            None | Some("deny") => Unmatched::Deny,
            Some("allow") => Unmatched::Allow,
            Some(other) => {
                return Err(ConfigError {
                    key: "default".into(),
                    message: format!("expected `deny` or `allow`, got {other:?}"),
                }
                .into());
            }
        };

        let mut seen = HashSet::new();
        let mut reasons = Vec::new();
        for job in &plan.jobs {
            let images = job
                .image
                .iter()
                .map(|image| ("image", format!("jobs.{}.image", job.name), image))
                .chain(
                    job.services
                        .iter()
                        .enumerate()
                        .map(|(i, image)| ("service image", format!("jobs.{}.services[{i}]", job.name), image)),
                )
                .chain(
                    job.step_images.iter().map(|image| ("step image", format!("jobs.{}.steps.image", job.name), image)),
                );
            for (what, field, image) in images {
                if !seen.insert((field.clone(), image.clone())) {
                    continue;
                }
                if let Some(reason) = judge(&rules, default, &job.name, what, field, image) {
                    reasons.push(reason);
                }
            }
        }

        let summary = format!("{} image(s) in {} job(s) of pipeline {}", seen.len(), plan.jobs.len(), plan.pipeline);
        if reasons.is_empty() {
            host.info(&format!("image-policy: allowed {summary}"));
            Ok(Decision::Allow(Vec::new()))
        } else {
            host.info(&format!("image-policy: denied {} of {summary}", reasons.len()));
            Ok(Decision::Deny(reasons))
        }
    }
}

/// The reason to deny one image, or `None` when it is allowed.
fn judge(rules: &[Rule], default: Unmatched, job: &str, what: &str, field: String, image: &str) -> Option<Diagnostic> {
    let deny = |code: &str, message: String, help: String| Diagnostic {
        severity: Severity::Error,
        code: code.into(),
        message,
        field: Some(field.clone()),
        help: Some(help),
    };
    let parsed = match normalise(image) {
        Ok(parsed) => parsed,
        Err(why) => {
            return Some(deny(
                "image-invalid",
                format!("job `{job}`: {what} `{image}` is not a valid image reference: it {why}"),
                "write the image as a literal reference such as `node:20` or `ghcr.io/org/app:1.2`; an image computed by an expression cannot be checked before the build runs".into(),
            ));
        }
    };
    let normalised = parsed.to_string();
    match rules::first_match(rules, &parsed) {
        Some(rule) if rule.action == Action::Deny => Some(deny(
            "image-denied",
            format!("job `{job}`: {what} `{image}` ({normalised}) is denied by {}", rule.describe()),
            format!(
                "use another image, or put a rule that allows `{normalised}` above line {} of the image-policy `rules`",
                rule.line
            ),
        )),
        Some(_) => None,
        None if default == Unmatched::Allow => None,
        None => Some(deny(
            "image-not-allowed",
            format!("job `{job}`: {what} `{image}` ({normalised}) matches no rule, and `default` is `deny`"),
            format!(
                "use an allowed image, or add a rule such as `allow {}` or `allow-registry {}` to the image-policy `rules`",
                suggested_glob(&parsed),
                parsed.registry
            ),
        )),
    }
}

/// A glob that allows every tag (or digest) of the image's repository.
fn suggested_glob(image: &ImageRef) -> String {
    let pin = if image.tag.is_some() { ":*" } else { "@*" };
    format!("{}/{}{pin}", image.registry, image.repository)
}

export!(ImagePolicy as policy);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::Level;
    use chengis_plugin_sdk::policy::PlannedJob;
    use chengis_plugin_sdk::testing::{FakeHost, planned_job as job, sample_plan as plan};

    fn check(rules: &str, default: Option<&str>, jobs: Vec<PlannedJob>) -> (Result<Decision, Failure>, FakeHost) {
        let mut host = FakeHost::new().with_config("rules", rules);
        if let Some(default) = default {
            host = host.with_config("default", default);
        }
        (ImagePolicy::check(&host, plan(jobs)), host)
    }

    fn denied(rules: &str, default: Option<&str>, jobs: Vec<PlannedJob>) -> Vec<Diagnostic> {
        match check(rules, default, jobs).0 {
            Ok(Decision::Deny(reasons)) => reasons,
            other => panic!("expected a deny, got {other:?}"),
        }
    }

    fn allowed(rules: &str, default: Option<&str>, jobs: Vec<PlannedJob>) {
        match check(rules, default, jobs).0 {
            Ok(Decision::Allow(warnings)) => assert!(warnings.is_empty(), "{warnings:?}"),
            other => panic!("expected an allow, got {other:?}"),
        }
    }

    #[test]
    fn manifest_declares_a_pure_policy() {
        let manifest = ImagePolicy::manifest();
        assert_eq!((manifest.name.as_str(), manifest.version.as_str()), ("image-policy", "0.1.0"));
        assert_eq!(manifest.kinds, [Kind::Policy]);
        assert!(manifest.capabilities.is_empty());
        let keys: Vec<_> =
            manifest.config.iter().map(|f| (f.name.as_str(), f.required, f.default.as_deref())).collect();
        assert_eq!(keys, [("rules", true, None), ("default", false, Some("deny"))]);
    }

    #[test]
    fn a_denied_image_names_job_image_rule_and_line() {
        let rules = "allow-registry ghcr.io\ndeny docker.io/library/node:1?*\nallow docker.io/library/*";
        let reasons = denied(rules, None, vec![job("build", Some("node:16")), job("test", Some("node:8"))]);
        assert_eq!(reasons.len(), 1);
        let reason = &reasons[0];
        assert_eq!(reason.severity, Severity::Error);
        assert_eq!(reason.code, "image-denied");
        assert_eq!(
            reason.message,
            "job `build`: image `node:16` (docker.io/library/node:16) is denied by line 2 `deny docker.io/library/node:1?*`"
        );
        assert_eq!(reason.field.as_deref(), Some("jobs.build.image"));
        assert_eq!(
            reason.help.as_deref(),
            Some(
                "use another image, or put a rule that allows `docker.io/library/node:16` above line 2 of the image-policy `rules`"
            )
        );
    }

    #[test]
    fn first_match_wins() {
        // The allow for node:20 comes before the broad deny.
        let rules = "allow docker.io/library/node:20\ndeny docker.io/*\nallow *";
        allowed(rules, None, vec![job("a", Some("node:20"))]);
        let reasons = denied(rules, None, vec![job("a", Some("node:21"))]);
        assert!(reasons[0].message.ends_with("denied by line 2 `deny docker.io/*`"), "{}", reasons[0].message);
        // Reversed, the deny shadows the allow.
        let reasons =
            denied("deny docker.io/*\nallow docker.io/library/node:20", None, vec![job("a", Some("node:20"))]);
        assert!(reasons[0].message.ends_with("denied by line 1 `deny docker.io/*`"));
    }

    #[test]
    fn default_deny_and_default_allow() {
        let jobs = || vec![job("lint", Some("ruby:3"))];
        let reasons = denied("allow-registry ghcr.io", None, jobs());
        assert_eq!(reasons[0].code, "image-not-allowed");
        assert_eq!(
            reasons[0].message,
            "job `lint`: image `ruby:3` (docker.io/library/ruby:3) matches no rule, and `default` is `deny`"
        );
        assert_eq!(
            reasons[0].help.as_deref(),
            Some(
                "use an allowed image, or add a rule such as `allow docker.io/library/ruby:*` or `allow-registry docker.io` to the image-policy `rules`"
            )
        );
        assert_eq!(denied("allow-registry ghcr.io", Some("deny"), jobs())[0].code, "image-not-allowed");
        allowed("allow-registry ghcr.io", Some("allow"), jobs());
        // Under default allow, deny rules still deny.
        let reasons = denied("deny docker.io/library/ruby:*", Some("allow"), jobs());
        assert_eq!(reasons[0].code, "image-denied");
    }

    #[test]
    fn a_bad_default_names_the_key() {
        let (result, _) = check("allow *", Some("maybe"), vec![]);
        let failure = result.unwrap_err();
        assert_eq!(
            failure.message,
            r#"invalid configuration: config key "default": expected `deny` or `allow`, got "maybe""#
        );
        assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.default"));
    }

    #[test]
    fn services_and_step_images_are_checked_and_every_denied_image_is_listed() {
        let mut build = job("build", Some("ghcr.io/org/builder:1"));
        build.services = vec!["ghcr.io/org/cache:2".into(), "postgres:16".into(), "redis".into()];
        build.step_images = vec!["alpine:3".into(), "ghcr.io/org/tools:1".into(), "alpine:3".into()];
        let mut test = job("test", Some("evil/miner"));
        test.step_images = vec!["registry.example:5000/scan@sha256:0123456789abcdef0123456789abcdef".into()];
        let rules = "allow-registry ghcr.io\ndeny docker.io/evil/*\nallow docker.io/library/postgres:*";
        let reasons = denied(rules, None, vec![build, test, job("noimage", None)]);
        let summary: Vec<_> = reasons.iter().map(|r| (r.code.as_str(), r.field.as_deref().unwrap())).collect();
        assert_eq!(
            summary,
            [
                ("image-not-allowed", "jobs.build.services[2]"),
                ("image-not-allowed", "jobs.build.steps.image"),
                ("image-denied", "jobs.test.image"),
                ("image-not-allowed", "jobs.test.steps.image"),
            ]
        );
        assert_eq!(
            reasons[0].message,
            "job `build`: service image `redis` (docker.io/library/redis:latest) matches no rule, and `default` is `deny`"
        );
        assert_eq!(
            reasons[1].message,
            "job `build`: step image `alpine:3` (docker.io/library/alpine:3) matches no rule, and `default` is `deny`"
        );
        assert_eq!(
            reasons[2].message,
            "job `test`: image `evil/miner` (docker.io/evil/miner:latest) is denied by line 2 `deny docker.io/evil/*`"
        );
        assert!(reasons[3].help.as_deref().unwrap().contains("`allow registry.example:5000/scan@*`"));
    }

    #[test]
    fn invalid_images_are_denied_whatever_the_default() {
        let reasons = denied("allow *", Some("allow"), vec![job("deploy", Some("(expression)"))]);
        assert_eq!(reasons[0].code, "image-invalid");
        assert_eq!(
            reasons[0].message,
            "job `deploy`: image `(expression)` is not a valid image reference: it has an invalid repository name `(expression)` (lowercase letters and digits, separated by `.`, `_`, `__` or `-`, and `/` between components)"
        );
    }

    #[test]
    fn allows_with_no_warnings_and_logs_one_line() {
        let mut build = job("build", Some("node:20"));
        build.services = vec!["postgres:16".into()];
        let (result, host) = check("allow docker.io/library/*", None, vec![build, job("b", None)]);
        assert!(matches!(result, Ok(Decision::Allow(ref w)) if w.is_empty()), "{result:?}");
        assert_eq!(
            host.logs(),
            [(Level::Info, "image-policy: allowed 2 image(s) in 2 job(s) of pipeline web".to_string())]
        );

        let (_, host) = check("deny *", None, vec![job("a", Some("node")), job("b", Some("ruby"))]);
        assert_eq!(host.log_text(), "image-policy: denied 2 of 2 image(s) in 2 job(s) of pipeline web\n");
    }

    #[test]
    fn invalid_rules_fail_with_every_line_number() {
        let (result, host) =
            check("allow-registry ghcr.io\nallow\npermit node; deny [x", None, vec![job("a", Some("node"))]);
        let failure = result.unwrap_err();
        assert_eq!(failure.message, r#"invalid configuration: config key "rules": 3 invalid rules"#);
        let messages: Vec<_> = failure.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "line 2 `allow`: `allow` needs a glob; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
                "line 3 `permit node`: unknown action `permit`; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>`",
                "line 4 `deny [x`: invalid glob `[x`: unclosed character class; missing ']'",
            ]
        );
        assert!(
            failure.diagnostics.iter().all(|d| d.code == "invalid-rule" && d.field.as_deref() == Some("with.rules"))
        );
        assert!(host.logs().is_empty());
    }

    #[test]
    fn the_readme_example_decides_as_documented() {
        let rules = "deny docker.io/library/node:1?*\ndeny docker.io/evil/*\nallow-registry registry.example:5000\nallow docker.io/library/*";
        let mut test = job("test", Some("node:16"));
        test.services = vec!["postgres:16".into(), "bitnami/redis:7".into()];
        test.step_images = vec!["registry.example:5000/tools/lint:2".into()];
        let reasons = denied(rules, Some("deny"), vec![test.clone()]);
        let found: Vec<_> = reasons.iter().map(|r| (r.code.as_str(), r.field.as_deref().unwrap())).collect();
        assert_eq!(found, [("image-denied", "jobs.test.image"), ("image-not-allowed", "jobs.test.services[1]")]);
        assert!(reasons[0].message.ends_with("line 1 `deny docker.io/library/node:1?*`"), "{}", reasons[0].message);
        // The one-line form decides the same.
        let one_line =
            "deny docker.io/library/node:1?*; allow-registry registry.example:5000; allow docker.io/library/*";
        assert_eq!(denied(one_line, None, vec![test]).len(), 2);
    }

    #[test]
    fn line_numbers_count_leading_blank_lines() {
        let reasons = denied("\n\n  deny *", None, vec![job("a", Some("node"))]);
        assert!(reasons[0].message.ends_with("denied by line 3 `deny *`"), "{}", reasons[0].message);
        let failure = check("\n# c\nallow", None, vec![]).0.unwrap_err();
        assert!(failure.diagnostics[0].message.starts_with("line 3 `allow`"), "{:?}", failure.diagnostics);
    }

    #[test]
    fn missing_rules_name_the_key() {
        let failure = ImagePolicy::check(&FakeHost::new(), plan(vec![])).unwrap_err();
        assert_eq!(failure.message, r#"invalid configuration: config key "rules": is required but not set"#);
    }
}
