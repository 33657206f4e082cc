//! Expression text to tokens, each with its byte offset.

use super::ExprError;

/// A token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Ident(String),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// Operators and punctuation, longest first.
pub(crate) const SYMBOLS: &[(&str, Tok)] = &[
    ("==", Tok::Eq),
    ("!=", Tok::Ne),
    ("<=", Tok::Le),
    (">=", Tok::Ge),
    ("&&", Tok::And),
    ("||", Tok::Or),
    ("!", Tok::Not),
    ("<", Tok::Lt),
    (">", Tok::Gt),
    ("[", Tok::LBracket),
    ("]", Tok::RBracket),
    ("(", Tok::LParen),
    (")", Tok::RParen),
    (",", Tok::Comma),
];

/// Splits `src` into tokens.
pub(crate) fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let next_is_digit = b.get(i + 1).is_some_and(u8::is_ascii_digit);
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'.' if !next_is_digit => {
                i += 1;
                Tok::Dot
            }
            _ if let Some((sym, tok)) = SYMBOLS.iter().find(|(sym, _)| src[i..].starts_with(sym)) => {
                i += sym.len();
                tok.clone()
            }
            b'\'' => {
                let (s, end) = string(src, start)?;
                i = end;
                Tok::Str(s)
            }
            b'0'..=b'9' | b'.' => {
                let (n, end) = number_token(src, start)?;
                i = end;
                Tok::Num(n)
            }
            b'-' if next_is_digit || (b.get(i + 1) == Some(&b'.') && b.get(i + 2).is_some_and(u8::is_ascii_digit)) => {
                let (n, end) = number_token(src, start)?;
                i = end;
                Tok::Num(n)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'))
                    .map_or(b.len(), |p| i + p);
                let word = &src[i..end];
                i = end;
                match word {
                    "null" => Tok::Null,
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    _ => Tok::Ident(word.to_string()),
                }
            }
            _ => return Err(unexpected(src, start)),
        };
        out.push((tok, start));
    }
    Ok(out)
}

/// A single-quoted string starting at `start`; `''` is a quote. Returns the text and the offset
/// after the closing quote.
fn string(src: &str, start: usize) -> Result<(String, usize), ExprError> {
    let b = src.as_bytes();
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        let Some(q) = src[i..].find('\'') else {
            return Err(ExprError::new(start, "unterminated string")
                .with_help("close it with `'`; write `''` for a quote inside it"));
        };
        s.push_str(&src[i..i + q]);
        i += q + 1;
        if b.get(i) == Some(&b'\'') {
            s.push('\'');
            i += 1;
        } else {
            return Ok((s, i));
        }
    }
}

/// A number starting at `start` (digits, `.`, an optional leading `-`, an exponent, or `0x` hex).
fn number_token(src: &str, start: usize) -> Result<(f64, usize), ExprError> {
    let b = src.as_bytes();
    let mut end = start + 1;
    while let Some(&c) = b.get(end) {
        let sign_in_exponent =
            (c == b'+' || c == b'-') && matches!(b[end - 1], b'e' | b'E') && !is_hex(&src[start..end]);
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || sign_in_exponent {
            end += 1;
        } else {
            break;
        }
    }
    let text = &src[start..end];
    let value = parse_number(text).ok_or_else(|| {
        ExprError::new(start, format!("invalid number `{text}`"))
            .with_help("numbers look like `42`, `-1.5`, `2e3` or `0xff`")
    })?;
    Ok((value, end))
}

fn is_hex(text: &str) -> bool {
    let t = text.strip_prefix('-').unwrap_or(text);
    t.starts_with("0x") || t.starts_with("0X")
}

/// Parses a number the way the language (and string-to-number coercion) reads it: optional
/// sign, decimal with optional fraction and exponent, or `0x` hex. Nothing else (no `inf`,
/// `nan`, `1_000`).
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()? as f64
    } else {
        if !is_decimal(digits) {
            return None;
        }
        digits.parse::<f64>().ok().filter(|v| v.is_finite())?
    };
    Some(if neg { -v } else { v })
}

/// `digits[.digits][e[+-]digits]`, with digits on at least one side of the point.
fn is_decimal(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(p) => (&s[..p], Some(&s[p + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let all_digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = all_digits(int) && all_digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

fn unexpected(src: &str, at: usize) -> ExprError {
    let ch = src[at..].chars().next().unwrap_or('?');
    let help = match ch {
        '"' => "strings use single quotes: 'text'",
        '=' => "compare with `==`",
        '&' => "write `&&`",
        '|' => "write `||`",
        '-' | '+' | '*' | '/' | '%' => "there is no arithmetic; a negative number is written `-1`",
        '{' | '}' => "expressions go between `${{` and `}}`; braces are not part of the language",
        _ => "expressions use literals, contexts, `== != < <= > >= && || !`, parentheses and function calls",
    };
    ExprError::new(at, format!("unexpected character `{ch}`")).with_help(help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("42 -1.5 .5 2e3 1E-2 0xff -0x10"),
            [
                Tok::Num(42.0),
                Tok::Num(-1.5),
                Tok::Num(0.5),
                Tok::Num(2000.0),
                Tok::Num(0.01),
                Tok::Num(255.0),
                Tok::Num(-16.0)
            ]
        );
        for bad in ["1x", "0x", "0xfg", "1.2.3", "1e", "1_000", "0x+f", "1e+"] {
            let e = lex(bad).unwrap_err();
            assert_eq!(e.offset, 0, "{bad}");
            assert!(e.message.starts_with("invalid number `"), "{bad}: {}", e.message);
        }
        assert_eq!(lex("a == 9z").unwrap_err().offset, 5);
    }

    #[test]
    fn operators_without_spaces() {
        assert_eq!(
            toks("a.b==-1&&!c"),
            [
                Tok::Ident("a".into()),
                Tok::Dot,
                Tok::Ident("b".into()),
                Tok::Eq,
                Tok::Num(-1.0),
                Tok::And,
                Tok::Not,
                Tok::Ident("c".into())
            ]
        );
        assert_eq!(
            toks("x<=1>=2!=3"),
            [Tok::Ident("x".into()), Tok::Le, Tok::Num(1.0), Tok::Ge, Tok::Num(2.0), Tok::Ne, Tok::Num(3.0)]
        );
    }

    #[test]
    fn strings_and_words() {
        assert_eq!(
            toks("'it''s' '' 'a}}b'"),
            [Tok::Str("it's".into()), Tok::Str(String::new()), Tok::Str("a}}b".into())]
        );
        assert_eq!(
            toks("true false null my-step_2 True"),
            [Tok::Bool(true), Tok::Bool(false), Tok::Null, Tok::Ident("my-step_2".into()), Tok::Ident("True".into())]
        );
        assert_eq!(toks("'héllo' == 'ü'"), [Tok::Str("héllo".into()), Tok::Eq, Tok::Str("ü".into())]);
    }

    #[test]
    fn bad_characters_have_offsets_and_help() {
        let e = lex("a = 'b'").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str(), e.help.as_deref()),
            (2, "unexpected character `=`", Some("compare with `==`"))
        );
        let e = lex("a + 1").unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.help.unwrap().contains("no arithmetic"));
        let e = lex("'x' == é").unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (7, "unexpected character `é`"));
        let e = lex("  'open").unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (2, "unterminated string"));
    }

    #[test]
    fn number_coercion_is_strict() {
        assert_eq!(parse_number("+3"), Some(3.0));
        assert_eq!(parse_number("1."), Some(1.0));
        for bad in ["", "-", "inf", "NaN", "infinity", "1e999", "0x", " 1", "abc"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }
}
