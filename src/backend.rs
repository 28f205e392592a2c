//! Backend descriptions.

use std::{
    fmt,
    hash::{Hash, Hasher},
};

/// One backend the balancer may send requests to: a key (usually its address), a weight,
/// a priority level (primary or backup) and free-form metadata.
///
/// The key identifies the backend everywhere: per-endpoint state (in-flight count, latency,
/// health, ejection history) is keyed by it, so it survives changes to other backends.
///
/// ```
/// use tower_lb::Backend;
///
/// let primary = Backend::new("10.0.0.1:8080").with_weight(5);
/// let spare = Backend::new("10.0.0.9:8080").backup(true);
/// let last_resort = Backend::new("10.0.9.9:8080").with_priority(2);
/// assert_eq!(primary.weight(), 5);
/// assert!(spare.is_backup() && last_resort.is_backup());
/// assert_eq!((primary.priority(), spare.priority(), last_resort.priority()), (0, 1, 2));
/// ```
#[derive(Clone)]
pub struct Backend<K> {
    key: K,
    weight: u32,
    priority: u8,
    max_conns: usize,
    meta: http::Extensions,
}

impl<K> Backend<K> {
    /// A primary backend with weight 1.
    pub fn new(key: K) -> Self {
        Self {
            key,
            weight: 1,
            priority: 0,
            max_conns: 0,
            meta: http::Extensions::new(),
        }
    }

    /// Sets the weight (nginx `weight=`). Zero is refused with
    /// [`ConfigError::ZeroWeight`](crate::error::ConfigError) when the backend is added.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Marks the backend as a backup (nginx `backup`): it gets traffic only while the
    /// primaries cannot take it (ejected, down, or already failed for this request). The same as [`with_priority(1)`](Self::with_priority); `false` makes
    /// it a primary again.
    #[must_use]
    pub fn backup(mut self, backup: bool) -> Self {
        self.priority = u8::from(backup);
        self
    }

    /// Sets the priority level: 0 (the default) for primaries, higher for backups. The
    /// lowest level that can serve does, so level 2 gets traffic only while levels 0 and 1
    /// cannot (DNS SRV priorities, RFC 2782; Envoy priority levels without
    /// overprovisioning spill-over): a level serves while at least the
    /// [panic threshold](crate::balance::Builder::panic_threshold) share of it is
    /// available, and a request every endpoint of its level failed moves on to the next
    /// level within its retries.
    #[must_use]
    pub fn with_priority(mut self, level: u8) -> Self {
        self.priority = level;
        self
    }

    /// Caps concurrent requests to this backend (nginx `max_conns`); `0`, the default,
    /// means no cap. A backend at its cap is skipped.
    #[must_use]
    pub fn with_max_conns(mut self, max: usize) -> Self {
        self.max_conns = max;
        self
    }

    /// Attaches a piece of metadata (zone, version, labels…) that endpoint makers and
    /// custom strategies can read back with [`meta`](Self::meta).
    #[must_use]
    pub fn with_meta<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.meta.insert(value);
        self
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether this is a backup backend (priority level above 0).
    pub fn is_backup(&self) -> bool {
        self.priority > 0
    }

    /// The priority level (0: primary).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The concurrency cap (`0`: none).
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// Reads metadata attached with [`with_meta`](Self::with_meta).
    pub fn meta<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.meta.get::<T>()
    }
}

impl<K: fmt::Debug> fmt::Debug for Backend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("key", &self.key)
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("max_conns", &self.max_conns)
            .finish_non_exhaustive()
    }
}

impl<K> From<K> for Backend<K> {
    fn from(key: K) -> Self {
        Self::new(key)
    }
}

/// A stable 64-bit hash of a backend key (FNV-1a over the key's `Hash` output).
///
/// Unlike `std`'s `RandomState`, it is the same in every process, so clients that hash the
/// same keys agree on consistent-hashing placements.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = Fnv64::default();
    value.hash(&mut h);
    // FNV's low bits mix poorly; finish with a splitmix64 round.
    mix64(h.finish())
}

/// The splitmix64 finalizer: a cheap, good bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
