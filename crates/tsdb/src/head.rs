//! The head: the recent window of data, in memory.
//!
//! Every series has its labels, one open chunk (a [`ChunkEncoder`]), the metadata of its full
//! chunks (which live in memory-mapped head-chunk files, see [`HeadChunks`]) and a small sorted
//! buffer of out-of-order samples. Series are found by label hash or by reference through
//! lock-striped maps; the inverted index ([`MemPostings`]) maps label pairs to series
//! references. Appending takes only the lock of the series being written (and, when a series is
//! created, its stripe and the index); committing serializes on the log (see `head_append.rs`).
//!
//! Split by concern as Prometheus does: `head_append.rs` (appender, sample insertion rules),
//! `head_read.rs` (querier), `head_log.rs` (replay and checkpoint records).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use tidemark_model::{Labels, Matcher, Sample};

use crate::chunk::{self, ChunkEncoder};
use crate::chunks::{ChunkRef, SegmentReader, SegmentWriter, SegmentWriterOptions};
use crate::log::Log;
use crate::postings::{Postings, PostingsSource, postings_for_matchers};
use crate::record::{self, RefTombstone};
use crate::tombstones::Intervals;

/// Number of stripes of the series maps (a power of two).
const STRIPES: usize = 1 << 12;
/// A full chunk holds this many samples (Prometheus' figure).
pub(crate) const SAMPLES_PER_CHUNK: usize = 120;
/// Head-chunk segment files rotate at this size.
const HEAD_CHUNK_SEGMENT_SIZE: u64 = 128 << 20;

/// Options of the head.
#[derive(Debug, Clone)]
pub struct HeadOptions {
    /// Directory of the memory-mapped head-chunk files (`None`: keep full chunks in memory; only
    /// for tests and benchmarks of the in-memory structures).
    pub chunk_dir: Option<PathBuf>,
    /// Chunks never span a multiple of this (the block range), so blocks take whole chunks.
    pub chunk_range_ms: i64,
    /// Samples up to this much older than the head's newest sample are accepted out of order.
    pub ooo_window_ms: i64,
    /// Threads inserting samples during replay (1: the reading thread itself, the default; 0:
    /// one per CPU, at most 4).
    pub replay_workers: usize,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            chunk_dir: None,
            chunk_range_ms: 2 * 3_600_000,
            ooo_window_ms: 10 * 60_000,
            replay_workers: 1,
        }
    }
}

/// Errors of the head (wrapped into `tidemark_storage::Error` at the trait boundary).
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("head chunk files in {dir}: {source}")]
    Chunks {
        dir: PathBuf,
        #[source]
        source: crate::chunks::ChunksError,
    },
    #[error("head chunk {chunk_ref:#x} of series {series_ref}: {reason}")]
    BadChunk {
        series_ref: u64,
        chunk_ref: u64,
        reason: String,
    },
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("{0}")]
    Storage(#[from] tidemark_storage::Error),
    #[error("head chunk directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<HeadError> for tidemark_storage::Error {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::BadChunk { .. } => tidemark_storage::Error::Corruption(e.to_string()),
            HeadError::Storage(e) => e,
            other => tidemark_storage::Error::Other(other.to_string()),
        }
    }
}

/// Metadata of a full chunk in the head-chunk files (or, without files, in memory).
#[derive(Debug, Clone)]
pub(crate) struct ChunkMeta {
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) loc: ChunkLoc,
}

#[derive(Debug, Clone)]
pub(crate) enum ChunkLoc {
    File(u64),
    Mem(Arc<[u8]>),
}

/// The mutable part of a series, under its own lock.
#[derive(Debug, Default)]
pub(crate) struct SeriesData {
    pub(crate) full: Vec<ChunkMeta>,
    pub(crate) open: Option<ChunkEncoder>,
    /// Newest in-order sample (`i64::MIN` when none).
    pub(crate) last_t: i64,
    pub(crate) last_v: f64,
    /// Out-of-order samples (older than `last_t` at their arrival), sorted by time, unique.
    pub(crate) ooo: Vec<Sample>,
    /// Deleted intervals (`delete_series`): readers skip these samples; cutting a block drops
    /// them. Boxed: almost every series has none.
    pub(crate) deleted: Option<Box<Intervals>>,
}

impl SeriesData {
    /// Oldest and newest sample time (deleted ones included), `None` without samples.
    fn bounds(&self) -> Option<(i64, i64)> {
        let open = self.open.as_ref();
        let min = self
            .full
            .iter()
            .map(|c| c.min_time)
            .chain(open.and_then(|o| o.min_time()))
            .chain(self.ooo.first().map(|x| x.t))
            .min()?;
        let max = self
            .full
            .iter()
            .map(|c| c.max_time)
            .chain(open.and_then(|o| o.max_time()))
            .chain(self.ooo.last().map(|x| x.t))
            .max()?;
        Some((min, max))
    }

