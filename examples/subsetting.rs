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

/// Clients whose subset changed and entries that moved (left a subset), from `a` to `b`.
fn churn(cfg: &[Subsetting], a: &[String], b: &[String]) -> (u64, u64) {
    let (mut changed, mut moved) = (0, 0);
    for s in cfg {
        let (old, new) = (s.select(a), s.select(b));
        let gone = old.iter().filter(|k| !new.contains(k)).count() as u64;
        changed += u64::from(gone > 0);
        moved += gone;
    }
    (changed, moved)
}

fn report() -> String {
    let mut out = String::new();
    let all: Vec<String> = (0..BACKENDS).map(backend).collect();
    let _ = writeln!(
        out,
        "{CLIENTS} clients, {BACKENDS} backends, subset {K}: connections per backend"
    );
    let _ = writeln!(out, "| method | min | max | stdev |\n|---|---|---|---|");
    for kind in ["deterministic", "random (A68)"] {
        let subsets: Vec<Vec<String>> = clients(kind).iter().map(|s| s.select(&all)).collect();
        let (min, max, sd) = spread(&all, &subsets);
        let _ = writeln!(out, "| {kind} | {min} | {max} | {sd:.2} |");
    }
    let (min, max, sd) = spread(&all, &plain_random(&all));
    let _ = writeln!(out, "| plain random 10 | {min} | {max} | {sd:.2} |");

    // Churn: every backend leaving in turn, and 30 new backends joining in turn (means
    // and worst case over those events).
    let _ = writeln!(
        out,
        "\nchurn per event (mean, worst): clients whose subset changed, entries moved"
    );
    let _ = writeln!(
        out,
        "| method | leave: clients | leave: entries | join: clients | join: entries |\n|---|---|---|---|---|"
    );
    for kind in ["deterministic", "random (A68)"] {
        let cfg = clients(kind);
        let leaves: Vec<(u64, u64)> = (0..BACKENDS)
            .map(|i| {
                let mut less = all.clone();
                less.remove(i);
                churn(&cfg, &all, &less)
            })
            .collect();
        let joins: Vec<(u64, u64)> = (0..30)
            .map(|j| {
                let mut more = all.clone();
                more.push(format!("joined-{j:02}"));
                churn(&cfg, &all, &more)
            })
            .collect();
        let stat = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
            let mean = v.iter().map(f).sum::<u64>() as f64 / v.len() as f64;
            (mean, v.iter().map(f).max().unwrap())
        };
        let (lc, lcw) = stat(&leaves, |p| p.0);
        let (le, lew) = stat(&leaves, |p| p.1);
        let (jc, jcw) = stat(&joins, |p| p.0);
        let (je, jew) = stat(&joins, |p| p.1);
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
    #[test]
    fn deterministic_subsetting_is_exactly_even_and_a68_moves_one_entry_per_client() {
        let out = super::report();
        // 300 clients, 30 per round: every backend gets exactly 10 clients.
        assert!(out.contains("| deterministic | 10 | 10 | 0.00 |"), "{out}");
        let a68 = out
            .lines()
            .filter(|l| l.starts_with("| random (A68)"))
            .nth(1)
            .expect("churn row");
        // A leave or a join moves at most one entry of each client's subset, so the
        // clients changed equal the entries moved.
        let cells: Vec<&str> = a68.split('|').map(str::trim).collect();
        assert_eq!(cells[2], cells[3], "{a68}");
        assert_eq!(cells[4], cells[5], "{a68}");
    }
}
