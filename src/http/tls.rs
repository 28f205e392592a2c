//! HTTPS to backends through rustls (feature `tls`).
//!
//! Give a [`TlsConfig`] to [`HttpEndpoints::tls`](super::HttpEndpoints::tls) or
//! [`PooledEndpoints::tls`](super::PooledEndpoints::tls): `https://` backends are then
//! reached over TLS, `http://` ones (and bare `host:port` keys) stay plain.
//!
//! # Semantics
//!
//! - **Trust.** [`TlsConfig::new`] trusts the system's root certificates (read through
//!   `rustls-native-certs`: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the platform store);
//!   [`TlsConfig::empty`] trusts nothing until you add a CA. [`add_ca_pem`](TlsConfig::add_ca_pem)
//!   and [`add_ca_file`](TlsConfig::add_ca_file) add a private CA bundle to the trusted
//!   roots. Certificates are always verified: chain, validity period, and name.
//! - **Name.** The backend's host is the name the certificate must carry and the SNI sent:
//!   `https://api.internal:8443` sends SNI `api.internal` and checks a DNS SAN; an IP address
//!   backend (`https://10.0.0.7:8443`, `https://[::1]:8443`) sends no SNI (RFC 6066 allows
//!   none for addresses) and is checked against an IP SAN.
//! - **ALPN.** [`HttpEndpoints`](super::HttpEndpoints) offers `h2` and `http/1.1` and
//!   speaks what the backend picks; with [`http2_only`](super::HttpEndpoints::http2_only) it
//!   offers `h2` only. [`PooledEndpoints`](super::PooledEndpoints) speaks HTTP/1.1 and offers
//!   `http/1.1` only.
//! - **Client certificates** (mTLS): [`client_cert_pem`](TlsConfig::client_cert_pem) or
//!   [`client_cert_files`](TlsConfig::client_cert_files), a PEM chain (leaf first) and its
//!   private key (PKCS#8, PKCS#1 or SEC1).
//! - **Your own rustls config**: [`TlsConfig::from_rustls`] takes it as is (verifier,
//!   client auth, resumption); only its ALPN list is replaced by the one the maker speaks.
//! - **Timeout.** The handshake gets the maker's connect timeout again (5 s by default),
//!   so a backend that accepts TCP but never answers the handshake fails as a connect
//!   timeout (`504`, `Proxy-Status: connection_timeout`).
//!
//! Bad input (a PEM with no certificate, a truncated one, a key that does not match its
//! certificate, an unreadable file) is a [`ConfigError::Invalid`] from the builder method
//! that got it, never a panic.
//!
//! # Failures
//!
//! A failed handshake (an unknown CA, a wrong name, an expired certificate, no shared
//! protocol version, an alert from the backend) is a [`TlsError`] of the connect phase: no
//! byte of the request was sent. So [`HttpPolicy`](super::HttpPolicy) with a replay mode
//! retries the request on another backend whatever its method, passive health counts the
//! failure, [`BackendStats::last_failure`](crate::balance::BackendStats::last_failure) says
//! why, and [`ErrorResponseLayer`](super::ErrorResponseLayer) answers `502` with the RFC 9209
//! `Proxy-Status` error `tls_certificate_error` (the backend's certificate was refused),
//! `tls_alert_received` (the backend sent an alert) or `tls_protocol_error` (anything else),
//! without the backend's address or the certificate's names.
//!
//! In TLS 1.3 a backend checks the client's certificate after the client has finished its
//! handshake, so a backend that refuses the client certificate says so with an alert on
//! the first read: that request fails as a transport error (also `tls_alert_received`),
//! retried only if its method is idempotent, within the retry budget.
//!
//! An `https://` backend given to a maker without TLS is refused when its endpoint is made
//! ([`TlsRequired`](super::TlsRequired), reported by `Balance::build` as
//! [`ConfigError::Make`]): it is never connected in plain text.
//!
//! # Crypto provider
//!
//! rustls runs on [`ring`](https://crates.io/crates/ring), chosen explicitly for every config
//! this module builds (the process-wide default provider is not consulted, so a program
//! that also links `aws-lc-rs` gets no ambiguity panic). ring builds with a C compiler
//! alone, quickly; `aws-lc-rs`, rustls's default, needs cmake (and for some targets
//! bindgen) and takes minutes to compile, which the crate's CI and most users of a
//! middleware crate should not pay. TLS 1.2 and 1.3 are enabled; rustls's safe defaults
//! pick the cipher suites.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), tower_lb::BoxError> {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use tower_lb::{http::{tls::TlsConfig, HttpEndpoints, HttpPolicy}, Backend, Balance};
//!
//! // The system's roots plus a private CA; a client certificate for mTLS.
//! let tls = TlsConfig::new()
//!     .add_ca_file("/etc/ssl/private-ca.pem")?
//!     .client_cert_files("/etc/ssl/client.pem", "/etc/ssl/client.key")?;
//! let balance = Balance::builder()
//!     .backends(["https://api-1.internal:8443", "https://api-2.internal:8443"].map(Backend::new))
//!     .policy(HttpPolicy::new().replay_clone()) // a failed handshake is retried elsewhere
//!     .build(HttpEndpoints::<Empty<Bytes>>::new().tls(tls))?;
//! # let _ = balance;
//! # Ok(())
//! # }
//! ```
//!
//! tonic users balance over `Channel`s with tonic's own TLS (`Endpoint::tls_config`), made
//! per backend by the endpoint maker; the README shows it. With the `grpc` feature, `tls`
//! turns on tonic's `tls-ring` feature for it (the same rustls and ring).

