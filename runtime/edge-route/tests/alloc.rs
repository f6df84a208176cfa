//! `Router::route` does not allocate when `out` has room and the conditions need no owned
//! strings; `$body` on a UTF-8 body with plain strings does not allocate either.

use edge_core::Message;
use edge_core::message::SysProp;
use edge_route::{NamedRoute, Router, parse};

fn router(routes: &[&str]) -> Router {
    Router::compile(
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| NamedRoute::new(format!("r{i}"), parse(r).expect("route parses")))
            .collect(),
    )
    .expect("routes compile")
}

fn message() -> Message {
    Message::new(&br#"{"machine": {"temperature": 72.5, "id": "m-1"}, "tags": ["a", "b"]}"#[..])
        .with_system(SysProp::ConnectionDeviceId, "edge-1")
        .with_system(SysProp::ConnectionModuleId, "sensor")
        .with_system(SysProp::OutputName, "out")
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8")
        .with_property("alert", "high")
        .with_property("line", "3")
}

#[test]
fn routing_properties_and_utf8_body_does_not_allocate() {
    let r = router(&[
        "FROM /messages/modules/sensor/* WHERE alert = 'high' AND $connectionDeviceId = 'edge-1' INTO $upstream",
        "FROM /messages/* WHERE as_number(line) >= 2 AND NOT is_defined(missing) INTO BrokeredEndpoint(\"/modules/a/inputs/b\")",
        "FROM /messages/* WHERE $body.machine.temperature > 70 AND $body.tags[1] = 'b' INTO BrokeredEndpoint(\"/modules/a/inputs/b\")",
        "FROM /messages/* WHERE starts_with($body.machine.id, 'm-') OR length(alert) = 4 INTO BrokeredEndpoint(\"/modules/c/inputs/d\")",
        "FROM /messages/events INTO $upstream",
    ]);
    let msg = message();
    let mut hits = Vec::with_capacity(8);
    let info = allocation_counter::measure(|| {
        r.route(&msg, &mut hits);
    });
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn string_building_functions_allocate() {
    // The counter sees allocations: a test that could not fail would prove nothing.
    let r = router(&["FROM /messages/* WHERE lower(alert) || 'x' = 'highx' INTO $upstream"]);
    let msg = message();
    let mut hits = Vec::with_capacity(8);
    let info = allocation_counter::measure(|| {
        r.route(&msg, &mut hits);
    });
    assert_eq!(hits.len(), 1);
    assert!(info.count_total > 0, "{info:?}");
}
