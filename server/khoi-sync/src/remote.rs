//! The bucket, through `object_store`'s S3 client: Garage, Ceph RGW or a
//! cloud's S3 service alike. Counts the bytes each way and caps what it
//! downloads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::layout::Layout;

/// How to reach the bucket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Such as `https://s3.province.example` (a Garage S3 API, RGW, ...).
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// The bucket's name.
    pub name: String,
    /// Folder inside the bucket (several provinces, or other data, in one bucket).
    #[serde(default)]
    pub prefix: String,
    /// `ACCESS_KEY_ID SECRET_KEY` on one line; owner-only. A site's key
    /// should be read-only on the bucket (plus write on its own `sites/<name>/`).
    pub credentials_file: PathBuf,
    /// Allow `http://` endpoints (a bucket on the same LAN or loopback).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "garage".into()
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("bucket credentials: {0}")]
    Credentials(String),
    #[error("bucket: {0}")]
    Store(#[from] object_store::Error),
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Reads `ACCESS_KEY_ID SECRET_KEY` from a file only its owner can read.
pub fn read_credentials(path: &FsPath) -> Result<(String, String)> {
    let fail = |m: String| RemoteError::Credentials(format!("{}: {m}", path.display()));
    let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(
            "must be readable by its owner only (chmod 600)".into(),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(id), Some(secret), None) => Ok((id.to_string(), secret.to_string())),
        _ => Err(fail("expected one line: ACCESS_KEY_ID SECRET_KEY".into())),
    }
}

/// A cap on bucket traffic: bytes are taken as they move, and the mover
/// waits whenever it is ahead of `rate` bytes per second since the cap
/// started. A download waits between pieces, which stops reading the socket
/// so TCP slows the sender down; an upload waits after each object (a 4 MiB
/// chunk), so its average keeps to the rate.
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl Limiter {
    /// `rate` in bytes per second (at least 1).
    pub fn new(rate: u64) -> Limiter {
        Limiter {
            rate: rate.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    pub async fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            // An idle spell earns no burst larger than a second's worth.
            let earliest = now - Duration::from_secs(1);
            if s.0 < earliest {
                let idle = earliest - s.0;
                let credit = u64::try_from(idle.as_nanos() * u128::from(self.rate) / 1_000_000_000)
                    .unwrap_or(u64::MAX);
                s.1 = s.1.saturating_sub(credit);
                s.0 = earliest;
            }
            s.1 += n;
            let due = Duration::from_nanos(
                u64::try_from(u128::from(s.1) * 1_000_000_000 / u128::from(self.rate))
                    .unwrap_or(u64::MAX),
            );
            (s.0 + due).saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Byte counters of one `Remote`.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub gets: AtomicU64,
    pub puts: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    pub layout: Layout,
    limiter: Option<Arc<Limiter>>,
    pub counters: Arc<Counters>,
}

impl Remote {
    pub fn connect(cfg: &BucketConfig, bandwidth: Option<u64>) -> Result<Remote> {
        let (id, secret) = read_credentials(&cfg.credentials_file)?;
        let retry = RetryConfig {
            // A WAN that is down stays down for a while: fail the pass
            // quickly and let the next one resume, instead of hanging.
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        let client = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            // A 4 MiB chunk at 1 Mbit/s takes ~35 s.
            .with_timeout(Duration::from_secs(300));
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_region(&cfg.region)
            .with_bucket_name(&cfg.name)
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .with_client_options(client)
            .build()?;
        Ok(Remote::new(
            Arc::new(s3),
            Layout::new(&cfg.prefix),
            bandwidth,
        ))
    }

    pub fn new(store: Arc<dyn ObjectStore>, layout: Layout, bandwidth: Option<u64>) -> Remote {
        Remote {
            store,
            layout,
            limiter: bandwidth.map(|b| Arc::new(Limiter::new(b))),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The object, or `None` if there is none. Capped and counted.
    pub async fn get(&self, path: &Path, max_len: u64) -> Result<Option<Vec<u8>>> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        let r = match self.store.get(path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if r.meta.size > max_len {
            return Err(RemoteError::Store(object_store::Error::Generic {
                store: "khoi-sync",
                source: format!("{path} is {} bytes, more than {max_len}", r.meta.size).into(),
            }));
        }
        let mut out = Vec::with_capacity(usize::try_from(r.meta.size).unwrap_or(0));
        let mut stream = r.into_stream();
        while let Some(piece) = stream.next().await {
            let piece: Bytes = piece?;
            self.counters
                .bytes_in
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            if let Some(l) = &self.limiter {
                l.take(piece.len() as u64).await;
            }
            if (out.len() + piece.len()) as u64 > max_len {
                return Err(RemoteError::Store(object_store::Error::Generic {
                    store: "khoi-sync",
                    source: format!("{path} is longer than {max_len} bytes").into(),
                }));
            }
            out.extend_from_slice(&piece);
        }
        Ok(Some(out))
    }

    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let n = bytes.len() as u64;
        self.store.put(path, bytes.into()).await?;
        self.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        if let Some(l) = &self.limiter {
            l.take(n).await;
        }
        Ok(())
    }

    pub async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Names of the objects directly under `dir`.
    pub async fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let r = self.store.list_with_delimiter(Some(dir)).await?;
        let mut names: Vec<String> = r
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Names of the folders directly under `dir`.
    pub async fn list_dirs(&self, dir: &Path) -> Result<Vec<String>> {
        let r = self.store.list_with_delimiter(Some(dir)).await?;
        let mut names: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limiter_holds_the_rate() {
        let l = Limiter::new(1_000_000);
        let t0 = Instant::now();
        for _ in 0..10 {
            l.take(500_000).await;
        }
        // 5 MB at 1 MB/s: five seconds (the clock is tokio's, paused).
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(4999) && took <= Duration::from_millis(5100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_gives_at_most_a_second_of_burst() {
        let l = Limiter::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        l.take(3_000_000).await;
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(1999), "{took:?}");
    }

    /// The publisher's uploads keep to the same cap as a site's downloads
    /// (the office's WAN is shared with everything else).
    #[tokio::test(start_paused = true)]
    async fn uploads_keep_to_the_cap() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let capped = Remote::new(mem.clone(), Layout::new("p"), Some(1_000_000));
        let t0 = Instant::now();
        for i in 0..5 {
            let path = Path::from(format!("p/chunk{i}"));
            capped.put(&path, vec![7u8; 1_000_000]).await.expect("put");
        }
        // 5 MB at 1 MB/s, the first second's worth sent at once: 4-5 s.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(3999), "{took:?}");
        assert_eq!(capped.counters.bytes_out.load(Ordering::Relaxed), 5_000_000);
        let free = Remote::new(mem, Layout::new("p"), None);
        let t0 = Instant::now();
        free.put(&Path::from("p/x"), vec![7u8; 5_000_000])
            .await
            .expect("put");
        assert!(t0.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn credentials_file_is_owner_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("cred");
        fs::write(&p, "GK123 secret\n").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read_credentials(&p).expect_err("world-readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_credentials(&p).expect("read"),
            ("GK123".to_string(), "secret".to_string())
        );
        fs::write(&p, "only-one-word\n").expect("write");
        assert!(read_credentials(&p).is_err());
    }
}
