//! [`Db`]: the engine. It ties the head, the log and the blocks of one data directory together:
//!
//! ```text
//! <dir>/
//!   wal/            the log (segments + checkpoint.<upto>/), replayed into the head on open
//!   chunks_head/    memory-mapped full chunks of the head (rebuilt from the log on open)
//!   <block id>/     immutable blocks (meta.json, index, chunks/)
//! ```
//!
//! - Appends go to the head; a commit is one log batch (fsynced per [`SyncPolicy`]) after which
//!   the batch is visible.
//! - Queries merge the head and every raw block overlapping the range; downsampled blocks are
//!   read with [`Db::querier_resolution`].
//! - [`Db::delete`] marks samples deleted (tombstones in the head, logged, and in every block
//!   overlapping, in its `tombstones` file); [`Db::clean_tombstones`] rewrites the blocks that
//!   have tombstones without the deleted samples. Cutting and compaction drop deleted samples.
//! - When the head spans more than 1.5 block ranges, its oldest whole block range is written as a
//!   block, dropped from the head, and the log is checkpointed and purged. A background thread
//!   does this, then compaction, downsampling and retention, every
//!   [`DbOptions::maintenance_interval`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tidemark_model::Matcher;
use tidemark_storage::{
    Appendable, Appender, DownsampleAggregate, MergeQuerier, Querier, Queryable,
    ResolutionQueryable, ResolutionRange, SelectHints, SeriesSet, merge_series_sets,
};

use crate::block::{self, Block, BlockError, BlockMeta, BlockWriter};
use crate::compact::{self, CompactOptions};
use crate::downsample::{self, Aggregate, DownsampleOptions, DownsampledQuerier};
use crate::head::{Head, HeadError, HeadOptions};
use crate::head_log::ReplayStats;
use crate::log::{self, Log, LogOptions, SyncPolicy};
use crate::retention::ResolutionRetention;

const DAY_MS: i64 = 24 * 3_600_000;
/// Subdirectory of the log.
pub const LOG_DIR: &str = "wal";
/// Subdirectory of the head-chunk files.
pub const HEAD_CHUNKS_DIR: &str = "chunks_head";

/// Options of [`Db::open`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Blocks whose newest sample is older than the newest sample minus this are deleted
    /// (default 15d; 0 = no retention by time).
    pub retention_time_ms: i64,
    /// Oldest blocks are deleted while blocks + log + head chunks exceed this (0 = off).
    pub retention_size_bytes: u64,
    /// Range of the blocks cut from the head (default 2h).
    pub block_range_ms: i64,
    /// Out-of-order samples up to this much older than the newest are accepted (default 10m).
    pub ooo_window_ms: i64,
    /// When commits are fsynced (default: before `commit` returns).
    pub log_sync: SyncPolicy,
    /// Size of a log segment (default 128 MiB).
    pub log_segment_size: u64,
    /// Run cutting, compaction and retention in a background thread (default true).
    pub background_maintenance: bool,
    /// How often the background thread runs (default 1 min).
    pub maintenance_interval: Duration,
    /// Threads inserting samples during log replay (default 1: the opening thread; 0: one per
    /// CPU, at most 4). More threads were slower on the shared 2-core machine (benchmarks.md).
    pub replay_workers: usize,
    /// Keep a write-ahead log (default true). Without one, samples in the head are lost on
    /// restart: only for callers that keep their own log (a cluster shard re-applies its Raft
    /// log and restores the head from its last snapshot).
    pub wal: bool,
    /// Write 5 m and 1 h blocks for old blocks during maintenance (default true).
    pub downsampling: bool,
    /// Raw blocks whose newest sample is older than the newest sample minus this get a 5 m
    /// version (default 40h).
    pub downsample_5m_after_ms: i64,
    /// 5 m blocks older than the newest sample minus this get a 1 h version (default 10d).
    pub downsample_1h_after_ms: i64,
    /// Retention of 5 m blocks (default 90d; 0 = forever). Raw blocks use `retention_time_ms`.
    pub retention_5m_ms: i64,
    /// Retention of 1 h blocks (default 365d; 0 = forever).
    pub retention_1h_ms: i64,
    /// Per-metric retention rules, applied by maintenance after the retention by time
    /// ([`crate::retention::apply_rules`]; default none).
    pub retention_rules: Vec<crate::retention::RetentionRule>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            retention_time_ms: 15 * DAY_MS,
            retention_size_bytes: 0,
            block_range_ms: 2 * 3_600_000,
            ooo_window_ms: 10 * 60_000,
            log_sync: SyncPolicy::Always,
            log_segment_size: log::DEFAULT_SEGMENT_SIZE,
            background_maintenance: true,
            maintenance_interval: Duration::from_secs(60),
            replay_workers: 1,
            wal: true,
            downsampling: true,
            downsample_5m_after_ms: 40 * 3_600_000,
            downsample_1h_after_ms: 10 * DAY_MS,
            retention_5m_ms: 90 * DAY_MS,
            retention_1h_ms: 365 * DAY_MS,
            retention_rules: Vec::new(),
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log: {0}")]
    Log(#[from] log::LogError),
    #[error("head: {0}")]
    Head(#[from] HeadError),
    #[error("blocks: {0}")]
    Block(#[from] BlockError),
    #[error("the database is closed")]
    Closed,
}

impl From<DbError> for tidemark_storage::Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Closed => {
                tidemark_storage::Error::Unavailable("the database is closed".into())
            }
            other => tidemark_storage::Error::Other(other.to_string()),
        }
    }
}

