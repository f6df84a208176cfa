//! The edge CA and the hub's TLS server certificate.
//!
//! On first start edged makes an EC P-256 CA (`data_dir/certs/edge-ca.pem`, key
//! `edge-ca.key.pem`, mode 0600) and keeps it: the workload API hands its certificate to modules
//! as the trust bundle, so it must outlive restarts. At every start it issues a fresh server
//! certificate for the TLS listener, signed by that CA, whose subjectAltName is the gateway
//! host name (as an IP address when it is one) plus `localhost` and `127.0.0.1`; Python's `ssl`
//! checks only the subjectAltName, never the CN. It is written next to the CA
//! (`edge-hub-server.pem`, key 0600) for operators and `openssl s_client`.
//!
//! Reloading needs no certificate parser: the CA's subject is fixed and its key identifier is
//! derived from its key, so an issuer rebuilt from the stored key signs certificates that chain
//! to the stored CA certificate.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const CA_CERT: &str = "edge-ca.pem";
const CA_KEY: &str = "edge-ca.key.pem";
const SERVER_CERT: &str = "edge-hub-server.pem";
const SERVER_KEY: &str = "edge-hub-server.key.pem";

/// The CA's subject; fixed, so that a reloaded issuer matches the stored certificate.
const CA_NAME: &str = "edged Edge CA";

/// The edge CA.
///
/// # Invariants
/// `cert_pem` is the certificate of `issuer`'s key and subject, as stored in `dir`.
pub struct EdgeCa {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for EdgeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The current calendar year (UTC), close enough for validity windows that start a year back.
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // 31 556 952 s is the mean Gregorian year.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Letters, digits, `-` and `.`, in labels of 1 to 63 characters.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Writes `text` to `path` with `mode` (through a temporary file and a rename).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

impl EdgeCa {
    /// Loads the CA from `dir`, or creates it there (directory 0700, key 0600).
    ///
    /// # Errors
    /// When the directory cannot be created, or a stored file cannot be read or parsed.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("cannot read {}", cert_path.display()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a private key", key_path.display()))?;
            tracing::info!(dir = %dir.display(), "Edge CA loaded.");
            return Ok(Self {
                dir: dir.to_owned(),
                cert_pem,
                issuer: Issuer::new(ca_params(), key),
            });
        }
        let key = KeyPair::generate().context("cannot generate the edge CA key")?;
        let mut params = ca_params();
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
        let cert = params
            .self_signed(&key)
            .context("cannot sign the edge CA")?;
        // The key first: a certificate without its key would be reloaded as a new CA anyway.
        write_file(&key_path, &key.serialize_pem(), 0o600)?;
        write_file(&cert_path, &cert.pem(), 0o644)?;
        tracing::info!(dir = %dir.display(), "Edge CA created.");
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA certificate (PEM): the workload API's trust bundle.
    #[must_use]
    pub fn trust_bundle(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for `gateway_hostname` and returns the TLS configuration of
    /// the hub's listener (TLS 1.2 and 1.3, chain = server certificate + CA).
    ///
    /// # Errors
    /// When the host name is not a valid DNS name or IP address, or signing or writing fails.
    pub fn server_config(&self, gateway_hostname: &str) -> Result<Arc<ServerConfig>> {
        let mut names = vec![gateway_hostname.to_owned()];
        for extra in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(extra)) {
                names.push(extra.to_owned());
            }
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) if !is_host_name(n) => {
                    bail!("`{n}` is not a valid gateway host name")
                }
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .with_context(|| format!("`{n}` is not a valid gateway host name")),
            })
            .collect::<Result<_>>()?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, gateway_hostname);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
        let key = KeyPair::generate().context("cannot generate the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign the server certificate")?;
        write_file(&self.dir.join(SERVER_KEY), &key.serialize_pem(), 0o600)?;
        write_file(&self.dir.join(SERVER_CERT), &cert.pem(), 0o644)?;
        let ca_der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .context("the stored edge CA is not a PEM certificate")?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version")?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .context("the server certificate does not fit its key")?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A TLS 1.2 handshake against `server` from a client trusting only `bundle`, checking
    /// `name`.
    async fn handshake(server: Arc<ServerConfig>, bundle: &str, name: &str) -> Result<()> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c?)?;
        }
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server_side = tokio::spawn(async move {
            let mut s = TlsAcceptor::from(server).accept(b).await?;
            s.write_all(b"ok").await?;
            s.shutdown().await?;
            anyhow::Ok(())
        });
        let mut c = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from(name.to_owned())?, a)
            .await?;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await?;
        server_side.await??;
        anyhow::ensure!(got == b"ok");
        Ok(())
    }

    #[tokio::test]
    async fn the_ca_is_kept_and_a_reloaded_one_still_issues_trusted_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let first = EdgeCa::load_or_create(&certs).unwrap();
        let bundle = first.trust_bundle().to_owned();
        assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"));
        for (file, mode) in [(CA_KEY, 0o600), (CA_CERT, 0o644)] {
            let m = std::fs::metadata(certs.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{file}");
        }
        assert_eq!(
            std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777,
            0o700
        );
        handshake(first.server_config("edge-gw").unwrap(), &bundle, "edge-gw")
            .await
            .unwrap();
        let m = std::fs::metadata(certs.join(SERVER_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);

        // A restart: same CA, new server certificates that chain to the bundle the modules
        // already hold.
        let second = EdgeCa::load_or_create(&certs).unwrap();
        assert_eq!(second.trust_bundle(), bundle);
        let server = second.server_config("10.1.2.3").unwrap();
        handshake(server.clone(), &bundle, "10.1.2.3")
            .await
            .unwrap();
        handshake(server.clone(), &bundle, "localhost")
            .await
            .unwrap();
        handshake(server.clone(), &bundle, "127.0.0.1")
            .await
            .unwrap();
        assert!(handshake(server, &bundle, "other-host").await.is_err());

        // Another CA's bundle does not trust it.
        let other = EdgeCa::load_or_create(&dir.path().join("other")).unwrap();
        assert!(
            handshake(
                second.server_config("edge-gw").unwrap(),
                other.trust_bundle(),
                "edge-gw"
            )
            .await
            .is_err()
        );
        assert!(second.server_config("not a host").is_err());
    }
}
