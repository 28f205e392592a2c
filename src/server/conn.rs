//! One client connection: its I/O watched for the start of each request head, its
//! requests counted until their response bodies end, and one timer for both timeouts.
//!
//! The timer is re-armed lazily: moving a deadline later (the usual case, as requests
//! come and go) changes two atomics and nothing else; the armed timer fires early, sees
//! the later deadline and sleeps again. Only a deadline moved *earlier* than the armed
//! one wakes the connection's task.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};
use tower_service::Service;

use crate::{
    error::BoxError,
    util::{call_now, CallNow},
    ClientAddr,
};

/// The timeouts, shared by every connection of a server.
#[derive(Debug)]
pub(super) struct Limits {
    pub(super) header: Duration,
    pub(super) keepalive: Duration,
}

const NONE: u64 = u64::MAX;
/// After a timeout starts closing a connection, how long it may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The answer to a client whose request head timed out (nginx logs 408 and closes).
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What the I/O, the requests and the timer of one connection share.
#[derive(Debug)]
struct Watch {
    origin: Instant,
    /// The keep-alive timeout in ns, for the end of each request.
    keepalive_ns: u64,
    /// Requests dispatched whose response body has not ended.
    busy: AtomicUsize,
    /// No request in progress and a request head is (or may be) on its way: the header
    /// timeout runs. Set at accept and when bytes arrive on an idle connection.
    reading: AtomicBool,
    /// Bytes of the awaited request head have arrived (so a timeout can answer 408).
    got_bytes: AtomicBool,
    /// When the current wait (for a head, or idle) began, ns since `origin`.
    since: AtomicU64,
    /// The deadline the timer is armed for, ns since `origin`.
    armed: AtomicU64,
    /// The header timeout expired: the I/O answers 408 (HTTP/1) and fails.
    timed_out: AtomicBool,
    /// The connection speaks HTTP/2: no 408, and no header phase after the preface.
    h2: AtomicBool,
    waker: AtomicWaker,
}

impl Watch {
    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos()
            .min(u128::from(NONE - 1)) as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }

    /// The current deadline: none while a request is in progress.
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        if self.busy.load(Acquire) > 0 {
            return None;
        }
        let wait = if self.reading.load(Acquire) {
            limits.header
        } else {
            limits.keepalive
        };
        Some(
            self.since
                .load(Acquire)
                .saturating_add(wait.as_nanos().min(u128::from(NONE / 2)) as u64),
        )
    }

    /// A deadline earlier than the armed one wakes the timer.
    fn moved_to(&self, deadline: u64) {
        if deadline < self.armed.load(Acquire) {
            self.waker.wake();
        }
    }

    /// A request was dispatched.
    fn start(&self) {
        self.busy.fetch_add(1, AcqRel);
        self.reading.store(false, Release);
        self.got_bytes.store(false, Release);
    }

    /// A request's response body ended (or was dropped).
    fn end(&self) {
        if self.busy.fetch_sub(1, AcqRel) == 1 {
            let now = self.now();
            self.since.store(now, Release);
            self.moved_to(now.saturating_add(self.keepalive_ns));
        }
    }
}

// === impl Io ===

pin_project! {
    /// The client's socket, watched: bytes arriving on an idle connection start the
    /// header timeout; after it expires, the next read answers 408 and fails. Holds the
    /// connection's permit, so an upgraded connection counts until it closes.
    pub(super) struct Io<T = TcpStream> {
        #[pin]
        stream: T,
        watch: Arc<Watch>,
        limits: Arc<Limits>,
        _permit: Option<OwnedSemaphorePermit>,
        // The first bytes, until it is known whether they are the HTTP/2 preface.
        sniff: u8,
        // What the first bytes must be (ALPN chose): the preface, not it, or either.
        expect_h2: Option<bool>,
        // The first request head, read here in a small buffer until it is complete, so a
        // client that connects and stalls costs this buffer, not hyper's connection.
        head: Option<Head>,
    }
}

