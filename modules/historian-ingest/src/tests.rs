use super::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn tep_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tep")
}

fn cfg(v: serde_json::Value) -> IngestConfig {
    edge_sdk::parse_config(&v).unwrap()
}

fn start() -> SystemTime {
    humantime::parse_rfc3339("2024-01-01T00:00:00Z").unwrap()
}

/// Runs a replayer to the end, returning samples and skipped/stopped rows.
fn drain(r: &mut Replayer) -> (Vec<Sample>, Vec<BadRow>, Vec<BadRow>) {
    let (mut samples, mut skipped, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100_000 {
        match r.next_event(start()) {
            Event::Sample(s) => samples.push(s),
            Event::Skipped(b) => skipped.push(b),
            Event::Stopped(b) => stopped.push(b),
            Event::FileDone(_) => {}
            Event::Finished => return (samples, skipped, stopped),
        }
    }
    panic!("replay did not finish");
}

fn row_line(v: f64) -> String {
    vec![format!("{v:.7e}"); TEP_VARIABLES].join("   ")
}

#[test]
fn tep_rows_first_and_last_values_match_the_file() {
    let f = tep_dir().join("d01_te.dat");
    let mut r = Replayer::new(cfg(json!({
        "source": {"type": "tep", "files": [f], "layout": "rows"},
        "start": "2024-01-01T00:00:00Z"
    })));
    let (samples, skipped, _) = drain(&mut r);
    assert!(skipped.is_empty());
    assert_eq!(samples.len(), 960);
    let first = &samples[0];
    assert_eq!(&*first.run_id, "d01_te");
    assert_eq!(first.index, 1);
    assert_eq!(first.tags.len(), 52);
    assert_eq!(first.tags[0], "XMEAS(1)");
    assert_eq!(first.tags[51], "XMV(11)");
    assert_eq!(first.values[0], Some(0.25025));
    assert_eq!(first.values[1], Some(3657.2));
    assert_eq!(first.values[51], Some(18.049));
    let last = &samples[959];
    assert_eq!(last.index, 960);
    assert_eq!(last.values[0], Some(0.78337));
    assert_eq!(last.values[51], Some(15.28));
    // Sample k is at start + k × 3 min.
    assert_eq!(first.ts, start() + Duration::from_secs(180));
    assert_eq!(samples[160].ts, start() + Duration::from_secs(161 * 180));
    assert_eq!(r.stats().state, ReplayState::Done);
    assert_eq!(r.stats().files_done, 1);
    assert_eq!(r.stats().samples, 960);
}

#[test]
fn tep_transposed_layout_reads_d00() {
    for layout in ["transposed", "auto"] {
        let f = tep_dir().join("d00.dat");
        let mut r = Replayer::new(cfg(json!({
            "source": {"type": "tep", "files": [f], "layout": layout},
        })));
        let (samples, skipped, _) = drain(&mut r);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(samples.len(), 500, "layout {layout}");
        assert_eq!(samples[0].values[0], Some(0.24987));
        assert_eq!(samples[0].values[1], Some(3642.6));
        assert_eq!(samples[0].values[51], Some(18.351));
        assert_eq!(samples[499].values[0], Some(0.24916));
        assert_eq!(samples[499].values[51], Some(19.999));
        assert_eq!(samples[499].index, 500);
    }
}

#[test]
fn transposed_file_read_as_rows_is_bad_rows_not_a_panic() {
    let f = tep_dir().join("d00.dat");
    let mut r = Replayer::new(cfg(json!({"source": {"type": "tep", "files": [f]}})));
    let (samples, skipped, _) = drain(&mut r);
    assert!(samples.is_empty());
    assert_eq!(skipped.len(), 52);
    assert_eq!(
        skipped[0].reason,
        BadRowReason::ColumnCount {
            expected: 52,
            found: 500
        }
    );
}

#[test]
fn bad_rows_are_counted_with_file_and_line_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("run7.dat");
    let mut lines = vec![row_line(1.0), row_line(2.0)];
    lines.push(vec!["1.0"; 51].join(" ")); // line 3: 51 values
    let mut l4 = vec!["1.0"; 52];
    l4[4] = "abc";
    lines.push(l4.join(" ")); // line 4: non-numeric in XMEAS(5)
    lines.push(String::new()); // line 5: empty, ignored
    let mut l6 = vec!["1.0"; 52];
    l6[43] = "NaN";
    lines.push(l6.join(" ")); // line 6: NaN in XMV(3)
    lines.push(row_line(6.0)); // line 7
    std::fs::write(&f, lines.join("\n")).unwrap();

    let mut r = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": [&f]}, "badRows": "skip"}),
    ));
    let (samples, skipped, stopped) = drain(&mut r);
    assert!(stopped.is_empty());
    assert_eq!(
        samples.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 2, 6]
    );
    assert_eq!(samples[2].values[0], Some(6.0));
    let lines: Vec<u64> = skipped.iter().map(|b| b.line).collect();
    assert_eq!(lines, [3, 4, 6]);
    assert_eq!(
        skipped[0].reason,
        BadRowReason::ColumnCount {
            expected: 52,
            found: 51
        }
    );
    assert!(
        matches!(&skipped[1].reason, BadRowReason::NotNumeric { column, text } if column == "XMEAS(5)" && text == "abc")
    );
    assert!(matches!(&skipped[2].reason, BadRowReason::NaN { column } if column == "XMV(3)"));
    let stats = r.stats();
    assert_eq!(stats.bad_rows, 3);
    assert_eq!(stats.last_bad_rows.len(), 3);
    assert!(
        stats.last_bad_rows[1].ends_with("run7.dat:4: column XMEAS(5): \"abc\" is not a number")
    );
    assert_eq!(stats.state, ReplayState::Done);
    assert_eq!(stats.report()["replay"]["state"], "done");
    assert_eq!(stats.report()["replay"]["badRows"], 3);
}

