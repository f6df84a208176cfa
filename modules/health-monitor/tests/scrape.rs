//! Scrapes a real HTTP server (a tiny one in the test) and runs monitor cycles against it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use health_monitor::{HealthConfig, HttpUrl, Metrics, Monitor, ScrapeError, Severity, fetch};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `body` (read at each request) with status `status` on 127.0.0.1:0, chunked when
/// `chunked`. Returns the address.
async fn serve(body: Arc<Mutex<String>>, status: u16, chunked: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                assert!(head.starts_with("GET /metrics HTTP/1.1\r\n"), "{head}");
                let resp = if chunked {
                    let mid = body.len() / 2;
                    format!(
                        "HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                        mid,
                        &body[..mid],
                        body.len() - mid,
                        &body[mid..]
                    )
                } else {
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

fn text(status: &str, queue: u64) -> String {
    format!(
        "# HELP edgeagent_module_status Current status.\n\
         # TYPE edgeagent_module_status gauge\n\
         edgeagent_module_status{{module=\"historian-ingest\",status=\"running\"}} {}\n\
         edgeagent_module_status{{module=\"historian-ingest\",status=\"backoff\"}} {}\n\
         edgeagent_module_restarts_total{{module=\"historian-ingest\"}} 1\n\
         edgehub_module_heartbeat_age_seconds{{module=\"historian-ingest\"}} 0.5\n\
         edgehub_queue_length{{endpoint=\"$upstream\"}} {queue}\n\
         edgehub_queue_oldest_age_seconds{{endpoint=\"$upstream\"}} 2\n",
        u8::from(status == "running"),
        u8::from(status == "backoff"),
    )
}

#[tokio::test]
async fn scrapes_and_parses_a_real_http_server() {
    for chunked in [false, true] {
        let body = Arc::new(Mutex::new(text("running", 12)));
        let addr = serve(body, 200, chunked).await;
        let got = fetch(&HttpUrl::from_addr(&addr), Duration::from_secs(10))
            .await
            .unwrap();
        let m = Metrics::parse(&got);
        assert_eq!(m.skipped, 0);
        assert_eq!(m.series.len(), 6);
        assert_eq!(
            m.value("edgehub_queue_length", &[("endpoint", "$upstream")]),
            Some(12.0)
        );
        assert_eq!(
            m.value(
                "edgeagent_module_status",
                &[("module", "historian-ingest"), ("status", "running")]
            ),
            Some(1.0)
        );
    }
}

#[tokio::test]
async fn http_errors_are_reported() {
    let addr = serve(Arc::new(Mutex::new("oops".into())), 500, false).await;
    let e = fetch(&HttpUrl::from_addr(&addr), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(e, ScrapeError::Status { status: 500, .. }), "{e}");

    // A port nobody listens on: bind, take the address, close.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap().to_string();
    drop(l);
    let e = fetch(&HttpUrl::from_addr(&dead), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(e, ScrapeError::Io { .. }), "{e}");
}

#[tokio::test]
async fn monitor_cycles_follow_a_killed_and_restarted_module() {
    let body = Arc::new(Mutex::new(text("running", 0)));
    let addr = serve(body.clone(), 200, false).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg: HealthConfig = edge_sdk::parse_config(&json!({
        "rules": [
            {"name": "module-down", "kind": "moduleStatus", "notIn": ["running"]},
            {"name": "queue-backlog", "kind": "queueLength", "endpoint": "$upstream", "above": 100},
            {"kind": "scrape"}
        ]
    }))
    .unwrap();
    let mut m = Monitor::new(&cfg, Some(&addr), dir.path().to_path_buf());

    let o = m.cycle().await;
    assert_eq!(o.state, Severity::Healthy, "{}", o.health);
    assert_eq!(o.health["modules"]["historian-ingest"]["restarts"], 1);
    assert_eq!(o.health["metrics"]["error"], serde_json::Value::Null);
    assert!(o.health["device"]["diskTotalBytes"].as_u64().unwrap() > 0);

    *body.lock().unwrap() = text("backoff", 0);
    let o = m.cycle().await;
    assert_eq!(o.state, Severity::Degraded);
    assert_eq!(o.events.len(), 1);
    assert_eq!(
        o.events[0]["reasons"][0]["message"],
        "historian-ingest is backoff"
    );

    *body.lock().unwrap() = text("running", 500);
    let o = m.cycle().await;
    assert_eq!(o.state, Severity::Degraded, "queue now");
    assert!(o.events.is_empty(), "still degraded: no event");
    assert_eq!(
        o.health["reasons"][0]["message"],
        "queue $upstream holds 500 messages (above 100)"
    );
    assert!(o.report.is_some(), "reasons changed");

    *body.lock().unwrap() = text("running", 0);
    let o = m.cycle().await;
    assert_eq!(o.state, Severity::Healthy);
    assert_eq!(o.events.len(), 1);
    assert_eq!(o.events[0]["to"], "healthy");
}
