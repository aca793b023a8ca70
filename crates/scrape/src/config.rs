//! The configuration file: a Prometheus `prometheus.yml` (global, scrape_configs, rule_files,
//! alerting, remote_write/remote_read) plus Tidemark's own `tidemark:` section, kept opaque here
//! (the binary validates it).
//!
//! Every struct denies unknown fields, so a misspelled key is an error naming the key, its line
//! and column. Defaults are Prometheus' (documented per field and in `docs/config.md`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::relabel::RelabelConfig;

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error, unknown key, wrong type or invalid value; `line`/`column` are 1-based.
    #[error("{path}:{}: {msg}", location(*.line, *.column))]
    Parse {
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        msg: String,
    },
    /// The file parsed but a value is inconsistent (duplicate job, timeout above interval ...).
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{l}:{c}"),
        (Some(l), None) => format!("{l}"),
        _ => "?".to_string(),
    }
}

/// A duration in milliseconds, written in Prometheus syntax (`15s`, `1m30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(pub i64);

impl Duration {
    pub fn from_secs(s: i64) -> Duration {
        Duration(s * 1000)
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&tidemark_model::time::format_duration_millis(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        tidemark_model::time::parse_duration_millis(&s)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A byte size with Prometheus' base-2 units (`10MB` = 10 MiB, `512KiB`, `0` = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `<int><unit>` with unit one of B, KB, KiB, MB, MiB, GB, GiB, TB, TiB, PB, PiB.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit {
            "" | "B" => 1,
            "KB" | "KiB" | "K" => 1 << 10,
            "MB" | "MiB" | "M" => 1 << 20,
            "GB" | "GiB" | "G" => 1 << 30,
            "TB" | "TiB" | "T" => 1 << 40,
            "PB" | "PiB" | "P" => 1 << 50,
            _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} overflows"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return s.serialize_str("0B");
        }
        let mut n = self.0;
        let mut i = 0;
        while n & 1023 == 0 && i < 5 {
            n /= 1024;
            i += 1;
        }
        s.serialize_str(&format!(
            "{n}{}",
            ["B", "KiB", "MiB", "GiB", "TiB", "PiB"][i]
        ))
    }
}

/// A secret string: kept in memory, written as `<secret>` when the config is serialized (as
/// Prometheus does for `/api/v1/status/config`).
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<secret>")
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    pub global: GlobalConfig,
    /// Paths or globs of rule files (relative ones resolved against the config file's directory).
    pub rule_files: Vec<String>,
    /// Globs of files holding more `scrape_configs:`; merged in by [`load_config`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scrape_config_files: Vec<String>,
    pub scrape_configs: Vec<ScrapeConfig>,
    pub alerting: AlertingConfig,
    /// Kept as written; not used by the scraper.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_read: Vec<serde_yaml_ng::Value>,
    /// Prometheus' `storage:`, `tracing:`, `otlp:`, `runtime:` sections: accepted and kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<serde_yaml_ng::Value>,
    /// Tidemark's own settings; validated by the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tidemark: Option<serde_yaml_ng::Value>,
}

/// `global:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    /// Default 1m.
    pub scrape_interval: Duration,
    /// Default 10s.
    pub scrape_timeout: Duration,
    /// Default 1m.
    pub evaluation_interval: Duration,
    /// Default 0s.
    #[serde(skip_serializing_if = "is_default")]
    pub rule_query_offset: Duration,
    pub external_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_log_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_failure_log_file: Option<String>,
    /// Accepted for compatibility; Tidemark speaks the text formats only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scrape_protocols: Vec<String>,
    /// Defaults inherited by every scrape config (0 = no limit).
    #[serde(skip_serializing_if = "is_default")]
    pub body_size_limit: ByteSize,
    #[serde(skip_serializing_if = "is_default")]
    pub sample_limit: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub label_limit: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub label_name_length_limit: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub label_value_length_limit: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub target_limit: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub keep_dropped_targets: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name_validation_scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name_escaping_scheme: Option<String>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            scrape_interval: Duration::from_secs(60),
            scrape_timeout: Duration::from_secs(10),
            evaluation_interval: Duration::from_secs(60),
            rule_query_offset: Duration(0),
            external_labels: BTreeMap::new(),
            query_log_file: None,
            scrape_failure_log_file: None,
            scrape_protocols: Vec::new(),
            body_size_limit: ByteSize(0),
            sample_limit: 0,
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
            target_limit: 0,
            keep_dropped_targets: 0,
            metric_name_validation_scheme: None,
            metric_name_escaping_scheme: None,
        }
    }
}