use std::{
    error::Error,
    fmt, io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{uri::Scheme, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use tower_service::Service;

use crate::error::{pem_reason, BoxError, ConfigError};

/// How endpoint makers reach `https://` backends: trusted roots, an optional client
/// certificate, or a rustls config of your own. Cheap to clone. See the
/// [module docs](self) for the semantics and an example.
#[derive(Clone)]
pub struct TlsConfig {
    /// What `config` was built from, so that CAs and a client certificate can be added;
    /// `None` for a config given whole to [`from_rustls`](Self::from_rustls).
    parts: Option<Parts>,
    config: Arc<ClientConfig>,
}

#[derive(Clone)]
struct Parts {
    roots: RootCertStore,
    client_auth: Option<Arc<ClientAuth>>,
}

struct ClientAuth {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TlsConfig");
        match &self.parts {
            Some(parts) => d
                .field("roots", &parts.roots.len())
                .field("client_cert", &parts.client_auth.is_some()),
            None => d.field("from_rustls", &true),
        };
        d.finish()
    }
}

impl Default for TlsConfig {
    /// [`TlsConfig::new`]: the system's roots.
    fn default() -> Self {
        Self::new()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(setting: &'static str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.to_string(),
    }
}

impl Parts {
    fn build(&self) -> Result<ClientConfig, rustls::Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        match &self.client_auth {
            Some(auth) => builder.with_client_auth_cert(auth.chain.clone(), auth.key.clone_key()),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

impl TlsConfig {
    /// Trusts the system's root certificates; no client certificate.
    ///
    /// Roots that cannot be read or parsed are skipped with a `tracing` warning; with no
    /// system root at all (a bare container image), only CAs added with
    /// [`add_ca_pem`](Self::add_ca_pem) are trusted, and a warning says so.
    pub fn new() -> Self {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "tower_lb: cannot read system root certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!(
                ignored,
                "tower_lb: unusable system root certificates skipped"
            );
        }
        if added == 0 {
            tracing::warn!(
                "tower_lb: no system root certificates found; only added CAs are trusted"
            );
        }
        Self::with_roots(roots)
    }

    /// Trusts no root yet: only the CAs you add (a private PKI, where the public roots
    /// have no business vouching for backends).
    pub fn empty() -> Self {
        Self::with_roots(RootCertStore::empty())
    }

    fn with_roots(roots: RootCertStore) -> Self {
        let parts = Parts {
            roots,
            client_auth: None,
        };
        // Without a client certificate, building fails only if the provider has no
        // cipher suite for TLS 1.2 or 1.3, and ring has both.
        let config = parts
            .build()
            .expect("the ring provider supports TLS 1.2 and 1.3");
        Self {
            parts: Some(parts),
            config: Arc::new(config),
        }
    }

    /// Takes a rustls config as it is: its verifier, roots, client authentication and
    /// session resumption. Its ALPN list is replaced by the protocols the maker speaks
    /// (see the [module docs](self)). CAs and client certificates cannot be added to it.
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        Self {
            parts: None,
            config,
        }
    }

    fn rebuild(
        mut self,
        setting: &'static str,
        edit: impl FnOnce(&mut Parts),
    ) -> Result<Self, ConfigError> {
        let Some(parts) = self.parts.as_mut() else {
            return Err(invalid(
                setting,
                "a config from TlsConfig::from_rustls cannot be changed; set it up in rustls",
            ));
        };
        edit(parts);
        let config = parts.build().map_err(|e| invalid(setting, e))?;
        self.config = Arc::new(config);
        Ok(self)
    }

    /// Adds every certificate of a PEM bundle to the trusted roots.
    ///
    /// An error if the input holds no certificate, is not valid PEM, or holds a
    /// certificate that cannot be a trust anchor.
    ///
    /// ```
    /// use tower_lb::{error::ConfigError, http::tls::TlsConfig};
    ///
    /// let err = TlsConfig::empty().add_ca_pem(b"not a certificate").unwrap_err();
    /// assert!(matches!(err, ConfigError::Invalid { setting: "tls CA", .. }));
    /// ```
    pub fn add_ca_pem(self, pem: &[u8]) -> Result<Self, ConfigError> {
        const SETTING: &str = "tls CA";
        let certs = parse_certs(SETTING, pem)?;
        let mut roots = match &self.parts {
            Some(parts) => parts.roots.clone(),
            None => RootCertStore::empty(),
        };
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid(SETTING, format!("not a usable CA certificate: {e}")))?;
        }
        self.rebuild(SETTING, |parts| parts.roots = roots)
    }

    /// Reads a PEM bundle from a file and adds it as [`add_ca_pem`](Self::add_ca_pem) does.
    pub fn add_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let pem = read("tls CA", path.as_ref())?;
        self.add_ca_pem(&pem)
    }

    /// Presents a client certificate to backends that ask for one (mTLS): `cert_chain` is
    /// PEM, leaf first, then any intermediates; `key` is its private key in PEM (PKCS#8,
    /// PKCS#1 or SEC1).
    ///
    /// An error if either is not valid PEM, holds nothing usable, or the key does not
    /// match the leaf certificate.
    pub fn client_cert_pem(self, cert_chain: &[u8], key: &[u8]) -> Result<Self, ConfigError> {
        const SETTING: &str = "tls client certificate";
        let chain = parse_certs(SETTING, cert_chain)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                invalid(SETTING, "no private key in the PEM input")
            }
            e => invalid(SETTING, format!("bad PEM key: {}", pem_reason(&e))),
        })?;
        let auth = Arc::new(ClientAuth { chain, key });
        self.rebuild(SETTING, |parts| parts.client_auth = Some(auth))
    }

    /// Reads a client certificate chain and its key from PEM files, as
    /// [`client_cert_pem`](Self::client_cert_pem) takes them.
    pub fn client_cert_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        const SETTING: &str = "tls client certificate";
        let chain = read(SETTING, cert_chain.as_ref())?;
        let key = read(SETTING, key.as_ref())?;
        self.client_cert_pem(&chain, &key)
    }

    /// The connector for a maker that speaks `alpn`.
    pub(crate) fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        self.clone().into_connector(alpn)
    }

    /// The connector for a maker that speaks `alpn`.
    pub(crate) fn into_connector(self, alpn: &[&[u8]]) -> TlsConnector {
        let mut config = Arc::unwrap_or_clone(self.config);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(setting, format!("{}: {e}", path.display())))
}

