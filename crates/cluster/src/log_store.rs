//! openraft's log store over the engine's own log ([`tidemark_tsdb::log::Log`]): the Raft log of a
//! shard *is* a tsdb log (one implementation). Entry `i` is record `i` (MessagePack of
//! [`Entry`]); the vote lives in the log's metadata file; the last purged log id is the tag saved
//! atomically with the purge point.
//!
//! Appends are written under the lock and made durable by group commit: a blocking task waits
//! for [`LogSyncer::sync_upto`] and only then tells openraft the entries are flushed, so a
//! follower never counts toward a quorum for entries that are only in its page cache.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tidemark_tsdb::log::{Log, LogError, LogOptions, LogSyncer, SyncPolicy};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, decode, encode};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
}

#[derive(Debug)]
struct Inner {
    log: Mutex<Log>,
    syncer: LogSyncer,
    vote: Mutex<Option<Vote>>,
    /// The entries appended last, in memory: the leader replicates (and every replica
    /// applies) entries right after appending them, so they are served from here instead of
    /// being read back from the log file. Updated under the log's lock.
    tail: Mutex<Tail>,
}

/// Bytes of payload the tail cache keeps at most (per group: entries are replicated and
/// applied within milliseconds of their append, so a few MiB cover them).
const TAIL_CACHE_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
struct Tail {
    entries: std::collections::VecDeque<Entry>,
    bytes: usize,
}

fn entry_bytes(e: &Entry) -> usize {
    64 + match &e.payload {
        openraft::EntryPayload::Normal(b) => b.0.len(),
        _ => 0,
    }
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn push(&mut self, es: Vec<Entry>) {
        let Some(first) = es.first().map(|e| e.log_id.index) else {
            return;
        };
        if self.entries.back().map(|e| e.log_id.index + 1) != Some(first) {
            self.entries.clear();
            self.bytes = 0;
        }
        for e in es {
            self.bytes += entry_bytes(&e);
            self.entries.push_back(e);
        }
        while self.bytes > TAIL_CACHE_BYTES {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= entry_bytes(&e),
                None => break,
            }
        }
    }

    /// Drops entries from `index` on.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= entry_bytes(&e);
            }
        }
    }

    /// Drops entries up to `index`.
    fn purge_upto(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= index)
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= entry_bytes(&e);
            }
        }
    }

    /// Entries `[start, end)` when all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let last = first + self.entries.len() as u64; // exclusive
        if start < first || end > last || start >= end {
            return None;
        }
        let a = usize::try_from(start - first).ok()?;
        let b = usize::try_from(end - first).ok()?;
        Some(self.entries.range(a..b).cloned().collect())
    }
}

/// A shard's Raft log store (also its log reader: cheap to clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn logs_err(verb: ErrorVerb, e: impl std::error::Error) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn tail is truncated by the log's recovery (those
    /// entries were never acknowledged as flushed).
    pub fn open(dir: &Path, segment_size: u64) -> Result<LogStore, LogError> {
        let (log, report) = Log::open(
            dir,
            LogOptions {
                segment_size,
                sync: SyncPolicy::Never,
            },
        )?;
        if !report.is_clean() {
            tracing::warn!(dir = %dir.display(), report = %report, "raft log opened with repairs");
        }
        let meta: Meta = match log.load_meta()? {
            Some(b) => decode(&b).map_err(|e| LogError::Corruption {
                segment: dir.join("meta"),
                offset: 0,
                reason: e.to_string(),
            })?,
            None => Meta::default(),
        };
        let syncer = log.syncer();
        Ok(LogStore {
            inner: Arc::new(Inner {
                log: Mutex::new(log),
                syncer,
                vote: Mutex::new(meta.vote),
                tail: Mutex::new(Tail::default()),
            }),
        })
    }

    /// Index of the last entry, if any (status).
    pub fn last_index(&self) -> Option<u64> {
        self.inner.log.lock().last_index()
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.log.lock().size_bytes()
    }

    fn last_purged(log: &Log) -> Result<Option<LogId>, StorageError> {
        let tag = log.purge_tag();
        if tag.is_empty() {
            return Ok(None);
        }
        decode(tag)
            .map(Some)
            .map_err(|e| logs_err(ErrorVerb::Read, e))
    }

    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if let Some(v) = self.cached(start, end) {
            return Ok(v);
        }
        let recs = {
            let log = self.inner.log.lock();
            let first = log.first_index().unwrap_or(log.next_index());
            let (s, e) = (start.max(first), end.min(log.next_index()));
            if s >= e {
                return Ok(Vec::new());
            }
            log.read_range(s, e)
                .map_err(|e| logs_err(ErrorVerb::Read, e))?
        };
        recs.iter()
            .map(|(_, b)| decode::<Entry>(b).map_err(|e| logs_err(ErrorVerb::Read, e)))
            .collect()
    }
}

