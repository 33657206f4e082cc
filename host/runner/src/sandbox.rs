//! Host steps without the agent's authority: the operator's mode (`--host-steps
//! sandboxed|docker|trusted`), the unprivileged step user and the Landlock rule set a sandboxed
//! step starts under, the record of every running step's process group (so a later agent on
//! the same state kills what a crashed one left), and the start-up hardening of the server and
//! agent processes themselves (secrets out of the environment, not dumpable).
//!
//! A sandboxed step may read the system directories (`/usr`, `/etc`, ...), `/proc` and
//! `/sys`, and read and write only its own workspace and step-state directory (plus the few
//! device files every shell needs); everything else, such as the data directory, the agent's
//! state, other workspaces and `/tmp`, is out of reach. Landlock also keeps it from reading
//! `/proc/<pid>/environ|mem` of (and signalling) processes outside its domain, whatever the
//! user. When Chengis runs as root, the step also runs as the step user.

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use thiserror::Error;

/// The newest Landlock ABI this code was written and tested against.
const ABI_USED: ABI = ABI::V6;

/// What a sandbox could not do.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The mode is not one of the three.
    #[error("--host-steps `{0}` is not one of sandboxed, docker, trusted")]
    Mode(String),
    /// The step user does not exist.
    #[error("--step-user `{0}`: no such user in /etc/passwd (create a dedicated unprivileged user, or name one)")]
    NoUser(String),
    /// The step user is root.
    #[error("--step-user `{0}` is root: steps must run as an unprivileged user")]
    RootUser(String),
    /// Running as root with no step user at hand.
    #[error(
        "Chengis runs as root and no step user is at hand: create a dedicated unprivileged user and pass \
         --step-user NAME, or choose --host-steps docker (or trusted, which gives steps root)"
    )]
    NeedUser,
    /// A directory the steps must not reach lies inside one they may read.
    #[error(
        "{denied} lies under {allowed}, which sandboxed steps may read: move it (for example under /var/lib or \
         /srv), or choose --host-steps docker"
    )]
    Reachable {
        /// The directory to protect.
        denied: String,
        /// The readable tree holding it.
        allowed: String,
    },
    /// The agent runs no steps on its host.
    #[error("this agent runs no steps on its host (--host-steps docker): give the job or the step an `image:`")]
    HostStepsOff,
    /// The Landlock rule set could not be built.
    #[error("cannot build the step sandbox: {0}")]
    Landlock(String),
    /// A file of the step record could not be written.
    #[error("cannot record the step's process group in {path}: {source}")]
    Record {
        /// The record's path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How steps without an image run on this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostSteps {
    /// Under the step user (when root) and Landlock: no access to the agent's files.
    #[default]
    Sandboxed,
    /// Not at all: a step (or job) without an image fails, naming the flag.
    Docker,
    /// As the agent's own user, with its authority (a warning is logged at start).
    Trusted,
}

impl FromStr for HostSteps {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sandboxed" => Ok(HostSteps::Sandboxed),
            "docker" => Ok(HostSteps::Docker),
            "trusted" => Ok(HostSteps::Trusted),
            other => Err(SandboxError::Mode(other.to_string())),
        }
    }
}

impl std::fmt::Display for HostSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostSteps::Sandboxed => "sandboxed",
            HostSteps::Docker => "docker",
            HostSteps::Trusted => "trusted",
        })
    }
}

/// The unprivileged user sandboxed steps run as when Chengis runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl StepUser {
    /// Looks `name` up in `/etc/passwd`.
    pub fn lookup(name: &str) -> Result<StepUser, SandboxError> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let user = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name).then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
            })
            .next()
            .and_then(|(u, g)| Some(StepUser { name: name.to_string(), uid: u?, gid: g? }))
            .ok_or_else(|| SandboxError::NoUser(name.to_string()))?;
        if user.uid == 0 {
            return Err(SandboxError::RootUser(name.to_string()));
        }
        Ok(user)
    }
}

/// Directories every sandboxed step may read (and run programs from), where they exist.
const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix", "/snap", "/proc", "/sys",
    "/dev",
];

/// Device files every sandboxed step may write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx", "/dev/pts"];

/// The agent's host-step policy, fixed at start.
#[derive(Debug)]
pub struct HostPolicy {
    /// The mode.
    pub mode: HostSteps,
    /// The step user (sandboxed mode as root).
    pub user: Option<StepUser>,
    /// The Landlock ABI the kernel offers (sandboxed mode), if any.
    pub landlock: Option<i32>,
    /// Where the process groups of running steps are recorded.
    pub records: PathBuf,
}

