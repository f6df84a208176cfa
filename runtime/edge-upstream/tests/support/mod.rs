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
}

impl Mosquitto {
    /// Starts mosquitto on a free port with its files in `dir`; `persist` keeps sessions and
    /// retained messages across [`Mosquitto::stop`] / [`Mosquitto::restart`].
    pub async fn start(dir: &Path, persist: bool) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut m = Self {
            child: None,
            port,
            dir: dir.to_owned(),
        };
        m.write_conf(persist)?;
        m.restart().await?;
        Ok(m)
    }

    fn write_conf(&self, persist: bool) -> Result<()> {
        let mut conf = format!(
            "listener {} 127.0.0.1\nlog_dest stderr\nlog_type all\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
            self.port
        );
        if persist {
            conf.push_str(&format!(
                // Running as root, mosquitto drops to user `mosquitto`, which cannot write
                // into a private temporary directory; keep the invoking user.
                "persistence true\npersistence_location {}/\nuser {}\n",
                self.dir.display(),
                std::env::var("USER").unwrap_or_else(|_| "root".into())
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join("mosquitto.conf"), conf)?;
        Ok(())
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
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
