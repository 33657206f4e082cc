//! Issue 24, findings 1 and 7: a build step never runs with the server's or the agent's
//! authority (it cannot read the master key, the database, the server's or agent's
//! `/proc/<pid>/environ|mem`, other workspaces), and a step of a killed server never runs
//! beside its retry.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A running `chengis agent`, killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipeline whose step tries to read each of `targets` (`name=path`) and prints, per target,
/// `READ name` or `DENIED name: <error>`; then proves it ran (writes and reads its workspace).
fn probe_pipeline(targets: &[(&str, String)]) -> String {
    let mut script = String::new();
    for (name, path) in targets {
        script.push_str(&format!(
            "          if out=$(head -c 4096 '{path}' 2>&1 >/dev/null); then echo 'READ {name}'; else echo \"DENIED {name}: $out\"; fi\n"
        ));
    }
    script.push_str("          echo \"uid=$(id -u)\"\n");
    script.push_str("          echo ok > in-workspace.txt && echo \"workspace=$(cat in-workspace.txt)\"\n");
    script.push_str(
        "          echo \"env-secrets=$(env | grep -c -e CHENGIS_ADMIN -e CHENGIS_AGENT_TOKEN -e CHENGIS_MASTER)\"\n",
    );
    format!("name: probe\njobs:\n  probe:\n    steps:\n      - run: |\n{script}")
}

/// The probe's results: every target denied with a permission error, the step ran, no secret in
/// its environment.
fn assert_all_denied(lines: &[String], targets: &[(&str, String)]) {
    let text = lines.join("\n");
    for (name, _) in targets {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("DENIED {name}:")) || *l == &format!("READ {name}"))
            .unwrap_or_else(|| panic!("no result for {name}:\n{text}"));
        assert!(line.starts_with("DENIED"), "a step read {name}:\n{text}");
        assert!(line.contains("Permission denied"), "{name} failed, but not with a permission error: {line}\n{text}");
    }
    assert!(lines.iter().any(|l| l == "workspace=ok"), "the step did not run in its workspace:\n{text}");
    assert!(lines.iter().any(|l| l == "env-secrets=0"), "a secret reached the step's environment:\n{text}");
    if nix::unistd::geteuid().is_root() {
        assert!(!lines.iter().any(|l| l == "uid=0"), "the step ran as root:\n{text}");
    }
    assert!(!text.contains(ADMIN_PASSWORD), "the admin password reached the log:\n{text}");
}

/// Whether this kernel offers Landlock (the sandbox's file rules need it).
fn landlock() -> bool {
    chengis_runner::sandbox::landlock_abi().is_some()
}

