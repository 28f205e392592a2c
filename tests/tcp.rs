//! Layer-4 balancing against real `redis-server` processes (a third-party peer), spoken
//! to in RESP by hand through `tcp::serve`; and the PROXY protocol header as a plain
//! listener receives it.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tower_lb::{
    balance::strategy::LeastConn,
    tcp::{self, ProxyProtocol, TcpEndpoint, TcpEndpoints, TcpPolicy},
    Backend, Balance,
};

use crate::support::{command_peer, have_command, wait_for, Peer};

/// A redis-server on a free 127.0.0.1 port, without persistence: the one this test
/// started (its `INFO server` names the process), not another process that happened to
/// take the same port.
async fn redis() -> Peer {
    for _ in 0..3 {
        let peer = command_peer("redis-server", |port| {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ]
            .map(String::from)
            .to_vec()
        })
        .await;
        let info = Redis::connect(peer.addr())
            .await
            .cmd(&["INFO", "server"])
            .await;
        let pid = format!("process_id:{}", peer.pid());
        if info.lines().any(|l| l.trim() == pid) {
            return peer;
        }
    }
    panic!("redis-server: another process kept taking its port");
}

/// A balancer over `backends` behind `tcp::serve` on a fresh 127.0.0.1 port.
struct Front {
    addr: SocketAddr,
    balance: Balance<SocketAddr, TcpEndpoint, TcpPolicy>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Front {
    async fn start(backends: &[SocketAddr], endpoints: TcpEndpoints) -> Self {
        Self::start_on("127.0.0.1:0", backends, endpoints).await
    }

    async fn start_on(bind: &str, backends: &[SocketAddr], endpoints: TcpEndpoints) -> Self {
        let balance = Balance::builder()
            .strategy(LeastConn::new())
            .policy(TcpPolicy::new())
            .retries(2)
            .backends(backends.iter().copied().map(Backend::new))
            .build(endpoints.connect_timeout(Duration::from_secs(5)))
            .unwrap();
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tcp::serve(listener, balance.clone(), stopped));
        Self {
            addr,
            balance,
            stop: Some(stop),
            task,
        }
    }

    fn in_flight(&self, backend: SocketAddr) -> usize {
        self.backend(backend).in_flight
    }

    fn backend(&self, backend: SocketAddr) -> tower_lb::balance::BackendStats<SocketAddr> {
        self.balance
            .stats()
            .backends
            .into_iter()
            .find(|b| b.key == backend)
            .expect("a backend of the set")
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.unwrap().unwrap();
    }
}

/// A RESP client over one connection.
struct Redis {
    io: BufReader<TcpStream>,
}

impl Redis {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// Sends one command as a RESP array; returns a simple reply's line (`+PONG`,
    /// `-ERR …`, `:1`) or a bulk reply's content (`$-1` for nil).
    async fn cmd(&mut self, args: &[&str]) -> String {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.io.get_mut().write_all(out.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_string();
        match line.strip_prefix('$') {
            Some(len) if !len.starts_with('-') => {
                let len: usize = len.parse().unwrap();
                let mut bulk = vec![0u8; len + 2];
                self.io.read_exact(&mut bulk).await.unwrap();
                bulk.truncate(len);
                String::from_utf8(bulk).unwrap()
            }
            _ => line,
        }
    }

    /// The port of the redis-server that answers (`tcp_port:` of `INFO server`).
    async fn server_port(&mut self) -> u16 {
        let info = self.cmd(&["INFO", "server"]).await;
        info.lines()
            .find_map(|l| l.strip_prefix("tcp_port:"))
            .unwrap_or_else(|| panic!("no tcp_port in {info:?}"))
            .trim()
            .parse()
            .unwrap()
    }
}

#[tokio::test]
async fn least_conn_spreads_open_connections_over_both_servers() {
    if !have_command("redis-server") {
        return;
    }
    let (r1, r2) = (redis().await, redis().await);
    let front = Front::start(&[r1.addr(), r2.addr()], TcpEndpoints::new()).await;

    let mut clients = Vec::new();
    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for _ in 0..6 {
        let mut c = Redis::connect(front.addr).await;
        assert_eq!(c.cmd(&["PING"]).await, "+PONG");
        let port = c.server_port().await;
        *per_port.entry(port).or_default() += 1;
        clients.push((port, c));
    }
    // Both servers got some, and the balancer counts exactly the open connections.
    let (n1, n2) = (per_port[&r1.port], per_port[&r2.port]);
    assert!(n1 > 0 && n2 > 0, "{per_port:?}");
    assert_eq!(n1 + n2, 6);
    assert_eq!(front.in_flight(r1.addr()), n1);
    assert_eq!(front.in_flight(r2.addr()), n2);

    // Two servers, two key spaces: what one connection sets, the connections to the
    // same server see, and those to the other server do not.
    let ((a_port, a), rest) = clients.split_first_mut().unwrap();
    assert_eq!(a.cmd(&["SET", "tower-lb", "was here"]).await, "+OK");
    assert_eq!(a.cmd(&["GET", "tower-lb"]).await, "was here");
    for (port, c) in rest {
        let expect = if port == a_port { "was here" } else { "$-1" };
        assert_eq!(c.cmd(&["GET", "tower-lb"]).await, expect);
    }

    drop(clients);
    wait_for(|| front.in_flight(r1.addr()) == 0 && front.in_flight(r2.addr()) == 0).await;
    front.stop().await;
}

#[tokio::test]
async fn a_killed_server_is_retried_on_the_other_and_ejected() {
    if !have_command("redis-server") {
        return;
    }
    let (r1, r2) = (redis().await, redis().await);
    let (dead, live) = (r1.addr(), r2.addr());
    let endpoints = TcpEndpoints::new();
    // nginx `max_fails=1`, and an ejection that outlasts the test however slow it runs.
    #[cfg(feature = "health-passive")]
    let endpoints = endpoints.passive_health(
        tower_lb::health::passive::Window::new()
            .max_fails(1)
            .fail_timeout(Duration::from_secs(3600)),
    );
    let front = Front::start(&[dead, live], endpoints).await;
    {
        // Both serve at first.
        let mut seen = Vec::new();
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut c = Redis::connect(front.addr).await;
            seen.push(c.server_port().await);
            open.push(c);
        }
        seen.sort_unstable();
        let mut want = vec![r1.port, r2.port];
        want.sort_unstable();
        assert_eq!(seen, want);
    }
    wait_for(|| front.in_flight(dead) == 0 && front.in_flight(live) == 0).await;

