//! Every passive-health transition, on paused time.

use std::time::Duration;

use tokio::time::advance;

use super::{Consecutive, PassiveHealthLayer, Window};
use crate::{
    balance::{Status, Tier},
    health::testing::{Outcome, Rig},
    Backend, Balance,
};

const ABC: [&str; 3] = ["a", "b", "c"];

fn window(max_fails: u32, secs: u64) -> Rig {
    Rig::new(
        Balance::builder().backends(ABC.map(Backend::new)),
        move |t| {
            PassiveHealthLayer::new(t).policy(
                Window::new()
                    .max_fails(max_fails)
                    .fail_timeout(Duration::from_secs(secs)),
            )
        },
    )
}

fn consecutive() -> Rig {
    Rig::new(Balance::builder().backends(ABC.map(Backend::new)), |t| {
        PassiveHealthLayer::new(t).policy(Consecutive::new())
    })
}

#[tokio::test(start_paused = true)]
async fn ejects_at_exactly_max_fails_within_the_window() {
    let rig = window(3, 10);
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(4)).await;
    rig.send_to("b").await.unwrap();
    assert_eq!(rig.status("b"), Status::Healthy);
    advance(Duration::from_secs(5)).await;
    rig.send_to("b").await.unwrap();
    assert_eq!(
        rig.status("b"),
        Status::Ejected {
            remaining: Duration::from_secs(10)
        }
    );
    // Ejected: aimed requests go elsewhere.
    let (served, _) = rig.send_to("b").await.unwrap();
    assert_ne!(served, "b");
    let stats = rig.balance.stats();
    assert_eq!(stats.available, 2);
    assert_eq!(stats.backends[1].failures, 3);
    assert_eq!(stats.backends[1].ejections, 1);
}

#[tokio::test(start_paused = true)]
async fn failures_outside_the_window_do_not_eject() {
    let rig = window(2, 10);
    rig.set("b", Outcome::Status(502));
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(10)).await;
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(10)).await;
    rig.send_to("b").await.unwrap();
    assert_eq!(rig.status("b"), Status::Healthy);
    assert_eq!(rig.balance.stats().backends[1].failures, 3);
    // Two within 10 s do.
    advance(Duration::from_secs(9)).await;
    rig.send_to("b").await.unwrap();
    assert!(rig.is_ejected("b"));
}

#[tokio::test(start_paused = true)]
async fn successes_and_non_failures_do_not_count() {
    let rig = window(1, 10);
    for code in [200, 404, 429, 500, 501] {
        rig.set("b", Outcome::Status(code));
        rig.send_to("b").await.unwrap();
    }
    assert_eq!(rig.status("b"), Status::Healthy);
    rig.set("b", Outcome::Status(504));
    rig.send_to("b").await.unwrap();
    assert!(rig.is_ejected("b"));
}

#[tokio::test(start_paused = true)]
async fn connection_errors_eject_and_are_counted_once() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Refused);
    assert!(rig.send_to("b").await.is_err());
    assert!(rig.is_ejected("b"));
    assert_eq!(rig.balance.stats().backends[1].failures, 1);
}

#[tokio::test(start_paused = true)]
async fn probation_at_timeout_then_success_readmits() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    assert!(rig.is_ejected("b"));
    advance(Duration::from_millis(9_999)).await;
    assert!(rig.is_ejected("b"));
    advance(Duration::from_millis(1)).await;
    assert_eq!(rig.status("b"), Status::Probation);
    assert_eq!(rig.balance.stats().available, 3);
    rig.set("b", Outcome::Status(200));
    let (served, _) = rig.send_to("b").await.unwrap();
    assert_eq!(served, "b");
    assert_eq!(rig.status("b"), Status::Healthy);
    assert_eq!(
        rig.state("b")
            .slot::<crate::health::passive::Memory>()
            .times_ejected(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn probation_failure_ejects_again_for_longer() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(10)).await;
    rig.send_to("b").await.unwrap();
    assert_eq!(
        rig.status("b"),
        Status::Ejected {
            remaining: Duration::from_secs(20)
        }
    );
    advance(Duration::from_secs(20)).await;
    rig.send_to("b").await.unwrap();
    assert_eq!(
        rig.status("b"),
        Status::Ejected {
            remaining: Duration::from_secs(30)
        }
    );
    assert_eq!(rig.balance.stats().backends[1].ejections, 3);
}

