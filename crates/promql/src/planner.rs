//! The query planner for downsampled data (docs/downsampling.md, "Query planning").
//!
//! Per selector, [`choose`] picks the resolutions to read and [`plan_segments`] splits the
//! selector's time range between them; [`join`] glues one series' parts back together. The
//! evaluator ([`crate::eval`]) reads the parts through
//! [`tidemark_storage::ResolutionQueryable`] and feeds the joined samples to the unchanged
//! function code, after [`function_aggregate`] mapped the function to the aggregate it needs.

use tidemark_model::Sample;
use tidemark_storage::{DownsampleAggregate, RESOLUTION_RAW, ResolutionRange};

/// The coarsest data a query may read (Thanos' `max_source_resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxSourceResolution {
    /// The planner's rule: the coarsest resolution `r` with `r ≤ step / 5` (and `r ≤ range /
    /// 5` for range functions), plus coarser data where raw data does not reach back.
    #[default]
    Auto,
    /// Raw data only.
    Raw,
    /// The planner's rule, but never a resolution coarser than this many milliseconds (and no
    /// coarser data where raw data does not reach back).
    Max(i64),
}

impl MaxSourceResolution {
    /// Parses `auto`, `raw` (or `0`, `0s`) or a duration such as `5m`, `1h`.
    pub fn parse(s: &str) -> Result<MaxSourceResolution, String> {
        match s.trim() {
            "" | "auto" => Ok(MaxSourceResolution::Auto),
            "raw" | "0" | "0s" | "0ms" | "0m" | "0h" => Ok(MaxSourceResolution::Raw),
            d => {
                let ms = match promql_parser::util::parse_duration(d) {
                    Ok(dur) => crate::eval::dur_ms(&dur),
                    Err(_) => d
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .map(|x| (x * 1000.0) as i64)
                        .ok_or_else(|| {
                            format!(
                                "invalid max_source_resolution {d:?}: expected auto, raw or a duration such as 5m or 1h"
                            )
                        })?,
                };
                Ok(if ms == 0 {
                    MaxSourceResolution::Raw
                } else {
                    MaxSourceResolution::Max(ms)
                })
            }
        }
    }
}

impl std::fmt::Display for MaxSourceResolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxSourceResolution::Auto => f.write_str("auto"),
            MaxSourceResolution::Raw => f.write_str("raw"),
            MaxSourceResolution::Max(ms) => f.write_str(&resolution_name(*ms)),
        }
    }
}

