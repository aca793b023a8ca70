//! The head and the log: replaying records into the head on start, and the records a checkpoint
//! keeps (every live series and every sample still in the head) once older data is in blocks.
//!
//! Single-threaded replay applies the log in windows, series by series ([`Windowed`]), which
//! keeps each series' state in cache for a run of its samples; the result is the same as
//! sample-by-sample replay.
//!
//! Replay is lenient where appending is strict: no out-of-order window (the log already decided),
//! exact duplicates are ignored (a checkpoint and the log after it may both hold a sample),
//! samples before the head's min valid time (already in blocks) are skipped, and samples of an
//! unknown series reference are counted and skipped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_model::Sample;

use crate::head::{Head, HeadError, MemSeries, SeriesData, U64Map};
use crate::head_append::Inserted;
use crate::log::Log;
use crate::record::{self, Record, RefSample, RefSeries, RefTombstone};

/// What replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub series: u64,
    pub samples: u64,
    /// Samples skipped: before the min valid time, unknown series, or conflicting values.
    pub samples_skipped: u64,
    /// Deleted intervals re-applied (tombstones records).
    pub tombstones: u64,
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

/// Series references of the log -> series (or their index): a vector for the dense references
/// the head hands out, a map for anything else.
struct RefTable<T> {
    dense: Vec<Option<T>>,
    sparse: U64Map<T>,
}

impl<T> Default for RefTable<T> {
    fn default() -> Self {
        RefTable {
            dense: Vec::new(),
            sparse: U64Map::default(),
        }
    }
}

/// References below this are kept in the dense table.
const DENSE_REFS: u64 = 1 << 26;

