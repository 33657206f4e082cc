//! `script`: the builtin step executor that runs a script in the job's sandbox, through the
//! host's `sandbox.exec`, with its output going to the build log.
//!
//! Configuration (`with:`):
//! - `run` (required): the script text.
//! - `shell`: `sh` (default), `bash`, `python` or `node`.
//! - `workdir`: a directory relative to the workspace.
//! - `timeout`: seconds (the step's own timeout still applies).
//!
//! Sets the output `exit-code`; a non-zero exit fails the step.

use chengis_plugin_sdk::sandbox::Command;
use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{Capability, Failure, Host, Kind, Manifest, StepExecutor, export};

/// The script step executor.
pub struct Script;

/// The program and flag that run a script given as an argument.
fn interpreter(shell: &str) -> Option<[&'static str; 2]> {
    match shell {
        "sh" => Some(["sh", "-c"]),
        "bash" => Some(["bash", "-c"]),
        "python" => Some(["python3", "-c"]),
        "node" => Some(["node", "-e"]),
        _ => None,
    }
}

impl StepExecutor for Script {
    fn manifest() -> Manifest {
        Manifest::new("script", "0.1.0", "Runs a shell, Python or Node script in the job's sandbox", Kind::StepExecutor)
            .capability(Capability::SandboxExec)
            .config("run", "The script to run", true, None)
            .config("shell", "sh, bash, python or node", false, Some("sh"))
            .config("workdir", "Directory relative to the workspace", false, None)
            .config("timeout", "Seconds before the script is stopped", false, None)
    }

    fn run(host: &dyn Host, invocation: Invocation) -> Result<(), Failure> {
        let config = host.config();
        let script: String = config.required("run")?;
        let shell: String = config.or("shell", "sh".to_string())?;
        let timeout: Option<u64> = config.optional("timeout")?;
        let [program, flag] = interpreter(&shell).ok_or_else(|| {
            Failure::from(chengis_plugin_sdk::ConfigError {
                key: "shell".into(),
                message: format!("expected sh, bash, python or node, got {shell:?}"),
            })
        })?;
        let command = Command {
            argv: vec![program.into(), flag.into(), script],
            env: invocation.env,
            workdir: config.get("workdir").map(Into::into),
            timeout_ms: timeout.map(|s| s.saturating_mul(1000)),
        };
        let exit = host.exec(&command).map_err(|e| Failure::new(format!("could not start {program}: {e}")))?;
        if exit.timed_out {
            return Err(Failure::new(format!("the script timed out after {} s", timeout.unwrap_or(0))));
        }
        let code = exit.code.ok_or_else(|| Failure::new("the script was killed by a signal"))?;
        host.set_output("exit-code", &code.to_string());
        if code != 0 {
            return Err(Failure::new(format!("the script exited with code {code}")));
        }
        Ok(())
    }
}

export!(Script as step_executor);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::sandbox::Exit;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::types::{Build, Commit, Job, KeyValue, Status, Step};

    fn invocation() -> Invocation {
        Invocation {
            build: Build {
                id: 1,
                number: 1,
                pipeline: "p".into(),
                status: Status::Running,
                commit: Commit {
                    sha: "0".repeat(40),
                    repository: "r".into(),
                    branch: None,
                    tag: None,
                    message: String::new(),
                    author: String::new(),
                },
                trigger: "manual".into(),
                url: None,
                duration_ms: None,
            },
            job: Job { id: 1, name: "j".into(), status: Status::Running, image: None, duration_ms: None },
            step: Step { index: 0, name: "s".into(), uses: "script@0.1.0".into() },
            env: vec![KeyValue { key: "CI".into(), value: "true".into() }],
        }
    }

    #[test]
    fn runs_the_script_through_the_sandbox() {
        let host = FakeHost::new().with_config("run", "echo hi").with_config("shell", "bash").with_exec(|cmd, out| {
            out(&format!("ran {}", cmd.argv.join(" ")));
            Ok(Exit { code: Some(0), timed_out: false })
        });
        Script::run(&host, invocation()).unwrap();
        let commands = host.commands();
        assert_eq!(commands[0].argv, ["bash", "-c", "echo hi"]);
        assert_eq!(commands[0].env[0].key, "CI");
        assert_eq!(host.log_text(), "ran bash -c echo hi\n");
        assert_eq!(host.outputs(), [("exit-code".to_string(), "0".to_string())]);
    }

    #[test]
    fn non_zero_exit_fails_the_step() {
        let host =
            FakeHost::new().with_config("run", "exit 3").with_exec(|_, _| Ok(Exit { code: Some(3), timed_out: false }));
        assert_eq!(Script::run(&host, invocation()).unwrap_err().message, "the script exited with code 3");
        assert_eq!(host.outputs(), [("exit-code".to_string(), "3".to_string())]);
    }

    #[test]
    fn bad_config_names_the_key() {
        let host = FakeHost::new().with_config("run", "x").with_config("shell", "fish");
        let failure = Script::run(&host, invocation()).unwrap_err();
        assert_eq!(
            failure.message,
            r#"invalid configuration: config key "shell": expected sh, bash, python or node, got "fish""#
        );
        let host = FakeHost::new();
        assert!(Script::run(&host, invocation()).unwrap_err().message.contains(r#""run": is required"#));
    }
}
