//! Durability bookkeeping shared between the [`Log`](super::Log) and its
//! [`LogSyncer`](super::LogSyncer)s: which file is active, how far records are written and how far
//! they are durable. fsyncs are serialized, so concurrent callers share one fsync (group commit).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::LogError;

#[derive(Debug)]
struct State {
    /// The active segment.
    file: Arc<File>,
    path: PathBuf,
    /// Every index below this is written (to the page cache at least).
    written: u64,
    /// Every index below this is durable.
    synced: u64,
    /// Bumped whenever the active file changes or records are truncated.
    generation: u64,
    poisoned: Option<String>,
    fsyncs: u64,
    /// When the last fsync through this state finished.
    last_sync: Instant,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    fsync: Mutex<()>,
}

impl Shared {
    pub(crate) fn new(file: Arc<File>, path: PathBuf, written: u64, synced: u64) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State {
                file,
                path,
                written,
                synced: synced.min(written),
                generation: 0,
                poisoned: None,
                fsyncs: 0,
                last_sync: Instant::now(),
            }),
            fsync: Mutex::new(()),
        })
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.state.lock().poisoned {
            Some(reason) => Err(LogError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.state.lock().poisoned.is_some()
    }

    pub(crate) fn poison(&self, reason: String) {
        self.state.lock().poisoned = Some(reason);
    }

    pub(crate) fn set_written(&self, next: u64) {
        self.state.lock().written = next;
    }

    pub(crate) fn has_unsynced(&self) -> bool {
        let s = self.state.lock();
        s.synced < s.written
    }

    pub(crate) fn durable_next(&self) -> u64 {
        self.state.lock().synced
    }

    pub(crate) fn fsyncs(&self) -> u64 {
        self.state.lock().fsyncs
    }

    /// The active file changed or records were cut: `written` is the new end; `synced` is how
    /// far the data is known durable (`None`: what was known, capped at `written`).
    pub(crate) fn reset(&self, file: Arc<File>, path: PathBuf, written: u64, synced: Option<u64>) {
        let mut s = self.state.lock();
        s.file = file;
        s.path = path;
        s.written = written;
        s.synced = synced.unwrap_or(s.synced).min(written);
        s.generation += 1;
    }

    /// Makes everything written so far durable when the last fsync is at least `max_age` old;
    /// otherwise returns at once (the records stay in the page cache until a later sync).
    pub(crate) fn sync_if_older(&self, max_age: Duration) -> Result<(), LogError> {
        {
            let s = self.state.lock();
            if s.poisoned.is_none() && (s.synced >= s.written || s.last_sync.elapsed() < max_age) {
                return Ok(());
            }
        }
        self.sync(None)
    }

    /// Makes everything written so far durable, unless `upto` is given and already durable.
    /// One fsync at a time: callers that queue behind it usually find their records covered.
    pub(crate) fn sync(&self, upto: Option<u64>) -> Result<(), LogError> {
        let _one_at_a_time = self.fsync.lock();
        let (file, path, target, generation) = {
            let s = self.state.lock();
            if let Some(reason) = &s.poisoned {
                return Err(LogError::Poisoned {
                    reason: reason.clone(),
                });
            }
            if s.synced >= s.written || upto.is_some_and(|i| i < s.synced) {
                return Ok(());
            }
            (Arc::clone(&s.file), s.path.clone(), s.written, s.generation)
        };
        let result = file.sync_data();
        let mut s = self.state.lock();
        s.fsyncs += 1;
        s.last_sync = Instant::now();
        match result {
            Ok(()) => {
                // If the active file changed meanwhile, the log synced the old one itself.
                if s.generation == generation {
                    s.synced = s.synced.max(target);
                }
                Ok(())
            }
            Err(e) => {
                // After a failed fsync the kernel may have dropped the dirty pages: never retry.
                s.poisoned = Some(format!("fsync of {} failed: {e}", path.display()));
                Err(LogError::Io { path, source: e })
            }
        }
    }
}

/// Makes a log's appended records durable from any thread, without the log; see
/// [`Log::syncer`](super::Log::syncer). Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogSyncer {
    pub(crate) shared: Arc<Shared>,
}

impl LogSyncer {
    /// Returns once every record up to `index` is durable (fsyncing the active segment unless
    /// an earlier fsync already covered it). A record truncated away meanwhile counts as done.
    pub fn sync_upto(&self, index: u64) -> Result<(), LogError> {
        self.shared.sync(Some(index))
    }

    /// Lazy durability for writes nobody waits on: fsyncs everything written so far only when
    /// the last fsync is at least `max_age` old, else returns at once.
    pub fn sync_if_older(&self, max_age: std::time::Duration) -> Result<(), LogError> {
        self.shared.sync_if_older(max_age)
    }

    /// Every index below this is durable.
    pub fn durable_next(&self) -> u64 {
        self.shared.durable_next()
    }

    /// fsyncs done through the shared state so far (the log's own and the syncers').
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs()
    }
}
