//! What every replica of a shard keeps besides samples: metric metadata and exemplars of the
//! shard's series, from the shard's extras entries (`batch.rs`). Kept in memory and bounded,
//! like a single node keeps them (docs/cluster.md "Metadata and exemplars"), and written into
//! the shard's snapshots as one extras payload ([`ExtrasStore::to_extras`]), from which an
//! installed or restarted replica gets them back ([`ExtrasStore::replace`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::RwLock;
use tidemark_model::{Exemplar, Labels, Matcher, Metadata};

use crate::batch::Extras;

/// Exemplars one replica keeps (the oldest are dropped first).
const MAX_EXEMPLARS: usize = 16_384;
/// (metric family, target) pairs whose metadata one replica keeps (new ones beyond are dropped).
const MAX_METADATA: usize = 16_384;

/// The labels that identify the target a series came from: its `job` and `instance`.
pub fn target_of(series: &Labels) -> Labels {
    Labels::from_pairs(
        ["job", "instance"]
            .into_iter()
            .filter_map(|n| series.get(n).map(|v| (n, v.to_string()))),
    )
}

/// A shard replica's metadata and exemplars.
#[derive(Debug, Default)]
pub struct ExtrasStore {
    exemplars: RwLock<VecDeque<(Labels, Exemplar)>>,
    /// (metric family, target) -> latest metadata.
    metadata: RwLock<HashMap<(String, Labels), Metadata>>,
}

impl ExtrasStore {
    /// Keeps what an applied extras entry carries.
    pub fn apply(&self, e: Extras) {
        if !e.metadata.is_empty() {
            let mut g = self.metadata.write();
            for (l, m) in e.metadata {
                let Some(name) = l.metric_name() else {
                    continue;
                };
                let key = (name.to_string(), target_of(&l));
                if let Some(old) = g.get_mut(&key) {
                    *old = m;
                } else if g.len() < MAX_METADATA {
                    g.insert(key, m);
                }
            }
        }
        if !e.exemplars.is_empty() {
            let mut r = self.exemplars.write();
            for (l, x) in e.exemplars {
                // An exact repeat of the series' latest exemplar is ignored (as Prometheus does).
                if r.iter()
                    .rev()
                    .take(64)
                    .find(|(s, _)| *s == l)
                    .is_some_and(|(_, last)| {
                        last.ts == x.ts
                            && last.value.to_bits() == x.value.to_bits()
                            && last.labels == x.labels
                    })
                {
                    continue;
                }
                if r.len() >= MAX_EXEMPLARS {
                    r.pop_front();
                }
                r.push_back((l, x));
            }
        }
    }

    /// Everything kept here as one extras payload: metadata with the labels of its target plus
    /// `__name__`, exemplars oldest first. [`ExtrasStore::replace`] with it rebuilds this store.
    pub fn to_extras(&self) -> Extras {
        Extras {
            metadata: metadata_as_series(self.metadata()),
            exemplars: self.exemplars.read().iter().cloned().collect(),
        }
    }

    /// Replaces everything kept here with what `e` carries (a snapshot's extras), within the
    /// same bounds as [`ExtrasStore::apply`]. Exemplars are kept as they come (a snapshot holds
    /// no repeats the store had not kept).
    pub fn replace(&self, e: Extras) {
        let mut metadata = HashMap::with_capacity(e.metadata.len().min(MAX_METADATA));
        for (l, m) in e.metadata {
            let Some(name) = l.metric_name() else {
                continue;
            };
            let key = (name.to_string(), target_of(&l));
            if metadata.len() < MAX_METADATA || metadata.contains_key(&key) {
                metadata.insert(key, m);
            }
        }
        let skip = e.exemplars.len().saturating_sub(MAX_EXEMPLARS);
        let exemplars: VecDeque<(Labels, Exemplar)> = e.exemplars.into_iter().skip(skip).collect();
        *self.metadata.write() = metadata;
        *self.exemplars.write() = exemplars;
    }

    /// Exemplars of series matching any matcher set, with a time in `[start, end]`.
    pub fn exemplars(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Vec<(Labels, Exemplar)> {
        self.exemplars
            .read()
            .iter()
            .filter(|(l, e)| {
                let t = e.ts.unwrap_or(0);
                t >= start
                    && t <= end
                    && sets
                        .iter()
                        .any(|set| set.iter().all(|m| m.matches(l.get_or_empty(&m.name))))
            })
            .cloned()
            .collect()
    }

    /// Every (metric family, target, metadata) kept here.
    pub fn metadata(&self) -> Vec<(String, Labels, Metadata)> {
        self.metadata
            .read()
            .iter()
            .map(|((n, t), m)| (n.clone(), t.clone(), m.clone()))
            .collect()
    }
}

/// (family, target, metadata) as series labels: the target's labels plus `__name__`.
pub fn metadata_as_series(v: Vec<(String, Labels, Metadata)>) -> Vec<(Labels, Metadata)> {
    v.into_iter()
        .map(|(name, target, m)| {
            let mut pairs: Vec<(String, String)> = target
                .iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect();
            pairs.push(("__name__".to_string(), name));
            (Labels::from_pairs(pairs), m)
        })
        .collect()
}

/// Groups exemplars by series (series in label order, exemplars in time order), dropping exact
/// duplicates.
pub fn group_exemplars(all: Vec<(Labels, Exemplar)>) -> Vec<(Labels, Vec<Exemplar>)> {
    let mut by: BTreeMap<Labels, Vec<Exemplar>> = BTreeMap::new();
    for (l, e) in all {
        let v = by.entry(l).or_default();
        if !v
            .iter()
            .any(|x| x.ts == e.ts && x.value.to_bits() == e.value.to_bits() && x.labels == e.labels)
        {
            v.push(e);
        }
    }
    by.into_iter()
        .map(|(l, mut v)| {
            v.sort_by_key(|e| e.ts.unwrap_or(0));
            (l, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tidemark_model::MetricType;

    #[test]
    fn keeps_latest_metadata_per_family_and_target_and_filters_exemplars() {
        let s = ExtrasStore::default();
        let a = Labels::from_pairs([("__name__", "a"), ("job", "j"), ("instance", "i:1")]);
        let meta = |h: &str| Metadata {
            kind: MetricType::Counter,
            help: h.into(),
            unit: String::new(),
        };
        let ex = |t: i64| Exemplar {
            labels: Labels::from_pairs([("trace_id", "x")]),
            value: 1.0,
            ts: Some(t),
        };
        s.apply(Extras {
            metadata: vec![(a.clone(), meta("old")), (a.clone(), meta("new"))],
            exemplars: vec![(a.clone(), ex(5)), (a.clone(), ex(5)), (a.clone(), ex(9))],
        });
        let m = s.metadata();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "a");
        assert_eq!(
            m[0].1,
            Labels::from_pairs([("job", "j"), ("instance", "i:1")])
        );
        assert_eq!(m[0].2.help, "new");
        let all = vec![vec![Matcher::equal("__name__", "a")]];
        assert_eq!(s.exemplars(&all, 0, 100).len(), 2, "exact repeat ignored");
        assert_eq!(s.exemplars(&all, 6, 100).len(), 1);
        let none = vec![vec![Matcher::equal("__name__", "b")]];
        assert!(s.exemplars(&none, 0, 100).is_empty());
        let g = group_exemplars(s.exemplars(&all, 0, 100));
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].1.len(), 2);
    }
}
