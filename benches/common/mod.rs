//! Helpers shared by the benches.

use std::{hint::black_box, time::Duration};

use tokio::{runtime::Runtime, time::Instant};
use tower::{Service, ServiceExt};

/// A current-thread runtime, as one proxy worker runs.
pub(crate) fn rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Times `iters` requests (`ready` + `call` + await) through `svc`, one after another,
/// each made by `make` (inside the timed loop, so every row pays for it alike).
pub(crate) fn time_requests<S, Req>(
    rt: &Runtime,
    svc: &mut S,
    iters: u64,
    make: impl Fn() -> Req,
) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let rsp = ServiceExt::<Req>::ready(&mut *svc)
                .await
                .unwrap()
                .call(make())
                .await
                .unwrap();
            black_box(rsp);
        }
        start.elapsed()
    })
}
