//! Header rules for reverse proxies: hop-by-hop headers (RFC 9110 §7.6.1) both ways,
//! `TE: trailers` for gRPC, the `Host` rules of RFC 9112 §3.2, and the `X-Forwarded-*`
//! family.
//!
//! | rule | behaviour | anchor |
//! |---|---|---|
//! | hop-by-hop | `Connection` and every header it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` are removed both ways; a WebSocket (or other) upgrade passes | RFC 9110 §7.6.1 |
//! | `TE: trailers` | kept (that value only) when the client sent it, and set on every request whose `content-type` is `application/grpc…`: gRPC servers built on gRPC's C core reset streams without it | gRPC PROTOCOL-HTTP2, nginx `grpc_pass`, Envoy |
//! | `Host` | HTTP/1.1 without `Host` → 400; more than one `Host`, or an invalid one → 400; an absolute-form target (`GET http://a.example/p`) or an HTTP/2 `:authority` wins over `Host` | RFC 9112 §3.2, §3.2.2; RFC 9113 §8.3.1 |
//! | forwarded | the client is appended to `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Real-IP` are set (after the hop-by-hop removal, so a client cannot hide them through `Connection`) | nginx `proxy_add_x_forwarded_for` |
//!
//! ```
//! use tower_lb::http::proxy::{check_host, forward_request_headers, HostError};
//!
//! let mut req = http::Request::get("/").body(()).unwrap(); // HTTP/1.1, no Host
//! assert_eq!(check_host(&mut req), Err(HostError::Missing));
//!
//! let mut req = http::Request::post("/pkg.Service/Call")
//!     .header("host", "api.example")
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! check_host(&mut req).unwrap();
//! forward_request_headers(&mut req, "203.0.113.9".parse().unwrap(), "http");
//! assert_eq!(req.headers()["te"], "trailers");
//! assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.9");
//! ```

use std::{
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    task::{ready, Context, Poll},
};

use crate::{balance::InFlight, error::BoxError};

use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue, Request,
};

/// How many names [`HOP_BY_HOP`] lists.
const HOP_BY_HOP_COUNT: usize = 8;

/// Headers that only concern one connection (RFC 9110 §7.6.1), removed in both
/// directions, plus the `Proxy-*` headers meant for this proxy. [`HopByHop::of`] gives
/// each its bit by text; the removals walk this list in place.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
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
    HopByHop::scan(headers).strip(headers);
}

/// Which hop-by-hop headers a message carries, from one scan of its names: bit `i` for
/// `HOP_BY_HOP[i]`, then `Upgrade`, then any other `Proxy-*` header. Only those are
/// removed, each once: most messages carry none, and a client's or a backend's
/// `Connection: keep-alive` only `Connection` (and perhaps `Keep-Alive`).
#[derive(Debug, Clone, Copy, Default)]
struct HopByHop(u16);

impl HopByHop {
    const CONNECTION: u16 = 1;
    const UPGRADE: u16 = 1 << HOP_BY_HOP_COUNT;
    const PROXY: u16 = 1 << (HOP_BY_HOP_COUNT + 1);

    /// The bit of `name`, or 0 if it is not hop-by-hop whatever `Connection` says. By its
    /// text: one match per name, where comparing it with each of `HOP_BY_HOP` in turn
    /// cost several times more (a test checks the two agree).
    fn of(name: &HeaderName) -> u16 {
        match name.as_str() {
            "connection" => 1,
            "keep-alive" => 1 << 1,
            "proxy-connection" => 1 << 2,
            "proxy-authenticate" => 1 << 3,
            "proxy-authorization" => 1 << 4,
            "te" => 1 << 5,
            "trailer" => 1 << 6,
            "transfer-encoding" => 1 << 7,
            "upgrade" => Self::UPGRADE,
            other if other.starts_with("proxy-") => Self::PROXY,
            _ => 0,
        }
    }

    fn scan(headers: &HeaderMap) -> Self {
        Self(headers.keys().fold(0, |bits, name| bits | Self::of(name)))
    }

    fn any(self) -> bool {
        self.0 != 0
    }

