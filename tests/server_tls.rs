//! TLS termination by `server::Server` (feature `server-tls`), checked by clients we did
//! not write: `curl` (ALPN, HTTP/2 and HTTP/1.1, certificate verification against our CA)
//! and `openssl s_client` (the certificate chosen by SNI, a connection kept open across a
//! reload). Certificates are made by the `openssl` CLI in a temp dir.
//!
//! Without `curl` or `openssl` a test says so and returns; under `CI=true` it fails.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use axum::{body::Body, extract::Request, routing::get, Router};
use hyper::body::Incoming;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    process::Command,
};
use tower::ServiceBuilder;
use tower_lb::{
    http::{proxy::ProxyLayer, ErrorResponseLayer, PooledEndpoints},
    server::{
        tls::{CertificateErrorKind, TlsConfig, TlsInfo},
        Server,
    },
    Backend, Balance,
};

use crate::support::{self, have_command, TestServer};

// === certificates ===

/// A CA; `server` (serial 2) and `server2` (serial 5) for `localhost` and `127.0.0.1`,
/// `other` (serial 3) for `other.test`; the subject of each is `CN = <name>`. Made by
/// `openssl` in a temp dir (`tests/support/pki.rs`).
struct Pki(support::pki::Pki);

impl std::ops::Deref for Pki {
    type Target = support::pki::Pki;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pki {
    /// `None` (the test skips) without `openssl` and `curl`, outside CI.
    fn make() -> Option<Self> {
        if !have_command("curl") {
            return None;
        }
        let pki = Self(support::pki::Pki::new()?);
        pki.ca("ca");
        pki.server("server", "ca", 2, "DNS:localhost, IP:127.0.0.1");
        pki.server("other", "ca", 3, "DNS:other.test");
        pki.server("server2", "ca", 5, "DNS:localhost, IP:127.0.0.1");
        // What the server is given: files that reloads re-read.
        pki.go_live("server");
        Some(pki)
    }

    /// Copies `<cert>.pem` and `<key>.key` over `live.pem` and `live.key`.
    fn install_pair(&self, cert: &str, key: &str) {
        std::fs::copy(self.path(&format!("{cert}.pem")), self.path("live.pem")).unwrap();
        std::fs::copy(self.path(&format!("{key}.key")), self.path("live.key")).unwrap();
    }

    /// Makes `<name>` the certificate the server reads (`live.pem`, `live.key`).
    fn go_live(&self, name: &str) {
        self.install(name, "live");
    }

    /// `live.*` by default, `other.*` for `other.test`.
    fn config(&self) -> TlsConfig {
        TlsConfig::from_pem_files(self.path("live.pem"), self.path("live.key"))
            .unwrap()
            .add_sni("other.test", self.path("other.pem"), self.path("other.key"))
            .unwrap()
    }
}

// === servers and clients ===

/// Answers `<path> sni=<name> alpn=<protocol>` from the request's `TlsInfo`, or
/// `<path> plain` without one.
fn app() -> Router {
    Router::new().fallback(get(|req: Request| async move {
        let path = req.uri().path().to_owned();
        match req.extensions().get::<TlsInfo>() {
            None => format!("{path} plain\n"),
            Some(tls) => format!(
                "{path} sni={} alpn={}\n",
                tls.sni().unwrap_or("-"),
                String::from_utf8_lossy(tls.alpn().unwrap_or(b"-"))
            ),
        }
    }))
}

/// A TLS server stopped on drop.
struct Running {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start<S>(server: Server, svc: S) -> Running
where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, move |_| svc.clone(), stopped));
    Running { addr, _stop: stop }
}

/// `curl https://<host>:<port><path>` trusting the CA only, `host` resolved to
/// 127.0.0.1, with `extra` arguments; the body and then the HTTP version.
async fn curl(pki: &Pki, host: &str, port: u16, path: &str, extra: &[&str]) -> String {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &resolve, "-w", "%{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subject of the certificate `openssl s_client` gets, with `-servername <sni>` or
/// no SNI at all.
async fn subject(port: u16, sni: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    subject_of(&text).unwrap_or_else(|| panic!("no subject in s_client's output:\n{text}"))
}

/// `CN = server` from s_client's `subject=CN = server` line.
fn subject_of(s_client: &str) -> Option<String> {
    s_client
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.trim().to_owned())
}

/// Reads `out` until what came contains `want`; everything read so far.
async fn read_until(out: &mut tokio::process::ChildStdout, got: &mut String, want: &str) {
    let mut buf = [0; 4096];
    let read = async {
        while !got.contains(want) {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "s_client ended before {want:?}:\n{got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no {want:?} within 20 s:\n{got}"));
}

// === tests ===

#[tokio::test]
async fn https_is_served_over_h2_or_http1_as_alpn_chose() {
    let Some(pki) = Pki::make() else { return };
    let server = start(Server::new().tls(pki.config()), app()).await;
    let port = server.addr.port();

    let h2 = curl(&pki, "localhost", port, "/a", &["--http2"]).await;
    assert_eq!(h2, "/a sni=localhost alpn=h2\n2");
    let h1 = curl(&pki, "localhost", port, "/b", &["--http1.1"]).await;
    assert_eq!(h1, "/b sni=localhost alpn=http/1.1\n1.1");
    // The certificate also carries 127.0.0.1, which clients send no SNI for.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg(format!("https://127.0.0.1:{port}/c"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/c sni=- alpn=h2\n");
}

