//! [`ScrapeManager`]: one scrape pool per job, each with its discovery task and one Tokio task
//! per target. Reloads keep unchanged pools (and so their targets' state and schedule) as they
//! are; a changed pool's targets hand their scrape cache to the new loops; removed targets get
//! staleness markers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tidemark_model::time::now_millis;
use tidemark_model::{Labels, Metadata, MetricType};
use tidemark_storage::Appendable;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{Connection, HttpClient};
use crate::config::{PrometheusConfig, ScrapeConfig};
use crate::discovery::{FileSd, static_groups};
use crate::parse::Format;
use crate::scrape::{AppendOptions, ScrapeCache, ScrapeStats};
use crate::target::{Populated, Target, TargetGroup, populate};

/// Errors of the scrape manager.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("the scrape manager needs a Tokio runtime: {0}")]
    NoRuntime(String),
    #[error("the scrape manager was stopped")]
    Stopped,
}

/// Decides whether this node scrapes a target: called with the job name and the target's
/// identity hash (xxh3 of its labels and URL: the same on every node). For spreading targets
/// across a cluster (rendezvous hashing); `None` scrapes everything.
pub type TargetFilter = Arc<dyn Fn(&str, u64) -> bool + Send + Sync>;

/// Manager-wide options.
#[derive(Clone)]
pub struct ScrapeOptions {
    /// How often file_sd files are checked for modification. Default 5s.
    pub file_sd_poll_interval: std::time::Duration,
    /// Mixed into every target's scrape offset (Prometheus uses external labels and hostname).
    pub offset_seed: u64,
    /// Host name that replaces a loopback host in `globalUrl`. Default: this machine's.
    pub hostname: String,
    /// Spread first scrapes over the interval with a stable per-target offset (default true;
    /// tests turn it off to scrape at once).
    pub spread_offsets: bool,
    /// Runtime to spawn on; the current one when `None`.
    pub runtime: Option<Handle>,
    /// Only targets it accepts are scraped (and listed); see [`ScrapeManager::resync`].
    pub owns_target: Option<TargetFilter>,
}

impl std::fmt::Debug for ScrapeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeOptions")
            .field("file_sd_poll_interval", &self.file_sd_poll_interval)
            .field("offset_seed", &self.offset_seed)
            .field("hostname", &self.hostname)
            .field("spread_offsets", &self.spread_offsets)
            .field("owns_target", &self.owns_target.is_some())
            .finish()
    }
}

impl Default for ScrapeOptions {
    fn default() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        ScrapeOptions {
            file_sd_poll_interval: std::time::Duration::from_secs(5),
            offset_seed: 0,
            hostname,
            spread_offsets: true,
            runtime: None,
            owns_target: None,
        }
    }
}

/// Health of a target, as `/api/v1/targets` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Default)]
struct TargetStatus {
    health: Health,
    last_error: String,
    last_scrape: Option<SystemTime>,
    last_duration: f64,
}

/// An active target in `/api/v1/targets`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTargetInfo {
    pub discovered_labels: Labels,
    pub labels: Labels,
    pub scrape_pool: String,
    pub scrape_url: String,
    pub global_url: String,
    pub last_error: String,
    /// RFC 3339 with nanoseconds; `0001-01-01T00:00:00Z` before the first scrape.
    pub last_scrape: String,
    pub last_scrape_duration: f64,
    pub health: Health,
    pub scrape_interval: String,
    pub scrape_timeout: String,
}

/// A target dropped by relabeling.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DroppedTargetInfo {
    pub discovered_labels: Labels,
    /// Not serialized (Prometheus 2.x shows only the labels); used for `scrapePool` filtering.
    #[serde(skip)]
    pub scrape_pool: String,
}

/// The `data` of `/api/v1/targets`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetsSnapshot {
    pub active_targets: Vec<ActiveTargetInfo>,
    pub dropped_targets: Vec<DroppedTargetInfo>,
    pub dropped_target_counts: BTreeMap<String, usize>,
}

