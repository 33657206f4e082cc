//! The JSON document posted for one event: a stable shape with snake_case keys, fields in the
//! order declared here, and `null` for what the event does not have.

use chengis_plugin_sdk::notifier::{Event, EventKind};
use serde::Serialize;

/// The event kind as the WIT names it (and as `events` and `X-Chengis-Event` spell it).
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BuildStarted => "build-started",
        EventKind::BuildFinished => "build-finished",
        EventKind::JobStarted => "job-started",
        EventKind::JobFinished => "job-finished",
    }
}

/// The whole document.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// `build-started`, `build-finished`, `job-started` or `job-finished`.
    pub kind: &'static str,
    /// The build.
    pub build: BuildDoc<'a>,
    /// The job, for job events.
    pub job: Option<JobDoc<'a>>,
    /// The status of the previous finished build (or job), if there is one.
    pub previous_status: Option<&'static str>,
}

/// The build part.
#[derive(Debug, Serialize)]
pub struct BuildDoc<'a> {
    /// The build's id in the Chengis server.
    pub id: u64,
    /// The build number within its pipeline.
    pub number: u64,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// `pending`, `running`, `success`, `failure`, `cancelled`, `skipped` or `error`.
    pub status: &'static str,
    /// What started it (`push`, `pull_request`, `tag`, `schedule`, `manual`, `upstream`).
    pub trigger: &'a str,
    /// The build's page, when the server knows its public URL.
    pub url: Option<&'a str>,
    /// Milliseconds since it started, once it has.
    pub duration_ms: Option<u64>,
    /// The commit it runs for.
    pub commit: CommitDoc<'a>,
}

/// The commit part.
#[derive(Debug, Serialize)]
pub struct CommitDoc<'a> {
    /// The full commit id.
    pub sha: &'a str,
    /// The repository's clone URL or name.
    pub repository: &'a str,
    /// The branch, if any.
    pub branch: Option<&'a str>,
    /// The tag, if any.
    pub tag: Option<&'a str>,
    /// The whole commit message.
    pub message: &'a str,
    /// `Name <email>`.
    pub author: &'a str,
}

/// The job part.
#[derive(Debug, Serialize)]
pub struct JobDoc<'a> {
    /// The job's id in the Chengis server.
    pub id: u64,
    /// The job's name.
    pub name: &'a str,
    /// The job's status.
    pub status: &'static str,
    /// Its container image, if any.
    pub image: Option<&'a str>,
    /// Milliseconds since it started, once it has.
    pub duration_ms: Option<u64>,
}

impl<'a> Document<'a> {
    /// The document of `event`.
    pub fn of(event: &'a Event) -> Document<'a> {
        let build = &event.build;
        let commit = &build.commit;
        Document {
            kind: kind_name(event.kind),
            build: BuildDoc {
                id: build.id,
                number: build.number,
                pipeline: &build.pipeline,
                status: build.status.as_str(),
                trigger: &build.trigger,
                url: build.url.as_deref(),
                duration_ms: build.duration_ms,
                commit: CommitDoc {
                    sha: &commit.sha,
                    repository: &commit.repository,
                    branch: commit.branch.as_deref(),
                    tag: commit.tag.as_deref(),
                    message: &commit.message,
                    author: &commit.author,
                },
            },
            job: event.job.as_ref().map(|job| JobDoc {
                id: job.id,
                name: &job.name,
                status: job.status.as_str(),
                image: job.image.as_deref(),
                duration_ms: job.duration_ms,
            }),
            previous_status: event.previous_status.map(|s| s.as_str()),
        }
    }

    /// The document as compact JSON, the exact bytes that are signed and sent.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}