impl HostPolicy {
    /// The policy of an agent: `user` is the operator's `--step-user` (as root in sandboxed
    /// mode, `nobody` when none is named); `protect` are the directories steps must not reach
    /// (data directory, agent state, the work directory holding other workspaces), checked to
    /// lie outside every tree a sandboxed step may read; `records`: the running-step records.
    pub fn new(
        mode: HostSteps,
        user: Option<&str>,
        protect: &[&Path],
        records: PathBuf,
    ) -> Result<HostPolicy, SandboxError> {
        let root = nix::unistd::geteuid().is_root();
        let user = match (mode, root, user) {
            (HostSteps::Sandboxed, true, Some(name)) => Some(StepUser::lookup(name)?),
            (HostSteps::Sandboxed, true, None) => Some(StepUser::lookup("nobody").map_err(|_| SandboxError::NeedUser)?),
            (HostSteps::Sandboxed, false, Some(name)) => {
                let u = StepUser::lookup(name)?;
                (u.uid != nix::unistd::geteuid().as_raw()).then_some(u)
            }
            _ => None,
        };
        let landlock = match mode {
            HostSteps::Sandboxed => landlock_abi(),
            _ => None,
        };
        if mode == HostSteps::Sandboxed {
            for dir in protect {
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                for allowed in SYSTEM_READ {
                    if dir.starts_with(allowed) {
                        return Err(SandboxError::Reachable {
                            denied: dir.display().to_string(),
                            allowed: allowed.to_string(),
                        });
                    }
                }
            }
        }
        std::fs::create_dir_all(&records)
            .map_err(|source| SandboxError::Record { path: records.display().to_string(), source })?;
        Ok(HostPolicy { mode, user, landlock, records })
    }

    /// What the start-up log says about host steps (warnings first-class: the caller logs
    /// `Err` texts as warnings).
    pub fn describe(&self) -> Result<String, String> {
        match self.mode {
            HostSteps::Trusted => Err("--host-steps trusted: steps without an image run as this process's user, \
                 with its authority (they can read the data directory, its keys and its database)"
                .into()),
            HostSteps::Docker => Ok("--host-steps docker: steps without an image are refused".into()),
            HostSteps::Sandboxed => {
                let who = match &self.user {
                    Some(u) => format!("as user {} (uid {})", u.name, u.uid),
                    None => "as this process's user".into(),
                };
                match self.landlock {
                    Some(abi) => Ok(format!(
                        "host steps run sandboxed {who} under Landlock (ABI {abi}): only their workspace and \
                         step files are writable; the data directory, agent state and other workspaces are out of reach"
                    )),
                    None if self.user.is_some() => Err(format!(
                        "this kernel offers no Landlock: host steps run {who} only, and can read whatever that \
                         user can (other workspaces included); choose --host-steps docker for more"
                    )),
                    None => Err(format!(
                        "this kernel offers no Landlock and Chengis does not run as root: host steps run {who} \
                         without a sandbox; choose --host-steps docker"
                    )),
                }
            }
        }
    }
}

/// The Landlock ABI version the kernel offers, if any.
pub fn landlock_abi() -> Option<i32> {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    (v > 0).then_some(v as i32)
}

/// How one host step runs: the agent's policy and the directories of its job.
#[derive(Debug, Clone)]
pub struct StepHost {
    /// The agent's policy.
    pub policy: Arc<HostPolicy>,
    /// Read-write for the step: its workspace and step-state directory.
    pub writable: Vec<PathBuf>,
    /// Read-only for the step besides the system: the workspace's object cache.
    pub readable: Vec<PathBuf>,
}

/// What the child applies between fork and exec (prepared in the parent: no allocation there).
pub(crate) struct Prepared {
    pub(crate) user: Option<(u32, u32)>,
    pub(crate) ruleset: Option<OwnedFd>,
}

impl StepHost {
    /// The step user and the Landlock rule set of this step (an error when a sandboxed step
    /// cannot be confined as promised); hands the job's directories to the step user.
    pub(crate) fn prepare(&self) -> Result<Prepared, SandboxError> {
        match self.policy.mode {
            HostSteps::Docker => return Err(SandboxError::HostStepsOff),
            HostSteps::Trusted => return Ok(Prepared { user: None, ruleset: None }),
            HostSteps::Sandboxed => {}
        }
        let user = self.policy.user.as_ref().map(|u| (u.uid, u.gid));
        if let Some((uid, gid)) = user {
            for dir in &self.writable {
                chown_tree(dir, uid, gid);
            }
        }
        let ruleset = match self.policy.landlock {
            Some(_) => Some(self.ruleset().map_err(SandboxError::Landlock)?),
            None => None,
        };
        Ok(Prepared { user, ruleset })
    }