/// `basic_auth:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

/// `authorization:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    /// Default `Bearer`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization {
            kind: "Bearer".to_string(),
            credentials: None,
            credentials_file: None,
        }
    }
}

/// `tls_config:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
}

/// The HTTP client settings shared by scrape configs and Alertmanager configs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpClientConfig {
    pub basic_auth: Option<BasicAuth>,
    pub authorization: Option<Authorization>,
    pub bearer_token: Option<Secret>,
    pub bearer_token_file: Option<String>,
    pub tls_config: TlsConfig,
    pub follow_redirects: bool,
}

/// `static_configs:` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticConfig {
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `file_sd_configs:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSdConfig {
    /// Paths; the last path element may contain `*`. Must end in .json, .yml or .yaml.
    pub files: Vec<String>,
    /// Full re-read period. Default 5m (files are also polled for changes every few seconds).
    pub refresh_interval: Duration,
}

impl Default for FileSdConfig {
    fn default() -> Self {
        FileSdConfig {
            files: Vec::new(),
            refresh_interval: Duration::from_secs(300),
        }
    }
}

fn default_true() -> bool {
    true
}

/// A `scrape_configs:` entry. `Option` fields not set in the file are filled from `global:` by
/// [`PrometheusConfig::validate`] (which [`parse_config`] runs).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    /// Default: global scrape_interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<Duration>,
    /// Default: global scrape_timeout, capped at the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scrape_protocols: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_scrape_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_classic_histograms: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub always_scrape_classic_histograms: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convert_classic_histograms_to_nhcb: Option<bool>,
    /// Default `/metrics`.
    pub metrics_path: String,
    /// Default `http`.
    pub scheme: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Vec<String>>,
    /// Default false.
    pub honor_labels: bool,
    /// Default true.
    #[serde(default = "default_true")]
    pub honor_timestamps: bool,
    /// Default false.
    pub track_timestamps_staleness: bool,
    /// Default true: ask for gzip.
    #[serde(default = "default_true")]
    pub enable_compression: bool,
    /// Accepted; the client speaks HTTP/1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    /// Default true.
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_from_environment: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_connect_header: Option<serde_yaml_ng::Value>,
    pub tls_config: TlsConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_configs: Vec<StaticConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relabel_configs: Vec<RelabelConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metric_relabel_configs: Vec<RelabelConfig>,
    /// Limits; `None` inherits the global value; 0 means no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size_limit: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_name_length_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_value_length_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_dropped_targets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_histogram_bucket_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_histogram_min_bucket_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name_validation_scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name_escaping_scheme: Option<String>,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            job_name: String::new(),
            scrape_interval: None,
            scrape_timeout: None,
            scrape_protocols: Vec::new(),
            fallback_scrape_protocol: None,
            scrape_classic_histograms: None,
            always_scrape_classic_histograms: None,
            convert_classic_histograms_to_nhcb: None,
            metrics_path: "/metrics".to_string(),
            scheme: "http".to_string(),
            params: BTreeMap::new(),
            honor_labels: false,
            honor_timestamps: true,
            track_timestamps_staleness: false,
            enable_compression: true,
            enable_http2: None,
            follow_redirects: true,
            basic_auth: None,
            authorization: None,
            bearer_token: None,
            bearer_token_file: None,
            oauth2: None,
            proxy_url: None,
            no_proxy: None,
            proxy_from_environment: None,
            proxy_connect_header: None,
            tls_config: TlsConfig::default(),
            static_configs: Vec::new(),
            file_sd_configs: Vec::new(),
            relabel_configs: Vec::new(),
            metric_relabel_configs: Vec::new(),
            body_size_limit: None,
            sample_limit: None,
            label_limit: None,
            label_name_length_limit: None,
            label_value_length_limit: None,
            target_limit: None,
            keep_dropped_targets: None,
            native_histogram_bucket_limit: None,
            native_histogram_min_bucket_factor: None,
            metric_name_validation_scheme: None,
            metric_name_escaping_scheme: None,
        }
    }
}

impl ScrapeConfig {
    /// The scrape interval (resolved by `validate`; 1m if unset).
    pub fn interval(&self) -> Duration {
        self.scrape_interval.unwrap_or(Duration::from_secs(60))
    }
    /// The scrape timeout (resolved by `validate`; 10s if unset).
    pub fn timeout(&self) -> Duration {
        self.scrape_timeout.unwrap_or(Duration::from_secs(10))
    }
    /// The HTTP client part of this config.
    pub fn http_client(&self) -> HttpClientConfig {
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone(),
            bearer_token: self.bearer_token.clone(),
            bearer_token_file: self.bearer_token_file.clone(),
            tls_config: self.tls_config.clone(),
            follow_redirects: self.follow_redirects,
        }
    }
}

/// `alerting:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert_relabel_configs: Vec<RelabelConfig>,
    pub alertmanagers: Vec<AlertmanagerConfig>,
}

