//! Blocks: immutable, time-partitioned directories holding the samples of `[min_time, max_time)`.
//!
//! ```text
//! <data_dir>/<ULID>/meta.json        what the block covers (BlockMeta, JSON)
//! <data_dir>/<ULID>/index            series, symbols, postings (crate::index)
//! <data_dir>/<ULID>/chunks/000001    chunk segment files (crate::chunks)
//! <data_dir>/<ULID>/tombstones        deleted intervals per series (crate::tombstones; optional)
//! ```
//!
//! [`BlockWriter`] writes into `<data_dir>/<ULID>.tmp-for-creation`, fsyncs every file and the
//! directory, then renames it into place and fsyncs the parent: a block either exists complete
//! or not at all. [`Block::open`] maps the index and chunk files; [`Block::querier`] serves the
//! storage [`Querier`] trait. [`open_blocks`] opens every block of a data directory, moves blocks
//! with a corrupt index aside (`<ULID>.corrupt`), removes leftovers of interrupted writes and
//! deletions, and removes blocks that a complete compacted block already covers.
//! Byte layouts and decisions: `docs/format/block.md`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tidemark_model::{Labels, Matcher, Sample};
use tidemark_storage::{Querier, SampleIter, SelectHints, Series, SeriesSet};

use crate::chunk::{self, ChunkEncoder, ChunkError};
use crate::chunks::{
    ChunkRef, ChunksError, RecordFormat, SegmentReader, SegmentWriter, SegmentWriterOptions,
};
use crate::index::{ChunkMeta, IndexError, IndexReader, IndexWriter, SeriesEntry};
use crate::postings::{Postings, PostingsSource, postings_for_matchers};
use crate::tombstones::{Intervals, Tombstones};

/// Name of a block's metadata file.
pub const META_FILE: &str = "meta.json";
/// Name of a block's index file.
pub const INDEX_FILE: &str = "index";
/// Name of a block's chunk segment directory.
pub const CHUNKS_DIR: &str = "chunks";
/// Suffix of a block being written.
pub const TMP_CREATION_SUFFIX: &str = ".tmp-for-creation";
/// Suffix of a block being deleted.
pub const TMP_DELETION_SUFFIX: &str = ".tmp-for-deletion";
/// Suffix given to a block directory found corrupt.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// The meta.json version this code writes.
pub const META_VERSION: u32 = 1;
/// Samples per chunk when a block is written from raw samples (Prometheus' chunk size).
pub const DEFAULT_SAMPLES_PER_CHUNK: usize = 120;
/// Samples per chunk (at most) in level-1 blocks cut from the head: a 2 h block of a 15 s
/// scrape fits in one chunk, so the per-chunk costs (record, chunk header, first timestamp and
/// value, index entry) are paid once instead of four times.
pub const HEAD_BLOCK_SAMPLES_PER_CHUNK: usize = 480;

/// Result with [`BlockError`].
pub type Result<T, E = BlockError> = std::result::Result<T, E>;

/// Errors of blocks, compaction, retention, analyze and import.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{}: {source}", dir.display())]
    Chunks { dir: PathBuf, source: ChunksError },
    /// A chunk failed to decode; names the block, the series and the chunk.
    #[error("{}: series {series}: chunk {chunk_ref:#x}: {source}", dir.display())]
    Chunk {
        dir: PathBuf,
        series: Labels,
        chunk_ref: u64,
        source: ChunkError,
    },
    #[error("{}: {what}", path.display())]
    Meta { path: PathBuf, what: String },
    /// The API was used wrongly (series out of order, sample outside the block's range).
    #[error("{0}")]
    Invalid(String),
}

impl BlockError {
    /// True when the error says the data on disk is damaged or incomplete (as opposed to an
    /// environment problem such as permissions or exhausted resources): a corrupt index or
    /// chunk, an invalid meta.json, or a missing file of the block.
    pub fn is_corruption(&self) -> bool {
        let missing = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
            )
        };
        match self {
            BlockError::Io { source, .. } => missing(source),
            BlockError::Index(IndexError::Io { source, .. }) => missing(source),
            BlockError::Index(_) | BlockError::Meta { .. } | BlockError::Chunk { .. } => true,
            BlockError::Chunks {
                source: ChunksError::Io { source, .. },
                ..
            } => missing(source),
            BlockError::Chunks { .. } => true,
            BlockError::Invalid(_) => false,
        }
    }
}

impl From<BlockError> for tidemark_storage::Error {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Io { .. } => tidemark_storage::Error::Other(e.to_string()),
            BlockError::Invalid(s) => tidemark_storage::Error::Other(s),
            e => tidemark_storage::Error::Corruption(e.to_string()),
        }
    }
}

impl From<IndexError> for tidemark_storage::Error {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Io { .. } => tidemark_storage::Error::Other(e.to_string()),
            e => tidemark_storage::Error::Corruption(e.to_string()),
        }
    }
}

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BlockError {
    let path = path.to_path_buf();
    move |source| BlockError::Io { path, op, source }
}

// ---------------------------------------------------------------------------------------------
// Meta

/// Counts recorded in meta.json.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    pub num_samples: u64,
    pub num_series: u64,
    pub num_chunks: u64,
    /// Bytes of the index and chunk files (meta.json excluded).
    #[serde(default)]
    pub num_bytes: u64,
}

