//! Property tests: canonical text parses back to the same tree; the parser, compiler and
//! router never panic on token soup.

use edge_core::Message;
use edge_core::message::SysProp;
use edge_route::{
    BinaryOp, Expr, Literal, NamedRoute, Route, Router, Sink, UnaryOp, explain, parse,
};
use proptest::prelude::*;

const RESERVED: &[&str] = &[
    "select",
    "from",
    "where",
    "into",
    "and",
    "or",
    "not",
    "true",
    "false",
    "null",
    "undefined",
];

/// Names that lex as one `ID`: a letter (not `e`, which could start an exponent literal)
/// followed by name characters, including operator characters that are legal in names.
fn name() -> impl Strategy<Value = String> {
    "[a-df-zA-DF-Z_][a-zA-Z0-9_.+!*%|'$-]{0,6}".prop_filter("reserved word", |s| {
        !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
    })
}

fn sys_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9_.-]{0,8}",
        "body\\.[a-z]{1,4}(\\[[0-9]{1,2}\\])?(\\.[a-z]{1,3})?",
        Just("connectionModuleId".to_owned()),
    ]
}

fn function_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "abs",
            "EXP",
            "power",
            "Square",
            "ceiling",
            "floor",
            "sign",
            "sqrt",
            "as_number",
            "is_bool",
            "IS_DEFINED",
            "is_null",
            "is_number",
            "is_string",
            "concat",
            "length",
            "lower",
            "upper",
            "substring",
            "index_of",
            "starts_with",
            "ends_with",
            "contains",
        ])
        .prop_map(str::to_owned),
        name(),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
        Just(Literal::Undefined),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(Literal::Number),
        (-1000i32..1000).prop_map(|n| Literal::Number(f64::from(n))),
        any::<String>().prop_map(Literal::String),
    ]
}

fn binary_op() -> impl Strategy<Value = BinaryOp> {
    prop::sample::select(vec![
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Mod,
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Concat,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Coalesce,
    ])
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        literal().prop_map(Expr::Literal),
        name().prop_map(Expr::Property),
        (sys_name(), any::<bool>())
            .prop_map(|(name, escaped)| Expr::SystemProperty { name, escaped }),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec![UnaryOp::Neg, UnaryOp::Not]),
                inner.clone()
            )
                .prop_map(|(op, e)| Expr::Unary {
                    op,
                    operand: Box::new(e)
                }),
            (binary_op(), inner.clone(), inner.clone()).prop_map(|(op, l, r)| Expr::Binary {
                op,
                left: Box::new(l),
                right: Box::new(r)
            }),
            (function_name(), prop::collection::vec(inner, 0..4))
                .prop_map(|(function, args)| Expr::Call { function, args }),
        ]
    })
}

fn source() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_*-]{1,6}", 0..4).prop_map(|segs| {
        let s: String = segs.iter().map(|s| format!("/{s}")).collect();
        s.trim_end_matches(['*', '/']).to_owned()
    })
}

fn sink() -> impl Strategy<Value = Sink> {
    prop_oneof![
        Just(Sink::Upstream),
        ("[a-zA-Z0-9_-]{1,8}", "[a-zA-Z0-9_-]{1,8}")
            .prop_map(|(module, input)| Sink::ModuleInput { module, input }),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    (source(), prop::option::of(expr()), sink()).prop_map(|(source, condition, sink)| Route {
        source,
        condition,
        sink,
    })
}

/// Route-ish token soup, to exercise the parser's error paths.
fn soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "FROM",
        "/messages/*",
        "/",
        "*",
        "WHERE",
        "INTO",
        "$upstream",
        "BrokeredEndpoint",
        "(",
        ")",
        "\"/modules/m/inputs/i\"",
        "'x'",
        "\"",
        "'",
        "a",
        "$body.a[0]",
        "{",
        "}",
        "$a",
        "-",
        "-5",
        "1.5e3",
        "0x1F",
        ".5",
        "e5",
        "NOT",
        "AND",
        "OR",
        "??",
        "||",
        "=",
        "!=",
        "<>",
        "<",
        "<=",
        ">",
        ">=",
        "+",
        "%",
        ",",
        "/*",
        "*/",
        "true",
        "null",
        "undefined",
        "abs",
        "@",
        "\\",
        "é",
        "SELECT",
    ]);
    prop::collection::vec((token, prop::sample::select(vec!["", " "])), 0..16).prop_map(|ts| {
        ts.into_iter()
            .map(|(t, sep)| format!("{t}{sep}"))
            .collect::<String>()
    })
}

fn sample_message() -> Message {
    Message::new(&br#"{"a": [1, "x", {"b": null}], "n": 5, "s": "t\u00e9xt"}"#[..])
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8")
        .with_system(SysProp::ConnectionModuleId, "m")
        .with_property("a", "x")
        .with_property("$a", "y")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn display_parses_back(r in route()) {
        let text = r.to_string();
        prop_assert_eq!(parse(&text), Ok(r), "{}", text);
    }

    #[test]
    fn token_soup_never_panics(text in soup()) {
        if let Ok(r) = parse(&text) {
            let canonical = r.to_string();
            let back = parse(&canonical);
            prop_assert_eq!(back.as_ref(), Ok(&r), "{} -> {}", text, canonical);
            let _ = explain(&r, &sample_message());
            if let Ok(router) = Router::compile(vec![NamedRoute::new("r", r)]) {
                let mut hits = Vec::new();
                router.route(&sample_message(), &mut hits);
            }
        }
    }

    #[test]
    fn random_trees_compile_or_fail_cleanly(e in expr()) {
        let r = Route { source: String::new(), condition: Some(e), sink: Sink::Upstream };
        let msg = sample_message();
        let ex = explain(&r, &msg);
        if let Ok(router) = Router::compile(vec![NamedRoute::new("r", r)]) {
            let mut hits = Vec::new();
            router.route(&msg, &mut hits);
            // The router and the explanation agree.
            prop_assert_eq!(hits.len() == 1, ex.result == edge_route::Verdict::Match);
        }
    }
}
