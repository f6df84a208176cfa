//! The TLS MQTT listener (port 8883) that unmodified Azure IoT SDK modules connect to.
//!
//! Azure's SDKs cannot turn TLS off or change the port (AZURE-SDK.md §2, §5), so the hub
//! offers a second head: each accepted socket does a TLS handshake (rustls; the caller's
//! [`ServerConfig`] must allow TLS 1.2, which Python's SDK insists on) and then goes through
//! the very same [`crate::session::serve`] as a plain connection: same authentication, ACL,
//! routing, queues, twins and methods. The handshake runs in the connection's own task under a
//! deadline, so a slow or silent client never holds up the accept loop.

use crate::{Hub, HubError, Inner};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    /// Binds a TLS MQTT listener on `listen` that serves modules exactly like the plain one,
    /// and returns the bound address (port 0 picks a free one). It stops with the hub.
    ///
    /// # Errors
    /// [`HubError::Bind`] when the address cannot be bound.
    pub async fn listen_tls(
        &self,
        listen: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> Result<SocketAddr, HubError> {
        let bind_err = |source| HubError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let inner = Arc::clone(&self.inner);
        self.inner
            .tracker
            .spawn(accept_loop(inner, listener, TlsAcceptor::from(config)));
        tracing::info!(%addr, "Hub listening for TLS.");
        Ok(addr)
    }
}

