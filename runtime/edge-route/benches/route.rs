//! Route evaluation rate for a realistic 20-route table (application properties, system
//! properties, `$body` queries, prefix sources). Throughput is messages routed per second
//! (each message is evaluated against all 20 routes).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edge_core::Message;
use edge_core::message::SysProp;
use edge_route::{NamedRoute, Router, parse};
use std::hint::black_box;
use std::time::Duration;

const ROUTES: [&str; 20] = [
    r#"FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/filter/inputs/in")"#,
    "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
    r#"FROM /messages/modules/sensor/* WHERE $body.machine.temperature > 70 INTO BrokeredEndpoint("/modules/alerts/inputs/hot")"#,
    "FROM /messages/* WHERE alert = 'high' INTO $upstream",
    "FROM /messages/modules/filter/* INTO $upstream",
    r#"FROM /messages/* WHERE site = 'plant-7' AND line = '3' INTO BrokeredEndpoint("/modules/historian/inputs/lines")"#,
    r#"FROM /messages/* WHERE $connectionDeviceId = 'edge-1' AND $outputName = 'telemetry' INTO BrokeredEndpoint("/modules/recorder/inputs/all")"#,
    "FROM /messages/modules/opc/* WHERE $body.status = 'fault' INTO $upstream",
    r#"FROM /messages/* WHERE as_number(line) >= 2 AND as_number(line) < 5 INTO BrokeredEndpoint("/modules/lines/inputs/mid")"#,
    r#"FROM /messages/* WHERE starts_with($messageId, 'msg-') INTO BrokeredEndpoint("/modules/recorder/inputs/ids")"#,
    r#"FROM /messages/* WHERE $body.ambient.temperature < 0 OR $body.machine.pressure > 2.5 INTO BrokeredEndpoint("/modules/alerts/inputs/env")"#,
    r#"FROM /messages/* WHERE lower(site) = 'plant-7' INTO BrokeredEndpoint("/modules/historian/inputs/site")"#,
    r#"FROM /messages/modules/sensor/outputs/diagnostics INTO BrokeredEndpoint("/modules/diag/inputs/in")"#,
    r#"FROM /messages/* WHERE $body.tags[0] = 'a' INTO BrokeredEndpoint("/modules/tagger/inputs/a")"#,
    "FROM /messages/* WHERE is_defined(maintenance) INTO $upstream",
    r#"FROM /messages/* WHERE (alert ?? 'none') != 'none' INTO BrokeredEndpoint("/modules/alerts/inputs/any")"#,
    r#"FROM /messages/modules/* WHERE $contentType = 'application/json' INTO BrokeredEndpoint("/modules/recorder/inputs/json")"#,
    r#"FROM /messages/* WHERE $body.machine.humidity * 2 > 60 INTO BrokeredEndpoint("/modules/alerts/inputs/humid")"#,
    "FROM /messages/events INTO $upstream",
    r#"FROM /messages/* WHERE contains(site, 'plant') AND $body.line = 3 INTO BrokeredEndpoint("/modules/historian/inputs/lines")"#,
];

const BODY: &[u8] = br#"{"machine":{"temperature":72.4,"pressure":1.2,"humidity":33,"serial":"M-1002"},"ambient":{"temperature":21.3},"timeCreated":"2024-01-01T00:00:00Z","status":"running","tags":["a","b"],"line":3}"#;

fn router() -> Router {
    let routes = ROUTES
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut r = NamedRoute::new(
                format!("r{i}"),
                parse(text).expect("benchmark routes parse"),
            );
            r.priority = u8::try_from(i % 3).expect("small");
            r.time_to_live = (i % 4 == 0).then(|| Duration::from_secs(60));
            r
        })
        .collect();
    Router::compile(routes).expect("benchmark routes compile")
}

fn message(json: bool) -> Message {
    let m = Message::new(BODY)
        .with_system(SysProp::ConnectionDeviceId, "edge-1")
        .with_system(SysProp::ConnectionModuleId, "sensor")
        .with_system(SysProp::OutputName, "telemetry")
        .with_system(SysProp::MessageId, "msg-000123")
        .with_property("alert", "high")
        .with_property("site", "plant-7")
        .with_property("line", "3");
    if json {
        m.with_system(SysProp::ContentType, "application/json")
            .with_system(SysProp::ContentEncoding, "utf-8")
    } else {
        m
    }
}

fn bench(c: &mut Criterion) {
    let router = router();
    let mut group = c.benchmark_group("route_20");
    group.throughput(Throughput::Elements(1));
    for (name, json) in [("json_body", true), ("no_body_queries", false)] {
        let msg = message(json);
        let mut hits = Vec::with_capacity(16);
        router.route(&msg, &mut hits);
        assert!(
            !hits.is_empty(),
            "the benchmark message matches some routes"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                router.route(black_box(&msg), &mut hits);
                black_box(hits.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
