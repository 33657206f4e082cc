//! Tests of the expression language as a whole: parse, check, contexts and eval together.

use super::*;
use serde_json::{Value, json};
use std::cell::Cell;

struct Ctx {
    values: Value,
    status: Status,
    hashed: Cell<usize>,
}

impl EvalContext for Ctx {
    fn context(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
    fn status(&self) -> Status {
        self.status
    }
    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        self.hashed.set(self.hashed.get() + 1);
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
            "env": {"NAME": "World", "COUNT": "3", "EMPTY": "", "X-Y": "dash", "ZERO": "0"},
            "matrix": {"os": "linux", "list": ["a", "b"], "k": "os"},
            "needs": {"build": {"result": "success", "outputs": {"version": "1.2.3"}}},
            "steps": {"my-step": {"outputs": {"x": "1"}}}
        }),
        status: Status::Success,
        hashed: Cell::new(0),
    }
}

fn ev_in(c: &Ctx, src: &str) -> Value {
    let e = parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    e.eval(c).unwrap_or_else(|e| panic!("{src}: {e:?}"))
}

fn ev(src: &str) -> Value {
    ev_in(&ctx(), src)
}

fn problems(src: &str) -> Vec<(usize, String)> {
    parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).check().into_iter().map(|e| (e.offset, e.message)).collect()
}

#[test]
fn literals() {
    assert_eq!(ev("null"), Value::Null);
    assert_eq!(ev("true"), json!(true));
    assert_eq!(ev("false"), json!(false));
    assert_eq!(ev("-2.5"), json!(-2.5));
    assert_eq!(ev("0xff"), json!(255));
    assert_eq!(ev("-0x10"), json!(-16));
    assert_eq!(ev("'it''s'"), json!("it's"));
    assert_eq!(ev("''"), json!(""));
    assert_eq!(ev("1e3"), json!(1000));
    assert_eq!(ev(" ( 42 ) "), json!(42));
}

#[test]
fn contexts_and_properties() {
    assert_eq!(ev("env.NAME"), json!("World"));
    assert_eq!(ev("env.name"), json!("World"), "property access is case-insensitive");
    assert_eq!(ev("ENV.NAME"), json!("World"), "context names too");
    assert_eq!(ev("env['NAME']"), json!("World"));
    assert_eq!(ev("env['X-Y']"), json!("dash"));
    assert_eq!(ev("env.X-Y"), json!("dash"), "`-` is part of a name");
    assert_eq!(ev("matrix.list[1]"), json!("b"));
    assert_eq!(ev("matrix.list['1']"), json!("b"));
    assert_eq!(ev("matrix[matrix.k]"), json!("linux"), "index by an expression");
    assert_eq!(ev("needs.build.outputs.version"), json!("1.2.3"));
    assert_eq!(ev("needs['build'].outputs['version']"), json!("1.2.3"));
    assert_eq!(ev("steps.my-step.outputs.x"), json!("1"));
    assert_eq!(ev("fromJSON('{\"a\": {\"b\": [10, 20]}}').a.b[1]"), json!(20));
    assert_eq!(ev("(matrix).os"), json!("linux"));
    assert_eq!(ev("matrix.true"), Value::Null, "keywords are property names after `.`");
}

#[test]
fn missing_and_null_properties_are_null_not_errors() {
    assert_eq!(ev("env.MISSING"), Value::Null);
    assert_eq!(ev("env.MISSING.deeper[3].still"), Value::Null);
    assert_eq!(ev("env.NAME.length"), Value::Null, "a string has no properties");
    assert_eq!(ev("matrix.list[5]"), Value::Null);
    assert_eq!(ev("matrix.list[-1]"), Value::Null);
    assert_eq!(ev("null.x"), Value::Null);
    assert_eq!(ev("git.sha"), Value::Null, "a context the caller does not have reads as empty");
    assert_eq!(ev("git"), json!({}));
    assert_eq!(ev("matrix"), ctx().values["matrix"]);
}

#[test]
fn precedence() {
    // `!` binds tighter than comparisons, comparisons than `&&`, `&&` than `||`.
    assert_eq!(ev("true || false && false"), json!(true));
    assert_eq!(ev("(true || false) && false"), json!(false));
    assert_eq!(ev("false && true || true"), json!(true));
    assert_eq!(ev("!false == true"), json!(true), "(!false) == true");
    assert_eq!(ev("!1 == 2"), json!(false), "(!1) == 2, not !(1 == 2)");
    assert_eq!(ev("!(1 == 2)"), json!(true));
    assert_eq!(ev("1 < 2 == true"), json!(true), "relational binds tighter than equality");
    assert_eq!(ev("true == 1 < 2"), json!(true));
    assert_eq!(ev("1 == 1 && 2 == 3 || 'x'"), json!("x"));
    assert_eq!(ev("!!'a'"), json!(true));
    assert_eq!(ev("1 == 1 == 1"), json!(true), "left-associative: (1 == 1) == 1");
    assert_eq!(ev("3 > 2 > 1"), json!(false), "(3 > 2) > 1 is true > 1");
}

