//! Recursive-descent / precedence-climbing parser for `Route.g4` + `Condition.g4`.

use crate::ast::{BinaryOp, Expr, Literal, Route, Sink, UnaryOp};
use crate::lexer::{Kind, Lexer, Token, escape_len};

/// Deepest expression tree (and deepest nesting of parentheses, calls and prefix operators)
/// the parser accepts; it keeps parsing, compiling and evaluation off deep recursion.
pub const MAX_DEPTH: usize = 256;

/// Why route text did not parse. `Display`: `column 12: expected INTO, found `WHER``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    /// 1-based character column in the route text (newlines count as one character).
    pub column: usize,
    /// What the parser could accept there, e.g. "WHERE or INTO".
    pub expected: String,
    /// What it found: a back-quoted token such as "`WHER`", or "end of input".
    pub found: String,
}

const SINK_FORMS: &str = "`$upstream` or `BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")`";

/// Parses one route rule: `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
///
/// # Errors
/// [`ParseError`] with the column of the first token that does not fit the grammar, including
/// an unknown sink or a `BrokeredEndpoint` string that is not `/modules/<m>/inputs/<i>`.
pub fn parse(text: &str) -> Result<Route, ParseError> {
    Parser {
        lex: Lexer::new(text),
        peeked: None,
        nesting: 0,
    }
    .route()
}

struct Parser<'s> {
    lex: Lexer<'s>,
    peeked: Option<Token<'s>>,
    nesting: usize,
}

fn err(tok: &Token<'_>, expected: impl Into<String>) -> ParseError {
    ParseError {
        column: tok.column,
        expected: expected.into(),
        found: tok.describe(),
    }
}

fn too_deep(tok: &Token<'_>) -> ParseError {
    err(tok, format!("at most {MAX_DEPTH} levels of nesting"))
}

fn binary_op(kind: Kind) -> Option<BinaryOp> {
    Some(match kind {
        Kind::Star => BinaryOp::Mul,
        Kind::Slash => BinaryOp::Div,
        Kind::Percent => BinaryOp::Mod,
        Kind::Plus => BinaryOp::Add,
        Kind::Minus => BinaryOp::Sub,
        Kind::Concat => BinaryOp::Concat,
        Kind::Lt => BinaryOp::Lt,
        Kind::Le => BinaryOp::Le,
        Kind::Gt => BinaryOp::Gt,
        Kind::Ge => BinaryOp::Ge,
        Kind::Eq => BinaryOp::Eq,
        Kind::Ne1 | Kind::Ne2 => BinaryOp::Ne,
        Kind::And => BinaryOp::And,
        Kind::Or => BinaryOp::Or,
        Kind::Coalesce => BinaryOp::Coalesce,
        _ => return None,
    })
}

/// Binds tighter than every binary operator: a prefix operator's operand is a primary.
const PREFIX_PRECEDENCE: u8 = 8;

