//! The server loop's client limits with real sockets on loopback: hundreds of stalled
//! clients while normal requests are served, the connection cap.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use axum::{routing::get, Router};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_lb::server::Server;

use crate::support;

/// Starts `server` over a tiny app; returns its address and how many connections it
/// accepted so far.
async fn start(server: Server) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let app = Router::new().route("/", get(|| async { "hi" }));
    tokio::spawn(server.serve(
        listener,
        move |_peer| {
            count.fetch_add(1, SeqCst);
            app.clone()
        },
        std::future::pending::<()>(),
    ));
    (addr, accepted)
}

/// One GET on a connection; the whole answer.
async fn get_on(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 512];
    while !got.ends_with(b"hi") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_answered_408_and_closed_while_others_are_served() {
    let (addr, _) = start(Server::new().header_timeout(Duration::from_secs(2))).await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ")
            .await
            .unwrap();
        stalled.push(c);
    }
    // Normal clients are served at once, beside them.
    for _ in 0..50 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), get_on(&mut c))
            .await
            .expect("served promptly");
        assert!(answer.starts_with("HTTP/1.1 200"));
    }
    // Every stalled client gets its 408 and the connection closes.
    let t0 = tokio::time::Instant::now();
    for mut c in stalled {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got))
            .await
            .expect("closed by the header timeout")
            .unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    eprintln!(
        "measured: 300 stalled clients closed within {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_ones_wait_for_a_free_slot() {
    let (addr, accepted) = start(Server::new().max_connections(4)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    support::wait_for(|| accepted.load(SeqCst) == 4).await;
    // The fifth connects (the kernel queues it) and asks, but is not accepted.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    fifth
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // The server is alive and serving the connections it holds ...
    assert!(get_on(&mut held[0]).await.starts_with("HTTP/1.1 200"));
    // ... and still has not taken the fifth.
    assert_eq!(accepted.load(SeqCst), 4);
    let mut buf = [0; 64];
    assert!(
        matches!(fifth.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    );
    // A slot frees up: the fifth is served.
    drop(held.pop());
    let mut got = Vec::new();
    while !got.ends_with(b"hi") {
        let n = tokio::time::timeout(Duration::from_secs(10), fifth.read(&mut buf))
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(accepted.load(SeqCst), 5);
}