#[test]
fn and_or_return_operands_and_short_circuit() {
    assert_eq!(ev("'a' && 'b'"), json!("b"));
    assert_eq!(ev("'' && 'b'"), json!(""));
    assert_eq!(ev("0 || null"), Value::Null, "the last operand when all are falsy");
    assert_eq!(ev("'' || 'fallback'"), json!("fallback"));
    assert_eq!(ev("env.EMPTY || env.MISSING || env.NAME || env.COUNT"), json!("World"));
    assert_eq!(ev("env.ZERO && 'zero is a non-empty string'"), json!("zero is a non-empty string"));
    assert_eq!(ev("matrix.list && 1"), json!(1));
    // The side not taken is not evaluated: no error, no call to the caller.
    let c = ctx();
    assert_eq!(ev_in(&c, "false && fromJSON('{broken')"), json!(false));
    assert_eq!(ev_in(&c, "true || hashFiles('bad')"), json!(true));
    assert_eq!(ev_in(&c, "null && hashFiles('x') || 'y'"), json!("y"));
    assert_eq!(c.hashed.get(), 0);
    assert_eq!(ev_in(&c, "true && hashFiles('x')"), json!("hash:x"));
    assert_eq!(c.hashed.get(), 1);
    assert!(parse("true && fromJSON('{broken')").unwrap().eval(&c).is_err());
}

#[test]
fn loose_equality_and_comparisons() {
    assert_eq!(ev("env.COUNT == 3"), json!(true));
    assert_eq!(ev("env.COUNT != 3"), json!(false));
    assert_eq!(ev("'ABC' == 'abc'"), json!(true));
    assert_eq!(ev("needs.build.result == 'SUCCESS'"), json!(true));
    assert_eq!(ev("null == 0"), json!(true));
    assert_eq!(ev("env.MISSING == ''"), json!(true));
    assert_eq!(ev("true == 1"), json!(true));
    assert_eq!(ev("'x' == 0"), json!(false));
    assert_eq!(ev("'x' != 0"), json!(true));
    assert_eq!(ev("' 3 ' == 3"), json!(true));
    assert_eq!(ev("'0xff' == 255"), json!(true));
    assert_eq!(ev("'b' > 'A'"), json!(true));
    assert_eq!(ev("'abc' < 5"), json!(false), "NaN compares false");
    assert_eq!(ev("'abc' >= 5"), json!(false));
    assert_eq!(ev("env.COUNT >= 3"), json!(true));
    assert_eq!(ev("env.COUNT < 10"), json!(true), "a numeric string against a number compares as numbers");
    assert_eq!(ev("'3' < '10'"), json!(false), "two strings compare as text");
    assert_eq!(ev("null <= null"), json!(true));
    assert_eq!(ev("matrix.list == matrix.list"), json!(true));
    assert_eq!(ev("matrix.list == 'a'"), json!(false));
    assert_eq!(ev("matrix.list > 0"), json!(false), "arrays are not ordered");
    assert_eq!(ev("matrix < matrix"), json!(false));
}

#[test]
fn functions_through_expressions() {
    assert_eq!(ev("contains('Hello World', 'world')"), json!(true));
    assert_eq!(ev("contains(matrix.list, 'A')"), json!(true));
    assert_eq!(ev("startsWith('refs/heads/main', 'REFS/')"), json!(true));
    assert_eq!(ev("endsWith('file.tar.gz', '.gz')"), json!(true));
    assert_eq!(ev("format('{0}-{1} {{literal}} {0}', 'a', 2)"), json!("a-2 {literal} a"));
    assert_eq!(ev("join(matrix.list, '+')"), json!("a+b"));
    assert_eq!(ev("join(matrix.list)"), json!("a,b"));
    assert_eq!(ev("fromJSON('{\"a\": [1, 2]}').a[1]"), json!(2));
    assert_eq!(ev("fromJSON(toJSON(matrix)) == matrix"), json!(true));
    assert_eq!(ev("hashFiles('**/Cargo.lock', 'x')"), json!("hash:**/Cargo.lock+x"));
    assert_eq!(ev("SUCCESS()"), json!(true), "function names are case-insensitive");
    assert_eq!(ev("FromJson('[1]')[0]"), json!(1));
    assert_eq!(ev("failure() || cancelled()"), json!(false));
    assert_eq!(ev("always()"), json!(true));
    assert_eq!(ev("contains(format('{0}', env.NAME), 'orl') && !startsWith(env.NAME, 'x')"), json!(true));
}