    /// Adds a deleted interval.
    pub(crate) fn add_deleted(&mut self, mint: i64, maxt: i64) {
        self.deleted
            .get_or_insert_with(Default::default)
            .add(mint, maxt);
    }
}

/// One series of the head.
#[derive(Debug)]
pub(crate) struct MemSeries {
    pub(crate) series_ref: u64,
    pub(crate) labels: Labels,
    pub(crate) data: Mutex<SeriesData>,
    /// Its series record is in the log.
    pub(crate) logged: AtomicBool,
    /// Appenders holding samples for it that are not yet committed (blocks garbage collection).
    pub(crate) pending: AtomicU32,
}

impl MemSeries {
    fn new(series_ref: u64, labels: Labels) -> MemSeries {
        MemSeries {
            series_ref,
            labels,
            data: Mutex::new(SeriesData {
                last_t: i64::MIN,
                ..SeriesData::default()
            }),
            logged: AtomicBool::new(false),
            pending: AtomicU32::new(0),
        }
    }
}

/// A hasher for `u64` keys (series references, label hashes): a 64-bit finalizer, much cheaper
/// than SipHash, well mixed in every bit (keys of one stripe share their low bits).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        let mut h = x ^ self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }
}

/// The hasher of the reference maps: series references are handed out consecutively, and the
/// series of one scrape target (or one remote-write client) are created together, so they are
/// looked up in runs of consecutive references. Keeping the low bits in place puts a run in
/// consecutive buckets (sequential memory the CPU prefetches) instead of scattering it; the low
/// 7 bits are copied to the top, where hashbrown takes its control tag from.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RefHasher(u64);

impl std::hash::Hasher for RefHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        // A stripe holds runs whose references differ in the bits above the run and the stripe
        // bits: squeeze those out, so that a stripe's references are dense from bit 0.
        let run = x & ((1 << REF_RUN_BITS) - 1);
        let high = x >> (REF_RUN_BITS + STRIPES.trailing_zeros());
        self.0 = (run | (high << REF_RUN_BITS)) ^ (x << 57);
    }
}

/// A map from series reference to series, with [`RefHasher`].
type RefMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<RefHasher>>;

/// Consecutive references share a stripe in runs of `1 << REF_RUN_BITS` (one lock and one map
/// for a target's series); the stripe is picked by the bits above.
const REF_RUN_BITS: u32 = 8;

/// A map keyed by `u64` with [`U64Hasher`].
pub(crate) type U64Map<V> = HashMap<u64, V, std::hash::BuildHasherDefault<U64Hasher>>;

/// Hints the CPU to load every cache line of a series (its lock, chunk state and open chunk's
/// encoder state), which the caller inserts into shortly: series are visited in random order,
/// so without this every sample waits for several cache misses in a row.
#[inline(always)]
pub(crate) fn prefetch_series(s: &Arc<MemSeries>) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = Arc::as_ptr(s).cast::<i8>();
        let mut off = 0;
        while off < std::mem::size_of::<MemSeries>() {
            // SAFETY: prefetching is only a hint and never faults; the address is inside the
            // series anyway.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off),
                );
            }
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[derive(Debug, Default)]
struct Stripe {
    by_hash: U64Map<Arc<MemSeries>>,
    /// Series whose label hash collides with the one in `by_hash` (practically never used).
    conflicts: U64Map<Vec<Arc<MemSeries>>>,
    by_ref: RefMap<Arc<MemSeries>>,
}

/// The inverted index: label name -> value -> sorted series references.
#[derive(Debug, Default)]
pub(crate) struct MemPostings {
    map: HashMap<Box<str>, HashMap<Box<str>, Vec<u64>>>,
    all: Vec<u64>,
}

fn insert_sorted(v: &mut Vec<u64>, r: u64) {
    match v.last() {
        Some(&l) if l >= r => {
            if let Err(i) = v.binary_search(&r) {
                v.insert(i, r);
            }
        }
        _ => v.push(r),
    }
}

impl MemPostings {
    fn add(&mut self, r: u64, labels: &Labels) {
        for l in labels.iter() {
            let values = match self.map.get_mut(l.name) {
                Some(v) => v,
                None => self.map.entry(l.name.into()).or_default(),
            };
            match values.get_mut(l.value) {
                Some(p) => insert_sorted(p, r),
                None => {
                    values.insert(l.value.into(), vec![r]);
                }
            }
        }
        insert_sorted(&mut self.all, r);
    }

