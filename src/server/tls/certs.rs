//! Certificates: read and checked from PEM, published to the handshakes through one
//! `ArcSwap`, so a reload is one pointer swap that handshakes in progress never see half of.

use std::{
    collections::HashMap,
    error::Error,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, DnsName, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::error::pem_reason;

// === impl CertificateError ===

/// A certificate chain or private key that cannot be served: an unreadable file, bad PEM,
/// no certificate or no key in it, a key that does not match its certificate. Returned by
/// the [`TlsConfig`](super::TlsConfig) constructors, [`add_sni`](super::TlsConfig::add_sni)
/// and [`reload`](super::TlsConfig::reload) (which then keeps the certificates it had).
#[derive(Debug)]
pub struct CertificateError {
    kind: CertificateErrorKind,
    /// The file, or `None` for PEM given as bytes.
    path: Option<PathBuf>,
    /// The SNI name the certificate was for (`None`: the default certificate).
    name: Option<String>,
    source: Option<Box<dyn Error + Send + Sync>>,
}

/// What was wrong, in a [`CertificateError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateErrorKind {
    /// A file could not be read (missing, no permission).
    Read,
    /// The PEM input is malformed (bad base64, a section that does not end).
    Pem,
    /// The PEM input holds no `CERTIFICATE` section.
    NoCertificate,
    /// The PEM input holds no private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or
    /// `EC PRIVATE KEY`).
    NoKey,
    /// The certificate is not a well-formed X.509 certificate.
    BadCertificate,
    /// The private key is malformed or of a kind ring cannot sign with.
    UnsupportedKey,
    /// The private key is not the one the certificate was issued for.
    KeyMismatch,
    /// An SNI name given to [`add_sni`](super::TlsConfig::add_sni) is not a DNS name (or a
    /// `*.` wildcard of one).
    InvalidName,
}

impl CertificateError {
    fn new(kind: CertificateErrorKind, path: Option<&Path>) -> Self {
        Self {
            kind,
            path: path.map(Path::to_path_buf),
            name: None,
            source: None,
        }
    }

    fn with_source(mut self, source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(super) fn invalid_name(name: &str) -> Self {
        Self::new(CertificateErrorKind::InvalidName, None).for_name(Some(name))
    }

    pub(super) fn for_name(mut self, name: Option<&str>) -> Self {
        self.name = name.map(str::to_owned);
        self
    }

    /// What was wrong.
    pub fn kind(&self) -> CertificateErrorKind {
        self.kind
    }

    /// The file at fault; `None` for PEM given as bytes or a bad SNI name.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The SNI name whose certificate is at fault; `None` for the default certificate.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls certificate")?;
        if let Some(name) = &self.name {
            write!(f, " for {name}")?;
        }
        if let Some(path) = &self.path {
            write!(f, " ({})", path.display())?;
        }
        let what = match self.kind {
            CertificateErrorKind::Read => "cannot be read",
            CertificateErrorKind::Pem => "is not valid PEM",
            CertificateErrorKind::NoCertificate => "has no certificate in its PEM input",
            CertificateErrorKind::NoKey => "has no private key in its PEM input",
            CertificateErrorKind::BadCertificate => "is not a well-formed X.509 certificate",
            CertificateErrorKind::UnsupportedKey => "has a private key ring cannot use",
            CertificateErrorKind::KeyMismatch => "does not match its private key",
            CertificateErrorKind::InvalidName => "has an SNI name that is not a DNS name",
        };
        write!(f, ": {what}")?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl Error for CertificateError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

// === loading ===

/// Where one certificate comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// Re-read at each reload.
    Files { cert: PathBuf, key: PathBuf },
    /// Given as bytes: parsed once, kept across reloads.
    Fixed(Arc<CertifiedKey>),
}

impl Source {
    pub(super) fn load(
        &self,
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, CertificateError> {
        match self {
            Self::Fixed(key) => Ok(key.clone()),
            Self::Files { cert, key } => {
                let read = |path: &Path| {
                    std::fs::read(path).map_err(|e| {
                        CertificateError::new(CertificateErrorKind::Read, Some(path)).with_source(e)
                    })
                };
                let (cert_pem, key_pem) = (read(cert)?, read(key)?);
                certified_key(&cert_pem, Some(cert), &key_pem, Some(key), provider).map(Arc::new)
            }
        }
    }

    /// The files to watch.
    pub(super) fn files(&self) -> impl Iterator<Item = &Path> {
        let files = match self {
            Self::Files { cert, key } => Some([cert.as_path(), key.as_path()]),
            Self::Fixed(_) => None,
        };
        files.into_iter().flatten()
    }
}

/// Parses a PEM chain (leaf first) and a PEM private key, and checks that they belong
/// together.
pub(super) fn certified_key(
    cert_pem: &[u8],
    cert_path: Option<&Path>,
    key_pem: &[u8],
    key_path: Option<&Path>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    use CertificateErrorKind::*;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::new(Pem, cert_path).with_source(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(CertificateError::new(NoCertificate, cert_path));
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(CertificateError::new(NoKey, key_path))
        }
        Err(e) => return Err(CertificateError::new(Pem, key_path).with_source(pem_reason(&e))),
    };
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertificateError::new(UnsupportedKey, key_path).with_source(e))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // ring's keys always know their public key; a provider that cannot tell is trusted.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e @ rustls::Error::InconsistentKeys(_)) => {
            Err(CertificateError::new(KeyMismatch, key_path).with_source(e))
        }
        Err(e) => Err(CertificateError::new(BadCertificate, cert_path).with_source(e)),
    }
}

/// An SNI name as looked up: lower case, no trailing dot; `*.` wildcards kept. `None` if it
/// is not a DNS name.
pub(super) fn normalize_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let base = name.strip_prefix("*.").unwrap_or(&name);
    // One label is not enough for a wildcard (`*.com`), and never a bare `*`.
    if base.is_empty() || (base.len() < name.len() && !base.contains('.')) {
        return None;
    }
    DnsName::try_from(base).ok()?;
    Some(name)
}

// === impl Resolver ===

/// The certificates in use.
#[derive(Debug, Clone)]
pub(super) struct Certs {
    pub(super) default: Arc<CertifiedKey>,
    /// By normalized name; wildcard names start with `*.`.
    pub(super) names: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    /// The certificate for the SNI name a client sent: its own, else a wildcard covering
    /// its first label, else the default (also for clients that send no name).
    pub(super) fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni.filter(|_| !self.names.is_empty()) else {
            return &self.default;
        };
        // rustls hands over the name lower-cased, without a trailing dot.
        if let Some(key) = self.names.get(sni) {
            return key;
        }
        sni.split_once('.')
            .and_then(|(_, rest)| self.names.get(&format!("*.{rest}")))
            .unwrap_or(&self.default)
    }
}

/// Hands each handshake the current certificates.
#[derive(Debug)]
pub(super) struct Resolver {
    pub(super) certs: ArcSwap<Certs>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certs.load().pick(hello.server_name()).clone())
    }
}