    fn ruleset(&self) -> Result<OwnedFd, String> {
        self.rules()?.ok_or_else(|| "the kernel gave no Landlock rule set".to_string())
    }

    fn rules(&self) -> Result<Option<OwnedFd>, String> {
        self.try_rules().map_err(|e| e.to_string())
    }

    fn try_rules(&self) -> Result<Option<OwnedFd>, landlock::RulesetError> {
        let abi = ABI_USED;
        let read = AccessFs::from_read(abi);
        let all = AccessFs::from_all(abi);
        let file_rw = AccessFs::from_file(abi);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)?
            .scope(Scope::from_all(abi))?
            .create()?;
        let rule = |path: &Path, access| PathFd::new(path).ok().map(|fd| PathBeneath::new(fd, access));
        for dir in SYSTEM_READ {
            if let Some(r) = rule(Path::new(dir), read) {
                ruleset = ruleset.add_rule(r)?;
            }
        }
        for dir in &self.readable {
            if let Some(r) = rule(dir, read) {
                ruleset = ruleset.add_rule(r)?;
            }
        }
        for dev in DEVICES {
            let access = if Path::new(dev).is_dir() { all } else { file_rw };
            if let Some(r) = rule(Path::new(dev), access) {
                ruleset = ruleset.add_rule(r)?;
            }
        }
        for dir in &self.writable {
            if let Some(r) = rule(dir, all) {
                ruleset = ruleset.add_rule(r)?;
            }
        }
        Ok(ruleset.into())
    }
}

/// Applies `prepared` in the child, between fork and exec (async-signal-safe: system calls only).
pub(crate) fn apply_in_child(prepared: &Prepared) -> std::io::Result<()> {
    // SAFETY: plain system calls on values prepared before the fork.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(fd) = &prepared.ruleset
            && libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Hands `dir` and everything under it to `uid:gid` (links are not followed).
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(dir, Some(uid), Some(gid));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => chown_tree(&path, uid, gid),
            _ => {
                let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(gid));
            }
        }
    }
}

