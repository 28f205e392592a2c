//! The parts of an accept loop that `server::Server` and `tcp::Proxy` share: taking the
//! next client, and draining the connections' tasks on shutdown.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// How long the loop pauses after an accept error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The next client of `listener`, with `TCP_NODELAY` set; `None` once `shutdown`
/// completes. An accept error (EMFILE, ENFILE, ECONNABORTED…) leaves the listener good:
/// it is logged and the accept tried again after a short pause.
pub(crate) async fn next_client<F: Future + ?Sized>(
    listener: &TcpListener,
    mut shutdown: Pin<&mut F>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.as_mut() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tower_lb: accept failed; pausing");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Lets the connections' tasks finish for up to `timeout`, then aborts the rest and waits
/// for them to end. `what` names the connections in the log ("connections", "tcp
/// connections").
pub(crate) async fn drain(conns: &mut JoinSet<()>, timeout: Duration, what: &'static str) {
    let open = conns.len();
    if open > 0 {
        tracing::info!(
            open,
            what,
            "tower_lb: shutting down: draining open connections"
        );
    }
    let drained = tokio::time::timeout(timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            what,
            "tower_lb: drain timeout: closing the remaining connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}