    /// Removes the hop-by-hop headers found, and those `Connection` names. Answers the
    /// `Upgrade` value if `Connection` asked for an upgrade (the request form of
    /// [`upgrade_protocol`], read on the way).
    fn strip(self, headers: &mut HeaderMap) -> Option<HeaderValue> {
        if !self.any() {
            return None;
        }
        let mut upgrade = false;
        if self.0 & Self::CONNECTION != 0
            && let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION)
        {
            // The values leave the map (shared, not copied); the names they list are
            // removed after, looked up by their text, with no `HeaderName` built.
            let (first, more) = {
                let (_, mut values) = entry.remove_entry_mult();
                (values.next(), values.collect::<Vec<HeaderValue>>())
            };
            for name in tokens(first.iter().chain(&more)) {
                if name.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                } else {
                    headers.remove(name);
                }
            }
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
            if self.0 & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        let protocol = if self.0 & Self::UPGRADE != 0 {
            headers.remove(header::UPGRADE).filter(|_| upgrade)
        } else {
            None
        };
        if self.0 & Self::PROXY != 0 {
            let proxy: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("proxy-"))
                .cloned()
                .collect();
            for name in proxy {
                headers.remove(name);
            }
        }
        protocol
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with `Upgrade: …`),
/// e.g. `websocket`.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let wants = tokens(req.headers().get_all(header::CONNECTION))
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Whether the request must carry `TE: trailers` upstream: the client sent that token,
/// or the request is gRPC (`content-type: application/grpc`, `application/grpc+proto`…),
/// which gRPC's HTTP/2 protocol requires it to.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    let sent = tokens(headers.get_all(header::TE)).any(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim_end().eq_ignore_ascii_case("trailers"))
    });
    sent || is_grpc(headers)
}

/// The tokens of a comma-separated list header (`Connection`, `TE`) over all its values,
/// trimmed, empty ones left out (RFC 9110 §5.6.1). A value that is not visible ASCII has
/// none.
fn tokens<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a request or response is gRPC: its `content-type` is `application/grpc` or
/// starts with `application/grpc+` or `application/grpc;`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ct.len() >= 16
                && ct.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';' | b' '))
        })
}

/// Why a request's `Host` was refused (RFC 9112 §3.2): answer it with `400 Bad Request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// An HTTP/1.1 request with no `Host` header and no authority in its target.
    Missing,
    /// More than one `Host` header line.
    Repeated,
    /// A `Host` value that is not a valid `host[:port]`.
    Invalid,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "HTTP/1.1 request without Host",
            Self::Repeated => "more than one Host header",
            Self::Invalid => "invalid Host header",
        })
    }
}

impl std::error::Error for HostError {}

/// Applies the `Host` rules of RFC 9112 §3.2 to a request a proxy received, and makes
/// `Host` say which authority the client asked for:
///
/// - more than one `Host` line, or a value that is not a valid `host[:port]` (userinfo,
///   a list such as `a, b`, a path), is [`HostError::Repeated`] or
///   [`HostError::Invalid`];
/// - a request target in absolute form (`GET http://a.example/p`) or an HTTP/2
///   `:authority` wins: `Host` is set to that authority, whatever the client sent
///   (§3.2.2);
/// - otherwise an HTTP/1.1 request without `Host` is [`HostError::Missing`]; HTTP/1.0
///   requests may lack it.
///
/// Every error should be answered `400 Bad Request`, as nginx and HAProxy do.
///
/// ```
/// use tower_lb::http::proxy::{check_host, HostError};
///
/// let mut req = http::Request::get("http://a.example/p")
///     .header("host", "b.example")
///     .body(())
///     .unwrap();
/// check_host(&mut req).unwrap();
/// assert_eq!(req.headers()["host"], "a.example");
///
/// let mut two = http::Request::get("/").header("host", "a").header("host", "b").body(()).unwrap();
/// assert_eq!(check_host(&mut two), Err(HostError::Repeated));
/// ```
pub fn check_host<B>(req: &mut Request<B>) -> Result<(), HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(value) = first {
        // One pass over the value: the authority's characters (which leave out `@`, `,`,
        // `/`, `?`, `#`, spaces and anything not ASCII) and where its port starts.
        let host = value.as_bytes();
        let valid = !host.is_empty()
            && parses_as_authority(host).is_some_and(|port| {
                let port = &host[port..];
                port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
            });
        if !valid {
            return Err(HostError::Invalid);
        }
    }
    if let Some(authority) = req.uri().authority() {
        // Absolute form, or an HTTP/2 `:authority`: it names the target (§3.2.2).
        if first.is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes()) {
            let value =
                HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Invalid)?;
            req.headers_mut().insert(header::HOST, value);
        }
        return Ok(());
    }
    if first.is_none() && req.version() == http::Version::HTTP_11 {
        return Err(HostError::Missing);
    }
    Ok(())
}