    /// Removes series `removed` (sorted) that had the given label sets.
    fn remove(&mut self, removed: &[(u64, Labels)]) {
        let ids: Vec<u64> = {
            let mut v: Vec<u64> = removed.iter().map(|(r, _)| *r).collect();
            v.sort_unstable();
            v
        };
        let mut touched: HashMap<&str, Vec<&str>> = HashMap::new();
        for (_, ls) in removed {
            for l in ls.iter() {
                touched.entry(l.name).or_default().push(l.value);
            }
        }
        for (name, mut vals) in touched {
            vals.sort_unstable();
            vals.dedup();
            let mut drop_name = false;
            if let Some(values) = self.map.get_mut(name) {
                for v in vals {
                    let empty = match values.get_mut(v) {
                        Some(p) => {
                            p.retain(|x| ids.binary_search(x).is_err());
                            p.is_empty()
                        }
                        None => false,
                    };
                    if empty {
                        values.remove(v);
                    }
                }
                drop_name = values.is_empty();
            }
            if drop_name {
                self.map.remove(name);
            }
        }
        self.all.retain(|x| ids.binary_search(x).is_err());
    }

    pub(crate) fn label_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().map(|k| k.to_string()).collect();
        v.sort_unstable();
        v
    }

    fn heap_bytes(&self) -> usize {
        let mut n = self.all.capacity() * 8;
        for (k, vals) in &self.map {
            n += k.len() + 48;
            for (v, p) in vals {
                n += v.len() + 48 + p.capacity() * 8;
            }
        }
        n
    }
}

impl PostingsSource for MemPostings {
    fn label_values(&self, name: &str) -> tidemark_storage::Result<Vec<String>> {
        Ok(self
            .map
            .get(name)
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default())
    }

    fn postings(&self, name: &str, value: &str) -> tidemark_storage::Result<Postings> {
        Ok(self
            .map
            .get(name)
            .and_then(|m| m.get(value))
            .map(|p| Postings::from_sorted(p.clone()))
            .unwrap_or_default())
    }

    fn all_postings(&self) -> tidemark_storage::Result<Postings> {
        Ok(Postings::from_sorted(self.all.clone()))
    }
}

/// The memory-mapped head-chunk files: full chunks are written through a
/// [`SegmentWriter`] and read back through a [`SegmentReader`] that is re-mapped when a chunk
/// beyond its mapping is asked for.
#[derive(Debug)]
pub(crate) struct HeadChunks {
    dir: PathBuf,
    writer: Mutex<SegmentWriter>,
    reader: RwLock<SegmentReader>,
    /// Newest `max_time` of the chunks in each segment (to delete whole segments later).
    seg_max_time: Mutex<std::collections::BTreeMap<u32, i64>>,
    /// Truncation point of the previous truncation: segments are deleted one truncation late,
    /// so that a querier's snapshot taken just before a truncation can still read them.
    prev_truncation: Mutex<Option<i64>>,
}

impl HeadChunks {
    /// Starts empty head-chunk files in `dir` (the log, not these files, is the recovery source;
    /// old files are removed).
    fn create(dir: &Path) -> Result<HeadChunks, HeadError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| HeadError::Io {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|source| HeadError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        let cerr = |source| HeadError::Chunks {
            dir: dir.to_path_buf(),
            source,
        };
        let writer = SegmentWriter::open(
            dir,
            SegmentWriterOptions {
                max_segment_size: HEAD_CHUNK_SEGMENT_SIZE,
                ..SegmentWriterOptions::default()
            },
        )
        .map_err(cerr)?;
        let reader = SegmentReader::open(dir).map_err(cerr)?;
        Ok(HeadChunks {
            dir: dir.to_path_buf(),
            writer: Mutex::new(writer),
            reader: RwLock::new(reader),
            seg_max_time: Mutex::new(std::collections::BTreeMap::new()),
            prev_truncation: Mutex::new(None),
        })
    }

