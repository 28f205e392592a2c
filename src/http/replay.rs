//! A request body that can be sent again: the bytes already read are kept, up to a cap,
//! so a request whose first attempt failed can be replayed on another backend while the
//! original body streams (no whole-body buffering before the first attempt).

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;

/// A cloneable body over a streaming body `B`. Every clone yields the same bytes: the
/// first one to read past the kept prefix pulls from `B` and keeps what it reads, up to
/// `max_bytes`; later clones replay the kept bytes, then continue from `B`.
///
/// If more than `max_bytes` were read, the body can no longer be replayed:
/// [`is_replayable`](Self::is_replayable) turns false and a clone that needs the dropped
/// bytes fails with [`NotReplayable`] instead of sending a truncated body.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http_body_util::{BodyExt, Full};
/// use tower_lb::http::ReplayBody;
///
/// let body = ReplayBody::new(Full::new(bytes::Bytes::from("hello")), 1024);
/// let copy = body.clone();
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
/// assert_eq!(copy.collect().await.unwrap().to_bytes(), "hello");
/// # }
/// ```
pub struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to keep, no allocation.
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// Index of the next kept chunk this clone yields.
    cursor: usize,
    /// Whether this clone has yielded its trailers or end.
    done: bool,
    hint: SizeHint,
    empty: bool,
}

struct Shared<B> {
    body: Option<B>,
    chunks: Vec<Bytes>,
    kept: usize,
    max: usize,
    overflowed: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    error: Option<String>,
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("cursor", &self.cursor)
            .field("replayable", &self.is_replayable())
            .finish()
    }
}

impl<B> Clone for ReplayBody<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            cursor: 0,
            done: self.shared.is_none(),
            hint: self.hint,
            empty: self.empty,
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `max_bytes` of it for replays.
    pub fn new(body: B, max_bytes: usize) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        if empty {
            return Self {
                shared: None,
                cursor: 0,
                done: true,
                hint,
                empty,
            };
        }
        Self {
            shared: Some(Arc::new(Mutex::new(Shared {
                body: Some(body),
                chunks: Vec::new(),
                kept: 0,
                max: max_bytes,
                overflowed: false,
                trailers: None,
                ended: false,
                error: None,
            }))),
            cursor: 0,
            done: false,
            hint,
            empty,
        }
    }
}

impl<B> ReplayBody<B> {
    /// Whether a fresh clone can still yield the whole body (nothing past the cap was
    /// dropped).
    pub fn is_replayable(&self) -> bool {
        // A poisoned lock means a poll panicked; the kept bytes are still consistent.
        self.shared
            .as_ref()
            .is_none_or(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).overflowed)
    }
}

/// Cursor value of the clone that read past the cap and streams straight through.
const STREAMING: usize = usize::MAX;

/// A replayed body needed bytes beyond the replay cap, which were not kept.
#[derive(Debug, Clone)]
pub struct NotReplayable {
    _p: (),
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body is larger than the replay buffer and cannot be sent again")
    }
}

impl std::error::Error for NotReplayable {}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let Some(shared) = this.shared.as_ref() else {
            return Poll::Ready(None);
        };
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        let streaming = this.cursor == STREAMING;
        if !streaming {
            // 1. Replay what was kept.
            if this.cursor < shared.chunks.len() {
                let chunk = shared.chunks[this.cursor].clone();
                this.cursor += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            // 2. What comes next was read by another clone and not kept: refuse rather
            //    than send a truncated body.
            if shared.overflowed {
                this.done = true;
                return Poll::Ready(Some(Err(NotReplayable { _p: () }.into())));
            }
        }
        if let Some(e) = &shared.error {
            this.done = true;
            return Poll::Ready(Some(Err(e.clone().into())));
        }
        if shared.ended {
            this.done = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        // 3. Read on from the original body.
        let Some(body) = shared.body.as_mut() else {
            this.done = true;
            return Poll::Ready(Some(Err(NotReplayable { _p: () }.into())));
        };
        let frame = match Pin::new(body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.body = None;
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                shared.error = Some(e.to_string());
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                if !streaming {
                    if shared.kept + bytes.len() <= shared.max {
                        shared.kept += bytes.len();
                        shared.chunks.push(bytes.clone());
                        this.cursor += 1;
                    } else {
                        // Past the cap: this clone streams on, nothing more is kept.
                        shared.overflowed = true;
                        this.cursor = STREAMING;
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                shared.trailers = trailers.clone();
                shared.ended = true;
                shared.body = None;
                this.done = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.empty && self.cursor == 0)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Wraps every request's body in a [`ReplayBody`] keeping up to `max_bytes`, so a
/// balancer with [`HttpPolicy::replay_body`](super::HttpPolicy::replay_body) below can
/// send a request again on another backend (Envoy's retry buffer, `per_connection_buffer_limit_bytes`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lb::http::{ReplayBody, ReplayBodyLayer};
///
/// let svc = ServiceBuilder::new()
///     .layer(ReplayBodyLayer::new(64 * 1024))
///     .service(service_fn(|req: http::Request<ReplayBody<Full<Bytes>>>| async move {
///         let copy = req.body().clone();
///         let body = req.into_body().collect().await?.to_bytes();
///         assert_eq!(copy.collect().await?.to_bytes(), body); // the same bytes again
///         Ok::<_, tower_lb::BoxError>(http::Response::new(body))
///     }));
/// let req = http::Request::new(Full::new(Bytes::from("hello")));
/// assert_eq!(svc.oneshot(req).await.unwrap().body(), "hello");
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ReplayBodyLayer {
    max_bytes: usize,
}

impl ReplayBodyLayer {
    /// Keeps up to `max_bytes` of each request body for replays.
    pub const fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> tower_layer::Layer<S> for ReplayBodyLayer {
    type Service = ReplayBodyService<S>;

    fn layer(&self, inner: S) -> ReplayBodyService<S> {
        ReplayBodyService {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// The service made by [`ReplayBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReplayBodyService<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> ReplayBodyService<S> {
    define_inner_service_accessors!();
}

impl<S, B> tower_service::Service<http::Request<B>> for ReplayBodyService<S>
where
    S: tower_service::Service<http::Request<ReplayBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<B>) -> S::Future {
        let max = self.max_bytes;
        self.inner.call(req.map(|b| ReplayBody::new(b, max)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin + use<> {
        StreamBody::new(stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn replays_a_body_within_the_cap() {
        let body = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 16);
        let again = body.clone();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(again.is_replayable());
        assert_eq!(again.clone().collect().await.unwrap().to_bytes(), "abcdef");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_partly_read_body_is_continued_by_the_replay() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 16);
        let second = first.clone();
        // The first attempt reads one chunk and fails.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn past_the_cap_a_replay_fails_instead_of_truncating() {
        let body = ReplayBody::new(chunks(&["abcd", "efgh", "ijkl"]), 6);
        let again = body.clone();
        // The original streams through whole.
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
        assert!(!again.is_replayable());
        let err = again.collect().await.unwrap_err();
        assert!(err.is::<NotReplayable>(), "{err}");
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let inner = StreamBody::new(stream::iter(vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ]));
        let body = ReplayBody::new(inner, 16);
        let again = body.clone();
        let first = body.collect().await.unwrap();
        assert_eq!(first.trailers().unwrap()["grpc-status"], "0");
        let second = again.collect().await.unwrap();
        assert_eq!(second.trailers().unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn empty_bodies_are_at_end() {
        let body = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 16);
        assert!(body.is_end_stream());
        assert!(body.clone().collect().await.unwrap().to_bytes().is_empty());
    }
}
