//! The synchronous core of one target's scrape loop: parse a body, map each line to a series
//! through the scrape cache (raw series text -> labels + storage ref, so known series never
//! build labels), apply target labels and metric relabeling to new series, enforce limits,
//! append, and write staleness markers for series that vanished. The async loop around it lives
//! in `manager.rs`.

use std::collections::HashMap;
use std::io::Read;

use std::hash::{BuildHasherDefault, Hasher};
use tidemark_model::{Labels, LabelsBuilder, METRIC_NAME, Metadata, stale_nan};
use tidemark_storage::{Appender, SeriesRef};

/// Hashes a cache key (already a hash of the series text): its low 64 bits.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u128(&mut self, i: u128) {
        self.0 ^= i as u64;
    }
}

type KeyBuild = BuildHasherDefault<KeyHasher>;

use crate::parse::{EntryKind, Format, Parser};
use crate::relabel::{self, RelabelConfig};

/// Per-target settings the append step needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppendOptions {
    pub(crate) honor_labels: bool,
    pub(crate) honor_timestamps: bool,
    pub(crate) track_timestamps_staleness: bool,
    pub(crate) sample_limit: u64,
    pub(crate) label_limit: u64,
    pub(crate) label_name_length_limit: u64,
    pub(crate) label_value_length_limit: u64,
    pub(crate) metric_relabel_configs: Vec<RelabelConfig>,
}

/// Counts of one scrape, for the synthetic series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScrapeStats {
    pub(crate) scraped: u64,
    pub(crate) post_relabel: u64,
    pub(crate) added: u64,
    pub(crate) sample_errors: u64,
}

#[derive(Debug)]
struct CacheEntry {
    /// 128-bit hash of the raw series text (name and labels as exposed): the cache key.
    key: u128,
    series: Option<SeriesRef>,
    labels: Labels,
    /// Iteration in which the raw series text was last seen (duplicate detection, pruning).
    last_iter: u64,
    /// Iteration in which the series was appended with a staleness-tracked sample (pending until
    /// the scrape succeeds).
    tracked_iter: u64,
    /// The series had a tracked sample in the last successful scrape: it gets a staleness
    /// marker when it is missing from the next one.
    live: bool,
}

#[derive(Debug, Default)]
struct MetaEntry {
    meta: Metadata,
    last_iter: u64,
}

/// The cache's series: a slab indexed by a hash table, plus the order in which the last scrape
/// listed them. A target exposes its series in the same order scrape after scrape, so the entry
/// at the same position in the last scrape is tried first: no probing of a table that went cold
/// in the seconds since. Entries are keyed by a 128-bit hash of the series text rather than the
/// text itself (a collision among a target's series has a probability of about n²/2¹²⁹: nil),
/// which keeps the text out of memory and makes the comparison one of 16 bytes in the entry.
#[derive(Debug, Default)]
struct Entries {
    slab: Vec<Option<CacheEntry>>,
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    /// Slab index of each sample position of the last scrape (`u32::MAX`: none).
    order: Vec<u32>,
    /// The same for the scrape in progress.
    current: Vec<u32>,
}

