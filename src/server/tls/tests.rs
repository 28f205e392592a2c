//! Certificates made by the `openssl` CLI in a temp dir (a test without it says so and
//! returns, and fails under `CI=true`); handshakes over in-memory pipes with a rustls
//! client, the handshake timeout on Tokio's paused clock.

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    time::Instant,
};

use super::{certs::normalize_name, CertificateErrorKind as Kind, TlsConfig, TlsInfo};
use crate::server::conn::Limits;

// === certificates ===

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA; `server` for `localhost` (serial 2), `other` for `other.test` (3), `wild` for
    /// `*.wild.test` (4), `server2` for `localhost` again (5); all signed by the CA.
    fn make() -> Option<Self> {
        let found = Command::new("openssl").arg("version").output().is_ok();
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "openssl is required under CI=true (`.ci/run` installs it)"
            );
            eprintln!("skipped: openssl is not installed");
            return None;
        }
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.openssl(
            "req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout ca.key -out ca.pem -days 3650 -subj /CN=ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
        );
        pki.leaf("server", 2, "DNS:localhost, IP:127.0.0.1");
        pki.leaf("other", 3, "DNS:other.test");
        pki.leaf("wild", 4, "DNS:*.wild.test");
        pki.leaf("server2", 5, "DNS:localhost, IP:127.0.0.1");
        Some(pki)
    }

    fn openssl(&self, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn leaf(&self, name: &str, serial: u32, san: &str) {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("extendedKeyUsage = serverAuth\nsubjectAltName = {san}\n"),
        )
        .unwrap();
        self.openssl(&format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        self.openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} \
             -days 30 -extfile {name}.ext -out {name}.pem"
        ));
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The live copy's file (`pem` or `key`): what a config under reload reads.
    fn live(&self, ext: &str) -> PathBuf {
        self.path(&format!("live.{ext}"))
    }

    /// Copies certificate `name` and its key over the live files.
    fn put_live(&self, name: &str) {
        std::fs::copy(self.path(&format!("{name}.pem")), self.live("pem")).unwrap();
        std::fs::copy(self.path(&format!("{name}.key")), self.live("key")).unwrap();
    }

    fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    fn config(&self, name: &str) -> TlsConfig {
        TlsConfig::from_pem_files(
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
        .unwrap()
    }

    /// The DER of `<name>.pem`'s leaf.
    fn der(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// A client trusting the CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let mut config = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// The leaf certificate the default or a named entry would serve.
fn picked(config: &TlsConfig, sni: Option<&str>) -> CertificateDer<'static> {
    let certs = config.shared.resolver.certs.load();
    certs.pick(sni).cert[0].clone()
}

// === loading ===

#[test]
fn bad_input_is_a_typed_error() {
    let Some(pki) = Pki::make() else { return };
    let missing = TlsConfig::from_pem_files("/nonexistent/cert.pem", pki.path("server.key"));
    let err = missing.unwrap_err();
    assert_eq!(err.kind(), Kind::Read);
    assert_eq!(
        err.path(),
        Some(std::path::Path::new("/nonexistent/cert.pem"))
    );
    assert!(err
        .to_string()
        .starts_with("tls certificate (/nonexistent/cert.pem): cannot be read"));
    assert!(std::error::Error::source(&err).is_some());

    let key = pki.pem("server.key");
    let cert = pki.pem("server.pem");
    let cases: [(&[u8], &[u8], Kind); 6] = [
        (b"not pem at all", &key, Kind::NoCertificate),
        (&key, &key, Kind::NoCertificate),
        (&cert, &cert, Kind::NoKey),
        (&cert, &pki.pem("other.key"), Kind::KeyMismatch),
        (
            b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
            &key,
            Kind::Pem,
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &key,
            Kind::BadCertificate,
        ),
    ];
    for (cert, key, kind) in cases {
        let err = TlsConfig::from_pem(cert, key).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.path(), None);
    }
    let err = TlsConfig::from_pem(
        &cert,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert_eq!(err.kind(), Kind::UnsupportedKey, "{err}");

    let err = pki
        .config("server")
        .add_sni("other.test", pki.path("other.pem"), pki.path("server.key"))
        .unwrap_err();
    assert_eq!(err.kind(), Kind::KeyMismatch);
    assert_eq!(err.name(), Some("other.test"));
    assert_eq!(err.path(), Some(pki.path("server.key").as_path()));
    assert!(err.to_string().contains("for other.test"), "{err}");

    for name in ["", "*", "*.com", "a b.test", "10.0.0.1"] {
        let err = pki
            .config("server")
            .add_sni_pem(name, &pki.pem("other.pem"), &pki.pem("other.key"))
            .unwrap_err();
        assert_eq!(err.kind(), Kind::InvalidName, "{name:?}");
    }
}

#[test]
fn sni_names_are_dns_names_or_one_label_wildcards() {
    assert_eq!(
        normalize_name("API.Example.com.").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        normalize_name("*.Wild.test").as_deref(),
        Some("*.wild.test")
    );
    assert_eq!(normalize_name("localhost").as_deref(), Some("localhost"));
    for bad in [
        "", ".", "*", "*.", "*.com", "a.*.test", "a b", "10.0.0.1", "[::1]",
    ] {
        assert_eq!(normalize_name(bad), None, "{bad:?}");
    }
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let Some(pki) = Pki::make() else { return };
    let config = pki
        .config("server")
        .add_sni("Other.Test", pki.path("other.pem"), pki.path("other.key"))
        .unwrap()
        .add_sni_pem("*.wild.test", &pki.pem("wild.pem"), &pki.pem("wild.key"))
        .unwrap()
        // The exact name wins over the wildcard that also covers it.
        .add_sni(
            "exact.wild.test",
            pki.path("other.pem"),
            pki.path("other.key"),
        )
        .unwrap();
    assert_eq!(picked(&config, None), pki.der("server"));
    assert_eq!(picked(&config, Some("other.test")), pki.der("other"));
    assert_eq!(picked(&config, Some("a.wild.test")), pki.der("wild"));
    assert_eq!(picked(&config, Some("exact.wild.test")), pki.der("other"));
    // One label deep only, and the wildcard's base itself is not covered.
    assert_eq!(picked(&config, Some("a.b.wild.test")), pki.der("server"));
    assert_eq!(picked(&config, Some("wild.test")), pki.der("server"));
    assert_eq!(picked(&config, Some("unknown.test")), pki.der("server"));
    let debug = format!("{config:?}");
    assert!(
        debug.contains("\"*.wild.test\", \"exact.wild.test\", \"other.test\""),
        "{debug}"
    );

    // Adding a name again replaces its certificate.
    let config = config
        .add_sni(
            "other.test",
            pki.path("server2.pem"),
            pki.path("server2.key"),
        )
        .unwrap();
    assert_eq!(picked(&config, Some("other.test")), pki.der("server2"));
}

#[test]
fn reload_swaps_all_or_nothing() {
    let Some(pki) = Pki::make() else { return };
    let live = |f: &str| pki.live(f);
    let put = |name: &str| pki.put_live(name);
    put("server");
    std::fs::copy(pki.path("other.pem"), pki.path("sni.pem")).unwrap();
    std::fs::copy(pki.path("other.key"), pki.path("sni.key")).unwrap();
    let config = TlsConfig::from_pem_files(live("pem"), live("key"))
        .unwrap()
        .add_sni("other.test", pki.path("sni.pem"), pki.path("sni.key"))
        .unwrap();
    // A clone (the one a server holds) sees what the original reloads.
    let served = config.clone();

    put("server2");
    config.reload().unwrap();
    assert_eq!(picked(&served, None), pki.der("server2"));
    assert_eq!(picked(&served, Some("other.test")), pki.der("other"));

    // A good default and a bad SNI entry: nothing changes.
    put("server");
    std::fs::write(pki.path("sni.key"), pki.pem("wild.key")).unwrap();
    let err = config.reload().unwrap_err();
    assert_eq!(err.kind(), Kind::KeyMismatch);
    assert_eq!(err.name(), Some("other.test"));
    assert_eq!(picked(&served, None), pki.der("server2"));

    // A missing file, an unparsable certificate: the same.
    std::fs::copy(pki.path("other.key"), pki.path("sni.key")).unwrap();
    std::fs::remove_file(live("key")).unwrap();
    assert_eq!(config.reload().unwrap_err().kind(), Kind::Read);
    std::fs::copy(pki.path("server.key"), live("key")).unwrap();
    std::fs::write(live("pem"), "garbage").unwrap();
    assert_eq!(config.reload().unwrap_err().kind(), Kind::NoCertificate);
    assert_eq!(picked(&served, None), pki.der("server2"));

    put("server");
    config.reload().unwrap();
    assert_eq!(picked(&served, None), pki.der("server"));
}

#[test]
fn files_read_serve_only_once_applied_and_as_they_were_read() {
    let Some(pki) = Pki::make() else { return };
    let live = |f: &str| pki.live(f);
    let put = |name: &str| pki.put_live(name);
    put("server");
    let config = TlsConfig::from_pem_files(live("pem"), live("key")).unwrap();
    put("server2");
    let read = config.read_files().unwrap();
    // Not in use yet.
    assert_eq!(picked(&config, None), pki.der("server"));
    // The files change again (or break) after the read: what was read is what serves.
    std::fs::write(live("pem"), "garbage").unwrap();
    // A name added meanwhile keeps its certificate.
    let config = config
        .add_sni("other.test", pki.path("other.pem"), pki.path("other.key"))
        .unwrap();
    read.apply();
    assert_eq!(picked(&config, None), pki.der("server2"));
    assert_eq!(picked(&config, Some("other.test")), pki.der("other"));
    // A read that fails is the error `reload` gives, and changes nothing.
    assert_eq!(config.read_files().unwrap_err().kind(), Kind::NoCertificate);
    assert_eq!(picked(&config, None), pki.der("server2"));
}

#[tokio::test]
async fn watch_reloads_when_a_file_changes_and_keeps_going_after_a_bad_one() {
    let Some(pki) = Pki::make() else { return };
    let (pem, key) = (pki.live("pem"), pki.live("key"));
    std::fs::copy(pki.path("server.pem"), &pem).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let config = TlsConfig::from_pem_files(&pem, &key).unwrap();
    let guard = config.watch(Duration::from_millis(20)).unwrap();
    let until = |want: CertificateDer<'static>| {
        let config = config.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while picked(&config, None) != want {
                assert!(Instant::now() < deadline, "no reload within 10 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // A certificate written before its key: refused (the old one stays)...
    std::fs::copy(pki.path("server2.pem"), &pem).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(picked(&config, None), pki.der("server"));
    // ...until the key follows.
    std::fs::copy(pki.path("server2.key"), &key).unwrap();
    until(pki.der("server2")).await;
    assert!(!guard.is_finished());
    drop(guard);
}

// === handshakes ===

fn limits() -> Arc<Limits> {
    Arc::new(Limits {
        header: Duration::from_secs(60),
        keepalive: Duration::from_secs(75),
    })
}

/// Answers with the request's `TlsInfo` as `sni alpn`.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let info = req.extensions().get::<TlsInfo>().cloned();
    let text = match info {
        None => "plain".to_owned(),
        Some(i) => format!(
            "{} {}",
            i.sni().unwrap_or("-"),
            String::from_utf8_lossy(i.alpn().unwrap_or(b"-"))
        ),
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Serves one in-memory connection with `config`; the client's end and the stop switch.
fn serve(config: &TlsConfig) -> (DuplexStream, tokio::sync::watch::Sender<bool>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accept = config.accept(Arc::new(auto::Builder::new(TokioExecutor::new())), limits());
    tokio::spawn(accept.serve(
        server,
        None,
        tower::service_fn(app),
        stopped,
        "127.0.0.1:1".parse().unwrap(),
    ));
    (client, stop)
}

async fn read_all(mut io: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut got = Vec::new();
    let _ = io.read_to_end(&mut got).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn requests_carry_the_sni_name_and_alpn_protocol() {
    let Some(pki) = Pki::make() else { return };
    let config = pki
        .config("server")
        .add_sni("other.test", pki.path("other.pem"), pki.path("other.key"))
        .unwrap();
    for (name, alpn, answer) in [
        ("other.test", &[&b"http/1.1"[..]][..], "other.test http/1.1"),
        ("localhost", &[][..], "localhost -"),
    ] {
        let (io, _stop) = serve(&config);
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = pki.client(alpn).connect(server_name, io).await.unwrap();
        let (_, conn) = tls.get_ref();
        let want = if name == "other.test" {
            "other"
        } else {
            "server"
        };
        assert_eq!(conn.peer_certificates().unwrap()[0], pki.der(want));
        tls.write_all(
            format!("GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let got = read_all(&mut tls).await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(got.ends_with(answer), "{got}");
    }
}

#[tokio::test]
async fn the_protocol_alpn_chose_is_the_one_spoken() {
    let Some(pki) = Pki::make() else { return };
    let config = pki.config("server");
    let localhost = || ServerName::try_from("localhost").unwrap();
    // h2 chosen, HTTP/1 sent: closed without an answer.
    let (io, _stop) = serve(&config);
    let mut tls = pki
        .client(&[b"h2", b"http/1.1"])
        .connect(localhost(), io)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(&mut tls).await, "");
    // http/1.1 chosen, the HTTP/2 preface sent: closed as well.
    let (io, _stop) = serve(&config);
    let mut tls = pki
        .client(&[b"http/1.1"])
        .connect(localhost(), io)
        .await
        .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(&mut tls).await, "");
    // No protocol in common: refused in the handshake.
    let (io, _stop) = serve(&config);
    let refused = pki.client(&[b"spdy/3"]).connect(localhost(), io).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn h2_over_alpn_is_served() {
    let Some(pki) = Pki::make() else { return };
    let (io, _stop) = serve(&pki.config("server"));
    let tls = pki
        .client(&[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "localhost h2");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_is_closed_at_the_timeout() {
    let Some(pki) = Pki::make() else { return };
    let timeout = Duration::from_millis(300);
    let config = pki.config("server").handshake_timeout(timeout);
    // Sends nothing; and sends half a ClientHello.
    for sent in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]] {
        let (mut io, _stop) = serve(&config);
        let start = Instant::now();
        io.write_all(sent).await.unwrap();
        let mut buf = [0; 64];
        let n = io.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert_eq!(start.elapsed(), timeout);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_handshakes_at_once() {
    let Some(pki) = Pki::make() else { return };
    let (mut io, stop) = serve(&pki.config("server"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    stop.send(true).unwrap();
    let mut buf = [0; 64];
    assert_eq!(io.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(start.elapsed(), Duration::ZERO);
}
