//! Evaluation of compiled conditions against one message.
//!
//! Values borrow from the message, the compiled route and the (lazily decoded) body. Heap use
//! per evaluation: none for properties, system properties, numbers, bools and comparisons;
//! `$body` validates the JSON once per message (no allocation for UTF-8 bodies; UTF-16/32
//! bodies are decoded into one `String`), and a body string with escapes is decoded into a
//! `String`; functions that build strings (`||`, `concat`, `lower`, `upper`, `substring` of a
//! built string) allocate their result.

use crate::ast::write_number;
use crate::compile::{Arith, Builtin, Cmp, Const, Kind, Node};
use crate::json::{self, Found, Step};
use edge_core::Message;
use edge_core::message::SysProp;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;
use std::fmt;

/// A run-time value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(Cow<'a, str>),
}

impl Value<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Undefined => "undefined",
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::Str(_) => "string",
        }
    }

    fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    fn truth(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Undefined => f.write_str("undefined"),
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) if n.is_finite() => write_number(f, *n),
            Value::Number(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "{:?}", s.as_ref()),
        }
    }
}

/// Records evaluation steps; the router uses [`NoTrace`], which compiles away.
pub(crate) trait Tracer {
    /// Whether steps are recorded at all (guards the cost of building reasons).
    const ON: bool;
    /// `node` evaluated to `value`; `why` explains an undefined result.
    fn step(&mut self, node: &Node, value: &Value<'_>, why: Option<String>);
    /// `node` was not evaluated (short-circuit).
    fn skipped(&mut self, node: &Node, because: &str);
}

/// The no-op tracer.
pub(crate) struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    fn step(&mut self, _: &Node, _: &Value<'_>, _: Option<String>) {}
    fn skipped(&mut self, _: &Node, _: &str) {}
}

/// Why a body is not queryable.
type BodyMiss = &'static str;

/// Per-message evaluation state: the message and its lazily decoded, validated JSON body.
pub(crate) struct Ctx<'m> {
    msg: &'m Message,
    /// For `$body`: requires the JSON content type and a supported encoding.
    body: OnceCell<Result<Cow<'m, str>, BodyMiss>>,
    /// For `twin_change_includes`: the hub builds these bodies, so no content type is needed.
    twin: OnceCell<Result<Cow<'m, str>, BodyMiss>>,
}

impl<'m> Ctx<'m> {
    pub fn new(msg: &'m Message) -> Self {
        Self {
            msg,
            body: OnceCell::new(),
            twin: OnceCell::new(),
        }
    }

    fn body(&self) -> Result<&str, BodyMiss> {
        self.body
            .get_or_init(|| {
                let sys = &self.msg.system;
                let json = sys
                    .get(SysProp::ContentType)
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
                if !json {
                    return Err("$contentType is not application/json");
                }
                let Some(encoding) = sys.get(SysProp::ContentEncoding) else {
                    return Err("$contentEncoding is not set (utf-8, utf-16 or utf-32)");
                };
                decode_json(&self.msg.body, encoding)
            })
            .as_deref()
            .map_err(|e| *e)
    }

    fn twin_body(&self) -> Result<&str, BodyMiss> {
        self.twin
            .get_or_init(|| {
                let encoding = self
                    .msg
                    .system
                    .get(SysProp::ContentEncoding)
                    .unwrap_or("utf-8");
                decode_json(&self.msg.body, encoding)
            })
            .as_deref()
            .map_err(|e| *e)
    }
}

/// Decodes a body in a supported encoding and checks it is one JSON value.
fn decode_json<'m>(body: &'m [u8], encoding: &str) -> Result<Cow<'m, str>, BodyMiss> {
    let text: Cow<'m, str> = if encoding.eq_ignore_ascii_case("utf-8") {
        let b = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        Cow::Borrowed(std::str::from_utf8(b).map_err(|_| "the body is not valid UTF-8")?)
    } else if encoding.eq_ignore_ascii_case("utf-16") {
        if !body.len().is_multiple_of(2) {
            return Err("the body is not valid UTF-16");
        }
        let units = body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let s: String = char::decode_utf16(units)
            .collect::<Result<_, _>>()
            .map_err(|_| "the body is not valid UTF-16")?;
        Cow::Owned(s.strip_prefix('\u{FEFF}').map(str::to_owned).unwrap_or(s))
    } else if encoding.eq_ignore_ascii_case("utf-32") {
        if !body.len().is_multiple_of(4) {
            return Err("the body is not valid UTF-32");
        }
        let s: String = body
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<_>>()
            .ok_or("the body is not valid UTF-32")?;
        Cow::Owned(s.strip_prefix('\u{FEFF}').map(str::to_owned).unwrap_or(s))
    } else {
        return Err("$contentEncoding is not utf-8, utf-16 or utf-32");
    };
    if json::validate(&text) {
        Ok(text)
    } else {
        Err("the body is not valid JSON")
    }
}