/// The first request head of a connection, collected before hyper sees any byte.
///
/// hyper's HTTP/1 connection allocates 8 KiB for reading and 8 KiB for writing as soon
/// as it exists (hyper-util makes it once the first bytes rule out HTTP/2), so a client
/// that sends half a request head and stalls would hold about 16 KiB until the header
/// timeout. nginx reads request heads into a 1 KiB `client_header_buffer_size` buffer;
/// so does this, growing it up to [`HEAD_MAX`] and handing the bytes over when the head
/// is complete (or the HTTP/2 preface starts, or the client closes, or the limit is
/// reached: hyper then applies its own limits).
struct Head {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed over.
    given: usize,
    /// The bytes are complete and being handed over.
    ready: bool,
}

/// The pre-read buffer's first size (nginx `client_header_buffer_size`).
const HEAD_FIRST: usize = 1024;
/// The most a request head is collected here before hyper takes over.
const HEAD_MAX: usize = 16 * 1024;

impl Head {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            given: 0,
            ready: false,
        }
    }

    /// Whether the bytes read so far may be handed over: a complete head, the HTTP/2
    /// preface, or as much as this buffer takes.
    fn complete(&self, searched_from: usize) -> bool {
        let b = &self.buf[..];
        if b.len() >= HEAD_MAX || b.starts_with(&H2_START[..b.len().min(H2_START.len())]) {
            return true;
        }
        let from = searched_from.saturating_sub(3);
        b[from..].windows(4).any(|w| w == b"\r\n\r\n")
            || b[searched_from.saturating_sub(1)..]
                .windows(2)
                .any(|w| w == b"\n\n")
    }
}

/// `PRI * HTTP/2.0`: the start of the HTTP/2 connection preface.
const H2_START: &[u8; 4] = b"PRI ";

impl<T> Io<T> {
    pub(super) fn new(
        stream: T,
        permit: Option<OwnedSemaphorePermit>,
        limits: Arc<Limits>,
    ) -> Self {
        let origin = Instant::now();
        let watch = Watch {
            origin,
            keepalive_ns: limits.keepalive.as_nanos().min(u128::from(NONE / 2)) as u64,
            busy: AtomicUsize::new(0),
            reading: AtomicBool::new(true),
            got_bytes: AtomicBool::new(false),
            since: AtomicU64::new(0),
            armed: AtomicU64::new(NONE),
            timed_out: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        };
        Self {
            stream,
            watch: Arc::new(watch),
            limits,
            _permit: permit,
            sniff: 0,
            expect_h2: None,
            head: Some(Head::new()),
        }
    }

    /// Requires the client to speak HTTP/2 (`Some(true)`) or HTTP/1 (`Some(false)`), as
    /// the protocol negotiated by TLS ALPN; a client whose first bytes say otherwise fails.
    #[cfg_attr(not(feature = "server-tls"), allow(dead_code))]
    pub(super) fn expect_h2(mut self, h2: Option<bool>) -> Self {
        self.expect_h2 = h2;
        if h2 == Some(true) {
            // HTTP/2 has no request head to collect.
            self.head = None;
        }
        self
    }
}

