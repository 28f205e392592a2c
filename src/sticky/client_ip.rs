use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{header::CONNECTION, HeaderMap, HeaderName, Request};

use super::Cidr;
use crate::balance::strategy::RequestKey;
use crate::balance::ExtractKey;
use crate::ClientAddr;

/// Which header a trusted proxy writes the client address into; see [`ClientIp::header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`, each proxy appending the address it
    /// saw. Walked from the right (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`, the `for=` parameter of each element.
    /// Walked from the right.
    Forwarded,
    /// `X-Real-IP: client`, one address set by the proxy (nginx `proxy_set_header
    /// X-Real-IP $remote_addr`). Ignored when repeated.
    XRealIp,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => http::header::FORWARDED,
            Self::XRealIp => HeaderName::from_static("x-real-ip"),
        }
    }
}

/// The key is the client's IP address, for [`IpHash`](crate::balance::strategy::IpHash)
/// or any hash strategy.
///
/// The client is the connection's peer ([`ClientAddr`], or axum's `ConnectInfo` with the
/// `axum` feature), unless that peer is a trusted proxy: then the forwarding header the
/// proxies write (X-Forwarded-For by default; see [`header`](Self::header)) is walked
/// from the right, hop by hop, while each address is a trusted proxy, and the first
/// untrusted address is the client (nginx `real_ip_recursive on`, Envoy
/// `xff_num_trusted_hops` by address). A client can prepend anything to the header, but
/// never gets past a trusted proxy's own entry.
///
/// Exact rules:
///
/// - No trusted proxies by default: headers are ignored and the peer is the client.
/// - Repeated headers are one list, in order. Entries may be `1.2.3.4`, `1.2.3.4:80`,
///   `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`, with white space around.
/// - An entry that does not parse (empty, `unknown`, garbage, an obfuscated `Forwarded`
///   name) ends the walk: the last trusted address found is the answer, since nothing
///   to its left can be trusted.
/// - If every entry is a trusted proxy, the leftmost one is the client (nginx).
/// - A forwarding header named in `Connection` is ignored (the peer is the client): it
///   was meant to be dropped at the previous hop, so it cannot be the trusted proxy's.
/// - Only one header is read. Proxies that set X-Forwarded-For often pass a client's
///   `Forwarded` through untouched, so reading both would let clients choose.
/// - No peer address at all: no key.
///
/// ```
/// use tower_lb::sticky::{ClientAddr, ClientIp};
///
/// let ip = ClientIp::new().trust("10.0.0.0/8".parse().unwrap());
/// let mut req = http::Request::get("/")
///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(ClientAddr("10.0.0.1:40000".parse().unwrap()));
/// // 10.0.0.1 (peer) and 10.0.0.2 are trusted; 203.0.113.9 is the client. 6.6.6.6 was
/// // written by the client itself and is never reached.
/// assert_eq!(ip.client_ip(&req), Some("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<Cidr>,
    header: ForwardedHeader,
}

impl ClientIp {
    /// The peer address, no trusted proxies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts proxies in `net` to report the client address.
    #[must_use]
    pub fn trust(mut self, net: Cidr) -> Self {
        self.trusted.push(net);
        self
    }

    /// Trusts proxies in every network of `nets`.
    #[must_use]
    pub fn trusted_proxies(mut self, nets: impl IntoIterator<Item = Cidr>) -> Self {
        self.trusted.extend(nets);
        self
    }

    /// Reads the client address from `header` (default X-Forwarded-For).
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The connection's peer address: [`ClientAddr`], else (feature `axum`) axum's
    /// `ConnectInfo<SocketAddr>`.
    pub fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
        if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>() {
            return Some(*addr);
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(addr)) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(*addr);
        }
        None
    }

    /// The client's address by the rules above, or `None` without a peer address.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = Self::peer(req)?;
        Some(self.resolve(peer.ip(), req.headers()))
    }

    /// The client's address given the peer's and the request headers.
    ///
    /// ```
    /// use tower_lb::sticky::{ClientIp, ForwardedHeader};
    ///
    /// let ip = ClientIp::new()
    ///     .trust("192.0.2.0/24".parse().unwrap())
    ///     .header(ForwardedHeader::Forwarded);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("forwarded", r#"for="[2001:db8::17]:4711";proto=https"#.parse().unwrap());
    /// let peer = "192.0.2.1".parse().unwrap();
    /// assert_eq!(ip.resolve(peer, &headers), "2001:db8::17".parse::<std::net::IpAddr>().unwrap());
    /// // An untrusted peer is the client, whatever it says.
    /// let peer = "198.51.100.1".parse().unwrap();
    /// assert_eq!(ip.resolve(peer, &headers), peer);
    /// ```
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = self.header.name();
        if named_in_connection(headers, &name) {
            return peer;
        }
        match self.header {
            ForwardedHeader::XRealIp => {
                let mut values = headers.get_all(&name).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) => v
                        .to_str()
                        .ok()
                        .and_then(parse_hop)
                        .map_or(peer, |ip| ip.to_canonical()),
                    _ => peer,
                }
            }
            ForwardedHeader::XForwardedFor | ForwardedHeader::Forwarded => {
                let forwarded = self.header == ForwardedHeader::Forwarded;
                let mut client = peer;
                // Values from the last header to the first, entries from right to left.
                for value in headers.get_all(&name).iter().rev() {
                    let Ok(value) = value.to_str() else {
                        return client;
                    };
                    for entry in value.rsplit(',') {
                        let hop = if forwarded {
                            forwarded_for(entry).and_then(parse_hop)
                        } else {
                            parse_hop(entry)
                        };
                        // Garbage: nothing to its left can be trusted.
                        let Some(hop) = hop else { return client };
                        client = hop.to_canonical();
                        if !self.is_trusted(client) {
                            return client;
                        }
                    }
                }
                client
            }
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