fn parse_certs(
    setting: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, format!("bad PEM: {}", pem_reason(&e))))?;
    if certs.is_empty() {
        return Err(invalid(setting, "no certificate in the PEM input"));
    }
    Ok(certs)
}

/// The name a backend's certificate must carry: a DNS name (also sent as SNI) or an IP
/// address (no SNI). `host` may be a bracketed IPv6 literal, as in a URI.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, BoxError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}").into())
}

/// Runs the client handshake over `tcp` within `timeout`.
pub(crate) async fn handshake(
    tls: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, TlsError> {
    match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(TlsError::handshake(e)),
        Err(_) => Err(TlsError {
            source: Box::new(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake within {timeout:?}"),
            )),
        }),
    }
}

// === impl TlsError ===

/// The TLS handshake with a backend failed: its certificate was refused (see
/// [`is_certificate`](Self::is_certificate)), it sent an alert, no protocol version or
/// cipher suite was shared, or the handshake timed out. No byte of the request was sent.
///
/// Found in the error chain of a failed request with
/// [`error::find`](crate::error::find); [`source`](Error::source) is the rustls error (or
/// the I/O error or timeout). See the [module docs](self).
#[derive(Debug)]
pub struct TlsError {
    source: BoxError,
}

impl TlsError {
    fn handshake(e: io::Error) -> Self {
        // tokio-rustls carries rustls's own error inside an `io::Error`, whose `source()`
        // skips it: take it out, so that the chain holds the typed error.
        if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            return Self {
                source: Box::new(e),
            };
        }
        let kind = e.kind();
        Self {
            source: e
                .into_inner()
                .unwrap_or_else(|| Box::new(io::Error::from(kind))),
        }
    }

    /// The rustls error, if the handshake failed on a TLS matter (not on I/O or a
    /// timeout).
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        self.source.downcast_ref()
    }

    /// Whether the backend's certificate was refused: an unknown issuer, a name it is not
    /// valid for, expired or not yet valid, revoked, malformed, or no certificate at all.
    pub fn is_certificate(&self) -> bool {
        self.rustls_error().is_some_and(refused_certificate)
    }

    /// Whether the handshake did not finish within the connect timeout.
    pub fn is_timeout(&self) -> bool {
        self.source
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
    }

    fn proxy_status(&self) -> &'static str {
        match self.rustls_error() {
            Some(e) => rustls_proxy_status(e),
            None => "tls_protocol_error",
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls handshake failed")
    }
}