/// The contents of a block's `meta.json`. Field names follow Prometheus' meta.json where one
/// exists. `min_time` is inclusive and `max_time` exclusive, as in Prometheus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    /// Time-ordered unique id (a ULID: 26 Crockford base32 characters).
    #[serde(rename = "ulid")]
    pub id: String,
    pub min_time: i64,
    pub max_time: i64,
    pub stats: BlockStats,
    /// 1 for blocks cut from the head or imported; one more than the highest source for
    /// compacted blocks.
    pub level: u32,
    /// Ids of the level-1 blocks whose data this block holds (itself for a level-1 block).
    pub sources: Vec<String>,
    /// Ids of the blocks compacted into this one (empty for level 1).
    #[serde(default)]
    pub parents: Vec<String>,
    /// Sample resolution in milliseconds: 0 for raw data; downsampled blocks set 300000 or
    /// 3600000.
    #[serde(default)]
    pub resolution: i64,
    pub version: u32,
}

impl BlockMeta {
    /// True when the block holds data of `[mint, maxt]` (both inclusive).
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.min_time <= maxt && mint < self.max_time
    }

    /// Reads `<dir>/meta.json`.
    pub fn read(dir: &Path) -> Result<BlockMeta> {
        let path = dir.join(META_FILE);
        let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
        let meta: BlockMeta = serde_json::from_slice(&bytes).map_err(|e| BlockError::Meta {
            path: path.clone(),
            what: format!("invalid meta.json: {e}"),
        })?;
        if meta.version != META_VERSION {
            return Err(BlockError::Meta {
                path,
                what: format!(
                    "unsupported meta.json version: expected {META_VERSION}, found {}",
                    meta.version
                ),
            });
        }
        if meta.max_time < meta.min_time {
            return Err(BlockError::Meta {
                path,
                what: format!(
                    "maxTime {} is before minTime {}",
                    meta.max_time, meta.min_time
                ),
            });
        }
        Ok(meta)
    }

    /// Writes `<dir>/meta.json` (via a temp file, fsynced, renamed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(META_FILE);
        let tmp = dir.join("meta.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| BlockError::Meta {
            path: path.clone(),
            what: format!("encoding meta.json: {e}"),
        })?;
        write_file_synced(&tmp, &bytes)?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
        Ok(())
    }
}

pub(crate) fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).map_err(io_err(path, "create"))?;
    f.write_all(bytes).map_err(io_err(path, "write"))?;
    f.sync_all().map_err(io_err(path, "fsync"))?;
    Ok(())
}

/// Fsyncs a directory so that renames and new entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "fsync dir"))
}

// ---------------------------------------------------------------------------------------------
// Ids

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID: 48 bits of milliseconds since the epoch, then 80 random bits, in Crockford base32.
/// Ids made later sort after earlier ones (to the millisecond).
pub fn new_block_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = (now.as_millis() as u64) & ((1 << 48) - 1);
    // RandomState is randomly keyed per process; mixing in a counter and the clock gives
    // distinct values per call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    let r1 = h.finish();
    h.write_u64(r1);
    let r2 = h.finish() & 0xffff;
    let value: u128 = (u128::from(ms) << 80) | (u128::from(r1) << 16) | u128::from(r2);
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// True when `name` looks like a block id (26 Crockford base32 characters).
pub fn is_block_id(name: &str) -> bool {
    name.len() == 26
        && name
            .bytes()
            .all(|b| CROCKFORD.contains(&b.to_ascii_uppercase()))
}

// ---------------------------------------------------------------------------------------------
// Writer

/// One already encoded chunk given to [`BlockWriter::add_series`]:
/// `(min_time, max_time, encoding, bytes)`, times inclusive.
pub type EncodedChunk<'a> = (i64, i64, u8, &'a [u8]);

/// Writes a new block. Series must be added in strictly increasing label order, each either as
/// encoded chunks ([`BlockWriter::add_series`]) or as raw samples ([`BlockWriter::add_samples`]).
/// Nothing is visible until [`BlockWriter::finish`]; dropping an unfinished writer removes its
/// temp directory.
#[derive(Debug)]
pub struct BlockWriter {
    parent: PathBuf,
    tmp: PathBuf,
    id: String,
    min_time: i64,
    max_time: i64,
    samples_per_chunk: usize,
    chunks: SegmentWriter,
    index: IndexWriter,
    stats: BlockStats,
    level: u32,
    sources: Vec<String>,
    parents: Vec<String>,
    resolution: i64,
    finished: bool,
    scratch: Vec<Sample>,
}

impl BlockWriter {
    /// Starts a block for samples with `min_time <= t < max_time` in `parent_dir`.
    pub fn new(parent_dir: &Path, min_time: i64, max_time: i64) -> Result<BlockWriter> {
        if max_time <= min_time {
            return Err(BlockError::Invalid(format!(
                "block range is empty: min_time {min_time} must be below max_time {max_time} (exclusive)"
            )));
        }
        let id = new_block_id();
        let tmp = parent_dir.join(format!("{id}{TMP_CREATION_SUFFIX}"));
        fs::create_dir_all(tmp.join(CHUNKS_DIR)).map_err(io_err(&tmp, "create dir"))?;
        let chunks_dir = tmp.join(CHUNKS_DIR);
        let opts = SegmentWriterOptions {
            format: RecordFormat::Block,
            ..SegmentWriterOptions::default()
        };
        let chunks =
            SegmentWriter::open(&chunks_dir, opts).map_err(|source| BlockError::Chunks {
                dir: chunks_dir,
                source,
            })?;
        let index = IndexWriter::new(&tmp.join(INDEX_FILE));
        Ok(BlockWriter {
            parent: parent_dir.to_path_buf(),
            tmp,
            sources: vec![id.clone()],
            id,
            min_time,
            max_time,
            samples_per_chunk: DEFAULT_SAMPLES_PER_CHUNK,
            chunks,
            index,
            stats: BlockStats::default(),
            level: 1,
            parents: Vec::new(),
            resolution: 0,
            finished: false,
            scratch: Vec::new(),
        })
    }

