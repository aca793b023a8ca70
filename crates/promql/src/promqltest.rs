//! The runner for Prometheus' promqltest `.test` scripts (load / clear / eval / expect).
//!
//! Data is loaded into [`MemStorage`]; every `eval` runs through the public [`Engine`] API.
//! Cases whose data or expected results use native-histogram notation (`{{...}}`, also
//! `load_with_nhcb`) are skipped and counted, never passed.

use std::fmt;
use std::path::{Path, PathBuf};

use promql_parser::parser::Expr;
use tidemark_model::{Labels, Sample, stale_nan};
use tidemark_storage::memory::MemStorage;

use crate::engine::{Engine, EngineOptions, QueryParams, QueryResult};
use crate::error::QueryError;
use crate::histogram::almost_equal;
use crate::value::Value;

/// Options of a test run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Engine options (defaults: Prometheus' test engine settings).
    pub engine: Option<EngineOptions>,
}

/// The outcome of one `.test` file.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub path: PathBuf,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// One entry per failed case: `line N: <query>: <what went wrong>`.
    pub failures: Vec<String>,
    /// One entry per skipped case: `line N: <eval line>: <why>`.
    pub skips: Vec<String>,
}

/// The outcome of several files.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub files: Vec<FileReport>,
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.files.iter().map(|f| f.passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.files.iter().map(|f| f.failed).sum()
    }
    pub fn skipped(&self) -> usize {
        self.files.iter().map(|f| f.skipped).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.files {
            let name = r.path.file_name().map_or_else(
                || r.path.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            writeln!(
                f,
                "{name:<32} {:>5} passed {:>5} failed {:>5} skipped",
                r.passed, r.failed, r.skipped
            )?;
            for l in &r.failures {
                writeln!(f, "    FAIL {l}")?;
            }
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Runs several files with default options.
pub fn run_test_files(paths: &[PathBuf]) -> Summary {
    let opts = RunOptions::default();
    Summary {
        files: paths.iter().map(|p| run_test_file(p, &opts)).collect(),
    }
}

/// Runs one `.test` file.
pub fn run_test_file(path: &Path, opts: &RunOptions) -> FileReport {
    let mut report = FileReport {
        path: path.to_path_buf(),
        ..FileReport::default()
    };
    match std::fs::read_to_string(path) {
        Ok(text) => run_script(&text, opts, &mut report),
        Err(e) => {
            report.failed += 1;
            report
                .failures
                .push(format!("cannot read {}: {e}", path.display()));
        }
    }
    report
}

/// Runs a script given as text (the body of a `.test` file).
pub fn run_script(text: &str, opts: &RunOptions, report: &mut FileReport) {
    let engine = Engine::new(opts.engine.clone().unwrap_or_default());
    let storage = MemStorage::new();
    // Label sets of native-histogram series loaded since the last `clear`.
    let mut histogram_series: Vec<HistSeries> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let lineno = i + 1;
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The block of indented lines that belongs to this command.
        let mut block: Vec<(usize, &str)> = Vec::new();
        while i < lines.len() {
            let l = lines[i];
            let t = l.trim();
            if t.is_empty() {
                break;
            }
            if !l.starts_with(|c: char| c.is_whitespace()) && !t.starts_with('#') {
                break;
            }
            if !t.starts_with('#') {
                block.push((i + 1, t));
            }
            i += 1;
        }
        let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match cmd {
            "clear" => {
                storage.clear();
                histogram_series.clear();
            }
            "load" | "load_with_nhcb" => {
                match load(&storage, rest.trim(), &block, cmd == "load_with_nhcb") {
                    Ok(h) => histogram_series.extend(h),
                    Err(e) => {
                        report.failed += 1;
                        report.failures.push(format!("line {lineno}: load: {e}"));
                    }
                }
            }
            c if c.starts_with("eval") => {
                let why = if block.iter().any(|(_, l)| l.contains("{{")) {
                    Some("expected result holds native histograms")
                } else if reads_histograms(rest, &histogram_series) {
                    Some("query selects native-histogram series")
                } else {
                    None
                };
                if let Some(why) = why {
                    report.skipped += 1;
                    report.skips.push(format!("line {lineno}: {line}: {why}"));
                    continue;
                }
                match run_eval(&engine, &storage, cmd, rest, &block) {
                    Ok(()) => report.passed += 1,
                    Err(e) => {
                        report.failed += 1;
                        report.failures.push(format!("line {lineno}: {line}: {e}"));
                    }
                }
            }
            other => {
                report.failed += 1;
                report
                    .failures
                    .push(format!("line {lineno}: unknown command {other:?}"));
            }
        }
    }
}

fn parse_duration(s: &str) -> Result<i64, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let ms = if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        body.parse::<i64>().map_err(|e| e.to_string())? * 1000
    } else {
        tidemark_model::time::parse_duration_millis(body).map_err(|e| e.to_string())?
    };
    Ok(if neg { -ms } else { ms })
}

