//! The compiled route table.

use crate::ast::{Route, Sink};
use crate::compile::{
    CompileError, CompileProblem, CompileWarning, Compiler, Node, is_twin_source,
};
use crate::eval::{Ctx, NoTrace, Value, eval};
use edge_core::Message;
use edge_core::message::SysProp;
use std::time::Duration;

/// A route with its table entry: name, priority (0 is highest, up to 9) and optional
/// time-to-live that overrides the store-and-forward default.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedRoute {
    /// Route name (the key in `$edgeHub.properties.desired.routes`).
    pub name: String,
    /// The parsed route.
    pub route: Route,
    /// 0 (highest) to 9.
    pub priority: u8,
    /// Route TTL (`timeToLiveSecs`); `None` uses the store-and-forward default.
    pub time_to_live: Option<Duration>,
}

impl NamedRoute {
    /// A route with priority 0 and no TTL (the plain-string route form).
    #[must_use]
    pub fn new(name: impl Into<String>, route: Route) -> Self {
        Self {
            name: name.into(),
            route,
            priority: 0,
            time_to_live: None,
        }
    }
}

/// One sink a message goes to, and which route sent it there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit<'r> {
    /// Name of the route that matched (the highest-priority one for this sink).
    pub route: &'r str,
    /// The destination.
    pub sink: &'r Sink,
    /// That route's priority.
    pub priority: u8,
    /// That route's TTL.
    pub time_to_live: Option<Duration>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    /// The trimmed source followed by `/`, for the prefix match.
    pattern: Box<str>,
    condition: Option<Node>,
    sink: usize,
    priority: u8,
    time_to_live: Option<Duration>,
}

/// A compiled route table: evaluate a message against every route at once.
///
/// # Invariants
/// - Every route's condition type-checked; names are resolved (system properties to
///   [`SysProp`], `$body` paths to steps), so evaluation does no name matching beyond
///   application-property key lookups.
/// - `sinks` holds each distinct sink once; each route refers to one by index, so hits for the
///   same sink are recognised by identity.
/// - Route names are unique; priorities are 0–9.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    sinks: Vec<Sink>,
    warnings: Vec<CompileWarning>,
}

impl Router {
    /// Compiles a route table.
    ///
    /// # Errors
    /// [`CompileError`] naming the first route with a problem: an unknown function, a wrong
    /// number of arguments, an operand that can never have the needed type, an invalid `$body`
    /// path, a priority above 9, or a duplicate name.
    pub fn compile(routes: Vec<NamedRoute>) -> Result<Router, CompileError> {
        let mut compiled = Vec::with_capacity(routes.len());
        let mut sinks: Vec<Sink> = Vec::new();
        let mut warnings = Vec::new();
        for r in routes {
            let fail = |problem| CompileError {
                route: r.name.clone(),
                problem,
            };
            if r.priority > 9 {
                return Err(fail(CompileProblem::Priority(r.priority)));
            }
            if compiled.iter().any(|c: &CompiledRoute| c.name == r.name) {
                return Err(fail(CompileProblem::DuplicateName));
            }
            let mut messages = Vec::new();
            let condition = match &r.route.condition {
                None => None,
                Some(c) => Some(
                    Compiler {
                        twin_source: is_twin_source(&r.route.source),
                        keep_text: false,
                        warnings: &mut messages,
                    }
                    .condition(c)
                    .map_err(fail)?,
                ),
            };
            warnings.extend(messages.into_iter().map(|message| CompileWarning {
                route: r.name.clone(),
                message,
            }));
            let sink = match sinks.iter().position(|s| *s == r.route.sink) {
                Some(i) => i,
                None => {
                    sinks.push(r.route.sink.clone());
                    sinks.len() - 1
                }
            };
            compiled.push(CompiledRoute {
                pattern: format!("{}/", r.route.source).into(),
                name: r.name,
                condition,
                sink,
                priority: r.priority,
                time_to_live: r.time_to_live,
            });
        }
        Ok(Router {
            routes: compiled,
            sinks,
            warnings,
        })
    }