/// Hands `dir` back to this process's user after the steps (its owner checks in libgit2 and
/// the cleanup then see the agent's own files).
pub fn reclaim(dir: &Path) {
    chown_tree(dir, nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
}

/// Running-step records: one small file per running step under the agent's state, naming its
/// process group, so that the next process of the same state kills what a crashed one left.
pub mod records {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::path::{Path, PathBuf};

    /// The kernel's boot id (a record of an earlier boot names nothing alive).
    fn boot_id() -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
    }

    /// The start time (clock ticks after boot) and process group of `pid`.
    fn stat(pid: i32) -> Option<(u64, i32)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may hold spaces and parentheses.
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // rest[0] is field 3 (state): pgrp is field 5, starttime field 22.
        Some((f.get(19)?.parse().ok()?, f.get(2)?.parse().ok()?))
    }

    /// A running step's record; removed on drop.
    #[derive(Debug)]
    pub struct Record(PathBuf);

    impl Record {
        /// Records the step whose process group leader is `pgid`.
        pub fn write(dir: &Path, pgid: i32) -> std::io::Result<Record> {
            let start = stat(pgid).map_or(0, |s| s.0);
            let path = dir.join(format!("{pgid}.pgid"));
            let tmp = dir.join(format!("{pgid}.pgid.tmp"));
            std::fs::write(&tmp, format!("{} {pgid} {start}\n", boot_id()))?;
            std::fs::rename(&tmp, &path)?;
            Ok(Record(path))
        }
    }

    impl Drop for Record {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Kills the process groups recorded under `dir` by an earlier process (steps of a crashed
    /// agent or server) and removes the records; returns how many groups were killed. Call at
    /// start, before leasing anything. A recorded group is killed only when it is still the
    /// same: its leader started at the recorded time, or (leader gone) members still hold the
    /// group id, which the kernel does not hand out again while they live.
    pub fn reap(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let boot = boot_id();
        let mut killed = 0;
        for e in entries.flatten() {
            let path = e.path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let f: Vec<&str> = text.split_whitespace().collect();
            if let [b, pgid, start] = f[..]
                && b == boot
                && let (Ok(pgid), Ok(start)) = (pgid.parse::<i32>(), start.parse::<u64>())
                && pgid > 1
                && same_group(pgid, start)
            {
                tracing::warn!(pgid, "killing the process group of a step an earlier process left running");
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                killed += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }

    fn same_group(pgid: i32, start: u64) -> bool {
        match stat(pgid) {
            Some((leader_start, leader_group)) => leader_start == start && leader_group == pgid,
            None => members(pgid),
        }
    }

    /// Whether any process is in group `pgid`.
    fn members(pgid: i32) -> bool {
        let Ok(procs) = std::fs::read_dir("/proc") else { return false };
        procs
            .flatten()
            .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
            .any(|pid| stat(pid).is_some_and(|(_, g)| g == pgid))
    }
}

/// Start-up hardening of a server or agent process, to call first thing in `main` while it has
/// one thread: takes the named secret variables out of the environment (returned, to be used
/// where they are needed), overwriting their text in the original environment block, and makes
/// the process non-dumpable, so that its `/proc/<pid>/environ` and `mem` are out of reach of
/// other processes of the same user.
///
/// # Safety
/// No other thread may run (the environment is changed).
pub unsafe fn harden_process(secret: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut taken = Vec::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else { continue };
        if secret(k) {
            taken.push((k.to_string(), v.to_string()));
        }
    }
    // SAFETY: single-threaded by contract; the strings `environ` points at (the block the kernel
    // shows as /proc/<pid>/environ) are overwritten in place, within their length.
    unsafe {
        unsafe extern "C" {
            static mut environ: *mut *mut libc::c_char;
        }
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p).to_bytes();
            if let Some(eq) = entry.iter().position(|&b| b == b'=')
                && let Ok(name) = std::str::from_utf8(&entry[..eq])
                && secret(name)
            {
                let len = entry.len();
                std::ptr::write_bytes((*p).add(eq + 1), b'x', len - eq - 1);
            }
            p = p.add(1);
        }
        for (k, _) in &taken {
            std::env::remove_var(k);
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    taken
}

/// Whether a variable read by the server or agent holds a secret (tokens, passwords, keys, the
/// database URL with its password).
pub fn is_secret_var(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.starts_with("CHENGIS_")
        && ["TOKEN", "PASSWORD", "SECRET", "MASTER_KEY", "DATABASE_URL"].iter().any(|w| n.contains(w))
}

/// Makes `dir` and its parents searchable (`o+x`: enter, not list) where they are not, so that
/// the step user reaches its workspace; says which it changed.
pub fn searchable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(d) else { continue };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let new = (mode & 0o7777) | 0o001;
            match std::fs::set_permissions(d, std::fs::Permissions::from_mode(new)) {
                Ok(()) => tracing::info!("made {} searchable by the step user (mode {new:o})", d.display()),
                Err(e) => tracing::warn!("the step user cannot reach {}: {e}", d.display()),
            }
        }
    }
}

/// Secret variables the server or agent took out of its environment at start.
static STARTUP_SECRETS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// [`harden_process`], keeping what it took for [`startup_var`].
///
/// # Safety
/// As [`harden_process`]: no other thread may run.
pub unsafe fn harden_and_keep(secret: fn(&str) -> bool) {
    // SAFETY: the caller promises that no other thread runs.
    let taken = unsafe { harden_process(secret) };
    let _ = STARTUP_SECRETS.set(taken);
}