/// Parses a float as the test language writes it.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "stale" => Ok(stale_nan()),
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => {
            if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                return i64::from_str_radix(h, 16)
                    .map(|v| v as f64)
                    .map_err(|e| format!("bad value {s:?}: {e}"));
            }
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
    }
}

/// Splits a values text into tokens, keeping `{{...}}` histogram literals (which contain spaces)
/// together with their `+{{...}}xN` suffixes.
fn tokens(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        let mut depth = 0;
        while i < b.len() {
            if b[i] == b'{' {
                depth += 1;
            } else if b[i] == b'}' {
                depth -= 1;
            } else if b[i].is_ascii_whitespace() && depth <= 0 {
                break;
            }
            i += 1;
        }
        if i > start {
            out.push(&text[start..i]);
        }
    }
    out
}

/// Number of slots a native-histogram token (`{{...}}`, `{{...}}x3`, `{{..}}+{{..}}x3`) covers.
fn histogram_slots(tok: &str) -> usize {
    let tail = tok.rsplit_once("}}").map_or("", |(_, t)| t);
    match tail.strip_prefix('x').and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => n + 1,
        None => 1,
    }
}

/// Expands the series value notation into one optional value per slot (`None` = `_`).
fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    Ok(expand_slots(text)?
        .into_iter()
        .map(|s| s.unwrap_or(None))
        .collect())
}

/// Like [`expand_values`], but native-histogram slots come out as `None` (outer).
fn expand_slots(text: &str) -> Result<Vec<Option<Option<f64>>>, String> {
    let mut out: Vec<Option<Option<f64>>> = Vec::new();
    for tok in tokens(text) {
        if tok.contains("{{") {
            out.extend(std::iter::repeat_n(None, histogram_slots(tok)));
            continue;
        }
        let before = out.len();
        let mut vals: Vec<Option<f64>> = Vec::new();
        expand_float_token(tok, &mut vals)?;
        out.truncate(before);
        out.extend(vals.into_iter().map(Some));
    }
    Ok(out)
}

fn expand_float_token(tok: &str, out: &mut Vec<Option<f64>>) -> Result<(), String> {
    {
        if tok == "_" {
            out.push(None);
            return Ok(());
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|e| format!("bad repeat {tok:?}: {e}"))?;
            out.extend(std::iter::repeat_n(None, n));
            return Ok(());
        }
        if let Some((head, n)) = tok.rsplit_once('x')
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !head.starts_with("0x")
        {
            let n: usize = n.parse().map_err(|e| format!("bad repeat {tok:?}: {e}"))?;
            // head is `a`, `a+b` or `a-b` (a may itself be negative).
            let (start, delta) = split_delta(head)?;
            if start == "stale" {
                out.extend(std::iter::repeat_n(Some(stale_nan()), n + 1));
                return Ok(());
            }
            let a = parse_value(start)?;
            let d = match delta {
                Some(d) => parse_value(d)?,
                None => 0.0,
            };
            let mut cur = a;
            out.push(Some(cur));
            for _ in 0..n {
                cur += d;
                out.push(Some(cur));
            }
            return Ok(());
        }
        out.push(Some(parse_value(tok)?));
    }
    Ok(())
}

fn split_delta(head: &str) -> Result<(&str, Option<&str>), String> {
    // Find a '+' or '-' that is not the leading sign and not part of an exponent.
    let b = head.as_bytes();
    for i in 1..b.len() {
        if (b[i] == b'+' || b[i] == b'-') && !matches!(b[i - 1], b'e' | b'E') {
            let d = &head[i..];
            let d = d.strip_prefix('+').unwrap_or(d);
            return Ok((&head[..i], Some(d)));
        }
    }
    Ok((head, None))
}

