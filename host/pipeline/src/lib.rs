//! The Chengis pipeline language: YAML parsing with spans, the typed model, lint diagnostics,
//! the job DAG, matrix expansion, `${{ }}` expressions and `${VAR}` substitution. No I/O.
//!
//! # Layout
//! - [`yaml`]: YAML text to a node tree with positions (saphyr-parser events; alias-bomb guard).
//! - [`decode`]: node tree to the typed [`model`], every structural problem reported.
//! - [`check`]: semantic checks (filters, cron, expressions, references, DAG, matrix).
//! - [`lint`]: the entry point tying the three together.
//! - [`plan`]: a linted pipeline to the jobs that will run.
//! - [`expr`], [`subst`], [`dag`], [`matrix`], [`duration`]: the pieces of the language.
//! - [`schema`]: the JSON Schema generated from the model.
//!
//! # Why saphyr
//! `serde_yaml` is deprecated and archived and its fork `serde_yml` carries a soundness advisory
//! (RUSTSEC-2025-0068). `saphyr-parser` is maintained (the successor of yaml-rust2) and gives a
//! span with every event, which is what file:line:col diagnostics need; the model stays plain
//! serde types, filled by our own decoder so that every problem is reported, not just the first.

pub mod check;
pub mod container;
pub mod dag;
pub mod decode;
pub mod diag;
pub mod duration;
pub mod expr;
pub mod lint;
pub mod matrix;
pub mod model;
pub mod plan;
pub mod schema;
pub mod subst;
pub mod triggers;
pub mod yaml;

pub use check::LintOptions;
pub use diag::{Diagnostic, Severity};
pub use lint::{Linted, lint, lint_and_plan};
pub use plan::{Plan, PlanInputs, PlannedJob, PlannedStep, Text};

/// The default cap on the size of a pipeline file (1 MiB).
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

/// Where a pipeline file is looked for in a repository, in order.
pub const PIPELINE_PATHS: &[&str] = &[".chengis/workflow.yml", ".chengis/workflow.yaml", "chengis.yml", "chengis.yaml"];
