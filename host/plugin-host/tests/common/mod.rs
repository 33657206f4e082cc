//! Test doubles for the runtime's integration tests: a log sink that keeps lines in memory and
//! a sandbox that runs commands as local processes in a workspace directory.

#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod components;
pub mod fake_http;
pub mod fixtures;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use chengis_plugin_host::{
    ExecOutcome, ExecRequest, LogLevel, LogSink, Runtime, RuntimeOptions, Sandbox, SandboxError,
};

/// A runtime whose compiled components are cached for the whole test run (debug builds of
/// wasmtime compile slowly).
pub fn runtime_with(pooling: bool) -> Runtime {
    let cache_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    Runtime::with_options(RuntimeOptions { cache_dir: Some(cache_dir), pooling, ..Default::default() }).unwrap()
}

/// Keeps every log line.
#[derive(Default)]
pub struct MemoryLog(Mutex<Vec<(LogLevel, String)>>);

impl MemoryLog {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryLog::default())
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|(_, line)| line.clone()).collect()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

impl LogSink for MemoryLog {
    fn line(&self, level: LogLevel, line: &str) {
        self.0.lock().unwrap().push((level, line.to_string()));
    }
}

/// Runs commands as local processes (in their own process group) in `workspace`.
pub struct ProcessSandbox {
    pub workspace: PathBuf,
}

impl Sandbox for ProcessSandbox {
    fn exec(&self, request: &ExecRequest, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, SandboxError> {
        use std::os::unix::process::CommandExt;

        let workdir = self.workspace.join(request.workdir.as_deref().unwrap_or("."));
        let mut child = Command::new(&request.argv[0])
            .args(&request.argv[1..])
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| SandboxError(format!("cannot start {}: {e}", request.argv[0])))?;
        let (tx, rx) = mpsc::channel::<String>();
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            })
        })
        .collect();
        drop(tx);
        let deadline = Instant::now() + request.timeout;
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => output(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
                    break;
                }
            }
        }
        let status = child.wait().map_err(|e| SandboxError(e.to_string()))?;
        for reader in readers {
            let _ = reader.join();
        }
        for line in rx.try_iter() {
            output(&line);
        }
        Ok(ExecOutcome { code: if timed_out { None } else { status.code() }, timed_out })
    }
}
