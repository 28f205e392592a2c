//! The SRE book's subsetting experiment (ch. 20): 300 clients, 300 backends, subsets of
//! 10. Prints the connections per backend (min, max, standard deviation) for
//! deterministic subsetting, random subsetting with a per-client seed (gRPC A68) and a
//! plain random choice of 10 per client, then the churn when one backend leaves or
//! joins. Deterministic: the same numbers on every run.
//!
//! ```sh
//! cargo run --release --example subsetting
//! ```

use std::collections::HashSet;
use std::fmt::Write as _;

use tower_lb::discover::subset::Subsetting;

const CLIENTS: u64 = 300;
const BACKENDS: usize = 300;
const K: usize = 10;

fn backend(i: usize) -> String {
    format!("backend-{i:04}")
}

/// One subsetting per client: deterministic (id of count) or random (seeded by the id).
fn clients(kind: &str) -> Vec<Subsetting> {
    (0..CLIENTS)
        .map(|id| match kind {
            "deterministic" => Subsetting::deterministic(K, id, CLIENTS).unwrap(),
            _ => Subsetting::random(K, id).unwrap(),
        })
        .collect()
}

/// splitmix64, for the plain random choice (a fixed seed: the same run every time).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ten distinct backends per client, uniformly at random.
fn plain_random(all: &[String]) -> Vec<Vec<String>> {
    let mut state = 1;
    (0..CLIENTS)
        .map(|_| {
            let mut pick = HashSet::new();
            while pick.len() < K {
                pick.insert((next(&mut state) % all.len() as u64) as usize);
            }
            pick.into_iter().map(|i| all[i].clone()).collect()
        })
        .collect()
}

/// Min, max and population standard deviation of the connections per backend.
fn spread(all: &[String], subsets: &[Vec<String>]) -> (u64, u64, f64) {
    let counts: Vec<u64> = all
        .iter()
        .map(|b| subsets.iter().filter(|s| s.contains(b)).count() as u64)
        .collect();
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / counts.len() as f64;
    (
        *counts.iter().min().unwrap(),
        *counts.iter().max().unwrap(),
        var.sqrt(),
    )
}

/// One membership change seen by every client: the clients whose subset changed, the
/// entries that moved (left a subset), and the most entries that left any one subset.
#[derive(Clone, Copy)]
struct Churn {
    clients: u64,
    entries: u64,
    worst_client: u64,
}

/// The churn from `all` (each client's subset of it in `before`) to `next`.
fn churn(cfg: &[Subsetting], before: &[Vec<String>], next: &[String]) -> Churn {
    let mut out = Churn {
        clients: 0,
        entries: 0,
        worst_client: 0,
    };
    for (s, old) in cfg.iter().zip(before) {
        let new = s.select(next);
        let gone = old.iter().filter(|k| !new.contains(k)).count() as u64;
        out.clients += u64::from(gone > 0);
        out.entries += gone;
        out.worst_client = out.worst_client.max(gone);
    }
    out
}

/// Every backend leaving in turn, and 30 new backends joining in turn, for one method.
/// The events are independent, so they are shared out over the machine's threads.
fn churn_events(kind: &str) -> (Vec<Churn>, Vec<Churn>) {
    let all: Vec<String> = (0..BACKENDS).map(backend).collect();
    let cfg = clients(kind);
    let before: Vec<Vec<String>> = cfg.iter().map(|s| s.select(&all)).collect();
    let event = |e: usize| {
        let mut next = all.clone();
        if e < BACKENDS {
            next.remove(e);
        } else {
            next.push(format!("joined-{:02}", e - BACKENDS));
        }
        churn(&cfg, &before, &next)
    };
    let events: Vec<usize> = (0..BACKENDS + 30).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = events.len().div_ceil(threads);
    let results: Vec<Churn> = std::thread::scope(|scope| {
        let handles: Vec<_> = events
            .chunks(per)
            .map(|chunk| scope.spawn(|| chunk.iter().map(|&e| event(e)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("churn thread"))
            .collect()
    });
    let (leaves, joins) = results.split_at(BACKENDS);
    (leaves.to_vec(), joins.to_vec())
}

/// The subsets' spread over the backends, one table row per method.
fn spread_rows(out: &mut String) {
    let all: Vec<String> = (0..BACKENDS).map(backend).collect();
    for kind in ["deterministic", "random (A68)"] {
        let subsets: Vec<Vec<String>> = clients(kind).iter().map(|s| s.select(&all)).collect();
        let (min, max, sd) = spread(&all, &subsets);
        let _ = writeln!(out, "| {kind} | {min} | {max} | {sd:.2} |");
    }
    let (min, max, sd) = spread(&all, &plain_random(&all));
    let _ = writeln!(out, "| plain random 10 | {min} | {max} | {sd:.2} |");
}

fn report() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{CLIENTS} clients, {BACKENDS} backends, subset {K}: connections per backend"
    );
    let _ = writeln!(out, "| method | min | max | stdev |\n|---|---|---|---|");
    spread_rows(&mut out);

    // Churn: means and worst case over the leave and join events.
    let _ = writeln!(
        out,
        "\nchurn per event (mean, worst): clients whose subset changed, entries moved"
    );
    let _ = writeln!(
        out,
        "| method | leave: clients | leave: entries | join: clients | join: entries |\n|---|---|---|---|---|"
    );
    for kind in ["deterministic", "random (A68)"] {
        let (leaves, joins) = churn_events(kind);
        let stat = |v: &[Churn], f: fn(&Churn) -> u64| {
            let mean = v.iter().map(f).sum::<u64>() as f64 / v.len() as f64;
            (mean, v.iter().map(f).max().unwrap())
        };
        let (lc, lcw) = stat(&leaves, |c| c.clients);
        let (le, lew) = stat(&leaves, |c| c.entries);
        let (jc, jcw) = stat(&joins, |c| c.clients);
        let (je, jew) = stat(&joins, |c| c.entries);
        let _ = writeln!(
            out,
            "| {kind} | {lc:.1} ({lcw}) | {le:.1} ({lew}) | {jc:.1} ({jcw}) | {je:.1} ({jew}) |"
        );
    }
    out
}

fn main() {
    print!("{}", report());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_subsetting_is_exactly_even_and_a68_moves_one_entry_per_client() {
        let mut rows = String::new();
        spread_rows(&mut rows);
        // 300 clients, 30 per round: every backend gets exactly 10 clients.
        assert!(
            rows.contains("| deterministic | 10 | 10 | 0.00 |"),
            "{rows}"
        );
        // With A68, every leave and every join moves at most one entry of each client's
        // subset (so the clients changed equal the entries moved), and a leave moves
        // exactly the entries of the clients that had the backend (10 on average).
        let (leaves, joins) = churn_events("random (A68)");
        assert_eq!((leaves.len(), joins.len()), (BACKENDS, 30));
        for (i, c) in leaves.iter().chain(&joins).enumerate() {
            assert!(c.worst_client <= 1, "event {i}: {} entries", c.worst_client);
            assert_eq!(c.clients, c.entries, "event {i}");
        }
        let moved: u64 = leaves.iter().map(|c| c.entries).sum();
        assert_eq!(moved, CLIENTS * K as u64, "every subset entry leaves once");
    }
}
