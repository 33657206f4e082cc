//! `branch-protection`: the builtin policy that decides which jobs may run on which branches
//! and tags: `only` restricts jobs to refs, `approval` requires an approval gate on refs, and
//! `privileged` restricts privileged and Docker-socket jobs to refs. A deny lists every
//! violated rule for every job.
//!
//! Configuration (server-side): `rules` (required), one rule per line. See the README for the
//! full syntax.

pub mod rules;

use chengis_plugin_sdk::policy::{Decision, Plan, PlannedJob};
use chengis_plugin_sdk::types::Commit;
use chengis_plugin_sdk::{Diagnostic, Failure, Host, Kind, Manifest, Policy, Severity, export};

use crate::rules::{Rule, RuleKind};

/// The `branch-protection` plugin.
pub struct BranchProtection;

impl Policy for BranchProtection {
    fn manifest() -> Manifest {
        Manifest::new("branch-protection", "0.1.0", "Which jobs may run on which branches and tags", Kind::Policy).config(
            "rules",
            "Rules, one per line or separated by `;`: `only <job-glob> on <ref-glob>, ...`, `approval <job-glob> on <ref-glob>, ...`, `privileged on <ref-glob>, ...`; tags are written `tag:<glob>`",
            true,
            None,
        )
    }

    fn check(host: &dyn Host, plan: Plan) -> Result<Decision, Failure> {
        let config = host.config();
        let text = chengis_plugin_sdk::rules::required_text(&config, "rules")?;
        let rules = rules::parse(text).map_err(|errors| chengis_plugin_sdk::rules::invalid("rules", errors))?;
        let build_refs = build_refs(&plan.commit);
        let on = describe_refs(&plan.commit);
        let reasons: Vec<Diagnostic> = plan
            .jobs
            .iter()
            .flat_map(|job| rules.iter().filter_map(|rule| violation(rule, job, &build_refs, &on)))
            .collect();
        let summary = format!("{} job(s) of pipeline {} on {on}", plan.jobs.len(), plan.pipeline);
        if reasons.is_empty() {
            host.info(&format!("branch-protection: allowed {summary}"));
            Ok(Decision::Allow(Vec::new()))
        } else {
            host.info(&format!("branch-protection: denied {summary}: {} violation(s)", reasons.len()));
            Ok(Decision::Deny(reasons))
        }
    }
}

/// The refs rules match for this commit: the branch, and the tag as `tag:<name>`; the empty
/// ref when the build has neither.
fn build_refs(commit: &Commit) -> Vec<String> {
    let refs: Vec<String> =
        commit.branch.iter().cloned().chain(commit.tag.iter().map(|t| format!("tag:{t}"))).collect();
    if refs.is_empty() { vec![String::new()] } else { refs }
}

/// `branch `main``, `tag `v1``, `branch `x` and tag `v1``, or `no branch or tag`.
fn describe_refs(commit: &Commit) -> String {
    match (&commit.branch, &commit.tag) {
        (Some(branch), Some(tag)) => format!("branch `{branch}` and tag `{tag}`"),
        (Some(branch), None) => format!("branch `{branch}`"),
        (None, Some(tag)) => format!("tag `{tag}`"),
        (None, None) => "no branch or tag".into(),
    }
}

/// The reason `job` breaks `rule` on this build, or `None` when it does not.
fn violation(rule: &Rule, job: &PlannedJob, build_refs: &[String], on: &str) -> Option<Diagnostic> {
    let name = &job.name;
    let (code, message, help) = match rule.kind {
        RuleKind::Only if rule.covers_job(name) && !rule.covers_refs(build_refs) => (
            "branch-not-allowed",
            format!(
                "job `{name}` may run only on {} ({}), and this build is for {on}",
                rule.refs_text(),
                rule.describe()
            ),
            format!(
                "build from a matching ref ({}), or give the job an `if:` that leaves it out of other builds",
                rule.refs_text()
            ),
        ),
        RuleKind::Approval if rule.covers_job(name) && rule.covers_refs(build_refs) && !job.approval => (
            "approval-required",
            format!("job `{name}` needs an approval gate on {on} ({}), and it has none", rule.describe()),
            "add `approval:` to the job".to_string(),
        ),
        RuleKind::Privileged if (job.privileged || job.docker_socket) && !rule.covers_refs(build_refs) => {
            let (asks, remove) = match (job.privileged, job.docker_socket) {
                (true, true) => {
                    ("a privileged container and the Docker socket", "`privileged: true` and `docker-socket: true`")
                }
                (true, false) => ("a privileged container", "`privileged: true`"),
                _ => ("the Docker socket", "`docker-socket: true`"),
            };
            (
                "privileged-not-allowed",
                format!(
                    "job `{name}` asks for {asks}, allowed only on {} ({}), and this build is for {on}",
                    rule.refs_text(),
                    rule.describe()
                ),
                format!("remove {remove} from the job, or build from a matching ref ({})", rule.refs_text()),
            )
        }
        _ => return None,
    };
    Some(Diagnostic {
        severity: Severity::Error,
        code: code.into(),
        message,
        field: Some(format!("jobs.{name}")),
        help: Some(help),
    })
}

