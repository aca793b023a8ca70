//! The head and the log: replaying records into the head on start, and the records a checkpoint
//! keeps (every live series and every sample still in the head) once older data is in blocks.
//!
//! Replay is lenient where appending is strict: no out-of-order window (the log already decided),
//! exact duplicates are ignored (a checkpoint and the log after it may both hold a sample),
//! samples before the head's min valid time (already in blocks) are skipped, and samples of an
//! unknown series reference are counted and skipped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_model::Sample;

use crate::head::{Head, HeadError, MemSeries, U64Map};
use crate::head_append::Inserted;
use crate::log::Log;
use crate::record::{self, Record, RefSample, RefSeries};

/// What replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub series: u64,
    pub samples: u64,
    /// Samples skipped: before the min valid time, unknown series, or conflicting values.
    pub samples_skipped: u64,
    pub unknown_series_refs: u64,
    /// Records whose payload did not decode (named in `problems`).
    pub bad_records: u64,
    pub problems: Vec<String>,
}

impl fmt::Display for ReplayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {} records: {} series, {} samples ({} skipped, {} unknown series refs, {} bad records)",
            self.records,
            self.series,
            self.samples,
            self.samples_skipped,
            self.unknown_series_refs,
            self.bad_records
        )?;
        for p in &self.problems {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// Series references of the log -> series: a vector for the dense references the head hands
/// out, a map for anything else.
#[derive(Default)]
struct RefTable {
    dense: Vec<Option<Arc<MemSeries>>>,
    sparse: U64Map<Arc<MemSeries>>,
}

/// References below this are kept in the dense table.
const DENSE_REFS: u64 = 1 << 26;

impl RefTable {
    fn insert(&mut self, r: u64, s: Arc<MemSeries>) {
        if r < DENSE_REFS {
            let i = r as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, None);
            }
            self.dense[i] = Some(s);
        } else {
            self.sparse.insert(r, s);
        }
    }

    #[inline]
    fn get(&self, r: u64) -> Option<&Arc<MemSeries>> {
        if r < DENSE_REFS {
            self.dense.get(r as usize).and_then(Option::as_ref)
        } else {
            self.sparse.get(&r)
        }
    }
}

/// Series per checkpoint record.
const CHECKPOINT_BATCH: usize = 1000;

/// Work for a replay worker: the series it owns (reference -> series) and their samples.
enum ReplayMsg {
    Series(u64, Arc<MemSeries>),
    Samples(Vec<RefSample>),
}

#[derive(Debug)]
struct WorkerStats {
    samples: u64,
    skipped: u64,
    unknown: u64,
    mint: i64,
    maxt: i64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            samples: 0,
            skipped: 0,
            unknown: 0,
            mint: i64::MAX,
            maxt: i64::MIN,
        }
    }
}

/// Samples are inserted this many ahead of where the series is prefetched.
const PREFETCH_AHEAD: usize = 8;

impl Head {
    fn replay_apply(
        &self,
        refs: &mut RefTable,
        st: &mut WorkerStats,
        msg: ReplayMsg,
        min_valid: i64,
    ) {
        match msg {
            ReplayMsg::Series(r, s) => refs.insert(r, s),
            ReplayMsg::Samples(list) => {
                for (i, &RefSample { series_ref, t, v }) in list.iter().enumerate() {
                    if let Some(ahead) = list.get(i + PREFETCH_AHEAD)
                        && let Some(s) = refs.get(ahead.series_ref)
                    {
                        crate::head::prefetch_series(s);
                    }
                    let Some(s) = refs.get(series_ref) else {
                        st.unknown += 1;
                        st.skipped += 1;
                        continue;
                    };
                    if t < min_valid {
                        st.skipped += 1;
                        continue;
                    }
                    match self.insert(s, t, v) {
                        Ok(Inserted::Added) => {
                            st.samples += 1;
                            st.mint = st.mint.min(t);
                            st.maxt = st.maxt.max(t);
                        }
                        Ok(Inserted::Duplicate) => {}
                        Err(_) => st.skipped += 1,
                    }
                }
            }
        }
    }

    fn replay_worker(
        &self,
        rx: std::sync::mpsc::Receiver<ReplayMsg>,
        min_valid: i64,
    ) -> WorkerStats {
        let mut refs = RefTable::default();
        let mut st = WorkerStats::default();
        for msg in rx {
            self.replay_apply(&mut refs, &mut st, msg, min_valid);
        }
        st
    }

