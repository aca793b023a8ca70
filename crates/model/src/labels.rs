//! [`Labels`]: a sorted label set held in one reference-counted buffer.
//!
//! Layout of the buffer (also the *canonical encoding* that the stable series hash is computed
//! over, and the form the log and index store): for each label in ascending `(name, value)`
//! order, `uvarint(len(name)) name uvarint(len(value)) value`. Names are unique. One allocation
//! per label set, `clone` is a reference-count increment, `Hash`/`Eq` work on the raw bytes.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

static EMPTY: LazyLock<Arc<[u8]>> = LazyLock::new(|| Arc::from(&[][..]));

/// One label, borrowed from a [`Labels`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// A sorted set of labels identifying a series. Cheap to clone, hash and compare.
#[derive(Clone)]
pub struct Labels {
    buf: Arc<[u8]>,
}

/// Error from [`Labels::from_encoded`] / [`Labels::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    #[error("label encoding truncated at byte {0}")]
    Truncated(usize),
    #[error("label name or value is not valid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("empty label name")]
    EmptyName,
    #[error("labels not sorted or duplicate label name {0:?}")]
    NotSorted(String),
}

fn put_uvarint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v: usize = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift > 35 {
            return None;
        }
        v |= ((b & 0x7f) as usize) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
    }
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Labels {
        Labels { buf: EMPTY.clone() }
    }

    /// Builds a label set from pairs in any order. A later pair with the same name replaces an
    /// earlier one; pairs with an empty value are dropped (Prometheus treats `a=""` as absent).
    pub fn from_pairs<I, K, V>(pairs: I) -> Labels
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut b = LabelsBuilder::new();
        for (k, v) in pairs {
            b.set(k.as_ref(), v.as_ref());
        }
        b.build()
    }

    /// Encodes already sorted, unique `(name, value)` pairs. Debug builds check the order.
    pub fn from_sorted<'a, I>(pairs: I) -> Labels
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut out = Vec::with_capacity(64);
        let mut prev: Option<&str> = None;
        for (n, v) in pairs {
            debug_assert!(
                prev.is_none_or(|p| p < n),
                "labels not sorted: {prev:?} then {n:?}"
            );
            prev = Some(n);
            put_uvarint(&mut out, n.len());
            out.extend_from_slice(n.as_bytes());
            put_uvarint(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        Labels::from_buf(out)
    }

    fn from_buf(out: Vec<u8>) -> Labels {
        if out.is_empty() {
            return Labels::empty();
        }
        Labels {
            buf: Arc::from(out),
        }
    }

    /// Decodes the canonical encoding (see the module docs), validating UTF-8, order and
    /// uniqueness: safe to call on bytes read from disk or the network.
    pub fn from_encoded(bytes: &[u8]) -> Result<Labels, LabelsError> {
        let mut pos = 0;
        let mut prev: Option<&str> = None;
        while pos < bytes.len() {
            let name = read_str(bytes, &mut pos)?;
            let _value = read_str(bytes, &mut pos)?;
            if name.is_empty() {
                return Err(LabelsError::EmptyName);
            }
            if prev.is_some_and(|p| p >= name) {
                return Err(LabelsError::NotSorted(name.to_string()));
            }
            prev = Some(name);
        }
        Ok(Labels::from_buf(bytes.to_vec()))
    }

    /// The canonical encoding (see the module docs).
    pub fn encoded(&self) -> &[u8] {
        &self.buf
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Iterates labels in sorted order.
    pub fn iter(&self) -> LabelsIter<'_> {
        LabelsIter {
            buf: &self.buf,
            pos: 0,
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        for l in self.iter() {
            match l.name.cmp(name) {
                Ordering::Less => continue,
                Ordering::Equal => return Some(l.value),
                Ordering::Greater => return None,
            }
        }
        None
    }

    /// The value of `name`, or `""` when absent (Prometheus' `Labels.Get`).
    pub fn get_or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The metric name (`__name__`), if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// The stable series hash: xxh3-64 (seed 0) of the canonical encoding. Independent of
    /// process, platform and insertion order; pinned by a test. Routes series to shards.
    pub fn stable_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.buf)
    }

    /// Hash of only the labels whose names are in `names` (sorted or not), for grouping.
    pub fn hash_for_names(&self, names: &[impl AsRef<str>]) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for l in self.iter() {
            if names.iter().any(|n| n.as_ref() == l.name) {
                h.update(l.name.as_bytes());
                h.update(&[0xff]);
                h.update(l.value.as_bytes());
                h.update(&[0xff]);
            }
        }
        h.digest()
    }

    /// Hash of the labels whose names are *not* in `names` (and never `__name__`).
    pub fn hash_without_names(&self, names: &[impl AsRef<str>]) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for l in self.iter() {
            if l.name != METRIC_NAME && !names.iter().any(|n| n.as_ref() == l.name) {
                h.update(l.name.as_bytes());
                h.update(&[0xff]);
                h.update(l.value.as_bytes());
                h.update(&[0xff]);
            }
        }
        h.digest()
    }

    /// A copy keeping only labels named in `names`.
    pub fn keep(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels::from_sorted(
            self.iter()
                .filter(|l| names.iter().any(|n| n.as_ref() == l.name))
                .map(|l| (l.name, l.value)),
        )
    }

    /// A copy without the labels named in `names`.
    pub fn drop_names(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels::from_sorted(
            self.iter()
                .filter(|l| !names.iter().any(|n| n.as_ref() == l.name))
                .map(|l| (l.name, l.value)),
        )
    }

    /// A copy without `__name__`.
    pub fn without_metric_name(&self) -> Labels {
        if !self.has(METRIC_NAME) {
            return self.clone();
        }
        self.drop_names(&[METRIC_NAME])
    }

    /// A builder starting from these labels.
    pub fn to_builder(&self) -> LabelsBuilder {
        let mut b = LabelsBuilder::new();
        for l in self.iter() {
            b.set(l.name, l.value);
        }
        b
    }

    /// Approximate heap bytes held by this label set (shared buffers counted fully).
    pub fn heap_size(&self) -> usize {
        self.buf.len() + 16
    }
}

