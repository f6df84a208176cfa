//! The hub's public behaviour, with real rumqttc clients against `Hub::start` on 127.0.0.1:0.

mod common;

use common::*;
use edge_core::ModuleId;
use edge_core::message::SysProp;
use edge_hub::MethodError;
use edge_manifest::RouteSpec;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const A_TO_B_IN1: &str =
    r#"FROM /messages/modules/a/outputs/out INTO BrokeredEndpoint("/modules/b/inputs/in1")"#;

fn refused(e: ConnectionError) -> ConnectReturnCode {
    match e {
        ConnectionError::ConnectionRefused(code) => code,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn routes_with_conditions_on_properties_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[
        (
            "alerts",
            r#"FROM /messages/modules/a/outputs/out WHERE level = 'high' INTO BrokeredEndpoint("/modules/b/inputs/alerts")"#,
        ),
        (
            "hot",
            r#"FROM /messages/modules/a/outputs/out WHERE $body.temp > 50 INTO BrokeredEndpoint("/modules/b/inputs/hot")"#,
        ),
    ]);
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut a = h.connect("a").await;
    let json = "%24.ct=application%2Fjson&%24.ce=utf-8";
    // Matches `alerts` only; tries to forge the sender's identity.
    a.send(
        &events(
            "a",
            &format!("%24.on=out&{json}&%24.cmid=evil&%24.cdid=other&level=high"),
        ),
        r#"{"temp": 10}"#,
    )
    .await;
    // Matches `hot` only.
    a.send(
        &events("a", &format!("%24.on=out&{json}&level=low")),
        r#"{"temp": 70}"#,
    )
    .await;
    // Matches nothing.
    a.send(
        &events("a", &format!("%24.on=out&{json}&level=low")),
        r#"{"temp": 1}"#,
    )
    .await;

    let mut got = Vec::new();
    for _ in 0..2 {
        let p = b.publish_in().await;
        let (input, msg) = input_of(&p.topic, "b");
        assert_eq!(msg.system.get(SysProp::ConnectionModuleId), Some("a"));
        assert_eq!(msg.system.get(SysProp::ConnectionDeviceId), Some(DEVICE));
        got.push((input, String::from_utf8(p.payload.to_vec()).unwrap()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("alerts".to_owned(), r#"{"temp": 10}"#.to_owned()),
            ("hot".to_owned(), r#"{"temp": 70}"#.to_owned()),
        ]
    );
    eventually("one unmatched message counted", || {
        h.hub.stats().unmatched == 1
    })
    .await;
    let stats = h.hub.stats();
    assert_eq!(stats.routed.get("alerts"), Some(&1));
    assert_eq!(stats.routed.get("hot"), Some(&1));
    assert_eq!(stats.messages_received, 3);
    assert_eq!(
        h.metric(
            "edgehub_messages_dropped_total",
            Some(("reason", "no_route"))
        ),
        1.0
    );
    assert_eq!(
        h.metric("edgehub_messages_received_total", Some(("module", "a"))),
        3.0
    );
    eventually("deliveries acknowledged", || {
        h.hub.stats().messages_sent == 2
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn modules_connect_over_the_unix_socket_with_the_same_auth_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[("ab", A_TO_B_IN1)]);
    let sock = dir.path().join("hub.sock");
    // A socket left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    h.hub.listen_unix(&sock).await.unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);

    // A bad token is refused here as on TCP.
    let mut opts = rumqttc::MqttOptions::new(format!("{DEVICE}/a"), sock.to_string_lossy(), 0);
    opts.set_transport(rumqttc::Transport::Unix);
    let mut bad = Client::open_with(
        opts,
        Some((
            format!("{HOST}/{DEVICE}/a/?api-version=2021-04-12"),
            "nope".into(),
        )),
        true,
        false,
    );
    assert_eq!(
        refused(bad.connack().await.unwrap_err()),
        ConnectReturnCode::NotAuthorized
    );

    let mut b = h.connect_unix(&sock, "b", h.token("b")).await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut a = h.connect_unix(&sock, "a", h.token("a")).await;
    a.send(&events("a", "%24.on=out&k=v"), "over unix").await;
    let p = b.publish_in().await;
    let (input, msg) = input_of(&p.topic, "b");
    assert_eq!(input, "in1");
    assert_eq!(msg.property("k"), Some("v"));
    assert_eq!(msg.system.get(SysProp::ConnectionModuleId), Some("a"));
    assert_eq!(&p.payload[..], b"over unix");
    h.stop().await;
    assert!(
        !sock.exists(),
        "the socket file is removed when the hub stops"
    );
}

#[tokio::test]
async fn a_unix_socket_path_that_holds_a_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a"]).await;
    let path = dir.path().join("hub.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let e = h.hub.listen_unix(&path).await.unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    h.stop().await;
}

#[tokio::test]
async fn connections_with_bad_credentials_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    let user = |m: &str| format!("{HOST}/{DEVICE}/{m}/?api-version=2021-04-12");
    let key_a = h.keys["a"].clone();
    let token_for = |key: &edge_core::sas::ModuleKey, m: &str, expiry: u64| {
        edge_core::sas::make_token(key, &edge_core::sas::module_uri(HOST, DEVICE, m), expiry)
    };
    let attempts = [
        // A module without an identity.
        (
            "dev1/ghost",
            user("ghost"),
            token_for(&key_a, "ghost", now_secs() + 60),
        ),
        // The right module with a wrong key.
        (
            "dev1/a",
            user("a"),
            token_for(
                &edge_core::sas::ModuleKey::generate().unwrap(),
                "a",
                now_secs() + 60,
            ),
        ),
        // An expired token.
        ("dev1/a", user("a"), token_for(&key_a, "a", now_secs() - 10)),
        // Module a claims b's client id, signing with its own key.
        ("dev1/b", user("b"), token_for(&key_a, "b", now_secs() + 60)),
    ];
    for (client_id, username, password) in attempts {
        let mut c = Client::open(h.port(), client_id, Some((username, password)), true, false);
        let code = refused(c.connack().await.unwrap_err());
        assert_eq!(code, ConnectReturnCode::NotAuthorized, "{client_id}");
    }
    // No credentials at all.
    let mut c = Client::open(h.port(), "dev1/a", None, true, false);
    let code = refused(c.connack().await.unwrap_err());
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);

    let stats = h.hub.stats();
    assert_eq!(stats.auth_refused, 5);
    assert!(stats.connected_modules.is_empty());
    for (reason, n) in [
        ("unknown_module", 1.0),
        ("bad_signature", 2.0),
        ("expired_token", 1.0),
        ("missing_credentials", 1.0),
    ] {
        assert_eq!(
            h.metric("edgehub_auth_refused_total", Some(("reason", reason))),
            n,
            "{reason}"
        );
    }
    // The real credentials still work.
    let _a = h.connect("a").await;
    h.stop().await;
}

#[tokio::test]
async fn topic_acl_refuses_other_modules_topics() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[("r", A_TO_B_IN1)]);

    // Subscribing to another module's inputs gets a failure code; its own inputs succeed.
    let mut a = h.connect("a").await;
    a.client
        .subscribe(
            format!("devices/{DEVICE}/modules/b/inputs/#"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert_eq!(
        a.suback().await.return_codes,
        vec![SubscribeReasonCode::Failure]
    );
    let ok = a
        .subscribe(&format!("devices/{DEVICE}/modules/a/inputs/#"))
        .await;
    assert_eq!(
        ok.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(h.hub.stats().acl_refused, 1);

    // Publishing as b (on b's events topic) is refused: not delivered, connection closed.
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    a.client
        .publish(events("b", "%24.on=out"), QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    a.closed().await;
    assert_eq!(h.hub.stats().acl_refused, 2);
    assert_eq!(
        h.metric("edgehub_acl_refused_total", Some(("module", "a"))),
        2.0
    );
    // a, reconnected, can still publish on its own topic; b gets only that.
    let mut a = h.connect("a").await;
    a.send(&events("a", "%24.on=out"), "genuine").await;
    let p = b.publish_in().await;
    assert_eq!(&p.payload[..], b"genuine");
    assert_eq!(h.hub.stats().routed.get("r"), Some(&1));
    h.stop().await;
}

#[tokio::test]
async fn twin_get_and_reported_patch_round_trip_and_desired_patches() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["m"]).await;
    let mut m = h.connect("m").await;
    // Only desired patches: twin responses must come without a `$iothub/twin/res/#` subscription.
    m.subscribe("$iothub/twin/PATCH/properties/desired/#").await;

    m.send("$iothub/twin/GET/?$rid=1", " ").await;
    let p = m.publish_in().await;
    assert_eq!(p.topic, "$iothub/twin/res/200/?$rid=1");
    let twin: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(
        twin,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    m.send(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        r#"{"status": "ok", "n": 1}"#,
    )
    .await;
    let p = m.publish_in().await;
    assert_eq!(p.topic, "$iothub/twin/res/204/?$rid=2&$version=2");
    assert!(p.payload.is_empty());

    m.send("$iothub/twin/PATCH/properties/reported/?$rid=3", "[1, 2]")
        .await;
    assert!(
        m.publish_in()
            .await
            .topic
            .starts_with("$iothub/twin/res/400/?$rid=3")
    );
    m.send(
        "$iothub/twin/PATCH/properties/reported/?$rid=4",
        r#"{"n": null}"#,
    )
    .await;
    assert_eq!(
        m.publish_in().await.topic,
        "$iothub/twin/res/204/?$rid=4&$version=3"
    );

    let mut twins = BTreeMap::new();
    twins.insert(
        ModuleId::new("m").unwrap(),
        json!({"window": 10, "scale": {"a": 1}}),
    );
    h.hub.apply_deployment(&[], &saf(), &twins).unwrap();
    let p = m.publish_in().await;
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let patch: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(
        patch,
        json!({"window": 10, "scale": {"a": 1}, "$version": 2})
    );

    // A second deployment sends only the difference.
    twins.insert(ModuleId::new("m").unwrap(), json!({"scale": {"a": 2}}));
    h.hub.apply_deployment(&[], &saf(), &twins).unwrap();
    let patch: serde_json::Value = serde_json::from_slice(&m.publish_in().await.payload).unwrap();
    assert_eq!(
        patch,
        json!({"window": null, "scale": {"a": 2}, "$version": 3})
    );

    assert_eq!(
        h.hub.twin("m").unwrap(),
        json!({"desired": {"scale": {"a": 2}, "$version": 3}, "reported": {"status": "ok", "$version": 3}})
    );
    // Twins of ids that are not connected modules.
    assert_eq!(
        h.hub.patch_reported("$edgeAgent", json!({"x": 1})).unwrap(),
        2
    );
    assert!(h.hub.patch_reported("$edgeAgent", json!("no")).is_err());
    assert!(h.hub.patch_reported("bad/id", json!({})).is_err());
    h.stop().await;

    // Twins survive a restart.
    let h = start(dir.path(), &["m"]).await;
    assert_eq!(h.hub.twin("m").unwrap()["desired"]["$version"], 3);
    assert_eq!(h.hub.twin("$edgeAgent").unwrap()["reported"]["x"], 1);
    h.stop().await;
}

#[tokio::test]
async fn direct_methods_round_trip_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["m", "silent"]).await;
    let long = Duration::from_secs(20);
    assert!(matches!(
        h.hub.invoke("m", "ping", json!(null), long).await,
        Err(MethodError::NotConnected { .. })
    ));
    let mut m = h.connect("m").await;
    assert!(matches!(
        h.hub.invoke("m", "ping", json!(null), long).await,
        Err(MethodError::NotSubscribed { .. })
    ));
    m.subscribe("$iothub/methods/POST/#").await;
    let responder = tokio::spawn(async move {
        for _ in 0..2 {
            let p = m.publish_in().await;
            let rest = p.topic.strip_prefix("$iothub/methods/POST/").unwrap();
            let (name, query) = rest.split_once('/').unwrap();
            let rid = query.strip_prefix("?$rid=").unwrap().to_owned();
            let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            let (status, answer) = match name {
                "echo" => (200, serde_json::to_vec(&json!({"got": body})).unwrap()),
                _ => (404, Vec::new()),
            };
            m.client
                .publish(
                    format!("$iothub/methods/res/{status}/?$rid={rid}"),
                    QoS::AtLeastOnce,
                    false,
                    answer,
                )
                .await
                .unwrap();
        }
        m
    });
    let (status, payload) = h
        .hub
        .invoke("m", "echo", json!({"x": 1}), long)
        .await
        .unwrap();
    assert_eq!((status, payload), (200, json!({"got": {"x": 1}})));
    let (status, payload) = h.hub.invoke("m", "nope", json!({}), long).await.unwrap();
    assert_eq!((status, payload), (404, serde_json::Value::Null));
    let _m = responder.await.unwrap();

    let mut silent = h.connect("silent").await;
    silent.subscribe("$iothub/methods/POST/#").await;
    let r = h
        .hub
        .invoke("silent", "ping", json!({}), Duration::from_millis(200))
        .await;
    assert!(matches!(r, Err(MethodError::Timeout { .. })), "{r:?}");
    h.stop().await;
}

#[tokio::test]
async fn an_offline_module_gets_its_backlog_in_order_and_unacked_messages_again() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[("r", A_TO_B_IN1)]);
    let mut a = h.connect("a").await;
    for i in 0..10 {
        a.send(&events("a", &format!("%24.on=out&i={i}")), format!("m{i}"))
            .await;
    }
    assert_eq!(h.hub.stats().queue_len("module/b/inputs/in1"), 10);

    // b comes with a persistent session and manual acks: it takes all ten, acks four.
    let mut b = h.connect_with("b", false, true).await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(b.publish_in().await);
    }
    let bodies: Vec<_> = first.iter().map(|p| p.payload.clone()).collect();
    let expected: Vec<_> = (0..10)
        .map(|i| bytes::Bytes::from(format!("m{i}")))
        .collect();
    assert_eq!(bodies, expected);
    for p in &first[..4] {
        b.client.ack(p).await.unwrap();
    }
    eventually("four acks stored", || {
        h.hub.stats().queue_len("module/b/inputs/in1") == 6
    })
    .await;
    b.client.disconnect().await.unwrap();
    b.closed().await;

    // Back again, without subscribing: the persistent session still has the subscription.
    let mut b = h.connect_with("b", false, false).await;
    let mut again = Vec::new();
    for _ in 0..6 {
        again.push(b.publish_in().await.payload);
    }
    assert_eq!(again, expected[4..].to_vec());
    eventually("queue drained", || {
        h.hub.stats().queue_len("module/b/inputs/in1") == 0
    })
    .await;
    assert_eq!(
        h.metric(
            "edgehub_messages_sent_total",
            Some(("endpoint", "module/b/inputs/in1"))
        ),
        10.0
    );
    h.stop().await;
}

