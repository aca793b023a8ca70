//! Postings: sorted lists of series ids, the set algebra over them (intersect, merge, subtract),
//! and the resolution of label matchers into postings over any [`PostingsSource`] (the head's
//! in-memory index and a block's index both implement it).
//!
//! Matcher semantics are Prometheus': a series without a label has the value `""` for it, so a
//! matcher that matches `""` (`foo=""`, `foo!="bar"`, `foo=~"a|"`, `foo!~"x"`) also selects series
//! without the label. Such matchers are resolved by *subtracting* the series whose value does not
//! match, never by enumerating "series without the label".

use tidemark_model::{MatchType, Matcher};
use tidemark_storage::Result;

/// A sorted, duplicate-free list of series ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Postings(Vec<u64>);

impl Postings {
    /// The empty list.
    pub fn empty() -> Postings {
        Postings(Vec::new())
    }

    /// Wraps a list that is already sorted and unique (checked in debug builds).
    pub fn from_sorted(ids: Vec<u64>) -> Postings {
        debug_assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "postings not sorted/unique"
        );
        Postings(ids)
    }

    /// Sorts and deduplicates any list of ids.
    pub fn from_unsorted(mut ids: Vec<u64>) -> Postings {
        ids.sort_unstable();
        ids.dedup();
        Postings(ids)
    }

    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<u64> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied()
    }

    /// Ids in both lists.
    pub fn intersect(&self, other: &Postings) -> Postings {
        Postings(intersect(&self.0, &other.0))
    }

    /// Ids in either list.
    pub fn merge(&self, other: &Postings) -> Postings {
        Postings(merge(&self.0, &other.0))
    }

    /// Ids in `self` but not in `other`.
    pub fn subtract(&self, other: &Postings) -> Postings {
        Postings(subtract(&self.0, &other.0))
    }
}

impl FromIterator<u64> for Postings {
    fn from_iter<T: IntoIterator<Item = u64>>(iter: T) -> Self {
        Postings::from_unsorted(iter.into_iter().collect())
    }
}