/// Evaluates `n` for the message in `cx`.
pub(crate) fn eval<'a, 'm: 'a, T: Tracer>(n: &'a Node, cx: &'a Ctx<'m>, t: &mut T) -> Value<'a> {
    match &n.kind {
        Kind::Const(c) => match c {
            Const::Undefined => Value::Undefined,
            Const::Null => Value::Null,
            Const::Bool(b) => Value::Bool(*b),
            Const::Number(x) => Value::Number(*x),
            Const::Str(s) => Value::Str(Cow::Borrowed(s)),
        },
        Kind::AppProp(key) => {
            let v = str_or_undefined(cx.msg.property(key));
            if T::ON {
                t.step(n, &v, Some(format!("no application property `{key}`")));
            }
            v
        }
        Kind::SysProp(p) => {
            let v = str_or_undefined(cx.msg.system.get(*p));
            if T::ON {
                t.step(n, &v, Some("the system property is not set".to_owned()));
            }
            v
        }
        Kind::AppOrSys { key, sys } => {
            let v = match cx.msg.property(key) {
                Some(s) => Value::Str(Cow::Borrowed(s)),
                None => str_or_undefined(sys.and_then(|p| cx.msg.system.get(p))),
            };
            if T::ON {
                let why = if sys.is_some() {
                    format!(
                        "neither the system property nor an application property `{key}` is set"
                    )
                } else {
                    format!("no application property `{key}`, and it is no system property")
                };
                t.step(n, &v, Some(why));
            }
            v
        }
        Kind::Body(path) => body_query(n, cx, path, t),
        Kind::AppOrBody { key, path } => match cx.msg.property(key) {
            Some(s) => {
                let v = Value::Str(Cow::Borrowed(s));
                if T::ON {
                    t.step(n, &v, None);
                }
                v
            }
            None => body_query(n, cx, path, t),
        },
        Kind::TwinIncludes(path) => {
            let (v, why) = match cx.twin_body() {
                Ok(doc) => (Value::Bool(json::lookup(doc, path) != Found::Missing), ""),
                Err(miss) => (Value::Undefined, miss),
            };
            if T::ON {
                t.step(n, &v, Some(why.to_owned()));
            }
            v
        }
        Kind::Neg(x) => {
            let a = eval(x, cx, t);
            let v = match a {
                Value::Number(x) => Value::Number(-x),
                _ => Value::Undefined,
            };
            if T::ON {
                t.step(n, &v, Some(not_a(x, &a, "a number")));
            }
            v
        }
        Kind::Not(x) => {
            let a = eval(x, cx, t);
            let v = a.truth().map_or(Value::Undefined, |b| Value::Bool(!b));
            if T::ON {
                t.step(n, &v, Some(not_a(x, &a, "a bool")));
            }
            v
        }
        Kind::Arith(op, l, r) => {
            let a = eval(l, cx, t);
            let b = eval(r, cx, t);
            let v = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => finite(match op {
                    Arith::Mul => x * y,
                    Arith::Div => x / y,
                    Arith::Mod => x % y,
                    Arith::Add => x + y,
                    Arith::Sub => x - y,
                }),
                _ => Value::Undefined,
            };
            if T::ON {
                t.step(n, &v, Some(operands_why(&[(l, &a), (r, &b)], "a number")));
            }
            v
        }
        Kind::Concat(parts) => concat(n, parts, cx, t),
        Kind::Cmp(op, l, r) => {
            let a = eval(l, cx, t);
            let b = eval(r, cx, t);
            let v = compare(*op, &a, &b).map_or(Value::Undefined, Value::Bool);
            if T::ON {
                t.step(n, &v, Some(compare_why(l, &a, r, &b)));
            }
            v
        }
        Kind::And(l, r) | Kind::Or(l, r) => {
            let is_and = matches!(n.kind, Kind::And(..));
            let av = eval(l, cx, t);
            let a = av.truth();
            // Short-circuit: `false AND x` is false and `true OR x` is true for every x.
            if a == Some(!is_and) {
                if T::ON {
                    let because = if is_and {
                        "the left side is false"
                    } else {
                        "the left side is true"
                    };
                    t.skipped(r, because);
                }
                let v = Value::Bool(!is_and);
                if T::ON {
                    t.step(n, &v, None);
                }
                return v;
            }
            let bv = eval(r, cx, t);
            let b = bv.truth();
            let v = match (a, b) {
                (_, Some(x)) if x != is_and => Value::Bool(x),
                (Some(x), Some(y)) => Value::Bool(if is_and { x && y } else { x || y }),
                _ => Value::Undefined,
            };
            if T::ON {
                t.step(n, &v, Some(operands_why(&[(l, &av), (r, &bv)], "a bool")));
            }
            v
        }
        Kind::Coalesce(l, r) => {
            let a = eval(l, cx, t);
            let v = if a.is_undefined() {
                eval(r, cx, t)
            } else {
                if T::ON {
                    t.skipped(r, "the left side is defined");
                }
                a
            };
            if T::ON {
                t.step(n, &v, Some("both sides are undefined".to_owned()));
            }
            v
        }
        Kind::Call(f, args) => call(n, *f, args, cx, t),
    }
}