#[tokio::test]
async fn queued_messages_survive_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[("r", A_TO_B_IN1)]);
    let mut a = h.connect("a").await;
    for i in 0..5 {
        a.send(&events("a", "%24.on=out"), format!("m{i}")).await;
    }
    let (ids, keys) = (h.ids.clone(), h.keys.clone());
    h.stop().await;

    let h = start_with(config(dir.path()), ids, keys).await;
    assert_eq!(h.hub.stats().queue_len("module/b/inputs/in1"), 5);
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    for i in 0..5 {
        assert_eq!(b.publish_in().await.payload, format!("m{i}").into_bytes());
    }
    h.stop().await;
}

#[tokio::test]
async fn expired_messages_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    let into = r#"INTO BrokeredEndpoint("/modules/b/inputs/in1")"#;
    let routes = vec![
        RouteSpec {
            name: "short".into(),
            text: format!("FROM /messages/modules/a/outputs/out WHERE kind = 'short' {into}"),
            priority: 0,
            time_to_live: Some(Duration::from_millis(200)),
        },
        RouteSpec {
            name: "long".into(),
            text: format!("FROM /messages/modules/a/outputs/out WHERE kind = 'long' {into}"),
            priority: 0,
            time_to_live: None,
        },
    ];
    h.hub
        .apply_deployment(&routes, &saf(), &BTreeMap::new())
        .unwrap();
    let mut a = h.connect("a").await;
    a.send(&events("a", "%24.on=out&kind=short"), "stale").await;
    eventually("the short-lived message expired", || {
        h.hub.stats().ttl_expired == 1
    })
    .await;
    assert_eq!(
        h.metric(
            "edgehub_messages_dropped_total",
            Some(("reason", "ttl_expiry"))
        ),
        1.0
    );
    a.send(&events("a", "%24.on=out&kind=long"), "fresh").await;
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    // Same queue, so the expired message would have come first.
    assert_eq!(&b.publish_in().await.payload[..], b"fresh");
    h.stop().await;
}