#[tokio::test]
async fn sni_picks_the_certificate_and_others_get_the_default() {
    let Some(pki) = Pki::make() else { return };
    let server = start(Server::new().tls(pki.config()), app()).await;
    let port = server.addr.port();

    assert_eq!(subject(port, Some("other.test")).await, "CN = other");
    assert_eq!(subject(port, Some("OTHER.test")).await, "CN = other");
    assert_eq!(subject(port, Some("localhost")).await, "CN = server");
    assert_eq!(subject(port, Some("unknown.test")).await, "CN = server");
    assert_eq!(subject(port, None).await, "CN = server");
    // curl verifies the name: each name is served a certificate that carries it.
    let other = curl(&pki, "other.test", port, "/", &[]).await;
    assert_eq!(other, "/ sni=other.test alpn=h2\n2");
}

#[tokio::test]
async fn reload_serves_new_connections_the_new_certificate_and_keeps_open_ones() {
    let Some(pki) = Pki::make() else { return };
    let tls = pki.config();
    let server = start(Server::new().tls(tls.clone()), app()).await;
    let port = server.addr.port();

    // A kept-alive HTTP/1.1 connection, opened before the reload.
    let mut open = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start openssl s_client");
    let mut input = open.stdin.take().unwrap();
    let mut output = open.stdout.take().unwrap();
    let mut got = String::new();
    input
        .write_all(b"GET /before HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut output, &mut got, "/before sni=localhost alpn=-").await;
    assert_eq!(subject_of(&got).as_deref(), Some("CN = server"));

    pki.go_live("server2");
    tls.reload().unwrap();

    assert_eq!(subject(port, Some("localhost")).await, "CN = server2");
    assert_eq!(subject(port, Some("other.test")).await, "CN = other");
    let body = curl(&pki, "localhost", port, "/new", &[]).await;
    assert_eq!(body, "/new sni=localhost alpn=h2\n2");
    // The connection opened before still works, on its old certificate.
    input
        .write_all(b"GET /after HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut output, &mut got, "/after sni=localhost alpn=-").await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_certificate_and_returns_the_error() {
    let Some(pki) = Pki::make() else { return };
    let tls = pki.config();
    let server = start(Server::new().tls(tls.clone()), app()).await;
    let port = server.addr.port();

    // The new certificate with the old key.
    pki.install_pair("server2", "server");
    let err = tls.reload().unwrap_err();
    assert_eq!(err.kind(), CertificateErrorKind::KeyMismatch, "{err}");
    assert_eq!(err.path(), Some(pki.path("live.key").as_path()));
    assert_eq!(subject(port, Some("localhost")).await, "CN = server");

    // A certificate that is not PEM.
    std::fs::write(pki.path("live.pem"), "not a certificate").unwrap();
    let err = tls.reload().unwrap_err();
    assert_eq!(err.kind(), CertificateErrorKind::NoCertificate, "{err}");
    assert_eq!(subject(port, Some("localhost")).await, "CN = server");
    let body = curl(&pki, "localhost", port, "/", &[]).await;
    assert_eq!(body, "/ sni=localhost alpn=h2\n2");

    // Put right, it loads.
    pki.go_live("server2");
    tls.reload().unwrap();
    assert_eq!(subject(port, Some("localhost")).await, "CN = server2");
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let Some(pki) = Pki::make() else { return };
    let tls = pki.config().handshake_timeout(Duration::from_millis(300));
    // One connection at a time: the stalled client holds the only slot until it is closed.
    let server = start(Server::new().max_connections(1).tls(tls), app()).await;
    let port = server.addr.port();

    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let pki = pki;
        curl(&pki, "localhost", port, "/next", &[]).await
    });
    let mut buf = [0; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the server closed the stalled client within 10 s");
    assert_eq!(read.unwrap_or(0), 0, "closed without an answer");
    // Its slot went with it: the client waiting in the accept queue is served.
    assert_eq!(waiting.await.unwrap(), "/next sni=localhost alpn=h2\n2");
}

#[tokio::test]
async fn requests_over_tls_are_proxied_with_x_forwarded_proto_https() {
    let Some(pki) = Pki::make() else { return };
    let backend = TestServer::start(Router::new().fallback(get(|req: Request| async move {
        let h = req.headers();
        format!(
            "proto={:?} for={:?}",
            h["x-forwarded-proto"], h["x-forwarded-for"]
        )
    })))
    .await;
    let balance = Balance::builder()
        .backends([Backend::new(backend.addr.to_string())])
        .build(PooledEndpoints::<Incoming>::new())
        .unwrap();
    let gateway = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ProxyLayer::new())
        .service(balance);
    let gateway = ServiceBuilder::new()
        .map_response(|rsp: http::Response<_>| rsp.map(Body::new))
        .service(gateway);
    let tls = start(Server::new().tls(pki.config()), gateway.clone()).await;
    let plain = start(Server::new(), gateway).await;

    let over_tls = curl(&pki, "localhost", tls.addr.port(), "/", &["--http1.1"]).await;
    assert_eq!(over_tls, "proto=\"https\" for=\"127.0.0.1\"1.1");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("http://{}/", plain.addr))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "proto=\"http\" for=\"127.0.0.1\""
    );
}
