//! Service level objectives: an `slos:` section in a rule file generates the recording rules and
//! the multi-window, multi-burn-rate alerts of the Google SRE workbook (chapter 5, "Alerting on
//! SLOs", table 5-8), as one ordinary rule group per SLO (so they show in `/api/v1/rules`).
//!
//! ```yaml
//! slos:
//!   - name: api-availability
//!     objective: 99.9                 # percent
//!     window: 30d                     # SLO window (default 30d)
//!     error_query: sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))
//!     total_query: sum(rate(http_requests_total[{{.window}}]))
//!     # or good_query + total_query, or error_ratio_query alone
//!     labels: {team: api}
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use tidemark_scrape::config::Duration;

use crate::file::{GroupDef, RuleDef};

/// One `slos:` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloDef {
    pub name: String,
    /// Target in percent, e.g. 99.9.
    pub objective: f64,
    /// The SLO window; default 30d.
    #[serde(default)]
    pub window: Option<Duration>,
    /// Queries with `{{.window}}` where the range goes.
    #[serde(default)]
    pub error_query: Option<String>,
    #[serde(default)]
    pub good_query: Option<String>,
    #[serde(default)]
    pub total_query: Option<String>,
    #[serde(default)]
    pub error_ratio_query: Option<String>,
    /// Added to every generated series and alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Evaluation interval of the generated group (default: global evaluation_interval).
    #[serde(default)]
    pub interval: Option<Duration>,
}

