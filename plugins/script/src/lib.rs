//! `script`: the builtin step executor that runs a script in the job's sandbox, through the
//! host's `sandbox.exec`, with its output going to the build log.
//!
//! Configuration (`with:`), documented in the plugin's README:
//! - `lang`: `sh` (default), `bash`, `python` or `node` (`shell` is an older alias).
//! - `source`: the script text (`run` is an alias), or
//! - `file`: a script file, relative to the workspace (exactly one of `source` and `file`).
//! - `args`: arguments for the script, split on whitespace with `'…'` and `"…"` quoting.
//! - `workdir`: a directory relative to the workspace.
//! - `timeout`: seconds (the step's own timeout still applies).
//!
//! Sets the output `exit-code`; a non-zero exit fails the step.

use std::path::{Component, Path};

use chengis_plugin_sdk::sandbox::Command;
use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{Capability, Config, ConfigError, Failure, Host, Kind, Manifest, StepExecutor, export};

/// The script step executor.
pub struct Script;

/// The interpreters a script can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// POSIX `sh`, with `-e`.
    Sh,
    /// `bash`, with `-e -o pipefail`.
    Bash,
    /// `python3`.
    Python,
    /// `node`.
    Node,
}

impl Lang {
    /// The language named `text` (`sh`, `bash`, `python`, `node`).
    fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "sh" => Ok(Lang::Sh),
            "bash" => Ok(Lang::Bash),
            "python" | "python3" => Ok(Lang::Python),
            "node" => Ok(Lang::Node),
            other => Err(ConfigError {
                key: key.into(),
                message: format!("expected sh, bash, python or node, got {other:?}"),
            }),
        }
    }

    /// The program that runs the script.
    fn program(self) -> &'static str {
        match self {
            Lang::Sh => "sh",
            Lang::Bash => "bash",
            Lang::Python => "python3",
            Lang::Node => "node",
        }
    }
}

/// Where the script comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The script text itself.
    Inline(String),
    /// A file, relative to the workspace (checked not to leave it).
    File(String),
}

/// The command line that runs `source` with `lang` and `args`, from `workdir` (relative to the
/// workspace; a `file` is made relative to it).
pub fn argv(lang: Lang, source: &Source, args: &[String], workdir: Option<&str>) -> Vec<String> {
    let program = lang.program().to_string();
    let mut argv = vec![program.clone()];
    match lang {
        Lang::Sh => argv.push("-e".into()),
        Lang::Bash => argv.extend(["-e".into(), "-o".into(), "pipefail".into()]),
        Lang::Python | Lang::Node => {}
    }
    match source {
        Source::Inline(text) => {
            let flag = if lang == Lang::Node { "-e" } else { "-c" };
            argv.extend([flag.to_string(), text.clone()]);
            match lang {
                // `sh -c TEXT NAME ARGS...`: NAME becomes `$0`.
                Lang::Sh | Lang::Bash => argv.push(program),
                // Without `--`, node would read arguments starting with `-` as its own options.
                Lang::Node => argv.push("--".into()),
                Lang::Python => {}
            }
        }
        Source::File(path) => argv.push(relative_to_workdir(path, workdir)),
    }
    argv.extend(args.iter().cloned());
    argv
}

/// `path` (relative to the workspace) as seen from `workdir` (relative to the workspace).
fn relative_to_workdir(path: &str, workdir: Option<&str>) -> String {
    let depth =
        workdir.map_or(0, |dir| Path::new(dir).components().filter(|c| matches!(c, Component::Normal(_))).count());
    if depth == 0 { format!("./{path}") } else { format!("{}{path}", "../".repeat(depth)) }
}

/// Checks that a `file` stays inside the workspace (relative, without `..`) and returns it
/// without `.` components.
fn check_file(path: &str) -> Result<String, ConfigError> {
    let error = |message: &str| ConfigError { key: "file".into(), message: format!("{path:?} {message}") };
    let path = path.trim();
    if path.is_empty() {
        return Err(ConfigError { key: "file".into(), message: "is empty".into() });
    }
    let parsed = Path::new(path);
    if parsed.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err(error("must be relative to the workspace, not absolute"));
    }
    let mut parts = Vec::new();
    for component in parsed.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy()),
            Component::CurDir => {}
            _ => return Err(error("must stay inside the workspace (no `..`)")),
        }
    }
    if parts.is_empty() {
        return Err(error("names no file"));
    }
    Ok(parts.join("/"))
}

