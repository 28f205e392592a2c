//! Where endpoints come from.
//!
//! - **A static list**: [`Builder::backends`](crate::balance::Builder::backends).
//! - **A live handle**: [`Handle`], from [`Balance::handle`](crate::Balance::handle), to
//!   insert, remove, re-weight, drain and replace backends at runtime. Registries (DNS,
//!   Kubernetes, files) feed the balancer through it.
//! - **Registries**, each a background task owned by a [`Guard`] that applies only
//!   differences and keeps the last good set on error (before the first good set, the
//!   error is reported with [`Handle::report_error`]): [`dns`] (feature `dns`: A/AAAA and
//!   SRV, re-resolved at TTL), [`kube`] (feature `kube`: EndpointSlices through the
//!   kube-runtime watcher), [`file`](mod@file) (feature `file`: a watched TOML or JSON list).
//! - **Any [`tower::discover::Discover`]**:
//!   [`Builder::build_discover`](crate::balance::Builder::build_discover) spawns a driver
//!   that applies its changes with no request traffic needed (tower's `Buffer` +
//!   `Balance` only see changes when polled, and starve while idle).
//! - **A subset of any of these**: [`subset`] (deterministic subsetting, SRE book ch. 20;
//!   random subsetting with a per-client seed, gRPC A68), through
//!   [`Builder::subset`](crate::balance::Builder::subset) or [`subset::SubsetDiscover`].
//!
//! Changes are published copy-on-write: requests in progress keep the snapshot they
//! started with, readers never block, and per-endpoint state is keyed by backend key so
//! it survives changes to other backends.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use futures_util::stream;
//! use tower::{discover::Change, service_fn, Service, ServiceExt};
//! use tower_lb::Balance;
//! use std::convert::Infallible;
//!
//! let svc = service_fn(|_: ()| async { Ok::<_, Infallible>("hello") });
//! let changes = stream::iter([Ok::<_, Infallible>(Change::Insert("a", svc))])
//!     .chain(stream::pending());
//! # use futures_util::StreamExt;
//! let mut balance = Balance::builder().build_discover(changes).unwrap();
//! // The driver applies the insert in the background; the request waits for it
//! // (up to the fail-fast bound) if it comes first.
//! assert_eq!(balance.ready().await.unwrap().call(()).await.unwrap(), "hello");
//! # }
//! ```

#[cfg(any(feature = "dns", feature = "kube", feature = "file"))]
mod diff;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kube")]
pub mod kube;
pub mod subset;

/// The set's write API, which every source uses; it lives with the balancer.
pub use crate::balance::{Handle, WeakHandle};
pub use crate::Guard;