/// An `alertmanagers:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_configs: Vec<StaticConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relabel_configs: Vec<RelabelConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert_relabel_configs: Vec<RelabelConfig>,
    /// Default "" (the API is at `/api/v2/alerts`).
    pub path_prefix: String,
    /// Default `http`.
    pub scheme: String,
    /// Default 10s.
    pub timeout: Duration,
    /// Default `v2`.
    pub api_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<serde_yaml_ng::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_from_environment: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    /// Default true.
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    pub tls_config: TlsConfig,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            static_configs: Vec::new(),
            file_sd_configs: Vec::new(),
            relabel_configs: Vec::new(),
            alert_relabel_configs: Vec::new(),
            path_prefix: String::new(),
            scheme: "http".to_string(),
            timeout: Duration::from_secs(10),
            api_version: "v2".to_string(),
            basic_auth: None,
            authorization: None,
            bearer_token: None,
            bearer_token_file: None,
            oauth2: None,
            proxy_url: None,
            no_proxy: None,
            proxy_from_environment: None,
            enable_http2: None,
            follow_redirects: true,
            tls_config: TlsConfig::default(),
        }
    }
}

impl AlertmanagerConfig {
    /// The HTTP client part of this config.
    pub fn http_client(&self) -> HttpClientConfig {
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone(),
            bearer_token: self.bearer_token.clone(),
            bearer_token_file: self.bearer_token_file.clone(),
            tls_config: self.tls_config.clone(),
            follow_redirects: self.follow_redirects,
        }
    }
}

/// `scrape_config_files` content.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScrapeConfigFile {
    scrape_configs: Vec<ScrapeConfig>,
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Shortens serde's "unknown field `x`, expected one of `a`, `b`, ..." to a suggestion of the
/// closest known key, and drops the location suffix (the error prefix carries it).
fn tidy_yaml_message(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let Some(start) = msg.find("unknown field `") else {
        return msg.to_string();
    };
    let rest = &msg[start + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return msg.to_string();
    };
    let field = &rest[..end];
    let Some(exp) = rest.find("expected one of ") else {
        return msg.to_string();
    };
    let options: Vec<&str> = rest[exp + "expected one of ".len()..]
        .split(", ")
        .map(|o| o.trim_matches('`'))
        .collect();
    let best = options.iter().min_by_key(|o| edit_distance(field, o));
    let prefix = &msg[..start];
    match best {
        Some(b) if edit_distance(field, b) <= 3 => {
            format!("{prefix}unknown field `{field}` (did you mean `{b}`?)")
        }
        _ => format!(
            "{prefix}unknown field `{field}`; known fields: {}",
            options.join(", ")
        ),
    }
}

