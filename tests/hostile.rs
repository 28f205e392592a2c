//! Hostile input, searched for: property tests over arbitrary bytes and strings for every
//! parser that reads outside input. Each must never panic, allocate in proportion to its
//! input at most, and refuse with a typed error (or, for key extractors, "no key").
//!
//! Allocation is measured with an instrumented global allocator around each call; the
//! properties run one after the other in one test, so nothing else allocates meanwhile.

#![cfg(all(feature = "http", feature = "sticky"))]

use std::{
    alloc::System,
    net::{IpAddr, SocketAddr},
};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_lb::{
    http::proxy::{check_host, forward_request_headers, remove_hop_by_hop, wants_trailers},
    sticky::{Cidr, ClientIp, CookieKey, ExtractKey, ForwardedHeader, QueryKey, SessionCookie},
    ClientAddr,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `f` runs (and what it returns). The properties run one after
/// the other on one thread (see [`hostile_input`]), so the count is theirs alone.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    (out, region.change().bytes_allocated)
}

/// Header-value bytes: anything `HeaderValue` accepts (visible ASCII, space, tab, and
/// obs-text), biased towards separators and address-like text.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"0123456789abcdef.:[]/,;=\" \tfor=by=proto=_-%".to_vec()),
            1 => 0x20u8..0x7f,
            1 => 0x80u8..=0xff,
        ],
        0..200,
    )
}

/// Every IP address written in `text`, bare, with a port, or in brackets.
fn addresses_in(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for token in text.split([',', ';', '"', '=', ' ', '\t']) {
        let t = token.trim();
        let candidates = [
            t.to_owned(),
            t.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .to_owned(),
            t.rsplit_once(':')
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default(),
        ];
        out.extend(candidates.iter().filter_map(|c| c.parse::<IpAddr>().ok()));
    }
    out
}

