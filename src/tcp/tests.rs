use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::ServiceExt;

use super::*;
use crate::{
    balance::strategy::{LeastConn, RoundRobin},
    error::{is_connect_error, ConnectFailed, EndpointError},
    Backend, Balance,
};

/// A backend that writes `name` and a newline, then echoes until the client closes.
async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A port nothing listens on.
async fn refused() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn req() -> TcpRequest {
    TcpRequest::new(
        "192.0.2.1:40000".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
    )
}

#[tokio::test]
async fn a_connection_counts_as_load_until_dropped() {
    let a = named_backend("a").await;
    let balance = Balance::builder()
        .policy(TcpPolicy::new())
        .backends([Backend::new(a)])
        .build(TcpEndpoints::new())
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = balance.clone().oneshot(req()).await.unwrap();
        let mut hello = [0u8; 2];
        c.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"a\n");
        conns.push(c);
    }
    assert_eq!(balance.stats().backends[0].in_flight, 3);
    assert_eq!(balance.stats().backends[0].requests, 3);
    drop(conns.pop());
    assert_eq!(balance.stats().backends[0].in_flight, 2);
    let (stream, guard) = conns.pop().unwrap().into_parts();
    drop(stream);
    assert_eq!(balance.stats().backends[0].in_flight, 2);
    drop(guard);
    assert_eq!(balance.stats().backends[0].in_flight, 1);
}

#[tokio::test]
async fn least_conn_spreads_open_connections() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let balance = Balance::builder()
        .strategy(LeastConn::new())
        .policy(TcpPolicy::new())
        .backends([a, b].map(Backend::new))
        .build(TcpEndpoints::new())
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(balance.clone().oneshot(req()).await.unwrap());
    }
    let stats = balance.stats();
    assert_eq!(stats.backends[0].in_flight, 3);
    assert_eq!(stats.backends[1].in_flight, 3);
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error_retried_elsewhere() {
    let (a, down) = (named_backend("a").await, refused().await);
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .policy(TcpPolicy::new())
        .retries(1)
        .backends([down, a].map(Backend::new))
        .build(TcpEndpoints::new())
        .unwrap();
    for _ in 0..4 {
        let mut c = balance.clone().oneshot(req()).await.unwrap();
        let mut hello = [0u8; 2];
        c.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"a\n");
    }
    let stats = balance.stats();
    let down = stats.backends.iter().find(|s| s.key == down).unwrap();
    assert!(down.failures >= 1, "{down:?}");
    assert!(down.last_failure.is_some());
}

#[tokio::test]
async fn an_unresolvable_host_is_a_connect_failure() {
    // `.invalid` never resolves (RFC 6761); without DNS at all, the connect timeout ends
    // the lookup: a connect failure either way.
    let balance = Balance::builder()
        .policy(TcpPolicy::new())
        .backends([Backend::new("no-such-host.invalid:6379".to_string())])
        .build(TcpEndpoints::new().connect_timeout(Duration::from_secs(2)))
        .unwrap();
    let err = balance.clone().oneshot(req()).await.unwrap_err();
    let failed = err
        .downcast_ref::<EndpointError>()
        .expect("an endpoint error");
    assert!(failed.inner().is::<ConnectFailed>(), "{err}");
    assert!(is_connect_error(&*err));
    assert_eq!(balance.stats().backends[0].failures, 1);
}