/// Whether `host` (not empty, and without `@`, `,`, `/`, `?`, `#` or a space) parses as
/// an [`http::uri::Authority`]: the same rules, checked without building one, which would
/// copy the value. Only URI characters; a `%` only inside the brackets of an IP literal;
/// brackets once each, in order; one port colon at most outside them. If it does, where
/// its port starts: after the last `:` that follows the last `]`, else at its end.
fn parses_as_authority(host: &[u8]) -> Option<usize> {
    let (mut colons, mut open, mut closed, mut percent) = (0u32, false, false, false);
    let mut port = host.len();
    for (i, &b) in host.iter().enumerate() {
        match b {
            b'%' => percent = true,
            b':' if colons >= 8 => return None,
            b':' => {
                colons += 1;
                port = i + 1;
            }
            b'[' if percent || open => return None,
            b'[' => open = true,
            b']' if !open || closed => return None,
            b']' => {
                closed = true;
                colons = 0;
                percent = false;
                port = host.len();
            }
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' | b'-' | b'.'
            | b'_' | b'~' => {}
            b if b.is_ascii_alphanumeric() => {}
            _ => return None,
        }
    }
    (open == closed && colons <= 1 && !percent).then_some(port)
}

/// Prepares a request's headers for the backend: removes hop-by-hop headers (keeping a
/// WebSocket or other upgrade intact, and `TE: trailers` when the client sent it or the
/// request is gRPC), appends the client to `X-Forwarded-For`, and sets
/// `X-Forwarded-Proto` and `X-Real-IP`. Call [`check_host`] first.
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
    forward(req, Some(client), proto);
}

fn forward<B>(req: &mut Request<B>, client: Option<IpAddr>, proto: &str) {
    // One scan of the names instead of a hashed lookup per rule: most requests carry none
    // of the headers these rules look at.
    let seen = Seen::scan(req.headers());
    // An upgrade needs `Connection`, which is hop-by-hop; `TE: trailers` needs `TE`, gRPC
    // a `Content-Type`.
    let trailers = (seen.te || seen.content_type) && wants_trailers(req.headers());
    let headers = req.headers_mut();
    if let Some(protocol) = seen.hop_by_hop.strip(headers) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(client) = client {
        let client_value = ip_header_value(client);
        let xff = HeaderName::from_static("x-forwarded-for");
        // `Connection` may have named it, and the removal above took it away.
        let mut prior = seen
            .forwarded_for
            .then(|| headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()))
            .into_iter()
            .flatten();
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
        headers.insert(HeaderName::from_static("x-real-ip"), client_value);
    }
    let proto = match proto {
        "http" => Some(HeaderValue::from_static("http")),
        "https" => Some(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other).ok(),
    };
    if let Some(v) = proto {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
}

/// Which of the headers that [`forward`]'s rules read a request carries, from one scan of
/// its names.
#[derive(Debug, Default)]
struct Seen {
    /// The headers [`remove_hop_by_hop`] removes whatever `Connection` says (`Connection`
    /// itself among them).
    hop_by_hop: HopByHop,
    te: bool,
    content_type: bool,
    forwarded_for: bool,
}