/// Windows whose error ratio is recorded.
const WINDOWS: &[&str] = &["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// (long window, short window, share of the error budget spent, severity, `for`), as the
/// workbook's table for a 30-day SLO: 2% in 1h and 5% in 6h page, 10% in 1d and 10% in 3d
/// open a ticket.
const ALERTS: &[(&str, &str, f64, &str, &str)] = &[
    ("1h", "5m", 0.02, "page", "2m"),
    ("6h", "30m", 0.05, "page", "15m"),
    ("1d", "2h", 0.10, "ticket", "1h"),
    ("3d", "6h", 0.10, "ticket", "3h"),
];

fn ms(d: &str) -> i64 {
    tidemark_model::time::parse_duration_millis(d).unwrap_or(0)
}

fn metric_suffix(w: &str) -> String {
    w.to_string()
}

fn dur(s: &str) -> Option<Duration> {
    tidemark_model::time::parse_duration_millis(s)
        .ok()
        .map(Duration)
}

/// The error-ratio expression over `window`.
fn ratio_expr(s: &SloDef, window: &str) -> Result<String, String> {
    let sub = |q: &str| {
        q.replace("{{.window}}", window)
            .replace("{{ .window }}", window)
    };
    match (
        &s.error_ratio_query,
        &s.error_query,
        &s.good_query,
        &s.total_query,
    ) {
        (Some(r), None, None, None) => Ok(sub(r)),
        (None, Some(e), None, Some(t)) => Ok(format!("({}) / ({})", sub(e), sub(t))),
        (None, None, Some(g), Some(t)) => Ok(format!("1 - (({}) / ({}))", sub(g), sub(t))),
        _ => Err(format!(
            "slo {:?}: set error_ratio_query alone, or total_query with one of error_query and good_query",
            s.name
        )),
    }
}

/// The rule group for one SLO.
pub fn generate(s: &SloDef) -> Result<GroupDef, String> {
    if s.name.is_empty() {
        return Err("slo name must not be empty".into());
    }
    if !(s.objective > 0.0 && s.objective < 100.0) {
        return Err(format!(
            "slo {:?}: objective must be a percentage between 0 and 100 (exclusive), got {}",
            s.name, s.objective
        ));
    }
    let slo_window = s.window.map(|d| d.0).unwrap_or(30 * 86_400_000);
    if slo_window <= 0 {
        return Err(format!("slo {:?}: window must be positive", s.name));
    }
    let budget = 1.0 - s.objective / 100.0;
    let mut base = s.labels.clone();
    base.insert("slo".to_string(), s.name.clone());
    let sel = |w: &str| {
        let m: Vec<String> = base.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!(
            "slo:sli_error:ratio_rate{}{{{}}}",
            metric_suffix(w),
            m.join(",")
        )
    };
    let mut rules = Vec::new();
    for w in WINDOWS {
        rules.push(RuleDef {
            record: Some(format!("slo:sli_error:ratio_rate{}", metric_suffix(w))),
            expr: ratio_expr(s, w)?,
            labels: base.clone(),
            ..RuleDef::default()
        });
    }
    rules.push(RuleDef {
        record: Some("slo:objective:ratio".to_string()),
        expr: format!("vector({})", s.objective / 100.0),
        labels: base.clone(),
        ..RuleDef::default()
    });
    let alert_name = {
        let mut n = String::from("SLOErrorBudgetBurn");
        for part in s.name.split(|c: char| !c.is_ascii_alphanumeric()) {
            let mut c = part.chars();
            if let Some(f) = c.next() {
                n.push(f.to_ascii_uppercase());
                n.extend(c);
            }
        }
        n
    };
    for (long, short, share, severity, for_) in ALERTS {
        let factor = (share * slo_window as f64 / ms(long) as f64 * 1000.0).round() / 1000.0;
        let mut labels = base.clone();
        labels.insert("severity".to_string(), severity.to_string());
        labels.insert("long_window".to_string(), long.to_string());
        labels.insert("short_window".to_string(), short.to_string());
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "summary".to_string(),
            format!(
                "SLO {} is burning its error budget {factor:.1}x too fast ({long} and {short} windows)",
                s.name
            ),
        );
        annotations.insert(
            "description".to_string(),
            format!(
                "Error ratio over {long} is {{{{ $value | humanizePercentage }}}}; at this rate {:.0}% of the {} error budget is gone in {long}.",
                share * 100.0,
                tidemark_model::time::format_duration_millis(slo_window)
            ),
        );
        rules.push(RuleDef {
            alert: Some(alert_name.clone()),
            expr: format!(
                "{} > ({factor} * {budget}) and {} > ({factor} * {budget})",
                sel(long),
                sel(short)
            ),
            for_: dur(for_),
            labels,
            annotations,
            ..RuleDef::default()
        });
    }
    Ok(GroupDef {
        name: format!("slo:{}", s.name),
        interval: s.interval,
        rules,
        ..GroupDef::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_workbook_rules() {
        let s = SloDef {
            name: "api-availability".into(),
            objective: 99.9,
            error_query: Some("sum(rate(errors[{{.window}}]))".into()),
            total_query: Some("sum(rate(requests[{{.window}}]))".into()),
            ..SloDef::default()
        };
        let g = generate(&s).unwrap();
        assert_eq!(g.name, "slo:api-availability");
        assert_eq!(g.rules.len(), WINDOWS.len() + 1 + ALERTS.len());
        assert_eq!(
            g.rules[2].expr,
            "(sum(rate(errors[1h]))) / (sum(rate(requests[1h])))"
        );
        let page = &g.rules[WINDOWS.len() + 1];
        assert_eq!(
            page.alert.as_deref(),
            Some("SLOErrorBudgetBurnApiAvailability")
        );
        // 2% of a 30d budget in 1h: burn rate 14.4.
        assert!(page.expr.contains("> (14.4 * "), "{}", page.expr);
        assert!(
            page.expr
                .contains("slo:sli_error:ratio_rate5m{slo=\"api-availability\"}")
        );
        let errs = crate::file::validate(&crate::file::RuleFile {
            groups: vec![g],
            slos: Vec::new(),
        });
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn rejects_bad_definitions() {
        let mut s = SloDef {
            name: "x".into(),
            objective: 100.0,
            error_ratio_query: Some("x".into()),
            ..SloDef::default()
        };
        assert!(generate(&s).is_err());
        s.objective = 99.0;
        s.good_query = Some("y".into());
        assert!(generate(&s).is_err());
    }
}