fn value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// X-Forwarded-For, Forwarded, X-Real-IP: the client is the peer or an address from
    /// the headers; the walk allocates in proportion to the headers.
    fn client_ip_from_forwarding_headers(
        values in prop::collection::vec(value_bytes(), 0..6),
        which in prop_oneof![
            Just(ForwardedHeader::XForwardedFor),
            Just(ForwardedHeader::Forwarded),
            Just(ForwardedHeader::XRealIp),
        ],
    ) {
        let c = ClientIp::new()
            .header(which)
            .trusted_proxies(["10.0.0.0/8".parse::<Cidr>().unwrap(), "::1/128".parse().unwrap()]);
        let name = match which {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => header::FORWARDED,
            _ => HeaderName::from_static("x-real-ip"),
        };
        let mut h = HeaderMap::new();
        let mut input = 0;
        for v in values.iter().filter_map(|v| value(v)) {
            input += v.len();
            h.append(name.clone(), v);
        }
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let (got, bytes) = allocated(|| c.resolve(peer, &h));
        prop_assert!(bytes <= 64 * input + 4096, "{bytes} bytes for {input}");
        let text: String = values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned() + ",")
            .collect();
        prop_assert!(got == peer || addresses_in(&text).contains(&got), "{got} from {text:?}");
    }

    /// Cookie headers, for a plain cookie key and the signed sticky cookie.
    fn cookie_keys(values in prop::collection::vec(value_bytes(), 0..4), name in "[a-z_]{1,12}") {
        let mut req = Request::new(());
        let mut input = 0;
        for v in values.iter().filter_map(|v| value(v)) {
            input += v.len();
            req.headers_mut().append(header::COOKIE, v);
        }
        let plain = CookieKey::new(name.clone());
        let sticky = SessionCookie::new().name(name).unwrap().secret([7; 16]);
        let (_, bytes) = allocated(|| (plain.extract(&req), sticky.extract(&req)));
        prop_assert!(bytes <= 16 * input + 4096, "{bytes} bytes for {input}");
    }

    /// CIDRs: parsed or refused with `CidrParseError`; what parses prints back the same.
    fn cidrs(text in "[0-9a-fA-F:./%]{0,60}|\\PC{0,40}") {
        match text.parse::<Cidr>() {
            Ok(c) => {
                let again: Cidr = c.to_string().parse().unwrap();
                prop_assert_eq!(again, c);
                prop_assert!(c.contains(c.addr()));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Query keys over arbitrary request targets.
    fn query_keys(target in "/[ -~]{0,200}", name in "[a-z]{1,8}") {
        let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()) };
        let req = Request::get(uri).body(()).unwrap();
        let key = QueryKey::new(name);
        let (_, bytes) = allocated(|| key.extract(&req));
        prop_assert!(bytes <= 8 * target.len() + 1024);
    }

    /// `Connection` tokens: whatever they name is gone afterwards, with every hop-by-hop
    /// header, and the rest stays.
    fn connection_tokens(
        connection in prop::collection::vec(value_bytes(), 0..3),
        names in prop::collection::vec("[a-z][a-z0-9-]{0,12}", 0..8),
    ) {
        let mut h = HeaderMap::new();
        for n in &names {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        let mut input = 0;
        for v in connection.iter().filter_map(|v| value(v)) {
            input += v.len();
            h.append(header::CONNECTION, v);
        }
        let named: Vec<String> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        let before = h.clone();
        let (_, bytes) = allocated(|| remove_hop_by_hop(&mut h));
        prop_assert!(bytes <= 16 * input + 64 * names.len() + 4096);
        for n in h.keys() {
            prop_assert!(!named.contains(&n.as_str().to_owned()), "{n} was named in Connection");
            prop_assert!(n != header::CONNECTION && n != header::TE && !n.as_str().starts_with("proxy-"));
        }
        for (n, _) in before.iter() {
            let hop = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"]
                .contains(&n.as_str()) || n.as_str().starts_with("proxy-");
            if !hop && !named.contains(&n.as_str().to_owned()) {
                prop_assert!(h.contains_key(n), "{n} was removed");
            }
        }
    }

    /// Host rules, TE and the forwarded headers over arbitrary Host and TE values.
    fn host_and_te(hosts in prop::collection::vec(value_bytes(), 0..3), te in value_bytes(), absolute in any::<bool>()) {
        let target = if absolute { "http://a.example/p" } else { "/p" };
        let mut req = Request::get(target).body(()).unwrap();
        for h in hosts.iter().filter_map(|v| value(v)) {
            req.headers_mut().append(header::HOST, h);
        }
        if let Some(te) = value(&te) {
            req.headers_mut().insert(header::TE, te);
        }
        req.extensions_mut().insert(ClientAddr(SocketAddr::from(([192, 0, 2, 1], 1))));
        let trailers = wants_trailers(req.headers());
        match check_host(&mut req) {
            Ok(()) => {
                prop_assert!(req.headers().get_all(header::HOST).iter().count() <= 1);
                if absolute {
                    prop_assert_eq!(&req.headers()[header::HOST], "a.example");
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        forward_request_headers(&mut req, "192.0.2.1".parse().unwrap(), "http");
        let te_out: Vec<_> = req.headers().get_all(header::TE).iter().collect();
        prop_assert_eq!(te_out.len(), usize::from(trailers));
        if trailers {
            prop_assert_eq!(te_out[0], "trailers");
        }
    }

    /// The probe's JSON body expectation over arbitrary bodies.
    #[cfg(feature = "health-active")]
    fn probe_bodies(body in prop::collection::vec(any::<u8>(), 0..300), pointer in "(/[a-z0-9~]{0,6}){0,3}") {
        use tower_lb::health::active::BodyMatch;
        let want = BodyMatch::json(&pointer, "healthy").unwrap();
        let (matched, bytes) = allocated(|| want.matches(&body));
        prop_assert!(bytes <= 64 * body.len() + 4096);
        // Only a JSON document with "healthy" at the pointer matches.
        if matched {
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(doc.pointer(&pointer), Some(&serde_json::json!("healthy")));
        }
        let text = BodyMatch::contains("ok");
        prop_assert_eq!(text.matches(&body), body.windows(2).any(|w| w == b"ok"));
    }
}

#[cfg(feature = "file")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The backends file, as arbitrary text and as near-valid documents: parsed, or
    /// refused with a `ParseError` naming the problem.
    fn backend_files(
        text in "\\PC{0,300}",
        entries in prop::collection::vec(
            ("[a-z0-9.:-]{0,20}", any::<i64>(), any::<bool>(), any::<i16>()), 0..6),
    ) {
        use tower_lb::discover::file::{parse, Format};
        for format in [Format::Toml, Format::Json] {
            if let Err(e) = parse::<String>(&text, format) {
                prop_assert!(!e.reason().is_empty());
            }
        }
        let mut doc = String::new();
        for (address, weight, backup, priority) in &entries {
            doc += &format!(
                "[[backend]]\naddress = {address:?}\nweight = {weight}\nbackup = {backup}\npriority = {priority}\n"
            );
        }
        match parse::<SocketAddr>(&doc, Format::Toml) {
            Ok(backends) => {
                prop_assert_eq!(backends.len(), entries.len());
                for b in &backends {
                    prop_assert!(b.weight() >= 1);
                }
            }
            Err(e) => prop_assert!(!e.reason().is_empty()),
        }
    }
}

/// Every property above, in turn, on this one thread.
#[test]
fn hostile_input() {
    client_ip_from_forwarding_headers();
    cookie_keys();
    cidrs();
    query_keys();
    connection_tokens();
    host_and_te();
    #[cfg(feature = "health-active")]
    probe_bodies();
    #[cfg(feature = "file")]
    backend_files();
}
