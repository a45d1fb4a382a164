//! What the HTTP layer checks besides sessions: the `Host` a request names,
//! who may scrape `/metrics`, which proxy may say who the client is, and
//! the headers every answer carries.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use khoi_admin::users::same_token;

/// Checks beyond sessions, from the config.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    /// `None` answers any `Host` (in-process use, tests); the server always
    /// sets it.
    pub hosts: Option<HostCheck>,
    pub metrics: MetricsAccess,
    /// Off by default: a client-supplied header names the client only when
    /// the connection comes from a proxy the config trusts.
    pub trusted_proxy: Option<TrustedProxy>,
}

/// The names the page answers to. A browser sends the name it resolved;
/// refusing other names defeats DNS rebinding (a hostile page whose name
/// suddenly resolves to the admin address).
#[derive(Debug, Clone)]
pub struct HostCheck {
    /// Configured names, lower case.
    pub names: Vec<String>,
    /// The address the page listens on.
    pub listen: IpAddr,
}

impl HostCheck {
    /// Whether `host` (a `Host` header: name or address, with or without a
    /// port) is one the page answers to.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse() {
            let ip: IpAddr = ip;
            // An address cannot be rebound; it only has to be this server's.
            return ip == self.listen
                || self.listen.is_unspecified()
                || (self.listen.is_loopback() && ip.is_loopback());
        }
        (self.listen.is_loopback() && name == "localhost") || self.names.contains(&name)
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Who may read `/metrics` (it names every seat).
#[derive(Debug, Clone, Default)]
pub enum MetricsAccess {
    /// Anyone who reaches the listener (a loopback-only page).
    #[default]
    Open,
    /// `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: the page is reachable from the LAN and no token is set.
    Closed,
}

impl MetricsAccess {
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        match self {
            MetricsAccess::Open => true,
            MetricsAccess::Closed => false,
            MetricsAccess::Token(t) => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| same_token(given.trim(), t)),
        }
    }
}

/// A reverse proxy whose header names the client.
#[derive(Debug, Clone)]
pub struct TrustedProxy {
    /// Lower-case header name, such as `x-forwarded-for`.
    pub header: String,
    /// Addresses the proxy connects from.
    pub from: Vec<IpAddr>,
}

impl HttpPolicy {
    /// The client's address: the connection's peer, or, when that peer is
    /// the trusted proxy, the last address the proxy appended to its header
    /// (earlier ones are whatever the client wrote).
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip();
        let Some(p) = &self.trusted_proxy else {
            return Some(peer);
        };
        if !p.from.contains(&peer) {
            return Some(peer);
        }
        let named = headers
            .get_all(p.header.as_str())
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        Some(named.unwrap_or(peer))
    }
}

/// Headers every answer carries: no framing (clickjacking), no scripts or
/// styles from anywhere but this server, no sniffing, no referrer leaving
/// the page, and nothing but the static files kept in a cache (pages show
/// CHAP secrets and CSRF tokens).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let cacheable = req.uri().path().starts_with("/static/");
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    // Not `no-referrer`: with it browsers send `Origin: null` on form
    // posts, and the same-origin check refuses them.
    set(h, "referrer-policy", "same-origin");
    if !cacheable {
        set(h, "cache-control", "no-store");
    }
    r
}

/// A redirect target a client may choose: a local path of plain
/// characters. `//host` and `/\host` are other sites to a browser.
pub fn local_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= 512
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let c = HostCheck {
            names: vec!["khoi.local".into()],
            listen: "127.0.0.1".parse().expect("ip"),
        };
        for ok in ["127.0.0.1:8080", "localhost:8080", "KHOI.local", "[::1]:80"] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1",
            "khoi.local.evil",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
        let lan = HostCheck {
            names: vec![],
            listen: "10.0.0.1".parse().expect("ip"),
        };
        assert!(lan.allows("10.0.0.1:8443"));
        assert!(!lan.allows("localhost"));
    }

    #[test]
    fn redirect_targets() {
        assert!(local_path("/seats"));
        assert!(local_path("/seats/quay-01?x=1"));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil",
            "",
            "/\t/evil",
        ] {
            assert!(!local_path(bad), "{bad}");
        }
    }

    #[test]
    fn proxy_header_only_from_the_proxy() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 10.0.0.9"),
        );
        let open = HttpPolicy::default();
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(open.client(Some(peer), &h), Some(peer.ip()));
        let proxied = HttpPolicy {
            trusted_proxy: Some(TrustedProxy {
                header: "x-forwarded-for".into(),
                from: vec![peer.ip()],
            }),
            ..Default::default()
        };
        assert_eq!(
            proxied.client(Some(peer), &h),
            Some("10.0.0.9".parse().expect("ip"))
        );
        let other: SocketAddr = "10.0.0.5:5000".parse().expect("addr");
        assert_eq!(proxied.client(Some(other), &h), Some(other.ip()));
    }
}
