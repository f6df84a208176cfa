//! Per-message cost of the TLS listener (what Azure SDK modules use) against the plain one.
//!
//! One in-process hub, one module, the same load on both listeners: QoS 1 publishes of
//! 256-byte bodies to the module's events topic, 64 in flight, each acknowledged by the hub
//! (route to a queue, store append and batch sync). The store's fsync is off so that the
//! socket path, not the disk, dominates. The client speaks raw MQTT on rumqttc's codec, over
//! TCP or over TLS 1.2 (what Python's SDK negotiates). Prints one JSON line per figure:
//! `{"name": "...", "unit": "...", "value": ...}`.
//!
//! `cargo bench -p edge-hub --bench tls`; `BENCH_QUICK=1` for a short run.

use bytes::BytesMut;
use edge_core::identity::IdentityRegistry;
use edge_core::sas::{ModuleKey, make_token, module_uri};
use edge_core::{DeviceId, ModuleId};
use edge_hub::{Hub, HubConfig};
use edge_manifest::{RouteSpec, StoreAndForward};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::{self, QoS};
use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const DEVICE: &str = "bench-dev";
const HOST: &str = "bench.hub";
const BODY: usize = 256;
const WINDOW: usize = 64;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config and the client config that trusts it (TLS 1.2 only on the client).
fn tls() -> Res<(Arc<ServerConfig>, Arc<ClientConfig>)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &issuer)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der())?,
        )?;
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

async fn read_packet<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Res<Packet> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                if s.read_buf(buf).await? == 0 {
                    return Err("connection closed".into());
                }
            }
            Err(e) => return Err(e.to_string().into()),
        }
    }
}

/// Connects as module `m`, publishes `n` QoS 1 messages with `WINDOW` in flight and returns the
/// time from the first publish to the last PUBACK.
async fn load<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    key: &ModuleKey,
    n: usize,
) -> Res<Duration> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let mut connect = Connect::new(format!("{DEVICE}/m"));
    connect.set_login(
        format!("{HOST}/{DEVICE}/m/?api-version=2019-10-01"),
        make_token(key, &module_uri(HOST, DEVICE, "m"), expiry),
    );
    let mut out = BytesMut::new();
    let mut inb = BytesMut::new();
    Packet::Connect(connect).write(&mut out, usize::MAX)?;
    s.write_all(&out).await?;
    out.clear();
    match read_packet(&mut s, &mut inb).await? {
        Packet::ConnAck(a) if a.code == mqttbytes::v4::ConnectReturnCode::Success => {}
        other => return Err(format!("not connected: {other:?}").into()),
    }
    let topic = format!("devices/{DEVICE}/modules/m/messages/events/%24.on=out&k=v");
    let body = vec![7u8; BODY];
    let start = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < n {
        while sent < n && sent - acked < WINDOW {
            let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, body.clone());
            p.pkid = u16::try_from(sent % 60_000 + 1)?;
            Packet::Publish(p).write(&mut out, usize::MAX)?;
            sent += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if let Packet::PubAck(_) = read_packet(&mut s, &mut inb).await? {
            acked += 1;
        }
    }
    Ok(start.elapsed())
}

fn emit(out: &mut impl Write, name: &str, unit: &str, value: f64) -> std::io::Result<()> {
    let value = (value * 1000.0).round() / 1000.0;
    writeln!(
        out,
        "{{\"name\": \"{name}\", \"unit\": \"{unit}\", \"value\": {value}}}"
    )
}

fn main() -> Res<()> {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let n = if quick { 20_000 } else { 200_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let ids = IdentityRegistry::new();
        let key = ModuleKey::generate()?;
        ids.insert(ModuleId::new("m")?, key.clone());
        let mut config = HubConfig::new(DeviceId::new(DEVICE)?, HOST, dir.path());
        config.listen = "127.0.0.1:0".parse()?;
        config.store.fsync = false;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hub = Hub::start(config, ids, &prometheus::Registry::new(), cancel.clone(), &tracker).await?;
        // Route into a queue nobody reads, then drop it quickly: the append is part of the cost.
        hub.apply_deployment(
            &[RouteSpec {
                name: "sink".into(),
                text: r#"FROM /messages/modules/m/outputs/out INTO BrokeredEndpoint("/modules/sink/inputs/in")"#.into(),
                priority: 0,
                time_to_live: Some(Duration::from_secs(1)),
            }],
            &StoreAndForward { time_to_live: Duration::from_secs(1), max_size_bytes: None },
            &std::collections::BTreeMap::new(),
        )?;
        let (server, client) = tls()?;
        let tls_addr = hub.listen_tls("127.0.0.1:0".parse()?, server).await?;
        let plain_addr = hub.local_addr();

        let mut results = Vec::new();
        for round in 0..3 {
            let tcp = TcpStream::connect(plain_addr).await?;
            tcp.set_nodelay(true)?;
            let plain = load(tcp, &key, n).await?;
            let tcp = TcpStream::connect(tls_addr).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(Arc::clone(&client))
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            let secure = load(stream, &key, n).await?;
            if round > 0 {
                // The first round warms up.
                results.push((plain, secure));
            }
        }
        let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        let plain = results.iter().map(|r| per_msg(r.0)).fold(f64::INFINITY, f64::min);
        let secure = results.iter().map(|r| per_msg(r.1)).fold(f64::INFINITY, f64::min);
        let mut out = std::io::stdout().lock();
        emit(&mut out, "hub_qos1_plain_per_message", "µs/msg", plain)?;
        emit(&mut out, "hub_qos1_tls12_per_message", "µs/msg", secure)?;
        emit(&mut out, "hub_tls_overhead_per_message", "µs/msg", secure - plain)?;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        Res::Ok(())
    })
}