fn yaml_error(path: &str, e: serde_yaml_ng::Error) -> ConfigError {
    let loc = e.location();
    ConfigError::Parse {
        path: path.to_string(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        msg: tidy_yaml_message(&e.to_string()),
    }
}

/// Parses and validates a configuration from YAML text. Relative paths stay relative.
pub fn parse_config(yaml: &str) -> Result<PrometheusConfig, ConfigError> {
    parse_named(yaml, "<config>")
}

fn parse_named(yaml: &str, path: &str) -> Result<PrometheusConfig, ConfigError> {
    // An empty file is a valid (empty) config, as in Prometheus.
    let mut cfg: PrometheusConfig = if yaml.trim().is_empty() {
        PrometheusConfig::default()
    } else {
        serde_yaml_ng::from_str(yaml).map_err(|e| yaml_error(path, e))?
    };
    cfg.validate().map_err(|msg| ConfigError::Invalid {
        path: path.to_string(),
        msg,
    })?;
    Ok(cfg)
}

/// Loads, resolves (relative paths against the file's directory, `scrape_config_files`) and
/// validates a configuration file.
pub fn load_config(path: impl AsRef<Path>) -> Result<PrometheusConfig, ConfigError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: name.clone(),
        source,
    })?;
    let mut cfg = parse_named(&text, &name)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for pattern in std::mem::take(&mut cfg.scrape_config_files) {
        let full = join(&dir, &pattern);
        let paths = glob::glob(&full).map_err(|e| ConfigError::Invalid {
            path: name.clone(),
            msg: format!("invalid scrape_config_files pattern {pattern:?}: {e}"),
        })?;
        for p in paths.flatten() {
            let pname = p.display().to_string();
            let t = std::fs::read_to_string(&p).map_err(|source| ConfigError::Io {
                path: pname.clone(),
                source,
            })?;
            let f: ScrapeConfigFile =
                serde_yaml_ng::from_str(&t).map_err(|e| yaml_error(&pname, e))?;
            let fdir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            for mut sc in f.scrape_configs {
                sc.set_directory(&fdir);
                cfg.scrape_configs.push(sc);
            }
        }
        cfg.scrape_config_files.push(pattern);
    }
    cfg.set_directory(&dir);
    cfg.validate()
        .map_err(|msg| ConfigError::Invalid { path: name, msg })?;
    Ok(cfg)
}

fn join(dir: &Path, p: &str) -> String {
    if p.is_empty() || Path::new(p).is_absolute() {
        return p.to_string();
    }
    let j: PathBuf = dir.join(p);
    j.display().to_string()
}

fn join_opt(dir: &Path, p: &mut Option<String>) {
    if let Some(s) = p {
        *s = join(dir, s);
    }
}

fn tls_set_directory(t: &mut TlsConfig, dir: &Path) {
    join_opt(dir, &mut t.ca_file);
    join_opt(dir, &mut t.cert_file);
    join_opt(dir, &mut t.key_file);
}

impl ScrapeConfig {
    fn set_directory(&mut self, dir: &Path) {
        if let Some(b) = &mut self.basic_auth {
            join_opt(dir, &mut b.password_file);
            join_opt(dir, &mut b.username_file);
        }
        if let Some(a) = &mut self.authorization {
            join_opt(dir, &mut a.credentials_file);
        }
        join_opt(dir, &mut self.bearer_token_file);
        tls_set_directory(&mut self.tls_config, dir);
        for f in &mut self.file_sd_configs {
            for p in &mut f.files {
                *p = join(dir, p);
            }
        }
    }
}

fn check_http(
    what: &str,
    c: &HttpClientConfig,
    proxy: &Option<String>,
    oauth2: bool,
) -> Result<(), String> {
    if let Some(b) = &c.basic_auth {
        if b.password.is_some() && b.password_file.is_some() {
            return Err(format!(
                "{what}: at most one of basic_auth password & password_file must be configured"
            ));
        }
        if !b.username.is_empty() && b.username_file.is_some() {
            return Err(format!(
                "{what}: at most one of basic_auth username & username_file must be configured"
            ));
        }
    }
    let bearer = c.bearer_token.is_some() || c.bearer_token_file.is_some();
    if c.bearer_token.is_some() && c.bearer_token_file.is_some() {
        return Err(format!(
            "{what}: at most one of bearer_token & bearer_token_file must be configured"
        ));
    }
    if let Some(a) = &c.authorization {
        if bearer {
            return Err(format!(
                "{what}: authorization is not compatible with bearer_token & bearer_token_file"
            ));
        }
        if a.credentials.is_some() && a.credentials_file.is_some() {
            return Err(format!(
                "{what}: at most one of authorization credentials & credentials_file must be configured"
            ));
        }
        if a.kind.eq_ignore_ascii_case("basic") {
            return Err(format!(
                "{what}: authorization type cannot be set to \"basic\", use \"basic_auth\" instead"
            ));
        }
    }
    if c.basic_auth.is_some() && (bearer || c.authorization.is_some()) {
        return Err(format!(
            "{what}: at most one of basic_auth, bearer_token & bearer_token_file must be configured"
        ));
    }
    if proxy.is_some() {
        return Err(format!(
            "{what}: proxy_url is not supported by Tidemark (its HTTP client is proxy-free)"
        ));
    }
    if oauth2 {
        return Err(format!("{what}: oauth2 is not supported by Tidemark"));
    }
    for v in [&c.tls_config.min_version, &c.tls_config.max_version]
        .into_iter()
        .flatten()
    {
        if !matches!(v.as_str(), "TLS12" | "TLS13" | "TLS10" | "TLS11") {
            return Err(format!("{what}: unknown TLS version: {v}"));
        }
    }
    Ok(())
}

