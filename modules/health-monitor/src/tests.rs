use super::*;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

fn cfg(v: Value) -> HealthConfig {
    edge_sdk::parse_config(&v).unwrap()
}

fn cfg_err(v: Value) -> String {
    edge_sdk::parse_config::<HealthConfig>(&v).unwrap_err()
}

fn rules(v: Value) -> Vec<Rule> {
    cfg(json!({ "rules": v })).effective_rules()
}

/// A realistic /metrics text for one module and its input queue.
fn metrics_text(status: &str, restarts: u64, queue: u64, received: u64) -> String {
    let statuses = [
        "running",
        "backoff",
        "failed",
        "stopped",
        "unknown",
        "unhealthy",
    ];
    let mut t = String::from(
        "# HELP edgeagent_module_status Current runtime status of a module (1 = current).\n\
         # TYPE edgeagent_module_status gauge\n",
    );
    for s in statuses {
        let v = u8::from(s == status);
        t +=
            &format!("edgeagent_module_status{{module=\"historian-ingest\",status=\"{s}\"}} {v}\n");
    }
    t += "edgeagent_module_status{module=\"onnx-scoring\",status=\"running\"} 1\n";
    t += &format!(
        "# TYPE edgeagent_module_restarts_total counter\n\
         edgeagent_module_restarts_total{{module=\"historian-ingest\"}} {restarts}\n\
         edgeagent_module_restarts_total{{module=\"onnx-scoring\"}} 0\n\
         edgehub_module_heartbeat_age_seconds{{module=\"historian-ingest\"}} 1.5\n\
         edgehub_module_heartbeat_age_seconds{{module=\"onnx-scoring\"}} 0.25\n\
         edgehub_messages_received_total{{module=\"historian-ingest\"}} {received}\n\
         edgehub_messages_sent_total{{endpoint=\"module/onnx-scoring/inputs/samples\"}} {received}\n\
         edgehub_messages_sent_total{{endpoint=\"$upstream\"}} 7\n\
         edgehub_queue_length{{endpoint=\"module/onnx-scoring/inputs/samples\"}} {queue}\n\
         edgehub_queue_oldest_age_seconds{{endpoint=\"module/onnx-scoring/inputs/samples\"}} 0.5\n\
         edgehub_queue_length{{endpoint=\"$upstream\"}} 0\n\
         edgehub_dead_letters_total{{reason=\"no_route\"}} 2\n"
    );
    t
}

fn snap(b: &mut SnapshotBuilder, text: &str, now: Instant) -> Snapshot {
    b.build(Ok(Metrics::parse(text)), DeviceSnapshot::default(), now)
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

// ---------- config ----------

#[test]
fn empty_twin_gets_default_rules() {
    let c = cfg(json!({"$version": 3}));
    assert_eq!(c.interval, Duration::from_secs(5));
    let r = c.effective_rules();
    assert_eq!(r, default_rules());
    assert!(r.iter().any(|r| r.name == "module-down"));
    assert!(r.iter().any(|r| r.name == "queue-backlog"));
    assert!(HealthConfig::default().check().is_ok());
    // Explicit empty list disables everything.
    assert!(cfg(json!({"rules": []})).effective_rules().is_empty());
}

#[test]
fn rules_parse_with_defaults_and_durations() {
    let r = rules(json!([
        {"name": "module-down", "kind": "moduleStatus", "notIn": ["running"], "for": "10s", "severity": "failed"},
        {"kind": "queueLength", "endpoint": "$upstream", "above": 1000, "for": "30s", "clearFor": "1m"},
        {"kind": "heartbeatAge", "above": "30s"},
        {"kind": "metric", "metric": "dcs_connected", "labels": {"module": "opcua-*"}, "notEquals": 1}
    ]));
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].severity, Severity::Failed);
    assert_eq!(r[0].for_, Duration::from_secs(10));
    assert_eq!(
        r[0].clear_for,
        Duration::from_secs(10),
        "clearFor defaults to for"
    );
    assert_eq!(r[1].name, "queueLength");
    assert_eq!(r[1].clear_for, Duration::from_secs(60));
    assert_eq!(r[1].severity, Severity::Degraded);
    assert_eq!(
        r[2].kind,
        RuleKind::HeartbeatAge {
            module: "*".into(),
            above: Duration::from_secs(30)
        }
    );
    assert!(matches!(&r[3].kind, RuleKind::Metric { not_equals: Some(v), .. } if *v == 1.0));
}

