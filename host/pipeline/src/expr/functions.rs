//! The functions expressions can call, with their arities.

use super::eval::{EvalContext, EvalError, Status, loose_eq, to_display_string};
use serde_json::Value;

/// A function of the language.
pub(crate) struct Function {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
    /// True for the status functions (`success`, `failure`, `always`, `cancelled`).
    pub status: bool,
    pub call: fn(&[Value], &dyn EvalContext) -> Result<Value, EvalError>,
}

const TABLE: &[Function] = &[
    Function { name: "contains", min: 2, max: 2, status: false, call: contains },
    Function { name: "startsWith", min: 2, max: 2, status: false, call: starts_with },
    Function { name: "endsWith", min: 2, max: 2, status: false, call: ends_with },
    Function { name: "format", min: 1, max: usize::MAX, status: false, call: format },
    Function { name: "join", min: 1, max: 2, status: false, call: join },
    Function { name: "toJSON", min: 1, max: 1, status: false, call: to_json },
    Function { name: "fromJSON", min: 1, max: 1, status: false, call: from_json },
    Function { name: "hashFiles", min: 1, max: usize::MAX, status: false, call: hash_files },
    Function { name: "success", min: 0, max: 0, status: true, call: success },
    Function { name: "failure", min: 0, max: 0, status: true, call: failure },
    Function { name: "always", min: 0, max: 0, status: true, call: always },
    Function { name: "cancelled", min: 0, max: 0, status: true, call: cancelled },
];

/// Finds a function by name, case-insensitively.
pub(crate) fn lookup(name: &str) -> Option<&'static Function> {
    TABLE.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// All function names.
pub(crate) fn names() -> Vec<&'static str> {
    TABLE.iter().map(|f| f.name).collect()
}

fn lower(v: &Value) -> String {
    to_display_string(v).to_lowercase()
}

fn contains(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(match &a[0] {
        Value::Array(items) => items.iter().any(|i| loose_eq(i, &a[1])),
        other => lower(other).contains(&lower(&a[1])),
    }))
}

fn starts_with(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(lower(&a[0]).starts_with(&lower(&a[1]))))
}

fn ends_with(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(lower(&a[0]).ends_with(&lower(&a[1]))))
}

fn format(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let fmt = to_display_string(&a[0]);
    let args = &a[1..];
    let mut out = String::new();
    let mut chars = fmt.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let close =
                    fmt[i..].find('}').ok_or_else(|| EvalError::Format(format!("`{{` at {i} is not closed")))?;
                let inner = &fmt[i + 1..i + close];
                let n: usize =
                    inner.parse().map_err(|_| EvalError::Format(format!("`{{{inner}}}` is not an argument index")))?;
                let v = args
                    .get(n)
                    .ok_or_else(|| EvalError::Format(format!("`{{{n}}}` but only {} arguments", args.len())))?;
                out.push_str(&to_display_string(v));
                while chars.peek().is_some_and(|(j, _)| *j <= i + close) {
                    chars.next();
                }
            }
            '}' => return Err(EvalError::Format(format!("lone `}}` at {i}; write `}}}}`"))),
            c => out.push(c),
        }
    }
    Ok(Value::String(out))
}

fn join(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let sep = a.get(1).map_or(",".to_string(), to_display_string);
    Ok(Value::String(match &a[0] {
        Value::Array(items) => items.iter().map(to_display_string).collect::<Vec<_>>().join(&sep),
        other => to_display_string(other),
    }))
}

fn to_json(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::String(serde_json::to_string_pretty(&a[0]).unwrap_or_default()))
}

fn from_json(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    serde_json::from_str(&to_display_string(&a[0])).map_err(|e| EvalError::FromJson(e.to_string()))
}

fn hash_files(a: &[Value], ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    let patterns: Vec<String> = a.iter().map(to_display_string).collect();
    ctx.hash_files(&patterns).map(Value::String).map_err(EvalError::HashFiles)
}

fn success(_: &[Value], ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(ctx.status() == Status::Success))
}

fn failure(_: &[Value], ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(ctx.status() == Status::Failure))
}

fn always(_: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(true))
}

fn cancelled(_: &[Value], ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(ctx.status() == Status::Cancelled))
}
