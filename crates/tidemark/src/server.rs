//! `tidemark server`: opens the engine, starts scraping, serves the HTTP API, and handles
//! SIGHUP (reload), SIGINT/SIGTERM (flush and exit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tidemark_api::{
    Api, ApiOptions, MetricsSource, Reloader, RulesProvider, RulesQuery, TargetsProvider, TsdbAdmin,
};
use tidemark_model::time::parse_duration_millis;
use tidemark_model::{Labels, Matcher, Metadata};
use tidemark_promql::{Engine, EngineOptions};
use tidemark_scrape::{ScrapeManager, ScrapeOptions};
use tidemark_storage::{Appendable, Queryable};
use tidemark_tsdb::log::SyncPolicy;
use tidemark_tsdb::{Db, DbOptions};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::cli::ServerArgs;
use crate::config::{self, Config};

/// Resolved engine options: flags given explicitly win over the file, the file over defaults.
fn db_options(args: &ServerArgs, cfg: &Config) -> anyhow::Result<DbOptions> {
    let mut o = DbOptions::default();
    let st = &cfg.tidemark.storage;
    if let Some(t) = args.retention_time.as_ref().or(st.retention.time.as_ref()) {
        o.retention_time_ms = parse_duration_millis(t).context("--storage.retention.time")?;
    }
    if let Some(s) = args.retention_size.as_ref().or(st.retention.size.as_ref()) {
        o.retention_size_bytes = config::parse_bytes(s).context("--storage.retention.size")?;
    }
    if let Some(w) = &st.out_of_order_time_window {
        o.ooo_window_ms = parse_duration_millis(w)?;
    }
    if let Some(b) = &st.block_range {
        o.block_range_ms = parse_duration_millis(b)?.max(60_000);
    }
    let ds = &st.downsampling;
    if let Some(on) = ds.enabled {
        o.downsampling = on;
    }
    if let Some(d) = &ds.resolution_5m_after {
        o.downsample_5m_after_ms = parse_duration_millis(d)?;
    }
    if let Some(d) = &ds.resolution_1h_after {
        o.downsample_1h_after_ms = parse_duration_millis(d)?;
    }
    if let Some(d) = &st.retention.resolution_5m {
        o.retention_5m_ms = parse_duration_millis(d)?;
    }
    if let Some(d) = &st.retention.resolution_1h {
        o.retention_1h_ms = parse_duration_millis(d)?;
    }
    o.retention_rules = st
        .retention
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| r.to_rule(i))
        .collect::<anyhow::Result<_>>()?;
    if let Some(s) = &st.log_sync {
        o.log_sync = match s.as_str() {
            "always" => SyncPolicy::Always,
            "never" => SyncPolicy::Never,
            d => SyncPolicy::Interval(Duration::from_millis(
                parse_duration_millis(d)?.max(1) as u64
            )),
        };
    }
    Ok(o)
}

fn engine_options(args: &ServerArgs, cfg: &Config) -> anyhow::Result<EngineOptions> {
    let q = &cfg.tidemark.query;
    let lookback = q.lookback_delta.as_deref().unwrap_or(&args.lookback_delta);
    let timeout = q.timeout.as_deref().unwrap_or(&args.query_timeout);
    let timeout_ms = parse_duration_millis(timeout).context("--query.timeout")?;
    let o = EngineOptions {
        lookback_delta_ms: parse_duration_millis(lookback).context("--query.lookback-delta")?,
        max_samples: q.max_samples.unwrap_or(args.max_samples),
        timeout: Duration::from_millis(timeout_ms.max(1) as u64),
        max_source_resolution: tidemark_promql::MaxSourceResolution::parse(
            &args.max_source_resolution,
        )
        .map_err(anyhow::Error::msg)
        .context("--query.max-source-resolution")?,
        ..EngineOptions::default()
    };
    Ok(o)
}

