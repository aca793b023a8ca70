//! `tidemark tsdb analyze`: what the blocks of a data directory hold, like `promtool tsdb
//! analyze`: per-block and total series, samples, chunks and bytes per sample, and the metrics
//! and labels with the highest cardinality. Read-only: nothing is moved, repaired or deleted;
//! blocks that fail to open are listed as problems. The head (data still in the log) is not
//! included: flush it first to see everything.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use tidemark_model::{Labels, METRIC_NAME};

use crate::block::{Block, INDEX_FILE, Result, block_dirs};

/// One block in an [`AnalyzeReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSummary {
    pub id: String,
    pub min_time: i64,
    pub max_time: i64,
    pub level: u32,
    /// Sample resolution in ms (0 raw, 300000 for 5 m, 3600000 for 1 h).
    pub resolution: i64,
    pub series: u64,
    pub samples: u64,
    pub chunks: u64,
    pub index_bytes: u64,
    /// All files of the block (index, chunks, meta.json).
    pub bytes: u64,
}

/// Totals of the blocks of one resolution in an [`AnalyzeReport`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolutionSummary {
    /// Sample resolution in ms (0 = raw).
    pub resolution: i64,
    pub blocks: u64,
    /// Distinct series (label sets) over the blocks of the resolution.
    pub series: u64,
    /// Samples (raw) or windows (downsampled).
    pub samples: u64,
    pub bytes: u64,
    pub min_time: i64,
    pub max_time: i64,
}

/// `raw`, `5m`, `1h` (or the milliseconds) for a resolution.
pub fn resolution_name(res: i64) -> String {
    match res {
        0 => "raw".into(),
        r if r % 3_600_000 == 0 => format!("{}h", r / 3_600_000),
        r if r % 60_000 == 0 => format!("{}m", r / 60_000),
        r => format!("{r}ms"),
    }
}

/// The result of [`analyze`]; `Display` prints it for people.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnalyzeReport {
    pub blocks: Vec<BlockSummary>,
    /// Blocks per resolution, raw first.
    pub resolutions: Vec<ResolutionSummary>,
    /// Blocks that could not be opened, with the reason.
    pub problems: Vec<String>,
    /// Distinct label sets over all blocks.
    pub series: u64,
    pub samples: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub index_bytes: u64,
    /// Metric names by number of series, highest first (at most `limit`).
    pub top_metrics: Vec<(String, u64)>,
    /// Label names by number of distinct values, highest first.
    pub top_label_cardinality: Vec<(String, u64)>,
    /// Label names by number of series that have them, highest first.
    pub top_label_names_by_series: Vec<(String, u64)>,
    /// `name="value"` pairs by number of series, highest first.
    pub top_label_pairs: Vec<(String, u64)>,
    /// Distinct label names / label pairs over all blocks.
    pub label_names: u64,
    pub label_pairs: u64,
}

impl AnalyzeReport {
    /// Bytes on disk per sample over all blocks (0 without samples).
    pub fn bytes_per_sample(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.bytes as f64 / self.samples as f64
        }
    }
}