    /// Maximum samples per chunk for [`BlockWriter::add_samples`] (default 120; blocks cut
    /// from the head use [`HEAD_BLOCK_SAMPLES_PER_CHUNK`], compaction more).
    pub fn set_samples_per_chunk(&mut self, n: usize) {
        self.samples_per_chunk = n.max(1);
    }

    /// Marks the block as the result of compacting `parents` (with their `sources`).
    pub fn set_compaction(&mut self, level: u32, sources: Vec<String>, parents: Vec<String>) {
        self.level = level;
        self.sources = sources;
        self.parents = parents;
    }

    /// Sets the resolution field (downsampled blocks).
    pub fn set_resolution(&mut self, resolution_ms: i64) {
        self.resolution = resolution_ms;
    }

    /// The id the block will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn check_range(&self, labels: &Labels, mint: i64, maxt: i64) -> Result<()> {
        if mint < self.min_time || maxt >= self.max_time {
            return Err(BlockError::Invalid(format!(
                "series {labels}: data [{mint}, {maxt}] outside the block's range [{}, {})",
                self.min_time, self.max_time
            )));
        }
        Ok(())
    }

    /// Adds a series with already encoded chunks sorted by `min_time`. Every chunk is decoded
    /// once to validate it (its first and last timestamps must be the given min and max time)
    /// and count its samples. Chunks that overlap in time (out-of-order data) are merged and
    /// re-encoded, so that a block's chunks of one series never overlap. A series without
    /// chunks is skipped.
    pub fn add_series(&mut self, labels: &Labels, chunks: &[EncodedChunk<'_>]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let chunk_err = |dir: &Path, source| BlockError::Chunk {
            dir: dir.to_path_buf(),
            series: labels.clone(),
            chunk_ref: 0,
            source,
        };
        if chunks.windows(2).any(|w| w[1].0 <= w[0].1) {
            let mut samples = Vec::new();
            for &(_, _, _, data) in chunks {
                chunk::decode_all(data, &mut samples).map_err(|e| chunk_err(&self.tmp, e))?;
            }
            // Stable sort: on equal timestamps the earlier chunk's sample stays.
            samples.sort_by_key(|s| s.t);
            samples.dedup_by_key(|s| s.t);
            return self.add_samples(labels, &samples);
        }
        let series_ref = self.index.num_series() as u64;
        let mut metas = Vec::with_capacity(chunks.len());
        let mut samples = 0u64;
        let mut scratch = std::mem::take(&mut self.scratch);
        for &(mint, maxt, encoding, data) in chunks {
            self.check_range(labels, mint, maxt)?;
            scratch.clear();
            chunk::decode_all(data, &mut scratch).map_err(|e| chunk_err(&self.tmp, e))?;
            if scratch.first().map(|s| s.t) != Some(mint)
                || scratch.last().map(|s| s.t) != Some(maxt)
            {
                return Err(BlockError::Invalid(format!(
                    "series {labels}: chunk said to cover [{mint}, {maxt}] holds samples {:?}..{:?}",
                    scratch.first().map(|s| s.t),
                    scratch.last().map(|s| s.t)
                )));
            }
            samples += scratch.len() as u64;
            let r = self.write_chunk(series_ref, mint, maxt, encoding, data)?;
            metas.push(ChunkMeta {
                min_time: mint,
                max_time: maxt,
                chunk_ref: r,
            });
        }
        self.scratch = scratch;
        self.index.add_series(labels, metas)?;
        self.stats.num_series += 1;
        self.stats.num_samples += samples;
        Ok(())
    }

    fn write_chunk(
        &mut self,
        series_ref: u64,
        mint: i64,
        maxt: i64,
        encoding: u8,
        data: &[u8],
    ) -> Result<u64> {
        let r = self
            .chunks
            .write_chunk(series_ref, mint, maxt, encoding, data)
            .map_err(|source| BlockError::Chunks {
                dir: self.tmp.join(CHUNKS_DIR),
                source,
            })?;
        self.stats.num_chunks += 1;
        Ok(r.0)
    }

    /// Adds a series from samples sorted by strictly increasing timestamp, cut into the fewest
    /// chunks of at most the configured size, of equal sizes (±1): 150 samples with 120 per
    /// chunk make 75 + 75, not 120 + 30. A series without samples is skipped.
    pub fn add_samples(&mut self, labels: &Labels, samples: &[Sample]) -> Result<()> {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Ok(());
        };
        self.check_range(labels, first.t, last.t)?;
        let series_ref = self.index.num_series() as u64;
        let nchunks = samples.len().div_ceil(self.samples_per_chunk);
        let mut metas = Vec::with_capacity(nchunks);
        let (base, extra) = (samples.len() / nchunks, samples.len() % nchunks);
        let mut rest = samples;
        for i in 0..nchunks {
            let (part, tail) = rest.split_at(base + usize::from(i < extra));
            rest = tail;
            let mut enc = ChunkEncoder::new();
            for s in part {
                enc.append(s.t, s.v).map_err(|source| BlockError::Chunk {
                    dir: self.tmp.clone(),
                    series: labels.clone(),
                    chunk_ref: 0,
                    source,
                })?;
            }
            let (mint, maxt) = (part[0].t, part[part.len() - 1].t);
            let r = self.write_chunk(series_ref, mint, maxt, chunk::ENCODING_XOR, &enc.bytes())?;
            metas.push(ChunkMeta {
                min_time: mint,
                max_time: maxt,
                chunk_ref: r,
            });
        }
        self.index.add_series(labels, metas)?;
        self.stats.num_series += 1;
        self.stats.num_samples += samples.len() as u64;
        Ok(())
    }

    /// Adds a series whose chunks are opaque to the block (downsampled blocks: aggregate
    /// chunks, see `downsample.rs`): `(min_time, max_time, bytes)` each, sorted, and the number
    /// of samples (windows) they hold. Only the lower bound of the range is checked: an
    /// aggregate chunk may end one millisecond past the block (the counter's raw-last marker).
    pub(crate) fn add_series_opaque(
        &mut self,
        labels: &Labels,
        chunks: &[(i64, i64, Vec<u8>)],
        samples: u64,
    ) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let series_ref = self.index.num_series() as u64;
        let mut metas = Vec::with_capacity(chunks.len());
        for (mint, maxt, data) in chunks {
            if *mint < self.min_time || *maxt > self.max_time {
                return Err(BlockError::Invalid(format!(
                    "series {labels}: data [{mint}, {maxt}] outside the block's range [{}, {}]",
                    self.min_time, self.max_time
                )));
            }
            // The first byte is the encoding (aggregate chunks: their version).
            let encoding = data.first().copied().unwrap_or(chunk::ENCODING_XOR);
            let r = self.write_chunk(series_ref, *mint, *maxt, encoding, data)?;
            metas.push(ChunkMeta {
                min_time: *mint,
                max_time: *maxt,
                chunk_ref: r,
            });
        }
        self.index.add_series(labels, metas)?;
        self.stats.num_series += 1;
        self.stats.num_samples += samples;
        Ok(())
    }

    /// Writes a chunk that no series lists in the index and returns its ref: in downsampled
    /// blocks, a timestamp chunk shared by the aggregate chunks (which name it by this ref) of
    /// every series with the same window timestamps.
    pub(crate) fn add_shared_chunk(&mut self, data: &[u8]) -> Result<u64> {
        let encoding = data.first().copied().unwrap_or(chunk::ENCODING_XOR);
        let series_ref = self.index.num_series() as u64;
        self.write_chunk(series_ref, 0, 0, encoding, data)
    }

    /// Number of series added so far.
    pub fn num_series(&self) -> u64 {
        self.stats.num_series
    }

    /// Writes the index and meta.json, fsyncs everything and renames the block into place.
    pub fn finish(mut self) -> Result<BlockMeta> {
        let chunks_dir = self.tmp.join(CHUNKS_DIR);
        self.chunks.sync().map_err(|source| BlockError::Chunks {
            dir: chunks_dir.clone(),
            source,
        })?;
        let index = std::mem::replace(
            &mut self.index,
            IndexWriter::new(&self.tmp.join(INDEX_FILE)),
        );
        let index_bytes = index.finish()?;
        sync_dir(&chunks_dir)?;
        self.stats.num_bytes = index_bytes + dir_size(&chunks_dir)?;
        let mut sources = std::mem::take(&mut self.sources);
        sources.sort();
        sources.dedup();
        let meta = BlockMeta {
            id: self.id.clone(),
            min_time: self.min_time,
            max_time: self.max_time,
            stats: self.stats.clone(),
            level: self.level,
            sources,
            parents: std::mem::take(&mut self.parents),
            resolution: self.resolution,
            version: META_VERSION,
        };
        meta.write(&self.tmp)?;
        sync_dir(&self.tmp)?;
        let dst = self.parent.join(&self.id);
        fs::rename(&self.tmp, &dst).map_err(io_err(&dst, "rename"))?;
        sync_dir(&self.parent)?;
        self.finished = true;
        tracing::debug!(block = %meta.id, series = meta.stats.num_series, samples = meta.stats.num_samples, "block written");
        Ok(meta)
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Total size of the regular files under `dir`.
pub(crate) fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir).map_err(io_err(dir, "read dir"))? {
        let e = e.map_err(io_err(dir, "read dir"))?;
        let md = e.metadata().map_err(io_err(&e.path(), "stat"))?;
        if md.is_dir() {
            total += dir_size(&e.path())?;
        } else {
            total += md.len();
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Reader

#[derive(Debug)]
struct BlockInner {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexReader,
    chunks: SegmentReader,
    size_bytes: u64,
    /// Deleted intervals (replaced as a whole by [`Block::delete`]; queriers take a snapshot).
    tombstones: parking_lot::RwLock<Arc<Tombstones>>,
}

/// An open block (cheap to clone). Its files stay readable while any clone or querier lives,
/// even after the directory is deleted (mmap keeps the data).
#[derive(Debug, Clone)]
pub struct Block {
    inner: Arc<BlockInner>,
}

impl Block {
    /// Opens the block in `dir`: reads meta.json, validates and maps the index, maps the chunk
    /// segments.
    pub fn open(dir: &Path) -> Result<Block> {
        let meta = BlockMeta::read(dir)?;
        let index = IndexReader::open(&dir.join(INDEX_FILE))?;
        if index.num_series() != meta.stats.num_series {
            return Err(BlockError::Meta {
                path: dir.join(META_FILE),
                what: format!(
                    "meta.json says {} series, the index holds {}",
                    meta.stats.num_series,
                    index.num_series()
                ),
            });
        }
        let chunks_dir = dir.join(CHUNKS_DIR);
        let chunks = SegmentReader::open(&chunks_dir).map_err(|source| BlockError::Chunks {
            dir: chunks_dir,
            source,
        })?;
        let size_bytes = dir_size(dir)?;
        let tombstones = Tombstones::read(dir)?;
        Ok(Block {
            inner: Arc::new(BlockInner {
                dir: dir.to_path_buf(),
                meta,
                index,
                chunks,
                size_bytes,
                tombstones: parking_lot::RwLock::new(Arc::new(tombstones)),
            }),
        })
    }

    /// The block's deleted intervals (a snapshot).
    pub fn tombstones(&self) -> Arc<Tombstones> {
        self.inner.tombstones.read().clone()
    }

    /// Marks the samples in `[mint, maxt]` of every series matching any of `matcher_sets` as
    /// deleted: the intervals (clamped to each series' samples) are added to the block's
    /// `tombstones` file, replaced atomically, then to the open block. Returns the number of
    /// series given a new interval. Callers serialize deletions with compaction of the block.
    pub fn delete(&self, matcher_sets: &[Vec<Matcher>], mint: i64, maxt: i64) -> Result<usize> {
        if mint > maxt || !self.meta().overlaps(mint, maxt) {
            return Ok(0);
        }
        let mut ids: Vec<u64> = Vec::new();
        for ms in matcher_sets {
            let p = postings_for_matchers(self.index(), ms)
                .map_err(|e| BlockError::Invalid(format!("block {}: matchers: {e}", self.id())))?;
            ids.extend(p.iter());
        }
        ids.sort_unstable();
        ids.dedup();
        let mut g = self.inner.tombstones.write();
        let mut next: Tombstones = (**g).clone();
        let mut n = 0;
        for id in ids {
            let e = self.index().series(id)?;
            let smin = e.chunks.iter().map(|c| c.min_time).min();
            let smax = e.chunks.iter().map(|c| c.max_time).max();
            let (Some(smin), Some(smax)) = (smin, smax) else {
                continue;
            };
            let (a, b) = (mint.max(smin), maxt.min(smax));
            if a > b || next.get(id).is_some_and(|iv| iv.covers(a, b)) {
                continue;
            }
            next.add(id, a, b);
            n += 1;
        }
        if n > 0 {
            next.write(self.dir())?;
            *g = Arc::new(next);
            tracing::info!(block = %self.id(), series = n, mint, maxt, "tombstones added");
        }
        Ok(n)
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.inner.meta
    }

    pub fn id(&self) -> &str {
        &self.inner.meta.id
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes on disk (all files of the block).
    pub fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }

    /// The block's index.
    pub fn index(&self) -> &IndexReader {
        &self.inner.index
    }

    /// A querier over `[mint, maxt]` (both inclusive); it sees the tombstones of the moment it
    /// is created.
    pub fn querier(&self, mint: i64, maxt: i64) -> Box<dyn Querier> {
        Box::new(BlockQuerier {
            block: self.clone(),
            mint,
            maxt,
            tombstones: self.tombstones(),
        })
    }

    /// The stored bytes of chunk `c`, undecoded (CRC checked).
    pub(crate) fn chunk_data(&self, c: &ChunkMeta) -> Result<&[u8]> {
        let view = self
            .inner
            .chunks
            .chunk(ChunkRef(c.chunk_ref))
            .map_err(|source| BlockError::Chunks {
                dir: self.inner.dir.join(CHUNKS_DIR),
                source,
            })?;
        Ok(view.data)
    }

    /// Every sample of the series `entry` (all its chunks, read from this block), appended to
    /// `out`. Deleted samples included: see [`Block::read_live_series_samples`].
    pub fn read_series_samples(&self, entry: &SeriesEntry, out: &mut Vec<Sample>) -> Result<()> {
        for c in &entry.chunks {
            self.inner.decode_chunk(&entry.labels, c, out)?;
        }
        Ok(())
    }

    /// The samples of series `id` (its index entry `entry`) that are not deleted by the
    /// block's tombstones, appended to `out` (what compaction and `clean_tombstones` keep).
    pub fn read_live_series_samples(
        &self,
        id: u64,
        entry: &SeriesEntry,
        out: &mut Vec<Sample>,
    ) -> Result<()> {
        let ts = self.tombstones();
        let Some(iv) = ts.get(id) else {
            return self.read_series_samples(entry, out);
        };
        let before = out.len();
        for c in &entry.chunks {
            if !iv.covers(c.min_time, c.max_time) {
                self.inner.decode_chunk(&entry.labels, c, out)?;
            }
        }
        let mut tail = out.split_off(before);
        iv.filter(&mut tail);
        out.extend_from_slice(&tail);
        Ok(())
    }
}

impl BlockInner {
    /// Decodes chunk `c` of series `labels`, appending its samples to `out`.
    fn decode_chunk(&self, labels: &Labels, c: &ChunkMeta, out: &mut Vec<Sample>) -> Result<()> {
        let chunk_err = |source| BlockError::Chunk {
            dir: self.dir.clone(),
            series: labels.clone(),
            chunk_ref: c.chunk_ref,
            source,
        };
        let view =
            self.chunks
                .chunk(ChunkRef(c.chunk_ref))
                .map_err(|source| BlockError::Chunks {
                    dir: self.dir.join(CHUNKS_DIR),
                    source,
                })?;
        let before = out.len();
        if let Err(e) = chunk::decode_all(view.data, out) {
            out.truncate(before);
            return Err(chunk_err(e));
        }
        let got = &out[before..];
        if got.first().map(|s| s.t) != Some(c.min_time)
            || got.last().map(|s| s.t) != Some(c.max_time)
        {
            out.truncate(before);
            return Err(BlockError::Meta {
                path: self.dir.join(INDEX_FILE),
                what: format!(
                    "series {labels}: chunk {:#x} holds samples outside its indexed range [{}, {}]",
                    c.chunk_ref, c.min_time, c.max_time
                ),
            });
        }
        Ok(())
    }
}

impl PostingsSource for IndexReader {
    fn label_values(&self, name: &str) -> tidemark_storage::Result<Vec<String>> {
        Ok(IndexReader::label_values(self, name)?)
    }

    fn postings(&self, name: &str, value: &str) -> tidemark_storage::Result<Postings> {
        Ok(Postings::from_sorted(IndexReader::postings(
            self, name, value,
        )?))
    }

    fn all_postings(&self) -> tidemark_storage::Result<Postings> {
        Ok(Postings::from_sorted(IndexReader::all_postings(self)))
    }
}

#[derive(Debug)]
struct BlockQuerier {
    block: Block,
    mint: i64,
    maxt: i64,
    tombstones: Arc<Tombstones>,
}

impl BlockQuerier {
    /// True when the range covers the whole block and nothing is deleted: the index's label
    /// lists answer label queries directly.
    fn covers_block(&self) -> bool {
        let m = self.block.meta();
        self.mint <= m.min_time && self.maxt >= m.max_time - 1 && self.tombstones.is_empty()
    }

    /// Reads series `id` and keeps the chunks overlapping the range; None when no sample of
    /// the series falls inside the range (deleted samples do not count).
    fn series_in_range(&self, id: u64) -> Result<Option<SeriesEntry>> {
        let mut e = self.block.index().series(id)?;
        e.chunks
            .retain(|c| c.max_time >= self.mint && c.min_time <= self.maxt);
        if e.chunks.is_empty() {
            return Ok(None);
        }
        if let Some(iv) = self.tombstones.get(id) {
            e.chunks.retain(|c| !iv.covers(c.min_time, c.max_time));
            let mut buf = Vec::new();
            for c in &e.chunks {
                buf.clear();
                if self
                    .block
                    .inner
                    .decode_chunk(&e.labels, c, &mut buf)
                    .is_err()
                    || buf
                        .iter()
                        .any(|s| s.t >= self.mint && s.t <= self.maxt && !iv.contains(s.t))
                {
                    return Ok(Some(e));
                }
            }
            return Ok(None);
        }
        // A chunk entirely inside the range surely has a sample in it; one that only overlaps
        // it might not: decode such chunks to decide (a decode error keeps the series, so
        // that reading it reports the error).
        let inside = |c: &ChunkMeta| c.min_time >= self.mint && c.max_time <= self.maxt;
        if e.chunks.iter().any(inside) {
            return Ok(Some(e));
        }
        let mut buf = Vec::new();
        for c in &e.chunks {
            buf.clear();
            if self
                .block
                .inner
                .decode_chunk(&e.labels, c, &mut buf)
                .is_err()
                || buf.iter().any(|s| s.t >= self.mint && s.t <= self.maxt)
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    fn matching_series(&self, matchers: &[Matcher]) -> tidemark_storage::Result<Vec<u64>> {
        Ok(postings_for_matchers(self.block.index(), matchers)?.into_vec())
    }
}

impl Querier for BlockQuerier {
    fn select(
        &self,
        _sorted: bool,
        hints: Option<&SelectHints>,
        matchers: &[Matcher],
    ) -> SeriesSet {
        if !self.block.meta().overlaps(self.mint, self.maxt) {
            return Box::new(std::iter::empty());
        }
        let ids = match self.matching_series(matchers) {
            Ok(ids) => ids,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let limit = hints.map_or(0, |h| h.limit);
        let q = BlockQuerier {
            block: self.block.clone(),
            mint: self.mint,
            maxt: self.maxt,
            tombstones: self.tombstones.clone(),
        };
        let mut emitted = 0usize;
        // Series ids are in label order, so the set is sorted.
        let it = ids.into_iter().filter_map(move |id| {
            if limit > 0 && emitted >= limit {
                return None;
            }
            match q.series_in_range(id) {
                Ok(None) => None,
                Ok(Some(e)) => {
                    emitted += 1;
                    let s: Arc<dyn Series> = Arc::new(BlockSeries {
                        block: q.block.clone(),
                        labels: e.labels,
                        chunks: e.chunks,
                        mint: q.mint,
                        maxt: q.maxt,
                        deleted: q.tombstones.get(id).cloned(),
                    });
                    Some(Ok(s))
                }
                Err(e) => Some(Err(e.into())),
            }
        });
        Box::new(it)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        if !self.block.meta().overlaps(self.mint, self.maxt) {
            return Ok(Vec::new());
        }
        let mut out = if matchers.is_empty() && self.covers_block() {
            self.block.index().label_values(name)?
        } else {
            let mut set = std::collections::BTreeSet::new();
            for id in self.matching_series(matchers)? {
                if let Some(e) = self.series_in_range(id)?
                    && let Some(v) = e.labels.get(name)
                {
                    set.insert(v.to_string());
                }
            }
            set.into_iter().collect()
        };
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        if !self.block.meta().overlaps(self.mint, self.maxt) {
            return Ok(Vec::new());
        }
        let mut out = if matchers.is_empty() && self.covers_block() {
            self.block.index().label_names()
        } else {
            let mut set = std::collections::BTreeSet::new();
            for id in self.matching_series(matchers)? {
                if let Some(e) = self.series_in_range(id)? {
                    for l in e.labels.iter() {
                        if !set.contains(l.name) {
                            set.insert(l.name.to_string());
                        }
                    }
                }
            }
            set.into_iter().collect()
        };
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }
}

/// One series of a block, restricted to the querier's range.
struct BlockSeries {
    block: Block,
    labels: Labels,
    chunks: Vec<ChunkMeta>,
    mint: i64,
    maxt: i64,
    /// Deleted intervals of the series (skipped when reading).
    deleted: Option<Intervals>,
}

impl Series for BlockSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }

    fn iter(&self) -> Box<dyn SampleIter + '_> {
        Box::new(BlockSampleIter {
            series: self,
            next_chunk: 0,
            buf: Vec::new(),
            pos: 0,
            valid: false,
            done: false,
            err: None,
        })
    }
}

/// Decodes one chunk at a time into a buffer; chunks that end before a seek target are skipped
/// without decoding.
struct BlockSampleIter<'a> {
    series: &'a BlockSeries,
    next_chunk: usize,
    buf: Vec<Sample>,
    /// Index of the current sample in `buf` (meaningful when `valid`).
    pos: usize,
    valid: bool,
    done: bool,
    err: Option<BlockError>,
}

impl BlockSampleIter<'_> {
    /// Loads the next chunk that can hold samples `>= lo` inside the range into `buf`.
    fn load_next(&mut self, lo: i64) -> bool {
        let s = self.series;
        while let Some(c) = s.chunks.get(self.next_chunk) {
            self.next_chunk += 1;
            if c.max_time < lo {
                continue;
            }
            if c.min_time > s.maxt {
                break;
            }
            self.buf.clear();
            self.pos = 0;
            if let Err(e) = s.block.inner.decode_chunk(&s.labels, c, &mut self.buf) {
                self.err = Some(e);
                self.buf.clear();
                return false;
            }
            if let Some(iv) = &s.deleted {
                // A chunk left empty is skipped by the caller, which loads the next one.
                iv.filter(&mut self.buf);
            }
            return true;
        }
        false
    }

    /// Moves to the first sample `>= lo` at or after `pos`, loading chunks as needed.
    fn advance_to(&mut self, lo: i64) -> bool {
        let lo = lo.max(self.series.mint);
        loop {
            let rest = self.buf.get(self.pos..).unwrap_or(&[]);
            let i = self.pos + rest.partition_point(|x| x.t < lo);
            if let Some(x) = self.buf.get(i) {
                self.pos = i;
                self.valid = x.t <= self.series.maxt;
                self.done = !self.valid;
                return self.valid;
            }
            if !self.load_next(lo) {
                self.valid = false;
                self.done = true;
                return false;
            }
        }
    }
}

