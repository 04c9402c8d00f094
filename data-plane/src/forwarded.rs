//! `X-Forwarded-*` and `Forwarded` (RFC 7239), and who the client is.
//!
//! A client can write anything in these headers, so they are only believed
//! when the connection comes from a trusted proxy (`--trusted-proxies`, a
//! list of CIDRs: the load balancer in front of the data planes). From
//! anyone else they are replaced with what the data plane saw itself.
//! Behind trusted proxies, the client is the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use nio_proto::model::{canonical_ip as canonical, Cidr};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

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

    /// Rewrites the forwarding headers of a request going to a backend,
    /// which came from `peer` for `host`.
    pub fn apply(&self, headers: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) {
        // Most requests carry none of the four (clients that talk to the
        // gateway directly): one pass over the names is cheaper than the
        // eight hashed lookups below.
        if !carries_forwarding(headers) {
            // None there: appended, which skips looking for values to
            // replace.
            for (name, value) in peer.fresh(host).fields() {
                headers.append(name.clone(), value.clone());
            }
            return;
        }
        if !self.trusts(peer.ip) {
            for name in [
                &X_FORWARDED_FOR,
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &FORWARDED,
            ] {
                headers.remove(name);
            }
        }
        let xff = match joined(headers, &X_FORWARDED_FOR) {
            Some(prev) => appended(prev, peer.xff.as_bytes()),
            None => Some(peer.xff.clone()),
        };
        if let Some(xff) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), xff);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(peer.proto),
            );
        }
        if let Some(host) = host {
            if !headers.contains_key(&X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
        }
        let element = peer.forwarded_element(host);
        let forwarded = match joined(headers, &FORWARDED) {
            Some(prev) => appended(prev, element.as_bytes()),
            None => Some(element),
        };
        if let Some(forwarded) = forwarded {
            headers.insert(FORWARDED.clone(), forwarded);
        }
    }
}

/// Whether a request carries any of the four forwarding headers (most do
/// not: clients that talk to the gateway directly). One pass over the
/// names is cheaper than the hashed lookups of [`TrustedProxies::apply`].
pub fn carries_forwarding(headers: &HeaderMap) -> bool {
    headers.keys().any(is_forwarding)
}

/// One of the four forwarding headers.
pub fn is_forwarding(n: &HeaderName) -> bool {
    *n == X_FORWARDED_FOR || *n == X_FORWARDED_PROTO || *n == X_FORWARDED_HOST || *n == FORWARDED
}

/// This hop's forwarding headers for a request that carries none.
pub struct Fresh<'a> {
    xff: &'a HeaderValue,
    proto: HeaderValue,
    host: Option<&'a HeaderValue>,
    forwarded: HeaderValue,
}

impl Fresh<'_> {
    pub fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        [
            (&X_FORWARDED_FOR, Some(self.xff)),
            (&X_FORWARDED_PROTO, Some(&self.proto)),
            (&X_FORWARDED_HOST, self.host),
            (&FORWARDED, Some(&self.forwarded)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// A connection's peer, and what the forwarding headers say about it,
/// written once per connection rather than once per request.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The address, IPv4-mapped IPv6 ones as IPv4.
    pub ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The address as text (this hop's `X-Forwarded-For` entry).
    xff: HeaderValue,
    /// `for=…;proto=…`, the start of this hop's `Forwarded` element.
    element: HeaderValue,
    /// The whole element for the last host named on this connection, and
    /// that host (a copy: not the head it came in). A connection's
    /// requests nearly always name the same host, so the element is built
    /// once, not once per request.
    last: Mutex<Option<(Box<[u8]>, HeaderValue)>>,
}

impl Peer {
    pub fn new(addr: SocketAddr, proto: &'static str) -> Peer {
        let ip = canonical(addr.ip());
        let text = ip_string(ip);
        let mut element = String::with_capacity(32 + text.len());
        element.push_str("for=");
        match ip {
            IpAddr::V4(_) => element.push_str(&text),
            IpAddr::V6(_) => {
                element.push_str("\"[");
                element.push_str(&text);
                element.push_str("]\"");
            }
        }
        element.push_str(";proto=");
        element.push_str(proto);
        Peer {
            addr,
            ip,
            proto,
            xff: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            element: HeaderValue::from_str(&element)
                .unwrap_or_else(|_| HeaderValue::from_static("for=unknown")),
            last: Mutex::new(None),
        }
    }

    /// The forwarding headers of a request from this peer for `host` that
    /// carries none: [`TrustedProxies::apply`] when
    /// [`carries_forwarding`] is false, without the map.
    pub fn fresh<'a>(&'a self, host: Option<&'a HeaderValue>) -> Fresh<'a> {
        Fresh {
            xff: &self.xff,
            proto: HeaderValue::from_static(self.proto),
            host,
            forwarded: self.forwarded_element(host),
        }
    }

    /// This hop's `Forwarded` element: `for=…;proto=…;host="…"` (the
    /// host left out when it would need escaping).
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> HeaderValue {
        let host = host.map(HeaderValue::as_bytes).filter(|h| {
            h.iter()
                .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
        let Some(host) = host else {
            return self.element.clone();
        };
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, element)) = &*last {
            if **seen == *host {
                return element.clone();
            }
        }
        let mut out = Vec::with_capacity(self.element.len() + host.len() + 8);
        out.extend_from_slice(self.element.as_bytes());
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host);
        out.push(b'"');
        let element = HeaderValue::from_maybe_shared(Bytes::from(out))
            .unwrap_or_else(|_| self.element.clone());
        *last = Some((host.into(), element.clone()));
        element
    }
}

/// `prev, entry` as one value.
fn appended(mut prev: String, entry: &[u8]) -> Option<HeaderValue> {
    prev.push_str(", ");
    let mut bytes = prev.into_bytes();
    bytes.extend_from_slice(entry);
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
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
            // One connection's requests, naming hosts in turn (its element
            // is kept for the last host).
            let conn = Peer::new(peer, "https");
            let hosts = [
                Some("api.test"),
                Some("api.test"),
                Some("b.test"),
                Some("bad\"host"),
                None,
                Some("api.test"),
            ];
            for host in hosts {
                let host = host.map(HeaderValue::from_static);
                let host = host.as_ref();
                let mut fresh = headers(&[("accept", "*/*")]);
                trusted.apply(&mut fresh, &conn, host);
                // From an untrusted peer, forged headers take the general
                // path and end the same.
                let mut forged = headers(&[("accept", "*/*"), ("forwarded", "for=6.6.6.6")]);
                if !trusted.trusts(peer.ip()) {
                    trusted.apply(&mut forged, &conn, host);
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
                let host_part = match host.map(|h| h.to_str().unwrap()) {
                    Some(h) if !h.contains('"') => format!(";host=\"{h}\""),
                    _ => String::new(),
                };
                assert_eq!(
                    fresh["forwarded"],
                    format!("for={for_};proto=https{host_part}").as_str()
                );
                if let Some(h) = host {
                    assert_eq!(fresh["x-forwarded-host"], *h);
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
        let host = HeaderValue::from_static("api.test");
        trusted.apply(&mut h, &Peer::new(outsider, "http"), Some(&host));
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
        trusted.apply(&mut h, &Peer::new(lb, "http"), None);
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