async fn accept_loop(hub: Arc<Inner>, listener: TcpListener, acceptor: TlsAcceptor) {
    crate::accept_until_cancelled(
        &hub,
        "tls",
        || listener.accept(),
        |(sock, peer)| {
            let _ = sock.set_nodelay(true);
            let hub2 = Arc::clone(&hub);
            let acceptor = acceptor.clone();
            hub.tracker.spawn(async move {
                let handshake = tokio::select! {
                    () = hub2.cancel.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)) => r,
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        crate::session::serve(hub2, stream, format!("tls:{peer}")).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake failed.");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out."),
                }
            });
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    //! The rules of AZURE-SDK.md as the Python SDK exercises them, over TLS 1.2.

    use super::*;
    use bytes::BytesMut;
    use edge_core::ModuleId;
    use edge_core::identity::IdentityRegistry;
    use edge_core::sas::{ModuleKey, make_token, module_uri};
    use edge_manifest::{RouteSpec, StoreAndForward};
    use rumqttc::mqttbytes::v4::{
        ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe,
    };
    use rumqttc::mqttbytes::{self, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    use tokio_rustls::{TlsConnector, client::TlsStream};

    type Client = TlsStream<TcpStream>;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A CA and a server certificate for `localhost` signed by it.
    fn certs() -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        (Arc::new(server), ca_cert.der().clone())
    }

    /// A TLS 1.2-only client (what Python's `ssl.PROTOCOL_TLSv1_2` context offers).
    async fn dial(addr: SocketAddr, ca: &CertificateDer<'static>) -> Client {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        stream
    }

    async fn send(c: &mut Client, p: Packet) {
        let mut buf = BytesMut::new();
        p.write(&mut buf, usize::MAX).unwrap();
        c.write_all(&buf).await.unwrap();
        c.flush().await.unwrap();
    }

    /// The next packet, or `None` when the server closed the connection.
    async fn read(c: &mut Client, buf: &mut BytesMut) -> Option<Packet> {
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            loop {
                match Packet::read(buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("bad packet: {e}"),
                }
                if c.read_buf(buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no packet within 10 s")
    }

    /// A CONNECT shaped exactly like the Python SDK's (AZURE-SDK.md §3).
    fn sdk_connect(key: &ModuleKey, expiry: u64) -> Connect {
        let mut c = Connect::new("dev/m");
        c.clean_session = false;
        c.keep_alive = 60;
        c.set_login(
            "hub.test/dev/m/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%283.11.7%3BLinux%29",
            make_token(key, &module_uri("hub.test", "dev", "m"), expiry),
        );
        c
    }

    async fn connack(c: &mut Client, buf: &mut BytesMut) -> ConnAck {
        match read(c, buf).await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn publish(topic: &str, pkid: u16, payload: &'static [u8]) -> Packet {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
        p.pkid = pkid;
        Packet::Publish(p)
    }

    #[tokio::test]
    async fn the_python_sdk_profile_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityRegistry::new();
        let key = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new("m").unwrap(), key.clone());
        let (inner, cancel, tracker) = crate::testing::hub(dir.path(), ids).await;
        let hub = Hub {
            inner: Arc::clone(&inner),
        };
        hub.apply_deployment(
            &[RouteSpec {
                name: "loop".into(),
                text: r#"FROM /messages/modules/m/outputs/out INTO BrokeredEndpoint("/modules/m/inputs/in1")"#.into(),
                priority: 0,
                time_to_live: None,
            }],
            &StoreAndForward {
                time_to_live: Duration::from_secs(60),
                max_size_bytes: None,
            },
            &std::collections::BTreeMap::new(),
        )
        .unwrap();
        let (server, ca) = certs();
        let addr = hub
            .listen_tls("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        let far = crate::now_ms() / 1000 + 3600;

        // An expired token: CONNACK 5, counted.
        let mut c = dial(addr, &ca).await;
        let mut buf = BytesMut::new();
        send(&mut c, Packet::Connect(sdk_connect(&key, 1_000))).await;
        assert_eq!(
            connack(&mut c, &mut buf).await.code,
            ConnectReturnCode::NotAuthorized
        );
        assert_eq!(hub.stats().auth_refused, 1);

        let mut c = dial(addr, &ca).await;
        let mut buf = BytesMut::new();
        send(&mut c, Packet::Connect(sdk_connect(&key, far))).await;
        assert_eq!(
            connack(&mut c, &mut buf).await.code,
            ConnectReturnCode::Success
        );

        // Twin GET before any subscription to `$iothub/twin/res/#`: answered anyway, with
        // `$version` in both sections.
        send(&mut c, publish("$iothub/twin/GET/?$rid=r-1", 1, b" ")).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(read(&mut c, &mut buf).await.unwrap());
        }
        let twin = got
            .iter()
            .find_map(|p| match p {
                Packet::Publish(p) if p.topic == "$iothub/twin/res/200/?$rid=r-1" => {
                    Some(serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap())
                }
                _ => None,
            })
            .expect("twin response");
        assert_eq!(twin["desired"]["$version"], 1);
        assert_eq!(twin["reported"]["$version"], 1);
        assert!(got.contains(&Packet::PubAck(PubAck::new(1))));

        // Reported patch: 204 with the new version.
        send(
            &mut c,
            publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=r-2",
                2,
                br#"{"status": "ok", "n": 1}"#,
            ),
        )
        .await;
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(read(&mut c, &mut buf).await.unwrap());
        }
        assert!(got.iter().any(|p| matches!(p, Packet::Publish(p)
            if p.topic == "$iothub/twin/res/204/?$rid=r-2&$version=2" && p.payload.is_empty())));

        // Subscribe to inputs, then send one output message twice (a paho retransmission
        // with DUP set after a reconnect): both are acknowledged, and delivered.
        let mut sub = Subscribe::new("devices/dev/modules/m/inputs/#", QoS::AtLeastOnce);
        sub.pkid = 3;
        send(&mut c, Packet::Subscribe(sub)).await;
        assert!(matches!(
            read(&mut c, &mut buf).await,
            Some(Packet::SubAck(_))
        ));
        let events = "devices/dev/modules/m/messages/events/%24.on=out&%24.mid=m-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert%20level=high%2Fvery&b=x%26y%3Dz&%24.cdid=forged";
        send(&mut c, publish(events, 4, b"{\"temp\": 20}")).await;
        let Packet::Publish(mut again) = publish(events, 4, b"{\"temp\": 20}") else {
            unreachable!()
        };
        again.dup = true;
        send(&mut c, Packet::Publish(again)).await;
        let mut acks = 0;
        let mut inputs = Vec::new();
        while acks < 2 || inputs.len() < 2 {
            match read(&mut c, &mut buf).await.unwrap() {
                Packet::PubAck(a) if a.pkid == 4 => acks += 1,
                Packet::Publish(p) => {
                    send(&mut c, Packet::PubAck(PubAck::new(p.pkid))).await;
                    inputs.push(p);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Parse the topic as the SDK does: split on `/`, input name in part 5, bag in part 6,
        // pairs split on `&` and then on every `=`.
        let parts: Vec<&str> = inputs[0].topic.split('/').collect();
        assert_eq!(parts[..5], ["devices", "dev", "modules", "m", "inputs"]);
        assert_eq!(parts[5], "in1");
        assert_eq!(parts.len(), 7, "{}", inputs[0].topic);
        let pairs: Vec<Vec<&str>> = parts[6]
            .split('&')
            .map(|p| p.split('=').collect())
            .collect();
        assert!(pairs.iter().all(|p| p.len() == 2), "{}", parts[6]);
        let has = |k: &str, v: &str| pairs.iter().any(|p| p[0] == k && p[1] == v);
        assert!(has("%24.mid", "m-1"));
        assert!(has("%24.cid", "corr-1"));
        assert!(has("%24.ct", "application%2Fjson"));
        assert!(has("%24.ce", "utf-8"));
        assert!(has("%24.cdid", "dev"), "the hub sets the sender's device");
        assert!(has("%24.cmid", "m"));
        assert!(has("alert%20level", "high%2Fvery"));
        assert!(has("b", "x%26y%3Dz"));
        assert_eq!(&inputs[0].payload[..], b"{\"temp\": 20}");

        // Token renewal: DISCONNECT, then CONNECT again with the same client id and
        // clean session 0 and no SUBSCRIBE: inputs still arrive.
        send(&mut c, Packet::Disconnect).await;
        assert_eq!(read(&mut c, &mut buf).await, None);
        let mut c = dial(addr, &ca).await;
        let mut buf = BytesMut::new();
        send(&mut c, Packet::Connect(sdk_connect(&key, far + 1))).await;
        assert!(connack(&mut c, &mut buf).await.session_present);
        send(&mut c, publish(events, 5, b"after renewal")).await;
        let mut delivered = false;
        while !delivered {
            if let Some(Packet::Publish(p)) = read(&mut c, &mut buf).await {
                assert_eq!(&p.payload[..], b"after renewal");
                delivered = true;
            }
        }

        // One connection per identity: a second one replaces the first.
        let mut c2 = dial(addr, &ca).await;
        let mut buf2 = BytesMut::new();
        send(&mut c2, Packet::Connect(sdk_connect(&key, far))).await;
        assert_eq!(
            connack(&mut c2, &mut buf2).await.code,
            ConnectReturnCode::Success
        );
        // The first connection is closed by the hub.
        while read(&mut c, &mut buf).await.is_some() {}
        assert_eq!(inner.registry.connected(), vec!["m".to_owned()]);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_plain_client_on_the_tls_port_gets_nothing_and_the_hub_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, cancel, tracker) =
            crate::testing::hub(dir.path(), IdentityRegistry::new()).await;
        let hub = Hub { inner };
        let (server, ca) = certs();
        let addr = hub
            .listen_tls("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        // Plain MQTT on the TLS port: the handshake fails and the socket closes.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        Packet::Connect(Connect::new("dev/m"))
            .write(&mut buf, usize::MAX)
            .unwrap();
        plain.write_all(&buf).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(!rest.starts_with(&[0x20]), "no CONNACK over plain TCP");
        // A proper TLS client still gets through.
        let mut c = dial(addr, &ca).await;
        let mut buf = BytesMut::new();
        send(
            &mut c,
            Packet::Connect(sdk_connect(&ModuleKey::generate().unwrap(), u64::MAX / 2)),
        )
        .await;
        assert_eq!(
            connack(&mut c, &mut buf).await.code,
            ConnectReturnCode::NotAuthorized
        );
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