/// Intersection of two sorted unique lists. Uses galloping (binary search in the longer list)
/// when the lengths differ a lot, a linear merge otherwise.
pub fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    if small.is_empty() {
        return out;
    }
    if large.len() / small.len() >= 16 {
        let mut rest = large;
        for &x in small {
            let i = rest.partition_point(|&y| y < x);
            rest = &rest[i..];
            match rest.first() {
                None => break,
                Some(&y) if y == x => out.push(x),
                Some(_) => {}
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < small.len() && j < large.len() {
        let (x, y) = (small[i], large[j]);
        if x < y {
            i += 1;
        } else if y < x {
            j += 1;
        } else {
            out.push(x);
            i += 1;
            j += 1;
        }
    }
    out
}

/// Union of two sorted unique lists.
pub fn merge(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x < y {
            out.push(x);
            i += 1;
        } else if y < x {
            out.push(y);
            j += 1;
        } else {
            out.push(x);
            i += 1;
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Union of many sorted unique lists (pairwise, smallest first, so the work stays near
/// `n log k`).
pub fn merge_many(mut lists: Vec<Postings>) -> Postings {
    match lists.len() {
        0 => return Postings::empty(),
        1 => return lists.pop().unwrap_or_default(),
        _ => {}
    }
    if lists.len() > 8 {
        // Many small lists (e.g. a regex over a high-cardinality label): concatenate and sort.
        let mut all: Vec<u64> = Vec::with_capacity(lists.iter().map(Postings::len).sum());
        for l in &lists {
            all.extend_from_slice(l.as_slice());
        }
        return Postings::from_unsorted(all);
    }
    lists.sort_by_key(|l| std::cmp::Reverse(l.len()));
    while lists.len() > 1 {
        let a = lists.pop().unwrap_or_default();
        let b = lists.pop().unwrap_or_default();
        lists.push(a.merge(&b));
        lists.sort_by_key(|l| std::cmp::Reverse(l.len()));
    }
    lists.pop().unwrap_or_default()
}

/// Elements of `a` that are not in `b` (both sorted unique).
pub fn subtract(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

/// An inverted index that matchers can be resolved against.
pub trait PostingsSource {
    /// Every value label `name` has in this source (any order; no `""`).
    fn label_values(&self, name: &str) -> Result<Vec<String>>;
    /// Series whose label `name` has value `value` (empty when none).
    fn postings(&self, name: &str, value: &str) -> Result<Postings>;
    /// Every series of this source.
    fn all_postings(&self) -> Result<Postings>;
}

/// Postings of the series whose value of `m.name` is non-empty and matches `m`.
fn postings_for_matching_values<S: PostingsSource + ?Sized>(
    src: &S,
    m: &Matcher,
) -> Result<Postings> {
    if let Some(values) = m.set_matches() {
        let mut lists = Vec::with_capacity(values.len());
        for v in values {
            if !v.is_empty() {
                lists.push(src.postings(&m.name, v)?);
            }
        }
        return Ok(merge_many(lists));
    }
    let mut lists = Vec::new();
    for v in src.label_values(&m.name)? {
        if !v.is_empty() && m.matches(&v) {
            lists.push(src.postings(&m.name, &v)?);
        }
    }
    Ok(merge_many(lists))
}

/// The matcher that matches exactly the non-empty values `m` does not match.
fn inverse(m: &Matcher) -> Result<Matcher> {
    let kind = match m.kind {
        MatchType::Equal => MatchType::NotEqual,
        MatchType::NotEqual => MatchType::Equal,
        MatchType::Regex => MatchType::NotRegex,
        MatchType::NotRegex => MatchType::Regex,
    };
    Matcher::new(kind, m.name.clone(), m.value.clone())
        .map_err(|e| tidemark_storage::Error::Other(format!("inverting matcher {m}: {e}")))
}

/// The series of `src` that satisfy every matcher (all series when `ms` is empty), sorted.
pub fn postings_for_matchers<S: PostingsSource + ?Sized>(
    src: &S,
    ms: &[Matcher],
) -> Result<Postings> {
    let mut its: Vec<Postings> = Vec::new();
    let mut nots: Vec<Postings> = Vec::new();
    for m in ms {
        if m.matches_empty() {
            // Select everything except the series whose value does not match. `!=""`-style
            // inverses are computed over the label's values (series without the label stay).
            let inv = inverse(m)?;
            let p = postings_for_matching_values(src, &inv)?;
            if !p.is_empty() {
                nots.push(p);
            }
        } else {
            let p = postings_for_matching_values(src, m)?;
            if p.is_empty() {
                return Ok(Postings::empty());
            }
            its.push(p);
        }
    }
    let mut base = if its.is_empty() {
        src.all_postings()?
    } else {
        its.sort_by_key(Postings::len);
        let mut it = its.into_iter();
        let mut acc = it.next().unwrap_or_default();
        for p in it {
            if acc.is_empty() {
                break;
            }
            acc = acc.intersect(&p);
        }
        acc
    };
    for n in &nots {
        if base.is_empty() {
            break;
        }
        base = base.subtract(n);
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use tidemark_model::Labels;

    /// A brute-force source: series id = index in the vector.
    struct VecSource(Vec<Labels>);

    impl PostingsSource for VecSource {
        fn label_values(&self, name: &str) -> Result<Vec<String>> {
            let s: BTreeSet<String> = self
                .0
                .iter()
                .filter_map(|l| l.get(name).map(str::to_string))
                .collect();
            Ok(s.into_iter().collect())
        }
        fn postings(&self, name: &str, value: &str) -> Result<Postings> {
            Ok(Postings::from_sorted(
                (0..self.0.len() as u64)
                    .filter(|&i| self.0[i as usize].get(name) == Some(value))
                    .collect(),
            ))
        }
        fn all_postings(&self) -> Result<Postings> {
            Ok(Postings::from_sorted((0..self.0.len() as u64).collect()))
        }
    }

    fn sorted_set(v: Vec<u64>) -> Vec<u64> {
        v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
    }

    #[test]
    fn set_algebra() {
        let a = Postings::from_unsorted(vec![5, 1, 3, 9, 3]);
        let b = Postings::from_sorted(vec![3, 4, 5]);
        assert_eq!(a.as_slice(), &[1, 3, 5, 9]);
        assert_eq!(a.intersect(&b).as_slice(), &[3, 5]);
        assert_eq!(a.merge(&b).as_slice(), &[1, 3, 4, 5, 9]);
        assert_eq!(a.subtract(&b).as_slice(), &[1, 9]);
        let big = Postings::from_sorted((0..1000).collect());
        assert_eq!(
            big.intersect(&a).as_slice(),
            &[1, 3, 5, 9],
            "galloping path"
        );
    }

    #[test]
    fn prometheus_semantics() {
        let ls = vec![
            Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            Labels::from_pairs([("__name__", "up"), ("job", "b")]),
            Labels::from_pairs([("__name__", "up")]),
        ];
        let src = VecSource(ls);
        let q = |ms: Vec<Matcher>| postings_for_matchers(&src, &ms).unwrap().into_vec();
        let re = |k, n: &str, v: &str| Matcher::new(k, n, v).unwrap();
        assert_eq!(q(vec![Matcher::equal("job", "")]), vec![2]);
        assert_eq!(q(vec![Matcher::not_equal("job", "a")]), vec![1, 2]);
        assert_eq!(q(vec![Matcher::not_equal("job", "")]), vec![0, 1]);
        assert_eq!(q(vec![re(MatchType::Regex, "job", "a|")]), vec![0, 2]);
        assert_eq!(q(vec![re(MatchType::Regex, "job", ".*")]), vec![0, 1, 2]);
        assert_eq!(q(vec![re(MatchType::Regex, "job", ".+")]), vec![0, 1]);
        assert_eq!(q(vec![re(MatchType::NotRegex, "job", "a|b")]), vec![2]);
        assert_eq!(
            q(vec![
                Matcher::equal("__name__", "up"),
                Matcher::equal("job", "c")
            ]),
            Vec::<u64>::new()
        );
        assert_eq!(q(vec![]), vec![0, 1, 2]);
    }

    fn matcher_strategy() -> impl Strategy<Value = Matcher> {
        let names = prop_oneof![Just("a"), Just("b"), Just("c")];
        let values = prop_oneof![
            Just(""),
            Just("x"),
            Just("y"),
            Just("z"),
            Just("x|y"),
            Just("x|"),
            Just(".*"),
            Just(".+"),
            Just("[xy]"),
            Just("x.*"),
            Just("(x|z)?")
        ];
        let kinds = prop_oneof![
            Just(MatchType::Equal),
            Just(MatchType::NotEqual),
            Just(MatchType::Regex),
            Just(MatchType::NotRegex)
        ];
        (kinds, names, values).prop_map(|(k, n, v)| Matcher::new(k, n, v).unwrap())
    }

    fn labels_strategy() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("c")],
            prop_oneof![Just("x"), Just("y"), Just("z"), Just("w")],
            0..4,
        )
        .prop_map(|m: BTreeMap<&str, &str>| Labels::from_pairs(m))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matchers_match_brute_force(series in proptest::collection::vec(labels_strategy(), 0..30),
                                      ms in proptest::collection::vec(matcher_strategy(), 0..4)) {
            let want: Vec<u64> = series
                .iter()
                .enumerate()
                .filter(|(_, l)| ms.iter().all(|m| m.matches(l.get_or_empty(&m.name))))
                .map(|(i, _)| i as u64)
                .collect();
            let src = VecSource(series);
            let got = postings_for_matchers(&src, &ms).unwrap().into_vec();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn algebra_matches_sets(a in proptest::collection::vec(0u64..200, 0..100), b in proptest::collection::vec(0u64..200, 0..100)) {
            let (sa, sb): (BTreeSet<u64>, BTreeSet<u64>) = (a.iter().copied().collect(), b.iter().copied().collect());
            let (pa, pb) = (Postings::from_unsorted(a.clone()), Postings::from_unsorted(b.clone()));
            prop_assert_eq!(pa.intersect(&pb).into_vec(), sa.intersection(&sb).copied().collect::<Vec<_>>());
            prop_assert_eq!(pa.merge(&pb).into_vec(), sa.union(&sb).copied().collect::<Vec<_>>());
            prop_assert_eq!(pa.subtract(&pb).into_vec(), sa.difference(&sb).copied().collect::<Vec<_>>());
            let many = merge_many(vec![pa.clone(), pb.clone(), Postings::from_unsorted(a.iter().map(|x| x / 2).collect())]);
            let mut want: Vec<u64> = a.iter().chain(b.iter()).copied().chain(a.iter().map(|x| x / 2)).collect();
            want = sorted_set(want);
            prop_assert_eq!(many.into_vec(), want);
        }
    }
}
