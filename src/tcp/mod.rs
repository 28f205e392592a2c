//! Layer-4 balancing of TCP connections (feature `tcp`): databases, caches, message
//! brokers, anything that is not HTTP.
//!
//! The same [`Balance`](crate::Balance) as for HTTP, over connectors instead of clients:
//!
//! - [`TcpEndpoints`] is the endpoint maker. Each backend (`host:port`) gets a
//!   [`TcpEndpoint`], a `Service<`[`TcpRequest`]`>` that connects to the backend within a
//!   connect timeout (default 5 s), resolving host names at every connect, optionally
//!   writes a [PROXY protocol](ProxyProtocol) header, and answers with a
//!   [`TcpConnection`]. The connection counts as one unit of the backend's load until it
//!   is dropped, so [`LeastConn`](crate::balance::strategy::LeastConn) balances open
//!   connections (nginx stream `least_conn`, HAProxy `balance leastconn`).
//! - Every failure of a TCP endpoint is a [`ConnectFailed`](crate::error::ConnectFailed):
//!   refused, unreachable, unresolvable, timed out. Nothing of the client's has been sent,
//!   so [`TcpPolicy`] lets the balancer try another backend (up to
//!   [`retries`](crate::Builder::retries)), and the failure is counted in the backend's
//!   stats. With the `health-passive` feature,
//!   [`TcpEndpoints::passive_health`] also ejects backends whose connects fail (nginx
//!   `max_fails`); the active [`TcpProbe`](crate::health::active::TcpProbe) (feature
//!   `health-active`) marks dead ones down without traffic.
//! - [`splice`] copies bytes both ways with half-close (a client that shuts its write
//!   half still gets the whole answer), [`splice_with_idle_timeout`] also closes idle
//!   pairs.
//! - [`serve`] (or [`Proxy`], for its settings) is the accept loop: for each client it
//!   asks the balancer for a backend connection and splices; a client no backend could
//!   be connected for is closed.
//!
//! The request is a [`TcpRequest`]: the client's address and the address it connected
//! to, for the PROXY header and for hashing on the client IP
//! ([`IpHash`](crate::balance::strategy::IpHash) with [`TcpPolicy`]).
//!
//! | setting | default | nginx stream | HAProxy |
//! |---|---|---|---|
//! | [`TcpEndpoints::connect_timeout`] | 5 s | `proxy_connect_timeout` | `timeout connect` |
//! | [`TcpEndpoints::proxy_protocol`] | off | `proxy_protocol on` (v1) | `send-proxy`, `send-proxy-v2` |
//! | [`Builder::retries`](crate::Builder::retries) with [`TcpPolicy`] | 2 | `proxy_next_upstream_tries` | `retries`, `option redispatch` |
//! | [`Proxy::idle_timeout`] | 10 min | `proxy_timeout` | `timeout tunnel` |
//! | [`Proxy::drain_timeout`] | 30 s | `worker_shutdown_timeout` | `hard-stop-after` |
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::BoxError> {
//! use std::time::Duration;
//! use tokio::{
//!     io::{AsyncReadExt, AsyncWriteExt},
//!     net::{TcpListener, TcpStream},
//! };
//! use tower_lb::{
//!     balance::strategy::LeastConn,
//!     tcp::{self, TcpEndpoints, TcpPolicy},
//!     Backend, Balance,
//! };
//!
//! // A backend that reads until the client's end of file, then answers what it read.
//! let backend = TcpListener::bind("127.0.0.1:0").await?;
//! let backend_addr = backend.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut conn, _)) = backend.accept().await {
//!         tokio::spawn(async move {
//!             let mut got = Vec::new();
//!             let _ = conn.read_to_end(&mut got).await;
//!             let _ = conn.write_all(&got).await;
//!         });
//!     }
//! });
//! // A port that refuses connections: connects to it are retried on the other backend.
//! let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
//!
//! let balance = Balance::builder()
//!     .strategy(LeastConn::new())
//!     .policy(TcpPolicy::new())
//!     .retries(2)
//!     .backends([backend_addr, dead].map(Backend::new))
//!     .build(TcpEndpoints::new().connect_timeout(Duration::from_secs(2)))?;
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let front = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let proxy = tokio::spawn(tcp::serve(listener, balance.clone(), stopped));
//!
//! for _ in 0..3 {
//!     let mut client = TcpStream::connect(front).await?;
//!     client.write_all(b"hello").await?;
//!     client.shutdown().await?; // half-close: the answer still comes back
//!     let mut answer = Vec::new();
//!     client.read_to_end(&mut answer).await?;
//!     assert_eq!(answer, b"hello");
//! }
//! let stats = balance.stats();
//! let dead_stats = stats.backends.iter().find(|b| b.key == dead).unwrap();
//! assert!(dead_stats.failures >= 1); // tried, refused, retried elsewhere
//!
//! let _ = stop.send(());
//! proxy.await??;
//! # Ok(())
//! # }
//! ```

mod connect;
mod proxy_protocol;
mod request;
mod serve;
mod splice;

pub use connect::{ConnectFuture, TcpConnection, TcpEndpoint, TcpEndpoints};
pub use proxy_protocol::ProxyProtocol;
pub use request::{TcpPolicy, TcpRequest};
pub use serve::{serve, Proxy};
pub use splice::{splice, splice_with_idle_timeout};

#[cfg(test)]
mod tests;
