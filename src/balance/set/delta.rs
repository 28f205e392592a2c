//! Keeping the candidate list up to date by replaying changes instead of copying it.

use super::*;

/// The changes that turned one candidate list into the next: once readers release the
/// older snapshot, the writer replays them on its list (now unshared) instead of copying
/// the current list, so a steady stream of single changes copies no list at all.
pub(super) struct Delta {
    /// The generation of the list the changes apply to.
    pub(super) base: u64,
    /// Per endpoint id, its candidate, or `None` to drop it.
    pub(super) ops: Vec<(u64, Option<Candidate>)>,
}

pub(super) fn apply(list: &mut CandidateList, ops: &[(u64, Option<Candidate>)]) {
    for (id, wanted) in ops {
        match (list.view().position(*id), wanted) {
            (Some(i), Some(c)) => list.replace(i, c.clone()),
            (Some(i), None) => list.swap_remove(i),
            (None, Some(c)) => list.push(c.clone()),
            (None, None) => {}
        }
    }
}

/// What the writer keeps between edits, under the writer lock.
pub(super) struct Writer<K, S> {
    /// Snapshots replaced while a reader still held them (a clone's cache, a request in
    /// flight): they are dropped here, off the request path, once readers let go, since
    /// dropping a snapshot releases every candidate (O(n)).
    pub(super) retired: Vec<Arc<Snapshot<K, S>>>,
    /// The candidate list of the snapshot before the current one, once readers released
    /// it: the next edit replays the current snapshot's [`Delta`] on it and then its own
    /// changes, instead of copying the current list.
    pub(super) spare: Option<CandidateList>,
}

impl<K, S> Writer<K, S> {
    /// Drops the retired snapshots no reader holds any more, keeping as the spare the
    /// candidate list of generation `base` (the one the current snapshot derives from).
    pub(super) fn reap(&mut self, base: Option<u64>) {
        let mut i = 0;
        while i < self.retired.len() {
            // `ArcSwap::swap` settled readers' borrowed references into counts, and no
            // new reference can be taken from a retired snapshot: one means only us.
            if Arc::strong_count(&self.retired[i]) > 1 {
                i += 1;
                continue;
            }
            let snap = self.retired.swap_remove(i);
            if base.is_some_and(|b| b == snap.candidates.view().generation())
                && let Ok(snap) = Arc::try_unwrap(snap)
            {
                self.spare = Some(snap.candidates);
            }
        }
        if base != self.spare.as_ref().map(|l| l.view().generation()) {
            self.spare = None;
        }
    }
}