fn str_or_undefined(s: Option<&str>) -> Value<'_> {
    s.map_or(Value::Undefined, |s| Value::Str(Cow::Borrowed(s)))
}

fn finite<'a>(x: f64) -> Value<'a> {
    if x.is_finite() {
        Value::Number(x)
    } else {
        Value::Undefined
    }
}

fn body_query<'a, T: Tracer>(n: &'a Node, cx: &'a Ctx<'_>, path: &[Step], t: &mut T) -> Value<'a> {
    let (v, why) = match cx.body() {
        Ok(doc) => match json::lookup(doc, path) {
            Found::Missing => (Value::Undefined, "the body has no value at this path"),
            Found::Container => (Value::Undefined, "the value is an object or array"),
            Found::Null => (Value::Null, ""),
            Found::Bool(b) => (Value::Bool(b), ""),
            Found::Number(x) => (Value::Number(x), ""),
            Found::Str(s) => (Value::Str(s), ""),
        },
        Err(miss) => (Value::Undefined, miss),
    };
    if T::ON {
        t.step(n, &v, Some(why.to_owned()));
    }
    v
}

fn concat<'a, 'm: 'a, T: Tracer>(
    n: &'a Node,
    parts: &'a [Node],
    cx: &'a Ctx<'m>,
    t: &mut T,
) -> Value<'a> {
    let mut out = String::new();
    let mut ok = true;
    let mut why = None;
    for p in parts {
        let v = eval(p, cx, t);
        match &v {
            Value::Str(s) if ok => out.push_str(s),
            _ if ok => {
                ok = false;
                if T::ON {
                    why = Some(not_a(p, &v, "a string"));
                }
            }
            _ => {}
        }
    }
    let v = if ok {
        Value::Str(Cow::Owned(out))
    } else {
        Value::Undefined
    };
    if T::ON {
        t.step(n, &v, why);
    }
    v
}

/// Same-type comparison; `None` (undefined) for different types, null or undefined.
fn compare(op: Cmp, a: &Value<'_>, b: &Value<'_>) -> Option<bool> {
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.partial_cmp(y)?,
        (Value::Str(x), Value::Str(y)) => x.as_ref().cmp(y.as_ref()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => return None,
    };
    Some(match op {
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
    })
}

fn compare_why(l: &Node, a: &Value<'_>, r: &Node, b: &Value<'_>) -> String {
    for (n, v) in [(l, a), (r, b)] {
        match v {
            Value::Undefined => return format!("{} is not defined", n.text),
            Value::Null => return format!("{} is null", n.text),
            _ => {}
        }
    }
    format!("cannot compare {} with {}", a.type_name(), b.type_name())
}

fn not_a(n: &Node, v: &Value<'_>, want: &str) -> String {
    if v.is_undefined() {
        format!("{} is undefined", n.text)
    } else {
        format!("{} is {}, not {want}", n.text, v.type_name())
    }
}

fn operands_why(ops: &[(&Node, &Value<'_>)], want: &str) -> String {
    let wanted = |v: &Value<'_>| match want {
        "a number" => matches!(v, Value::Number(_)),
        "a string" => matches!(v, Value::Str(_)),
        _ => matches!(v, Value::Bool(_)),
    };
    ops.iter().find(|(_, v)| !wanted(v)).map_or_else(
        || "the result is not a finite number".to_owned(),
        |(n, v)| not_a(n, v, want),
    )
}

fn num(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Number(x) => Some(*x),
        _ => None,
    }
}

/// A non-negative integral number as an index.
fn index(v: &Value<'_>) -> Option<usize> {
    let x = num(v)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (x >= 0.0 && x.fract() == 0.0 && x <= 9e15).then_some(x as usize)
}

