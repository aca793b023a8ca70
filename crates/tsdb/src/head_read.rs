//! Reading the head: a [`tidemark_storage::Querier`] over a time range.
//!
//! `select` resolves the matchers against the in-memory index, then, under the read side of the
//! head's isolation lock (commits apply under its write side), copies out of every matching
//! series what it needs: the metadata of its full chunks, the bytes of its open chunk and its
//! out-of-order samples. A querier therefore sees every commit entirely or not at all. Samples are
//! decoded afterwards, lazily, series by series, as the caller advances the set.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_model::{Labels, Matcher};
use tidemark_storage::{ListSeries, Querier, Result, SelectHints, Series, SeriesSet};

use crate::head::{Head, MemSeries, SeriesSnapshot};
use crate::postings::postings_for_matchers;

/// A querier over the head for `[mint, maxt]` (both inclusive).
#[derive(Debug)]
pub struct HeadQuerier {
    head: Arc<Head>,
    mint: i64,
    maxt: i64,
}

impl HeadQuerier {
    pub fn new(head: Arc<Head>, mint: i64, maxt: i64) -> HeadQuerier {
        HeadQuerier { head, mint, maxt }
    }

    fn matching_series(&self, matchers: &[Matcher]) -> Result<Vec<Arc<MemSeries>>> {
        let postings = postings_for_matchers(&*self.head.index.read(), matchers)?;
        Ok(postings
            .iter()
            .filter_map(|r| self.head.series_by_ref(r))
            .collect())
    }

    /// True when the head holds data overlapping the querier's range.
    fn overlaps(&self) -> bool {
        self.head.min_time() <= self.maxt && self.head.max_time() >= self.mint
    }

    /// Label queries without matchers answer from the index unless samples were deleted.
    fn index_answers(&self, matchers: &[Matcher]) -> bool {
        matchers.is_empty() && !self.head.has_tombstones.load(Ordering::Acquire)
    }

    /// True when `s` has a sample (not deleted) in the querier's range.
    fn has_data_in(&self, s: &MemSeries) -> bool {
        let snap = SeriesSnapshot::take(s, self.mint, self.maxt);
        if snap.is_empty() {
            return false;
        }
        if !snap.has_deleted() {
            return true;
        }
        // A read error keeps the series (reading it reports the error).
        snap.samples(&self.head, s.series_ref, self.mint, self.maxt)
            .map_or(true, |v| !v.is_empty())
    }
}

impl Head {
    /// A querier over `[mint, maxt]`.
    pub fn querier(self: &Arc<Self>, mint: i64, maxt: i64) -> HeadQuerier {
        HeadQuerier::new(self.clone(), mint, maxt)
    }
}

impl Querier for HeadQuerier {
    fn select(&self, sorted: bool, hints: Option<&SelectHints>, matchers: &[Matcher]) -> SeriesSet {
        if !self.overlaps() || self.mint > self.maxt {
            return Box::new(std::iter::empty());
        }
        let mut snaps: Vec<(Arc<MemSeries>, SeriesSnapshot)> = {
            let _iso = self.head.isolation.read();
            let series = match self.matching_series(matchers) {
                Ok(s) => s,
                Err(e) => return Box::new(std::iter::once(Err(e))),
            };
            series
                .into_iter()
                .filter_map(|s| {
                    let snap = SeriesSnapshot::take(&s, self.mint, self.maxt);
                    (!snap.is_empty()).then_some((s, snap))
                })
                .collect()
        };
        if sorted {
            snaps.sort_by(|a, b| a.0.labels.cmp(&b.0.labels));
        }
        let limit = hints.map_or(0, |h| h.limit);
        let head = self.head.clone();
        let (mint, maxt) = (self.mint, self.maxt);
        let it = snaps.into_iter().filter_map(move |(s, snap)| {
            match snap.samples(&head, s.series_ref, mint, maxt) {
                Ok(samples) if samples.is_empty() => None,
                Ok(samples) => Some(Ok(
                    Arc::new(ListSeries::new(s.labels.clone(), samples)) as Arc<dyn Series>
                )),
                Err(e) => Some(Err(e.into())),
            }
        });
        if limit > 0 {
            Box::new(it.take(limit))
        } else {
            Box::new(it)
        }
    }

    fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        if !self.overlaps() {
            return Ok(Vec::new());
        }
        let mut out: Vec<String> = if self.index_answers(matchers) {
            let mut v =
                crate::postings::PostingsSource::label_values(&*self.head.index.read(), name)?;
            v.sort_unstable();
            v
        } else {
            let set: BTreeSet<String> = self
                .matching_series(matchers)?
                .iter()
                .filter(|s| self.has_data_in(s))
                .filter_map(|s| s.labels.get(name).map(str::to_string))
                .collect();
            set.into_iter().collect()
        };
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    fn label_names(&self, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        if !self.overlaps() {
            return Ok(Vec::new());
        }
        let mut out = if self.index_answers(matchers) {
            self.head.index.read().label_names()
        } else {
            let set: BTreeSet<String> = self
                .matching_series(matchers)?
                .iter()
                .filter(|s| self.has_data_in(s))
                .flat_map(|s| label_names_of(&s.labels))
                .collect();
            set.into_iter().collect()
        };
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }
}

fn label_names_of(l: &Labels) -> Vec<String> {
    l.iter().map(|x| x.name.to_string()).collect()
}
