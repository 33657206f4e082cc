//! The values `${{ }}` expressions see during a run, and evaluation of texts and conditions.

use chengis_pipeline::expr::{self, EvalContext, Status as ExprStatus};
use chengis_pipeline::plan::{Piece, Text};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The contexts of one evaluation: `env params secrets matrix git build needs steps`.
#[derive(Debug, Clone, Default)]
pub struct Contexts {
    /// `env`.
    pub env: Value,
    /// `params`.
    pub params: Value,
    /// `secrets`.
    pub secrets: Value,
    /// `matrix`.
    pub matrix: Value,
    /// `git`.
    pub git: Value,
    /// `build`.
    pub build: Value,
    /// `needs`.
    pub needs: Value,
    /// `steps`.
    pub steps: Value,
    /// What `success()`/`failure()`/`cancelled()` answer.
    pub status: Option<ExprStatus>,
    /// Root for `hashFiles`.
    pub workspace: PathBuf,
}

impl EvalContext for Contexts {
    fn context(&self, name: &str) -> Option<&Value> {
        match name {
            "env" => Some(&self.env),
            "params" => Some(&self.params),
            "secrets" => Some(&self.secrets),
            "matrix" => Some(&self.matrix),
            "git" => Some(&self.git),
            "build" => Some(&self.build),
            "needs" => Some(&self.needs),
            "steps" => Some(&self.steps),
            _ => None,
        }
    }

    fn status(&self) -> ExprStatus {
        self.status.unwrap_or(ExprStatus::Success)
    }

    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        chengis_archive::hash::hash_files(&self.workspace, patterns).map_err(|e| format!("hashFiles: {e}"))
    }
}

/// The variables every step of a build sees, wherever it runs (`chengis run`, an agent): `CI`,
/// `CHENGIS`, `CHENGIS_WORKSPACE`, `CHENGIS_BUILD_NUMBER`, `CHENGIS_PIPELINE` and, for a job,
/// `CHENGIS_JOB`. Agents add `CHENGIS_BUILD_ID`, `CHENGIS_AGENT_NAME` and the checkout's `GIT_*`.
pub fn base_env(
    workspace: &std::path::Path,
    build_number: u64,
    pipeline: &str,
    job: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (k, v) in [
        ("CI", "true".to_string()),
        ("CHENGIS", "true".to_string()),
        ("CHENGIS_WORKSPACE", workspace.display().to_string()),
        ("CHENGIS_BUILD_NUMBER", build_number.to_string()),
        ("CHENGIS_PIPELINE", pipeline.to_string()),
    ] {
        set_var(&mut env, k, v);
    }
    if let Some(job) = job {
        set_var(&mut env, "CHENGIS_JOB", job.to_string());
    }
    env
}

/// The `params` context of `plan`: each value as text, and parameters declared
/// `type: boolean` as booleans (so that `if: ${{ params.dry }}` is false for `false`).
pub fn params(plan: &chengis_pipeline::Plan) -> Value {
    let boolean =
        |k: &str| plan.declared_params.get(k).is_some_and(|p| p.kind == chengis_pipeline::model::ParamType::Boolean);
    Value::Object(
        plan.params
            .iter()
            .map(|(k, v)| {
                let value = match boolean(k) {
                    true => Value::Bool(v == "true"),
                    false => Value::String(v.clone()),
                };
                (k.clone(), value)
            })
            .collect(),
    )
}

/// An object of string values.
pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

pub use chengis_model::env::{merge_vars, set_var};

/// An environment as the `env` context.
pub fn env_object(env: &[(String, String)]) -> Value {
    Value::Object(env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// Renders a text of the plan: literal pieces as they are, expressions evaluated.
pub fn render(text: &Text, ctx: &Contexts) -> Result<String, String> {
    let mut out = String::new();
    for piece in &text.0 {
        match piece {
            Piece::Lit(s) => out.push_str(s),
            Piece::Expr(src) => out.push_str(&expr::to_display_string(&eval(src, ctx)?)),
        }
    }
    Ok(out)
}

/// Renders a text as written in the pipeline (`${{ }}` expressions evaluated), for values
/// decided outside a step, such as `concurrency.group` at planning.
pub fn render_str(s: &str, ctx: &Contexts) -> Result<String, String> {
    let template = expr::parse_template(s).map_err(|e| e.message)?;
    let mut out = String::new();
    for part in &template.parts {
        match part {
            expr::TemplatePart::Literal(lit) => out.push_str(lit),
            expr::TemplatePart::Expr { expr, source, .. } => {
                let v = expr.eval(ctx).map_err(|e| format!("in `${{{{ {source} }}}}`: {e}"))?;
                out.push_str(&expr::to_display_string(&v));
            }
        }
    }
    Ok(out)
}

/// Evaluates one expression source.
pub fn eval(src: &str, ctx: &Contexts) -> Result<Value, String> {
    let e = expr::parse(src).map_err(|e| format!("in `${{{{ {src} }}}}`: {}", e.message))?;
    e.eval(ctx).map_err(|e| format!("in `${{{{ {src} }}}}`: {e}"))
}

/// Decides an `if:`. Without a status function the condition is `success() && (cond)`, as
/// authors expect from GitHub Actions; no condition means `success()`.
pub fn condition(cond: Option<&str>, ctx: &Contexts) -> Result<bool, String> {
    let ok = ctx.status() == ExprStatus::Success;
    let Some(cond) = cond else { return Ok(ok) };
    let trimmed = cond.trim();
    let src = match trimmed.strip_prefix("${{").and_then(|s| s.strip_suffix("}}")) {
        Some(inner) if !inner.contains("${{") => inner,
        _ => trimmed,
    };
    let e = expr::parse(src).map_err(|e| format!("in `if: {cond}`: {}", e.message))?;
    if !e.uses_status_function() && !ok {
        return Ok(false);
    }
    let v = e.eval(ctx).map_err(|e| format!("in `if: {cond}`: {e}"))?;
    Ok(expr::truthy(&v))
}