    fn cerr(&self) -> impl Fn(crate::chunks::ChunksError) -> HeadError + '_ {
        |source| HeadError::Chunks {
            dir: self.dir.clone(),
            source,
        }
    }

    fn write(&self, series_ref: u64, mint: i64, maxt: i64, data: &[u8]) -> Result<u64, HeadError> {
        let r = self
            .writer
            .lock()
            .write_chunk(series_ref, mint, maxt, chunk::ENCODING_XOR, data)
            .map_err(self.cerr())?;
        let mut m = self.seg_max_time.lock();
        let e = m.entry(r.segment()).or_insert(maxt);
        *e = (*e).max(maxt);
        Ok(r.0)
    }

    /// Decodes chunk `r` into `out`.
    pub(crate) fn read_into(
        &self,
        series_ref: u64,
        r: u64,
        out: &mut Vec<Sample>,
    ) -> Result<(), HeadError> {
        let bad = |e: &dyn std::fmt::Display| HeadError::BadChunk {
            series_ref,
            chunk_ref: r,
            reason: e.to_string(),
        };
        {
            let g = self.reader.read();
            if let Ok(view) = g.chunk(ChunkRef(r)) {
                return chunk::decode_all(view.data, out).map_err(|e| bad(&e));
            }
        }
        // Probably beyond the current mapping: flush the writer and re-map.
        self.writer.lock().flush().map_err(self.cerr())?;
        let mut g = self.reader.write();
        g.reload().map_err(self.cerr())?;
        let view = g.chunk(ChunkRef(r)).map_err(|e| bad(&e))?;
        chunk::decode_all(view.data, out).map_err(|e| bad(&e))
    }

    /// Deletes the segments holding only chunks older than `t`.
    fn remove_before(&self, t: i64) -> Result<usize, HeadError> {
        let Some(t) = self.prev_truncation.lock().replace(t) else {
            return Ok(0);
        };
        let mut upto = None;
        {
            let m = self.seg_max_time.lock();
            for (&seg, &maxt) in m.iter() {
                if maxt >= t {
                    break;
                }
                upto = Some(seg + 1);
            }
        }
        let Some(upto) = upto else {
            return Ok(0);
        };
        let n = self
            .writer
            .lock()
            .remove_segments_before(upto)
            .map_err(self.cerr())?;
        self.seg_max_time.lock().retain(|&s, _| s >= upto);
        self.reader.write().reload().map_err(self.cerr())?;
        Ok(n)
    }

    fn sync(&self) -> Result<(), HeadError> {
        self.writer.lock().sync().map_err(self.cerr())
    }
}

/// Counters of the head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadStats {
    pub series: usize,
    /// Samples appended since start (replayed ones included).
    pub samples_appended: u64,
    /// Full chunks written to the head-chunk files.
    pub chunks_written: u64,
    pub min_time: i64,
    pub max_time: i64,
    /// Samples rejected or dropped at commit (conflicts found after validation).
    pub samples_dropped_at_commit: u64,
}

/// The head.
#[derive(Debug)]
pub struct Head {
    pub(crate) opts: HeadOptions,
    stripes: Box<[RwLock<Stripe>]>,
    pub(crate) index: RwLock<MemPostings>,
    next_ref: AtomicU64,
    num_series: AtomicUsize,
    pub(crate) chunks: Option<HeadChunks>,
    /// The log commits are written to (`None`: an in-memory head).
    pub(crate) log: Mutex<Option<Log>>,
    /// Commits apply under the write side, queriers take their snapshot under the read side, so
    /// a querier never sees half of a commit.
    pub(crate) isolation: RwLock<()>,
    pub(crate) min_time: AtomicI64,
    pub(crate) max_time: AtomicI64,
    /// Samples before this are out of bounds (already in blocks).
    pub(crate) min_valid_time: AtomicI64,
    pub(crate) samples_appended: AtomicU64,
    pub(crate) chunks_written: AtomicU64,
    pub(crate) dropped_at_commit: AtomicU64,
    /// Set by [`Head::close_log`]: commits fail from then on.
    pub(crate) closed: AtomicBool,
    /// Group commit: when set, commits append under the log lock, then wait for durability
    /// with this handle outside it, so concurrent committers share fsyncs.
    pub(crate) syncer: Mutex<Option<crate::log::LogSyncer>>,
    /// Commits that appended to the log but have not applied their samples yet. Whoever needs
    /// "every logged record is applied" (checkpoints, raising the min valid time) holds the log
    /// lock (no new commit can start) and waits for this to drop to zero.
    pub(crate) inflight: AtomicUsize,
    /// Some series has deleted intervals: label queries cannot answer from the index alone.
    /// Set by deletion and replay, recomputed by [`Head::truncate_before`].
    pub(crate) has_tombstones: AtomicBool,
}

impl Head {
    /// A new, empty head.
    pub fn new(opts: HeadOptions) -> Result<Head, HeadError> {
        let chunks = match &opts.chunk_dir {
            Some(d) => Some(HeadChunks::create(d)?),
            None => None,
        };
        Ok(Head {
            opts,
            stripes: (0..STRIPES)
                .map(|_| RwLock::new(Stripe::default()))
                .collect(),
            index: RwLock::new(MemPostings::default()),
            next_ref: AtomicU64::new(1),
            num_series: AtomicUsize::new(0),
            chunks,
            log: Mutex::new(None),
            isolation: RwLock::new(()),
            min_time: AtomicI64::new(i64::MAX),
            max_time: AtomicI64::new(i64::MIN),
            min_valid_time: AtomicI64::new(i64::MIN),
            samples_appended: AtomicU64::new(0),
            chunks_written: AtomicU64::new(0),
            dropped_at_commit: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            syncer: Mutex::new(None),
            inflight: AtomicUsize::new(0),
            has_tombstones: AtomicBool::new(false),
        })
    }

    /// Attaches the log commits are written to.
    pub fn set_log(&self, log: Log) {
        *self.log.lock() = Some(log);
    }

