//! promtool's rule unit-test format (`promtool test rules`): input series in the expanding
//! notation, rule evaluation at every `evaluation_interval`, `alert_rule_test` (firing alerts at
//! an eval time) and `promql_expr_test` (instant query results), with promtool's verdicts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use tidemark_model::{Labels, METRIC_NAME, stale_nan};
use tidemark_promql::{Engine, EngineOptions};
use tidemark_scrape::config::Duration;
use tidemark_storage::memory::MemStorage;

use crate::file;
use crate::group::{AlertState, EvalContext, Group, GroupOptions, query_vector};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Duration>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<Duration>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: Duration,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    eval_time: Duration,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// Parses a series selector of equality matchers (`up{job="a"}`) into labels.
pub fn parse_series(s: &str) -> Result<Labels, String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::Expr;
    let e = promql_parser::parser::parse(s).map_err(|e| format!("parse {s:?}: {e}"))?;
    let Expr::VectorSelector(vs) = e else {
        return Err(format!("{s:?} is not a series selector"));
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(n) = vs.name {
        pairs.push((METRIC_NAME.to_string(), n));
    }
    for m in vs.matchers.matchers {
        if !matches!(m.op, MatchOp::Equal) {
            return Err(format!("{s:?}: only equality matchers are allowed"));
        }
        pairs.push((m.name, m.value));
    }
    Ok(Labels::from_pairs(pairs))
}

/// Expands promtool's value notation (`1+2x3 _ stale 5 -1x2 _x2`) into one slot per step
/// (None: no sample).
pub fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in text.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(stale_nan()));
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad repetition {tok:?}"))?;
            if n > 1_000_000 || out.len() + n > 1_000_000 {
                return Err(format!("{tok:?}: too many values"));
            }
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if let Some((head, times)) = tok.rsplit_once('x') {
            let n: u64 = times
                .parse()
                .map_err(|_| format!("bad repetition count in {tok:?}"))?;
            if n > 1_000_000 || out.len() as u64 + n > 1_000_000 {
                return Err(format!("{tok:?}: too many values"));
            }
            // head is `a`, `a+b` or `a-b` (a may itself be signed).
            let split = head
                .char_indices()
                .skip(1)
                .find(|(i, c)| (*c == '+' || *c == '-') && !head[..*i].ends_with(['e', 'E']));
            let (a, b) = match split {
                Some((i, _)) => (&head[..i], &head[i..]),
                None => (head, "0"),
            };
            let a = parse_num(a).ok_or_else(|| format!("bad number in {tok:?}"))?;
            let b = parse_num(b.trim_start_matches('+'))
                .ok_or_else(|| format!("bad increment in {tok:?}"))?;
            let mut v = a;
            for _ in 0..=n {
                out.push(Some(v));
                v += b;
            }
            continue;
        }
        out.push(Some(
            parse_num(tok).ok_or_else(|| format!("bad value {tok:?}"))?,
        ));
    }
    Ok(out)
}

fn parse_num(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        l if l.starts_with("0x") => i64::from_str_radix(&l[2..], 16).ok().map(|x| x as f64),
        _ => s.parse().ok(),
    }
}

/// Runs a test file; an empty list means every test passed.
pub fn run_file(path: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let tf: TestFile = match serde_yaml_ng::from_str(&text) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let patterns: Vec<String> = tf
        .rule_files
        .iter()
        .map(|r| {
            if Path::new(r).is_absolute() {
                r.clone()
            } else {
                dir.join(r).display().to_string()
            }
        })
        .collect();
    let files = match file::expand_globs(&patterns) {
        Ok(f) => f,
        Err(e) => return vec![e.to_string()],
    };
    let mut loaded = Vec::new();
    for f in &files {
        match file::load(f) {
            Ok(l) => loaded.push(l),
            Err(e) => return vec![e.to_string()],
        }
    }
    let eval_interval = tf.evaluation_interval.map(|d| d.0).unwrap_or(60_000).max(1);
    let mut errs = Vec::new();
    for tg in &tf.tests {
        errs.extend(run_group(tg, &loaded, eval_interval, &tf.group_eval_order));
    }
    errs
}

type LabelsAndAnnotations = (Labels, BTreeMap<String, String>);