/// `raw`, `5m`, `1h`, ... for a resolution in milliseconds.
pub(crate) fn resolution_name(ms: i64) -> String {
    if ms <= 0 {
        return "raw".into();
    }
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// What a selector feeding `func` (None: a plain instant selector) reads from downsampled
/// windows; `None` when only raw data answers it correctly.
///
/// - `rate`/`increase`: the reset-compensated counter (exact between window ends).
/// - `sum_over_time`/`count_over_time`: window sums/counts, added up.
/// - `avg_over_time`: window sums and counts (sum of sums / sum of counts).
/// - `min_over_time`/`max_over_time`: window minima/maxima.
/// - `last_over_time` and plain selectors: the raw value of each window's last sample.
/// - `present_over_time`/`absent_over_time`: window counts (presence).
/// - Everything else reads raw: `irate`/`idelta` need the last two raw samples, `resets` and
///   `changes` the raw changes (the compensated counter has no drops), `delta`/`deriv`/
///   `predict_linear` of a gauge and the quantile/stddev family are not derivable from window
///   aggregates with a bounded error.
pub(crate) fn function_aggregate(func: Option<&str>) -> Option<DownsampleAggregate> {
    use DownsampleAggregate::*;
    Some(match func {
        None => Last,
        Some("rate" | "increase") => Counter,
        Some("sum_over_time" | "avg_over_time") => Sum,
        Some("count_over_time" | "present_over_time" | "absent_over_time") => Count,
        Some("min_over_time") => Min,
        Some("max_over_time") => Max,
        Some("last_over_time") => Last,
        Some(_) => return None,
    })
}

/// One part of a selector's time range and the resolution it is read from (times inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) resolution: i64,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// The resolutions a selector may read, in order of preference, and whether coarser ones may
/// fill where these have no data.
///
/// The rule: the coarsest available resolution `r` with `5·r ≤ step` and, when `range > 0`
/// (a range function), `5·r ≤ range` — at least five windows per step and per range, which
/// keeps the error of window-based answers small (docs/downsampling.md) — capped by `max`.
/// Preference: that resolution, then the finer ones (to fill where it has no data), then, in
/// `Auto` mode only, the coarser ones finest first (never an empty panel where coarser data
/// exists).
pub(crate) fn choose(
    available: &[ResolutionRange],
    step: i64,
    range: i64,
    max: MaxSourceResolution,
) -> Vec<i64> {
    let cap = match max {
        MaxSourceResolution::Raw => return vec![RESOLUTION_RAW],
        MaxSourceResolution::Auto => i64::MAX,
        MaxSourceResolution::Max(m) => m,
    };
    let mut res: Vec<i64> = available.iter().map(|r| r.resolution).collect();
    if !res.contains(&RESOLUTION_RAW) {
        res.push(RESOLUTION_RAW);
    }
    res.sort_unstable();
    res.dedup();
    let ok = |r: i64| {
        r == RESOLUTION_RAW
            || (r <= cap
                && r.saturating_mul(5) <= step
                && (range == 0 || r.saturating_mul(5) <= range))
    };
    let mut out: Vec<i64> = res.iter().copied().filter(|r| ok(*r)).rev().collect();
    if max == MaxSourceResolution::Auto {
        out.extend(res.iter().copied().filter(|r| !ok(*r)));
    }
    out
}

/// Splits `[mint, maxt]` between the resolutions in `preference` order: each takes the parts
/// of the range inside its data's time range that no earlier one took. Boundaries next to a
/// downsampled segment are moved down to a multiple of its resolution, so a window is never
/// split between two segments (nothing is counted twice). Segments come back in time order;
/// parts no resolution covers are left out.
pub(crate) fn plan_segments(
    available: &[ResolutionRange],
    preference: &[i64],
    mint: i64,
    maxt: i64,
) -> Vec<Segment> {
    let mut free: Vec<(i64, i64)> = vec![(mint, maxt)];
    let mut out: Vec<Segment> = Vec::new();
    for &res in preference {
        let Some(cov) = available.iter().find(|r| r.resolution == res) else {
            continue;
        };
        let mut rest = Vec::new();
        for (a, b) in free {
            let (lo, hi) = (a.max(cov.min_time), b.min(cov.max_time));
            if lo > hi {
                rest.push((a, b));
                continue;
            }
            out.push(Segment {
                resolution: res,
                from: lo,
                to: hi,
            });
            if a < lo {
                rest.push((a, lo - 1));
            }
            if hi < b {
                rest.push((hi + 1, b));
            }
        }
        free = rest;
    }
    out.sort_by_key(|s| s.from);
    // Snap the boundary between adjacent segments to the coarser one's windows.
    for i in 1..out.len() {
        let (prev, next) = (out[i - 1], out[i]);
        if prev.to + 1 != next.from {
            continue;
        }
        let r = prev.resolution.max(next.resolution);
        if r <= 0 {
            continue;
        }
        let b = next.from - next.from.rem_euclid(r);
        if b > prev.from && b < next.from {
            out[i - 1].to = b - 1;
            out[i].from = b;
        }
    }
    out
}

/// Makes a raw counter monotone: every drop (a reset) adds the value before it to what
/// follows, as PromQL's `increase` counts it. The downsampled counter is stored this way.
pub(crate) fn compensate(samples: &mut [Sample]) {
    let mut offset = 0.0;
    let mut prev: Option<f64> = None;
    for s in samples.iter_mut() {
        let raw = s.v;
        if let Some(p) = prev
            && raw < p
        {
            offset += p;
        }
        prev = Some(raw);
        s.v = raw + offset;
    }
}

/// One series' samples read from one segment (already filtered to what that segment may
/// contribute, see [`join`]).
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) seg: Segment,
    pub(crate) samples: Vec<Sample>,
}

/// How far a segment's read reaches past its boundaries for `aggr`: counters are read one
/// window (of the coarser neighbour) into each neighbour, so that [`join`] finds a sample both
/// parts hold and continues the running total exactly.
pub(crate) fn overlap(aggr: DownsampleAggregate, a: &Segment, b: &Segment) -> i64 {
    if aggr == DownsampleAggregate::Counter {
        a.resolution.max(b.resolution)
    } else {
        0
    }
}

