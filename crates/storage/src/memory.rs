//! [`MemStorage`]: a simple in-memory implementation of the traits. It is the reference model
//! that property tests compare real engines against, and the storage of the PromQL test runner.
//! Not tuned for size or speed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::RwLock;
use tidemark_model::{Labels, Matcher, Sample};

use crate::{
    Appendable, Appender, Error, ListSeries, Querier, Queryable, Result, SelectHints, Series,
    SeriesRef, SeriesSet,
};

/// An in-memory storage: every series is a sorted `Vec<Sample>`.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Arc<RwLock<BTreeMap<Labels, Vec<Sample>>>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Removes every series.
    pub fn clear(&self) {
        self.inner.write().clear();
    }

    /// Number of series.
    pub fn num_series(&self) -> usize {
        self.inner.read().len()
    }

    /// Inserts a sample directly (out of order allowed; same timestamp replaces).
    pub fn insert(&self, labels: Labels, t: i64, v: f64) {
        let mut g = self.inner.write();
        let s = g.entry(labels).or_default();
        match s.binary_search_by_key(&t, |x| x.t) {
            Ok(i) => s[i].v = v,
            Err(i) => s.insert(i, Sample::new(t, v)),
        }
    }
}

impl Appendable for MemStorage {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(MemAppender {
            store: self.clone(),
            pending: Vec::new(),
        })
    }
}

struct MemAppender {
    store: MemStorage,
    pending: Vec<(Labels, Sample)>,
}

impl Appender for MemAppender {
    fn append(
        &mut self,
        _series: Option<SeriesRef>,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> Result<SeriesRef> {
        if labels.is_empty() {
            return Err(Error::InvalidLabels("empty label set".into()));
        }
        let g = self.store.inner.read();
        if let Some(s) = g.get(labels)
            && let Ok(i) = s.binary_search_by_key(&t, |x| x.t)
            && s[i].v.to_bits() != v.to_bits()
        {
            return Err(Error::DuplicateSampleForTimestamp);
        }
        self.pending.push((labels.clone(), Sample::new(t, v)));
        Ok(SeriesRef(labels.stable_hash()))
    }

    fn commit(&mut self) -> Result<()> {
        for (l, s) in self.pending.drain(..) {
            self.store.insert(l, s.t, s.v);
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.pending.clear();
        Ok(())
    }
}

impl Queryable for MemStorage {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier>> {
        Ok(Box::new(MemQuerier {
            store: self.clone(),
            mint,
            maxt,
        }))
    }
}

struct MemQuerier {
    store: MemStorage,
    mint: i64,
    maxt: i64,
}

/// True when `labels` satisfy every matcher (an absent label has the value "").
pub fn matches_all(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.matches(labels.get_or_empty(&m.name)))
}

impl Querier for MemQuerier {
    fn select(
        &self,
        _sorted: bool,
        hints: Option<&SelectHints>,
        matchers: &[Matcher],
    ) -> SeriesSet {
        let g = self.store.inner.read();
        let limit = hints.map_or(0, |h| h.limit);
        let mut out: Vec<Arc<dyn Series>> = Vec::new();
        for (l, samples) in g.iter() {
            if !matches_all(l, matchers) {
                continue;
            }
            let lo = samples.partition_point(|s| s.t < self.mint);
            let hi = samples.partition_point(|s| s.t <= self.maxt);
            if lo >= hi {
                continue;
            }
            out.push(Arc::new(ListSeries::new(
                l.clone(),
                samples[lo..hi].to_vec(),
            )));
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        Box::new(out.into_iter().map(Ok))
    }

    fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        let g = self.store.inner.read();
        let mut set = BTreeSet::new();
        for (l, samples) in g.iter() {
            if !samples.iter().any(|s| s.t >= self.mint && s.t <= self.maxt)
                || !matches_all(l, matchers)
            {
                continue;
            }
            if let Some(v) = l.get(name) {
                set.insert(v.to_string());
            }
        }
        let mut v: Vec<String> = set.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }

    fn label_names(&self, matchers: &[Matcher], limit: usize) -> Result<Vec<String>> {
        let g = self.store.inner.read();
        let mut set = BTreeSet::new();
        for (l, samples) in g.iter() {
            if !samples.iter().any(|s| s.t >= self.mint && s.t <= self.maxt)
                || !matches_all(l, matchers)
            {
                continue;
            }
            for x in l.iter() {
                set.insert(x.name.to_string());
            }
        }
        let mut v: Vec<String> = set.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_model::MatchType;

    #[test]
    fn append_commit_select() {
        let s = MemStorage::new();
        let a = Labels::from_pairs([("__name__", "m"), ("job", "a")]);
        let b = Labels::from_pairs([("__name__", "m"), ("job", "b")]);
        let mut app = s.appender();
        app.append(None, &a, 10, 1.0).unwrap();
        app.append(None, &b, 10, 2.0).unwrap();
        assert_eq!(s.num_series(), 0, "invisible before commit");
        app.commit().unwrap();
        let mut app = s.appender();
        assert!(matches!(
            app.append(None, &a, 10, 5.0),
            Err(Error::DuplicateSampleForTimestamp)
        ));
        app.append(None, &a, 10, 1.0).unwrap();
        app.commit().unwrap();
        let q = s.querier(0, 100).unwrap();
        let m = Matcher::new(MatchType::Regex, "job", "a|c").unwrap();
        let got: Vec<_> = q
            .select(true, None, &[m])
            .map(|r| r.unwrap().labels().clone())
            .collect();
        assert_eq!(got, vec![a]);
        assert_eq!(q.label_values("job", &[], 0).unwrap(), vec!["a", "b"]);
        assert_eq!(q.label_names(&[], 0).unwrap(), vec!["__name__", "job"]);
        assert!(
            s.querier(11, 100)
                .unwrap()
                .select(true, None, &[])
                .next()
                .is_none()
        );
    }
}
