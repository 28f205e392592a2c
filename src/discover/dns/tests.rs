//! Timing and mapping tests on paused time with a scripted resolver.

use super::*;
use crate::balance::Target;
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};
use tokio::time::Instant;
use tower::service_fn;

type Svc<K> = tower::util::BoxCloneSyncService<(), K, Infallible>;

type Scripted<T> = Result<Answer<T>, String>;

/// Answers from a script; the last answer repeats. Records when it was asked.
#[derive(Clone, Default)]
struct Script {
    ip: Arc<Mutex<VecDeque<Scripted<IpAddr>>>>,
    srv: Arc<Mutex<VecDeque<Scripted<SrvRecord>>>>,
    targets: Arc<Mutex<HashMap<String, Answer<IpAddr>>>>,
    asked: Arc<Mutex<Vec<Instant>>>,
}

fn next<T: Clone>(q: &Mutex<VecDeque<Scripted<T>>>) -> Result<Answer<T>, BoxError> {
    let mut q = q.lock().unwrap();
    let item = if q.len() > 1 {
        q.pop_front().unwrap()
    } else {
        q.front().cloned().expect("script is empty")
    };
    item.map_err(Into::into)
}

impl Script {
    fn ip(self, answer: Scripted<IpAddr>) -> Self {
        self.ip.lock().unwrap().push_back(answer);
        self
    }

    fn srv(self, answer: Scripted<SrvRecord>) -> Self {
        self.srv.lock().unwrap().push_back(answer);
        self
    }

    fn target(self, name: &str, ips: &[&str], ttl: u64) -> Self {
        self.targets
            .lock()
            .unwrap()
            .insert(name.to_owned(), ok(ips, ttl).unwrap());
        self
    }

    fn asked_at(&self) -> Vec<Duration> {
        let asked = self.asked.lock().unwrap();
        asked.iter().map(|t| *t - asked[0]).collect()
    }
}

impl Resolve for Script {
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Answer<IpAddr>, BoxError>> {
        Box::pin(async move {
            if let Some(a) = self.targets.lock().unwrap().get(host) {
                return Ok(a.clone());
            }
            self.asked.lock().unwrap().push(Instant::now());
            next(&self.ip)
        })
    }

    fn lookup_srv<'a>(
        &'a self,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvRecord>, BoxError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(Instant::now());
            next(&self.srv)
        })
    }
}

fn ok(ips: &[&str], ttl: u64) -> Scripted<IpAddr> {
    Ok(Answer::new(
        ips.iter().map(|s| s.parse().unwrap()).collect(),
        Duration::from_secs(ttl),
    ))
}

fn balance(made: Arc<AtomicUsize>) -> crate::Balance<SocketAddr, Svc<SocketAddr>> {
    crate::Balance::builder()
        .build(move |t: &Target<'_, SocketAddr>| {
            made.fetch_add(1, Ordering::SeqCst);
            let k = *t.key();
            Svc::new(service_fn(
                move |_: ()| async move { Ok::<_, Infallible>(k) },
            ))
        })
        .unwrap()
}

fn ips(b: &crate::Balance<SocketAddr, Svc<SocketAddr>>) -> Vec<String> {
    let mut keys: Vec<String> = b
        .handle()
        .keys()
        .iter()
        .map(|a| a.ip().to_string())
        .collect();
    keys.sort();
    keys
}

fn secs(s: &[u64]) -> Vec<Duration> {
    s.iter().map(|&s| Duration::from_secs(s)).collect()
}

#[tokio::test(start_paused = true)]
async fn re_resolves_at_the_ttl() {
    let script = Script::default()
        .ip(ok(&["10.0.0.1"], 5))
        .ip(ok(&["10.0.0.1"], 7))
        .ip(ok(&["10.0.0.2"], 5));
    let b = balance(Arc::default());
    let _guard = DnsSource::host("svc", 80)
        .resolver(script.clone())
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(ips(&b), ["10.0.0.1"]);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(ips(&b), ["10.0.0.1"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ips(&b), ["10.0.0.2"]);
    assert_eq!(script.asked_at(), secs(&[0, 5, 12]));
}

#[tokio::test(start_paused = true)]
async fn ttl_is_clamped_to_min_and_max() {
    let script = Script::default()
        .ip(ok(&["10.0.0.1"], 0))
        .ip(ok(&["10.0.0.1"], 0))
        .ip(ok(&["10.0.0.1"], 86_400));
    let b = balance(Arc::default());
    let _guard = DnsSource::host("svc", 80)
        .resolver(script.clone())
        .min_ttl(Duration::from_secs(2))
        .max_ttl(Duration::from_secs(30))
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(script.asked_at(), secs(&[0, 2, 4, 34, 64, 94]));
}

#[tokio::test(start_paused = true)]
async fn errors_keep_the_last_set_and_back_off_with_jitter() {
    let script = Script::default()
        .ip(ok(&["10.0.0.1", "10.0.0.2"], 10))
        .ip(Err("SERVFAIL".into()))
        .ip(Err("timeout".into()))
        .ip(Ok(Answer::new(vec![], Duration::ZERO)))
        .ip(Err("SERVFAIL".into()))
        .ip(Err("SERVFAIL".into()))
        .ip(Err("SERVFAIL".into()))
        .ip(ok(&["10.0.0.3"], 10));
    let b = balance(Arc::default());
    let _guard = DnsSource::host("svc", 80)
        .resolver(script.clone())
        .backoff(Duration::from_secs(1), Duration::from_secs(8))
        .jitter_seed(7)
        .spawn(b.handle())
        .unwrap();
    // Six failures: waits of at most 1 + 2 + 4 + 8 + 8 + 8 s after the first TTL.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ips(&b) == ["10.0.0.3"] {
            break;
        }
        assert_eq!(ips(&b), ["10.0.0.1", "10.0.0.2"]);
    }
    assert_eq!(ips(&b), ["10.0.0.3"]);
    let at = script.asked_at();
    assert_eq!(at.len(), 8);
    assert_eq!(at[1], Duration::from_secs(10));
    let caps = [1u64, 2, 4, 8, 8, 8];
    for (i, cap) in caps.iter().enumerate() {
        let wait = at[i + 2] - at[i + 1];
        let cap = Duration::from_secs(*cap);
        assert!(
            wait >= cap / 2 && wait <= cap,
            "wait {i}: {wait:?} vs cap {cap:?}"
        );
    }
    // Jitter: the waits are not all at the same point of their range.
    let ratios: Vec<u128> = caps
        .iter()
        .enumerate()
        .map(|(i, c)| (at[i + 2] - at[i + 1]).as_millis() * 1000 / (u128::from(*c) * 1000))
        .collect();
    assert!(ratios.iter().any(|r| *r != ratios[0]), "{ratios:?}");
}

