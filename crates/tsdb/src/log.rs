//! The write-ahead log: a segmented, CRC-checked log of opaque byte records addressed by a
//! monotonically increasing `u64` index.
//!
//! The engine encodes its own records (series, samples) on top of it, and the cluster uses the
//! same log as a Raft log store (payload = raft entry). Byte layouts and the crash-safety argument
//! of every operation are in `docs/format/log.md`.
//!
//! Directory layout:
//! ```text
//! dir/LOCK                          advisory lock (one writer process)
//! dir/00000000000000000000          segment whose first record has index 0
//! dir/00000000000000001234          segment whose first record has index 1234
//! dir/checkpoint.00000000000000001000/00000000000000000000   checkpoint segments
//! dir/purged                        purge point (records <= it are gone)
//! dir/meta                          opaque metadata (raft vote / committed)
//! dir/corrupted/                    data moved aside by recovery
//! ```

mod format;
mod fsutil;
mod reader;
mod recover;
mod segment;
mod sync;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use format::{MAX_PAYLOAD, SEGMENT_HEADER_LEN, SegmentKind};
pub use fsutil::failpoint;
use fsutil::{io_err, read_small_file, sync_dir, write_small_file};
use reader::ReaderSegment;
pub use reader::{LogReader, Replay};
pub use recover::{CorruptionReport, OpenReport, TornTail};
use recover::{ckpt_dir_name, remove_path};
use segment::{Segment, create_segment};
pub use sync::LogSyncer;

/// Default maximum size of a segment file: 128 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 20;

const META_FILE: &str = "meta";
const META_MAGIC: &[u8; 8] = b"TIDEMETA";
const PURGED_FILE: &str = "purged";
const PURGED_MAGIC: &[u8; 8] = b"TIDEPURG";
const CORRUPTED_DIR: &str = "corrupted";
const CHECKPOINT_PREFIX: &str = "checkpoint.";
const TMP_SUFFIX: &str = ".tmp";

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fsync before `append`/`append_batch` returns, i.e. before the write is acknowledged.
    #[default]
    Always,
    /// fsync on an append when at least this long has passed since the last fsync (and on
    /// [`Log::sync`] and drop). A crash may lose the records of the last interval.
    Interval(Duration),
    /// Never fsync appended records (the OS writes them back); segments are still fsynced when
    /// they are sealed, and truncation, purge and checkpoints are always durable.
    Never,
}

/// Options of [`Log::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment is started when a batch would take the current one past this size (a batch
    /// larger than this gets a segment of its own). Default [`DEFAULT_SEGMENT_SIZE`].
    pub segment_size: u64,
    /// Default [`SyncPolicy::Always`].
    pub sync: SyncPolicy,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            sync: SyncPolicy::Always,
        }
    }
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk failed a check.
    #[error("log corruption in {segment} at byte offset {offset}: {reason}")]
    Corruption {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The record was removed by `purge_upto` or a checkpoint.
    #[error("log index {index} was purged (records up to {purged_upto} are gone)")]
    Purged { index: u64, purged_upto: u64 },
    /// The index was never written (or was truncated away).
    #[error("log index {index} is out of range: the log holds [{first}, {next})")]
    OutOfRange { index: u64, first: u64, next: u64 },
    #[error("log record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    /// `truncate_from(index)` / `truncate_after(index - 1)` would remove purged records.
    #[error("cannot truncate the log from index {index}: records up to {purged_upto} were purged")]
    BelowPurgePoint { index: u64, purged_upto: u64 },
    #[error("checkpoint up to {upto} is not newer than the existing checkpoint up to {current}")]
    StaleCheckpoint { upto: u64, current: u64 },
    #[error("log directory {dir} is locked by another process")]
    Locked { dir: PathBuf },
    /// A write or fsync failed; the state of the file is unknown until the log is reopened.
    #[error("log is unusable after a failed write or fsync ({reason}); reopen it")]
    Poisoned { reason: String },
    /// A test's failure point was reached (see [`failpoint`]).
    #[error("injected failure at {0}")]
    InjectedFailure(&'static str),
}

#[derive(Debug)]
struct Checkpoint {
    upto: u64,
    segments: Vec<Segment>,
}

/// The log. Not internally synchronized: the engine wraps it in a mutex; readers
/// ([`LogReader`]) are independent of it once created.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    opts: LogOptions,
    _lock: File,
    /// Never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// Index the next appended record gets.
    next: u64,
    purged: Option<u64>,
    /// Opaque bytes saved with the purge point (see [`Log::purge_upto_tagged`]).
    purge_tag: Vec<u8>,
    checkpoint: Option<Checkpoint>,
    buf: Vec<u8>,
    last_sync: Instant,
    /// Durability state shared with [`LogSyncer`]s.
    shared: Arc<sync::Shared>,
}

