//! In-memory, bounded stores for what remote write (and import) carry besides samples: exemplars
//! (a circular buffer like Prometheus' `--storage.exemplars.exemplars-limit`, oldest dropped
//! first) and metric metadata (latest per metric family, bounded number of families).

use std::collections::{HashMap, VecDeque};

use parking_lot::RwLock;
use tidemark_model::{Exemplar, Labels, Matcher, Metadata};
use tidemark_storage::memory::matches_all;

/// A bounded ring of `(series, exemplar)`.
#[derive(Debug)]
pub(crate) struct ExemplarStore {
    cap: usize,
    ring: RwLock<VecDeque<(Labels, Exemplar)>>,
}

impl ExemplarStore {
    pub(crate) fn new(cap: usize) -> ExemplarStore {
        ExemplarStore {
            cap,
            ring: RwLock::new(VecDeque::new()),
        }
    }

    /// Adds an exemplar; an exact repeat of the series' latest exemplar is ignored (as
    /// Prometheus ignores duplicate exemplars). Returns whether it was stored.
    pub(crate) fn add(&self, series: &Labels, e: Exemplar) -> bool {
        if self.cap == 0 {
            return false;
        }
        let mut r = self.ring.write();
        if let Some((_, last)) = r.iter().rev().take(64).find(|(l, _)| l == series)
            && last.ts == e.ts
            && last.value.to_bits() == e.value.to_bits()
            && last.labels == e.labels
        {
            return false;
        }
        if r.len() >= self.cap {
            r.pop_front();
        }
        r.push_back((series.clone(), e));
        true
    }

    /// Exemplars of series matching any matcher set within `[start, end]`, grouped by series
    /// (series in label order, exemplars in time order).
    pub(crate) fn query(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Vec<(Labels, Vec<Exemplar>)> {
        let r = self.ring.read();
        let mut by: HashMap<Labels, Vec<Exemplar>> = HashMap::new();
        for (l, e) in r.iter() {
            let t = e.ts.unwrap_or(0);
            if t < start || t > end || !sets.iter().any(|s| matches_all(l, s)) {
                continue;
            }
            by.entry(l.clone()).or_default().push(e.clone());
        }
        let mut out: Vec<(Labels, Vec<Exemplar>)> = by.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, es) in &mut out {
            es.sort_by_key(|e| e.ts.unwrap_or(0));
        }
        out
    }
}

/// Latest metadata per metric family, bounded (new families beyond the bound are dropped).
#[derive(Debug)]
pub(crate) struct MetadataStore {
    cap: usize,
    map: RwLock<HashMap<String, Metadata>>,
}

impl MetadataStore {
    pub(crate) fn new(cap: usize) -> MetadataStore {
        MetadataStore {
            cap,
            map: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn set(&self, metric: &str, m: Metadata) -> bool {
        let mut g = self.map.write();
        if let Some(old) = g.get_mut(metric) {
            *old = m;
            return true;
        }
        if g.len() >= self.cap {
            return false;
        }
        g.insert(metric.to_string(), m);
        true
    }

    pub(crate) fn all(&self) -> Vec<(String, Metadata)> {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(t: i64, v: f64) -> Exemplar {
        Exemplar {
            labels: Labels::from_pairs([("trace_id", "abc")]),
            value: v,
            ts: Some(t),
        }
    }

    #[test]
    fn ring_is_bounded_and_queries_by_matchers() {
        let s = ExemplarStore::new(3);
        let a = Labels::from_pairs([("__name__", "a")]);
        let b = Labels::from_pairs([("__name__", "b")]);
        assert!(s.add(&a, ex(1, 1.0)));
        assert!(!s.add(&a, ex(1, 1.0)), "duplicate ignored");
        assert!(s.add(&b, ex(2, 2.0)));
        assert!(s.add(&a, ex(3, 3.0)));
        assert!(s.add(&a, ex(4, 4.0)));
        let all = s.query(
            &[vec![
                Matcher::new(tidemark_model::MatchType::Regex, "__name__", ".+").unwrap(),
            ]],
            0,
            10,
        );
        let n: usize = all.iter().map(|(_, e)| e.len()).sum();
        assert_eq!(n, 3, "oldest dropped");
        let only_a = s.query(&[vec![Matcher::equal("__name__", "a")]], 0, 3);
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].1.len(), 1);
        assert_eq!(only_a[0].1[0].ts, Some(3));
    }

    #[test]
    fn metadata_bounded() {
        let m = MetadataStore::new(1);
        assert!(m.set("a", Metadata::default()));
        assert!(!m.set("b", Metadata::default()));
        assert!(m.set(
            "a",
            Metadata {
                help: "h".into(),
                ..Default::default()
            }
        ));
        assert_eq!(m.all()[0].1.help, "h");
    }
}
