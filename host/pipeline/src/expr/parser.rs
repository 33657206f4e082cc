//! Tokens to a syntax tree. Precedence from tightest: `.` `[]` calls, `!`, `< <= > >=`,
//! `== !=`, `&&`, `||`.

use super::lexer::Tok;
use super::{BinOp, ExprError, MAX_DEPTH, Node};
use serde_json::Value;

struct Parser<'a> {
    toks: &'a [(Tok, usize)],
    pos: usize,
    end: usize,
    depth: usize,
}

/// Parses a whole expression; tokens left over are an error.
pub(crate) fn parse(toks: &[(Tok, usize)], end: usize) -> Result<Node, ExprError> {
    let mut p = Parser { toks, pos: 0, end, depth: 0 };
    if toks.is_empty() {
        return Err(ExprError::new(0, "empty expression"));
    }
    let node = p.or()?;
    if let Some((t, off)) = p.toks.get(p.pos) {
        return Err(ExprError::new(*off, format!("unexpected {} after the end of the expression", describe(t)))
            .with_help("combine conditions with `&&` or `||`"));
    }
    Ok(node)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Null => "`null`".into(),
        Tok::Bool(b) => format!("`{b}`"),
        Tok::Num(n) => format!("number `{n}`"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Dot => "`.`".into(),
        symbol => super::lexer::SYMBOLS
            .iter()
            .find(|(_, tok)| tok == symbol)
            .map_or_else(|| "a symbol".into(), |(text, _)| format!("`{text}`")),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, o)| *o)
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), ExprError> {
        match self.peek() {
            Some(t) if t == want => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(ExprError::new(self.offset(), format!("expected {what}, found {}", describe(t)))),
            None => Err(ExprError::new(self.end, format!("expected {what} at the end of the expression"))),
        }
    }

    fn binary(
        &mut self,
        next: fn(&mut Self) -> Result<Node, ExprError>,
        ops: &[(Tok, BinOp)],
    ) -> Result<Node, ExprError> {
        let mut left = next(self)?;
        while let Some(op) = self.peek().and_then(|t| ops.iter().find(|(tok, _)| tok == t).map(|(_, op)| *op)) {
            self.pos += 1;
            let right = next(self)?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        self.binary(Self::and, &[(Tok::Or, BinOp::Or)])
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        self.binary(Self::equality, &[(Tok::And, BinOp::And)])
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        self.binary(Self::comparison, &[(Tok::Eq, BinOp::Eq), (Tok::Ne, BinOp::Ne)])
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        self.binary(
            Self::unary,
            &[(Tok::Lt, BinOp::Lt), (Tok::Le, BinOp::Le), (Tok::Gt, BinOp::Gt), (Tok::Ge, BinOp::Ge)],
        )
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(self.offset(), format!("the expression nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        self.enter()?;
        let node = if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            Node::Not(Box::new(self.unary()?))
        } else {
            self.postfix()?
        };
        self.depth -= 1;
        Ok(node)
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.toks.get(self.pos) {
                        Some((Tok::Ident(name), _)) => {
                            node = Node::Prop(Box::new(node), name.clone());
                            self.pos += 1;
                        }
                        Some((Tok::Null | Tok::Bool(_), off)) => {
                            // `x.true` is a property named "true".
                            let name = self.toks[self.pos].0.clone();
                            let key = match name {
                                Tok::Null => "null".to_string(),
                                Tok::Bool(b) => b.to_string(),
                                _ => return Err(ExprError::new(*off, "expected a property name")),
                            };
                            node = Node::Prop(Box::new(node), key);
                            self.pos += 1;
                        }
                        _ => return Err(ExprError::new(self.offset(), "expected a property name after `.`")),
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    self.enter()?;
                    let index = self.or()?;
                    self.depth -= 1;
                    self.expect(&Tok::RBracket, "`]`")?;
                    node = Node::Index(Box::new(node), Box::new(index));
                }
                _ => return Ok(node),
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let Some((tok, off)) = self.toks.get(self.pos).cloned() else {
            return Err(ExprError::new(self.end, "the expression ends too early").with_help("an operand is missing"));
        };
        self.pos += 1;
        match tok {
            Tok::Null => Ok(Node::Lit(Value::Null)),
            Tok::Bool(b) => Ok(Node::Lit(Value::Bool(b))),
            Tok::Num(n) => Ok(Node::Lit(super::eval::number(n))),
            Tok::Str(s) => Ok(Node::Lit(Value::String(s))),
            Tok::LParen => {
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Tok::Ident(name) if self.peek() == Some(&Tok::LParen) => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                } else {
                    loop {
                        self.enter()?;
                        args.push(self.or()?);
                        self.depth -= 1;
                        match self.peek() {
                            Some(Tok::Comma) => self.pos += 1,
                            _ => {
                                self.expect(&Tok::RParen, "`,` or `)`")?;
                                break;
                            }
                        }
                    }
                }
                Ok(Node::Call { name, offset: off, args })
            }
            Tok::Ident(name) => Ok(Node::Context { name, offset: off }),
            other => Err(ExprError::new(off, format!("unexpected {}", describe(&other)))
                .with_help("expected a value: a literal, a context such as `env.NAME`, or a function call")),
        }
    }
}