impl Log {
    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> LogOptions {
        self.opts
    }

    fn first_readable(&self) -> u64 {
        let seg_first = self.segments.first().map_or(self.next, |s| s.first);
        match self.purged {
            Some(p) => seg_first.max(p + 1),
            None => seg_first,
        }
    }

    /// Index of the first readable record, `None` when the log holds no record.
    pub fn first_index(&self) -> Option<u64> {
        let f = self.first_readable();
        (f < self.next).then_some(f)
    }

    /// Index of the last record, `None` when the log holds no record.
    pub fn last_index(&self) -> Option<u64> {
        let f = self.first_readable();
        (f < self.next).then(|| self.next - 1)
    }

    /// Index the next appended record gets.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Records up to this index were purged (by `purge_upto` or a checkpoint).
    pub fn purged_upto(&self) -> Option<u64> {
        self.purged
    }

    /// The tag saved by the last [`Log::purge_upto_tagged`] (empty after a plain purge or a
    /// checkpoint).
    pub fn purge_tag(&self) -> &[u8] {
        &self.purge_tag
    }

    /// `upto` of the current checkpoint.
    pub fn checkpoint_upto(&self) -> Option<u64> {
        self.checkpoint.as_ref().map(|c| c.upto)
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        self.shared.check_poisoned()
    }

    /// Tells the shared durability state that the active segment changed.
    fn publish_active(&self, synced: Option<u64>) {
        let active = &self.segments[self.segments.len() - 1];
        self.shared.reset(
            Arc::clone(&active.file),
            active.path.clone(),
            self.next,
            synced,
        );
    }

