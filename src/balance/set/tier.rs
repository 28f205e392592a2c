//! Which priority level serves, and when panic mode applies.

use super::*;

/// Which group of endpoints the candidate list was drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// Available primaries.
    Primary,
    /// The primaries cannot serve (none available, or fewer than the panic threshold):
    /// the available backups of the lowest priority level that can
    /// ([`Stats::level`](crate::balance::Stats::level)).
    Backup,
    /// Panic mode: no level has enough endpoints available, so health is ignored and
    /// every non-draining endpoint of one level is used (Envoy's panic threshold).
    Panic,
    /// Nothing can serve.
    None,
}

/// Endpoint counts by priority level (index 0: primaries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Per level: not draining.
    pub(super) live: Vec<usize>,
    /// Per level: healthy or on probation.
    pub(super) available: Vec<usize>,
}

impl Counts {
    /// Adds (`add` true) or subtracts one endpoint of priority `level` with `status`.
    pub(super) fn apply(&mut self, level: u8, status: Status, add: bool) {
        let level = usize::from(level);
        if self.live.len() <= level {
            self.live.resize(level + 1, 0);
            self.available.resize(level + 1, 0);
        }
        let step = |n: &mut usize| {
            if add {
                *n += 1
            } else {
                *n -= 1
            }
        };
        if status != Status::Draining {
            step(&mut self.live[level]);
        }
        if matches!(status, Status::Healthy | Status::Probation) {
            step(&mut self.available[level]);
        }
        // No trailing empty levels, so equal counts compare equal however they were made.
        while self.live.last() == Some(&0) && self.available.last() == Some(&0) {
            self.live.pop();
            self.available.pop();
        }
    }

    /// Which tier serves, and from which priority level, given the panic threshold;
    /// the panic threshold applies per level (Envoy):
    ///
    /// 1. the lowest level whose available share (healthy or on probation, of its live
    ///    endpoints) is at least the threshold serves: its available endpoints;
    /// 2. if no level is that healthy, panic mode in the lowest level with an available
    ///    endpoint: every live endpoint of it, whatever its health;
    /// 3. if nothing is available anywhere, panic mode in the lowest live level;
    /// 4. with the threshold at 0 (panic mode off), only step 1, where any available
    ///    endpoint is enough.
    pub(super) fn tier(&self, threshold: f64) -> (Tier, u8) {
        let level = |l: usize| u8::try_from(l).unwrap_or(u8::MAX);
        let serving = (0..self.live.len()).find(|&l| {
            let (live, available) = (self.live[l], self.available[l]);
            available > 0 && available as f64 >= threshold * live as f64
        });
        if let Some(l) = serving {
            let tier = if l == 0 { Tier::Primary } else { Tier::Backup };
            return (tier, level(l));
        }
        if threshold > 0.0 {
            let panic = (0..self.live.len())
                .find(|&l| self.available[l] > 0)
                .or_else(|| (0..self.live.len()).find(|&l| self.live[l] > 0));
            if let Some(l) = panic {
                return (Tier::Panic, level(l));
            }
        }
        (Tier::None, 0)
    }
}

pub(super) fn level_of<K, S>(e: &Entry<K, S>) -> u8 {
    e.backend.priority()
}