impl TargetsSnapshot {
    /// Applies `/api/v1/targets`' query parameters: `state` (`active`, `dropped`, `any` or
    /// absent) and `scrapePool`.
    pub fn filtered(mut self, state: Option<&str>, scrape_pool: Option<&str>) -> TargetsSnapshot {
        match state.map(str::to_ascii_lowercase).as_deref() {
            Some("active") => self.dropped_targets.clear(),
            Some("dropped") => self.active_targets.clear(),
            _ => {}
        }
        if let Some(pool) = scrape_pool {
            self.active_targets.retain(|t| t.scrape_pool == pool);
            self.dropped_targets.retain(|t| t.scrape_pool == pool);
            self.dropped_target_counts.retain(|k, _| k == pool);
        }
        self
    }
}

/// One entry of `/api/v1/targets/metadata`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetMetadata {
    /// The target's labels (those not starting with `__`).
    pub target: Labels,
    pub metric: String,
    #[serde(rename = "type")]
    pub kind: MetricType,
    pub help: String,
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopMode {
    /// Target removed: write staleness markers.
    Stale,
    /// Shutdown or replaced by a new loop holding the same cache: stop quietly.
    Quiet,
}

#[derive(Debug)]
struct ActiveTarget {
    target: Arc<Target>,
    status: Arc<Mutex<TargetStatus>>,
    cache: Arc<Mutex<ScrapeCache>>,
    stop: Option<oneshot::Sender<StopMode>>,
    task: Option<JoinHandle<()>>,
}

impl ActiveTarget {
    fn stop(&mut self, mode: StopMode) -> Option<JoinHandle<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(mode);
        }
        self.task.take()
    }
}

#[derive(Debug, Default)]
struct PoolTargets {
    active: BTreeMap<u64, ActiveTarget>,
    dropped: Vec<Labels>,
    dropped_count: usize,
}

/// A replaced pool's target caches and statuses, by target hash.
type Handover = HashMap<u64, (Arc<Mutex<ScrapeCache>>, Arc<Mutex<TargetStatus>>)>;

struct PoolShared {
    cfg: Arc<ScrapeConfig>,
    client: HttpClient,
    append_opts: AppendOptions,
    appendable: Arc<dyn Appendable>,
    opts: ScrapeOptions,
    handle: Handle,
    targets: Mutex<PoolTargets>,
    forced_error: Mutex<Option<String>>,
    /// The last discovery result, for [`ScrapeManager::resync`].
    last_groups: Mutex<Vec<TargetGroup>>,
    /// Caches and statuses of a replaced pool's targets, taken over by hash.
    inherited: Mutex<Handover>,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared")
            .field("job", &self.cfg.job_name)
            .finish()
    }
}

#[derive(Debug)]
struct Pool {
    shared: Arc<PoolShared>,
    /// The full config, discovery sections included (the pool's own copy may be older in them).
    cfg: Arc<ScrapeConfig>,
    discovery: JoinHandle<()>,
}

/// Equal apart from discovery (static_configs, file_sd_configs).
fn same_scrape_part(a: &ScrapeConfig, b: &ScrapeConfig) -> bool {
    let strip = |c: &ScrapeConfig| ScrapeConfig {
        static_configs: Vec::new(),
        file_sd_configs: Vec::new(),
        ..c.clone()
    };
    strip(a) == strip(b)
}

#[derive(Debug, Default)]
struct State {
    pools: HashMap<String, Pool>,
    order: Vec<String>,
    stopped: bool,
}

/// Scrapes every configured target into an [`Appendable`].
#[derive(Clone)]
pub struct ScrapeManager {
    appendable: Arc<dyn Appendable>,
    opts: ScrapeOptions,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for ScrapeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeManager")
            .field("opts", &self.opts)
            .finish()
    }
}

fn append_options(c: &ScrapeConfig) -> AppendOptions {
    AppendOptions {
        honor_labels: c.honor_labels,
        honor_timestamps: c.honor_timestamps,
        track_timestamps_staleness: c.track_timestamps_staleness,
        sample_limit: c.sample_limit.unwrap_or(0),
        label_limit: c.label_limit.unwrap_or(0),
        label_name_length_limit: c.label_name_length_limit.unwrap_or(0),
        label_value_length_limit: c.label_value_length_limit.unwrap_or(0),
        metric_relabel_configs: c.metric_relabel_configs.clone(),
    }
}

fn rfc3339(t: Option<SystemTime>) -> String {
    match t {
        None => "0001-01-01T00:00:00Z".to_string(),
        Some(t) => chrono::DateTime::<chrono::Utc>::from(t)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    }
}

