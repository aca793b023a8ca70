//! The small traits through which the binary hands the API what lies outside the storage
//! traits: engine statistics and admin operations ([`TsdbAdmin`]), scrape targets
//! ([`TargetsProvider`]), rules and alerts ([`RulesProvider`]), configuration reload
//! ([`Reloader`]), extra `/metrics` text ([`MetricsSource`]) and the exposition parser used by
//! `/api/v1/import` ([`ExpositionParser`]). Each is optional: without it the endpoint answers
//! what Prometheus answers when the feature has nothing to show (empty lists), or `unavailable`.

use serde::Serialize;
use tidemark_model::{Exemplar, Labels, Matcher, Metadata};

/// Engine-specific operations (implemented by the binary for the TSDB or the cluster).
pub trait TsdbAdmin: Send + Sync {
    /// `/api/v1/status/tsdb`: head statistics and the top `limit` cardinality entries.
    fn status(&self, limit: usize) -> Result<TsdbStatus, tidemark_storage::Error>;
    /// `/api/v1/admin/tsdb/delete_series`: deletes samples of series matching any matcher set
    /// within `[mint, maxt]`.
    fn delete_series(
        &self,
        matchers: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<(), tidemark_storage::Error>;
    /// `/api/v1/admin/tsdb/clean_tombstones`.
    fn clean_tombstones(&self) -> Result<(), tidemark_storage::Error>;
    /// `/api/v1/admin/tsdb/snapshot`: returns the snapshot's directory name.
    fn snapshot(&self, skip_head: bool) -> Result<String, tidemark_storage::Error>;
}

/// Head statistics in Prometheus' `/api/v1/status/tsdb` `headStats` shape.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeadStats {
    pub num_series: u64,
    pub num_label_pairs: u64,
    pub chunk_count: u64,
    pub min_time: i64,
    pub max_time: i64,
}

/// One `{"name": ..., "value": ...}` entry of the cardinality lists.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stat {
    pub name: String,
    pub value: u64,
}

/// `data` of `/api/v1/status/tsdb`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TsdbStatus {
    pub head_stats: HeadStats,
    pub series_count_by_metric_name: Vec<Stat>,
    pub label_value_count_by_label_name: Vec<Stat>,
    pub memory_in_bytes_by_label_name: Vec<Stat>,
    pub series_count_by_label_value_pair: Vec<Stat>,
    /// Tidemark's addition (key `tidemark`, absent when the engine has no blocks to report):
    /// Prometheus' keys above keep their shape and meaning (the head only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tidemark: Option<TidemarkTsdbStatus>,
}

/// `data.tidemark` of `/api/v1/status/tsdb` (docs/api.md).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TidemarkTsdbStatus {
    /// Blocks per resolution, raw first; resolutions without blocks are absent.
    pub blocks_by_resolution: Vec<ResolutionBlocks>,
}

/// The blocks of one resolution.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolutionBlocks {
    /// `raw`, `5m` or `1h`.
    pub resolution: String,
    /// 0 (raw), 300000 or 3600000.
    pub resolution_ms: i64,
    pub num_blocks: u64,
    /// Oldest block's min time and newest block's max time (ms; max exclusive).
    pub min_time: i64,
    pub max_time: i64,
    /// Bytes on disk.
    pub num_bytes: u64,
    /// Distinct series.
    pub num_series: u64,
    /// Samples (raw) or aggregate windows (downsampled).
    pub num_samples: u64,
}

/// Scrape targets and their metadata (implemented by the binary over the scrape manager).
pub trait TargetsProvider: Send + Sync {
    /// `data` of `/api/v1/targets`; `state` is `active`, `dropped` or `any` (Prometheus' filter),
    /// `scrape_pool` an optional pool filter.
    fn targets(&self, state: &str, scrape_pool: Option<&str>) -> serde_json::Value;
    /// `data` of `/api/v1/targets/metadata`.
    fn targets_metadata(
        &self,
        match_target: Option<&str>,
        metric: Option<&str>,
        limit: usize,
    ) -> serde_json::Value;
    /// Metadata of the metric families seen by scraping (for `/api/v1/metadata`).
    fn metadata(&self) -> Vec<(String, Metadata)>;
}

