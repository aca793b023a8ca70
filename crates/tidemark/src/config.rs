//! The configuration file: a Prometheus `prometheus.yml` (parsed and validated by
//! tidemark-scrape) plus Tidemark's own `tidemark:` section, typed and validated here.
//!
//! Precedence: a command-line flag given explicitly wins over the file; the file wins over the
//! built-in default. Unknown keys in the `tidemark:` section are errors naming the key and line.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use tidemark_scrape::PrometheusConfig;

/// `tidemark:` — every field optional; defaults are documented per field (docs/config.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TidemarkSection {
    pub(crate) storage: StorageSection,
    pub(crate) query: QuerySection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSection {
    /// Data directory (default `data/`; `--storage.path` wins).
    pub(crate) path: Option<String>,
    pub(crate) retention: RetentionSection,
    /// Out-of-order window (default 10m).
    pub(crate) out_of_order_time_window: Option<String>,
    /// Block range of head cuts (default 2h).
    pub(crate) block_range: Option<String>,
    /// Log fsync policy: `always` (default: fsync before acknowledging), `never`, or a duration
    /// such as `1s` (fsync at most that often).
    pub(crate) log_sync: Option<String>,
    pub(crate) downsampling: DownsamplingSection,
}

/// `tidemark.storage.downsampling` (docs/downsampling.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DownsamplingSection {
    /// Write 5 m and 1 h blocks (default true).
    pub(crate) enabled: Option<bool>,
    /// Raw blocks older than this (behind the newest sample) get a 5 m version (default 40h).
    pub(crate) resolution_5m_after: Option<String>,
    /// 5 m blocks older than this get a 1 h version (default 10d).
    pub(crate) resolution_1h_after: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetentionSection {
    /// Default 15d.
    pub(crate) time: Option<String>,
    /// Default off. Units B, KB, MB, GB, TB, PB, EB (powers of 1024, like Prometheus).
    pub(crate) size: Option<String>,
    /// Retention of 5 m blocks (default 90d; 0 = forever).
    pub(crate) resolution_5m: Option<String>,
    /// Retention of 1 h blocks (default 365d; 0 = forever).
    pub(crate) resolution_1h: Option<String>,
    /// Per-metric retention rules.
    pub(crate) rules: Vec<RetentionRuleSection>,
}

/// One of `tidemark.storage.retention.rules`: series matching the selector `match` keep each
/// resolution's data for at most `time`, or the resolution's own key when given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetentionRuleSection {
    /// A series selector: `{__name__=~"debug_.*"}`, `debug_requests_total{env="dev"}`.
    #[serde(rename = "match")]
    pub(crate) selector: String,
    /// Every resolution.
    pub(crate) time: Option<String>,
    pub(crate) raw: Option<String>,
    pub(crate) resolution_5m: Option<String>,
    pub(crate) resolution_1h: Option<String>,
}

impl RetentionRuleSection {
    /// The rule as the engine takes it; errors name the rule's keys.
    pub(crate) fn to_rule(
        &self,
        i: usize,
    ) -> anyhow::Result<tidemark_tsdb::retention::RetentionRule> {
        let at = |key: &str| format!("tidemark.storage.retention.rules[{i}].{key}");
        let matchers = tidemark_promql::parse_series_selector(&self.selector)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at("match")))?;
        anyhow::ensure!(
            !matchers.is_empty() && !matchers.iter().all(|m| m.matches("")),
            "{}: the selector must have a matcher that does not match the empty string",
            at("match")
        );
        let d = |key: &str, v: &Option<String>| -> anyhow::Result<Option<i64>> {
            v.as_deref()
                .map(|s| tidemark_model::time::parse_duration_millis(s).with_context(|| at(key)))
                .transpose()
        };
        let all = d("time", &self.time)?;
        let rule = tidemark_tsdb::retention::RetentionRule {
            matchers,
            raw_ms: d("raw", &self.raw)?.or(all),
            res_5m_ms: d("resolution_5m", &self.resolution_5m)?.or(all),
            res_1h_ms: d("resolution_1h", &self.resolution_1h)?.or(all),
        };
        anyhow::ensure!(
            rule.raw_ms.is_some() || rule.res_5m_ms.is_some() || rule.res_1h_ms.is_some(),
            "{}: expected `time`, `raw`, `resolution_5m` or `resolution_1h`",
            at("match")
        );
        Ok(rule)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuerySection {
    pub(crate) lookback_delta: Option<String>,
    pub(crate) max_samples: Option<usize>,
    pub(crate) timeout: Option<String>,
}