impl Error for TlsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

fn refused_certificate(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
    )
}

fn rustls_proxy_status(e: &rustls::Error) -> &'static str {
    if refused_certificate(e) {
        "tls_certificate_error"
    } else if matches!(e, rustls::Error::AlertReceived(_)) {
        "tls_alert_received"
    } else {
        "tls_protocol_error"
    }
}

/// The RFC 9209 error type of a TLS failure anywhere in `err`'s chain: a [`TlsError`], or
/// a rustls error carried by an I/O error after the handshake (a refused client
/// certificate in TLS 1.3).
pub(crate) fn proxy_status(err: &(dyn Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return Some(tls.proxy_status());
        }
        let rustls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = rustls {
            return Some(rustls_proxy_status(r));
        }
        cur = e.source();
    }
    None
}

/// The alert a backend sent, if `err`'s chain holds one (for tests and logs).
#[cfg(test)]
fn alert(err: &(dyn Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return Some(*a);
        }
        cur = e.source();
    }
    None
}

// === impl HttpsConnector ===

/// hyper-util's connector for [`HttpEndpoints`](super::HttpEndpoints) with TLS: TCP
/// through an `HttpConnector`, then a handshake for `https` URIs.
#[derive(Clone)]
pub(crate) struct HttpsConnector {
    http: HttpConnector,
    tls: TlsConnector,
    timeout: Duration,
}

