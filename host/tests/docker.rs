//! Docker executor tests against the real engine, through the built `chengis` binary: the same
//! env/output tests as the local executor, services, hardening seen from inside, timeouts,
//! cancellation and the reaper after a `kill -9`.
//!
//! The test images are built by `tests/images/build.sh` (no registry needed). Without a Docker
//! engine these tests are skipped, unless `CHENGIS_TEST_REQUIRE` names `docker`: then they fail.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod docker_support;
mod run_events;

use docker_support::{IMAGE, SERVICE_IMAGE, docker_ready, objects};
use run_events::{job_event as job, logs, parse_events, step_event as step};

fn chengis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chengis"))
}

fn run(yaml: &str, extra: &[&str]) -> (Output, Vec<Value>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), yaml, extra);
    let events = parse_events(&out.stdout);
    (out, events, dir)
}

fn run_in(dir: &Path, yaml: &str, extra: &[&str]) -> Output {
    let file = dir.join("chengis.yml");
    std::fs::write(&file, yaml).unwrap();
    chengis().arg("run").arg(&file).args(["--format", "json", "--workspace"]).arg(dir).args(extra).output().unwrap()
}

/// The same pipeline, run by the local executor (`image: None`) and in a container.
fn both_executors() -> Vec<Option<&'static str>> {
    if docker_ready() { vec![None, Some(IMAGE)] } else { vec![None] }
}

fn with_image(image: Option<&str>, body: &str) -> String {
    let image = image.map(|i| format!("    image: {i}\n    pull: never\n")).unwrap_or_default();
    body.replace("    #IMAGE#\n", &image)
}

#[test]
fn env_and_outputs_propagate_on_both_executors() {
    for image in both_executors() {
        let yaml = with_image(
            image,
            r#"
jobs:
  build:
    #IMAGE#
    steps:
      - id: v
        run: |
          echo "FOO=bar" >> "$CHENGIS_ENV"
          printf 'MULTI<<END\nline one\nline two\nEND\n' >> "$CHENGIS_ENV"
          echo "version=1.2.3" >> "$CHENGIS_OUTPUT"
          echo shared > shared.txt
      - run: |
          test "$FOO" = bar
          test "$MULTI" = "$(printf 'line one\nline two')"
          test "$(cat shared.txt)" = shared
          echo "step output ${{ steps.v.outputs.version }} in $CHENGIS_WORKSPACE"
  test:
    needs: build
    #IMAGE#
    steps:
      - run: echo "got ${{ needs.build.outputs.version }}"
"#,
        );
        let (out, events, dir) = run(&yaml, &[]);
        assert!(out.status.success(), "{image:?}: {events:?} {}", String::from_utf8_lossy(&out.stderr));
        let workspace = match image {
            Some(_) => "/workspace".to_string(),
            None => dir.path().canonicalize().unwrap().display().to_string(),
        };
        assert!(logs(&events, "build").contains(&format!("step output 1.2.3 in {workspace}")), "{image:?}: {events:?}");
        assert_eq!(logs(&events, "test"), ["got 1.2.3"], "{image:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("shared.txt")).unwrap(), "shared\n");
    }
}

#[test]
fn failures_timeouts_and_masking_on_both_executors() {
    for image in both_executors() {
        let yaml = with_image(
            image,
            r#"
jobs:
  j:
    #IMAGE#
    steps:
      - run: echo "the secret is ${{ secrets.TOKEN }}"; echo err >&2
      - run: trap '' TERM; sleep 30
        timeout: 500ms
        continue-on-error: true
      - run: exit 3
"#,
        );
        let started = Instant::now();
        let (out, events, _dir) = run(&yaml, &["--secret", "TOKEN=hunter2", "--kill-grace", "1s"]);
        assert!(!out.status.success(), "{image:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{image:?}: the timed-out step was not stopped");
        let lines = logs(&events, "j");
        assert!(lines.contains(&"the secret is ***".to_string()), "{image:?}: {lines:?}");
        assert!(lines.contains(&"err".to_string()), "{image:?}: {lines:?}");
        assert_eq!(step(&events, "j", 1)["status"], "timed_out", "{image:?}");
        assert_eq!(step(&events, "j", 2)["exit_code"], 3, "{image:?}");
    }
}

#[test]
fn services_are_reachable_by_name_after_their_health_check() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        r#"
jobs:
  j:
    image: {IMAGE}
    pull: never
    services:
      web:
        image: {SERVICE_IMAGE}
        command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec httpd -f -p 80 -h /www"]
        ports: [80]
        health-cmd: test -f /tmp/ready
        wait-timeout: 30s
    steps:
      - run: wget -qO- http://web/
"#
    );
    let (out, events, _dir) = run(&yaml, &[]);
    assert!(out.status.success(), "{events:?} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(logs(&events, "j"), ["hello from the service"]);
}

