//! How a run looks: a live, readable view on a terminal (job/step headers, status symbols,
//! durations, a summary table) or one JSON event per line for tools.

use super::Format;
use crate::engine::events::RunEvent;
use crate::status::Status;
use chengis_model::human_duration;
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;

/// Prints run events as they arrive.
pub struct Renderer {
    format: Format,
    color: bool,
    multi: bool,
    finished: Vec<(String, Status, Option<String>, Duration)>,
}

impl Renderer {
    /// A renderer; `multi` prefixes lines with the job id because jobs may interleave.
    pub fn new(format: Format, color: bool, multi: bool) -> Self {
        Renderer { format, color, multi, finished: Vec::new() }
    }

    /// Consumes events until the channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RunEvent>) {
        let stdout = std::io::stdout();
        while let Some(event) = rx.recv().await {
            let mut out = stdout.lock();
            let text = match self.format {
                Format::Json => serde_json::to_string(&event).map(|s| s + "\n").unwrap_or_default(),
                Format::Text => self.text(&event),
            };
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }

    fn tag(&self, job: &str) -> String {
        if self.multi { self.paint("2", &format!("[{job}] ")) } else { String::new() }
    }

    fn symbol(&self, s: Status) -> String {
        let (sym, code) = match s {
            Status::Success => ("✓", "32"),
            Status::Failure => ("✗", "31"),
            Status::TimedOut => ("⏱", "31"),
            Status::Cancelled => ("⊘", "33"),
            Status::Skipped => ("↷", "2"),
            Status::Error => ("!", "31;1"),
            Status::Queued | Status::Running => ("•", "0"),
        };
        self.paint(code, sym)
    }

    fn text(&mut self, event: &RunEvent) -> String {
        match event {
            RunEvent::RunStarted { pipeline, jobs, workspace } => {
                format!(
                    "{} {} ({} job{}) in {workspace}\n",
                    self.paint("1", "▶"),
                    self.paint("1", pipeline),
                    jobs.len(),
                    if jobs.len() == 1 { "" } else { "s" }
                )
            }
            RunEvent::JobStarted { job, name } => {
                format!("{}{} {}\n", self.tag(job), self.paint("1;34", "┌"), self.paint("1", &format!("job {name}")))
            }
            RunEvent::Warning { job, message } => {
                format!("{}{} {}\n", self.tag(job), self.paint("1;33", "⚠"), self.paint("33", message))
            }
            RunEvent::StepStarted { job, name, .. } => {
                format!("{}{} {}\n", self.tag(job), self.paint("34", "│ ▸"), self.paint("1", name))
            }
            RunEvent::Log { job, line, .. } => {
                let text = if matches!(line.stream, crate::exec::Stream::Stderr) && self.color {
                    self.paint("33", &line.text)
                } else if matches!(line.stream, crate::exec::Stream::System) {
                    self.paint("35", &line.text)
                } else {
                    line.text.clone()
                };
                format!("{}{} {text}\n", self.tag(job), self.paint("34", "│  "))
            }
            RunEvent::StepFinished { job, name, status, reason, duration, .. } => {
                let why = match (status, reason) {
                    (Status::Success, _) | (_, None) => String::new(),
                    (_, Some(r)) => format!(": {r}"),
                };
                format!(
                    "{}{} {} {} {}{why}\n",
                    self.tag(job),
                    self.paint("34", "│"),
                    self.symbol(*status),
                    name,
                    self.paint("2", &format!("({})", human_duration(*duration)))
                )
            }
            RunEvent::Tests { job, suites, .. } => {
                let (passed, failed, skipped) = crate::engine::events::test_counts(suites);
                let text = format!("tests: {passed} passed, {failed} failed, {skipped} skipped");
                format!("{}{} {}\n", self.tag(job), self.paint("34", "│"), self.paint("2", &text))
            }
            RunEvent::JobFinished { job, name, status, reason, duration } => {
                self.finished.push((name.clone(), *status, reason.clone(), *duration));
                let why = reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
                format!(
                    "{}{} {} job {name} {status} {}{why}\n",
                    self.tag(job),
                    self.paint("1;34", "└"),
                    self.symbol(*status),
                    self.paint("2", &format!("in {}", human_duration(*duration)))
                )
            }
            RunEvent::RunFinished { status, duration } => self.summary(*status, *duration),
        }
    }

    fn summary(&self, status: Status, duration: Duration) -> String {
        let width = self.finished.iter().map(|(n, ..)| n.chars().count()).max().unwrap_or(3).max(3);
        let mut out = format!("\n{:width$}  {:11}  {:>9}\n", "JOB", "STATUS", "DURATION");
        for (name, s, reason, d) in &self.finished {
            let label = format!("{} {}", self.symbol(*s), s);
            let pad = 11usize.saturating_sub(s.as_str().chars().count() + 2);
            let why = reason.as_ref().map(|r| format!("  {r}")).unwrap_or_default();
            out.push_str(&format!("{name:width$}  {label}{}  {:>9}{why}\n", " ".repeat(pad), human_duration(*d)));
        }
        out.push_str(&format!("\n{} pipeline {status} in {}\n", self.symbol(status), human_duration(duration)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let mut r = Renderer::new(Format::Text, false, false);
        r.finished.push(("b".into(), Status::Success, None, Duration::from_secs(65)));
        let s = r.summary(Status::Success, Duration::from_millis(65_350));
        assert!(s.contains("1m 5s") && !s.contains("1m05s"), "{s}");
        assert!(s.ends_with("pipeline success in 1m 5s\n"), "{s}");
    }

    #[test]
    fn plain_text_has_no_escape_codes() {
        let mut r = Renderer::new(Format::Text, false, true);
        let s = r.text(&RunEvent::JobFinished {
            job: "b".into(),
            name: "b".into(),
            status: Status::Failure,
            reason: Some("step `x` exited with code 1".into()),
            duration: Duration::from_millis(5),
        });
        assert_eq!(s, "[b] └ ✗ job b failure in 5ms: step `x` exited with code 1\n");
        assert!(!r.summary(Status::Failure, Duration::ZERO).contains('\x1b'));
    }
}
