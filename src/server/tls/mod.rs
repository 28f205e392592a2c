//! TLS termination for [`Server`](super::Server) (feature `server-tls`): certificates from
//! PEM files chosen by SNI, ALPN, a handshake timeout, and reload without a restart.
//!
//! Give a [`TlsConfig`] to [`Server::tls`](super::Server::tls): every accepted connection
//! then shakes hands in its own task and is served over the decrypted stream with the
//! same limits as a plain one.
//!
//! # Semantics
//!
//! | what | behaviour | default | nginx |
//! |---|---|---|---|
//! | certificates | a PEM chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), from files ([`from_pem_files`](TlsConfig::from_pem_files)) or bytes ([`from_pem`](TlsConfig::from_pem)); the key is checked against the certificate | — | `ssl_certificate`, `ssl_certificate_key` |
//! | SNI | [`add_sni`](TlsConfig::add_sni) serves a name (or `*.example.com`, one label deep) its own certificate; clients that send no name, or one with no certificate of its own, get the default one | — | `server_name` in `server` blocks, `default_server` |
//! | ALPN | `h2` and `http/1.1` offered; the client's pick is the protocol it must speak (a client that chose `h2` and sends HTTP/1, or the reverse, is closed); a client that offers ALPN without either is refused with the `no_application_protocol` alert; without ALPN the first bytes tell, as on a plain connection | — | `http2 on` |
//! | versions | TLS 1.3 and 1.2 only: rustls implements nothing older (no SSLv3, TLS 1.0 or 1.1), and rustls's safe default cipher suites | — | `ssl_protocols TLSv1.2 TLSv1.3` |
//! | renegotiation | never: rustls does not implement TLS 1.2 renegotiation (a client's request for it is refused) | — | client-initiated renegotiation refused |
//! | [`handshake_timeout`](TlsConfig::handshake_timeout) | a client that has not finished its handshake this long after connecting is closed; until then it holds its socket, a small task and a slot of the connection cap, and delays no one else | 10 s | `ssl_handshake_timeout` (60 s) |
//! | reload | [`reload`](TlsConfig::reload) re-reads every file: all of them good, the new certificates serve new handshakes at once; any of them bad, the old ones stay, and the error is returned and logged. Open connections keep the certificate they began with; [`read_files`](TlsConfig::read_files) reads and checks them without using them yet, for a reload that goes with other changes | — | `nginx -s reload` |
//!
//! The handshake runs in the connection's task, never in the accept loop, so a slow
//! client delays nobody else. It counts against
//! [`max_connections`](super::Server::max_connections) from the accept; the
//! [header timeout](super::Server::header_timeout) starts when it ends. On shutdown,
//! connections still in their handshake are closed at once.
//!
//! Each request served over TLS carries a [`TlsInfo`] extension (the SNI name, the ALPN
//! protocol) beside its [`ClientAddr`](crate::ClientAddr).
//! [`ProxyLayer`](crate::http::proxy::ProxyLayer) reads it and sends
//! `X-Forwarded-Proto: https` for such requests whatever protocol it was configured with.
//!
//! Not checked: that a certificate is within its validity period or carries the name it is
//! served for (clients check both; a reload of an expired certificate succeeds).
//! Client certificates (mTLS towards clients) and OCSP stapling are not offered; for them,
//! build your own `rustls::ServerConfig` and run the handshake before
//! [`Server::serve_connection`](super::Server::serve_connection).
//!
//! # Reloading
//!
//! Clones of a [`TlsConfig`] share its certificates: keep one clone to reload through,
//! and give another to the server. On `SIGHUP` (as nginx reloads):
//!
//! ```no_run
//! # #[cfg(unix)]
//! # async fn run(config: tower_lb::server::tls::TlsConfig) -> std::io::Result<()> {
//! use tokio::signal::unix::{signal, SignalKind};
//!
//! let mut hup = signal(SignalKind::hangup())?;
//! tokio::spawn(async move {
//!     while hup.recv().await.is_some() {
//!         // On error the certificates in use stay; the error is also logged.
//!         if let Err(e) = config.reload() {
//!             eprintln!("keeping the old certificate: {e}");
//!         }
//!     }
//! });
//! # Ok(())
//! # }
//! ```
//!
//! Or let [`watch`](TlsConfig::watch) poll the files' modification times and reload when
//! one changes (certbot and Kubernetes secret volumes replace files in place, or swap a
//! symbolic link; both change what the path's metadata reads). A certificate written
//! before its key fails to load until the key is written too, and the certificate in use
//! stays meanwhile.
//!
//! # Example
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{routing::get, Router};
//! use tower_lb::server::{tls::TlsConfig, Server};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsConfig::from_pem_files("/etc/tls/example.pem", "/etc/tls/example.key")?
//!     .add_sni("api.example.com", "/etc/tls/api.pem", "/etc/tls/api.key")?
//!     .handshake_timeout(Duration::from_secs(5));
//! // Re-read the files whenever they change, checked every 10 s.
//! let _watch = tls.watch(Duration::from_secs(10))?;
//!
//! let app = Router::new().route("/", get(|| async { "hi over TLS" }));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! Server::new()
//!     .tls(tls)
//!     .serve(listener, move |_peer: SocketAddr| app.clone(), tokio::signal::ctrl_c())
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod accept;
mod certs;