impl SampleIter for BlockSampleIter<'_> {
    fn next(&mut self) -> bool {
        if self.done {
            return false;
        }
        if self.valid {
            self.pos += 1;
            // Fast path: the next sample of the decoded chunk is still inside the range.
            if let Some(x) = self.buf.get(self.pos) {
                if x.t <= self.series.maxt {
                    return true;
                }
                self.valid = false;
                self.done = true;
                return false;
            }
        }
        self.advance_to(i64::MIN)
    }

    fn seek(&mut self, t: i64) -> bool {
        if self.valid && self.at().t >= t {
            return true;
        }
        if self.done {
            return false;
        }
        self.advance_to(t)
    }

    fn at(&self) -> Sample {
        self.buf.get(self.pos).copied().unwrap_or(Sample {
            t: i64::MIN,
            v: f64::NAN,
        })
    }

    fn is_valid(&self) -> bool {
        self.valid
    }

    fn err(&mut self) -> Option<tidemark_storage::Error> {
        self.err.take().map(Into::into)
    }
}

// ---------------------------------------------------------------------------------------------
// Directory handling

/// Removes a block directory crash-safely: renamed to `<id>.tmp-for-deletion` first (so a
/// crash never leaves a half-deleted block that looks valid), then removed.
pub fn delete_block(data_dir: &Path, id: &str) -> Result<()> {
    let dir = data_dir.join(id);
    let tmp = data_dir.join(format!("{id}{TMP_DELETION_SUFFIX}"));
    fs::rename(&dir, &tmp).map_err(io_err(&dir, "rename for deletion"))?;
    sync_dir(data_dir)?;
    fs::remove_dir_all(&tmp).map_err(io_err(&tmp, "remove"))?;
    Ok(())
}

