use super::*;

fn load(text: &str) -> Result<Vec<String>, String> {
    let dir = std::env::temp_dir().join(format!("tower-lb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{n}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = words(&path).map_err(|e| {
        let s = e.to_string();
        s[s.find(".toml").map_or(0, |i| i + 5)..].to_owned()
    });
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn a_file_becomes_the_same_flags() {
    let words = load(
        r#"
listen = "127.0.0.1:9000"
strategy = "least-conn"
fail-timeout = "5s"
http2 = true
rewrite-host = false
trusted-proxy = ["10.0.0.0/8", "192.168.0.0/16"]

[[backend]]
url = "10.0.0.1:8080"
weight = 3

[[backend]]
address = "10.0.0.9:8080"
backup = true

[[pool]]
name = "api"
backends = [{ url = "10.0.1.1:9000" }, { url = "10.0.1.2:9000", weight = 2 }]

[[route]]
prefix = "/api/"
pool = "api"
"#,
    )
    .unwrap();
    let args = Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).unwrap();
    assert_eq!(args.listen.port(), 9000);
    assert_eq!(args.fail_timeout, std::time::Duration::from_secs(5));
    assert!(args.http2 && !args.rewrite_host);
    assert_eq!(args.trusted_proxies.len(), 2);
    assert_eq!(args.backends.len(), 2);
    assert_eq!((args.backends[0].weight, args.backends[1].priority), (3, 1));
    let crate::cli::Source::List(api) = &args.pools[0].source else {
        panic!("a list")
    };
    assert_eq!(api[1].weight, 2);
    assert_eq!(args.routes, [("/api/".to_owned(), "api".to_owned())]);
}

#[test]
fn pools_from_files_and_dns_and_tcp_sections() {
    let words = load(
        r#"
backends_file = "default.toml"
dns-server = ["127.0.0.1:5353"]
health_interval = "1s"

[[pool]]
name = "web"
backends_file = "/abs/web.toml"

[[pool]]
name = "srv"
dns = "_http._tcp.srv.internal"

[[tcp]]
listen = "127.0.0.1:6380"
backends = [{ address = "127.0.0.1:6379", weight = 2 }, { address = "[::1]:6379", backup = true }]

[[tcp]]
listen = "127.0.0.1:6381"
strategy = "round-robin"
backends = [{ address = "cache.internal:6379" }]
"#,
    )
    .unwrap();
    let args = Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).unwrap();
    // Relative to the configuration file's directory.
    let file = args.backends_file.unwrap();
    assert!(
        file.is_absolute() && file.ends_with("default.toml"),
        "{file:?}"
    );
    assert_eq!(args.dns_servers.len(), 1);
    assert_eq!(
        args.health_interval,
        Some(std::time::Duration::from_secs(1))
    );
    use crate::cli::{Source, StrategyName};
    assert_eq!(args.pools[0].source, Source::File("/abs/web.toml".into()));
    assert_eq!(
        args.pools[1].source,
        Source::Dns("_http._tcp.srv.internal".into())
    );
    assert_eq!(args.tcp_proxies.len(), 2);
    let t = &args.tcp_proxies[0];
    assert_eq!((t.listen.port(), t.strategy), (6380, None));
    assert_eq!((t.backends[0].weight, t.backends[1].priority), (2, 1));
    assert_eq!(args.tcp_proxies[1].strategy, Some(StrategyName::RoundRobin));
}