    /// Replays the log's checkpoint and records into the head. The calling thread reads and
    /// decodes records and creates series. With one worker (the default) it also inserts the
    /// samples; with more, worker threads do, each owning the series whose reference falls to it
    /// (so every series sees its samples in log order).
    pub fn replay(&self, log: &Log) -> Result<ReplayStats, HeadError> {
        let workers = match self.opts.replay_workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 4),
            n => n,
        };
        let min_valid = self.min_valid_time();
        let mut replay = log.replay()?;
        let mut stats = ReplayStats::default();
        let worker_stats = if workers == 1 {
            let mut refs = RefTable::default();
            let mut st = WorkerStats::default();
            self.replay_records(&mut replay, &mut stats, 1, &mut |_, msg| {
                self.replay_apply(&mut refs, &mut st, msg, min_valid);
                true
            });
            vec![st]
        } else {
            std::thread::scope(|scope| {
                let mut txs = Vec::with_capacity(workers);
                let mut handles = Vec::with_capacity(workers);
                for _ in 0..workers {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<ReplayMsg>(16);
                    txs.push(tx);
                    handles.push(scope.spawn(move || self.replay_worker(rx, min_valid)));
                }
                self.replay_records(&mut replay, &mut stats, workers, &mut |w, msg| {
                    txs[w].send(msg).is_ok()
                });
                drop(txs);
                handles
                    .into_iter()
                    .filter_map(|h| h.join().ok())
                    .collect::<Vec<WorkerStats>>()
            })
        };
        let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
        for w in &worker_stats {
            stats.samples += w.samples;
            stats.samples_skipped += w.skipped;
            stats.unknown_series_refs += w.unknown;
            mint = mint.min(w.mint);
            maxt = maxt.max(w.maxt);
        }
        if worker_stats.len() != workers {
            stats.problems.push("a replay worker panicked".to_string());
        }
        self.note_added(mint, maxt, stats.samples);
        if stats.unknown_series_refs > 0 {
            stats.problems.push(format!(
                "{} samples referred to unknown series",
                stats.unknown_series_refs
            ));
        }
        tracing::info!(%stats, workers, "head replayed");
        Ok(stats)
    }

    /// Reads and decodes every record, creates series, and hands the work to `sink(worker,
    /// msg)` (false: stop).
    fn replay_records(
        &self,
        replay: &mut crate::log::Replay,
        stats: &mut ReplayStats,
        workers: usize,
        sink: &mut dyn FnMut(usize, ReplayMsg) -> bool,
    ) {
        let owner = |r: u64| (r % workers as u64) as usize;
        while let Some(r) = replay.next_record() {
            let (index, payload) = match r {
                Ok(x) => x,
                Err(e) => {
                    stats.problems.push(format!("log read stopped: {e}"));
                    return;
                }
            };
            stats.records += 1;
            match record::decode(payload) {
                Ok(Record::Series(list)) => {
                    for RefSeries { series_ref, labels } in list {
                        let (s, _) = self.get_or_create(&labels, Some(series_ref));
                        s.logged.store(true, Ordering::Release);
                        stats.series += 1;
                        if !sink(owner(series_ref), ReplayMsg::Series(series_ref, s)) {
                            return;
                        }
                    }
                }
                Ok(Record::Samples(list)) if workers == 1 => {
                    if !sink(0, ReplayMsg::Samples(list)) {
                        return;
                    }
                }
                Ok(Record::Samples(list)) => {
                    let mut parts: Vec<Vec<RefSample>> = (0..workers)
                        .map(|_| Vec::with_capacity(list.len() / workers + 8))
                        .collect();
                    for x in list {
                        parts[owner(x.series_ref)].push(x);
                    }
                    for (w, part) in parts.into_iter().enumerate() {
                        if !part.is_empty() && !sink(w, ReplayMsg::Samples(part)) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    stats.bad_records += 1;
                    if stats.problems.len() < 10 {
                        stats.problems.push(format!("log record {index}: {e}"));
                    }
                }
            }
        }
    }

    /// The records of a checkpoint: series records for every live series and samples records
    /// for every sample in the head, produced lazily in batches of series.
    pub fn checkpoint_records(self: &Arc<Self>) -> impl Iterator<Item = Vec<u8>> + use<> {
        let mut series = self.all_series();
        series.sort_by_key(|s| s.series_ref);
        let head = self.clone();
        let batches: Vec<Vec<Arc<MemSeries>>> =
            series.chunks(CHECKPOINT_BATCH).map(<[_]>::to_vec).collect();
        batches.into_iter().flat_map(move |batch| {
            let list: Vec<RefSeries> =
                batch.iter().map(|s| RefSeries { series_ref: s.series_ref, labels: s.labels.clone() }).collect();
            let mut srec = Vec::new();
            record::encode_series(&list, &mut srec);
            let mut samples: Vec<RefSample> = Vec::new();
            for s in &batch {
                match head.series_samples(s, i64::MIN, i64::MAX) {
                    Ok(v) => samples.extend(v.into_iter().map(|Sample { t, v }| RefSample { series_ref: s.series_ref, t, v })),
                    Err(e) => tracing::error!(series = s.series_ref, error = %e, "checkpoint: series unreadable"),
                }
            }
            let mut recs = vec![srec];
            for part in samples.chunks(64 * 1024) {
                let mut b = Vec::with_capacity(part.len() * 6);
                record::encode_samples(part, &mut b);
                recs.push(b);
            }
            recs
        })
    }
}
