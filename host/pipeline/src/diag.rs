//! Diagnostics: the structured errors and warnings the linter reports, with their location.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The pipeline cannot run.
    Error,
    /// The pipeline runs, but probably not as its author meant.
    Warning,
}

/// A position in a pipeline file (1-based line and column, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable, kebab-case code such as `unknown-key` (documented in the README).
    pub code: String,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The file the problem is in, as given to the linter.
    pub file: String,
    /// 1-based line of the offending node.
    pub line: u32,
    /// 1-based column of the offending node.
    pub column: u32,
    /// The field path of the offending node, such as `jobs.build.steps[2].run`.
    pub field: String,
    /// How to fix it, when a fix is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}[{}]: {}", self.file, self.line, self.column, self.code, self.message)?;
        if !self.field.is_empty() {
            write!(f, " (at `{}`)", self.field)?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file while the linter walks it.
#[derive(Debug)]
pub struct Diagnostics {
    file: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// A new, empty collector for `file`.
    pub fn new(file: impl Into<String>) -> Self {
        Diagnostics { file: file.into(), items: Vec::new() }
    }

    /// Records an error.
    pub fn error(&mut self, code: &str, pos: Pos, field: &str, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Error, code, pos, field, message.into())
    }

    /// Records a warning.
    pub fn warning(&mut self, code: &str, pos: Pos, field: &str, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Warning, code, pos, field, message.into())
    }

    fn push(&mut self, severity: Severity, code: &str, pos: Pos, field: &str, message: String) -> &mut Diagnostic {
        self.items.push(Diagnostic {
            severity,
            code: code.to_string(),
            message,
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            help: None,
        });
        let last = self.items.len() - 1;
        &mut self.items[last]
    }

    /// True when at least one error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// The diagnostics sorted by position, errors and warnings interleaved in file order.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by_key(|d| (d.line, d.column, d.severity));
        self.items.dedup();
        self.items
    }
}

impl Diagnostic {
    /// Adds a help text.
    pub fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }
}

/// Returns the candidate closest to `name` when it is a plausible typo of it.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
