//! The gateway's integration tests, one module per area, in one test binary: each
//! separate binary would compile hyper, tokio and tower's generics again and link the
//! whole dependency graph again. A new file in `tests/` is compiled only once it is
//! declared here (`autotests = false`).
//!
//! Run one module with `cargo test -p tower-lb-gateway --test main tls::`.

mod common;
// The library's DNS test server, of which the gateway's tests use a part.
#[allow(dead_code)]
#[path = "../../tests/dns/server.rs"]
mod dns_server;
#[path = "../../tests/support/mod.rs"]
mod support;

mod gateway;
mod hedge;
mod load_report;
mod outlier;
mod real_traffic;
mod runtime;
mod subset;
mod tcp;
mod tls;