#[test]
fn a_service_that_never_gets_healthy_fails_the_job_with_its_name() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    services:\n      db:\n        image: {SERVICE_IMAGE}\n        health-cmd: 'false'\n        wait-timeout: 1s\n    steps:\n      - run: 'true'\n"
    );
    let (out, events, _dir) = run(&yaml, &[]);
    assert!(!out.status.success());
    let j = job(&events, "j");
    assert_eq!(j["status"], "error");
    let reason = j["reason"].as_str().unwrap();
    assert!(reason.contains("service `db` was not ready after 1s"), "{reason}");
}

#[test]
fn hardening_is_visible_from_inside() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        r#"
jobs:
  j:
    image: {IMAGE}
    pull: never
    user: "1000"
    read-only: true
    resources:
      pids: 64
    steps:
      - run: id -u
      - run: grep CapEff /proc/self/status
      - run: grep NoNewPrivs /proc/self/status
      - run: touch /should-fail
        continue-on-error: true
      - run: touch /tmp/fine && echo tmp writable
"#
    );
    let (out, events, _dir) = run(&yaml, &[]);
    assert!(out.status.success(), "{events:?}");
    let lines = logs(&events, "j");
    assert_eq!(lines[0], "1000");
    let caps = lines[1].split_whitespace().last().unwrap();
    let caps = u64::from_str_radix(caps, 16).unwrap();
    const CAP_NET_RAW: u64 = 1 << 13;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(caps & (CAP_NET_RAW | CAP_SYS_ADMIN), 0, "capabilities {caps:x}");
    assert!(lines[2].ends_with('1'), "{}", lines[2]);
    assert_eq!(step(&events, "j", 3)["status"], "failure", "a write to / must fail on a read-only root");
    assert!(lines.contains(&"tmp writable".to_string()));

    // Root in the container still has no CAP_NET_RAW.
    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    steps:\n      - run: grep CapEff /proc/self/status\n"
    );
    let (_, events, _dir) = run(&yaml, &[]);
    let caps = logs(&events, "j")[0].split_whitespace().last().unwrap().to_string();
    assert_eq!(u64::from_str_radix(&caps, 16).unwrap() & CAP_NET_RAW, 0);
}

#[test]
fn the_pids_limit_stops_a_fork_bomb_and_memory_over_the_limit_is_oom() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        r#"
jobs:
  bomb:
    image: {IMAGE}
    pull: never
    resources:
      pids: 32
    timeout: 60s
    steps:
      - run: |
          n=0
          while [ $n -lt 200 ]; do sleep 5 & n=$((n+1)); done 2>/dev/null
          echo "started all 200"
        continue-on-error: true
      - run: echo still alive
  memory:
    image: {IMAGE}
    pull: never
    resources:
      memory: 32m
    timeout: 60s
    steps:
      - run: head -c 200m /dev/zero | tail > /dev/null
"#
    );
    let (_, events, _dir) = run(&yaml, &[]);
    let bomb = logs(&events, "bomb");
    assert!(!bomb.contains(&"started all 200".to_string()), "the pids limit did not hold: {bomb:?}");
    assert!(bomb.contains(&"still alive".to_string()), "{bomb:?}");
    let mem = step(&events, "memory", 0);
    assert_eq!(mem["status"], "failure", "{mem}");
    let reason = mem["reason"].as_str().unwrap();
    assert!(reason.contains("oom") && reason.contains("32.0 MiB"), "{reason}");
}

#[test]
fn network_none_step_images_and_pipeline_default_image() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        r#"
image: {IMAGE}
jobs:
  isolated:
    pull: never
    network: none
    steps:
      - run: ls /sys/class/net | sort | tr '\n' ' '
  mixed:
    pull: never
    steps:
      - run: echo from-job > f.txt; cat /etc/hostname > job-host
      - image: {SERVICE_IMAGE}
        run: cat f.txt; test "$(cat /etc/hostname)" != "$(cat job-host)" && echo other-container
"#
    );
    let (out, events, _dir) = run(&yaml, &[]);
    assert!(out.status.success(), "{events:?}");
    assert_eq!(logs(&events, "isolated"), ["lo "]);
    assert_eq!(logs(&events, "mixed"), ["from-job", "other-container"]);
}

#[test]
fn missing_images_are_named() {
    if !docker_ready() {
        return;
    }
    let yaml = "jobs:\n  j:\n    image: chengis-test/absent:1\n    pull: never\n    steps:\n      - run: 'true'\n";
    let (_, events, _dir) = run(yaml, &[]);
    let reason = job(&events, "j")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("image `chengis-test/absent:1` is not on the Docker engine"), "{reason}");
    assert!(reason.contains("pull: never"), "{reason}");

    let yaml = "jobs:\n  j:\n    image: chengis-test/absent:1\n    steps:\n      - run: 'true'\n";
    let (_, events, _dir) = run(yaml, &[]);
    let reason = job(&events, "j")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("image `chengis-test/absent:1` is not on the Docker engine and cannot be pulled"),
        "{reason}"
    );
}

