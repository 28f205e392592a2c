//! Copy-on-write containers for the endpoint set, so that one discovery change copies a
//! page or a shard instead of the whole set (structural sharing, without a dependency).
//!
//! A snapshot clone copies `n ÷ PAGE` page pointers and `SHARDS` shard pointers; an edit
//! then copies the one page (at most `PAGE` items) or shard (about `n ÷ SHARDS` items) it
//! touches. Reads stay two plain indexing steps, so the request path does not slow down.

use std::{collections::HashMap, hash::Hash, sync::Arc};

/// Items per page: with 10,000 endpoints, 79 page pointers to copy per snapshot and at
/// most 128 items per edited page.
const PAGE_BITS: u32 = 7;
const PAGE: usize = 1 << PAGE_BITS;

/// A vector split into shared pages: cloning copies page pointers, writing copies one page.
pub(crate) struct Pages<T> {
    pages: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Clone for Pages<T> {
    fn clone(&self) -> Self {
        Self {
            pages: self.pages.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for Pages<T> {
    fn default() -> Self {
        Self {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> Pages<T> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.pages.get(i >> PAGE_BITS)?.get(i & (PAGE - 1))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.pages.iter().flat_map(|p| p.iter())
    }

    fn page_mut(&mut self, i: usize) -> &mut Vec<T> {
        Arc::make_mut(&mut self.pages[i >> PAGE_BITS])
    }

    /// Replaces item `i` (`i < len`), copying its page if shared.
    pub(crate) fn set(&mut self, i: usize, value: T) {
        assert!(i < self.len, "index out of bounds");
        self.page_mut(i)[i & (PAGE - 1)] = value;
    }

    pub(crate) fn push(&mut self, value: T) {
        if self.len & (PAGE - 1) == 0 {
            let mut page = Vec::with_capacity(PAGE);
            page.push(value);
            self.pages.push(Arc::new(page));
        } else {
            let last = self.len;
            self.page_mut(last).push(value);
        }
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let last = self.len;
        let page = self.page_mut(last);
        let value = page.pop();
        if page.is_empty() {
            self.pages.pop();
        }
        value
    }

    /// Removes item `i` by moving the last item into its place (O(1) pages touched).
    pub(crate) fn swap_remove(&mut self, i: usize) -> T {
        assert!(i < self.len, "index out of bounds");
        let last = self.pop().expect("not empty");
        if i == self.len {
            return last;
        }
        std::mem::replace(&mut self.page_mut(i)[i & (PAGE - 1)], last)
    }
}

impl<T: Clone> std::ops::Index<usize> for Pages<T> {
    type Output = T;

    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.pages[i >> PAGE_BITS][i & (PAGE - 1)]
    }
}

/// Shards of a hash map, chosen by a caller-supplied 64-bit hash of the key (the backend
/// id): cloning copies shard pointers, writing copies one shard.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

pub(crate) struct ShardedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    pub(crate) fn new() -> Self {
        // Empty maps do not allocate; the shards cost one `Arc` each.
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }

    #[inline]
    fn shard(hash: u64) -> usize {
        (hash >> (64 - SHARD_BITS)) as usize
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &K) -> Option<&V> {
        self.shards[Self::shard(hash)].get(key)
    }

    pub(crate) fn get_mut(&mut self, hash: u64, key: &K) -> Option<&mut V> {
        let shard = &mut self.shards[Self::shard(hash)];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).get_mut(key)
    }

    pub(crate) fn insert(&mut self, hash: u64, key: K, value: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[Self::shard(hash)]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, hash: u64, key: &K) -> Option<V> {
        let shard = &mut self.shards[Self::shard(hash)];
        if !shard.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(key);
        self.len -= 1;
        old
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.shards.iter().flat_map(|s| s.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_push_pop_swap_remove_share() {
        let mut a = Pages::default();
        for i in 0..(3 * PAGE + 5) {
            a.push(i);
        }
        assert_eq!(a.len(), 3 * PAGE + 5);
        let b = a.clone();
        // Removing from the first page moves the last item there; `b` is unchanged.
        assert_eq!(a.swap_remove(3), 3);
        assert_eq!(a[3], 3 * PAGE + 4);
        assert_eq!(a.len(), 3 * PAGE + 4);
        assert_eq!(b[3], 3);
        assert_eq!(b.len(), 3 * PAGE + 5);
        // Only the written pages were copied.
        assert!(Arc::ptr_eq(&a.pages[1], &b.pages[1]));
        assert!(!Arc::ptr_eq(&a.pages[0], &b.pages[0]));
        // Removing the last item.
        let last = a.len() - 1;
        assert_eq!(a.swap_remove(last), 3 * PAGE + 3);
        // Emptying drops pages.
        while a.pop().is_some() {}
        assert!(a.is_empty());
        assert!(a.pages.is_empty());
        assert_eq!(
            b.iter().copied().collect::<Vec<_>>(),
            (0..3 * PAGE + 5).collect::<Vec<_>>()
        );
        let mut c = b.clone();
        c.set(PAGE, 7);
        assert_eq!(c.get(PAGE), Some(&7));
        assert_eq!(b.get(PAGE), Some(&PAGE));
        assert_eq!(c.get(10 * PAGE), None);
    }

    #[test]
    fn sharded_map_copies_one_shard() {
        let mut a = ShardedMap::new();
        for i in 0..1000u64 {
            let h = crate::backend::stable_hash(&i);
            assert_eq!(a.insert(h, i, i * 2), None);
        }
        assert_eq!(a.len(), 1000);
        let b = a.clone();
        let h = crate::backend::stable_hash(&7u64);
        assert_eq!(a.remove(h, &7), Some(14));
        assert_eq!(a.remove(h, &7), None);
        *a.get_mut(crate::backend::stable_hash(&8u64), &8).unwrap() = 1;
        assert_eq!(a.len(), 999);
        assert_eq!(b.get(h, &7), Some(&14));
        assert_eq!(b.len(), 1000);
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2);
        assert_eq!(a.keys().count(), 999);
    }
}