#[test]
fn a_step_on_the_embedded_agent_cannot_read_the_servers_keys_database_or_environment() {
    assert!(landlock(), "this test needs a kernel with Landlock (the sandbox warns at start without one)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db_file = data.join("chengis.db");
    let db = format!("sqlite://{}", db_file.display());
    let (server, log) = start_logged(&data, &db, &[]);
    let pid = server.child.id();
    let work = dir.path().join("data-work");
    // Another job's workspace (as a finished or concurrent job would leave it).
    let other = work.join("workspaces").join("999999");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another job's file").unwrap();
    let targets = [
        ("master.key", data.join("master.key").display().to_string()),
        ("database", db_file.display().to_string()),
        ("server-environ", format!("/proc/{pid}/environ")),
        ("server-mem", format!("/proc/{pid}/mem")),
        ("other-workspace", other.join("secret.txt").display().to_string()),
        ("server-log", log.display().to_string()),
    ];
    assert!(data.join("master.key").exists() || wait_key(&data), "no master key was created");
    create_job(&server.url, "probe", &repo(&dir.path().join("repo"), &probe_pipeline(&targets)));
    let id = trigger(&server.url, "probe");
    let build = wait_build(&server, id, finished);
    let lines = log_of(&server.url, id, "probe");
    assert_eq!(build["build"]["status"], "success", "{build}\n{}", lines.join("\n"));
    assert_all_denied(&lines, &targets);
    // The workspaces left the data directory.
    assert!(!data.join("workspaces").exists(), "workspaces still live in the data directory");
}

/// Waits a little for the master key to be written (created at start).
fn wait_key(data: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if data.join("master.key").exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_step_on_a_remote_agent_cannot_read_the_agents_token_or_the_servers_files() {
    assert!(landlock(), "this test needs a kernel with Landlock (the sandbox warns at start without one)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = format!("sqlite://{}", data.join("chengis.db").display());
    let (server, _log) = start_logged(&data, &db, &["--agents", "0"]);
    let (code, out, err) = cli(&server.url, &["agent-token", "create", "--name", "pool"], None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let work = dir.path().join("agent-work");
    let agent_log = dir.path().join("agent.log");
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(["agent", "--server", &server.url, "--name", "remote-a", "--executors", "1"])
            .arg("--work-dir")
            .arg(&work)
            .env("CHENGIS_AGENT_TOKEN", &token)
            .env("CHENGIS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let apid = agent.0.id();
    let other = work.join("workspaces").join("999999");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another job's file").unwrap();
    let targets = [
        ("agent-environ", format!("/proc/{apid}/environ")),
        ("agent-mem", format!("/proc/{apid}/mem")),
        ("server-environ", format!("/proc/{}/environ", server.child.id())),
        ("master.key", data.join("master.key").display().to_string()),
        ("other-workspace", other.join("secret.txt").display().to_string()),
        ("agent-log", agent_log.display().to_string()),
    ];
    let mut pipeline = probe_pipeline(&targets);
    // The command line is world-readable by design; with the token in the environment (or a
    // token file) it holds no secret.
    pipeline.push_str(&format!(
        "      - run: tr '\\0' ' ' < /proc/{apid}/cmdline | grep -c -e chga_ -e --token || echo 'no token in cmdline'\n"
    ));
    create_job(&server.url, "probe", &repo(&dir.path().join("repo"), &pipeline));
    let id = trigger(&server.url, "probe");
    let build = wait_build(&server, id, finished);
    let lines = log_of(&server.url, id, "probe");
    let agent_text = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert_eq!(build["build"]["status"], "success", "{build}\n{}\n{agent_text}", lines.join("\n"));
    assert_all_denied(&lines, &targets);
    assert!(lines.iter().any(|l| l == "no token in cmdline"), "{}", lines.join("\n"));
    assert!(!lines.join("\n").contains(&token), "the agent token reached a step");
}

#[test]
fn host_steps_docker_refuses_a_step_without_an_image_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (server, _log) = start_logged(&data, &db, &["--host-steps", "docker"]);
    let pipeline = "name: host\njobs:\n  host:\n    steps:\n      - run: echo should-not-run\n";
    create_job(&server.url, "host", &repo(&dir.path().join("repo"), pipeline));
    let id = trigger(&server.url, "host");
    let build = wait_build(&server, id, finished);
    let lines = log_of(&server.url, id, "host");
    assert_eq!(build["build"]["status"], "error", "{build}");
    assert!(!lines.iter().any(|l| l == "should-not-run"), "{lines:?}");
    assert!(build.to_string().contains("--host-steps docker"), "{build}");
}

#[test]
fn a_killed_servers_step_never_runs_beside_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let out = dir.path().join("appended.txt");
    // Trusted: the step appends to a file outside its workspace (orphans are killed in every mode).
    let flags = ["--host-steps", "trusted", "--lease-ttl", "2s"];
    let (mut server, _log) = start_logged(&data, &db, &flags);
    let pipeline = format!(
        "name: slow\njobs:\n  slow:\n    steps:\n      - run: |\n          echo started\n          sleep 4\n          echo x >> '{}'\n",
        out.display()
    );
    create_job(&server.url, "slow", &repo(&dir.path().join("repo"), &pipeline));
    let id = trigger(&server.url, "slow");
    wait_for("the step to start", Duration::from_secs(30), || {
        log_of(&server.url, id, "slow").contains(&"started".into())
    });
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // A new server on the same data directory: it kills what its predecessor left running
    // before it leases the job again.
    let (restarted, log) = start_logged(&data, &db, &flags);
    let build = wait_build(&restarted, id, finished);
    assert_eq!(build["build"]["status"], "success", "{build}");
    // The retry ran its whole step (sleep included) after the restart, so an orphan started
    // before it would have appended by now.
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(text.lines().count(), 1, "the step ran beside its retry: {text:?}");
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(server_log.contains("an earlier server left running"), "{server_log}");
}

#[test]
fn a_killed_agents_step_never_runs_beside_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (server, _log) = start_logged(&data, &db, &["--agents", "0", "--lease-ttl", "2s"]);
    let (code, out, err) = cli(&server.url, &["agent-token", "create", "--name", "pool"], None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let work = dir.path().join("agent-work");
    let agent_log = dir.path().join("agent.log");
    let start = || {
        Agent(
            Command::new(env!("CARGO_BIN_EXE_chengis"))
                .args(["agent", "--server", &server.url, "--name", "remote-a", "--host-steps", "trusted"])
                .arg("--work-dir")
                .arg(&work)
                .env("CHENGIS_AGENT_TOKEN", &token)
                .stdout(Stdio::null())
                .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&agent_log).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let out = dir.path().join("appended.txt");
    let pipeline = format!(
        "name: slow\njobs:\n  slow:\n    steps:\n      - run: |\n          echo started\n          sleep 4\n          echo x >> '{}'\n",
        out.display()
    );
    create_job(&server.url, "slow", &repo(&dir.path().join("repo"), &pipeline));
    let mut agent = start();
    let id = trigger(&server.url, "slow");
    wait_for("the step to start", Duration::from_secs(30), || {
        log_of(&server.url, id, "slow").contains(&"started".into())
    });
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    // The same agent (same work directory) comes back: it kills what it left before leasing.
    let _agent = start();
    let build = wait_build(&server, id, finished);
    assert_eq!(build["build"]["status"], "success", "{build}");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(text.lines().count(), 1, "the step ran beside its retry: {text:?}");
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(log.contains("an earlier agent left running"), "{log}");
}