#[test]
fn bad_configs_are_rejected_naming_the_field() {
    let e = cfg_err(json!({"rules": [{"kind": "queueLength", "abov": 3}]}));
    assert!(e.contains("rules[0]") && e.contains("abov"), "{e}");
    let e = cfg_err(json!({"rules": [{"kind": "cpu", "abovePercent": 90, "fore": "1m"}]}));
    assert!(e.contains("fore"), "{e}");
    let e = cfg_err(json!({"rules": [{"kind": "nope"}]}));
    assert!(e.contains("nope"), "{e}");
    let e = cfg_err(json!({"intervall": "5s"}));
    assert!(e.contains("intervall"), "{e}");
    let e = cfg_err(
        json!({"rules": [{"kind": "cpu", "abovePercent": 90}, {"kind": "cpu", "abovePercent": 80}]}),
    );
    assert!(
        e.contains("rules[1].name") && e.contains("duplicate"),
        "{e}"
    );
    let e = cfg_err(
        json!({"rules": [{"kind": "moduleStatus", "in": ["failed"], "notIn": ["running"]}]}),
    );
    assert!(e.contains("rules[0].in"), "{e}");
    let e = cfg_err(
        json!({"rules": [{"kind": "disk", "freeBelowPercent": 10, "severity": "healthy"}]}),
    );
    assert!(e.contains("rules[0].severity"), "{e}");
    let e = cfg_err(json!({"interval": "0s", "metricsUrl": "https://x/metrics"}));
    assert!(e.contains("interval:") && e.contains("metricsUrl:"), "{e}");
    let e = cfg_err(json!({"rules": [{"kind": "metric", "metric": "x"}]}));
    assert!(e.contains("rules[0].above"), "{e}");
}

#[test]
fn glob_patterns() {
    assert!(glob_match("*", "anything"));
    assert!(glob_match("module/*/inputs/*", "module/a/inputs/b"));
    assert!(!glob_match("module/*/inputs/*", "$upstream"));
    assert!(glob_match("opcua-*", "opcua-writer"));
    assert!(!glob_match("opcua-*", "onnx-scoring"));
    assert!(glob_match("a*b*c", "a--b--c"));
    assert!(!glob_match("a*b*c", "a--c--b"));
    assert!(!glob_match("ab*ba", "aba"));
    assert!(glob_match("exact", "exact"));
    assert!(!glob_match("exact", "exactly"));
}

// ---------- prometheus text ----------

