//! Running the gateway binary, and an HTTP client for it.
#![allow(unreachable_pub)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderMap, Method, StatusCode},
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tower-lb-gateway")
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("BACKENDS")
            .env_remove("LISTEN")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gateway");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            // Keep draining, so the gateway never writes into a closed pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .expect("gateway printed its address")
            .expect("reader");
        let (scheme, addr) = line
            .trim()
            .rsplit_once(' ')
            .and_then(|(_, url)| url.split_once("://"))
            .and_then(|(scheme, a)| Some((scheme.to_owned(), a.parse().ok()?)))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            scheme,
        }
    }

    /// `http://` or `https://` (with `--tls-cert`), the address, and `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = c.request(req.body(body).unwrap()).await.expect("response");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(c: &TestClient, url: &str) -> (StatusCode, Bytes) {
    let (s, _, b) = send(c, Method::GET, url, &[], Body::empty()).await;
    (s, b)
}