#[test]
fn bad_row_stops_the_replay_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.dat");
    let g = dir.path().join("b.dat");
    std::fs::write(
        &f,
        [row_line(1.0), "1 2 3".into(), row_line(3.0)].join("\n"),
    )
    .unwrap();
    std::fs::write(&g, row_line(9.0)).unwrap();
    let mut r = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": [&f, &g]}, "badRows": "stop"}),
    ));
    let (samples, skipped, stopped) = drain(&mut r);
    assert_eq!(samples.len(), 1);
    assert!(skipped.is_empty());
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].line, 2);
    assert_eq!(r.stats().state, ReplayState::StoppedOnBadRow);
    assert_eq!(r.stats().report()["replay"]["state"], "stopped-on-bad-row");
    assert_eq!(r.next_event(start()), Event::Finished);
}

#[test]
fn allowed_nan_is_null_with_bad_quality() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("n.dat");
    let mut l = vec!["1.0"; 52];
    l[0] = "nan";
    std::fs::write(&f, l.join(" ")).unwrap();
    let mut r = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": [&f]}, "allowNaN": true}),
    ));
    let (samples, skipped, _) = drain(&mut r);
    assert!(skipped.is_empty());
    assert_eq!(samples[0].values[0], None);
    assert_eq!(samples[0].quality(), Quality::Bad);
    let body = samples[0].body();
    assert!(body["values"]["XMEAS(1)"].is_null());
    assert_eq!(body["quality"], "bad");
}

#[test]
fn missing_file_is_a_bad_file_not_a_panic() {
    let mut r = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": ["/nonexistent/x.dat"]}}),
    ));
    let (samples, skipped, _) = drain(&mut r);
    assert!(samples.is_empty());
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].line, 0);
    assert!(skipped[0].reason.is_file_level());
    assert_eq!(r.stats().files_done, 1);
}

