//! Integration tests: real pipelines run through the built `chengis` binary.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod run_events;

use run_events::{job_event, logs, parse_events, step_event};

fn chengis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chengis"))
}

/// Writes `yaml` to a pipeline file in a fresh directory and runs it with `--format json`.
fn run(yaml: &str, extra: &[&str]) -> (Output, Vec<Value>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chengis.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = chengis()
        .arg("run")
        .arg(&file)
        .args(["--format", "json"])
        .args(extra)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let events = parse_events(&out.stdout);
    (out, events, dir)
}

fn step_status(events: &[Value], job: &str, step: usize) -> String {
    step_event(events, job, step)["status"].as_str().unwrap_or_default().to_string()
}

fn run_status(events: &[Value]) -> String {
    events.last().map(|e| e["status"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
}

#[test]
fn env_and_outputs_propagate_within_and_across_jobs() {
    let (out, events, _dir) = run(
        r#"
jobs:
  build:
    steps:
      - id: v
        run: |
          echo "FOO=bar" >> "$CHENGIS_ENV"
          printf 'MULTI<<END\nline one\nline two\nEND\n' >> "$CHENGIS_ENV"
          echo "version=1.2.3" >> "$CHENGIS_OUTPUT"
      - run: |
          test "$FOO" = bar
          test "$MULTI" = "$(printf 'line one\nline two')"
          echo "step output ${{ steps.v.outputs.version }}"
  test:
    needs: build
    steps:
      - env:
          VERSION: ${{ needs.build.outputs.version }}
        run: |
          test -z "$FOO"
          echo "got $VERSION from ${{ needs.build.result }}"
"#,
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(logs(&events, "build").contains(&"step output 1.2.3".to_string()));
    assert_eq!(logs(&events, "test"), ["got 1.2.3 from success"]);
    assert_eq!(run_status(&events), "success");
}

#[test]
fn failing_step_stops_job_and_skips_dependents_unless_continue_on_error() {
    let (out, events, _dir) = run(
        r#"
jobs:
  a:
    steps:
      - run: exit 3
        continue-on-error: true
      - run: echo "still running"
      - run: exit 4
      - run: echo "never"
      - if: failure()
        run: echo "cleanup after failure"
  b:
    needs: a
    steps:
      - run: echo "never either"
"#,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(step_status(&events, "a", 0), "failure");
    assert_eq!(step_status(&events, "a", 1), "success");
    assert_eq!(step_status(&events, "a", 2), "failure");
    assert_eq!(step_status(&events, "a", 3), "skipped");
    assert_eq!(step_status(&events, "a", 4), "success");
    let exit = events.iter().find(|e| e["event"] == "step_finished" && e["step"] == 2).unwrap();
    assert_eq!(exit["exit_code"], 4);
    assert_eq!(logs(&events, "a"), ["still running", "cleanup after failure"]);
    let b = job_event(&events, "b");
    assert_eq!(b["status"], "skipped");
    assert!(b["reason"].as_str().unwrap().contains("needs `a`"), "{b}");
    assert_eq!(run_status(&events), "failure");
}

#[test]
fn post_steps_run_and_do_not_change_the_result() {
    let (out, events, _dir) = run(
        r#"
jobs:
  a:
    steps:
      - run: "true"
post:
  always:
    - run: echo always; exit 1
  on-success:
    - run: echo on-success
  on-failure:
    - run: echo on-failure
"#,
        &[],
    );
    assert!(out.status.success());
    assert_eq!(logs(&events, "post"), ["always", "on-success"]);
    assert_eq!(run_status(&events), "success");
}

#[test]
fn step_ignoring_sigterm_is_killed_after_the_grace_period() {
    let started = Instant::now();
    let (out, events, dir) = run(
        r#"
jobs:
  slow:
    steps:
      - timeout: 1s
        run: |
          trap '' TERM
          echo $$ > pid
          sleep 60
"#,
        &["--kill-grace", "500ms"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(step_status(&events, "slow", 0), "timed_out");
    assert_eq!(job_event(&events, "slow")["status"], "timed_out");
    // The 60 s sleep did not run to its end.
    assert!(started.elapsed() < Duration::from_secs(30));
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid")).unwrap().trim().parse().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the step's shell is still alive");
}

#[test]
fn job_timeout_marks_the_job_timed_out() {
    let (out, events, _dir) = run(
        r#"
jobs:
  j:
    timeout: 1s
    steps:
      - run: sleep 30
"#,
        &["--kill-grace", "200ms"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(job_event(&events, "j")["status"], "timed_out");
}

#[test]
fn ctrl_c_cancels_running_steps() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chengis.yml");
    std::fs::write(&file, "jobs:\n  j:\n    steps:\n      - run: echo started; sleep 60\n  k:\n    needs: j\n    steps:\n      - run: echo never\n").unwrap();
    let mut child = chengis()
        .arg("run")
        .arg(&file)
        .args(["--format", "json", "--kill-grace", "500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("\"started\"");
        seen.push(line);
        if started {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let events = parse_events(seen.join("\n").as_bytes());
    assert_eq!(step_status(&events, "j", 0), "cancelled");
    assert_eq!(job_event(&events, "k")["status"], "cancelled");
    assert_eq!(run_status(&events), "cancelled");
}

#[test]
fn output_cap_drops_the_rest_with_one_warning() {
    let (out, events, _dir) = run(
        "jobs:\n  j:\n    steps:\n      - run: head -c 3000000 /dev/zero | tr '\\0' 'x' | fold -w 1000\n",
        &["--output-cap", "1MiB"],
    );
    assert!(out.status.success());
    let lines = logs(&events, "j");
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("output cap")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let kept: usize = lines.iter().filter(|l| l.starts_with('x')).map(|l| l.len() + 1).sum();
    assert!(kept <= 1 << 20, "kept {kept} bytes");
    assert!(kept > (1 << 20) - 2000, "kept {kept} bytes");
}

const SECRET_PIPELINE: &str = r#"
jobs:
  j:
    steps:
      - env:
          TOKEN: ${{ secrets.TOKEN }}
        run: |
          echo "token is $TOKEN"
          printf 'split: s3cr'; sleep 0.2; printf 'et-value\n'
          echo "multi: first-line and second-line" >&2
"#;

#[test]
fn secrets_are_masked_even_when_split_across_writes() {
    let (out, events, dir) = run(SECRET_PIPELINE, &["--secret", "TOKEN=s3cret-value", "--secrets-file", "secrets.env"]);
    let _ = dir;
    // The secrets file is read relative to the working directory: it does not exist here.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets.env"));
    assert!(events.is_empty());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.env"), "MULTI<<EOF\nfirst-line\nsecond-line\nEOF\n").unwrap();
    let secrets = dir.path().join("s.env");
    let (out, events, _d) =
        run(SECRET_PIPELINE, &["--secret", "TOKEN=s3cret-value", "--secrets-file", secrets.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(!all.contains("s3cret-value") && !all.contains("first-line"), "{all}");
    assert_eq!(logs(&events, "j"), ["token is ***", "split: ***", "multi: *** and ***"]);
}

#[test]
fn short_secrets_are_refused() {
    let (out, events, _dir) = run("jobs:\n  j:\n    steps:\n      - run: 'true'\n", &["--secret", "PIN=123"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4"), "{err}");
    assert!(!err.contains("123"), "the value leaked: {err}");
    assert!(events.is_empty());
}

#[test]
fn independent_jobs_run_in_parallel() {
    let (out, events, _dir) = run(
        r#"
jobs:
  a:
    steps:
      - run: touch a-started; for i in $(seq 50); do [ -e b-started ] && exit 0; sleep 0.1; done; exit 1
  b:
    steps:
      - run: touch b-started; for i in $(seq 50); do [ -e a-started ] && exit 0; sleep 0.1; done; exit 1
"#,
        &["--parallel", "2"],
    );
    assert!(out.status.success(), "{events:?}");
    let (out, _events, _dir) = run(
        "jobs:\n  a:\n    steps:\n      - run: mkdir lock && sleep 0.3 && rmdir lock\n  b:\n    steps:\n      - run: mkdir lock && sleep 0.3 && rmdir lock\n",
        &["--parallel", "1"],
    );
    assert!(out.status.success(), "with --parallel 1 the jobs must not overlap");
}

#[test]
fn matrix_jobs_see_their_combination() {
    let (out, events, _dir) = run(
        r#"
jobs:
  t:
    strategy:
      matrix:
        os: [linux, bsd]
        v: ["3.10"]
    steps:
      - run: echo "$MATRIX_OS $MATRIX_V ${{ matrix.os }}"
"#,
        &[],
    );
    assert!(out.status.success());
    assert_eq!(logs(&events, "t (os=linux, v=3.10)"), ["linux 3.10 linux"]);
    assert_eq!(logs(&events, "t (os=bsd, v=3.10)"), ["bsd 3.10 bsd"]);
}

#[test]
fn expression_values_are_never_spliced_into_the_script() {
    let (out, events, _dir) = run(
        "params:\n  name:\n    default: x\njobs:\n  j:\n    steps:\n      - run: echo ${{ params.name }}\n",
        &["--param", "name=$(touch pwned); echo injected"],
    );
    assert!(out.status.success());
    assert_eq!(logs(&events, "j"), ["$(touch pwned); echo injected"]);
    assert!(!_dir.path().join("pwned").exists());
}

#[test]
fn required_substitution_fails_the_plan_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chengis.yml");
    std::fs::write(
        &file,
        "jobs:\n  j:\n    image: ${REGISTRY:?set REGISTRY to your registry}/app\n    steps:\n      - run: 'true'\n",
    )
    .unwrap();
    let out = chengis().arg("run").arg(&file).env_remove("REGISTRY").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set REGISTRY to your registry"), "{err}");
    assert!(err.contains("chengis.yml:3:"), "{err}");
}

#[test]
fn text_output_is_readable_and_exit_code_follows_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chengis.yml");
    std::fs::write(&file, "jobs:\n  hello:\n    steps:\n      - name: greet\n        run: echo hi\n").unwrap();
    let out = chengis().arg("run").arg(&file).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("▸ greet"), "{text}");
    assert!(text.contains("│   hi") || text.contains("│  hi"), "{text}");
    assert!(text.contains("pipeline success"), "{text}");
    assert!(!text.contains('\x1b'), "colours only on a terminal");
}

#[test]
fn lint_reports_all_problems_as_text_and_json() {
    let broken = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/broken.yml");
    let out = chengis().args(["lint", broken]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("broken.yml:2:5: error[unknown-key]: unknown event `pushh`"), "{text}");
    assert!(text.contains("did you mean `push`?"), "{text}");
    let out = chengis().args(["lint", "--format", "json", broken]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["errors"].as_array().unwrap().len() >= 6, "{v}");
    for e in v["errors"].as_array().unwrap() {
        assert!(e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0 && e["code"].is_string());
    }
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dag.yml");
    let out = chengis().args(["lint", good]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn fail_fast_cancels_sibling_combinations_and_max_parallel_limits_them() {
    let (out, events, _dir) = run(
        r#"
jobs:
  t:
    strategy:
      matrix:
        n: ["1", "2"]
    steps:
      - run: if [ "$MATRIX_N" = 1 ]; then sleep 0.3; exit 1; fi; sleep 30
"#,
        &["--parallel", "2", "--kill-grace", "200ms"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(job_event(&events, "t (n=1)")["status"], "failure");
    assert_eq!(job_event(&events, "t (n=2)")["status"], "cancelled");

    let (out, events, _dir) = run(
        r#"
jobs:
  t:
    strategy:
      max-parallel: 1
      matrix:
        n: ["1", "2", "3"]
    steps:
      - run: mkdir lock && sleep 0.2 && rmdir lock
"#,
        &["--parallel", "3"],
    );
    assert!(out.status.success(), "combinations overlapped: {events:?}");
}

#[test]
fn server_only_keys_are_reported_as_warnings() {
    let (out, events, _dir) = run("jobs:\n  j:\n    runs-on: [gpu]\n    steps:\n      - run: 'true'\n", &[]);
    assert!(out.status.success());
    let w: Vec<&Value> = events.iter().filter(|e| e["event"] == "warning").collect();
    assert_eq!(w.len(), 1);
    assert!(w[0]["message"].as_str().unwrap().contains("runs-on"));
}

#[test]
fn job_selection_runs_the_job_and_what_it_needs() {
    let yaml = "jobs:\n  build:\n    steps:\n      - run: echo build\n  test:\n    needs: build\n    steps:\n      - run: echo test\n  other:\n    steps:\n      - run: echo other\n";
    let (out, events, _dir) = run(yaml, &["--job", "test"]);
    assert!(out.status.success());
    let ran: Vec<&str> =
        events.iter().filter(|e| e["event"] == "job_started").map(|e| e["job"].as_str().unwrap()).collect();
    assert_eq!(ran, ["build", "test"]);
    let (out, _events, _dir) = run(yaml, &["--job", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job `nope`"));
}

#[test]
fn shell_override_runs_other_interpreters() {
    let (out, events, _dir) = run(
        r#"
jobs:
  j:
    steps:
      - shell: bash
        run: arr=(a b c); echo "${#arr[@]} items"
      - shell: python
        run: |
          import os
          print("python sees", os.environ["CHENGIS_JOB"])
      - run: false | true
"#,
        &[],
    );
    assert!(out.status.success(), "{events:?}");
    assert_eq!(logs(&events, "j"), ["3 items", "python sees j"]);
    let (out, _events, _dir) = run("jobs:\n  j:\n    steps:\n      - shell: bash\n        run: false | true\n", &[]);
    assert_eq!(out.status.code(), Some(1), "bash runs with pipefail");
}

#[test]
fn uses_steps_run_the_builtin_plugins_locally() {
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path().display().to_string();
    let yaml = "jobs:\n  j:\n    steps:\n      - id: s\n        uses: script\n        with:\n          run: echo \"from the plugin\"; touch made\n      - run: test -f made && echo \"exit ${{ steps.s.outputs.exit-code }}\"\n      - uses: missing\n        continue-on-error: true\n";
    let (out, events, _dir) = run(yaml, &["--plugin-dir", &dir]);
    assert!(out.status.success(), "{events:?}");
    assert_eq!(logs(&events, "j"), ["from the plugin", "exit 0"]);
    assert_eq!(step_status(&events, "j", 2), "error");
    // The local allowlist pinned the builtins.
    let list = chengis().args(["plugin", "--data-dir", &dir, "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("script") && text.contains("(builtin)"), "{text}");
}