fn file_sd_name_ok(name: &str) -> bool {
    // Prometheus: ^[^*]*(\*[^/]*)?\.(json|yml|yaml|JSON|YML|YAML)$
    let ext_ok = [".json", ".yml", ".yaml", ".JSON", ".YML", ".YAML"]
        .iter()
        .any(|e| name.ends_with(e));
    let star_ok = match name.find('*') {
        None => true,
        Some(i) => !name[i + 1..].contains('*') && !name[i..].contains('/'),
    };
    ext_ok && star_ok
}

impl PrometheusConfig {
    /// Checks consistency and fills each scrape config's unset interval, timeout and limits from
    /// `global:`. Returns Prometheus' error texts.
    pub fn validate(&mut self) -> Result<(), String> {
        let g = &self.global;
        if g.scrape_interval.0 <= 0 {
            return Err("global scrape_interval must be positive".into());
        }
        if g.scrape_timeout > g.scrape_interval {
            return Err("global scrape timeout greater than scrape interval".into());
        }
        for name in g.external_labels.keys() {
            if name.is_empty() || name.starts_with("__") {
                return Err(format!("{name:?} is not a valid label name"));
            }
        }
        let mut seen = HashSet::new();
        for sc in &mut self.scrape_configs {
            if sc.job_name.is_empty() {
                return Err("job_name is empty".into());
            }
            if !seen.insert(sc.job_name.clone()) {
                return Err(format!(
                    "found multiple scrape configs with job name {:?}",
                    sc.job_name
                ));
            }
            let job = sc.job_name.clone();
            let interval = *sc.scrape_interval.get_or_insert(g.scrape_interval);
            if interval.0 <= 0 {
                return Err(format!(
                    "scrape interval must be positive for scrape config with job name {job:?}"
                ));
            }
            let timeout = *sc
                .scrape_timeout
                .get_or_insert(g.scrape_timeout.min(interval));
            if timeout > interval {
                return Err(format!(
                    "scrape timeout greater than scrape interval for scrape config with job name {job:?}"
                ));
            }
            if timeout.0 <= 0 {
                return Err(format!(
                    "scrape timeout must be positive for scrape config with job name {job:?}"
                ));
            }
            sc.body_size_limit.get_or_insert(g.body_size_limit);
            sc.sample_limit.get_or_insert(g.sample_limit);
            sc.label_limit.get_or_insert(g.label_limit);
            sc.label_name_length_limit
                .get_or_insert(g.label_name_length_limit);
            sc.label_value_length_limit
                .get_or_insert(g.label_value_length_limit);
            sc.target_limit.get_or_insert(g.target_limit);
            sc.keep_dropped_targets
                .get_or_insert(g.keep_dropped_targets);
            if sc.scheme != "http" && sc.scheme != "https" {
                return Err(format!(
                    "unknown scrape config scheme {:?} for scrape config with job name {job:?}",
                    sc.scheme
                ));
            }
            if !sc.metrics_path.starts_with('/') {
                return Err(format!(
                    "metrics_path {:?} must start with '/' (job {job:?})",
                    sc.metrics_path
                ));
            }
            check_http(
                &format!("scrape config with job name {job:?}"),
                &sc.http_client(),
                &sc.proxy_url,
                sc.oauth2.is_some(),
            )?;
            for f in &sc.file_sd_configs {
                for p in &f.files {
                    if !file_sd_name_ok(p) {
                        return Err(format!("path name {p:?} is not valid for file discovery"));
                    }
                }
                if f.refresh_interval.0 <= 0 {
                    return Err(format!(
                        "file_sd_configs refresh_interval must be positive (job {job:?})"
                    ));
                }
            }
            for s in &sc.static_configs {
                for t in &s.targets {
                    if t.contains('/') {
                        return Err(format!("{t:?} is not a valid hostname (job {job:?})"));
                    }
                }
            }
        }
        for am in &self.alerting.alertmanagers {
            if am.api_version != "v2" && am.api_version != "v1" {
                return Err(format!(
                    "expected Alertmanager api version to be one of [v1 v2] but got {:?}",
                    am.api_version
                ));
            }
            if am.scheme != "http" && am.scheme != "https" {
                return Err(format!("unknown alertmanager scheme {:?}", am.scheme));
            }
            check_http(
                "alertmanager config",
                &am.http_client(),
                &am.proxy_url,
                am.oauth2.is_some(),
            )?;
        }
        Ok(())
    }