#[test]
fn csv_with_header_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("plant.csv");
    std::fs::write(
        &f,
        "time,FI101,TI202\n2024-05-01T10:00:00Z,1.5,80\n2024-05-01T10:00:10Z,x,81\n1714557620000,1.7,82\n",
    )
    .unwrap();
    let mut r = Replayer::new(cfg(json!({
        "source": {"type": "csv", "files": [&f], "timestampColumn": "time"}
    })));
    let (samples, skipped, _) = drain(&mut r);
    assert_eq!(samples.len(), 2);
    assert_eq!(&*samples[0].tags, ["FI101".to_owned(), "TI202".to_owned()]);
    assert_eq!(samples[0].values, [Some(1.5), Some(80.0)]);
    assert_eq!(&*samples[0].run_id, "plant");
    assert_eq!(
        samples[0].ts,
        humantime::parse_rfc3339("2024-05-01T10:00:00Z").unwrap()
    );
    assert_eq!(samples[1].index, 3);
    assert_eq!(
        samples[1].ts,
        UNIX_EPOCH + Duration::from_millis(1_714_557_620_000)
    );
    assert_eq!(samples[1].offset, Duration::from_secs(20));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].line, 3);
}

#[test]
fn csv_with_columns_and_tag_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("raw.csv");
    std::fs::write(&f, "1714557600000;1.0;2.0;3.0\n1714557610000;4.0;5.0\n").unwrap();
    let mut r = Replayer::new(cfg(json!({
        "source": {"type": "csv", "files": [&f], "header": false, "delimiter": ";",
                   "columns": ["timestamp", "c1", "c2", "c3"]},
        "tags": {"c3": "XMEAS(3)", "c1": "XMEAS(1)"}
    })));
    let (samples, skipped, _) = drain(&mut r);
    assert_eq!(samples.len(), 1);
    // File column order is kept; unmapped columns are dropped.
    assert_eq!(
        &*samples[0].tags,
        ["XMEAS(1)".to_owned(), "XMEAS(3)".to_owned()]
    );
    assert_eq!(samples[0].values, [Some(1.0), Some(3.0)]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].line, 2);
    assert_eq!(
        skipped[0].reason,
        BadRowReason::ColumnCount {
            expected: 4,
            found: 3
        }
    );
}

#[test]
fn mapping_a_tag_the_file_lacks_is_a_bad_file() {
    let f = tep_dir().join("d01_te.dat");
    let mut r = Replayer::new(cfg(json!({
        "source": {"type": "tep", "files": [f]},
        "tags": {"XMEAS(99)": "X"}
    })));
    let (samples, skipped, _) = drain(&mut r);
    assert!(samples.is_empty());
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].to_string().contains("XMEAS(99)"));
}

#[test]
fn loop_restarts_and_an_all_bad_pass_ends_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.dat");
    std::fs::write(&f, [row_line(1.0), row_line(2.0)].join("\n")).unwrap();
    let mut r = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": [&f]}, "loop": true}),
    ));
    let mut indexes = Vec::new();
    while indexes.len() < 5 {
        if let Event::Sample(s) = r.next_event(start()) {
            indexes.push(s.index);
        }
    }
    assert_eq!(indexes, [1, 2, 1, 2, 1]);

    let mut bad = Replayer::new(cfg(
        json!({"source": {"type": "tep", "files": ["/nonexistent"]}, "loop": true}),
    ));
    let (samples, skipped, _) = drain(&mut bad);
    assert!(samples.is_empty());
    assert_eq!(skipped.len(), 1);
}

#[test]
fn message_has_properties_and_json_body() {
    let f = tep_dir().join("d06_te.dat");
    let mut r = Replayer::new(cfg(json!({
        "source": {"type": "tep", "files": [f], "samplePeriod": "3m"},
        "start": "2024-01-01T00:00:00Z"
    })));
    let Event::Sample(s) = r.next_event(start()) else {
        panic!("expected a sample")
    };
    let m = s.to_message();
    assert_eq!(m.property("runId"), Some("d06_te"));
    assert_eq!(m.property("sample"), Some("1"));
    assert_eq!(m.property("quality"), Some("good"));
    assert_eq!(
        m.system.get(edge_sdk::SysProp::ContentType),
        Some("application/json")
    );
    assert_eq!(
        m.system.get(edge_sdk::SysProp::ContentEncoding),
        Some("utf-8")
    );
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["runId"], "d06_te");
    assert_eq!(body["sample"], 1);
    assert_eq!(body["ts"], "2024-01-01T00:03:00.000Z");
    assert_eq!(body["values"].as_object().unwrap().len(), 52);
    let keys: Vec<&String> = body["values"].as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "XMEAS(1)");
    assert_eq!(keys[51], "XMV(11)");
}

