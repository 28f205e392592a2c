//! The client limits on Tokio's paused clock, over in-memory connections: every deadline
//! is checked to the nanosecond by letting the clock jump to the server's next timer.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    time::Instant,
};

use super::conn::{Io, Limits, Serving};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const HEADER: Duration = Duration::from_secs(60);
const KEEPALIVE: Duration = Duration::from_secs(75);

/// `/stream` answers four chunks 50 s apart; anything else answers `hi`.
async fn app(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/stream" {
        let chunks = futures_util::stream::unfold(0, |n| async move {
            if n == 4 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(50)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from("chunk\n"))),
                n + 1,
            ))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))));
    }
    Ok(Response::new(Full::new(Bytes::from("hi")).boxed()))
}

/// One served connection; the client's end, and the server's shutdown switch.
fn connect() -> (DuplexStream, tokio::sync::watch::Sender<bool>) {
    connect_to(tower::service_fn(app))
}

/// One connection served by `svc`.
fn connect_to<S>(svc: S) -> (DuplexStream, tokio::sync::watch::Sender<bool>)
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<crate::BoxError> + Send,
{
    let limits = Arc::new(Limits {
        header: HEADER,
        keepalive: KEEPALIVE,
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = Serving::new(
        &builder,
        Io::new(server, None, limits.clone()),
        svc,
        limits,
        stopped,
        "127.0.0.1:1".parse().unwrap(),
    );
    tokio::spawn(serving);
    (client, stop)
}

/// Reads one `hi` response (its length is known).
async fn read_hi(client: &mut DuplexStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    while !got.ends_with(b"\r\n\r\nhi") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// Reads until the server closes; returns what came, and when the close came.
async fn read_to_close(client: &mut DuplexStream) -> (String, Instant) {
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

#[tokio::test(start_paused = true)]
async fn a_half_sent_head_gets_408_at_the_header_timeout() {
    let (mut client, _stop) = connect();
    let t0 = Instant::now();
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let (got, at) = read_to_close(&mut client).await;
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
    assert_eq!(at - t0, HEADER);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_nothing_is_closed_without_an_answer() {
    let (mut client, _stop) = connect();
    let t0 = Instant::now();
    let (got, at) = read_to_close(&mut client).await;
    assert_eq!(got, "");
    assert_eq!(at - t0, HEADER);
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_within_the_timeout_is_served() {
    let (mut client, _stop) = connect();
    client.write_all(b"GET / HT").await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    client
        .write_all(b"TP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_hi(&mut client).await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_closes_at_the_keepalive_timeout() {
    let (mut client, _stop) = connect();
    for _ in 0..3 {
        client.write_all(GET).await.unwrap();
        read_hi(&mut client).await;
        // Idle for less than the keep-alive timeout: still open.
        tokio::time::sleep(KEEPALIVE - Duration::from_secs(1)).await;
    }
    client.write_all(GET).await.unwrap();
    read_hi(&mut client).await;
    let t0 = Instant::now();
    let (got, at) = read_to_close(&mut client).await;
    assert_eq!(got, "", "a graceful close, no 408");
    assert_eq!(at - t0, KEEPALIVE);
}

/// The header timeout of a request begun on a kept-alive connection runs from its first
/// byte, even though that is earlier than the idle timeout then armed.
#[tokio::test(start_paused = true)]
async fn the_next_request_head_has_the_header_timeout_too() {
    let (mut client, _stop) = connect();
    client.write_all(GET).await.unwrap();
    read_hi(&mut client).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (got, at) = read_to_close(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert_eq!(at - t0, HEADER);
}

#[tokio::test(start_paused = true)]
async fn a_long_response_is_not_cut_by_either_timeout() {
    let (mut client, _stop) = connect();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    // Chunked: the body ends with the zero-length chunk.
    while !got.ends_with(b"0\r\n\r\n") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-response at {:?}", t0.elapsed());
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(200));
    assert_eq!(String::from_utf8_lossy(&got).matches("chunk\n").count(), 4);
    let end = Instant::now();
    let (_, at) = read_to_close(&mut client).await;
    assert_eq!(at - end, KEEPALIVE);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_request_in_progress_finish() {
    let (mut client, stop) = connect();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 64];
    let n = client.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stop.send(true).unwrap();
    let (rest, _) = read_to_close(&mut client).await;
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_gets_goaway_at_the_keepalive_timeout() {
    let (client, _stop) = connect();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(client),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("http://a/").body(Full::default()).unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hi");
        // Less than the header timeout between requests, then more: still open, since
        // the header timeout only bounds an HTTP/2 connection's first request.
        tokio::time::sleep(HEADER + Duration::from_secs(5)).await;
    }
    let t0 = Instant::now() - HEADER - Duration::from_secs(5);
    conn.await.unwrap().unwrap();
    assert_eq!(Instant::now() - t0, KEEPALIVE);
}

/// The first request head is collected in a small buffer before hyper sees it: heads
/// that come in pieces, heads beyond that buffer, a pipelined request in the same bytes,
/// and a bare LF line ending are all served as hyper serves them.
#[tokio::test(start_paused = true)]
async fn the_first_head_is_collected_before_hyper_and_served_whole() {
    // In pieces, with pauses between them.
    let (mut client, _stop) = connect();
    for piece in ["GE", "T / HT", "TP/1.1\r\nHost: x\r", "\n", "\r\n"] {
        client.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(read_hi(&mut client).await.starts_with("HTTP/1.1 200"));

    // Larger than the collecting buffer (16 KiB): handed over, served by hyper.
    let (mut client, _stop) = connect();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    client.write_all(big.as_bytes()).await.unwrap();
    assert!(read_hi(&mut client).await.starts_with("HTTP/1.1 200"));

    // A second, pipelined request in the same write.
    let (mut client, _stop) = connect();
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut both = read_hi(&mut client).await;
    if both.matches("HTTP/1.1 200").count() < 2 {
        both += &read_hi(&mut client).await;
    }
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");

    // Bare LF line endings end the head too.
    let (mut client, _stop) = connect();
    client
        .write_all(b"GET / HTTP/1.1\nHost: x\n\n")
        .await
        .unwrap();
    assert!(read_hi(&mut client).await.starts_with("HTTP/1.1 200"));
}

/// `app` behind a readiness that is not there at first: `Pending` for the first
/// `not_ready` asks (waking the task each time), then ready; or an error.
#[derive(Clone)]
struct Readiness {
    asked: Arc<std::sync::atomic::AtomicUsize>,
    not_ready: usize,
    fail: bool,
}

impl tower::Service<Request<Incoming>> for Readiness {
    type Response = Response<Body>;
    type Error = crate::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, crate::BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), crate::BoxError>> {
        if self.fail {
            return std::task::Poll::Ready(Err("not able to serve".into()));
        }
        let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if asked < self.not_ready {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        Box::pin(async move { Ok(app(req).await.unwrap_or_else(|e| match e {})) })
    }
}

/// A connection to `app` behind `Readiness`; the client's end, and the readiness asks.
fn connect_with_readiness(
    not_ready: usize,
    fail: bool,
) -> (
    DuplexStream,
    tokio::sync::watch::Sender<bool>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (client, stop) = connect_to(Readiness {
        asked: asked.clone(),
        not_ready,
        fail,
    });
    (client, stop, asked)
}

#[tokio::test(start_paused = true)]
async fn a_service_not_ready_at_once_is_asked_again_and_serves() {
    // Asked once when the request came, then from the response future until ready.
    for (not_ready, asks) in [(2, 3), (0, 1)] {
        let (mut client, _stop, asked) = connect_with_readiness(not_ready, false);
        client.write_all(GET).await.unwrap();
        assert!(read_hi(&mut client).await.starts_with("HTTP/1.1 200"));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), asks);
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_readiness_fails_closes_the_connection_without_an_answer() {
    let (mut client, _stop, _) = connect_with_readiness(0, true);
    client.write_all(GET).await.unwrap();
    let (got, _) = read_to_close(&mut client).await;
    assert_eq!(got, "");
}