/// Joins the parts of one series (in time order) into one stream.
///
/// Non-counter aggregates: each part contributes its samples inside its own segment (no window
/// is split between segments, so nothing counts twice).
///
/// Counter (parts are monotone running totals, each offset by its own constant): at each
/// boundary the first timestamp both neighbours hold (they overlap by one window, see
/// [`overlap`]) switches from one part to the next, the next shifted so that its value there
/// equals the previous part's: increases across the boundary are then exact. Without a common
/// timestamp (the series is missing on one side of the boundary) the next part starts right
/// after the previous one's last sample and continues from it when its first value is lower
/// (the increase across the gap is then taken as zero, never as a full reset).
pub(crate) fn join(parts: Vec<Part>, aggr: DownsampleAggregate) -> Vec<Sample> {
    let counter = aggr == DownsampleAggregate::Counter;
    let mut out: Vec<Sample> = Vec::new();
    let mut prev_seg: Option<Segment> = None;
    for p in parts {
        let seg = p.seg;
        let mut s = p.samples;
        if !counter {
            s.retain(|x| x.t >= seg.from && x.t <= seg.to);
            if let Some(l) = out.last() {
                let lt = l.t;
                s.retain(|x| x.t > lt);
            }
            out.extend(s);
            prev_seg = Some(seg);
            continue;
        }
        let Some(ps) = prev_seg else {
            out = s;
            prev_seg = Some(seg);
            continue;
        };
        prev_seg = Some(seg);
        if s.is_empty() {
            continue;
        }
        // First common timestamp in the overlap of the two reads.
        let common = out
            .iter()
            .enumerate()
            .filter(|(_, x)| x.t >= s[0].t)
            .find_map(|(i, x)| s.binary_search_by_key(&x.t, |y| y.t).ok().map(|j| (i, j)));
        match common {
            Some((i, j)) => {
                let shift = out[i].v - s[j].v;
                out.truncate(i + 1);
                out.extend(s[j + 1..].iter().map(|x| Sample::new(x.t, x.v + shift)));
            }
            None => {
                out.retain(|x| x.t <= ps.to);
                let start = out.last().map_or(i64::MIN, |l| l.t);
                let rest: Vec<Sample> = s.into_iter().filter(|x| x.t > start).collect();
                let shift = match (out.last(), rest.first()) {
                    (Some(a), Some(b)) if b.v < a.v => a.v - b.v,
                    _ => 0.0,
                };
                out.extend(rest.iter().map(|x| Sample::new(x.t, x.v + shift)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5: i64 = 300_000;
    const H1: i64 = 3_600_000;

    fn rr(resolution: i64, min_time: i64, max_time: i64) -> ResolutionRange {
        ResolutionRange {
            resolution,
            min_time,
            max_time,
        }
    }

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    #[test]
    fn parse_max_source_resolution() {
        use MaxSourceResolution::*;
        assert_eq!(MaxSourceResolution::parse("auto"), Ok(Auto));
        assert_eq!(MaxSourceResolution::parse(""), Ok(Auto));
        assert_eq!(MaxSourceResolution::parse("raw"), Ok(Raw));
        assert_eq!(MaxSourceResolution::parse("0s"), Ok(Raw));
        assert_eq!(MaxSourceResolution::parse("5m"), Ok(Max(M5)));
        assert_eq!(MaxSourceResolution::parse("1h"), Ok(Max(H1)));
        assert_eq!(MaxSourceResolution::parse("3600"), Ok(Max(H1)));
        assert!(MaxSourceResolution::parse("soon").is_err());
        assert_eq!(Max(H1).to_string(), "1h");
        assert_eq!(resolution_name(M5), "5m");
        assert_eq!(resolution_name(0), "raw");
    }

    /// The resolution choice table of docs/downsampling.md.
    #[test]
    fn choice_table() {
        use MaxSourceResolution::*;
        let all = [rr(0, 0, 10), rr(M5, 0, 10), rr(H1, 0, 10)];
        let min = 60_000;
        let cases: &[(i64, i64, MaxSourceResolution, &[i64])] = &[
            // (step, range, max, preference)
            (15_000, 0, Auto, &[0, M5, H1]),
            (25 * min, 0, Auto, &[M5, 0, H1]),
            (24 * min, 0, Auto, &[0, M5, H1]),
            (5 * H1, 0, Auto, &[H1, M5, 0]),
            (5 * H1, 5 * min, Auto, &[0, M5, H1]),
            (5 * H1, 30 * min, Auto, &[M5, 0, H1]),
            (5 * H1, 86_400_000, Auto, &[H1, M5, 0]),
            (H1, 86_400_000, Auto, &[M5, 0, H1]),
            (5 * H1, 86_400_000, Max(M5), &[M5, 0]),
            (5 * H1, 86_400_000, Raw, &[0]),
            (1, 86_400_000, Auto, &[0, M5, H1]),
            (1, 86_400_000, Max(H1), &[0]),
        ];
        for (step, range, max, want) in cases {
            assert_eq!(
                choose(&all, *step, *range, *max),
                want.to_vec(),
                "step {step} range {range} max {max}"
            );
        }
        // Only what exists is offered (raw always, as the last resort).
        assert_eq!(choose(&[rr(H1, 0, 1)], 5 * H1, 0, Auto), vec![H1, 0]);
        assert_eq!(choose(&[], 5 * H1, 0, Auto), vec![0]);
    }

    #[test]
    fn segments_prefer_coarse_and_fill_with_finer() {
        let day = 86_400_000;
        // 1h up to day 20, 5m up to day 28, raw from day 15.
        let avail = [
            rr(0, 15 * day, 30 * day),
            rr(M5, 0, 28 * day - 1),
            rr(H1, 0, 20 * day - 1),
        ];
        let segs = plan_segments(&avail, &[H1, M5, 0], 10 * day + 1234, 30 * day);
        assert_eq!(
            segs,
            vec![
                Segment {
                    resolution: H1,
                    from: 10 * day + 1234,
                    to: 20 * day - 1
                },
                Segment {
                    resolution: M5,
                    from: 20 * day,
                    to: 28 * day - 1
                },
                Segment {
                    resolution: 0,
                    from: 28 * day,
                    to: 30 * day
                },
            ]
        );
        // Raw preferred; coarser data only before raw reaches back, boundary snapped down to a
        // 5m window when raw starts mid-window.
        let avail = [rr(0, 15 * day + 1000, 30 * day), rr(M5, 0, 28 * day - 1)];
        let segs = plan_segments(&avail, &[0, M5], 10 * day, 30 * day);
        assert_eq!(
            segs,
            vec![
                Segment {
                    resolution: M5,
                    from: 10 * day,
                    to: 15 * day - 1
                },
                Segment {
                    resolution: 0,
                    from: 15 * day,
                    to: 30 * day
                },
            ]
        );
        // Nothing before any data.
        assert!(plan_segments(&avail, &[0, M5], -10, -1).is_empty());
    }

    #[test]
    fn compensate_makes_resets_monotone() {
        let mut v = vec![s(0, 5.0), s(1, 7.0), s(2, 2.0), s(3, 4.0), s(4, 1.0)];
        compensate(&mut v);
        let vals: Vec<f64> = v.iter().map(|x| x.v).collect();
        assert_eq!(vals, vec![5.0, 7.0, 9.0, 11.0, 12.0]);
    }

    /// A 5 m segment over [0, 999] holding `a`, then a raw one over [1000, 2000] holding `b`.
    fn coarse_then_raw(a: Vec<Sample>, b: Vec<Sample>) -> Vec<Part> {
        let seg = |resolution, from, to| Segment {
            resolution,
            from,
            to,
        };
        vec![
            Part {
                seg: seg(M5, 0, 999),
                samples: a,
            },
            Part {
                seg: seg(0, 1000, 2000),
                samples: b,
            },
        ]
    }

    #[test]
    fn join_counter_at_a_common_timestamp() {
        // The coarse part is offset by 100 (resets before), read one window into b; the raw
        // part (compensated) was read one window back into a.
        let parts = coarse_then_raw(
            vec![s(500, 110.0), s(990, 120.0), s(1400, 130.0)],
            vec![s(990, 20.0), s(1100, 25.0), s(1400, 30.0), s(1900, 41.0)],
        );
        let j = join(parts, DownsampleAggregate::Counter);
        assert_eq!(
            j,
            vec![
                s(500, 110.0),
                s(990, 120.0),
                s(1100, 125.0),
                s(1400, 130.0),
                s(1900, 141.0)
            ]
        );
        // No common timestamp: continue from the previous value (never a fake reset).
        let parts = coarse_then_raw(
            vec![s(500, 110.0), s(990, 120.0)],
            vec![s(1100, 25.0), s(1400, 30.0)],
        );
        let j = join(parts, DownsampleAggregate::Counter);
        assert_eq!(
            j,
            vec![s(500, 110.0), s(990, 120.0), s(1100, 120.0), s(1400, 125.0)]
        );
    }

    #[test]
    fn join_other_aggregates_keeps_each_segment() {
        let parts = coarse_then_raw(
            vec![s(500, 1.0), s(990, 2.0), s(1200, 9.0)],
            vec![s(900, 9.0), s(1000, 3.0), s(1500, 4.0)],
        );
        assert_eq!(
            join(parts, DownsampleAggregate::Sum),
            vec![s(500, 1.0), s(990, 2.0), s(1000, 3.0), s(1500, 4.0)]
        );
    }
}