    /// Resolves relative file paths against `dir` (done by [`load_config`]).
    pub fn set_directory(&mut self, dir: &Path) {
        for r in &mut self.rule_files {
            *r = join(dir, r);
        }
        for sc in &mut self.scrape_configs {
            sc.set_directory(dir);
        }
        for am in &mut self.alerting.alertmanagers {
            if let Some(b) = &mut am.basic_auth {
                join_opt(dir, &mut b.password_file);
            }
            if let Some(a) = &mut am.authorization {
                join_opt(dir, &mut a.credentials_file);
            }
            join_opt(dir, &mut am.bearer_token_file);
            tls_set_directory(&mut am.tls_config, dir);
            for f in &mut am.file_sd_configs {
                for p in &mut f.files {
                    *p = join(dir, p);
                }
            }
        }
    }

    /// The configuration `tidemark server` runs without a config file: it scrapes itself
    /// (`job="tidemark"`) at `listen_addr` (`host:port`) every 15s, so a fresh instance has data.
    pub fn self_scrape(listen_addr: &str) -> PrometheusConfig {
        let mut cfg = PrometheusConfig {
            global: GlobalConfig {
                scrape_interval: Duration::from_secs(15),
                evaluation_interval: Duration::from_secs(15),
                ..GlobalConfig::default()
            },
            scrape_configs: vec![ScrapeConfig {
                job_name: "tidemark".to_string(),
                static_configs: vec![StaticConfig {
                    targets: vec![listen_addr.to_string()],
                    labels: BTreeMap::new(),
                }],
                ..ScrapeConfig::default()
            }],
            ..PrometheusConfig::default()
        };
        // Fills interval/timeout/limits; cannot fail for this config.
        let _ = cfg.validate();
        cfg
    }