impl<T: Clone> RefTable<T> {
    fn insert(&mut self, r: u64, s: T) {
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
    fn get(&self, r: u64) -> Option<&T> {
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
    /// A series record's series: reference, series, whether replay created it.
    Series(u64, Arc<MemSeries>, bool),
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

/// Fewest samples a replay window holds before it is applied.
const WINDOW_MIN: usize = 1 << 16;
/// Most samples a replay window holds (24 bytes each while buffered: 96 MiB).
const WINDOW_MAX: usize = 1 << 22;
/// Samples buffered per known series (the window's target size, within the bounds above).
const WINDOW_PER_SERIES: usize = 4;
/// A window is buffered in buckets of this many series (by index), so that sorting one bucket
/// by series stays in the CPU's cache.
const BUCKET_BITS: u32 = 12;
const BUCKET_MASK: usize = (1 << BUCKET_BITS) - 1;
/// Series are locked (and their open chunk's buffers prefetched) this many runs before their
/// run is inserted; their `MemSeries` is prefetched twice as far ahead.
const LOCK_AHEAD: usize = 4;

/// Single-threaded replay in windows. The log holds samples in commit order, which visits
/// series one after another (a million series do not fit in any cache, so inserting sample by
/// sample waits on several cache misses per sample: series lock, chunk state, the open chunk's
/// buffers). Samples are buffered in log order, then applied series by series: a stable counting
/// sort by series keeps each series' samples in log order, so the head ends in exactly the state
/// sample-by-sample replay gives, and each series' state is loaded once per window.
#[derive(Default)]
struct Windowed {
    /// Log reference -> index into `series`.
    refs: RefTable<usize>,
    /// Every series seen, each once.
    series: Vec<Arc<MemSeries>>,
    /// Series pointer -> index, built only when a series record names a series already seen
    /// under another reference.
    by_ptr: Option<U64Map<usize>>,
    /// The window in log order, by bucket of series indexes: series index and sample.
    buckets: Vec<Vec<(u32, i64, f64)>>,
    buffered: usize,
    /// One bucket sorted by series (reused).
    sorted: Vec<(i64, f64)>,
    /// Per series of a bucket: its samples, then where its run ends in `sorted` (all zero
    /// between buckets).
    counts: Vec<u32>,
    /// Series of a bucket in index order, with the start of their run.
    runs: Vec<(usize, u32)>,
    st: WorkerStats,
}

impl Windowed {
    fn push(&mut self, head: &Head, msg: ReplayMsg, min_valid: i64) {
        match msg {
            ReplayMsg::Series(r, s, created) => self.add_series(r, s, created),
            ReplayMsg::Samples(list) => {
                for RefSample { series_ref, t, v } in list {
                    let Some(&i) = self.refs.get(series_ref) else {
                        self.st.unknown += 1;
                        self.st.skipped += 1;
                        continue;
                    };
                    if t < min_valid {
                        self.st.skipped += 1;
                        continue;
                    }
                    let b = i >> BUCKET_BITS;
                    match (u32::try_from(i), self.buckets.get_mut(b)) {
                        (Ok(i), Some(bucket)) => bucket.push((i, t, v)),
                        (Ok(i), None) => {
                            self.buckets.resize_with(b + 1, Vec::new);
                            if let Some(bucket) = self.buckets.get_mut(b) {
                                bucket.push((i, t, v));
                            }
                        }
                        (Err(_), _) => {
                            // More than 2^32 series: this one is never buffered, so its samples
                            // still go in log order.
                            let s = self.series[i].clone();
                            let mut d = s.data.lock();
                            head.insert_run_locked(&s, &mut d, &[(t, v)], |t, res| {
                                self.st.count(t, res)
                            });
                            continue;
                        }
                    }
                    self.buffered += 1;
                }
                let target = self
                    .series
                    .len()
                    .saturating_mul(WINDOW_PER_SERIES)
                    .clamp(WINDOW_MIN, WINDOW_MAX);
                if self.buffered >= target {
                    self.apply(head);
                }
            }
        }
    }

    fn add_series(&mut self, r: u64, s: Arc<MemSeries>, created: bool) {
        if !created {
            if let Some(&i) = self.refs.get(r)
                && Arc::ptr_eq(&self.series[i], &s)
            {
                return;
            }
            // The series is known under another reference: both references must share its
            // index, or its samples could be applied out of log order.
            let series = &self.series;
            let by_ptr = self.by_ptr.get_or_insert_with(|| {
                series
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Arc::as_ptr(s) as usize as u64, i))
                    .collect()
            });
            if let Some(&i) = by_ptr.get(&(Arc::as_ptr(&s) as usize as u64)) {
                self.refs.insert(r, i);
                return;
            }
        }
        let i = self.series.len();
        if let Some(m) = &mut self.by_ptr {
            m.insert(Arc::as_ptr(&s) as usize as u64, i);
        }
        self.series.push(s);
        self.refs.insert(r, i);
    }

    /// Applies the buffered window, bucket by bucket, series by series.
    fn apply(&mut self, head: &Head) {
        if self.buffered == 0 {
            return;
        }
        self.counts.resize(BUCKET_MASK + 1, 0);
        for (b, bucket) in self.buckets.iter_mut().enumerate() {
            if bucket.is_empty() {
                continue;
            }
            let base = b << BUCKET_BITS;
            let counts = &mut self.counts;
            for &(i, _, _) in bucket.iter() {
                if let Some(c) = counts.get_mut(i as usize & BUCKET_MASK) {
                    *c += 1;
                }
            }
            self.runs.clear();
            let mut pos = 0u32;
            for (i, c) in counts.iter_mut().enumerate() {
                if *c != 0 {
                    self.runs.push((base + i, pos));
                    let k = *c;
                    *c = pos;
                    pos += k;
                }
            }
            if self.sorted.len() < bucket.len() {
                self.sorted.resize(bucket.len(), (0, 0.0));
            }
            for &(i, t, v) in bucket.iter() {
                if let Some(c) = counts.get_mut(i as usize & BUCKET_MASK) {
                    if let Some(slot) = self.sorted.get_mut(*c as usize) {
                        *slot = (t, v);
                    }
                    *c += 1;
                }
            }
            bucket.clear();
            apply_runs(
                head,
                &self.series,
                &self.runs,
                counts,
                &self.sorted,
                &mut self.st,
            );
        }
        self.buffered = 0;
    }
}

/// Inserts each series' run of `sorted` (`runs`: series index and start; `ends`: the end of
/// each run by index within the bucket, reset to zero here). Series are prefetched and locked a
/// few runs ahead, and their open chunk's write positions prefetched, so that the cache misses
/// of several series overlap.
fn apply_runs(
    head: &Head,
    series: &[Arc<MemSeries>],
    runs: &[(usize, u32)],
    ends: &mut [u32],
    sorted: &[(i64, f64)],
    st: &mut WorkerStats,
) {
    let lock = |k: usize| {
        let (i, _) = *runs.get(k)?;
        let s = series.get(i)?;
        let g = s.data.lock();
        if let Some(enc) = &g.open {
            enc.prefetch();
        }
        Some((s, g))
    };
    let mut ring: [Option<(&Arc<MemSeries>, parking_lot::MutexGuard<'_, SeriesData>)>; LOCK_AHEAD] =
        Default::default();
    for (k, slot) in ring.iter_mut().enumerate() {
        *slot = lock(k);
    }
    for (k, &(i, start)) in runs.iter().enumerate() {
        if let Some(&(ahead, _)) = runs.get(k + 2 * LOCK_AHEAD)
            && let Some(s) = series.get(ahead)
        {
            crate::head::prefetch_series(s);
        }
        let next = lock(k + LOCK_AHEAD);
        let cur = std::mem::replace(&mut ring[k % LOCK_AHEAD], next);
        let Some((s, mut g)) = cur else {
            continue;
        };
        let Some(end) = ends.get_mut(i & BUCKET_MASK) else {
            continue;
        };
        let end = std::mem::take(end);
        if let Some(run) = sorted.get(start as usize..end as usize) {
            head.insert_run_locked(s, &mut g, run, |t, res| st.count(t, res));
        }
    }
}

impl WorkerStats {
    #[inline]
    fn count(&mut self, t: i64, res: tidemark_storage::Result<Inserted>) {
        match res {
            Ok(Inserted::Added) => {
                self.samples += 1;
                self.mint = self.mint.min(t);
                self.maxt = self.maxt.max(t);
            }
            Ok(Inserted::Duplicate) => {}
            Err(_) => self.skipped += 1,
        }
    }
}

impl Head {
    fn replay_apply(
        &self,
        refs: &mut RefTable<Arc<MemSeries>>,
        st: &mut WorkerStats,
        msg: ReplayMsg,
        min_valid: i64,
    ) {
        match msg {
            ReplayMsg::Series(r, s, _) => refs.insert(r, s),
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
        let mut refs = RefTable::<Arc<MemSeries>>::default();
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
            let mut w = Windowed::default();
            self.replay_records(&mut replay, &mut stats, 1, &mut |_, msg| {
                w.push(self, msg, min_valid);
                true
            });
            w.apply(self);
            vec![w.st]
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
        // Log references whose series the head knows under another reference (tombstones
        // refer to series by their log reference).
        let mut aliases: U64Map<Arc<MemSeries>> = U64Map::default();
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
                        let (s, created) = self.get_or_create(&labels, Some(series_ref));
                        s.logged.store(true, Ordering::Release);
                        if s.series_ref != series_ref {
                            aliases.insert(series_ref, s.clone());
                        }
                        stats.series += 1;
                        let msg = ReplayMsg::Series(series_ref, s, created);
                        if !sink(owner(series_ref), msg) {
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
                Ok(Record::Tombstones(list)) => {
                    // Intervals hide samples whenever these arrive, so they apply right away,
                    // ahead of samples still buffered or queued for workers.
                    for RefTombstone {
                        series_ref,
                        mint,
                        maxt,
                    } in list
                    {
                        let s = aliases
                            .get(&series_ref)
                            .cloned()
                            .or_else(|| self.series_by_ref(series_ref));
                        // A series the log does not define has no samples to hide.
                        if let Some(s) = s {
                            s.data.lock().add_deleted(mint, maxt);
                            self.has_tombstones.store(true, Ordering::Release);
                            stats.tombstones += 1;
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
            // Deleted samples are left out above; the intervals stay so that out-of-order
            // samples arriving in them later are hidden after a restart as before it.
            let stones: Vec<RefTombstone> = batch
                .iter()
                .flat_map(|s| {
                    let d = s.data.lock();
                    d.deleted.as_ref().map(|iv| iv.as_slice().to_vec()).unwrap_or_default()
                        .into_iter()
                        .map(|(mint, maxt)| RefTombstone { series_ref: s.series_ref, mint, maxt })
                        .collect::<Vec<_>>()
                })
                .collect();
            if !stones.is_empty() {
                let mut b = Vec::with_capacity(stones.len() * 12 + 1);
                record::encode_tombstones(&stones, &mut b);
                recs.push(b);
            }
            recs
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::head::HeadOptions;
    use crate::log::{LogOptions, SyncPolicy};
    use tidemark_model::Labels;

    fn labels(i: u64) -> Labels {
        Labels::from_pairs([("__name__", "m".to_string()), ("i", (i % 700).to_string())])
    }

    /// Windowed replay (one worker) ends in exactly the state of sample-by-sample replay (two
    /// workers): over several windows, with out-of-order samples, exact duplicates, conflicting
    /// values, unknown references, samples before the min valid time, chunk cuts, and series
    /// recorded again under another reference.
    #[test]
    fn windowed_replay_matches_sample_by_sample() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(
            dir.path(),
            LogOptions {
                sync: SyncPolicy::Never,
                ..LogOptions::default()
            },
        )
        .unwrap();
        // Refs 1..=700 for labels 0..700; refs 1001..=1100 name labels 0..100 again.
        let mut rec = Vec::new();
        let first: Vec<RefSeries> = (0..700)
            .map(|i| RefSeries {
                series_ref: i + 1,
                labels: labels(i),
            })
            .collect();
        record::encode_series(&first, &mut rec);
        log.append(&rec).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..400i64 {
            if round == 200 {
                rec.clear();
                let again: Vec<RefSeries> = (0..100)
                    .map(|i| RefSeries {
                        series_ref: 1001 + i,
                        labels: labels(i),
                    })
                    .collect();
                record::encode_series(&again, &mut rec);
                log.append(&rec).unwrap();
            }
            let mut samples = Vec::new();
            for _ in 0..500 {
                let i = rnd(700);
                let series_ref = match rnd(10) {
                    0 if round >= 200 && i < 100 => 1001 + i,
                    1 if rnd(20) == 0 => 5000 + i,
                    _ => i + 1,
                };
                let t = match rnd(20) {
                    0 => round * 1000 - rnd(5000) as i64,
                    _ => round * 1000 + rnd(1000) as i64,
                };
                let v = if rnd(4) == 0 { 1.5 } else { (t % 7) as f64 };
                samples.push(RefSample { series_ref, t, v });
            }
            rec.clear();
            record::encode_samples(&samples, &mut rec);
            log.append(&rec).unwrap();
        }
        log.sync().unwrap();
        let replayed = |workers: usize| {
            let head = Arc::new(
                Head::new(HeadOptions {
                    replay_workers: workers,
                    chunk_range_ms: 50_000,
                    ..HeadOptions::default()
                })
                .unwrap(),
            );
            head.set_min_valid_time(2000);
            let stats = head.replay(&log).unwrap();
            let mut all: Vec<(Labels, Vec<(i64, u64)>)> = head
                .all_series()
                .iter()
                .map(|s| {
                    let v = head.series_samples(s, i64::MIN, i64::MAX).unwrap();
                    let v = v.iter().map(|x| (x.t, x.v.to_bits())).collect();
                    (s.labels.clone(), v)
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            (stats, all, head.stats())
        };
        let (ws, windowed, wh) = replayed(1);
        let (ss, single, sh) = replayed(2);
        assert!(ws.samples > 150_000, "{ws}");
        assert!(
            ws.samples_skipped > 1000 && ws.unknown_series_refs > 100,
            "{ws}"
        );
        assert_eq!(ws, ss);
        assert_eq!(wh, sh);
        assert_eq!(windowed.len(), 700);
        assert!(windowed == single, "head contents differ");
    }
}
