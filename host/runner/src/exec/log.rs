//! The one log pipeline of a job: every line from every source (a step's process or container
//! output, a plugin's log calls, the agent's own System lines) is masked by the job's masker,
//! numbered from one job-wide counter and, for a step, capped; step outputs and env-file values
//! go through the same masker ([`JobLog::mask`]) before they are stored or shown.

use super::lines::{LineSplitter, LogLine, Stream};
use super::mask::{MaskStream, SecretMasker};
use chengis_model::events::RunEvent;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// A job's log: its masker, the number of its next line and the output cap of each step.
#[derive(Debug)]
pub struct JobLog {
    masker: SecretMasker,
    next: AtomicU64,
    cap: u64,
}

impl JobLog {
    /// The log of a job whose next line is `first`, each step keeping at most `cap` bytes.
    pub fn new(masker: SecretMasker, first: u64, cap: u64) -> Arc<JobLog> {
        Arc::new(JobLog { masker, next: AtomicU64::new(first.max(1)), cap })
    }

    /// The masker of the job's secrets.
    pub fn masker(&self) -> &SecretMasker {
        &self.masker
    }

    /// `value` masked: how a step output or an env-file value is stored and shown.
    pub fn mask(&self, value: &str) -> String {
        self.masker.mask_str(value)
    }

    /// The output cap of one step, in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The number the next line gets.
    pub fn next_number(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Takes `n` consecutive numbers; returns the first.
    fn take(&self, n: usize) -> u64 {
        self.next.fetch_add(n as u64, Ordering::Relaxed)
    }

    /// `lines` renumbered in the job's sequence.
    fn number(&self, mut lines: Vec<LogLine>) -> Vec<LogLine> {
        let first = self.take(lines.len());
        for (i, line) in lines.iter_mut().enumerate() {
            line.number = first + i as u64;
        }
        lines
    }

    /// The agent's own lines (`texts`), masked and numbered, as System lines; not capped.
    pub fn system(&self, texts: &[String]) -> Vec<LogLine> {
        let time_ms = u64::try_from(chengis_model::now_ms()).unwrap_or(0);
        let first = self.take(texts.len());
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| LogLine { number: first + i as u64, stream: Stream::System, time_ms, text: self.mask(t) })
            .collect()
    }

    /// The output of one step (or of one command a plugin runs), sent to `sink`.
    pub fn step(self: &Arc<Self>, sink: LineSink) -> StepOutput {
        StepOutput {
            splitter: LineSplitter::new(1, self.cap),
            stdout: self.masker.stream(),
            stderr: self.masker.stream(),
            masked: Vec::with_capacity(16 * 1024),
            log: self.clone(),
            sink,
        }
    }
}

/// Where a step's lines go.
#[derive(Debug, Clone)]
pub enum LineSink {
    /// Into a run's event stream, as [`RunEvent::Log`] of this job and step.
    Events {
        /// The event channel.
        tx: mpsc::Sender<RunEvent>,
        /// The planned job id.
        job: String,
        /// The step index.
        step: usize,
    },
    /// To a reader of the bare lines (a plugin reading the output of a command it ran).
    Lines(mpsc::Sender<LogLine>),
}

impl LineSink {
    /// Sends `lines`, waiting when the receiver is slow. A closed receiver means nobody listens
    /// any more; the step still runs to its end.
    async fn send(&self, lines: Vec<LogLine>) {
        for line in lines {
            let _ = match self {
                LineSink::Events { tx, job, step } => {
                    tx.send(RunEvent::Log { job: job.clone(), step: *step, line }).await.is_ok()
                }
                LineSink::Lines(tx) => tx.send(line).await.is_ok(),
            };
        }
    }

    /// [`LineSink::send`] from a thread outside the async runtime (a plugin's call).
    fn blocking_send(&self, lines: Vec<LogLine>) {
        for line in lines {
            let _ = match self {
                LineSink::Events { tx, job, step } => {
                    tx.blocking_send(RunEvent::Log { job: job.clone(), step: *step, line }).is_ok()
                }
                LineSink::Lines(tx) => tx.blocking_send(line).is_ok(),
            };
        }
    }
}

