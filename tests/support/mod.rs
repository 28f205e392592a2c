//! Real HTTP servers on 127.0.0.1 for integration tests.
// Shared by the library's tests, whose modules depend on features, and the gateway's:
// each uses a part.
#![allow(dead_code, unreachable_pub)]

pub mod pki;

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};

/// An axum server whose connections can all be killed at once, so that its port refuses
/// connections afterwards (axum's own `serve` leaves accepted connections running).
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` on a fresh 127.0.0.1 port.
    pub async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, router)
    }

    /// Serves `router` on `addr` again (after a stop), retrying while the port is busy.
    pub async fn restart(addr: SocketAddr, router: Router) -> Self {
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                return Self::start_on(listener, router);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("could not rebind {addr}");
    }

    fn start_on(listener: TcpListener, router: Router) -> Self {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task drops the set, which aborts them.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = TowerToHyperService::new(router.clone());
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, task }
    }

    /// Kills the listener and every connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A router answering every path with `name`, and `/health` with `OK`.
pub fn named(name: &'static str) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .fallback(move || async move { name })
}

/// Polls `cond` every 10 ms for up to 10 s, and fails the test if it never holds.
pub async fn wait_for(cond: impl FnMut() -> bool) {
    assert!(eventually(10, cond).await, "condition not met within 10 s");
}

/// Polls `cond` every 10 ms for up to `secs` seconds; whether it came to hold.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// An endpoint that answers with its own backend address.
pub type AddrSvc = tower::util::BoxCloneSyncService<(), SocketAddr, std::convert::Infallible>;

/// A balancer over [`AddrSvc`] endpoints, for discovery tests that read its set.
pub fn addr_balance() -> tower_lb::Balance<SocketAddr, AddrSvc> {
    tower_lb::Balance::builder()
        .build(|t: &tower_lb::balance::Target<'_, SocketAddr>| {
            let addr = *t.key();
            AddrSvc::new(tower::service_fn(move |_: ()| async move {
                Ok::<_, std::convert::Infallible>(addr)
            }))
        })
        .unwrap()
}

/// The set of an [`addr_balance`] as sorted `(key, weight, backup)` rows: what a
/// discovery test compares with the set its source should have produced.
pub fn backend_table(b: &tower_lb::Balance<SocketAddr, AddrSvc>) -> Vec<(String, u32, bool)> {
    let mut t: Vec<_> = b
        .stats()
        .backends
        .iter()
        .map(|s| (s.key.to_string(), s.weight, s.backup))
        .collect();
    t.sort();
    t
}

/// A third-party peer (a Python server from `tests/peers/`) running as a child process,
/// killed on drop.
pub struct Peer {
    child: std::process::Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id of the peer.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether the Python modules a peer needs are installed. Under `CI=true` a missing one
/// fails the test (CI installs them); elsewhere the test says so and returns early.
pub fn have_python(modules: &[&str]) -> bool {
    let import = format!("import {}", modules.join(", "));
    let ok = std::process::Command::new("python3")
        .args(["-c", &import])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with {modules:?} is required under CI=true (`.ci/run` installs it)"
        );
        eprintln!("skipped: python3 with {modules:?} is not installed");
    }
    ok
}

/// Whether a command is on the PATH; like [`have_python`], a missing one fails under
/// `CI=true`.
pub fn have_command(cmd: &str) -> bool {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{cmd} is required under CI=true (`.ci/run` installs it)"
        );
        eprintln!("skipped: {cmd} is not installed");
    }
    ok
}

/// Starts `tests/peers/<script>` with `args` and waits (up to 60 s) for the
/// `PORT <n>` line it prints once listening.
pub async fn python_peer(script: &str, args: &[&str]) -> Peer {
    // From the library's tests or the gateway's (one directory down).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = [root.join("tests/peers"), root.join("../tests/peers")]
        .into_iter()
        .find(|d| d.is_dir())
        .expect("tests/peers")
        .join(script);
    let mut child = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the peer's port");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(60), line)
        .await
        .unwrap_or_else(|_| panic!("{script} printed no port within 60 s"))
        .expect("reader");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script}: unexpected first line {line:?}"));
    Peer { child, port }
}

/// Starts `program` with the arguments `args` gives for a free 127.0.0.1 port, and
/// waits (up to 10 s) until the program itself listens there. The port is found by
/// binding port 0 and letting it go; if the program exits before it listens (someone
/// else took the port meanwhile, perhaps a server of a test running beside this one), it
/// is started again on another port, up to three times. A connection to the port is not
/// proof: it would also reach whoever took the port.
pub async fn command_peer(program: &str, args: impl Fn(u16) -> Vec<String>) -> Peer {
    // Ports handed out by this process: tests run in parallel, and two of them could be
    // given the same free port one after the other.
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..3 {
        let port = loop {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
            if !taken.contains(&port) {
                taken.push(port);
                break port;
            }
        };
        let child = std::process::Command::new(program)
            .args(args(port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let mut peer = Peer { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if listens(peer.child.id(), port)
                && tokio::net::TcpStream::connect(peer.addr()).await.is_ok()
            {
                return peer;
            }
            if peer.child.try_wait().ok().flatten().is_some() {
                break; // exited: try another port
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(peer);
    }
    panic!("{program} did not start listening");
}

/// Whether process `pid` holds a socket listening on TCP `port` (Linux: the listening
/// sockets of `/proc/net/tcp{,6}` against the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let port = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local address, state (0A: LISTEN), inode
                    (fields.len() > 9 && fields[1].ends_with(&port) && fields[3] == "0A")
                        .then(|| format!("socket:[{}]", fields[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}
