//! Helpers shared by the hash strategies: stable endpoint lists, fingerprints, and the
//! deterministic last-resort choice.

use super::{Candidates, RequestKey};
use crate::backend::mix64;

/// The `(id, weight)` pairs of every endpoint, sorted by id so that tables do not depend on
/// the order endpoints were inserted in.
pub(super) fn sorted_members(all: &Candidates<'_>) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = all.iter().map(|c| (c.id(), c.weight().max(1))).collect();
    v.sort_unstable();
    v.dedup_by_key(|m| m.0);
    v
}

/// A fingerprint of a member list, to skip rebuilding a table for an unchanged set (a
/// drain or a health change rebuilds nothing).
pub(super) fn fingerprint(members: &[(u64, u32)]) -> u64 {
    members
        .iter()
        .fold(mix64(members.len() as u64), |h, &(id, w)| {
            mix64(h ^ id).wrapping_add(u64::from(w))
        })
}

/// Maps 64 random bits to `0..n` without a division (Lemire's multiply-shift).
#[inline]
pub(super) fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// The last resort when a table has no available endpoint for a key (never rebuilt, or
/// stale for a moment after a change): the same key still gets the same candidate for a
/// given candidate list.
#[inline]
pub(super) fn last_resort(candidates: &Candidates<'_>, key: &RequestKey) -> usize {
    reduce(mix64(key.hash()), candidates.len())
}
