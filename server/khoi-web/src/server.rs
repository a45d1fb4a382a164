//! The admin page's listener: the block protocols' accept loop
//! ([`khoi_serve::listen`]: a global and a per-address connection cap, a hard
//! deadline at shutdown), HTTP/1.1 with a deadline for each request's
//! headers, and TLS (rustls) with a configured certificate or one made at
//! first start.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use khoi_serve::listen::{self, Limits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How the listener treats its clients.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub limits: Limits,
    /// Time a client has to send a request's headers, counted from the
    /// connection's start or from the previous answer: a half-sent header
    /// and an idle kept-alive connection both end when it runs out.
    pub header_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServeOptions {
    pub fn plain() -> ServeOptions {
        ServeOptions {
            limits: Limits {
                // Two or three officers with a few tabs each; the rest of
                // the descriptors belong to the seats.
                max_connections: 256,
                max_per_peer: 32,
                shutdown_grace: Duration::from_secs(5),
            },
            header_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Serve `app` on `listener` until `shutdown`; returns at most
/// `limits.shutdown_grace` after it, whatever the clients do.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) {
    let header_timeout = opts.header_timeout;
    let tls = opts.tls.clone().map(TlsAcceptor::from);
    listen::serve(
        listener,
        opts.limits,
        "admin",
        shutdown,
        move |stream: TcpStream, peer: SocketAddr, token: CancellationToken| {
            let (app, tls) = (app.clone(), tls.clone());
            async move {
                let _ = stream.set_nodelay(true);
                match tls {
                    None => connection(stream, peer, app, header_timeout, token).await,
                    Some(acceptor) => {
                        // The handshake gets the same deadline as headers.
                        let accepted = tokio::select! {
                            _ = token.cancelled() => return,
                            r = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => r,
                        };
                        match accepted {
                            Ok(Ok(s)) => connection(s, peer, app, header_timeout, token).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            }
        },
    )
    .await;
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    token: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = token.cancelled() => None,
    };
    match done {
        Some(Err(e)) => tracing::debug!(%peer, "admin connection ended: {e}"),
        Some(Ok(())) => {}
        None => {
            // Finish the answer in flight, take no new request; the accept
            // loop stops waiting for us at its deadline.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files from the config: the chain, then the private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Made at first start and kept in `dir` (owner-only files), for
    /// `names` (host names and addresses the page is reached by).
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

/// A loaded certificate.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate, as browsers show it: what an officer
    /// compares before trusting a self-signed certificate.
    pub fingerprint: String,
    /// Whether it was made just now.
    pub created: bool,
}

pub const SELF_SIGNED_CERT: &str = "admin-tls.crt";
pub const SELF_SIGNED_KEY: &str = "admin-tls.key";

pub fn load_tls(src: &TlsSource) -> Result<Tls, String> {
    let (cert, key, created) = match src {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSource::SelfSigned { dir, names } => {
            let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
            let created = !cert.exists() || !key.exists();
            if created {
                make_self_signed(&cert, &key, names)?;
            }
            (cert, key, created)
        }
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| format!("cannot read TLS file {}: {e}", p.display()))
    };
    let cert_pem = read(&cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no certificate in it", cert.display()));
    };
    let fingerprint = fingerprint(leaf);
    let key_der = PrivateKeyDer::from_pem_slice(&read(&key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        fingerprint,
        created,
    })
}

fn make_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), String> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("cannot make a TLS certificate: {e}"))?;
    // The key first, owner-only from its first byte; the certificate is
    // public but kept the same way, like every file in the data folder.
    for (path, text) in [
        (key, made.signing_key.serialize_pem()),
        (cert, made.cert.pem()),
    ] {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The fingerprint of the first certificate in the PEM file at `path`.
pub fn cert_fingerprint(path: &Path) -> Result<String, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{}: no certificate in it", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(fingerprint(&first))
}

/// `AB:CD:…`, SHA-256 of the DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let src = TlsSource::SelfSigned {
            dir: dir.path().to_path_buf(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let first = load_tls(&src).expect("made");
        assert!(first.created);
        let again = load_tls(&src).expect("loaded");
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        assert_eq!(
            cert_fingerprint(&dir.path().join(SELF_SIGNED_CERT)).as_deref(),
            Ok(first.fingerprint.as_str())
        );
        for f in [SELF_SIGNED_CERT, SELF_SIGNED_KEY] {
            let mode = std::fs::metadata(dir.path().join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
        }
    }
}
