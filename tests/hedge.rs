//! Hedged requests: on the paused clock over `tower-test` mocks, then over real axum
//! servers on loopback.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Request;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{
    balance::{strategy::RoundRobin, Hedge, RetryBudget},
    http::HttpPolicy,
    test_util, Backend, Balance, BoxError,
};

use crate::support;

type Req = Request<String>;
type Mocked = Balance<
    &'static str,
    test_util::MockEndpoint<Req, &'static str>,
    HttpPolicy<tower_lb::http::CloneBody>,
>;

/// Scripted backends: the n-th request to arrive (at any backend) takes `script[n]` ms,
/// later ones `default_ms`. Records which backend got each request.
#[derive(Default)]
struct Script {
    queue: Mutex<VecDeque<u64>>,
    default_ms: Mutex<u64>,
    arrivals: Mutex<Vec<&'static str>>,
}

impl Script {
    fn new(script: &[u64], default_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(script.iter().copied().collect()),
            default_ms: Mutex::new(default_ms),
            arrivals: Mutex::default(),
        })
    }

    fn arrivals(&self) -> Vec<&'static str> {
        self.arrivals.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

fn balancer(
    names: &[&'static str],
    policy: HttpPolicy<tower_lb::http::CloneBody>,
    hedge: Hedge,
    script: &Arc<Script>,
) -> Mocked {
    let (balance, handles) = test_util::mock::<_, Req, &'static str, _>(
        Balance::builder()
            .strategy(RoundRobin::new())
            .backends(names.iter().map(|n| Backend::new(*n)))
            .track_latency(true)
            .policy(policy)
            .hedge(hedge),
    );
    for (name, mut handle) in handles {
        let script = script.clone();
        tokio::spawn(async move {
            while let Some((_req, send)) = handle.next_request().await {
                script.arrivals.lock().unwrap().push(name);
                let ms = script
                    .queue
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(*script.default_ms.lock().unwrap());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    send.send_response(name);
                });
            }
        });
    }
    balance
}

fn get() -> Req {
    Request::get("/").body(String::new()).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn stats(balance: &Mocked, name: &str) -> tower_lb::balance::BackendStats<&'static str> {
    balance
        .stats()
        .backends
        .into_iter()
        .find(|b| b.key == name)
        .unwrap()
}

async fn timed(balance: &Mocked, req: Req) -> (Result<&'static str, BoxError>, Duration) {
    let t0 = Instant::now();
    let rsp = balance.clone().oneshot(req).await;
    (rsp, t0.elapsed())
}

#[tokio::test(start_paused = true)]
async fn the_hedge_fires_after_the_delay_and_its_answer_wins_the_loser_is_cancelled() {
    // The first request stalls for 10 s, the hedge answers in 10 ms.
    let script = Script::new(&[10_000, 10], 10);
    let policy = HttpPolicy::new().replay_clone();
    let balance = balancer(&["a", "b"], policy, Hedge::after(ms(50)), &script);
    let (rsp, took) = timed(&balance, get()).await;
    let winner = rsp.unwrap();
    // Exactly the delay plus the hedge's own latency: not sent before 50 ms.
    assert_eq!(took, ms(60));
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 2);
    assert_ne!(arrivals[0], arrivals[1], "a hedge goes to another backend");
    assert_eq!(winner, arrivals[1]);
    let loser = stats(&balance, arrivals[0]);
    // The loser no longer counts in flight and left no latency sample.
    assert_eq!(loser.in_flight, 0);
    assert_eq!(loser.ewma, None);
    let won = stats(&balance, winner);
    assert_eq!(won.in_flight, 0);
    assert_eq!(won.ewma, Some(ms(10)));
}

