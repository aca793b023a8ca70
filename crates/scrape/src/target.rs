//! Targets: target groups from discovery, Prometheus' label population (`__address__`,
//! `__scheme__`, `__metrics_path__`, `__param_*`, `job`, `instance`, relabeling) and scrape URLs.

use std::collections::BTreeMap;

use tidemark_model::{Labels, LabelsBuilder};

use crate::config::{Duration, ScrapeConfig};
use crate::relabel;

pub const ADDRESS_LABEL: &str = "__address__";
pub const SCHEME_LABEL: &str = "__scheme__";
pub const METRICS_PATH_LABEL: &str = "__metrics_path__";
pub const SCRAPE_INTERVAL_LABEL: &str = "__scrape_interval__";
pub const SCRAPE_TIMEOUT_LABEL: &str = "__scrape_timeout__";
pub const PARAM_LABEL_PREFIX: &str = "__param_";
pub const META_LABEL_PREFIX: &str = "__meta_";
pub const RESERVED_LABEL_PREFIX: &str = "__";
pub const JOB_LABEL: &str = "job";
pub const INSTANCE_LABEL: &str = "instance";

/// A group of targets from one discovery source (a static config entry, one file_sd file entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetGroup {
    /// Identifies the group within its provider (`static/0`, `file:/path:3`).
    pub source: String,
    /// Each target's own labels (`__address__` at least).
    pub targets: Vec<BTreeMap<String, String>>,
    /// Labels shared by the group's targets (a target's own label wins).
    pub labels: BTreeMap<String, String>,
}

/// A target after relabeling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Labels before relabeling (shown as `discoveredLabels`).
    pub discovered: Labels,
    /// Labels after relabeling, `__` labels included except `__meta_*` (shown as `labels` minus
    /// the `__` ones).
    pub labels: Labels,
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Target {
    /// The labels attached to every scraped sample: those not starting with `__`.
    pub fn target_labels(&self) -> Labels {
        Labels::from_sorted(
            self.labels
                .iter()
                .filter(|l| !l.name.starts_with(RESERVED_LABEL_PREFIX))
                .map(|l| (l.name, l.value)),
        )
    }

    /// Identity across reloads: labels and URL (as Prometheus' target hash).
    pub fn hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.labels.encoded());
        h.update(&[0xff]);
        h.update(self.url.as_bytes());
        h.digest()
    }
}

/// The result of populating one discovered target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Populated {
    Active(Target),
    /// Dropped by relabeling; carries the discovered labels.
    Dropped(Labels),
}

/// Discovered labels of a target in a group, with the scrape config's defaults filled in
/// (Prometheus' `PopulateDiscoveredLabels`).
pub fn discovered_labels(
    cfg: &ScrapeConfig,
    target: &BTreeMap<String, String>,
    group: &BTreeMap<String, String>,
) -> LabelsBuilder {
    let mut b = LabelsBuilder::new();
    for (k, v) in group {
        if !target.contains_key(k) {
            b.set(k, v);
        }
    }
    for (k, v) in target {
        b.set(k, v);
    }
    let defaults = [
        (JOB_LABEL, cfg.job_name.clone()),
        (SCRAPE_INTERVAL_LABEL, cfg.interval().to_string()),
        (SCRAPE_TIMEOUT_LABEL, cfg.timeout().to_string()),
        (METRICS_PATH_LABEL, cfg.metrics_path.clone()),
        (SCHEME_LABEL, cfg.scheme.clone()),
    ];
    for (n, v) in defaults {
        if b.get(n).is_none_or(str::is_empty) {
            b.set(n, &v);
        }
    }
    for (k, v) in &cfg.params {
        let name = format!("{PARAM_LABEL_PREFIX}{k}");
        if let Some(first) = v.first()
            && b.get(&name).is_none_or(str::is_empty)
        {
            b.set(&name, first);
        }
    }
    b
}

