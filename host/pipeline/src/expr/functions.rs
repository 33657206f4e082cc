//! The functions expressions can call: the table with arities and usage, and the
//! implementations.

use super::eval::{EvalContext, EvalError, Status, loose_eq, to_display_string};
use serde_json::Value;

/// A function of the language.
pub(crate) struct Function {
    /// The name as documented (calls match it ignoring case).
    pub name: &'static str,
    /// Fewest arguments.
    pub min: usize,
    /// Most arguments (`usize::MAX`: any number).
    pub max: usize,
    /// How it is called, for help texts.
    pub usage: &'static str,
    /// True for the status functions (`success`, `failure`, `always`, `cancelled`).
    pub status: bool,
    /// The implementation; it is only called with an accepted number of arguments.
    pub call: fn(&[Value], &dyn EvalContext) -> Result<Value, EvalError>,
}

impl Function {
    /// Whether `n` arguments are accepted.
    pub fn accepts(&self, n: usize) -> bool {
        (self.min..=self.max).contains(&n)
    }

    /// "`contains` takes 2 arguments, found 1".
    pub fn arity_message(&self, found: usize) -> String {
        let (takes, count) = match (self.min, self.max) {
            (a, b) if a == b => (a.to_string(), a),
            (a, usize::MAX) => (format!("at least {a}"), a),
            (a, b) => (format!("{a} to {b}"), b),
        };
        let plural = if count == 1 { "" } else { "s" };
        format!("`{}` takes {takes} argument{plural}, found {found}", self.name)
    }
}

const ANY: usize = usize::MAX;

const TABLE: &[Function] = &[
    Function { name: "contains", min: 2, max: 2, usage: "contains(search, item)", status: false, call: contains },
    Function {
        name: "startsWith",
        min: 2,
        max: 2,
        usage: "startsWith(searchString, searchValue)",
        status: false,
        call: starts_with,
    },
    Function {
        name: "endsWith",
        min: 2,
        max: 2,
        usage: "endsWith(searchString, searchValue)",
        status: false,
        call: ends_with,
    },
    Function {
        name: "format",
        min: 1,
        max: ANY,
        usage: "format('{0} and {1}', a, b); `{{` and `}}` are literal braces",
        status: false,
        call: format,
    },
    Function { name: "join", min: 1, max: 2, usage: "join(array, separator = ',')", status: false, call: join },
    Function { name: "toJSON", min: 1, max: 1, usage: "toJSON(value)", status: false, call: to_json },
    Function { name: "fromJSON", min: 1, max: 1, usage: "fromJSON(text)", status: false, call: from_json },
    Function {
        name: "hashFiles",
        min: 1,
        max: ANY,
        usage: "hashFiles('**/Cargo.lock', ...)",
        status: false,
        call: hash_files,
    },
    Function { name: "success", min: 0, max: 0, usage: "success()", status: true, call: success },
    Function { name: "failure", min: 0, max: 0, usage: "failure()", status: true, call: failure },
    Function { name: "always", min: 0, max: 0, usage: "always()", status: true, call: always },
    Function { name: "cancelled", min: 0, max: 0, usage: "cancelled()", status: true, call: cancelled },
];

/// Finds a function by name, case-insensitively.
pub(crate) fn lookup(name: &str) -> Option<&'static Function> {
    TABLE.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// All function names.
pub(crate) fn names() -> Vec<&'static str> {
    TABLE.iter().map(|f| f.name).collect()
}

/// Argument `i`, null when absent (the arity check makes that a bug, never a panic).
fn arg(a: &[Value], i: usize) -> &Value {
    static NULL: Value = Value::Null;
    a.get(i).unwrap_or(&NULL)
}

fn lower(v: &Value) -> String {
    to_display_string(v).to_lowercase()
}

/// An array: any element loosely equal to the item; anything else: substring, ignoring case.
fn contains(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let item = arg(a, 1);
    Ok(Value::Bool(match arg(a, 0) {
        Value::Array(items) => items.iter().any(|i| loose_eq(i, item)),
        other => lower(other).contains(&lower(item)),
    }))
}

fn starts_with(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(lower(arg(a, 0)).starts_with(&lower(arg(a, 1)))))
}

fn ends_with(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    Ok(Value::Bool(lower(arg(a, 0)).ends_with(&lower(arg(a, 1)))))
}

