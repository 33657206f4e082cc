//! How a `run:` script becomes a command: `sh -e -c` by default, `shell:` to choose another.

use std::path::Path;

/// A program and its arguments.
pub struct ScriptCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The command for `script` under `shell` (`sh`, `bash`, `python`, `node`, or a command line
/// with `{0}` for the script file). Scripts for interpreters are written to `state_dir`, which
/// the step sees as `visible_dir` (the same directory, or its mount inside a container).
pub fn command(
    shell: Option<&str>,
    script: &str,
    state_dir: &Path,
    visible_dir: &Path,
    index: usize,
) -> Result<ScriptCommand, String> {
    let inline = |program: &str, flags: &[&str]| ScriptCommand {
        program: program.to_string(),
        args: flags.iter().map(|s| s.to_string()).chain([script.to_string()]).collect(),
    };
    match shell.map(str::trim) {
        None | Some("sh") => Ok(inline("sh", &["-e", "-c"])),
        Some("bash") => Ok(inline("bash", &["--noprofile", "--norc", "-e", "-o", "pipefail", "-c"])),
        Some(other) => {
            let (words, ext) = match other {
                "python" => (vec!["python3", "{0}"], "py"),
                "node" => (vec!["node", "{0}"], "js"),
                custom => (custom.split_whitespace().collect(), "script"),
            };
            let name = format!("step-{index}.{ext}");
            let file = state_dir.join(&name);
            std::fs::write(&file, script).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            let path = visible_dir.join(&name).display().to_string();
            let mut parts: Vec<String> = words.iter().map(|w| w.replace("{0}", &path)).collect();
            if !words.iter().any(|w| w.contains("{0}")) {
                parts.push(path);
            }
            let program = parts.remove(0);
            Ok(ScriptCommand { program, args: parts })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_sh_e_c() {
        let dir = tempfile::tempdir().unwrap();
        let c = command(None, "echo hi", dir.path(), dir.path(), 0).unwrap();
        assert_eq!(c.program, "sh");
        assert_eq!(c.args, ["-e", "-c", "echo hi"]);
    }

    #[test]
    fn interpreters_get_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = command(Some("python"), "print(1)", dir.path(), dir.path(), 3).unwrap();
        assert_eq!(c.program, "python3");
        let file = dir.path().join("step-3.py");
        assert_eq!(c.args, [file.display().to_string()]);
        assert_eq!(std::fs::read_to_string(file).unwrap(), "print(1)");
        let c = command(Some("perl -w {0}"), "1;", dir.path(), Path::new("/chengis"), 4).unwrap();
        assert_eq!(c.program, "perl");
        assert_eq!(c.args, ["-w", "/chengis/step-4.script"]);
    }
}
