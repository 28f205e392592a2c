//! HTTPS to real servers (feature `tls`): certificates made by the `openssl` CLI, served
//! by `openssl s_server`, Python's `ssl` module (`tests/peers/tls_server.py`) and a
//! hyper server on tokio-rustls (for h2 and server-side counts).
//!
//! Without `openssl` (or `python3`) a test says so and returns; under `CI=true` it fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, task::JoinSet};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::strategy::RoundRobin,
    error::{find, is_connect_error, ConfigError},
    http::{
        proxy_status_for, status_for,
        tls::{TlsConfig, TlsError},
        CloneBody, ErrorResponseLayer, HttpEndpoint, HttpEndpoints, HttpPolicy, PooledEndpoints,
        TrackBody,
    },
    Backend, Balance, BoxError,
};

use crate::support::{self, command_peer, eventually, have_python, named, python_peer, TestServer};

// === certificates ===

/// A CA, a server certificate for `localhost` and `127.0.0.1` it signed, one for
/// `other.test` only, a second CA unrelated to the first with a `localhost` certificate of
/// its own, and a client CA with a client certificate: all made by `openssl` in a temp dir
/// (`tests/support/pki.rs`).
struct Pki(support::pki::Pki);

impl std::ops::Deref for Pki {
    type Target = support::pki::Pki;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pki {
    /// `None` (the test skips) without `openssl`, outside CI.
    fn make() -> Option<Self> {
        let pki = support::pki::Pki::new()?;
        pki.ca("ca");
        pki.ca("other-ca");
        pki.ca("client-ca");
        let server = "DNS:localhost, IP:127.0.0.1";
        pki.server("server", "ca", 2, server);
        pki.server("rogue", "other-ca", 3, server);
        pki.server("other-name", "ca", 4, "DNS:other.test");
        pki.client("client", "client-ca", 5);
        Some(Self(pki))
    }

    /// Trusts `ca.pem` only.
    fn trust_ca(&self) -> TlsConfig {
        TlsConfig::empty().add_ca_file(self.path("ca.pem")).unwrap()
    }
}

// === servers ===

/// An HTTPS server on hyper and tokio-rustls (HTTP/1.1 and h2 by ALPN), answering
/// `rust <version>`; it counts requests and records each handshake's SNI.
struct RustServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustServer {
    async fn start(pki: &Pki, cert: &str, alpn: &[&[u8]]) -> Self {
        let chain = CertificateDer::pem_file_iter(pki.path(&format!("{cert}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{cert}.key"))).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let counter = requests.clone();
        let router = Router::new().fallback(move |req: axum::extract::Request| {
            counter.fetch_add(1, SeqCst);
            async move { format!("rust {:?}", req.version()) }
        });
        let names = sni.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, router, names) = (acceptor.clone(), router.clone(), names.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let name = tls.get_ref().1.server_name().map(str::to_owned);
                    names.lock().unwrap().push(name);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            requests,
            sni,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

/// `tests/peers/tls_server.py` serving `cert`, logging to a file; `None` without python3.
async fn python_tls(pki: &Pki, cert: &str, extra: &[&str]) -> Option<(support::Peer, PathBuf)> {
    if !have_python(&["ssl"]) {
        return None;
    }
    static PEERS: AtomicUsize = AtomicUsize::new(0);
    let log = pki.path(&format!("{cert}-{}.log", PEERS.fetch_add(1, SeqCst)));
    let (pem, key, log_arg) = (
        pki.file(&format!("{cert}.pem")),
        pki.file(&format!("{cert}.key")),
        log.to_str().unwrap().to_owned(),
    );
    let mut args = vec![pem.as_str(), key.as_str(), "--log", log_arg.as_str()];
    args.extend_from_slice(extra);
    Some((python_peer("tls_server.py", &args).await, log))
}

/// Lines of a peer's log that start with `prefix`.
fn logged(log: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// `openssl s_server -www` serving `cert`, plus `extra` arguments (split on whitespace).
async fn s_server(pki: &Pki, cert: &str, extra: &str) -> support::Peer {
    let (pem, key) = (
        pki.file(&format!("{cert}.pem")),
        pki.file(&format!("{cert}.key")),
    );
    let extra = extra.to_owned();
    command_peer("openssl", move |port| {
        format!(
            "s_server -accept 127.0.0.1:{port} -cert {pem} -key {key} -www -alpn http/1.1 -quiet {extra}"
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    })
    .await
}

// === helpers ===

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// Sends `GET path` through `svc`: the response's version and body text.
async fn fetch<S, B>(svc: &S, path: &str) -> Result<(Version, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let rsp = svc.clone().oneshot(get(path)).await?;
    let version = rsp.version();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    Ok((version, String::from_utf8_lossy(&body).into_owned()))
}

fn https(addr: SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

/// A round-robin balancer over `keys` that retries connect failures elsewhere.
fn http_balance(
    keys: impl IntoIterator<Item = String>,
    maker: HttpEndpoints<Empty<Bytes>>,
) -> Balance<String, TrackBody<HttpEndpoint<Empty<Bytes>>>, HttpPolicy<CloneBody>> {
    Balance::builder()
        .strategy(RoundRobin::new())
        .backends(keys.into_iter().map(Backend::new))
        .policy(HttpPolicy::new().replay_clone())
        .build(maker)
        .unwrap()
}

// === tests ===

#[tokio::test]
async fn https_requests_reach_a_python_server_through_both_makers() {
    let Some(pki) = Pki::make() else { return };
    let Some((peer, log)) = python_tls(&pki, "server", &[]).await else {
        return;
    };

    // System roots plus the private CA; a host name (SNI sent) and an IP address (none).
    let tls = TlsConfig::new().add_ca_pem(&pki.pem("ca.pem")).unwrap();
    let by_name = https(peer.addr());
    let by_ip = format!("https://127.0.0.1:{}", peer.port);
    let balance = http_balance([by_name.clone()], HttpEndpoints::new().tls(tls.clone()));
    let (version, body) = fetch(&balance, "/hello").await.unwrap();
    assert_eq!(
        (version, body.as_str()),
        (Version::HTTP_11, "python-tls /hello sni=localhost")
    );
    let balance = http_balance([by_ip.clone()], HttpEndpoints::new().tls(tls.clone()));
    assert_eq!(
        fetch(&balance, "/ip").await.unwrap().1,
        "python-tls /ip sni=-"
    );

    let pooled = Balance::builder()
        .backends([Backend::new(by_name)])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(tls))
        .unwrap();
    for i in 0..3 {
        let (version, body) = fetch(&pooled, &format!("/pooled/{i}")).await.unwrap();
        assert_eq!(
            (version, body),
            (
                Version::HTTP_11,
                format!("python-tls /pooled/{i} sni=localhost")
            )
        );
    }
    assert_eq!(logged(&log, "REQUEST "), 5);
}

#[tokio::test]
async fn https_requests_reach_openssl_s_server() {
    let Some(pki) = Pki::make() else { return };
    let peer = s_server(&pki, "server", "").await;
    let key = https(peer.addr());
    let balance = http_balance([key.clone()], HttpEndpoints::new().tls(pki.trust_ca()));
    let (_, body) = fetch(&balance, "/").await.unwrap();
    assert!(
        body.contains("Ciphers supported in s_server binary"),
        "{body}"
    );
    let pooled = Balance::builder()
        .backends([Backend::new(key)])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    let (_, body) = fetch(&pooled, "/").await.unwrap();
    assert!(body.contains("s_server"), "{body}");
}

#[tokio::test]
async fn alpn_picks_h2_from_an_h2_server_and_http1_for_the_pool() {
    let Some(pki) = Pki::make() else { return };
    let server = RustServer::start(&pki, "server", &[b"h2", b"http/1.1"]).await;
    let key = https(server.addr);

    let auto = http_balance([key.clone()], HttpEndpoints::new().tls(pki.trust_ca()));
    let h2 = http_balance(
        [key.clone()],
        HttpEndpoints::new().http2_only().tls(pki.trust_ca()),
    );
    for balance in [&auto, &h2] {
        let (version, body) = fetch(balance, "/").await.unwrap();
        assert_eq!((version, body.as_str()), (Version::HTTP_2, "rust HTTP/2.0"));
    }
    let pooled = Balance::builder()
        .backends([Backend::new(key)])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    let (version, body) = fetch(&pooled, "/").await.unwrap();
    assert_eq!(
        (version, body.as_str()),
        (Version::HTTP_11, "rust HTTP/1.1")
    );

    // An HTTP/1.1-only server: the default maker falls back to HTTP/1.1.
    let h1 = RustServer::start(&pki, "server", &[b"http/1.1"]).await;
    let balance = http_balance([https(h1.addr)], HttpEndpoints::new().tls(pki.trust_ca()));
    assert_eq!(fetch(&balance, "/").await.unwrap().1, "rust HTTP/1.1");
    assert_eq!(server.sni.lock().unwrap()[0].as_deref(), Some("localhost"));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_typed_tls_error_and_a_502() {
    let Some(pki) = Pki::make() else { return };
    let Some((peer, log)) = python_tls(&pki, "rogue", &[]).await else {
        return;
    };
    let key = https(peer.addr());

    let balance = http_balance([key.clone()], HttpEndpoints::new().tls(pki.trust_ca()));
    let err = fetch(&balance, "/").await.unwrap_err();
    let tls = find::<TlsError>(&*err).unwrap_or_else(|| panic!("no TlsError in {err:?}"));
    assert!(tls.is_certificate(), "{tls:?}");
    assert!(matches!(
        tls.rustls_error(),
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))
    ));
    assert!(is_connect_error(&*err), "{err:?}");
    assert_eq!(status_for(&err), StatusCode::BAD_GATEWAY);
    assert_eq!(proxy_status_for(&err), "tls_certificate_error");

    // The same through the pool: a connect failure wrapping the TLS error.
    let pooled = Balance::builder()
        .backends([Backend::new(key.clone())])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    let err = fetch(&pooled, "/").await.unwrap_err();
    assert!(
        find::<TlsError>(&*err).is_some_and(TlsError::is_certificate),
        "{err:?}"
    );
    assert!(is_connect_error(&*err));

    // Clients get a 502 that names neither the backend nor its certificate.
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(balance.clone());
    let rsp = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        rsp.headers()["proxy-status"],
        "tower-lb; error=tls_certificate_error"
    );
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(body, "502 Bad Gateway\n");
    for secret in ["localhost", "127.0.0.1", &peer.port.to_string()] {
        assert!(!body.contains(secret));
    }
    let stats = balance.stats();
    assert!(stats.backends[0].failures >= 2, "{stats:?}");
    let why = stats.backends[0].last_failure.clone().unwrap_or_default();
    assert!(why.contains("tls handshake failed"), "{why}");

    // The server saw three handshakes fail and served no request.
    assert!(eventually(30, || logged(&log, "HANDSHAKE-FAILED") >= 3).await);
    assert_eq!(logged(&log, "REQUEST "), 0);
}

#[tokio::test]
async fn requests_go_around_an_untrusted_backend_which_serves_none() {
    let Some(pki) = Pki::make() else { return };
    let Some((rogue, log)) = python_tls(&pki, "rogue", &[]).await else {
        return;
    };
    let good = RustServer::start(&pki, "server", &[b"h2", b"http/1.1"]).await;
    let (rogue_key, good_key) = (https(rogue.addr()), https(good.addr));

    let balance = http_balance(
        [rogue_key.clone(), good_key.clone()],
        HttpEndpoints::new().tls(pki.trust_ca()),
    );
    for _ in 0..20 {
        let (_, body) = fetch(&balance, "/").await.unwrap();
        assert_eq!(body, "rust HTTP/2.0");
    }
    assert_eq!(good.requests(), 20);
    let stats = balance.stats();
    let of = |key: &str| stats.backends.iter().find(|b| b.key == key).unwrap();
    assert!(of(&rogue_key).failures >= 1, "{stats:?}");
    assert_eq!(
        of(&rogue_key).failures,
        of(&rogue_key).requests,
        "{stats:?}"
    );
    assert_eq!(of(&good_key).failures, 0);

    // The pool: a rogue hyper server counts the requests it would have served.
    let rogue2 = RustServer::start(&pki, "rogue", &[b"http/1.1"]).await;
    let pooled = Balance::builder()
        .strategy(RoundRobin::new())
        .backends([https(rogue2.addr), good_key].map(Backend::new))
        .policy(HttpPolicy::new().replay_clone())
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(fetch(&pooled, "/").await.unwrap().1, "rust HTTP/1.1");
    }
    assert_eq!(good.requests(), 30);
    assert_eq!(rogue2.requests(), 0);
    assert!(pooled.stats().backends[0].failures >= 1);

    assert!(eventually(30, || logged(&log, "HANDSHAKE-FAILED") >= 1).await);
    assert_eq!(logged(&log, "REQUEST "), 0);
}

#[cfg(feature = "health-passive")]
#[tokio::test]
async fn passive_health_ejects_an_untrusted_backend() {
    use tower_lb::{balance::Status, health::passive::Window};
    let Some(pki) = Pki::make() else { return };
    let rogue = RustServer::start(&pki, "rogue", &[b"http/1.1"]).await;
    let good = RustServer::start(&pki, "server", &[b"http/1.1"]).await;
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .backends([https(rogue.addr), https(good.addr)].map(Backend::new))
        .policy(HttpPolicy::new().replay_clone())
        .passive_health(Window::new())
        .build(HttpEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(fetch(&balance, "/").await.unwrap().1, "rust HTTP/1.1");
    }
    let stats = balance.stats();
    assert!(
        matches!(stats.backends[0].status, Status::Ejected { .. }),
        "{stats:?}"
    );
    assert_eq!(
        stats.backends[0].failures, 1,
        "ejected after its first failure"
    );
    assert_eq!((rogue.requests(), good.requests()), (0, 10));
}

#[tokio::test]
async fn client_certificates_are_presented_to_servers_that_require_them() {
    let Some(pki) = Pki::make() else { return };
    let with_cert = pki
        .trust_ca()
        .client_cert_pem(&pki.pem("client.pem"), &pki.pem("client.key"))
        .unwrap();
    let wrong_cert = pki
        .trust_ca()
        .client_cert_files(pki.path("rogue.pem"), pki.path("rogue.key"))
        .unwrap();

    // Python's ssl module with CERT_REQUIRED.
    if let Some((peer, log)) =
        python_tls(&pki, "server", &["--client-ca", &pki.file("client-ca.pem")]).await
    {
        let key = https(peer.addr());
        let without = http_balance([key.clone()], HttpEndpoints::new().tls(pki.trust_ca()));
        // TLS 1.3: the refusal is an alert read after the handshake (or, if the server's
        // close overtook it, a reset).
        let err = fetch(&without, "/").await.unwrap_err();
        assert!(
            matches!(
                proxy_status_for(&err),
                "tls_alert_received" | "connection_terminated"
            ),
            "{err:?}"
        );
        let wrong = http_balance([key.clone()], HttpEndpoints::new().tls(wrong_cert.clone()));
        assert!(fetch(&wrong, "/").await.is_err());
        assert!(eventually(30, || logged(&log, "HANDSHAKE-FAILED") >= 2).await);
        assert_eq!(logged(&log, "REQUEST "), 0);

        let with = http_balance([key.clone()], HttpEndpoints::new().tls(with_cert.clone()));
        assert_eq!(
            fetch(&with, "/mtls").await.unwrap().1,
            "python-tls /mtls sni=localhost"
        );
        let pooled = Balance::builder()
            .backends([Backend::new(key)])
            .build(PooledEndpoints::<Empty<Bytes>>::new().tls(with_cert.clone()))
            .unwrap();
        assert_eq!(
            fetch(&pooled, "/pool").await.unwrap().1,
            "python-tls /pool sni=localhost"
        );
        assert_eq!(logged(&log, "REQUEST "), 2);
    }

    // openssl s_server with -Verify (a client certificate required).
    let client_ca = pki.file("client-ca.pem");
    let peer = s_server(&pki, "server", &format!("-Verify 1 -CAfile {client_ca}")).await;
    let key = https(peer.addr());
    let without = http_balance([key.clone()], HttpEndpoints::new().tls(pki.trust_ca()));
    assert!(fetch(&without, "/").await.is_err());
    let with = http_balance([key], HttpEndpoints::new().tls(with_cert));
    let (_, body) = fetch(&with, "/").await.unwrap();
    assert!(body.contains("s_server"), "{body}");
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_verification() {
    let Some(pki) = Pki::make() else { return };
    let server = RustServer::start(&pki, "other-name", &[b"http/1.1"]).await;
    let not_valid_for_name = |err: &BoxError| {
        let tls = find::<TlsError>(&**err).unwrap_or_else(|| panic!("no TlsError in {err:?}"));
        assert!(tls.is_certificate());
        assert!(
            matches!(
                tls.rustls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{tls:?}"
        );
        assert_eq!(proxy_status_for(err), "tls_certificate_error");
    };
    // By name: SNI localhost, a certificate for other.test only.
    let balance = http_balance(
        [https(server.addr)],
        HttpEndpoints::new().tls(pki.trust_ca()),
    );
    not_valid_for_name(&fetch(&balance, "/").await.unwrap_err());
    // By address: no SNI, and the certificate has no IP SAN.
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    let pooled = Balance::builder()
        .backends([Backend::new(by_ip)])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    not_valid_for_name(&fetch(&pooled, "/").await.unwrap_err());
    assert_eq!(server.requests(), 0);
    assert_eq!(
        *server.sni.lock().unwrap(),
        Vec::<Option<String>>::new(),
        "no handshake completed"
    );

    // The right name, by host and by IP SAN, with SNI only for the host.
    let good = RustServer::start(&pki, "server", &[b"http/1.1"]).await;
    let by_ip = format!("https://127.0.0.1:{}", good.addr.port());
    let balance = http_balance(
        [https(good.addr), by_ip],
        HttpEndpoints::new().tls(pki.trust_ca()),
    );
    for _ in 0..2 {
        fetch(&balance, "/").await.unwrap();
    }
    let mut sni = good.sni.lock().unwrap().clone();
    sni.sort();
    assert_eq!(sni, [None, Some("localhost".to_owned())]);
}

#[tokio::test]
async fn plain_backends_stay_plain_and_https_needs_tls() {
    let Some(pki) = Pki::make() else { return };
    let plain = TestServer::start(named("plain")).await;
    let balance = http_balance(
        [format!("http://{}", plain.addr), plain.addr.to_string()],
        HttpEndpoints::new().tls(pki.trust_ca()),
    );
    for _ in 0..2 {
        assert_eq!(fetch(&balance, "/").await.unwrap().1, "plain");
    }
    let pooled = Balance::builder()
        .backends([Backend::new(plain.addr.to_string())])
        .build(PooledEndpoints::<Empty<Bytes>>::new().tls(pki.trust_ca()))
        .unwrap();
    assert_eq!(fetch(&pooled, "/").await.unwrap().1, "plain");

    // An https backend given to makers without TLS: refused, never spoken to in plain text.
    for err in [
        Balance::builder()
            .backends([Backend::new("https://localhost:8443".to_owned())])
            .build(HttpEndpoints::<Empty<Bytes>>::new())
            .map(drop)
            .unwrap_err(),
        Balance::builder()
            .backends([Backend::new("https://localhost:8443".to_owned())])
            .build(PooledEndpoints::<Empty<Bytes>>::new())
            .map(drop)
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, ConfigError::Make { reason, .. } if reason.contains("no TLS configuration")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_handshake_that_never_ends_is_a_connect_timeout() {
    let Some(pki) = Pki::make() else { return };
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let maker = HttpEndpoints::with_connect_timeout(Duration::from_millis(300)).tls(pki.trust_ca());
    let balance = http_balance([https(addr)], maker);
    let err = fetch(&balance, "/").await.unwrap_err();
    assert!(
        find::<TlsError>(&*err).is_some_and(TlsError::is_timeout),
        "{err:?}"
    );
    assert_eq!(status_for(&err), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(proxy_status_for(&err), "connection_timeout");
    drop(listener);
}
