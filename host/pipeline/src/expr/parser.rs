//! Tokens to a syntax tree. Precedence from tightest: `.` `[]` calls, `!`, `< <= > >=`,
//! `== !=`, `&&`, `||`. Nesting (parentheses, brackets, calls, `!`, chained comparisons) is
//! capped at [`MAX_DEPTH`] so hostile input cannot overflow the stack.

use super::lexer::Tok;
use super::{CmpOp, ExprError, MAX_DEPTH, Node, Step};
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
        return Err(
            ExprError::new(0, "empty expression").with_help("write a value or a condition, e.g. `env.CI == 'true'`")
        );
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

    /// One level deeper, refused past [`MAX_DEPTH`]; `at` is where the new level starts.
    fn enter(&mut self, at: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(at, format!("the expression nests deeper than {MAX_DEPTH} levels"))
                .with_help("split it up; nesting this deep is not needed by any real condition"));
        }
        Ok(())
    }

    fn leave(&mut self, levels: usize) {
        self.depth = self.depth.saturating_sub(levels);
    }

    /// `a || b || c` as one flat node, so long chains do not make a deep tree.
    fn or(&mut self) -> Result<Node, ExprError> {
        let first = self.and()?;
        if self.peek() != Some(&Tok::Or) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(Node::Or(items))
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let first = self.equality()?;
        if self.peek() != Some(&Tok::And) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            items.push(self.equality()?);
        }
        Ok(Node::And(items))
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        self.comparisons(Self::relational, &[(Tok::Eq, CmpOp::Eq), (Tok::Ne, CmpOp::Ne)])
    }

    fn relational(&mut self) -> Result<Node, ExprError> {
        self.comparisons(
            Self::unary,
            &[(Tok::Lt, CmpOp::Lt), (Tok::Le, CmpOp::Le), (Tok::Gt, CmpOp::Gt), (Tok::Ge, CmpOp::Ge)],
        )
    }

    /// Left-associative comparisons; each one after the first counts as a level of nesting
    /// (the tree grows one deeper per operator).
    fn comparisons(
        &mut self,
        next: fn(&mut Self) -> Result<Node, ExprError>,
        ops: &[(Tok, CmpOp)],
    ) -> Result<Node, ExprError> {
        let mut left = next(self)?;
        let mut levels = 0usize;
        while let Some(op) = self.peek().and_then(|t| ops.iter().find(|(tok, _)| tok == t).map(|(_, op)| *op)) {
            let at = self.offset();
            self.pos += 1;
            if levels > 0 {
                self.enter(at)?;
            }
            levels += 1;
            let right = next(self)?;
            left = Node::Cmp(op, Box::new(left), Box::new(right));
        }
        self.leave(levels.saturating_sub(1));
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.peek() == Some(&Tok::Not) {
            self.enter(self.offset())?;
            self.pos += 1;
            let inner = self.unary()?;
            self.leave(1);
            return Ok(Node::Not(Box::new(inner)));
        }
        self.postfix()
    }

    /// A primary followed by `.name` and `[index]` steps, kept as one flat node.
    fn postfix(&mut self) -> Result<Node, ExprError> {
        let base = self.primary()?;
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    let key = match self.peek() {
                        Some(Tok::Ident(name)) => name.clone(),
                        Some(Tok::Null) => "null".to_string(),
                        Some(Tok::Bool(b)) => b.to_string(),
                        _ => {
                            return Err(ExprError::new(self.offset(), "expected a property name after `.`")
                                .with_help("for names that are not plain words, index: `env['MY.VAR']`"));
                        }
                    };
                    self.pos += 1;
                    steps.push(Step::Prop(key));
                }
                Some(Tok::LBracket) => {
                    self.enter(self.offset())?;
                    self.pos += 1;
                    let index = self.or()?;
                    self.expect(&Tok::RBracket, "`]`")?;
                    self.leave(1);
                    steps.push(Step::Index(index));
                }
                _ => break,
            }
        }
        Ok(if steps.is_empty() { base } else { Node::Access { base: Box::new(base), steps } })
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
                self.enter(off)?;
                let inner = self.or()?;
                self.expect(&Tok::RParen, "`)`")?;
                self.leave(1);
                Ok(inner)
            }
            Tok::Ident(name) if self.peek() == Some(&Tok::LParen) => {
                self.enter(off)?;
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                } else {
                    loop {
                        args.push(self.or()?);
                        match self.peek() {
                            Some(Tok::Comma) => self.pos += 1,
                            _ => {
                                self.expect(&Tok::RParen, "`,` or `)`")?;
                                break;
                            }
                        }
                    }
                }
                self.leave(1);
                Ok(Node::Call { name, offset: off, args })
            }
            Tok::Ident(name) => Ok(Node::Context { name, offset: off }),
            other => Err(ExprError::new(off, format!("unexpected {}", describe(&other)))
                .with_help("expected a value: a literal, a context such as `env.NAME`, or a function call")),
        }
    }
}