/// Splits `metric{a="b"} values...` into the series text and the values text.
fn split_series(line: &str) -> (&str, &str) {
    let mut in_quote = false;
    let mut escaped = false;
    let mut depth = 0;
    for (i, c) in line.char_indices() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (&line[..=i], &line[i + 1..]);
                }
            }
            c if c.is_whitespace() && depth == 0 => return (&line[..i], &line[i..]),
            _ => {}
        }
    }
    (line, "")
}

fn parse_labels(s: &str) -> Result<Labels, String> {
    let e = promql_parser::parser::parse(s).map_err(|e| format!("bad series {s:?}: {e}"))?;
    let Expr::VectorSelector(vs) = e else {
        return Err(format!("bad series {s:?}"));
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(n) = &vs.name {
        pairs.push((tidemark_model::METRIC_NAME.to_string(), n.clone()));
    }
    for m in &vs.matchers.matchers {
        pairs.push((m.name.clone(), m.value.clone()));
    }
    Ok(Labels::from_pairs(pairs))
}

/// Does the query of an `eval` line select any native-histogram series?
fn reads_histograms(eval_rest: &str, histogram_series: &[HistSeries]) -> bool {
    if histogram_series.is_empty() {
        return false;
    }
    let w: Vec<&str> = eval_rest.split_whitespace().collect();
    let (qs, qe) = match w.as_slice() {
        ["instant", "at", t, ..] => {
            let t = parse_duration(t).unwrap_or(0);
            (t, t)
        }
        ["range", "from", a, "to", b, ..] => (
            parse_duration(a).unwrap_or(0),
            parse_duration(b).unwrap_or(0),
        ),
        _ => (i64::MIN / 4, i64::MAX / 4),
    };
    let expr = eval_rest
        .split_once(" at ")
        .map(|(_, r)| r)
        .or_else(|| eval_rest.split_once(" step ").map(|(_, r)| r))
        .and_then(|r| r.trim().split_once(char::is_whitespace).map(|(_, e)| e))
        .unwrap_or("");
    let Ok(ast) = promql_parser::parser::parse(expr) else {
        return false;
    };
    // A generous window of the data the query may read: lookback, every range and subquery
    // range, offsets; any `@` disables the time check.
    let text = ast.to_string();
    let (lo, hi) = if text.contains('@') {
        (i64::MIN / 4, i64::MAX / 4)
    } else {
        let mut back = 5 * 60 * 1000;
        let mut fwd = 0;
        add_ranges(&ast, &mut back, &mut fwd);
        (qs - back, qe + fwd)
    };
    let mut found = false;
    visit_selectors(&ast, &mut |vs| {
        if let Ok(sets) = crate::eval::convert_matchers(&vs.name, &vs.matchers) {
            for ms in &sets {
                if histogram_series.iter().any(|h| {
                    tidemark_storage::memory::matches_all(&h.labels, ms)
                        && h.times.iter().any(|t| *t >= lo && *t <= hi)
                }) {
                    found = true;
                }
            }
        }
    });
    found
}

/// A native-histogram series of the loaded data: labels and sample times.
#[derive(Debug, Clone)]
struct HistSeries {
    labels: Labels,
    times: Vec<i64>,
}

fn add_ranges(e: &Expr, back: &mut i64, fwd: &mut i64) {
    use promql_parser::parser::Offset;
    let off = |o: &Option<Offset>, back: &mut i64, fwd: &mut i64| match o {
        Some(Offset::Pos(d)) => *back += d.as_millis() as i64,
        Some(Offset::Neg(d)) => *fwd += d.as_millis() as i64,
        None => {}
    };
    match e {
        Expr::VectorSelector(vs) => off(&vs.offset, back, fwd),
        Expr::MatrixSelector(ms) => {
            *back += ms.range.as_millis() as i64;
            off(&ms.vs.offset, back, fwd);
        }
        Expr::Subquery(s) => {
            *back += s.range.as_millis() as i64 + s.step.map_or(60_000, |d| d.as_millis() as i64);
            off(&s.offset, back, fwd);
            add_ranges(&s.expr, back, fwd);
        }
        Expr::Aggregate(a) => add_ranges(&a.expr, back, fwd),
        Expr::Unary(u) => add_ranges(&u.expr, back, fwd),
        Expr::Binary(b) => {
            add_ranges(&b.lhs, back, fwd);
            add_ranges(&b.rhs, back, fwd);
        }
        Expr::Paren(p) => add_ranges(&p.expr, back, fwd),
        Expr::Call(c) => {
            for a in &c.args.args {
                add_ranges(a, back, fwd);
            }
        }
        _ => {}
    }
}

fn visit_selectors(e: &Expr, f: &mut impl FnMut(&promql_parser::parser::VectorSelector)) {
    match e {
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&ms.vs),
        Expr::Aggregate(a) => {
            visit_selectors(&a.expr, f);
            if let Some(p) = &a.param {
                visit_selectors(p, f);
            }
        }
        Expr::Unary(u) => visit_selectors(&u.expr, f),
        Expr::Binary(b) => {
            visit_selectors(&b.lhs, f);
            visit_selectors(&b.rhs, f);
        }
        Expr::Paren(p) => visit_selectors(&p.expr, f),
        Expr::Subquery(s) => visit_selectors(&s.expr, f),
        Expr::Call(c) => {
            for a in &c.args.args {
                visit_selectors(a, f);
            }
        }
        _ => {}
    }
}