impl Seen {
    fn scan(headers: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for name in headers.keys() {
            if name == header::TE {
                seen.te = true;
            } else if name == header::CONTENT_TYPE {
                seen.content_type = true;
            } else if name.as_str() == "x-forwarded-for" {
                seen.forwarded_for = true;
            }
            // `TE` is hop-by-hop too.
            seen.hop_by_hop.0 |= HopByHop::of(name);
        }
        seen
    }
}

/// An IP address as a header value; IPv4 is written by hand (`Display` for `Ipv4Addr`
/// goes through the formatting machinery, a measurable share of a proxied request). Its
/// bytes are shared from the start (one allocation), so the copies that `X-Real-IP` and
/// `X-Forwarded-For` take cost no more.
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
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(Ipv4Text { buf, len }))
                .expect("digits and dots are valid")
        }
        IpAddr::V6(_) => {
            HeaderValue::try_from(ip.to_string()).expect("an IPv6 address is a valid value")
        }
    }
}

/// The text of an IPv4 address, owned by the `Bytes` of its header value.
struct Ipv4Text {
    buf: [u8; 15],
    len: usize,
}

impl AsRef<[u8]> for Ipv4Text {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
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

// === the layer ===

/// The reverse-proxy rules of this module as one layer, in front of a balancer (or any
/// HTTP client service):
///
/// - [`check_host`]: a request that breaks the `Host` rules fails with [`HostError`],
///   which [`ErrorResponseLayer`](super::ErrorResponseLayer) answers `400`;
/// - [`forward_request_headers`] on the way in, with the client from the request's
///   [`ClientAddr`](crate::ClientAddr) extension (put there by
///   `server::Server`, or by you) and the configured `X-Forwarded-Proto` (`https`
///   for a request with a `server::tls::TlsInfo` extension, feature `server-tls`);
/// - [`forward_response_headers`] on the way out;
/// - upgrades (WebSocket, `Connection: upgrade`): when the backend answers
///   `101 Switching Protocols`, the client's and the backend's connections are spliced
///   in a spawned task (half-close passed on), which holds the response's
///   [`InFlight`] guard so the backend counts the connection as load until it closes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lb::{http::{proxy::ProxyLayer, ErrorResponseLayer}, ClientAddr};
///
/// let backend = service_fn(|req: http::Request<String>| async move {
///     let xff = req.headers()["x-forwarded-for"].to_str().unwrap().to_owned();
///     Ok::<_, tower_lb::BoxError>(http::Response::new(xff))
/// });
/// let proxy = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new())
///     .layer(ProxyLayer::new())
///     .service(backend);
///
/// let mut req = http::Request::get("/").header("host", "a.example").body(String::new()).unwrap();
/// req.extensions_mut().insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
/// let rsp = proxy.clone().oneshot(req).await.unwrap();
/// assert_eq!(rsp.status(), 200);
///
/// let no_host = http::Request::get("/").body(String::new()).unwrap();
/// assert_eq!(proxy.oneshot(no_host).await.unwrap().status(), 400);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ProxyLayer {
    proto: &'static str,
    rewrite_host: bool,
}

impl Default for ProxyLayer {
    fn default() -> Self {
        Self {
            proto: "http",
            rewrite_host: false,
        }
    }
}

impl ProxyLayer {
    /// The rules for a plain-HTTP listener (`X-Forwarded-Proto: http`), keeping the
    /// client's `Host`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `X-Forwarded-Proto` to send: `"https"` behind a TLS listener. Requests that
    /// carry a `server::tls::TlsInfo` (feature `server-tls`: `server::Server` terminated
    /// TLS for them) are sent `https` whatever this says.
    #[must_use]
    pub fn proto(mut self, proto: &'static str) -> Self {
        self.proto = proto;
        self
    }

    /// Sends the backend's own address as `Host` instead of the client's (nginx
    /// `proxy_set_header Host $proxy_host`, its default); off by default (nginx
    /// `$host`, as most gateways configure it).
    #[must_use]
    pub fn rewrite_host(mut self, rewrite: bool) -> Self {
        self.rewrite_host = rewrite;
        self
    }
}

impl<S> tower_layer::Layer<S> for ProxyLayer {
    type Service = Proxy<S>;