/// What [`Db::open`] found: the log's repairs (torn tail truncated, corruption moved aside),
/// what replay did, and problems with blocks (moved aside, leftovers removed).
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub log: log::OpenReport,
    pub replay: ReplayStats,
    pub blocks: Vec<String>,
}

impl OpenReport {
    /// True when nothing was truncated, moved aside or skipped.
    pub fn is_clean(&self) -> bool {
        self.log.is_clean() && self.blocks.is_empty() && self.replay.problems.is_empty()
    }
}

impl fmt::Display for OpenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.log, self.replay)?;
        for b in &self.blocks {
            write!(f, "; {b}")?;
        }
        Ok(())
    }
}

/// Figures of [`Db::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    pub head_series: usize,
    pub head_samples_appended: u64,
    pub head_chunks_written: u64,
    /// Oldest and newest time over the head (its samples) and the blocks (their bounds:
    /// `min_time` and `max_time - 1`, as in meta.json); `None` when empty.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub head_min_time: Option<i64>,
    pub head_max_time: Option<i64>,
    pub blocks: usize,
    pub block_bytes: u64,
    pub block_samples: u64,
    pub log_bytes: u64,
}

struct DbInner {
    dir: PathBuf,
    opts: DbOptions,
    head: Arc<Head>,
    blocks: RwLock<Vec<Block>>,
    report: OpenReport,
    closed: AtomicBool,
    /// Serializes cutting, compaction and retention.
    maintenance: Mutex<()>,
    /// Queriers read the block list and snapshot the head under the read side; changing the
    /// block list together with the head (cut) or the blocks (compaction) takes the write side.
    view: RwLock<()>,
    bg: Mutex<Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>)>>,
}

