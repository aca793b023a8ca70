//! Merging sorted series sets: series with equal labels from several sources become one series
//! whose samples are the union by timestamp (on equal timestamps the earlier source wins).

use std::sync::Arc;

use tidemark_model::{Labels, Matcher, Sample};

use crate::{Querier, Result, SampleIter, SelectHints, Series, SeriesSet};

/// Merges sets that are each sorted by labels into one sorted set.
pub fn merge_series_sets(mut sets: Vec<SeriesSet>) -> SeriesSet {
    match sets.len() {
        0 => Box::new(std::iter::empty()),
        1 => sets.remove(0),
        _ => {
            let heads = sets.iter_mut().map(|s| s.next()).collect();
            Box::new(MergeSet { sets, heads })
        }
    }
}

struct MergeSet {
    sets: Vec<SeriesSet>,
    heads: Vec<Option<Result<Arc<dyn Series>>>>,
}

impl Iterator for MergeSet {
    type Item = Result<Arc<dyn Series>>;

    fn next(&mut self) -> Option<Self::Item> {
        // Errors first, so they are never lost behind data.
        for i in 0..self.heads.len() {
            if matches!(self.heads[i], Some(Err(_))) {
                let e = self.heads[i].take();
                self.heads[i] = self.sets[i].next();
                return e;
            }
        }
        let mut min: Option<Labels> = None;
        for s in self.heads.iter().flatten().flatten() {
            if min.as_ref().is_none_or(|m| s.labels() < m) {
                min = Some(s.labels().clone());
            }
        }
        let min = min?;
        let mut parts: Vec<Arc<dyn Series>> = Vec::new();
        for i in 0..self.heads.len() {
            let take = matches!(&self.heads[i], Some(Ok(s)) if *s.labels() == min);
            if take {
                if let Some(Ok(s)) = self.heads[i].take() {
                    parts.push(s);
                }
                self.heads[i] = self.sets[i].next();
            }
        }
        if parts.len() == 1 {
            return parts.pop().map(Ok);
        }
        Some(Ok(Arc::new(MergedSeries { labels: min, parts })))
    }
}

/// Several series with the same labels seen as one.
struct MergedSeries {
    labels: Labels,
    parts: Vec<Arc<dyn Series>>,
}

impl Series for MergedSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIter + '_> {
        let its: Vec<Box<dyn SampleIter + '_>> = self.parts.iter().map(|p| p.iter()).collect();
        let n = its.len();
        Box::new(MergeSampleIter {
            its,
            valid: vec![false; n],
            started: false,
            cur: None,
        })
    }
}

/// Merges sample iterators by timestamp, dropping later duplicates of a timestamp.
struct MergeSampleIter<'a> {
    its: Vec<Box<dyn SampleIter + 'a>>,
    valid: Vec<bool>,
    started: bool,
    cur: Option<Sample>,
}

impl MergeSampleIter<'_> {
    fn pick(&mut self) -> bool {
        let mut best: Option<(usize, Sample)> = None;
        for (i, it) in self.its.iter().enumerate() {
            if self.valid[i] {
                let s = it.at();
                if best.is_none_or(|(_, b)| s.t < b.t) {
                    best = Some((i, s));
                }
            }
        }
        let Some((_, s)) = best else {
            self.cur = None;
            return false;
        };
        // Advance every iterator sitting on this timestamp (first source's value wins).
        for i in 0..self.its.len() {
            if self.valid[i] && self.its[i].at().t == s.t {
                self.valid[i] = self.its[i].next();
            }
        }
        self.cur = Some(s);
        true
    }
}

impl SampleIter for MergeSampleIter<'_> {
    fn next(&mut self) -> bool {
        if !self.started {
            self.started = true;
            for i in 0..self.its.len() {
                self.valid[i] = self.its[i].next();
            }
        }
        self.pick()
    }

    fn seek(&mut self, t: i64) -> bool {
        if let Some(c) = self.cur
            && c.t >= t
        {
            return true;
        }
        self.started = true;
        for i in 0..self.its.len() {
            self.valid[i] = self.its[i].seek(t);
        }
        self.pick()
    }

    fn at(&self) -> Sample {
        self.cur.unwrap_or(Sample {
            t: i64::MIN,
            v: f64::NAN,
        })
    }

    fn is_valid(&self) -> bool {
        self.cur.is_some()
    }

    fn err(&mut self) -> Option<crate::Error> {
        self.its.iter_mut().find_map(|i| i.err())
    }
}