    /// Attaches the log with group commit: `log` must be opened with `SyncPolicy::Never`;
    /// every commit then waits until its records are durable (sharing fsyncs with concurrent
    /// commits) before its samples become visible.
    pub fn set_log_group_commit(&self, log: Log) {
        *self.syncer.lock() = Some(log.syncer());
        *self.log.lock() = Some(log);
    }

    /// Waits until every commit that appended to the log has applied its samples. The caller
    /// holds the log lock, so no new commit starts meanwhile.
    pub(crate) fn wait_inflight(&self) {
        let mut spins = 0u32;
        while self.inflight.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }

    pub fn num_series(&self) -> usize {
        self.num_series.load(Ordering::Relaxed)
    }

    /// Oldest sample time in the head (`i64::MAX` when empty).
    pub fn min_time(&self) -> i64 {
        self.min_time.load(Ordering::Acquire)
    }

    /// Newest sample time in the head (`i64::MIN` when empty).
    pub fn max_time(&self) -> i64 {
        self.max_time.load(Ordering::Acquire)
    }

    pub fn min_valid_time(&self) -> i64 {
        self.min_valid_time.load(Ordering::Acquire)
    }

    /// In-order samples before this are out of bounds: the min valid time, or half a block
    /// range before the head's newest sample, whichever is later (Prometheus'
    /// `appendableMinValidTime`). It depends only on the data appended, not on when
    /// maintenance cut blocks: a block is cut only below it (see `Db::cut_blocks`), so two
    /// heads fed the same appends accept the same samples (Raft replicas rely on this).
    pub fn appendable_min_valid_time(&self) -> i64 {
        let mvt = self.min_valid_time();
        let maxt = self.max_time();
        if maxt == i64::MIN {
            return mvt;
        }
        mvt.max(maxt.saturating_sub(self.opts.chunk_range_ms.max(0) / 2))
    }

    /// Samples before `t` are refused from now on (they belong to blocks).
    pub fn set_min_valid_time(&self, t: i64) {
        self.min_valid_time.fetch_max(t, Ordering::AcqRel);
    }

    pub fn stats(&self) -> HeadStats {
        HeadStats {
            series: self.num_series(),
            samples_appended: self.samples_appended.load(Ordering::Relaxed),
            chunks_written: self.chunks_written.load(Ordering::Relaxed),
            min_time: self.min_time(),
            max_time: self.max_time(),
            samples_dropped_at_commit: self.dropped_at_commit.load(Ordering::Relaxed),
        }
    }

    /// Approximate heap bytes of the index (diagnostics).
    pub fn index_heap_bytes(&self) -> usize {
        self.index.read().heap_bytes()
    }

    #[inline]
    fn stripe_of(&self, key: u64) -> &RwLock<Stripe> {
        &self.stripes[(key as usize) & (STRIPES - 1)]
    }

    /// The stripe holding reference `r` in its `by_ref` map (see [`REF_RUN_BITS`]).
    #[inline]
    fn ref_stripe_of(&self, r: u64) -> &RwLock<Stripe> {
        &self.stripes[((r >> REF_RUN_BITS) as usize) & (STRIPES - 1)]
    }

    pub(crate) fn series_by_ref(&self, r: u64) -> Option<Arc<MemSeries>> {
        self.ref_stripe_of(r).read().by_ref.get(&r).cloned()
    }

    pub(crate) fn series_by_labels(&self, hash: u64, labels: &Labels) -> Option<Arc<MemSeries>> {
        let g = self.stripe_of(hash).read();
        match g.by_hash.get(&hash) {
            Some(s) if &s.labels == labels => Some(s.clone()),
            Some(_) => g
                .conflicts
                .get(&hash)
                .and_then(|v| v.iter().find(|s| &s.labels == labels).cloned()),
            None => None,
        }
    }

    /// The series with these labels, created (with a new reference, or `want_ref` on replay)
    /// when absent. Returns whether it was created.
    pub(crate) fn get_or_create(
        &self,
        labels: &Labels,
        want_ref: Option<u64>,
    ) -> (Arc<MemSeries>, bool) {
        let hash = labels.stable_hash();
        if let Some(s) = self.series_by_labels(hash, labels) {
            return (s, false);
        }
        let series = {
            let mut g = self.stripe_of(hash).write();
            let existing = match g.by_hash.get(&hash) {
                Some(s) if &s.labels == labels => Some(s.clone()),
                Some(_) => g
                    .conflicts
                    .get(&hash)
                    .and_then(|v| v.iter().find(|s| &s.labels == labels).cloned()),
                None => None,
            };
            if let Some(s) = existing {
                return (s, false);
            }
            let r = match want_ref {
                Some(r) => {
                    self.next_ref.fetch_max(r + 1, Ordering::AcqRel);
                    r
                }
                None => self.next_ref.fetch_add(1, Ordering::AcqRel),
            };
            let s = Arc::new(MemSeries::new(r, labels.clone()));
            match g.by_hash.get(&hash) {
                Some(_) => g.conflicts.entry(hash).or_default().push(s.clone()),
                None => {
                    g.by_hash.insert(hash, s.clone());
                }
            }
            s
        };
        // The reference stripe is a different lock (taken after the hash stripe is released).
        self.ref_stripe_of(series.series_ref)
            .write()
            .by_ref
            .insert(series.series_ref, series.clone());
        self.index.write().add(series.series_ref, labels);
        self.num_series.fetch_add(1, Ordering::Relaxed);
        (series, true)
    }