/// A loaded configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) prometheus: PrometheusConfig,
    pub(crate) tidemark: TidemarkSection,
}

impl Config {
    pub(crate) fn scrape_jobs(&self) -> usize {
        self.prometheus.scrape_configs.len()
    }
}

#[derive(Deserialize)]
struct OnlyTidemark {
    #[serde(default)]
    tidemark: Option<TidemarkSection>,
}

/// Parses a configuration text. Errors name the key and line.
pub(crate) fn parse(text: &str, dir: Option<&Path>) -> anyhow::Result<Config> {
    let mut prometheus = tidemark_scrape::parse_config(text)?;
    if let Some(d) = dir {
        prometheus.set_directory(d);
    }
    // A second, lenient pass reads only `tidemark:` with strict keys, so serde_yaml_ng reports
    // the line of an unknown key inside it.
    let only: OnlyTidemark = serde_yaml_ng::from_str(text).context("tidemark section")?;
    let tidemark = only.tidemark.unwrap_or_default();
    validate(&tidemark)?;
    Ok(Config {
        prometheus,
        tidemark,
    })
}

/// Loads and validates a configuration file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path.parent()).with_context(|| format!("loading {}", path.display()))
}

fn validate(t: &TidemarkSection) -> anyhow::Result<()> {
    let d = |what: &str, v: &Option<String>| -> anyhow::Result<()> {
        if let Some(s) = v {
            tidemark_model::time::parse_duration_millis(s)
                .with_context(|| format!("tidemark.{what}"))?;
        }
        Ok(())
    };
    d("storage.retention.time", &t.storage.retention.time)?;
    d(
        "storage.out_of_order_time_window",
        &t.storage.out_of_order_time_window,
    )?;
    d("storage.block_range", &t.storage.block_range)?;
    d(
        "storage.retention.resolution_5m",
        &t.storage.retention.resolution_5m,
    )?;
    d(
        "storage.retention.resolution_1h",
        &t.storage.retention.resolution_1h,
    )?;
    d(
        "storage.downsampling.resolution_5m_after",
        &t.storage.downsampling.resolution_5m_after,
    )?;
    d(
        "storage.downsampling.resolution_1h_after",
        &t.storage.downsampling.resolution_1h_after,
    )?;
    for (i, r) in t.storage.retention.rules.iter().enumerate() {
        r.to_rule(i)?;
    }
    d("query.lookback_delta", &t.query.lookback_delta)?;
    d("query.timeout", &t.query.timeout)?;
    if let Some(s) = &t.storage.retention.size {
        parse_bytes(s).with_context(|| "tidemark.storage.retention.size")?;
    }
    if let Some(s) = &t.storage.log_sync
        && s != "always"
        && s != "never"
    {
        tidemark_model::time::parse_duration_millis(s)
            .with_context(|| "tidemark.storage.log_sync: expected always, never or a duration")?;
    }
    Ok(())
}

/// Parses a Prometheus byte size (`512MB`, `10GB`, `0`): powers of 1024.
pub(crate) fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    let mul: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" => 1 << 10,
        "MB" | "MIB" => 1 << 20,
        "GB" | "GIB" => 1 << 30,
        "TB" | "TIB" => 1 << 40,
        "PB" | "PIB" => 1 << 50,
        "EB" | "EIB" => 1 << 60,
        _ => anyhow::bail!("invalid size unit in {s:?} (use B, KB, MB, GB, TB, PB, EB)"),
    };
    n.checked_mul(mul)
        .with_context(|| format!("size {s:?} too large"))
}

/// The configuration used when no file is given: scrape Tidemark itself every 15s.
pub(crate) fn self_scrape(listen: &str) -> Config {
    Config {
        prometheus: PrometheusConfig::self_scrape(&self_target(listen)),
        tidemark: TidemarkSection::default(),
    }
}

