//! TLS on both sides of the gateway, against peers this project did not write: curl and
//! `openssl s_client` as clients of the TLS listener, Python `ssl` servers (OpenSSL) as
//! HTTPS backends, certificates made by the `openssl` command line.
//!
//! Without `openssl`, `curl` or `python3` a test says so and returns; under `CI=true` it
//! fails.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::{self, gateway_bin, Gateway};
use crate::support::{have_command, have_python, named, pki::Pki, python_peer, Peer, TestServer};

/// The certificates of these tests: `ca` signs the gateway's own (`gw` for localhost and
/// 127.0.0.1, `api` for api.test, `renewed` as gw's next one); `backend-ca` signs the
/// backends' (`backend`); `rogue-ca`, trusted by no one, signs `rogue`; `client-ca` signs
/// the gateway's client certificate `client`.
fn pki() -> Option<Pki> {
    if !have_command("curl") || !have_python(&["ssl"]) {
        return None;
    }
    let pki = Pki::new()?;
    for ca in ["ca", "backend-ca", "rogue-ca", "client-ca"] {
        pki.ca(ca);
    }
    let local = "DNS:localhost, IP:127.0.0.1";
    pki.server("gw", "ca", 2, local);
    pki.server("api", "ca", 3, "DNS:api.test");
    pki.server("renewed", "ca", 4, local);
    pki.server("backend", "backend-ca", 5, local);
    pki.server("rogue", "rogue-ca", 6, local);
    pki.client("client", "client-ca", 7);
    Some(pki)
}