fn read_str<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a str, LabelsError> {
    let start = *pos;
    let n = get_uvarint(bytes, pos).ok_or(LabelsError::Truncated(start))?;
    let end = pos.checked_add(n).ok_or(LabelsError::Truncated(start))?;
    let s = bytes.get(*pos..end).ok_or(LabelsError::Truncated(*pos))?;
    let s = std::str::from_utf8(s).map_err(|_| LabelsError::InvalidUtf8(*pos))?;
    *pos = end;
    Ok(s)
}

/// Iterator over the labels of a [`Labels`].
#[derive(Debug, Clone)]
pub struct LabelsIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> LabelsIter<'a> {
    #[inline]
    fn next_str(&mut self) -> Option<&'a str> {
        let n = get_uvarint(self.buf, &mut self.pos)?;
        let end = self.pos + n;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        // SAFETY: a `Labels` buffer is only ever built by `from_sorted` (which copies `&str`
        // bytes between length prefixes) or by `from_encoded` (which validates every string as
        // UTF-8 at exactly these boundaries), so every length-delimited piece is valid UTF-8.
        // This is the hottest path of series comparison, hence no re-validation here.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = Label<'a>;

    #[inline]
    fn next(&mut self) -> Option<Label<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let name = self.next_str()?;
        let value = self.next_str()?;
        Some(Label { name, value })
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = Label<'a>;
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> LabelsIter<'a> {
        self.iter()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        // Shared label sets (the scrape cache and the head hold the same `Arc`) compare without
        // touching the bytes.
        Arc::ptr_eq(&self.buf, &other.buf) || self.buf == other.buf
    }
}
impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.buf.hash(state)
    }
}

impl Ord for Labels {
    /// Prometheus' order: label by label, name then value, a prefix sorts first.
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.buf, &other.buf) {
            return Ordering::Equal;
        }
        let mut a = self.iter();
        let mut b = other.iter();
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) => {
                    let o = x.name.cmp(y.name).then_with(|| x.value.cmp(y.value));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
            }
        }
    }
}
impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::empty()
    }
}