impl<'s> Parser<'s> {
    fn next(&mut self) -> Token<'s> {
        self.peeked.take().unwrap_or_else(|| self.lex.next_token())
    }

    fn peek(&mut self) -> Token<'s> {
        match self.peeked {
            Some(t) => t,
            None => {
                let t = self.lex.next_token();
                self.peeked = Some(t);
                t
            }
        }
    }

    fn route(&mut self) -> Result<Route, ParseError> {
        let t = self.next();
        match t.kind {
            Kind::Select => {
                let star = self.next();
                if star.kind != Kind::Star {
                    return Err(err(&star, "`*` after SELECT"));
                }
                let from = self.next();
                if from.kind != Kind::From {
                    return Err(err(&from, "FROM"));
                }
            }
            Kind::From => {}
            _ => return Err(err(&t, "FROM or SELECT")),
        }
        let path = self.lex.source_path().map_err(|(t, after_slash)| {
            if after_slash {
                err(&t, "a path segment after `/`")
            } else {
                err(&t, "a source path such as `/messages/*`")
            }
        })?;
        let source = path.trim_end_matches(['*', '/']).to_owned();

        let mut condition = None;
        let mut t = self.next();
        if t.kind == Kind::Where {
            condition = Some(self.expr(1)?.0);
            t = self.next();
            if t.kind != Kind::Into {
                return Err(err(&t, "an operator or INTO"));
            }
        } else if t.kind != Kind::Into {
            return Err(err(&t, "WHERE or INTO"));
        }
        let sink = self.sink()?;
        let end = self.next();
        if end.kind != Kind::Eof {
            return Err(err(&end, "end of route"));
        }
        Ok(Route {
            source,
            condition,
            sink,
        })
    }

    fn sink(&mut self) -> Result<Sink, ParseError> {
        let t = self.next();
        match t.kind {
            Kind::SysProp if t.text[1..].eq_ignore_ascii_case("upstream") => Ok(Sink::Upstream),
            Kind::Id if t.text.eq_ignore_ascii_case("BrokeredEndpoint") => {
                let open = self.next();
                if open.kind != Kind::LParen {
                    return Err(err(&open, "`(` after BrokeredEndpoint"));
                }
                let s = self.next();
                if s.kind != Kind::Str {
                    return Err(self.string_error(&s, "an endpoint string"));
                }
                let value = unescape(&s.text[1..s.text.len() - 1]);
                let Some((module, input)) = module_input(&value) else {
                    return Err(err(
                        &s,
                        "an endpoint of the form \"/modules/<module>/inputs/<input>\"",
                    ));
                };
                let close = self.next();
                if close.kind != Kind::RParen {
                    return Err(err(&close, "`)`"));
                }
                Ok(Sink::ModuleInput { module, input })
            }
            _ => Err(err(&t, SINK_FORMS)),
        }
    }

    /// The error for a token where a string was wanted; an unterminated string gets a
    /// precise column (its bad escape, or the end of input).
    fn string_error(&mut self, t: &Token<'s>, expected: &str) -> ParseError {
        if t.kind != Kind::UnterminatedStr {
            return err(t, expected);
        }
        // The unterminated token stops either at the end of input or at a bad escape.
        let column = t.column + t.text.chars().count();
        let rest = self.lex.rest();
        if rest.is_empty() {
            ParseError {
                column,
                expected: format!("a closing {}", &t.text[..1]),
                found: "end of input".to_owned(),
            }
        } else {
            let bad: String = rest.chars().take(2).collect();
            ParseError {
                column,
                expected: "an escape: \\\" \\' \\\\ or \\uXXXX".to_owned(),
                found: format!("`{bad}`"),
            }
        }
    }

    fn enter(&mut self, t: &Token<'_>) -> Result<(), ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(too_deep(t));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    /// Precedence climbing; returns the expression and its tree depth.
    fn expr(&mut self, min_precedence: u8) -> Result<(Expr, usize), ParseError> {
        let (mut lhs, mut depth) = self.prefix()?;
        loop {
            let t = self.peek();
            let Some(op) = binary_op(t.kind) else { break };
            let p = op.precedence();
            if p < min_precedence {
                break;
            }
            self.next();
            self.enter(&t)?;
            let (rhs, rd) = self.expr(p + 1)?;
            self.leave();
            depth = depth.max(rd) + 1;
            if depth > MAX_DEPTH {
                return Err(too_deep(&t));
            }
            lhs = Expr::Binary {
                op,
                left: Box::new(lhs),
                right: Box::new(rhs),
            };
        }
        Ok((lhs, depth))
    }

    fn prefix(&mut self) -> Result<(Expr, usize), ParseError> {
        let t = self.next();
        let lit = |l| Ok((Expr::Literal(l), 1));
        match t.kind {
            Kind::LParen => {
                self.enter(&t)?;
                let inner = self.expr(1)?;
                self.leave();
                let close = self.next();
                if close.kind != Kind::RParen {
                    return Err(err(&close, "an operator or `)`"));
                }
                Ok(inner)
            }
            Kind::True => lit(Literal::Bool(true)),
            Kind::False => lit(Literal::Bool(false)),
            Kind::Null => lit(Literal::Null),
            Kind::Undefined => lit(Literal::Undefined),
            Kind::Str => lit(Literal::String(unescape(&t.text[1..t.text.len() - 1]))),
            Kind::UnterminatedStr => Err(self.string_error(&t, "an expression")),
            Kind::Integer | Kind::Real => lit(decimal(&t)?),
            Kind::Hex => lit(hex(&t)?),
            Kind::SysProp => Ok((
                Expr::SystemProperty {
                    name: t.text[1..].to_owned(),
                    escaped: false,
                },
                1,
            )),
            Kind::Id if self.peek().kind == Kind::LParen => self.call(t),
            Kind::Id => Ok((Expr::Property(t.text.to_owned()), 1)),
            Kind::LBrace => {
                let p = self.next();
                if p.kind != Kind::SysProp {
                    return Err(err(&p, "a `$` property after `{`"));
                }
                let close = self.next();
                if close.kind != Kind::RBrace {
                    return Err(err(&close, "`}`"));
                }
                Ok((
                    Expr::SystemProperty {
                        name: p.text[1..].to_owned(),
                        escaped: true,
                    },
                    1,
                ))
            }
            Kind::Minus | Kind::Not => {
                self.enter(&t)?;
                let (operand, d) = self.expr(PREFIX_PRECEDENCE)?;
                self.leave();
                if d + 1 > MAX_DEPTH {
                    return Err(too_deep(&t));
                }
                let op = if t.kind == Kind::Minus {
                    UnaryOp::Neg
                } else {
                    UnaryOp::Not
                };
                Ok((
                    Expr::Unary {
                        op,
                        operand: Box::new(operand),
                    },
                    d + 1,
                ))
            }
            _ => Err(err(&t, "an expression")),
        }
    }

    fn call(&mut self, name: Token<'s>) -> Result<(Expr, usize), ParseError> {
        self.next(); // `(`
        let mut args = Vec::new();
        let mut depth = 0;
        if self.peek().kind == Kind::RParen {
            self.next();
        } else {
            loop {
                self.enter(&name)?;
                let (a, d) = self.expr(1)?;
                self.leave();
                args.push(a);
                depth = depth.max(d);
                let t = self.next();
                match t.kind {
                    Kind::Comma => {}
                    Kind::RParen => break,
                    _ => return Err(err(&t, "an operator, `,` or `)`")),
                }
            }
        }
        if depth + 1 > MAX_DEPTH {
            return Err(too_deep(&name));
        }
        Ok((
            Expr::Call {
                function: name.text.to_owned(),
                args,
            },
            depth + 1,
        ))
    }
}