impl LogStore {
    /// Entries `[start, end)` (clamped to the log) from the tail cache, when it has them all.
    fn cached(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let log = self.inner.log.lock();
        let first = log.first_index().unwrap_or(log.next_index());
        let (s, e) = (start.max(first), end.min(log.next_index()));
        if s >= e {
            return Some(Vec::new());
        }
        self.inner.tail.lock().get(s, e)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(v) = self.cached(start, end) {
            return Ok(v);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_entries(start, end))
            .await
            .map_err(|e| logs_err(ErrorVerb::Read, e))?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (purged, last) = {
            let log = self.inner.log.lock();
            let purged = Self::last_purged(&log)?;
            let last = match log.last_index() {
                Some(i) => {
                    let b = log.read(i).map_err(|e| logs_err(ErrorVerb::Read, e))?;
                    let e: Entry = decode(&b).map_err(|e| logs_err(ErrorVerb::Read, e))?;
                    Some(e.log_id)
                }
                None => purged,
            };
            (purged, last)
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(&Meta { vote: Some(*vote) })
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.inner.log.lock().save_meta(&bytes))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        *self.inner.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(*self.inner.vote.lock())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut log = self.inner.log.lock();
        // Entries at or below the purge point are already covered by the state machine's
        // snapshot: appending them is a no-op (openraft never does it; its test suite does).
        let purged = log.purged_upto();
        let mut first_index = None;
        let mut payloads = Vec::new();
        let mut kept = Vec::new();
        for e in entries {
            if purged.is_some_and(|p| e.log_id.index <= p) {
                continue;
            }
            first_index.get_or_insert(e.log_id.index);
            payloads.push(encode(&e).map_err(|e| logs_err(ErrorVerb::Write, e))?);
            kept.push(e);
        }
        let Some(first) = first_index else {
            drop(log);
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        if log.last_index().is_none() && first > log.next_index() {
            // An empty log whose next entry comes later (only the conformance suite does
            // this): move the log's start there.
            log.purge_upto(first - 1)
                .map_err(|e| logs_err(ErrorVerb::Write, e))?;
        }
        if first < log.next_index() {
            // Appending entry i replaces everything from i on (openraft truncates first; this
            // keeps the log contiguous if it did not).
            self.inner.tail.lock().truncate_from(first);
            log.truncate_from(first)
                .map_err(|e| logs_err(ErrorVerb::Write, e))?;
        }
        if first != log.next_index() {
            return Err(logs_err(
                ErrorVerb::Write,
                std::io::Error::other(format!(
                    "append of entry {first} to a log whose next index is {}",
                    log.next_index()
                )),
            ));
        }
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let last = *log
            .append_batch(&refs)
            .map_err(|e| logs_err(ErrorVerb::Write, e))?
            .end();
        self.inner.tail.lock().push(kept);
        drop(log);
        let syncer = self.inner.syncer.clone();
        tokio::task::spawn_blocking(move || {
            let res = syncer
                .sync_upto(last)
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(res);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = this.inner.log.lock();
            this.inner.tail.lock().truncate_from(log_id.index);
            log.truncate_from(log_id.index)
        })
        .await
        .map_err(|e| logs_err(ErrorVerb::Delete, e))?
        .map_err(|e| logs_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let tag = encode(&log_id).map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = this.inner.log.lock();
            this.inner.tail.lock().purge_upto(log_id.index);
            log.purge_upto_tagged(log_id.index, &tag)
        })
        .await
        .map_err(|e| logs_err(ErrorVerb::Delete, e))?
        .map_err(|e| logs_err(ErrorVerb::Delete, e))
    }
}