/// Prometheus' `PopulateLabels`: discovered labels, relabeling, checks, `instance` default.
/// Errors use Prometheus' texts.
pub fn populate(
    cfg: &ScrapeConfig,
    target: &BTreeMap<String, String>,
    group: &BTreeMap<String, String>,
) -> Result<Populated, String> {
    let mut b = discovered_labels(cfg, target, group);
    let discovered = b.build();
    if !relabel::process_builder(&mut b, &cfg.relabel_configs) {
        return Ok(Populated::Dropped(discovered));
    }
    let addr = b.get(ADDRESS_LABEL).unwrap_or("").to_string();
    if addr.is_empty() {
        return Err("no address".to_string());
    }
    if addr.contains('/') {
        return Err(format!("{addr:?} is not a valid hostname"));
    }
    let interval_s = b.get(SCRAPE_INTERVAL_LABEL).unwrap_or("").to_string();
    let interval = tidemark_model::time::parse_duration_millis(&interval_s)
        .map_err(|e| format!("error parsing scrape interval: {e}"))?;
    if interval == 0 {
        return Err("scrape interval cannot be 0".to_string());
    }
    let timeout_s = b.get(SCRAPE_TIMEOUT_LABEL).unwrap_or("").to_string();
    let timeout = tidemark_model::time::parse_duration_millis(&timeout_s)
        .map_err(|e| format!("error parsing scrape timeout: {e}"))?;
    if timeout == 0 {
        return Err("scrape timeout cannot be 0".to_string());
    }
    if timeout > interval {
        return Err(format!(
            "scrape timeout cannot be greater than scrape interval ({timeout_s:?} > {interval_s:?})"
        ));
    }
    b.retain(|n, _| !n.starts_with(META_LABEL_PREFIX));
    if b.get(INSTANCE_LABEL).is_none_or(str::is_empty) {
        b.set(INSTANCE_LABEL, &addr);
    }
    let labels = b.build();
    let url = scrape_url(cfg, &labels);
    Ok(Populated::Active(Target {
        discovered,
        labels,
        url,
        interval: Duration(interval),
        timeout: Duration(timeout),
    }))
}

fn pct_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// `scheme://address/path?params`, params from the config overridden by `__param_*` labels.
pub fn scrape_url(cfg: &ScrapeConfig, labels: &Labels) -> String {
    let scheme = labels.get(SCHEME_LABEL).unwrap_or("http");
    let addr = labels.get(ADDRESS_LABEL).unwrap_or("");
    let path = labels.get(METRICS_PATH_LABEL).unwrap_or("/metrics");
    let mut params: BTreeMap<String, Vec<String>> = cfg.params.clone();
    for l in labels.iter() {
        if let Some(k) = l.name.strip_prefix(PARAM_LABEL_PREFIX) {
            let e = params.entry(k.to_string()).or_default();
            if e.is_empty() {
                e.push(l.value.to_string());
            } else {
                e[0] = l.value.to_string();
            }
        }
    }
    let mut url = format!("{scheme}://{addr}{path}");
    let mut first = !path.contains('?');
    for (k, vs) in &params {
        for v in vs {
            url.push(if first { '?' } else { '&' });
            first = false;
            pct_encode(k, &mut url);
            url.push('=');
            pct_encode(v, &mut url);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn m(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn populate_defaults_and_relabel() {
        let c = parse_config(
            "scrape_configs:\n  - job_name: node\n    scrape_interval: 5s\n    params: {module: [a b]}\n    relabel_configs:\n      - source_labels: [__meta_x]\n        target_label: x\n",
        )
        .unwrap();
        let sc = &c.scrape_configs[0];
        let Populated::Active(t) = populate(
            sc,
            &m(&[("__address__", "h:9100"), ("__meta_x", "mv")]),
            &m(&[("env", "prod"), ("__address__", "no")]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(t.url, "http://h:9100/metrics?module=a%20b");
        assert_eq!(
            t.target_labels(),
            Labels::from_pairs([
                ("env", "prod"),
                ("instance", "h:9100"),
                ("job", "node"),
                ("x", "mv")
            ])
        );
        assert_eq!(t.discovered.get("__meta_x"), Some("mv"));
        assert_eq!(t.discovered.get("__scrape_interval__"), Some("5s"));
        assert_eq!(t.labels.get("__meta_x"), None);
        assert_eq!((t.interval, t.timeout), (Duration(5000), Duration(5000)));
    }

    #[test]
    fn populate_drop_and_errors() {
        let c = parse_config(
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: 'skip.*'\n        action: drop\n      - source_labels: [t]\n        regex: '(.+)'\n        target_label: __scrape_timeout__\n",
        )
        .unwrap();
        let sc = &c.scrape_configs[0];
        assert!(matches!(
            populate(sc, &m(&[("__address__", "skip:1")]), &m(&[])),
            Ok(Populated::Dropped(_))
        ));
        assert_eq!(
            populate(sc, &m(&[("x", "y")]), &m(&[])),
            Err("no address".into())
        );
        let e = populate(sc, &m(&[("__address__", "a:1"), ("t", "2m")]), &m(&[])).unwrap_err();
        assert!(e.contains("greater than scrape interval"), "{e}");
        let Populated::Active(t) = populate(
            sc,
            &m(&[("__address__", "a:1"), ("instance", "mine")]),
            &m(&[]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(t.labels.get("instance"), Some("mine"));
    }
}
