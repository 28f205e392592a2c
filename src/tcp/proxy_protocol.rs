//! The PROXY protocol header (HAProxy, versions 1 and 2), written to a backend right
//! after connecting.

use std::net::{IpAddr, SocketAddr};

use super::TcpRequest;

/// Which PROXY protocol header a [`TcpEndpoints`](super::TcpEndpoints) maker writes to
/// each backend connection before any byte of the client's, so the backend sees the
/// client's address (HAProxy `send-proxy` / `send-proxy-v2`, nginx `proxy_protocol on`).
///
/// The source address is the request's [`peer`](TcpRequest::peer), the destination its
/// [`local`](TcpRequest::local) address (where the client connected). Both as in the
/// [HAProxy specification](https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):
///
/// - `V1`, text: `PROXY TCP4 192.0.2.1 198.51.100.2 51000 6379\r\n` (`TCP6` for IPv6),
///   `PROXY UNKNOWN\r\n` for a request without addresses.
/// - `V2`, binary: the 12-byte signature, `0x21` (version 2, command `PROXY`), the
///   family (`0x11` TCP over IPv4, `0x21` TCP over IPv6), the address length (12 or 36,
///   big-endian), source and destination addresses, source and destination ports; a
///   request without addresses sends the `LOCAL` command (`0x20`, family `0x00`,
///   length 0), which tells the backend to use the connection's own addresses.
///
/// When one address is IPv4 and the other IPv6, an IPv4-mapped IPv6 address
/// (`::ffff:192.0.2.1`) is read as IPv4 if both can be, and otherwise the IPv4 address
/// is written in its mapped IPv6 form, so both always have one family.
///
/// ```
/// use tower_lb::tcp::{ProxyProtocol, TcpRequest};
///
/// let req = TcpRequest::new("1.2.3.4:1111".parse().unwrap(), "5.6.7.8:2222".parse().unwrap());
/// assert_eq!(ProxyProtocol::V1.header(&req), b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
/// assert_eq!(ProxyProtocol::V2.header(&req).len(), 16 + 12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyProtocol {
    /// The human-readable header of version 1.
    V1,
    /// The binary header of version 2.
    V2,
}

/// The version 2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyProtocol {
    /// The header for a connection made for `req`.
    pub fn header(self, req: &TcpRequest) -> Vec<u8> {
        let addrs = req.peer().zip(req.local()).map(|(s, d)| same_family(s, d));
        match self {
            Self::V1 => v1(addrs),
            Self::V2 => v2(addrs),
        }
    }
}

/// Both addresses in one family (see [`ProxyProtocol`]).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => Some(a),
    };
    let map = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    match (unmap(src), unmap(dst)) {
        (Some(s), Some(d)) => (s, d),
        _ => (map(src), map(dst)),
    }
}

fn v1(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    match addrs {
        None => b"PROXY UNKNOWN\r\n".to_vec(),
        Some((src, dst)) => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {proto} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
    }
}

fn v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    let Some((src, dst)) = addrs else {
        // LOCAL, UNSPEC, no addresses.
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    // Version 2, command PROXY.
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, local: &str) -> TcpRequest {
        TcpRequest::new(peer.parse().unwrap(), local.parse().unwrap())
    }

    const SIG: &[u8] = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A";

    #[test]
    fn v1_ipv4() {
        let r = req("1.2.3.4:1111", "5.6.7.8:2222");
        assert_eq!(
            ProxyProtocol::V1.header(&r),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
        );
    }

    #[test]
    fn v1_ipv6() {
        let r = req("[2001:db8::1]:1111", "[2001:db8::2]:2222");
        assert_eq!(
            ProxyProtocol::V1.header(&r),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n"
        );
    }

    #[test]
    fn v1_unknown() {
        assert_eq!(
            ProxyProtocol::V1.header(&TcpRequest::unknown()),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn v1_is_at_most_107_bytes() {
        let r = req(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        );
        assert_eq!(ProxyProtocol::V1.header(&r).len(), 104);
    }

    #[test]
    fn v2_ipv4() {
        let r = req("1.2.3.4:1111", "5.6.7.8:2222");
        let mut want = SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0x04, 0x57, 0x08, 0xAE]); // 1111, 2222
        assert_eq!(ProxyProtocol::V2.header(&r), want);
    }

    #[test]
    fn v2_ipv6() {
        let r = req("[2001:db8::1]:1111", "[::1]:2222");
        let mut want = SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x04, 0x57, 0x08, 0xAE]);
        assert_eq!(ProxyProtocol::V2.header(&r), want);
    }

    #[test]
    fn v2_local_without_addresses() {
        let mut want = SIG.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(ProxyProtocol::V2.header(&TcpRequest::unknown()), want);
    }

    #[test]
    fn mixed_families_become_one() {
        // A dual-stack listener: the client as a mapped address, the listener as IPv4.
        let r = req("[::ffff:1.2.3.4]:1111", "5.6.7.8:2222");
        assert_eq!(
            ProxyProtocol::V1.header(&r),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
        );
        let r = req("[2001:db8::1]:1111", "5.6.7.8:2222");
        assert_eq!(
            ProxyProtocol::V1.header(&r),
            b"PROXY TCP6 2001:db8::1 ::ffff:5.6.7.8 1111 2222\r\n"
        );
        let v2 = ProxyProtocol::V2.header(&r);
        assert_eq!(&v2[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &v2[32..48],
            &"::ffff:5.6.7.8"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
