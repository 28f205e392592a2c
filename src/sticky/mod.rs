//! Session affinity: keys requests so hash strategies send the same client to the same
//! backend, and the balancer's own sticky cookie (feature `sticky`).
//!
//! # Keys
//!
//! [`StickyLayer`] sits in front of the balancer and puts each request's
//! [`RequestKey`](crate::balance::strategy::RequestKey) into its extensions, where
//! [`HttpPolicy`](crate::http::HttpPolicy) reads it for the strategy. The key comes from an
//! [`ExtractKey`]:
//!
//! | extractor | key | use with |
//! |---|---|---|
//! | [`HeaderKey`] | a header's value | any hash strategy |
//! | [`CookieKey`] | an application cookie's value | any hash strategy |
//! | [`QueryKey`] | a query parameter's raw value | any hash strategy |
//! | [`PathKey`] | the path, or one segment of it | any hash strategy |
//! | [`ClientIp`] | the client address: the peer, or what trusted proxies forwarded | [`IpHash`](crate::balance::strategy::IpHash), any hash strategy |
//! | [`SessionCookie`] | the balancer's own cookie, naming a backend | its [`Pinned`] strategy |
//! | a closure `Fn(&Request<B>) -> Option<RequestKey>` | anything | any hash strategy |
//!
//! A tuple of extractors tries each in turn: the first key found wins. A request without a key
//! goes to the hash strategy's fallback (round robin by default).
//!
//! # Client IP
//!
//! [`ClientIp`] trusts `X-Forwarded-For` (or `Forwarded`, or `X-Real-IP`) only when the
//! connection's peer is inside a configured [`Cidr`], and walks the header from the right
//! to the first untrusted address. There are no trusted proxies by default. The peer
//! address comes from the [`ClientAddr`] extension, or from axum's
//! `ConnectInfo<SocketAddr>` with the `axum` feature.
//!
//! # Sticky cookie
//!
//! [`SessionCookie`] makes the balancer itself sticky, with no key from the application:
//! the first response carries `Set-Cookie: lb_route=<16 hex digits>; Path=/; HttpOnly;
//! SameSite=Lax` (plus `Secure` on https), the value a keyed hash of the backend key that
//! reveals nothing about it. Requests bringing it back go to the same backend while it is
//! available; a missing, tampered, unknown or ejected value gets a normal pick and a new
//! cookie. Three pieces share one `SessionCookie`: the extractor, the strategy wrapper
//! ([`SessionCookie::strategy`]) and the endpoint maker wrapper
//! ([`SessionCookie::endpoints`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{header, Request, Response};
//! use std::convert::Infallible;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_lb::{
//!     balance::{strategy::RoundRobin, Target},
//!     http::HttpPolicy,
//!     sticky::{SessionCookie, StickyLayer},
//!     Backend, Balance,
//! };
//!
//! let cookie = SessionCookie::new();
//! let balance = Balance::builder()
//!     .strategy(cookie.strategy(RoundRobin::new()))
//!     .backends(["a", "b", "c"].map(Backend::new))
//!     .policy(HttpPolicy::new())
//!     .build(cookie.endpoints(|t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         service_fn(move |_req: Request<()>| async move {
//!             Ok::<_, Infallible>(Response::new(name))
//!         })
//!     }))
//!     .unwrap();
//! let gateway = StickyLayer::new(cookie).layer(balance);
//!
//! // The first request gets a cookie naming its backend…
//! let rsp = gateway.clone().oneshot(Request::new(())).await.unwrap();
//! let first = *rsp.body();
//! let set_cookie = rsp.headers()[header::SET_COOKIE].to_str().unwrap();
//! assert!(set_cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"));
//! let pair = set_cookie.split(';').next().unwrap().to_owned();
//!
//! // …and every request bringing it back goes there, with no new cookie.
//! for _ in 0..10 {
//!     let req = Request::get("/").header(header::COOKIE, &pair).body(()).unwrap();
//!     let rsp = gateway.clone().oneshot(req).await.unwrap();
//!     assert_eq!(*rsp.body(), first);
//!     assert!(rsp.headers().get(header::SET_COOKIE).is_none());
//! }
//! # }
//! ```
//!
//! # Hash keys
//!
//! With a key from the request instead, any hash strategy will do:
//!
//! ```
//! use tower::Layer;
//! use tower_lb::{
//!     balance::strategy::RingHash,
//!     sticky::{HeaderKey, QueryKey, StickyLayer},
//! };
//!
//! // The user id header, else the `user` query parameter.
//! let layer = StickyLayer::new((HeaderKey::from_static("x-user-id"), QueryKey::new("user")));
//! let strategy = RingHash::new();
//! # let _ = (layer, strategy);
//! ```

mod cidr;
mod client_ip;
mod cookie;
mod header;
mod layer;
mod path;
mod query;
mod session;

pub use crate::{balance::ExtractKey, ClientAddr};
pub use cidr::{Cidr, CidrParseError};
pub use client_ip::{ClientIp, ForwardedHeader};
pub use cookie::CookieKey;
pub use header::HeaderKey;
pub use layer::{Sticky, StickyLayer};
pub use path::PathKey;
pub use query::QueryKey;
pub use session::{
    MakeSetCookie, Pinned, ResponseFuture, SessionCookie, SetCookie, SetCookieLayer,
};
