//! Appending to the head: the rules a sample must pass (Prometheus'), the appender that buffers a
//! batch, and the commit (one log batch, then the samples become visible together).
//!
//! Rules for a sample at time `t` of a series whose newest sample is at `last_t`:
//! - `t` before the head's min valid time (data already in blocks): `OutOfBounds`;
//! - `t > last_t`: appended in order, unless `t` is more than half a block range before the
//!   head's newest sample (`OutOfBounds`, as Prometheus' `appendableMinValidTime`);
//! - `t == last_t` or `t` equal to an older sample: the same value (bit for bit) is an exact
//!   duplicate and ignored; another value is `DuplicateSampleForTimestamp`;
//! - `t < last_t`: accepted out of order when `t >= head max time - ooo window`, else
//!   `OutOfOrder`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_model::Labels;
use tidemark_storage::{Appender, Error, Result, SeriesRef};

use crate::chunk::ChunkEncoder;
use crate::head::{Head, MemSeries, SAMPLES_PER_CHUNK, SeriesData};
use crate::record::{self, RefSample};

/// What inserting a sample did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Added,
    Duplicate,
}

/// End of the chunk range that `t` falls in (chunks never cross it).
#[inline]
fn chunk_range_end(t: i64, range: i64) -> i64 {
    if range <= 0 {
        return i64::MAX;
    }
    t.div_euclid(range).saturating_add(1).saturating_mul(range)
}

impl Head {
    /// Looks for a stored sample at exactly `t` (out-of-order path only: may decode chunks).
    fn existing_value(&self, s: &MemSeries, d: &SeriesData, t: i64) -> Option<f64> {
        if let Ok(i) = d.ooo.binary_search_by_key(&t, |x| x.t) {
            return Some(d.ooo[i].v);
        }
        if let Some(o) = &d.open
            && let (Some(a), Some(b)) = (o.min_time(), o.max_time())
            && a <= t
            && t <= b
        {
            let mut buf = Vec::new();
            if crate::chunk::decode_all(&o.bytes(), &mut buf).is_ok() {
                return buf.binary_search_by_key(&t, |x| x.t).ok().map(|i| buf[i].v);
            }
        }
        for c in d.full.iter().filter(|c| c.min_time <= t && t <= c.max_time) {
            let mut buf = Vec::new();
            if self.read_chunk(s.series_ref, c, &mut buf).is_ok()
                && let Ok(i) = buf.binary_search_by_key(&t, |x| x.t)
            {
                return Some(buf[i].v);
            }
        }
        None
    }

    /// Would the sample be accepted right now? (Checked at append; insertion re-checks.)
    fn check_sample(&self, s: &MemSeries, t: i64, v: f64) -> Result<()> {
        if t < self.min_valid_time() {
            return Err(Error::OutOfBounds);
        }
        let d = s.data.lock();
        if d.last_t == i64::MIN || t > d.last_t {
            return if t < self.appendable_min_valid_time() {
                Err(Error::OutOfBounds)
            } else {
                Ok(())
            };
        }
        if t == d.last_t {
            return if d.last_v.to_bits() == v.to_bits() {
                Ok(())
            } else {
                Err(Error::DuplicateSampleForTimestamp)
            };
        }
        let window = self.opts.ooo_window_ms;
        if window <= 0 || t < self.max_time().saturating_sub(window) {
            return Err(Error::OutOfOrder);
        }
        match self.existing_value(s, &d, t) {
            Some(old) if old.to_bits() != v.to_bits() => Err(Error::DuplicateSampleForTimestamp),
            _ => Ok(()),
        }
    }

    /// Stores a sample that passed the checks (or comes from replay: no window check). The
    /// caller accounts for added samples with [`Head::note_added`].
    pub(crate) fn insert(&self, s: &MemSeries, t: i64, v: f64) -> Result<Inserted> {
        let mut d = s.data.lock();
        self.insert_locked(s, &mut d, t, v)
    }

