//! `chengis lint`: every problem of one or more pipeline files, as text (each file's summary
//! line names it) or JSON.

use super::Format;
use crate::pipeline::{self as files, render_diagnostics, render_json, summary};
use chengis_pipeline::{LintOptions, lint as lint_source};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Arguments of `chengis lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// Pipeline files; without one, the pipeline of the current directory.
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Most combinations a matrix may expand to.
    #[arg(long, default_value_t = chengis_pipeline::matrix::DEFAULT_MAX_COMBINATIONS)]
    pub max_matrix: usize,
    /// Most jobs the pipeline may plan, matrix combinations counted (as `chengis serve
    /// --max-jobs`).
    #[arg(long, default_value_t = chengis_pipeline::check::DEFAULT_MAX_JOBS)]
    pub max_jobs: usize,
}

/// Runs `chengis lint`; exit code 1 when any file has an error, 2 when a file cannot be read.
pub fn lint(args: LintArgs) -> anyhow::Result<i32> {
    let files = if args.files.is_empty() {
        vec![files::find(&std::env::current_dir()?).map_err(|e| super::error::CliError::Usage(e.to_string()))?]
    } else {
        args.files
    };
    let opts = LintOptions { max_matrix: args.max_matrix, max_jobs: args.max_jobs.max(1), ..LintOptions::default() };
    let color = std::io::stdout().is_terminal();
    let mut code = 0;
    let mut json = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let src = match files::read(&path, opts.max_bytes) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                code = 2;
                continue;
            }
        };
        let linted = lint_source(&src, &name, &opts);
        if linted.has_errors() && code == 0 {
            code = 1;
        }
        match args.format {
            // Each file's summary names it: `a.yml: no problems found`.
            Format::Text => {
                print!(
                    "{}{name}: {}",
                    render_diagnostics(&linted.diagnostics, &src, color),
                    summary(&linted.diagnostics)
                )
            }
            Format::Json => {
                let mut v = render_json(&linted.diagnostics);
                v["file"] = name.into();
                json.push(v);
            }
        }
    }
    if args.format == Format::Json {
        let out = if json.len() == 1 { json.remove(0) } else { serde_json::Value::Array(json) };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}
