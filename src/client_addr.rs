//! The client's address as a request extension.

use std::net::SocketAddr;

/// The peer address of a request's connection, as a request extension: the client IP of
/// `sticky::ClientIp` (feature `sticky`) and of the proxy header rules'
/// `X-Forwarded-For` (feature `http`).
///
/// `server::Server` (feature `server`) puts it on every request; with another server,
/// put it there when a connection is accepted (with hyper, in the service made per
/// connection). axum's `ConnectInfo<SocketAddr>`, from
/// `into_make_service_with_connect_info::<SocketAddr>()`, is read as well by `ClientIp`
/// with the `axum` feature.
///
/// ```
/// use tower_lb::ClientAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr("192.0.2.7:51000".parse().unwrap()));
/// assert_eq!(req.extensions().get::<ClientAddr>().map(|a| a.0.port()), Some(51000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);
