//! The workload API: what Azure's module SDKs call before they connect (AZURE-SDK.md §1).
//!
//! - `GET /trust-bundle` → `{"certificate": "<PEM of the edge CA>"}` (plain PEM text).
//! - `POST /modules/{module}/genid/{genid}/sign` with `{"keyId", "algo", "data"}` →
//!   `{"digest": base64(HMAC-SHA256(module key, base64decode(data)))}`. The SDK sends the body
//!   without a `Content-Type`, so the body is read as bytes and parsed here.
//!
//! `?api-version=` is accepted and ignored, as the SDK does not check what it sends. Errors are
//! `{"message": "…"}` with 400 (bad request, wrong generation id) or 404 (unknown module).
//! It listens on a unix socket (default `data_dir/workload.sock`, mode 0600: modules run as
//! edged's user) or, for tests, on TCP. Keys and digests are never logged.
//!
//! Like the management socket, the API trusts whoever can open the socket; edgelet also
//! checks that the calling process belongs to the module (by peer pid), which is not done here.

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use edge_core::identity::IdentityRegistry;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Looks up the generation id issued to a module.
pub type GenerationLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the handlers need.
#[derive(Clone)]
pub struct WorkloadState {
    /// The edge CA certificate (PEM).
    pub trust_bundle: Arc<str>,
    /// Module keys (the ones the hub checks tokens against).
    pub identities: IdentityRegistry,
    /// Generation ids.
    pub generation: GenerationLookup,
}

/// A bound, not yet serving, listener.
#[derive(Debug)]
pub enum Bound {
    /// A unix socket.
    Unix(tokio::net::UnixListener, PathBuf),
    /// A TCP port.
    Tcp(tokio::net::TcpListener, SocketAddr),
}

impl Bound {
    /// The URI modules get as `IOTEDGE_WORKLOADURI`.
    #[must_use]
    pub fn uri(&self) -> String {
        match self {
            Bound::Unix(_, p) => format!("unix://{}", p.display()),
            Bound::Tcp(_, a) => format!("http://{a}"),
        }
    }
}

/// Binds `uri` (`unix:///abs/path`, `http://host:port`, or empty for
/// `unix://{data_dir}/workload.sock`). A stale socket file is replaced.
///
/// # Errors
/// An unsupported URI, or an address that cannot be bound.
pub async fn bind(uri: &str, data_dir: &std::path::Path) -> Result<Bound> {
    if let Some(addr) = uri.strip_prefix("http://") {
        let addr: SocketAddr = addr
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("workload URI `{uri}`: expected http://ip:port"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        return Ok(Bound::Tcp(listener, local));
    }
    let path = if uri.is_empty() {
        data_dir.join("workload.sock")
    } else if let Some(p) = uri.strip_prefix("unix://") {
        PathBuf::from(p)
    } else {
        bail!("workload URI `{uri}`: expected unix:///path or http://ip:port");
    };
    if !path.is_absolute() {
        bail!(
            "workload socket `{}` must be an absolute path",
            path.display()
        );
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(Bound::Unix(listener, path))
}

/// Serves the API on `bound` until `cancel`.
pub fn serve(bound: Bound, state: WorkloadState, cancel: CancellationToken, tracker: &TaskTracker) {
    let app = router(state);
    tracker.spawn(async move {
        let stop = cancel.cancelled_owned();
        let result = match bound {
            Bound::Unix(l, path) => {
                let r = axum::serve(l, app).with_graceful_shutdown(stop).await;
                let _ = std::fs::remove_file(path);
                r
            }
            Bound::Tcp(l, _) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        };
        if let Err(error) = result {
            tracing::error!(%error, "Workload API stopped.");
        }
    });
}

/// The routes (public for tests).
pub fn router(state: WorkloadState) -> Router {
    Router::new()
        .route("/trust-bundle", get(trust_bundle))
        .route("/modules/{module}/genid/{genid}/sign", post(sign))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"message": message.into()}))).into_response()
}