#[test]
fn parses_a_realistic_metrics_text() {
    let text = "\
# HELP edgehub_queue_length Messages waiting per endpoint.
# TYPE edgehub_queue_length gauge
edgehub_queue_length{endpoint=\"$upstream\"} 12
edgehub_queue_length{endpoint=\"module/onnx-scoring/inputs/samples\"} 0

edgehub_up 1 1700000000000
weird{a=\"x\\\"y\",b=\"line\\nbreak\",c=\"back\\\\slash\",} +Inf
nan_metric NaN
negative{x=\"1\"} -3.5e-2
this is not a metric
broken{a=\"unterminated} 1
noval{a=\"1\"}
";
    let m = Metrics::parse(text);
    assert_eq!(m.series.len(), 6, "{m:?}");
    assert_eq!(m.skipped, 3);
    assert_eq!(
        m.value("edgehub_queue_length", &[("endpoint", "$upstream")]),
        Some(12.0)
    );
    assert_eq!(m.value("edgehub_up", &[]), Some(1.0));
    let w = &m.series[3];
    assert_eq!(w.label("a"), Some("x\"y"));
    assert_eq!(w.label("b"), Some("line\nbreak"));
    assert_eq!(w.label("c"), Some("back\\slash"));
    assert_eq!(w.value, f64::INFINITY);
    assert!(m.value("nan_metric", &[]).unwrap().is_nan());
    assert_eq!(m.value("negative", &[("x", "1")]), Some(-0.035));
    assert_eq!(parse_line("# comment"), Ok(None));
    assert_eq!(parse_line("1abc 3"), Err(PromError::BadName));
    assert!(matches!(
        parse_line("abc 3 4 5"),
        Err(PromError::BadValue(_))
    ));
}

// ---------- snapshot ----------

#[test]
fn snapshot_views_and_rates() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let s1 = snap(&mut b, &metrics_text("running", 2, 5, 100), t0);
    let hi = &s1.modules["historian-ingest"];
    assert_eq!(hi.status.as_deref(), Some("running"));
    assert_eq!(hi.restarts, Some(2));
    assert_eq!(hi.heartbeat_age_seconds, Some(1.5));
    assert_eq!(hi.out_per_sec, None, "no rate on the first scrape");
    assert_eq!(
        s1.queues["module/onnx-scoring/inputs/samples"].length,
        Some(5)
    );
    assert_eq!(s1.dead_letters.total, 2);
    assert_eq!(s1.dead_letters.per_min, None);

    let s2 = snap(&mut b, &metrics_text("backoff", 3, 5, 150), secs(t0, 10));
    assert_eq!(
        s2.modules["historian-ingest"].status.as_deref(),
        Some("backoff")
    );
    assert_eq!(s2.modules["historian-ingest"].out_per_sec, Some(5.0));
    assert_eq!(s2.modules["onnx-scoring"].in_per_sec, Some(5.0));
    assert_eq!(s2.queues["$upstream"].sent_per_sec, Some(0.0));
    assert_eq!(s2.dead_letters.per_min, Some(0.0));

    // A counter reset (edged restarted) counts what is there as new.
    let s3 = snap(&mut b, &metrics_text("running", 0, 5, 20), secs(t0, 20));
    assert_eq!(s3.modules["historian-ingest"].out_per_sec, Some(2.0));

    // A scrape error keeps the counters for the next rate.
    let e = b.build(Err("down".into()), DeviceSnapshot::default(), secs(t0, 30));
    assert_eq!(e.scrape_error.as_deref(), Some("down"));
    assert!(e.modules.is_empty());
    let s4 = snap(&mut b, &metrics_text("running", 0, 5, 60), secs(t0, 40));
    assert_eq!(s4.modules["historian-ingest"].out_per_sec, Some(2.0));

    assert_eq!(endpoint_module("module/a/inputs/x"), Some("a"));
    assert_eq!(endpoint_module("$upstream"), None);
}

// ---------- evaluator ----------

#[test]
fn killed_module_degrades_with_reason_then_recovers_after_clear_for() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"name": "module-down", "kind": "moduleStatus", "notIn": ["running"], "for": "10s", "clearFor": "15s"}
    ])));
    let running = metrics_text("running", 0, 0, 0);
    let killed = metrics_text("backoff", 1, 0, 0);

    let e = ev.evaluate(&snap(&mut b, &running, t0), t0);
    assert_eq!(e.state, Severity::Healthy);
    assert!(e.transitions.is_empty());

    // Killed: pending for `for` before it fires.
    for s in [5, 10] {
        let e = ev.evaluate(&snap(&mut b, &killed, secs(t0, s)), secs(t0, s));
        assert_eq!(e.state, Severity::Healthy, "at {s}s");
    }
    let e = ev.evaluate(&snap(&mut b, &killed, secs(t0, 15)), secs(t0, 15));
    assert_eq!(e.state, Severity::Degraded);
    assert_eq!(e.reasons.len(), 1);
    assert_eq!(e.reasons[0].message, "historian-ingest is backoff");
    assert_eq!(e.reasons[0].subject, "historian-ingest");
    assert_eq!(e.reasons[0].rule, "module-down");
    assert_eq!(
        e.transitions,
        vec![Transition {
            from: Severity::Healthy,
            to: Severity::Degraded,
            reasons: e.reasons.clone()
        }]
    );

    // Restarted: stays degraded until clear for `clearFor`.
    for s in [20, 25, 30] {
        let e = ev.evaluate(&snap(&mut b, &running, secs(t0, s)), secs(t0, s));
        assert_eq!(e.state, Severity::Degraded, "at {s}s");
        assert!(e.transitions.is_empty());
    }
    let e = ev.evaluate(&snap(&mut b, &running, secs(t0, 35)), secs(t0, 35));
    assert_eq!(e.state, Severity::Healthy);
    assert!(e.reasons.is_empty());
    assert_eq!(e.transitions.len(), 1);
    assert_eq!(e.transitions[0].from, Severity::Degraded);
    assert_eq!(e.transitions[0].to, Severity::Healthy);
}