#[test]
fn evaluation_errors_say_what() {
    let c = ctx();
    let err = |src: &str| parse(src).unwrap().eval(&c).unwrap_err();
    assert!(matches!(err("fromJSON('{nope')"), EvalError::FromJson(_)));
    assert!(err("format('{2}', 'a')").to_string().contains("{2}"));
    assert_eq!(err("hashFiles('bad')").to_string(), "hashFiles: no such file");
    // Not checked first: evaluation reports instead of panicking.
    assert_eq!(err("contains('a')").to_string(), "`contains` takes 2 arguments, found 1");
    assert_eq!(err("always(1, 2)").to_string(), "`always` takes 0 arguments, found 2");
    assert_eq!(err("nope()"), EvalError::UnknownFunction("nope".into()));
    assert_eq!(err("1 == 1 && format()").to_string(), "`format` takes at least 1 argument, found 0");
}

#[test]
fn status_functions() {
    let c = Ctx { status: Status::Failure, ..ctx() };
    assert_eq!(ev_in(&c, "failure()"), json!(true));
    assert_eq!(ev_in(&c, "success()"), json!(false));
    assert!(parse("success() || failure()").unwrap().uses_status_function());
    assert!(parse("env.A == 'b' && !Cancelled()").unwrap().uses_status_function());
    assert!(parse("contains(format('{0}', always()), 't')").unwrap().uses_status_function());
    assert!(!parse("env.A == 'b'").unwrap().uses_status_function());
    assert!(!parse("'success()'").unwrap().uses_status_function());
    assert!(!parse("steps.success.outputs.x").unwrap().uses_status_function());
}

#[test]
fn syntax_errors_have_offsets() {
    let e = parse("env.A == ").unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (9, "the expression ends too early"));
    let e = parse("env.A = 'b'").unwrap_err();
    assert_eq!((e.offset, e.help.is_some()), (6, true));
    let e = parse("'open").unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (0, "unterminated string"));
    let e = parse("a b").unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (2, "unexpected `b` after the end of the expression"));
    assert_eq!(parse("contains('a',").unwrap_err().offset, 13);
    assert_eq!(parse("contains('a' 'b')").unwrap_err().message, "expected `,` or `)`, found string 'b'");
    assert_eq!(parse("\"double\"").unwrap_err().offset, 0);
    assert_eq!(parse("(1 == 1").unwrap_err().message, "expected `)` at the end of the expression");
    assert_eq!(parse("env.").unwrap_err().message, "expected a property name after `.`");
    assert_eq!(parse("env.'x'").unwrap_err().offset, 4);
    assert_eq!(parse("matrix.list[0").unwrap_err().offset, 13);
    assert_eq!(parse("&& x").unwrap_err().offset, 0);
    assert_eq!(parse("f(1,)").unwrap_err().offset, 4);
    assert_eq!(parse("").unwrap_err().message, "empty expression");
    assert_eq!(parse("   ").unwrap_err().message, "empty expression");
}

#[test]
fn unknown_contexts_and_functions_are_found_with_suggestions() {
    let src = "secret.TOKEN == foo && contain('a', 'b') && success(1) && format()";
    let errors = parse(src).unwrap().check();
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
    let help = |i: usize| errors[i].help.clone().unwrap_or_default();
    assert_eq!(help(0), "did you mean `secrets`? contexts: env, params, secrets, matrix, git, build, needs, steps");
    assert_eq!(help(1), "contexts: env, params, secrets, matrix, git, build, needs, steps", "no near miss");
    assert!(help(2).starts_with("did you mean `contains`? functions: contains, startsWith,"), "{}", help(2));
    assert_eq!(help(3), "usage: success()");
    assert!(help(4).starts_with("usage: format('{0} and {1}', a, b)"));
}

