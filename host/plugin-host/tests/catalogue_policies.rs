//! The builtin policy plugins (`image-policy`, `branch-protection`) loaded by the real host with
//! no grants: their manifests, their decisions and reasons for sample plans, and invalid rules
//! failing with the plugin's name.

mod common;

use chengis_plugin_host::bindings::policy::{Decision, Plan, PlannedJob};
use chengis_plugin_host::types::{Diagnostic, Kind, Severity};
use chengis_plugin_host::{Allowlist, CallContext, Digest, ErrorKind, Grants, Limits, Plugin, World};
use common::MemoryLog;
use common::components::component;
use common::fixtures::{self, planned_job as job};

fn load(package: &str) -> Plugin {
    let bytes = component(package);
    let plugin = common::runtime_with(true)
        .load(&bytes, &Allowlist::from_iter([Digest::of(&bytes)]), Grants::none(), Limits::default())
        .unwrap();
    assert_eq!(plugin.world(), World::Policy);
    assert_eq!(plugin.manifest().kinds, [Kind::Policy]);
    assert!(plugin.manifest().capabilities.is_empty(), "policies request nothing");
    plugin
}

fn plan(branch: Option<&str>, tag: Option<&str>, jobs: Vec<PlannedJob>) -> Plan {
    let mut plan = fixtures::plan(jobs);
    plan.commit.branch = branch.map(Into::into);
    plan.commit.tag = tag.map(Into::into);
    plan
}

/// Calls `check` with `config`; returns the decision and the log lines.
fn check(plugin: &Plugin, config: &[(&str, &str)], plan: &Plan) -> (Decision, Vec<String>) {
    let log = MemoryLog::new();
    let ctx = CallContext {
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        log: Some(log.clone()),
        ..Default::default()
    };
    let decision = plugin.check_policy(&ctx, plan).unwrap_or_else(|e| panic!("{e}"));
    (decision, log.lines())
}

fn denied(decision: Decision) -> Vec<Diagnostic> {
    match decision {
        Decision::Deny(reasons) => reasons,
        Decision::Allow(warnings) => panic!("expected a deny, got an allow ({warnings:?})"),
    }
}

fn assert_allowed(decision: Decision) {
    match decision {
        Decision::Allow(warnings) => assert!(warnings.is_empty(), "{warnings:?}"),
        Decision::Deny(reasons) => panic!("expected an allow, got a deny: {reasons:?}"),
    }
}

const IMAGE_RULES: &str = "# what builds may pull\nallow-registry ghcr.io\ndeny docker.io/library/node:1?*\nallow docker.io/library/*; deny docker.io/evil/*";

#[test]
fn image_policy_denies_every_refused_image_with_the_rule_that_matched() {
    let plugin = load("chengis-plugin-image-policy");
    assert_eq!(plugin.label().to_string(), r#"plugin "image-policy" 0.1.0"#);
    let mut build = job("build", Some("node:16"));
    build.services = vec!["postgres:16".into(), "quay.io/org/cache:1".into()];
    build.step_images = vec!["ghcr.io/org/tools:2".into(), "evil/miner".into()];
    let plan = plan(Some("main"), None, vec![build, job("test", Some("node:20")), job("shell", None)]);

    let (decision, log) = check(&plugin, &[("rules", IMAGE_RULES)], &plan);
    let reasons = denied(decision);
    let found: Vec<_> = reasons.iter().map(|r| (r.code.as_str(), r.field.as_deref().unwrap())).collect();
    assert_eq!(
        found,
        [
            ("image-denied", "jobs.build.image"),
            ("image-not-allowed", "jobs.build.services[1]"),
            ("image-denied", "jobs.build.steps.image"),
        ]
    );
    assert!(reasons.iter().all(|r| r.severity == Severity::Error));
    assert_eq!(
        reasons[0].message,
        "job `build`: image `node:16` (docker.io/library/node:16) is denied by line 3 `deny docker.io/library/node:1?*`"
    );
    assert_eq!(
        reasons[0].help.as_deref(),
        Some(
            "use another image, or put a rule that allows `docker.io/library/node:16` above line 3 of the image-policy `rules`"
        )
    );
    assert_eq!(
        reasons[1].message,
        "job `build`: service image `quay.io/org/cache:1` (quay.io/org/cache:1) matches no rule, and `default` is `deny`"
    );
    // `;` separates rules like a line break: the deny is line 5.
    assert_eq!(
        reasons[2].message,
        "job `build`: step image `evil/miner` (docker.io/evil/miner:latest) is denied by line 5 `deny docker.io/evil/*`"
    );
    assert_eq!(log, ["image-policy: denied 3 of 6 image(s) in 3 job(s) of pipeline web"]);
}

#[test]
fn image_policy_allows_and_honours_the_default() {
    let plugin = load("chengis-plugin-image-policy");
    let mut test = job("test", Some("ghcr.io/org/app:1"));
    test.services = vec!["redis".into()];
    let plan = plan(Some("main"), None, vec![test, job("lint", Some("quay.io/org/lint:3"))]);
    // quay.io matches no rule: denied by default, allowed with `default = allow`.
    let reasons = denied(check(&plugin, &[("rules", IMAGE_RULES)], &plan).0);
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0].code, "image-not-allowed");
    assert_eq!(
        reasons[0].help.as_deref(),
        Some(
            "use an allowed image, or add a rule such as `allow quay.io/org/lint:*` or `allow-registry quay.io` to the image-policy `rules`"
        )
    );
    let (decision, log) = check(&plugin, &[("rules", IMAGE_RULES), ("default", "allow")], &plan);
    assert_allowed(decision);
    assert_eq!(log, ["image-policy: allowed 3 image(s) in 2 job(s) of pipeline web"]);
}