#[test]
fn queue_growing_past_threshold_fires_one_event() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"name": "queue-backlog", "kind": "queueLength", "endpoint": "module/*", "above": 1000, "for": "30s", "severity": "failed"}
    ])));
    let mut events = Vec::new();
    // The queue grows by 100 every 5 s; it passes 1000 at 55 s and must stay above for 30 s.
    for i in 0..=20u64 {
        let now = secs(t0, i * 5);
        let e = ev.evaluate(
            &snap(&mut b, &metrics_text("running", 0, i * 100, 0), now),
            now,
        );
        events.extend(e.transitions.iter().map(|t| (i * 5, t.clone())));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    let (at, t) = &events[0];
    assert_eq!(*at, 85, "above from 55 s, fires 30 s later");
    assert_eq!(t.to, Severity::Failed);
    assert_eq!(
        t.reasons[0].message,
        "queue module/onnx-scoring/inputs/samples holds 1700 messages (above 1000)"
    );
    // $upstream does not match the pattern.
    assert!(t.reasons.iter().all(|r| r.subject != "$upstream"));
}

#[test]
fn flapping_status_does_not_storm() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"kind": "moduleStatus", "notIn": ["running"], "for": "10s"}
    ])));
    let mut transitions = 0;
    // Toggles every 5 s, faster than `for`: never fires.
    for i in 0..40u64 {
        let st = if i % 2 == 0 { "backoff" } else { "running" };
        let now = secs(t0, i * 5);
        transitions += ev
            .evaluate(&snap(&mut b, &metrics_text(st, i, 0, 0), now), now)
            .transitions
            .len();
    }
    assert_eq!(transitions, 0);

    // Once active, toggling faster than clearFor keeps it active: one event, not a storm.
    let mut ev = Evaluator::new(rules(json!([
        {"kind": "moduleStatus", "notIn": ["running"], "for": "0s", "clearFor": "30s"}
    ])));
    let mut transitions = Vec::new();
    for i in 0..40u64 {
        let st = if i % 3 == 0 { "running" } else { "failed" };
        let now = secs(t0, 300 + i * 5);
        let e = ev.evaluate(&snap(&mut b, &metrics_text(st, i, 0, 0), now), now);
        transitions.extend(e.transitions);
    }
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(ev.state(), Severity::Degraded);
}