impl HttpsConnector {
    pub(crate) fn new(http: HttpConnector, tls: TlsConnector, timeout: Duration) -> Self {
        Self { http, tls, timeout }
    }
}

impl Service<Uri> for HttpsConnector {
    type Response = MaybeTlsStream;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<MaybeTlsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let name = (uri.scheme() == Some(&Scheme::HTTPS))
            .then(|| server_name(uri.host().unwrap_or_default()));
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some(name) = name else {
                return Ok(MaybeTlsStream::Plain(tcp));
            };
            let stream = handshake(&tls, name?, tcp.into_inner(), timeout).await?;
            Ok(MaybeTlsStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection made by [`HttpsConnector`].
pub(crate) enum MaybeTlsStream {
    Plain(TokioIo<TcpStream>),
    // Boxed: a rustls connection is a kilobyte, a TCP stream a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for MaybeTlsStream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(tcp) => tcp.connected(),
            Self::Tls(tls) => {
                let (tcp, conn) = tls.inner().get_ref();
                let connected = tcp.connected();
                // The client speaks HTTP/2 on this connection if the backend chose it.
                if conn.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError};

    fn setting(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn bad_ca_pem_is_a_config_error() {
        let truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        for input in [&b""[..], b"not pem at all", truncated, not_der] {
            let err = TlsConfig::empty().add_ca_pem(input).unwrap_err();
            assert_eq!(setting(err), "tls CA", "{input:?}");
        }
        let err = TlsConfig::empty()
            .add_ca_file("/nonexistent/tower-lb/ca.pem")
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tower-lb/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn bad_client_cert_pem_is_a_config_error() {
        let not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let bad_key = b"-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
        // No certificate; a certificate that is not DER paired with no key / a bad key.
        for (cert, key) in [
            (&b""[..], &b""[..]),
            (b"garbage", b"garbage"),
            (not_der, b""),
            (not_der, bad_key),
        ] {
            let err = TlsConfig::empty().client_cert_pem(cert, key).unwrap_err();
            assert_eq!(setting(err), "tls client certificate");
        }
    }

    #[test]
    fn from_rustls_configs_are_not_edited() {
        let config = TlsConfig::empty().config;
        let err = TlsConfig::from_rustls(config).add_ca_pem(b"").unwrap_err();
        assert_eq!(setting(err), "tls CA");
    }

    #[test]
    fn tls_failures_have_rfc_9209_types() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "tls_certificate_error",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "tls_certificate_error",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "tls_certificate_error",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "tls_alert_received",
            ),
            (rustls::Error::DecryptError, "tls_protocol_error"),
        ];
        for (e, kind) in cases {
            let handshake = TlsError::handshake(io::Error::new(io::ErrorKind::InvalidData, e));
            assert_eq!(proxy_status(&handshake), Some(kind), "{handshake:?}");
            assert_eq!(handshake.is_certificate(), kind == "tls_certificate_error");
        }
        // After the handshake: a rustls error inside an I/O error, inside hyper's.
        let late = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        assert_eq!(proxy_status(&late), Some("tls_alert_received"));
        assert_eq!(
            alert(&TlsError::handshake(late)),
            Some(AlertDescription::CertificateRequired)
        );
        let eof = TlsError::handshake(io::ErrorKind::UnexpectedEof.into());
        assert_eq!(proxy_status(&eof), Some("tls_protocol_error"));
        assert!(!eof.is_certificate() && !eof.is_timeout());
        assert_eq!(
            proxy_status(&io::Error::from(io::ErrorKind::ConnectionReset)),
            None
        );
    }

    #[test]
    fn server_names_of_hosts_and_addresses() {
        assert!(matches!(
            server_name("api.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name!").is_err());
    }
}