fn not_alpn() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the client does not speak the protocol it chose through ALPN",
    )
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let watch = &**this.watch;
        if watch.timed_out.load(Acquire) {
            if watch.got_bytes.load(Acquire) && !watch.h2.load(Relaxed) {
                // Best effort: a fresh socket's send buffer takes these few bytes at once.
                let _ = this.stream.as_mut().poll_write(cx, TIMEOUT_408);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client header timeout",
            )));
        }
        let before = buf.filled().len();
        if let Some(head) = this.head.as_mut() {
            while !head.ready {
                let len = head.buf.len();
                // Read into the zeroed rest of the buffer, doubling it when full.
                let room = if len == 0 {
                    HEAD_FIRST
                } else {
                    len.min(HEAD_MAX - len)
                };
                head.buf.resize(len + room, 0);
                let mut dst = ReadBuf::new(&mut head.buf[len..]);
                let polled = this.stream.as_mut().poll_read(cx, &mut dst);
                let n = dst.filled().len();
                head.buf.truncate(len + n);
                ready!(polled)?;
                if n == 0 {
                    head.ready = true; // the client closed: hand over what came
                } else {
                    if watch.reading.load(Acquire) {
                        watch.got_bytes.store(true, Release);
                    }
                    head.ready = head.complete(len);
                }
            }
            let rest = &head.buf[head.given..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            head.given += n;
            if head.given == head.buf.len() {
                *this.head = None;
            }
        } else {
            ready!(this.stream.poll_read(cx, buf))?;
        }
        let got = &buf.filled()[before..];
        if got.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if usize::from(*this.sniff) < H2_START.len() {
            let seen = usize::from(*this.sniff);
            let n = got.len().min(H2_START.len() - seen);
            if got[..n] == H2_START[seen..seen + n] {
                *this.sniff += n as u8;
                if usize::from(*this.sniff) == H2_START.len() {
                    if *this.expect_h2 == Some(false) {
                        return Poll::Ready(Err(not_alpn()));
                    }
                    watch.h2.store(true, Relaxed);
                }
            } else {
                if *this.expect_h2 == Some(true) {
                    return Poll::Ready(Err(not_alpn()));
                }
                *this.sniff = H2_START.len() as u8 + 1; // not HTTP/2
            }
        }
        if watch.reading.load(Acquire) {
            watch.got_bytes.store(true, Release);
        } else if watch.busy.load(Acquire) == 0 && !watch.h2.load(Relaxed) {
            // The first bytes of the next request on a kept-alive HTTP/1 connection.
            let now = watch.now();
            watch.since.store(now, Release);
            watch.got_bytes.store(true, Release);
            watch.reading.store(true, Release);
            watch.moved_to(now.saturating_add(this.limits.header.as_nanos() as u64));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

// === impl Counted (the service) ===

/// The connection's service: counts each request from dispatch to the end of its
/// response body.
#[derive(Clone)]
pub(super) struct Counted<S> {
    inner: S,
    watch: Arc<Watch>,
    peer: ClientAddr,
}

/// hyper calls this directly: a clone of the service per request, called at once when
/// it is ready at once ([`call_now`]). hyper-util's `TowerToHyperService` defers the
/// readiness and the call to the future's first poll, which then moves the whole
/// response future into its own; here it is built in place.
impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError> + Send,
{
    type Response = Response<CountedBody<B>>;
    type Error = BoxError;
    type Future = CountedFuture<CallNow<S, Request<Incoming>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.watch.start();
        req.extensions_mut().insert(self.peer);
        CountedFuture {
            fut: call_now(self.inner.clone(), req),
            done: Some(Done(self.watch.clone())),
        }
    }
}

/// Ends one request's count when dropped.
struct Done(Arc<Watch>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project! {
    pub(super) struct CountedFuture<F> {
        #[pin]
        fut: F,
        done: Option<Done>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<CountedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.fut.poll(cx)).map_err(Into::into)?;
        let done = this.done.take();
        Poll::Ready(Ok(rsp.map(|body| CountedBody { body, done })))
    }
}

pin_project! {
    pub(super) struct CountedBody<B> {
        #[pin]
        body: B,
        done: Option<Done>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || this.body.is_end_stream() {
            *this.done = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Serving ===

type Conn<S, T = TcpStream> =
    auto::UpgradeableConnection<'static, TokioIo<Io<T>>, Counted<S>, TokioExecutor>;

/// A connection that can be closed gracefully.
pub(super) trait Graceful: Future<Output = Result<(), BoxError>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<S, B, T> Graceful for Conn<S, T>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

pin_project! {
    /// Serves one connection to its end, enforcing the timeouts and the shutdown signal.
    pub(super) struct Serving<C> {
        #[pin]
        conn: C,
        sleep: Pin<Box<Sleep>>,
        watch: Arc<Watch>,
        limits: Arc<Limits>,
        stop: Pin<Box<dyn Future<Output = ()> + Send>>,
        // Read without polling `stop`: whether a shutdown was signalled.
        stopped: tokio::sync::watch::Receiver<bool>,
        stopping: bool,
        // The waker `stop`, `sleep` and the watch were last registered with: while it
        // stays the same, they are polled only when they may have fired.
        registered: Option<std::task::Waker>,
        // `sleep` was reset since it was last polled, so it must be polled to register.
        sleep_fresh: bool,
        // A timeout or shutdown is closing the connection: drop it at this time.
        close_by: Option<Instant>,
    }
}

impl<S, B, T> Serving<Conn<S, T>>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(
        builder: &auto::Builder<TokioExecutor>,
        io: Io<T>,
        svc: S,
        limits: Arc<Limits>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
        peer: SocketAddr,
    ) -> Self {
        let watch = io.watch.clone();
        let counted = Counted {
            inner: svc,
            watch: watch.clone(),
            peer: ClientAddr(peer),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), counted)
            .into_owned();
        let first = watch.deadline(&limits).unwrap_or(NONE);
        watch.armed.store(first, Release);
        let sleep = Box::pin(tokio::time::sleep_until(watch.at(first)));
        Self {
            conn,
            sleep,
            watch,
            limits,
            stopped: stopped.clone(),
            stop: Box::pin(async move {
                while stopped.changed().await.is_ok() {
                    if *stopped.borrow() {
                        return;
                    }
                }
                // The sender is gone: the server stopped.
            }),
            stopping: false,
            registered: None,
            sleep_fresh: true,
            close_by: None,
        }
    }
}

impl<C: Graceful> Future for Serving<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(res) = this.conn.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tower_lb: client connection ended with an error");
                }
                return Poll::Ready(());
            }
            let new_waker = this
                .registered
                .as_ref()
                .is_none_or(|w| !w.will_wake(cx.waker()));
            if new_waker {
                *this.registered = Some(cx.waker().clone());
                this.watch.waker.register(cx.waker());
            }
            let signalled = new_waker || this.stopped.has_changed().unwrap_or(true);
            if !*this.stopping && signalled && this.stop.as_mut().poll(cx).is_ready() {
                // Shutdown: finish the request in progress, then close.
                *this.stopping = true;
                this.conn.as_mut().graceful();
                continue;
            }
            let want = match *this.close_by {
                Some(t) => Some(t),
                None => this.watch.deadline(this.limits).map(|ns| this.watch.at(ns)),
            };
            let rearm = match want {
                Some(w) if w < this.sleep.deadline() || this.sleep.is_elapsed() => Some(w),
                // A request in progress: look again later.
                None if this.sleep.is_elapsed() => {
                    Some(Instant::now() + this.limits.header.min(this.limits.keepalive))
                }
                _ => None,
            };
            if let Some(w) = rearm {
                this.sleep.as_mut().reset(w);
                *this.sleep_fresh = true;
                let ns = w
                    .saturating_duration_since(this.watch.origin)
                    .as_nanos()
                    .min(u128::from(NONE - 1)) as u64;
                this.watch.armed.store(ns, Release);
            }
            if !(new_waker || *this.sleep_fresh || this.sleep.is_elapsed()) {
                return Poll::Pending;
            }
            *this.sleep_fresh = false;
            ready!(this.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if this.close_by.is_some_and(|t| now >= t) {
                tracing::debug!("tower_lb: closing a client connection that outlived its grace");
                return Poll::Ready(());
            }
            let Some(deadline) = this.watch.deadline(this.limits).map(|ns| this.watch.at(ns))
            else {
                continue; // busy: re-armed above on the next turn
            };
            if this.close_by.is_some() || now < deadline {
                continue;
            }
            if this.watch.reading.load(Acquire) {
                tracing::debug!(timeout = ?this.limits.header, "tower_lb: client header timeout");
                this.watch.timed_out.store(true, Release);
                if this.watch.h2.load(Relaxed) || !this.watch.got_bytes.load(Acquire) {
                    this.conn.as_mut().graceful();
                }
            } else {
                tracing::debug!(timeout = ?this.limits.keepalive, "tower_lb: keep-alive timeout");
                this.conn.as_mut().graceful();
            }
            *this.close_by = Some(now + CLOSE_GRACE);
        }
    }
}