#[test]
fn scrape_errors_freeze_module_conditions_and_fire_the_scrape_rule() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"name": "down", "kind": "moduleStatus", "notIn": ["running"]},
        {"name": "metrics", "kind": "scrape", "for": "10s", "severity": "failed"}
    ])));
    let e = ev.evaluate(&snap(&mut b, &metrics_text("backoff", 0, 0, 0), t0), t0);
    assert_eq!(e.state, Severity::Degraded);
    let fail = |b: &mut SnapshotBuilder, s| {
        b.build(
            Err("connection refused".into()),
            DeviceSnapshot::default(),
            secs(t0, s),
        )
    };
    let e = ev.evaluate(&fail(&mut b, 5), secs(t0, 5));
    assert_eq!(e.state, Severity::Degraded, "module condition kept");
    assert_eq!(e.reasons.len(), 1);
    let e = ev.evaluate(&fail(&mut b, 15), secs(t0, 15));
    assert_eq!(e.state, Severity::Failed);
    assert_eq!(e.reasons[0].rule, "metrics", "worst first");
    assert_eq!(
        e.reasons[0].message,
        "metrics unavailable: connection refused"
    );
    assert_eq!(e.reasons[1].message, "historian-ingest is backoff");
}

#[test]
fn restarts_within_window() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"kind": "restarts", "above": 2, "window": "1m"}
    ])));
    let mut states = Vec::new();
    for (s, n) in [(0, 5), (10, 6), (20, 7), (30, 8), (100, 8), (130, 8)] {
        let now = secs(t0, s);
        let e = ev.evaluate(&snap(&mut b, &metrics_text("running", n, 0, 0), now), now);
        states.push((s, e.state, e.reasons.first().map(|r| r.message.clone())));
    }
    assert_eq!(states[2].1, Severity::Healthy, "2 restarts is not above 2");
    assert_eq!(states[3].1, Severity::Degraded);
    assert_eq!(
        states[3].2.as_deref(),
        Some("historian-ingest restarted 3 times in 1m")
    );
    assert_eq!(states[5].1, Severity::Healthy, "{states:?}");
}

#[test]
fn generic_metric_rules_watch_module_values() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let mut ev = Evaluator::new(rules(json!([
        {"name": "dcs-link", "kind": "metric", "metric": "module_dcs_connected",
         "labels": {"module": "opcua-*"}, "notEquals": 1, "absent": true, "severity": "failed"},
        {"name": "latency", "kind": "metric", "metric": "module_scoring_latency_seconds", "above": 0.5}
    ])));
    let e = ev.evaluate(
        &snap(&mut b, "module_scoring_latency_seconds 0.1\n", t0),
        t0,
    );
    assert_eq!(e.state, Severity::Failed);
    assert_eq!(
        e.reasons[0].message,
        "module_dcs_connected{module=\"opcua-*\"} is absent"
    );
    let text =
        "module_dcs_connected{module=\"opcua-writer\"} 0\nmodule_scoring_latency_seconds 0.9\n";
    let e = ev.evaluate(&snap(&mut b, text, secs(t0, 5)), secs(t0, 5));
    let msgs: Vec<&str> = e.reasons.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "module_dcs_connected{module=\"opcua-writer\"} = 0 (not 1)",
            "module_scoring_latency_seconds = 0.9 (above 0.5)"
        ]
    );
    let text =
        "module_dcs_connected{module=\"opcua-writer\"} 1\nmodule_scoring_latency_seconds 0.2\n";
    let e = ev.evaluate(&snap(&mut b, text, secs(t0, 10)), secs(t0, 10));
    assert_eq!(e.state, Severity::Healthy);
    assert_eq!(e.transitions.len(), 1);
}