    fn layer(&self, inner: S) -> Proxy<S> {
        Proxy {
            inner,
            cfg: self.clone(),
        }
    }
}

/// The service made by [`ProxyLayer`].
#[derive(Debug, Clone)]
pub struct Proxy<S> {
    inner: S,
    cfg: ProxyLayer,
}

impl<S> Proxy<S> {
    define_inner_service_accessors!();
}

impl<S, B, RB> tower_service::Service<Request<B>> for Proxy<S>
where
    S: tower_service::Service<Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = ProxyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Err(e) = check_host(&mut req) {
            tracing::debug!(error = %e, "tower_lb: refusing a request");
            return ProxyFuture {
                state: State::Refused { error: Some(e) },
            };
        }
        let client = req
            .extensions()
            .get::<crate::ClientAddr>()
            .map(|a| a.0.ip());
        let upgrade = upgrade_protocol(&req)
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        // A request `server::Server` received over TLS says so (feature `server-tls`).
        #[cfg(feature = "server-tls")]
        let proto = match req.extensions().get::<crate::server::tls::TlsInfo>() {
            Some(_) => "https",
            None => self.cfg.proto,
        };
        #[cfg(not(feature = "server-tls"))]
        let proto = self.cfg.proto;
        forward(&mut req, client, proto);
        if self.cfg.rewrite_host {
            req.headers_mut().remove(header::HOST);
        }
        ProxyFuture {
            state: State::Call {
                fut: self.inner.call(req),
                upgrade,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Proxy`].
    pub struct ProxyFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Call { #[pin] fut: F, upgrade: Option<hyper::upgrade::OnUpgrade> },
        Refused { error: Option<HostError> },
    }
}

impl<F> fmt::Debug for ProxyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ProxyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .map_or_else(|| "polled after completion".into(), Into::into))),
            StateProj::Call { fut, upgrade } => {
                let mut rsp = ready!(fut.poll(cx)).map_err(Into::into)?;
                let status = rsp.status();
                forward_response_headers(status, rsp.headers_mut());
                if status == http::StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client) = upgrade.take()
                {
                    let backend = hyper::upgrade::on(&mut rsp);
                    let load = rsp.extensions_mut().remove::<InFlight>();
                    tokio::spawn(splice(client, backend, load));
                }
                Poll::Ready(Ok(rsp))
            }
        }
    }
}

/// Copies both ways between an upgraded client and backend connection until both sides
/// are closed; `load` counts the connection for the backend meanwhile.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    load: Option<InFlight>,
) {
    match tokio::try_join!(client, backend) {
        Ok((c, b)) => {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut b = hyper_util::rt::TokioIo::new(b);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                tracing::debug!(error = %e, "tower_lb: upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "tower_lb: upgrade failed"),
    }
    drop(load);
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The no-copy check agrees with `http`'s own `Authority` parser on every value
        /// `check_host` hands it: drawn from the characters whose rules differ.
        #[test]
        fn authority_check_agrees_with_http(host in "[a-z0-9:%\\[\\].!$&'()*+;=_~\\-\"<>^`{|}\\\\\x7f\u{e9}]{1,12}") {
            proptest::prop_assert_eq!(
                parses_as_authority(host.as_bytes()).is_some(),
                host.parse::<http::uri::Authority>().is_ok(),
                "{:?}", host
            );
        }
    }

    /// The hop-by-hop rule written out name by name (the code before the one-scan form):
    /// every name `Connection` lists, each of `HOP_BY_HOP`, `Upgrade`, any `Proxy-*`.
    fn strip_by_name(headers: &mut HeaderMap) {
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
        while let Some(name) = headers
            .keys()
            .find(|k| k.as_str().starts_with("proxy-"))
            .cloned()
        {
            headers.remove(name);
        }
    }

    /// The upgrade a request asks for, written out: `Connection` lists `upgrade`.
    fn upgrade_by_name(headers: &HeaderMap) -> Option<HeaderValue> {
        let req = headers
            .iter()
            .fold(Request::builder(), |b, (k, v)| b.header(k, v))
            .body(())
            .unwrap();
        upgrade_protocol(&req)
    }

    #[test]
    fn list_tokens_are_trimmed_over_every_value_and_empty_ones_dropped() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" , Upgrade ,,x-a"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-\xff").unwrap(),
        );
        let all: Vec<_> = tokens(h.get_all(header::CONNECTION)).collect();
        assert_eq!(all, ["Upgrade", "x-a", "keep-alive"]);
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(HopByHop::of(name), 1 << i, "{name}");
        }
        assert_eq!(HopByHop::of(&header::UPGRADE), HopByHop::UPGRADE);
        assert_eq!(
            HopByHop::of(&HeaderName::from_static("proxy-x")),
            HopByHop::PROXY
        );
        assert_eq!(HopByHop::of(&header::ACCEPT), 0);
    }

    const NAMES: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-x",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-a",
        "X-B",
        "accept",
    ];

    fn message(pairs: &[(usize, usize)]) -> HeaderMap {
        const VALUES: [&str; 8] = [
            "keep-alive",
            "Upgrade",
            "x-a, X-B",
            " close ,keep-alive",
            "websocket",
            "",
            "x-a,,upgrade",
            "bad name, te",
        ];
        let mut headers = HeaderMap::new();
        for &(n, v) in pairs {
            headers.append(
                HeaderName::from_bytes(NAMES[n].as_bytes()).unwrap(),
                HeaderValue::from_static(VALUES[v]),
            );
        }
        headers
    }

    proptest::proptest! {
        /// One scan and the removals it calls for leave what the name-by-name rule
        /// leaves, and find the same upgrade.
        #[test]
        fn hop_by_hop_in_one_scan_agrees_with_the_rule(
            pairs in proptest::collection::vec((0..NAMES.len(), 0..8usize), 0..8)
        ) {
            let mut ours = message(&pairs);
            let mut rule = ours.clone();
            let upgrade = upgrade_by_name(&ours);
            proptest::prop_assert_eq!(HopByHop::scan(&ours).strip(&mut ours), upgrade);
            strip_by_name(&mut rule);
            proptest::prop_assert_eq!(ours, rule);
        }
    }

    /// `check_host`'s rule for a `Host` value, written out step by step: the single pass
    /// must agree with it.
    fn host_value_is_valid(v: &str) -> bool {
        let port_ok = |authority: &str| {
            let after_host = authority
                .rfind(']')
                .map_or(authority, |i| &authority[i + 1..]);
            after_host
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5)
        };
        !v.is_empty()
            && !v.contains(['@', ',', '/', '?', '#', ' '])
            && v.parse::<http::uri::Authority>().is_ok()
            && port_ok(v)
    }

    fn check_host_accepts(v: &str) -> bool {
        let mut req = Request::get("/").header("host", v).body(()).unwrap();
        check_host(&mut req).is_ok()
    }

    proptest::proptest! {
        /// The one-pass check of a `Host` value agrees with the rule spelled out.
        #[test]
        fn host_check_agrees_with_the_rule(host in "[a-z0-9:\\[\\]%@,/?# .]{1,14}") {
            proptest::prop_assert_eq!(check_host_accepts(&host), host_value_is_valid(&host), "{:?}", host);
        }
    }

    #[test]
    fn host_check_on_edge_cases() {
        for host in [
            "a:80",
            "a:",
            "a:123456",
            "a:12345",
            "[::1]:65535",
            "[::1]:123456",
            "[::1]x",
            "a:[::1]",
            "[::1]:",
            "a:8a",
            "1.2.3.4:0",
            "[fe80::1%25eth0]:80",
            "a::80",
        ] {
            assert_eq!(
                check_host_accepts(host),
                host_value_is_valid(host),
                "{host:?}"
            );
        }
    }

    #[test]
    fn authority_check_on_edge_cases() {
        for host in [
            "a.example",
            "a.example:80",
            "[::1]",
            "[::1]:8080",
            "[fe80::1%25eth0]",
            "a:b:c",
            "[::1",
            "::1]",
            "[[::1]]",
            "a%20b",
            "1.2.3.4:",
            "[]",
            "~",
            "[a]]",
            "%[::1]",
            "a:1:2:3:4:5:6:7:8:9",
        ] {
            assert_eq!(
                parses_as_authority(host.as_bytes()).is_some(),
                host.parse::<http::uri::Authority>().is_ok(),
                "{host:?}"
            );
        }
    }

    #[cfg(feature = "server-tls")]
    #[tokio::test]
    async fn requests_received_over_tls_are_forwarded_as_https() {
        use tower::ServiceExt;
        use tower_layer::Layer;
        let backend = tower::service_fn(|req: Request<()>| async move {
            let proto = req.headers()["x-forwarded-proto"].clone();
            Ok::<_, BoxError>(http::Response::new(proto))
        });
        let proxy = ProxyLayer::new().layer(backend);
        let req = || {
            Request::get("/")
                .header("host", "a.example")
                .body(())
                .unwrap()
        };
        let plain = proxy.clone().oneshot(req()).await.unwrap();
        assert_eq!(plain.body(), "http");
        let mut tls = req();
        let info = crate::server::tls::TlsInfo::new(Some("a.example"), Some(b"h2"));
        tls.extensions_mut().insert(info);
        assert_eq!(proxy.oneshot(tls).await.unwrap().body(), "https");
    }

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
            .header("te", "gzip")
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
    fn te_trailers_alone_is_kept_and_grpc_always_gets_it() {
        let te = |headers: &[(&str, &str)]| {
            let mut req = Request::post("/");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let mut req = req.body(()).unwrap();
            forward_request_headers(&mut req, "10.0.0.1".parse().unwrap(), "http");
            let all: Vec<_> = req.headers().get_all("te").iter().cloned().collect();
            all
        };
        assert_eq!(te(&[("te", "trailers")]), ["trailers"]);
        assert_eq!(te(&[("te", "gzip;q=0.5, Trailers;q=1")]), ["trailers"]);
        assert!(te(&[("te", "gzip, deflate")]).is_empty());
        assert!(te(&[]).is_empty());
        assert_eq!(te(&[("content-type", "application/grpc")]), ["trailers"]);
        assert_eq!(
            te(&[("content-type", "application/grpc+proto")]),
            ["trailers"]
        );
        assert_eq!(
            te(&[
                ("content-type", "application/grpc"),
                ("te", "gzip"),
                ("connection", "te")
            ]),
            ["trailers"]
        );
        assert!(te(&[("content-type", "application/grpcx")]).is_empty());
        assert!(te(&[("content-type", "application/json")]).is_empty());
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let host = |req: http::request::Builder| {
            let mut req = req.body(()).unwrap();
            check_host(&mut req).map(|()| {
                req.headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned())
            })
        };
        let get = |uri: &str| Request::get(uri);
        assert_eq!(host(get("/")), Err(HostError::Missing));
        assert_eq!(host(get("/").version(http::Version::HTTP_10)), Ok(None));
        assert_eq!(
            host(get("/").header("host", "a.example")),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host(get("/").header("host", "a.example:8080")),
            Ok(Some("a.example:8080".into()))
        );
        assert_eq!(
            host(get("/").header("host", "[::1]:80")),
            Ok(Some("[::1]:80".into()))
        );
        assert_eq!(
            host(get("/").header("host", "a").header("host", "b")),
            Err(HostError::Repeated)
        );
        assert_eq!(
            host(get("/").header("host", "a").header("host", "a")),
            Err(HostError::Repeated)
        );
        for bad in ["a, b", "", "user@a", "a/b", "a b", "a:port", "a?q"] {
            assert_eq!(
                host(get("/").header("host", bad)),
                Err(HostError::Invalid),
                "{bad:?}"
            );
        }
        // Absolute form: the target's authority wins, and stands in for a missing Host.
        assert_eq!(
            host(get("http://a.example/p").header("host", "b.example")),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host(get("http://a.example:81/p")),
            Ok(Some("a.example:81".into()))
        );
        // HTTP/2: `:authority` (the URI's authority) becomes Host.
        assert_eq!(
            host(get("https://c.example/").version(http::Version::HTTP_2)),
            Ok(Some("c.example".into()))
        );
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
