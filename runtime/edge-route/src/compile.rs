//! Compilation: names resolved to [`SysProp`]s, property keys and body paths; functions
//! resolved to [`Builtin`]s; operand types checked (Azure reports operand type errors at
//! compile time).
//!
//! Static types: every expression has a [`Ty`]. Application and system properties are
//! strings; `$body` queries are [`Ty::Any`] (known only per message). An operator or function
//! whose operand can never have the type it needs is a [`CompileProblem::OperandType`];
//! `Any` and the `undefined` literal are accepted everywhere (they give `undefined` at run time
//! when the type is wrong). Comparisons are the exception: they accept any operand types and
//! are `undefined` at run time unless both sides have the same type (a warning says so when the
//! types are known to differ).

use crate::ast::{BinaryOp, Expr, Literal, UnaryOp};
use crate::json::{self, Step};
use crate::parser::MAX_DEPTH;
use edge_core::message::SysProp;
use std::fmt;

/// What is wrong with a route's condition (or its table entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileProblem {
    /// A call to a function that is not a built-in.
    #[error("unknown function `{name}`")]
    UnknownFunction {
        /// The name as written.
        name: String,
    },
    /// A built-in called with the wrong number of arguments.
    #[error("`{function}` takes {expected} argument(s), found {found}")]
    Arity {
        /// The function name as written.
        function: String,
        /// How many it takes, e.g. "2 or 3".
        expected: String,
        /// How many were given.
        found: usize,
    },
    /// An operand that can never have the type the operator or function needs.
    #[error("{0}")]
    OperandType(Box<OperandTypeError>),
    /// A `$body.…` path outside the supported JSONPath subset.
    #[error("invalid body query `${query}`: {reason}")]
    BodyQuery {
        /// The query as written, without `$`.
        query: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `twin_change_includes` needs a single property path.
    #[error("twin_change_includes needs one property path such as `properties.desired.x`: {0}")]
    TwinChangeArgument(String),
    /// An expression tree built by hand deeper than the parser allows.
    #[error("the condition is nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A priority outside 0–9.
    #[error("priority {0} is outside 0-9")]
    Priority(u8),
    /// Two routes with the same name.
    #[error("duplicate route name")]
    DuplicateName,
}

/// An operand that can never have the type its operator or function needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperandTypeError {
    /// The whole sub-expression.
    pub expr: String,
    /// The operator (e.g. "`+`") or function (e.g. "`lower`").
    pub operator: String,
    /// The type needed, e.g. "a number".
    pub expected: String,
    /// The offending operand.
    pub operand: String,
    /// Its type, e.g. "a string".
    pub found: String,
}

impl fmt::Display for OperandTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in `{}`: {} needs {}, but `{}` is {}",
            self.expr, self.operator, self.expected, self.operand, self.found
        )
    }
}

/// Why [`crate::Router::compile`] refused a route table: the route's name and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route `{route}`: {problem}")]
pub struct CompileError {
    /// Name of the offending route.
    pub route: String,
    /// What is wrong.
    pub problem: CompileProblem,
}

/// Something that compiles but is almost certainly not what the author meant (Azure accepts
/// it too), e.g. a comparison that is always `undefined`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileWarning {
    /// Name of the route.
    pub route: String,
    /// What looks wrong.
    pub message: String,
}

impl fmt::Display for CompileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route `{}`: {}", self.route, self.message)
    }
}

/// Static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Num,
    Str,
    Bool,
    Null,
    Undef,
    /// Known only at run time (`$body` queries, coalesce of different types).
    Any,
}

impl Ty {
    fn article(self) -> &'static str {
        match self {
            Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Bool => "a bool",
            Ty::Null => "null",
            Ty::Undef => "undefined",
            Ty::Any => "of any type",
        }
    }

    fn is_concrete(self) -> bool {
        !matches!(self, Ty::Any | Ty::Undef)
    }
}

/// A built-in function (except `concat` and `twin_change_includes`, which have own nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsString,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Num,
    Str,
    NumOrStr,
    Anything,
}