/// Loads a block; returns the label sets of the native-histogram series it held (with
/// `load_with_nhcb`, also the custom-bucket histograms converted from `_bucket` series).
fn load(
    storage: &MemStorage,
    interval: &str,
    block: &[(usize, &str)],
    nhcb: bool,
) -> Result<Vec<HistSeries>, String> {
    let step = parse_duration(interval)?;
    let mut histograms = Vec::new();
    for (_, line) in block {
        let (series, values) = split_series(line);
        let labels = parse_labels(series)?;
        let slots = expand_slots(values)?;
        let mut htimes = Vec::new();
        let mut ftimes = Vec::new();
        for (i, slot) in slots.into_iter().enumerate() {
            let t = i as i64 * step;
            match slot {
                None => htimes.push(t),
                Some(Some(v)) => {
                    ftimes.push(t);
                    storage.insert(labels.clone(), t, v);
                }
                Some(None) => {}
            }
        }
        if !htimes.is_empty() {
            histograms.push(HistSeries {
                labels: labels.clone(),
                times: htimes,
            });
        }
        if nhcb
            && labels.has("le")
            && let Some(base) = labels.metric_name().and_then(|n| n.strip_suffix("_bucket"))
        {
            let mut b = labels.to_builder();
            b.del("le");
            b.set(tidemark_model::METRIC_NAME, base);
            histograms.push(HistSeries {
                labels: b.build(),
                times: ftimes,
            });
        }
    }
    Ok(histograms)
}

#[derive(Debug, Default)]
struct Expect {
    fail: Option<Matcher>,
    warn: Option<Option<Matcher>>,
    no_warn: bool,
    info: Option<Option<Matcher>>,
    no_info: bool,
    ordered: bool,
    range_vector: Option<(i64, i64, i64)>,
    string: Option<String>,
}

