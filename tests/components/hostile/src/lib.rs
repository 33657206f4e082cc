//! A step executor that attacks the host in the way its `attack` config names, so that the
//! runtime's tests can prove each attack is contained.

use chengis_plugin_sdk::outputs::{TestCase, TestOutcome, TestSuite};
use chengis_plugin_sdk::sandbox::Command;
use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{Capability, Failure, Host, HttpRequest, Kind, Level, Manifest, StepExecutor, export};

/// The hostile step executor.
pub struct Hostile;

/// Reads a file and reports `ok:<content>` or `err:<error>` as the output `name`.
fn probe(host: &dyn Host, name: &str, path: &str) {
    let result = match std::fs::read_to_string(path) {
        Ok(content) => format!("ok:{content}"),
        Err(error) => format!("err:{error}"),
    };
    host.set_output(name, &result);
}

impl StepExecutor for Hostile {
    fn manifest() -> Manifest {
        Manifest::new("hostile", "6.6.6", "Attacks the host", Kind::StepExecutor)
            .outbound_http("http://127.0.0.1:*")
            .secret("API_TOKEN")
            .capability(Capability::WorkspaceWrite)
            .capability(Capability::SandboxExec)
    }

    fn run(host: &dyn Host, _invocation: Invocation) -> Result<(), Failure> {
        let config = host.config();
        let attack: String = config.required("attack")?;
        match attack.as_str() {
            "ok" => host.info("behaving"),
            "spin" => {
                let mut counter = 0u64;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(60)),
            "allocate" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            "read-files" => {
                probe(host, "passwd", "/etc/passwd");
                probe(host, "dotdot", "/workspace/../outside.txt");
                probe(host, "relative", "../outside.txt");
                probe(host, "inside", "/workspace/inside.txt");
            }
            "write-file" => {
                std::fs::write("/workspace/written.txt", "pwned")
                    .map_err(|e| Failure::new(format!("write failed: {e}")))?;
            }
            "http" => {
                let url: String = config.required("url")?;
                let response = host.http(&HttpRequest::get(url)).map_err(|e| Failure::new(e.to_string()))?;
                host.set_output("status", &response.status.to_string());
                host.set_output("body", &response.text());
            }
            "secret" => {
                let value = host.secret("API_TOKEN").unwrap_or_default();
                host.set_output("secret", &value);
            }
            "unrequested-secret" => {
                let value = host.secret("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
                host.set_output("secret", &value);
            }
            "huge-return" => return Err(Failure::new("x".repeat(8 * 1024 * 1024))),
            "huge-log" => {
                let line = "y".repeat(1024);
                for _ in 0..16 * 1024 {
                    host.log(Level::Info, &line);
                }
            }
            "panic" => panic!("the plugin panicked on purpose"),
            "report" => {
                host.set_env("DEPLOY_ENV", "staging");
                host.report_tests(&TestSuite {
                    name: "unit".into(),
                    cases: vec![TestCase {
                        name: "adds".into(),
                        classname: "math".into(),
                        outcome: TestOutcome::Failed,
                        duration_ms: 3,
                        message: Some("1 + 1 != 3".into()),
                    }],
                });
            }
            "many-outputs" => {
                let value = "z".repeat(1024);
                for i in 0..4096 {
                    host.set_output(&format!("out{i}"), &value);
                }
            }
            "exec" => {
                let script: String = config.required("script")?;
                let command = Command {
                    argv: vec!["sh".into(), "-c".into(), script],
                    env: Vec::new(),
                    workdir: config.get("workdir").map(Into::into),
                    timeout_ms: config.optional("timeout-ms")?,
                };
                let exit = host.exec(&command).map_err(Failure::new)?;
                host.set_output("code", &format!("{:?}", exit.code));
                host.set_output("timed-out", &exit.timed_out.to_string());
            }
            other => return Err(Failure::new(format!("unknown attack {other:?}"))),
        }
        Ok(())
    }
}

export!(Hostile as step_executor);
