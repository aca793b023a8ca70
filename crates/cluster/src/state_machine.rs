//! A shard's Raft state machine: the shard's TSDB ([`Db`]).
//!
//! ```text
//! shards/<n>/raft/            the Raft log (log_store.rs)
//! shards/<n>/data/            the shard's Db (blocks and head; a cluster node runs it without
//!                             a log of its own: the Raft log is the log)
//! shards/<n>/snapshot/current.snap   the last snapshot: a tar of blocks/<id>/... + head-<i>.batch
//!                                    (+ extras.batch)
//! shards/<n>/snapshot/current.meta   its SnapshotMeta (MessagePack)
//! shards/<n>/snapshot/REBUILD        present while data/ is rebuilt from current.snap
//! ```
//!
//! Applying an entry appends its batch to the Db (per-sample errors reject that sample only, as
//! on a single node). The applied position is persisted only with a snapshot: on restart the
//! Db opens its blocks, its head is restored from the snapshot's head dump, and openraft
//! re-applies the Raft entries after the snapshot. Re-applying is harmless: an exact duplicate
//! sample is ignored. (With a Db that keeps its own log — `DbOptions::wal` — the Db replays it
//! instead: it holds a prefix of the applied entries, fsynced before a snapshot is recorded.)
//!
//! A snapshot is the shard's block files (hard links) plus a dump of the head as write batches;
//! installing one rebuilds `data/` from the blocks and appends the head dump window by window in
//! time order, so the head accepts it as it accepted the original appends.
//!
//! The replica's metadata and exemplars (`extras.rs`, in memory) are in the snapshot too, as
//! one extras payload (`batch.rs`) in the member `extras.batch` (absent when there are none,
//! and in snapshots written before it existed): installing a snapshot replaces the replica's
//! extras with it, and a restart starts from it before openraft re-applies the entries after
//! the snapshot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use parking_lot::{Mutex, RwLock};
use tidemark_model::{Labels, MatchType, Matcher};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::{Db, DbOptions};
use tokio::io::AsyncSeekExt;

use crate::batch::{self, BatchBuilder};
use crate::types::{
    ApplyResult, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, decode,
    encode,
};

const SNAP_FILE: &str = "current.snap";
const META_FILE: &str = "current.meta";
const REBUILD_MARKER: &str = "REBUILD";
/// The snapshot member holding the replica's metadata and exemplars.
const EXTRAS_MEMBER: &str = "extras.batch";
/// Series per head-dump batch in a snapshot.
const DUMP_SERIES_PER_BATCH: usize = 2000;
/// Width of the time windows in which an installed head dump is appended.
const INSTALL_WINDOW_MS: i64 = 5 * 60_000;

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(e.to_string()),
    )
}

/// The shard's data, shared by the state machine, its snapshot builders and the readers.
#[derive(Debug)]
pub struct ShardData {
    dir: PathBuf,
    db_opts: DbOptions,
    /// `None` while a snapshot is being installed.
    db: RwLock<Option<Db>>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Series references of this replica's Db (cleared when the Db is replaced).
    cache: Mutex<SeriesCache>,
    /// Serializes snapshot builds and installs.
    snap: tokio::sync::Mutex<()>,
    /// Samples rejected by apply since start.
    rejected: std::sync::atomic::AtomicU64,
    /// Metadata and exemplars of the shard's series (in memory, from extras entries).
    pub extras: crate::extras::ExtrasStore,
    /// When this replica last accepted an append (or heartbeat) from its leader, and the
    /// leader's commit index in it (for reads that accept bounded staleness).
    leader_contact: Mutex<Option<(std::time::Instant, u64)>>,
}

impl ShardData {
    /// Records an append from the leader that this replica accepted, with the leader's commit
    /// index.
    pub fn heard_from_leader(&self, commit: u64) {
        *self.leader_contact.lock() = Some((std::time::Instant::now(), commit));
    }

    /// The leader's commit index of its last accepted append, if that came within `max`.
    pub fn leader_commit_within(&self, max: std::time::Duration) -> Option<u64> {
        let (at, commit) = (*self.leader_contact.lock())?;
        (at.elapsed() <= max).then_some(commit)
    }

    /// The shard's Db, unless a snapshot is being installed.
    pub fn db(&self) -> Option<Db> {
        self.db.read().clone()
    }