#[tokio::test(start_paused = true)]
async fn probation_sends_one_trial_at_a_time() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(10)).await;
    rig.set("b", Outcome::Wait);
    let before = rig.state("b").requests();
    let trial = crate::health::tests::start_request(&rig);
    assert!(rig.state("b").trial_in_flight());
    for _ in 0..5 {
        let (served, _) = rig.send_to("b").await.unwrap();
        assert_ne!(
            served, "b",
            "only the trial may go to an endpoint on probation"
        );
    }
    assert_eq!(rig.state("b").requests(), before + 1);
    rig.gate.notify_one();
    assert_eq!(
        crate::health::tests::finish(trial).await,
        http::StatusCode::OK
    );
    assert_eq!(rig.status("b"), Status::Healthy);
    assert!(!rig.state("b").trial_in_flight());
}

#[tokio::test(start_paused = true)]
async fn without_probation_the_endpoint_is_readmitted_when_the_ejection_ends() {
    let rig = Rig::new(Balance::builder().backends(ABC.map(Backend::new)), |t| {
        PassiveHealthLayer::new(t).probation(false)
    });
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    advance(Duration::from_secs(10)).await;
    // The endpoint is readmitted when its ejection ends; a failure then counts anew
    // (max_fails 1 ejects at once), and the ejection time still grows with the times
    // ejected.
    rig.send_to("b").await.unwrap();
    assert_eq!(
        rig.status("b"),
        Status::Ejected {
            remaining: Duration::from_secs(20)
        }
    );
    advance(Duration::from_secs(20)).await;
    rig.set("b", Outcome::Status(200));
    rig.send_to("b").await.unwrap();
    assert_eq!(rig.status("b"), Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_and_a_success_resets_the_streak() {
    let rig = consecutive();
    rig.set("b", Outcome::Status(503));
    for _ in 0..4 {
        rig.send_to("b").await.unwrap();
    }
    rig.set("b", Outcome::Status(200));
    rig.send_to("b").await.unwrap();
    rig.set("b", Outcome::Status(503));
    for _ in 0..4 {
        rig.send_to("b").await.unwrap();
    }
    assert_eq!(rig.status("b"), Status::Healthy);
    rig.send_to("b").await.unwrap();
    assert_eq!(
        rig.status("b"),
        Status::Ejected {
            remaining: Duration::from_secs(30)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_each_ejection_up_to_the_cap() {
    let rig = consecutive();
    rig.set("b", Outcome::Status(503));
    for _ in 0..5 {
        rig.send_to("b").await.unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..11 {
        let Status::Ejected { remaining } = rig.status("b") else {
            panic!("b should be ejected");
        };
        times.push(remaining.as_secs());
        advance(remaining).await;
        assert_eq!(rig.status("b"), Status::Probation);
        // The failed trial ejects again.
        rig.send_to("b").await.unwrap();
    }
    assert_eq!(times, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300]);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_share_is_respected_but_one_is_always_allowed() {
    // Four endpoints all failing, 50 %: two are ejected, never more.
    let keys = ["a", "b", "c", "d"];
    let rig = Rig::new(
        Balance::builder()
            .panic_threshold(0.0)
            .backends(keys.map(Backend::new)),
        PassiveHealthLayer::new,
    );
    for k in keys {
        rig.set(k, Outcome::Status(503));
    }
    for k in keys {
        rig.send_to(k).await.unwrap();
    }
    let ejected = keys.iter().filter(|k| rig.is_ejected(k)).count();
    assert_eq!(ejected, 2);

    // Two endpoints, a 10 % share: one ejection is still allowed, not two.
    let rig = Rig::new(
        Balance::builder().backends(["a", "b"].map(Backend::new)),
        |t| PassiveHealthLayer::new(t).max_ejection_share(0.1),
    );
    rig.set("a", Outcome::Status(503));
    rig.set("b", Outcome::Status(503));
    rig.send_to("a").await.unwrap();
    rig.send_to("b").await.unwrap();
    assert!(rig.is_ejected("a"));
    assert_eq!(rig.status("b"), Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_lone_endpoint_is_never_ejected() {
    let rig = Rig::new(Balance::builder().backend(Backend::new("a")), |t| {
        PassiveHealthLayer::new(t).max_ejection_share(1.0)
    });
    rig.set("a", Outcome::Refused);
    for _ in 0..5 {
        assert!(rig.send().await.is_err());
    }
    assert_eq!(rig.status("a"), Status::Healthy);
    assert_eq!(rig.balance.stats().backends[0].failures, 5);
}

#[tokio::test(start_paused = true)]
async fn panic_mode_turns_on_below_the_threshold_and_off_after_readmission() {
    let keys = ["a", "b", "c", "d"];
    let rig = Rig::new(Balance::builder().backends(keys.map(Backend::new)), |t| {
        PassiveHealthLayer::new(t)
            .max_ejection_share(1.0)
            .probation(false)
    });
    for k in ["b", "c"] {
        rig.set(k, Outcome::Status(503));
        rig.send_to(k).await.unwrap();
    }
    // 2 of 4 available: exactly the 50 % threshold, not panic.
    let stats = rig.balance.stats();
    assert_eq!((stats.tier, stats.available), (Tier::Primary, 2));
    rig.set("d", Outcome::Status(503));
    rig.send_to("d").await.unwrap();
    let stats = rig.balance.stats();
    assert!(stats.panic());
    assert_eq!(stats.available, 4, "panic mode uses every endpoint");
    // In panic mode, ejected endpoints serve again, and their outcomes leave the
    // ejection as it is.
    let (served, _) = rig.send_to("c").await.unwrap();
    assert_eq!(served, "c");
    assert!(rig.is_ejected("c"));

    advance(Duration::from_secs(10)).await;
    for k in ["b", "c", "d"] {
        rig.set(k, Outcome::Status(200));
        rig.send_to(k).await.unwrap();
    }
    let stats = rig.balance.stats();
    assert_eq!((stats.tier, stats.available), (Tier::Primary, 4));
    assert!(!stats.panic());
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_zero_never_panics() {
    let rig = Rig::new(
        Balance::builder()
            .panic_threshold(0.0)
            .backends(ABC.map(Backend::new)),
        |t| PassiveHealthLayer::new(t).max_ejection_share(1.0),
    );
    for k in ["a", "b"] {
        rig.set(k, Outcome::Status(503));
        rig.send_to(k).await.unwrap();
    }
    let stats = rig.balance.stats();
    assert_eq!((stats.tier, stats.available), (Tier::Primary, 1));
    for _ in 0..3 {
        assert_eq!(rig.send().await.unwrap().0, "c");
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_status_is_judged_at_the_end_of_the_stream() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Grpc(0));
    rig.send_to("b").await.unwrap();
    assert_eq!(rig.status("b"), Status::Healthy);

    rig.set("b", Outcome::Grpc(14));
    // The headers say 200; the verdict waits for the trailers.
    let rsp = {
        use tower::ServiceExt;
        rig.balance
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap()
    };
    assert_eq!(rsp.status(), http::StatusCode::OK);
    assert_eq!(rig.status("b"), Status::Healthy);
    {
        use http_body_util::BodyExt;
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().unwrap()["grpc-status"],
            "14",
            "trailers pass through"
        );
    }
    assert!(rig.is_ejected("b"));
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_gives_no_verdict() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Grpc(14));
    rig.aim("b");
    let rsp = {
        use tower::ServiceExt;
        rig.balance
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap()
    };
    drop(rsp);
    assert_eq!(rig.status("b"), Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn ejection_survives_discovery_updates_of_other_backends() {
    let rig = window(1, 10);
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    rig.balance.handle().insert(Backend::new("d")).unwrap();
    assert!(rig.balance.handle().remove(&"a"));
    assert!(rig.is_ejected("b"));
    assert_eq!(rig.balance.stats().available, 2);
}
