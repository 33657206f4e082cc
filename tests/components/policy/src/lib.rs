//! A policy for the runtime's tests: denies jobs whose image is untagged or tagged `latest`,
//! and, when its `probe-secret` config is set, tries to read a secret (policies cannot).

use chengis_plugin_sdk::policy::{Decision, Plan};
use chengis_plugin_sdk::{Diagnostic, Failure, Host, Kind, Manifest, Policy, Severity, export};

/// The pinned-images policy.
pub struct PinnedImages;

impl Policy for PinnedImages {
    fn manifest() -> Manifest {
        Manifest::new("pinned-images", "0.1.0", "Denies images tagged latest", Kind::Policy)
    }

    fn check(host: &dyn Host, plan: Plan) -> Result<Decision, Failure> {
        if let Some(name) = host.config().get("probe-secret") {
            host.secret(name);
        }
        let reasons: Vec<Diagnostic> = plan
            .jobs
            .iter()
            .filter_map(|job| {
                let image = job.image.as_deref()?;
                let tag = image.rsplit_once(':').map(|(_, tag)| tag).filter(|tag| !tag.contains('/'));
                matches!(tag, None | Some("latest")).then(|| Diagnostic {
                    severity: Severity::Error,
                    code: "image-not-pinned".into(),
                    message: format!("job {} uses {image}, which is not pinned to a version", job.name),
                    field: Some(format!("jobs.{}.image", job.name)),
                    help: Some("use a version tag or a digest".into()),
                })
            })
            .collect();
        host.info(&format!("checked {} jobs", plan.jobs.len()));
        Ok(if reasons.is_empty() { Decision::Allow(Vec::new()) } else { Decision::Deny(reasons) })
    }
}

export!(PinnedImages as policy);