export!(BranchProtection as policy);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::Level;
    use chengis_plugin_sdk::testing::{self, FakeHost};

    fn job(name: &str) -> PlannedJob {
        testing::planned_job(name, None)
    }

    fn with(mut job: PlannedJob, change: impl FnOnce(&mut PlannedJob)) -> PlannedJob {
        change(&mut job);
        job
    }

    fn plan(branch: Option<&str>, tag: Option<&str>, jobs: Vec<PlannedJob>) -> Plan {
        let mut plan = testing::sample_plan(jobs);
        plan.commit.branch = branch.map(Into::into);
        plan.commit.tag = tag.map(Into::into);
        plan
    }

    fn check(rules: &str, plan: Plan) -> (Result<Decision, Failure>, FakeHost) {
        let host = FakeHost::new().with_config("rules", rules);
        (BranchProtection::check(&host, plan), host)
    }

    /// The codes and fields of a deny, or an empty list for an allow (with no warnings).
    fn verdict(rules: &str, plan: Plan) -> Vec<(String, String)> {
        match check(rules, plan).0 {
            Ok(Decision::Allow(warnings)) => {
                assert!(warnings.is_empty(), "{warnings:?}");
                Vec::new()
            }
            Ok(Decision::Deny(reasons)) => {
                assert!(!reasons.is_empty());
                reasons.into_iter().map(|r| (r.code, r.field.unwrap_or_default())).collect()
            }
            Err(failure) => panic!("unexpected failure: {failure:?}"),
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn reasons(rules: &str, plan: Plan) -> Vec<Diagnostic> {
        match check(rules, plan).0 {
            Ok(Decision::Deny(reasons)) => reasons,
            other => panic!("expected a deny, got {other:?}"),
        }
    }

    #[test]
    fn manifest_declares_a_pure_policy() {
        let manifest = BranchProtection::manifest();
        assert_eq!((manifest.name.as_str(), manifest.version.as_str()), ("branch-protection", "0.1.0"));
        assert_eq!(manifest.kinds, [Kind::Policy]);
        assert!(manifest.capabilities.is_empty());
        assert_eq!(manifest.config.len(), 1);
        assert!(manifest.config[0].required);
    }

    const ONLY: &str = "only deploy* on main, tag:v*";

    #[test]
    fn only_allows_matching_branches_and_tags() {
        let jobs = || vec![job("test"), job("deploy-prod")];
        assert!(verdict(ONLY, plan(Some("main"), None, jobs())).is_empty());
        assert!(verdict(ONLY, plan(None, Some("v1.2.0"), jobs())).is_empty());
        assert!(verdict(ONLY, plan(Some("feature/x"), Some("v2"), jobs())).is_empty(), "the tag matches");
        // Jobs the glob does not name are not restricted.
        assert!(verdict(ONLY, plan(Some("feature/x"), None, vec![job("test")])).is_empty());
    }

    #[test]
    fn only_denies_other_branches_tags_and_detached_builds() {
        let jobs = || vec![job("test"), job("deploy-prod")];
        let denied = pairs(&[("branch-not-allowed", "jobs.deploy-prod")]);
        assert_eq!(verdict(ONLY, plan(Some("feature/x"), None, jobs())), denied);
        assert_eq!(verdict(ONLY, plan(Some("v1.0"), None, jobs())), denied, "a branch named v1.0 is not a tag");
        assert_eq!(verdict(ONLY, plan(None, Some("release-1"), jobs())), denied);
        assert_eq!(verdict(ONLY, plan(None, None, jobs())), denied);

        let reason = &reasons(ONLY, plan(Some("feature/x"), None, jobs()))[0];
        assert_eq!(reason.severity, Severity::Error);
        assert_eq!(
            reason.message,
            "job `deploy-prod` may run only on `main`, `tag:v*` (line 1 `only deploy* on main, tag:v*`), and this build is for branch `feature/x`"
        );
        assert_eq!(
            reason.help.as_deref(),
            Some(
                "build from a matching ref (`main`, `tag:v*`), or give the job an `if:` that leaves it out of other builds"
            )
        );
        let reason = &reasons(ONLY, plan(None, Some("release-1"), jobs()))[0];
        assert!(reason.message.ends_with("and this build is for tag `release-1`"), "{}", reason.message);
        let reason = &reasons(ONLY, plan(None, None, jobs()))[0];
        assert!(reason.message.ends_with("and this build is for no branch or tag"), "{}", reason.message);
    }

    #[test]
    fn a_build_with_no_ref_matches_only_star() {
        let jobs = || vec![with(job("dind"), |j| j.privileged = true)];
        assert!(verdict("privileged on *", plan(None, None, jobs())).is_empty());
        assert_eq!(
            verdict("privileged on main, tag:*, release/*", plan(None, None, jobs())),
            pairs(&[("privileged-not-allowed", "jobs.dind")])
        );
    }

    #[test]
    fn approval_is_required_on_matching_refs_only() {
        let rules = "approval deploy* on main, release/*";
        let unapproved = || vec![job("deploy"), job("test")];
        let approved = || vec![with(job("deploy"), |j| j.approval = true)];
        assert_eq!(
            verdict(rules, plan(Some("release/2.0"), None, unapproved())),
            pairs(&[("approval-required", "jobs.deploy")])
        );
        assert!(verdict(rules, plan(Some("release/2.0"), None, approved())).is_empty());
        assert!(verdict(rules, plan(Some("feature"), None, unapproved())).is_empty(), "other refs need none");
        assert!(verdict(rules, plan(None, Some("v1"), unapproved())).is_empty());

        let reason = &reasons(rules, plan(Some("main"), None, unapproved()))[0];
        assert_eq!(
            reason.message,
            "job `deploy` needs an approval gate on branch `main` (line 1 `approval deploy* on main, release/*`), and it has none"
        );
        assert_eq!(reason.help.as_deref(), Some("add `approval:` to the job"));
        // On tags.
        assert_eq!(
            verdict("approval publish on tag:v*", plan(None, Some("v3.0.0"), vec![job("publish")])),
            pairs(&[("approval-required", "jobs.publish")])
        );
    }

    #[test]
    fn privileged_and_docker_socket_jobs_only_on_listed_refs() {
        let rules = "privileged on main, tag:v*";
        let jobs = || {
            vec![
                with(job("dind"), |j| j.privileged = true),
                with(job("docker-build"), |j| j.docker_socket = true),
                with(job("both"), |j| {
                    j.privileged = true;
                    j.docker_socket = true
                }),
                job("plain"),
            ]
        };
        assert!(verdict(rules, plan(Some("main"), None, jobs())).is_empty());
        assert!(verdict(rules, plan(None, Some("v9"), jobs())).is_empty());
        let reasons = reasons(rules, plan(Some("pr-7"), None, jobs()));
        let messages: Vec<_> = reasons.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "job `dind` asks for a privileged container, allowed only on `main`, `tag:v*` (line 1 `privileged on main, tag:v*`), and this build is for branch `pr-7`",
                "job `docker-build` asks for the Docker socket, allowed only on `main`, `tag:v*` (line 1 `privileged on main, tag:v*`), and this build is for branch `pr-7`",
                "job `both` asks for a privileged container and the Docker socket, allowed only on `main`, `tag:v*` (line 1 `privileged on main, tag:v*`), and this build is for branch `pr-7`",
            ]
        );
        assert_eq!(
            reasons[2].help.as_deref(),
            Some(
                "remove `privileged: true` and `docker-socket: true` from the job, or build from a matching ref (`main`, `tag:v*`)"
            )
        );
        assert!(reasons.iter().all(|r| r.code == "privileged-not-allowed"));
    }

    #[test]
    fn every_violated_rule_of_every_job_is_listed() {
        let rules = "only deploy* on main, tag:v*\nonly deploy-prod on tag:v*\napproval deploy* on *\nprivileged on main\nonly test on *";
        let jobs = vec![
            with(job("deploy-prod"), |j| j.docker_socket = true),
            job("deploy-staging"),
            job("test"),
            with(job("dind"), |j| j.privileged = true),
        ];
        let (result, host) = check(rules, plan(Some("feature"), None, jobs));
        let Ok(Decision::Deny(reasons)) = result else { panic!("expected a deny: {result:?}") };
        let found: Vec<_> = reasons
            .iter()
            .map(|r| (r.code.as_str(), r.field.as_deref().unwrap(), r.message.split(" (line ").nth(1).unwrap()))
            .map(|(code, field, rest)| (code, field, rest.split('`').next().unwrap().trim()))
            .collect();
        assert_eq!(
            found,
            [
                ("branch-not-allowed", "jobs.deploy-prod", "1"),
                ("branch-not-allowed", "jobs.deploy-prod", "2"),
                ("approval-required", "jobs.deploy-prod", "3"),
                ("privileged-not-allowed", "jobs.deploy-prod", "4"),
                ("branch-not-allowed", "jobs.deploy-staging", "1"),
                ("approval-required", "jobs.deploy-staging", "3"),
                ("privileged-not-allowed", "jobs.dind", "4"),
            ]
        );
        assert_eq!(
            host.logs(),
            [(
                Level::Info,
                "branch-protection: denied 4 job(s) of pipeline web on branch `feature`: 7 violation(s)".to_string()
            )]
        );
    }

    #[test]
    fn an_allow_has_no_warnings_and_logs_one_line() {
        let (result, host) = check(ONLY, plan(Some("main"), None, vec![job("deploy")]));
        assert!(matches!(result, Ok(Decision::Allow(ref w)) if w.is_empty()), "{result:?}");
        assert_eq!(host.log_text(), "branch-protection: allowed 1 job(s) of pipeline web on branch `main`\n");
    }

    #[test]
    fn invalid_rules_fail_with_every_line_number() {
        let (result, host) = check("only deploy on main\nonly deploy\nguard x on y", plan(Some("main"), None, vec![]));
        let failure = result.unwrap_err();
        assert_eq!(failure.message, r#"invalid configuration: config key "rules": 2 invalid rules"#);
        let messages: Vec<_> = failure.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages.len(), 2);
        assert!(messages[0].starts_with("line 2 `only deploy`: "), "{}", messages[0]);
        assert!(messages[1].starts_with("line 3 `guard x on y`: unknown rule `guard`"), "{}", messages[1]);
        assert!(
            failure.diagnostics.iter().all(|d| d.code == "invalid-rule" && d.field.as_deref() == Some("with.rules"))
        );
        assert!(host.logs().is_empty());
    }

    #[test]
    fn the_readme_example_decides_as_documented() {
        let rules = "only deploy* on main, tag:v*\napproval deploy-prod on *\nprivileged on main, release/*";
        let one_line = "only deploy* on main, tag:v*; approval deploy-prod on *; privileged on main, release/*";
        let jobs = |approval: bool| {
            vec![
                job("test"),
                with(job("dind"), |j| {
                    j.privileged = true;
                    j.docker_socket = true
                }),
                job("deploy-staging"),
                with(job("deploy-prod"), |j| j.approval = approval),
            ]
        };
        for rules in [rules, one_line] {
            assert!(verdict(rules, plan(Some("main"), None, jobs(true))).is_empty());
            assert_eq!(
                verdict(rules, plan(None, Some("v2.0"), jobs(true))),
                pairs(&[("privileged-not-allowed", "jobs.dind")])
            );
            assert_eq!(
                verdict(rules, plan(Some("feature/x"), None, jobs(true))),
                pairs(&[
                    ("privileged-not-allowed", "jobs.dind"),
                    ("branch-not-allowed", "jobs.deploy-staging"),
                    ("branch-not-allowed", "jobs.deploy-prod"),
                ])
            );
            assert_eq!(
                verdict(rules, plan(Some("main"), None, jobs(false))),
                pairs(&[("approval-required", "jobs.deploy-prod")])
            );
        }
        let reason = &reasons(rules, plan(Some("feature/x"), None, jobs(true)))[1];
        assert!(reason.message.contains("(line 1 `only deploy* on main, tag:v*`)"), "{}", reason.message);
    }

    #[test]
    fn line_numbers_count_leading_blank_lines() {
        let reason = &reasons("\n\n  only deploy on main", plan(Some("dev"), None, vec![job("deploy")]))[0];
        assert!(reason.message.contains("(line 3 `only deploy on main`)"), "{}", reason.message);
    }

    #[test]
    fn missing_rules_name_the_key() {
        let failure = BranchProtection::check(&FakeHost::new(), plan(None, None, vec![])).unwrap_err();
        assert_eq!(failure.message, r#"invalid configuration: config key "rules": is required but not set"#);
    }
}