#[test]
fn bad_pool_and_tcp_sections_name_their_line() {
    let two = load(
        "[[pool]]
name = \"p\"
dns = \"a:1\"
backends_file = \"b\"
",
    )
    .unwrap_err();
    assert!(two.starts_with(":2: pool: give exactly one"), "{two}");
    let none = load(
        "[[pool]]
name = \"p\"
",
    )
    .unwrap_err();
    assert!(none.starts_with(":2: pool:"), "{none}");
    let dns = load(
        "\n[[pool]]
name = \"p\"
dns = \"no-port\"
",
    )
    .unwrap_err();
    assert!(dns.starts_with(":3: pool:"), "{dns}");
    let listen = load(
        "[[tcp]]
listen = \"nowhere\"
backends = [{ address = \"a:1\" }]
",
    )
    .unwrap_err();
    assert!(listen.starts_with(":2: tcp:"), "{listen}");
    let strategy = load(
        "[[tcp]]
listen = \"127.0.0.1:1\"
strategy = \"fastest\"
backends = [{ address = \"a:1\" }]
",
    )
    .unwrap_err();
    assert!(
        strategy.starts_with(":2: tcp:") && strategy.contains("fastest"),
        "{strategy}"
    );
    let addr = load(
        "[[tcp]]
listen = \"127.0.0.1:1\"
backends = [{ address = \"a\" }]
",
    )
    .unwrap_err();
    assert!(addr.starts_with(":2: tcp:"), "{addr}");
}

#[test]
fn errors_name_the_line_and_the_field() {
    assert_eq!(
        load("strategy = \"p2c\"\nfail-timeout = \"5x\"\n").unwrap_err(),
        ":2: fail-timeout: invalid value '5x' for '--fail-timeout <DUR>': unknown duration unit \"x\" in \"5x\""
    );
    assert!(load("\n\nmax-fails = \"many\"")
        .unwrap_err()
        .starts_with(":3: max-fails:"));
    assert!(
        load("[[backend]]\nurl = \"10.0.0.1:80\"\nweigth = 2\n")
            .unwrap_err()
            .starts_with(":3: unknown field `weigth`"),
        "{:?}",
        load("[[backend]]\nurl = \"10.0.0.1:80\"\nweigth = 2\n")
    );
    assert!(load("[[backend]]\nurl = \"10.0.0.1:80\"\nweight = 0\n")
        .unwrap_err()
        .starts_with(":2: backend:"));
    assert!(load("no-such-flag = 1\n")
        .unwrap_err()
        .starts_with(":1: no-such-flag:"));
    assert!(load("check = true\n")
        .unwrap_err()
        .starts_with(":1: check:"));
    let unclosed = load("strategy = [\n").unwrap_err();
    assert!(
        unclosed.starts_with(":1:") || unclosed.starts_with(":2:"),
        "{unclosed}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary files, and near-valid ones: words or one error line, never a panic.
    #[test]
    fn any_file_is_read_or_refused_on_one_line(
        text in "\\PC{0,200}",
        keys in proptest::collection::vec(
            proptest::sample::select(vec!["strategy", "max-fails", "timeout", "listen", "backend", "pool", "route", "http2"]),
            0..5,
        ),
        values in proptest::collection::vec("[ -~]{0,12}", 0..5),
    ) {
        if let Err(e) = load(&text) {
            proptest::prop_assert_eq!(e.lines().count(), 1);
        }
        let doc: String = keys
            .iter()
            .zip(values.iter())
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        match load(&doc) {
            Ok(words) => {
                proptest::prop_assert!(Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).is_ok());
            }
            Err(e) => proptest::prop_assert_eq!(e.lines().count(), 1),
        }
    }
}

#[test]
fn tls_settings_pair_up_and_their_paths_are_relative_to_the_file() {
    let words = load(
        r#"
tls-cert = "certs/gw.pem"
tls-key = "/abs/gw.key"
backend-ca = ["ca.pem"]
health-path = "/health"
health-expect-body = "OK"

[[tls-sni]]
name = "api.example.com"
cert = "api.pem"
key = "api.key"
"#,
    )
    .unwrap();
    let args = Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).unwrap();
    let dir = std::env::temp_dir().join(format!("tower-lb-config-{}", std::process::id()));
    assert_eq!(args.tls_cert.unwrap(), dir.join("certs/gw.pem"));
    assert_eq!(
        args.tls_key.unwrap(),
        std::path::PathBuf::from("/abs/gw.key")
    );
    assert_eq!(args.backend_ca, [dir.join("ca.pem")]);
    assert_eq!(args.health_expect_body.as_deref(), Some("OK"));
    let sni = &args.tls_sni[0];
    assert_eq!(sni.name, "api.example.com");
    assert_eq!(
        (sni.cert.clone(), sni.key.clone()),
        (dir.join("api.pem"), dir.join("api.key"))
    );
    // The pair is still required: the whole file is parsed with the command line.
    let lone = load("tls-cert = \"gw.pem\"\n").unwrap();
    let err = Args::try_parse_from(std::iter::once("gw".to_owned()).chain(lone)).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    // A bad SNI entry names its line and field.
    let bad = load("[[tls-sni]]\nname = \"\"\ncert = \"a\"\nkey = \"b\"\n").unwrap_err();
    assert!(bad.starts_with(":2: tls-sni:"), "{bad}");
}