fn load_config(args: &ServerArgs) -> anyhow::Result<Config> {
    match &args.config_file {
        Some(p) => config::load(p),
        None => Ok(config::self_scrape(&args.listen_address)),
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub(crate) fn run(args: ServerArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let storage_path = match (&cfg.tidemark.storage.path, args.storage_path.as_path()) {
        (Some(p), d) if d == Path::new("data/") => PathBuf::from(p),
        _ => args.storage_path.clone(),
    };
    let dbo = db_options(&args, &cfg)?;
    let engine = Engine::new(engine_options(&args, &cfg)?);
    let web_config = match &args.web_config_file {
        Some(p) => Some(
            tidemark_api::load_web_config(p)
                .with_context(|| format!("--web.config.file {}", p.display()))?,
        ),
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tidemark")
        .build()?;
    if let Some(id) = args.cluster_node_id {
        let node = rt.block_on(start_cluster_node(&args, id, &storage_path, &dbo))?;
        let storage =
            tidemark_cluster::storage::ClusterStorage::new(node.clone(), rt.handle().clone());
        let owner = node.clone();
        let backend = Backend {
            appendable: Arc::new(storage.clone()),
            queryable: Arc::new(storage.clone()),
            admin: Arc::new(ClusterAdmin {
                storage: storage.clone(),
            }),
            cluster: Some(storage),
            metrics: Arc::new(ClusterMetrics { node: node.clone() }),
            // With a configuration file, targets are spread over the live nodes; the embedded
            // default (each node scrapes itself) is per node.
            owns_target: args.config_file.is_some().then(|| {
                Arc::new(move |job: &str, h: u64| {
                    owner.owns(h ^ xxhash_rust::xxh3::xxh3_64(job.as_bytes()))
                }) as tidemark_scrape::TargetFilter
            }),
            live_nodes: {
                let n = node.clone();
                Some(Arc::new(move || n.live_nodes()) as LiveNodes)
            },
            // Rule groups spread like scrape targets (a different salt, so one node does not
            // get both the targets and the groups of the same hash).
            rule_owner: {
                let n = node.clone();
                Some(Arc::new(move |h: u64| n.owns(h ^ 0x7275_6c65_7320_2020))
                    as tidemark_rules::GroupOwner)
            },
        };
        let result = rt.block_on(serve(
            args,
            cfg,
            backend,
            engine,
            web_config,
            storage_path,
            dbo,
        ));
        info!("closing cluster node");
        rt.block_on(node.shutdown());
        rt.shutdown_timeout(Duration::from_secs(5));
        return result;
    }

    info!(path = %storage_path.display(), retention_ms = dbo.retention_time_ms, "opening storage");
    let db = Db::open(&storage_path, dbo.clone())
        .with_context(|| format!("opening {}", storage_path.display()))?;
    let report = db.open_report();
    if report.is_clean() {
        info!(report = %report, "storage opened");
    } else {
        warn!(report = %report, "storage repaired on open: data after the damage was dropped or moved aside");
    }
    info!(series = db.stats().head_series, "storage ready");

    let backend = Backend {
        appendable: Arc::new(db.clone()),
        queryable: Arc::new(db.clone()),
        admin: Arc::new(DbAdmin {
            db: db.clone(),
            dir: storage_path.clone(),
        }),
        metrics: Arc::new(DbMetrics { db: db.clone() }),
        owns_target: None,
        live_nodes: None,
        rule_owner: None,
        cluster: None,
    };
    let result = rt.block_on(serve(
        args,
        cfg,
        backend,
        engine,
        web_config,
        storage_path,
        dbo,
    ));
    info!("closing storage");
    if let Err(e) = db.close() {
        error!(error = %e, "closing storage failed");
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// What the server runs on: the local engine, or the cluster.
struct Backend {
    appendable: Arc<dyn Appendable>,
    queryable: Arc<dyn Queryable>,
    admin: Arc<dyn TsdbAdmin>,
    metrics: Arc<dyn MetricsSource>,
    owns_target: Option<tidemark_scrape::TargetFilter>,
    /// The live nodes (cluster): scrape targets are re-spread whenever this changes.
    live_nodes: Option<LiveNodes>,
    /// Which rule groups this node evaluates (cluster); all when `None`.
    rule_owner: Option<tidemark_rules::GroupOwner>,
    /// The cluster storage (metadata and exemplars of every node come from it).
    cluster: Option<tidemark_cluster::storage::ClusterStorage>,
}

type LiveNodes = Arc<dyn Fn() -> Vec<u64> + Send + Sync>;

async fn start_cluster_node(
    args: &ServerArgs,
    id: u64,
    storage_path: &Path,
    dbo: &DbOptions,
) -> anyhow::Result<Arc<tidemark_cluster::node::Node>> {
    let mut peers = BTreeMap::new();
    for p in &args.cluster_peers {
        let (i, a) = p
            .split_once('=')
            .with_context(|| format!("--cluster.peers: {p:?} is not ID=HOST:PORT"))?;
        let i: u64 = i
            .trim()
            .parse()
            .with_context(|| format!("--cluster.peers: bad node id in {p:?}"))?;
        peers.insert(i, a.trim().to_string());
    }
    if peers.is_empty() {
        // A one-node cluster.
        peers.insert(
            id,
            args.cluster_listen_address.replace("0.0.0.0", "127.0.0.1"),
        );
    }
    let listen: std::net::SocketAddr = args
        .cluster_listen_address
        .parse()
        .with_context(|| format!("--cluster.listen-address {}", args.cluster_listen_address))?;
    let mut o =
        tidemark_cluster::node::ClusterOptions::new(id, listen, peers, storage_path.to_path_buf());
    o.num_shards = args.cluster_shards.max(1);
    o.replication_factor = args.cluster_replication_factor.max(1);
    o.join = args.cluster_join;
    o.snapshot_after_entries = args.cluster_snapshot_after_entries.max(10);
    o.keep_entries_after_snapshot = args.cluster_keep_entries;
    let staleness = tidemark_model::time::parse_duration_millis(&args.cluster_read_staleness)
        .with_context(|| format!("--cluster.read-staleness {}", args.cluster_read_staleness))?;
    o.stale_reads = u64::try_from(staleness)
        .ok()
        .filter(|&ms| ms > 0)
        .map(std::time::Duration::from_millis);
    let window = tidemark_model::time::parse_duration_millis(&args.cluster_write_batch_window)
        .with_context(|| {
            format!(
                "--cluster.write-batch-window {}",
                args.cluster_write_batch_window
            )
        })?;
    o.write_batch_window = std::time::Duration::from_millis(u64::try_from(window).unwrap_or(0));
    o.db = DbOptions {
        // The shard's Raft log is the only log: the Db keeps none (its head is restored from the
        // last snapshot and the Raft entries after it; docs/cluster.md).
        wal: false,
        log_sync: SyncPolicy::Never,
        ..dbo.clone()
    };
    info!(node = id, listen = %listen, peers = ?o.peers, shards = o.num_shards, "starting cluster node");
    tidemark_cluster::node::Node::start(o)
        .await
        .map_err(|e| anyhow::anyhow!("starting the cluster node: {e}"))
}

async fn serve(
    args: ServerArgs,
    cfg: Config,
    backend: Backend,
    engine: Engine,
    web_config: Option<tidemark_api::WebConfig>,
    storage_path: PathBuf,
    dbo: DbOptions,
) -> anyhow::Result<()> {
    let appendable = backend.appendable.clone();
    let queryable = backend.queryable.clone();
    let scrape = ScrapeManager::new(
        appendable.clone(),
        ScrapeOptions {
            owns_target: backend.owns_target.clone(),
            ..ScrapeOptions::default()
        },
    );
    scrape
        .apply_config(&cfg.prometheus)
        .context("applying scrape configuration")?;
    if let (Some(live), Some(_)) = (backend.live_nodes.clone(), &backend.owns_target) {
        // Membership changed: targets move to (or from) this node.
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let mut last = live();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = live();
                if now != last {
                    info!(live = ?now, "cluster membership changed; re-spreading scrape targets");
                    scrape.resync();
                    last = now;
                }
            }
        });
    }
    let external_url = external_url(&args);
    let rules = tidemark_rules::RuleManager::new(
        Arc::new(engine.clone()),
        queryable.clone(),
        appendable.clone(),
        tidemark_rules::GroupOptions::default(),
    );
    rules.set_owner(backend.rule_owner.clone());
    rules
        .apply_config(&cfg.prometheus, &external_url)
        .context("loading rule files")?;
    let cfg = Arc::new(Mutex::new(cfg));

    let mut flags = BTreeMap::new();
    flags.insert(
        "storage.tsdb.path".to_string(),
        storage_path.display().to_string(),
    );
    flags.insert(
        "storage.tsdb.retention.time".to_string(),
        tidemark_model::time::format_duration_millis(dbo.retention_time_ms),
    );
    flags.insert(
        "storage.tsdb.retention.size".to_string(),
        dbo.retention_size_bytes.to_string(),
    );
    flags.insert(
        "web.listen-address".to_string(),
        args.listen_address.clone(),
    );
    flags.insert(
        "web.enable-admin-api".to_string(),
        args.enable_admin_api.to_string(),
    );
    flags.insert(
        "query.lookback-delta".to_string(),
        args.lookback_delta.clone(),
    );
    flags.insert(
        "query.max-samples".to_string(),
        args.max_samples.to_string(),
    );
    flags.insert("query.timeout".to_string(), args.query_timeout.clone());
    flags.insert(
        "query.max-source-resolution".to_string(),
        args.max_source_resolution.clone(),
    );
    flags.insert(
        "config.file".to_string(),
        args.config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );

    let read_timeout_ms = tidemark_model::time::parse_duration_millis(&args.web_read_timeout)
        .map_err(|e| anyhow::anyhow!("--web.read-timeout {}: {e}", args.web_read_timeout))?;
    let opts = ApiOptions {
        enable_admin_api: args.enable_admin_api,
        enable_lifecycle: true,
        storage_retention: tidemark_model::time::format_duration_millis(dbo.retention_time_ms),
        max_request_body_bytes: usize::try_from(
            crate::config::parse_bytes(&args.max_request_body)
                .context("--web.max-request-body-bytes")?,
        )
        .unwrap_or(usize::MAX)
        .max(1),
        body_read_timeout: Duration::from_millis(
            u64::try_from(read_timeout_ms.max(1)).unwrap_or(1),
        ),
        max_labels_per_series: args.max_labels_per_series.max(1),
        max_label_value_bytes: args.max_label_value_bytes.max(1),
        max_exemplars: args.exemplars_limit,
        remote_read_sample_limit: if args.remote_read_sample_limit == 0 {
            usize::MAX
        } else {
            args.remote_read_sample_limit
        },
        remote_read_concurrent_limit: if args.remote_read_concurrent_limit == 0 {
            usize::MAX
        } else {
            args.remote_read_concurrent_limit
        },
        remote_read_max_bytes_in_frame: args.remote_read_max_bytes_in_frame.max(1024),
        ..ApiOptions::default()
    };
    let reloader = Arc::new(ConfigReloader {
        args: args.clone(),
        cfg: cfg.clone(),
        scrape: scrape.clone(),
        rules: rules.clone(),
        external_url,
    });
    let cfg_for_text = cfg.clone();
    let mut api = Api::new(queryable, appendable, engine, opts);
    if let Some(c) = &backend.cluster {
        api = api.with_stored_extras(Arc::new(ClusterExtras { storage: c.clone() }));
    }
    let api = api
        .with_admin(backend.admin.clone())
        .with_targets(Arc::new(ScrapeTargets {
            scrape: scrape.clone(),
            cluster: backend.cluster.clone(),
        }))
        .with_config_text(move || cfg_for_text.lock().prometheus.to_yaml())
        .with_flags(flags)
        .with_reload(reloader.clone())
        .with_metrics_source(backend.metrics.clone())
        .with_rules(Arc::new(RulesApi {
            rules: rules.clone(),
        }))
        .with_metrics_source(Arc::new(RulesApi {
            rules: rules.clone(),
        }));

    let listener = TcpListener::bind(&args.listen_address)
        .await
        .with_context(|| format!("listening on {}", args.listen_address))?;
    info!(address = %listener.local_addr()?, "HTTP API listening");

    // SIGHUP reloads; SIGINT/SIGTERM end the server.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(signals(reloader, stop_tx));
    let shutdown = async move {
        let _ = stop_rx.await;
        info!("shutting down");
    };
    let header_ms = tidemark_model::time::parse_duration_millis(&args.web_read_header_timeout)
        .map_err(|e| {
            anyhow::anyhow!(
                "--web.read-header-timeout {}: {e}",
                args.web_read_header_timeout
            )
        })?;
    let serve_opts = tidemark_api::ServeOptions {
        header_read_timeout: Duration::from_millis(u64::try_from(header_ms.max(1)).unwrap_or(1)),
        max_connections: args.web_max_connections.max(1),
        metrics: Some(api.metrics()),
        ..tidemark_api::ServeOptions::default()
    };
    let served =
        tidemark_api::serve_with(listener, api.router(), web_config, serve_opts, shutdown).await;
    scrape.stop().await;
    rules.stop();
    served.map_err(|e| anyhow::anyhow!("HTTP server: {e}"))
}

async fn signals(reloader: Arc<ConfigReloader>, stop: tokio::sync::oneshot::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reloader.reload() {
                    Ok(()) => info!("configuration reloaded (SIGHUP)"),
                    Err(e) => error!(error = %e, "configuration reload failed; keeping the old one"),
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    let _ = stop.send(());
}

/// Re-reads the configuration file and applies it (SIGHUP, `POST /-/reload`). Unchanged targets
/// keep their state and schedule (the scrape manager diffs the configs).
struct ConfigReloader {
    args: ServerArgs,
    cfg: Arc<Mutex<Config>>,
    scrape: ScrapeManager,
    rules: tidemark_rules::RuleManager,
    external_url: String,
}

impl Reloader for ConfigReloader {
    fn reload(&self) -> Result<(), String> {
        let new = load_config(&self.args).map_err(|e| format!("{e:#}"))?;
        // Rule files are validated first: a bad rule file keeps the old configuration.
        self.rules
            .apply_config(&new.prometheus, &self.external_url)
            .map_err(|e| format!("loading rule files: {e}"))?;
        self.scrape
            .apply_config(&new.prometheus)
            .map_err(|e| e.to_string())?;
        *self.cfg.lock() = new;
        Ok(())
    }
}

struct ScrapeTargets {
    scrape: ScrapeManager,
    /// On a cluster node: the metadata other nodes' targets sent through the cluster.
    cluster: Option<tidemark_cluster::storage::ClusterStorage>,
}

/// Metadata and exemplars replicated with the shards' samples (docs/cluster.md).
struct ClusterExtras {
    storage: tidemark_cluster::storage::ClusterStorage,
}

impl tidemark_api::StoredExtras for ClusterExtras {
    fn metadata(&self) -> Result<Vec<(String, Metadata)>, tidemark_storage::Error> {
        Ok(self
            .storage
            .metadata()?
            .into_iter()
            .map(|(name, _, m)| (name, m))
            .collect())
    }

    fn exemplars(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, Vec<tidemark_model::Exemplar>)>, tidemark_storage::Error> {
        self.storage.exemplars(sets, start, end)
    }
}

impl TargetsProvider for ScrapeTargets {
    fn targets(&self, state: &str, scrape_pool: Option<&str>) -> serde_json::Value {
        let snap = self.scrape.targets().filtered(Some(state), scrape_pool);
        serde_json::to_value(&snap).unwrap_or(serde_json::Value::Null)
    }

    fn targets_metadata(
        &self,
        match_target: Option<&str>,
        metric: Option<&str>,
        limit: usize,
    ) -> serde_json::Value {
        let matchers: Vec<Matcher> = match match_target {
            Some(s) if !s.is_empty() => match tidemark_promql::parse_series_selector(s) {
                Ok(m) => m,
                Err(_) => return serde_json::Value::Array(Vec::new()),
            },
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for m in self.scrape.metadata() {
            if metric.is_some_and(|x| x != m.metric) {
                continue;
            }
            if !matchers
                .iter()
                .all(|x| x.matches(m.target.get_or_empty(&x.name)))
            {
                continue;
            }
            out.push(m);
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        let mut out: Vec<serde_json::Value> = out
            .iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .collect();
        // On a cluster node, also the metadata of targets other nodes scrape (their target is
        // known by its `job` and `instance` labels).
        if let Some(c) = &self.cluster
            && (limit == 0 || out.len() < limit)
        {
            let here: BTreeSet<(String, String, String)> = self
                .scrape
                .metadata()
                .iter()
                .map(|m| {
                    (
                        m.target.get_or_empty("job").to_string(),
                        m.target.get_or_empty("instance").to_string(),
                        m.metric.clone(),
                    )
                })
                .collect();
            let mut more = match c.metadata() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the cluster's target metadata");
                    Vec::new()
                }
            };
            more.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
            for (name, target, m) in more {
                let key = (
                    target.get_or_empty("job").to_string(),
                    target.get_or_empty("instance").to_string(),
                    name.clone(),
                );
                if target.is_empty()
                    || here.contains(&key)
                    || metric.is_some_and(|x| x != name)
                    || !matchers
                        .iter()
                        .all(|x| x.matches(target.get_or_empty(&x.name)))
                {
                    continue;
                }
                out.push(serde_json::json!({
                    "target": target,
                    "metric": name,
                    "type": m.kind.as_str(),
                    "help": m.help,
                    "unit": m.unit,
                }));
                if limit > 0 && out.len() >= limit {
                    break;
                }
            }
        }
        serde_json::Value::Array(out)
    }

    fn metadata(&self) -> Vec<(String, Metadata)> {
        let mut seen = BTreeMap::new();
        for m in self.scrape.metadata() {
            seen.entry(m.metric.clone()).or_insert_with(|| Metadata {
                kind: m.kind,
                help: m.help.clone(),
                unit: m.unit.clone(),
            });
        }
        seen.into_iter().collect()
    }
}

/// Engine statistics and admin operations for the API.
struct DbAdmin {
    db: Db,
    dir: PathBuf,
}

impl TsdbAdmin for DbAdmin {
    fn status(&self, limit: usize) -> Result<tidemark_api::TsdbStatus, tidemark_storage::Error> {
        crate::status::tsdb_status(&self.db, limit)
    }

    fn delete_series(
        &self,
        m: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<(), tidemark_storage::Error> {
        Ok(self.db.delete(m, mint, maxt)?)
    }

    fn clean_tombstones(&self) -> Result<(), tidemark_storage::Error> {
        self.db.clean_tombstones()?;
        Ok(())
    }

    fn snapshot(&self, skip_head: bool) -> Result<String, tidemark_storage::Error> {
        crate::status::snapshot(&self.db, &self.dir, skip_head)
    }
}

/// Admin operations on a cluster node: deletes and tombstone cleaning go through every shard's
/// Raft log (every replica applies them at the same point); the TSDB status walks every
/// shard through the cluster querier.
struct ClusterAdmin {
    storage: tidemark_cluster::storage::ClusterStorage,
}

impl TsdbAdmin for ClusterAdmin {
    fn status(&self, limit: usize) -> Result<tidemark_api::TsdbStatus, tidemark_storage::Error> {
        // The head's time range and sizes as this node's replicas see them; the series walk
        // itself covers every shard.
        let (mut mint, mut maxt, mut series, mut chunks) = (i64::MAX, i64::MIN, 0u64, 0u64);
        for sh in self.storage.node().hosted() {
            if let Some(db) = sh.data.db() {
                let st = db.stats();
                mint = mint.min(st.head_min_time.unwrap_or(i64::MAX));
                maxt = maxt.max(st.head_max_time.unwrap_or(i64::MIN));
                series = series.max(st.head_series as u64);
                chunks += st.head_chunks_written;
            }
        }
        if mint > maxt {
            (mint, maxt) = (0, 0);
        }
        crate::status::cardinality(&self.storage, (mint, maxt), series, chunks, limit)
    }

    fn delete_series(
        &self,
        m: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<(), tidemark_storage::Error> {
        self.storage
            .run_command(tidemark_cluster::batch::Command::delete(m, mint, maxt))
    }

    fn clean_tombstones(&self) -> Result<(), tidemark_storage::Error> {
        self.storage
            .run_command(tidemark_cluster::batch::Command::CleanTombstones)
    }

    /// Every replica hosted here, each in `snapshots/<name>/shard-<n>/` (a data directory of
    /// its own: hard-linked blocks plus its head written as blocks; docs/cluster.md).
    fn snapshot(&self, skip_head: bool) -> Result<String, tidemark_storage::Error> {
        let node = self.storage.node();
        let name = crate::status::snapshot_name();
        let dir = node.options().data_dir.join("snapshots").join(&name);
        let mut shards = Vec::new();
        for sh in node.hosted() {
            sh.data
                .export(&dir.join(format!("shard-{}", sh.id)), skip_head)
                .map_err(|e| {
                    tidemark_storage::Error::Other(format!("snapshot of shard {}: {e}", sh.id))
                })?;
            shards.push(serde_json::json!({
                "shard": sh.id,
                "last_applied": sh.data.last_applied().map(|l| l.index),
            }));
        }
        let manifest = serde_json::json!({
            "node": node.id(),
            "num_shards": node.num_shards(),
            "shards": shards,
        });
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("snapshot.json"), manifest.to_string())?;
        info!(name = %name, shards = node.hosted().len(), "snapshot of the local replicas written");
        Ok(name)
    }
}

/// A cluster node's own metrics on `/metrics`.
struct ClusterMetrics {
    node: Arc<tidemark_cluster::node::Node>,
}

impl MetricsSource for ClusterMetrics {
    fn render(&self, out: &mut String) {
        crate::status::render_cluster_metrics(&self.node, out);
    }
}

/// The engine's own metrics on `/metrics`.
struct DbMetrics {
    db: Db,
}

impl MetricsSource for DbMetrics {
    fn render(&self, out: &mut String) {
        crate::status::render_metrics(&self.db, out);
    }
}

/// `--web.external-url`, or `http://<listen address>` (Prometheus' default is the hostname and
/// port; the listen address is what a test or a laptop user reaches).
fn external_url(args: &ServerArgs) -> String {
    match &args.external_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let a = args.listen_address.replace("0.0.0.0", "localhost");
            format!("http://{a}")
        }
    }
}

/// Rules and alerts for the API, and the rule manager's own metrics.
struct RulesApi {
    rules: tidemark_rules::RuleManager,
}

impl RulesProvider for RulesApi {
    fn rules(&self, kind: Option<&str>) -> serde_json::Value {
        let q = RulesQuery {
            kind: kind.map(str::to_string),
            ..RulesQuery::default()
        };
        self.rules_query(&q).unwrap_or(serde_json::Value::Null)
    }

    fn rules_query(&self, q: &RulesQuery) -> Result<serde_json::Value, String> {
        self.rules.rules_json(&tidemark_rules::RulesFilter {
            kind: q.kind.clone(),
            rule_names: q.rule_names.clone(),
            rule_groups: q.rule_groups.clone(),
            files: q.files.clone(),
            exclude_alerts: q.exclude_alerts,
            group_limit: q.group_limit,
            group_next_token: q.group_next_token.clone(),
        })
    }

    fn alerts(&self) -> serde_json::Value {
        self.rules.alerts_json()
    }

    fn alertmanagers(&self) -> serde_json::Value {
        let active: Vec<serde_json::Value> = self
            .rules
            .notifier()
            .targets()
            .into_iter()
            .map(|t| serde_json::json!({ "url": t.url }))
            .collect();
        serde_json::json!({ "activeAlertmanagers": active, "droppedAlertmanagers": [] })
    }
}

impl MetricsSource for RulesApi {
    fn render(&self, out: &mut String) {
        self.rules.render_metrics(out);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn server_args(extra: &[&str]) -> ServerArgs {
        let argv = ["tidemark", "server"].iter().chain(extra).copied();
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Server(a) => *a,
            _ => panic!("not the server command"),
        }
    }

    #[test]
    fn downsampling_and_retention_keys_reach_db_options() {
        let text = r#"
tidemark:
  storage:
    retention:
      time: 20d
      resolution_5m: 60d
      resolution_1h: 2y
      rules:
        - match: '{__name__=~"debug_.*"}'
          time: 2d
    downsampling:
      enabled: false
      resolution_5m_after: 2d
      resolution_1h_after: 12d
"#;
        let cfg = config::parse(text, None).unwrap();
        let day = 86_400_000;
        let o = db_options(&server_args(&[]), &cfg).unwrap();
        assert_eq!(o.retention_time_ms, 20 * day);
        assert_eq!(
            (o.retention_5m_ms, o.retention_1h_ms),
            (60 * day, 2 * 365 * day)
        );
        assert!(!o.downsampling);
        assert_eq!(
            (o.downsample_5m_after_ms, o.downsample_1h_after_ms),
            (2 * day, 12 * day)
        );
        assert_eq!(o.retention_rules.len(), 1);
        assert_eq!(o.retention_rules[0].raw_ms, Some(2 * day));
        // The flag wins over the file for the raw retention; defaults without the section.
        let o = db_options(&server_args(&["--storage.retention.time", "5d"]), &cfg).unwrap();
        assert_eq!(o.retention_time_ms, 5 * day);
        let o = db_options(&server_args(&[]), &config::parse("", None).unwrap()).unwrap();
        let d = DbOptions::default();
        assert_eq!(
            (
                o.downsampling,
                o.retention_5m_ms,
                o.retention_1h_ms,
                o.retention_rules.len()
            ),
            (d.downsampling, d.retention_5m_ms, d.retention_1h_ms, 0)
        );
    }
}
