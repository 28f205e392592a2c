//! What a TCP endpoint is asked for, and the balancer's policy for it.

use std::{io, net::SocketAddr};

use tokio::net::TcpStream;

use crate::{
    balance::{strategy::RequestKey, RequestPolicy},
    error::BoxError,
};

/// A request for one backend connection, on behalf of a client: the client's address
/// ([`peer`](Self::peer)) and the address it connected to ([`local`](Self::local)), for
/// the [PROXY protocol](super::ProxyProtocol) header and for hashing on the client IP.
/// Cheap to copy, so the balancer can send it again to another backend.
///
/// ```
/// use tower_lb::tcp::TcpRequest;
///
/// let req = TcpRequest::new("192.0.2.7:51000".parse().unwrap(), "10.0.0.1:6379".parse().unwrap());
/// assert_eq!(req.peer().unwrap().port(), 51000);
/// assert_eq!(TcpRequest::unknown().peer(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpRequest {
    addrs: Option<(SocketAddr, SocketAddr)>,
}

impl TcpRequest {
    /// A connection for the client at `peer`, which connected to `local`.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            addrs: Some((peer, local)),
        }
    }

    /// A connection for no particular client: no client IP to hash on, and a PROXY
    /// header saying `UNKNOWN` (v1) or `LOCAL` (v2).
    pub fn unknown() -> Self {
        Self { addrs: None }
    }

    /// The addresses of an accepted client connection (its `peer_addr` and
    /// `local_addr`).
    pub fn from_stream(stream: &TcpStream) -> io::Result<Self> {
        Ok(Self::new(stream.peer_addr()?, stream.local_addr()?))
    }

    /// The client's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.addrs.map(|(peer, _)| peer)
    }

    /// The address the client connected to.
    pub fn local(&self) -> Option<SocketAddr> {
        self.addrs.map(|(_, local)| local)
    }
}

/// The [`RequestPolicy`] for [`TcpRequest`]s: every failed connect is tried again on
/// another backend (up to the balancer's [`retries`](crate::Builder::retries)), and the
/// affinity key is the client's IP, for [`IpHash`](crate::balance::strategy::IpHash) and
/// the other hash strategies (strategies that take no key ignore it).
///
/// Replaying is always safe: a TCP endpoint's only work is to connect (and write the
/// PROXY header), so whatever it fails with (refused, unreachable, a host name that does
/// not resolve, a timeout, an endpoint layer's timeout) happened before any byte of the
/// client's went out. nginx's stream module retries the same way (`proxy_next_upstream`,
/// on by default).
///
/// ```
/// use tower_lb::{balance::RequestPolicy, tcp::{TcpPolicy, TcpRequest}};
///
/// let req = TcpRequest::new("192.0.2.7:51000".parse().unwrap(), "10.0.0.1:6379".parse().unwrap());
/// assert_eq!(TcpPolicy::new().replay(&req), Some(req));
/// assert!(TcpPolicy::new().key(&req).is_some());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpPolicy {
    _p: (),
}

impl TcpPolicy {
    /// Replays every failed connect; keys on the client IP.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RequestPolicy<TcpRequest> for TcpPolicy {
    fn key(&self, req: &TcpRequest) -> Option<RequestKey> {
        req.peer().map(|p| RequestKey::from_ip(p.ip()))
    }

    fn replay(&self, req: &TcpRequest) -> Option<TcpRequest> {
        Some(*req)
    }

    /// Always: nothing of the client's was sent.
    fn retry_on(&self, _replay: &TcpRequest, _error: &BoxError) -> bool {
        true
    }
}
