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
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                Tok::Dot
            }
            _ if let Some((sym, tok)) = SYMBOLS.iter().find(|(sym, _)| src[i..].starts_with(sym)) => {
                i += sym.len();
                tok.clone()
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match src[i..].find('\'') {
                        None => {
                            return Err(ExprError::new(start, "unterminated string")
                                .with_help("close it with `'`; write `''` for a quote inside it"));
                        }
                        Some(q) => {
                            s.push_str(&src[i..i + q]);
                            i += q + 1;
                            if b.get(i) == Some(&b'\'') {
                                s.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                Tok::Str(s)
            }
            b'0'..=b'9' | b'-' | b'.' => {
                let end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'.' || *c == b'+' || *c == b'-'))
                    .map_or(b.len(), |p| i + 1 + p);
                let text = &src[i..end];
                let value = number(text).ok_or_else(|| ExprError::new(start, format!("invalid number `{text}`")))?;
                i = end;
                Tok::Num(value)
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
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let help = match ch {
                    '"' => "strings use single quotes: 'text'",
                    '=' => "compare with `==`",
                    '&' => "write `&&`",
                    '|' => "write `||`",
                    _ => {
                        "expressions use literals, contexts, `== != < <= > >= && || !`, parentheses and function calls"
                    }
                };
                return Err(ExprError::new(start, format!("unexpected character `{ch}`")).with_help(help));
            }
        };
        out.push((tok, start));
    }
    Ok(out)
}

fn number(text: &str) -> Option<f64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()? as f64
    } else {
        if digits.is_empty() || digits.starts_with(['+', '-']) {
            return None;
        }
        digits.parse::<f64>().ok().filter(|v| v.is_finite())?
    };
    Some(if neg { -v } else { v })
}
