use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{header::SET_COOKIE, uri::Scheme, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{cookie::cookies, ExtractKey};
use crate::{
    backend::stable_hash,
    balance::{
        strategy::{Candidates, RequestKey, Strategy},
        Key, MakeEndpoint, Target,
    },
    error::{BoxError, ConfigError},
};

/// The balancer's own sticky cookie: the response names the backend that served it, and
/// the next request with that cookie goes back to the same backend.
///
/// One `SessionCookie` (cheap to clone) configures the three parts, which must be used
/// together on one balancer:
///
/// - as an [`ExtractKey`] in a [`StickyLayer`](super::StickyLayer) in front of the
///   balancer, it turns a well-formed cookie into a [pinned](RequestKey::pinned) key;
/// - [`strategy`](Self::strategy) wraps the balancer's strategy in [`Pinned`], which sends
///   a pinned key to its endpoint when that endpoint is available, and otherwise lets the
///   inner strategy pick as if there were no key;
/// - [`endpoints`](Self::endpoints) wraps the endpoint maker so that every endpoint adds
///   `Set-Cookie` to its responses unless the request already carried its own value.
///
/// The value is 16 hex digits: SipHash-2-4 of the backend key's
/// [`stable_hash`](crate::backend::stable_hash) under a 128-bit secret, random per
/// `SessionCookie` unless set with [`secret`](Self::secret) (needed when several gateway
/// replicas must honour each other's cookies). It never shows the backend's address, and
/// without the secret nobody can work out which value names which backend, or forge one. The cookie
/// is `Path=/; HttpOnly; SameSite=Lax`, a session cookie unless
/// [`max_age`](Self::max_age) is set, and `Secure` when the request URI is `https` or
/// [`secure`](Self::secure) says so (set it behind TLS termination, where requests
/// arrive as plain HTTP).
///
/// A missing, malformed, tampered or unknown value, or one whose backend is ejected,
/// draining, removed or failed for this request, gets a normal pick, and the endpoint
/// that serves it sends a new cookie.
///
/// See the [module docs](super) for a full example.
#[derive(Clone)]
pub struct SessionCookie {
    inner: Arc<Config>,
}

struct Config {
    name: String,
    k0: u64,
    k1: u64,
    secure: bool,
    path: String,
    max_age: Option<Duration>,
}

impl fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("SessionCookie")
            .field("name", &self.inner.name)
            .field("secure", &self.inner.secure)
            .field("path", &self.inner.path)
            .field("max_age", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

impl Default for SessionCookie {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionCookie {
    /// A cookie named `lb_route`, with a random secret.
    pub fn new() -> Self {
        // `RandomState` keys come from the operating system's random source once per
        // thread, and differ for every instance.
        let a = std::collections::hash_map::RandomState::new();
        let b = std::collections::hash_map::RandomState::new();
        Self {
            inner: Arc::new(Config {
                name: "lb_route".into(),
                k0: a.hash_one(0x746f_7765_725f_6c62u64),
                k1: b.hash_one(0x7365_6372_6574u64),
                secure: false,
                path: "/".into(),
                max_age: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config {
            name: self.inner.name.clone(),
            k0: self.inner.k0,
            k1: self.inner.k1,
            secure: self.inner.secure,
            path: self.inner.path.clone(),
            max_age: self.inner.max_age,
        };
        f(&mut cfg);
        self.inner = Arc::new(cfg);
        self
    }

    /// Sets the cookie name (default `lb_route`). Fails unless it is a non-empty RFC 6265
    /// token (letters, digits and ``!#$%&'*+-.^_`|~``).
    ///
    /// ```
    /// use tower_lb::sticky::SessionCookie;
    ///
    /// assert!(SessionCookie::new().name("route").is_ok());
    /// assert!(SessionCookie::new().name("bad name").is_err());
    /// ```
    pub fn name(self, name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(ConfigError::Invalid {
                setting: "cookie name",
                reason: format!("{name:?} is not a cookie token"),
            });
        }
        Ok(self.edit(|c| c.name = name))
    }

    /// Sets the 128-bit secret, shared by every replica of a gateway that must accept the
    /// others' cookies. Keep it out of source code.
    #[must_use]
    pub fn secret(self, secret: [u8; 16]) -> Self {
        let (a, b) = secret.split_at(8);
        let k0 = u64::from_le_bytes(a.try_into().unwrap_or_default());
        let k1 = u64::from_le_bytes(b.try_into().unwrap_or_default());
        self.edit(|c| {
            c.k0 = k0;
            c.k1 = k1;
        })
    }

    /// Always marks the cookie `Secure` (default: only when the request URI is `https`).
    #[must_use]
    pub fn secure(self, always: bool) -> Self {
        self.edit(|c| c.secure = always)
    }

    /// Sets the cookie `Path` (default `/`). Fails on characters a cookie path cannot
    /// hold (controls and `;`).
    pub fn path(self, path: impl Into<String>) -> Result<Self, ConfigError> {
        let path = path.into();
        if path
            .bytes()
            .any(|b| b == b';' || !(0x20..0x7f).contains(&b))
        {
            return Err(ConfigError::Invalid {
                setting: "cookie path",
                reason: format!("{path:?} is not a cookie path"),
            });
        }
        Ok(self.edit(|c| c.path = path))
    }

    /// Makes the cookie persistent for `max_age` (whole seconds); default: a session
    /// cookie.
    #[must_use]
    pub fn max_age(self, max_age: Duration) -> Self {
        self.edit(|c| c.max_age = Some(max_age))
    }

    /// The token for a backend id ([`Candidate::id`](crate::balance::strategy::Candidate::id)).
    fn token_for_id(&self, id: u64) -> u64 {
        siphash24(self.inner.k0, self.inner.k1, &id.to_le_bytes())
    }

    /// The cookie value for the backend with key `key`.
    ///
    /// ```
    /// use tower_lb::sticky::SessionCookie;
    ///
    /// let cookie = SessionCookie::new().secret([7; 16]);
    /// let v = cookie.value_for(&"10.0.0.1:8080");
    /// assert_eq!(v.len(), 16);
    /// assert!(!v.contains("10.0.0.1"));
    /// assert_eq!(v, cookie.value_for(&"10.0.0.1:8080"));
    /// assert_ne!(v, SessionCookie::new().secret([8; 16]).value_for(&"10.0.0.1:8080"));
    /// ```
    pub fn value_for<K: Hash + ?Sized>(&self, key: &K) -> String {
        format!("{:016x}", self.token_for_id(stable_hash(key)))
    }

    /// Wraps the balancer's strategy: pinned keys go to their endpoint. See [`Pinned`].
    pub fn strategy<S: Strategy>(&self, inner: S) -> Pinned<S> {
        Pinned {
            cookie: self.clone(),
            tokens: ArcSwap::from_pointee(HashMap::new()),
            inner,
        }
    }

    /// Wraps an endpoint maker: each endpoint stamps `Set-Cookie` with its own value. See
    /// [`MakeSetCookie`].
    pub fn endpoints<M>(&self, maker: M) -> MakeSetCookie<M> {
        MakeSetCookie {
            cookie: self.clone(),
            maker,
        }
    }

    /// The layer for one endpoint, for makers that assemble the endpoint stack by hand.
    ///
    /// ```
    /// use tower::{service_fn, Layer};
    /// use tower_lb::{balance::Target, sticky::SessionCookie, Backend, Balance};
    /// use std::convert::Infallible;
    ///
    /// let cookie = SessionCookie::new();
    /// let layers = cookie.clone();
    /// let balance = Balance::builder()
    ///     .strategy(cookie.strategy(tower_lb::balance::strategy::RoundRobin::new()))
    ///     .backends([Backend::new("a"), Backend::new("b")])
    ///     .build(move |t: &Target<'_, &'static str>| {
    ///         layers.layer(t).layer(service_fn(|_req: http::Request<()>| async {
    ///             Ok::<_, Infallible>(http::Response::new(()))
    ///         }))
    ///     })
    ///     .unwrap();
    /// # let _ = balance;
    /// ```
    pub fn layer<K: Key>(&self, target: &Target<'_, K>) -> SetCookieLayer {
        self.layer_for_id(stable_hash(target.key()))
    }

    fn layer_for_id(&self, id: u64) -> SetCookieLayer {
        let value = format!("{:016x}", self.token_for_id(id));
        let c = &self.inner;
        let mut line = format!("{}={}; Path={}", c.name, value, c.path);
        if let Some(age) = c.max_age {
            line += &format!("; Max-Age={}", age.as_secs());
        }
        line += "; HttpOnly; SameSite=Lax";
        let secure_line = format!("{line}; Secure");
        // Name, value and path were validated as header-safe ASCII.
        let header = |s: String| HeaderValue::try_from(s).ok();
        SetCookieLayer {
            inner: Arc::new(Stamp {
                cookie: self.clone(),
                value,
                plain: header(line),
                secure: header(secure_line),
            }),
        }
    }

    /// The pinned key for a request's cookie, if it has a well-formed one.
    fn token_in<B>(&self, req: &Request<B>) -> Option<u64> {
        cookies(req.headers(), &self.inner.name).find_map(parse_token)
    }
}

/// 16 lower- or upper-case hex digits.
fn parse_token(v: &str) -> Option<u64> {
    if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(v, 16).ok()
}

impl<B> ExtractKey<B> for SessionCookie {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        self.token_in(req).map(RequestKey::pinned)
    }
}

// === impl Pinned ===

/// A strategy that sends a [pinned](RequestKey::pinned) key to the endpoint its sticky
/// cookie names, if that endpoint is available; every other request goes to the inner
/// strategy (a pinned key that resolves to nothing, as if it had no key). Made by
/// [`SessionCookie::strategy`]; the token map is rebuilt in
/// [`rebuild`](Strategy::rebuild) and read lock-free.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, RequestKey, RoundRobin, Strategy};
/// use tower_lb::sticky::SessionCookie;
///
/// let cookie = SessionCookie::new();
/// let pinned = cookie.strategy(RoundRobin::new());
/// let all = list_of(&[1, 1, 1]); // ids 0, 1, 2
/// pinned.rebuild(&all.view());
/// let token = u64::from_str_radix(&pinned.value_for_id(2), 16).unwrap();
/// for _ in 0..5 {
///     assert_eq!(pinned.pick(&all.view(), Some(&RequestKey::pinned(token))), Some(2));
/// }
/// ```
pub struct Pinned<S> {
    cookie: SessionCookie,
    /// Token → endpoint id.
    tokens: ArcSwap<HashMap<u64, u64>>,
    inner: S,
}

impl<S> Pinned<S> {
    /// The cookie value naming the endpoint with the given
    /// [`id`](crate::balance::strategy::Candidate::id).
    pub fn value_for_id(&self, id: u64) -> String {
        format!("{:016x}", self.cookie.token_for_id(id))
    }

    /// The inner strategy.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for Pinned<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned")
            .field("cookie", &self.cookie)
            .field("endpoints", &self.tokens.load().len())
            .finish_non_exhaustive()
    }
}

impl<S: Strategy> Strategy for Pinned<S> {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        match key.and_then(RequestKey::pin) {
            Some(token) => {
                let id = self.tokens.load().get(&token).copied();
                match id.and_then(|id| candidates.position(id)) {
                    Some(i) => Some(i),
                    // Unknown, tampered or unavailable: a normal pick, and the endpoint
                    // that serves it sends a new cookie.
                    None => self.inner.pick(candidates, None),
                }
            }
            None => self.inner.pick(candidates, key),
        }
    }

    fn needs_latency(&self) -> bool {
        self.inner.needs_latency()
    }

    fn rebuild(&self, all: &Candidates<'_>) {
        let map = all
            .iter()
            .map(|c| (self.cookie.token_for_id(c.id()), c.id()))
            .collect();
        self.tokens.store(Arc::new(map));
        self.inner.rebuild(all);
    }

    fn name(&self) -> &'static str {
        "sticky-cookie"
    }
}

// === impl MakeSetCookie ===

/// An endpoint maker whose endpoints stamp the sticky cookie; made by
/// [`SessionCookie::endpoints`].
#[derive(Clone)]
pub struct MakeSetCookie<M> {
    cookie: SessionCookie,
    maker: M,
}

impl<M> fmt::Debug for MakeSetCookie<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeSetCookie")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<K: Key, M: MakeEndpoint<K>> MakeEndpoint<K> for MakeSetCookie<M> {
    type Service = SetCookie<M::Service>;

    fn make_endpoint(&self, target: &Target<'_, K>) -> Result<Self::Service, BoxError> {
        let inner = self.maker.make_endpoint(target)?;
        Ok(self.cookie.layer(target).layer(inner))
    }
}