    /// Every series (in no particular order).
    pub(crate) fn all_series(&self) -> Vec<Arc<MemSeries>> {
        let mut out = Vec::with_capacity(self.num_series());
        for s in self.stripes.iter() {
            out.extend(s.read().by_ref.values().cloned());
        }
        out
    }

    /// Records that samples in `[mint, maxt]` were added (`n` of them).
    pub(crate) fn note_added(&self, mint: i64, maxt: i64, n: u64) {
        if n == 0 {
            return;
        }
        if mint < self.min_time.load(Ordering::Relaxed) {
            self.min_time.fetch_min(mint, Ordering::AcqRel);
        }
        if maxt > self.max_time.load(Ordering::Relaxed) {
            self.max_time.fetch_max(maxt, Ordering::AcqRel);
        }
        self.samples_appended.fetch_add(n, Ordering::Relaxed);
    }

    /// Writes a full chunk to the head-chunk files (or keeps it in memory without them).
    pub(crate) fn store_full_chunk(
        &self,
        series_ref: u64,
        enc: &ChunkEncoder,
    ) -> Result<ChunkMeta, HeadError> {
        let (Some(mint), Some(maxt)) = (enc.min_time(), enc.max_time()) else {
            return Err(HeadError::BadChunk {
                series_ref,
                chunk_ref: 0,
                reason: "empty chunk cut".into(),
            });
        };
        let bytes = enc.bytes();
        let loc = match &self.chunks {
            Some(c) => ChunkLoc::File(c.write(series_ref, mint, maxt, &bytes)?),
            None => ChunkLoc::Mem(Arc::from(bytes)),
        };
        self.chunks_written.fetch_add(1, Ordering::Relaxed);
        Ok(ChunkMeta {
            min_time: mint,
            max_time: maxt,
            loc,
        })
    }

    /// Decodes a full chunk into `out`.
    pub(crate) fn read_chunk(
        &self,
        series_ref: u64,
        m: &ChunkMeta,
        out: &mut Vec<Sample>,
    ) -> Result<(), HeadError> {
        match (&m.loc, &self.chunks) {
            (ChunkLoc::Mem(b), _) => chunk::decode_all(b, out).map_err(|e| HeadError::BadChunk {
                series_ref,
                chunk_ref: 0,
                reason: e.to_string(),
            }),
            (ChunkLoc::File(r), Some(c)) => c.read_into(series_ref, *r, out),
            (ChunkLoc::File(r), None) => Err(HeadError::BadChunk {
                series_ref,
                chunk_ref: *r,
                reason: "no head chunk files".into(),
            }),
        }
    }