    /// Stores a run of samples of one series in order (replay), with its lock held, calling
    /// `done(t, result)` for each: the same rules as [`Head::insert`] sample by sample.
    #[inline]
    pub(crate) fn insert_run_locked(
        &self,
        s: &MemSeries,
        d: &mut SeriesData,
        samples: &[(i64, f64)],
        mut done: impl FnMut(i64, Result<Inserted>),
    ) {
        let mut rest = samples;
        while let Some((&(t, v), tail)) = rest.split_first() {
            // In-order samples into the open chunk while it has room: no cut to check per sample.
            if let Some(enc) = d.open.as_mut()
                && let Some(mint) = enc.min_time()
                && t > d.last_t
            {
                let end = chunk_range_end(mint, self.opts.chunk_range_ms);
                let room = SAMPLES_PER_CHUNK.saturating_sub(enc.num_samples());
                let mut taken = 0;
                for &(t, v) in rest.iter().take(room) {
                    if t <= d.last_t || t >= end {
                        break;
                    }
                    match enc.append(t, v) {
                        Ok(()) => {
                            d.last_t = t;
                            d.last_v = v;
                            done(t, Ok(Inserted::Added));
                        }
                        Err(e) => done(
                            t,
                            Err(Error::Other(format!("series {}: {e}", s.series_ref))),
                        ),
                    }
                    taken += 1;
                }
                if taken > 0 {
                    rest = rest.get(taken..).unwrap_or(&[]);
                    continue;
                }
            }
            done(t, self.insert_locked(s, d, t, v));
            rest = tail;
        }
    }

    /// [`Head::insert`] with the series lock held.
    #[inline]
    fn insert_locked(&self, s: &MemSeries, d: &mut SeriesData, t: i64, v: f64) -> Result<Inserted> {
        if d.last_t == i64::MIN || t > d.last_t {
            let cut = d.open.as_ref().is_some_and(|o| {
                o.num_samples() >= SAMPLES_PER_CHUNK
                    || o.min_time()
                        .is_some_and(|m| t >= chunk_range_end(m, self.opts.chunk_range_ms))
            });
            if cut && let Some(full) = d.open.take() {
                let meta = match self.store_full_chunk(s.series_ref, &full) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(series = s.series_ref, error = %e, "writing head chunk failed; keeping it in memory");
                        crate::head::ChunkMeta {
                            min_time: full.min_time().unwrap_or(t),
                            max_time: full.max_time().unwrap_or(t),
                            loc: crate::head::ChunkLoc::Mem(Arc::from(full.bytes())),
                        }
                    }
                };
                d.full.push(meta);
            }
            let enc = d.open.get_or_insert_with(ChunkEncoder::new);
            enc.append(t, v)
                .map_err(|e| Error::Other(format!("series {}: {e}", s.series_ref)))?;
            d.last_t = t;
            d.last_v = v;
            return Ok(Inserted::Added);
        }
        if t == d.last_t {
            return if d.last_v.to_bits() == v.to_bits() {
                Ok(Inserted::Duplicate)
            } else {
                Err(Error::DuplicateSampleForTimestamp)
            };
        }
        if let Some(old) = self.existing_value(s, d, t) {
            return if old.to_bits() == v.to_bits() {
                Ok(Inserted::Duplicate)
            } else {
                Err(Error::DuplicateSampleForTimestamp)
            };
        }
        let i = d.ooo.partition_point(|x| x.t < t);
        d.ooo.insert(i, tidemark_model::Sample::new(t, v));
        Ok(Inserted::Added)
    }

    /// A new appender; its commit returns once the batch is durable (per the log's policy).
    pub fn appender(self: &Arc<Self>) -> HeadAppender {
        HeadAppender {
            head: self.clone(),
            pending: Vec::new(),
            lazy_sync: false,
        }
    }

    /// A new appender for writes nobody waits on (scrapes, rules): its commit does not wait for
    /// an fsync; the log is fsynced by a commit that waits, or by one of these at most every
    /// [`LAZY_SYNC_INTERVAL`], and the OS writes the records back meanwhile.
    pub fn background_appender(self: &Arc<Self>) -> HeadAppender {
        let mut app = self.appender();
        app.lazy_sync = true;
        app
    }
}