/// Writes `s` as a Go-style double-quoted string (as Prometheus' `labels.String()` does).
pub(crate) fn write_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(f, "\\x{:02x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for Labels {
    /// `{__name__="up", job="node"}`, like Prometheus' `labels.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(l.name)?;
            f.write_str("=")?;
            write_quoted(f, l.value)?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Labels {
    /// A JSON object `{"name": "value", ...}`, as the Prometheus API writes a metric.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for l in self.iter() {
            m.serialize_entry(l.name, l.value)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        Ok(Labels::from_pairs(m))
    }
}

/// Builds a [`Labels`] by setting and deleting names.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    pairs: Vec<(String, String)>,
}

impl LabelsBuilder {
    pub fn new() -> LabelsBuilder {
        LabelsBuilder { pairs: Vec::new() }
    }

    /// Sets `name` to `value`; an empty value deletes the label (Prometheus semantics).
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            return self.del(name);
        }
        match self.pairs.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => value.clone_into(&mut self.pairs[i].1),
            Err(i) => self.pairs.insert(i, (name.to_string(), value.to_string())),
        }
        self
    }

    /// Removes `name` if present.
    pub fn del(&mut self, name: &str) -> &mut Self {
        if let Ok(i) = self.pairs.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            self.pairs.remove(i);
        }
        self
    }

    /// Keeps only the labels for which `f(name, value)` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &str) -> bool) -> &mut Self {
        self.pairs.retain(|(n, v)| f(n, v));
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn build(&self) -> Labels {
        Labels::from_sorted(self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned: this value routes series to shards in every deployed cluster. Never change it.
        let l = Labels::from_pairs([("__name__", "up"), ("job", "node"), ("instance", "a:9100")]);
        assert_eq!(
            l.stable_hash(),
            0x2770_3277_07bb_071d,
            "hash = {:#x}",
            l.stable_hash()
        );
    }

    #[test]
    fn display_and_get() {
        let l = Labels::from_pairs([("b", "x\"y"), ("a", "1"), ("__name__", "m")]);
        assert_eq!(l.to_string(), r#"{__name__="m", a="1", b="x\"y"}"#);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("c"), None);
        assert_eq!(l.metric_name(), Some("m"));
        assert_eq!(l.len(), 3);
        assert_eq!(l.without_metric_name().len(), 2);
        assert_eq!(Labels::from_pairs([("a", "")]), Labels::empty());
    }

    #[test]
    fn order_is_prometheus_order() {
        let a = Labels::from_pairs([("a", "1")]);
        let ab = Labels::from_pairs([("ab", "1")]);
        let a_b = Labels::from_pairs([("a", "1"), ("b", "1")]);
        assert!(a < ab);
        assert!(a < a_b);
        assert!(a_b < ab);
    }

    #[test]
    fn from_encoded_rejects_bad_bytes() {
        assert!(Labels::from_encoded(&[5, b'a']).is_err());
        assert!(Labels::from_encoded(&[1, 0xff, 1, b'a']).is_err());
        assert!(Labels::from_encoded(&[0, 1, b'a']).is_err());
        assert!(Labels::from_encoded(&[1, b'b', 0, 1, b'a', 0]).is_err());
        let l = Labels::from_pairs([("x", "y"), ("a", "é")]);
        assert_eq!(Labels::from_encoded(l.encoded()).unwrap(), l);
    }

    proptest! {
        #[test]
        fn order_matches_pairs_model(a in proptest::collection::btree_map("[a-c]{1,3}", "[a-c]{1,3}", 0..4),
                                     b in proptest::collection::btree_map("[a-c]{1,3}", "[a-c]{1,3}", 0..4)) {
            let la = Labels::from_pairs(a.iter());
            let lb = Labels::from_pairs(b.iter());
            let va: Vec<_> = a.into_iter().collect();
            let vb: Vec<_> = b.into_iter().collect();
            prop_assert_eq!(la.cmp(&lb), va.cmp(&vb));
            prop_assert_eq!(la == lb, va == vb);
            prop_assert_eq!(Labels::from_encoded(la.encoded()).unwrap(), la);
        }
    }
}
