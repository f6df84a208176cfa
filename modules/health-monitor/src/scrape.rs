//! Reads the metrics text with one plain HTTP/1.1 GET over a TCP connection (`Connection:
//! close`, body read to the end; `Content-Length` and chunked bodies are understood).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response accepted (the metrics text is a few KiB).
pub const MAX_RESPONSE: usize = 4 << 20;

/// An `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to.
    pub authority: String,
    /// The path (with query), starting with `/`.
    pub path: String,
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("bad metrics url {0:?}: expected http://host:port/path")]
    BadUrl(String),
    /// Connecting, writing or reading failed.
    #[error("cannot read {url}")]
    Io {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The answer is not a valid HTTP response.
    #[error("bad http response from {url}: {problem}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The server answered with a status other than 200.
    #[error("{url} answered with status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]` (port 80 by default, path `/metrics` by default).
    ///
    /// # Errors
    /// [`ScrapeError::BadUrl`] for anything else (https included).
    pub fn parse(url: &str) -> Result<Self, ScrapeError> {
        let bad = || ScrapeError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty()
            || authority.contains(char::is_whitespace)
            || authority.contains('@')
        {
            return Err(bad());
        }
        let port = if authority.starts_with('[') {
            authority.split_once("]:").map(|(_, p)| p)
        } else {
            authority.rsplit_once(':').map(|(_, p)| p)
        };
        let authority = match port {
            Some(p) => {
                p.parse::<u16>().map_err(|_| bad())?;
                authority.to_owned()
            }
            None => format!("{authority}:80"),
        };
        Ok(Self {
            authority,
            path: path.to_owned(),
        })
    }

    /// The URL for the metrics of an `EDGE_METRICS_ADDR` (`host:port`).
    #[must_use]
    pub fn from_addr(addr: &str) -> Self {
        Self {
            authority: addr.to_owned(),
            path: "/metrics".into(),
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// GETs `url` and returns the body as text.
///
/// # Errors
/// [`ScrapeError`] when the server cannot be reached in time or does not answer 200.
pub async fn fetch(url: &HttpUrl, timeout: Duration) -> Result<String, ScrapeError> {
    match tokio::time::timeout(timeout, fetch_inner(url)).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout(url.to_string(), timeout)),
    }
}

async fn fetch_inner(url: &HttpUrl) -> Result<String, ScrapeError> {
    let io = |source| ScrapeError::Io {
        url: url.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(&url.authority).await.map_err(io)?;
    let host = url.authority.as_str();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\nUser-Agent: health-monitor\r\n\r\n",
        url.path
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    if raw.len() > MAX_RESPONSE {
        return Err(bad(url, "response too large"));
    }
    let body = parse_response(&raw).map_err(|e| match e {
        Response::Status(status) => ScrapeError::Status {
            url: url.to_string(),
            status,
        },
        Response::Bad(p) => bad(url, p),
    })?;
    String::from_utf8(body).map_err(|_| bad(url, "body is not UTF-8"))
}

fn bad(url: &HttpUrl, problem: &str) -> ScrapeError {
    ScrapeError::BadResponse {
        url: url.to_string(),
        problem: problem.into(),
    }
}

/// What is wrong with a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// A status other than 200.
    Status(u16),
    /// Not valid HTTP.
    Bad(&'static str),
}

/// Splits a complete HTTP/1.x response and returns its body (de-chunked when needed).
///
/// # Errors
/// [`Response`] saying what is wrong.
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(Response::Bad("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..split]).map_err(|_| Response::Bad("headers not UTF-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(Response::Bad("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(Response::Bad("bad status code"))?;
    if status != 200 {
        return Err(Response::Status(status));
    }
    let mut chunked = false;
    let mut length = None;
    for h in lines {
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| Response::Bad("bad content-length"))?,
            );
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if body.len() < n => Err(Response::Bad("body shorter than content-length")),
        Some(n) => Ok(body[..n].to_vec()),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, Response> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Response::Bad("unterminated chunk size"))?;
        let size_text =
            std::str::from_utf8(&body[..eol]).map_err(|_| Response::Bad("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| Response::Bad("bad chunk size"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(Response::Bad("truncated chunk"));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
