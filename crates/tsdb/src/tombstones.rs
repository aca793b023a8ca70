//! Tombstones: time intervals of series whose samples are deleted (`delete_series`) but still
//! lie in the chunks. Readers skip them; compaction and `clean_tombstones` rewrite blocks
//! without them.
//!
//! - [`Intervals`]: a series' deleted time ranges (inclusive bounds), sorted and merged.
//! - [`Tombstones`]: series id -> intervals, for one block (ids are the block index's series
//!   ids) and its `tombstones` file:
//!
//! ```text
//! magic   u32 BE  0x0130BA30
//! version u8      1
//! count   uvarint number of entries
//! entry   uvarint(series id) varint(mint) varint(maxt)     (count times, ids ascending)
//! crc32   u32 BE  CRC32 (IEEE) of every byte before it
//! ```
//!
//! The file is replaced atomically (`tombstones.tmp`, fsync, rename, fsync the block directory):
//! a block has either the old or the new set. A missing file is an empty set. Layout and
//! decisions: `docs/format/block.md`. The head keeps its intervals per series and logs them as
//! tombstone records (`crate::record`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::block::{BlockError, Result, io_err, sync_dir, write_file_synced};

/// Name of a block's tombstones file.
pub const TOMBSTONES_FILE: &str = "tombstones";
/// Temporary name while the file is replaced.
const TOMBSTONES_TMP: &str = "tombstones.tmp";
/// First bytes of a tombstones file (Prometheus' magic).
pub const MAGIC: u32 = 0x0130_BA30;
/// Version this code writes and reads.
pub const VERSION: u8 = 1;

/// Deleted time ranges of one series: `[mint, maxt]` pairs (both inclusive), sorted, disjoint
/// and not adjacent (adding merges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i64, i64)>);