/// An `INTEGER_LITERAL` or `REAL_LITERAL`. Like Azure, a real without digits before its
/// exponent (`e5`) does not convert and is `undefined`.
fn decimal(t: &Token<'_>) -> Result<Literal, ParseError> {
    match t.text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(Literal::Number(n)),
        Ok(_) => Err(err(t, "a number within the range of a 64-bit float")),
        Err(_) => Ok(Literal::Undefined),
    }
}

/// A `HEX_INTEGER_LITERAL`, read as a 64-bit two's-complement integer (as .NET's `long`).
fn hex(t: &Token<'_>) -> Result<Literal, ParseError> {
    match u64::from_str_radix(&t.text[2..], 16) {
        #[allow(clippy::cast_possible_wrap, clippy::cast_precision_loss)]
        Ok(n) => Ok(Literal::Number(n as i64 as f64)),
        Err(_) => Err(err(t, "a hex number of at most 64 bits")),
    }
}

/// Resolves the escapes of a lexed string body (already validated by the lexer). A lone
/// UTF-16 surrogate becomes U+FFFD.
pub(crate) fn unescape(body: &str) -> String {
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    let mut pending_high: Option<u16> = None;
    while i < b.len() {
        if b[i] == b'\\' && escape_len(&b[i + 1..]) == 5 {
            let unit = u16::from_str_radix(&body[i + 2..i + 6], 16).unwrap_or(0xFFFD);
            i += 6;
            if let Some(high) = pending_high.take() {
                if (0xDC00..0xE000).contains(&unit) {
                    let c =
                        0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                    continue;
                }
                out.push('\u{FFFD}');
            }
            if (0xD800..0xDC00).contains(&unit) {
                pending_high = Some(unit);
            } else {
                out.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
            }
            continue;
        }
        if pending_high.take().is_some() {
            out.push('\u{FFFD}');
        }
        let c = body[i..].chars().next().unwrap_or('\u{FFFD}');
        if c == '\\' {
            // `\"`, `\'` or `\\`: the escaped character itself.
            let e = body[i + 1..].chars().next().unwrap_or('\\');
            out.push(e);
            i += 1 + e.len_utf8();
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    if pending_high.is_some() {
        out.push('\u{FFFD}');
    }
    out
}

/// Splits a `BrokeredEndpoint` argument. Like Azure: trim, drop one leading and one trailing
/// `/`, then exactly four `/`-separated items. Stricter than Azure: the first and third items
/// must be `modules` and `inputs` (any case) and the module and input names must be non-empty
/// without whitespace.
fn module_input(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    let s = s.strip_prefix('/').unwrap_or(s);
    let s = s.strip_suffix('/').unwrap_or(s);
    let items: Vec<&str> = s.split('/').collect();
    let [modules, module, inputs, input] = items.as_slice() else {
        return None;
    };
    let name_ok = |n: &str| !n.is_empty() && !n.chars().any(char::is_whitespace);
    (modules.eq_ignore_ascii_case("modules")
        && inputs.eq_ignore_ascii_case("inputs")
        && name_ok(module)
        && name_ok(input))
    .then(|| ((*module).to_owned(), (*input).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_resolves_all_escape_forms() {
        assert_eq!(unescape(r#"a\"b\'c\\d"#), "a\"b'c\\d");
        assert_eq!(unescape(r"\u00e9\uD83D\uDE00"), "é😀");
        assert_eq!(unescape(r"\uD83Dx"), "\u{FFFD}x");
    }

    #[test]
    fn module_input_forms() {
        assert_eq!(
            module_input(" /modules/m/inputs/i/ "),
            Some(("m".into(), "i".into()))
        );
        assert_eq!(
            module_input("modules/m/INPUTS/i"),
            Some(("m".into(), "i".into()))
        );
        assert_eq!(module_input("/modules/m/inputs"), None);
        assert_eq!(module_input("/modules/m/outputs/i"), None);
        assert_eq!(module_input("/modules//inputs/i"), None);
        assert_eq!(module_input("/modules/m/inputs/i/x"), None);
    }
}
