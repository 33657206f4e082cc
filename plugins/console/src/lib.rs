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
        let commit = &build.commit;
        let reference = commit.branch.as_deref().or(commit.tag.as_deref()).unwrap_or("detached");
        let short_sha = commit.sha.get(..7).unwrap_or(&commit.sha);
        // This runs on every build and job event: the line is put together in one string,
        // without `format!` (the formatting machinery was a fifth of a call on a live instance).
        let mut line = String::with_capacity(64 + build.pipeline.len() + prefix.as_ref().map_or(0, String::len));
        let mut number = itoa::Buffer::new();
        if let Some(prefix) = &prefix {
            line.push_str(prefix);
            line.push(' ');
        }
        for part in [&build.pipeline, " #", number.format(build.number), " (", reference, "@", short_sha, ") "] {
            line.push_str(part);
        }
        match (&event.kind, &event.job) {
            (EventKind::BuildStarted, _) => line.push_str("started"),
            (EventKind::BuildFinished, _) => {
                line.push_str("finished: ");
                line.push_str(build.status.as_str());
            }
            (EventKind::JobStarted, Some(job)) => {
                for part in ["job ", &job.name, " started"] {
                    line.push_str(part);
                }
            }
            (EventKind::JobFinished, Some(job)) => {
                for part in ["job ", &job.name, " finished: ", job.status.as_str()] {
                    line.push_str(part);
                }
            }
            (EventKind::JobStarted | EventKind::JobFinished, None) => {
                return Err(Failure::new("a job event without a job"));
            }
        }
        if let Some(ms) = event.job.as_ref().map_or(build.duration_ms, |job| job.duration_ms) {
            // Tenths of a second, rounded, in integer arithmetic.
            let tenths = ms.saturating_add(50) / 100;
            line.push_str(" in ");
            line.push_str(number.format(tenths / 10));
            line.push('.');
            line.push_str(number.format(tenths % 10));
            line.push_str(" s");
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
    fn every_kind_of_event_without_a_prefix() {
        let host = FakeHost::new();
        let mut started = sample_event(EventKind::BuildStarted, Status::Running);
        started.build.duration_ms = None;
        started.build.commit.branch = None;
        started.build.commit.tag = Some("v1.0".into());
        Console::notify(&host, started).unwrap();
        let mut job_started = sample_event(EventKind::JobStarted, Status::Running);
        job_started.build.commit.branch = None;
        job_started.build.commit.sha = "abc".into();
        Console::notify(&host, job_started).unwrap();
        let mut job_finished = sample_event(EventKind::JobFinished, Status::Cancelled);
        job_finished.job.as_mut().unwrap().duration_ms = Some(1_049);
        job_finished.build.number = 1_000_007;
        Console::notify(&host, job_finished).unwrap();
        assert_eq!(
            host.log_text(),
            "web #42 (v1.0@0123456) started\n\
             web #42 (detached@abc) job test started\n\
             web #1000007 (main@0123456) job test finished: cancelled in 1.0 s\n"
        );
    }

    #[test]
    fn job_event_without_job_fails() {
        let job_started = Event { job: None, ..sample_event(EventKind::JobStarted, Status::Failure) };
        let error = Console::notify(&FakeHost::new(), job_started);
        assert_eq!(error.unwrap_err().message, "a job event without a job");
    }
}
