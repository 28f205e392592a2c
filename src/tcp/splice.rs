//! Copying both ways between a client and its backend, with half-close.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Copies bytes both ways between `client` and `backend` until both directions end;
/// returns the bytes sent (client → backend, backend → client).
///
/// Half-close: when one side ends its writes (a read returns end of file), the other
/// side's write half is shut down (`shutdown(SHUT_WR)` on a TCP stream) and the other
/// direction goes on copying, so a client that sends its request and then shuts its
/// write half still gets the whole answer. An error in either direction ends both.
/// This is `tokio::io::copy_bidirectional`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let (mut client, mut client_side) = tokio::io::duplex(64);
/// let (mut backend_side, mut backend) = tokio::io::duplex(64);
/// let proxy = tokio::spawn(async move {
///     tower_lb::tcp::splice(&mut client_side, &mut backend_side).await
/// });
/// client.write_all(b"PING\r\n").await.unwrap();
/// client.shutdown().await.unwrap(); // half-close
/// let mut got = Vec::new();
/// backend.read_to_end(&mut got).await.unwrap(); // sees the end of the client's writes
/// assert_eq!(got, b"PING\r\n");
/// backend.write_all(b"+PONG\r\n").await.unwrap();
/// drop(backend);
/// let mut answer = Vec::new();
/// client.read_to_end(&mut answer).await.unwrap();
/// assert_eq!(answer, b"+PONG\r\n");
/// assert_eq!(proxy.await.unwrap().unwrap(), (6, 7));
/// # }
/// ```
pub async fn splice<C, B>(client: &mut C, backend: &mut B) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(client, backend).await
}

/// [`splice`], ending both directions with an [`io::ErrorKind::TimedOut`] error once
/// no byte moved either way for `idle` (nginx stream `proxy_timeout`, HAProxy
/// `timeout tunnel`). A zero `idle` means no timeout. On Tokio's clock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
///
/// let (_client, mut client_side) = tokio::io::duplex(64);
/// let (mut backend_side, _backend) = tokio::io::duplex(64);
/// let idle = tower_lb::tcp::splice_with_idle_timeout(
///     &mut client_side,
///     &mut backend_side,
///     Duration::from_secs(60),
/// );
/// let err = idle.await.unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
/// # }
/// ```
pub async fn splice_with_idle_timeout<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if idle.is_zero() {
        return splice(client, backend).await;
    }
    let base = Instant::now();
    // When a byte last moved, in nanoseconds since `base`.
    let last = AtomicU64::new(0);
    let mut client = Active {
        io: client,
        last: &last,
        base,
    };
    let mut backend = Active {
        io: backend,
        last: &last,
        base,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    let mut copy = std::pin::pin!(copy);
    loop {
        let moved = base + Duration::from_nanos(last.load(Relaxed));
        let deadline = crate::balance::later(moved, idle);
        tokio::select! {
            done = copy.as_mut() => return done,
            () = tokio::time::sleep_until(deadline) => {
                let moved_now = base + Duration::from_nanos(last.load(Relaxed));
                if moved_now == moved {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no byte moved either way for {idle:?}"),
                    ));
                }
            }
        }
    }
}

/// A stream that records when bytes last moved through it.
struct Active<'a, T: ?Sized> {
    io: &'a mut T,
    last: &'a AtomicU64,
    base: Instant,
}

impl<T: ?Sized> Active<'_, T> {
    fn touch(&self) {
        let nanos = self.base.elapsed().as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_an_idle_timeout_away() {
        let (mut client, mut client_side) = tokio::io::duplex(64);
        let (mut backend_side, mut backend) = tokio::io::duplex(64);
        let idle = Duration::from_secs(10);
        let proxy = tokio::spawn(async move {
            splice_with_idle_timeout(&mut client_side, &mut backend_side, idle).await
        });
        // A byte every 6 s for a minute: never 10 s without traffic.
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            backend.read_exact(&mut byte).await.unwrap();
        }
        assert!(!proxy.is_finished());
        // Then silence: the timeout fires 10 s after the last byte.
        let quiet = Instant::now();
        let err = proxy.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(quiet.elapsed(), idle);
        // Both sides are closed.
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
        assert_eq!(backend.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_zero_idle_timeout_is_none() {
        let (mut client, mut client_side) = tokio::io::duplex(64);
        let (mut backend_side, mut backend) = tokio::io::duplex(64);
        let proxy = tokio::spawn(async move {
            splice_with_idle_timeout(&mut client_side, &mut backend_side, Duration::ZERO).await
        });
        client.write_all(b"abc").await.unwrap();
        drop(client);
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        drop(backend);
        assert_eq!(got, b"abc");
        assert_eq!(proxy.await.unwrap().unwrap(), (3, 0));
    }
}