/// Splits `text` into arguments: whitespace separates them, `'…'` keeps text as is, `"…"` keeps
/// text with `\"` and `\\` unescaped.
pub fn split_args(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(arg) = current.take() {
                    args.push(arg);
                }
            }
            '\'' | '"' => {
                let arg = current.get_or_insert_with(String::new);
                let mut closed = false;
                while let Some(inner) = chars.next() {
                    if inner == c {
                        closed = true;
                        break;
                    }
                    if c == '"' && inner == '\\' {
                        match chars.next() {
                            Some(escaped @ ('"' | '\\')) => arg.push(escaped),
                            Some(other) => arg.extend(['\\', other]),
                            None => arg.push('\\'),
                        }
                    } else {
                        arg.push(inner);
                    }
                }
                if !closed {
                    return Err(ConfigError { key: "args".into(), message: format!("unclosed {c} quote") });
                }
            }
            c => current.get_or_insert_with(String::new).push(c),
        }
    }
    args.extend(current);
    Ok(args)
}

/// The script's source: exactly one of `source` (or its alias `run`) and `file`.
fn source(config: &Config) -> Result<Source, ConfigError> {
    let inline = match (config.get("source"), config.get("run")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError {
                key: "run".into(),
                message: "is an alias of `source`; set only one of them".into(),
            });
        }
        (Some(text), None) => Some(("source", text)),
        (None, Some(text)) => Some(("run", text)),
        (None, None) => None,
    };
    match (inline, config.get("file")) {
        (Some((key, _)), Some(_)) => {
            Err(ConfigError { key: key.into(), message: "set either `source` or `file`, not both".into() })
        }
        (Some((_, text)), None) => Ok(Source::Inline(text.to_string())),
        (None, Some(path)) => Ok(Source::File(check_file(path)?)),
        (None, None) => Err(ConfigError {
            key: "source".into(),
            message: "is required (or `file`, a script in the workspace) but not set".into(),
        }),
    }
}

impl StepExecutor for Script {
    fn manifest() -> Manifest {
        Manifest::new("script", "0.1.0", "Runs a shell, Python or Node script in the job's sandbox", Kind::StepExecutor)
            .capability(Capability::SandboxExec)
            .config("lang", "sh, bash, python or node (alias: shell)", false, Some("sh"))
            .config("source", "The script text (alias: run); or set `file`", false, None)
            .config("file", "A script file relative to the workspace; or set `source`", false, None)
            .config("args", "Arguments for the script, split on whitespace ('…' and \"…\" quote)", false, None)
            .config("workdir", "Directory relative to the workspace", false, None)
            .config("timeout", "Seconds before the script is stopped", false, None)
    }