fn top(map: HashMap<String, u64>, limit: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

/// Analyzes every block of `dir` (a data directory); lists show at most `limit` entries.
pub fn analyze(dir: &Path, limit: usize) -> Result<AnalyzeReport> {
    let mut report = AnalyzeReport::default();
    let mut seen: HashSet<Labels> = HashSet::new();
    let mut metrics: HashMap<String, u64> = HashMap::new();
    let mut names_by_series: HashMap<String, u64> = HashMap::new();
    let mut pairs: HashMap<String, u64> = HashMap::new();
    let mut values: HashMap<String, HashSet<String>> = HashMap::new();
    let mut series_by_res: HashMap<i64, HashSet<u64>> = HashMap::new();
    for id in block_dirs(dir)? {
        let block = match Block::open(&dir.join(&id)) {
            Ok(b) => b,
            Err(e) => {
                report.problems.push(format!("block {id}: {e}"));
                continue;
            }
        };
        let m = block.meta();
        let index = block.index();
        let index_bytes = std::fs::metadata(block.dir().join(INDEX_FILE))
            .map(|md| md.len())
            .unwrap_or(index.size_bytes());
        report.blocks.push(BlockSummary {
            id: m.id.clone(),
            min_time: m.min_time,
            max_time: m.max_time,
            level: m.level,
            resolution: m.resolution,
            series: m.stats.num_series,
            samples: m.stats.num_samples,
            chunks: m.stats.num_chunks,
            index_bytes,
            bytes: block.size_bytes(),
        });
        report.samples += m.stats.num_samples;
        report.chunks += m.stats.num_chunks;
        report.bytes += block.size_bytes();
        report.index_bytes += index_bytes;
        for sid in 0..index.num_series() {
            let labels = match index.series_labels(sid) {
                Ok(l) => l,
                Err(e) => {
                    report.problems.push(format!("block {id}: {e}"));
                    break;
                }
            };
            series_by_res
                .entry(m.resolution)
                .or_default()
                .insert(labels.stable_hash());
            if seen.contains(&labels) {
                continue;
            }
            for l in labels.iter() {
                *names_by_series.entry(l.name.to_string()).or_default() += 1;
                *pairs
                    .entry(format!("{}={:?}", l.name, l.value))
                    .or_default() += 1;
                let vs = values.entry(l.name.to_string()).or_default();
                if !vs.contains(l.value) {
                    vs.insert(l.value.to_string());
                }
                if l.name == METRIC_NAME {
                    *metrics.entry(l.value.to_string()).or_default() += 1;
                }
            }
            seen.insert(labels);
        }
    }
    report
        .blocks
        .sort_by(|a, b| (a.min_time, &a.id).cmp(&(b.min_time, &b.id)));
    let mut by_res: std::collections::BTreeMap<i64, ResolutionSummary> = Default::default();
    for b in &report.blocks {
        let r = by_res.entry(b.resolution).or_insert(ResolutionSummary {
            resolution: b.resolution,
            min_time: b.min_time,
            max_time: b.max_time,
            ..ResolutionSummary::default()
        });
        r.blocks += 1;
        r.series = series_by_res
            .get(&b.resolution)
            .map_or(0, |s| s.len() as u64);
        r.samples += b.samples;
        r.bytes += b.bytes;
        r.min_time = r.min_time.min(b.min_time);
        r.max_time = r.max_time.max(b.max_time);
    }
    report.resolutions = by_res.into_values().collect();
    report.series = seen.len() as u64;
    report.label_names = values.len() as u64;
    report.label_pairs = pairs.len() as u64;
    report.top_metrics = top(metrics, limit);
    report.top_label_cardinality = top(
        values
            .into_iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect(),
        limit,
    );
    report.top_label_names_by_series = top(names_by_series, limit);
    report.top_label_pairs = top(pairs, limit);
    Ok(report)
}

/// Blocks per resolution (raw first) of open `blocks`, with their distinct series (read from
/// each block's index). What `/api/v1/status/tsdb` reports under `tidemark`.
pub fn summarize_resolutions(blocks: &[Block]) -> Result<Vec<ResolutionSummary>> {
    let mut by_res: std::collections::BTreeMap<i64, (ResolutionSummary, HashSet<u64>)> =
        Default::default();
    for b in blocks {
        let m = b.meta();
        let (r, series) = by_res.entry(m.resolution).or_insert_with(|| {
            (
                ResolutionSummary {
                    resolution: m.resolution,
                    min_time: m.min_time,
                    max_time: m.max_time,
                    ..ResolutionSummary::default()
                },
                HashSet::new(),
            )
        });
        r.blocks += 1;
        r.samples += m.stats.num_samples;
        r.bytes += b.size_bytes();
        r.min_time = r.min_time.min(m.min_time);
        r.max_time = r.max_time.max(m.max_time);
        for sid in 0..b.index().num_series() {
            series.insert(b.index().series_labels(sid)?.stable_hash());
        }
    }
    Ok(by_res
        .into_values()
        .map(|(mut r, s)| {
            r.series = s.len() as u64;
            r
        })
        .collect())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (proleptic Gregorian, UTC).
pub(crate) fn format_millis(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn format_duration(ms: i64) -> String {
    let (d, h, m, s) = (
        ms / 86_400_000,
        ms / 3_600_000 % 24,
        ms / 60_000 % 60,
        ms % 60_000,
    );
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        if s % 1000 == 0 {
            out.push_str(&format!("{}s", s / 1000));
        } else {
            out.push_str(&format!("{}ms", s));
        }
    }
    out
}

fn per_sample(bytes: u64, samples: u64) -> String {
    if samples == 0 {
        "-".into()
    } else {
        format!("{:.3}", bytes as f64 / samples as f64)
    }
}

impl fmt::Display for AnalyzeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Blocks: {}", self.blocks.len())?;
        if let (Some(first), Some(last)) = (
            self.blocks.first(),
            self.blocks.iter().map(|b| b.max_time).max(),
        ) {
            writeln!(
                f,
                "Time range: {} to {}",
                format_millis(first.min_time),
                format_millis(last)
            )?;
        }
        if !self.blocks.is_empty() {
            writeln!(
                f,
                "{:<26}  {:<24}  {:>10}  {:>5}  {:>4}  {:>10}  {:>12}  {:>10}  {:>12}  {:>12}",
                "Block ID",
                "Min time",
                "Duration",
                "Level",
                "Res",
                "Series",
                "Samples",
                "Chunks",
                "Bytes",
                "Bytes/sample"
            )?;
        }
        for b in &self.blocks {
            writeln!(
                f,
                "{:<26}  {:<24}  {:>10}  {:>5}  {:>4}  {:>10}  {:>12}  {:>10}  {:>12}  {:>12}",
                b.id,
                format_millis(b.min_time),
                format_duration(b.max_time - b.min_time),
                b.level,
                resolution_name(b.resolution),
                b.series,
                b.samples,
                b.chunks,
                b.bytes,
                per_sample(b.bytes, b.samples)
            )?;
        }
        if !self.resolutions.is_empty() {
            writeln!(f)?;
            writeln!(f, "Blocks per resolution:")?;
            writeln!(
                f,
                "{:>4}  {:>6}  {:<24}  {:<24}  {:>10}  {:>12}  {:>12}",
                "Res", "Blocks", "From", "To", "Series", "Samples", "Bytes"
            )?;
            for r in &self.resolutions {
                writeln!(
                    f,
                    "{:>4}  {:>6}  {:<24}  {:<24}  {:>10}  {:>12}  {:>12}",
                    resolution_name(r.resolution),
                    r.blocks,
                    format_millis(r.min_time),
                    format_millis(r.max_time),
                    r.series,
                    r.samples,
                    r.bytes
                )?;
            }
        }
        writeln!(f)?;
        writeln!(f, "Total series: {}", self.series)?;
        writeln!(f, "Total samples: {}", self.samples)?;
        writeln!(f, "Total chunks: {}", self.chunks)?;
        writeln!(
            f,
            "Total bytes: {} (index {}, chunks and meta {})",
            self.bytes,
            self.index_bytes,
            self.bytes - self.index_bytes.min(self.bytes)
        )?;
        writeln!(
            f,
            "Bytes per sample: {}",
            per_sample(self.bytes, self.samples)
        )?;
        writeln!(f, "Label names: {}", self.label_names)?;
        writeln!(f, "Postings (unique label pairs): {}", self.label_pairs)?;
        let section =
            |f: &mut fmt::Formatter<'_>, title: &str, rows: &[(String, u64)]| -> fmt::Result {
                writeln!(f)?;
                writeln!(f, "{title}:")?;
                for (name, n) in rows {
                    writeln!(f, "{n:>10} {name}")?;
                }
                Ok(())
            };
        section(f, "Highest cardinality metric names", &self.top_metrics)?;
        section(f, "Highest cardinality labels", &self.top_label_cardinality)?;
        section(
            f,
            "Label names present in most series",
            &self.top_label_names_by_series,
        )?;
        section(f, "Most common label pairs", &self.top_label_pairs)?;
        if !self.problems.is_empty() {
            writeln!(f)?;
            writeln!(f, "Problems:")?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_duration(2 * 3_600_000), "2h");
        assert_eq!(format_duration(86_400_000 + 90_000), "1d1m30s");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(1500), "1500ms");
        assert_eq!(resolution_name(0), "raw");
        assert_eq!(resolution_name(300_000), "5m");
        assert_eq!(resolution_name(3_600_000), "1h");
    }
}