#[tokio::test(start_paused = true)]
async fn the_first_answer_wins_when_it_comes_before_the_hedges() {
    let script = Script::new(&[70, 10_000], 10);
    let balance = balancer(
        &["a", "b"],
        HttpPolicy::new().replay_clone(),
        Hedge::after(ms(50)),
        &script,
    );
    let (rsp, took) = timed(&balance, get()).await;
    let arrivals = script.arrivals();
    assert_eq!((rsp.unwrap(), took), (arrivals[0], ms(70)));
    assert_eq!(arrivals.len(), 2);
    let hedge = stats(&balance, arrivals[1]);
    assert_eq!((hedge.in_flight, hedge.ewma), (0, None));
    assert_eq!(stats(&balance, arrivals[0]).ewma, Some(ms(70)));
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_is_not_hedged() {
    let script = Script::new(&[], 49);
    let balance = balancer(
        &["a", "b"],
        HttpPolicy::new().replay_clone(),
        Hedge::after(ms(50)),
        &script,
    );
    for _ in 0..10 {
        let (rsp, took) = timed(&balance, get()).await;
        assert!(rsp.is_ok());
        assert_eq!(took, ms(49));
    }
    assert_eq!(script.count(), 10);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_and_unreplayable_requests_are_never_hedged() {
    let script = Script::new(&[], 1000);
    let balance = balancer(
        &["a", "b"],
        HttpPolicy::new().replay_clone(),
        Hedge::after(ms(5)),
        &script,
    );
    for method in [http::Method::POST, http::Method::PATCH] {
        let req = Request::builder()
            .method(method)
            .body(String::new())
            .unwrap();
        let (rsp, took) = timed(&balance, req).await;
        assert!(rsp.is_ok());
        assert_eq!(took, ms(1000));
    }
    assert_eq!(script.count(), 2);

    // A policy that cannot replay never hedges, whatever the method.
    let (balance, handles) = test_util::mock::<_, Req, &'static str, _>(
        Balance::builder()
            .backends(["a", "b"].map(Backend::new))
            .policy(HttpPolicy::new())
            .hedge(Hedge::after(ms(5))),
    );
    let mut seen = 0;
    let call = tokio::spawn(balance.clone().oneshot(get()));
    for (_, mut h) in handles {
        tokio::time::sleep(ms(100)).await;
        while let Some(Some((_, send))) = futures_util::FutureExt::now_or_never(h.next_request()) {
            seen += 1;
            send.send_response("x");
        }
    }
    assert_eq!(call.await.unwrap().unwrap(), "x");
    assert_eq!(seen, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_never_goes_to_the_same_backend() {
    let script = Script::new(&[], 200);
    let balance = balancer(
        &["only"],
        HttpPolicy::new().replay_clone(),
        Hedge::after(ms(5)),
        &script,
    );
    let (rsp, took) = timed(&balance, get()).await;
    assert_eq!((rsp.unwrap(), took), ("only", ms(200)));
    assert_eq!(script.arrivals(), ["only"]);

    // Three backends, every first attempt stalls: each hedge goes elsewhere.
    let script = Script::new(&[], 10);
    *script.default_ms.lock().unwrap() = 10;
    let balance = balancer(
        &["a", "b", "c"],
        HttpPolicy::new().replay_clone(),
        Hedge::after(ms(5)),
        &script,
    );
    for _ in 0..9 {
        script.queue.lock().unwrap().push_back(1000);
        let (rsp, took) = timed(&balance, get()).await;
        assert!(rsp.is_ok());
        assert_eq!(took, ms(15));
    }
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 18);
    for pair in arrivals.chunks(2) {
        assert_ne!(pair[0], pair[1]);
    }
}

/// Sends `n` GETs at once that all stall, and counts the requests the backends saw.
async fn hedged_out_of(
    n: usize,
    policy: HttpPolicy<tower_lb::http::CloneBody>,
    hedge: Hedge,
) -> usize {
    let script = Script::new(&[], 1000);
    let balance = balancer(&["a", "b"], policy, hedge, &script);
    let calls: Vec<_> = (0..n).map(|_| balance.clone().oneshot(get())).collect();
    let done = futures_util::future::join_all(calls).await;
    assert!(done.iter().all(Result::is_ok));
    assert_eq!(
        stats(&balance, "a").in_flight + stats(&balance, "b").in_flight,
        0
    );
    script.count() - n
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_hedges_at_ten_percent_plus_the_floor_and_shares_the_retry_budget() {
    let own = || RetryBudget::new().ratio(0.1).min_per_second(0);
    // 10 % of 100 requests.
    let policy = HttpPolicy::new().replay_clone();
    assert_eq!(
        hedged_out_of(100, policy, Hedge::after(ms(5)).budget(own())).await,
        10
    );
    // Plus the floor: 1 per second over the 10 s TTL.
    let policy = HttpPolicy::new().replay_clone();
    let hedge = Hedge::after(ms(5)).budget(own().min_per_second(1));
    assert_eq!(hedged_out_of(100, policy, hedge).await, 20);
    // The default: 10 %, at least 3 per second over 10 s.
    let policy = HttpPolicy::new().replay_clone().without_retry_budget();
    assert_eq!(hedged_out_of(400, policy, Hedge::after(ms(5))).await, 70);
    // The budget shared with retries binds too: 5 % of 100.
    let policy = HttpPolicy::new()
        .replay_clone()
        .retry_budget(RetryBudget::new().ratio(0.05).min_per_second(0));
    assert_eq!(
        hedged_out_of(100, policy, Hedge::after(ms(5)).budget(own())).await,
        5
    );
}

#[tokio::test(start_paused = true)]
async fn a_percentile_delay_follows_the_observed_latencies() {
    let script = Script::new(&[], 10);
    let policy = HttpPolicy::new().replay_clone().without_retry_budget();
    let hedge = Hedge::percentile(0.9).budget(RetryBudget::new().ratio(1.0));
    let balance = balancer(&["a", "b"], policy, hedge, &script);
    // Below 20 samples nothing is hedged: a stalled request waits for its answer.
    for _ in 0..10 {
        assert_eq!(timed(&balance, get()).await.1, ms(10));
    }
    script.queue.lock().unwrap().push_back(300);
    assert_eq!(timed(&balance, get()).await.1, ms(300));
    for _ in 0..30 {
        assert_eq!(timed(&balance, get()).await.1, ms(10));
    }
    let before = script.count();
    // p90 is now about 10 ms (the bucket's upper end, ≤ 12.5 % above): the stalled
    // request is hedged then, and the hedge answers 10 ms later.
    script.queue.lock().unwrap().push_back(10_000);
    let took = timed(&balance, get()).await.1;
    assert!(took > ms(20) && took <= ms(22), "{took:?}");
    assert_eq!(script.count(), before + 2);

    // Latencies rise to 40 ms: the delay follows.
    *script.default_ms.lock().unwrap() = 40;
    for _ in 0..200 {
        assert_eq!(timed(&balance, get()).await.1, ms(40));
    }
    script.queue.lock().unwrap().push_back(10_000);
    let took = timed(&balance, get()).await.1;
    assert!(took > ms(80) && took <= ms(86), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_floor_bounds_the_delay_and_a_bad_percentile_is_refused() {
    let script = Script::new(&[1000], 10);
    let policy = HttpPolicy::new().replay_clone();
    let balance = balancer(
        &["a", "b"],
        policy,
        Hedge::after(ms(1)).floor(ms(30)),
        &script,
    );
    assert_eq!(timed(&balance, get()).await.1, ms(40));
    let err = Balance::builder()
        .backends([Backend::new("a")])
        .hedge(Hedge::percentile(1.5))
        .build(|_: &tower_lb::balance::Target<'_, &'static str>| {
            tower::service_fn(|_: ()| async { Ok::<_, BoxError>(()) })
        })
        .unwrap_err();
    assert!(err.to_string().contains("hedge percentile"), "{err}");
}

// === over real servers ===

/// A backend that answers its name after `delay`, counting the requests it began.
async fn server(
    name: &'static str,
    delay: Duration,
) -> (support::TestServer, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hits.clone();
    let router = axum::Router::new().fallback(move || {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            tokio::time::sleep(delay).await;
            name
        }
    });
    (support::TestServer::start(router).await, hits)
}

async fn answers(
    hedge: Option<Hedge>,
    slow_ms: u64,
) -> (Vec<String>, usize, Vec<(String, usize, bool)>) {
    use http_body_util::BodyExt;
    let (slow, slow_hits) = server("slow", ms(slow_ms)).await;
    let (fast, _) = server("fast", ms(1)).await;
    let builder = Balance::builder()
        .strategy(RoundRobin::new())
        .backends([Backend::new(slow.addr), Backend::new(fast.addr)])
        .track_latency(true)
        .policy(HttpPolicy::new().replay_clone());
    let builder = match hedge {
        Some(h) => builder.hedge(h),
        None => builder,
    };
    let balance = builder.build(tower_lb::http::HttpEndpoints::new()).unwrap();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let req = Request::get("/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let rsp = balance.clone().oneshot(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        seen.push(String::from_utf8(body.to_vec()).unwrap());
    }
    let stats = balance
        .stats()
        .backends
        .into_iter()
        .map(|b| {
            (
                if b.key == slow.addr { "slow" } else { "fast" }.to_string(),
                b.in_flight,
                b.ewma.is_some(),
            )
        })
        .collect();
    (
        seen,
        slow_hits.load(std::sync::atomic::Ordering::Relaxed),
        stats,
    )
}

#[tokio::test]
async fn hedging_over_real_servers_takes_every_answer_from_the_fast_one() {
    // Without hedging, round robin waits on the slow backend for half the requests.
    let (seen, _, _) = answers(None, 300).await;
    assert_eq!(seen.iter().filter(|s| *s == "slow").count(), 10, "{seen:?}");
    // With hedging, the requests sent to the slow one (it would take 30 s) are hedged to
    // the fast one, which answers first; the slow attempts are cancelled.
    let (seen, slow_hits, stats) = answers(Some(Hedge::after(ms(50))), 30_000).await;
    assert!(seen.iter().all(|s| s == "fast"), "{seen:?}");
    assert!(
        slow_hits >= 5,
        "the slow backend got first attempts: {slow_hits}"
    );
    for (name, in_flight, sampled) in stats {
        assert_eq!(in_flight, 0, "{name}: cancelled attempts no longer count");
        assert_eq!(
            sampled,
            name == "fast",
            "{name}: only answers are latency samples"
        );
    }
}
