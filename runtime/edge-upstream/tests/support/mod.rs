//! A real Mosquitto broker on a free port, for tests and the fleet benchmark.

#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Where the project's setup script installs Mosquitto (Debian's package).
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto child process.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    tls: Option<Pki>,
}

impl Mosquitto {
    /// Starts mosquitto on a free port with its files in `dir`; `persist` keeps sessions and
    /// retained messages across [`Mosquitto::stop`] / [`Mosquitto::restart`].
    pub async fn start(dir: &Path, persist: bool) -> Result<Self> {
        Self::launch(dir, persist, None).await
    }

    async fn launch(dir: &Path, persist: bool, tls: Option<Pki>) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut m = Self {
            child: None,
            port,
            dir: dir.to_owned(),
            tls,
        };
        m.write_conf(persist)?;
        m.restart().await?;
        Ok(m)
    }

    /// Starts mosquitto with only a TLS 1.2+ listener whose certificate `pki` issued for
    /// 127.0.0.1; every client must present a certificate from the same CA, and its common
    /// name becomes its user name.
    pub async fn start_tls(dir: &Path, pki: &Pki) -> Result<Self> {
        Self::launch(dir, false, Some(pki.clone())).await
    }

    fn write_conf(&self, persist: bool) -> Result<()> {
        let mut conf = format!(
            "listener {} 127.0.0.1\nlog_dest stderr\nlog_type all\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
            self.port
        );
        if let Some(pki) = &self.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\ntls_version tlsv1.2\nrequire_certificate true\nuse_identity_as_username true\n",
                pki.ca.display(),
                pki.server.0.display(),
                pki.server.1.display(),
            ));
        }
        // Running as root, mosquitto drops to user `mosquitto`, which can read neither a
        // private temporary directory nor the keys in it; keep the invoking user.
        conf.push_str(&format!(
            "user {}\n",
            std::env::var("USER").unwrap_or_else(|_| "root".into())
        ));
        if persist {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.display(),
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join("mosquitto.conf"), conf)?;
        Ok(())
    }

    /// `mqtt://127.0.0.1:PORT` (`mqtts://` for a TLS broker).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        if !Path::new(MOSQUITTO).is_file() {
            bail!(
                "{MOSQUITTO} is missing: install Debian's `mosquitto` package (the setup script does)"
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot spawn mosquitto")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("mosquitto did not listen on {} within 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker with SIGTERM (it saves its state when persistent) and waits.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .context("mosquitto did not stop")??;
        }
        Ok(())
    }
}

/// A throw-away PKI in a directory: a CA, a server certificate for 127.0.0.1 and client
/// certificates on demand, all PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate and key.
    pub server: (PathBuf, PathBuf),
    ca_key_pem: String,
}

impl Pki {
    /// Makes the CA and the server certificate in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = Self::ca_params()?.self_signed(&key)?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem())?;
        let mut pki = Self {
            dir: dir.to_owned(),
            ca,
            server: (PathBuf::new(), PathBuf::new()),
            ca_key_pem: key.serialize_pem(),
        };
        pki.server = pki.issue("broker", &["127.0.0.1", "localhost"])?;
        Ok(pki)
    }

    fn ca_params() -> Result<rcgen::CertificateParams> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test fleet CA");
        Ok(params)
    }

    /// Issues a certificate with common name `cn` (and `sans`); returns (cert, key) files.
    pub fn issue(&self, cn: &str, sans: &[&str]) -> Result<(PathBuf, PathBuf)> {
        use rcgen::{CertificateParams, Issuer, KeyPair};
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(Self::ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer)?;
        let (c, k) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key.pem")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}
