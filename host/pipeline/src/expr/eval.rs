//! Evaluation over JSON values, with GitHub Actions' loose equality, coercion and truthiness.

use super::{CmpOp, Node, Step, functions, known_context};
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
    /// SHA-256 (hex) of the workspace files matching `patterns`; `Err` says why it failed.
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
    /// A call with the wrong number of arguments (the linter reports these before a run).
    #[error("{0}")]
    Arity(String),
}

/// What a missing value reads as.
static NULL: Value = Value::Null;

/// Below this, every integer is exactly representable as an f64.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// A JSON number from an f64, integral values as integers.
pub(crate) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < EXACT_INT {
        // `-0.0` becomes `0`, which is what GitHub prints too.
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Falsy: `false`, `0`, `-0`, `""`, `null`, NaN. Everything else (including `"0"`, `[]` and
/// `{}`) is truthy.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// How a value is written into a string: strings raw, null empty, `true`/`false`, integral
/// numbers without `.0`, arrays and objects as compact JSON.
pub fn to_display_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < EXACT_INT => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// The value as a number, for comparisons of different types: null 0, booleans 0/1, strings
/// parsed (empty 0, otherwise a decimal or `0x` number, else NaN), arrays and objects NaN.
pub(crate) fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() { 0.0 } else { super::lexer::parse_number(t).unwrap_or(f64::NAN) }
        }
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Loose equality: values of the same type compare directly (strings ignoring case, arrays
/// and objects structurally); different types compare as numbers, so `'3' == 3`,
/// `null == 0`, `true == 1`; arrays and objects never equal a scalar; NaN equals nothing.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y || fold(x) == fold(y),
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => a == b,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => to_number(a) == to_number(b),
    }
}

/// Ordering for `<`, `<=`, `>`, `>=`: strings ignoring case, everything else as numbers;
/// `None` when incomparable (NaN, arrays, objects), which makes every comparison false.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(fold(x).cmp(&fold(y))),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => None,
        _ => to_number(a).partial_cmp(&to_number(b)),
    }
}

/// `v.key`: exact match first, then ignoring ASCII case.
fn property<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// `v[idx]`: arrays by non-negative integer, objects by key; anything else is null.
fn index<'a>(v: &'a Value, idx: &Value) -> &'a Value {
    let found = match (v, idx) {
        (Value::Array(items), _) => {
            let n = to_number(idx);
            if n >= 0.0 && n.fract() == 0.0 && n < EXACT_INT { items.get(n as usize) } else { None }
        }
        (Value::Object(_), Value::String(k)) => property(v, k),
        (Value::Object(_), other) => property(v, &to_display_string(other)),
        _ => None,
    };
    found.unwrap_or(&NULL)
}

/// Follows `steps` from `start` by reference, so reading `env.X` does not copy `env`.
fn follow<'a>(start: &'a Value, steps: &[Step], ctx: &dyn EvalContext) -> Result<&'a Value, EvalError> {
    let mut cur = start;
    for step in steps {
        cur = match step {
            Step::Prop(key) => property(cur, key).unwrap_or(&NULL),
            Step::Index(i) => index(cur, &eval(i, ctx)?),
        };
    }
    Ok(cur)
}

fn context<'a>(name: &str, ctx: &'a dyn EvalContext) -> Option<&'a Value> {
    ctx.context(known_context(name).unwrap_or(name))
}