#[test]
fn privileged_needs_the_operator_and_cache_volumes_persist() {
    if !docker_ready() {
        return;
    }
    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    privileged: true\n    steps:\n      - run: 'true'\n"
    );
    let (_, events, _dir) = run(&yaml, &[]);
    let reason = job(&events, "j")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("privileged: true") && reason.contains("--docker-allow-privileged j"), "{reason}");
    // Allowed, the job reaches the engine (which may still refuse privileged mode when it runs
    // without the capabilities for it, as in some sandboxes).
    let (out, events, _dir) = run(&yaml, &["--docker-allow-privileged", "j"]);
    let reason = job(&events, "j")["reason"].as_str().unwrap_or_default().to_string();
    assert!(out.status.success() || !reason.contains("has not allowed"), "{reason}");

    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    docker-socket: true\n    steps:\n      - run: test -S /var/run/docker.sock && echo socket\n"
    );
    let (_, events, _dir) = run(&yaml, &[]);
    assert!(job(&events, "j")["reason"].as_str().unwrap().contains("--docker-allow-socket j"));
    let (out, events, _dir) = run(&yaml, &["--docker-allow-socket", "j"]);
    assert!(out.status.success(), "{events:?}");
    assert_eq!(logs(&events, "j"), ["socket"]);

    let volume = format!("chengis-test-cache-{}", std::process::id());
    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    cache-volumes:\n      {volume}: /cache\n    steps:\n      - run: cat /cache/n 2>/dev/null || echo none; echo hit > /cache/n\n"
    );
    let (_, first, _d1) = run(&yaml, &[]);
    let (_, second, _d2) = run(&yaml, &[]);
    let _ = Command::new("docker").args(["volume", "rm", "-f", &volume]).output();
    assert_eq!(logs(&first, "j"), ["none"]);
    assert_eq!(logs(&second, "j"), ["hit"]);
}

/// Starts `chengis run` of a container job with a service whose step runs for a minute, and
/// returns once the step is running: the child, the lease label of its objects, and the rest
/// of its JSON output.
fn spawn_until_running(
    dir: &Path,
) -> (std::process::Child, String, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let file = dir.join("chengis.yml");
    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    services:\n      web:\n        image: {SERVICE_IMAGE}\n        ports: [80]\n    steps:\n      - run: echo running; sleep 60\n"
    );
    std::fs::write(&file, yaml).unwrap();
    let mut child = chengis()
        .arg("run")
        .arg(&file)
        .args(["--format", "json", "--kill-grace", "1s", "--workspace"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let label = format!("chengis.lease=pid:{}", child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("\"running\"") {
            break;
        }
    }
    (child, label, lines)
}

#[test]
fn cancel_and_timeout_leave_no_container_behind() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, label, lines) = spawn_until_running(dir.path());
    assert_eq!(objects("container", &label).len(), 2, "job and service containers while running");
    assert_eq!(objects("network", &label).len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("\"cancelled\"")), "{rest:?}");
    assert!(objects("container", &label).is_empty(), "containers left after cancel");
    assert!(objects("network", &label).is_empty(), "network left after cancel");

    let yaml = format!(
        "jobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    timeout: 1s\n    steps:\n      - run: sleep 60\n"
    );
    let out = run_in(dir.path(), &yaml, &["--kill-grace", "1s"]);
    assert!(!out.status.success());
    let events = parse_events(&out.stdout);
    assert_eq!(job(&events, "j")["status"], "timed_out");
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=chengis.build=1", "--filter", "label=chengis.job=j"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&leftovers.stdout).lines().map(str::to_string).collect();
    for id in ids {
        let lease = Command::new("docker")
            .args(["inspect", "-f", "{{index .Config.Labels \"chengis.lease\"}}", &id])
            .output()
            .unwrap();
        let lease = String::from_utf8_lossy(&lease.stdout).trim().to_string();
        let pid: u32 = lease.trim_start_matches("pid:").parse().unwrap_or(0);
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "container {id} of a finished run ({lease}) is left");
    }
}

#[test]
fn the_reaper_removes_what_a_killed_run_left() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, label, _lines) = spawn_until_running(dir.path());
    child.kill().unwrap(); // SIGKILL: nothing gets to clean up
    child.wait().unwrap();
    assert_eq!(objects("container", &label).len(), 2, "the killed run's containers are still there");
    assert_eq!(objects("network", &label).len(), 1);

    // The next start of a run with a container job reaps them.
    let out = run_in(
        dir.path(),
        &format!("jobs:\n  k:\n    image: {IMAGE}\n    pull: never\n    steps:\n      - run: 'true'\n"),
        &[],
    );
    assert!(out.status.success());
    assert!(objects("container", &label).is_empty(), "containers of the killed run survived the reaper");
    assert!(objects("network", &label).is_empty(), "the network of the killed run survived the reaper");
}