// === impl SetCookieLayer ===

struct Stamp {
    cookie: SessionCookie,
    value: String,
    plain: Option<HeaderValue>,
    secure: Option<HeaderValue>,
}

/// Adds one endpoint's sticky cookie to its responses; made by [`SessionCookie::layer`].
#[derive(Clone)]
pub struct SetCookieLayer {
    inner: Arc<Stamp>,
}

impl fmt::Debug for SetCookieLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetCookieLayer")
            .field("value", &self.inner.value)
            .finish()
    }
}

impl<S> Layer<S> for SetCookieLayer {
    type Service = SetCookie<S>;

    fn layer(&self, inner: S) -> SetCookie<S> {
        SetCookie {
            inner,
            stamp: self.inner.clone(),
        }
    }
}

/// One endpoint's service with its sticky cookie: adds `Set-Cookie` to every response
/// unless the request already carried this endpoint's value. See [`SessionCookie`].
#[derive(Clone)]
pub struct SetCookie<S> {
    inner: S,
    stamp: Arc<Stamp>,
}

impl<S> SetCookie<S> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for SetCookie<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetCookie")
            .field("inner", &self.inner)
            .field("value", &self.stamp.value)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for SetCookie<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let s = &self.stamp;
        let has_own = cookies(req.headers(), &s.cookie.inner.name).any(|v| v == s.value);
        let set = if has_own {
            None
        } else if s.cookie.inner.secure || req.uri().scheme() == Some(&Scheme::HTTPS) {
            s.secure.clone()
        } else {
            s.plain.clone()
        };
        ResponseFuture {
            inner: self.inner.call(req),
            set,
        }
    }
}

