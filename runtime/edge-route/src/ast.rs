//! The syntax tree of a route and its canonical text form.
//!
//! [`Route`]'s `Display` prints canonical text: keywords upper-case, one space around every
//! binary operator, the fewest parentheses that keep the tree, strings in double quotes and
//! `!=` for both not-equal spellings. `parse(&route.to_string())` gives the route back
//! (property-tested in `tests/roundtrip.rs`).

use std::fmt;

/// A parsed route rule: `FROM <source> [WHERE <condition>] INTO <sink>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The source path as written, with trailing `*` and `/` trimmed (`/messages/*` →
    /// `/messages`, `/*` → the empty string, which matches every message).
    pub source: String,
    /// The `WHERE` condition; `None` when there is none (the route then always matches).
    pub condition: Option<Expr>,
    /// Where matching messages go.
    pub sink: Sink,
}

/// A route's destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    /// `$upstream`: IoT Hub (or the parent hub in nested edge).
    Upstream,
    /// `BrokeredEndpoint("/modules/<module>/inputs/<input>")`: a module's input.
    ModuleInput {
        /// Module id, as written.
        module: String,
        /// Input name, as written.
        input: String,
    },
}

/// A condition expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value.
    Literal(Literal),
    /// A bare name: an application property.
    Property(String),
    /// `$name` (`escaped: false`) or `{$name}` (`escaped: true`); `name` is without the `$`.
    /// `$body.…` names are body queries.
    SystemProperty {
        /// The text after `$`, e.g. `connectionModuleId` or `body.a.b[0]`.
        name: String,
        /// Written `{$name}`: skip the application-property lookup.
        escaped: bool,
    },
    /// A built-in function call; `function` is as written (names are case-insensitive).
    Call {
        /// Function name as written.
        function: String,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// A prefix operator.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// Its operand.
        operand: Box<Expr>,
    },
    /// A binary operator.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `true` / `false` (lower-case only).
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
    /// An integer, hex or real literal; always finite.
    Number(f64),
    /// A string literal, escapes resolved.
    String(String),
}

/// A prefix operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-`: arithmetic negation.
    Neg,
    /// `NOT`: three-valued negation (`NOT undefined` is undefined).
    Not,
}

/// A binary operator, in the grammar's precedence groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `||`: string concatenation.
    Concat,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `??`: the left value if it is defined, else the right one.
    Coalesce,
}

impl BinaryOp {
    /// Binding strength: higher binds tighter. All binary operators are left-associative;
    /// the prefix operators bind tighter than all of them.
    #[must_use]
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Coalesce => 1,
            BinaryOp::Or => 2,
            BinaryOp::And => 3,
            BinaryOp::Eq | BinaryOp::Ne => 4,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 5,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Concat => 6,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 7,
        }
    }

    /// The operator's canonical spelling.
    #[must_use]
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "||",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
            BinaryOp::Coalesce => "??",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.is_empty() {
            f.write_str("FROM /*")?;
        } else {
            write!(f, "FROM {}", self.source)?;
        }
        if let Some(c) = &self.condition {
            write!(f, " WHERE {c}")?;
        }
        write!(f, " INTO {}", self.sink)
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Upstream => f.write_str("$upstream"),
            Sink::ModuleInput { module, input } => {
                f.write_str("BrokeredEndpoint(")?;
                write_string(f, &format!("/modules/{module}/inputs/{input}"))?;
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(l) => l.fmt(f),
            Expr::Property(name) => f.write_str(name),
            Expr::SystemProperty {
                name,
                escaped: false,
            } => write!(f, "${name}"),
            Expr::SystemProperty {
                name,
                escaped: true,
            } => write!(f, "{{${name}}}"),
            Expr::Call { function, args } => {
                write!(f, "{function}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    a.fmt(f)?;
                }
                f.write_str(")")
            }
            Expr::Unary { op, operand } => {
                // `-x` would lex as one name and `-5` as a negative literal, so a space
                // always follows the operator.
                f.write_str(match op {
                    UnaryOp::Neg => "- ",
                    UnaryOp::Not => "NOT ",
                })?;
                if matches!(**operand, Expr::Binary { .. }) {
                    write!(f, "({operand})")
                } else {
                    operand.fmt(f)
                }
            }
            Expr::Binary { op, left, right } => {
                let p = op.precedence();
                write_operand(f, left, |q| q < p)?;
                // Spaces are required: operator characters such as `+ - * % ! |` are legal
                // inside names, so `a+b` is one name.
                write!(f, " {} ", op.symbol())?;
                write_operand(f, right, |q| q <= p)
            }
        }
    }
}

fn write_operand(
    f: &mut fmt::Formatter<'_>,
    e: &Expr,
    needs_parens: impl Fn(u8) -> bool,
) -> fmt::Result {
    match e {
        Expr::Binary { op, .. } if needs_parens(op.precedence()) => write!(f, "({e})"),
        _ => fmt::Display::fmt(e, f),
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(true) => f.write_str("true"),
            Literal::Bool(false) => f.write_str("false"),
            Literal::Null => f.write_str("null"),
            Literal::Undefined => f.write_str("undefined"),
            Literal::Number(n) => write_number(f, *n),
            Literal::String(s) => write_string(f, s),
        }
    }
}

/// Writes a finite number so that the route lexer reads back the same `f64`.
pub(crate) fn write_number(f: &mut impl fmt::Write, n: f64) -> fmt::Result {
    let a = n.abs();
    if a != 0.0 && !(1e-5..1e16).contains(&a) {
        write!(f, "{n:e}")
    } else {
        write!(f, "{n}")
    }
}

/// Writes a double-quoted string literal, escaping `"` and `\`.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c => fmt::Write::write_char(f, c)?,
        }
    }
    f.write_str("\"")
}