/// One step's output on its way into the job's log: raw bytes of each stream masked on their
/// own (so a secret split across reads is still caught), split into lines, capped, numbered in
/// the job's sequence and sent.
pub struct StepOutput {
    log: Arc<JobLog>,
    splitter: LineSplitter,
    stdout: MaskStream,
    stderr: MaskStream,
    masked: Vec<u8>,
    sink: LineSink,
}

impl StepOutput {
    /// Adds raw bytes of `stream` and sends the lines they complete.
    pub async fn feed(&mut self, stream: Stream, bytes: &[u8]) {
        let lines = self.split(stream, bytes);
        self.sink.send(lines).await;
    }

    fn split(&mut self, stream: Stream, bytes: &[u8]) -> Vec<LogLine> {
        self.masked.clear();
        match stream {
            Stream::Stderr => self.stderr.feed(bytes, &mut self.masked),
            Stream::Stdout | Stream::System => self.stdout.feed(bytes, &mut self.masked),
        }
        let lines = self.splitter.push(stream, &self.masked);
        self.log.number(lines)
    }

    /// A whole line a plugin logged (from its blocking thread): masked, capped, numbered and
    /// sent like process output.
    pub fn plugin_line(&mut self, stream: Stream, text: &str) {
        let mut bytes = self.log.mask(text).into_bytes();
        bytes.push(b'\n');
        let lines = self.log.number(self.splitter.push(stream, &bytes));
        self.sink.blocking_send(lines);
    }

    /// Ends the step: flushes both streams and sends the last lines (and the cap warning, if
    /// anything was dropped).
    pub async fn finish(&mut self) {
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.masked.clear();
            match stream {
                Stream::Stderr => self.stderr.finish(&mut self.masked),
                _ => self.stdout.finish(&mut self.masked),
            }
            out.extend(self.splitter.push(stream, &self.masked));
        }
        out.extend(self.splitter.finish());
        let lines = self.log.number(out);
        self.sink.send(lines).await;
    }

    /// Output bytes dropped by the cap so far.
    pub fn dropped(&self) -> u64 {
        self.splitter.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_source_shares_the_numbering_and_the_masker() {
        let masker = SecretMasker::new(["hunter22".to_string()]).unwrap();
        let log = JobLog::new(masker, 5, 1 << 20);
        let first = log.system(&["checked out hunter22".to_string()]);
        assert_eq!((first[0].number, first[0].text.as_str()), (5, "checked out ***"));
        let (tx, mut rx) = mpsc::channel(16);
        let mut out = log.step(LineSink::Lines(tx));
        out.feed(Stream::Stdout, b"a hunt").await;
        out.feed(Stream::Stdout, b"er22 b\nrest").await;
        out.finish().await;
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push((l.number, l.text));
        }
        assert_eq!(got, vec![(6, "a *** b".to_string()), (7, "rest".to_string())]);
        assert_eq!(log.next_number(), 8);
        assert_eq!(log.mask("x hunter22"), "x ***");
    }

    #[test]
    fn plugin_lines_are_capped_with_a_warning() {
        let log = JobLog::new(SecretMasker::none(), 1, 12);
        let (tx, mut rx) = mpsc::channel(16);
        let mut out = log.step(LineSink::Lines(tx));
        out.plugin_line(Stream::Stdout, "0123456789");
        out.plugin_line(Stream::Stderr, "dropped");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(out.finish());
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push((l.number, l.stream, l.text));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (1, Stream::Stdout, "0123456789".to_string()));
        assert_eq!((got[1].0, got[1].1), (2, Stream::System));
        assert!(got[1].2.contains("output cap"), "{}", got[1].2);
        assert_eq!(out.dropped(), 8);
    }
}