#[tokio::test(start_paused = true)]
async fn the_first_failure_leaves_the_set_empty_and_retries() {
    let script = Script::default()
        .ip(Err("unreachable".into()))
        .ip(ok(&["10.0.0.1"], 10));
    let b = balance(Arc::default());
    let _guard = DnsSource::host("svc", 80)
        .resolver(script.clone())
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(ips(&b).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ips(&b), ["10.0.0.1"]);
}

#[tokio::test(start_paused = true)]
async fn unchanged_backends_keep_their_service_and_state() {
    let script = Script::default()
        .ip(ok(&["10.0.0.1", "10.0.0.2"], 1))
        .ip(ok(&["10.0.0.2", "10.0.0.1"], 1))
        .ip(ok(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], 1));
    let made = Arc::new(AtomicUsize::new(0));
    let b = balance(made.clone());
    let _guard = DnsSource::host("svc", 80)
        .resolver(script)
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(made.load(Ordering::SeqCst), 2);
    let mut svc = b.clone();
    let picked = tower::Service::call(&mut svc, ()).await.unwrap();
    let before: u64 = b.stats().backends.iter().map(|s| s.requests).sum();
    assert_eq!(before, 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One make for the new address only; the request count survived.
    assert_eq!(made.load(Ordering::SeqCst), 3);
    let stats = b.stats();
    let kept = stats.backends.iter().find(|s| s.key == picked).unwrap();
    assert_eq!(kept.requests, 1);
}

#[tokio::test(start_paused = true)]
async fn srv_priorities_become_levels_and_weights_map() {
    let script = Script::default()
        .srv(Ok(Answer::new(
            vec![
                SrvRecord::new(10, 5, 8080, "a.svc."),
                SrvRecord::new(10, 0, 8081, "b.svc."),
                SrvRecord::new(20, 3, 9090, "c.svc."),
                SrvRecord::new(30, 1, 9091, "10.0.0.9"),
                // Same address as a.svc at a worse priority: keeps priority 10.
                SrvRecord::new(20, 1, 8080, "a.svc."),
            ],
            Duration::from_secs(30),
        )))
        .target("a.svc.", &["10.0.0.1", "fd00::1"], 5)
        .target("b.svc.", &["10.0.0.2"], 60)
        .target("c.svc.", &["10.0.0.3"], 60);
    let b = balance(Arc::default());
    let _guard = DnsSource::srv("_http._tcp.svc")
        .resolver(script.clone())
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut got: Vec<(String, u32, u8)> = b
        .stats()
        .backends
        .iter()
        .map(|s| (s.key.to_string(), s.weight, s.priority))
        .collect();
    got.sort();
    // Priorities 10, 20, 30 → levels 0, 1, 2.
    assert_eq!(
        got,
        [
            ("10.0.0.1:8080".to_owned(), 5, 0),
            ("10.0.0.2:8081".to_owned(), 1, 0),
            ("10.0.0.3:9090".to_owned(), 3, 1),
            ("10.0.0.9:9091".to_owned(), 1, 2),
            ("[fd00::1]:8080".to_owned(), 5, 0),
        ]
    );
    // The TTL is the lowest of the SRV answer and its targets (a.svc: 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(script.asked_at(), secs(&[0, 5]));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_stops_the_task() {
    let script = Script::default().ip(ok(&["10.0.0.1"], 1));
    let b = balance(Arc::default());
    let guard = DnsSource::host("svc", 80)
        .resolver(script.clone())
        .spawn(b.handle())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(script.asked_at().len(), 3);
    assert!(!guard.is_finished());
    drop(guard);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(script.asked_at().len(), 3);
    // The last set stays.
    assert_eq!(ips(&b), ["10.0.0.1"]);
}

#[test]
fn parses_names() {
    let q = |s: &str| DnsSource::parse(s).map(|d| d.query);
    assert_eq!(
        q("localhost:8080"),
        Ok(Query::Host {
            host: "localhost".into(),
            port: 8080
        })
    );
    assert_eq!(
        q("[::1]:80"),
        Ok(Query::Host {
            host: "::1".into(),
            port: 80
        })
    );
    assert_eq!(
        q("_grpc._tcp.api"),
        Ok(Query::Srv {
            name: "_grpc._tcp.api".into()
        })
    );
    assert!(q("localhost").is_err());
    assert!(q("::1:80").is_err());
    assert!(q("host:http").is_err());
}
