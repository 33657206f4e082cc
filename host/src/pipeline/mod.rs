//! The host side of the pipeline language: finding and reading pipeline files (size cap,
//! UTF-8) and printing diagnostics for people (with the source line) or tools (JSON).

use chengis_pipeline::{Diagnostic, PIPELINE_PATHS, Severity};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a pipeline file could not be read.
#[derive(Debug, Error)]
pub enum PipelineFileError {
    /// No pipeline file in the directory.
    #[error("no pipeline file in {dir}: looked for {}", PIPELINE_PATHS.join(", "))]
    NotFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is over the size cap.
    #[error("{path}: the pipeline file is larger than the limit of {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: usize,
    },
    /// The file is not UTF-8.
    #[error("{path}: the pipeline file is not valid UTF-8 (byte {offset})")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first bad byte.
        offset: usize,
    },
}

/// Finds the pipeline file of a repository directory, in the documented order.
pub fn find(dir: &Path) -> Result<PathBuf, PipelineFileError> {
    PIPELINE_PATHS
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| PipelineFileError::NotFound { dir: dir.to_path_buf() })
}

/// Reads a pipeline file, refusing files over `max` bytes without reading them whole.
pub fn read(path: &Path, max: usize) -> Result<String, PipelineFileError> {
    let io = |source| PipelineFileError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() > max {
        return Err(PipelineFileError::TooLarge { path: path.to_path_buf(), max });
    }
    String::from_utf8(bytes)
        .map_err(|e| PipelineFileError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// Diagnostics for people: `file:line:col: error[code]: message`, the source line with a
/// caret under the column, the help, and a count at the end.
pub fn render_text(diags: &[Diagnostic], src: &str, color: bool) -> String {
    let mut out = render_diagnostics(diags, src, color);
    out.push_str(&summary(diags));
    out
}

/// Each diagnostic with the line it points at, without the summary line.
pub fn render_diagnostics(diags: &[Diagnostic], src: &str, color: bool) -> String {
    let paint = |code: &str, s: &str| if color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
    let mut out = String::new();
    for d in diags {
        let (label, c) = match d.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
        };
        out.push_str(&format!(
            "{}: {}: {}\n",
            paint("1", &format!("{}:{}:{}", d.file, d.line, d.column)),
            paint(c, &format!("{label}[{}]", d.code)),
            d.message
        ));
        if let Some(line) = src.lines().nth(d.line.saturating_sub(1) as usize) {
            let number = format!("{:>4}", d.line);
            out.push_str(&format!("{number} | {line}\n"));
            let pad: String = line
                .chars()
                .take(d.column.saturating_sub(1) as usize)
                .map(|ch| if ch == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{:w$} | {pad}{}", "", paint(c, "^"), w = number.len()));
            if !d.field.is_empty() {
                out.push_str(&format!(" {}", d.field));
            }
            out.push('\n');
        }
        if let Some(help) = &d.help {
            out.push_str(&format!("  {}: {help}\n", paint("1;36", "help")));
        }
    }
    out
}

/// `2 errors, 1 warning` (or `no problems`).
pub fn summary(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diags.len() - errors;
    if diags.is_empty() {
        return "no problems found\n".into();
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    format!("{}, {}\n", plural(errors, "error"), plural(warnings, "warning"))
}

/// Diagnostics for tools: `{"errors": [...], "warnings": [...]}`.
pub fn render_json(diags: &[Diagnostic]) -> serde_json::Value {
    let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
        diags.iter().partition(|d| d.severity == Severity::Error);
    serde_json::json!({"errors": errors, "warnings": warnings})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_in_documented_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(find(dir.path()), Err(PipelineFileError::NotFound { .. })));
        std::fs::write(dir.path().join("chengis.yaml"), "x").unwrap();
        assert_eq!(find(dir.path()).unwrap(), dir.path().join("chengis.yaml"));
        std::fs::create_dir(dir.path().join(".chengis")).unwrap();
        std::fs::write(dir.path().join(".chengis/workflow.yml"), "x").unwrap();
        assert_eq!(find(dir.path()).unwrap(), dir.path().join(".chengis/workflow.yml"));
    }

    #[test]
    fn read_caps_size_and_checks_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yml");
        std::fs::write(&big, "a".repeat(100)).unwrap();
        assert!(matches!(read(&big, 99), Err(PipelineFileError::TooLarge { .. })));
        assert_eq!(read(&big, 100).unwrap().len(), 100);
        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, b"ab\xffcd").unwrap();
        assert!(matches!(read(&bad, 100), Err(PipelineFileError::NotUtf8 { offset: 2, .. })));
    }
}