impl<B> ExtractKey<B> for ClientIp {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        self.client_ip(req).map(RequestKey::from_ip)
    }
}

/// Whether a `Connection` header lists `name` as hop-by-hop.
fn named_in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The `for=` value of one `Forwarded` element (`for=x;proto=https;by=y`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v)
    })
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`,
/// optionally quoted and surrounded by white space.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return if port_ok {
            inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            None
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PEER: &str = "10.0.0.1";

    fn trusting() -> ClientIp {
        ClientIp::new().trust("10.0.0.0/8".parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    fn xff(c: &ClientIp, peer: &str, values: &[&str]) -> IpAddr {
        let pairs: Vec<_> = values.iter().map(|v| ("x-forwarded-for", *v)).collect();
        c.resolve(ip(peer), &headers(&pairs))
    }

    #[test]
    fn parses_hop_forms() {
        for (s, want) in [
            ("1.2.3.4", "1.2.3.4"),
            (" 1.2.3.4:8080 ", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("\"[2001:db8::1]:443\"", "2001:db8::1"),
        ] {
            assert_eq!(parse_hop(s), Some(ip(want)), "{s:?}");
        }
        for bad in [
            "",
            "unknown",
            "_hidden",
            "[2001:db8::1",
            "[2001:db8::1]:x",
            "[1.2.3.4]",
            "1.2.3.4:99999",
            "2001:db8::1:443:x",
            "1.2.3",
            "\"",
            "[]",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let c = ClientIp::new();
        assert_eq!(xff(&c, PEER, &["1.1.1.1"]), ip(PEER));
        assert_eq!(xff(&trusting(), "192.0.2.1", &["1.1.1.1"]), ip("192.0.2.1"));
    }

    #[test]
    fn walks_from_the_right_to_the_first_untrusted() {
        let c = trusting();
        assert_eq!(
            xff(&c, PEER, &["1.1.1.1, 2.2.2.2, 10.9.9.9"]),
            ip("2.2.2.2")
        );
        assert_eq!(
            xff(&c, PEER, &["1.1.1.1", "2.2.2.2", "10.9.9.9"]),
            ip("2.2.2.2")
        );
        // All trusted: the leftmost.
        assert_eq!(xff(&c, PEER, &["10.1.1.1, 10.2.2.2"]), ip("10.1.1.1"));
        // No header: the peer.
        assert_eq!(xff(&c, PEER, &[]), ip(PEER));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_address() {
        let c = trusting();
        assert_eq!(xff(&c, PEER, &[""]), ip(PEER));
        assert_eq!(xff(&c, PEER, &["1.1.1.1, garbage"]), ip(PEER));
        assert_eq!(xff(&c, PEER, &["1.1.1.1, , 10.2.2.2"]), ip("10.2.2.2"));
        assert_eq!(xff(&c, PEER, &["1.1.1.1,"]), ip(PEER));
        assert_eq!(xff(&c, PEER, &["1.1.1.1", "x"]), ip(PEER));
    }

    #[test]
    fn ipv6_brackets_and_ports() {
        let c = trusting().trust("2001:db8:ffff::/48".parse().unwrap());
        assert_eq!(
            xff(&c, PEER, &["[2001:db8::7]:1234, [2001:db8:ffff::1]:80"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            xff(&c, PEER, &["::ffff:10.0.0.5, 1.2.3.4:5"]),
            ip("1.2.3.4")
        );
        assert_eq!(xff(&c, PEER, &["1.2.3.4, ::ffff:10.0.0.5"]), ip("1.2.3.4"));
    }

    #[test]
    fn connection_naming_the_header_disables_it() {
        let c = trusting();
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("connection", "keep-alive, X-Forwarded-For"),
        ]);
        assert_eq!(c.resolve(ip(PEER), &h), ip(PEER));
    }

    #[test]
    fn forwarded_header() {
        let c = trusting().header(ForwardedHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:99\";proto=https, For=10.3.3.3;by=10.0.0.1",
        )]);
        assert_eq!(c.resolve(ip(PEER), &h), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=6.6.6.6, proto=https")]);
        assert_eq!(c.resolve(ip(PEER), &h), ip(PEER));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(c.resolve(ip(PEER), &h), ip(PEER));
    }

    #[test]
    fn x_real_ip() {
        let c = trusting().header(ForwardedHeader::XRealIp);
        let one = headers(&[("x-real-ip", "203.0.113.4")]);
        assert_eq!(c.resolve(ip(PEER), &one), ip("203.0.113.4"));
        let two = headers(&[("x-real-ip", "203.0.113.4"), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(c.resolve(ip(PEER), &two), ip(PEER));
        assert_eq!(c.resolve(ip("192.0.2.9"), &one), ip("192.0.2.9"));
    }

    #[test]
    fn thousands_of_entries() {
        let c = trusting();
        let mut long = vec!["10.1.1.1"; 5000].join(",");
        assert_eq!(xff(&c, PEER, &[&long]), ip("10.1.1.1"));
        long.insert_str(0, "garbage,");
        assert_eq!(xff(&c, PEER, &[&long]), ip("10.1.1.1"));
        let spoofed = format!("{}, 203.0.113.1", vec!["7.7.7.7"; 5000].join(","));
        assert_eq!(xff(&c, PEER, &[&spoofed]), ip("203.0.113.1"));
    }

    #[test]
    fn extracts_a_key_from_the_peer() {
        let mut req = Request::new(());
        assert_eq!(ClientIp::new().extract(&req), None);
        req.extensions_mut()
            .insert(ClientAddr("192.0.2.1:5".parse().unwrap()));
        assert_eq!(
            ClientIp::new().extract(&req),
            Some(RequestKey::from_ip(ip("192.0.2.1")))
        );
    }

    /// Strings of hop-ish pieces: addresses, ports, brackets, separators, junk.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(",".to_string()),
            Just(" ".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(":".to_string()),
            Just(";".to_string()),
            Just("\"".to_string()),
            Just("for=".to_string()),
            Just("unknown".to_string()),
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
            (0u8..=255).prop_map(|b| format!("10.0.0.{b}")),
            any::<u16>().prop_map(|p| p.to_string()),
            "[ -~]{0,8}",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        /// Whatever the headers say, the answer is the peer, or an address that appears in
        /// them with only trusted proxies to its right; never an untrusted hop further left.
        #[test]
        fn never_trusts_an_untrusted_hop(
            values in prop::collection::vec(hostile(), 0..4),
            peer_trusted in any::<bool>(),
            header in prop_oneof![
                Just(ForwardedHeader::XForwardedFor),
                Just(ForwardedHeader::Forwarded),
                Just(ForwardedHeader::XRealIp),
            ],
            connection in any::<bool>(),
        ) {
            let c = trusting().header(header);
            let peer = if peer_trusted { ip(PEER) } else { ip("192.0.2.1") };
            let name = header.name();
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    h.append(name.clone(), v);
                }
            }
            if connection {
                h.append(CONNECTION, http::HeaderValue::from_str(name.as_str()).unwrap());
            }
            let got = c.resolve(peer, &h);
            if !peer_trusted || connection {
                prop_assert_eq!(got, peer);
            }
            // A reference walk over every entry, right to left.
            let entries: Vec<&str> = h
                .get_all(&name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .collect();
            if got != peer {
                prop_assert!(peer_trusted && !connection);
                if header != ForwardedHeader::XRealIp {
                    // Every entry right of the answer's own must be trusted.
                    let at = entries.iter().rposition(|e| {
                        let hop = if header == ForwardedHeader::Forwarded {
                            forwarded_for(e).and_then(parse_hop)
                        } else {
                            parse_hop(e)
                        };
                        hop.map(|i| i.to_canonical()) == Some(got)
                    });
                    prop_assert!(at.is_some(), "{:?} not in {:?}", got, entries);
                    let at = at.unwrap_or(0);
                    for e in &entries[at + 1..] {
                        let hop = if header == ForwardedHeader::Forwarded {
                            forwarded_for(e).and_then(parse_hop)
                        } else {
                            parse_hop(e)
                        };
                        prop_assert!(
                            hop.is_some_and(|i| c.is_trusted(i)),
                            "untrusted hop {:?} right of the answer {:?}", e, got
                        );
                    }
                }
            }
        }
    }
}
