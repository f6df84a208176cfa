//! The public API: canonical text, error messages, router hit selection, explanations.

use edge_core::Message;
use edge_core::message::SysProp;
use edge_route::{
    CompileProblem, Expr, Literal, NamedRoute, Router, Sink, Verdict, explain, parse,
};
use std::time::Duration;

#[test]
fn canonical_text() {
    for (input, canonical) in [
        (
            "select * from /messages/* where NOT a and (b or c) into $UPSTREAM",
            "FROM /messages WHERE NOT a AND (b OR c) INTO $upstream",
        ),
        (
            "FROM /* WHERE a<>'x' AND $body.n * (2 + 3)>=-1.5 INTO brokeredendpoint('/modules/m/inputs/i')",
            "FROM /* WHERE a != \"x\" AND $body.n * (2 + 3) >= -1.5 INTO BrokeredEndpoint(\"/modules/m/inputs/i\")",
        ),
        (
            "FROM /messages/modules/m/* WHERE - (a) = {$cid} ?? 0x10 INTO $upstream",
            "FROM /messages/modules/m WHERE - a = {$cid} ?? 16 INTO $upstream",
        ),
        (
            "FROM /m WHERE NOT (a = 'x\\'\"') AND x - (y - z) = 1e300 INTO $upstream",
            "FROM /m WHERE NOT (a = \"x'\\\"\") AND x - (y - z) = 1e300 INTO $upstream",
        ),
    ] {
        let r = parse(input).unwrap();
        assert_eq!(r.to_string(), canonical, "{input}");
        assert_eq!(parse(canonical).unwrap(), r);
    }
}

#[test]
fn tree_shape_follows_azure_precedence() {
    // NOT binds tighter than `=` (a prefix alternative listed before the binary ones).
    let r = parse("FROM /m WHERE NOT a = b INTO $upstream").unwrap();
    let Some(Expr::Binary { left, .. }) = r.condition else {
        panic!("{r:?}")
    };
    assert!(matches!(*left, Expr::Unary { .. }));
    // `-5` glued is a literal; `- 5` is negation.
    let r = parse("FROM /m WHERE -5 = - 5 INTO $upstream").unwrap();
    let Some(Expr::Binary { left, right, .. }) = r.condition else {
        panic!()
    };
    assert_eq!(*left, Expr::Literal(Literal::Number(-5.0)));
    assert!(matches!(*right, Expr::Unary { .. }));
}