#[test]
fn device_rules() {
    let t0 = Instant::now();
    let mut ev = Evaluator::new(rules(json!([
        {"kind": "cpu", "abovePercent": 90, "for": "1m"},
        {"kind": "memory", "abovePercent": 80},
        {"kind": "disk", "freeBelowPercent": 10},
        {"kind": "clock", "jumpAbove": "2s"}
    ])));
    let dev = DeviceSnapshot {
        cpu_percent: Some(95.0),
        memory_used_percent: Some(85.0),
        disk_free_percent: Some(4.0),
        data_dir: "/var/lib/edged".into(),
        clock_jump_seconds: Some(3.5),
        ..DeviceSnapshot::default()
    };
    // Device rules work even while the metrics are unavailable.
    let s = SnapshotBuilder::new().build(Err("x".into()), dev, t0);
    let e = ev.evaluate(&s, t0);
    let msgs: Vec<&str> = e.reasons.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "memory 85% used (above 80%)",
            "disk of /var/lib/edged: 4.0% free (below 10%)",
            "wall clock jumped 3.5s (above 2s)"
        ]
    );
    let e = ev.evaluate(&s, secs(t0, 60));
    assert_eq!(e.reasons[0].message, "cpu 95% (above 90%)");
    assert!(e.reasons_changed);
    assert!(e.transitions.is_empty(), "still degraded");
}

#[test]
fn set_rules_keeps_state_of_surviving_rules() {
    let t0 = Instant::now();
    let mut b = SnapshotBuilder::new();
    let r = rules(json!([
        {"name": "down", "kind": "moduleStatus", "notIn": ["running"]},
        {"name": "q", "kind": "queueLength", "above": 1}
    ]));
    let mut ev = Evaluator::new(r.clone());
    let e = ev.evaluate(&snap(&mut b, &metrics_text("backoff", 0, 5, 0), t0), t0);
    assert_eq!(e.reasons.len(), 2);
    ev.set_rules(r[..1].to_vec());
    let e = ev.evaluate(
        &snap(&mut b, &metrics_text("backoff", 0, 5, 0), secs(t0, 5)),
        secs(t0, 5),
    );
    assert_eq!(e.reasons.len(), 1);
    assert!(e.transitions.is_empty());
    assert!(e.reasons_changed);
}

// ---------- monitor ----------

#[test]
fn monitor_step_builds_messages_and_reports() {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let c = cfg(json!({
        "metricsUrl": "http://127.0.0.1:1/metrics",
        "reportEvery": "1m",
        "rules": [{"name": "module-down", "kind": "moduleStatus", "notIn": ["running"]}]
    }));
    let mut m = Monitor::new(&c, None, ".".into());
    let step = |m: &mut Monitor, status: &str, s: u64| {
        m.step(
            Ok(Metrics::parse(&metrics_text(status, 0, 3, 10 * s))),
            DeviceSnapshot::default(),
            secs(t0, s),
            wall + Duration::from_secs(s),
        )
    };
    let o = step(&mut m, "running", 0);
    assert_eq!(o.state, Severity::Healthy);
    assert!(o.events.is_empty());
    assert_eq!(o.health["state"], "healthy");
    assert_eq!(o.health["modules"]["historian-ingest"]["status"], "running");
    assert_eq!(
        o.health["queues"]["module/onnx-scoring/inputs/samples"]["length"],
        3
    );
    assert_eq!(o.health["metrics"]["url"], "http://127.0.0.1:1/metrics");
    assert!(o.report.is_some(), "first evaluation is reported");

    let o = step(&mut m, "running", 5);
    assert!(o.report.is_none(), "nothing changed, reportEvery not due");
    assert_eq!(o.health["modules"]["historian-ingest"]["outPerSec"], 10.0);

    let o = step(&mut m, "backoff", 10);
    assert_eq!(o.state, Severity::Degraded);
    assert_eq!(o.events.len(), 1);
    let ev = &o.events[0];
    assert_eq!(ev["from"], "healthy");
    assert_eq!(ev["to"], "degraded");
    assert_eq!(ev["at"], "2023-11-14T22:13:30.000Z");
    assert_eq!(ev["reasons"][0]["message"], "historian-ingest is backoff");
    let rep = &o.report.as_ref().unwrap()["health"];
    assert_eq!(rep["state"], "degraded");
    assert_eq!(rep["since"], "2023-11-14T22:13:30.000Z");
    assert_eq!(rep["lastEvaluation"], "2023-11-14T22:13:30.000Z");
    assert_eq!(rep["reasons"][0]["severity"], "degraded");
    assert_eq!(o.health["since"], "2023-11-14T22:13:30.000Z");

    let o = step(&mut m, "backoff", 15);
    assert!(o.events.is_empty() && o.report.is_none());
    let o = step(&mut m, "backoff", 75);
    assert!(o.report.is_some(), "reportEvery elapsed");

    // Without a URL the scrape rule of the defaults has something to say.
    let m = Monitor::new(&HealthConfig::default(), None, ".".into());
    assert!(m.url().unwrap_err().contains("EDGE_METRICS_ADDR"));
    let m = Monitor::new(&HealthConfig::default(), Some("127.0.0.1:9600"), ".".into());
    assert_eq!(
        m.url().unwrap().to_string(),
        "http://127.0.0.1:9600/metrics"
    );
}