    /// Samples rejected by apply since the process started.
    pub fn rejected_samples(&self) -> u64 {
        self.rejected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied.lock().0
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn snap_dir(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// Writes a copy of this replica's data to `target` (created; the admin snapshot of a
    /// cluster node): hard links of its blocks and, unless `skip_head`, its head written as
    /// blocks, without touching the replica (cutting its head would make it differ from the
    /// other replicas). `target` is then a data directory a single node opens.
    pub fn export(&self, target: &Path, skip_head: bool) -> std::io::Result<()> {
        let db = self
            .db()
            .ok_or_else(|| std::io::Error::other("shard data is being replaced"))?;
        // Blocks are immutable; compaction may delete one while we link it: then start over,
        // so the copy never holds a block and the block compacted from it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            if target.exists() {
                std::fs::remove_dir_all(target)?;
            }
            std::fs::create_dir_all(target)?;
            let mut failed = None;
            for b in db.blocks() {
                if let Err(e) = link_dir(&db.dir().join(&b.id), &target.join(&b.id)) {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => break,
                Some(e) if attempt >= 3 => return Err(e),
                Some(_) => {}
            }
        }
        if skip_head || db.head().min_time() == i64::MAX {
            return Ok(());
        }
        // The head, through a scratch Db: appended window by window in time order (as a
        // snapshot install does), then cut into blocks that join the linked ones.
        let mut dumps = Vec::new();
        dump_batches(&db.head().querier(i64::MIN, i64::MAX), |b| {
            dumps.push(b);
            Ok(())
        })?;
        let scratch = target.join("head.tmp");
        let mut opts = self.db_opts.clone();
        opts.wal = false;
        let hdb = Db::open(&scratch, opts).map_err(std::io::Error::other)?;
        let res = append_head_dump(&hdb, &dumps)
            .and_then(|()| hdb.flush_head().map_err(std::io::Error::other));
        hdb.close().map_err(std::io::Error::other)?;
        res?;
        for e in std::fs::read_dir(&scratch)? {
            let e = e?;
            if e.path().join("meta.json").is_file() {
                std::fs::rename(e.path(), target.join(e.file_name()))?;
            }
        }
        std::fs::remove_dir_all(&scratch)?;
        std::fs::File::open(target)?.sync_all()
    }

    /// Closes the Db (shutdown).
    pub fn close(&self) {
        if let Some(db) = self.db.write().take()
            && let Err(e) = db.close()
        {
            tracing::error!(dir = %self.dir.display(), error = %e, "closing shard data");
        }
    }
}

/// The state machine handed to openraft.
#[derive(Debug, Clone)]
pub struct StateMachine {
    data: Arc<ShardData>,
}

impl StateMachine {
    /// Opens the shard's state in `dir` (finishing an interrupted snapshot install).
    pub fn open(dir: &Path, db_opts: DbOptions) -> Result<StateMachine, StorageError> {
        let snap_dir = dir.join("snapshot");
        std::fs::create_dir_all(&snap_dir).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let meta = read_meta(&snap_dir)?;
        let applied = match &meta {
            Some(m) => (m.last_log_id, m.last_membership.clone()),
            None => (None, StoredMembership::default()),
        };
        let data = Arc::new(ShardData {
            dir: dir.to_path_buf(),
            db_opts,
            db: RwLock::new(None),
            applied: Mutex::new(applied),
            cache: Mutex::new(SeriesCache::default()),
            rejected: std::sync::atomic::AtomicU64::new(0),
            snap: tokio::sync::Mutex::new(()),
            extras: crate::extras::ExtrasStore::default(),
            leader_contact: Mutex::new(None),
        });
        if snap_dir.join(REBUILD_MARKER).exists() {
            tracing::warn!(dir = %dir.display(), "finishing an interrupted snapshot install");
            rebuild_from_snapshot(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        } else {
            let db = Db::open(&data.data_dir(), data.db_opts.clone())
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            if meta.is_some() {
                // Without its own log the Db restarts with an empty head: restore the head as of
                // the last snapshot; openraft re-applies the entries after it. The extras too
                // (they are only in memory).
                let parts = read_snapshot(&snap_dir.join(SNAP_FILE), !data.db_opts.wal, None)
                    .map_err(|e| snap_err(ErrorVerb::Read, e))?;
                append_head_dump(&db, &parts.head).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                data.extras.replace(parts.extras);
            }
            *data.db.write() = Some(db);
        }
        Ok(StateMachine { data })
    }

    pub fn data(&self) -> &Arc<ShardData> {
        &self.data
    }
}

fn read_meta(snap_dir: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    match std::fs::read(snap_dir.join(META_FILE)) {
        Ok(b) => decode(&b)
            .map(Some)
            .map_err(|e| snap_err(ErrorVerb::Read, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(snap_err(ErrorVerb::Read, e)),
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Label sets already seen by this replica, by their canonical bytes: applying a batch then
/// skips decoding and validating the labels and the head's series lookup (the series
/// reference is the hint). Like the remote-write series cache of a single node.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    map: std::collections::HashMap<u64, (Labels, Option<tidemark_storage::SeriesRef>)>,
}

/// Entries above which the cache is cleared (bounds memory after churn).
const SERIES_CACHE_MAX: usize = 4_000_000;

fn apply_batch(
    app: &mut dyn tidemark_storage::Appender,
    cache: &mut SeriesCache,
    data: &[u8],
    res: &mut ApplyResult,
) -> Result<(), String> {
    let mut fatal = None;
    batch::for_each_raw(data, |_, lb, samples| {
        if fatal.is_some() {
            return;
        }
        let h = xxhash_rust::xxh3::xxh3_64(lb);
        let mut append = |labels: &Labels, mut r: Option<tidemark_storage::SeriesRef>| {
            for &(t, v) in samples {
                match app.append(r, labels, t, v) {
                    Ok(sr) => {
                        r = Some(sr);
                        res.accepted += 1;
                    }
                    Err(e) if e.is_sample_error() => {
                        res.rejected += 1;
                        if res.first_error.is_none() {
                            res.first_error = Some(format!("{e} (series {labels})"));
                        }
                    }
                    Err(e) => fatal = Some(e.to_string()),
                }
            }
            r
        };
        // A label set seen before: append by its series reference and keep the new one.
        if let Some((labels, r)) = cache.map.get_mut(&h).filter(|(l, _)| l.encoded() == lb) {
            *r = append(labels, *r);
            return;
        }
        let labels = match Labels::from_encoded(lb) {
            Ok(l) => l,
            Err(e) => {
                res.rejected += samples.len() as u64;
                if res.first_error.is_none() {
                    res.first_error = Some(format!("invalid labels: {e}"));
                }
                return;
            }
        };
        let r = append(&labels, None);
        if cache.map.len() >= SERIES_CACHE_MAX {
            cache.map.clear();
        }
        cache.map.insert(h, (labels, r));
    })
    .map_err(|e| e.to_string())?;
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs an admin command on this replica's data. A failure (I/O) is fatal for the replica:
/// going on would leave it different from the others.
fn run_command(db: &Db, cmd: &batch::Command) -> Result<(), StorageError> {
    match cmd {
        batch::Command::Delete {
            matchers,
            min_time,
            max_time,
        } => {
            let sets =
                batch::Command::matcher_sets(matchers).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            db.delete(&sets, *min_time, *max_time)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        batch::Command::CleanTombstones => {
            db.clean_tombstones()
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
    }
    Ok(())
}

/// Appends one entry's batch and commits it. A block cut between append and commit (never
/// expected on a shard: the apply loop is its only writer) rejects the batch with a sample
/// error at commit; the next attempt then rejects those samples one by one at append time.
fn apply_entry(
    db: &Db,
    data: &ShardData,
    index: u64,
    batch: &[u8],
) -> Result<ApplyResult, StorageError> {
    if let Some(extras) = batch::decode_extras(batch) {
        let mut res = ApplyResult::default();
        match extras {
            Ok(e) => data.extras.apply(e),
            // Rejected alike on every replica (validated before it was proposed).
            Err(e) => res.first_error = Some(e.to_string()),
        }
        return Ok(res);
    }
    if let Some(cmd) = batch::decode_command(batch) {
        let mut res = ApplyResult::default();
        match cmd {
            Ok(cmd) => run_command(db, &cmd)?,
            // Rejected alike on every replica (validated before it was proposed).
            Err(e) => res.first_error = Some(e.to_string()),
        }
        return Ok(res);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut res = ApplyResult::default();
        let mut app = db.appender();
        {
            let mut cache = data.cache.lock();
            if let Err(err) = apply_batch(app.as_mut(), &mut cache, batch, &mut res) {
                // A malformed batch is rejected on every replica alike (the batch was validated
                // before it was proposed; this is defense in depth).
                tracing::error!(index, error = %err, "entry not applied");
                res.first_error = Some(err);
            }
        }
        if res.rejected > 0 {
            data.rejected
                .fetch_add(res.rejected, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(index, rejected = res.rejected, first_error = ?res.first_error, "apply: samples rejected");
        }
        match app.commit() {
            Ok(()) => return Ok(res),
            Err(e) if e.is_sample_error() && attempt < 3 => {
                tracing::debug!(index, error = %e, "apply: batch rejected at commit, retrying");
            }
            Err(e) => return Err(sm_err(ErrorVerb::Write, e)),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.data.applied.lock().clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || {
            let db = data
                .db()
                .ok_or_else(|| sm_err(ErrorVerb::Write, "shard data is being replaced"))?;
            // Each entry is appended and committed on its own, so every replica decides about a
            // sample against the same state (everything before its entry), however openraft
            // groups entries into apply calls (it differs between leader and followers, and
            // across restarts).
            let mut out = Vec::with_capacity(entries.len());
            let mut last = None;
            let mut membership = None;
            for e in &entries {
                let mut res = ApplyResult::default();
                match &e.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(b) => {
                        res = apply_entry(&db, &data, e.log_id.index, &b.0)?;
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                    }
                }
                last = Some(e.log_id);
                out.push(res);
            }
            let mut g = data.applied.lock();
            if last.is_some() {
                g.0 = last;
            }
            if let Some(m) = membership {
                g.1 = m;
            }
            Ok(out)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            data: self.data.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.data.snap_dir().join("receiving.tmp");
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let _g = self.data.snap.lock().await;
        // Copy the received bytes to `installing.tmp` (the handle may be the receiving file or,
        // in the conformance suite, another state machine's snapshot).
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let snap_dir = self.data.snap_dir();
        let tmp = snap_dir.join("installing.tmp");
        {
            let mut out = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            tokio::io::copy(&mut *snapshot, &mut out)
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            out.sync_all()
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
        let meta = meta.clone();
        let snapshot_id = meta.snapshot_id.clone();
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            // Order: marker, snapshot file, meta, rebuild, marker removed. A crash anywhere
            // leaves either the old state or a marker that makes the next open rebuild.
            let meta_bytes = encode(&meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            write_atomic(&snap_dir, REBUILD_MARKER, b"")
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            std::fs::rename(&tmp, snap_dir.join(SNAP_FILE))
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            write_atomic(&snap_dir, META_FILE, &meta_bytes)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            rebuild_from_snapshot(&data).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            *data.applied.lock() = (meta.last_log_id, meta.last_membership.clone());
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        tracing::info!(dir = %self.data.dir.display(), snapshot = %snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snap_dir = self.data.snap_dir();
        let Some(meta) = read_meta(&snap_dir)? else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(snap_dir.join(SNAP_FILE))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

/// Replaces `data/` with the content of `snapshot/current.snap`, then removes the marker.
fn rebuild_from_snapshot(data: &ShardData) -> std::io::Result<()> {
    let snap_dir = data.snap_dir();
    write_atomic(&snap_dir, REBUILD_MARKER, b"")?;
    if let Some(db) = data.db.write().take()
        && let Err(e) = db.close()
    {
        tracing::warn!(error = %e, "closing shard data before a snapshot install");
    }
    let data_dir = data.data_dir();
    let _ = std::fs::remove_dir_all(&data_dir);
    let staging = data.dir.join("restore.tmp");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let parts = read_snapshot(&snap_dir.join(SNAP_FILE), true, Some(&staging))?;
    std::fs::create_dir_all(&data_dir)?;
    if let Ok(rd) = std::fs::read_dir(staging.join("blocks")) {
        for b in rd {
            let b = b?;
            std::fs::rename(b.path(), data_dir.join(b.file_name()))?;
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::File::open(&data_dir)?.sync_all()?;
    let db = Db::open(&data_dir, data.db_opts.clone()).map_err(std::io::Error::other)?;
    append_head_dump(&db, &parts.head)?;
    db.sync_log().map_err(std::io::Error::other)?;
    data.extras.replace(parts.extras);
    *data.db.write() = Some(db);
    std::fs::remove_file(snap_dir.join(REBUILD_MARKER))?;
    std::fs::File::open(&snap_dir)?.sync_all()?;
    Ok(())
}

/// Appends a snapshot's head dump to `db` window by window in time order, so the head accepts
/// it as it accepted the original appends (samples below the Db's blocks are rejected: they are
/// in the blocks already).
fn append_head_dump(db: &Db, dumps: &[Vec<u8>]) -> std::io::Result<()> {
    let mut series: Vec<batch::BatchSeries> = Vec::new();
    for d in dumps {
        series.extend(batch::decode(d).map_err(std::io::Error::other)?);
    }
    let (mut lo, hi) = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.0))
        .fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let mut pos = vec![0usize; series.len()];
    while lo <= hi {
        let end = lo.saturating_add(INSTALL_WINDOW_MS);
        let mut app = db.appender();
        for (s, p) in series.iter().zip(pos.iter_mut()) {
            let mut r = None;
            while let Some(&(t, v)) = s.samples.get(*p) {
                if t >= end {
                    break;
                }
                *p += 1;
                match app.append(r, &s.labels, t, v) {
                    Ok(x) => r = Some(x),
                    Err(e) if e.is_sample_error() => {}
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        }
        match app.commit() {
            Ok(()) => {}
            // A block was cut below these samples meanwhile: they are in the block.
            Err(e) if e.is_sample_error() => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        if end == i64::MAX {
            break;
        }
        lo = end;
    }
    Ok(())
}

/// What a snapshot file holds besides its blocks.
#[derive(Debug, Default)]
struct SnapshotParts {
    /// The head dump (write batches; empty unless asked for).
    head: Vec<Vec<u8>>,
    /// The replica's metadata and exemplars (empty in a snapshot without them).
    extras: batch::Extras,
}

/// Reads a snapshot file: its head dump when `head`, its extras, and its block files unpacked
/// into `blocks_into` (as `blocks/<id>/...`) when given. An extras member that does not decode
/// is logged and skipped: metadata and exemplars are best effort (docs/cluster.md), and a
/// replica must not refuse to start over them.
fn read_snapshot(
    snap: &Path,
    head: bool,
    blocks_into: Option<&Path>,
) -> std::io::Result<SnapshotParts> {
    let mut out = SnapshotParts::default();
    let f = std::fs::File::open(snap)?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries()? {
        let mut e = e?;
        let name = e.path()?.to_string_lossy().into_owned();
        if name.starts_with("head-") {
            if head {
                let mut b = Vec::new();
                e.read_to_end(&mut b)?;
                out.head.push(b);
            }
        } else if name == EXTRAS_MEMBER {
            let mut b = Vec::new();
            e.read_to_end(&mut b)?;
            match batch::decode_extras(&b) {
                Some(Ok(x)) => out.extras = x,
                Some(Err(err)) => {
                    tracing::error!(snapshot = %snap.display(), error = %err, "snapshot extras do not decode; skipped");
                }
                None => {
                    tracing::error!(snapshot = %snap.display(), "snapshot extras member is not an extras payload; skipped");
                }
            }
        } else if let Some(dir) = blocks_into
            && name.starts_with("blocks/")
            && !name.contains("..")
        {
            e.unpack_in(dir)?;
        }
    }
    Ok(out)
}

/// Builds a snapshot of the shard (see the module documentation).
#[derive(Debug)]
pub struct SnapshotBuilder {
    data: Arc<ShardData>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _g = self.data.snap.lock().await;
        let data = self.data.clone();
        let meta = tokio::task::spawn_blocking(move || build(&data))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        let f = tokio::fs::File::open(self.data.snap_dir().join(SNAP_FILE))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

fn build(data: &ShardData) -> Result<SnapshotMeta, StorageError> {
    let e = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
    // Everything applied up to here is in the Db; the snapshot may hold a little more (entries
    // applied while it is built), which a follower re-applies harmlessly.
    let (last_log_id, last_membership) = data.applied.lock().clone();
    let db = data
        .db()
        .ok_or_else(|| snap_err(ErrorVerb::Write, "shard data is being replaced"))?;
    db.sync_log().map_err(|x| snap_err(ErrorVerb::Write, x))?;
    let snap_dir = data.snap_dir();
    let tmp = snap_dir.join("building.tmp");
    let f = std::fs::File::create(&tmp).map_err(e)?;
    let mut ar = tar::Builder::new(std::io::BufWriter::new(f));
    ar.follow_symlinks(false);
    // Blocks are immutable; compaction may delete one while we read it: then list again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut failed = None;
        let mut names = Vec::new();
        for b in db.blocks() {
            let dir = db.dir().join(&b.id);
            let mut files = Vec::new();
            collect_files(&dir, &mut files).map_err(e)?;
            for p in files {
                let rel = p
                    .strip_prefix(db.dir())
                    .map_err(|x| e(std::io::Error::other(x)))?;
                names.push((p.clone(), Path::new("blocks").join(rel)));
            }
        }
        for (src, name) in &names {
            match std::fs::File::open(src) {
                Ok(mut f) => ar.append_file(name, &mut f).map_err(e)?,
                Err(x) => {
                    failed = Some(x);
                    break;
                }
            }
        }
        match failed {
            None => break,
            Some(x) if attempt >= 3 => return Err(e(x)),
            Some(_) => {
                // Start over with a fresh archive.
                let f = std::fs::File::create(&tmp).map_err(e)?;
                ar = tar::Builder::new(std::io::BufWriter::new(f));
            }
        }
    }
    // The head as write batches.
    let hmin = db.head().min_time();
    if hmin != i64::MAX {
        let q = db
            .querier(hmin, i64::MAX)
            .map_err(|x| snap_err(ErrorVerb::Read, x))?;
        let mut n = 0usize;
        dump_batches(&*q, |b| {
            append_bytes(&mut ar, &format!("head-{n:06}.batch"), &b)?;
            n += 1;
            Ok(())
        })
        .map_err(e)?;
    }
    // Metadata and exemplars (at least everything applied up to `last_log_id`; what came
    // after is re-applied harmlessly: metadata is replaced, an exact repeat of a series'
    // latest exemplar is ignored).
    let extras = data.extras.to_extras();
    if !extras.is_empty() {
        append_bytes(&mut ar, EXTRAS_MEMBER, &extras.encode()).map_err(e)?;
    }
    let w = ar.into_inner().map_err(e)?;
    let f = w.into_inner().map_err(|x| e(x.into_error()))?;
    f.sync_all().map_err(e)?;
    drop(f);
    let snapshot_id = match last_log_id {
        Some(l) => format!(
            "{}-{}-{}",
            l.leader_id.term,
            l.index,
            tidemark_model::time::now_millis()
        ),
        None => format!("none-{}", tidemark_model::time::now_millis()),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    };
    let meta_bytes = encode(&meta).map_err(|x| snap_err(ErrorVerb::Write, x))?;
    std::fs::rename(&tmp, snap_dir.join(SNAP_FILE)).map_err(e)?;
    write_atomic(&snap_dir, META_FILE, &meta_bytes).map_err(e)?;
    tracing::info!(dir = %data.dir.display(), snapshot = %meta.snapshot_id, "snapshot built");
    Ok(meta)
}

/// Every series `q` holds (`__name__=~".+"`) with all its samples, as write batches of at most
/// [`DUMP_SERIES_PER_BATCH`] series, each handed to `emit` as soon as it is full (a head dump:
/// the admin snapshot's and the Raft snapshot's).
fn dump_batches(
    q: &dyn tidemark_storage::Querier,
    mut emit: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let all = Matcher::new(MatchType::Regex, "__name__", ".+").map_err(std::io::Error::other)?;
    let mut b = BatchBuilder::new();
    let mut samples = Vec::new();
    for s in q.select(false, None, &[all]) {
        let s = s.map_err(std::io::Error::other)?;
        samples.clear();
        let mut it = s.iter();
        while it.next() {
            let x = it.at();
            samples.push((x.t, x.v));
        }
        if let Some(e) = it.err() {
            return Err(std::io::Error::other(e.to_string()));
        }
        b.add(s.labels(), &samples);
        if b.num_series() as usize >= DUMP_SERIES_PER_BATCH {
            emit(std::mem::take(&mut b).finish())?;
        }
    }
    if !b.is_empty() {
        emit(b.finish())?;
    }
    Ok(())
}

fn append_bytes<W: Write>(ar: &mut tar::Builder<W>, name: &str, b: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(b.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    ar.append_data(&mut h, name, b)
}

/// Hard links (or, across file systems, copies) the files of `src` into `dst`. Also the
/// single-node snapshot endpoint's.
pub fn link_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if s.is_dir() {
            link_dir(&s, &d)?;
        } else if std::fs::hard_link(&s, &d).is_err() {
            std::fs::copy(&s, &d)?;
        }
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::Extras;
    use crate::types::Batch;
    use openraft::CommittedLeaderId;
    use tidemark_model::{Exemplar, Metadata, MetricType};

    fn opts() -> DbOptions {
        DbOptions {
            background_maintenance: false,
            ..DbOptions::default()
        }
    }

    fn entry(index: u64, payload: Vec<u8>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(payload.into())),
        }
    }

    fn series() -> Labels {
        Labels::from_pairs([
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", "a:9090"),
        ])
    }

    fn extras() -> Extras {
        let ex = |t: i64, trace: &str| Exemplar {
            labels: Labels::from_pairs([("trace_id", trace)]),
            value: 1.5,
            ts: Some(t),
        };
        Extras {
            metadata: vec![
                (
                    series(),
                    Metadata {
                        kind: MetricType::Counter,
                        help: "Requests.".into(),
                        unit: String::new(),
                    },
                ),
                // Per-family metadata (remote write): no target.
                (
                    Labels::from_pairs([("__name__", "queue_length")]),
                    Metadata {
                        kind: MetricType::Gauge,
                        help: "Queued items.".into(),
                        unit: "items".into(),
                    },
                ),
            ],
            exemplars: vec![(series(), ex(1_000, "t1")), (series(), ex(2_000, "t2"))],
        }
    }

    /// (family, target, type, help, unit) of every metadata entry, sorted.
    fn metadata_of(sm: &StateMachine) -> Vec<(String, Labels, MetricType, String, String)> {
        let mut v: Vec<_> = sm
            .data()
            .extras
            .metadata()
            .into_iter()
            .map(|(n, t, m)| (n, t, m.kind, m.help, m.unit))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    fn exemplars_of(sm: &StateMachine) -> Vec<(Labels, Option<i64>, Labels)> {
        let all = vec![vec![
            Matcher::new(MatchType::Regex, "__name__", ".+").unwrap(),
        ]];
        sm.data()
            .extras
            .exemplars(&all, i64::MIN, i64::MAX)
            .into_iter()
            .map(|(l, e)| (l, e.ts, e.labels))
            .collect()
    }

    fn samples_of(sm: &StateMachine) -> Vec<(i64, f64)> {
        let db = sm.data().db().unwrap();
        let q = db.querier(i64::MIN, i64::MAX).unwrap();
        let m = Matcher::new(MatchType::Equal, "__name__", "http_requests_total").unwrap();
        let mut out = Vec::new();
        for s in q.select(true, None, &[m]) {
            let s = s.unwrap();
            let mut it = s.iter();
            while it.next() {
                let x = it.at();
                out.push((x.t, x.v));
            }
        }
        out
    }

    fn assert_holds_extras(sm: &StateMachine, what: &str) {
        let target = Labels::from_pairs([("job", "api"), ("instance", "a:9090")]);
        assert_eq!(
            metadata_of(sm),
            vec![
                (
                    "http_requests_total".to_string(),
                    target,
                    MetricType::Counter,
                    "Requests.".to_string(),
                    String::new()
                ),
                (
                    "queue_length".to_string(),
                    Labels::default(),
                    MetricType::Gauge,
                    "Queued items.".to_string(),
                    "items".to_string()
                ),
            ],
            "{what}: metadata"
        );
        assert_eq!(
            exemplars_of(sm),
            vec![
                (
                    series(),
                    Some(1_000),
                    Labels::from_pairs([("trace_id", "t1")])
                ),
                (
                    series(),
                    Some(2_000),
                    Labels::from_pairs([("trace_id", "t2")])
                ),
            ],
            "{what}: exemplars"
        );
        assert_eq!(
            samples_of(sm),
            vec![(1_000, 1.0), (2_000, 2.0)],
            "{what}: samples"
        );
    }

    /// A state machine that applied two samples and `extras()`.
    async fn written(dir: &Path) -> StateMachine {
        let mut sm = StateMachine::open(dir, opts()).unwrap();
        let mut b = BatchBuilder::new();
        b.add(&series(), &[(1_000, 1.0), (2_000, 2.0)]);
        let res = sm
            .apply(vec![entry(1, b.finish()), entry(2, extras().encode())])
            .await
            .unwrap();
        assert_eq!(res[0].accepted, 2);
        sm
    }

    /// [`written`] and a snapshot of it.
    async fn written_and_snapshot(dir: &Path) -> (StateMachine, Snapshot<TypeConfig>) {
        let mut sm = written(dir).await;
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (sm, snap)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_carries_metadata_and_exemplars_to_an_installed_and_a_restarted_replica() {
        let d1 = tempfile::tempdir().unwrap();
        let (sm, snap) = written_and_snapshot(d1.path()).await;

        // Installed into a fresh replica.
        let d2 = tempfile::tempdir().unwrap();
        let mut fresh = StateMachine::open(d2.path(), opts()).unwrap();
        assert!(fresh.data().extras.metadata().is_empty());
        fresh
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_holds_extras(&fresh, "installed");
        assert_eq!(
            fresh.applied_state().await.unwrap().0,
            Some(entry(2, Vec::new()).log_id)
        );

        // That replica restarted, and the one that built the snapshot restarted: both start
        // from the snapshot (openraft would re-apply the entries after it).
        fresh.data().close();
        drop(fresh);
        let reopened = StateMachine::open(d2.path(), opts()).unwrap();
        assert_holds_extras(&reopened, "installed, then restarted");
        sm.data().close();
        drop(sm);
        let reopened = StateMachine::open(d1.path(), opts()).unwrap();
        assert_holds_extras(&reopened, "restarted after building the snapshot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_without_extras_still_installs_and_replaces_them() {
        // A snapshot as written before extras were in snapshots: the same tar without the
        // extras member.
        let d1 = tempfile::tempdir().unwrap();
        let (_sm, snap) = written_and_snapshot(d1.path()).await;
        let old = d1.path().join("old.snap");
        {
            let mut ar = tar::Archive::new(
                std::fs::File::open(d1.path().join("snapshot").join(SNAP_FILE)).unwrap(),
            );
            let mut out = tar::Builder::new(std::fs::File::create(&old).unwrap());
            let mut members = Vec::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                members.push(name.clone());
                if name == EXTRAS_MEMBER {
                    continue;
                }
                let mut b = Vec::new();
                e.read_to_end(&mut b).unwrap();
                append_bytes(&mut out, &name, &b).unwrap();
            }
            out.finish().unwrap();
            assert!(members.iter().any(|m| m == EXTRAS_MEMBER), "{members:?}");
        }

        // Installed into a replica that holds other extras: the snapshot's state (none) wins.
        let d2 = tempfile::tempdir().unwrap();
        let mut other = written(d2.path()).await;
        assert_eq!(exemplars_of(&other).len(), 2);
        let f = tokio::fs::File::open(&old).await.unwrap();
        other
            .install_snapshot(&snap.meta, Box::new(f))
            .await
            .unwrap();
        assert!(other.data().extras.metadata().is_empty());
        assert!(exemplars_of(&other).is_empty());
        assert_eq!(samples_of(&other), vec![(1_000, 1.0), (2_000, 2.0)]);
        other.data().close();
        drop(other);
        let reopened = StateMachine::open(d2.path(), opts()).unwrap();
        assert!(reopened.data().extras.metadata().is_empty());
        assert_eq!(samples_of(&reopened), vec![(1_000, 1.0), (2_000, 2.0)]);
    }

    #[test]
    fn undecodable_snapshot_extras_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.snap");
        {
            let mut ar = tar::Builder::new(std::fs::File::create(&p).unwrap());
            let mut bad = extras().encode();
            bad.truncate(bad.len() - 3);
            append_bytes(&mut ar, EXTRAS_MEMBER, &bad).unwrap();
            append_bytes(&mut ar, "head-000000.batch", &BatchBuilder::new().finish()).unwrap();
            ar.finish().unwrap();
        }
        let parts = read_snapshot(&p, true, None).unwrap();
        assert!(parts.extras.is_empty());
        assert_eq!(parts.head.len(), 1);
    }
}
