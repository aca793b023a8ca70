//! PromQL functions over floats.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Timelike};
use promql_parser::parser::{Call, Expr};
use rayon::prelude::*;
use tidemark_model::{Labels, METRIC_NAME, MatchType, Sample};

use crate::aggregate::{kahan_inc, quantile};
use crate::error::QueryError;
use crate::eval::{
    Collector, Ctx, Result, Series, Span, Val, convert_matchers, for_each_step, format_float_go,
};

fn scalar_arg(ctx: &Ctx<'_>, e: &Expr, span: Span, depth: usize) -> Result<Vec<f64>> {
    match ctx.eval(e, span, depth + 1)? {
        Val::Scalar(v) => Ok(v),
        other => Err(QueryError::bad_data(format!(
            "expected scalar argument, got {}",
            other.type_name_pub()
        ))),
    }
}

fn vector_arg(ctx: &Ctx<'_>, e: &Expr, span: Span, depth: usize) -> Result<Vec<Series>> {
    match ctx.eval(e, span, depth + 1)? {
        Val::Vector(v) => Ok(v),
        other => Err(QueryError::bad_data(format!(
            "expected instant vector argument, got {}",
            other.type_name_pub()
        ))),
    }
}

fn string_arg(ctx: &Ctx<'_>, e: &Expr, span: Span, depth: usize) -> Result<String> {
    match ctx.eval(e, span, depth + 1)? {
        Val::Str(s) => Ok(s),
        other => Err(QueryError::bad_data(format!(
            "expected string argument, got {}",
            other.type_name_pub()
        ))),
    }
}

fn unwrap_paren(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_paren(&p.expr),
        other => other,
    }
}

/// Go's `math.Max`/`math.Min` (NaN wins).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Maps every point of every series, dropping the metric name.
fn map_points(
    mut vs: Vec<Series>,
    span: Span,
    f: impl Fn(f64, usize) -> Option<f64> + Sync,
) -> Vec<Series> {
    vs.par_iter_mut().for_each(|s| {
        s.points.retain_mut(|p| match f(p.v, span.index(p.t)) {
            Some(v) => {
                p.v = v;
                true
            }
            None => false,
        });
        s.drop_name = true;
    });
    vs.retain(|s| !s.points.is_empty());
    vs
}

fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

fn date_fn(name: &str) -> Option<fn(DateTime<chrono::Utc>) -> f64> {
    Some(match name {
        "year" => |d| d.year() as f64,
        "month" => |d| d.month() as f64,
        "day_of_month" => |d| d.day() as f64,
        "day_of_week" => |d| d.weekday().num_days_from_sunday() as f64,
        "day_of_year" => |d| d.ordinal() as f64,
        "hour" => |d| d.hour() as f64,
        "minute" => |d| d.minute() as f64,
        "days_in_month" => |d| {
            let (y, m) = (d.year(), d.month());
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let first = chrono::NaiveDate::from_ymd_opt(y, m, 1);
            let next = chrono::NaiveDate::from_ymd_opt(ny, nm, 1);
            match (first, next) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        },
        _ => return None,
    })
}

fn is_range_fn(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "increase"
            | "delta"
            | "irate"
            | "idelta"
            | "deriv"
            | "predict_linear"
            | "resets"
            | "changes"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "quantile_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "last_over_time"
            | "first_over_time"
            | "present_over_time"
            | "mad_over_time"
            | "absent_over_time"
            | "ts_of_min_over_time"
            | "ts_of_max_over_time"
            | "ts_of_last_over_time"
            | "ts_of_first_over_time"
            | "double_exponential_smoothing"
    )
}

