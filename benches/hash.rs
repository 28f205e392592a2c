//! Pick cost of the hash strategies at 10, 1,000 and 10,000 endpoints, and table build
//! times.
//!
//! `cargo bench --bench hash -- --warm-up-time 1 --measurement-time 3`

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tower_lb::balance::strategy::{
    list_of, BoundedLoad, CandidateList, IpHash, Maglev, Rendezvous, RequestKey, RingHash, Strategy,
};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// 4,096 distinct keys, cycled, so lookups touch the table the way real traffic does
/// instead of hitting one cached slot.
fn keys(ip: bool) -> Vec<RequestKey> {
    (0..4096u32)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9);
            if ip {
                RequestKey::from_ip(std::net::IpAddr::from(x.to_be_bytes()))
            } else {
                RequestKey::from_bytes(&x.to_le_bytes())
            }
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let all: CandidateList = list_of(&vec![1; n]);
        let strategies: Vec<(&str, Box<dyn Strategy>)> = vec![
            ("maglev", Box::new(Maglev::new())),
            ("ring", Box::new(RingHash::new())),
            ("ip-hash", Box::new(IpHash::new())),
            ("bounded-load", Box::new(BoundedLoad::new())),
            ("rendezvous", Box::new(Rendezvous::new())),
        ];
        for (name, s) in strategies {
            s.rebuild(&all.view());
            let keys = keys(name == "ip-hash");
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) & 4095;
                    black_box(s.pick(&all.view(), Some(&keys[i])))
                })
            });
        }
    }
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    for n in [100, 1_000, 10_000] {
        let all = list_of(&vec![1; n]);
        group.bench_with_input(BenchmarkId::new("maglev-65537", n), &n, |b, _| {
            b.iter(|| {
                let m = Maglev::new();
                m.rebuild(&all.view());
                m
            })
        });
        group.bench_with_input(BenchmarkId::new("ring-160", n), &n, |b, _| {
            b.iter(|| {
                let r = RingHash::new();
                r.rebuild(&all.view());
                r
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pick, bench_build);
criterion_main!(benches);
