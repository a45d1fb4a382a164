//! NBD's TLS with a pre-shared key: the server side of `NBD_OPT_STARTTLS` as
//! libnbd (`nbds://…?tls-psk-file=`), qemu (`tls-creds-psk`) and nbdkit
//! (`--tls-psk`) speak it, with their key file format.
//!
//! The library is OpenSSL, through the `openssl` and `tokio-openssl` crates
//! linking the system's libssl. Every NBD client does PSK (GnuTLS on their
//! side), and `rustls` has no PSK at all; a certificate scheme would need a
//! CA, enrolment and revocation for what is one shared key on a maintenance
//! host. OpenSSL is on every Debian server already, gets its security
//! updates from the distribution, and does both TLS 1.3 external PSKs and
//! the TLS 1.2 ECDHE-PSK suites older GnuTLS clients offer.
//!
//! The key file is GnuTLS's `psktool` format: one `identity:hexkey` line per
//! client. Lines that are empty or start with `#` are skipped.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

/// Shortest key accepted: 128 bits. `psktool` writes 256 by default.
pub const MIN_KEY_BYTES: usize = 16;
/// OpenSSL's own limit for a PSK (`PSK_MAX_PSK_LEN`).
const MAX_KEY_BYTES: usize = 512;

/// Why TLS could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("no keys in the PSK file")]
    Empty,
    #[error("TLS setup failed: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// A PSK key; its bytes are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Parses a GnuTLS PSK file: `identity:hexkey` per line.
pub fn parse_psk_file(text: &str) -> Result<HashMap<String, Key>, TlsError> {
    let mut keys = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fail = |message: &str| TlsError::Parse {
            line,
            message: message.to_string(),
        };
        // The identity may not contain ':', so the last one splits.
        let (id, hex) = l
            .rsplit_once(':')
            .ok_or_else(|| fail("expected identity:hexkey"))?;
        if id.is_empty() {
            return Err(fail("empty identity"));
        }
        let key = decode_hex(hex).ok_or_else(|| fail("the key is not hexadecimal"))?;
        if key.len() < MIN_KEY_BYTES {
            return Err(fail("the key is shorter than 128 bits"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(fail("the key is longer than 4096 bits"));
        }
        if keys.insert(id.to_string(), Key(key)).is_some() {
            return Err(fail("duplicate identity"));
        }
    }
    if keys.is_empty() {
        return Err(TlsError::Empty);
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The server's TLS: a context that only does PSK.
#[derive(Clone)]
pub struct Tls {
    ctx: SslContext,
    /// Where the PSK callback leaves the identity it accepted: OpenSSL does
    /// not keep it for TLS 1.3 (`SSL_get_psk_identity` is empty there).
    identity: Index<Ssl, String>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls(psk)")
    }
}

/// A finished TLS handshake.
#[derive(Debug)]
pub struct Accepted<S> {
    pub stream: SslStream<S>,
    /// The PSK identity the client proved it holds the key of.
    pub identity: String,
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
}

impl Tls {
    /// Loads the keys of a `psktool` file.
    pub fn from_psk_file(path: &Path) -> Result<Tls, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|error| TlsError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Tls::from_keys(parse_psk_file(&text)?)
    }

    pub fn from_keys(keys: HashMap<String, Key>) -> Result<Tls, TlsError> {
        if keys.is_empty() {
            return Err(TlsError::Empty);
        }
        let keys = Arc::new(keys);
        let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // Forward secrecy either way: TLS 1.2 only with ephemeral ECDH on
        // top of the key, and TLS 1.3 (what GnuTLS clients pick) only in
        // psk_dhe_ke mode, since ALLOW_NO_DHE_KEX is left off.
        b.set_cipher_list(
            "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256",
        )?;
        // No session tickets: every connection proves the key again.
        b.set_num_tickets(0)?;
        b.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
        let index = Ssl::new_ex_index::<String>()?;
        b.set_psk_server_callback(move |ssl, identity, out| {
            let Some((name, key)) = identity
                .and_then(|i| std::str::from_utf8(i).ok())
                .and_then(|i| keys.get_key_value(i))
            else {
                // 0 bytes: unknown identity, the handshake fails.
                return Ok(0);
            };
            let n = key.0.len().min(out.len());
            out[..n].copy_from_slice(&key.0[..n]);
            // Only a claim until the handshake finishes, which proves the
            // client holds this key.
            ssl.set_ex_data(index, name.clone());
            Ok(n)
        });
        Ok(Tls {
            ctx: b.build(),
            identity: index,
        })
    }

    /// Runs the server side of the TLS handshake on `stream`.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<Accepted<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(&self.ctx).map_err(std::io::Error::other)?;
        let mut stream = SslStream::new(ssl, stream).map_err(std::io::Error::other)?;
        Pin::new(&mut stream).accept().await.map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("TLS handshake failed: {e}"),
            )
        })?;
        let identity = stream
            .ssl()
            .ex_data(self.identity)
            .cloned()
            .unwrap_or_else(|| "?".into());
        let version = stream.ssl().version_str();
        Ok(Accepted {
            stream,
            identity,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c1e1c9a5b4d8f6e2a0b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7";

    #[test]
    fn psktool_lines_parse() {
        let k = parse_psk_file(&format!(
            "# made by psktool\n\nalice:{KEY}\nbob:{}\n",
            &KEY[..32]
        ))
        .expect("valid");
        assert_eq!(k.len(), 2);
        assert_eq!(k["alice"].0.len(), 32);
        assert_eq!(k["bob"].0.len(), 16);
    }

    #[test]
    fn bad_psk_files_name_the_line() {
        for (text, line) in [
            ("alice\n".to_string(), 1),
            (format!("a:{KEY}\nb:zz{}\n", &KEY[2..]), 2),
            ("a:0011\n".to_string(), 1),
            (format!("a:{KEY}\n# c\na:{KEY}\n"), 3),
            (format!(":{KEY}\n"), 1),
            (format!("a:{}\n", &KEY[1..]), 1),
        ] {
            match parse_psk_file(&text) {
                Err(TlsError::Parse { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(parse_psk_file("# none\n"), Err(TlsError::Empty)));
    }

    #[test]
    fn keys_never_print() {
        let k = parse_psk_file(&format!("alice:{KEY}\n")).expect("valid");
        assert!(!format!("{k:?}").contains("c1e1"));
    }
}
