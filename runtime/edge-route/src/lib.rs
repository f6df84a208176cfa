//! The Azure IoT Edge route language: [`parse`] → [`Router::compile`] → [`Router::route`],
//! plus [`explain`] for `edgectl route eval`. No IO.
//!
//! ```
//! use edge_core::{Message, message::SysProp};
//! use edge_route::{NamedRoute, Router, Sink, parse};
//!
//! let route = parse(
//!     r#"FROM /messages/modules/sensor/* WHERE $body.temp > 30 AND alert = 'on'
//!        INTO BrokeredEndpoint("/modules/filter/inputs/in")"#,
//! )?;
//! let router = Router::compile(vec![NamedRoute::new("hot", route)])?;
//!
//! let msg = Message::new(&br#"{"temp": 42}"#[..])
//!     .with_system(SysProp::ConnectionModuleId, "sensor")
//!     .with_system(SysProp::OutputName, "out")
//!     .with_system(SysProp::ContentType, "application/json")
//!     .with_system(SysProp::ContentEncoding, "utf-8")
//!     .with_property("alert", "on");
//! let mut hits = Vec::with_capacity(4); // reuse across messages (see "Allocation" below)
//! router.route(&msg, &mut hits);
//! assert_eq!(hits.len(), 1);
//! assert_eq!(*hits[0].sink, Sink::ModuleInput { module: "filter".into(), input: "in".into() });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Router::route_from`] and [`explain_from`] take an explicit source (for
//! `/twinChangeNotifications`); [`Router::warnings`] lists routes that compile but are always
//! undefined somewhere (worth logging when a table is installed); [`Router::sinks`] lists the
//! distinct sinks.
//!
//! # Layout
//! - `lexer`: Azure's `GrammarLexer.g4` tokens with ANTLR's longest-match rule.
//! - `parser` ([`parse`], [`ParseError`]): `Route.g4` + `Condition.g4` by precedence climbing.
//! - `ast` ([`Route`], [`Expr`], [`Sink`], …): the tree and its canonical `Display`.
//! - `compile` ([`CompileError`], [`CompileWarning`]): name resolution, function lookup and
//!   operand type checks; produces the evaluation tree.
//! - `eval`: three-valued evaluation against a [`edge_core::Message`].
//! - `json`: allocation-free JSON validation and path lookup for `$body` queries.
//! - `router` ([`Router`], [`NamedRoute`], [`Hit`], [`message_source`]): the compiled table.
//! - `explain` ([`explain`], [`Explanation`], [`Verdict`]): evaluation with recorded steps.
//!
//! # The language (as in Azure; see `AZURE-COMPAT.md` "Route language")
//! - `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`; keywords and `AND OR NOT`
//!   are case-insensitive, `true false null undefined` lower-case only; `/* … */` comments.
//! - Source: trailing `*` and `/` are trimmed, then `source + "/"` must be a case-insensitive
//!   prefix of the message's source path + `/` ([`message_source`]): `/messages/*` matches
//!   everything, `/messages/modules/m/*` matches every output of module `m`.
//! - Sinks: `$upstream` and `BrokeredEndpoint("/modules/<m>/inputs/<i>")` (names
//!   case-insensitive); anything else is a [`ParseError`] at the sink's column.
//! - Operators by precedence, tightest first: prefix `-` and `NOT` (so `NOT a = b` is
//!   `(NOT a) = b`, as in Azure's grammar); `* / %`; `+ - ||` (`||` concatenates strings);
//!   `< <= > >=`; `= != <>`; `AND`; `OR`; `??` (left if defined, else right). All binary
//!   operators are left-associative.
//! - Names: a bare `name` is an application property. `$name` is the application property
//!   literally named `$name` when the message has one, else the system property `name`
//!   ([`edge_core::message::SysProp::from_route_name`]), or for `$body.a.b[0]` a body query.
//!   `{$name}` skips the application-property lookup. Body queries read the body only when
//!   `$contentType` is `application/json` and `$contentEncoding` is `utf-8`, `utf-16` or
//!   `utf-32` (any case); objects and arrays are `undefined`.
//! - Lexing follows ANTLR's longest match, so characters such as `+ - * % ! | . '` are legal
//!   inside names: `a+b` and `a!` are names and `a -5` is a name followed by the literal `-5`.
//!   Put spaces around operators (the canonical `Display` always does).
//!
//! # Semantics
//! - Values: undefined, null, bool, number (`f64`), string. Application and system properties
//!   are strings; `$body` values keep their JSON type.
//! - Logic is three-valued (Kleene): `false AND undefined` is false, `true OR undefined` is
//!   true, `NOT undefined` is undefined. A route matches only when its condition is `true`.
//! - Comparisons compare two values of the same type (numbers numerically, strings by code
//!   point, bools with false < true); any other pair, including null or undefined on either
//!   side, is **undefined**. So `temperature > 30`, with `temperature` an application property
//!   (a string), is undefined for every message: write `as_number(temperature) > 30`.
//! - Arithmetic needs numbers; a non-finite result (division by zero, overflow) is undefined.
//! - Operand type errors that can never succeed are [`CompileError`]s (as in Azure): e.g.
//!   `temperature + 1`, `NOT 'x'`, `abs('x')`, `lower(5)`. Values known only per message
//!   (`$body`) are checked at run time and give undefined.
//! - Built-ins (case-insensitive): `abs exp power square ceiling floor sign sqrt`,
//!   `as_number is_bool is_defined is_null is_number is_string`,
//!   `concat(s, s, …) length lower upper substring(s, start[, length]) index_of starts_with
//!   ends_with contains` (string positions count Unicode characters; out-of-range positions
//!   give undefined), and `twin_change_includes(path)`, which evaluates only on routes
//!   `FROM /twinChangeNotifications` (use [`Router::route_from`]); elsewhere it is undefined
//!   with a warning.
//!
//! # Allocation in [`Router::route`]
//! None when `out` has capacity for the hits, unless a route whose source matches reads
//! `$body` and needs one of: decoding a UTF-16/UTF-32 body (one `String` per message), a JSON
//! string with escape sequences (one `String` per such value), or a string built by `||`,
//! `concat`, `lower`, `upper`. UTF-8 bodies are validated once per message, lazily (only
//! when a condition reads `$body`), without allocating, and values borrow from the body
//! bytes; each `$body` query then walks the text (cost linear in the body size).
//!
//! # Divergences
//! Deliberate differences from Azure IoT Edge, and choices where Azure's behaviour is
//! unclear:
//! - **Comparisons of different types** (e.g. a string property with a number literal) compile
//!   and are undefined at run time; Azure rejects them at compile time. [`Router::warnings`]
//!   reports the ones visible at compile time. Comparisons involving `null` are undefined (use
//!   `is_null`), and `??` accepts operands of different types.
//! - **Routes that are always undefined** but that Azure accepts (unknown `$name`, `$x[0]` on a
//!   non-body name, a non-bool condition, `twin_change_includes` on another source) compile,
//!   with a [`CompileWarning`].
//! - **Source paths** are read by their own rule: `('/' segment)+` with no whitespace or
//!   comment inside or before it, where a segment is any run of name characters. So `/*` in `FROM /messages/*` is always
//!   the wildcard (Azure's lexer would start a comment there when a `*/` follows later, silently
//!   eating the `WHERE` clause), and segments such as `123` or `into` are accepted.
//! - **`BrokeredEndpoint`** additionally requires the first and third items to be `modules`
//!   and `inputs` and non-empty names without whitespace (Azure only counts four items).
//! - **String escapes**: `\uXXXX` surrogate pairs combine; a lone surrogate becomes U+FFFD.
//!   Azure's two-pass unescape mis-reads `\\u0041`; we do not.
//! - **Numbers**: a literal outside the `f64` range or a hex literal above 64 bits is a
//!   [`ParseError`] (Azure makes it undefined or infinite); `as_number` parses Rust float
//!   syntax after trimming whitespace (no thousands separators), and rejects infinities/NaN.
//! - **Strings** compare by Unicode code point (Azure: UTF-16 code unit; differs only between
//!   supplementary characters and U+E000–U+FFFF); `length`/`index_of`/`substring` count
//!   characters, not UTF-16 units.
//! - **Bodies**: a leading byte-order mark is skipped; UTF-16/UTF-32 are little-endian (as
//!   .NET's `Encoding.Unicode`/`UTF32`); duplicate JSON keys: the last wins; nesting deeper
//!   than 128 makes the body invalid (undefined). `$contentType` must be exactly
//!   `application/json` (any case, surrounding whitespace ignored; no parameters).
//! - **Source matching** is ASCII-case-insensitive.
//! - **Depth**: expressions nest at most [`MAX_DEPTH`] levels ([`ParseError`] beyond), which
//!   bounds recursion in parsing, compiling and evaluation.
//! - **Route table**: priorities above 9 and duplicate names are [`CompileError`]s.

mod ast;
mod compile;
mod eval;
mod explain;
mod json;
mod lexer;
mod parser;
mod router;

pub use ast::{BinaryOp, Expr, Literal, Route, Sink, UnaryOp};
pub use compile::{CompileError, CompileProblem, CompileWarning, OperandTypeError};
pub use explain::{Explanation, Verdict, explain, explain_from};
pub use parser::{MAX_DEPTH, ParseError, parse};
pub use router::{Hit, NamedRoute, Router, message_source};