/// `tests/peers/tls_server.py` serving `cert` as `name`, logging to `<name>.log`.
async fn https_backend(pki: &Pki, cert: &str, name: &str, extra: &[&str]) -> Peer {
    let (pem, key, log) = (
        pki.file(&format!("{cert}.pem")),
        pki.file(&format!("{cert}.key")),
        pki.file(&format!("{name}.log")),
    );
    let mut args = vec![
        pem.as_str(),
        key.as_str(),
        "--log",
        log.as_str(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    python_peer("tls_server.py", &args).await
}

/// Lines of backend `name`'s log that start with `prefix`.
fn logged(pki: &Pki, name: &str, prefix: &str) -> usize {
    std::fs::read_to_string(pki.path(&format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// One curl run trusting `ca.pem`: its exit status and standard output.
fn curl(pki: &Pki, args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &pki.file("ca.pem")])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `/status` as JSON, over HTTPS.
fn status(pki: &Pki, gw: &Gateway) -> serde_json::Value {
    let (ok, body) = curl(pki, &[&gw.url("/status")]);
    assert!(ok, "GET /status failed");
    serde_json::from_str(&body).expect("JSON status")
}

/// The subject of the certificate the gateway serves for `sni`, as `openssl s_client`
/// prints it.
fn served_subject(gw: &Gateway, sni: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &gw.addr.to_string(),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .replace(' ', "")
}

/// Polls `cond` every 50 ms for up to 30 s; whether it came to hold.
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn sighup(gw: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .expect("kill -HUP")
        .success();
    assert!(ok, "kill -HUP failed");
}

/// The two-command deployment of the README: the gateway terminates TLS (HTTP/1.1 and
/// h2 by ALPN) in front of two HTTPS backends signed by a private CA.
#[tokio::test(flavor = "multi_thread")]
async fn terminates_tls_in_front_of_https_backends() {
    let Some(pki) = pki() else { return };
    let b1 = https_backend(&pki, "backend", "b1", &[]).await;
    let b2 = https_backend(&pki, "backend", "b2", &[]).await;
    let (u1, u2) = (
        format!("https://127.0.0.1:{},weight=1", b1.port),
        // A name: it is the SNI sent and the name the certificate must carry.
        format!("https://localhost:{}", b2.port),
    );
    let (cert, key, ca) = (
        pki.file("gw.pem"),
        pki.file("gw.key"),
        pki.file("backend-ca.pem"),
    );
    let gw = Gateway::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--backend-ca",
        &ca,
        "--strategy",
        "round-robin",
        "--backend",
        &u1,
        "--backend",
        &u2,
    ])
    .await;
    assert_eq!(gw.scheme, "https");

    // Six requests on one curl connection per protocol, headers included.
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")] {
        let mut args = vec![flag, "-i"];
        let url = gw.url("/hello");
        args.extend(std::iter::repeat_n(url.as_str(), 6));
        let (ok, out) = curl(&pki, &args);
        assert!(ok, "curl {flag}: {out}");
        let heads = out.matches(&format!("{version} 200")).count();
        assert_eq!(heads, 6, "{flag}: {out}");
        let https = out
            .to_ascii_lowercase()
            .matches("x-seen-forwarded-proto: https")
            .count();
        assert_eq!(
            https, 6,
            "every backend was told the client used https: {out}"
        );
        assert_eq!(out.matches("b1 /hello").count(), 3, "{out}");
        assert_eq!(out.matches("b2 /hello").count(), 3, "{out}");
    }
    assert_eq!(
        logged(&pki, "b1", "REQUEST GET /hello sni=-"),
        6,
        "no SNI for an IP"
    );
    assert_eq!(logged(&pki, "b2", "REQUEST GET /hello sni=localhost"), 6);

    // The listener speaks TLS only: plain HTTP to it gets no answer.
    let plain = format!("http://{}/hello", gw.addr);
    let (ok, _) = curl(&pki, &[&plain]);
    assert!(!ok, "plain HTTP was answered on the TLS listener");
}

/// A backend whose certificate no trusted CA signed is never sent a request: with a good
/// one beside it every request is served there; alone, its client gets a 502 that says
/// why without its address.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_backend_gets_no_request() {
    let Some(pki) = pki() else { return };
    let good = https_backend(&pki, "backend", "good", &[]).await;
    let rogue = https_backend(&pki, "rogue", "rogue", &[]).await;
    let ca = pki.file("backend-ca.pem");
    let (g, r) = (
        format!("https://127.0.0.1:{}", good.port),
        format!("https://127.0.0.1:{}", rogue.port),
    );
    let gw = Gateway::start(&[
        "--backend-ca",
        &ca,
        "--strategy",
        "round-robin",
        "--backend",
        &g,
        "--backend",
        &r,
    ])
    .await;
    let c = common::client();
    for _ in 0..10 {
        let (s, body) = common::get(&c, &gw.url("/x")).await;
        assert_eq!(s, 200, "{body:?}");
        assert!(body.starts_with(b"good /x"), "{body:?}");
    }
    assert!(logged(&pki, "rogue", "HANDSHAKE-FAILED") >= 1);
    assert_eq!(logged(&pki, "rogue", "REQUEST"), 0);
    assert_eq!(logged(&pki, "good", "REQUEST"), 10);
    drop(gw);

    let alone = Gateway::start(&["--backend-ca", &ca, "--backend", &r]).await;
    let (s, headers, body) = common::send(
        &c,
        http::Method::GET,
        &alone.url("/x"),
        &[],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(s, 502, "{body:?}");
    let proxy_status = headers["proxy-status"].to_str().unwrap();
    assert!(
        proxy_status.contains("tls_certificate_error"),
        "{proxy_status}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(&rogue.port.to_string()), "{text}");
    assert_eq!(logged(&pki, "rogue", "REQUEST"), 0);
}

/// mTLS: a backend that requires a client certificate serves the gateway that presents
/// one, and refuses (502, no request served) the one that does not.
#[tokio::test(flavor = "multi_thread")]
async fn presents_a_client_certificate_to_backends_that_require_one() {
    let Some(pki) = pki() else { return };
    let client_ca = pki.file("client-ca.pem");
    let strict = https_backend(&pki, "backend", "strict", &["--client-ca", &client_ca]).await;
    let url = format!("https://localhost:{}", strict.port);
    let (ca, cert, key) = (
        pki.file("backend-ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let with = Gateway::start(&[
        "--backend-ca",
        &ca,
        "--backend-client-cert",
        &cert,
        "--backend-client-key",
        &key,
        "--backend",
        &url,
    ])
    .await;
    let c = common::client();
    let (s, body) = common::get(&c, &with.url("/m")).await;
    assert_eq!(s, 200, "{body:?}");
    assert!(body.starts_with(b"strict /m"), "{body:?}");
    assert_eq!(logged(&pki, "strict", "REQUEST"), 1);

    let without = Gateway::start(&["--backend-ca", &ca, "--backend", &url]).await;
    let (s, body) = common::get(&c, &without.url("/m")).await;
    assert_eq!(s, 502, "{body:?}");
    assert_eq!(
        logged(&pki, "strict", "REQUEST"),
        1,
        "no request without the certificate"
    );
}

/// Bad TLS flags stop the start with one line naming the flag (and `--check` says so).
#[tokio::test]
async fn bad_certificates_stop_the_start() {
    let Some(pki) = pki() else { return };
    let (gw_pem, gw_key, api_key) = (pki.file("gw.pem"), pki.file("gw.key"), pki.file("api.key"));
    let missing = pki.file("missing.pem");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--tls-cert", &missing, "--tls-key", &gw_key],
            "--tls-cert",
        ),
        // A key that is not the certificate's.
        (
            &["--tls-cert", &gw_pem, "--tls-key", &api_key],
            "--tls-cert",
        ),
        (&["--tls-cert", &gw_pem], "--tls-key"),
        (&["--backend-ca", &gw_key], "--backend-ca"),
        (
            &[
                "--backend-client-cert",
                &gw_pem,
                "--backend-client-key",
                &api_key,
            ],
            "--backend-client-cert",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(gateway_bin())
            .args(["--check", "--backend", "127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Writes `text` to `path` whole (a reader never sees half a file).
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Certificates chosen by SNI from the configuration file, and reloaded by SIGHUP without
/// a restart and without closing a kept-alive connection; a broken certificate file keeps
/// the one in use and the reload is reported failed.
#[tokio::test(flavor = "multi_thread")]
async fn sni_certificates_from_the_config_file_reload_on_sighup() {
    let Some(pki) = pki() else { return };
    let backend = TestServer::start(named("plain")).await;
    pki.install("gw", "live");
    let config = pki.path("gateway.toml");
    save(
        &config,
        &format!(
            "tls-cert = \"live.pem\"\ntls-key = \"live.key\"\n\n\
             [[tls-sni]]\nname = \"api.test\"\ncert = \"api.pem\"\nkey = \"api.key\"\n\n\
             [[backend]]\nurl = \"{}\"\n",
            backend.addr
        ),
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]).await;
    let port = gw.addr.port();
    // curl checks the name: each succeeds only with the certificate made for it.
    let api = format!("api.test:{port}:127.0.0.1");
    let (ok, body) = curl(
        &pki,
        &["--resolve", &api, &format!("https://api.test:{port}/")],
    );
    assert!(ok && body == "plain", "api.test: {body}");
    let local = format!("https://localhost:{port}/");
    let (ok, body) = curl(
        &pki,
        &["--resolve", &format!("localhost:{port}:127.0.0.1"), &local],
    );
    assert!(ok && body == "plain", "localhost: {body}");
    assert!(served_subject(&gw, "api.test").contains("CN=api"));
    assert!(served_subject(&gw, "localhost").contains("CN=gw"));

    // A kept-alive connection made before the renewal.
    let mut kept = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &gw.addr.to_string()])
        .args(["-servername", "localhost", "-CAfile", &pki.file("ca.pem")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client");
    let mut stdin = kept.stdin.take().unwrap();
    let mut stdout = BufReader::new(kept.stdout.take().unwrap());
    let request = b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stdin.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stdout).await, "plain");

    // Renewal: new files, SIGHUP; new handshakes get the new certificate.
    pki.install("renewed", "live");
    sighup(&gw);
    assert!(until(|| status(&pki, &gw)["config"]["generation"] == 2).await);
    assert!(served_subject(&gw, "localhost").contains("CN=renewed"));
    assert!(served_subject(&gw, "api.test").contains("CN=api"));
    // The old connection still serves.
    stdin
        .write_all(b"GET /two HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stdout).await, "plain");

    // A broken certificate: the reload fails whole, the certificate in use stays.
    std::fs::write(
        pki.path("live.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    sighup(&gw);
    assert!(until(|| status(&pki, &gw)["config"]["failed_reloads"] == 1).await);
    let s = status(&pki, &gw);
    assert_eq!(s["config"]["generation"], 2);
    let error = s["config"]["last_reload_error"].as_str().unwrap();
    assert!(error.contains("--tls-cert"), "{error}");
    assert!(served_subject(&gw, "localhost").contains("CN=renewed"));
    let (ok, body) = curl(
        &pki,
        &["--resolve", &format!("localhost:{port}:127.0.0.1"), &local],
    );
    assert!(ok && body == "plain", "after a bad reload: {body}");
}

/// Reads one HTTP/1.1 response with a `content-length` and returns its body.
async fn read_response(r: &mut BufReader<tokio::process::ChildStdout>) -> String {
    let read = async {
        let mut length = 0;
        loop {
            let mut line = String::new();
            assert!(
                r.read_line(&mut line).await.unwrap() > 0,
                "connection closed"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response within 30 s")
}
