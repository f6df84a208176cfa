//! How a connection to the upstream broker is made: `mqtt://` over TCP, or `mqtts://` over
//! TLS (rustls, TLS 1.2 and 1.3) with the broker's certificate checked against a CA file or,
//! without one, the system's trust store, and optionally a client certificate.
//!
//! Everything is loaded and checked when the link (or the backend) is built, so a missing
//! file, a file with no certificate or an unreadable key is an error that names the file,
//! before any connection is tried; nothing is loaded again on reconnect.

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

/// `[upstream.tls]`: the files for an `mqtts://` broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) that may sign the broker's certificate. Without
    /// it the system's trust store is used (a public cloud broker).
    pub ca_file: Option<PathBuf>,
    /// PEM file with this device's client certificate (and its chain), for brokers that
    /// authenticate devices by certificate. Goes with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// True when no file is named.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// A broker address from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or IP address; with TLS, the name the broker's certificate must carry.
    pub host: String,
    /// TCP port (1883 for `mqtt://`, 8883 for `mqtts://` when left out).
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// Why a broker URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("broker url `{0}` is not mqtt://host[:port] or mqtts://host[:port]")]
    Malformed(String),
}

/// Splits `mqtt://host[:port]` (also `tcp://`) or `mqtts://host[:port]` (also `ssl://`).
///
/// # Errors
/// [`UrlError`] for any other scheme or shape.
pub fn parse_url(url: &str) -> Result<Broker, UrlError> {
    let bad = || UrlError::Malformed(url.to_owned());
    let (rest, tls) = if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (r, true)
    } else if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (r, false)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        // `[::1]` or `[::1]:1884`
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, port_of(p)?),
            None if after.is_empty() => (h, default_port),
            None => return Err(bad()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, port_of(p)?),
            None => (rest, default_port),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(Broker {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// Why the TLS settings cannot be used; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} `{path}`")]
    Read {
        /// Which setting (`ca_file`, `cert_file`, `key_file`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{what} `{path}`: {reason}")]
    Content {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Files named for a plain `mqtt://` broker, or a certificate without its key.
    #[error("{0}")]
    Settings(String),
    /// No trust anchors: no `ca_file` and an empty system store.
    #[error("no CA certificates: set `ca_file` (the system trust store is empty)")]
    NoRoots,
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let content = |reason: String| TlsError::Content {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(content("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Builds the rustls client configuration for `files`.
///
/// # Errors
/// [`TlsError`] naming the file or setting at fault.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &files.ca_file {
        for cert in certificates("ca_file", ca)? {
            roots.add(cert).map_err(|e| TlsError::Content {
                what: "ca_file",
                path: ca.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::NoRoots);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let pem = read("key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Content {
                what: "key_file",
                path: key.clone(),
                reason: format!("no private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TlsError::Settings(
                "`cert_file` is set without `key_file`".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(TlsError::Settings(
                "`key_file` is set without `cert_file`".into(),
            ));
        }
    };
    Ok(config)
}

/// MQTT options for `broker` as `client_id`: TCP, or TLS with `files`.
///
/// # Errors
/// [`TlsError`] when the TLS files are unusable, or named for a plain `mqtt://` broker
/// (where they would silently do nothing).
pub fn mqtt_options(
    broker: &Broker,
    client_id: &str,
    files: &TlsFiles,
) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(client_id, &broker.host, broker.port);
    if broker.tls {
        let config = client_config(files)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    } else if !files.is_empty() {
        return Err(TlsError::Settings(format!(
            "TLS files are set but the broker `{}:{}` is plain mqtt://; use mqtts://",
            broker.host, broker.port
        )));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: &str, port: u16, tls: bool) -> Broker {
        Broker {
            host: host.into(),
            port,
            tls,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884"),
            Ok(b("127.0.0.1", 1884, false))
        );
        assert_eq!(parse_url("mqtt://broker"), Ok(b("broker", 1883, false)));
        assert_eq!(parse_url("tcp://broker/"), Ok(b("broker", 1883, false)));
        assert_eq!(parse_url("mqtts://b:8884"), Ok(b("b", 8884, true)));
        assert_eq!(
            parse_url("mqtts://hub.example"),
            Ok(b("hub.example", 8883, true))
        );
        assert_eq!(parse_url("ssl://b"), Ok(b("b", 8883, true)));
        assert_eq!(parse_url("mqtt://[::1]:1884"), Ok(b("::1", 1884, false)));
        for bad in ["http://b", "mqtt://b:x", "mqtt://", "mqtts://a/b", "b:1883"] {
            assert!(
                matches!(parse_url(bad), Err(UrlError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn files_for_a_plain_broker_are_refused() {
        let files = TlsFiles {
            ca_file: Some("/x/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = mqtt_options(&b("h", 1883, false), "d", &files).err();
        assert!(matches!(e, Some(TlsError::Settings(_))), "{e:?}");
        assert!(mqtt_options(&b("h", 1883, false), "d", &TlsFiles::default()).is_ok());
    }

    #[test]
    fn bad_files_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = TlsFiles {
            ca_file: Some(dir.path().join("nope.pem")),
            ..TlsFiles::default()
        };
        let e = client_config(&missing).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("ca_file") && e.contains("nope.pem")),
            "{e:?}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n")?;
        let e = client_config(&TlsFiles {
            ca_file: Some(empty),
            ..TlsFiles::default()
        })
        .err();
        assert!(
            matches!(
                e,
                Some(TlsError::Content {
                    what: "ca_file",
                    ..
                })
            ),
            "{e:?}"
        );

        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()])?;
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem())?;
        let only_cert = TlsFiles {
            ca_file: Some(ca_path.clone()),
            cert_file: Some(ca_path.clone()),
            key_file: None,
        };
        assert!(matches!(
            client_config(&only_cert),
            Err(TlsError::Settings(_))
        ));

        let key_path = dir.path().join("key.pem");
        std::fs::write(
            &key_path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )?;
        let no_key = TlsFiles {
            ca_file: Some(ca_path.clone()),
            cert_file: Some(ca_path.clone()),
            key_file: Some(key_path),
        };
        let e = client_config(&no_key).err();
        assert!(
            matches!(
                e,
                Some(TlsError::Content {
                    what: "key_file",
                    ..
                })
            ),
            "{e:?}"
        );

        let key_path = dir.path().join("good.key.pem");
        std::fs::write(&key_path, ca.signing_key.serialize_pem())?;
        let good = TlsFiles {
            ca_file: Some(ca_path.clone()),
            cert_file: Some(ca_path),
            key_file: Some(key_path),
        };
        assert!(client_config(&good).is_ok());
        Ok(())
    }
}