use std::{
    fmt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{crypto::CryptoProvider, ServerConfig};

use crate::{error::ConfigError, Guard};

pub(super) use accept::Accept;
pub use certs::{CertificateError, CertificateErrorKind};
use certs::{Certs, Resolver, Source};

/// The ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// nginx's `ssl_handshake_timeout` is 60 s; a handshake takes a few round trips, so 10 s
/// leaves room for slow links while stalled clients go early.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificates a [`Server`](super::Server) terminates TLS with, chosen by SNI, and
/// the handshake timeout. Cheap to clone; clones share the certificates, so a
/// [`reload`](Self::reload) or [`add_sni`](Self::add_sni) through one is seen by all. See
/// the [module docs](self) for the semantics and an example.
#[derive(Clone)]
pub struct TlsConfig {
    shared: Arc<Shared>,
    handshake_timeout: Duration,
}

struct Shared {
    /// Where each certificate comes from: the default first, then by SNI name. Held while
    /// certificates are loaded and published, so reloads and additions take turns;
    /// handshakes never take it.
    sources: Mutex<Vec<(Option<String>, Source)>>,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Option<String>, Source)>> {
        // A panic while holding it cannot leave the list half-edited: every edit is one
        // push or one assignment.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every certificate of a [`TlsConfig`], read from its files and checked, not yet in use;
/// from [`TlsConfig::read_files`].
pub struct ReadCertificates {
    shared: Arc<Shared>,
    certs: Certs,
    count: usize,
}

impl fmt::Debug for ReadCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadCertificates")
            .field("certificates", &self.count)
            .finish_non_exhaustive()
    }
}

impl ReadCertificates {
    /// Serves these certificates to new handshakes from now on (connections already open
    /// keep theirs). A name added with [`TlsConfig::add_sni`] since they were read keeps
    /// the certificate it was added with.
    pub fn apply(mut self) {
        let sources = self.shared.lock();
        let current = self.shared.resolver.certs.load();
        for name in sources.iter().filter_map(|(n, _)| n.as_ref()) {
            if !self.certs.names.contains_key(name)
                && let Some(c) = current.names.get(name)
            {
                self.certs.names.insert(name.clone(), c.clone());
            }
        }
        self.shared.resolver.certs.store(Arc::new(self.certs));
        tracing::info!(
            certificates = sources.len(),
            "tower_lb: tls certificates reloaded"
        );
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.shared.resolver.certs.load();
        let mut names: Vec<&str> = certs.names.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("TlsConfig")
            .field("sni_names", &names)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Serves the certificate chain in the PEM file `cert_chain` (leaf first, then its
    /// intermediates) with the private key in the PEM file `key`, re-read by every
    /// [`reload`](Self::reload). Fails if a file cannot be read or parsed, or the key does
    /// not match the certificate.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertificateError> {
        let source = Source::Files {
            cert: cert_chain.as_ref().to_path_buf(),
            key: key.as_ref().to_path_buf(),
        };
        Self::with_default(source)
    }

    /// Serves the certificate chain and private key given as PEM bytes (kept as they are
    /// by reloads).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, CertificateError> {
        let provider = provider();
        let certified = certs::certified_key(cert_chain, None, key, None, &provider)?;
        Self::with_default(Source::Fixed(Arc::new(certified)))
    }