impl Intervals {
    pub fn new() -> Intervals {
        Intervals(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The intervals, sorted.
    pub fn as_slice(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// Adds `[mint, maxt]` (ignored when `mint > maxt`), merging it with overlapping or
    /// adjacent intervals.
    pub fn add(&mut self, mint: i64, maxt: i64) {
        if mint > maxt {
            return;
        }
        let (mut lo, mut hi) = (mint, maxt);
        // First interval that could touch: its end + 1 >= mint.
        let start = self.0.partition_point(|&(_, b)| b < lo.saturating_sub(1));
        let mut end = start;
        while let Some(&(a, b)) = self.0.get(end) {
            if a > hi.saturating_add(1) {
                break;
            }
            lo = lo.min(a);
            hi = hi.max(b);
            end += 1;
        }
        self.0.splice(start..end, std::iter::once((lo, hi)));
    }

    /// True when `t` is deleted.
    pub fn contains(&self, t: i64) -> bool {
        let i = self.0.partition_point(|&(_, b)| b < t);
        self.0.get(i).is_some_and(|&(a, _)| a <= t)
    }

    /// True when every time in `[mint, maxt]` is deleted.
    pub fn covers(&self, mint: i64, maxt: i64) -> bool {
        let i = self.0.partition_point(|&(_, b)| b < mint);
        self.0.get(i).is_some_and(|&(a, b)| a <= mint && b >= maxt)
    }

    /// Drops the parts before `t` (the head after truncation).
    pub fn trim_before(&mut self, t: i64) {
        self.0.retain(|&(_, b)| b >= t);
        if let Some(first) = self.0.first_mut() {
            first.0 = first.0.max(t);
        }
    }

    /// Removes the deleted samples from `samples` (sorted or not).
    pub fn filter(&self, samples: &mut Vec<tidemark_model::Sample>) {
        if !self.0.is_empty() {
            samples.retain(|s| !self.contains(s.t));
        }
    }
}

/// The tombstones of one block: series id -> deleted intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tombstones {
    map: BTreeMap<u64, Intervals>,
}

impl Tombstones {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of series with deleted intervals.
    pub fn num_series(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, id: u64) -> Option<&Intervals> {
        self.map.get(&id)
    }

    pub fn add(&mut self, id: u64, mint: i64, maxt: i64) {
        if mint <= maxt {
            self.map.entry(id).or_default().add(mint, maxt);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Intervals)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        let n: usize = self.map.values().map(|i| i.0.len()).sum();
        put_uvarint(&mut out, n as u64);
        for (id, iv) in &self.map {
            for &(a, b) in &iv.0 {
                put_uvarint(&mut out, *id);
                put_uvarint(&mut out, zigzag(a));
                put_uvarint(&mut out, zigzag(b));
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a file's bytes; errors say what was expected and where.
    pub fn decode(buf: &[u8]) -> std::result::Result<Tombstones, String> {
        if buf.len() < 9 {
            return Err(format!("expected at least 9 bytes, got {}", buf.len()));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let got = crc32fast::hash(body);
        if want != got {
            return Err(format!(
                "CRC32 mismatch: stored {want:#010x}, computed {got:#010x}"
            ));
        }
        let magic = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if magic != MAGIC {
            return Err(format!(
                "bad magic {magic:#010x} at offset 0: expected {MAGIC:#010x}"
            ));
        }
        if body[4] != VERSION {
            return Err(format!(
                "unsupported version {} at offset 4: expected {VERSION}",
                body[4]
            ));
        }
        let mut pos = 5;
        let n = uvarint(body, &mut pos, "entry count")?;
        let mut t = Tombstones::default();
        for _ in 0..n {
            let id = uvarint(body, &mut pos, "series id")?;
            let a = unzigzag(uvarint(body, &mut pos, "mint")?);
            let b = unzigzag(uvarint(body, &mut pos, "maxt")?);
            if a > b {
                return Err(format!(
                    "interval [{a}, {b}] of series {id} ends before it starts (before offset {pos})"
                ));
            }
            t.add(id, a, b);
        }
        if pos != body.len() {
            return Err(format!(
                "{} bytes after the last entry at offset {pos}",
                body.len() - pos
            ));
        }
        Ok(t)
    }

    /// Reads `<block_dir>/tombstones` (missing: empty).
    pub fn read(block_dir: &Path) -> Result<Tombstones> {
        let path = block_dir.join(TOMBSTONES_FILE);
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Tombstones::default());
            }
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        Tombstones::decode(&buf).map_err(|what| BlockError::Meta { path, what })
    }

    /// Replaces `<block_dir>/tombstones` atomically (an empty set removes the file).
    pub fn write(&self, block_dir: &Path) -> Result<()> {
        let path = block_dir.join(TOMBSTONES_FILE);
        if self.is_empty() {
            match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(block_dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "remove")(e)),
            }
            return Ok(());
        }
        let tmp = block_dir.join(TOMBSTONES_TMP);
        write_file_synced(&tmp, &self.encode())?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
        sync_dir(block_dir)
    }
}

/// `clean_tombstones` for one block: writes a new block (same range, level, sources and
/// resolution; `parents` = the old block) holding only the samples that are not deleted, through
/// the usual temp dir + fsync + rename. Returns its meta, or `None` when nothing is left (no
/// block written). The caller swaps the blocks and deletes the old one; after a crash in
/// between, `open_blocks` deletes the old block because the new one names it as a parent.
pub fn rewrite_without_tombstones(
    data_dir: &Path,
    block: &crate::block::Block,
) -> Result<Option<crate::block::BlockMeta>> {
    let m = block.meta();
    let mut w = crate::block::BlockWriter::new(data_dir, m.min_time, m.max_time)?;
    w.set_compaction(m.level, m.sources.clone(), vec![m.id.clone()]);
    w.set_resolution(m.resolution);
    w.set_samples_per_chunk(if m.level <= 1 {
        crate::block::HEAD_BLOCK_SAMPLES_PER_CHUNK
    } else {
        crate::compact::COMPACTED_SAMPLES_PER_CHUNK
    });
    let mut samples = Vec::new();
    // Series ids are in label order, as the writer wants them.
    for id in 0..block.index().num_series() {
        let e = block.index().series(id)?;
        samples.clear();
        block.read_live_series_samples(id, &e, &mut samples)?;
        w.add_samples(&e.labels, &samples)?;
    }
    if w.num_series() == 0 {
        return Ok(None);
    }
    Ok(Some(w.finish()?))
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn uvarint(buf: &[u8], pos: &mut usize, what: &str) -> std::result::Result<u64, String> {
    let start = *pos;
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(format!("truncated at offset {}: expected {what}", *pos));
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(format!("varint overflows 64 bits at offset {start}"));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err(format!("varint overflows 64 bits at offset {start}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn intervals_merge() {
        let mut i = Intervals::new();
        i.add(10, 20);
        i.add(30, 40);
        i.add(21, 29);
        assert_eq!(i.as_slice(), &[(10, 40)]);
        i.add(i64::MIN, -5);
        i.add(50, i64::MAX);
        assert_eq!(i.as_slice(), &[(i64::MIN, -5), (10, 40), (50, i64::MAX)]);
        assert!(i.contains(i64::MIN) && i.contains(i64::MAX) && !i.contains(45));
        assert!(i.covers(12, 40) && !i.covers(12, 41));
        i.trim_before(15);
        assert_eq!(i.as_slice(), &[(15, 40), (50, i64::MAX)]);
    }

    #[test]
    fn file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Tombstones::read(dir.path()).unwrap().is_empty());
        let mut t = Tombstones::default();
        t.add(3, -100, 200);
        t.add(0, i64::MIN, i64::MAX);
        t.add(3, 500, 600);
        t.write(dir.path()).unwrap();
        assert_eq!(Tombstones::read(dir.path()).unwrap(), t);
        let mut bytes = std::fs::read(dir.path().join(TOMBSTONES_FILE)).unwrap();
        bytes[7] ^= 1;
        let e = Tombstones::decode(&bytes).unwrap_err();
        assert!(e.contains("CRC32 mismatch"), "{e}");
        let e = Tombstones::decode(&bytes[..5]).unwrap_err();
        assert_eq!(e, "expected at least 9 bytes, got 5");
        Tombstones::default().write(dir.path()).unwrap();
        assert!(!dir.path().join(TOMBSTONES_FILE).exists());
    }

    proptest! {
        /// Intervals against a model: the set of deleted times in a small domain.
        #[test]
        fn intervals_match_model(adds in proptest::collection::vec((-30i64..30, 0i64..12), 0..20), trim in proptest::option::of(-30i64..30)) {
            let mut iv = Intervals::new();
            let mut model = BTreeSet::new();
            for (a, len) in adds {
                iv.add(a, a + len);
                model.extend(a..=a + len);
            }
            if let Some(t) = trim {
                iv.trim_before(t);
                model.retain(|&x| x >= t);
            }
            for w in iv.as_slice().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "not merged: {:?}", iv);
            }
            for t in -45..50 {
                prop_assert_eq!(iv.contains(t), model.contains(&t), "t={}", t);
                prop_assert_eq!(iv.covers(t, t + 3), (t..=t + 3).all(|x| model.contains(&x)));
            }
            let mut ts = Tombstones::default();
            for &(a, b) in iv.as_slice() {
                ts.add(7, a, b);
            }
            let back = Tombstones::decode(&ts.encode()).unwrap();
            prop_assert_eq!(back, ts);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Tombstones::decode(&bytes);
        }
    }
}
