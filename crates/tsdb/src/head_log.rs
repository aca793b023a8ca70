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

impl Head {
    /// Replays the log's checkpoint and records into the head.
    pub fn replay(&self, log: &Log) -> Result<ReplayStats, HeadError> {
        let mut stats = ReplayStats::default();
        let mut refs = RefTable::default();
        let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
        let min_valid = self.min_valid_time();
        let mut replay = log.replay()?;
        while let Some(r) = replay.next_record() {
            let (index, payload) = match r {
                Ok(x) => x,
                Err(e) => {
                    stats.problems.push(format!("log read stopped: {e}"));
                    break;
                }
            };
            stats.records += 1;
            match record::decode(payload) {
                Ok(Record::Series(list)) => {
                    for RefSeries { series_ref, labels } in list {
                        let (s, _) = self.get_or_create(&labels, Some(series_ref));
                        s.logged.store(true, Ordering::Release);
                        refs.insert(series_ref, s);
                        stats.series += 1;
                    }
                }
                Ok(Record::Samples(list)) => {
                    for RefSample { series_ref, t, v } in list {
                        let Some(s) = refs.get(series_ref) else {
                            stats.unknown_series_refs += 1;
                            stats.samples_skipped += 1;
                            continue;
                        };
                        if t < min_valid {
                            stats.samples_skipped += 1;
                            continue;
                        }
                        match self.insert(s, t, v) {
                            Ok(Inserted::Added) => {
                                stats.samples += 1;
                                mint = mint.min(t);
                                maxt = maxt.max(t);
                            }
                            Ok(Inserted::Duplicate) => {}
                            Err(_) => stats.samples_skipped += 1,
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
        self.note_added(mint, maxt, stats.samples);
        if stats.unknown_series_refs > 0 {
            stats.problems.push(format!(
                "{} samples referred to unknown series",
                stats.unknown_series_refs
            ));
        }
        tracing::info!(%stats, "head replayed");
        Ok(stats)
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
