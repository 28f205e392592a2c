//! The gateway's TCP proxies (`--tcp-listen`, `[[tcp]]`) against real `redis-server`
//! processes (a third-party peer), spoken to in RESP by hand.

use std::{collections::HashMap, future::Future, net::SocketAddr, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::common::{client, gateway_bin, get, Gateway};
use crate::support::{command_peer, have_command, Peer};

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
    /// `-ERR …`, `:1`) or a bulk reply's content (`$-1` for nil), or `closed` when the
    /// connection was closed instead.
    async fn cmd(&mut self, args: &[&str]) -> String {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        if self.io.get_mut().write_all(out.as_bytes()).await.is_err() {
            return "closed".into();
        }
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), self.io.read_line(&mut line))
            .await
            .expect("an answer within 30 s");
        if !matches!(read, Ok(n) if n > 0) {
            return "closed".into();
        }
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

/// Polls `cond` every 20 ms for up to 30 s; whether it came to hold.
async fn until<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The only TCP proxy in the gateway's `/status`.
async fn proxy_status(gw: &Gateway) -> serde_json::Value {
    let (_, body) = get(&client(), &gw.url("/status")).await;
    let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tcp = s["tcp"].as_object().expect("tcp proxies");
    assert_eq!(tcp.len(), 1, "{s}");
    tcp.values().next().unwrap().clone()
}

/// Where the proxy listens (it was asked for port 0).
async fn proxy_addr(gw: &Gateway) -> SocketAddr {
    proxy_status(gw).await["address"]
        .as_str()
        .expect("an address")
        .parse()
        .unwrap()
}

async fn backend_state(gw: &Gateway, backend: SocketAddr) -> serde_json::Value {
    let s = proxy_status(gw).await;
    s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == backend.to_string())
        .unwrap_or_else(|| panic!("no {backend} in {s}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_tcp_proxy_over_both_servers_and_past_a_dead_one() {
    if !have_command("redis-server") {
        return;
    }
    let (r1, r2) = (redis().await, redis().await);
    let gw = Gateway::start(&[
        "--tcp-listen",
        "127.0.0.1:0",
        "--tcp-backend",
        &r1.addr().to_string(),
        "--tcp-backend",
        &r2.addr().to_string(),
        "--health-interval",
        "200ms",
    ])
    .await;
    let front = proxy_addr(&gw).await;
    assert_eq!(proxy_status(&gw).await["strategy"], "least-conn");

    // Open connections spread by least connections; each is one server's key space.
    let mut clients = Vec::new();
    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for i in 0..6 {
        let mut c = Redis::connect(front).await;
        assert_eq!(c.cmd(&["PING"]).await, "+PONG");
        let key = format!("key-{i}");
        assert_eq!(c.cmd(&["SET", &key, "through the gateway"]).await, "+OK");
        assert_eq!(c.cmd(&["GET", &key]).await, "through the gateway");
        let port = c.server_port().await;
        *per_port.entry(port).or_default() += 1;
        clients.push(c);
    }
    assert_eq!(
        (per_port[&r1.port], per_port[&r2.port]),
        (3, 3),
        "{per_port:?}"
    );
    assert_eq!(backend_state(&gw, r1.addr()).await["in_flight"], 3);
    drop(clients);

    // One server dies: every new connection still gets an answer, from the other one.
    let (dead, live) = (r1.addr(), r2.port);
    drop(r1);
    for _ in 0..20 {
        let mut c = Redis::connect(front).await;
        assert_eq!(c.cmd(&["PING"]).await, "+PONG");
        assert_eq!(c.server_port().await, live);
    }
    // Connect failures ejected it, or the probes marked it down.
    assert!(
        until(|| async {
            let s = backend_state(&gw, dead).await;
            s["state"] == "down" || s["state"] == "ejected" || s["state"] == "probation"
        })
        .await,
        "{}",
        backend_state(&gw, dead).await
    );
}

fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tcp_section(strategy: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[tcp]]\nlisten = \"127.0.0.1:0\"\nstrategy = \"{strategy}\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_section_reloads_on_sighup_and_open_connections_survive() {
    if !have_command("redis-server") {
        return;
    }
    let (r1, r2) = (redis().await, redis().await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    save(&config, &tcp_section("least-conn", &[r1.addr()]));
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]).await;
    let front = proxy_addr(&gw).await;
    let mut open = Redis::connect(front).await;
    assert_eq!(open.server_port().await, r1.port);

    let hup = |gw: &Gateway| {
        let pid = gw.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // A second backend: the same balancer (r1 keeps its open connection counted).
    save(&config, &tcp_section("least-conn", &[r1.addr(), r2.addr()]));
    hup(&gw);
    assert!(
        until(|| async {
            proxy_status(&gw).await["backends"]
                .as_array()
                .unwrap()
                .len()
                == 2
        })
        .await
    );
    assert_eq!(backend_state(&gw, r1.addr()).await["in_flight"], 1);
    let mut second = Redis::connect(front).await;
    assert_eq!(second.server_port().await, r2.port, "least connections");
    assert_eq!(proxy_addr(&gw).await, front, "the socket is kept");

    // Another strategy: a new balancer and accept loop on the same socket; the open
    // connections go on.
    save(
        &config,
        &tcp_section("round-robin", &[r1.addr(), r2.addr()]),
    );
    hup(&gw);
    assert!(
        until(|| async { proxy_status(&gw).await["strategy"] == "weighted-round-robin" }).await
    );
    assert_eq!(open.cmd(&["PING"]).await, "+PONG");
    assert_eq!(second.cmd(&["PING"]).await, "+PONG");
    let mut ports = Vec::new();
    for _ in 0..4 {
        let mut c = Redis::connect(front).await;
        ports.push(c.server_port().await);
    }
    assert!(
        ports.contains(&r1.port) && ports.contains(&r2.port),
        "{ports:?}"
    );
}

#[tokio::test]
async fn a_tcp_listen_address_in_use_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(gateway_bin())
        .args(["--listen", "127.0.0.1:0", "--tcp-listen", &addr])
        .args(["--tcp-backend", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--tcp-listen") && err.contains(&addr), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