#[test]
fn image_policy_invalid_rules_fail_naming_the_plugin_and_line() {
    let plugin = load("chengis-plugin-image-policy");
    let plan = plan(Some("main"), None, vec![job("build", Some("node"))]);
    let ctx = CallContext {
        config: vec![("rules".into(), "allow-registry ghcr.io\nalow node".into())],
        ..Default::default()
    };
    let error = plugin.check_policy(&ctx, &plan).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert_eq!(
        error.to_string(),
        "plugin \"image-policy\" 0.1.0: failed: invalid configuration: config key \"rules\": 1 invalid rule; \
         line 2 `alow node`: unknown action `alow`; a rule is `allow <glob>`, `deny <glob>` or `allow-registry <glob>` (with.rules)"
    );
    let ctx = CallContext {
        config: vec![("rules".into(), "allow *".into()), ("default".into(), "maybe".into())],
        ..Default::default()
    };
    let error = plugin.check_policy(&ctx, &plan).unwrap_err();
    assert!(error.to_string().starts_with(r#"plugin "image-policy" 0.1.0: failed: invalid configuration: config key "default": expected `deny` or `allow`, got "maybe""#), "{error}");
    let error = plugin.check_policy(&CallContext::default(), &plan).unwrap_err();
    assert!(
        error.to_string().starts_with(
            r#"plugin "image-policy" 0.1.0: failed: invalid configuration: config key "rules": is required but not set"#
        ),
        "{error}"
    );
}

const BRANCH_RULES: &str = "only deploy* on main, tag:v*\napproval deploy-prod on *\nprivileged on main, release/*";

fn branch_jobs() -> Vec<PlannedJob> {
    let mut prod = job("deploy-prod", None);
    prod.approval = true;
    let mut dind = job("dind", Some("docker:27-dind"));
    dind.privileged = true;
    dind.docker_socket = true;
    vec![job("test", None), prod, dind]
}

#[test]
fn branch_protection_allows_protected_jobs_on_their_refs() {
    let plugin = load("chengis-plugin-branch-protection");
    assert_eq!(plugin.label().to_string(), r#"plugin "branch-protection" 0.1.0"#);
    let (decision, log) = check(&plugin, &[("rules", BRANCH_RULES)], &plan(Some("main"), None, branch_jobs()));
    assert_allowed(decision);
    assert_eq!(log, ["branch-protection: allowed 3 job(s) of pipeline web on branch `main`"]);
    // Tags are matched as `tag:<name>`: deploys run on v* tags.
    let tagged = plan(None, Some("v1.4.0"), vec![job("test", None), branch_jobs().remove(1)]);
    assert_allowed(check(&plugin, &[("rules", BRANCH_RULES)], &tagged).0);
}

#[test]
fn branch_protection_lists_every_violated_rule_for_every_job() {
    let plugin = load("chengis-plugin-branch-protection");
    let mut jobs = branch_jobs();
    jobs[1].approval = false;
    let (decision, log) = check(&plugin, &[("rules", BRANCH_RULES)], &plan(Some("feature/x"), None, jobs));
    let reasons = denied(decision);
    let found: Vec<_> = reasons.iter().map(|r| (r.code.as_str(), r.field.as_deref().unwrap())).collect();
    assert_eq!(
        found,
        [
            ("branch-not-allowed", "jobs.deploy-prod"),
            ("approval-required", "jobs.deploy-prod"),
            ("privileged-not-allowed", "jobs.dind"),
        ]
    );
    assert_eq!(
        reasons[0].message,
        "job `deploy-prod` may run only on `main`, `tag:v*` (line 1 `only deploy* on main, tag:v*`), and this build is for branch `feature/x`"
    );
    assert_eq!(
        reasons[1].message,
        "job `deploy-prod` needs an approval gate on branch `feature/x` (line 2 `approval deploy-prod on *`), and it has none"
    );
    assert_eq!(reasons[1].help.as_deref(), Some("add `approval:` to the job"));
    assert_eq!(
        reasons[2].message,
        "job `dind` asks for a privileged container and the Docker socket, allowed only on `main`, `release/*` (line 3 `privileged on main, release/*`), and this build is for branch `feature/x`"
    );
    assert_eq!(log, ["branch-protection: denied 3 job(s) of pipeline web on branch `feature/x`: 3 violation(s)"]);

    // A build with neither branch nor tag matches only `*`.
    let reasons = denied(check(&plugin, &[("rules", BRANCH_RULES)], &plan(None, None, branch_jobs())).0);
    let codes: Vec<_> = reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["branch-not-allowed", "privileged-not-allowed"]);
    assert!(reasons[0].message.ends_with("and this build is for no branch or tag"), "{}", reasons[0].message);
}

#[test]
fn branch_protection_invalid_rules_fail_naming_the_plugin_and_line() {
    let plugin = load("chengis-plugin-branch-protection");
    let ctx = CallContext {
        config: vec![("rules".into(), "only deploy on main; privileged deploy on main".into())],
        ..Default::default()
    };
    let error = plugin.check_policy(&ctx, &plan(Some("main"), None, branch_jobs())).unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Failed(_)), "{error}");
    assert_eq!(
        error.to_string(),
        "plugin \"branch-protection\" 0.1.0: failed: invalid configuration: config key \"rules\": 1 invalid rule; \
         line 2 `privileged deploy on main`: `privileged` takes no job glob: it is about every job that asks for \
         `privileged` or `docker-socket`; write `privileged on <ref-glob>, ...` (with.rules)"
    );
}