/// The cache key of a series text.
fn series_key(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

impl Entries {
    fn entry(&self, i: u32) -> Option<&CacheEntry> {
        self.slab.get(i as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, i: u32) -> Option<&mut CacheEntry> {
        self.slab.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Starts a scrape: positions are counted from 0 again.
    fn begin(&mut self) {
        self.current.clear();
    }

    /// The entry for `key`, the `pos`-th sample of this scrape; records the position.
    fn find(&mut self, pos: usize, key: u128) -> Option<u32> {
        let predicted = self
            .order
            .get(pos)
            .copied()
            .filter(|&i| self.entry(i).is_some_and(|e| e.key == key));
        let found = predicted.or_else(|| {
            let slab = &self.slab;
            self.index
                .find(key as u64, |&i| {
                    slab.get(i as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|e| e.key == key)
                })
                .copied()
        });
        if self.current.len() == pos {
            self.current.push(found.unwrap_or(u32::MAX));
        }
        found
    }

    /// Adds an entry for a key [`Entries::find`] did not find at `pos`.
    fn insert(&mut self, pos: usize, entry: CacheEntry) -> u32 {
        let h = entry.key as u64;
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slab.get_mut(i as usize) {
                    *slot = Some(entry);
                }
                i
            }
            None => {
                self.slab.push(Some(entry));
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.index.insert_unique(h, i, |&j| {
            slab.get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |e| e.key as u64)
        });
        if let Some(p) = self.current.get_mut(pos) {
            *p = i;
        }
        i
    }

    /// A successful scrape ends: its order predicts the next one.
    fn commit_order(&mut self) {
        std::mem::swap(&mut self.order, &mut self.current);
        self.current.clear();
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut CacheEntry> {
        self.slab.iter_mut().filter_map(Option::as_mut)
    }

    /// Keeps the entries for which `keep` returns true.
    fn retain(&mut self, mut keep: impl FnMut(&mut CacheEntry) -> bool) {
        for i in 0..self.slab.len() {
            let Some(Some(e)) = self.slab.get_mut(i) else {
                continue;
            };
            if keep(e) {
                continue;
            }
            let h = e.key as u64;
            if let Ok(found) = self.index.find_entry(h, |&j| j as usize == i) {
                found.remove();
            }
            self.slab[i] = None;
            self.free.push(i as u32);
        }
    }
}

/// Everything one target remembers between scrapes.
#[derive(Debug, Default)]
pub(crate) struct ScrapeCache {
    entries: Entries,
    /// Series dropped by metric relabeling, by key, with the iteration they were last seen in.
    dropped: HashMap<u128, u64, KeyBuild>,
    metadata: HashMap<String, MetaEntry>,
    iter: u64,
    /// Refs of the synthetic series, by name.
    report: HashMap<&'static str, (Labels, Option<SeriesRef>)>,
    /// Reused decompression buffer.
    pub(crate) buf: Vec<u8>,
}

/// Entries not seen for this many scrapes leave the cache (as in Prometheus).
const CACHE_KEEP_ITERS: u64 = 10;

/// Go's `%.50s`: at most 50 characters.
fn trunc50(s: &str) -> &str {
    match s.char_indices().nth(50) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Prometheus' `verifyLabelLimits`, with its error texts.
pub(crate) fn verify_label_limits(l: &Labels, o: &AppendOptions) -> Result<(), String> {
    let met = l.get_or_empty(METRIC_NAME);
    if o.label_limit > 0 {
        let n = l.len() as u64;
        if n > o.label_limit {
            return Err(format!(
                "label_limit exceeded (metric: {}, number of labels: {n}, limit: {})",
                trunc50(met),
                o.label_limit
            ));
        }
    }
    for x in l.iter() {
        if o.label_name_length_limit > 0 && x.name.len() as u64 > o.label_name_length_limit {
            return Err(format!(
                "label_name_length_limit exceeded (metric: {}, label name: {}, length: {}, limit: {})",
                trunc50(met),
                trunc50(x.name),
                x.name.len(),
                o.label_name_length_limit
            ));
        }
        if o.label_value_length_limit > 0 && x.value.len() as u64 > o.label_value_length_limit {
            return Err(format!(
                "label_value_length_limit exceeded (metric: {}, label name: {}, value: {:?}, length: {}, limit: {})",
                trunc50(met),
                trunc50(x.name),
                trunc50(x.value),
                x.value.len(),
                o.label_value_length_limit
            ));
        }
    }
    Ok(())
}

/// Attaches the target labels to a scraped label set (Prometheus' `mutateSampleLabels` without
/// the relabel step). With `honor_labels` the scraped value wins; otherwise a scraped label that
/// clashes with a target label is renamed `exported_<name>` (repeatedly, until free).
pub(crate) fn mutate_labels(scraped: &Labels, target: &Labels, honor_labels: bool) -> Labels {
    if target.is_empty() {
        return scraped.clone();
    }
    let mut b = scraped.to_builder();
    if honor_labels {
        for t in target.iter() {
            if !scraped.has(t.name) {
                b.set(t.name, t.value);
            }
        }
        return b.build();
    }
    let mut conflicts: Vec<(&str, &str)> = Vec::new();
    for t in target.iter() {
        if let Some(v) = scraped.get(t.name) {
            conflicts.push((t.name, v));
        }
        b.set(t.name, t.value);
    }
    conflicts.sort_by_key(|(n, _)| n.len());
    for (name, value) in conflicts {
        let mut new = name.to_string();
        loop {
            new = format!("exported_{new}");
            if b.get(&new).is_none() {
                b.set(&new, value);
                break;
            }
        }
    }
    b.build()
}

fn family_of<'a>(metadata: &HashMap<String, MetaEntry>, name: &'a str) -> Option<&'a str> {
    if metadata.contains_key(name) {
        return Some(name);
    }
    for suffix in [
        "_total", "_bucket", "_count", "_sum", "_created", "_info", "_gcount", "_gsum",
    ] {
        if let Some(f) = name.strip_suffix(suffix)
            && metadata.contains_key(f)
        {
            return Some(f);
        }
    }
    None
}

/// Outcome of [`ScrapeCache::append`] when it fails: the error text and the counts so far.
#[derive(Debug)]
pub(crate) struct AppendError {
    pub(crate) msg: String,
    pub(crate) stats: ScrapeStats,
}

impl ScrapeCache {
    /// Decompresses a gzip body into the reusable buffer, failing past `limit` bytes (0: none).
    pub(crate) fn gunzip(&mut self, body: &[u8], limit: u64) -> Result<Vec<u8>, String> {
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        let d = flate2::read::GzDecoder::new(body);
        let cap = if limit == 0 { u64::MAX } else { limit + 1 };
        d.take(cap)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        if limit > 0 && out.len() as u64 > limit {
            self.buf = out;
            return Err(format!("body size limit exceeded (limit: {limit} bytes)"));
        }
        Ok(out)
    }

    /// Metadata of the families seen in recent scrapes.
    pub(crate) fn metadata(&self) -> impl Iterator<Item = (&str, &Metadata)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), &v.meta))
    }

    fn meta_mut(&mut self, family: &str) -> &mut MetaEntry {
        if !self.metadata.contains_key(family) {
            self.metadata
                .insert(family.to_string(), MetaEntry::default());
        }
        let iter = self.iter;
        let Some(e) = self.metadata.get_mut(family) else {
            unreachable!("just inserted")
        };
        e.last_iter = iter;
        e
    }

    /// Appends one scraped body at default timestamp `ts`. On error the caller must roll the
    /// appender back and call [`ScrapeCache::append_failed`] on a fresh one.
    pub(crate) fn append(
        &mut self,
        app: &mut dyn Appender,
        body: &[u8],
        format: Format,
        ts: i64,
        target: &Labels,
        o: &AppendOptions,
    ) -> Result<ScrapeStats, AppendError> {
        self.iter += 1;
        let iter = self.iter;
        self.entries.begin();
        let mut stats = ScrapeStats::default();
        let mut p = match Parser::new(body, format) {
            Ok(p) => p,
            Err(e) => {
                return Err(AppendError {
                    msg: e.to_string(),
                    stats,
                });
            }
        };
        let mut limit_exceeded = false;
        while let Some(e) = p.next_entry() {
            let kind = match e {
                Ok(k) => k,
                Err(e) => {
                    return Err(AppendError {
                        msg: e.to_string(),
                        stats,
                    });
                }
            };
            match kind {
                EntryKind::Help => {
                    let (name, text) = (p.meta_metric(), p.meta_text());
                    let m = self.meta_mut(&name);
                    if m.meta.help != text {
                        m.meta.help = text.into_owned();
                    }
                }
                EntryKind::Type => {
                    let (name, kind) = (p.meta_metric(), p.meta_type());
                    self.meta_mut(&name).meta.kind = kind;
                }
                EntryKind::Unit => {
                    let (name, text) = (p.meta_metric(), p.meta_text());
                    let m = self.meta_mut(&name);
                    if m.meta.unit != text {
                        m.meta.unit = text.into_owned();
                    }
                }
                EntryKind::Sample => {
                    stats.scraped += 1;
                    let key = p.series();
                    let explicit = o.honor_timestamps && p.timestamp_ms().is_some();
                    let t = if explicit {
                        p.timestamp_ms().unwrap_or(ts)
                    } else {
                        ts
                    };
                    let track = !explicit || o.track_timestamps_staleness;
                    let mut new_meta: Option<Metadata> = None;
                    let pos = (stats.scraped - 1) as usize;
                    let hkey = series_key(key);
                    let found = self.entries.find(pos, hkey);
                    let idx = match found {
                        Some(i) => i,
                        None => {
                            if let Some(d) = self.dropped.get_mut(&hkey) {
                                *d = iter;
                                continue;
                            }
                            let raw = p.labels().map_err(|e| AppendError {
                                msg: e.to_string(),
                                stats,
                            })?;
                            let mutated = mutate_labels(&raw, target, o.honor_labels);
                            let Some(lset) = relabel::process(&mutated, &o.metric_relabel_configs)
                            else {
                                self.dropped.insert(hkey, iter);
                                continue;
                            };
                            if !lset.has(METRIC_NAME) {
                                return Err(AppendError {
                                    msg: "missing metric name (__name__ label)".into(),
                                    stats,
                                });
                            }
                            verify_label_limits(&lset, o)
                                .map_err(|msg| AppendError { msg, stats })?;
                            new_meta = lset
                                .metric_name()
                                .and_then(|name| family_of(&self.metadata, name))
                                .and_then(|f| self.metadata.get(f))
                                .map(|m| m.meta.clone());
                            stats.added += 1;
                            self.entries.insert(
                                pos,
                                CacheEntry {
                                    key: hkey,
                                    series: None,
                                    labels: lset,
                                    last_iter: 0,
                                    tracked_iter: 0,
                                    live: false,
                                },
                            )
                        }
                    };
                    let Some(entry) = self.entries.entry_mut(idx) else {
                        continue;
                    };
                    if entry.last_iter == iter && !explicit {
                        return Err(AppendError {
                            msg: format!(
                                "duplicate sample for timestamp: series {} appears more than once",
                                entry.labels
                            ),
                            stats,
                        });
                    }
                    entry.last_iter = iter;
                    stats.post_relabel += 1;
                    if o.sample_limit > 0 && stats.post_relabel > o.sample_limit {
                        limit_exceeded = true;
                        continue;
                    }
                    match app.append(entry.series, &entry.labels, t, p.value()) {
                        Ok(r) => {
                            entry.series = Some(r);
                            if let Some(m) = &new_meta {
                                let _ = app.update_metadata(r, &entry.labels, m);
                            }
                            if track {
                                entry.tracked_iter = iter;
                            }
                        }
                        Err(e) if e.is_sample_error() => {
                            stats.sample_errors += 1;
                            tracing::debug!(series = %entry.labels, error = %e, "sample rejected");
                        }
                        Err(e) => {
                            return Err(AppendError {
                                msg: e.to_string(),
                                stats,
                            });
                        }
                    }
                    if let Some(Ok(ex)) = p.exemplar()
                        && let Some(r) = entry.series
                    {
                        let _ = app.append_exemplar(r, &entry.labels, &ex);
                    }
                }
            }
        }
        if limit_exceeded {
            return Err(AppendError {
                msg: "sample limit exceeded".into(),
                stats,
            });
        }
        self.entries.commit_order();
        self.finish_iter(app, ts);
        Ok(stats)
    }

    /// After a failed scrape (appender rolled back): an empty scrape, so every series of the
    /// previous successful scrape gets a staleness marker.
    pub(crate) fn append_failed(&mut self, app: &mut dyn Appender, ts: i64) {
        self.iter += 1;
        self.finish_iter(app, ts);
    }

    /// Commits the iteration's tracking: stale markers for series live in the previous
    /// successful scrape but not appended in this one; pruning.
    fn finish_iter(&mut self, app: &mut dyn Appender, ts: i64) {
        let iter = self.iter;
        // One pass: staleness markers and pruning.
        self.entries.retain(|e| {
            if e.tracked_iter == iter {
                e.live = true;
            } else if e.live {
                e.live = false;
                match app.append(e.series, &e.labels, ts, stale_nan()) {
                    Ok(r) => e.series = Some(r),
                    Err(err) => {
                        tracing::debug!(series = %e.labels, error = %err, "stale marker rejected")
                    }
                }
            }
            e.live || e.last_iter + CACHE_KEEP_ITERS >= iter
        });
        self.dropped
            .retain(|_, last| *last + CACHE_KEEP_ITERS >= iter);
        self.metadata
            .retain(|_, m| m.last_iter + CACHE_KEEP_ITERS >= iter);
    }

    /// End of a target (removed from discovery): stale markers for every series it still has,
    /// including the synthetic ones.
    pub(crate) fn stale_all(&mut self, app: &mut dyn Appender, ts: i64) {
        for e in self.entries.values_mut() {
            if e.live {
                e.live = false;
                let _ = app.append(e.series, &e.labels, ts, stale_nan());
            }
        }
        for (labels, r) in self.report.values() {
            let _ = app.append(*r, labels, ts, stale_nan());
        }
    }

    /// Appends the synthetic series of one scrape.
    pub(crate) fn report(
        &mut self,
        app: &mut dyn Appender,
        target: &Labels,
        ts: i64,
        up: bool,
        duration_s: f64,
        stats: ScrapeStats,
    ) -> Result<(), tidemark_storage::Error> {
        let values: [(&'static str, f64); 5] = [
            ("up", if up { 1.0 } else { 0.0 }),
            ("scrape_duration_seconds", duration_s),
            ("scrape_samples_scraped", stats.scraped as f64),
            (
                "scrape_samples_post_metric_relabeling",
                stats.post_relabel as f64,
            ),
            ("scrape_series_added", stats.added as f64),
        ];
        for (name, v) in values {
            let (labels, r) = self.report.entry(name).or_insert_with(|| {
                let mut b = LabelsBuilder::new();
                for l in target.iter() {
                    b.set(l.name, l.value);
                }
                b.set(METRIC_NAME, name);
                (b.build(), None)
            });
            match app.append(*r, labels, ts, v) {
                Ok(nr) => *r = Some(nr),
                Err(e) if e.is_sample_error() => {
                    tracing::debug!(series = name, error = %e, "report sample rejected")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_model::{Matcher, MetricType, is_stale_nan};
    use tidemark_storage::memory::MemStorage;
    use tidemark_storage::{Appendable, Queryable};

    fn target() -> Labels {
        Labels::from_pairs([("job", "j"), ("instance", "i:1")])
    }

    fn dump(s: &MemStorage) -> Vec<(String, Vec<(i64, f64)>)> {
        let q = s.querier(i64::MIN, i64::MAX).unwrap();
        q.select(
            true,
            None,
            &[Matcher::new(tidemark_model::MatchType::Regex, "__name__", ".+").unwrap()],
        )
        .map(|r| {
            let s = r.unwrap();
            let mut it = s.iter();
            let mut v = Vec::new();
            while it.next() {
                let x = it.at();
                v.push((x.t, x.v));
            }
            (s.labels().to_string(), v)
        })
        .collect()
    }

    fn scrape(
        c: &mut ScrapeCache,
        s: &MemStorage,
        body: &str,
        ts: i64,
        o: &AppendOptions,
    ) -> Result<ScrapeStats, String> {
        let mut app = s.appender();
        match c.append(
            &mut *app,
            body.as_bytes(),
            Format::PrometheusText,
            ts,
            &target(),
            o,
        ) {
            Ok(st) => {
                app.commit().unwrap();
                Ok(st)
            }
            Err(e) => {
                app.rollback().unwrap();
                let mut app = s.appender();
                c.append_failed(&mut *app, ts);
                app.commit().unwrap();
                Err(e.msg)
            }
        }
    }

    #[test]
    fn appends_with_target_labels_and_staleness() {
        let s = MemStorage::new();
        let mut c = ScrapeCache::default();
        let o = AppendOptions {
            honor_timestamps: true,
            ..Default::default()
        };
        let st = scrape(&mut c, &s, "a 1\nb{x=\"1\"} 2\n", 1000, &o).unwrap();
        assert_eq!(
            st,
            ScrapeStats {
                scraped: 2,
                post_relabel: 2,
                added: 2,
                sample_errors: 0
            }
        );
        let st = scrape(&mut c, &s, "a 3\n", 2000, &o).unwrap();
        assert_eq!(st.added, 0);
        let d = dump(&s);
        assert_eq!(d[0].0, r#"{__name__="a", instance="i:1", job="j"}"#);
        assert_eq!(d[0].1, vec![(1000, 1.0), (2000, 3.0)]);
        assert_eq!(d[1].0, r#"{__name__="b", instance="i:1", job="j", x="1"}"#);
        assert_eq!(d[1].1[0], (1000, 2.0));
        assert!(
            is_stale_nan(d[1].1[1].1) && d[1].1[1].0 == 2000,
            "b went stale: {:?}",
            d[1].1
        );
        // A failed scrape marks everything stale; the next success brings it back.
        assert!(scrape(&mut c, &s, "garbage{", 3000, &o).is_err());
        let d = dump(&s);
        assert!(is_stale_nan(d[0].1[2].1) && d[0].1[2].0 == 3000);
        assert_eq!(d[1].1.len(), 2, "b not marked stale twice");
    }

    /// The cache predicts each sample's entry from the last scrape's order; a target that
    /// reorders, adds, drops or repeats series must still map every line to its own series.
    #[test]
    fn reordered_bodies_map_each_line_to_its_series() {
        let s = MemStorage::new();
        let mut c = ScrapeCache::default();
        let o = AppendOptions::default();
        let bodies = [
            "a 1\nb 2\nc 3\n",
            "c 13\na 11\nb 12\n",
            "a 21\nd 24\nc 23\n",
            "d 34\nb 32\na 31\nc 33\n",
        ];
        for (i, body) in bodies.iter().enumerate() {
            let st = scrape(&mut c, &s, body, 1000 * (i as i64 + 1), &o).unwrap();
            assert_eq!(st.scraped, body.lines().count() as u64);
        }
        // A repeated series is caught even where the prediction points at another entry.
        assert!(
            scrape(&mut c, &s, "d 44\nb 42\nd 45\n", 5000, &o)
                .unwrap_err()
                .contains("duplicate")
        );
        let d = dump(&s);
        let values = |name: &str| -> Vec<(i64, f64)> {
            let want = format!(r#"{{__name__="{name}", instance="i:1", job="j"}}"#);
            d.iter()
                .find(|(l, _)| *l == want)
                .map(|(_, v)| v.iter().filter(|x| !is_stale_nan(x.1)).copied().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            values("a"),
            vec![(1000, 1.0), (2000, 11.0), (3000, 21.0), (4000, 31.0)]
        );
        assert_eq!(values("b"), vec![(1000, 2.0), (2000, 12.0), (4000, 32.0)]);
        assert_eq!(
            values("c"),
            vec![(1000, 3.0), (2000, 13.0), (3000, 23.0), (4000, 33.0)]
        );
        assert_eq!(values("d"), vec![(3000, 24.0), (4000, 34.0)]);
    }

    #[test]
    fn explicit_timestamps_are_not_staleness_tracked() {
        let s = MemStorage::new();
        let mut c = ScrapeCache::default();
        let o = AppendOptions {
            honor_timestamps: true,
            ..Default::default()
        };
        scrape(&mut c, &s, "a 1 500\n", 1000, &o).unwrap();
        scrape(&mut c, &s, "", 2000, &o).unwrap();
        assert_eq!(dump(&s)[0].1, vec![(500, 1.0)]);
        let o2 = AppendOptions {
            honor_timestamps: false,
            ..Default::default()
        };
        let s = MemStorage::new();
        let mut c = ScrapeCache::default();
        scrape(&mut c, &s, "a 1 500\n", 1000, &o2).unwrap();
        assert_eq!(
            dump(&s)[0].1,
            vec![(1000, 1.0)],
            "honor_timestamps false uses scrape time"
        );
    }

    #[test]
    fn honor_labels_and_exported_prefix() {
        let scraped =
            Labels::from_pairs([("__name__", "m"), ("job", "theirs"), ("exported_job", "x")]);
        let got = mutate_labels(&scraped, &target(), false);
        assert_eq!(
            got,
            Labels::from_pairs([
                ("__name__", "m"),
                ("job", "j"),
                ("exported_job", "x"),
                ("exported_exported_job", "theirs"),
                ("instance", "i:1")
            ])
        );
        let got = mutate_labels(&scraped, &target(), true);
        assert_eq!(got.get("job"), Some("theirs"));
        assert_eq!(got.get("instance"), Some("i:1"));
    }

    #[test]
    fn limits_and_errors() {
        let s = MemStorage::new();
        let o = AppendOptions {
            sample_limit: 2,
            ..Default::default()
        };
        let mut c = ScrapeCache::default();
        assert_eq!(
            scrape(&mut c, &s, "a 1\nb 1\nc 1\n", 1000, &o),
            Err("sample limit exceeded".into())
        );
        assert_eq!(s.num_series(), 0, "whole scrape rolled back");
        let o = AppendOptions {
            label_limit: 2,
            ..Default::default()
        };
        let e = scrape(&mut ScrapeCache::default(), &s, "a{x=\"1\"} 1\n", 1000, &o).unwrap_err();
        assert_eq!(
            e,
            "label_limit exceeded (metric: a, number of labels: 4, limit: 2)"
        );
        let o = AppendOptions {
            label_value_length_limit: 3,
            ..Default::default()
        };
        let e = scrape(
            &mut ScrapeCache::default(),
            &s,
            "a{x=\"long\"} 1\n",
            1000,
            &o,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "label_value_length_limit exceeded (metric: a, label name: x, value: \"long\", length: 4, limit: 3)"
        );
        let o = AppendOptions {
            label_name_length_limit: 3,
            ..Default::default()
        };
        let e = scrape(
            &mut ScrapeCache::default(),
            &s,
            "a{long=\"1\"} 1\n",
            1000,
            &o,
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "label_name_length_limit exceeded (metric: a, label name: __name__, length: 8"
            ),
            "{e}"
        );
        let e = scrape(
            &mut ScrapeCache::default(),
            &s,
            "a 1\na 2\n",
            1000,
            &AppendOptions::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("duplicate sample for timestamp"), "{e}");
    }

    #[test]
    fn metric_relabeling_drops_and_caches() {
        let s = MemStorage::new();
        let cfg: Vec<RelabelConfig> = serde_yaml_ng::from_str(
            "- source_labels: [__name__]\n  regex: 'go_.*'\n  action: drop",
        )
        .unwrap();
        let o = AppendOptions {
            metric_relabel_configs: cfg,
            ..Default::default()
        };
        let mut c = ScrapeCache::default();
        let st = scrape(&mut c, &s, "go_x 1\nkeep 2\n", 1000, &o).unwrap();
        assert_eq!((st.scraped, st.post_relabel, st.added), (2, 1, 1));
        let st = scrape(&mut c, &s, "go_x 1\nkeep 2\n", 2000, &o).unwrap();
        assert_eq!((st.scraped, st.post_relabel, st.added), (2, 1, 0));
        assert_eq!(s.num_series(), 1);
    }

    #[test]
    fn report_and_stale_all() {
        let s = MemStorage::new();
        let mut c = ScrapeCache::default();
        scrape(
            &mut c,
            &s,
            "# TYPE a gauge\n# HELP a Help.\na 1\n",
            1000,
            &AppendOptions::default(),
        )
        .unwrap();
        let meta: Vec<_> = c
            .metadata()
            .map(|(k, m)| (k.to_string(), m.clone()))
            .collect();
        assert_eq!(
            meta,
            vec![(
                "a".into(),
                Metadata {
                    kind: MetricType::Gauge,
                    help: "Help.".into(),
                    unit: String::new()
                }
            )]
        );
        let mut app = s.appender();
        c.report(
            &mut *app,
            &target(),
            1000,
            true,
            0.5,
            ScrapeStats {
                scraped: 1,
                post_relabel: 1,
                added: 1,
                sample_errors: 0,
            },
        )
        .unwrap();
        app.commit().unwrap();
        let mut app = s.appender();
        c.stale_all(&mut *app, 5000);
        app.commit().unwrap();
        let d = dump(&s);
        assert_eq!(d.len(), 6);
        for (name, samples) in &d {
            assert!(is_stale_nan(samples.last().unwrap().1), "{name} not stale");
        }
        let up = d
            .iter()
            .find(|(n, _)| n.starts_with("{__name__=\"up\""))
            .unwrap();
        assert_eq!(up.1[0], (1000, 1.0));
    }

    /// Records metadata and exemplar calls.
    #[derive(Default)]
    struct Recorder {
        meta: Vec<(SeriesRef, String, Metadata)>,
        exemplars: Vec<(SeriesRef, String, tidemark_model::Exemplar)>,
        n: u64,
    }

    impl Appender for Recorder {
        fn append(
            &mut self,
            r: Option<SeriesRef>,
            _l: &Labels,
            _t: i64,
            _v: f64,
        ) -> tidemark_storage::Result<SeriesRef> {
            self.n += 1;
            Ok(r.unwrap_or(SeriesRef(self.n)))
        }
        fn append_exemplar(
            &mut self,
            r: SeriesRef,
            l: &Labels,
            e: &tidemark_model::Exemplar,
        ) -> tidemark_storage::Result<()> {
            self.exemplars.push((r, l.to_string(), e.clone()));
            Ok(())
        }
        fn update_metadata(
            &mut self,
            r: SeriesRef,
            l: &Labels,
            m: &Metadata,
        ) -> tidemark_storage::Result<()> {
            self.meta.push((r, l.to_string(), m.clone()));
            Ok(())
        }
        fn commit(&mut self) -> tidemark_storage::Result<()> {
            Ok(())
        }
        fn rollback(&mut self) -> tidemark_storage::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn metadata_and_exemplars_reach_the_appender() {
        let body =
            "# TYPE foo counter\n# HELP foo Foos.\nfoo_total 3 # {trace_id=\"x\"} 1.5\n# EOF\n";
        let mut c = ScrapeCache::default();
        let mut app = Recorder::default();
        c.append(
            &mut app,
            body.as_bytes(),
            Format::OpenMetrics,
            1000,
            &target(),
            &AppendOptions::default(),
        )
        .unwrap();
        assert_eq!(app.meta.len(), 1, "metadata once, for the new series");
        let (r, l, m) = &app.meta[0];
        assert_eq!(*r, SeriesRef(1));
        assert_eq!(l, r#"{__name__="foo_total", instance="i:1", job="j"}"#);
        assert_eq!((m.kind, m.help.as_str()), (MetricType::Counter, "Foos."));
        assert_eq!(app.exemplars.len(), 1);
        assert_eq!(app.exemplars[0].2.value, 1.5);
        assert_eq!(app.exemplars[0].0, SeriesRef(1));
        // Known series: no second metadata call.
        c.append(
            &mut app,
            body.as_bytes(),
            Format::OpenMetrics,
            2000,
            &target(),
            &AppendOptions::default(),
        )
        .unwrap();
        assert_eq!(app.meta.len(), 1);
        assert_eq!(app.exemplars.len(), 2);
    }
}
