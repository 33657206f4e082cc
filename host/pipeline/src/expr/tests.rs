//! Tests of the expression language.

use super::*;
use serde_json::{Value, json};

struct Ctx {
    values: Value,
    status: Status,
}

impl EvalContext for Ctx {
    fn context(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
    fn status(&self) -> Status {
        self.status
    }
    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        if patterns.iter().any(|p| p == "bad") {
            Err("no such file".into())
        } else {
            Ok(format!("hash:{}", patterns.join("+")))
        }
    }
}

fn ctx() -> Ctx {
    Ctx {
        values: json!({
            "env": {"NAME": "World", "COUNT": "3", "EMPTY": ""},
            "matrix": {"os": "linux", "list": ["a", "b"]},
            "needs": {"build": {"result": "success", "outputs": {"version": "1.2.3"}}},
            "steps": {"my-step": {"outputs": {"x": "1"}}}
        }),
        status: Status::Success,
    }
}

fn ev(src: &str) -> Value {
    parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).eval(&ctx()).unwrap()
}

#[test]
fn literals() {
    assert_eq!(ev("null"), Value::Null);
    assert_eq!(ev("true"), json!(true));
    assert_eq!(ev("-2.5"), json!(-2.5));
    assert_eq!(ev("0xff"), json!(255));
    assert_eq!(ev("'it''s'"), json!("it's"));
    assert_eq!(ev("1e3"), json!(1000));
}

#[test]
fn contexts_and_properties() {
    assert_eq!(ev("env.NAME"), json!("World"));
    assert_eq!(ev("env.name"), json!("World"), "property access is case-insensitive");
    assert_eq!(ev("env['NAME']"), json!("World"));
    assert_eq!(ev("matrix.list[1]"), json!("b"));
    assert_eq!(ev("needs.build.outputs.version"), json!("1.2.3"));
    assert_eq!(ev("steps.my-step.outputs.x"), json!("1"));
    assert_eq!(ev("env.MISSING.deeper"), Value::Null);
    assert_eq!(ev("git.sha"), Value::Null);
}

#[test]
fn operators_and_precedence() {
    assert_eq!(ev("1 == 1 && 2 == 3 || true"), json!(true));
    assert_eq!(ev("!false == true"), json!(true));
    assert_eq!(ev("1 < 2 == true"), json!(true), "comparisons bind tighter than ==");
    assert_eq!(ev("(1 == 2) || (3 >= 3)"), json!(true));
    assert_eq!(ev("'a' && 'b'"), json!("b"), "&& returns the operand");
    assert_eq!(ev("'' || 'fallback'"), json!("fallback"));
    assert_eq!(ev("env.EMPTY || env.NAME"), json!("World"));
}

#[test]
fn loose_equality_and_comparisons() {
    assert_eq!(ev("env.COUNT == 3"), json!(true));
    assert_eq!(ev("'ABC' == 'abc'"), json!(true));
    assert_eq!(ev("null == 0"), json!(true));
    assert_eq!(ev("true == 1"), json!(true));
    assert_eq!(ev("'x' == 0"), json!(false));
    assert_eq!(ev("'b' > 'A'"), json!(true));
    assert_eq!(ev("'abc' < 5"), json!(false), "NaN compares false");
    assert_eq!(ev("matrix.list == matrix.list"), json!(true));
}

#[test]
fn truthiness() {
    for v in [json!(false), json!(0), json!(""), Value::Null, json!(-0.0)] {
        assert!(!truthy(&v), "{v}");
    }
    for v in [json!("0"), json!([]), json!({}), json!(0.1)] {
        assert!(truthy(&v), "{v}");
    }
}

#[test]
fn functions() {
    assert_eq!(ev("contains('Hello World', 'world')"), json!(true));
    assert_eq!(ev("contains(matrix.list, 'A')"), json!(true));
    assert_eq!(ev("startsWith('refs/heads/main', 'REFS/')"), json!(true));
    assert_eq!(ev("endsWith('file.tar.gz', '.gz')"), json!(true));
    assert_eq!(ev("format('{0}-{1} {{literal}} {0}', 'a', 2)"), json!("a-2 {literal} a"));
    assert_eq!(ev("join(matrix.list, '+')"), json!("a+b"));
    assert_eq!(ev("join(matrix.list)"), json!("a,b"));
    assert_eq!(ev("fromJSON('{\"a\": [1, 2]}').a[1]"), json!(2));
    assert_eq!(ev("toJSON(matrix.list)"), json!("[\n  \"a\",\n  \"b\"\n]"));
    assert_eq!(ev("hashFiles('**/Cargo.lock', 'x')"), json!("hash:**/Cargo.lock+x"));
    assert_eq!(ev("SUCCESS()"), json!(true), "function names are case-insensitive");
    assert_eq!(ev("failure() || cancelled()"), json!(false));
    assert_eq!(ev("always()"), json!(true));
}