    /// The configuration as YAML (secrets shown as `<secret>`), for `/api/v1/status/config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
global:
  scrape_interval: 15s
  evaluation_interval: 30s
  external_labels:
    region: eu
rule_files:
  - rules/*.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["am:9093"]
      path_prefix: /am
      timeout: 5s
      basic_auth:
        username: u
        password: p
remote_write:
  - url: http://remote/write
tidemark:
  cluster:
    nodes: 3
scrape_configs:
  - job_name: node
    scrape_interval: 5s
    static_configs:
      - targets: ["localhost:9100"]
        labels: {env: prod}
    relabel_configs:
      - source_labels: [__address__]
        regex: "(.*):.*"
        target_label: host
    metric_relabel_configs:
      - action: labeldrop
        regex: "tmp_.*"
    sample_limit: 1000
    body_size_limit: 10MB
  - job_name: files
    file_sd_configs:
      - files: ["targets/*.json"]
        refresh_interval: 1m
"#;

    #[test]
    fn full_config_parses_with_defaults() {
        let c = parse_config(FULL).unwrap();
        assert_eq!(c.global.scrape_interval, Duration(15_000));
        assert_eq!(c.global.scrape_timeout, Duration(10_000));
        let node = &c.scrape_configs[0];
        assert_eq!(node.interval(), Duration(5_000));
        assert_eq!(
            node.timeout(),
            Duration(5_000),
            "timeout capped at interval"
        );
        assert_eq!(node.metrics_path, "/metrics");
        assert!(node.honor_timestamps && !node.honor_labels && node.enable_compression);
        assert_eq!(node.sample_limit, Some(1000));
        assert_eq!(node.body_size_limit, Some(ByteSize(10 << 20)));
        assert_eq!(node.label_limit, Some(0));
        let files = &c.scrape_configs[1];
        assert_eq!(files.interval(), Duration(15_000));
        assert_eq!(files.timeout(), Duration(10_000));
        assert_eq!(files.file_sd_configs[0].refresh_interval, Duration(60_000));
        let am = &c.alerting.alertmanagers[0];
        assert_eq!(
            (am.path_prefix.as_str(), am.timeout, am.api_version.as_str()),
            ("/am", Duration(5000), "v2")
        );
        assert_eq!(c.remote_write.len(), 1);
        assert!(c.tidemark.is_some());
        let yaml = c.to_yaml();
        assert!(
            yaml.contains("<secret>") && !yaml.contains("password: p"),
            "{yaml}"
        );
        // Serialized form parses back to the same config (secrets aside).
        let mut back = parse_config(&yaml).unwrap();
        back.alerting.alertmanagers[0].basic_auth = am.basic_auth.clone();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let y = "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: a\n    scrape_intervall: 5s\n";
        let e = parse_config(y).unwrap_err();
        let ConfigError::Parse { line, msg, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*line, Some(5), "{e}");
        assert!(msg.contains("scrape_intervall"), "{e}");
        assert_eq!(
            e.to_string(),
            "<config>:5:5: scrape_configs[0]: unknown field `scrape_intervall` (did you mean `scrape_interval`?)"
        );
        let e = parse_config("globl:\n  x: 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "<config>:1:1: unknown field `globl` (did you mean `global`?)"
        );
        let e = parse_config(
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - actoin: drop\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("actoin") && e.to_string().contains(":4:"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values() {
        let cases = [
            ("global:\n  scrape_interval: 5x\n", "not a valid duration"),
            (
                "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
                "multiple scrape configs",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
                "scrape timeout greater",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scheme: ftp\n",
                "unknown scrape config scheme",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    proxy_url: http://p\n",
                "proxy_url",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: [x.txt]\n",
                "not valid for file discovery",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    basic_auth: {username: u, password: p, password_file: f}\n",
                "password & password_file",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: hashmod\n        target_label: x\n",
                "modulus",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - regex: \"(\"\n",
                "regex",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    body_size_limit: 10XB\n",
                "unknown unit",
            ),
        ];
        for (y, want) in cases {
            let e = parse_config(y).unwrap_err().to_string();
            assert!(e.contains(want), "{y}: {e}");
        }
        assert!(parse_config("").unwrap().scrape_configs.is_empty());
    }

    #[test]
    fn load_resolves_paths_and_scrape_config_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("more")).unwrap();
        std::fs::write(
            dir.path().join("more/extra.yml"),
            "scrape_configs:\n  - job_name: extra\n    file_sd_configs:\n      - files: [t.json]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p.yml"),
            "rule_files: [r.yml]\nscrape_config_files: [more/*.yml]\nscrape_configs:\n  - job_name: a\n    bearer_token_file: tok\n",
        )
        .unwrap();
        let c = load_config(dir.path().join("p.yml")).unwrap();
        assert_eq!(
            c.rule_files,
            vec![dir.path().join("r.yml").display().to_string()]
        );
        assert_eq!(c.scrape_configs.len(), 2);
        assert_eq!(
            c.scrape_configs[0].bearer_token_file.as_deref(),
            Some(&*dir.path().join("tok").display().to_string())
        );
        assert_eq!(
            c.scrape_configs[1].file_sd_configs[0].files[0],
            dir.path().join("more/t.json").display().to_string()
        );
        assert_eq!(c.scrape_configs[1].interval(), Duration(60_000));
        assert!(matches!(
            load_config(dir.path().join("missing.yml")),
            Err(ConfigError::Io { .. })
        ));
    }

    #[test]
    fn self_scrape_default() {
        let c = PrometheusConfig::self_scrape("127.0.0.1:9090");
        assert_eq!(c.scrape_configs[0].job_name, "tidemark");
        assert_eq!(c.scrape_configs[0].interval(), Duration(15_000));
        assert_eq!(
            c.scrape_configs[0].static_configs[0].targets,
            vec!["127.0.0.1:9090"]
        );
        assert_eq!(parse_config(&c.to_yaml()).unwrap(), c);
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("0"), Ok(ByteSize(0)));
        assert_eq!(ByteSize::parse("512KB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert!(ByteSize::parse("MB").is_err());
    }
}