#[tokio::test]
async fn a_bad_route_is_refused_and_the_old_router_keeps_routing() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[("good", A_TO_B_IN1)]);
    let bad = route_specs(&[
        ("good", A_TO_B_IN1),
        ("broken", "FROM /messages WHERE (a = INTO $upstream"),
    ]);
    let err = h
        .hub
        .apply_deployment(&bad, &saf(), &BTreeMap::new())
        .unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    let mut twins = BTreeMap::new();
    twins.insert(ModuleId::new("b").unwrap(), json!([1]));
    assert!(h.hub.apply_deployment(&[], &saf(), &twins).is_err());
    assert_eq!(h.hub.twin("b"), None, "nothing changed");

    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut a = h.connect("a").await;
    a.send(&events("a", "%24.on=out"), "still routed").await;
    assert_eq!(&b.publish_in().await.payload[..], b"still routed");
    assert_eq!(h.hub.stats().routed.get("good"), Some(&1));
    h.stop().await;
}

#[tokio::test]
async fn bad_topics_and_oversized_bodies_are_dead_lettered_without_closing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_message_bytes = 1024;
    let (ids, keys) = identities(&["a", "b"]);
    let h = start_with(cfg, ids, keys).await;
    h.routes(&[("r", A_TO_B_IN1)]);
    let mut a = h.connect("a").await;
    a.send("foo/bar", "x").await;
    a.send(&events("a", "%24.on=out"), vec![b'x'; 2000]).await;
    a.send("$iothub/twin/GET/", "missing rid").await;
    let stats = h.hub.stats();
    assert_eq!(stats.dead_letters, 3);
    assert_eq!(
        h.metric("edgehub_dead_letters_total", Some(("reason", "bad_topic"))),
        2.0
    );
    assert_eq!(
        h.metric("edgehub_dead_letters_total", Some(("reason", "too_large"))),
        1.0
    );
    // The connection is still usable.
    a.send(&events("a", "%24.on=out"), "ok").await;
    eventually("routed", || h.hub.stats().routed.get("r") == Some(&1)).await;
    h.stop().await;
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_one_and_heartbeats_are_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a"]).await;
    assert!(h.hub.last_heartbeat("a").is_none());
    let mut first = h.connect("a").await;
    let t1 = h.hub.last_heartbeat("a").unwrap();
    let _second = h.connect("a").await;
    first.closed().await;
    assert_eq!(h.hub.stats().connected_modules, vec!["a".to_owned()]);
    assert!(h.hub.last_heartbeat("a").unwrap() >= t1);
    eventually("one connected module", || {
        h.metric("edgehub_connected_modules", None) == 1.0
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn qos0_messages_and_upstream_routes_are_queued() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    h.routes(&[
        ("r", A_TO_B_IN1),
        ("up", "FROM /messages/modules/a/* INTO $upstream"),
    ]);
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let a = h.connect("a").await;
    a.client
        .publish(events("a", "%24.on=out&k=v"), QoS::AtMostOnce, false, "q0")
        .await
        .unwrap();
    // Delivered at the lower of the publish and subscription QoS (MQTT): QoS 0 here, and the
    // queue entry is gone once handed over, without a PUBACK.
    let got = b.publish_in().await;
    assert_eq!(&got.payload[..], b"q0");
    assert_eq!(got.qos, QoS::AtMostOnce);
    eventually("QoS 0 entry left the queue", || {
        h.hub.stats().queue_len("module/b/inputs/in1") == 0
    })
    .await;

    // While b is away, QoS 0 messages wait in its queue like QoS 1 ones, and the backlog comes
    // in publish order, each at its own QoS.
    b.client.disconnect().await.unwrap();
    b.closed().await;
    let mut a = a;
    a.client
        .publish(events("a", "%24.on=out"), QoS::AtMostOnce, false, "w0")
        .await
        .unwrap();
    a.send(&events("a", "%24.on=out"), "w1").await;
    a.client
        .publish(events("a", "%24.on=out"), QoS::AtMostOnce, false, "w2")
        .await
        .unwrap();
    eventually("backlog of three", || {
        h.hub.stats().queue_len("module/b/inputs/in1") == 3
    })
    .await;
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = b.publish_in().await;
        got.push((p.payload, p.qos));
    }
    assert_eq!(
        got,
        vec![
            (bytes::Bytes::from_static(b"w0"), QoS::AtMostOnce),
            (bytes::Bytes::from_static(b"w1"), QoS::AtLeastOnce),
            (bytes::Bytes::from_static(b"w2"), QoS::AtMostOnce),
        ]
    );
    eventually("backlog drained", || {
        h.hub.stats().queue_len("module/b/inputs/in1") == 0
    })
    .await;

    let up = h.hub.upstream_queue();
    let batch = up.next_batch(10).await.unwrap();
    assert_eq!(batch.len(), 4);
    assert_eq!(&batch[0].message.body[..], b"q0");
    assert_eq!(batch[0].message.property("k"), Some("v"));
    assert_eq!(
        batch[0].message.system.get(SysProp::ConnectionModuleId),
        Some("a")
    );
    assert!(up.next_batch(10).await.unwrap().is_empty());
    up.rewind();
    assert_eq!(up.next_batch(10).await.unwrap().len(), 4);
    let acks: Vec<_> = batch.iter().map(|m| (m.priority, m.seq)).collect();
    up.ack(&acks).await.unwrap();
    up.rewind();
    assert!(up.next_batch(10).await.unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_full_store_refuses_messages_without_acknowledging_them() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &["a", "b"]).await;
    let tiny = edge_manifest::StoreAndForward {
        time_to_live: Duration::from_secs(60),
        max_size_bytes: Some(1),
    };
    h.hub
        .apply_deployment(&route_specs(&[("r", A_TO_B_IN1)]), &tiny, &BTreeMap::new())
        .unwrap();
    let mut a = h.connect("a").await;
    a.client
        .publish(
            events("a", "%24.on=out"),
            QoS::AtLeastOnce,
            false,
            "too much",
        )
        .await
        .unwrap();
    eventually("the refusal is counted", || {
        h.hub.stats().store_refused == 1
    })
    .await;
    assert_eq!(
        h.metric(
            "edgehub_messages_refused_total",
            Some(("reason", "store_full"))
        ),
        1.0
    );
    assert_eq!(h.hub.stats().queue_len("module/b/inputs/in1"), 0);
    // Nothing was acknowledged: a PUBACK would be queued before this twin response.
    a.client
        .publish("$iothub/twin/GET/?$rid=1", QoS::AtMostOnce, false, " ")
        .await
        .unwrap();
    loop {
        match a.next().await.unwrap() {
            rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => {
                panic!("a refused message was acknowledged")
            }
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                assert!(p.topic.starts_with("$iothub/twin/res/200/"));
                break;
            }
            _ => {}
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn unmatched_messages_go_to_the_configured_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, keys) = identities(&["a", "b", "catch"]);
    let mut cfg = config(dir.path());
    cfg.unmatched = Some(r#"BrokeredEndpoint("/modules/catch/inputs/unmatched")"#.into());
    let h = start_with(cfg, ids, keys).await;
    h.routes(&[("ab", A_TO_B_IN1)]);
    let mut b = h.connect("b").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"))
        .await;
    let mut catch = h.connect("catch").await;
    catch
        .subscribe(&format!("devices/{DEVICE}/modules/catch/inputs/#"))
        .await;
    let mut a = h.connect("a").await;
    a.send(&events("a", "%24.on=out"), "routed").await;
    a.send(&events("a", "%24.on=other"), "unmatched").await;

    let p = b.publish_in().await;
    assert_eq!(input_of(&p.topic, "b").0, "in1");
    assert_eq!(&p.payload[..], b"routed");
    let p = catch.publish_in().await;
    let (input, msg) = input_of(&p.topic, "catch");
    assert_eq!(input, "unmatched");
    assert_eq!(&p.payload[..], b"unmatched");
    // The message keeps its origin.
    assert_eq!(msg.system.get(SysProp::ConnectionModuleId), Some("a"));
    assert_eq!(h.hub.stats().unmatched, 0, "nothing was dropped");
    assert_eq!(
        h.metric(
            "edgehub_messages_routed_total",
            Some(("route", "$unmatched"))
        ),
        1.0
    );
    assert_eq!(
        h.metric(
            "edgehub_messages_dropped_total",
            Some(("reason", "no_route"))
        ),
        0.0
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unmatched_setting_that_is_not_a_sink_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = identities(&["a"]);
    let mut cfg = config(dir.path());
    cfg.unmatched = Some(r#"BrokeredEndpoint("/modules/catch")"#.into());
    let Err(err) = edge_hub::Hub::start(
        cfg,
        ids,
        &prometheus::Registry::new(),
        tokio_util::sync::CancellationToken::new(),
        &tokio_util::task::TaskTracker::new(),
    )
    .await
    else {
        panic!("a hub started with a bad unmatched sink");
    };
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("hub.unmatched"), "{text}");
    // The column counts within the value: the string at character 18 is not a module input.
    assert!(text.contains("column 18"), "{text}");
}
