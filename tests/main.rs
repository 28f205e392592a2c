//! The library's integration tests, one module per area, in one test binary: each
//! separate binary would compile hyper, tokio and tower's generics again and link the
//! whole dependency graph again. A module whose features are off is left out; a new file
//! in `tests/` is compiled only once it is declared here (`autotests = false`).
//!
//! `tests/hostile.rs` is a binary of its own: it counts allocations with a global
//! allocator, which other tests running beside it would disturb.
//!
//! Run one module with `cargo test --test main balance::`.

mod support;

mod balance;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "file")]
mod file;
#[cfg(all(feature = "health-passive", feature = "health-active"))]
mod health;
#[cfg(all(feature = "health-service", feature = "health-active"))]
mod health_service;
#[cfg(feature = "http")]
mod hedge;
mod http;
#[cfg(feature = "kube")]
mod kube;
#[cfg(feature = "http")]
mod load_report;
#[cfg(all(feature = "http", feature = "health-passive"))]
mod outlier;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server-tls")]
mod server_tls;
mod simulate;
#[cfg(all(feature = "sticky", feature = "http", feature = "axum"))]
mod sticky;
mod strategies;
#[cfg(feature = "test-util")]
mod subset;
#[cfg(feature = "tcp")]
mod tcp;
#[cfg(feature = "tls")]
mod tls;