    fn with_default(source: Source) -> Result<Self, CertificateError> {
        let provider = provider();
        let default = source.load(&provider)?;
        let resolver = Arc::new(Resolver {
            certs: ArcSwap::from_pointee(Certs {
                default,
                names: Default::default(),
            }),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            // Cannot fail: ring offers cipher suites and key exchanges for both versions.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                sources: Mutex::new(vec![(None, source)]),
                resolver,
                config: Arc::new(config),
                provider,
            }),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Serves clients that ask for `name` through SNI the chain and key in these PEM files
    /// (re-read by every [`reload`](Self::reload)). `name` is a DNS name, matched without
    /// regard to case, or a wildcard `*.example.com` for names one label below
    /// `example.com` that have no certificate of their own. Adding a name again replaces
    /// its certificate.
    pub fn add_sni(
        self,
        name: &str,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertificateError> {
        let source = Source::Files {
            cert: cert_chain.as_ref().to_path_buf(),
            key: key.as_ref().to_path_buf(),
        };
        self.add(name, source)
    }

    /// [`add_sni`](Self::add_sni) with the chain and key given as PEM bytes.
    pub fn add_sni_pem(
        self,
        name: &str,
        cert_chain: &[u8],
        key: &[u8],
    ) -> Result<Self, CertificateError> {
        let certified = certs::certified_key(cert_chain, None, key, None, &self.shared.provider)
            .map_err(|e| e.for_name(Some(name)))?;
        self.add(name, Source::Fixed(Arc::new(certified)))
    }

    fn add(self, name: &str, source: Source) -> Result<Self, CertificateError> {
        let normalized =
            certs::normalize_name(name).ok_or_else(|| CertificateError::invalid_name(name))?;
        let certified = source
            .load(&self.shared.provider)
            .map_err(|e| e.for_name(Some(name)))?;
        let mut sources = self.lock();
        match sources
            .iter_mut()
            .find(|(n, _)| n.as_deref() == Some(&normalized))
        {
            Some(entry) => entry.1 = source,
            None => sources.push((Some(normalized.clone()), source)),
        }
        let mut certs = Certs::clone(&self.shared.resolver.certs.load());
        certs.names.insert(normalized, certified);
        self.shared.resolver.certs.store(Arc::new(certs));
        drop(sources);
        Ok(self)
    }

    /// How long a client may take from connecting to the end of its handshake (default
    /// 10 s); then it is closed.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Re-reads every certificate and key file. If all of them load and each key matches
    /// its certificate, new handshakes get the new certificates from now on (connections
    /// already open keep theirs). Otherwise nothing changes: the certificates in use stay,
    /// and the first failure is returned (and logged at `warn`). Certificates given as
    /// bytes are kept as they are.
    ///
    /// It reads files with blocking calls (a few small files); call it from a signal
    /// handler task as the [module docs](self#reloading) show, or from
    /// `spawn_blocking`.
    pub fn reload(&self) -> Result<(), CertificateError> {
        self.read_files()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "tower_lb: tls reload failed; the certificates in use stay");
            })?
            .apply();
        Ok(())
    }

    /// Reads and checks every certificate and key file as [`reload`](Self::reload) does,
    /// without using them yet: [`ReadCertificates::apply`] does. For a reload that must
    /// succeed or fail with something else (a whole configuration checked first, as the
    /// gateway does on `SIGHUP`), with each file read once. Logs nothing.
    ///
    /// ```
    /// # fn run(config: tower_lb::server::tls::TlsConfig) {
    /// // Read now; serve the new certificates only once the rest is ready too.
    /// match config.read_files() {
    ///     Ok(read) => read.apply(),
    ///     Err(e) => eprintln!("keeping the old certificate: {e}"),
    /// }
    /// # }
    /// ```
    pub fn read_files(&self) -> Result<ReadCertificates, CertificateError> {
        let sources = self.lock();
        let mut certs = Certs {
            default: self.shared.resolver.certs.load().default.clone(),
            names: Default::default(),
        };
        for (name, source) in sources.iter() {
            let certified = source
                .load(&self.shared.provider)
                .map_err(|e| e.for_name(name.as_deref()))?;
            match name {
                None => certs.default = certified,
                Some(name) => {
                    certs.names.insert(name.clone(), certified);
                }
            }
        }
        Ok(ReadCertificates {
            shared: self.shared.clone(),
            certs,
            count: sources.len(),
        })
    }

    /// Checks the certificate and key files' modification times (and sizes) every
    /// `every` (at least 10 ms), and [`reload`](Self::reload)s when any of them changed.
    /// A failed reload keeps the certificates in use, logs why, and is tried again at the
    /// next change. Dropping the guard stops the watch. Fails outside a Tokio runtime.
    pub fn watch(&self, every: Duration) -> Result<Guard, ConfigError> {
        let config = self.clone();
        let every = every.max(Duration::from_millis(10));
        // Taken now, so a change made right after this call is not missed.
        let mut seen = config.stamps();
        Guard::spawn("tls certificate watch", async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let config = config.clone();
                let before = seen.clone();
                // Metadata and file reads block; keep them off the runtime's workers.
                let checked = tokio::task::spawn_blocking(move || {
                    let now = config.stamps();
                    if now != before {
                        let _ = config.reload();
                    }
                    now
                });
                if let Ok(now) = checked.await {
                    seen = now;
                }
            }
        })
    }

    /// What `watch` compares: each file's modification time and size, `None` if it
    /// cannot be read.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let sources = self.lock();
        sources
            .iter()
            .flat_map(|(_, source)| source.files())
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }

    /// The rustls config the server shakes hands with: these certificates (reloads
    /// included), ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 on ring. For a handshake of
    /// your own before [`Server::serve_connection`](super::Server::serve_connection).
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        self.shared.config.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Option<String>, Source)>> {
        self.shared.lock()
    }

    pub(super) fn accept(
        &self,
        builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
        limits: Arc<super::conn::Limits>,
    ) -> Accept {
        Accept {
            acceptor: tokio_rustls::TlsAcceptor::from(self.shared.config.clone()),
            timeout: self.handshake_timeout,
            builder,
            limits,
        }
    }
}