pub(crate) fn eval_call(ctx: &Ctx<'_>, c: &Call, span: Span, depth: usize) -> Result<Val> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let n = span.len();
    if is_range_fn(name) {
        return eval_range_fn(ctx, name, &args, span, depth);
    }
    if let Some(f) = math_fn(name) {
        let vs = vector_arg(ctx, args[0], span, depth)?;
        return Ok(Val::Vector(map_points(vs, span, |v, _| Some(f(v)))));
    }
    if let Some(f) = date_fn(name) {
        let vs = match args.first() {
            Some(a) => vector_arg(ctx, a, span, depth)?,
            None => vec![Series {
                labels: Labels::empty(),
                points: (0..n)
                    .map(|i| Sample::new(span.t(i), span.t(i) as f64 / 1000.0))
                    .collect(),
                drop_name: false,
            }],
        };
        return Ok(Val::Vector(map_points(vs, span, |v, _| {
            if !v.is_finite() || v.abs() > 1e15 {
                return Some(f64::NAN);
            }
            DateTime::from_timestamp(v.trunc() as i64, 0)
                .map(f)
                .or(Some(f64::NAN))
        })));
    }
    match name {
        "time" => Ok(Val::Scalar(
            (0..n).map(|i| span.t(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "start" => Ok(Val::Scalar(vec![ctx.query_start as f64 / 1000.0; n])),
        "end" => Ok(Val::Scalar(vec![ctx.query_end as f64 / 1000.0; n])),
        "range" => Ok(Val::Scalar(vec![
            (ctx.query_end - ctx.query_start) as f64
                / 1000.0;
            n
        ])),
        "step" => Ok(Val::Scalar(vec![ctx.query_step as f64 / 1000.0; n])),
        "min_of" | "max_of" => {
            let a = scalar_arg(ctx, args[0], span, depth)?;
            let b = scalar_arg(ctx, args[1], span, depth)?;
            let f = if name == "min_of" { go_min } else { go_max };
            Ok(Val::Scalar(
                a.iter().zip(&b).map(|(x, y)| f(*x, *y)).collect(),
            ))
        }
        "vector" => {
            let v = scalar_arg(ctx, args[0], span, depth)?;
            Ok(Val::Vector(vec![Series {
                labels: Labels::empty(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| Sample::new(span.t(i), *x))
                    .collect(),
                drop_name: false,
            }]))
        }
        "scalar" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let mut out = vec![f64::NAN; n];
            let mut count = vec![0u32; n];
            for s in &vs {
                for p in &s.points {
                    let i = span.index(p.t);
                    count[i] += 1;
                    out[i] = p.v;
                }
            }
            for i in 0..n {
                if count[i] != 1 {
                    out[i] = f64::NAN;
                }
            }
            Ok(Val::Scalar(out))
        }
        "timestamp" => {
            if let Expr::VectorSelector(vs) = unwrap_paren(args[0]) {
                let mut s = ctx.eval_vector_selector_ts(vs, span)?;
                for x in &mut s {
                    x.drop_name = true;
                }
                return Ok(Val::Vector(s));
            }
            let vs = vector_arg(ctx, args[0], span, depth)?;
            Ok(Val::Vector(map_points(vs, span, |_, i| {
                Some(span.t(i) as f64 / 1000.0)
            })))
        }
        "round" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let to = match args.get(1) {
                Some(a) => scalar_arg(ctx, a, span, depth)?,
                None => vec![1.0; n],
            };
            Ok(Val::Vector(map_points(vs, span, |v, i| {
                let inv = 1.0 / to[i];
                Some((v * inv + 0.5).floor() / inv)
            })))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let a = scalar_arg(ctx, args[1], span, depth)?;
            let b = match args.get(2) {
                Some(x) => scalar_arg(ctx, x, span, depth)?,
                None => vec![0.0; n],
            };
            Ok(Val::Vector(map_points(vs, span, |v, i| match name {
                "clamp" => {
                    if b[i] < a[i] {
                        None
                    } else {
                        Some(go_max(a[i], go_min(b[i], v)))
                    }
                }
                "clamp_min" => Some(go_max(a[i], v)),
                _ => Some(go_min(a[i], v)),
            })))
        }
        "absent" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let mut present = vec![false; n];
            for s in &vs {
                for p in &s.points {
                    present[span.index(p.t)] = true;
                }
            }
            let labels = absent_labels(args[0]);
            let points: Vec<Sample> = (0..n)
                .filter(|i| !present[*i])
                .map(|i| Sample::new(span.t(i), 1.0))
                .collect();
            Ok(Val::Vector(if points.is_empty() {
                vec![]
            } else {
                vec![Series {
                    labels,
                    points,
                    drop_name: false,
                }]
            }))
        }
        "label_replace" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let dst = string_arg(ctx, args[1], span, depth)?;
            let repl = string_arg(ctx, args[2], span, depth)?;
            let src = string_arg(ctx, args[3], span, depth)?;
            let re_s = string_arg(ctx, args[4], span, depth)?;
            let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|e| {
                QueryError::execution(format!(
                    "invalid regular expression in label_replace(): {re_s}: {e}"
                ))
            })?;
            if !valid_label_name_in(ctx, &dst) {
                return Err(QueryError::execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            relabel(
                vs,
                span,
                |l| {
                    let v = l.get_or_empty(&src);
                    let caps = re.captures(v)?;
                    let mut out = String::new();
                    caps.expand(&repl, &mut out);
                    let mut b = l.to_builder();
                    b.set(&dst, &out);
                    Some(b.build())
                },
                dst == METRIC_NAME,
            )
        }
        "label_join" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            let dst = string_arg(ctx, args[1], span, depth)?;
            let sep = string_arg(ctx, args[2], span, depth)?;
            let mut srcs = Vec::new();
            for a in &args[3..] {
                let s = string_arg(ctx, a, span, depth)?;
                if !valid_label_name_in(ctx, &s) {
                    return Err(QueryError::execution(format!(
                        "invalid source label name in label_join(): {s}"
                    )));
                }
                srcs.push(s);
            }
            if !valid_label_name_in(ctx, &dst) {
                return Err(QueryError::execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            relabel(
                vs,
                span,
                |l| {
                    let joined: Vec<&str> = srcs.iter().map(|s| l.get_or_empty(s)).collect();
                    let mut b = l.to_builder();
                    b.set(&dst, &joined.join(&sep));
                    Some(b.build())
                },
                dst == METRIC_NAME,
            )
        }
        "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" if n > 1 => {
            ctx.warn(format!(
                "PromQL warning: sort is ineffective for range queries since results are always ordered by labels {}",
                ctx.pos_of(&format!("{name}("), "")
            ));
            Ok(Val::Vector(vector_arg(ctx, args[0], span, depth)?))
        }
        "sort" | "sort_desc" => {
            let mut vs = vector_arg(ctx, args[0], span, depth)?;
            if n == 1 {
                let desc = name == "sort_desc";
                vs.sort_by(|a, b| {
                    let (x, y) = (a.points[0].v, b.points[0].v);
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if desc => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                        _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                    }
                });
            }
            Ok(Val::Vector(vs))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut vs = vector_arg(ctx, args[0], span, depth)?;
            let mut names = Vec::new();
            for a in &args[1..] {
                names.push(string_arg(ctx, a, span, depth)?);
            }
            let desc = name == "sort_by_label_desc";
            vs.sort_by(|a, b| {
                for l in &names {
                    let (x, y) = (a.labels.get_or_empty(l), b.labels.get_or_empty(l));
                    if x != y {
                        let o = natural_cmp(x, y);
                        return if desc { o.reverse() } else { o };
                    }
                }
                let o = a.labels.cmp(&b.labels);
                if desc { o.reverse() } else { o }
            });
            Ok(Val::Vector(vs))
        }
        "histogram_quantile" | "histogram_fraction" | "histogram_quantiles" => {
            crate::histogram::eval(ctx, name, &args, span, depth)
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Native histograms only: float samples yield nothing.
            let _ = vector_arg(ctx, args[0], span, depth)?;
            Ok(Val::Vector(Vec::new()))
        }
        "info" => {
            let vs = vector_arg(ctx, args[0], span, depth)?;
            Ok(Val::Vector(vs))
        }
        other => Err(QueryError::bad_data(format!(
            "function {other:?} is not supported"
        ))),
    }
}

/// A label name Prometheus accepts: non-empty valid UTF-8. The parser turns `\xNN` escapes into
/// the char U+00NN where Go would produce the raw (invalid UTF-8) byte, so a name with such a
/// char counts as invalid when the query text has a `\x80`..`\xff` escape.
pub(crate) fn valid_label_name_in(ctx: &Ctx<'_>, s: &str) -> bool {
    if s.is_empty() || s.contains('\u{fffd}') {
        return false;
    }
    if s.chars().any(|c| ('\u{80}'..='\u{ff}').contains(&c)) && has_high_byte_escape(ctx.query) {
        return false;
    }
    true
}

pub(crate) fn has_high_byte_escape(q: &str) -> bool {
    let b = q.as_bytes();
    (0..b.len().saturating_sub(3)).any(|i| {
        b[i] == b'\\'
            && b[i + 1] == b'x'
            && matches!(b[i + 2], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    })
}

/// Natural order of strings: runs of digits compare numerically.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        } else {
            if ab[i] != bb[j] {
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

/// Rewrites labels series by series; `None` keeps the series unchanged. Collisions at a step
/// are errors.
fn relabel(
    vs: Vec<Series>,
    span: Span,
    f: impl Fn(&Labels) -> Option<Labels>,
    keeps_name: bool,
) -> Result<Val> {
    let mut out = Collector::new();
    let mut slots = Vec::with_capacity(vs.len());
    let mut new: Vec<Series> = Vec::with_capacity(vs.len());
    for s in &vs {
        let l = f(&s.labels).unwrap_or_else(|| s.labels.clone());
        let drop = if keeps_name { false } else { s.drop_name };
        new.push(Series {
            labels: l,
            points: Vec::new(),
            drop_name: drop,
        });
    }
    for s in &new {
        slots.push(out.slot(&s.labels, s.drop_name));
    }
    let single = span.len() == 1;
    for_each_step(&vs, span, |_, t, elems| {
        for e in elems {
            out.push_slot(slots[e.s], t, e.v)?;
        }
        Ok(())
    })?;
    let mut res = out.finish();
    if single {
        // Keep the input order for instant queries (sort functions may follow).
        let order: HashMap<Labels, usize> = new
            .iter()
            .enumerate()
            .map(|(i, s)| (s.labels.clone(), i))
            .collect();
        res.sort_by_key(|s| order.get(&s.labels).copied().unwrap_or(usize::MAX));
    }
    Ok(Val::Vector(res))
}

/// Labels of `absent(...)`'s output: the equality matchers of a plain selector.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unwrap_paren(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let Ok(sets) = convert_matchers(&None, &vs.matchers) else {
        return Labels::empty();
    };
    let Some(ms) = sets.first() else {
        return Labels::empty();
    };
    let mut b = tidemark_model::LabelsBuilder::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in ms {
        if m.name == METRIC_NAME {
            continue;
        }
        *seen.entry(&m.name).or_default() += 1;
        if m.kind == MatchType::Equal {
            b.set(&m.name, &m.value);
        }
    }
    for (k, c) in seen {
        if c > 1 {
            b.del(k);
        }
    }
    b.build()
}

/// Prometheus' `extrapolatedRate`.
fn extrapolated_rate(
    w: &[Sample],
    range_start: i64,
    range_end: i64,
    range: i64,
    counter: bool,
    rate: bool,
    no_resets: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    if counter && !no_resets {
        let mut prev = first.v;
        for p in &w[1..] {
            if p.v < prev {
                result += prev;
            }
            prev = p.v;
        }
    }
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    let threshold = avg * 1.1;
    let mut interval = sampled;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if counter && result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    interval += to_start;
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    interval += to_end;
    let mut factor = interval / sampled;
    if rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn linear_regression(w: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init = w[0].v;
    let mut const_y = true;
    for (i, p) in w.iter().enumerate() {
        if const_y && i > 0 && p.v != init {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn avg_over(w: &[Sample]) -> f64 {
    let (mut sum, mut count) = (w[0].v, 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, p) in w[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(p.v, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(p.v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn stdvar_over(w: &[Sample]) -> f64 {
    let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in w {
        count += 1.0;
        let delta = p.v - (mean + cm);
        (mean, cm) = kahan_inc(delta / count, mean, cm);
        (aux, ca) = kahan_inc(delta * (p.v - (mean + cm)), aux, ca);
    }
    (aux + ca) / count
}

/// Per-step scalar parameters of a range function.
struct RangeParams {
    a: Vec<f64>,
    b: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn compute(
    name: &str,
    w: &[Sample],
    t: i64,
    ts: i64,
    range: i64,
    i: usize,
    p: &RangeParams,
    no_resets: bool,
) -> Option<f64> {
    let last = w[w.len() - 1];
    Some(match name {
        "rate" => return extrapolated_rate(w, ts - range, ts, range, true, true, no_resets),
        "increase" => return extrapolated_rate(w, ts - range, ts, range, true, false, no_resets),
        "delta" => return extrapolated_rate(w, ts - range, ts, range, false, false, true),
        "irate" | "idelta" => {
            if w.len() < 2 {
                return None;
            }
            let prev = w[w.len() - 2];
            let mut v = if name == "irate" && last.v < prev.v {
                last.v
            } else {
                last.v - prev.v
            };
            if name == "irate" {
                let dt = last.t - prev.t;
                if dt == 0 {
                    return None;
                }
                v /= dt as f64 / 1000.0;
            }
            v
        }
        "deriv" => {
            if w.len() < 2 {
                return None;
            }
            linear_regression(w, w[0].t).0
        }
        "predict_linear" => {
            if w.len() < 2 {
                return None;
            }
            let (slope, intercept) = linear_regression(w, t);
            slope * p.a[i] + intercept
        }
        "resets" => {
            let mut c = 0;
            for k in 1..w.len() {
                if w[k].v < w[k - 1].v {
                    c += 1;
                }
            }
            c as f64
        }
        "changes" => {
            let mut c = 0;
            for k in 1..w.len() {
                let (a, b) = (w[k - 1].v, w[k].v);
                if !(a == b || (a.is_nan() && b.is_nan())) {
                    c += 1;
                }
            }
            c as f64
        }
        "avg_over_time" => avg_over(w),
        "sum_over_time" => {
            let (mut s, mut c) = (0.0, 0.0);
            for x in w {
                (s, c) = kahan_inc(x.v, s, c);
            }
            if s.is_infinite() { s } else { s + c }
        }
        "count_over_time" => w.len() as f64,
        "min_over_time" | "max_over_time" | "ts_of_min_over_time" | "ts_of_max_over_time" => {
            let mut best = w[0];
            let is_max = name.contains("max");
            let ts_of = name.starts_with("ts_of");
            for x in w {
                let better = if ts_of {
                    if is_max { x.v >= best.v } else { x.v <= best.v }
                } else if is_max {
                    x.v > best.v
                } else {
                    x.v < best.v
                };
                if better || best.v.is_nan() {
                    best = *x;
                }
            }
            if ts_of {
                best.t as f64 / 1000.0
            } else {
                best.v
            }
        }
        "ts_of_last_over_time" => last.t as f64 / 1000.0,
        "ts_of_first_over_time" => w[0].t as f64 / 1000.0,
        "quantile_over_time" => {
            let mut v: Vec<f64> = w.iter().map(|x| x.v).collect();
            quantile(p.a[i], &mut v)
        }
        "stddev_over_time" => stdvar_over(w).sqrt(),
        "stdvar_over_time" => stdvar_over(w),
        "last_over_time" => last.v,
        "first_over_time" => w[0].v,
        "present_over_time" => 1.0,
        "mad_over_time" => {
            if w.iter().any(|x| x.v.is_nan()) {
                return Some(f64::NAN);
            }
            let mut v: Vec<f64> = w.iter().map(|x| x.v).collect();
            let median = quantile(0.5, &mut v);
            let mut d: Vec<f64> = w.iter().map(|x| (x.v - median).abs()).collect();
            quantile(0.5, &mut d)
        }
        "double_exponential_smoothing" => {
            if w.len() < 2 {
                return None;
            }
            let (sf, tf) = (p.a[i], p.b[i]);
            let (mut s0, mut s1) = (0.0, w[0].v);
            let mut b = w[1].v - w[0].v;
            for (k, x) in w.iter().enumerate().skip(1) {
                let xv = sf * x.v;
                if k > 1 {
                    b = tf * (s1 - s0) + (1.0 - tf) * b;
                }
                let y = (1.0 - sf) * (s1 + b);
                s0 = s1;
                s1 = xv + y;
            }
            s1
        }
        _ => return None,
    })
}

fn eval_range_fn(
    ctx: &Ctx<'_>,
    name: &str,
    args: &[&Expr],
    span: Span,
    depth: usize,
) -> Result<Val> {
    let n = span.len();
    let (mi, params) = match name {
        "quantile_over_time" => {
            let q = scalar_arg(ctx, args[0], span, depth)?;
            for x in &q {
                if !(0.0..=1.0).contains(x) {
                    ctx.warn(format!(
                        "PromQL warning: quantile value should be between 0 and 1, got {} {}",
                        format_float_go(*x, 21),
                        ctx.pos_of(&args[0].to_string(), "quantile_over_time")
                    ));
                }
            }
            (
                1,
                RangeParams {
                    a: q,
                    b: Vec::new(),
                },
            )
        }
        "predict_linear" => (
            0,
            RangeParams {
                a: scalar_arg(ctx, args[1], span, depth)?,
                b: Vec::new(),
            },
        ),
        "double_exponential_smoothing" => {
            let sf = scalar_arg(ctx, args[1], span, depth)?;
            let tf = scalar_arg(ctx, args[2], span, depth)?;
            if let Some(x) = sf.iter().find(|x| **x <= 0.0 || **x >= 1.0 || x.is_nan()) {
                return Err(QueryError::execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {x:.6}"
                )));
            }
            if let Some(x) = tf.iter().find(|x| **x <= 0.0 || **x >= 1.0 || x.is_nan()) {
                return Err(QueryError::execution(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {x:.6}"
                )));
            }
            (0, RangeParams { a: sf, b: tf })
        }
        _ => (
            0,
            RangeParams {
                a: Vec::new(),
                b: Vec::new(),
            },
        ),
    };
    let src = ctx.matrix_source(args[mi], span, Some(name), depth)?;
    let (range, offset, at) = (src.range, src.offset, src.at);
    if name == "absent_over_time" {
        let mut present = vec![false; n];
        for s in &src.series {
            let mut lo = 0;
            let mut hi = 0;
            for (i, pr) in present.iter_mut().enumerate() {
                let ts = at.unwrap_or(span.t(i)) - offset;
                while hi < s.points.len() && s.points[hi].t <= ts {
                    hi += 1;
                }
                while lo < hi && s.points[lo].t <= ts - range {
                    lo += 1;
                }
                if at.is_some() {
                    lo = s.points.partition_point(|p| p.t <= ts - range);
                    hi = s.points.partition_point(|p| p.t <= ts);
                }
                if lo < hi {
                    *pr = true;
                }
            }
        }
        ctx.release_samples(src.total);
        let labels = absent_labels(args[0]);
        let points: Vec<Sample> = (0..n)
            .filter(|i| !present[*i])
            .map(|i| Sample::new(span.t(i), 1.0))
            .collect();
        return Ok(Val::Vector(if points.is_empty() {
            vec![]
        } else {
            vec![Series {
                labels,
                points,
                drop_name: false,
            }]
        }));
    }
    let keep_name = matches!(name, "last_over_time" | "first_over_time");
    let counter_fn = matches!(name, "rate" | "increase");
    if matches!(name, "rate" | "increase") {
        let mut warned = std::collections::HashSet::new();
        for s in &src.series {
            let mn = s.labels.get_or_empty(METRIC_NAME);
            if !mn.is_empty()
                && !["_total", "_sum", "_count", "_bucket"]
                    .iter()
                    .any(|suf| mn.ends_with(suf))
                && warned.insert(mn.to_string())
                && s.points.len() >= 2
            {
                ctx.info(format!(
                    "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {:?} {}",
                    mn,
                    ctx.pos_of(&args[mi].to_string(), name)
                ));
            }
        }
    }
    let total = src.total;
    // Over downsampled windows a count is the sum of the windows' counts.
    let name = match (src.planned, name) {
        (Some(_), "count_over_time") => "sum_over_time",
        _ => name,
    };
    let weights: Vec<Option<Vec<f64>>> = match src.weights {
        Some(w) => w.into_iter().map(Some).collect(),
        None => vec![None; src.series.len()],
    };
    let out: Vec<Series> = src
        .series
        .into_par_iter()
        .zip(weights)
        .filter_map(|(s, weights)| {
            // Past the deadline: stop computing (the error is raised below).
            if std::time::Instant::now() > ctx.deadline {
                return None;
            }
            let mut points = Vec::new();
            let (mut lo, mut hi) = (0usize, 0usize);
            // Counter resets before each sample (prefix counts), so windows without a reset
            // skip the reset scan.
            let resets: Vec<u32> = if counter_fn {
                let mut acc = 0u32;
                let mut v = Vec::with_capacity(s.points.len());
                for (k, p) in s.points.iter().enumerate() {
                    if k > 0 && p.v < s.points[k - 1].v {
                        acc += 1;
                    }
                    v.push(acc);
                }
                v
            } else {
                Vec::new()
            };
            for i in 0..n {
                let t = span.t(i);
                let ts = at.unwrap_or(t) - offset;
                if at.is_some() {
                    lo = s.points.partition_point(|p| p.t <= ts - range);
                    hi = s.points.partition_point(|p| p.t <= ts);
                } else {
                    while hi < s.points.len() && s.points[hi].t <= ts {
                        hi += 1;
                    }
                    while lo < hi && s.points[lo].t <= ts - range {
                        lo += 1;
                    }
                }
                if lo >= hi {
                    continue;
                }
                let no_resets = counter_fn && resets[hi - 1] == resets[lo];
                if let Some(w) = &weights {
                    // avg_over_time over windows: sum of sums / sum of counts.
                    let sum: f64 = s.points[lo..hi].iter().map(|p| p.v).sum();
                    let count: f64 = w[lo..hi].iter().sum();
                    points.push(Sample::new(t, sum / count));
                    continue;
                }
                if let Some(v) =
                    compute(name, &s.points[lo..hi], t, ts, range, i, &params, no_resets)
                {
                    points.push(Sample::new(t, v));
                }
            }
            if points.is_empty() {
                return None;
            }
            let drop_name = if keep_name { s.drop_name } else { true };
            Some(Series {
                labels: s.labels,
                points,
                drop_name,
            })
        })
        .collect();
    ctx.release_samples(total);
    ctx.check_deadline()?;
    let produced: usize = out.iter().map(|s| s.points.len()).sum();
    ctx.add_samples(produced)?;
    Ok(Val::Vector(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[(i64, f64)]) -> Vec<Sample> {
        v.iter().map(|&(t, v)| Sample::new(t, v)).collect()
    }

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("a2", "a10"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("a10", "a2"), std::cmp::Ordering::Greater);
        assert_eq!(natural_cmp("abc", "abd"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("a01", "a1"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn rate_extrapolation_and_resets() {
        // Samples every 60s from 60s to 300s in a 300s window ending at 300s.
        let w = s(&[
            (60_000, 10.0),
            (120_000, 20.0),
            (180_000, 30.0),
            (240_000, 40.0),
            (300_000, 50.0),
        ]);
        let r = extrapolated_rate(&w, 0, 300_000, 300_000, true, true, false).unwrap();
        assert!((r - 50.0 / 300.0).abs() < 1e-12, "{r}");
        // A reset adds the value before it.
        let w = s(&[(0, 10.0), (60_000, 2.0), (120_000, 4.0)]);
        let inc = extrapolated_rate(&w, 0, 120_000, 120_000, true, false, false).unwrap();
        assert!((inc - 4.0).abs() < 1e-12, "{inc}"); // 10 -> reset -> 2 -> 4: +2 +2
        assert!(extrapolated_rate(&w[..1], 0, 1, 1, true, true, false).is_none());
    }

    #[test]
    fn linear_regression_slope() {
        let w = s(&[(0, 1.0), (1000, 3.0), (2000, 5.0)]);
        let (slope, intercept) = linear_regression(&w, 0);
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert_eq!(
            linear_regression(&s(&[(0, 4.0), (1000, 4.0)]), 0),
            (0.0, 4.0)
        );
        let (a, b) = linear_regression(&s(&[(0, f64::INFINITY), (1000, f64::INFINITY)]), 0);
        assert!(a.is_nan() && b.is_nan());
    }
}
