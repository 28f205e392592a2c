//! Discovery churn on a large set: 10,000 endpoints, 1,000 changes per second applied
//! through the discovery handle while requests flow; the pick cost beside the static
//! figure, the cost of one change, and the memory per endpoint.
//!
//! `cargo bench --bench discovery --features test-util`
//!
//! Memory is counted by a wrapping global allocator (`stats_alloc`): the bytes still
//! allocated after building the balancer, divided by the endpoint count.

// The churn runs on a plain thread, paced by the std clock; no tokio clock there.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    alloc::System,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{rt, time_requests};
use criterion::{BenchmarkId, Criterion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_lb::{
    balance::strategy::{LeastConn, P2c, RoundRobin, Strategy, WeightedRoundRobin},
    test_util::{self, Echo},
    Backend, Balance,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 10_000;
const CHANGES_PER_SEC: u64 = 1_000;

fn addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        8080,
    ))
}

fn balance(strategy: impl Strategy) -> Balance<SocketAddr, Echo<SocketAddr>> {
    test_util::echo(
        Balance::builder()
            .strategy(strategy)
            .backends((0..N).map(|i| Backend::new(addr(i)))),
    )
}

/// Applies `CHANGES_PER_SEC` changes per second on another thread until stopped: removes
/// an endpoint, then puts it back (every change publishes a snapshot). Weights stay 1 so
/// the set has the same shape as the static one (non-uniform weights send P2C down its
/// prefix-sum path, a different cost that has nothing to do with churn).
struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    busy_ns: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Churn {
    fn start(b: &Balance<SocketAddr, Echo<SocketAddr>>) -> Self {
        let handle = b.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let busy_ns = Arc::new(AtomicU64::new(0));
        let (s, d, busy) = (stop.clone(), done.clone(), busy_ns.clone());
        let thread = std::thread::spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / CHANGES_PER_SEC);
            let mut next = std::time::Instant::now();
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let key = addr((i / 2 * 7919) % N);
                if i.is_multiple_of(2) {
                    handle.remove(&key);
                } else {
                    handle.insert(Backend::new(key)).unwrap();
                }
                busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                d.fetch_add(1, Ordering::Relaxed);
                i += 1;
                next += period;
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(100) {
                    // Behind: do not try to catch up in a burst.
                    next = now;
                }
            }
        });
        Self {
            stop,
            done,
            busy_ns,
            thread: Some(thread),
            started: std::time::Instant::now(),
        }
    }

    /// (changes per second achieved, mean µs per change)
    fn finish(mut self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let secs = self.started.elapsed().as_secs_f64();
        let done = self.done.load(Ordering::Relaxed) as f64;
        let busy = self.busy_ns.load(Ordering::Relaxed) as f64 / 1_000.0;
        (done / secs, busy / done.max(1.0))
    }
}

fn picks(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("discovery-pick");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    type Make = fn() -> Balance<SocketAddr, Echo<SocketAddr>>;
    let strategies: [(&str, Make); 2] = [
        ("round-robin", || balance(RoundRobin::new())),
        ("p2c", || balance(P2c::with_seed(1))),
    ];
    for (name, make) in strategies {
        for churn in [false, true] {
            let mut svc = make();
            let churner = churn.then(|| Churn::start(&svc));
            let id = if churn { "churn-1000/s" } else { "static" };
            g.bench_with_input(BenchmarkId::new(name, id), &N, |b, _| {
                b.iter_custom(|iters| time_requests(&rt, &mut svc, iters, || ()))
            });
            if let Some(churner) = churner {
                let (rate, us) = churner.finish();
                println!(
                    "{name}: churn achieved {rate:.0} changes/s, {us:.0} µs per change (10,000 endpoints)"
                );
            }
        }
    }
    g.finish();
}

fn changes(c: &mut Criterion) {
    let mut g = c.benchmark_group("discovery-change");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let b = balance(P2c::with_seed(1));
    let handle = b.handle();
    let mut i = 0usize;
    // What a caller that keeps the set at a wanted one pays per look (every 100 ms while
    // backends drain): the set's stats, and a reconcile that finds nothing to change.
    g.bench_function(BenchmarkId::new("stats", N), |bench| {
        bench.iter(|| handle.stats().backends.len())
    });
    let wanted: Vec<_> = (0..N).map(|i| Backend::new(addr(i))).collect();
    g.bench_function(BenchmarkId::new("reconcile-unchanged", N), |bench| {
        bench.iter(|| {
            let done = handle.reconcile(wanted.iter().cloned());
            assert!(done.added.is_empty() && done.updated.is_empty());
        })
    });
    g.bench_function(BenchmarkId::new("remove+insert", N), |bench| {
        bench.iter(|| {
            let key = addr((i * 7919) % N);
            i += 1;
            handle.remove(&key);
            handle.insert(Backend::new(key)).unwrap();
        })
    });
    g.bench_function(BenchmarkId::new("set-weight", N), |bench| {
        bench.iter(|| {
            let key = addr((i * 7919) % N);
            i += 1;
            handle.set_weight(&key, 1 + (i % 3) as u32).unwrap();
        })
    });
    g.finish();
}

/// Resident memory of this process in bytes (`/proc/self/statm`; 0 where there is none).
fn rss() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn memory() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut kept = Vec::new();
    for (name, make) in [
        ("round-robin", (|| balance(RoundRobin::new())) as fn() -> _),
        ("p2c", || balance(P2c::with_seed(1))),
        ("weighted-rr", || balance(WeightedRoundRobin::new())),
        ("least-conn", || balance(LeastConn::new())),
    ] {
        let region = Region::new(GLOBAL);
        let before = rss();
        let mut b = make();
        // One request, so a strategy's index over the set (least connections' tree, the
        // weighted schedule) is built and counted too.
        rt.block_on(async {
            use tower::{Service, ServiceExt};
            let _ = ServiceExt::<()>::ready(&mut b)
                .await
                .unwrap()
                .call(())
                .await;
        });
        let stats = region.change();
        let grown = rss() - before;
        let live = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
        println!(
            "memory ({name}): {live} bytes live for {N} endpoints = {} bytes per endpoint; \
             RSS grew {grown} bytes = {} bytes per endpoint (allocations: {}, peak churn \
             allocated {} bytes)",
            live / N as i64,
            grown / N as i64,
            stats.allocations,
            stats.bytes_allocated
        );
        // Kept to the end, so each balancer's RSS growth is its own, not reused memory.
        kept.push(b);
    }
}

fn main() {
    memory();
    let mut c = Criterion::default().configure_from_args();
    picks(&mut c);
    changes(&mut c);
    c.final_summary();
}