pub(crate) fn eval(node: &Node, ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Lit(v) => v.clone(),
        Node::Context { name, .. } => context(name, ctx).cloned().unwrap_or_else(|| Value::Object(Default::default())),
        Node::Access { base, steps } => match base.as_ref() {
            // A missing context is an empty object: every property of it is null.
            Node::Context { name, .. } => follow(context(name, ctx).unwrap_or(&NULL), steps, ctx)?.clone(),
            other => {
                let owned = eval(other, ctx)?;
                follow(&owned, steps, ctx)?.clone()
            }
        },
        Node::Not(inner) => Value::Bool(!truthy(&eval(inner, ctx)?)),
        Node::And(items) => {
            let mut last = Value::Null;
            for item in items {
                last = eval(item, ctx)?;
                if !truthy(&last) {
                    break;
                }
            }
            last
        }
        Node::Or(items) => {
            let mut last = Value::Null;
            for item in items {
                last = eval(item, ctx)?;
                if truthy(&last) {
                    break;
                }
            }
            last
        }
        Node::Cmp(op, a, b) => {
            let (x, y) = (eval(a, ctx)?, eval(b, ctx)?);
            let ord = || compare(&x, &y);
            Value::Bool(match op {
                CmpOp::Eq => loose_eq(&x, &y),
                CmpOp::Ne => !loose_eq(&x, &y),
                CmpOp::Lt => ord() == Some(Ordering::Less),
                CmpOp::Le => matches!(ord(), Some(Ordering::Less | Ordering::Equal)),
                CmpOp::Gt => ord() == Some(Ordering::Greater),
                CmpOp::Ge => matches!(ord(), Some(Ordering::Greater | Ordering::Equal)),
            })
        }
        Node::Call { name, args, .. } => {
            let f = functions::lookup(name).ok_or_else(|| EvalError::UnknownFunction(name.clone()))?;
            if !f.accepts(args.len()) {
                return Err(EvalError::Arity(f.arity_message(args.len())));
            }
            let values = args.iter().map(|a| eval(a, ctx)).collect::<Result<Vec<_>, _>>()?;
            (f.call)(&values, ctx)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truthiness() {
        for v in [json!(false), json!(0), json!(0.0), json!(-0.0), json!(""), Value::Null] {
            assert!(!truthy(&v), "{v} is falsy");
        }
        for v in [json!(true), json!("0"), json!("false"), json!([]), json!({}), json!(0.1), json!(-1), json!(" ")] {
            assert!(truthy(&v), "{v} is truthy");
        }
    }

    #[test]
    fn display() {
        assert_eq!(to_display_string(&json!(3.0)), "3");
        assert_eq!(to_display_string(&json!(-0.0)), "0");
        assert_eq!(to_display_string(&json!(2.5)), "2.5");
        assert_eq!(to_display_string(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(to_display_string(&Value::Null), "");
        assert_eq!(to_display_string(&json!(false)), "false");
        assert_eq!(to_display_string(&json!("raw 'text'")), "raw 'text'");
        assert_eq!(to_display_string(&json!({"a": [1, "x"]})), r#"{"a":[1,"x"]}"#);
        assert_eq!(number(1e300), json!(1e300));
        assert_eq!(number(-0.0), json!(0));
    }

    #[test]
    fn coercion_to_number() {
        assert_eq!(to_number(&json!(" 42 ")), 42.0);
        assert_eq!(to_number(&json!("0x1F")), 31.0);
        assert_eq!(to_number(&json!("-1.5e1")), -15.0);
        assert_eq!(to_number(&json!("")), 0.0);
        assert_eq!(to_number(&json!(true)), 1.0);
        assert_eq!(to_number(&Value::Null), 0.0);
        for v in [json!("abc"), json!("inf"), json!("nan"), json!("1,5"), json!([]), json!({})] {
            assert!(to_number(&v).is_nan(), "{v}");
        }
    }

    #[test]
    fn loose_equality() {
        let eq = |a: Value, b: Value| loose_eq(&a, &b);
        assert!(eq(json!("ABC"), json!("abc")));
        assert!(eq(json!("ÄRGER"), json!("ärger")), "case folding is Unicode-aware");
        assert!(eq(json!("3"), json!(3)));
        assert!(eq(json!("0x10"), json!(16)));
        assert!(eq(Value::Null, json!(0)));
        assert!(eq(Value::Null, json!("")));
        assert!(eq(json!(true), json!("1")));
        assert!(eq(json!(false), json!(0)));
        assert!(!eq(json!(true), json!("true")), "'true' is NaN as a number");
        assert!(!eq(json!("x"), json!(0)));
        assert!(!eq(json!([]), json!("")));
        assert!(!eq(json!({}), Value::Null));
        assert!(eq(json!([1, "a"]), json!([1, "a"])));
        assert!(!eq(json!("x"), json!(["x"])));
    }

    #[test]
    fn ordering() {
        assert_eq!(compare(&json!("b"), &json!("A")), Some(Ordering::Greater));
        assert_eq!(compare(&json!("10"), &json!(9)), Some(Ordering::Greater));
        assert_eq!(compare(&json!("10"), &json!("9")), Some(Ordering::Less), "two strings compare as text");
        assert_eq!(compare(&Value::Null, &json!(false)), Some(Ordering::Equal));
        assert_eq!(compare(&json!("x"), &json!(1)), None);
        assert_eq!(compare(&json!([1]), &json!([1])), None);
        assert_eq!(compare(&json!({}), &json!(0)), None);
    }

    #[test]
    fn indexing() {
        let v = json!({"list": ["a", "b"], "Map": {"k-1": 1, "2": "two"}});
        assert_eq!(index(&v["list"], &json!(1)), &json!("b"));
        assert_eq!(index(&v["list"], &json!("1")), &json!("b"));
        assert_eq!(index(&v["list"], &json!(2)), &NULL);
        assert_eq!(index(&v["list"], &json!(-1)), &NULL);
        assert_eq!(index(&v["list"], &json!(0.5)), &NULL);
        assert_eq!(index(&v["list"], &json!(1e300)), &NULL);
        assert_eq!(index(&v["Map"], &json!("K-1")), &json!(1));
        assert_eq!(index(&v["Map"], &json!(2)), &json!("two"));
        assert_eq!(index(&json!("str"), &json!(0)), &NULL);
        assert_eq!(property(&v, "map"), Some(&v["Map"]));
        assert_eq!(property(&json!(1), "x"), None);
    }
}