#[allow(clippy::cast_precision_loss)]
fn count(n: usize) -> f64 {
    n as f64
}

fn call<'a, 'm: 'a, T: Tracer>(
    n: &'a Node,
    f: Builtin,
    args: &'a [Node],
    cx: &'a Ctx<'m>,
    t: &mut T,
) -> Value<'a> {
    let mut vals: [Value<'a>; 3] = [Value::Undefined, Value::Undefined, Value::Undefined];
    for (slot, a) in vals.iter_mut().zip(args) {
        *slot = eval(a, cx, t);
    }
    let [a, b, c] = vals;
    let math = |g: fn(f64) -> f64| num(&a).map_or(Value::Undefined, |x| finite(g(x)));
    let strs = |g: fn(&str, &str) -> bool| match (&a, &b) {
        (Value::Str(x), Value::Str(y)) => Value::Bool(g(x, y)),
        _ => Value::Undefined,
    };
    let v = match f {
        Builtin::Abs => math(f64::abs),
        Builtin::Exp => math(f64::exp),
        Builtin::Square => math(|x| x * x),
        Builtin::Ceiling => math(f64::ceil),
        Builtin::Floor => math(f64::floor),
        Builtin::Sqrt => math(f64::sqrt),
        Builtin::Sign => math(|x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Builtin::Power => match (num(&a), num(&b)) {
            (Some(x), Some(y)) => finite(x.powf(y)),
            _ => Value::Undefined,
        },
        Builtin::AsNumber => match &a {
            Value::Number(x) => Value::Number(*x),
            Value::Str(s) => match s.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Value::Number(x),
                _ => Value::Undefined,
            },
            _ => Value::Undefined,
        },
        Builtin::IsBool => Value::Bool(matches!(a, Value::Bool(_))),
        Builtin::IsDefined => Value::Bool(!a.is_undefined()),
        Builtin::IsNull => Value::Bool(matches!(a, Value::Null)),
        Builtin::IsNumber => Value::Bool(matches!(a, Value::Number(_))),
        Builtin::IsString => Value::Bool(matches!(a, Value::Str(_))),
        Builtin::Length => match &a {
            Value::Str(s) => Value::Number(count(s.chars().count())),
            _ => Value::Undefined,
        },
        Builtin::Lower => match &a {
            Value::Str(s) => Value::Str(Cow::Owned(s.to_lowercase())),
            _ => Value::Undefined,
        },
        Builtin::Upper => match &a {
            Value::Str(s) => Value::Str(Cow::Owned(s.to_uppercase())),
            _ => Value::Undefined,
        },
        Builtin::Substring => substring(&a, &b, if args.len() > 2 { Some(&c) } else { None }),
        Builtin::IndexOf => match (&a, &b) {
            (Value::Str(s), Value::Str(frag)) => Value::Number(
                s.find(frag.as_ref())
                    .map_or(-1.0, |i| count(s[..i].chars().count())),
            ),
            _ => Value::Undefined,
        },
        Builtin::StartsWith => strs(|s, p| s.starts_with(p)),
        Builtin::EndsWith => strs(|s, p| s.ends_with(p)),
        Builtin::Contains => strs(|s, p| s.contains(p)),
    };
    if T::ON {
        let why = args
            .iter()
            .zip([&a, &b, &c])
            .find(|(_, v)| v.is_undefined())
            .map_or_else(
                || "an argument has the wrong type or is out of range".to_owned(),
                |(n, v)| not_a(n, v, "defined"),
            );
        t.step(n, &v, Some(why));
    }
    v
}

/// `substring(s, start[, length])` in characters; undefined when out of range.
fn substring<'a>(s: &Value<'a>, start: &Value<'_>, len: Option<&Value<'_>>) -> Value<'a> {
    let Value::Str(s) = s else {
        return Value::Undefined;
    };
    let Some(start) = index(start) else {
        return Value::Undefined;
    };
    let total = s.chars().count();
    let end = match len {
        None => Some(total),
        Some(l) => index(l).and_then(|l| start.checked_add(l)),
    };
    let Some(end) = end.filter(|e| start <= total && *e <= total) else {
        return Value::Undefined;
    };
    let byte = |k: usize| s.char_indices().nth(k).map_or(s.len(), |(i, _)| i);
    let (from, to) = (byte(start), byte(end));
    match s {
        Cow::Borrowed(b) => {
            let b: &'a str = b;
            Value::Str(Cow::Borrowed(&b[from..to]))
        }
        Cow::Owned(o) => Value::Str(Cow::Owned(o[from..to].to_owned())),
    }
}