/// The address to scrape ourselves at: a wildcard listen address becomes localhost.
pub(crate) fn self_target(listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "9190"));
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "::" => "localhost",
        h => h,
    };
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_in_tidemark_section_names_key_and_line() {
        let text = "scrape_configs: []\ntidemark:\n  storage:\n    retension: {}\n";
        let e = format!("{:#}", parse(text, None).unwrap_err());
        assert!(e.contains("retension"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn sizes_and_self_scrape() {
        assert_eq!(parse_bytes("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        assert!(parse_bytes("5XB").is_err());
        assert_eq!(self_target("0.0.0.0:9190"), "localhost:9190");
        assert_eq!(self_target("127.0.0.1:1234"), "127.0.0.1:1234");
        let c = self_scrape("0.0.0.0:9190");
        assert_eq!(c.scrape_jobs(), 1);
        assert_eq!(c.prometheus.scrape_configs[0].job_name, "tidemark");
    }

    #[test]
    fn downsampling_and_retention_keys() {
        let text = r#"
tidemark:
  storage:
    retention:
      time: 15d
      resolution_5m: 30d
      resolution_1h: 2y
      rules:
        - match: '{__name__=~"debug_.*"}'
          time: 2d
        - match: 'batch_jobs_total{env="dev"}'
          raw: 1d
          resolution_1h: 30d
    downsampling:
      enabled: false
      resolution_5m_after: 2d
      resolution_1h_after: 20d
"#;
        let c = parse(text, None).unwrap();
        let st = &c.tidemark.storage;
        assert_eq!(st.retention.resolution_5m.as_deref(), Some("30d"));
        assert_eq!(st.downsampling.enabled, Some(false));
        let r0 = st.retention.rules[0].to_rule(0).unwrap();
        let day = 86_400_000;
        assert_eq!(
            (r0.raw_ms, r0.res_5m_ms, r0.res_1h_ms),
            (Some(2 * day), Some(2 * day), Some(2 * day))
        );
        assert!(r0.matchers[0].matches("debug_x") && !r0.matchers[0].matches("x"));
        let r1 = st.retention.rules[1].to_rule(1).unwrap();
        assert_eq!(
            (r1.raw_ms, r1.res_5m_ms, r1.res_1h_ms),
            (Some(day), None, Some(30 * day))
        );
        assert_eq!(r1.matchers.len(), 2);
    }

    #[test]
    fn bad_downsampling_and_retention_keys_are_errors() {
        let err = |text: &str| format!("{:#}", parse(text, None).unwrap_err());
        // Unknown keys name the key and the line.
        let e = err("tidemark:\n  storage:\n    downsampling:\n      enable: true\n");
        assert!(e.contains("enable") && e.contains("line 4"), "{e}");
        let e = err(
            "tidemark:\n  storage:\n    retention:\n      rules:\n        - match: 'x'\n          tme: 2d\n",
        );
        assert!(e.contains("tme") && e.contains("line 6"), "{e}");
        // Values are checked.
        let e = err("tidemark:\n  storage:\n    retention:\n      resolution_5m: 9x\n");
        assert!(
            e.contains("tidemark.storage.retention.resolution_5m"),
            "{e}"
        );
        let e = err("tidemark:\n  storage:\n    downsampling:\n      resolution_1h_after: x\n");
        assert!(e.contains("resolution_1h_after"), "{e}");
        let e = err(
            "tidemark:\n  storage:\n    retention:\n      rules:\n        - match: '{a=~\"(\"}'\n          time: 1d\n",
        );
        assert!(e.contains("rules[0].match"), "{e}");
        let e = err("tidemark:\n  storage:\n    retention:\n      rules:\n        - match: 'x'\n");
        assert!(e.contains("expected `time`"), "{e}");
        let e = err(
            "tidemark:\n  storage:\n    retention:\n      rules:\n        - match: '{a=~\".*\"}'\n          time: 1d\n",
        );
        assert!(e.contains("rules[0].match"), "{e}");
        let e = err(
            "tidemark:\n  storage:\n    retention:\n      rules:\n        - match: 'x'\n          raw: 1q\n",
        );
        assert!(e.contains("rules[0].raw"), "{e}");
    }

    #[test]
    fn bad_duration_is_an_error() {
        let text = "tidemark:\n  storage:\n    retention:\n      time: 15x\n";
        assert!(parse(text, None).is_err());
    }
}
