//! [`Api`]: everything the handlers share, its options and the router.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{get, post};
use tidemark_promql::Engine;
use tidemark_storage::{Appendable, Queryable};

use crate::exemplars::{ExemplarStore, MetadataStore};
use crate::metrics::Metrics;
use crate::providers::{
    BuildInfo, ExpositionParser, MetricsSource, Reloader, RulesProvider, TargetsProvider, TsdbAdmin,
};
use crate::{federate, handlers, import, middleware, remote_read, remote_write};

/// Remote-write series whose raw label bytes are cached (per generation, two generations): 1M
/// series costs about their label bytes again plus ~100 bytes each.
const SERIES_CACHE_CAPACITY: usize = 1 << 20;

/// Options of the HTTP API. Each field says its default and the flag the binary maps to it.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Admin endpoints (`--web.enable-admin-api`, off).
    pub enable_admin_api: bool,
    /// `/-/reload` and friends (`--web.enable-lifecycle`, off).
    pub enable_lifecycle: bool,
    /// `/api/v1/write` (`--web.enable-remote-write-receiver`; on by default in Tidemark, since
    /// accepting remote write is one of its main jobs).
    pub enable_remote_write_receiver: bool,
    /// Largest accepted request body, compressed (`--web.max-request-body-bytes`, 32 MiB).
    pub max_request_body_bytes: usize,
    /// Largest accepted remote write/read body after snappy decompression (128 MiB).
    pub max_decompressed_bytes: usize,
    /// Time allowed to receive a request body (`--web.read-timeout`, 60 s).
    pub body_read_timeout: Duration,
    /// Most labels on one ingested series (`--web.max-labels-per-series`, 256).
    pub max_labels_per_series: usize,
    /// Longest label name, bytes (1 KiB).
    pub max_label_name_bytes: usize,
    /// Longest label value, bytes (`--web.max-label-value-bytes`, 16 KiB).
    pub max_label_value_bytes: usize,
    /// Samples further than this in the future are rejected (10 min, Prometheus' maxAheadTime).
    pub max_sample_ahead: Duration,
    /// When set, remote-written samples older than this are rejected before reaching storage
    /// (None: the storage decides, e.g. "out of bounds").
    pub max_sample_age: Option<Duration>,
    /// Exemplars kept in memory (`--storage.exemplars.exemplars-limit`, 100,000).
    pub max_exemplars: usize,
    /// Metric families whose metadata is kept (10,000).
    pub max_metadata_families: usize,
    /// Most samples one remote read request may return (`--storage.remote.read-sample-limit`,
    /// 50,000,000).
    pub remote_read_sample_limit: usize,
    /// Concurrent remote read requests (`--storage.remote.read-concurrent-limit`, 10).
    pub remote_read_concurrent_limit: usize,
    /// Largest streamed remote read frame (`--storage.remote.read-max-bytes-in-frame`, 1 MiB).
    pub remote_read_max_bytes_in_frame: usize,
    /// `Retry-After` sent with 429/503 answers to writers (5 s).
    pub retry_after: Duration,
    /// `/api/v1/status/buildinfo`.
    pub build_info: BuildInfo,
    /// Shown by `/api/v1/status/runtimeinfo` (`storageRetention`), e.g. "15d".
    pub storage_retention: String,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            enable_admin_api: false,
            enable_lifecycle: false,
            enable_remote_write_receiver: true,
            max_request_body_bytes: 32 << 20,
            max_decompressed_bytes: 128 << 20,
            body_read_timeout: Duration::from_secs(60),
            max_labels_per_series: 256,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 16 * 1024,
            max_sample_ahead: Duration::from_secs(600),
            max_sample_age: None,
            max_exemplars: 100_000,
            max_metadata_families: 10_000,
            remote_read_sample_limit: 50_000_000,
            remote_read_concurrent_limit: 10,
            remote_read_max_bytes_in_frame: 1 << 20,
            retry_after: Duration::from_secs(5),
            build_info: BuildInfo::default(),
            storage_retention: "15d".to_string(),
        }
    }
}