#[tokio::test]
async fn a_bad_key_is_refused_at_build() {
    let err = Balance::builder()
        .policy(TcpPolicy::new())
        .backends([Backend::new("redis-without-port")])
        .build(TcpEndpoints::new())
        .unwrap_err();
    assert!(
        matches!(err, crate::error::ConfigError::Make { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn serve_closes_a_client_no_backend_takes() {
    let down = refused().await;
    let balance = Balance::builder()
        .policy(TcpPolicy::new())
        .retries(2)
        .backends([Backend::new(down)])
        .build(TcpEndpoints::new())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, balance.clone(), stopped));
    let mut client = TcpStream::connect(front).await.unwrap();
    let mut got = Vec::new();
    // Closed without a byte (or reset).
    let _ = client.read_to_end(&mut got).await;
    assert!(got.is_empty());
    assert!(balance.stats().backends[0].failures >= 1);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_writes_the_proxy_header_then_splices() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            line.push(byte[0]);
        }
        s.write_all(b"hi").await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        (String::from_utf8(line).unwrap(), rest)
    });
    let balance = Balance::builder()
        .policy(TcpPolicy::new())
        .backends([Backend::new(backend_addr)])
        .build(TcpEndpoints::new().proxy_protocol(ProxyProtocol::V1))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Proxy::new().idle_timeout(Duration::from_secs(30)).serve(
        listener,
        balance.clone(),
        stopped,
    ));
    let mut client = TcpStream::connect(front).await.unwrap();
    let me = client.local_addr().unwrap();
    let mut hi = [0u8; 2];
    client.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi");
    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    let (line, rest) = seen.await.unwrap();
    assert_eq!(
        line,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            me.port(),
            front.port()
        )
    );
    assert_eq!(rest, b"bye");
    let mut end = Vec::new();
    client.read_to_end(&mut end).await.unwrap();
    assert!(end.is_empty());
    wait_for(|| balance.stats().backends[0].in_flight == 0).await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_then_closes_what_is_left() {
    let a = named_backend("a").await;
    let balance = Balance::builder()
        .policy(TcpPolicy::new())
        .backends([Backend::new(a)])
        .build(TcpEndpoints::new())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Proxy::new()
            .drain_timeout(Duration::from_millis(100))
            .serve(listener, balance.clone(), stopped),
    );
    let mut client = TcpStream::connect(front).await.unwrap();
    let mut hello = [0u8; 2];
    client.read_exact(&mut hello).await.unwrap();
    let _ = stop.send(());
    // The open connection outlives the drain timeout: it is closed.
    server.await.unwrap().unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    wait_for(|| balance.stats().backends[0].in_flight == 0).await;
    assert!(TcpStream::connect(front).await.is_err());
}

#[cfg(feature = "health-passive")]
#[tokio::test]
async fn passive_health_ejects_a_backend_whose_connects_fail() {
    use crate::{balance::Status, health::passive::Window};
    let (a, down) = (named_backend("a").await, refused().await);
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .policy(TcpPolicy::new())
        .retries(1)
        .backends([down, a].map(Backend::new))
        .build(TcpEndpoints::new().passive_health(Window::new().max_fails(1)))
        .unwrap();
    for _ in 0..6 {
        balance.clone().oneshot(req()).await.unwrap();
    }
    let stats = balance.stats();
    let down = stats.backends.iter().find(|s| s.key == down).unwrap();
    // Ejected at the first failure: no connect tried it again.
    assert_eq!((down.failures, down.ejections), (1, 1), "{down:?}");
    assert!(matches!(down.status, Status::Ejected { .. }), "{down:?}");
}

/// Compiles: `serve` can be spawned whatever the key type, also over an endpoint stack
/// whose error is a `BoxError` (an endpoint timeout layer).
#[allow(dead_code)]
fn serve_spawns_with_any_key(
    a: Balance<&'static str, TcpEndpoint, TcpPolicy>,
    b: Balance<String, TcpEndpoint, TcpPolicy>,
    c: Balance<SocketAddr, tower::timeout::Timeout<TcpEndpoint>, TcpPolicy>,
    l1: TcpListener,
    l2: TcpListener,
    l3: TcpListener,
) {
    tokio::spawn(serve(l3, c, std::future::pending::<()>()));
    tokio::spawn(serve(l1, a, std::future::pending::<()>()));
    tokio::spawn(serve(l2, b, std::future::pending::<()>()));
}