/// A variable of the process's start: a secret taken out of the environment by
/// [`harden_and_keep`], or else the environment's value.
pub fn startup_var(name: &str) -> Option<String> {
    match STARTUP_SECRETS.get().and_then(|v| v.iter().find(|(k, _)| k == name)) {
        Some((_, v)) => Some(v.clone()),
        None => std::env::var(name).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{CancelSignal, JobLog, LineSink, LogLine, SecretMasker, StepCommand, StepEnd, run_step};
    use std::time::Duration;

    fn step(script: &str, cwd: &Path, host: Option<StepHost>) -> StepCommand {
        StepCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: cwd.to_path_buf(),
            timeout: Some(Duration::from_secs(30)),
            kill_grace: Duration::from_millis(200),
            host,
        }
    }

    async fn run(cmd: StepCommand) -> (StepEnd, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<LogLine>(1024);
        let mut out = JobLog::new(SecretMasker::none(), 1, 1 << 20).step(LineSink::Lines(tx));
        let r = run_step(cmd, &mut out, &CancelSignal::new()).await.unwrap();
        drop(out);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.text);
        }
        (r.end, lines)
    }

    /// Landlock alone (no step user, as when Chengis does not run as root): the workspace is
    /// writable, a sibling directory (the data directory, say) is neither readable nor listable.
    #[tokio::test]
    async fn landlock_alone_keeps_a_step_in_its_workspace() {
        let Some(abi) = landlock_abi() else {
            panic!("this kernel offers no Landlock: the sandbox says so at start and confines nothing");
        };
        let dir = tempfile::tempdir().unwrap();
        let (ws, data) = (dir.path().join("ws"), dir.path().join("data"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("master.key"), "k").unwrap();
        let policy = Arc::new(HostPolicy {
            mode: HostSteps::Sandboxed,
            user: None,
            landlock: Some(abi),
            records: dir.path().join("records"),
        });
        std::fs::create_dir_all(&policy.records).unwrap();
        let host = StepHost { policy, writable: vec![ws.clone()], readable: vec![] };
        let key = data.join("master.key").display().to_string();
        let script = format!(
            "echo ok > mine && cat mine; cat {key} || echo denied-read; ls {} || echo denied-list; \
             echo x > {}/planted || echo denied-write",
            data.display(),
            data.display()
        );
        let (end, lines) = run(step(&script, &ws, Some(host))).await;
        assert_eq!(end, StepEnd::Exited(0), "{lines:?}");
        for expected in ["ok", "denied-read", "denied-list", "denied-write"] {
            assert!(lines.iter().any(|l| l == expected), "{expected} missing: {lines:?}");
        }
        assert!(!data.join("planted").exists());
        // Without the sandbox the same step reads the key.
        let (_, lines) = run(step(&format!("cat {key}"), &ws, None)).await;
        assert_eq!(lines, ["k"]);
    }

    /// A step's process group is recorded while it runs and gone after; a record left by a dead
    /// process is reaped (the group killed), and a stale one (group gone) only removed.
    #[tokio::test]
    async fn records_name_running_groups_and_reap_kills_what_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records");
        let policy =
            Arc::new(HostPolicy { mode: HostSteps::Trusted, user: None, landlock: None, records: records.clone() });
        std::fs::create_dir_all(&records).unwrap();
        let host = StepHost { policy, writable: vec![], readable: vec![] };
        let (_, lines) = run(step("ls ../records", &records, Some(host))).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].ends_with(".pgid"), "{lines:?}");
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "the record outlived its step");

        // A group left running (as by a killed agent), recorded as `run_step` would.
        let mut orphan = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
        let mut orphan = orphan.arg("30").spawn().unwrap();
        let record = records::Record::write(&records, orphan.id() as i32).unwrap();
        std::mem::forget(record);
        std::fs::write(records.join("999999999.pgid"), "stale-boot 999999999 1\n").unwrap();
        assert_eq!(records::reap(&records), 1);
        let status = orphan.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    }

    /// A program on the step's `PATH` that only the agent may run (a directory the sandbox
    /// does not grant, first on `PATH`) is skipped for the next one, as `execvp` does.
    #[tokio::test]
    async fn a_sandboxed_step_finds_programs_it_may_run() {
        let Some(abi) = landlock_abi() else { panic!("this kernel offers no Landlock") };
        let dir = tempfile::tempdir().unwrap();
        let (ws, private) = (dir.path().join("ws"), dir.path().join("private-bin"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&private).unwrap();
        let fake = private.join("echo");
        std::fs::write(&fake, "#!/bin/sh\nexit 7\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = Arc::new(HostPolicy {
            mode: HostSteps::Sandboxed,
            user: None,
            landlock: Some(abi),
            records: dir.path().join("r"),
        });
        std::fs::create_dir_all(&policy.records).unwrap();
        let host = StepHost { policy, writable: vec![ws.clone()], readable: vec![] };
        let mut cmd = step("", &ws, Some(host));
        cmd.program = "echo".into();
        cmd.args = vec!["found".into()];
        cmd.env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", private.display()))];
        let (end, lines) = run(cmd).await;
        assert_eq!((end, lines), (StepEnd::Exited(0), vec!["found".to_string()]));
    }

    #[test]
    fn modes_parse_and_secret_variables_are_recognised() {
        assert_eq!("docker".parse::<HostSteps>().unwrap(), HostSteps::Docker);
        assert!("open".parse::<HostSteps>().unwrap_err().to_string().contains("sandboxed, docker, trusted"));
        for v in ["CHENGIS_ADMIN_PASSWORD", "CHENGIS_ADMIN_TOKEN", "CHENGIS_AGENT_TOKEN", "CHENGIS_MASTER_KEY"] {
            assert!(is_secret_var(v), "{v}");
        }
        assert!(!is_secret_var("CHENGIS_LISTEN"));
        assert!(!is_secret_var("PATH"));
    }
}
