//! The linter's entry point: text in, diagnostics (and the decoded model) out.

use crate::check::{LintOptions, check};
use crate::decode::{Decoded, decode};
use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::plan::{Plan, PlanInputs, plan};
use crate::yaml::{LoadError, load};

/// What the linter found.
#[derive(Debug)]
pub struct Linted {
    /// All problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The decoded model, when the YAML could be loaded at all.
    pub decoded: Option<Decoded>,
    /// Job ids in dependency order (empty when the graph is broken).
    pub order: Vec<String>,
}

impl Linted {
    /// True when at least one diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Lints pipeline text; `file` names it in diagnostics.
pub fn lint(src: &str, file: &str, opts: &LintOptions) -> Linted {
    let mut diags = Diagnostics::new(file);
    let start = crate::diag::Pos { line: 1, column: 1 };
    if src.len() > opts.max_bytes {
        diags
            .error(
                "file-too-large",
                start,
                "",
                format!("the pipeline file is {} bytes, more than the limit of {} bytes", src.len(), opts.max_bytes),
            )
            .help("split the pipeline or remove generated content");
        return Linted { diagnostics: diags.into_sorted(), decoded: None, order: Vec::new() };
    }
    let root = match load(src) {
        Ok(root) => root,
        Err(e) => {
            let code = match e {
                LoadError::Syntax { .. } | LoadError::BadAlias { .. } => "yaml-syntax",
                LoadError::TooLarge { .. } | LoadError::TooDeep { .. } => "yaml-too-complex",
                LoadError::MultipleDocuments { .. } => "multiple-documents",
                LoadError::Empty => "empty-file",
            };
            let d = diags.error(code, e.pos(), "", e.to_string());
            if matches!(e, LoadError::Empty) {
                d.help("a pipeline needs at least `jobs:` with one job and its `steps:`");
            }
            return Linted { diagnostics: diags.into_sorted(), decoded: None, order: Vec::new() };
        }
    };
    let decoded = decode(&root, &mut diags);
    let order = check(&decoded, src, opts, &mut diags);
    Linted { diagnostics: diags.into_sorted(), decoded: Some(decoded), order }
}

/// Lints and plans in one go: the plan and the warnings, or every diagnostic when there is
/// an error.
pub fn lint_and_plan(
    src: &str,
    file: &str,
    opts: &LintOptions,
    inputs: &PlanInputs<'_>,
) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    let linted = lint(src, file, opts);
    if linted.has_errors() {
        return Err(linted.diagnostics);
    }
    let Some(decoded) = &linted.decoded else {
        return Err(linted.diagnostics);
    };
    let plan = plan(decoded, src, file, &linted.order, inputs)?;
    Ok((plan, linted.diagnostics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let big = format!("jobs:\n  a:\n    steps:\n      - run: '{}'\n", "x".repeat(crate::DEFAULT_MAX_BYTES));
        let linted = lint(&big, "big.yml", &LintOptions::default());
        assert_eq!(linted.diagnostics.len(), 1);
        assert_eq!(linted.diagnostics[0].code, "file-too-large");
        assert!(linted.decoded.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let src = "jobs:\n  a:\n    imgae: x\n    needs: [zz]\n    steps: []\n";
        let codes: Vec<String> =
            lint(src, "f.yml", &LintOptions::default()).diagnostics.into_iter().map(|d| d.code).collect();
        assert_eq!(codes, ["unknown-key", "unknown-need", "empty-steps"]);
    }

    #[test]
    fn plan_substitutes_and_keeps_expressions() {
        let src = "jobs:\n  a:\n    image: ${REG:-docker.io}/app:${{ matrix.v }}\n    strategy:\n      matrix:\n        v: ['1', '2']\n    steps:\n      - run: echo ${{ matrix.v }}\n";
        let params = indexmap::IndexMap::new();
        let vars = |k: &str| (k == "REG").then(|| "registry.local".to_string());
        let inputs = PlanInputs { params: &params, vars: &vars, max_matrix: 25 };
        let (plan, warnings) = lint_and_plan(src, "f.yml", &LintOptions::default(), &inputs).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(plan.jobs.len(), 2);
        assert_eq!(plan.jobs[1].id, "a (v=2)");
        let image = plan.jobs[0].image.as_ref().unwrap();
        assert_eq!(
            image.0,
            [crate::plan::Piece::Lit("registry.local/app:".into()), crate::plan::Piece::Expr(" matrix.v ".into())]
        );
        assert_eq!(plan.jobs[0].env.get("MATRIX_V").and_then(|t| t.as_literal()), Some("1".to_string()));
    }

    #[test]
    fn yaml_pitfalls_keep_strings_and_anchors_work() {
        let src = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/pipelines/good/yaml-pitfalls.yml"
        ))
        .unwrap();
        let linted = lint(&src, "p.yml", &LintOptions::default());
        let p = &linted.decoded.unwrap().pipeline;
        assert!(p.on.as_ref().unwrap().push.is_some(), "`on: push` is the push trigger, not a boolean");
        assert_eq!(p.env["PYTHON"], "3.10");
        assert_eq!(p.env["FLAG"], "yes");
        assert_eq!(p.env["OCTAL"], "010");
        assert_eq!(p.env["EMPTY"], "");
        let axes = &p.jobs["test"].strategy.as_ref().unwrap().matrix.axes;
        assert_eq!(axes["python"], ["3.8", "3.10", "3.12"]);
        assert_eq!(axes["branch"], ["1.0", "on", "off"]);

        let src =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pipelines/good/anchors.yml"))
                .unwrap();
        let linted = lint(&src, "a.yml", &LintOptions::default());
        let p = &linted.decoded.unwrap().pipeline;
        assert_eq!(p.env["COPY"], "value");
        assert_eq!(p.jobs["two"].steps, p.jobs["one"].steps, "`<<: *job` brings the steps");
        assert_eq!(p.jobs["two"].timeout.as_deref(), Some("5m"), "keys after the merge win");
        assert_eq!(p.jobs["three"].steps[1].name.as_deref(), Some("renamed"));
        assert_eq!(p.jobs["three"].steps[1].run, p.jobs["one"].steps[0].run);
    }
}