/// The engine over one data directory. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .field("head_series", &self.inner.head.num_series())
            .field("blocks", &self.inner.blocks.read().len())
            .finish()
    }
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        dir: dir.to_path_buf(),
        source,
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`: opens the blocks (moving corrupt ones aside),
    /// opens the log (truncating a torn tail, moving corruption aside) and replays it into the
    /// head. What was repaired is in [`Db::open_report`].
    pub fn open(dir: &Path, opts: DbOptions) -> Result<Db, DbError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (blocks, block_problems) = block::open_blocks(dir)?;
        let head = Arc::new(Head::new(HeadOptions {
            chunk_dir: Some(dir.join(HEAD_CHUNKS_DIR)),
            chunk_range_ms: opts.block_range_ms,
            ooo_window_ms: opts.ooo_window_ms,
            replay_workers: opts.replay_workers,
        })?);
        if let Some(max) = blocks.iter().map(|b| b.meta().max_time).max() {
            head.set_min_valid_time(max);
        }
        // `Always` is implemented as group commit: the log itself never fsyncs on append, every
        // commit waits for its records to be durable (sharing fsyncs with concurrent commits).
        let (log_report, replay) = if opts.wal {
            let group_commit = opts.log_sync == SyncPolicy::Always;
            let sync = if group_commit {
                SyncPolicy::Never
            } else {
                opts.log_sync
            };
            let (log, log_report) = Log::open(
                &dir.join(LOG_DIR),
                LogOptions {
                    segment_size: opts.log_segment_size,
                    sync,
                },
            )?;
            let replay = head.replay(&log)?;
            if group_commit {
                head.set_log_group_commit(log);
            } else {
                head.set_log(log);
            }
            (log_report, replay)
        } else {
            (log::OpenReport::default(), ReplayStats::default())
        };
        let report = OpenReport {
            log: log_report,
            replay,
            blocks: block_problems,
        };
        if !report.is_clean() {
            tracing::warn!(dir = %dir.display(), report = %report, "database opened with repairs");
        } else {
            tracing::info!(dir = %dir.display(), report = %report, "database opened");
        }
        let db = Db {
            inner: Arc::new(DbInner {
                dir: dir.to_path_buf(),
                opts,
                head,
                blocks: RwLock::new(blocks),
                report,
                closed: AtomicBool::new(false),
                maintenance: Mutex::new(()),
                view: RwLock::new(()),
                bg: Mutex::new(None),
            }),
        };
        if db.inner.opts.background_maintenance {
            db.start_background();
        }
        Ok(db)
    }

    fn start_background(&self) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.opts.maintenance_interval;
        let h = std::thread::Builder::new()
            .name("tidemark-db-maintenance".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(every) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let db = Db { inner };
                    if db.inner.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Err(e) = db.compact_now() {
                        tracing::error!(error = %e, "background maintenance failed");
                    }
                }
            });
        match h {
            Ok(h) => *self.inner.bg.lock() = Some((h, tx)),
            Err(e) => tracing::error!(error = %e, "could not start the maintenance thread"),
        }
    }

    /// What opening repaired or skipped.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The head (tests, diagnostics).
    pub fn head(&self) -> &Arc<Head> {
        &self.inner.head
    }

    /// Metas of the open blocks, oldest first.
    pub fn blocks(&self) -> Vec<BlockMeta> {
        self.inner
            .blocks
            .read()
            .iter()
            .map(|b| b.meta().clone())
            .collect()
    }

    /// The open blocks per resolution (raw, 5 m, 1 h): count, time range, bytes, distinct
    /// series, samples (windows for downsampled blocks). Reads every block's series labels.
    pub fn resolution_summary(&self) -> Result<Vec<crate::analyze::ResolutionSummary>, DbError> {
        let blocks: Vec<Block> = self.inner.blocks.read().clone();
        Ok(crate::analyze::summarize_resolutions(&blocks)?)
    }

    /// Flushes and fsyncs everything, stops the background thread. Later appends fail; queries
    /// keep working. Idempotent.
    pub fn close(&self) -> Result<(), DbError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some((h, tx)) = self.inner.bg.lock().take() {
            drop(tx);
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let _m = self.inner.maintenance.lock();
        self.inner.head.close_log()?;
        self.inner.head.sync_chunks()?;
        Ok(())
    }

    pub fn stats(&self) -> DbStats {
        let h = self.inner.head.stats();
        let blocks = self.inner.blocks.read();
        let head_min = (h.min_time != i64::MAX).then_some(h.min_time);
        let head_max = (h.max_time != i64::MIN && head_min.is_some()).then_some(h.max_time);
        let bmin = blocks.iter().map(|b| b.meta().min_time).min();
        let bmax = blocks.iter().map(|b| b.meta().max_time - 1).max();
        DbStats {
            head_series: h.series,
            head_samples_appended: h.samples_appended,
            head_chunks_written: h.chunks_written,
            min_time: [bmin, head_min].into_iter().flatten().min(),
            max_time: [bmax, head_max].into_iter().flatten().max(),
            head_min_time: head_min,
            head_max_time: head_max,
            blocks: blocks.len(),
            block_bytes: blocks.iter().map(Block::size_bytes).sum(),
            block_samples: blocks.iter().map(|b| b.meta().stats.num_samples).sum(),
            log_bytes: self.inner.head.log_size_bytes(),
        }
    }

    /// Cuts the blocks that are due, compacts, downsamples, applies retention.
    pub fn compact_now(&self) -> Result<(), DbError> {
        let _m = self.inner.maintenance.lock();
        self.cut_blocks(false)?;
        self.compact_blocks()?;
        if self.inner.opts.downsampling {
            self.downsample_blocks()?;
        }
        self.apply_retention()?;
        Ok(())
    }

    /// A querier over the downsampled blocks of `resolution` (5 m: [`RES_5M`], 1 h:
    /// [`RES_1H`]) that returns aggregate `aggr` of each series in `[mint, maxt]`, under the
    /// series' labels (docs/downsampling.md). Raw data is read with [`Queryable::querier`].
    ///
    /// [`RES_5M`]: crate::downsample::RES_5M
    /// [`RES_1H`]: crate::downsample::RES_1H
    pub fn querier_resolution(
        &self,
        mint: i64,
        maxt: i64,
        resolution: i64,
        aggr: Aggregate,
    ) -> Result<DownsampledQuerier, DbError> {
        if resolution <= 0 {
            return Err(DbError::Block(BlockError::Invalid(format!(
                "resolution {resolution}: downsampled data has resolution 300000 or 3600000; read raw data with querier()"
            ))));
        }
        let _view = self.inner.view.read();
        let blocks: Vec<Block> = self
            .inner
            .blocks
            .read()
            .iter()
            .filter(|b| b.meta().resolution == resolution)
            .cloned()
            .collect();
        Ok(DownsampledQuerier::new(blocks, mint, maxt, aggr))
    }

    /// Writes the downsampled versions that are due ([`downsample::plan`]), then deletes the
    /// downsampled blocks they make obsolete (a block re-downsampled after its raw block grew).
    fn downsample_blocks(&self) -> Result<(), DbError> {
        let opts = DownsampleOptions {
            to_5m_after_ms: self.inner.opts.downsample_5m_after_ms,
            to_1h_after_ms: self.inner.opts.downsample_1h_after_ms,
        };
        // Each pass merges the downsampled blocks that are due, then adds 5 m blocks from raw
        // and 1 h blocks from 5 m ones.
        for _pass in 0..5 {
            let merges = downsample::plan_merge(&self.blocks());
            for group in &merges {
                self.merge_downsampled(group)?;
            }
            let metas = self.blocks();
            let newest = self.newest_time(&metas);
            let plans = downsample::plan(&metas, newest, &opts);
            if plans.is_empty() && merges.is_empty() {
                return Ok(());
            }
            for (id, res) in plans {
                let Some(src) = self
                    .inner
                    .blocks
                    .read()
                    .iter()
                    .find(|b| b.id() == id)
                    .cloned()
                else {
                    continue;
                };
                let meta = downsample::downsample_block(&self.inner.dir, &src, res)?;
                let nb = Block::open(&self.inner.dir.join(&meta.id))?;
                let obsolete = downsample::obsoleted_by(&meta, &self.blocks());
                {
                    let _view = self.inner.view.write();
                    let mut blocks = self.inner.blocks.write();
                    blocks.retain(|b| !obsolete.iter().any(|o| o == b.id()));
                    blocks.push(nb);
                    blocks.sort_by(|a, b| {
                        (a.meta().min_time, a.meta().max_time)
                            .cmp(&(b.meta().min_time, b.meta().max_time))
                    });
                }
                for o in &obsolete {
                    block::delete_block(&self.inner.dir, o)?;
                    tracing::info!(block = %o, by = %meta.id, "deleted downsampled block replaced by a newer one");
                }
            }
        }
        Ok(())
    }

    /// Merges the downsampled blocks `ids` into one ([`downsample::merge_blocks`]), swaps it in
    /// for them, then deletes them (after a crash in between, `open_blocks` deletes them: the
    /// new block holds all their sources).
    fn merge_downsampled(&self, ids: &[String]) -> Result<(), DbError> {
        let members: Vec<Block> = self
            .inner
            .blocks
            .read()
            .iter()
            .filter(|b| ids.iter().any(|id| id == b.id()))
            .cloned()
            .collect();
        if members.len() < 2 {
            return Ok(());
        }
        let meta = downsample::merge_blocks(&self.inner.dir, &members)?;
        let nb = Block::open(&self.inner.dir.join(&meta.id))?;
        {
            let _view = self.inner.view.write();
            let mut blocks = self.inner.blocks.write();
            blocks.retain(|b| !ids.iter().any(|o| o == b.id()));
            blocks.push(nb);
            blocks.sort_by(|a, b| {
                (a.meta().min_time, a.meta().max_time).cmp(&(b.meta().min_time, b.meta().max_time))
            });
        }
        for id in ids {
            block::delete_block(&self.inner.dir, id)?;
        }
        Ok(())
    }

    /// The newest time of the data: the head's max time or the newest block's last millisecond.
    fn newest_time(&self, metas: &[BlockMeta]) -> i64 {
        metas
            .iter()
            .map(|m| m.max_time - 1)
            .max()
            .unwrap_or(i64::MIN)
            .max(self.inner.head.max_time())
    }

    /// `delete_series`: marks the samples in `[mint, maxt]` (inclusive) of every series matching
    /// any of `matcher_sets` as deleted, in the head and in every block overlapping the range.
    /// Queries stop returning them at once; the intervals are durable when this returns (the
    /// head's in a fsynced log record, each block's in its `tombstones` file). Serialized with
    /// cutting and compaction, which drop deleted samples. As in Prometheus each series'
    /// interval is clamped to the samples it holds now: samples appended later stay visible.
    pub fn delete(
        &self,
        matcher_sets: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<(), DbError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(DbError::Closed);
        }
        let _m = self.inner.maintenance.lock();
        let blocks: Vec<Block> = self.inner.blocks.read().clone();
        let mut n = 0;
        for b in blocks.iter().filter(|b| b.meta().overlaps(mint, maxt)) {
            n += b.delete(matcher_sets, mint, maxt)?;
        }
        n += self.inner.head.delete(matcher_sets, mint, maxt)?;
        tracing::info!(series_intervals = n, mint, maxt, "deleted series");
        Ok(())
    }

    /// `clean_tombstones`: rewrites every block that has tombstones without the deleted samples
    /// (a new block, written like a compaction's, replaces it; a block left empty is deleted).
    /// Returns the number of blocks rewritten or deleted. The head's tombstones go when its
    /// data is cut into blocks.
    pub fn clean_tombstones(&self) -> Result<usize, DbError> {
        let _m = self.inner.maintenance.lock();
        let dirty: Vec<Block> = self
            .inner
            .blocks
            .read()
            .iter()
            .filter(|b| !b.tombstones().is_empty())
            .cloned()
            .collect();
        for old in &dirty {
            let new = match crate::tombstones::rewrite_without_tombstones(&self.inner.dir, old)? {
                Some(meta) => Some(Block::open(&self.inner.dir.join(&meta.id))?),
                None => None,
            };
            {
                let _view = self.inner.view.write();
                let mut blocks = self.inner.blocks.write();
                blocks.retain(|b| b.id() != old.id());
                if let Some(nb) = &new {
                    blocks.push(nb.clone());
                    blocks.sort_by(|a, b| {
                        (a.meta().min_time, a.meta().max_time)
                            .cmp(&(b.meta().min_time, b.meta().max_time))
                    });
                }
            }
            block::delete_block(&self.inner.dir, old.id())?;
            tracing::info!(block = %old.id(), new_block = ?new.as_ref().map(|b| b.id().to_string()), "cleaned tombstones");
        }
        Ok(dirty.len())
    }

    /// Makes every committed sample durable, whatever the sync policy (the cluster calls it
    /// before it records a Raft snapshot as the shard's base).
    pub fn sync_log(&self) -> Result<(), DbError> {
        Ok(self.inner.head.sync_log()?)
    }

    /// Writes everything in the head into blocks (tests, snapshots, shutdown of a shard).
    pub fn flush_head(&self) -> Result<(), DbError> {
        let _m = self.inner.maintenance.lock();
        self.cut_blocks(true)
    }

    /// Cuts the oldest block range of the head while the head spans more than 1.5 ranges (or,
    /// with `all`, while it holds anything).
    fn cut_blocks(&self, all: bool) -> Result<(), DbError> {
        let head = &self.inner.head;
        let range = self.inner.opts.block_range_ms.max(1);
        let mut cut_any = false;
        loop {
            let (hmin, hmax) = (head.min_time(), head.max_time());
            if hmin == i64::MAX || hmax < hmin {
                break;
            }
            let start = hmin.div_euclid(range).saturating_mul(range);
            let end = start.saturating_add(range);
            // `end` is below the head's appendable floor (`Head::appendable_min_valid_time`:
            // newest − range/2, implied by the 1.5-range condition) and below the out-of-order
            // window, so cutting refuses no sample the head would still accept: when
            // maintenance runs does not change which samples are stored.
            let due = all
                || (hmax.saturating_sub(hmin) > range / 2 * 3
                    && end <= hmax.saturating_sub(head.opts.ooo_window_ms.max(0)));
            if !due {
                break;
            }
            self.cut_block(start, end)?;
            cut_any = true;
            if end > hmax || head.min_time() <= hmin {
                // Done, or the head did not shrink (never expected: chunks are aligned to the
                // block range): stop rather than loop.
                break;
            }
        }
        if cut_any {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes `[start, end)` of the head as a block, then drops it from the head.
    fn cut_block(&self, start: i64, end: i64) -> Result<(), DbError> {
        let head = &self.inner.head;
        // From here on samples before `end` are out of bounds; commits already logged are applied
        // (they hold the log lock while applying).
        head.raise_min_valid_time_committed(end);
        let mut series = head.series_list();
        series.sort_by(|a, b| a.1.cmp(&b.1));
        let mut w = BlockWriter::new(&self.inner.dir, start, end)?;
        w.set_samples_per_chunk(block::HEAD_BLOCK_SAMPLES_PER_CHUNK);
        for (s, labels) in &series {
            let samples = head.samples_of(s, start, end - 1)?;
            if !samples.is_empty() {
                w.add_samples(labels, &samples)?;
            }
        }
        if w.num_series() > 0 {
            let meta = w.finish()?;
            let b = Block::open(&self.inner.dir.join(&meta.id))?;
            tracing::info!(block = %meta.id, min_time = start, max_time = end, series = meta.stats.num_series, samples = meta.stats.num_samples, "cut block from head");
            let _view = self.inner.view.write();
            let mut blocks = self.inner.blocks.write();
            blocks.push(b);
            blocks.sort_by(|a, b| {
                (a.meta().min_time, a.meta().max_time).cmp(&(b.meta().min_time, b.meta().max_time))
            });
            drop(blocks);
            head.truncate_before(end);
        } else {
            drop(w);
            let _view = self.inner.view.write();
            head.truncate_before(end);
        }
        Ok(())
    }

    /// Checkpoints the log: what the head still holds is written to a checkpoint and every
    /// record before it is purged.
    fn checkpoint(&self) -> Result<(), DbError> {
        self.inner.head.checkpoint_log()?;
        Ok(())
    }

    fn compact_blocks(&self) -> Result<(), DbError> {
        let opts = CompactOptions {
            block_range_ms: self.inner.opts.block_range_ms,
            retention_ms: self.inner.opts.retention_time_ms,
            ..CompactOptions::default()
        };
        loop {
            let metas = self.blocks();
            let plans = compact::plan(&metas, &opts);
            if plans.is_empty() {
                return Ok(());
            }
            for p in plans {
                let group: Vec<Block> = self
                    .inner
                    .blocks
                    .read()
                    .iter()
                    .filter(|b| p.iter().any(|id| id == b.id()))
                    .cloned()
                    .collect();
                if group.len() < 2 && p.len() >= 2 {
                    continue;
                }
                let refs: Vec<&Block> = group.iter().collect();
                let meta = compact::compact(&self.inner.dir, &refs)?;
                let nb = Block::open(&self.inner.dir.join(&meta.id))?;
                tracing::info!(block = %meta.id, sources = p.len(), "compacted blocks");
                let _view = self.inner.view.write();
                let mut blocks = self.inner.blocks.write();
                blocks.retain(|b| !p.iter().any(|id| id == b.id()));
                blocks.push(nb);
                blocks.sort_by(|a, b| {
                    (a.meta().min_time, a.meta().max_time)
                        .cmp(&(b.meta().min_time, b.meta().max_time))
                });
            }
        }
    }

    fn apply_retention(&self) -> Result<(), DbError> {
        let metas = self.blocks();
        if metas.is_empty() {
            return Ok(());
        }
        let newest = self.newest_time(&metas);
        let o = &self.inner.opts;
        let retention = ResolutionRetention {
            raw_ms: o.retention_time_ms,
            res_5m_ms: o.retention_5m_ms,
            res_1h_ms: o.retention_1h_ms,
            downsampling: o.downsampling,
        };
        let deleted = crate::retention::apply_by_resolution(
            &self.inner.dir,
            &metas,
            &retention,
            o.retention_size_bytes,
            newest,
        )?;
        if !deleted.is_empty() {
            tracing::info!(blocks = ?deleted, "retention deleted blocks");
            self.inner
                .blocks
                .write()
                .retain(|b| !deleted.iter().any(|d| d == b.id()));
        }
        if !o.retention_rules.is_empty() {
            let blocks: Vec<Block> = self.inner.blocks.read().clone();
            let rewrites = crate::retention::apply_rules(
                &self.inner.dir,
                &blocks,
                &o.retention_rules,
                newest,
            )?;
            for r in rewrites {
                let new = match &r.new {
                    Some(meta) => Some(Block::open(&self.inner.dir.join(&meta.id))?),
                    None => None,
                };
                {
                    let _view = self.inner.view.write();
                    let mut blocks = self.inner.blocks.write();
                    blocks.retain(|b| b.id() != r.old);
                    if let Some(nb) = new {
                        blocks.push(nb);
                        blocks.sort_by(|a, b| {
                            (a.meta().min_time, a.meta().max_time)
                                .cmp(&(b.meta().min_time, b.meta().max_time))
                        });
                    }
                }
                block::delete_block(&self.inner.dir, &r.old)?;
            }
        }
        Ok(())
    }
}

impl Appendable for Db {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(self.inner.head.appender())
    }

    fn background_appender(&self) -> Box<dyn Appender> {
        Box::new(self.inner.head.background_appender())
    }
}

impl Queryable for Db {
    fn querier(&self, mint: i64, maxt: i64) -> tidemark_storage::Result<Box<dyn Querier>> {
        Ok(Box::new(DbQuerier {
            db: self.clone(),
            mint,
            maxt,
        }))
    }

    fn downsampled(&self) -> Option<&dyn ResolutionQueryable> {
        Some(self)
    }
}

/// The storage-level name of a downsampled aggregate.
fn tsdb_aggregate(a: DownsampleAggregate) -> Aggregate {
    match a {
        DownsampleAggregate::Count => Aggregate::Count,
        DownsampleAggregate::Sum => Aggregate::Sum,
        DownsampleAggregate::Min => Aggregate::Min,
        DownsampleAggregate::Max => Aggregate::Max,
        DownsampleAggregate::Counter => Aggregate::Counter,
        DownsampleAggregate::Last => Aggregate::Last,
    }
}

impl ResolutionQueryable for Db {
    /// Raw: the raw blocks and the head; downsampled: the blocks of each resolution. Times
    /// inclusive (a block's `max_time` is exclusive).
    fn resolutions(&self) -> tidemark_storage::Result<Vec<ResolutionRange>> {
        let _view = self.inner.view.read();
        let mut out: Vec<ResolutionRange> = Vec::new();
        let mut add = |resolution: i64, min_time: i64, max_time: i64| {
            if min_time > max_time {
                return;
            }
            match out.iter_mut().find(|r| r.resolution == resolution) {
                Some(r) => {
                    r.min_time = r.min_time.min(min_time);
                    r.max_time = r.max_time.max(max_time);
                }
                None => out.push(ResolutionRange {
                    resolution,
                    min_time,
                    max_time,
                }),
            }
        };
        for b in self.inner.blocks.read().iter() {
            let m = b.meta();
            add(m.resolution, m.min_time, m.max_time - 1);
        }
        let head = &self.inner.head;
        add(downsample::RES_RAW, head.min_time(), head.max_time());
        out.sort_by_key(|r| r.resolution);
        Ok(out)
    }

    fn querier_resolution(
        &self,
        mint: i64,
        maxt: i64,
        resolution: i64,
        aggr: DownsampleAggregate,
    ) -> tidemark_storage::Result<Box<dyn Querier>> {
        let q = Db::querier_resolution(self, mint, maxt, resolution, tsdb_aggregate(aggr))?;
        Ok(Box::new(q))
    }
}

/// A querier over the head and the blocks. Each call takes its view of the blocks and the
/// head's snapshot together (under the view lock that cutting a block takes while it adds the
/// block and truncates the head), so no sample is missed or half-seen while a block is cut.
struct DbQuerier {
    db: Db,
    mint: i64,
    maxt: i64,
}

impl DbQuerier {
    fn parts(&self) -> Vec<Box<dyn Querier>> {
        let mut qs: Vec<Box<dyn Querier>> = Vec::new();
        for b in self.db.inner.blocks.read().iter() {
            // Raw data only: downsampled blocks are read through `Db::querier_resolution`.
            if b.meta().resolution == 0 && b.meta().overlaps(self.mint, self.maxt) {
                qs.push(b.querier(self.mint, self.maxt));
            }
        }
        qs.push(Box::new(self.db.inner.head.querier(self.mint, self.maxt)));
        qs
    }
}

impl Querier for DbQuerier {
    fn select(&self, sorted: bool, hints: Option<&SelectHints>, matchers: &[Matcher]) -> SeriesSet {
        let _view = self.db.inner.view.read();
        let qs = self.parts();
        if qs.len() == 1 {
            return qs[0].select(sorted, hints, matchers);
        }
        let sets: Vec<SeriesSet> = qs.iter().map(|q| q.select(true, hints, matchers)).collect();
        drop(_view);
        merge_series_sets(sets)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let _view = self.db.inner.view.read();
        MergeQuerier::new(self.parts()).label_values(name, matchers, limit)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let _view = self.db.inner.view.read();
        MergeQuerier::new(self.parts()).label_names(matchers, limit)
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire)
            && let Err(e) = self.head.sync_chunks()
        {
            tracing::warn!(error = %e, "syncing head chunks on drop failed");
        }
    }
}
