//! DNS discovery with the real hickory resolver against a DNS server on 127.0.0.1.

mod server;

use std::{net::SocketAddr, time::Duration};

use crate::support::{addr_balance, backend_table, eventually, AddrSvc};

use hickory_resolver::config::{ResolveHosts, ResolverOpts};
use server::{DnsServer, Mode};
use tower_lb::{
    discover::dns::{DnsSource, HickoryResolver},
    Balance,
};

type Svc = AddrSvc;

fn balance() -> Balance<SocketAddr, Svc> {
    addr_balance()
}

fn resolver(server: &DnsServer) -> HickoryResolver {
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 1;
    // No answer cache: every resolution reaches the server.
    opts.cache_size = 0;
    HickoryResolver::with_name_servers_and_options(&[server.addr], opts).unwrap()
}

fn keys(b: &Balance<SocketAddr, Svc>) -> Vec<String> {
    let mut keys: Vec<String> = b.handle().keys().iter().map(ToString::to_string).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn record_changes_appear_within_the_ttl() {
    let server = DnsServer::start(1).await;
    server.set_host("api.test.", &["127.0.0.10", "127.0.0.11"]);
    let b = balance();
    let _guard = DnsSource::host("api.test.", 8080)
        .resolver(resolver(&server))
        .spawn(b.handle())
        .unwrap();
    assert!(eventually(10, || keys(&b) == ["127.0.0.10:8080", "127.0.0.11:8080"]).await);
    server.set_host("api.test.", &["127.0.0.11", "127.0.0.12", "::1"]);
    let want = ["127.0.0.11:8080", "127.0.0.12:8080", "[::1]:8080"];
    assert!(eventually(10, || keys(&b) == want).await, "{:?}", keys(&b));
}

#[tokio::test]
async fn servfail_and_empty_answers_keep_the_set() {
    let server = DnsServer::start(1).await;
    server.set_host("api.test.", &["127.0.0.10"]);
    let b = balance();
    let _guard = DnsSource::host("api.test.", 80)
        .resolver(resolver(&server))
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .spawn(b.handle())
        .unwrap();
    assert!(eventually(10, || keys(&b) == ["127.0.0.10:80"]).await);

    for mode in [Mode::ServFail, Mode::Empty] {
        server.set_mode(mode);
        let asked = server.queries();
        // Several failed resolutions go by (backoff ≤ 400 ms each)…
        assert!(eventually(10, || server.queries() >= asked + 3).await);
        // …and the set is what it was.
        assert_eq!(keys(&b), ["127.0.0.10:80"], "{mode:?}");
    }

    server.set_mode(Mode::Normal);
    server.set_host("api.test.", &["127.0.0.20"]);
    assert!(eventually(10, || keys(&b) == ["127.0.0.20:80"]).await);
}

#[tokio::test]
async fn srv_weights_and_priorities_map_to_weights_and_backups() {
    let server = DnsServer::start(1).await;
    server.set_srv(
        "_http._tcp.api.test.",
        &[
            (10, 5, 8080, "a.api.test."),
            (10, 0, 8081, "b.api.test."),
            (20, 2, 9000, "c.api.test."),
        ],
    );
    server.set_host("a.api.test.", &["127.0.0.1"]);
    server.set_host("b.api.test.", &["127.0.0.2"]);
    server.set_host("c.api.test.", &["127.0.0.3"]);
    let b = balance();
    let _guard = DnsSource::srv("_http._tcp.api.test.")
        .resolver(resolver(&server))
        .spawn(b.handle())
        .unwrap();
    let table = || backend_table(&b);
    let want = vec![
        ("127.0.0.1:8080".to_owned(), 5, false),
        ("127.0.0.2:8081".to_owned(), 1, false),
        ("127.0.0.3:9000".to_owned(), 2, true),
    ];
    assert!(eventually(10, || table() == want).await, "{:?}", table());

    // Re-weighting and promoting the backup show up at the next TTL.
    server.set_srv(
        "_http._tcp.api.test.",
        &[(10, 1, 8080, "a.api.test."), (10, 3, 9000, "c.api.test.")],
    );
    let want = vec![
        ("127.0.0.1:8080".to_owned(), 1, false),
        ("127.0.0.3:9000".to_owned(), 3, false),
    ];
    assert!(eventually(10, || table() == want).await, "{:?}", table());
}
