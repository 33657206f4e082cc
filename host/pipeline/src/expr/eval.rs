//! Evaluation over JSON values, with GitHub Actions' loose equality and truthiness.

use super::{BinOp, Node, functions};
use serde_json::Value;
use std::cmp::Ordering;
use thiserror::Error;

/// What `success()`, `failure()` and `cancelled()` see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything so far succeeded.
    Success,
    /// Something before failed.
    Failure,
    /// The run was cancelled.
    Cancelled,
}

/// What the evaluator asks of its caller.
pub trait EvalContext {
    /// The value of a context (`env`, `matrix`, ...); `None` reads as an empty object.
    fn context(&self, name: &str) -> Option<&Value>;
    /// The status for the status functions.
    fn status(&self) -> Status;
    /// SHA-256 (hex) of the workspace files matching `patterns`.
    fn hash_files(&self, patterns: &[String]) -> Result<String, String>;
}

/// An expression that parsed but cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvalError {
    /// `fromJSON` of text that is not JSON.
    #[error("fromJSON: the argument is not valid JSON: {0}")]
    FromJson(String),
    /// A bad `format` string.
    #[error("format: {0}")]
    Format(String),
    /// `hashFiles` failed.
    #[error("hashFiles: {0}")]
    HashFiles(String),
    /// A function that does not exist (the linter reports these before a run).
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
}

/// A JSON number from an f64, integral values as integers.
pub(crate) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Falsy: `false`, `0`, `-0`, `""`, `null`, NaN. Everything else is truthy.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// How a value is written into a string: strings raw, null empty, integers without `.0`,
/// arrays and objects as JSON.
pub fn to_display_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

/// The value as a number for loose comparisons.
pub(crate) fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                0.0
            } else if let Some(hex) = t.strip_prefix("0x") {
                i64::from_str_radix(hex, 16).map_or(f64::NAN, |v| v as f64)
            } else {
                t.parse().unwrap_or(f64::NAN)
            }
        }
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

/// Loose equality: same types compare directly (strings case-insensitively), different
/// scalar types compare as numbers.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.to_lowercase() == y.to_lowercase(),
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => a == b,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => to_number(a) == to_number(b),
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        _ => to_number(a).partial_cmp(&to_number(b)),
    }
}

fn property<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

pub(crate) fn eval(node: &Node, ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Lit(v) => v.clone(),
        Node::Context { name, .. } => ctx.context(name).cloned().unwrap_or_else(|| Value::Object(Default::default())),
        Node::Prop(inner, key) => property(&eval(inner, ctx)?, key).cloned().unwrap_or(Value::Null),
        Node::Index(inner, idx) => {
            let base = eval(inner, ctx)?;
            let idx = eval(idx, ctx)?;
            match (&base, &idx) {
                (Value::Array(items), _) => {
                    let n = to_number(&idx);
                    if n >= 0.0 && n.fract() == 0.0 {
                        items.get(n as usize).cloned().unwrap_or(Value::Null)
                    } else {
                        Value::Null
                    }
                }
                (Value::Object(_), Value::String(k)) => property(&base, k).cloned().unwrap_or(Value::Null),
                (Value::Object(_), other) => property(&base, &to_display_string(other)).cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            }
        }
        Node::Not(inner) => Value::Bool(!truthy(&eval(inner, ctx)?)),
        Node::Bin(BinOp::And, a, b) => {
            let left = eval(a, ctx)?;
            if truthy(&left) { eval(b, ctx)? } else { left }
        }
        Node::Bin(BinOp::Or, a, b) => {
            let left = eval(a, ctx)?;
            if truthy(&left) { left } else { eval(b, ctx)? }
        }
        Node::Bin(op, a, b) => {
            let (x, y) = (eval(a, ctx)?, eval(b, ctx)?);
            Value::Bool(match op {
                BinOp::Eq => loose_eq(&x, &y),
                BinOp::Ne => !loose_eq(&x, &y),
                BinOp::Lt => compare(&x, &y) == Some(Ordering::Less),
                BinOp::Le => matches!(compare(&x, &y), Some(Ordering::Less | Ordering::Equal)),
                BinOp::Gt => compare(&x, &y) == Some(Ordering::Greater),
                BinOp::Ge => matches!(compare(&x, &y), Some(Ordering::Greater | Ordering::Equal)),
                BinOp::And | BinOp::Or => false,
            })
        }
        Node::Call { name, args, .. } => {
            let f = functions::lookup(name).ok_or_else(|| EvalError::UnknownFunction(name.clone()))?;
            let values = args.iter().map(|a| eval(a, ctx)).collect::<Result<Vec<_>, _>>()?;
            (f.call)(&values, ctx)?
        }
    })
}