#[test]
fn parse_error_messages() {
    for (input, message) in [
        (
            "FROM /messages WHERE a = 1 INTO $nowhere",
            "column 33: expected `$upstream` or `BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")`, found `$nowhere`",
        ),
        (
            "FROM /messages INTO BrokeredEndpoint('/modules/m')",
            "column 38: expected an endpoint of the form \"/modules/<module>/inputs/<input>\", found `'/modules/m'`",
        ),
        (
            "FROM /m WHERE a = 'x\\q' INTO $upstream",
            "column 21: expected an escape: \\\" \\' \\\\ or \\uXXXX, found `\\q`",
        ),
        (
            "FROM /m WHERE f(a INTO $upstream",
            "column 19: expected an operator, `,` or `)`, found `INTO`",
        ),
    ] {
        assert_eq!(parse(input).unwrap_err().to_string(), message, "{input}");
    }
    let deep = format!(
        "FROM /m WHERE {}a{} INTO $upstream",
        "(".repeat(300),
        ")".repeat(300)
    );
    let e = parse(&deep).unwrap_err();
    assert!(e.expected.contains("levels of nesting"), "{e}");
    let chain = format!("FROM /m WHERE a{} INTO $upstream", " AND a".repeat(300));
    assert!(parse(&chain).is_err());
}

fn named(name: &str, text: &str, priority: u8, ttl: Option<u64>) -> NamedRoute {
    NamedRoute {
        name: name.to_owned(),
        route: parse(text).expect("route parses"),
        priority,
        time_to_live: ttl.map(Duration::from_secs),
    }
}

#[test]
fn one_hit_per_sink_with_the_highest_priority() {
    let router = Router::compile(vec![
        named("low", "FROM /messages/* INTO $upstream", 5, Some(10)),
        named(
            "other",
            "FROM /messages/* INTO BrokeredEndpoint(\"/modules/m/inputs/i\")",
            3,
            None,
        ),
        named(
            "high",
            "FROM /messages/modules/* INTO $upstream",
            1,
            Some(20),
        ),
        named("tie", "FROM /messages/* INTO $UPSTREAM", 1, Some(30)),
        named(
            "never",
            "FROM /messages/* WHERE false INTO $upstream",
            0,
            None,
        ),
    ])
    .unwrap();
    assert_eq!(router.len(), 5);
    assert!(!router.is_empty());
    assert_eq!(router.sinks().len(), 2);
    let msg = Message::default().with_system(SysProp::ConnectionModuleId, "x");
    let mut hits = Vec::new();
    router.route(&msg, &mut hits);
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(*hits[0].sink, Sink::Upstream);
    assert_eq!(
        (hits[0].route, hits[0].priority, hits[0].time_to_live),
        ("high", 1, Some(Duration::from_secs(20)))
    );
    assert_eq!(hits[1].route, "other");

    // A device message misses the module-only route; `out` is cleared first.
    router.route(&Message::default(), &mut hits);
    assert_eq!(hits.len(), 2);
    assert_eq!((hits[0].route, hits[0].priority), ("tie", 1));
}

#[test]
fn table_errors_and_warnings() {
    let e = Router::compile(vec![
        named("a", "FROM /m INTO $upstream", 0, None),
        named("a", "FROM /m INTO $upstream", 0, None),
    ])
    .unwrap_err();
    assert_eq!(e.to_string(), "route `a`: duplicate route name");
    let e = Router::compile(vec![named("p", "FROM /m INTO $upstream", 10, None)]).unwrap_err();
    assert_eq!(e.problem, CompileProblem::Priority(10));
    let e = Router::compile(vec![named(
        "f",
        "FROM /m WHERE nope(1) INTO $upstream",
        0,
        None,
    )])
    .unwrap_err();
    assert_eq!(e.to_string(), "route `f`: unknown function `nope`");

    let r = Router::compile(vec![
        named(
            "t",
            "FROM /m WHERE temperature > 30 INTO $upstream",
            0,
            None,
        ),
        named(
            "ok",
            "FROM /m WHERE as_number(t) > 30 INTO $upstream",
            0,
            None,
        ),
    ])
    .unwrap();
    assert_eq!(r.warnings().len(), 1, "{:?}", r.warnings());
    assert_eq!(r.warnings()[0].route, "t");
    assert!(r.warnings()[0].to_string().contains("as_number"));
}

#[test]
fn twin_change_notifications_route_from_their_source() {
    let router = Router::compile(vec![named(
        "twin",
        "FROM /twinChangeNotifications WHERE twin_change_includes(properties.reported.fw) INTO $upstream",
        0,
        None,
    )])
    .unwrap();
    let msg = Message::new(&br#"{"properties": {"reported": {"fw": "1.2"}}}"#[..]);
    let mut hits = Vec::new();
    router.route(&msg, &mut hits);
    assert!(hits.is_empty());
    router.route_from("/twinChangeNotifications", &msg, &mut hits);
    assert_eq!(hits.len(), 1);
}

#[test]
fn explanation_steps() {
    let route = parse(
        "FROM /messages/modules/s/* WHERE $body.temp > 30 AND temperature > 30 INTO $upstream",
    )
    .unwrap();
    let msg = Message::new(&br#"{"temp": 42}"#[..])
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8")
        .with_system(SysProp::ConnectionModuleId, "s")
        .with_system(SysProp::OutputName, "o");
    let e = explain(&route, &msg);
    assert!(e.source_matched);
    assert_eq!(e.result, Verdict::Undefined);
    assert_eq!(e.sink, Sink::Upstream);
    for line in [
        "source /messages/modules/s/outputs/o matches FROM /messages/modules/s",
        "$body.temp → 42 (number)",
        "$body.temp > 30 → true (bool)",
        "temperature > 30 → undefined (temperature is not defined)",
        "condition → undefined",
    ] {
        assert!(
            e.steps.iter().any(|s| s == line),
            "{line:?} in {:#?}",
            e.steps
        );
    }

    let other = Message::default();
    let e = explain(&route, &other);
    assert!(!e.source_matched);
    assert_eq!(e.result, Verdict::NoMatch);
    assert!(
        e.steps
            .iter()
            .any(|s| s.contains("$contentType is not application/json"))
    );
}

#[test]
fn deepest_accepted_routes_run_on_a_test_thread_stack() {
    let msg = Message::default().with_property("a", "x");
    let n = edge_route::MAX_DEPTH - 2;
    let chain = format!(
        "FROM /m WHERE a = 'x'{} INTO $upstream",
        " OR a = 'y'".repeat(n - 1)
    );
    let nots = format!("FROM /m WHERE {}(a = 'x') INTO $upstream", "NOT ".repeat(n));
    let parens = format!(
        "FROM /m WHERE {}is_defined(a){} INTO $upstream",
        "(".repeat(n),
        ")".repeat(n)
    );
    for text in [chain, nots, parens] {
        let route = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse(&route.to_string()).unwrap(), route);
        let e = explain(&route, &msg);
        assert_ne!(e.result, Verdict::Undefined);
        let router = Router::compile(vec![NamedRoute::new("deep", route)]).unwrap();
        let mut hits = Vec::new();
        router.route(&msg, &mut hits);
        assert_eq!(hits.len(), usize::from(e.result == Verdict::Match));
    }
}

#[test]
fn router_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Router>();
    shareable::<edge_route::Route>();
}
