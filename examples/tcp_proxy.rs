//! Layer-4 balancing of raw TCP connections (databases, caches) with the library's `tcp`
//! module: least connections over open connections, TCP connect probing, and connect
//! failures retried on another backend, with the same `Balance` as HTTP.
//!
//! ```sh
//! cargo run --example tcp_proxy --features tcp
//! ```
//!
//! It starts three echo backends in-process (one of them down), proxies a listener to
//! them with `tcp::serve`, opens client connections that stay open, waits for the probes
//! to mark the down backend down, and prints where each connection went.

/// Writes one line of the demo's output (stdout from `main`, a buffer in the tests).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_lb::{
    balance::{strategy::LeastConn, Status},
    health::active::{Prober, TcpProbe},
    tcp::{self, TcpEndpoints, TcpPolicy},
    Backend, Balance, BoxError,
};

async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
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

/// Runs the demo, writing what happened to `out`.
async fn run(out: &mut (impl std::io::Write + Send)) -> Result<(), BoxError> {
    let a = echo_backend("db-a").await;
    let b = echo_backend("db-b").await;
    // A backend that is down: its port refuses connections.
    let down = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;

    // Each connection counts as load on its backend until it closes, so least
    // connections balances open connections; a refused connect goes to another backend.
    let balance = Balance::builder()
        .strategy(LeastConn::new())
        .retries(3)
        .policy(TcpPolicy::new())
        .backends([a, b, down].map(Backend::new))
        .build(TcpEndpoints::new().connect_timeout(Duration::from_secs(1)))?;
    // Three failed connects in a row, 200 ms apart, mark a backend down.
    let _prober = Prober::new(TcpProbe::new())
        .interval(Duration::from_millis(200))
        .fast_interval(Duration::from_millis(200))
        .spawn(&balance)?;

    let front = TcpListener::bind("127.0.0.1:0").await?;
    let front_addr = front.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(tcp::serve(front, balance.clone(), stopped));
    say!(
        out,
        "proxy on {front_addr} → db-a {a}, db-b {b}, down {down}"
    );

    // Clients that keep their connections open: least connections spreads them.
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = TcpStream::connect(front_addr).await?;
        let mut hello = [0u8; 5];
        c.read_exact(&mut hello).await?;
        c.write_all(b"ping").await?;
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).await?;
        say!(
            out,
            "client {i}: served by {}, echo {:?}",
            String::from_utf8_lossy(&hello).trim(),
            String::from_utf8_lossy(&echo)
        );
        clients.push(c);
    }
    // Until the probes catch up, connects to the down backend fail and are retried on
    // another one; then it gets no more attempts.
    let waited = tokio::time::Instant::now();
    while balance.stats().backends[2].status != Status::Down {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err("the prober did not mark the down backend down within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say!(out, "down backend marked down by the TCP probes");
    let names = [(a, "db-a"), (b, "db-b"), (down, "down")];
    for s in &balance.stats().backends {
        let name = names.iter().find(|(k, _)| *k == s.key).map_or("?", |n| n.1);
        say!(
            out,
            "  {name:<4} {:<16} open {}  connects {}  failures {}  state {}",
            s.key,
            s.in_flight,
            s.requests,
            s.failures,
            s.status
        );
    }
    drop(clients);
    let _ = stop.send(());
    proxy.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run(&mut std::io::stdout()).await
}

#[cfg(test)]
#[path = "support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use crate::support::{line, word_after};

    #[tokio::test]
    async fn connections_spread_over_live_backends() {
        let mut out = Vec::new();
        super::run(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let served: Vec<&str> = out.lines().filter(|l| l.starts_with("client ")).collect();
        assert_eq!(served.len(), 6, "{out}");
        for l in &served {
            assert!(l.contains("served by db-"), "{l:?}");
            assert!(l.ends_with("echo \"ping\""), "{l:?}");
        }
        line(&out, "down backend marked down by the TCP probes");
        let open = |name| word_after(line(&out, name), "open").parse::<u64>().unwrap();
        let (a, b, down) = ("db-a 127.0.0.1:", "db-b 127.0.0.1:", "down 127.0.0.1:");
        assert!(open(a) > 0, "{out}");
        assert!(open(b) > 0, "{out}");
        assert_eq!(open(a) + open(b), 6, "{out}");
        assert_eq!(open(down), 0, "{out}");
        assert_eq!(word_after(line(&out, down), "state"), "down", "{out}");
    }
}