    /// Routes a message from the source its system properties imply (see
    /// [`message_source`]). Clears `out`, then pushes one [`Hit`] per distinct sink whose
    /// route's source and condition match; when several routes reach the same sink, the one
    /// with the highest priority (smallest number; the earliest on a tie) wins, with its TTL.
    ///
    /// Allocation: none when `out` has room for the hits and no matching-source route reads
    /// `$body` (or the body is UTF-8 and its strings have no escapes); see the crate docs.
    pub fn route<'r>(&'r self, msg: &Message, out: &mut Vec<Hit<'r>>) {
        let path = MessagePath::of(msg);
        self.route_path(&path.pieces[..path.len], msg, out);
    }

    /// Like [`Router::route`], for a message from an explicit source such as
    /// `/twinChangeNotifications`.
    pub fn route_from<'r>(&'r self, source: &str, msg: &Message, out: &mut Vec<Hit<'r>>) {
        let source = source.trim_end_matches('/');
        self.route_path(&[source.as_bytes(), b"/"], msg, out);
    }

    fn route_path<'r>(&'r self, path: &[&[u8]], msg: &Message, out: &mut Vec<Hit<'r>>) {
        out.clear();
        let cx = Ctx::new(msg);
        for r in &self.routes {
            if !prefix_matches(r.pattern.as_bytes(), path) {
                continue;
            }
            if let Some(c) = &r.condition
                && !matches!(eval(c, &cx, &mut NoTrace), Value::Bool(true))
            {
                continue;
            }
            let sink = &self.sinks[r.sink];
            let hit = Hit {
                route: &r.name,
                sink,
                priority: r.priority,
                time_to_live: r.time_to_live,
            };
            match out.iter_mut().find(|h| std::ptr::eq(h.sink, sink)) {
                Some(h) if r.priority < h.priority => *h = hit,
                Some(_) => {}
                None => out.push(hit),
            }
        }
    }

    /// Number of routes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The distinct sinks of the table, in first-use order.
    #[must_use]
    pub fn sinks(&self) -> &[Sink] {
        &self.sinks
    }

    /// Things that compiled but look wrong (e.g. a comparison that is always undefined);
    /// worth logging once when a table is installed.
    #[must_use]
    pub fn warnings(&self) -> &[CompileWarning] {
        &self.warnings
    }
}

/// The source path of a message: `/messages/modules/<m>/outputs/<o>` when it has
/// `$connectionModuleId` and `$outputName`, `/messages/modules/<m>` with only the module id,
/// and `/messages/events` (device telemetry) without a module id.
#[must_use]
pub fn message_source(msg: &Message) -> String {
    let p = MessagePath::of(msg);
    let mut s: String = p.pieces[..p.len]
        .iter()
        .map(|b| String::from_utf8_lossy(b))
        .collect();
    s.pop(); // the trailing `/`
    s
}

/// The message's source path, `/`-terminated, as borrowed pieces.
pub(crate) struct MessagePath<'m> {
    pieces: [&'m [u8]; 5],
    len: usize,
}

impl<'m> MessagePath<'m> {
    pub fn of(msg: &'m Message) -> Self {
        let get = |p| msg.system.get(p).filter(|s| !s.is_empty());
        match (get(SysProp::ConnectionModuleId), get(SysProp::OutputName)) {
            (Some(m), Some(o)) => Self {
                pieces: [
                    b"/messages/modules/",
                    m.as_bytes(),
                    b"/outputs/",
                    o.as_bytes(),
                    b"/",
                ],
                len: 5,
            },
            (Some(m), None) => Self {
                pieces: [b"/messages/modules/", m.as_bytes(), b"/", b"", b""],
                len: 3,
            },
            (None, _) => Self {
                pieces: [b"/messages/events/", b"", b"", b"", b""],
                len: 1,
            },
        }
    }

    pub fn pieces(&self) -> &[&'m [u8]] {
        &self.pieces[..self.len]
    }
}

/// Whether `pattern` is an ASCII-case-insensitive prefix of the concatenated `pieces`.
pub(crate) fn prefix_matches(pattern: &[u8], pieces: &[&[u8]]) -> bool {
    let mut p = pattern;
    for piece in pieces {
        if p.is_empty() {
            return true;
        }
        let n = p.len().min(piece.len());
        if !p[..n].eq_ignore_ascii_case(&piece[..n]) {
            return false;
        }
        p = &p[n..];
    }
    p.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_match_across_pieces() {
        let pieces: [&[u8]; 3] = [b"/messages/modules/", b"Sensor", b"/"];
        assert!(prefix_matches(b"/", &pieces));
        assert!(prefix_matches(b"/messages/", &pieces));
        assert!(prefix_matches(b"/MESSAGES/modules/sensor/", &pieces));
        assert!(!prefix_matches(b"/messages/modules/sens/", &pieces));
        assert!(!prefix_matches(
            b"/messages/modules/sensor/outputs/",
            &pieces
        ));
    }

    #[test]
    fn message_source_forms() {
        let m = Message::new(&b""[..]);
        assert_eq!(message_source(&m), "/messages/events");
        let m = m.with_system(SysProp::ConnectionModuleId, "a");
        assert_eq!(message_source(&m), "/messages/modules/a");
        let m = m.with_system(SysProp::OutputName, "o");
        assert_eq!(message_source(&m), "/messages/modules/a/outputs/o");
    }
}
