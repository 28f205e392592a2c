//! Production-grade load balancing for the Tower ecosystem.
//!
//! `tower-lb` is a [`Balance`] service you put in front of a set of endpoints: a client
//! stack (hyper-util, tonic), an axum route, a gateway. It is `Clone + Send + Sync`, needs
//! no `Buffer`, answers "no endpoint" with a typed error instead of hanging, and picks with
//! the strategies of nginx, Envoy and Finagle.
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{service_fn, Service};
//! use tower_lb::{balance::{strategy::P2c, Target}, Backend, Balance};
//! use std::convert::Infallible;
//!
//! // Endpoints are made from backends by a maker: here, in-memory services.
//! let balance = Balance::builder()
//!     .strategy(P2c::new())
//!     .backends(["10.0.0.1:80", "10.0.0.2:80"].map(Backend::new))
//!     .build(|t: &Target<'_, &'static str>| {
//!         let addr = *t.key();
//!         service_fn(move |req: String| async move { Ok::<_, Infallible>(format!("{addr} got {req}")) })
//!     })
//!     .unwrap();
//!
//! let answer = balance.clone().call("hi".to_string()).await.unwrap();
//! assert!(answer.ends_with("got hi"));
//!
//! // Change the set at runtime.
//! balance.handle().insert(Backend::new("10.0.0.3:80").with_weight(2)).unwrap();
//! assert_eq!(balance.stats().backends.len(), 3);
//! # }
//! ```
//!
//! For HTTP, [`http::HttpEndpoints`] makes endpoints over one shared hyper-util client.
//!
//! # Modules
//!
//! | module | what |
//! |---|---|
//! | [`balance`] | the [`Balance`] service, its builder, stats and readiness contract, hedged requests (`balance::Hedge`) |
//! | [`balance::strategy`] | round robin, smooth weighted round robin, least connections, random, P2C (pending, peak EWMA), IP hash, ring hash, Maglev, bounded-load and rendezvous hashing, weighted round robin from backends' load reports (gRPC A58), and the trait to write your own |
//! | [`discover`] | static lists, a live [`discover::Handle`], any `tower::discover::Discover`, and DNS, Kubernetes and file sources (features `dns`, `kube`, `file`); subsetting (`discover::subset`: each client uses k of n backends) |
//! | [`http`] | (feature `http`, default) endpoint maker over hyper-util, request policy, error → response mapping, ORCA load reports (`http::load_report`); `http::tls` (feature `tls`) for HTTPS backends |
//! | [`health`] | (features `health-passive`, `health-active`, default; `health-service`, `grpc`) passive ejection layer, active prober, settings beside nginx, Envoy and HAProxy; the backend's own health endpoint |
//! | [`metrics`] | (feature `metrics`) Prometheus metrics of balancers through `prometheus-client`: counters, health and latency per backend, read at each scrape |
//! | [`server`] | (feature `server`) a hardened HTTP server loop: client header and keep-alive timeouts, connection cap, graceful drain |
//! | [`sticky`] | (feature `sticky`) key extraction layer (header, cookie, query, path, trusted client IP), sticky cookie |
//! | [`tcp`] | (feature `tcp`) layer 4: connector endpoints counted as load while open, connect retries, PROXY protocol v1/v2, splice with half-close, an accept loop |
//! | [`test_util`] | (feature `test-util`) build balancers over in-memory or `tower-test` mocks and read distributions; `test_util::sim`, a deterministic fleet simulator on the paused clock |
//! | [`error`] | the typed errors behind `BoxError` |
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `http` | yes | [`http`]: hyper-util endpoint maker and HTTP helpers |
//! | `health-passive` | yes | `health::passive`: per-endpoint ejection layer (tower-http `classify`) |
//! | `health-active` | yes | `health::active`: spawned prober with HTTP and TCP probes (implies `http`) |
//! | `health` | yes | both of the above |
//! | `health-service` | no | `health::service`: the backend's `/health`, `/livez`, `/readyz` from named async checks (cached, single flight, draining); with `grpc`, `grpc.health.v1` too |
//! | `grpc` | no | the gRPC `grpc.health.v1` probe (tonic-health; needs Rust 1.88) |
//! | `sticky` | yes | [`sticky`]: session affinity keys and the sticky cookie |
//! | `metrics` | no | [`metrics`]: Prometheus metrics (prometheus-client) |
//! | `server` | no | [`server`]: the HTTP server loop with nginx's client limits |
//! | `server-tls` | no | `server::tls`: TLS termination for [`server::Server`] (SNI, ALPN, handshake timeout, reload; rustls on `ring`; implies `server`) |
//! | `axum` | no | [`sticky::ClientIp`] reads axum's `ConnectInfo<SocketAddr>` |
//! | `test-util` | no | [`test_util`] |
//! | `dns` | no | `discover::dns`: DNS discovery (A/AAAA, SRV) through hickory-resolver |
//! | `kube` | no | `discover::kube`: Kubernetes EndpointSlice discovery through kube-runtime |
//! | `file` | no | `discover::file`: discovery from a watched TOML or JSON file |
//! | `tcp` | no | [`tcp`]: layer-4 balancing of TCP connections (connectors, PROXY protocol, splice, accept loop) |
//! | `tls` | no | `http::tls`: HTTPS to backends through rustls on `ring` (implies `http`) |
//! | `full` | no | everything |

#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

#[cfg(any(feature = "server", feature = "tcp"))]
mod accept;

pub mod backend;
pub mod balance;
mod client_addr;
pub mod discover;
pub mod error;
mod guard;
#[cfg(any(
    feature = "health-passive",
    feature = "health-active",
    feature = "health-service"
))]
pub mod health;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "sticky")]
pub mod sticky;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod util;

/// The README's examples, compiled and run as doc-tests (they use the `grpc`,
/// `health-service`, `server`, `test-util` and `tls` features: `cargo test --workspace
/// --all-features`).
#[cfg(all(
    doctest,
    feature = "grpc",
    feature = "health-service",
    feature = "test-util",
    feature = "server",
    feature = "tls"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use backend::Backend;
pub use balance::{Balance, Builder};
pub use client_addr::ClientAddr;
pub use error::BoxError;
pub use guard::Guard;