fn global_url(url: &str, hostname: &str) -> String {
    for lo in ["://localhost", "://127.0.0.1", "://[::1]"] {
        if let Some(i) = url.find(lo) {
            let start = i + 3;
            let end = start + lo.len() - 3;
            return format!("{}{}{}", &url[..start], hostname, &url[end..]);
        }
    }
    url.to_string()
}

/// Prometheus' stable offset: the target scrapes at the same phase of its interval every time.
fn offset(hash: u64, seed: u64, interval: std::time::Duration) -> std::time::Duration {
    let iv = interval.as_nanos().max(1) as u64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let base = iv - now % iv;
    let off = (hash ^ seed) % iv;
    let mut next = base + off;
    if next > iv {
        next -= iv;
    }
    std::time::Duration::from_nanos(next)
}

impl ScrapeManager {
    /// A manager writing into `appendable`. Nothing runs before [`ScrapeManager::apply_config`].
    pub fn new(appendable: Arc<dyn Appendable>, opts: ScrapeOptions) -> ScrapeManager {
        ScrapeManager {
            appendable,
            opts,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn handle(&self) -> Result<Handle, ScrapeError> {
        match &self.opts.runtime {
            Some(h) => Ok(h.clone()),
            None => Handle::try_current().map_err(|e| ScrapeError::NoRuntime(e.to_string())),
        }
    }

    /// Applies a (re)loaded configuration: new jobs start, removed jobs stop (their targets get
    /// staleness markers), changed jobs restart with their targets' caches, unchanged jobs are
    /// left alone (same targets, state and schedule).
    pub fn apply_config(&self, cfg: &PrometheusConfig) -> Result<(), ScrapeError> {
        let handle = self.handle()?;
        let mut st = self.state.lock();
        if st.stopped {
            return Err(ScrapeError::Stopped);
        }
        let wanted: HashMap<&str, &ScrapeConfig> = cfg
            .scrape_configs
            .iter()
            .map(|c| (c.job_name.as_str(), c))
            .collect();
        let mut handover: HashMap<String, Handover> = HashMap::new();
        let existing: Vec<String> = st.pools.keys().cloned().collect();
        for job in existing {
            let new = wanted.get(job.as_str()).copied();
            if let (Some(new), Some(pool)) = (new, st.pools.get_mut(&job)) {
                if *new == *pool.cfg {
                    continue;
                }
                if same_scrape_part(new, &pool.cfg) {
                    // Only discovery changed: running targets stay as they are and the new
                    // discovery result is reconciled against them.
                    pool.discovery.abort();
                    pool.cfg = Arc::new(new.clone());
                    pool.discovery =
                        handle.spawn(run_discovery(pool.shared.clone(), pool.cfg.clone()));
                    continue;
                }
            }
            let Some(pool) = st.pools.remove(&job) else {
                continue;
            };
            pool.discovery.abort();
            let replaced = new.is_some();
            let mut t = pool.shared.targets.lock();
            let mut h = Handover::new();
            for (_, mut a) in std::mem::take(&mut t.active) {
                a.stop(if replaced {
                    StopMode::Quiet
                } else {
                    StopMode::Stale
                });
                h.insert(a.target.hash(), (a.cache.clone(), a.status.clone()));
            }
            if replaced {
                handover.insert(job, h);
            }
        }
        for sc in &cfg.scrape_configs {
            if st.pools.contains_key(&sc.job_name) {
                continue;
            }
            let inherited = handover.remove(&sc.job_name).unwrap_or_default();
            let shared = Arc::new(PoolShared {
                cfg: Arc::new(sc.clone()),
                client: HttpClient::new(
                    &sc.http_client(),
                    sc.enable_compression,
                    sc.body_size_limit.map_or(0, |b| b.0),
                ),
                append_opts: append_options(sc),
                appendable: self.appendable.clone(),
                opts: self.opts.clone(),
                handle: handle.clone(),
                targets: Mutex::new(PoolTargets::default()),
                forced_error: Mutex::new(None),
                last_groups: Mutex::new(Vec::new()),
                inherited: Mutex::new(inherited),
            });
            let cfg = Arc::new(sc.clone());
            let discovery = handle.spawn(run_discovery(shared.clone(), cfg.clone()));
            st.pools.insert(
                sc.job_name.clone(),
                Pool {
                    shared,
                    cfg,
                    discovery,
                },
            );
        }
        st.order = cfg
            .scrape_configs
            .iter()
            .map(|c| c.job_name.clone())
            .collect();
        Ok(())
    }

    /// Stops every pool and waits for the loops to end. No staleness markers are written
    /// (as on a Prometheus shutdown). Further `apply_config` calls fail.
    pub async fn stop(&self) {
        let mut tasks = Vec::new();
        {
            let mut st = self.state.lock();
            st.stopped = true;
            for (_, pool) in st.pools.drain() {
                pool.discovery.abort();
                let mut t = pool.shared.targets.lock();
                for (_, mut a) in std::mem::take(&mut t.active) {
                    tasks.extend(a.stop(StopMode::Quiet));
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Re-applies [`ScrapeOptions::owns_target`] to the last discovered targets of every pool
    /// (call it when cluster membership changes): targets this node no longer owns stop with
    /// staleness markers, newly owned ones start.
    pub fn resync(&self) {
        let pools: Vec<Arc<PoolShared>> = self
            .state
            .lock()
            .pools
            .values()
            .map(|p| p.shared.clone())
            .collect();
        for shared in pools {
            let groups = shared.last_groups.lock().clone();
            sync(&shared, &groups);
        }
    }

    /// The data of `/api/v1/targets`, pools in config order, targets sorted by labels.
    pub fn targets(&self) -> TargetsSnapshot {
        let st = self.state.lock();
        let mut snap = TargetsSnapshot::default();
        for job in &st.order {
            let Some(pool) = st.pools.get(job) else {
                continue;
            };
            let t = pool.shared.targets.lock();
            let mut active: Vec<ActiveTargetInfo> = t
                .active
                .values()
                .map(|a| {
                    let s = a.status.lock().clone();
                    ActiveTargetInfo {
                        discovered_labels: a.target.discovered.clone(),
                        labels: a.target.target_labels(),
                        scrape_pool: job.clone(),
                        scrape_url: a.target.url.clone(),
                        global_url: global_url(&a.target.url, &self.opts.hostname),
                        last_error: s.last_error,
                        last_scrape: rfc3339(s.last_scrape),
                        last_scrape_duration: s.last_duration,
                        health: s.health,
                        scrape_interval: a.target.interval.to_string(),
                        scrape_timeout: a.target.timeout.to_string(),
                    }
                })
                .collect();
            active.sort_by(|a, b| a.labels.cmp(&b.labels));
            snap.active_targets.extend(active);
            snap.dropped_targets
                .extend(t.dropped.iter().map(|l| DroppedTargetInfo {
                    discovered_labels: l.clone(),
                    scrape_pool: job.clone(),
                }));
            snap.dropped_target_counts
                .insert(job.clone(), t.dropped_count);
        }
        snap
    }

    /// The data of `/api/v1/targets/metadata`: every target's metric metadata.
    pub fn metadata(&self) -> Vec<TargetMetadata> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for job in &st.order {
            let Some(pool) = st.pools.get(job) else {
                continue;
            };
            let t = pool.shared.targets.lock();
            for a in t.active.values() {
                let target = a.target.target_labels();
                let c = a.cache.lock();
                let mut m: Vec<TargetMetadata> = c
                    .metadata()
                    .map(|(name, m)| TargetMetadata {
                        target: target.clone(),
                        metric: name.to_string(),
                        kind: m.kind,
                        help: m.help.clone(),
                        unit: m.unit.clone(),
                    })
                    .collect();
                m.sort_by(|a, b| a.metric.cmp(&b.metric));
                out.extend(m);
            }
        }
        out
    }

    /// The data of `/api/v1/metadata`: metric name -> distinct metadata across targets.
    pub fn metadata_by_metric(&self) -> BTreeMap<String, Vec<Metadata>> {
        let mut out: BTreeMap<String, Vec<Metadata>> = BTreeMap::new();
        for m in self.metadata() {
            let md = Metadata {
                kind: m.kind,
                help: m.help,
                unit: m.unit,
            };
            let v = out.entry(m.metric).or_default();
            if !v.contains(&md) {
                v.push(md);
            }
        }
        out
    }
}

async fn run_discovery(shared: Arc<PoolShared>, cfg: Arc<ScrapeConfig>) {
    let statics = static_groups(&cfg.static_configs);
    let mut files: Vec<FileSd> = cfg
        .file_sd_configs
        .iter()
        .cloned()
        .map(FileSd::new)
        .collect();
    for f in &mut files {
        f.refresh();
    }
    let all = |files: &[FileSd]| {
        let mut g = statics.clone();
        for f in files {
            g.extend(f.groups());
        }
        g
    };
    sync(&shared, &all(&files));
    if files.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(shared.opts.file_sd_poll_interval).await;
        let mut changed = false;
        for f in &mut files {
            changed |= f.refresh();
        }
        if changed {
            sync(&shared, &all(&files));
        }
    }
}

/// Reconciles a pool's running loops with freshly discovered groups.
fn sync(shared: &Arc<PoolShared>, groups: &[TargetGroup]) {
    let cfg = &shared.cfg;
    groups.clone_into(&mut shared.last_groups.lock());
    let mut active: BTreeMap<u64, Target> = BTreeMap::new();
    let mut dropped = Vec::new();
    for g in groups {
        for t in &g.targets {
            match populate(cfg, t, &g.labels) {
                Ok(Populated::Active(t)) => {
                    active.insert(t.hash(), t);
                }
                Ok(Populated::Dropped(d)) => dropped.push(d),
                Err(e) => {
                    tracing::warn!(job = %cfg.job_name, source = %g.source, error = %e, "creating target failed")
                }
            }
        }
    }
    let limit = cfg.target_limit.unwrap_or(0);
    *shared.forced_error.lock() = (limit > 0 && active.len() as u64 > limit).then(|| {
        format!(
            "target_limit exceeded (number of targets: {}, limit: {limit})",
            active.len()
        )
    });
    if let Some(owns) = &shared.opts.owns_target {
        active.retain(|h, _| owns(&cfg.job_name, *h));
    }
    let mut t = shared.targets.lock();
    t.dropped_count = dropped.len();
    let keep = cfg.keep_dropped_targets.unwrap_or(0);
    if keep > 0 {
        dropped.truncate(keep as usize);
    }
    t.dropped = dropped;
    let gone: Vec<u64> = t
        .active
        .keys()
        .filter(|h| !active.contains_key(h))
        .copied()
        .collect();
    for h in gone {
        if let Some(mut a) = t.active.remove(&h) {
            a.stop(StopMode::Stale);
        }
    }
    for (h, target) in active {
        if let Some(a) = t.active.get_mut(&h) {
            if a.target.discovered != target.discovered {
                a.target = Arc::new(target);
            }
            continue;
        }
        let (cache, status) = shared.inherited.lock().remove(&h).unwrap_or_default();
        let target = Arc::new(target);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = shared.handle.spawn(run_loop(
            shared.clone(),
            target.clone(),
            status.clone(),
            cache.clone(),
            stop_rx,
        ));
        t.active.insert(
            h,
            ActiveTarget {
                target,
                status,
                cache,
                stop: Some(stop_tx),
                task: Some(task),
            },
        );
    }
}

struct Outcome {
    error: Option<String>,
    duration: f64,
}

/// One target's loop: tick at the stable offset, fetch, append on a blocking thread, report.
async fn run_loop(
    shared: Arc<PoolShared>,
    target: Arc<Target>,
    status: Arc<Mutex<TargetStatus>>,
    cache: Arc<Mutex<ScrapeCache>>,
    mut stop: oneshot::Receiver<StopMode>,
) {
    let interval = target.interval.to_std();
    let timeout = target.timeout.to_std();
    let first = if shared.opts.spread_offsets {
        offset(target.hash(), shared.opts.offset_seed, interval)
    } else {
        std::time::Duration::ZERO
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let target_labels = target.target_labels();
    let mut conn: Option<Connection> = None;
    loop {
        tokio::select! {
            biased;
            mode = &mut stop => {
                finish(&shared, &cache, mode.unwrap_or(StopMode::Quiet)).await;
                return;
            }
            _ = ticker.tick() => {}
        }
        let start = Instant::now();
        let start_wall = SystemTime::now();
        let ts = now_millis();
        let forced = shared.forced_error.lock().clone();
        let fetched = match forced {
            Some(e) => Err(e),
            None => {
                let fut = tokio::time::timeout(
                    timeout,
                    shared
                        .client
                        .fetch(&mut conn, &target.url, timeout.as_secs_f64()),
                );
                tokio::select! {
                    biased;
                    mode = &mut stop => {
                        finish(&shared, &cache, mode.unwrap_or(StopMode::Quiet)).await;
                        return;
                    }
                    r = fut => match r {
                        Ok(r) => r,
                        Err(_) => {
                            conn = None;
                            Err(format!("Get {:?}: context deadline exceeded (scrape_timeout {})", target.url, target.timeout))
                        }
                    },
                }
            }
        };
        let sh = shared.clone();
        let c = cache.clone();
        let tl = target_labels.clone();
        let out =
            tokio::task::spawn_blocking(move || append_scrape(&sh, &c, fetched, ts, &tl, start))
                .await;
        let out = out.unwrap_or_else(|e| Outcome {
            error: Some(format!("append task failed: {e}")),
            duration: 0.0,
        });
        let mut s = status.lock();
        s.health = if out.error.is_none() {
            Health::Up
        } else {
            Health::Down
        };
        s.last_error = out.error.unwrap_or_default();
        s.last_scrape = Some(start_wall);
        s.last_duration = out.duration;
    }
}

fn append_scrape(
    shared: &PoolShared,
    cache: &Mutex<ScrapeCache>,
    fetched: Result<crate::client::Fetched, String>,
    ts: i64,
    target_labels: &Labels,
    start: Instant,
) -> Outcome {
    let mut c = cache.lock();
    let mut app = shared.appendable.batching_appender();
    let limit = shared.cfg.body_size_limit.map_or(0, |b| b.0);
    let result: Result<ScrapeStats, (String, ScrapeStats)> = match fetched {
        Err(e) => Err((e, ScrapeStats::default())),
        Ok(f) => {
            let format = Format::from_content_type(&f.content_type);
            let body = if f.gzip {
                c.gunzip(&f.body, limit)
            } else {
                Ok(f.body)
            };
            match body {
                Err(e) => Err((e, ScrapeStats::default())),
                Ok(body) => {
                    let r = c
                        .append(
                            &mut *app,
                            &body,
                            format,
                            ts,
                            target_labels,
                            &shared.append_opts,
                        )
                        .map_err(|e| (e.msg, e.stats));
                    if f.gzip {
                        c.buf = body;
                    }
                    r
                }
            }
        }
    };
    let (up, stats, mut error) = match result {
        Ok(s) => (true, s, None),
        Err((e, s)) => {
            let _ = app.rollback();
            app = shared.appendable.batching_appender();
            c.append_failed(&mut *app, ts);
            (false, ScrapeStats { added: 0, ..s }, Some(e))
        }
    };
    let duration = start.elapsed().as_secs_f64();
    if let Err(e) = c.report(&mut *app, target_labels, ts, up, duration, stats) {
        error.get_or_insert(format!("appending report series: {e}"));
    }
    if let Err(e) = app.commit() {
        error.get_or_insert(format!("committing scrape: {e}"));
    }
    if let Some(e) = &error {
        tracing::debug!(job = %shared.cfg.job_name, target = %target_labels, error = %e, "scrape failed");
    }
    Outcome { error, duration }
}

async fn finish(shared: &Arc<PoolShared>, cache: &Arc<Mutex<ScrapeCache>>, mode: StopMode) {
    if mode != StopMode::Stale {
        return;
    }
    let sh = shared.clone();
    let c = cache.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut c = c.lock();
        let mut app = sh.appendable.batching_appender();
        c.stale_all(&mut *app, now_millis());
        if let Err(e) = app.commit() {
            tracing::warn!(job = %sh.cfg.job_name, error = %e, "writing staleness markers failed");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_and_within_interval() {
        let iv = std::time::Duration::from_secs(10);
        for h in [0u64, 1, 12345, u64::MAX] {
            let o = offset(h, 7, iv);
            assert!(o <= iv, "{o:?}");
        }
        assert_eq!(
            global_url("http://127.0.0.1:9100/metrics", "box"),
            "http://box:9100/metrics"
        );
        assert_eq!(
            global_url("http://node:9100/metrics", "box"),
            "http://node:9100/metrics"
        );
        assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
    }
}