fn run_group(
    tg: &TestGroup,
    files: &[file::LoadedFile],
    eval_interval: i64,
    order: &[String],
) -> Vec<String> {
    let prefix = if tg.name.is_empty() {
        String::new()
    } else {
        format!("    name: {},\n", tg.name)
    };
    let st = MemStorage::new();
    let interval = tg.interval.map(|d| d.0).unwrap_or(eval_interval).max(1);
    for s in &tg.input_series {
        let labels = match parse_series(&s.series) {
            Ok(l) => l,
            Err(e) => return vec![format!("{prefix}    {e}")],
        };
        let vals = match expand_values(&s.values) {
            Ok(v) => v,
            Err(e) => return vec![format!("{prefix}    {e}")],
        };
        for (i, v) in vals.into_iter().enumerate() {
            if let Some(v) = v {
                st.insert(labels.clone(), i as i64 * interval, v);
            }
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    for f in files {
        for g in &f.file.groups {
            let mut grp = Group::new(&f.path, g, eval_interval, 0);
            grp.mark_restored();
            groups.push(grp);
        }
    }
    if order.is_empty() {
        groups.sort_by(|a, b| a.name.cmp(&b.name));
    } else {
        let pos: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        for g in &groups {
            if !pos.contains_key(g.name.as_str()) {
                return vec![format!(
                    "{prefix}    group name \"{}\" is missing from group_eval_order",
                    g.name
                )];
            }
        }
        groups.sort_by_key(|g| pos.get(g.name.as_str()).copied().unwrap_or(usize::MAX));
    }
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions {
        external_labels: tg
            .external_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        external_url: tg.external_url.clone(),
        ..GroupOptions::default()
    };
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let mut alert_times: Vec<i64> = tg.alert_rule_test.iter().map(|t| t.eval_time.0).collect();
    alert_times.sort_unstable();
    alert_times.dedup();
    let maxt = tg
        .alert_rule_test
        .iter()
        .map(|t| t.eval_time.0)
        .chain(tg.promql_expr_test.iter().map(|t| t.eval_time.0))
        .max()
        .unwrap_or(0);
    let mut errs = Vec::new();
    let mut got_at: BTreeMap<i64, HashMap<String, Vec<LabelsAndAnnotations>>> = BTreeMap::new();
    let mut cur = 0;
    let mut ts = 0;
    while ts <= maxt {
        for g in &mut groups {
            g.eval(&ctx, ts);
            for r in &g.rules {
                if let Some(e) = &r.health.last_error {
                    errs.push(format!(
                        "{prefix}    rule: {}, time: {}, err: {e}",
                        r.name(),
                        fmt_dur(ts)
                    ));
                }
            }
        }
        if !errs.is_empty() {
            return errs;
        }
        while cur < alert_times.len()
            && ts <= alert_times[cur]
            && alert_times[cur] < ts + eval_interval
        {
            let mut got: HashMap<String, Vec<LabelsAndAnnotations>> = HashMap::new();
            for g in &groups {
                for r in g.rules.iter().filter(|r| r.is_alert()) {
                    for a in r.alerts() {
                        if a.state == AlertState::Firing {
                            got.entry(r.name().to_string())
                                .or_default()
                                .push((a.labels.clone(), a.annotations.clone()));
                        }
                    }
                }
            }
            got_at.insert(alert_times[cur], got);
            cur += 1;
        }
        ts += eval_interval;
    }
    for t in &tg.alert_rule_test {
        let mut got = got_at
            .get(&t.eval_time.0)
            .and_then(|m| m.get(&t.alertname))
            .cloned()
            .unwrap_or_default();
        let mut exp: Vec<(Labels, BTreeMap<String, String>)> = t
            .exp_alerts
            .iter()
            .map(|a| {
                let mut l = a.exp_labels.clone();
                l.insert("alertname".to_string(), t.alertname.clone());
                (Labels::from_pairs(l), a.exp_annotations.clone())
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        if got != exp {
            errs.push(format!(
                "{prefix}    alertname: {}, time: {}, \n        exp:{},\n        got:{}",
                t.alertname,
                fmt_dur(t.eval_time.0),
                fmt_alerts(&exp),
                fmt_alerts(&got)
            ));
        }
    }
    for t in &tg.promql_expr_test {
        let got = match query_vector(&ctx, &t.expr, t.eval_time.0) {
            Ok(g) => g,
            Err(e) => {
                errs.push(format!(
                    "{prefix}    expr: {:?}, time: {}, err: {e}",
                    t.expr,
                    fmt_dur(t.eval_time.0)
                ));
                continue;
            }
        };
        let mut exp = Vec::new();
        let mut bad = false;
        for s in &t.exp_samples {
            let l = if s.labels.trim().is_empty() || s.labels.replace(' ', "") == "{}" {
                Ok(Labels::empty())
            } else {
                parse_series(&s.labels)
            };
            match l {
                Ok(l) => exp.push((l, s.value)),
                Err(e) => {
                    errs.push(format!(
                        "{prefix}    expr: {:?}, time: {}, err: {e}",
                        t.expr,
                        fmt_dur(t.eval_time.0)
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let mut got = got;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        // Exact comparison, as promtool's reflect.DeepEqual (NaN never matches).
        let same =
            got.len() == exp.len() && got.iter().zip(&exp).all(|(g, e)| g.0 == e.0 && g.1 == e.1);
        if !same {
            errs.push(format!(
                "{prefix}    expr: {:?}, time: {},\n        exp: {}\n        got: {}",
                t.expr,
                fmt_dur(t.eval_time.0),
                fmt_samples(&exp),
                fmt_samples(&got)
            ));
        }
    }
    errs
}

fn fmt_dur(ms: i64) -> String {
    tidemark_model::time::format_duration_millis(ms)
}

fn fmt_alerts(v: &[(Labels, BTreeMap<String, String>)]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|(l, a)| format!("Labels:{l} Annotations:{a:?}"))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn fmt_samples(v: &[(Labels, f64)]) -> String {
    let parts: Vec<String> = v.iter().map(|(l, x)| format!("{l} {x}")).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expanding_notation() {
        let v = expand_values("1+2x3 _ stale 5 -1x2 _x2 4-1x1 1x2").unwrap();
        let shown: Vec<String> = v
            .iter()
            .map(|x| match x {
                None => "_".to_string(),
                Some(f) if tidemark_model::is_stale_nan(*f) => "stale".to_string(),
                Some(f) => f.to_string(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "1", "3", "5", "7", "_", "stale", "5", "-1", "-1", "-1", "_", "_", "4", "3", "1",
                "1", "1"
            ]
        );
        assert!(expand_values("1+x").is_err());
        assert!(expand_values("abc").is_err());
    }

    #[test]
    fn series_selectors() {
        let l = parse_series("up{job=\"a\", instance=\"b\"}").unwrap();
        assert_eq!(l.get("__name__"), Some("up"));
        assert_eq!(l.get("job"), Some("a"));
        assert!(parse_series("up{job=~\"a\"}").is_err());
    }
}
