//! The Unix-socket MQTT listener for modules on this device ([`Hub::listen_unix`]).
//!
//! A module that edged starts runs on the same machine as the hub, so the TCP loopback stack
//! buys it nothing: on a Unix socket each packet costs less kernel work (no segments, no
//! acknowledgements, no checksums), and file permissions keep other users off the hub. The
//! modules' MQTT client (rumqttc) flushes every packet with its own write, so this is a large
//! part of a module's CPU per message (ARCHITECTURE.md, "Modules reach the hub over a Unix
//! socket"). Each accepted connection goes through the very same [`crate::session::serve`] as a
//! TCP one: same CONNECT authentication, ACL, routing, queues, twins and methods.

use crate::{Hub, HubError, Inner};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;

impl Hub {
    /// Binds an MQTT listener on the Unix socket `path` that serves modules exactly like the
    /// TCP one. The socket is made readable and writable by its owner and group only. A socket
    /// left at `path` by an earlier run is replaced; any other file there is an error. The
    /// listener stops with the hub, which then removes the socket file.
    ///
    /// # Errors
    /// [`HubError::BindUnix`] when `path` holds something else or cannot be bound (e.g. a path
    /// longer than the 107 bytes Linux allows for a socket).
    pub async fn listen_unix(&self, path: &Path) -> Result<(), HubError> {
        let bind_err = |source| HubError::BindUnix {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
            Ok(_) => {
                return Err(bind_err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                )));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        self.inner.tracker.spawn(accept_loop(
            Arc::clone(&self.inner),
            listener,
            path.to_owned(),
        ));
        tracing::info!(path = %path.display(), "Hub listening on a Unix socket.");
        Ok(())
    }
}

async fn accept_loop(hub: Arc<Inner>, listener: UnixListener, path: PathBuf) {
    crate::accept_until_cancelled(
        &hub,
        "unix",
        || listener.accept(),
        |(sock, _)| {
            hub.tracker
                .spawn(crate::session::serve(Arc::clone(&hub), sock, "unix".into()));
        },
    )
    .await;
    drop(listener);
    let _ = std::fs::remove_file(&path);
}