struct Signature {
    builtin: Builtin,
    params: &'static [Param],
    /// How many trailing parameters may be left out.
    optional: usize,
    ret: Ty,
}

fn signature(name: &str) -> Option<Signature> {
    use Param::{Anything, Num, NumOrStr, Str};
    let (builtin, params, optional, ret): (Builtin, &'static [Param], usize, Ty) =
        match name.to_ascii_lowercase().as_str() {
            "abs" => (Builtin::Abs, &[Num], 0, Ty::Num),
            "exp" => (Builtin::Exp, &[Num], 0, Ty::Num),
            "power" => (Builtin::Power, &[Num, Num], 0, Ty::Num),
            "square" => (Builtin::Square, &[Num], 0, Ty::Num),
            "ceiling" => (Builtin::Ceiling, &[Num], 0, Ty::Num),
            "floor" => (Builtin::Floor, &[Num], 0, Ty::Num),
            "sign" => (Builtin::Sign, &[Num], 0, Ty::Num),
            "sqrt" => (Builtin::Sqrt, &[Num], 0, Ty::Num),
            "as_number" => (Builtin::AsNumber, &[NumOrStr], 0, Ty::Num),
            "is_bool" => (Builtin::IsBool, &[Anything], 0, Ty::Bool),
            "is_defined" => (Builtin::IsDefined, &[Anything], 0, Ty::Bool),
            "is_null" => (Builtin::IsNull, &[Anything], 0, Ty::Bool),
            "is_number" => (Builtin::IsNumber, &[Anything], 0, Ty::Bool),
            "is_string" => (Builtin::IsString, &[Anything], 0, Ty::Bool),
            "length" => (Builtin::Length, &[Str], 0, Ty::Num),
            "lower" => (Builtin::Lower, &[Str], 0, Ty::Str),
            "upper" => (Builtin::Upper, &[Str], 0, Ty::Str),
            "substring" => (Builtin::Substring, &[Str, Num, Num], 1, Ty::Str),
            "index_of" => (Builtin::IndexOf, &[Str, Str], 0, Ty::Num),
            "starts_with" => (Builtin::StartsWith, &[Str, Str], 0, Ty::Bool),
            "ends_with" => (Builtin::EndsWith, &[Str, Str], 0, Ty::Bool),
            "contains" => (Builtin::Contains, &[Str, Str], 0, Ty::Bool),
            _ => return None,
        };
    Some(Signature {
        builtin,
        params,
        optional,
        ret,
    })
}

fn accepts(p: Param, t: Ty) -> bool {
    matches!(t, Ty::Any | Ty::Undef)
        || match p {
            Param::Num => t == Ty::Num,
            Param::Str => t == Ty::Str,
            Param::NumOrStr => matches!(t, Ty::Num | Ty::Str),
            Param::Anything => true,
        }
}

/// A compile-time constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Const {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(Box<str>),
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// A compiled expression node. `text` is the source form of the sub-expression, kept only
/// when compiling for [`crate::explain`] (empty otherwise).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub text: Box<str>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Const(Const),
    /// A bare name: application property.
    AppProp(Box<str>),
    /// `{$name}` of a known system property.
    SysProp(SysProp),
    /// `$name`: the application property literally named `$name` if present, else the system
    /// property (`None`: not one this hub knows, so undefined).
    AppOrSys {
        key: Box<str>,
        sys: Option<SysProp>,
    },
    /// `{$body.path}` or `$body.path[...]`: a body query only.
    Body(Box<[Step]>),
    /// `$body.path`: the application property literally named `$body.path` if present, else
    /// the body query.
    AppOrBody {
        key: Box<str>,
        path: Box<[Step]>,
    },
    /// `twin_change_includes(path)` on a `/twinChangeNotifications` route.
    TwinIncludes(Box<[Step]>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    /// `||` and `concat(...)`.
    Concat(Box<[Node]>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Coalesce(Box<Node>, Box<Node>),
    Call(Builtin, Box<[Node]>),
}

/// Compiles one condition.
pub(crate) struct Compiler<'w> {
    /// The route's source is `/twinChangeNotifications`.
    pub twin_source: bool,
    /// Keep each node's source text (for explanations).
    pub keep_text: bool,
    /// Warnings found (message only; the caller adds the route name).
    pub warnings: &'w mut Vec<String>,
}

/// Whether a route source (already trimmed) is the twin change notification source.
pub(crate) fn is_twin_source(source: &str) -> bool {
    source.eq_ignore_ascii_case("/twinChangeNotifications")
}

impl Compiler<'_> {
    /// Compiles a route condition; warns when it can never be a bool.
    pub fn condition(&mut self, e: &Expr) -> Result<Node, CompileProblem> {
        let (node, ty) = self.expr(e, 1)?;
        if !matches!(ty, Ty::Bool | Ty::Any) {
            self.warnings.push(format!(
                "the condition `{e}` is {}, not a bool, so the route never matches",
                ty.article()
            ));
        }
        Ok(node)
    }

    fn node(&self, e: &Expr, kind: Kind) -> Node {
        Node {
            kind,
            text: if self.keep_text {
                e.to_string().into()
            } else {
                Box::default()
            },
        }
    }

    fn expr(&mut self, e: &Expr, depth: usize) -> Result<(Node, Ty), CompileProblem> {
        if depth > MAX_DEPTH {
            return Err(CompileProblem::TooDeep { max: MAX_DEPTH });
        }
        let (kind, ty) = match e {
            Expr::Literal(l) => match l {
                Literal::Bool(b) => (Kind::Const(Const::Bool(*b)), Ty::Bool),
                Literal::Null => (Kind::Const(Const::Null), Ty::Null),
                Literal::Undefined => (Kind::Const(Const::Undefined), Ty::Undef),
                Literal::Number(n) => (Kind::Const(Const::Number(*n)), Ty::Num),
                Literal::String(s) => (Kind::Const(Const::Str(s.as_str().into())), Ty::Str),
            },
            Expr::Property(name) => (Kind::AppProp(name.as_str().into()), Ty::Str),
            Expr::SystemProperty { name, escaped } => self.system_property(e, name, *escaped)?,
            Expr::Unary { op, operand } => {
                let (n, t) = self.expr(operand, depth + 1)?;
                match op {
                    UnaryOp::Neg => {
                        check(e, "`-`", "a number", operand, t, Param::Num)?;
                        (Kind::Neg(Box::new(n)), Ty::Num)
                    }
                    UnaryOp::Not => {
                        check_bool(e, "NOT", operand, t)?;
                        (Kind::Not(Box::new(n)), Ty::Bool)
                    }
                }
            }
            Expr::Binary { op, left, right } => self.binary(e, *op, left, right, depth)?,
            Expr::Call { function, args } => self.call(e, function, args, depth)?,
        };
        Ok((self.node(e, kind), ty))
    }

    fn system_property(
        &mut self,
        e: &Expr,
        name: &str,
        escaped: bool,
    ) -> Result<(Kind, Ty), CompileProblem> {
        let is_body = name
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case("body."));
        let has_brackets = name.contains(['[', ']']);
        if is_body {
            let path =
                json::parse_path(&name[5..]).map_err(|reason| CompileProblem::BodyQuery {
                    query: name.to_owned(),
                    reason,
                })?;
            let path = path.into_boxed_slice();
            // Names with brackets cannot be application properties (Azure skips the lookup).
            return Ok(if escaped || has_brackets {
                (Kind::Body(path), Ty::Any)
            } else {
                (
                    Kind::AppOrBody {
                        key: format!("${name}").into(),
                        path,
                    },
                    Ty::Any,
                )
            });
        }
        if has_brackets {
            self.warnings.push(format!(
                "`{e}`: `[...]` is only meaningful in `$body.` queries; this is always undefined"
            ));
            return Ok((Kind::Const(Const::Undefined), Ty::Undef));
        }
        let sys = SysProp::from_route_name(name);
        if escaped {
            return Ok(match sys {
                Some(p) => (Kind::SysProp(p), Ty::Str),
                None => {
                    self.warnings.push(format!(
                        "`{e}`: `{name}` is not a system property this hub sets; always undefined"
                    ));
                    (Kind::Const(Const::Undefined), Ty::Undef)
                }
            });
        }
        if sys.is_none() {
            self.warnings.push(format!(
                "`{e}`: `{name}` is not a system property this hub sets; only an application \
                 property named `${name}` can match"
            ));
        }
        Ok((
            Kind::AppOrSys {
                key: format!("${name}").into(),
                sys,
            },
            Ty::Str,
        ))
    }

    fn binary(
        &mut self,
        e: &Expr,
        op: BinaryOp,
        left: &Expr,
        right: &Expr,
        depth: usize,
    ) -> Result<(Kind, Ty), CompileProblem> {
        let (l, lt) = self.expr(left, depth + 1)?;
        let (r, rt) = self.expr(right, depth + 1)?;
        let sym = format!("`{}`", op.symbol());
        let arith = match op {
            BinaryOp::Mul => Some(Arith::Mul),
            BinaryOp::Div => Some(Arith::Div),
            BinaryOp::Mod => Some(Arith::Mod),
            BinaryOp::Add => Some(Arith::Add),
            BinaryOp::Sub => Some(Arith::Sub),
            _ => None,
        };
        let cmp = match op {
            BinaryOp::Lt => Some(Cmp::Lt),
            BinaryOp::Le => Some(Cmp::Le),
            BinaryOp::Gt => Some(Cmp::Gt),
            BinaryOp::Ge => Some(Cmp::Ge),
            BinaryOp::Eq => Some(Cmp::Eq),
            BinaryOp::Ne => Some(Cmp::Ne),
            _ => None,
        };
        if let Some(a) = arith {
            check(e, &sym, "numbers", left, lt, Param::Num)?;
            check(e, &sym, "numbers", right, rt, Param::Num)?;
            return Ok((Kind::Arith(a, Box::new(l), Box::new(r)), Ty::Num));
        }
        if let Some(c) = cmp {
            self.warn_comparison(e, lt, rt);
            return Ok((Kind::Cmp(c, Box::new(l), Box::new(r)), Ty::Bool));
        }
        Ok(match op {
            BinaryOp::Concat => {
                check(e, &sym, "strings", left, lt, Param::Str)?;
                check(e, &sym, "strings", right, rt, Param::Str)?;
                (Kind::Concat(vec![l, r].into_boxed_slice()), Ty::Str)
            }
            BinaryOp::And | BinaryOp::Or => {
                check_bool(e, op.symbol(), left, lt)?;
                check_bool(e, op.symbol(), right, rt)?;
                let (l, r) = (Box::new(l), Box::new(r));
                let kind = if op == BinaryOp::And {
                    Kind::And(l, r)
                } else {
                    Kind::Or(l, r)
                };
                (kind, Ty::Bool)
            }
            _ => {
                // `??`
                let ty = if lt == rt || lt == Ty::Undef {
                    rt
                } else {
                    Ty::Any
                };
                (Kind::Coalesce(Box::new(l), Box::new(r)), ty)
            }
        })
    }

    fn warn_comparison(&mut self, e: &Expr, lt: Ty, rt: Ty) {
        if matches!(lt, Ty::Null | Ty::Undef) || matches!(rt, Ty::Null | Ty::Undef) {
            self.warnings.push(format!(
                "`{e}`: a comparison with null or undefined is always undefined; use is_null() \
                 or is_defined()"
            ));
        } else if lt.is_concrete() && rt.is_concrete() && lt != rt {
            let hint = if Ty::Num == lt || Ty::Num == rt {
                " (properties are strings: use as_number(...))"
            } else {
                ""
            };
            self.warnings.push(format!(
                "`{e}` compares {} with {}, which is always undefined{hint}",
                lt.article(),
                rt.article()
            ));
        }
    }

    fn call(
        &mut self,
        e: &Expr,
        function: &str,
        args: &[Expr],
        depth: usize,
    ) -> Result<(Kind, Ty), CompileProblem> {
        let lower = function.to_ascii_lowercase();
        if lower == "twin_change_includes" {
            return self.twin_change_includes(e, function, args);
        }
        let arity = |expected: &str| CompileProblem::Arity {
            function: function.to_owned(),
            expected: expected.to_owned(),
            found: args.len(),
        };
        if lower == "concat" {
            if args.len() < 2 {
                return Err(arity("at least 2"));
            }
            let mut nodes = Vec::with_capacity(args.len());
            for a in args {
                let (n, t) = self.expr(a, depth + 1)?;
                check(e, &format!("`{function}`"), "strings", a, t, Param::Str)?;
                nodes.push(n);
            }
            return Ok((Kind::Concat(nodes.into_boxed_slice()), Ty::Str));
        }
        let Some(sig) = signature(function) else {
            return Err(CompileProblem::UnknownFunction {
                name: function.to_owned(),
            });
        };
        let max = sig.params.len();
        let min = max - sig.optional;
        if args.len() < min || args.len() > max {
            return Err(arity(&if min == max {
                min.to_string()
            } else {
                format!("{min} or {max}")
            }));
        }
        let mut nodes = Vec::with_capacity(args.len());
        for (a, p) in args.iter().zip(sig.params) {
            let (n, t) = self.expr(a, depth + 1)?;
            let expected = match p {
                Param::Num => "a number",
                Param::Str => "a string",
                Param::NumOrStr => "a number or a string",
                Param::Anything => "a value",
            };
            check(e, &format!("`{function}`"), expected, a, t, *p)?;
            nodes.push(n);
        }
        Ok((Kind::Call(sig.builtin, nodes.into_boxed_slice()), sig.ret))
    }

    fn twin_change_includes(
        &mut self,
        e: &Expr,
        function: &str,
        args: &[Expr],
    ) -> Result<(Kind, Ty), CompileProblem> {
        let [arg] = args else {
            return Err(CompileProblem::Arity {
                function: function.to_owned(),
                expected: "1".to_owned(),
                found: args.len(),
            });
        };
        let Expr::Property(path) = arg else {
            return Err(CompileProblem::TwinChangeArgument(format!(
                "`{arg}` is not a path"
            )));
        };
        let steps = json::parse_path(path).map_err(CompileProblem::TwinChangeArgument)?;
        if self.twin_source {
            Ok((Kind::TwinIncludes(steps.into_boxed_slice()), Ty::Bool))
        } else {
            self.warnings.push(format!(
                "`{e}` is only defined for routes FROM /twinChangeNotifications; always undefined"
            ));
            Ok((Kind::Const(Const::Undefined), Ty::Undef))
        }
    }
}

