//! Error types.
//!
//! At the service boundary every error is a [`BoxError`]; the failures the balancer itself
//! produces are the small public types below, which callers can
//! [`downcast_ref`](std::error::Error) to decide what to answer (see
//! [`http::ErrorResponseLayer`](crate::http::ErrorResponseLayer) for a ready-made mapping to
//! `502`/`503`/`504`).
//!
//! ```
//! use tower_lb::error::{BoxError, NoEndpoints};
//!
//! fn status(err: &BoxError) -> u16 {
//!     if err.is::<NoEndpoints>() { 503 } else { 502 }
//! }
//! # let _ = status;
//! ```

use std::{error::Error, fmt, sync::Arc};

/// A type-erased error, as used at every tower service boundary.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The endpoint set was empty for the whole fail-fast wait.
///
/// Returned instead of pending forever (which is what `tower::balance` does with zero
/// endpoints).
#[derive(Debug, Clone)]
pub struct NoEndpoints {
    _p: (),
}

impl NoEndpoints {
    pub(crate) fn new() -> Self {
        Self { _p: () }
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no endpoints: the backend set is empty")
    }
}

impl Error for NoEndpoints {}

/// Endpoints exist, but none could take the request: every one is ejected, down, draining,
/// at its concurrency cap, or already failed this request.
#[derive(Debug, Clone)]
pub struct AllUnavailable {
    total: usize,
}

impl AllUnavailable {
    pub(crate) fn new(total: usize) -> Self {
        Self { total }
    }

    /// How many endpoints the set held when the request gave up.
    pub fn total(&self) -> usize {
        self.total
    }
}

impl fmt::Display for AllUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} endpoints are unavailable", self.total)
    }
}

impl Error for AllUnavailable {}

/// The discovery source failed and the balancer has no endpoint to fall back on.
///
/// When a source fails while a set is known, the last good set is kept and requests are
/// not affected; this error is only seen when there is nothing to use.
#[derive(Debug, Clone)]
pub struct DiscoverError {
    source: Arc<dyn Error + Send + Sync + 'static>,
}

impl DiscoverError {
    pub(crate) fn new(source: BoxError) -> Self {
        Self {
            source: Arc::from(source),
        }
    }
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery failed and no endpoint is known: {}",
            self.source
        )
    }
}

impl Error for DiscoverError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// A request failed on a backend; [`source`](Error::source) is the endpoint service's error.
///
/// It names the backend so logs and error pages can say where it failed.
#[derive(Debug)]
pub struct EndpointError {
    backend: String,
    source: BoxError,
}

impl EndpointError {
    pub(crate) fn new(backend: String, source: BoxError) -> Self {
        Self { backend, source }
    }

    /// The failing backend's key, as text.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The endpoint service's own error.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Takes the endpoint service's own error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {} failed", self.backend)
    }
}

impl Error for EndpointError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Bad configuration, reported by a builder or a discovery handle instead of a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A backend's weight was zero.
    ZeroWeight {
        /// The backend key, as text.
        backend: String,
    },
    /// A duration or ratio was out of its range.
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The endpoint maker could not build a service for a backend.
    Make {
        /// The backend key, as text.
        backend: String,
        /// The maker's error, as text.
        reason: String,
    },
    /// The balancer takes its services from a `Discover` source and cannot build endpoints
    /// from backend descriptions.
    NoMaker,
    /// The named backend is not in the set.
    UnknownBackend {
        /// The backend key, as text.
        backend: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroWeight { backend } => {
                write!(f, "backend {backend}: weight must be at least 1")
            }
            Self::Invalid { setting, reason } => write!(f, "invalid {setting}: {reason}"),
            Self::Make { backend, reason } => {
                write!(f, "backend {backend}: cannot build endpoint: {reason}")
            }
            Self::NoMaker => f.write_str(
                "this balancer takes services from a discover source; it cannot build endpoints",
            ),
            Self::UnknownBackend { backend } => write!(f, "backend {backend} is not in the set"),
        }
    }
}

impl Error for ConfigError {}

/// Marks an error as happening before any byte of the request left: wrap a connector's
/// error in it so the balancer knows the request can be sent to another backend.
///
/// ```
/// use tower_lb::error::{is_connect_error, ConnectFailed};
///
/// let err = ConnectFailed::new("dial 10.0.0.7:5432: no route");
/// assert!(is_connect_error(&err));
/// ```
#[derive(Debug)]
pub struct ConnectFailed {
    source: BoxError,
}

impl ConnectFailed {
    /// Wraps a connect-phase error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connect failed: {}", self.source)
    }
}

impl Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// The first error of type `T` in `err`'s `source()` chain, `err` included.
///
/// ```
/// use tower_lb::error::{find, NoEndpoints};
/// use tower_lb::BoxError;
///
/// let err: BoxError = "boom".into();
/// assert!(find::<NoEndpoints>(&*err).is_none());
/// ```
pub fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// `err` and every error in its `source()` chain, joined by `": "` (for logs and stats).
pub(crate) fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        // Wrappers often repeat their source's text; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = cause.source();
    }
    out
}

/// True if `err`, or any error in its `source()` chain, says the request never reached the
/// backend: the connection was refused or could not be established.
///
/// Such a request is always safe to send elsewhere, whatever its method.
pub fn is_connect_error(err: &(dyn Error + 'static)) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | AddrNotAvailable
                    | NotConnected
                    | HostUnreachable
                    | NetworkUnreachable
            ) {
                return true;
            }
        }
        #[cfg(feature = "http")]
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        if e.is::<ConnectFailed>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A PEM parse error in words (`rustls-pki-types` prints the markers it missed as lists
/// of bytes).
#[cfg(any(feature = "tls", feature = "server-tls"))]
pub(crate) fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as Pem;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    match e {
        Pem::MissingSectionEnd { end_marker } => {
            format!("a section has no end line ({:?})", text(end_marker))
        }
        Pem::IllegalSectionStart { line } => {
            format!("a section starts with a bad line ({:?})", text(line))
        }
        other => other.to_string(),
    }
}
