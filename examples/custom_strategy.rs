//! A strategy of your own, unit-tested over mock services: "the least loaded endpoint
//! of the local zone, else the least loaded anywhere". A strategy sees candidates by
//! their stable id (`stable_hash` of the backend key), their weight and their load.
//!
//! ```sh
//! cargo test --example custom_strategy --features test-util
//! ```

use tower_lb::balance::strategy::{Candidates, RequestKey, Strategy};

/// Fewest requests in flight, among the local zone's endpoints first.
struct ZoneLocal {
    /// Candidate ids of the local zone's endpoints.
    local: Vec<u64>,
}

impl Strategy for ZoneLocal {
    fn pick(&self, c: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let least = |only_local: bool| {
            (0..c.len())
                .filter(|&i| !only_local || self.local.contains(&c[i].id()))
                .min_by_key(|&i| c[i].in_flight())
        };
        least(true).or_else(|| least(false))
    }

    fn wants_rebuild(&self) -> bool {
        false
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use tower_lb::{backend::stable_hash, test_util, Backend, Balance};
    let balance = test_util::echo(
        Balance::builder()
            .strategy(ZoneLocal {
                local: vec![stable_hash(&"eu-1"), stable_hash(&"eu-2")],
            })
            .backends(["eu-1", "eu-2", "us-1"].map(Backend::new)),
    );
    let dist = test_util::drive(&balance, 100, |_| ()).await;
    println!("100 requests: {:?}", dist.counts());
    println!("the unit test: cargo test --example custom_strategy --features test-util");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_lb::{backend::stable_hash, test_util, Backend, Balance};

    #[tokio::test]
    async fn stays_in_the_local_zone_while_it_can() {
        let strategy = ZoneLocal {
            local: vec![stable_hash(&"eu-1"), stable_hash(&"eu-2")],
        };
        let (balance, mut mocks) = test_util::mock::<_, &str, &str, ()>(
            Balance::builder()
                .strategy(strategy)
                .backends(["eu-1", "eu-2", "us-1"].map(Backend::new)),
        );
        // Two requests held open: one on each local endpoint, none abroad.
        let first = tokio::spawn(balance.clone().oneshot("a"));
        let second = tokio::spawn(balance.clone().oneshot("b"));
        let (eu1, eu2) = (
            mocks.get_mut("eu-1").unwrap().next_request().await,
            mocks.get_mut("eu-2").unwrap().next_request().await,
        );
        let in_flight = |key| {
            balance
                .stats()
                .backends
                .iter()
                .find(|b| b.key == key)
                .unwrap()
                .in_flight
        };
        assert_eq!(
            (in_flight("eu-1"), in_flight("eu-2"), in_flight("us-1")),
            (1, 1, 0)
        );
        eu1.unwrap().1.send_response("eu-1");
        eu2.unwrap().1.send_response("eu-2");
        assert_eq!(first.await.unwrap().unwrap(), "eu-1");
        assert_eq!(second.await.unwrap().unwrap(), "eu-2");
        // The local zone drained: traffic goes abroad.
        for key in ["eu-1", "eu-2"] {
            balance.handle().drain(&key).unwrap();
        }
        let abroad = tokio::spawn(balance.clone().oneshot("c"));
        let (req, rsp) = mocks.get_mut("us-1").unwrap().next_request().await.unwrap();
        assert_eq!(req, "c");
        rsp.send_response("us-1");
        assert_eq!(abroad.await.unwrap().unwrap(), "us-1");
    }
}
