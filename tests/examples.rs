//! Runs every example that exits by itself as a process and checks what it prints.
//!
//! `gateway` serves until stopped; `tests/gateway.rs` drives it. The rest start their own
//! servers on 127.0.0.1, so they need nothing from the machine. Assertions read counts and
//! states, never timings.
// With none of the examples' features on, the helpers below have no caller.
#![cfg_attr(
    not(any(
        feature = "test-util",
        all(feature = "http", feature = "health-passive"),
        feature = "health-active",
        feature = "grpc",
        all(feature = "dns", feature = "http"),
    )),
    allow(dead_code)
)]

use std::{process::Stdio, time::Duration};

use tokio::process::Command;

/// The cargo features this test binary was built with.
pub fn features() -> Vec<&'static str> {
    let mut on = Vec::new();
    macro_rules! collect {
        ($($name:literal),* $(,)?) => {
            $(if cfg!(feature = $name) { on.push($name); })*
        };
    }
    collect!(
        "default",
        "http",
        "test-util",
        "health-passive",
        "health-active",
        "health",
        "grpc",
        "sticky",
        "axum",
        "dns",
        "kube",
        "file",
        "full",
    );
    on
}

/// The example's binary, built (or found up to date) next to the test binary, in
/// `target/<profile>/examples/`.
pub fn example_bin(name: &str) -> std::path::PathBuf {
    // One nested cargo at a time: they would only queue on cargo's lock and mix output.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    // Test binaries live in target/<profile>/deps.
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    // `cargo test` builds the examples too, but `cargo test --test examples` does not, and a
    // binary left from an earlier build may be stale: let cargo decide (a no-op when fresh).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--example", name, "--no-default-features"])
        .args(["--features", &features().join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    // Cargo describes this package to the test binary in `CARGO_PKG_*` and `CARGO_MANIFEST_*`.
    // Build scripts that watch those variables (ring's does) would see them change and run
    // again, and the next plain `cargo test` would rebuild everything back.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_MANIFEST_") {
            build.env_remove(&var);
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building the {name} example failed");

    let bin = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// How long an example may run: they take a few seconds, but a loaded machine and a debug
/// build are slow.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The features this test binary was built with. A nested `cargo build` of an example with
/// exactly these features reuses the library already compiled for the tests instead of
/// rebuilding it (and its dependencies) with another feature set.
/// Runs the example to its end and returns its stdout; fails the test unless it exits 0
/// within [`TIMEOUT`].
async fn run(name: &str) -> String {
    // One example at a time: each starts servers and probes, and a machine with few cores
    // is fairer to one than to five.
    static RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let bin = example_bin(name);
    let _one = RUN.lock().await;

    let child = Command::new(&bin)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {name} example did not exit within {TIMEOUT:?}"))
        .expect("wait for the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {name} example exited with {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// The one line of `out` that starts with `prefix` (after leading spaces).
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    let mut found = out.lines().filter(|l| l.trim_start().starts_with(prefix));
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"));
    assert!(
        found.next().is_none(),
        "several lines start with {prefix:?} in:\n{out}"
    );
    first
}

/// The number right before `word` in `line` ("3 calls" → 3).
fn count_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    assert!(at > 0, "nothing before {word:?} in {line:?}");
    words[at - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {word:?} in {line:?}"))
}

/// The word right after `word` in `line` ("open 3" → "3").
fn word_after<'a>(line: &'a str, word: &str) -> &'a str {
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words
        .next()
        .unwrap_or_else(|| panic!("nothing after {word:?} in {line:?}"))
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn distribution_runs_every_strategy() {
    let out = run("distribution").await;
    for strategy in [
        "round robin ",
        "weighted round robin",
        "random",
        "least connections",
        "p2c (pending)",
        "p2c (peak EWMA)",
    ] {
        let l = line(&out, strategy);
        let shares: Vec<f64> = l
            .split_whitespace()
            .filter_map(|w| w.strip_suffix('%'))
            .map(|w| w.parse().expect("a share"))
            .collect();
        assert_eq!(shares.len(), 3, "{l:?}");
        let total: f64 = shares.iter().sum();
        assert!(
            (total - 100.0).abs() < 0.5,
            "shares add up to {total}: {l:?}"
        );
    }
    // Round robin over equal weights is exact, whatever the timing.
    let rr = line(&out, "round robin ");
    assert_eq!(rr.matches("33.3%").count(), 3, "{rr:?}");
}

#[cfg(all(feature = "http", feature = "health-passive"))]
#[tokio::test]
async fn axum_client_ejects_the_broken_backend() {
    let out = run("axum_client").await;
    line(&out, "30 requests through the app:");
    let broken = line(&out, "backend broken");
    assert_eq!(word_after(broken, "state"), "ejected", "{out}");
    let (requests, failures) = (
        count_before(broken, "requests"),
        count_before(broken, "failures"),
    );
    // Its first 503 ejected it; no request went there afterwards.
    assert!(requests >= 1, "{out}");
    assert_eq!(requests, failures, "{out}");
    for healthy in ["backend fast", "backend slow"] {
        assert_eq!(word_after(line(&out, healthy), "state"), "healthy", "{out}");
    }
}

#[cfg(feature = "health-active")]
#[tokio::test]
async fn tcp_proxy_spreads_connections_over_live_backends() {
    let out = run("tcp_proxy").await;
    let served: Vec<&str> = out.lines().filter(|l| l.starts_with("client ")).collect();
    assert_eq!(served.len(), 6, "{out}");
    for l in &served {
        assert!(l.contains("served by db-"), "{l:?}");
        assert!(l.ends_with("echo \"ping\""), "{l:?}");
    }
    line(&out, "down backend marked down by the TCP probes");
    let open = |name| word_after(line(&out, name), "open").parse::<u64>().unwrap();
    let (a, b, down) = ("db-a 127.0.0.1:", "db-b 127.0.0.1:", "down 127.0.0.1:");
    assert!(open(a) > 0, "{out}");
    assert!(open(b) > 0, "{out}");
    assert_eq!(open(a) + open(b), 6, "{out}");
    assert_eq!(open(down), 0, "{out}");
    assert_eq!(word_after(line(&out, down), "state"), "down", "{out}");
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn tonic_client_stops_calling_a_not_serving_server() {
    let out = run("tonic_client").await;
    line(&out, "before: 30 calls, 30 answered SERVING");
    line(&out, "b marked down by the prober");
    line(&out, "after: 30 more calls, 30 answered SERVING");
    line(&out, "b got 0 of 30 calls after it was marked down");
    // The rows after the `after:` line count the calls of the second round.
    let after = &out[out.find("after:").expect("an after: line")..];
    let b = line(after, "b 127.0.0.1:");
    assert_eq!(count_before(b, "calls"), 0, "{out}");
    assert!(b.ends_with("down"), "{out}");
    let (a, c) = (line(after, "a 127.0.0.1:"), line(after, "c 127.0.0.1:"));
    assert_eq!(
        count_before(a, "calls") + count_before(c, "calls"),
        30,
        "{out}"
    );
}

#[cfg(all(feature = "dns", feature = "http"))]
#[tokio::test]
async fn dns_discovery_balances_over_localhost() {
    let out = run("dns_discovery").await;
    let resolved = line(&out, "localhost:");
    assert!(resolved.contains("resolved to"), "{out}");
    assert!(resolved.contains("127.0.0.1:"), "{out}");
    let answered: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" answered by "))
        .collect();
    assert!(answered.iter().any(|l| l.contains("127.0.0.1:")), "{out}");
    assert!(
        answered.iter().all(|l| !l.contains("answered by error")),
        "{out}"
    );
    let total: u64 = answered.iter().map(|l| count_before(l, "answered")).sum();
    assert_eq!(total, 20, "{out}");
}