/// The HTTP API: storage, engine, options and optional providers. Build it with [`Api::new`]
/// and the `with_*` methods, then mount [`Api::router`] and run it with [`crate::serve`].
#[derive(Clone)]
pub struct Api {
    pub(crate) queryable: Arc<dyn Queryable>,
    pub(crate) appendable: Arc<dyn Appendable>,
    pub(crate) engine: Engine,
    pub(crate) opts: ApiOptions,
    pub(crate) admin: Option<Arc<dyn TsdbAdmin>>,
    pub(crate) targets: Option<Arc<dyn TargetsProvider>>,
    pub(crate) stored_extras: Option<Arc<dyn crate::StoredExtras>>,
    pub(crate) rules: Option<Arc<dyn RulesProvider>>,
    pub(crate) reloader: Option<Arc<dyn Reloader>>,
    pub(crate) parser: Option<Arc<dyn ExpositionParser>>,
    pub(crate) metrics_sources: Vec<Arc<dyn MetricsSource>>,
    pub(crate) config_text: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    pub(crate) flags: Arc<BTreeMap<String, String>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) exemplars: Arc<ExemplarStore>,
    pub(crate) metadata: Arc<MetadataStore>,
    /// Remote-write labels by their raw bytes (see `series_cache.rs`).
    pub(crate) series_cache: Arc<crate::series_cache::SeriesCache>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) start_time: SystemTime,
    pub(crate) remote_read_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) last_reload: Arc<parking_lot::Mutex<(bool, SystemTime)>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("opts", &self.opts)
            .field("admin", &self.admin.is_some())
            .field("targets", &self.targets.is_some())
            .field("rules", &self.rules.is_some())
            .finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(
        queryable: Arc<dyn Queryable>,
        appendable: Arc<dyn Appendable>,
        engine: Engine,
        opts: ApiOptions,
    ) -> Api {
        let now = SystemTime::now();
        Api {
            queryable,
            appendable,
            engine,
            exemplars: Arc::new(ExemplarStore::new(opts.max_exemplars)),
            metadata: Arc::new(MetadataStore::new(opts.max_metadata_families)),
            series_cache: Arc::new(crate::series_cache::SeriesCache::new(SERIES_CACHE_CAPACITY)),
            remote_read_slots: Arc::new(tokio::sync::Semaphore::new(
                opts.remote_read_concurrent_limit
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            opts,
            admin: None,
            targets: None,
            stored_extras: None,
            rules: None,
            reloader: None,
            parser: Some(Arc::new(import::ScrapeParser)),
            metrics_sources: Vec::new(),
            config_text: None,
            flags: Arc::new(BTreeMap::new()),
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(true)),
            start_time: now,
            last_reload: Arc::new(parking_lot::Mutex::new((true, now))),
        }
    }

    /// Engine statistics and admin operations.
    pub fn with_admin(mut self, admin: Arc<dyn TsdbAdmin>) -> Api {
        self.admin = Some(admin);
        self
    }
    /// Scrape targets and scraped metadata.
    pub fn with_targets(mut self, targets: Arc<dyn TargetsProvider>) -> Api {
        self.targets = Some(targets);
        self
    }
    /// Metadata and exemplars kept by the storage (a cluster node: those of every node).
    pub fn with_stored_extras(mut self, s: Arc<dyn crate::StoredExtras>) -> Api {
        self.stored_extras = Some(s);
        self
    }
    /// Rules and alerts.
    pub fn with_rules(mut self, rules: Arc<dyn RulesProvider>) -> Api {
        self.rules = Some(rules);
        self
    }
    /// The configuration text shown by `/api/v1/status/config` (called on each request, so a
    /// reloaded config shows).
    pub fn with_config_text(mut self, f: impl Fn() -> String + Send + Sync + 'static) -> Api {
        self.config_text = Some(Arc::new(f));
        self
    }
    /// Command-line flags shown by `/api/v1/status/flags` (name without `--` -> value).
    pub fn with_flags(mut self, flags: BTreeMap<String, String>) -> Api {
        self.flags = Arc::new(flags);
        self
    }
    /// What `POST /-/reload` runs.
    pub fn with_reload(mut self, r: Arc<dyn Reloader>) -> Api {
        self.reloader = Some(r);
        self
    }
    /// The exposition parser behind `/api/v1/import` (default: tidemark-scrape's parser).
    pub fn with_parser(mut self, p: Arc<dyn ExpositionParser>) -> Api {
        self.parser = Some(p);
        self
    }
    /// More text for `/metrics`.
    pub fn with_metrics_source(mut self, m: Arc<dyn MetricsSource>) -> Api {
        self.metrics_sources.push(m);
        self
    }

    /// The readiness flag behind `/-/ready` (true by default; the binary clears it while
    /// replaying its log or shutting down).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// The API's own metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The axum router with every endpoint, request ids, access log and request metrics.
    pub fn router(&self) -> Router {
        let state = Arc::new(self.clone());
        let v1 = Router::new()
            .route("/query", get(handlers::query).post(handlers::query))
            .route(
                "/query_range",
                get(handlers::query_range).post(handlers::query_range),
            )
            .route(
                "/format_query",
                get(handlers::format_query).post(handlers::format_query),
            )
            .route("/series", get(handlers::series).post(handlers::series))
            .route("/labels", get(handlers::labels).post(handlers::labels))
            .route("/label/{name}/values", get(handlers::label_values))
            .route("/metadata", get(handlers::metadata))
            .route(
                "/query_exemplars",
                get(handlers::query_exemplars).post(handlers::query_exemplars),
            )
            .route("/status/buildinfo", get(handlers::buildinfo))
            .route("/status/config", get(handlers::config))
            .route("/status/flags", get(handlers::flags))
            .route("/status/runtimeinfo", get(handlers::runtimeinfo))
            .route("/status/tsdb", get(handlers::tsdb_status))
            .route("/status/walreplay", get(handlers::walreplay))
            .route("/targets", get(handlers::targets))
            .route("/targets/metadata", get(handlers::targets_metadata))
            .route("/rules", get(handlers::rules))
            .route("/alerts", get(handlers::alerts))
            .route("/alertmanagers", get(handlers::alertmanagers))
            .route("/write", post(remote_write::write))
            .route("/read", post(remote_read::read))
            .route("/import", post(import::import).put(import::import))
            .route(
                "/admin/tsdb/delete_series",
                post(handlers::delete_series).put(handlers::delete_series),
            )
            .route(
                "/admin/tsdb/clean_tombstones",
                post(handlers::clean_tombstones).put(handlers::clean_tombstones),
            )
            .route(
                "/admin/tsdb/snapshot",
                post(handlers::snapshot).put(handlers::snapshot),
            );
        Router::new()
            .nest("/api/v1", v1)
            .route("/federate", get(federate::federate))
            .route("/metrics", get(handlers::own_metrics))
            .route("/-/healthy", get(handlers::healthy).head(handlers::healthy))
            .route("/-/ready", get(handlers::ready).head(handlers::ready))
            .route("/-/reload", post(handlers::reload).put(handlers::reload))
            .route("/", get(handlers::root))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                middleware::observe,
            ))
            .with_state(state)
    }
}

/// Shared state as the handlers see it.
pub(crate) type AppState = Arc<Api>;