    /// A handle that makes appended records durable without holding the log: group commit.
    /// Open the log with [`SyncPolicy::Never`], append under the engine's lock, release it, and
    /// call [`LogSyncer::sync_upto`] with the batch's last index before acknowledging. Callers
    /// that wait while another fsync runs usually find their records covered by it.
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Appends one record and returns its index.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        Ok(*self.append_batch(&[payload])?.start())
    }

    /// Appends records with one write (and at most one fsync, per the sync policy); returns
    /// their indexes. A batch never spans two segments. An empty batch writes nothing and
    /// returns the empty range `next + 1..=next`.
    pub fn append_batch(
        &mut self,
        payloads: &[&[u8]],
    ) -> Result<std::ops::RangeInclusive<u64>, LogError> {
        self.check_poisoned()?;
        let first = self.next;
        if payloads.is_empty() {
            #[allow(clippy::reversed_empty_ranges)]
            return Ok(first + 1..=first);
        }
        let mut total = 0usize;
        for p in payloads {
            if p.len() > MAX_PAYLOAD {
                return Err(LogError::RecordTooLarge {
                    len: p.len(),
                    max: MAX_PAYLOAD,
                });
            }
            total += format::framed_len(p.len());
        }
        let active = &self.segments[self.segments.len() - 1];
        if active.count > 0 && active.size + total as u64 > self.opts.segment_size {
            self.roll()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(total);
        for (i, p) in payloads.iter().enumerate() {
            format::encode_record(&mut buf, first + i as u64, p);
        }
        let result = self.write_and_sync(&buf, payloads, first + payloads.len() as u64);
        // Keep a modest buffer around for the next batch.
        if buf.capacity() <= 4 << 20 {
            self.buf = buf;
        }
        result?;
        let last = first + payloads.len() as u64 - 1;
        self.next = last + 1;
        Ok(first..=last)
    }

    fn write_and_sync(
        &mut self,
        buf: &[u8],
        payloads: &[&[u8]],
        new_next: u64,
    ) -> Result<(), LogError> {
        let n = self.segments.len();
        let seg = &mut self.segments[n - 1];
        let at = seg.size;
        if let Err(e) = seg.file.write_all_at(buf, at) {
            // Undo a partial write; if even that fails the file state is unknown.
            let path = seg.path.clone();
            if let Err(e2) = seg.file.set_len(at) {
                self.shared
                    .poison(format!("write failed ({e}), truncation failed ({e2})"));
            }
            return Err(LogError::Io { path, source: e });
        }
        for p in payloads {
            seg.push(format::framed_len(p.len()) as u64);
        }
        self.shared.set_written(new_next);
        match self.opts.sync {
            SyncPolicy::Always => self.sync(),
            SyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    /// fsyncs the active segment if it holds records not yet durable.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.shared.sync(None)?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment (fsync) and starts a new one at `next`.
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let seg = create_segment(&self.dir, SegmentKind::Log, self.next)?;
        self.segments.push(seg);
        self.publish_active(Some(self.next));
        Ok(())
    }

    fn check_readable(&self, index: u64) -> Result<(), LogError> {
        if let Some(p) = self.purged
            && index <= p
        {
            return Err(LogError::Purged {
                index,
                purged_upto: p,
            });
        }
        let first = self.first_readable();
        if index < first || index > self.next {
            return Err(LogError::OutOfRange {
                index,
                first,
                next: self.next,
            });
        }
        Ok(())
    }

    /// Position of the segment holding `index` (`index` may equal `next`: the active segment).
    fn segment_of(&self, index: u64) -> usize {
        self.segments
            .partition_point(|s| s.first <= index)
            .saturating_sub(1)
    }

    /// Reads one record.
    pub fn read(&self, index: u64) -> Result<Vec<u8>, LogError> {
        self.check_readable(index)?;
        if index == self.next {
            return Err(LogError::OutOfRange {
                index,
                first: self.first_readable(),
                next: self.next,
            });
        }
        let seg = &self.segments[self.segment_of(index)];
        let off = seg.offset_of(index)?;
        seg.read_at(index, off)
    }

    /// Reads the records `[start, end)`.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1 << 16) as usize);
        if start >= end {
            return Ok(out);
        }
        if end > self.next {
            return Err(LogError::OutOfRange {
                index: end - 1,
                first: self.first_readable(),
                next: self.next,
            });
        }
        for r in self.reader_from(start)?.take((end - start) as usize) {
            out.push(r?);
        }
        Ok(out)
    }

    /// A reader of every record from `index` to the current end. The reader is independent of
    /// the log (it holds its own handles): records appended later are not seen, and a reader
    /// racing with `truncate_after` may see either version of the truncated records.
    pub fn reader_from(&self, index: u64) -> Result<LogReader, LogError> {
        self.check_readable(index)?;
        let mut segs = VecDeque::new();
        if index < self.next {
            let k = self.segment_of(index);
            for (i, s) in self.segments[k..].iter().enumerate() {
                let (start_index, start_off) = if i == 0 {
                    (index, s.offset_of(index)?)
                } else {
                    (s.first, SEGMENT_HEADER_LEN as u64)
                };
                if s.count == 0 {
                    continue;
                }
                segs.push_back(ReaderSegment {
                    path: s.path.clone(),
                    file: Arc::clone(&s.file),
                    start_index,
                    start_offset: start_off,
                    end_offset: s.size,
                });
            }
        }
        Ok(LogReader {
            segs,
            cur: None,
            next: index,
            end: self.next,
            fixed_index: None,
            failed: false,
        })
    }

    /// Everything the engine replays on start: the checkpoint's records (each with the
    /// checkpoint's `upto` as index) and then the log's records after `upto`.
    pub fn replay(&self) -> Result<Replay, LogError> {
        let checkpoint = self.checkpoint.as_ref().map(|c| {
            let segs = c
                .segments
                .iter()
                .filter(|s| s.count > 0)
                .map(|s| ReaderSegment {
                    path: s.path.clone(),
                    file: Arc::clone(&s.file),
                    start_index: s.first,
                    start_offset: SEGMENT_HEADER_LEN as u64,
                    end_offset: s.size,
                })
                .collect();
            LogReader {
                segs,
                cur: None,
                next: 0,
                end: c.segments.last().map_or(0, Segment::end),
                fixed_index: Some(c.upto),
                failed: false,
            }
        });
        let from = self.first_readable();
        let log = self.reader_from(from)?;
        Ok(Replay {
            checkpoint_upto: self.checkpoint.as_ref().map(|c| c.upto),
            checkpoint,
            log,
        })
    }

    /// Drops every record with an index greater than `index` (Raft conflict resolution). See
    /// [`Log::truncate_from`].
    pub fn truncate_after(&mut self, index: u64) -> Result<(), LogError> {
        self.truncate_from(index.saturating_add(1))
    }

    /// Drops every record with an index `>= cut` (openraft's `truncate(log_id)`); the next
    /// append gets `cut`. Later segments are removed last-first (each removal made durable before
    /// the next), then the segment holding `cut` is cut and fsynced: a crash at any step leaves a
    /// prefix of the old log that is at least as long as the requested one.
    pub fn truncate_from(&mut self, cut: u64) -> Result<(), LogError> {
        self.check_poisoned()?;
        if cut >= self.next {
            return Ok(());
        }
        if let Some(p) = self.purged
            && cut <= p
        {
            return Err(LogError::BelowPurgePoint {
                index: cut,
                purged_upto: p,
            });
        }
        let first_seg = self.segments.first().map_or(self.next, |s| s.first);
        if cut < first_seg {
            return Err(LogError::OutOfRange {
                index: cut,
                first: first_seg,
                next: self.next,
            });
        }
        let k = self.segment_of(cut);
        while self.segments.len() > k + 1 {
            let Some(seg) = self.segments.pop() else {
                break;
            };
            self.next = seg.first;
            self.publish_active(None);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            sync_dir(&self.dir)?;
            failpoint::hit("truncate.after_unlink")?;
        }
        let seg = &mut self.segments[k];
        let off = seg.offset_of(cut)?;
        failpoint::hit("truncate.before_cut")?;
        if let Err(e) = seg.file.set_len(off).and_then(|()| seg.file.sync_all()) {
            let path = seg.path.clone();
            self.shared
                .poison(format!("truncation of {} failed: {e}", path.display()));
            return Err(LogError::Io { path, source: e });
        }
        seg.count = cut - seg.first;
        seg.size = off;
        seg.sparse
            .truncate(seg.count.div_ceil(segment::SPARSE_EVERY) as usize);
        self.next = cut;
        self.publish_active(Some(cut));
        Ok(())
    }

    /// Drops the records up to `index`: the purge point is recorded durably first, then every
    /// segment holding only purged records is deleted (oldest first). Reads of purged indexes
    /// fail with [`LogError::Purged`]. Purging beyond the last record empties the log and the
    /// next append gets `index + 1` (Raft: a snapshot was installed).
    pub fn purge_upto(&mut self, index: u64) -> Result<(), LogError> {
        self.purge_upto_tagged(index, &[])
    }

    /// [`Log::purge_upto`] that saves `tag` atomically with the purge point (Raft: the purged
    /// entry's log id, which `get_log_state` must report); read it back with
    /// [`Log::purge_tag`]. A purge to an index not above the current purge point changes
    /// nothing, the tag included.
    pub fn purge_upto_tagged(&mut self, index: u64, tag: &[u8]) -> Result<(), LogError> {
        self.check_poisoned()?;
        if index >= i64::MAX as u64 {
            return Err(LogError::OutOfRange {
                index,
                first: self.first_readable(),
                next: self.next,
            });
        }
        if self.purged.is_some_and(|p| p >= index) {
            return Ok(());
        }
        let mut marker = index.to_le_bytes().to_vec();
        marker.extend_from_slice(tag);
        write_small_file(&self.dir, PURGED_FILE, PURGED_MAGIC, &marker)?;
        self.purged = Some(index);
        self.purge_tag = tag.to_vec();
        failpoint::hit("purge.after_marker")?;
        if index >= self.next {
            self.sync()?;
            let seg = create_segment(&self.dir, SegmentKind::Log, index + 1)?;
            self.segments.push(seg);
            self.next = index + 1;
            self.publish_active(Some(self.next));
        }
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].end() <= index + 1 {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed += 1;
            if removed == 1 {
                failpoint::hit("purge.after_unlink")?;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Writes a checkpoint holding `records` (what the engine still needs from the records up to
    /// `upto`) and then purges the log up to `upto`. The checkpoint is written to
    /// `checkpoint.<upto>.tmp`, fsynced, and renamed into place before anything is purged.
    pub fn write_checkpoint(
        &mut self,
        upto: u64,
        records: &mut dyn Iterator<Item = Vec<u8>>,
    ) -> Result<(), LogError> {
        self.check_poisoned()?;
        if let Some(c) = &self.checkpoint
            && upto <= c.upto
        {
            return Err(LogError::StaleCheckpoint {
                upto,
                current: c.upto,
            });
        }
        let name = ckpt_dir_name(upto);
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let dst = self.dir.join(&name);
        remove_path(&tmp)?;
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let mut segments = vec![create_segment(&tmp, SegmentKind::Checkpoint, 0)?];
        let mut buf = Vec::new();
        let flush = |seg: &mut Segment, buf: &mut Vec<u8>| -> Result<(), LogError> {
            seg.file
                .write_all_at(buf, seg.size - buf.len() as u64)
                .map_err(io_err(&seg.path))?;
            buf.clear();
            Ok(())
        };
        for (next, rec) in records.enumerate() {
            let next = next as u64;
            if rec.len() > MAX_PAYLOAD {
                return Err(LogError::RecordTooLarge {
                    len: rec.len(),
                    max: MAX_PAYLOAD,
                });
            }
            let framed = format::framed_len(rec.len()) as u64;
            let n = segments.len();
            let seg = &mut segments[n - 1];
            if seg.count > 0 && seg.size + framed > self.opts.segment_size {
                flush(seg, &mut buf)?;
                seg.file.sync_data().map_err(io_err(&seg.path))?;
                segments.push(create_segment(&tmp, SegmentKind::Checkpoint, next)?);
            }
            let n = segments.len();
            let seg = &mut segments[n - 1];
            format::encode_record(&mut buf, next, &rec);
            seg.push(framed);
            if buf.len() >= 1 << 20 {
                flush(seg, &mut buf)?;
            }
        }
        let n = segments.len();
        let seg = &mut segments[n - 1];
        flush(seg, &mut buf)?;
        seg.file.sync_data().map_err(io_err(&seg.path))?;
        sync_dir(&tmp)?;
        failpoint::hit("checkpoint.before_rename")?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(&self.dir)?;
        for s in &mut segments {
            s.path = dst.join(s.path.file_name().unwrap_or_default());
        }
        let old = self.checkpoint.replace(Checkpoint { upto, segments });
        failpoint::hit("checkpoint.after_rename")?;
        self.purge_upto(upto)?;
        if let Some(old) = old {
            let p = self.dir.join(ckpt_dir_name(old.upto));
            remove_path(&p)?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Saves a small metadata blob atomically (temp file, fsync, rename, fsync directory).
    pub fn save_meta(&self, bytes: &[u8]) -> Result<(), LogError> {
        write_small_file(&self.dir, META_FILE, META_MAGIC, bytes)
    }

    /// Loads the blob of the last [`Log::save_meta`], `None` if none was saved.
    pub fn load_meta(&self) -> Result<Option<Vec<u8>>, LogError> {
        read_small_file(&self.dir.join(META_FILE), META_MAGIC)
    }

    /// Bytes on disk: segments plus the checkpoint.
    pub fn size_bytes(&self) -> u64 {
        let log: u64 = self.segments.iter().map(|s| s.size).sum();
        let ck: u64 = self
            .checkpoint
            .as_ref()
            .map_or(0, |c| c.segments.iter().map(|s| s.size).sum());
        log + ck
    }
}

/// What [`inspect_segment`] found in the bytes of one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInspection {
    /// Index of the first record (0 for a checkpoint segment); `None` if the header is bad.
    pub first_index: Option<u64>,
    /// The header says this is a checkpoint segment.
    pub checkpoint: bool,
    /// Valid records: index and the payload's byte range in the input.
    pub records: Vec<(u64, std::ops::Range<usize>)>,
    /// Bytes up to the end of the last valid record.
    pub valid_len: usize,
    /// Where and why decoding stopped before the end of the input.
    pub error: Option<(u64, String)>,
}

/// Decodes the bytes of one segment file (header and records) without any I/O: the entry point
/// of the `log_read` fuzz target, and handy for debugging tools.
pub fn inspect_segment(data: &[u8]) -> SegmentInspection {
    let mut out = SegmentInspection {
        first_index: None,
        checkpoint: false,
        records: Vec::new(),
        valid_len: 0,
        error: None,
    };
    let header = match format::decode_segment_header(data) {
        Ok(h) => h,
        Err(reason) => {
            out.error = Some((0, reason));
            return out;
        }
    };
    out.first_index = Some(header.first_index);
    out.checkpoint = header.kind == SegmentKind::Checkpoint;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut index = header.first_index;
    while pos < data.len() {
        match format::decode_record(&data[pos..], index) {
            format::Decoded::Record { len } => {
                let start = pos + format::RECORD_HEADER_LEN;
                out.records.push((index, start..start + len));
                pos = start + len;
                index = index.wrapping_add(1);
            }
            format::Decoded::Incomplete { needed } => {
                out.error = Some((
                    pos as u64,
                    format!(
                        "record {index}: expected {needed} bytes, got {}",
                        data.len() - pos
                    ),
                ));
                break;
            }
            format::Decoded::Invalid { reason, .. } => {
                out.error = Some((pos as u64, reason));
                break;
            }
        }
    }
    out.valid_len = pos;
    out
}

impl Drop for Log {
    fn drop(&mut self) {
        if self.shared.has_unsynced()
            && !self.shared.is_poisoned()
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "log: fsync on close failed");
        }
    }
}
