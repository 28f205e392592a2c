//! Header rules for reverse proxies (RFC 9110 §7.6): hop-by-hop headers and the
//! `X-Forwarded-*` family.

use std::net::IpAddr;

use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue, Request,
};

/// Headers that only concern one connection (RFC 9110 §7.6.1), removed in both
/// directions, plus the `Proxy-*` headers meant for this proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
///
/// Headers named by `Connection` are removed too, so a client cannot strip
/// `X-Forwarded-For` (or anything else) before the proxy sets it by naming it there:
/// call this *before* adding the proxy's own headers.
///
/// ```
/// use http::HeaderMap;
/// use tower_lb::http::proxy::remove_hop_by_hop;
///
/// let mut h = HeaderMap::new();
/// h.insert("connection", "keep-alive, x-secret".parse().unwrap());
/// h.insert("x-secret", "1".parse().unwrap());
/// h.insert("transfer-encoding", "chunked".parse().unwrap());
/// h.insert("accept", "*/*".parse().unwrap());
/// remove_hop_by_hop(&mut h);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("accept"));
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One scan of the keys first: most messages carry no hop-by-hop header at all, and
    // the removals below hash every name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    // Any other `Proxy-*` header.
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Whether a header name is removed by [`remove_hop_by_hop`] whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || name.as_str().starts_with("proxy-")
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with `Upgrade: …`),
/// e.g. `websocket`.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Prepares a request's headers for the backend: removes hop-by-hop headers (keeping a
/// WebSocket or other upgrade intact), appends the client to `X-Forwarded-For`, and sets
/// `X-Forwarded-Proto` and `X-Real-IP`.
///
/// ```
/// use tower_lb::http::proxy::forward_request_headers;
///
/// let mut req = http::Request::get("/").header("x-forwarded-for", "198.51.100.1")
///     .header("connection", "x-forwarded-for").body(()).unwrap();
/// forward_request_headers(&mut req, "203.0.113.9".parse().unwrap(), "http");
/// // `Connection` named X-Forwarded-For, so the client's value was dropped.
/// assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.9");
/// assert_eq!(req.headers()["x-real-ip"], "203.0.113.9");
/// ```
pub fn forward_request_headers<B>(req: &mut Request<B>, client: IpAddr, proto: &str) {
    let upgrade = upgrade_protocol(req);
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let client_value = ip_header_value(client);
    let xff = HeaderName::from_static("x-forwarded-for");
    let mut prior = headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok());
    let value = match prior.next() {
        None => client_value.clone(),
        Some(first) => {
            let mut joined = first.to_owned();
            for v in prior {
                joined.push_str(", ");
                joined.push_str(v);
            }
            joined.push_str(", ");
            joined.push_str(client_value.to_str().unwrap_or_default());
            HeaderValue::try_from(joined).unwrap_or_else(|_| client_value.clone())
        }
    };
    headers.insert(xff, value);
    let proto = match proto {
        "http" => Some(HeaderValue::from_static("http")),
        "https" => Some(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other).ok(),
    };
    if let Some(v) = proto {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    headers.insert(HeaderName::from_static("x-real-ip"), client_value);
}

/// An IP address as a header value; IPv4 is written by hand (`Display` for `Ipv4Addr`
/// goes through the formatting machinery, a measurable share of a proxied request).
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            HeaderValue::from_bytes(&buf[..len]).expect("digits and dots are valid")
        }
        IpAddr::V6(_) => {
            HeaderValue::try_from(ip.to_string()).expect("an IPv6 address is a valid value")
        }
    }
}

/// Prepares a response's headers for the client: removes hop-by-hop headers, except the
/// `Connection`/`Upgrade` pair of a `101 Switching Protocols` answer.
pub fn forward_response_headers(status: http::StatusCode, headers: &mut HeaderMap) {
    let upgrade = (status == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn connection_cannot_hide_forwarded_headers_or_leak_hop_by_hop() {
        let mut req = Request::get("/")
            .header(
                "connection",
                "close, X-Forwarded-For, x-real-ip, ,,bad header",
            )
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-real-ip", "1.2.3.4")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "secret")
            .header("proxy-foo", "1")
            .header("te", "trailers")
            .header("trailer", "x")
            .header("upgrade", "h2c")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        forward_request_headers(&mut req, "10.1.2.3".parse().unwrap(), "https");
        let h = req.headers();
        for gone in [
            "connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-foo",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn xff_is_appended_across_repeated_headers() {
        let mut req = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
            .body(())
            .unwrap();
        forward_request_headers(&mut req, "::1".parse().unwrap(), "http");
        assert_eq!(
            req.headers()["x-forwarded-for"],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, ::1"
        );
    }

    #[test]
    fn websocket_upgrades_pass() {
        let mut req = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "abc")
            .body(())
            .unwrap();
        forward_request_headers(&mut req, "10.0.0.1".parse().unwrap(), "http");
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["sec-websocket-key"], "abc");

        let mut rsp = HeaderMap::new();
        rsp.insert("connection", "upgrade".parse().unwrap());
        rsp.insert("upgrade", "websocket".parse().unwrap());
        forward_response_headers(http::StatusCode::SWITCHING_PROTOCOLS, &mut rsp);
        assert_eq!(rsp["upgrade"], "websocket");
        let mut ok = rsp.clone();
        forward_response_headers(http::StatusCode::OK, &mut ok);
        assert!(!ok.contains_key("upgrade"));
    }
}
