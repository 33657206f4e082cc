//! The pipeline fixtures of `tests/pipelines`: every good file lints clean and validates against
//! the published JSON Schema; every broken file gives exactly the diagnostics in its `.expected`
//! file (and structural mistakes are refused by the schema too). The checked-in schema must match
//! the generated one. `CHENGIS_BLESS=1 cargo test -p chengis-pipeline --test fixtures` rewrites
//! the `.expected` files and the schema; review the diff before committing.

use chengis_pipeline::yaml::{Node, NodeKind, load};
use chengis_pipeline::{LintOptions, Severity, lint};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bless() -> bool {
    std::env::var_os("CHENGIS_BLESS").is_some()
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {dir}");
    v
}

/// YAML 1.2 core-schema typing of plain scalars, for checking files against the JSON Schema.
fn to_json(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Scalar { value, plain: false } => Value::String(value.clone()),
        NodeKind::Scalar { value, plain: true } => match value.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            v => v
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| v.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(v.to_string())),
        },
        NodeKind::Seq(items) => Value::Array(items.iter().map(|n| to_json(n)).collect()),
        NodeKind::Map(entries) => {
            // `<<` merge keys are resolved as YAML tools (and editors) do before checking.
            let mut obj = serde_json::Map::new();
            for (k, v) in entries {
                match k.as_scalar() {
                    Some("<<") => {
                        let merged = match to_json(v) {
                            Value::Array(items) => items,
                            other => vec![other],
                        };
                        for m in merged {
                            for (mk, mv) in m.as_object().cloned().unwrap_or_default() {
                                obj.entry(mk).or_insert(mv);
                            }
                        }
                    }
                    key => {
                        obj.insert(key.unwrap_or_default().to_string(), to_json(v));
                    }
                }
            }
            Value::Object(obj)
        }
    }
}

fn schema() -> jsonschema::Validator {
    let text = chengis_pipeline::schema::pipeline_schema_json();
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

fn render(path: &Path) -> String {
    let src = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let linted = lint(&src, &name, &LintOptions::default());
    linted
        .diagnostics
        .iter()
        .map(|d| {
            let severity = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            format!("{}:{} {severity} {} `{}` {}\n", d.line, d.column, d.code, d.field, d.message)
        })
        .collect()
}

#[test]
fn good_pipelines_lint_clean_and_match_the_schema() {
    let validator = schema();
    for path in files("tests/pipelines/good") {
        let diags = render(&path);
        assert!(diags.is_empty(), "{}:\n{diags}", path.display());
        let src = std::fs::read_to_string(&path).unwrap();
        let json = to_json(&load(&src).unwrap());
        let errors: Vec<String> =
            validator.iter_errors(&json).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{} does not match the schema: {errors:?}", path.display());
    }
}

#[test]
fn broken_pipelines_give_the_expected_diagnostics() {
    let validator = schema();
    let structural = ["unknown-key", "wrong-type", "missing-key", "empty-steps", "invalid-duration", "no-jobs"];
    for path in files("tests/pipelines/broken") {
        let got = render(&path);
        let expected_path = path.with_extension("expected");
        if bless() {
            std::fs::write(&expected_path, &got).unwrap();
        }
        let expected =
            std::fs::read_to_string(&expected_path).unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
        assert_eq!(got, expected, "diagnostics of {} changed", path.display());
        assert!(got.contains(" error "), "{} has no error", path.display());
        let src = std::fs::read_to_string(&path).unwrap();
        if structural.iter().any(|c| got.contains(&format!(" {c} ")))
            && let Ok(node) = load(&src)
        {
            assert!(!validator.is_valid(&to_json(&node)), "the schema accepts {}", path.display());
        }
    }
}

#[test]
fn checked_in_schema_is_up_to_date() {
    let path = root().join("web/static/schema/pipeline.schema.json");
    let generated = chengis_pipeline::schema::pipeline_schema_json();
    if bless() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date: run `cargo run -- schema -o {}`",
        path.display(),
        path.display()
    );
}