    drop(r1); // killed: its port refuses connections now
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = Redis::connect(front.addr).await;
        assert_eq!(c.cmd(&["PING"]).await, "+PONG");
        assert_eq!(c.server_port().await, r2.port);
        clients.push(c);
    }
    // With connections kept open on the live server, least connections tried the dead
    // one; each refused connect was retried on the live server.
    let d = front.backend(dead);
    assert!(d.failures >= 1, "{d:?}");
    assert!(d.last_failure.is_some(), "{d:?}");
    assert_eq!(d.in_flight, 0);
    assert_eq!(front.in_flight(live), 6);
    #[cfg(feature = "health-passive")]
    {
        // Passive health ejected it at its first refused connect: never tried again.
        assert_eq!((d.failures, d.ejections), (1, 1), "{d:?}");
        assert!(
            matches!(d.status, tower_lb::balance::Status::Ejected { .. }),
            "{d:?}"
        );
    }
    drop(clients);
    wait_for(|| front.in_flight(live) == 0).await;
    front.stop().await;
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_reply() {
    if !have_command("redis-server") {
        return;
    }
    let r = redis().await;
    let front = Front::start(&[r.addr()], TcpEndpoints::new()).await;
    let mut c = TcpStream::connect(front.addr).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    c.shutdown().await.unwrap(); // no more writes; reads go on
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
        .await
        .expect("the reply and the end within 10 s")
        .unwrap();
    assert_eq!(reply, b"+PONG\r\n");
    wait_for(|| front.in_flight(r.addr()) == 0).await;
    front.stop().await;
}

/// A backend that reads a PROXY v2 header (16 bytes, then the address block), answers
/// `ok` and hands back what it read.
async fn v2_backend() -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut header = vec![0u8; 16];
        s.read_exact(&mut header).await.unwrap();
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        let mut block = vec![0u8; len];
        s.read_exact(&mut block).await.unwrap();
        header.extend_from_slice(&block);
        s.write_all(b"ok").await.unwrap();
        header
    });
    (addr, task)
}

const SIGNATURE: &[u8] = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A";

#[tokio::test]
async fn the_backend_gets_a_proxy_v2_header_with_the_client_address() {
    let (backend, header) = v2_backend().await;
    let front = Front::start(
        &[backend],
        TcpEndpoints::new().proxy_protocol(ProxyProtocol::V2),
    )
    .await;
    let mut c = TcpStream::connect(front.addr).await.unwrap();
    let me = c.local_addr().unwrap();
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"ok");

    let mut want = SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    want.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend_from_slice(&me.port().to_be_bytes());
    want.extend_from_slice(&front.addr.port().to_be_bytes());
    assert_eq!(header.await.unwrap(), want);
    drop(c);
    wait_for(|| front.in_flight(backend) == 0).await;
    front.stop().await;
}

#[tokio::test]
async fn an_ipv6_client_gives_a_tcp6_header() {
    if TcpListener::bind("[::1]:0").await.is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let (backend, header) = v2_backend().await;
    let front = Front::start_on(
        "[::1]:0",
        &[backend],
        TcpEndpoints::new().proxy_protocol(ProxyProtocol::V2),
    )
    .await;
    let mut c = TcpStream::connect(front.addr).await.unwrap();
    let me = c.local_addr().unwrap();
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).await.unwrap();

    let loopback = std::net::Ipv6Addr::LOCALHOST.octets();
    let mut want = SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
    want.extend_from_slice(&loopback);
    want.extend_from_slice(&loopback);
    want.extend_from_slice(&me.port().to_be_bytes());
    want.extend_from_slice(&front.addr.port().to_be_bytes());
    assert_eq!(header.await.unwrap(), want);
    drop(c);
    wait_for(|| front.in_flight(backend) == 0).await;
    front.stop().await;
}