/// Checks one operand against a parameter type.
fn check(
    e: &Expr,
    operator: &str,
    expected: &str,
    operand: &Expr,
    t: Ty,
    p: Param,
) -> Result<(), CompileProblem> {
    if accepts(p, t) {
        return Ok(());
    }
    let is_property = matches!(operand, Expr::Property(_) | Expr::SystemProperty { .. });
    let hint = if p == Param::Num && t == Ty::Str && is_property {
        " (properties are strings: use as_number(...))"
    } else {
        ""
    };
    Err(CompileProblem::OperandType(Box::new(OperandTypeError {
        expr: e.to_string(),
        operator: operator.to_owned(),
        expected: expected.to_owned(),
        operand: operand.to_string(),
        found: format!("{}{hint}", t.article()),
    })))
}

/// `NOT`, `AND`, `OR` take bools, `null`, and values known only at run time.
fn check_bool(e: &Expr, operator: &str, operand: &Expr, t: Ty) -> Result<(), CompileProblem> {
    if matches!(t, Ty::Bool | Ty::Null | Ty::Any | Ty::Undef) {
        return Ok(());
    }
    Err(CompileProblem::OperandType(Box::new(OperandTypeError {
        expr: e.to_string(),
        operator: operator.to_owned(),
        expected: "a bool".to_owned(),
        operand: operand.to_string(),
        found: t.article().to_owned(),
    })))
}