/// `{N}` is argument N (from 0), `{{` and `}}` are literal braces.
fn format(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let fmt = to_display_string(arg(a, 0));
    let args = a.get(1..).unwrap_or_default();
    let mut out = String::with_capacity(fmt.len());
    let mut rest = fmt.as_str();
    while let Some(p) = rest.find(['{', '}']) {
        out.push_str(&rest[..p]);
        let at = fmt.len() - rest.len() + p;
        let tail = &rest[p..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with('}') {
            return Err(EvalError::Format(format!("lone `}}` at offset {at} of '{fmt}'; write `}}}}` for a brace")));
        } else {
            let close = tail.find('}').ok_or_else(|| {
                EvalError::Format(format!("`{{` at offset {at} of '{fmt}' is not closed; write `{{{{` for a brace"))
            })?;
            let inner = &tail[1..close];
            let n: usize = inner
                .parse()
                .ok()
                .filter(|_| inner.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| EvalError::Format(format!("`{{{inner}}}` in '{fmt}' is not an argument number")))?;
            let v = args.get(n).ok_or_else(|| {
                let have = match args.len() {
                    0 => "there are no arguments after the format string".to_string(),
                    1 => "there is only 1 argument after the format string ({0})".to_string(),
                    k => format!("there are only {k} arguments after the format string ({{0}} to {{{}}})", k - 1),
                };
                EvalError::Format(format!("`{{{n}}}` in '{fmt}', but {have}"))
            })?;
            out.push_str(&to_display_string(v));
            rest = &tail[close + 1..];
        }
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn join(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let sep = a.get(1).map_or_else(|| ",".to_string(), to_display_string);
    Ok(Value::String(match arg(a, 0) {
        Value::Array(items) => items.iter().map(to_display_string).collect::<Vec<_>>().join(&sep),
        other => to_display_string(other),
    }))
}

/// Pretty-printed with two-space indentation, like GitHub.
fn to_json(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    // Serialising a `Value` to a string cannot fail (its keys are strings).
    Ok(Value::String(serde_json::to_string_pretty(arg(a, 0)).unwrap_or_default()))
}

fn from_json(a: &[Value], _: &dyn EvalContext) -> Result<Value, EvalError> {
    let text = to_display_string(arg(a, 0));
    serde_json::from_str(&text).map_err(|e| {
        let shown: String = text.chars().take(60).collect();
        let more = if shown.len() < text.len() { "..." } else { "" };
        EvalError::FromJson(format!("{e} in '{shown}{more}'"))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Ctx(Status);

    impl EvalContext for Ctx {
        fn context(&self, _: &str) -> Option<&Value> {
            None
        }
        fn status(&self) -> Status {
            self.0
        }
        fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
            match patterns {
                [p] if p == "none/**" => Err("no file matches none/**".into()),
                _ => Ok(patterns.join("|")),
            }
        }
    }

    fn call(name: &str, args: &[Value]) -> Result<Value, EvalError> {
        call_with(Status::Success, name, args)
    }

    fn call_with(status: Status, name: &str, args: &[Value]) -> Result<Value, EvalError> {
        let f = lookup(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(f.accepts(args.len()), "{name}/{}", args.len());
        (f.call)(args, &Ctx(status))
    }

    fn fmt(args: &[Value]) -> String {
        match call("format", args) {
            Ok(Value::String(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(lookup("STARTSWITH").map(|f| f.name), Some("startsWith"));
        assert_eq!(lookup("tojson").map(|f| f.name), Some("toJSON"));
        assert!(lookup("startswith_").is_none());
    }

    #[test]
    fn arity_messages() {
        let m = |n: &str, k| lookup(n).map(|f| f.arity_message(k)).unwrap_or_default();
        assert_eq!(m("contains", 1), "`contains` takes 2 arguments, found 1");
        assert_eq!(m("toJSON", 0), "`toJSON` takes 1 argument, found 0");
        assert_eq!(m("join", 3), "`join` takes 1 to 2 arguments, found 3");
        assert_eq!(m("format", 0), "`format` takes at least 1 argument, found 0");
        assert_eq!(m("always", 2), "`always` takes 0 arguments, found 2");
    }

    #[test]
    fn contains_strings_and_arrays() {
        assert_eq!(call("contains", &[json!("Hello World"), json!("WORLD")]), Ok(json!(true)));
        assert_eq!(call("contains", &[json!("abc"), json!("")]), Ok(json!(true)));
        assert_eq!(call("contains", &[json!("abc"), json!("d")]), Ok(json!(false)));
        assert_eq!(call("contains", &[json!(12345), json!(34)]), Ok(json!(true)));
        assert_eq!(call("contains", &[json!(["push", "Tag"]), json!("tag")]), Ok(json!(true)));
        assert_eq!(call("contains", &[json!([1, 2]), json!("2")]), Ok(json!(true)));
        assert_eq!(call("contains", &[json!(["ab"]), json!("a")]), Ok(json!(false)), "elements are compared whole");
        assert_eq!(call("contains", &[Value::Null, json!("x")]), Ok(json!(false)));
    }

    #[test]
    fn starts_and_ends_with() {
        assert_eq!(call("startsWith", &[json!("refs/heads/main"), json!("REFS/heads/")]), Ok(json!(true)));
        assert_eq!(call("startsWith", &[json!("main"), json!("refs/")]), Ok(json!(false)));
        assert_eq!(call("endsWith", &[json!("file.TAR.gz"), json!(".tar.GZ")]), Ok(json!(true)));
        assert_eq!(call("endsWith", &[json!("v1.20"), json!(20)]), Ok(json!(true)));
    }

    #[test]
    fn format_placeholders_and_escapes() {
        assert_eq!(fmt(&[json!("{0}-{1} {0}"), json!("a"), json!(2)]), "a-2 a");
        assert_eq!(fmt(&[json!("{{0}} is {0}"), json!("x")]), "{0} is x");
        assert_eq!(fmt(&[json!("{{{0}}}"), json!("x")]), "{x}");
        assert_eq!(fmt(&[json!("no braces")]), "no braces");
        assert_eq!(fmt(&[json!("ü{0}ß"), json!(1.5)]), "ü1.5ß");
        assert_eq!(fmt(&[json!("{0}{1}"), Value::Null, json!(true)]), "true");
        assert_eq!(fmt(&[json!("{1}"), json!("a"), json!("b")]), "b", "arguments may be skipped");
    }

    #[test]
    fn format_errors_say_what() {
        let err = |args: &[Value]| call("format", args).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err(&[json!("{2}"), json!("a")]),
            "format: `{2}` in '{2}', but there is only 1 argument after the format string ({0})"
        );
        assert_eq!(err(&[json!("{0}")]), "format: `{0}` in '{0}', but there are no arguments after the format string");
        assert_eq!(err(&[json!("a } b")]), "format: lone `}` at offset 2 of 'a } b'; write `}}` for a brace");
        assert_eq!(err(&[json!("x {0")]), "format: `{` at offset 2 of 'x {0' is not closed; write `{{` for a brace");
        assert_eq!(err(&[json!("{x}"), json!(1)]), "format: `{x}` in '{x}' is not an argument number");
        assert_eq!(err(&[json!("{+0}"), json!(1)]), "format: `{+0}` in '{+0}' is not an argument number");
        assert!(err(&[json!("{99999999999999999999999}"), json!(1)]).contains("not an argument number"));
    }

    #[test]
    fn join_and_json() {
        assert_eq!(call("join", &[json!(["a", 1, null, true])]), Ok(json!("a,1,,true")));
        assert_eq!(call("join", &[json!(["a", "b"]), json!(" + ")]), Ok(json!("a + b")));
        assert_eq!(call("join", &[json!("solo"), json!("-")]), Ok(json!("solo")));
        assert_eq!(call("join", &[json!([])]), Ok(json!("")));
        assert_eq!(call("toJSON", &[json!({"a": [1]})]), Ok(json!("{\n  \"a\": [\n    1\n  ]\n}")));
        assert_eq!(call("toJSON", &[json!("s")]), Ok(json!("\"s\"")));
        assert_eq!(call("fromJSON", &[json!("{\"a\": [1, 2.5, null]}")]), Ok(json!({"a": [1, 2.5, null]})));
        assert_eq!(call("fromJSON", &[json!("true")]), Ok(json!(true)));
        let e = call("fromJSON", &[json!("{nope")]).unwrap_err();
        assert!(matches!(&e, EvalError::FromJson(m) if m.contains("'{nope'")), "{e}");
        assert!(e.to_string().starts_with("fromJSON: the argument is not valid JSON: "), "{e}");
        let long = "x".repeat(200);
        let e = call("fromJSON", &[json!(long)]).unwrap_err().to_string();
        assert!(e.contains(&format!("'{}...'", "x".repeat(60))), "{e}");
        let deep = "[".repeat(10_000);
        assert!(call("fromJSON", &[json!(deep)]).is_err(), "serde_json's recursion limit holds");
    }

    #[test]
    fn hash_files_and_status() {
        assert_eq!(call("hashFiles", &[json!("a/**"), json!("b")]), Ok(json!("a/**|b")));
        assert_eq!(
            call("hashFiles", &[json!("none/**")]).map_err(|e| e.to_string()),
            Err("hashFiles: no file matches none/**".to_string())
        );
        let results = |s| ["success", "failure", "cancelled", "always"].map(|f| call_with(s, f, &[]));
        assert_eq!(results(Status::Success), [Ok(json!(true)), Ok(json!(false)), Ok(json!(false)), Ok(json!(true))]);
        assert_eq!(results(Status::Failure), [Ok(json!(false)), Ok(json!(true)), Ok(json!(false)), Ok(json!(true))]);
        assert_eq!(results(Status::Cancelled), [Ok(json!(false)), Ok(json!(false)), Ok(json!(true)), Ok(json!(true))]);
        assert!(TABLE.iter().filter(|f| f.status).map(|f| f.name).eq(["success", "failure", "always", "cancelled"]));
    }
}
