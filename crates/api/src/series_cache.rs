//! Remote-write series cache: the encoded label fields of a 1.0 `TimeSeries`, exactly as they
//! arrived, mapped to the validated [`Labels`] built from them and the storage's reference of the
//! series. A sender repeats the same label bytes for a series in every request, so a hit skips
//! UTF-8 and label validation, building the label set and looking the series up by its labels
//! (the reference is only a hint: the appender checks it against the labels).
//!
//! Entries are identified by two independent 64-bit hashes of the raw bytes (the map key and a
//! check hash with another seed), not by a copy of the bytes: at a million series the copies
//! cost ~200 bytes per series (a fifth of the engine's whole footprint per series). Two
//! different label encodings would have to collide on all 128 bits to be confused, which is
//! not a practical concern (about 2^-128 per lookup and pair).
//!
//! Only label sets that passed validation are cached (limits are fixed for the process). The
//! size is bounded with two generations: when the current map reaches its capacity it becomes
//! the previous one (the older one is dropped); a hit in the previous map moves the entry back
//! into the current one, so series that keep being written stay cached and churned ones go.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use parking_lot::Mutex;
use tidemark_model::Labels;
use tidemark_storage::SeriesRef;

const SHARDS: usize = 16;

/// An already-mixed 64-bit key (xxh3) needs no more hashing.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type Map = HashMap<u64, Entry, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone)]
struct Entry {
    /// [`check_of`] the raw bytes.
    check: u64,
    labels: Labels,
    sref: Option<SeriesRef>,
}

#[derive(Debug, Default)]
struct Shard {
    cur: Map,
    prev: Map,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct SeriesCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// Hash of the raw label bytes (the cache key).
#[inline]
pub(crate) fn key_of(raw: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(raw)
}

/// Seed of the check hash (any constant other than the key's 0).
const CHECK_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The second, independent hash of the raw label bytes kept in each entry.
#[inline]
fn check_of(raw: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(raw, CHECK_SEED)
}

impl SeriesCache {
    /// A cache holding about `capacity` series (per generation).
    pub(crate) fn new(capacity: usize) -> SeriesCache {
        SeriesCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The low bits pick the map bucket; the top bits pick the shard.
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// The labels (and reference hint) cached for these raw label bytes.
    pub(crate) fn get(&self, key: u64, raw: &[u8]) -> Option<(Labels, Option<SeriesRef>)> {
        let check = check_of(raw);
        let mut g = self.shard(key).lock();
        if let Some(e) = g.cur.get(&key) {
            return (e.check == check).then(|| (e.labels.clone(), e.sref));
        }
        let e = g.prev.remove(&key)?;
        if e.check != check {
            return None;
        }
        let out = (e.labels.clone(), e.sref);
        self.put_locked(&mut g, key, e);
        Some(out)
    }

    fn put_locked(&self, g: &mut Shard, key: u64, e: Entry) {
        if g.cur.len() >= self.per_shard && !g.cur.contains_key(&key) {
            g.prev = std::mem::take(&mut g.cur);
        }
        g.cur.insert(key, e);
    }

    /// Remembers validated labels for raw label bytes (replacing what was there).
    pub(crate) fn put(&self, key: u64, raw: &[u8], labels: &Labels, sref: Option<SeriesRef>) {
        let e = Entry {
            check: check_of(raw),
            labels: labels.clone(),
            sref,
        };
        let mut g = self.shard(key).lock();
        self.put_locked(&mut g, key, e);
    }

    /// Updates the reference hint of a cached entry (no-op when absent or different bytes).
    pub(crate) fn set_ref(&self, key: u64, raw: &[u8], sref: SeriesRef) {
        let check = check_of(raw);
        let mut g = self.shard(key).lock();
        if let Some(e) = g.cur.get_mut(&key)
            && e.check == check
        {
            e.sref = Some(sref);
        }
    }

    /// Series cached (both generations).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock();
                g.cur.len() + g.prev.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_and_bounded() {
        let c = SeriesCache::new(64);
        let l = Labels::from_pairs([("__name__", "up")]);
        let raw = b"abc".as_slice();
        let k = key_of(raw);
        assert!(c.get(k, raw).is_none());
        c.put(k, raw, &l, None);
        assert_eq!(c.get(k, raw), Some((l.clone(), None)));
        // Same key, other bytes (a forced collision): a miss, never the wrong labels.
        assert!(c.get(k, b"abd").is_none());
        c.set_ref(k, raw, SeriesRef(7));
        assert_eq!(c.get(k, raw), Some((l.clone(), Some(SeriesRef(7)))));
        for i in 0..10_000u32 {
            let r = i.to_le_bytes();
            c.put(key_of(&r), &r, &l, None);
        }
        assert!(c.len() <= 2 * 64 + 2 * SHARDS, "cache grew to {}", c.len());
        // Recently put entries are still there.
        let r = 9_999u32.to_le_bytes();
        assert!(c.get(key_of(&r), &r).is_some());
    }
}