#[test]
fn evaluation_errors_say_what() {
    let e = parse("fromJSON('{nope')").unwrap().eval(&ctx()).unwrap_err();
    assert!(matches!(e, EvalError::FromJson(_)));
    let e = parse("format('{2}', 'a')").unwrap().eval(&ctx()).unwrap_err();
    assert!(e.to_string().contains("{2}"), "{e}");
    let e = parse("hashFiles('bad')").unwrap().eval(&ctx()).unwrap_err();
    assert_eq!(e.to_string(), "hashFiles: no such file");
}

#[test]
fn status_functions() {
    let c = Ctx { status: Status::Failure, ..ctx() };
    assert_eq!(parse("failure()").unwrap().eval(&c).unwrap(), json!(true));
    assert!(parse("success() || failure()").unwrap().uses_status_function());
    assert!(!parse("env.A == 'b'").unwrap().uses_status_function());
}

#[test]
fn syntax_errors_have_offsets() {
    let e = parse("env.A == ").unwrap_err();
    assert_eq!(e.offset, 9);
    let e = parse("env.A = 'b'").unwrap_err();
    assert_eq!((e.offset, e.help.is_some()), (6, true));
    let e = parse("'open").unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (0, "unterminated string"));
    let e = parse("a b").unwrap_err();
    assert_eq!(e.offset, 2);
    assert_eq!(parse("contains('a',").unwrap_err().offset, 13);
    assert_eq!(parse("\"double\"").unwrap_err().offset, 0);
    assert!(parse("").is_err());
}

#[test]
fn unknown_contexts_and_functions_are_found_with_suggestions() {
    let errors = parse("secret.TOKEN == foo && contain('a', 'b') && success(1) && format()").unwrap().check();
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.offset, e.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, "unknown context `secret`"),
            (16, "unknown context `foo`"),
            (23, "unknown function `contain`"),
            (44, "`success` takes 0 arguments, found 1"),
            (58, "`format` takes at least 1 argument, found 0"),
        ]
    );
    assert!(errors[0].help.as_deref().unwrap().contains("did you mean `secrets`?"));
    assert!(errors[2].help.as_deref().unwrap().contains("did you mean `contains`?"));
}

#[test]
fn context_paths_for_the_linter() {
    let e = parse("needs.build.outputs.v == matrix['os'] && contains(steps.a.outputs, env[matrix.k])").unwrap();
    assert_eq!(
        e.contexts(),
        [
            ("needs".to_string(), vec!["build".to_string(), "outputs".into(), "v".into()]),
            ("matrix".to_string(), vec!["os".to_string()]),
            ("steps".to_string(), vec!["a".to_string(), "outputs".into()]),
            ("env".to_string(), vec![]),
            ("matrix".to_string(), vec!["k".to_string()]),
        ]
    );
}

#[test]
fn hostile_input_is_refused_not_crashed() {
    let deep = "(".repeat(10_000) + "1" + &")".repeat(10_000);
    assert!(parse(&deep).unwrap_err().message.contains("nests deeper"));
    let nots = "!".repeat(10_000) + "true";
    assert!(parse(&nots).is_err());
    assert!(parse(&"a".repeat(MAX_SOURCE + 1)).is_err());
    let calls = "contains(".repeat(1000) + &")".repeat(1000);
    assert!(parse(&calls).is_err());
}

#[test]
fn templates() {
    let t = parse_template("Hello ${{ env.NAME }}, v${{ needs.build.outputs.version }}!").unwrap();
    assert!(t.has_expressions());
    assert_eq!(t.render(&ctx()).unwrap(), "Hello World, v1.2.3!");
    let t = parse_template("${{ format('}}{0}', 'x') }} end").unwrap();
    assert_eq!(t.render(&ctx()).unwrap(), "}x end");
    assert_eq!(parse_template("a ${{ b").unwrap_err().offset, 2);
    let errs = parse_template("ok ${{ nope.x }}").unwrap().check();
    assert_eq!(errs[0].offset, 7);
    assert_eq!(parse_template("x ${{ env.A == }}").unwrap_err().offset, 15);
    assert!(!parse_template("no expressions $HOME").unwrap().has_expressions());
    assert_eq!(to_display_string(&json!(3.0)), "3");
    assert_eq!(to_display_string(&json!(2.5)), "2.5");
    assert_eq!(to_display_string(&Value::Null), "");
}
