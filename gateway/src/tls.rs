//! TLS on both sides, from the library's two TLS layers: the listener's certificates
//! (`--tls-cert`, `--tls-key`, `--tls-sni`; `tower_lb::server::tls`) and how `https://`
//! backends are reached (`--backend-ca`, `--backend-client-cert`, `--backend-client-key`;
//! `tower_lb::http::tls`).

use std::{path::PathBuf, time::Duration};

use tower_lb::{http::tls::TlsConfig as BackendConfig, server::tls::TlsConfig as ListenerConfig};

use crate::cli::{Args, SniSpec};

/// How the pools reach `https://` backends: the system's roots, the `--backend-ca`
/// bundles, the client certificate. Two are equal when the files they were read from held
/// the same bytes, so a reload that changes none of them keeps the pools' balancers.
#[derive(Clone)]
pub(crate) struct BackendTls {
    /// What was read: each CA bundle, then the client chain and key.
    read: Vec<Vec<u8>>,
    pub(crate) config: BackendConfig,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.read == other.read
    }
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("files", &self.read.len())
            .finish_non_exhaustive()
    }
}

fn read(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag}: {}: {e}", path.display()))
}

impl BackendTls {
    /// Reads the files the flags name; a file that cannot be read or holds no usable
    /// certificate (or a key that does not match its certificate) is an error naming the
    /// flag.
    pub(crate) fn of(args: &Args) -> Result<Self, String> {
        let mut config = BackendConfig::new();
        let mut files = Vec::new();
        for path in &args.backend_ca {
            let pem = read("--backend-ca", path)?;
            config = config
                .add_ca_pem(&pem)
                .map_err(|e| format!("--backend-ca: {}: {e}", path.display()))?;
            files.push(pem);
        }
        if let (Some(cert), Some(key)) = (&args.backend_client_cert, &args.backend_client_key) {
            let chain = read("--backend-client-cert", cert)?;
            let key_pem = read("--backend-client-key", key)?;
            config = config
                .client_cert_pem(&chain, &key_pem)
                .map_err(|e| format!("--backend-client-cert: {}: {e}", cert.display()))?;
            files.push(chain);
            files.push(key_pem);
        }
        Ok(Self {
            read: files,
            config,
        })
    }
}

/// The listener's TLS settings as given: a reload re-reads these files, but changing
/// them needs a restart (the listener outlives configurations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerSpec {
    cert: PathBuf,
    key: PathBuf,
    sni: Vec<SniSpec>,
    handshake_timeout: Duration,
}

impl ListenerSpec {
    /// The listener's TLS settings, `None` without `--tls-cert`.
    pub(crate) fn of(args: &Args) -> Option<Self> {
        let (cert, key) = (args.tls_cert.clone()?, args.tls_key.clone()?);
        Some(Self {
            cert,
            key,
            sni: args.tls_sni.clone(),
            handshake_timeout: args.tls_handshake_timeout,
        })
    }

    /// Loads every certificate: all of them good, or an error naming the flag and file.
    pub(crate) fn load(&self) -> Result<ListenerConfig, String> {
        let mut config = ListenerConfig::from_pem_files(&self.cert, &self.key)
            .map_err(|e| format!("--tls-cert: {e}"))?
            .handshake_timeout(self.handshake_timeout);
        for sni in &self.sni {
            config = config
                .add_sni(&sni.name, &sni.cert, &sni.key)
                .map_err(|e| format!("--tls-sni {}: {e}", sni.name))?;
        }
        Ok(config)
    }
}