pin_project! {
    /// The response future of [`SetCookie`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        set: Option<HeaderValue>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        if let Some(v) = this.set.take() {
            rsp.headers_mut().append(SET_COOKIE, v);
        }
        Poll::Ready(Ok(rsp))
    }
}

// === SipHash-2-4 ===

/// SipHash-2-4 (Aumasson and Bernstein), a keyed pseudo-random function: without the key,
/// outputs cannot be predicted or forged.
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = msg.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = (msg.len() as u64) << 56;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    v[3] ^= last;
    round(&mut v);
    round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

// === the builder's one call ===

impl<K: Key, P, L> crate::balance::Builder<K, P, L> {
    /// Sticky sessions in one call: requests carrying `cookie` go back to the backend
    /// that set it, while it is available; every answer of a backend sets its cookie.
    /// This wraps the strategy (whatever it is set to, before or after), keys requests by
    /// the cookie, and adds the `Set-Cookie` layer around every endpoint. See
    /// [`SessionCookie`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::convert::Infallible;
    /// use tower::{service_fn, ServiceExt};
    /// use tower_lb::{balance::Target, sticky::SessionCookie, Backend, Balance};
    ///
    /// let balance = Balance::builder()
    ///     .backends(["a", "b", "c"].map(Backend::new))
    ///     .sticky_cookie(SessionCookie::new().name("route").unwrap())
    ///     .build(|t: &Target<'_, &'static str>| {
    ///         let name = *t.key();
    ///         service_fn(move |_req: http::Request<()>| async move {
    ///             Ok::<_, Infallible>(http::Response::new(name))
    ///         })
    ///     })
    ///     .unwrap();
    /// let first = balance.clone().oneshot(http::Request::new(())).await.unwrap();
    /// let set = first.headers()["set-cookie"].to_str().unwrap();
    /// let cookie = set.split(';').next().unwrap().to_owned(); // "route=…"
    /// for _ in 0..10 {
    ///     let req = http::Request::get("/").header("cookie", &cookie).body(()).unwrap();
    ///     let again = balance.clone().oneshot(req).await.unwrap();
    ///     assert_eq!(again.body(), first.body());
    /// }
    /// # }
    /// ```
    pub fn sticky_cookie(
        mut self,
        cookie: SessionCookie,
    ) -> crate::balance::Builder<
        K,
        crate::balance::Keyed<P, SessionCookie>,
        crate::balance::Around<
            L,
            crate::balance::PerEndpoint<impl Fn(&Target<'_, K>) -> SetCookieLayer>,
        >,
    > {
        let pin = cookie.clone();
        self.wrap_with
            .push(Box::new(move |inner| Arc::new(pin.strategy(inner))));
        let stamp = cookie.clone();
        self.sticky_key(cookie)
            .endpoint_layer(move |t: &Target<'_, K>| stamp.layer(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{list_of, RoundRobin};
    use proptest::{prop_assert_eq, proptest};

    /// The reference vectors of the SipHash paper: key 00..0f, messages 00, 00 01, ….
    #[test]
    fn siphash_reference_vectors() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(k0, k1, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(k0, k1, &msg[..8]), 0x93f5_f579_9a93_2462);
        assert_eq!(siphash24(k0, k1, &msg[..15]), 0xa129_ca61_49be_45e5);
        // And std's own SipHash-2-4 agrees at every length.
        for len in 0..64 {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            std::hash::Hasher::write(&mut h, &msg[..len]);
            assert_eq!(
                siphash24(k0, k1, &msg[..len]),
                std::hash::Hasher::finish(&h)
            );
        }
    }

    fn req_with(cookie: Option<&str>, https: bool) -> Request<()> {
        let uri = if https { "https://gw/x" } else { "/x" };
        let mut b = Request::get(uri);
        if let Some(c) = cookie {
            b = b.header(http::header::COOKIE, c);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn stamps_cookie_unless_the_request_has_it() {
        use tower::ServiceExt;
        let cookie = SessionCookie::new().name("route").unwrap();
        let layer = cookie.layer_for_id(1);
        let svc = layer.layer(tower::service_fn(|_r: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let own = format!("route={}", layer.inner.value);

        let rsp = svc.clone().oneshot(req_with(None, false)).await.unwrap();
        let set = rsp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert_eq!(set, format!("{own}; Path=/; HttpOnly; SameSite=Lax"));
        assert!(!set.contains("127.0.0.1"));

        let rsp = svc.clone().oneshot(req_with(None, true)).await.unwrap();
        assert!(rsp.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure"));

        let rsp = svc
            .clone()
            .oneshot(req_with(Some(&own), false))
            .await
            .unwrap();
        assert!(rsp.headers().get(SET_COOKIE).is_none());

        let other = format!("route={}", cookie.layer_for_id(2).inner.value);
        let rsp = svc.oneshot(req_with(Some(&other), false)).await.unwrap();
        assert!(rsp.headers().get(SET_COOKIE).is_some());
    }

    #[test]
    fn always_secure_and_max_age() {
        let c = SessionCookie::new()
            .secure(true)
            .max_age(Duration::from_secs(3600))
            .path("/app")
            .unwrap();
        let l = c.layer_for_id(9);
        let v = l.inner.secure.as_ref().unwrap().to_str().unwrap();
        assert!(
            v.contains("; Path=/app; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"),
            "{v}"
        );
        assert!(SessionCookie::new().path("/a;b").is_err());
    }

    #[test]
    fn valid_cookie_pins_and_bad_ones_fall_back() {
        let cookie = SessionCookie::new();
        let pinned = cookie.strategy(RoundRobin::new());
        let all = list_of(&[1, 1, 1, 1]);
        pinned.rebuild(&all.view());
        let good = pinned.value_for_id(3);
        let key = cookie
            .extract(&req_with(Some(&format!("lb_route={good}")), false))
            .unwrap();
        for _ in 0..10 {
            assert_eq!(pinned.pick(&all.view(), Some(&key)), Some(3));
        }
        // Tampered (one digit changed), malformed, foreign secret: a normal pick.
        let mut bad = good.into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bad).unwrap();
        let foreign = SessionCookie::new()
            .strategy(RoundRobin::new())
            .value_for_id(3);
        for v in [tampered.as_str(), foreign.as_str()] {
            let key = cookie
                .extract(&req_with(Some(&format!("lb_route={v}")), false))
                .unwrap();
            let picks: Vec<_> = (0..4)
                .map(|_| pinned.pick(&all.view(), Some(&key)).unwrap())
                .collect();
            assert_ne!(picks, [3, 3, 3, 3], "{v}");
        }
        for v in [
            "",
            "xyz",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "+123456789abcdef",
        ] {
            assert_eq!(
                cookie.extract(&req_with(Some(&format!("lb_route={v}")), false)),
                None,
                "{v:?}"
            );
        }
        // The pinned endpoint ejected: a normal pick among the rest.
        let rest = crate::balance::strategy::CandidateList::new(all.view()[..3].to_vec());
        assert!(pinned.pick(&rest.view(), Some(&key)).unwrap() < 3);
    }

    proptest! {
        /// Any cookie header that is not exactly a valid value falls back to a normal pick
        /// and never panics.
        #[test]
        fn tampered_cookies_fall_back(value in "[ -~]{0,40}") {
            let cookie = SessionCookie::new().secret([1; 16]);
            let pinned = cookie.strategy(RoundRobin::new());
            let all = list_of(&[1, 1, 1]);
            pinned.rebuild(&all.view());
            let valid: Vec<String> = (0..3).map(|i| pinned.value_for_id(i)).collect();
            let header = format!("lb_route={value}");
            let Ok(hv) = HeaderValue::from_str(&header) else { return Ok(()) };
            let mut req = Request::new(());
            req.headers_mut().insert(http::header::COOKIE, hv);
            let key = cookie.extract(&req);
            let trimmed = value.trim().trim_matches('"').to_ascii_lowercase();
            if !valid.contains(&trimmed) {
                // Either no key, or a pin no endpoint owns: round robin takes over.
                let picks: Vec<_> = (0..3)
                    .map(|_| pinned.pick(&all.view(), key.as_ref()).unwrap())
                    .collect();
                let mut sorted = picks;
                sorted.sort_unstable();
                prop_assert_eq!(sorted, vec![0, 1, 2]);
            }
        }
    }
}
