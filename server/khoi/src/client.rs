//! A minimal blocking HTTP/1.1 client for the control socket. The requests
//! are tiny JSON documents on a local socket, so a hand-written exchange beats
//! pulling an HTTP client stack into the binary.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
}

/// An error the server reported.
#[derive(Debug)]
pub struct ApiFailure {
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    /// The server names the caller in its audit log from the socket's peer
    /// credentials, so the client says nothing about who it is.
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call("POST", path, Some(body))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call("PUT", path, Some(body))
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call("PATCH", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("DELETE", path, None::<&()>)
    }

    /// A body that is not JSON (the report's PDF).
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.call_raw("GET", path, None::<&()>)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let body = self.call_raw(method, path, body)?;
        let body = if body.is_empty() {
            b"null".to_vec()
        } else {
            body
        };
        serde_json::from_slice(&body).context("the server's answer is not the expected JSON")
    }

    fn call_raw<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "cannot reach the Khoi server at {} (is `khoi serve` running with the same --data/--config?)",
                self.socket.display()
            )
        })?;
        let body = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: khoi\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len(),
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .context("reading the server's answer")?;
        let (status, body) = parse_response(&raw)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<khoi_web::api::ErrorBody>(&body)
                .map(|e| match e.findings {
                    // The gate's refusal: what it found is the point.
                    Some(f) => format!("{}\n{}", e.error, crate::findings_text(&f)),
                    None => e.error,
                })
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ApiFailure { message }.into());
        }
        Ok(body)
    }
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("truncated HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).context("bad HTTP response head")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = std::str::from_utf8(&body[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").expect("plain");
        assert_eq!((s, b.as_slice()), (200, b"[]".as_slice()));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((s, b.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
