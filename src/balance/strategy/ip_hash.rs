use std::{fmt, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

use super::{Candidates, RequestKey, RoundRobin, Strategy};

/// nginx gives up rehashing after this many extra tries and falls back to round robin.
const MAX_REHASH: usize = 20;

/// nginx's `ip_hash`: clients of one /24 (IPv4) or one address (IPv6) go to the same
/// endpoint.
///
/// The hash is nginx's own: starting from 89, `hash = (hash × 113 + octet) mod 6271` over
/// the first three octets of an IPv4 address or all sixteen of an IPv6 one; the endpoint
/// is the one holding point `hash mod Σ weights` when the endpoints' weights are laid end
/// to end in set order. When that endpoint is unavailable, the hash is run again over the
/// same octets (the same sequence every time, so a client keeps the same fallback), up to
/// 20 times; after that the fallback strategy picks ([`RoundRobin`] by default, as in
/// nginx). Keys without an IP (a header or cookie key) hash their 8 key-hash bytes the
/// same way; requests without a key use the fallback strategy.
///
/// Like nginx's, this hash is not consistent: adding or removing an endpoint remaps most
/// clients. Use [`RingHash`](super::RingHash) or [`Maglev`](super::Maglev) when that
/// matters. The weight layout is rebuilt in [`rebuild`](Strategy::rebuild); a pick is
/// O(log n) per try.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, IpHash, RequestKey, Strategy};
///
/// let ip_hash = IpHash::new();
/// let all = list_of(&[1, 1, 1]);
/// ip_hash.rebuild(&all.view());
/// let a = RequestKey::from_ip("192.0.2.10".parse().unwrap());
/// let b = RequestKey::from_ip("192.0.2.200".parse().unwrap()); // same /24
/// assert_eq!(ip_hash.pick(&all.view(), Some(&a)), ip_hash.pick(&all.view(), Some(&b)));
/// ```
pub struct IpHash<F = RoundRobin> {
    layout: ArcSwap<Layout>,
    fallback: F,
}

#[derive(Default)]
struct Layout {
    ids: Vec<u64>,
    /// Weight prefix sums, as [`Candidates::cumulative`].
    cumulative: Vec<u64>,
}

impl IpHash {
    /// nginx `ip_hash`, round robin after 20 rehashes and for requests without a key.
    pub fn new() -> Self {
        Self {
            layout: ArcSwap::from_pointee(Layout::default()),
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for IpHash {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> IpHash<F> {
    /// Uses `fallback` for requests without a key and after 20 rehashes.
    pub fn fallback<G: Strategy>(self, fallback: G) -> IpHash<G> {
        IpHash {
            layout: self.layout,
            fallback,
        }
    }
}

impl<F> fmt::Debug for IpHash<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpHash")
            .field("endpoints", &self.layout.load().ids.len())
            .finish_non_exhaustive()
    }
}

/// The octets nginx hashes: the first three of IPv4 (IPv4-mapped IPv6 counts as IPv4),
/// all of IPv6; for other keys, the 8 bytes of the key hash.
fn octets(key: &RequestKey) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    match key.ip().map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => {
            buf[..3].copy_from_slice(&v4.octets()[..3]);
            (buf, 3)
        }
        Some(IpAddr::V6(v6)) => (v6.octets(), 16),
        None => {
            buf[..8].copy_from_slice(&key.hash().to_be_bytes());
            (buf, 8)
        }
    }
}

impl<F: Strategy> Strategy for IpHash<F> {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(candidates, None);
        };
        let layout = self.layout.load();
        let total = layout.cumulative.last().copied().unwrap_or(0);
        if total > 0 {
            let (buf, len) = octets(key);
            let mut hash: u64 = 89;
            for _ in 0..=MAX_REHASH {
                for &b in &buf[..len] {
                    hash = (hash * 113 + u64::from(b)) % 6271;
                }
                let w = hash % total;
                let i = layout.cumulative.partition_point(|&c| c <= w);
                if let Some(pos) = candidates.position(layout.ids[i]) {
                    return Some(pos);
                }
            }
        }
        self.fallback.pick(candidates, None)
    }

    fn rebuild(&self, all: &Candidates<'_>) {
        // nginx lays peers out in configuration order: here, the order of the set.
        let mut total = 0u64;
        let layout = Layout {
            ids: all.iter().map(|c| c.id()).collect(),
            cumulative: all
                .iter()
                .map(|c| {
                    total += u64::from(c.weight().max(1));
                    total
                })
                .collect(),
        };
        self.layout.store(Arc::new(layout));
        self.fallback.rebuild(all);
    }

    fn name(&self) -> &'static str {
        "ip-hash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{list_of, Candidate, CandidateList};

    /// nginx's pick for one IPv4 client over equal weights, computed by hand.
    fn nginx_first(ip: [u8; 4], n: u64) -> u64 {
        let mut h = 89u64;
        for b in &ip[..3] {
            h = (h * 113 + u64::from(*b)) % 6271;
        }
        h % n
    }

    #[test]
    fn matches_nginx_hash() {
        let s = IpHash::new();
        let all = list_of(&[1; 7]);
        s.rebuild(&all.view());
        for ip in [
            [10, 0, 0, 1],
            [192, 168, 7, 9],
            [203, 0, 113, 250],
            [1, 2, 3, 4],
        ] {
            let key = RequestKey::from_ip(IpAddr::from(ip));
            assert_eq!(
                s.pick(&all.view(), Some(&key)).unwrap() as u64,
                nginx_first(ip, 7)
            );
        }
    }

    #[test]
    fn ipv6_uses_the_whole_address() {
        let s = IpHash::new();
        let all = list_of(&[1; 16]);
        s.rebuild(&all.view());
        let picks: std::collections::HashSet<_> = (0..64u16)
            .map(|i| {
                let ip = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]);
                s.pick(&all.view(), Some(&RequestKey::from_ip(ip))).unwrap()
            })
            .collect();
        assert!(picks.len() > 4, "{picks:?}");
    }

    #[test]
    fn unavailable_pick_rehashes_to_the_same_fallback() {
        let s = IpHash::new();
        let all = list_of(&[1; 5]);
        s.rebuild(&all.view());
        let key = RequestKey::from_ip("198.51.100.7".parse().unwrap());
        let home = s.pick(&all.view(), Some(&key)).unwrap();
        let rest = CandidateList::new(
            all.view()
                .iter()
                .filter(|c| c.id() != home as u64)
                .cloned()
                .collect::<Vec<Candidate>>(),
        );
        let first = s.pick(&rest.view(), Some(&key)).unwrap();
        for _ in 0..50 {
            assert_eq!(s.pick(&rest.view(), Some(&key)), Some(first));
        }
        assert_ne!(rest.view()[first].id(), home as u64);
    }

    #[test]
    fn no_table_falls_back_to_round_robin() {
        let s = IpHash::new();
        let all = list_of(&[1, 1]);
        let key = RequestKey::from_ip("10.1.1.1".parse().unwrap());
        let p: Vec<_> = (0..4)
            .map(|_| s.pick(&all.view(), Some(&key)).unwrap())
            .collect();
        assert_eq!(p, [0, 1, 0, 1]);
    }
}