/// Block ids (directory names) found in `data_dir`, sorted.
pub(crate) fn block_dirs(data_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(data_dir).map_err(io_err(data_dir, "read dir"))? {
        let e = e.map_err(io_err(data_dir, "read dir"))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if is_block_id(&name) && e.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Opens every block of `data_dir`, sorted by `(min_time, max_time, id)`. Along the way, and
/// each reported in the returned list of problems:
/// - leftovers of interrupted writes and deletions (`*.tmp-for-creation`, `*.tmp-for-deletion`)
///   are removed;
/// - a block that fails to open (corrupt index, bad meta.json) is renamed to `<id>.corrupt`
///   and the others keep serving;
/// - a block whose sources are all held by another complete block of the same resolution (a
///   compaction or re-downsampling that crashed before deleting its inputs) is deleted.
pub fn open_blocks(data_dir: &Path) -> Result<(Vec<Block>, Vec<String>)> {
    let mut problems = Vec::new();
    if !data_dir.exists() {
        return Ok((Vec::new(), problems));
    }
    for e in fs::read_dir(data_dir).map_err(io_err(data_dir, "read dir"))? {
        let e = e.map_err(io_err(data_dir, "read dir"))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.ends_with(TMP_CREATION_SUFFIX)
            || name.ends_with(TMP_DELETION_SUFFIX)
            || name.ends_with(crate::import::TMP_IMPORT_SUFFIX)
        {
            fs::remove_dir_all(e.path()).map_err(io_err(&e.path(), "remove leftover"))?;
            tracing::warn!(dir = %e.path().display(), "removed leftover of an interrupted block write or deletion");
            problems.push(format!("removed leftover directory {}", e.path().display()));
        }
    }
    let mut blocks = Vec::new();
    for id in block_dirs(data_dir)? {
        let dir = data_dir.join(&id);
        match Block::open(&dir) {
            Ok(b) => blocks.push(b),
            Err(err) if !err.is_corruption() => {
                // Not the block's fault (permissions, out of file handles or memory): leave it
                // where it is so that a restart serves it again.
                tracing::error!(block = %id, error = %err, "block could not be opened, skipped");
                problems.push(format!(
                    "block {id} could not be opened ({err}); skipped, not moved"
                ));
            }
            Err(err) => {
                let mut dst = data_dir.join(format!("{id}{CORRUPT_SUFFIX}"));
                let mut n = 1;
                while dst.exists() {
                    dst = data_dir.join(format!("{id}{CORRUPT_SUFFIX}.{n}"));
                    n += 1;
                }
                fs::rename(&dir, &dst).map_err(io_err(&dir, "move corrupt block aside"))?;
                sync_dir(data_dir)?;
                tracing::error!(block = %id, error = %err, moved_to = %dst.display(), "block unreadable, moved aside");
                problems.push(format!(
                    "block {id} unreadable ({err}); moved to {}",
                    dst.display()
                ));
            }
        }
    }
    // Blocks made obsolete by a compaction that finished writing but crashed before deleting
    // its sources.
    // A block that names another as a parent holds its data too (also a block rewritten by
    // `clean_tombstones`, which keeps its sources).
    let mut obsolete: HashSet<String> = HashSet::new();
    for a in &blocks {
        for b in &blocks {
            if a.id() != b.id()
                // Only blocks of the same resolution supersede each other: a downsampled block
                // names its raw source as a parent but does not replace it.
                && a.meta().resolution == b.meta().resolution
                && (b.meta().parents.iter().any(|p| p == a.id())
                    || b.meta().sources.len() > a.meta().sources.len()
                        && a.meta()
                            .sources
                            .iter()
                            .all(|s| b.meta().sources.contains(s)))
            {
                obsolete.insert(a.id().to_string());
            }
        }
    }
    if !obsolete.is_empty() {
        blocks.retain(|b| !obsolete.contains(b.id()));
        let mut ids: Vec<_> = obsolete.into_iter().collect();
        ids.sort();
        for id in ids {
            delete_block(data_dir, &id)?;
            tracing::warn!(block = %id, "deleted block already compacted into a newer block");
            problems.push(format!(
                "deleted block {id}: its data is already in a compacted block"
            ));
        }
    }
    blocks.sort_by(|a, b| {
        (a.meta().min_time, a.meta().max_time, a.id()).cmp(&(
            b.meta().min_time,
            b.meta().max_time,
            b.id(),
        ))
    });
    Ok((blocks, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_vs_environment_errors() {
        let io = |kind| BlockError::Io {
            path: "x".into(),
            op: "open",
            source: std::io::Error::from(kind),
        };
        assert!(
            io(std::io::ErrorKind::NotFound).is_corruption(),
            "a missing file of a block"
        );
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_corruption());
        assert!(!io(std::io::ErrorKind::OutOfMemory).is_corruption());
        let idx = BlockError::Index(IndexError::Corrupt {
            file: "index".into(),
            offset: 3,
            what: "x".into(),
        });
        assert!(idx.is_corruption());
        assert!(
            BlockError::Meta {
                path: "meta.json".into(),
                what: "x".into()
            }
            .is_corruption()
        );
    }

    #[test]
    fn ids_are_ulids_and_time_ordered() {
        let a = new_block_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_block_id();
        assert!(is_block_id(&a), "{a}");
        assert!(a < b, "{a} !< {b}");
        assert_ne!(new_block_id(), new_block_id());
        assert!(!is_block_id("wal"));
    }
}