/// The parameters of `/api/v1/rules` (Grafana sends all of them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesQuery {
    /// `type`: `alert`, `record` or None for both.
    pub kind: Option<String>,
    /// `rule_name[]`, `rule_group[]`, `file[]`: keep only these (empty: all).
    pub rule_names: Vec<String>,
    pub rule_groups: Vec<String>,
    pub files: Vec<String>,
    /// `exclude_alerts=true`: leave out the alerts of alerting rules.
    pub exclude_alerts: bool,
    /// `group_limit` (0: all groups) and `group_next_token` (from a previous page).
    pub group_limit: usize,
    pub group_next_token: Option<String>,
}

/// Recording/alerting rules (implemented by the binary over the rule manager).
pub trait RulesProvider: Send + Sync {
    /// `data` of `/api/v1/rules`; `kind` is `alert`, `record` or None for both.
    fn rules(&self, kind: Option<&str>) -> serde_json::Value;
    /// `data` of `/api/v1/rules` with every filter; an `Err` (e.g. an unknown
    /// `group_next_token`) becomes a `bad_data` error. By default only `type` is honoured.
    fn rules_query(&self, q: &RulesQuery) -> Result<serde_json::Value, String> {
        Ok(self.rules(q.kind.as_deref()))
    }
    /// `data` of `/api/v1/alerts`.
    fn alerts(&self) -> serde_json::Value;
    /// `data` of `/api/v1/alertmanagers`. By default none.
    fn alertmanagers(&self) -> serde_json::Value {
        serde_json::json!({ "activeAlertmanagers": [], "droppedAlertmanagers": [] })
    }
}

/// Reloads the configuration (`POST /-/reload`, with `--web.enable-lifecycle`).
pub trait Reloader: Send + Sync {
    fn reload(&self) -> Result<(), String>;
}

/// Extra text appended to `/metrics` (the engine's, the cluster's and the scraper's own
/// metrics), already in the Prometheus text format.
pub trait MetricsSource: Send + Sync {
    fn render(&self, out: &mut String);
}

/// One entry parsed from an exposition-format body for `/api/v1/import`.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportEntry {
    /// A sample; `t` None means "no timestamp in the text" (the request's default time is used).
    Sample {
        labels: Labels,
        t: Option<i64>,
        v: f64,
        exemplar: Option<Exemplar>,
    },
    /// `# TYPE` / `# HELP` / `# UNIT` of a metric family.
    Metadata { metric: String, metadata: Metadata },
}

/// Metadata and exemplars the storage keeps itself (a cluster replicates them with the samples
/// of their series, so every node answers for the whole cluster). With one, `/api/v1/metadata`
/// and `/api/v1/query_exemplars` answer from it instead of this process' in-memory stores.
pub trait StoredExtras: Send + Sync {
    /// Metadata per metric family (a family may appear once per target).
    fn metadata(&self) -> Result<Vec<(String, Metadata)>, tidemark_storage::Error>;
    /// Exemplars of series matching any matcher set with a time in `[start, end]`, grouped by
    /// series (series in label order, exemplars in time order).
    fn exemplars(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<Exemplar>)>, tidemark_storage::Error>;
}

/// Parses Prometheus text / OpenMetrics bodies (implemented over tidemark-scrape's parser).
pub trait ExpositionParser: Send + Sync {
    /// Parses `body` sent with `content_type`; the error says which line is wrong and why.
    fn parse(&self, body: &[u8], content_type: &str) -> Result<Vec<ImportEntry>, String>;
}

/// `data` of `/api/v1/status/buildinfo` (Prometheus' keys; no `features` key).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    /// The Prometheus API level Tidemark answers as; Grafana reads it to enable features.
    pub version: String,
    pub revision: String,
    pub branch: String,
    pub build_user: String,
    pub build_date: String,
    pub go_version: String,
}

impl Default for BuildInfo {
    fn default() -> Self {
        BuildInfo {
            version: "2.53.0".to_string(),
            revision: format!("tidemark-{}", env!("CARGO_PKG_VERSION")),
            branch: "tidemark".to_string(),
            build_user: "tidemark".to_string(),
            build_date: String::new(),
            go_version: "none (Rust)".to_string(),
        }
    }
}