/// ring, chosen explicitly (the process-wide default provider is not consulted), as
/// `http::tls` does for backends.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl TlsInfo ===

/// How a request's connection was secured, as a request extension: put on every request
/// [`Server`](super::Server) serves over TLS. Its presence is what tells a request came
/// over TLS; [`ProxyLayer`](crate::http::proxy::ProxyLayer) then sends
/// `X-Forwarded-Proto: https`.
///
/// ```
/// use tower_lb::server::tls::TlsInfo;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(TlsInfo::new(Some("api.example.com"), Some(b"h2")));
/// let tls = req.extensions().get::<TlsInfo>().unwrap();
/// assert_eq!((tls.sni(), tls.alpn()), (Some("api.example.com"), Some(&b"h2"[..])));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo(Arc<Info>);

#[derive(Debug, PartialEq, Eq)]
struct Info {
    sni: Option<Box<str>>,
    alpn: Option<Box<[u8]>>,
}

impl TlsInfo {
    /// The SNI name the client sent and the ALPN protocol agreed, for a TLS connection
    /// accepted elsewhere (one allocation, shared by every request of the connection).
    pub fn new(sni: Option<&str>, alpn: Option<&[u8]>) -> Self {
        Self(Arc::new(Info {
            sni: sni.map(Into::into),
            alpn: alpn.map(Into::into),
        }))
    }

    /// The server name the client asked for (SNI), lower case; `None` if it sent none
    /// (as clients do when they connect to an IP address).
    pub fn sni(&self) -> Option<&str> {
        self.0.sni.as_deref()
    }

    /// The protocol agreed through ALPN (`h2` or `http/1.1`); `None` if the client
    /// offered none.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.alpn.as_deref()
    }
}

#[cfg(test)]
mod tests;
