//! `X-Forwarded-*` and `Forwarded` (RFC 7239), and who the client is.
//!
//! A client can write anything in these headers, so they are only believed
//! when the connection comes from a trusted proxy (`--trusted-proxies`, a
//! list of CIDRs: the load balancer in front of the data planes). From
//! anyone else they are replaced with what the data plane saw itself.
//! Behind trusted proxies, the client is the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use nio_proto::model::{canonical_ip as canonical, Cidr};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client when the forwarding chain cannot be read past the trusted
/// proxies: `::`, in no allow list.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer, or behind trusted proxies the
    /// right-most untrusted `X-Forwarded-For` entry.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            // Byte by byte: one bad hop must not hide the good ones to its
            // right (what the trusted proxy appended).
            for hop in value.as_bytes().rsplit(|b| *b == b',') {
                let parsed = std::str::from_utf8(hop)
                    .ok()
                    .and_then(|h| h.trim().parse::<IpAddr>().ok());
                let Some(ip) = parsed else {
                    // Past the trusted proxies and unreadable: the client
                    // is unknown — never a trusted proxy's address.
                    return UNKNOWN_CLIENT;
                };
                client = canonical(ip);
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }

    /// Rewrites the forwarding headers of a request going to a backend.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        proto: &'static str,
        host: Option<&str>,
    ) {
        let peer_ip = canonical(peer.ip());
        // Most requests carry none of the four (clients that talk to the
        // gateway directly): one pass over the names is cheaper than the
        // eight hashed lookups below.
        let forwarding = |n: &HeaderName| {
            *n == X_FORWARDED_FOR
                || *n == X_FORWARDED_PROTO
                || *n == X_FORWARDED_HOST
                || *n == FORWARDED
        };
        if !headers.keys().any(forwarding) {
            self.apply_fresh(headers, peer_ip, proto, host);
            return;
        }
        let trusted = self.trusts(peer_ip);
        if !trusted {
            for name in [
                &X_FORWARDED_FOR,
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &FORWARDED,
            ] {
                headers.remove(name);
            }
        }
        // Built with pushes, not `format!`: this runs on every request.
        let ip = ip_string(peer_ip);
        let xff = match joined(headers, &X_FORWARDED_FOR) {
            Some(mut prev) => {
                prev.push_str(", ");
                prev.push_str(&ip);
                prev
            }
            None => ip.clone(),
        };
        set(headers, &X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        }
        if let Some(host) = host {
            if !headers.contains_key(&X_FORWARDED_HOST) {
                set(headers, &X_FORWARDED_HOST, host.to_string());
            }
        }
        let element = forwarded_element(peer_ip, &ip, proto, host);
        let forwarded = match joined(headers, &FORWARDED) {
            Some(mut prev) => {
                prev.push_str(", ");
                prev.push_str(&element);
                prev
            }
            None => element,
        };
        set(headers, &FORWARDED, forwarded);
    }
}

impl TrustedProxies {
    /// [`TrustedProxies::apply`] for a request without forwarding headers:
    /// whoever the peer is, there is nothing to believe, remove or extend.
    fn apply_fresh(
        &self,
        headers: &mut HeaderMap,
        peer_ip: IpAddr,
        proto: &'static str,
        host: Option<&str>,
    ) {
        let ip = ip_string(peer_ip);
        let element = forwarded_element(peer_ip, &ip, proto, host);
        set(headers, &X_FORWARDED_FOR, ip);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        if let Some(host) = host {
            set(headers, &X_FORWARDED_HOST, host.to_string());
        }
        set(headers, &FORWARDED, element);
    }
}

/// This hop's `Forwarded` element: `for=…;proto=…;host="…"`.
fn forwarded_element(peer_ip: IpAddr, ip: &str, proto: &str, host: Option<&str>) -> String {
    let mut element = String::with_capacity(32 + ip.len() + host.map_or(0, str::len));
    element.push_str("for=");
    match peer_ip {
        IpAddr::V4(_) => element.push_str(ip),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(ip);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host.filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    element
}

/// An address as text; IPv4 digit by digit (`Display` goes through the
/// formatting machinery, a visible cost per request).
fn ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
            out
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// All values of a header as one comma-separated string, if any.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let Ok(v) = v.to_str() else { continue };
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_string()),
        }
    }
    out.filter(|s| !s.is_empty())
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    // From the string's own buffer, without a copy.
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    #[test]
    fn requests_without_forwarding_headers_get_the_same_ones() {
        // The shortcut for a request that carries none of the headers must
        // write what the general path writes.
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        for peer in ["192.0.2.1:5000", "10.1.1.1:5000", "[2001:db8::7]:443"] {
            let peer: SocketAddr = peer.parse().unwrap();
            for host in [Some("api.test"), Some("bad\"host"), None] {
                let mut fresh = headers(&[("accept", "*/*")]);
                trusted.apply(&mut fresh, peer, "https", host);
                // From an untrusted peer, forged headers take the general
                // path and end the same.
                let mut forged = headers(&[("accept", "*/*"), ("forwarded", "for=6.6.6.6")]);
                if !trusted.trusts(peer.ip()) {
                    trusted.apply(&mut forged, peer, "https", host);
                    assert_eq!(forged, fresh);
                }
                assert_eq!(fresh.len(), 1 + 3 + usize::from(host.is_some()));
                assert_eq!(fresh["x-forwarded-proto"], "https");
                let ip = peer.ip().to_string();
                assert_eq!(fresh["x-forwarded-for"], ip.as_str());
                let for_ = match peer.ip() {
                    IpAddr::V4(_) => ip.clone(),
                    IpAddr::V6(_) => format!("\"[{ip}]\""),
                };
                let host_part = match host {
                    Some("api.test") => ";host=\"api.test\"",
                    _ => "",
                };
                assert_eq!(
                    fresh["forwarded"],
                    format!("for={for_};proto=https{host_part}").as_str()
                );
                if let Some(h) = host {
                    assert_eq!(fresh["x-forwarded-host"], h);
                }
            }
        }
    }

    #[test]
    fn untrusted_clients_cannot_forge() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let forged = [
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ];
        let outsider: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut h = headers(&forged);
        assert_eq!(trusted.client_ip(outsider, &h), outsider.ip());
        trusted.apply(&mut h, outsider, "http", Some("api.test"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.test");
        assert_eq!(h["forwarded"], "for=192.0.2.1;proto=http;host=\"api.test\"");

        // Through the trusted load balancer: kept and appended.
        let lb: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let mut h = headers(&[("x-forwarded-for", "203.0.113.9, 10.9.9.9")]);
        assert_eq!(
            trusted.client_ip(lb, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        trusted.apply(&mut h, lb, "http", None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.9.9.9, 10.1.1.1");
        // A bad hop left of the real client does not hide it; a bad hop as
        // the first untrusted one makes the client unknown, never the LB.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap(),
        );
        assert_eq!(
            trusted.client_ip(lb, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
        );
        assert_eq!(trusted.client_ip(lb, &h), UNKNOWN_CLIENT);
    }
}
