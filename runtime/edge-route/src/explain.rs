//! Step-by-step evaluation of one route against one message, for `edgectl route eval`.

use crate::ast::{Route, Sink};
use crate::compile::{Compiler, Node, is_twin_source};
use crate::eval::{Ctx, Tracer, Value, eval};
use crate::router::{MessagePath, message_source, prefix_matches};
use edge_core::Message;
use std::fmt;

/// The outcome of a route for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Source and condition match: the message goes to the sink.
    Match,
    /// The source does not match or the condition is false.
    NoMatch,
    /// The source matches but the condition is undefined (or not a bool), which does not
    /// route the message either.
    Undefined,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Match => "match",
            Verdict::NoMatch => "no match",
            Verdict::Undefined => "undefined",
        })
    }
}

/// What [`explain`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Whether the message's source path matches the route's `FROM`.
    pub source_matched: bool,
    /// The verdict (`NoMatch` whenever the source does not match).
    pub result: Verdict,
    /// The route's sink.
    pub sink: Sink,
    /// Human-readable lines: the source check, then each evaluated sub-expression with its
    /// value (`$body.temp → 42 (number)`), or why it is undefined
    /// (`temperature > 30 → undefined (temperature is not defined)`).
    pub steps: Vec<String>,
}

struct Steps(Vec<String>);

impl Tracer for Steps {
    const ON: bool = true;

    fn step(&mut self, node: &Node, value: &Value<'_>, why: Option<String>) {
        let line = match (value, why) {
            (Value::Undefined, Some(why)) if !why.is_empty() => {
                format!("{} → undefined ({why})", node.text)
            }
            (Value::Undefined, _) => format!("{} → undefined", node.text),
            (Value::Null, _) => format!("{} → null", node.text),
            (v, _) => format!("{} → {v} ({})", node.text, v.type_name()),
        };
        self.0.push(line);
    }

    fn skipped(&mut self, node: &Node, because: &str) {
        self.0
            .push(format!("{} not evaluated ({because})", node.text));
    }
}

/// Evaluates `route` against `msg` and records every step. A condition that does not compile
/// gives [`Verdict::Undefined`] with the compile error as a step. The message's source path is
/// [`message_source`].
#[must_use]
pub fn explain(route: &Route, msg: &Message) -> Explanation {
    let path = MessagePath::of(msg);
    explain_path(route, msg, &message_source(msg), path.pieces())
}

/// Like [`explain`], for a message from an explicit source such as
/// `/twinChangeNotifications`.
#[must_use]
pub fn explain_from(route: &Route, source: &str, msg: &Message) -> Explanation {
    let source = source.trim_end_matches('/');
    explain_path(route, msg, source, &[source.as_bytes(), b"/"])
}

fn explain_path(route: &Route, msg: &Message, shown: &str, path: &[&[u8]]) -> Explanation {
    let mut steps = Vec::new();
    let pattern = format!("{}/", route.source);
    let source_matched = prefix_matches(pattern.as_bytes(), path);
    steps.push(format!(
        "source {shown} {} FROM {}",
        if source_matched {
            "matches"
        } else {
            "does not match"
        },
        if route.source.is_empty() {
            "/*"
        } else {
            &route.source
        }
    ));
    let condition = match &route.condition {
        None => {
            steps.push("no WHERE clause: the condition is true".to_owned());
            Verdict::Match
        }
        Some(c) => {
            let mut warnings = Vec::new();
            let compiled = Compiler {
                twin_source: is_twin_source(&route.source),
                keep_text: true,
                warnings: &mut warnings,
            }
            .condition(c);
            steps.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
            match compiled {
                Err(problem) => {
                    steps.push(format!("compile error: {problem}"));
                    Verdict::Undefined
                }
                Ok(node) => {
                    let cx = Ctx::new(msg);
                    let mut tracer = Steps(steps);
                    let v = eval(&node, &cx, &mut tracer);
                    steps = tracer.0;
                    steps.push(format!("condition → {v}"));
                    match v {
                        Value::Bool(true) => Verdict::Match,
                        Value::Bool(false) => Verdict::NoMatch,
                        _ => Verdict::Undefined,
                    }
                }
            }
        }
    };
    Explanation {
        source_matched,
        result: if source_matched {
            condition
        } else {
            Verdict::NoMatch
        },
        sink: route.sink.clone(),
        steps,
    }
}
