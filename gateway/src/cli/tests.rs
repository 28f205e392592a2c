use super::*;
use proptest::prelude::*;
use tower_lb::http::parse_base;

#[test]
fn backend_addresses_become_one_key() {
    for same in [
        "127.0.0.1:80",
        "http://127.0.0.1:80",
        "http://127.0.0.1:80/",
        " 127.0.0.1:80",
    ] {
        assert_eq!(
            backend_url(same).as_deref(),
            Ok("http://127.0.0.1:80"),
            "{same}"
        );
    }
    assert_eq!(
        backend_url("https://api:8443").as_deref(),
        Ok("https://api:8443")
    );
    assert!(backend_url("ftp://api:21").is_err());
    assert!(backend_url("http://api:80/path").is_err());
}

#[test]
fn pools_come_from_lists_files_or_dns() {
    let p = parse_pool("api=file:/etc/backends.toml").unwrap();
    assert_eq!(p.source, Source::File("/etc/backends.toml".into()));
    let p = parse_pool("api=dns:_http._tcp.api.example").unwrap();
    assert_eq!(p.source, Source::Dns("_http._tcp.api.example".into()));
    let p = parse_pool("api=10.0.0.1:80,weight=2,10.0.0.2:80,backup").unwrap();
    let Source::List(list) = p.source else {
        panic!("a list")
    };
    assert_eq!((list[0].weight, list[1].priority), (2, 1));
    assert!(parse_pool("api=file:").is_err());
    assert!(parse_pool("api=dns:no-port").is_err());
}

#[test]
fn tcp_proxies_parse() {
    let t =
        parse_tcp_proxy("127.0.0.1:6380=strategy=round-robin,a:6379,weight=3,[::1]:6379,backup")
            .unwrap();
    assert_eq!(t.listen.port(), 6380);
    assert_eq!(t.strategy, Some(StrategyName::RoundRobin));
    assert_eq!(t.backends.len(), 2);
    assert_eq!((t.backends[0].weight, t.backends[1].priority), (3, 1));
    for bad in [
        "127.0.0.1:6380=",
        "nowhere=a:1",
        "127.0.0.1:1=a",
        "127.0.0.1:1=a:0",
        "127.0.0.1:1=::1:6379",
        "127.0.0.1:1=strategy=fastest,a:1",
        "127.0.0.1:1=a:1,heavy",
    ] {
        assert!(parse_tcp_proxy(bad).is_err(), "{bad}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
    for bad in ["", "s", "-1s", "1d", "1e400", "NaN", "inf"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn outlier_flags() {
    let args = Args::try_parse_from([
        "tower-lb-gateway",
        "--outlier-detection",
        "failure-percentage",
        "--outlier-interval",
        "2s",
        "--outlier-min-requests",
        "20",
        "--outlier-min-hosts",
        "3",
    ])
    .unwrap();
    assert_eq!(args.outlier_detection, Some(OutlierTest::FailurePercentage));
    assert_eq!(args.outlier_interval, Duration::from_secs(2));
    assert_eq!(
        (args.outlier_min_requests, args.outlier_min_hosts),
        (Some(20), Some(3))
    );
    let off = Args::try_parse_from(["tower-lb-gateway"]).unwrap();
    assert_eq!(off.outlier_detection, None);
    for bad in [
        &["--outlier-detection", "sometimes"][..],
        &[
            "--outlier-detection",
            "success-rate",
            "--outlier-interval",
            "0s",
        ],
        &["--outlier-min-hosts", "3"],
        &[
            "--outlier-detection",
            "success-rate",
            "--outlier-min-requests",
            "-1",
        ],
    ] {
        let argv = std::iter::once("tower-lb-gateway").chain(bad.iter().copied());
        assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Every flag parser over arbitrary text: a value, or an error saying why; what
    /// parses holds what the flag promises.
    #[test]
    fn flag_values_parse_or_say_why(text in "\\PC{0,60}|[0-9a-z.:/=,\\[\\]-]{0,40}") {
        match parse_backend(&text) {
            Ok(b) => {
                prop_assert!(b.weight >= 1);
                prop_assert!(parse_base(&b.url).is_ok(), "{}", b.url);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
        match parse_pool(&text) {
            Ok(p) => {
                prop_assert!(!p.name.is_empty());
                if let Source::List(list) = &p.source {
                    prop_assert!(!list.is_empty());
                }
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
        match parse_tcp_proxy(&text) {
            Ok(t) => prop_assert!(!t.backends.is_empty() && t.backends.iter().all(|b| b.weight >= 1)),
            Err(e) => prop_assert!(!e.is_empty()),
        }
        if let Ok(b) = parse_tcp_backend(&text) {
            prop_assert!(b.addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0)));
        }
        let _ = parse_dns(&text);
        if let Ok((prefix, _)) = parse_route(&text) {
            prop_assert!(prefix.starts_with('/'));
        }
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d <= Duration::from_secs(1_000_000_000));
        }
        let _ = parse_hash_key(&text);
        let _ = parse_cidr(&text);
        let _ = parse_json_expect(&text);
    }

    /// Whole command lines built from the flags' words: parsed or refused, never a
    /// panic.
    #[test]
    fn command_lines_parse_or_are_refused(words in prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "--backend", "--pool", "--route", "--strategy", "--retries", "--timeout",
                "--max-fails", "--fail-timeout", "--hash-key", "--sticky-cookie",
                "--trusted-proxy", "--workers", "--max-connections", "--health-path",
                "--health-expect-json", "--client-header-timeout", "--slow-start",
                "--backends-file", "--dns", "--dns-server", "--tcp-listen", "--tcp-backend",
                "--tcp-strategy", "--tcp-proxy", "--outlier-detection", "--outlier-interval",
                "--outlier-min-requests", "--outlier-min-hosts",
            ]).prop_map(str::to_owned),
            "[ -~]{0,16}",
        ],
        0..10,
    )) {
        let argv = std::iter::once("tower-lb-gateway".to_owned()).chain(words);
        let _ = Args::try_parse_from(argv);
    }
}

#[test]
fn hedge_after_takes_a_duration_or_a_percentile() {
    assert_eq!(
        parse_hedge_after("50ms"),
        Ok(HedgeAfter::Delay(Duration::from_millis(50)))
    );
    assert_eq!(parse_hedge_after("p95"), Ok(HedgeAfter::Percentile(0.95)));
    let Ok(HedgeAfter::Percentile(q)) = parse_hedge_after("p99.9") else {
        panic!("p99.9 is a percentile");
    };
    assert!((q - 0.999).abs() < 1e-12, "{q}");
    for bad in ["p100", "p0", "p-1", "pxx", "fast", ""] {
        assert!(parse_hedge_after(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_percent("10"), Ok(10.0));
    assert_eq!(parse_percent("2.5%"), Ok(2.5));
    assert!(parse_percent("101").is_err() && parse_percent("-1").is_err());
    let args = Args::try_parse_from(["gw", "--hedge-after", "p95"]).unwrap();
    assert_eq!(
        (args.hedge_after, args.hedge_budget),
        (Some(HedgeAfter::Percentile(0.95)), 10.0)
    );
}