    /// Every sample of a series inside `[mint, maxt]`, sorted (in-order chunks merged with the
    /// out-of-order buffer). The caller holds no lock; this takes the series lock briefly.
    pub(crate) fn series_samples(
        &self,
        s: &MemSeries,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Sample>, HeadError> {
        let snap = SeriesSnapshot::take(s, mint, maxt);
        snap.samples(self, s.series_ref, mint, maxt)
    }

    /// Drops every sample older than `t` (now in a block) and the series left empty. Returns
    /// the number of series removed.
    pub fn truncate_before(&self, t: i64) -> usize {
        self.set_min_valid_time(t);
        let mut removed: Vec<(u64, Labels)> = Vec::new();
        let mut new_min = i64::MAX;
        let mut tombstones = false;
        for s in self.all_series() {
            let mut d = s.data.lock();
            if let Some(iv) = d.deleted.as_mut() {
                iv.trim_before(t);
                if iv.is_empty() {
                    d.deleted = None;
                } else {
                    tombstones = true;
                }
            }
            d.full.retain(|c| c.max_time >= t);
            let open_empty = d
                .open
                .as_ref()
                .is_none_or(|o| o.max_time().is_none_or(|m| m < t));
            if open_empty {
                d.open = None;
            }
            d.ooo.retain(|x| x.t >= t);
            let first = d
                .full
                .first()
                .map(|c| c.min_time)
                .or_else(|| d.open.as_ref().and_then(|o| o.min_time()))
                .into_iter()
                .chain(d.ooo.first().map(|x| x.t))
                .min();
            match first {
                Some(f) => new_min = new_min.min(f),
                None if s.pending.load(Ordering::Acquire) == 0 => {
                    removed.push((s.series_ref, s.labels.clone()))
                }
                None => {}
            }
        }
        let _g = self.isolation.write();
        for (r, labels) in &removed {
            let hash = labels.stable_hash();
            {
                let mut g = self.stripe_of(hash).write();
                let in_main = g.by_hash.get(&hash).is_some_and(|s| s.series_ref == *r);
                if in_main {
                    g.by_hash.remove(&hash);
                    // Promote a conflicting series, if any.
                    if let Some(v) = g.conflicts.get_mut(&hash)
                        && let Some(s) = v.pop()
                    {
                        g.by_hash.insert(hash, s);
                    }
                } else if let Some(v) = g.conflicts.get_mut(&hash) {
                    v.retain(|s| s.series_ref != *r);
                }
                if g.conflicts.get(&hash).is_some_and(Vec::is_empty) {
                    g.conflicts.remove(&hash);
                }
            }
            self.ref_stripe_of(*r).write().by_ref.remove(r);
        }
        if !removed.is_empty() {
            self.index.write().remove(&removed);
            self.num_series.fetch_sub(removed.len(), Ordering::Relaxed);
        }
        self.min_time.store(new_min, Ordering::Release);
        // Deletions are serialized with truncation by the Db (its maintenance lock).
        self.has_tombstones.store(tombstones, Ordering::Release);
        if let Some(c) = &self.chunks {
            // Queriers that snapshot before this point may still name chunks of removed
            // segments: those reads fail with a clear error instead of returning stale data.
            if let Err(e) = c.remove_before(t) {
                tracing::warn!(error = %e, "removing old head chunk segments failed");
            }
        }
        removed.len()
    }

    /// Marks the samples in `[mint, maxt]` of every series matching any of `matcher_sets` as
    /// deleted. Each series' interval is clamped to its samples of the moment (as Prometheus
    /// does), so samples appended later stay visible. The intervals are written to the log as a
    /// tombstones record and fsynced before they apply; replay re-applies them. Returns the
    /// number of series given a new interval.
    pub fn delete(
        &self,
        matcher_sets: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<usize, HeadError> {
        if mint > maxt {
            return Ok(0);
        }
        let mut refs: Vec<u64> = Vec::new();
        {
            let idx = self.index.read();
            for ms in matcher_sets {
                refs.extend(postings_for_matchers(&*idx, ms)?.iter());
            }
        }
        refs.sort_unstable();
        refs.dedup();
        // The log lock keeps commits and checkpoints out until the intervals are applied (a
        // checkpoint in between would purge the record without carrying the intervals).
        let mut log = self.log.lock();
        let mut stones: Vec<(Arc<MemSeries>, RefTombstone)> = Vec::new();
        for r in refs {
            let Some(s) = self.series_by_ref(r) else {
                continue;
            };
            let d = s.data.lock();
            let Some((smin, smax)) = d.bounds() else {
                continue;
            };
            let (a, b) = (mint.max(smin), maxt.min(smax));
            if a > b || d.deleted.as_ref().is_some_and(|iv| iv.covers(a, b)) {
                continue;
            }
            drop(d);
            stones.push((
                s,
                RefTombstone {
                    series_ref: r,
                    mint: a,
                    maxt: b,
                },
            ));
        }
        if stones.is_empty() {
            return Ok(0);
        }
        if let Some(log) = log.as_mut() {
            let list: Vec<RefTombstone> = stones.iter().map(|(_, t)| *t).collect();
            let mut rec = Vec::with_capacity(list.len() * 12 + 1);
            record::encode_tombstones(&list, &mut rec);
            log.append(&rec)?;
            log.sync()?;
        }
        {
            let _iso = self.isolation.write();
            for (s, t) in &stones {
                s.data.lock().add_deleted(t.mint, t.maxt);
            }
            self.has_tombstones.store(true, Ordering::Release);
        }
        drop(log);
        tracing::info!(series = stones.len(), mint, maxt, "head: tombstones added");
        Ok(stones.len())
    }

    /// Raises the min valid time under the log lock: commits after this see it, and commits
    /// before it are fully applied.
    pub(crate) fn raise_min_valid_time_committed(&self, t: i64) {
        let _log = self.log.lock();
        self.wait_inflight();
        self.set_min_valid_time(t);
    }

    /// Every series with its labels.
    pub(crate) fn series_list(&self) -> Vec<(Arc<MemSeries>, Labels)> {
        self.all_series()
            .into_iter()
            .map(|s| {
                let l = s.labels.clone();
                (s, l)
            })
            .collect()
    }

    /// Samples of `s` inside `[mint, maxt]`.
    pub(crate) fn samples_of(
        &self,
        s: &MemSeries,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Sample>, HeadError> {
        self.series_samples(s, mint, maxt)
    }

    /// Detaches and syncs the log; later commits fail with `Unavailable`.
    pub fn close_log(&self) -> Result<(), HeadError> {
        let mut g = self.log.lock();
        self.closed.store(true, Ordering::Release);
        self.wait_inflight();
        if let Some(mut log) = g.take() {
            log.sync()?;
        }
        Ok(())
    }

    /// fsyncs the log's records written so far (a Raft snapshot makes them its base).
    pub fn sync_log(&self) -> Result<(), HeadError> {
        let mut g = self.log.lock();
        if let Some(log) = g.as_mut() {
            log.sync()?;
        }
        Ok(())
    }

    /// Bytes of the log (0 without one).
    pub fn log_size_bytes(&self) -> u64 {
        self.log.lock().as_ref().map_or(0, Log::size_bytes)
    }

    /// Writes a checkpoint of the head into the log (everything the head holds) and purges the
    /// log records it covers. Commits wait meanwhile.
    pub fn checkpoint_log(self: &Arc<Self>) -> Result<(), HeadError> {
        let mut g = self.log.lock();
        self.wait_inflight();
        let Some(log) = g.as_mut() else {
            return Ok(());
        };
        let Some(upto) = log.last_index() else {
            return Ok(());
        };
        if log.checkpoint_upto().is_some_and(|c| c >= upto) {
            return Ok(());
        }
        let mut records = self.checkpoint_records();
        log.write_checkpoint(upto, &mut records)?;
        tracing::info!(upto, "log checkpointed");
        Ok(())
    }

    /// Syncs the head-chunk files (close).
    pub fn sync_chunks(&self) -> Result<(), HeadError> {
        match &self.chunks {
            Some(c) => c.sync(),
            None => Ok(()),
        }
    }
}

/// What a reader copies out of a series under its lock: full chunk metas, the open chunk's
/// bytes and the out-of-order samples overlapping the range.
#[derive(Debug, Default)]
pub(crate) struct SeriesSnapshot {
    full: Vec<ChunkMeta>,
    open: Option<Vec<u8>>,
    ooo: Vec<Sample>,
    deleted: Option<Intervals>,
}

impl SeriesSnapshot {
    pub(crate) fn take(s: &MemSeries, mint: i64, maxt: i64) -> SeriesSnapshot {
        let d = s.data.lock();
        let full = d
            .full
            .iter()
            .filter(|c| c.max_time >= mint && c.min_time <= maxt)
            .cloned()
            .collect();
        let open = d
            .open
            .as_ref()
            .and_then(|o| match (o.min_time(), o.max_time()) {
                (Some(a), Some(b)) if b >= mint && a <= maxt => Some(o.bytes()),
                _ => None,
            });
        let lo = d.ooo.partition_point(|x| x.t < mint);
        let hi = d.ooo.partition_point(|x| x.t <= maxt);
        let ooo = d
            .ooo
            .get(lo..hi)
            .map(<[Sample]>::to_vec)
            .unwrap_or_default();
        let deleted = d.deleted.as_deref().cloned();
        SeriesSnapshot {
            full,
            open,
            ooo,
            deleted,
        }
    }

    /// True when the snapshot holds no sample at all (deleted ones included).
    pub(crate) fn is_empty(&self) -> bool {
        self.full.is_empty() && self.open.is_none() && self.ooo.is_empty()
    }

    /// True when some samples of the snapshot may be deleted (decode to know what is left).
    pub(crate) fn has_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    pub(crate) fn samples(
        &self,
        head: &Head,
        series_ref: u64,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Sample>, HeadError> {
        let mut inorder: Vec<Sample> = Vec::new();
        for c in &self.full {
            if self
                .deleted
                .as_ref()
                .is_some_and(|iv| iv.covers(c.min_time, c.max_time))
            {
                continue;
            }
            head.read_chunk(series_ref, c, &mut inorder)?;
        }
        if let Some(b) = &self.open {
            chunk::decode_all(b, &mut inorder).map_err(|e| HeadError::BadChunk {
                series_ref,
                chunk_ref: 0,
                reason: format!("open chunk: {e}"),
            })?;
        }
        let lo = inorder.partition_point(|x| x.t < mint);
        let hi = inorder.partition_point(|x| x.t <= maxt);
        let inorder = &inorder[lo..hi];
        let mut out = if self.ooo.is_empty() {
            inorder.to_vec()
        } else {
            merge_samples(inorder, &self.ooo)
        };
        if let Some(iv) = &self.deleted {
            iv.filter(&mut out);
        }
        Ok(out)
    }
}

/// Merges two sorted sample lists; on equal timestamps the first list wins.
pub(crate) fn merge_samples(a: &[Sample], b: &[Sample]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].t < b[j].t {
            out.push(a[i]);
            i += 1;
        } else if b[j].t < a[i].t {
            out.push(b[j]);
            j += 1;
        } else {
            out.push(a[i]);
            i += 1;
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
