//! Runs the table in `tests/cases.json` through both `explain` and the compiled `Router`.

use edge_core::Message;
use edge_core::message::SysProp;
use edge_route::{NamedRoute, Router, Verdict, explain, explain_from, parse};
use serde_json::Value;

fn load() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases.json"))
        .expect("read cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn encode(text: &str, encoding: &str) -> Vec<u8> {
    match encoding {
        "utf-8" => text.as_bytes().to_vec(),
        "utf-16" => text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        "utf-32" => text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect(),
        other => panic!("unknown bodyEncoding {other}"),
    }
}

fn message(spec: Option<&Value>) -> Message {
    let mut m = Message::default();
    let Some(spec) = spec else { return m };
    if let Some(props) = spec.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            m.set_property(k.clone(), v.as_str().expect("property values are strings"));
        }
    }
    let body = match (spec.get("jsonBody"), spec.get("body")) {
        (Some(j), _) => {
            m.system.set(SysProp::ContentType, Some("application/json"));
            m.system.set(SysProp::ContentEncoding, Some("utf-8"));
            Some(j.to_string())
        }
        (None, Some(Value::String(raw))) => Some(raw.clone()),
        (None, Some(j)) => Some(j.to_string()),
        (None, None) => None,
    };
    if let Some(sys) = spec.get("systemProperties").and_then(Value::as_object) {
        for (k, v) in sys {
            let p = SysProp::from_route_name(k).unwrap_or_else(|| panic!("unknown sys prop {k}"));
            m.system.set(p, Some(v.as_str().expect("string")));
        }
    }
    if let Some(body) = body {
        let enc = spec
            .get("bodyEncoding")
            .and_then(Value::as_str)
            .unwrap_or("utf-8");
        m.body = encode(&body, enc).into();
    }
    m
}

#[test]
fn route_cases() {
    let all = load();
    let cases = all["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "at least 80 cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let text = case["route"].as_str().expect("route");
        let expect = case["expect"].as_str().expect("expect");
        let route = match parse(text) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: parse error {e}"));
                continue;
            }
        };
        // The canonical text means the same thing.
        assert_eq!(
            parse(&route.to_string()).as_ref(),
            Ok(&route),
            "{name}: round trip"
        );
        let msg = message(case.get("message"));
        let source = case.get("source").and_then(Value::as_str);
        let ex = match source {
            Some(s) => explain_from(&route, s, &msg),
            None => explain(&route, &msg),
        };
        if ex.result.to_string() != expect {
            failures.push(format!(
                "{name}: expected {expect}, got {}\n    {}",
                ex.result,
                ex.steps.join("\n    ")
            ));
        }
        if let Some(sink) = case.get("sink").and_then(Value::as_str) {
            assert_eq!(route.sink.to_string(), sink, "{name}: sink");
        }
        // The compiled router agrees with the explanation.
        let router = Router::compile(vec![NamedRoute::new("r", route.clone())])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut hits = Vec::new();
        match source {
            Some(s) => router.route_from(s, &msg, &mut hits),
            None => router.route(&msg, &mut hits),
        }
        let routed = hits.len() == 1 && *hits[0].sink == route.sink && hits[0].route == "r";
        if routed != (ex.result == Verdict::Match) {
            failures.push(format!(
                "{name}: router routed={routed}, explain said {}",
                ex.result
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parse_error_cases() {
    let all = load();
    let mut failures = Vec::new();
    for case in all["parse_errors"].as_array().expect("parse_errors") {
        let text = case["route"].as_str().expect("route");
        let column = case["column"].as_u64().expect("column");
        match parse(text) {
            Ok(r) => failures.push(format!("{text:?}: parsed as {r}")),
            Err(e) => {
                if e.column as u64 != column {
                    failures.push(format!(
                        "{text:?}: column {} ({e}), want {column}",
                        e.column
                    ));
                }
                if let Some(msg) = case.get("message").and_then(Value::as_str)
                    && e.to_string() != msg
                {
                    failures.push(format!("{text:?}: message {e}, want {msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn compile_error_cases() {
    let all = load();
    let mut failures = Vec::new();
    for case in all["compile_errors"].as_array().expect("compile_errors") {
        let text = case["route"].as_str().expect("route");
        let want = case["contains"].as_str().expect("contains");
        let route = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        match Router::compile(vec![NamedRoute::new("bad", route.clone())]) {
            Ok(_) => failures.push(format!("{text:?}: compiled")),
            Err(e) => {
                let shown = e.to_string();
                if !shown.starts_with("route `bad`: ") || !shown.contains(want) {
                    failures.push(format!("{text:?}: {shown}, want it to contain {want:?}"));
                }
                // `explain` reports the same problem instead of evaluating.
                let ex = explain(&route, &Message::default());
                assert_eq!(ex.result, Verdict::Undefined, "{text}");
                assert!(
                    ex.steps.iter().any(|s| s.starts_with("compile error:")),
                    "{text}: {:?}",
                    ex.steps
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