#[derive(Debug)]
enum Matcher {
    Any,
    Msg(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn parse(rest: &str) -> Result<Matcher, String> {
        let rest = rest.trim();
        if let Some(m) = rest.strip_prefix("msg:") {
            Ok(Matcher::Msg(m.trim().to_string()))
        } else if let Some(r) = rest.strip_prefix("regex:") {
            regex::Regex::new(r.trim())
                .map(Matcher::Regex)
                .map_err(|e| e.to_string())
        } else {
            Ok(Matcher::Any)
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Msg(m) => s == m,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && (s.starts_with('"') && s.ends_with('"') || s.starts_with('`') && s.ends_with('`'))
    {
        return s[1..s.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
    }
    s.to_string()
}

fn run_eval(
    engine: &Engine,
    storage: &MemStorage,
    cmd: &str,
    rest: &str,
    block: &[(usize, &str)],
) -> Result<(), String> {
    let mut exp = Expect::default();
    if cmd == "eval_fail" {
        exp.fail = Some(Matcher::Any);
    }
    if cmd == "eval_ordered" {
        exp.ordered = true;
    }
    let rest = rest.trim();
    // Parse the time spec.
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (range, expr): (Option<(i64, i64, i64)>, String) = match words.as_slice() {
        ["instant", "at", t, ..] => {
            let at = parse_duration(t)?;
            let idx = rest.find(t).map_or(0, |i| i + t.len());
            (Some((at, at, 0)), rest[idx..].trim().to_string())
        }
        ["range", "from", s, "to", e, "step", st, ..] => {
            let start = parse_duration(s)?;
            let end = parse_duration(e)?;
            let step = parse_duration(st)?;
            let pat = format!("step {st}");
            let idx = rest.find(&pat).map_or(0, |i| i + pat.len());
            (Some((start, end, step)), rest[idx..].trim().to_string())
        }
        _ => (None, String::new()),
    };
    let Some((start, end, step)) = range else {
        return Err(format!("bad eval command {rest:?}"));
    };
    let instant = step == 0;
    let mut results: Vec<&str> = Vec::new();
    for (_, l) in block {
        if let Some(e) = l.strip_prefix("expect") {
            let e = e.trim();
            let (kind, arg) = e.split_once(char::is_whitespace).unwrap_or((e, ""));
            match kind {
                "fail" => exp.fail = Some(Matcher::parse(arg)?),
                "warn" => exp.warn = Some(Some(Matcher::parse(arg)?)),
                "no_warn" => exp.no_warn = true,
                "info" => exp.info = Some(Some(Matcher::parse(arg)?)),
                "no_info" => exp.no_info = true,
                "ordered" => exp.ordered = true,
                "string" => exp.string = Some(unquote(arg)),
                "range" => {
                    let w: Vec<&str> = arg.split_whitespace().collect();
                    match w.as_slice() {
                        ["vector", "from", s, "to", e, "step", st] => {
                            exp.range_vector =
                                Some((parse_duration(s)?, parse_duration(e)?, parse_duration(st)?))
                        }
                        _ => return Err(format!("bad expect range {arg:?}")),
                    }
                }
                other => return Err(format!("unknown expectation {other:?}")),
            }
        } else {
            results.push(l);
        }
    }
    let params = QueryParams::default();
    let res: Result<QueryResult, QueryError> = if instant {
        engine.instant_query(storage, &expr, start, &params)
    } else {
        engine.range_query(storage, &expr, start, end, step, &params)
    };
    let res = match (res, &exp.fail) {
        (Err(e), Some(m)) => {
            return if m.matches(&e.message) {
                Ok(())
            } else {
                Err(format!(
                    "error {:?} does not match the expected one {m:?}",
                    e.message
                ))
            };
        }
        (Err(e), None) => return Err(format!("unexpected error: {}", e.message)),
        (Ok(r), Some(_)) => return Err(format!("expected an error, got {}", summarize(&r.value))),
        (Ok(r), None) => r,
    };
    check_annotations("warning", &res.warnings, &exp.warn, exp.no_warn)?;
    check_annotations("info", &res.infos, &exp.info, exp.no_info)?;
    if let Some(s) = &exp.string {
        return match &res.value {
            Value::String { v, .. } if v == s => Ok(()),
            other => Err(format!("expected string {s:?}, got {}", summarize(other))),
        };
    }
    compare(
        &res.value,
        &results,
        instant,
        (start, end, step),
        exp.range_vector,
        exp.ordered,
    )
}

fn check_annotations(
    kind: &str,
    got: &[String],
    want: &Option<Option<Matcher>>,
    none: bool,
) -> Result<(), String> {
    if let Some(Some(m)) = want {
        if !got.iter().any(|g| m.matches(g)) {
            return Err(format!("expected {kind} {m:?}, got {got:?}"));
        }
    } else if none && !got.is_empty() {
        return Err(format!("expected no {kind}, got {got:?}"));
    }
    Ok(())
}

fn summarize(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 400 {
        format!("{}...", &s[..400])
    } else {
        s
    }
}

struct ExpSeries {
    labels: Labels,
    values: Vec<Option<f64>>,
}

fn parse_expected(results: &[&str]) -> Result<(Vec<ExpSeries>, Option<f64>), String> {
    let mut out = Vec::new();
    let mut scalar = None;
    for l in results {
        let first = l.chars().next().unwrap_or(' ');
        if first.is_ascii_digit()
            || first == '-'
            || first == '+'
            || l.starts_with("NaN")
            || l.starts_with("Inf")
            || l.starts_with('.')
        {
            // A bare scalar (unless it looks like a metric name).
            if !l.contains('{') {
                scalar = Some(parse_value(l.trim())?);
                continue;
            }
        }
        let (series, values) = split_series(l);
        let labels = if series.trim() == "{}" {
            Labels::empty()
        } else {
            parse_labels(series)?
        };
        out.push(ExpSeries {
            labels,
            values: expand_values(values)?,
        });
    }
    Ok((out, scalar))
}

fn eq(a: f64, b: f64) -> bool {
    almost_equal(a, b, 1e-6)
}

fn compare(
    got: &Value,
    results: &[&str],
    instant: bool,
    (start, end, step): (i64, i64, i64),
    range_vector: Option<(i64, i64, i64)>,
    ordered: bool,
) -> Result<(), String> {
    let (exp, scalar) = parse_expected(results)?;
    match got {
        Value::Scalar { v, .. } => {
            let Some(s) = scalar else {
                return Err(format!("got scalar {v}, expected {} series", exp.len()));
            };
            if !eq(s, *v) {
                return Err(format!("expected scalar {s}, got {v}"));
            }
            Ok(())
        }
        Value::String { v, .. } => Err(format!("unexpected string result {v:?}")),
        Value::Vector(vs) => {
            if !instant {
                return Err("range query returned a vector".into());
            }
            if scalar.is_some() {
                return Err(format!("expected a scalar, got vector {}", summarize(got)));
            }
            if vs.len() != exp.len() {
                return Err(format!(
                    "expected {} series, got {}: {}",
                    exp.len(),
                    vs.len(),
                    summarize(got)
                ));
            }
            for (pos, e) in exp.iter().enumerate() {
                let Some(idx) = vs.iter().position(|s| s.labels == e.labels) else {
                    return Err(format!(
                        "expected series {} not found in {}",
                        e.labels,
                        summarize(got)
                    ));
                };
                if ordered && idx != pos {
                    return Err(format!(
                        "series {} at position {idx}, expected {pos}",
                        e.labels
                    ));
                }
                let want = e.values.first().copied().flatten();
                match want {
                    Some(w) if eq(w, vs[idx].v) => {}
                    _ => {
                        return Err(format!(
                            "series {}: expected {want:?}, got {}",
                            e.labels, vs[idx].v
                        ));
                    }
                }
            }
            Ok(())
        }
        Value::Matrix(ms) => {
            let (s0, e0, st) = match (instant, range_vector) {
                (false, _) => (start, end, step),
                (true, Some(r)) => r,
                (true, None) => {
                    return Err(format!(
                        "instant query returned a range vector: {}",
                        summarize(got)
                    ));
                }
            };
            let times: Vec<i64> = (0..)
                .map(|i| s0 + i * st)
                .take_while(|t| *t <= e0)
                .collect();
            let mut want_n = 0;
            for e in &exp {
                let points: Vec<Sample> = e
                    .values
                    .iter()
                    .zip(&times)
                    .filter_map(|(v, t)| v.map(|v| Sample::new(*t, v)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                want_n += 1;
                let Some(g) = ms.iter().find(|s| s.labels == e.labels) else {
                    return Err(format!(
                        "expected series {} not found in {}",
                        e.labels,
                        summarize(got)
                    ));
                };
                if g.samples.len() != points.len()
                    || g.samples
                        .iter()
                        .zip(&points)
                        .any(|(a, b)| a.t != b.t || !eq(a.v, b.v))
                {
                    return Err(format!(
                        "series {}: expected {:?}, got {:?}",
                        e.labels, points, g.samples
                    ));
                }
            }
            if ms.len() != want_n {
                return Err(format!(
                    "expected {want_n} series, got {}: {}",
                    ms.len(),
                    summarize(got)
                ));
            }
            Ok(())
        }
    }
}