#[test]
fn config_validation() {
    let bad = |v: serde_json::Value| edge_sdk::parse_config::<IngestConfig>(&v).unwrap_err();
    // OPC UA: a valid source, then each problem named by its field.
    let ok = cfg(
        json!({"source": {"type": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840/",
        "tep": {"namespace": 2},
        "nodes": [{"nodeId": "ns=2;s=Advisory.T2", "tag": "T2"}], "samplingInterval": "100ms"}}),
    );
    let SourceConfig::Opcua(o) = &ok.source else {
        panic!("opcua")
    };
    let nodes = o.resolved_nodes();
    assert_eq!(nodes.len(), 53);
    assert_eq!(nodes[0].node_id, "ns=2;s=TEP.XMEAS(1)");
    assert_eq!(nodes[0].tag, "XMEAS(1)");
    assert_eq!(nodes[51].node_id, "ns=2;s=TEP.XMV(11).PV");
    assert_eq!(nodes[51].tag, "XMV(11)");
    assert_eq!(nodes[52].field, "source.nodes[0].nodeId");
    assert_eq!(o.publishing(), Duration::from_millis(100));
    let opc = |extra: serde_json::Value| {
        let mut src = json!({"type": "opcua", "endpoint": "opc.tcp://h:4840/",
            "nodes": [{"nodeId": "ns=2;s=A", "tag": "A"}, {"nodeId": "ns=2;s=B", "tag": "B"}]});
        for (k, v) in extra.as_object().unwrap() {
            src[k] = v.clone();
        }
        bad(json!({ "source": src }))
    };
    let e = opc(
        json!({"nodes": [{"nodeId": "ns=2;s=A", "tag": "A"}, {"nodeId": "ns=2;q=B", "tag": "B"}]}),
    );
    assert!(
        e.contains("source.nodes[1].nodeId") && e.contains("ns=2;q=B"),
        "{e}"
    );
    let e = opc(
        json!({"nodes": [{"nodeId": "ns=2;s=A", "tag": "A"}, {"nodeId": "ns=2;s=B", "tag": "A"}]}),
    );
    assert!(
        e.contains("source.nodes[1].nodeId") && e.contains("used twice"),
        "{e}"
    );
    assert!(opc(json!({"nodes": []})).contains("source.nodes"));
    assert!(opc(json!({"endpoint": "http://h/"})).contains("source.endpoint"));
    assert!(opc(json!({"samplingInterval": "0s"})).contains("source.samplingInterval"));
    assert!(opc(json!({"publishingInterval": "0s"})).contains("source.publishingInterval"));
    assert!(
        opc(json!({"reconnectInitial": "1m", "reconnectMax": "1s"}))
            .contains("source.reconnectInitial")
    );
    assert!(bad(json!({"source": {"type": "tep", "files": []}})).contains("source.files"));
    assert!(bad(json!({"source": {"type": "tep", "files": ["a"]}, "speed": -1})).contains("speed"));
    assert!(bad(json!({"source": {"type": "tep", "files": ["a"]}, "sped": 1})).contains("sped"));
    assert!(
        bad(json!({"source": {"type": "csv", "files": ["a"], "header": false}}))
            .contains("source.columns")
    );
    assert!(
        bad(json!({"source": {"type": "tep", "files": ["a"], "layout": "cols"}}))
            .contains("unknown variant `cols`")
    );
    assert!(
        bad(json!({"source": {"type": "tep", "files": ["a"]}, "start": "yesterday"}))
            .contains("start")
    );
    let ok = cfg(
        json!({"source": {"type": "tep", "files": ["a"], "samplePeriod": "1m"}, "speed": 60.0, "badRows": "stop"}),
    );
    assert_eq!(ok.bad_rows, BadRowPolicy::Stop);
    assert_eq!(ok.report_every, Duration::from_secs(5));
    let SourceConfig::Tep(t) = ok.source else {
        panic!("tep")
    };
    assert_eq!(t.sample_period, Duration::from_secs(60));
    assert_eq!(t.layout, TepLayout::Rows);
}
