//! `console`: the builtin notifier that writes one line per build or job event to the log the
//! host gives it (the server's notification log). It needs no capabilities.
//!
//! Configuration: `prefix` (optional) is put in front of every line.

use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::{Failure, Host, Kind, Manifest, Notifier, export};

/// The console notifier.
pub struct Console;

impl Notifier for Console {
    fn manifest() -> Manifest {
        Manifest::new("console", "0.1.0", "Writes build and job events to the log", Kind::Notifier).config(
            "prefix",
            "Text put in front of every line",
            false,
            None,
        )
    }

    fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
        let prefix: Option<String> = host.config().optional("prefix")?;
        let build = &event.build;
        let what = match (&event.kind, &event.job) {
            (EventKind::BuildStarted, _) => "started".to_string(),
            (EventKind::BuildFinished, _) => format!("finished: {}", build.status.as_str()),
            (EventKind::JobStarted, Some(job)) => format!("job {} started", job.name),
            (EventKind::JobFinished, Some(job)) => format!("job {} finished: {}", job.name, job.status.as_str()),
            (EventKind::JobStarted | EventKind::JobFinished, None) => {
                return Err(Failure::new("a job event without a job"));
            }
        };
        let commit = &build.commit;
        let reference = commit.branch.as_deref().or(commit.tag.as_deref()).unwrap_or("detached");
        let short_sha = commit.sha.get(..7).unwrap_or(&commit.sha);
        let mut line = format!("{} #{} ({reference}@{short_sha}) {what}", build.pipeline, build.number);
        if let Some(ms) = event.job.as_ref().map_or(build.duration_ms, |job| job.duration_ms) {
            // Tenths of a second, rounded, in integer arithmetic (no float formatting).
            let tenths = ms.saturating_add(50) / 100;
            line.push_str(&format!(" in {}.{} s", tenths / 10, tenths % 10));
        }
        if let Some(prefix) = prefix {
            line = format!("{prefix} {line}");
        }
        host.info(&line);
        Ok(())
    }
}

export!(Console as notifier);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{FakeHost, sample_event, sample_job};
    use chengis_plugin_sdk::types::Status;

    #[test]
    fn writes_one_line_per_event() {
        let host = FakeHost::new().with_config("prefix", "[ci]");
        Console::notify(&host, sample_event(EventKind::BuildFinished, Status::Failure)).unwrap();
        let mut job_finished = sample_event(EventKind::JobFinished, Status::Failure);
        job_finished.job = Some(sample_job("test", Status::Success));
        Console::notify(&host, job_finished).unwrap();
        assert_eq!(
            host.log_text(),
            "[ci] web #42 (main@0123456) finished: failure in 61.5 s\n[ci] web #42 (main@0123456) job test finished: success\n"
        );
    }

    #[test]
    fn job_event_without_job_fails() {
        let job_started = Event { job: None, ..sample_event(EventKind::JobStarted, Status::Failure) };
        let error = Console::notify(&FakeHost::new(), job_started);
        assert_eq!(error.unwrap_err().message, "a job event without a job");
    }
}