/// A querier over several queriers (head + blocks, or several sources): sorted selects are
/// merged, label names and values are unioned.
pub struct MergeQuerier {
    queriers: Vec<Box<dyn Querier>>,
}

impl std::fmt::Debug for MergeQuerier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MergeQuerier({} queriers)", self.queriers.len())
    }
}

impl MergeQuerier {
    pub fn new(queriers: Vec<Box<dyn Querier>>) -> MergeQuerier {
        MergeQuerier { queriers }
    }
}

fn union_sorted(lists: Vec<Vec<String>>, limit: usize) -> Vec<String> {
    let mut all: Vec<String> = lists.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    if limit > 0 {
        all.truncate(limit);
    }
    all
}

impl Querier for MergeQuerier {
    fn select(&self, sorted: bool, hints: Option<&SelectHints>, matchers: &[Matcher]) -> SeriesSet {
        if self.queriers.len() == 1 {
            return self.queriers[0].select(sorted, hints, matchers);
        }
        merge_series_sets(
            self.queriers
                .iter()
                .map(|q| q.select(true, hints, matchers))
                .collect(),
        )
    }

    fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        let lists = self
            .queriers
            .iter()
            .map(|q| q.label_values(name, matchers, limit))
            .collect::<Result<Vec<_>>>()?;
        Ok(union_sorted(lists, limit))
    }

    fn label_names(&self, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        let lists = self
            .queriers
            .iter()
            .map(|q| q.label_names(matchers, limit))
            .collect::<Result<Vec<_>>>()?;
        Ok(union_sorted(lists, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ListSeries, series_set_from_vec};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn set(series: &BTreeMap<u8, Vec<i64>>) -> SeriesSet {
        series_set_from_vec(
            series
                .iter()
                .map(|(k, ts)| {
                    let l = Labels::from_pairs([("s", k.to_string())]);
                    let samples = ts.iter().map(|&t| Sample::new(t, t as f64)).collect();
                    Arc::new(ListSeries::new(l, samples)) as Arc<dyn Series>
                })
                .collect(),
        )
    }

    fn sorted_unique(v: Vec<i64>) -> Vec<i64> {
        let mut v = v;
        v.sort_unstable();
        v.dedup();
        v
    }

    proptest! {
        #[test]
        fn merge_matches_model(a in proptest::collection::btree_map(0u8..6, proptest::collection::vec(0i64..40, 0..8).prop_map(sorted_unique), 0..5),
                               b in proptest::collection::btree_map(0u8..6, proptest::collection::vec(0i64..40, 0..8).prop_map(sorted_unique), 0..5),
                               seek in 0i64..45) {
            // Model: union of timestamps per label set, sorted by labels.
            let mut model: BTreeMap<Labels, Vec<i64>> = BTreeMap::new();
            for (k, ts) in a.iter().chain(b.iter()) {
                model.entry(Labels::from_pairs([("s", k.to_string())])).or_default().extend(ts);
            }
            for v in model.values_mut() { v.sort_unstable(); v.dedup(); }
            let merged: Vec<_> = merge_series_sets(vec![set(&a), set(&b)]).map(|s| s.unwrap()).collect();
            prop_assert_eq!(merged.len(), model.len());
            for (s, (l, ts)) in merged.iter().zip(model.iter()) {
                prop_assert_eq!(s.labels(), l);
                let mut it = s.iter();
                let mut got = vec![];
                while it.next() { got.push(it.at().t); }
                prop_assert_eq!(&got, ts);
                let mut it = s.iter();
                let want = ts.iter().copied().find(|&t| t >= seek);
                prop_assert_eq!(it.seek(seek).then(|| it.at().t), want);
            }
        }
    }
}