// ---------- device ----------

#[test]
fn device_parsing() {
    let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\nintr 1\n";
    let a = parse_proc_stat(stat).unwrap();
    assert_eq!(
        a,
        CpuTimes {
            total: 1000,
            idle: 800
        }
    );
    let b = CpuTimes {
        total: 1100,
        idle: 850,
    };
    assert_eq!(cpu_percent(a, b), Some(50.0));
    assert_eq!(cpu_percent(a, a), None);
    assert_eq!(parse_proc_stat("intr 1\n"), None);

    let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
    assert_eq!(parse_meminfo(mem), Some((1_024_000, 256_000)));
    assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);

    let t0 = Instant::now();
    let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let d = |w: u64, m: u64| {
        clock_jump(
            w0,
            t0,
            w0 + Duration::from_secs(w),
            t0 + Duration::from_secs(m),
        )
    };
    assert_eq!(d(5, 5), Duration::ZERO);
    assert_eq!(d(65, 5), Duration::from_secs(60));
    assert_eq!(d(0, 5), Duration::from_secs(5));
    let back = clock_jump(
        w0,
        t0,
        w0 - Duration::from_secs(10),
        t0 + Duration::from_secs(5),
    );
    assert_eq!(back, Duration::from_secs(15));
}

#[test]
fn device_probe_reads_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = DeviceProbe::new(dir.path().to_path_buf());
    let t0 = Instant::now();
    let a = p.read(t0);
    assert!(a.disk_total_bytes.unwrap() > 0);
    assert!((0.0..=100.0).contains(&a.disk_free_percent.unwrap()));
    assert!(a.clock_jump_seconds.is_none());
    assert!(a.clock.ends_with('Z'));
    if std::path::Path::new("/proc/meminfo").exists() {
        assert!(a.memory_total_bytes.unwrap() > 0);
    }
    let b = p.read(t0);
    assert!(b.clock_jump_seconds.is_some());
}

// ---------- http ----------

#[test]
fn http_urls_and_responses() {
    let u = HttpUrl::parse("http://127.0.0.1:9600/metrics").unwrap();
    assert_eq!(u.authority, "127.0.0.1:9600");
    assert_eq!(u.path, "/metrics");
    assert_eq!(
        HttpUrl::parse("http://edged").unwrap().to_string(),
        "http://edged:80/metrics"
    );
    assert_eq!(
        HttpUrl::parse("http://[::1]:9/m").unwrap().authority,
        "[::1]:9"
    );
    assert_eq!(
        HttpUrl::parse("http://[::1]/m").unwrap().authority,
        "[::1]:80"
    );
    for bad in [
        "https://x/",
        "ftp://x",
        "http://",
        "http://h:port/x",
        "http://a b/",
    ] {
        assert!(HttpUrl::parse(bad).is_err(), "{bad}");
    }
    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(parse_response(ok).unwrap(), b"hello");
    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
    assert_eq!(parse_response(chunked).unwrap(), b"hello world");
    assert_eq!(
        parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
        Err(Response::Status(404))
    );
    assert!(matches!(parse_response(b"garbage"), Err(Response::Bad(_))));
    assert!(matches!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
        Err(Response::Bad(_))
    ));
}