/// A batch of appends to the head; see the module docs for the rules.
#[derive(Debug)]
pub struct HeadAppender {
    head: Arc<Head>,
    pending: Vec<(Arc<MemSeries>, i64, f64)>,
    /// Commit without waiting for an fsync (see [`Head::background_appender`]).
    lazy_sync: bool,
}

/// The longest a background appender's commit leaves the log unsynced while commits go on.
pub(crate) const LAZY_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl HeadAppender {
    fn release(&mut self) {
        for (s, _, _) in self.pending.drain(..) {
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn resolve(&self, hint: Option<SeriesRef>, labels: &Labels) -> Result<Arc<MemSeries>> {
        if let Some(SeriesRef(r)) = hint
            && let Some(s) = self.head.series_by_ref(r)
            && &s.labels == labels
        {
            return Ok(s);
        }
        if labels.is_empty() {
            return Err(Error::InvalidLabels("empty label set".into()));
        }
        Ok(self.head.get_or_create(labels, None).0)
    }
}

impl Appender for HeadAppender {
    fn append(
        &mut self,
        series: Option<SeriesRef>,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> Result<SeriesRef> {
        let s = self.resolve(series, labels)?;
        // Counted before the check so that truncation cannot collect the series in between.
        s.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.head.check_sample(&s, t, v) {
            s.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        let r = SeriesRef(s.series_ref);
        self.pending.push((s, t, v));
        Ok(r)
    }

    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let head = self.head.clone();
        let mut log = head.log.lock();
        if head.closed.load(Ordering::Acquire) {
            self.release();
            return Err(Error::Unavailable("the database is closed".into()));
        }
        // Samples validated before a block was cut below them are now out of bounds. Dropping
        // them and answering Ok would acknowledge samples that are not stored, so the whole batch
        // is rejected instead (nothing was logged yet): the caller sees OutOfBounds, as it would
        // have at append time a moment later.
        let min_valid = head.min_valid_time();
        if self.pending.iter().any(|p| p.1 < min_valid) {
            head.dropped_at_commit
                .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
            drop(log);
            self.release();
            return Err(Error::OutOfBounds);
        }
        let mut synced_upto: Option<u64> = None;
        if let Some(log) = log.as_mut() {
            let mut series_rec = Vec::new();
            let mut new_series: Vec<&MemSeries> = Vec::new();
            let mut seen = HashSet::new();
            for (s, _, _) in &self.pending {
                if !s.logged.load(Ordering::Acquire) && seen.insert(s.series_ref) {
                    if series_rec.is_empty() {
                        series_rec.push(record::RECORD_SERIES);
                    }
                    record::encode_one_series(s.series_ref, &s.labels, &mut series_rec);
                    new_series.push(s);
                }
            }
            let samples: Vec<RefSample> = self
                .pending
                .iter()
                .map(|(s, t, v)| RefSample {
                    series_ref: s.series_ref,
                    t: *t,
                    v: *v,
                })
                .collect();
            let mut samples_rec = Vec::with_capacity(samples.len() * 6 + 16);
            record::encode_samples(&samples, &mut samples_rec);
            let res = if series_rec.is_empty() {
                log.append_batch(&[&samples_rec])
            } else {
                log.append_batch(&[&series_rec, &samples_rec])
            };
            match res {
                Ok(range) => synced_upto = Some(*range.end()),
                Err(e) => {
                    drop(new_series);
                    self.release();
                    return Err(Error::Unavailable(format!(
                        "writing the log failed, batch not committed: {e}"
                    )));
                }
            }
            for s in new_series {
                s.logged.store(true, Ordering::Release);
            }
        }
        let syncer = head.syncer.lock().clone();
        let log = match (syncer, synced_upto) {
            (Some(syncer), Some(upto)) => {
                // Group commit: wait for durability without the log lock, so concurrent commits
                // share fsyncs. `inflight` keeps checkpoints from passing this unapplied batch.
                head.inflight.fetch_add(1, Ordering::AcqRel);
                drop(log);
                let synced = if self.lazy_sync {
                    syncer.sync_if_older(LAZY_SYNC_INTERVAL)
                } else {
                    syncer.sync_upto(upto)
                };
                if let Err(e) = synced {
                    head.inflight.fetch_sub(1, Ordering::AcqRel);
                    self.release();
                    return Err(Error::Unavailable(format!(
                        "syncing the log failed, batch not committed: {e}"
                    )));
                }
                None
            }
            _ => Some(log),
        };
        {
            let _iso = head.isolation.write();
            let (mut mint, mut maxt, mut n) = (i64::MAX, i64::MIN, 0u64);
            for (i, (s, t, v)) in self.pending.iter().enumerate() {
                if let Some((ahead, _, _)) = self.pending.get(i + 8) {
                    crate::head::prefetch_series(ahead);
                }
                match head.insert(s, *t, *v) {
                    Ok(Inserted::Added) => {
                        mint = mint.min(*t);
                        maxt = maxt.max(*t);
                        n += 1;
                    }
                    Ok(Inserted::Duplicate) => {}
                    Err(e) => {
                        // A concurrent batch stored another value at this timestamp first.
                        head.dropped_at_commit.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(series = s.series_ref, t, error = %e, "sample dropped at commit");
                    }
                }
            }
            head.note_added(mint, maxt, n);
        }
        if log.is_none() {
            head.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        drop(log);
        self.release();
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.release();
        Ok(())
    }
}

impl Drop for HeadAppender {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HeadOptions;
    use tidemark_storage::Querier;

    fn read_all(head: &Arc<Head>, l: &Labels) -> Vec<(i64, f64)> {
        let q = head.querier(i64::MIN, i64::MAX);
        let m: Vec<tidemark_model::Matcher> = l
            .iter()
            .map(|x| tidemark_model::Matcher::equal(x.name, x.value))
            .collect();
        let mut out = vec![];
        for s in q.select(true, None, &m) {
            let s = s.unwrap();
            let mut it = s.iter();
            while it.next() {
                out.push((it.at().t, it.at().v));
            }
        }
        out
    }

    #[test]
    fn append_rules() {
        let head = Arc::new(
            Head::new(HeadOptions {
                ooo_window_ms: 100,
                ..HeadOptions::default()
            })
            .unwrap(),
        );
        let l = Labels::from_pairs([("__name__", "m"), ("i", "1")]);
        let mut app = head.appender();
        for t in 0..300 {
            app.append(None, &l, 1000 + t * 10, t as f64).unwrap();
        }
        assert!(
            read_all(&head, &l).is_empty(),
            "nothing visible before commit"
        );
        app.commit().unwrap();
        assert_eq!(read_all(&head, &l).len(), 300);
        let mut app = head.appender();
        // Exact duplicate (in-order tail and older, in a full chunk): ignored.
        app.append(None, &l, 1000 + 299 * 10, 299.0).unwrap();
        app.append(None, &l, 1000 + 295 * 10, 295.0).unwrap();
        assert!(matches!(
            app.append(None, &l, 1000 + 299 * 10, 1.0),
            Err(Error::DuplicateSampleForTimestamp)
        ));
        assert!(matches!(
            app.append(None, &l, 1000 + 295 * 10, 1.0),
            Err(Error::DuplicateSampleForTimestamp)
        ));
        // Out of order inside the window, outside it.
        app.append(None, &l, 1000 + 295 * 10 + 5, -1.0).unwrap();
        assert!(matches!(
            app.append(None, &l, 1000, 7.0),
            Err(Error::OutOfOrder)
        ));
        app.commit().unwrap();
        let got = read_all(&head, &l);
        assert_eq!(got.len(), 301);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(got.contains(&(1000 + 295 * 10 + 5, -1.0)));
        assert!(head.stats().chunks_written >= 2);
        // Truncation drops old chunks and rejects what is before the min valid time.
        head.truncate_before(2000);
        assert!(read_all(&head, &l).iter().all(|x| x.0 >= 2000 - 1200));
        let mut app = head.appender();
        assert!(matches!(
            app.append(None, &l, 1500, 7.0),
            Err(Error::OutOfBounds)
        ));
    }
}