async fn trust_bundle(State(s): State<WorkloadState>) -> Response {
    axum::Json(json!({"certificate": &*s.trust_bundle})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignRequest {
    key_id: String,
    algo: String,
    data: String,
}

async fn sign(
    State(s): State<WorkloadState>,
    Path((module, genid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(key) = s.identities.key(&module) else {
        tracing::info!(%module, "Sign request for an unknown module refused.");
        return error(
            StatusCode::NOT_FOUND,
            format!("module `{module}` not found"),
        );
    };
    if (s.generation)(&module).as_deref() != Some(genid.as_str()) {
        tracing::warn!(%module, "Sign request with a wrong generation id refused.");
        return error(
            StatusCode::BAD_REQUEST,
            format!("generation id does not match module `{module}`"),
        );
    }
    let req: SignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid sign request: {e}"),
            );
        }
    };
    if req.key_id != "primary" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown keyId `{}`; only `primary` exists", req.key_id),
        );
    }
    if req.algo != "HMACSHA256" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unsupported algo `{}`; use HMACSHA256", req.algo),
        );
    }
    let Ok(data) = B64.decode(req.data.as_bytes()) else {
        return error(StatusCode::BAD_REQUEST, "`data` is not base64");
    };
    tracing::debug!(%module, "Signed for the module.");
    axum::Json(json!({"digest": key.sign(&data)})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::ModuleId;
    use edge_core::sas::{ModuleKey, verify_token};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One raw HTTP/1.1 request over `stream`, returning status and JSON body.
    async fn request<S>(mut stream: S, head: &str, body: &str) -> (u16, serde_json::Value)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let req = format!(
            "{head} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn trust_bundle_and_sign_as_the_python_sdk_calls_them() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityRegistry::new();
        let key = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new("mod:1").unwrap(), key.clone());
        let state = WorkloadState {
            trust_bundle: Arc::from(
                "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            ),
            identities: ids,
            generation: Arc::new(|m| (m == "mod:1").then(|| "gen123".to_owned())),
        };
        let bound = bind("", dir.path()).await.unwrap();
        let uri = bound.uri();
        let sock = dir.path().join("workload.sock");
        assert_eq!(uri, format!("unix://{}", sock.display()));
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        serve(bound, state, cancel.clone(), &tracker);
        let dial = || tokio::net::UnixStream::connect(&sock);

        let (status, body) = request(
            dial().await.unwrap(),
            "GET /trust-bundle?api-version=2022-08-03",
            "",
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            body["certificate"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN")
        );

        // The SDK's exact request: no Content-Type, module id quoted, the string to sign
        // base64-encoded; the digest makes a token the hub accepts.
        let sr = "myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod%3A1";
        let data = B64.encode(format!("{sr}\n1795430509"));
        let sign_body =
            format!(r#"{{"keyId": "primary", "algo": "HMACSHA256", "data": "{data}"}}"#);
        let (status, body) = request(
            dial().await.unwrap(),
            "POST /modules/mod%3A1/genid/gen123/sign?api-version=2022-08-03",
            &sign_body,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let digest = body["digest"].as_str().unwrap();
        let token = format!(
            "SharedAccessSignature sr={sr}&sig={}&se=1795430509",
            digest
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        );
        verify_token(
            &token,
            &key,
            1_000,
            &["myhub.azure-devices.net"],
            "dev1",
            "mod:1",
        )
        .unwrap();

        // Refusals, each with a JSON message.
        for (head, body, want) in [
            (
                "POST /modules/other/genid/gen123/sign",
                sign_body.as_str(),
                404,
            ),
            (
                "POST /modules/mod%3A1/genid/gen999/sign",
                sign_body.as_str(),
                400,
            ),
            ("POST /modules/mod%3A1/genid/gen123/sign", "not json", 400),
            (
                "POST /modules/mod%3A1/genid/gen123/sign",
                r#"{"keyId": "secondary", "algo": "HMACSHA256", "data": "AA=="}"#,
                400,
            ),
            (
                "POST /modules/mod%3A1/genid/gen123/sign",
                r#"{"keyId": "primary", "algo": "HMACSHA1", "data": "AA=="}"#,
                400,
            ),
            (
                "POST /modules/mod%3A1/genid/gen123/sign",
                r#"{"keyId": "primary", "algo": "HMACSHA256", "data": "%%%"}"#,
                400,
            ),
        ] {
            let (status, json) = request(dial().await.unwrap(), head, body).await;
            assert_eq!(status, want, "{head} {body}: {json}");
            assert!(json["message"].is_string(), "{json}");
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(!sock.exists(), "the socket is removed on shutdown");
    }

    #[tokio::test]
    async fn tcp_for_tests_and_bad_uris() {
        let dir = tempfile::tempdir().unwrap();
        let bound = bind("http://127.0.0.1:0", dir.path()).await.unwrap();
        assert!(bound.uri().starts_with("http://127.0.0.1:"));
        assert!(!bound.uri().ends_with(":0"));
        assert!(bind("tcp://x", dir.path()).await.is_err());
        assert!(bind("unix://relative.sock", dir.path()).await.is_err());
    }
}