    fn run(host: &dyn Host, invocation: Invocation) -> Result<(), Failure> {
        let config = host.config();
        let lang = match (config.get("lang"), config.get("shell")) {
            (Some(_), Some(_)) => {
                return Err(
                    ConfigError { key: "shell".into(), message: "is an alias of `lang`; set only one".into() }.into()
                );
            }
            (Some(text), None) => Lang::parse("lang", text)?,
            (None, Some(text)) => Lang::parse("shell", text)?,
            (None, None) => Lang::Sh,
        };
        let source = source(&config)?;
        let args = config.get("args").map(split_args).transpose()?.unwrap_or_default();
        let workdir = config.get("workdir").map(str::trim).filter(|w| !w.is_empty()).map(String::from);
        let timeout: Option<u64> = config.optional("timeout")?;
        let program = lang.program();
        let command = Command {
            argv: argv(lang, &source, &args, workdir.as_deref()),
            env: invocation.env,
            workdir,
            timeout_ms: timeout.map(|s| s.saturating_mul(1000)),
        };
        let exit = host.exec(&command).map_err(|e| Failure::new(format!("could not start {program}: {e}")))?;
        if exit.timed_out {
            return Err(Failure::new(match timeout {
                Some(seconds) => format!("the script timed out after {seconds} s"),
                None => "the script timed out".to_string(),
            }));
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
    use chengis_plugin_sdk::types::KeyValue;

    fn invocation() -> Invocation {
        Invocation {
            env: vec![KeyValue { key: "CI".into(), value: "true".into() }],
            ..chengis_plugin_sdk::testing::sample_invocation("script@0.1.0")
        }
    }

    /// Runs the step with `config` and returns the one command it ran.
    fn command_for(config: &[(&str, &str)]) -> Command {
        let host = config.iter().fold(FakeHost::new(), |host, (k, v)| host.with_config(k, v));
        Script::run(&host, invocation()).unwrap();
        let commands = host.commands();
        assert_eq!(commands.len(), 1);
        commands[0].clone()
    }

    fn failure_for(config: &[(&str, &str)]) -> String {
        let host = config.iter().fold(FakeHost::new(), |host, (k, v)| host.with_config(k, v));
        let message = Script::run(&host, invocation()).unwrap_err().message;
        assert!(host.commands().is_empty(), "{message}: nothing runs on a configuration error");
        message
    }

    #[test]
    fn runs_the_script_through_the_sandbox() {
        let host =
            FakeHost::new().with_config("source", "echo hi").with_config("lang", "bash").with_exec(|cmd, out| {
                out(&format!("ran {}", cmd.argv.join(" ")));
                Ok(Exit { code: Some(0), timed_out: false })
            });
        Script::run(&host, invocation()).unwrap();
        let commands = host.commands();
        assert_eq!(commands[0].argv, ["bash", "-e", "-o", "pipefail", "-c", "echo hi", "bash"]);
        assert_eq!(commands[0].env[0].key, "CI");
        assert_eq!(commands[0].workdir, None);
        assert_eq!(commands[0].timeout_ms, None);
        assert_eq!(host.log_text(), "ran bash -e -o pipefail -c echo hi bash\n");
        assert_eq!(host.outputs(), [("exit-code".to_string(), "0".to_string())]);
    }

    #[test]
    fn each_language_has_its_interpreter_for_source_and_file() {
        let inline = |lang: &str| command_for(&[("lang", lang), ("source", "S"), ("args", "a 'b c'")]).argv;
        assert_eq!(inline("sh"), ["sh", "-e", "-c", "S", "sh", "a", "b c"]);
        assert_eq!(inline("bash"), ["bash", "-e", "-o", "pipefail", "-c", "S", "bash", "a", "b c"]);
        assert_eq!(inline("python"), ["python3", "-c", "S", "a", "b c"]);
        assert_eq!(inline("node"), ["node", "-e", "S", "--", "a", "b c"]);

        let file = |lang: &str| command_for(&[("lang", lang), ("file", "ci/x"), ("args", "--fast")]).argv;
        assert_eq!(file("sh"), ["sh", "-e", "./ci/x", "--fast"]);
        assert_eq!(file("bash"), ["bash", "-e", "-o", "pipefail", "./ci/x", "--fast"]);
        assert_eq!(file("python"), ["python3", "./ci/x", "--fast"]);
        assert_eq!(file("node"), ["node", "./ci/x", "--fast"]);
    }

    #[test]
    fn defaults_and_aliases_keep_the_old_interface() {
        // `run` and `shell` were the first names of `source` and `lang`; `sh` is the default.
        assert_eq!(command_for(&[("run", "true")]).argv, ["sh", "-e", "-c", "true", "sh"]);
        assert_eq!(command_for(&[("run", "x"), ("shell", "python")]).argv, ["python3", "-c", "x"]);
        assert!(failure_for(&[("run", "x"), ("source", "y")]).contains(r#"config key "run": is an alias of `source`"#));
        assert!(failure_for(&[("run", "x"), ("lang", "sh"), ("shell", "sh")]).contains(r#""shell": is an alias"#));
    }

    #[test]
    fn a_file_is_found_from_the_workdir() {
        let command = command_for(&[("file", "scripts/build.sh"), ("workdir", "app/web")]);
        assert_eq!(command.argv, ["sh", "-e", "../../scripts/build.sh"]);
        assert_eq!(command.workdir.as_deref(), Some("app/web"));
        let command = command_for(&[("file", "./x.py"), ("lang", "python"), ("workdir", "./sub/"), ("timeout", "7")]);
        assert_eq!(command.argv, ["python3", "../x.py"]);
        assert_eq!(command.timeout_ms, Some(7000));
    }

    #[test]
    fn a_file_outside_the_workspace_is_refused() {
        for (path, why) in [
            ("/etc/passwd", "must be relative to the workspace, not absolute"),
            ("../x.sh", "must stay inside the workspace (no `..`)"),
            ("a/../../x.sh", "must stay inside the workspace (no `..`)"),
            ("./.", "names no file"),
        ] {
            let message = failure_for(&[("file", path)]);
            assert_eq!(message, format!("invalid configuration: config key \"file\": {path:?} {why}"));
        }
        assert!(failure_for(&[("file", " ")]).contains(r#""file": is empty"#));
        assert!(failure_for(&[("file", "x"), ("source", "y")]).contains("set either `source` or `file`, not both"));
        assert!(failure_for(&[]).contains(r#"config key "source": is required (or `file`"#));
    }

    #[test]
    fn args_split_like_a_shell_would() {
        assert_eq!(split_args(r#"  a  "b \"c\" \\" 'd e'f  "#).unwrap(), ["a", r#"b "c" \"#, "d ef"]);
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert_eq!(split_args("''").unwrap(), [""]);
        let error = split_args("a 'b").unwrap_err();
        assert_eq!(error.to_string(), r#"config key "args": unclosed ' quote"#);
    }

    #[test]
    fn non_zero_exit_fails_the_step() {
        let host = FakeHost::new()
            .with_config("source", "exit 3")
            .with_exec(|_, _| Ok(Exit { code: Some(3), timed_out: false }));
        assert_eq!(Script::run(&host, invocation()).unwrap_err().message, "the script exited with code 3");
        assert_eq!(host.outputs(), [("exit-code".to_string(), "3".to_string())]);
    }

    #[test]
    fn timeouts_signals_and_start_errors_fail_the_step() {
        let host = FakeHost::new()
            .with_config("source", "sleep 9")
            .with_config("timeout", "2")
            .with_exec(|_, _| Ok(Exit { code: None, timed_out: true }));
        assert_eq!(Script::run(&host, invocation()).unwrap_err().message, "the script timed out after 2 s");
        let host =
            FakeHost::new().with_config("source", "x").with_exec(|_, _| Ok(Exit { code: None, timed_out: false }));
        assert_eq!(Script::run(&host, invocation()).unwrap_err().message, "the script was killed by a signal");
        let host = FakeHost::new()
            .with_config("source", "x")
            .with_config("lang", "node")
            .with_exec(|_, _| Err("no such program".into()));
        assert_eq!(Script::run(&host, invocation()).unwrap_err().message, "could not start node: no such program");
        assert!(host.outputs().is_empty());
    }

    #[test]
    fn bad_config_names_the_key() {
        let message = failure_for(&[("source", "x"), ("lang", "fish")]);
        assert_eq!(
            message,
            r#"invalid configuration: config key "lang": expected sh, bash, python or node, got "fish""#
        );
        assert!(failure_for(&[("source", "x"), ("timeout", "soon")]).contains(r#"config key "timeout""#));
    }

    #[test]
    fn the_manifest_requests_only_exec() {
        let manifest = Script::manifest();
        assert!(matches!(manifest.capabilities.as_slice(), [Capability::SandboxExec]));
        let keys: Vec<_> = manifest.config.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(keys, ["lang", "source", "file", "args", "workdir", "timeout"]);
    }
}