#[test]
fn check_finds_problems_everywhere_in_the_tree() {
    assert_eq!(problems("env.A"), []);
    assert_eq!(problems("Env.A && MATRIX.os && toJson(steps) && HASHFILES('x')"), [], "names ignore case");
    assert_eq!(problems("github.ref"), [(0, "unknown context `github`".to_string())]);
    assert_eq!(problems("needs.a[bogus.x]"), [(8, "unknown context `bogus`".to_string())]);
    assert_eq!(problems("!(1 < mtrix.x)"), [(6, "unknown context `mtrix`".to_string())]);
    assert_eq!(
        problems("startswith(env.A) || startsWit(a, 'b')"),
        [
            (0, "`startsWith` takes 2 arguments, found 1".to_string()),
            (21, "unknown function `startsWit`".to_string()),
            (31, "unknown context `a`".to_string()),
        ]
    );
    let e = &parse("STARTSWIT('a', 'b')").unwrap().check()[0];
    assert!(e.help.as_deref().unwrap_or_default().starts_with("did you mean `startsWith`?"));
    let e = &parse("Matrx.os").unwrap().check()[0];
    assert!(e.help.as_deref().unwrap_or_default().starts_with("did you mean `matrix`?"));
    assert_eq!(problems("'é' == bad"), [(8, "unknown context `bad`".to_string())], "byte offsets");
}

#[test]
fn context_paths_for_the_linter() {
    let e = parse("needs.build.outputs.v == matrix['os'] && contains(steps.a.outputs, env[matrix.k])").unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        e.contexts(),
        [
            ("needs".to_string(), s(&["build", "outputs", "v"])),
            ("matrix".to_string(), s(&["os"])),
            ("steps".to_string(), s(&["a", "outputs"])),
            ("env".to_string(), vec![]),
            ("matrix".to_string(), s(&["k"])),
        ]
    );
    let e = parse("needs[matrix.job].outputs.x || NEEDS.Build || secrets || fromJSON(env.J).x[0]").unwrap();
    assert_eq!(
        e.contexts(),
        [
            ("needs".to_string(), vec![]),
            ("matrix".to_string(), s(&["job"])),
            ("needs".to_string(), s(&["Build"])),
            ("secrets".to_string(), vec![]),
            ("env".to_string(), s(&["J"])),
        ]
    );
    assert_eq!(parse("matrix.list[0].x").unwrap().contexts(), [("matrix".to_string(), s(&["list"]))]);
    assert_eq!(parse("'env.X' == 1").unwrap().contexts(), []);
}

#[test]
fn hostile_input_is_refused_not_crashed() {
    let nested = |n: usize| "(".repeat(n) + "1" + &")".repeat(n);
    assert_eq!(parse(&nested(MAX_DEPTH)).unwrap().eval(&ctx()).unwrap(), json!(1));
    let e = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!((e.offset, e.message.as_str()), (MAX_DEPTH, "the expression nests deeper than 64 levels"));
    assert!(parse(&nested(100_000)).is_err());
    let nots = |n: usize| "!".repeat(n) + "true";
    assert_eq!(parse(&nots(MAX_DEPTH)).unwrap().eval(&ctx()).unwrap(), json!(true));
    assert!(parse(&nots(MAX_DEPTH + 1)).is_err());
    let calls = "contains(".repeat(1000) + &")".repeat(1000);
    assert!(parse(&calls).unwrap_err().message.contains("nests deeper"));
    let brackets = "env".to_string() + &"[env".repeat(1000) + &"]".repeat(1000);
    assert!(parse(&brackets).unwrap_err().message.contains("nests deeper"));
    let comparisons = vec!["1"; 10_000].join(" == ");
    assert!(parse(&comparisons).unwrap_err().message.contains("nests deeper"));
    assert!(parse(&"a".repeat(MAX_SOURCE + 1)).unwrap_err().message.contains("limit of 65536"));
}

#[test]
fn long_flat_chains_are_fine() {
    // Long `||` / `&&` chains and property paths are flat: no depth limit, no deep recursion.
    let ors = vec!["env.MISSING"; 4000].join(" || ") + " || 'last'";
    assert!(ors.len() < MAX_SOURCE);
    assert_eq!(ev(&ors), json!("last"));
    let ands = vec!["true"; 10_000].join("&&");
    assert_eq!(ev(&ands), json!(true));
    let path = "env".to_string() + &".x".repeat(20_000);
    assert_eq!(ev(&path), Value::Null);
    let args = format!("format('{{0}}'{})", ", 1".repeat(10_000));
    assert_eq!(ev(&args), json!("1"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let pieces = [
        "(", ")", "[", "]", "'", "''", ".", ",", "!", "=", "==", "<", ">=", "&&", "||", "env", "x", "1", "-", "0x",
        "é", " ", "format(", "'{0}'", "}", "{", "\"", "1e", "null", "true",
    ];
    // A deterministic walk over many combinations.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..5000 {
        let mut src = String::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            src.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        if let Ok(e) = parse(&src) {
            let _ = e.check();
            let _ = e.contexts();
            let _ = e.eval(&ctx());
        }
        let _ = parse_template(&format!("a ${{{{ {src} }}}} b")).map(|t| t.check());
    }
}
