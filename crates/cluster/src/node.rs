//! A cluster node: the shard groups it hosts, the gRPC service, write routing, read fan-out,
//! peer liveness and status.
//!
//! Shard map (the same on every node): with the cluster's node ids sorted, shard `s` is
//! replicated on nodes `ids[(s + k) % n]` for `k < replication_factor`, and `ids[s % n]` is its
//! preferred leader, so leaders (and writes) spread over the nodes.
//!
//! The node set lives in the **metadata group** (Raft group [`META_GROUP`], hosted by every
//! node: the first nodes as voters, nodes added later as learners): its Raft membership is the
//! cluster's membership, with each added node's address. `add-node`/`remove-node` change it;
//! then every node reconciles ([`Node::reconcile`], each second): it opens the shards the map
//! gives it, the leader of each shard moves its replicas to the map's (new replicas join as
//! learners, catch up from the log or a snapshot, then one joint-consensus membership change
//! swaps the voters), and a node drops a shard's data once that shard's committed membership
//! no longer has it. The number of shards is fixed at cluster creation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use parking_lot::Mutex;
use tidemark_model::{Labels, MatchType, Matcher};
use tidemark_storage::{DownsampleAggregate, Queryable, ResolutionQueryable};
use tidemark_tsdb::chunk::ChunkEncoder;
use tidemark_tsdb::{Db, DbOptions};
use tonic::{Request, Response, Status};

use crate::log_store::LogStore;
use crate::network::{AddressBook, Clients, MAX_MESSAGE_BYTES, NetworkFactory};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::read_index::ReadIndexClients;
use crate::state_machine::{ShardData, StateMachine};
use crate::types::{ApplyResult, Batch, NodeId, Raft, decode, encode};
use tonic::transport::Channel;

/// Id of the metadata group (its membership is the cluster's node set).
pub const META_GROUP: u32 = u32::MAX;

/// File in the data directory of a node removed from its cluster: it refuses to start again.
const REMOVED_MARKER: &str = "REMOVED";

/// Samples per chunk in select replies.
const CHUNK_SAMPLES: usize = 240;

/// At the creation of a cluster, how long a shard's replicas other than its preferred leader
/// wait before initializing the shard's group themselves (if no leader reached them).
const DEFERRED_INITIALIZE: Duration = Duration::from_secs(2);

/// Preferred leaders campaign at start every this many milliseconds while their shard has no
/// leader, at most [`PREFERRED_CAMPAIGNS`] times.
const PREFERRED_CAMPAIGN_EVERY_MS: u64 = 250;
const PREFERRED_CAMPAIGNS: u32 = 20;

/// Leader balance: no handover within this long of the last one from the same node...
const BALANCE_PAUSE: Duration = Duration::from_secs(3);
/// ...nor of the same shard within this long...
const BALANCE_SHARD_PAUSE: Duration = Duration::from_secs(10);
/// ...nor of a shard this node has led for less than this (longer than openraft's leader
/// lease, the maximum election timeout, so that this node grants the new leader its vote).
const BALANCE_LED_FOR: Duration = Duration::from_secs(5);
/// Leader balance: log entries a voter may lag behind and still be chosen (it must catch up
/// fully before it campaigns).
const BALANCE_MAX_LAG: u64 = 256;

/// Options of a cluster node.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: NodeId,
    /// Address the gRPC service listens on.
    pub listen: SocketAddr,
    /// Every node of the cluster (this one included): id -> host:port of its gRPC service.
    pub peers: BTreeMap<NodeId, String>,
    pub num_shards: u32,
    pub replication_factor: usize,
    /// Directory holding `shards/<n>/`.
    pub data_dir: PathBuf,
    /// Options of each shard's Db.
    pub db: DbOptions,
    /// A snapshot is built after this many log entries (then the log is purged behind it).
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (so briefly absent replicas catch up from the
    /// log rather than a snapshot).
    pub keep_entries_after_snapshot: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// How long a write waits for a leader and a quorum before failing as unavailable.
    pub write_timeout: Duration,
    /// How long a read waits for a leader before failing.
    pub read_timeout: Duration,
    /// Join an existing cluster (`tidemark cluster add-node` adds this node): initialize
    /// nothing, wait to be added.
    pub join: bool,
    /// Reads a follower may answer from its own replica without asking the leader: `None`
    /// (the default) keeps every read linearizable; `Some(d)` lets a follower read in place
    /// when, within the last `d`, its leader's append (or heartbeat) reached it and it has
    /// applied what the leader had committed then — so the data is at most about `d` old.
    pub stale_reads: Option<Duration>,
    /// Scrape writes ([`Node::write_batched`]) to one shard that arrive within this time of
    /// the first are written as one Raft entry.
    pub write_batch_window: Duration,
}

impl ClusterOptions {
    /// Defaults for everything but identity and addresses.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, String>,
        data_dir: PathBuf,
    ) -> ClusterOptions {
        ClusterOptions {
            node_id,
            listen,
            peers,
            num_shards: 8,
            replication_factor: 3,
            data_dir,
            db: DbOptions::default(),
            snapshot_after_entries: 50_000,
            keep_entries_after_snapshot: 5_000,
            heartbeat_ms: 200,
            election_timeout_ms: (1000, 2000),
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            join: false,
            stale_reads: None,
            write_batch_window: Duration::from_millis(200),
        }
    }
}

/// The replicas of `shard` (first: the preferred leader).
pub fn shard_replicas(ids: &[NodeId], shard: u32, rf: usize) -> Vec<NodeId> {
    let n = ids.len();
    if n == 0 {
        return Vec::new();
    }
    (0..rf.min(n))
        .map(|k| ids[(shard as usize + k) % n])
        .collect()
}

/// The shard of a series: `stable_hash(labels) % num_shards`.
pub fn shard_of(labels: &Labels, num_shards: u32) -> u32 {
    (labels.stable_hash() % u64::from(num_shards.max(1))) as u32
}

/// Errors of cluster operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No leader or no quorum within the timeout (HTTP 503).
    #[error("shard {shard} unavailable: {reason}")]
    Unavailable { shard: u32, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

impl From<ClusterError> for tidemark_storage::Error {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Unavailable { .. } => tidemark_storage::Error::Unavailable(e.to_string()),
            ClusterError::Invalid(s) => tidemark_storage::Error::InvalidLabels(s),
            ClusterError::Other(s) => tidemark_storage::Error::Other(s),
        }
    }
}

/// The sum of per-shard write results: Ok only when every shard acknowledged.
fn sum_results(
    results: Vec<Result<ApplyResult, ClusterError>>,
) -> Result<ApplyResult, ClusterError> {
    let mut total = ApplyResult::default();
    let mut err = None;
    for r in results {
        match r {
            Ok(r) => {
                total.accepted += r.accepted;
                total.rejected += r.rejected;
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
            }
            Err(e) => {
                if err.is_none() {
                    err = Some(e);
                }
            }
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Bytes of samples a batcher gathers into one entry at most.
const MAX_BATCHED_BYTES: usize = 4 << 20;

/// Shard `s`'s batcher ([`Node::write_batched`]): takes the first waiting write, gathers the
/// writes that arrive within the window after it (or until the entry is full), writes them as
/// one entry and answers each with the entry's result. One entry at a time: writes arriving
/// meanwhile form the next. Ends when the node drops its queue (shutdown) or is gone.
async fn run_batcher(
    node: std::sync::Weak<Node>,
    s: u32,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Batched>,
) {
    while let Some(first) = rx.recv().await {
        let Some(window) = node.upgrade().map(|n| n.opts.write_batch_window) else {
            return;
        };
        let until = tokio::time::Instant::now() + window;
        let mut bytes = first.0.len();
        let mut waiting = vec![first];
        while bytes < MAX_BATCHED_BYTES {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(w)) => {
                    bytes += w.0.len();
                    waiting.push(w);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let parts: Vec<&[u8]> = waiting.iter().map(|w| w.0.as_slice()).collect();
        let res = match crate::batch::concat(&parts) {
            Ok(b) => node.write_shard(s, b).await,
            Err(e) => Err(ClusterError::Invalid(e.to_string())),
        };
        node.queued
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        node.batched_done(s, &res);
        drop(node);
        for (_, tx) in waiting {
            let _ = tx.send(res.clone());
        }
    }
}

/// One shard group hosted here.
#[derive(Clone)]
pub struct Shard {
    pub id: u32,
    pub raft: Raft,
    pub data: Arc<ShardData>,
    pub log: LogStore,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

/// A series read from a shard.
#[derive(Debug, Clone)]
pub struct ShardSeries {
    pub labels: Labels,
    pub samples: Vec<tidemark_model::Sample>,
}

/// Which data a select reads: raw (`None`) or one aggregate of one downsampled resolution.
pub type ReadSource = Option<(i64, DownsampleAggregate)>;

/// Write figures (exposed in /metrics).
#[derive(Debug, Default)]
pub struct WriteStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub samples_accepted: std::sync::atomic::AtomicU64,
    pub samples_rejected: std::sync::atomic::AtomicU64,
    pub forwarded: std::sync::atomic::AtomicU64,
    pub unavailable: std::sync::atomic::AtomicU64,
    /// Shard reads a follower answered from its own replica without the leader
    /// ([`ClusterOptions::stale_reads`]).
    pub stale_reads: std::sync::atomic::AtomicU64,
    /// Queued scrape writes ([`Node::write_batched`]) that failed.
    pub batched_failed: std::sync::atomic::AtomicU64,
}

/// A running cluster node.
#[derive(Debug)]
pub struct Node {
    opts: ClusterOptions,
    /// Shard groups hosted here (changes as replicas move).
    shards: parking_lot::RwLock<HashMap<u32, Shard>>,
    /// The metadata group.
    meta: Shard,
    book: AddressBook,
    raft_config: Arc<Config>,
    /// Shards whose replicas this node (their leader) is moving.
    moving: Mutex<BTreeSet<u32>>,
    /// Leader balance: the leadership this node is handing over (shard -> new leader). While
    /// present, this node proposes no writes to the shard and serves no lease reads of it.
    transfers: Mutex<HashMap<u32, NodeId>>,
    /// Leader balance: when each shard's leadership was last handed over from here, and when
    /// this node last handed over any.
    transferred: Mutex<(HashMap<u32, Instant>, Option<Instant>)>,
    /// Since when this node leads each shard it leads (term, first seen), by reconciliation.
    leader_since: Mutex<HashMap<u32, (u64, Instant)>>,
    /// The last status each peer answered a probe with, and when.
    peer_status: Mutex<HashMap<NodeId, (Instant, pb::StatusReply)>>,
    clients: Clients,
    /// Connections to the other nodes' read-index service (not gRPC: see `read_index.rs`).
    read_clients: ReadIndexClients,
    /// Leader per shard as last learned (for shards not hosted here, and as a hint).
    leader_hint: Mutex<HashMap<u32, NodeId>>,
    /// Last successful contact with each peer.
    seen: Mutex<HashMap<NodeId, Instant>>,
    started: Instant,
    pub stats: WriteStats,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Per shard, the queue of scrape writes that [`Node::write_batched`] gathers into entries.
    batchers: Mutex<HashMap<u32, tokio::sync::mpsc::UnboundedSender<Batched>>>,
    /// Bytes of the writes queued by [`Node::write_batched`] and not yet written.
    queued: std::sync::atomic::AtomicUsize,
}

/// Bytes of queued writes ([`Node::write_batched`]) above which a writer waits for its own.
const MAX_QUEUED_BYTES: usize = 16 << 20;

/// A write waiting in a shard's batcher: its sample batch and where its result goes.
type Batched = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<ApplyResult, ClusterError>>,
);

impl Node {
    /// Opens the shards hosted here, starts their Raft groups and the gRPC service.
    pub async fn start(opts: ClusterOptions) -> Result<Arc<Node>, ClusterError> {
        let ids: Vec<NodeId> = opts.peers.keys().copied().collect();
        if !opts.peers.contains_key(&opts.node_id) {
            return Err(ClusterError::Invalid(format!(
                "node id {} is not among the peers {:?}",
                opts.node_id, ids
            )));
        }
        if opts.data_dir.join(REMOVED_MARKER).exists() {
            return Err(ClusterError::Invalid(format!(
                "this node was removed from its cluster (remove {} to start it afresh, as a new node)",
                opts.data_dir.display()
            )));
        }
        let config = Config {
            cluster_name: "tidemark".into(),
            heartbeat_interval: opts.heartbeat_ms,
            election_timeout_min: opts.election_timeout_ms.0,
            election_timeout_max: opts.election_timeout_ms.1,
            install_snapshot_timeout: 60_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_after_entries),
            max_in_snapshot_log_to_keep: opts.keep_entries_after_snapshot,
            // Purge in batches, but never wait for more than a quarter of a snapshot interval.
            purge_batch_size: (opts.snapshot_after_entries / 4).clamp(1, 256),
            max_payload_entries: 64,
            ..Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Invalid(format!("raft config: {e}")))?,
        );
        let clients = Clients::new();
        let book: AddressBook = Arc::new(parking_lot::RwLock::new(opts.peers.clone()));
        let meta = open_group(
            &opts,
            &config,
            &clients,
            &book,
            META_GROUP,
            &opts.data_dir.join("meta"),
        )
        .await?;
        let meta_initialized = meta
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Other(format!("metadata group: {e}")))?;
        // The node set: the metadata group's membership once it has one, else the peers.
        let initial =
            !opts.join && (!meta_initialized || group_nodes(&meta).keys().eq(opts.peers.keys()));
        let mut shards = HashMap::new();
        // Shards on disk (whatever the map says now: the reconciler drops what moved away)...
        let shards_dir = opts.data_dir.join("shards");
        if let Ok(rd) = std::fs::read_dir(&shards_dir) {
            for e in rd.flatten() {
                if let Some(s) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                    && s < opts.num_shards
                {
                    let sh = open_group(&opts, &config, &clients, &book, s, &e.path()).await?;
                    shards.insert(s, sh);
                }
            }
        }
        // ...and, while the node set is still the initial one, the shards the initial map gives
        // this node (created and initialized below).
        if initial {
            for s in 0..opts.num_shards {
                if shards.contains_key(&s)
                    || !shard_replicas(&ids, s, opts.replication_factor).contains(&opts.node_id)
                {
                    continue;
                }
                let dir = shards_dir.join(s.to_string());
                shards.insert(
                    s,
                    open_group(&opts, &config, &clients, &book, s, &dir).await?,
                );
            }
        }
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let node = Arc::new(Node {
            shards: parking_lot::RwLock::new(shards),
            meta,
            book,
            raft_config: config,
            moving: Mutex::new(BTreeSet::new()),
            transfers: Mutex::new(HashMap::new()),
            transferred: Mutex::new((HashMap::new(), None)),
            leader_since: Mutex::new(HashMap::new()),
            peer_status: Mutex::new(HashMap::new()),
            clients,
            read_clients: ReadIndexClients::new(),
            leader_hint: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            stats: WriteStats::default(),
            shutdown,
            batchers: Mutex::new(HashMap::new()),
            queued: std::sync::atomic::AtomicUsize::new(0),
            opts,
        });
        node.serve().await?;
        // Every initial node initializes the groups with the same membership (openraft accepts
        // identical initial memberships on every node; on later starts this is a no-op).
        // Initializing makes a node campaign at once, so a shard's other replicas wait
        // (`DEFERRED_INITIALIZE`) and initialize only if they have not heard from a leader by
        // then: the preferred leader's campaign comes first and leaders spread from the start
        // (when every replica campaigned at once, whichever node won the race led every
        // shard, and leader balance handed shards over under the first writes).
        if initial {
            let mut groups = vec![(node.meta.clone(), ids.clone(), false)];
            for sh in node.hosted() {
                let members = node.replicas(sh.id);
                let defer = members.first() != Some(&node.opts.node_id);
                groups.push((sh.clone(), members, defer));
            }
            for (sh, members, defer) in groups {
                let members: BTreeMap<NodeId, BasicNode> = members
                    .iter()
                    // Identical on every replica (addresses are per node, see NetworkFactory).
                    .map(|id| (*id, BasicNode::new(format!("node-{id}"))))
                    .collect();
                match sh.raft.is_initialized().await {
                    Ok(false) if defer => {
                        tokio::spawn(async move {
                            tokio::time::sleep(DEFERRED_INITIALIZE).await;
                            if let Ok(false) = sh.raft.is_initialized().await
                                && let Err(e) = sh.raft.initialize(members).await
                            {
                                tracing::debug!(shard = sh.id, error = %e, "initialize");
                            }
                        });
                    }
                    Ok(false) => {
                        if let Err(e) = sh.raft.initialize(members).await {
                            tracing::debug!(shard = sh.id, error = %e, "initialize");
                        }
                    }
                    Ok(true) => {}
                    Err(e) => return Err(ClusterError::Other(format!("shard {}: {e}", sh.id))),
                }
            }
        }
        node.clone().spawn_background();
        tracing::info!(
            node = node.opts.node_id,
            shards = node.shards.read().len(),
            join = node.opts.join,
            "cluster node started"
        );
        Ok(node)
    }

    /// Clones of the shard groups hosted here.
    pub fn hosted(&self) -> Vec<Shard> {
        let mut v: Vec<Shard> = self.shards.read().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The cluster's nodes and their addresses (this node's peer list first, then the
    /// addresses the metadata group recorded for nodes added later).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let nodes = group_nodes(&self.meta);
        if nodes.is_empty() {
            return self.opts.peers.clone();
        }
        let book = self.book.read();
        nodes
            .into_iter()
            .map(|(id, addr)| (id, book.get(&id).cloned().unwrap_or(addr)))
            .collect()
    }

    /// The replicas shard `s` should have under the current node set (first: the preferred
    /// leader).
    pub fn replicas(&self, s: u32) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.members().keys().copied().collect();
        shard_replicas(&ids, s, self.opts.replication_factor)
    }

    pub(crate) fn addr_of(&self, id: NodeId) -> String {
        self.book.read().get(&id).cloned().unwrap_or_default()
    }

    pub fn id(&self) -> NodeId {
        self.opts.node_id
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    pub fn num_shards(&self) -> u32 {
        self.opts.num_shards
    }

    /// The shard group `s` (or the metadata group) when hosted here.
    pub fn shard(&self, s: u32) -> Option<Shard> {
        if s == META_GROUP {
            return Some(self.meta.clone());
        }
        self.shards.read().get(&s).cloned()
    }

    /// The cluster's node ids, sorted.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.members().keys().copied().collect()
    }

    async fn serve(self: &Arc<Node>) -> Result<(), ClusterError> {
        let listener = tokio::net::TcpListener::bind(self.opts.listen)
            .await
            .map_err(|e| {
                ClusterError::Other(format!("cluster listen {}: {e}", self.opts.listen))
            })?;
        let svc = pb::cluster_server::ClusterServer::new(Service {
            node: Arc::downgrade(self),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut rx = self.shutdown.subscribe();
        let incoming = sniff_connections(listener, Arc::downgrade(self), self.shutdown.subscribe());
        tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "cluster gRPC server failed");
            }
        });
        Ok(())
    }

    /// Runs `f` every `period` until shutdown (or until the node is dropped).
    fn every<F, Fut>(self: &Arc<Node>, period: Duration, f: F)
    where
        F: Fn(Arc<Node>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(self);
        let mut rx = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|v| *v) => return,
                }
                let Some(node) = weak.upgrade() else { return };
                f(node).await;
            }
        });
    }

    fn spawn_background(self: Arc<Node>) {
        // Peer liveness: a Status call to every peer twice a second.
        self.every(Duration::from_millis(500), |node| async move {
            node.probe_peers().await
        });
        // Reconciliation with the shard map (module docs).
        self.every(Duration::from_secs(1), |node| async move {
            node.reconcile().await
        });
        // Preferred leaders: at start, a replica that is its shard's preferred leader campaigns
        // before the election timeout while no leader is known, so leaders spread over the
        // nodes from the start (instead of being handed over by leader balance later, under
        // load). It campaigns again every 250 ms for the first 5 s while the shard has no
        // leader: the peers of a cluster started at once come up within that window, and a
        // campaign they could not hear is lost. It never disrupts a known leader (that would
        // cause election churn).
        let weak = Arc::downgrade(&self);
        tokio::spawn(async move {
            for _ in 0..PREFERRED_CAMPAIGNS {
                tokio::time::sleep(Duration::from_millis(PREFERRED_CAMPAIGN_EVERY_MS)).await;
                let Some(node) = weak.upgrade() else { return };
                let mut leaderless = false;
                for sh in node.hosted() {
                    if node.replicas(sh.id).first() != Some(&node.opts.node_id) {
                        continue;
                    }
                    let leader = sh.raft.metrics().borrow().current_leader;
                    if leader.is_none() {
                        // Also when a campaign of ours is running: on loopback or a LAN it
                        // takes milliseconds, so one still leaderless after 250 ms asked peers
                        // that were not up yet.
                        leaderless = true;
                        let _ = sh.raft.trigger().elect().await;
                    }
                }
                if !leaderless {
                    return;
                }
            }
        });
    }

    async fn probe_peers(&self) {
        let futs = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.opts.node_id)
            .map(|(id, addr)| {
                let clients = self.clients.clone();
                async move {
                    let Ok(mut c) = clients.get(id, &addr) else {
                        return (id, None);
                    };
                    let mut r = Request::new(pb::StatusRequest { checksums: false });
                    r.set_timeout(Duration::from_millis(800));
                    (id, c.status(r).await.ok().map(|r| r.into_inner()))
                }
            });
        let res = futures::future::join_all(futs).await;
        let now = Instant::now();
        let mut g = self.seen.lock();
        let mut peers = self.peer_status.lock();
        for (id, st) in res {
            if let Some(st) = st {
                g.insert(id, now);
                peers.insert(id, (now, st));
            }
        }
    }

    /// The node set of the newest metadata-group membership known here: this node's, or the
    /// one a peer leading the metadata group reports, if newer. (A node removed from the
    /// cluster may never receive the final membership; as leader of a shard it still has to
    /// move that shard's replicas to the nodes that remain.)
    fn newest_nodes(&self) -> BTreeMap<NodeId, String> {
        let local_index = self
            .meta
            .raft
            .metrics()
            .borrow()
            .membership_config
            .log_id()
            .map_or(-1, |l| l.index as i64);
        let mut best = (local_index, group_nodes(&self.meta));
        for st in self.fresh_peer_statuses() {
            if let Some(m) = &st.meta
                && m.leader == st.node_id
                && m.membership_index > best.0
            {
                best = (
                    m.membership_index,
                    st.nodes.iter().map(|n| (n.id, n.address.clone())).collect(),
                );
            }
        }
        best.1
    }

    /// Peers' statuses from the last 2 seconds of probes.
    fn fresh_peer_statuses(&self) -> Vec<pb::StatusReply> {
        let now = Instant::now();
        self.peer_status
            .lock()
            .values()
            .filter(|(t, _)| now.duration_since(*t) < Duration::from_secs(2))
            .map(|(_, st)| st.clone())
            .collect()
    }

    /// Whether some peer that leads group `group` (a shard, or [`META_GROUP`]) reports a
    /// committed membership without this node. A removed replica may never receive the entry
    /// that removes it (the leader stops replicating to it), so it learns this from its peers.
    fn removed_from(&self, group: u32) -> bool {
        let me = self.opts.node_id;
        self.fresh_peer_statuses().iter().any(|st| {
            let g = if group == META_GROUP {
                st.meta.as_ref()
            } else {
                st.shards.iter().find(|x| x.shard == group)
            };
            g.is_some_and(|g| {
                g.leader == st.node_id
                    && !g.voters.contains(&me)
                    && !g.learners.contains(&me)
                    && g.membership_index >= 0
                    && g.last_applied >= g.membership_index
            })
        })
    }

    /// Nodes seen in the last 2 seconds (this one always), sorted.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        let ids = self.node_ids();
        let g = self.seen.lock();
        let now = Instant::now();
        ids.into_iter()
            .filter(|id| {
                *id == self.opts.node_id
                    || g.get(id).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(2))
                    // Before the first probes answer, assume everyone is up.
                    || (now.duration_since(self.started) < Duration::from_secs(2) && !g.contains_key(id))
            })
            .collect()
    }

    /// Whether this node owns `key` among the live nodes (rendezvous hashing): used to spread
    /// scrape targets and rule groups.
    pub fn owns(&self, key: u64) -> bool {
        let live = self.live_nodes();
        let best = live.iter().copied().max_by_key(|id| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&key.to_le_bytes());
            b[8..].copy_from_slice(&id.to_le_bytes());
            xxhash_rust::xxh3::xxh3_64(&b)
        });
        best == Some(self.opts.node_id)
    }

    fn leader_of(&self, s: u32) -> Option<NodeId> {
        if let Some(sh) = self.shard(s)
            && let Some(l) = sh.raft.metrics().borrow().current_leader
        {
            return Some(l);
        }
        self.leader_hint.lock().get(&s).copied()
    }

    /// The leader to try for shard `s`: the known one, else the replicas in turn.
    fn leader_guess(&self, s: u32, attempt: u32) -> Option<NodeId> {
        self.leader_of(s).or_else(|| {
            let r = self.replicas(s);
            r.get(attempt as usize % r.len().max(1)).copied()
        })
    }

    pub(crate) fn set_hint(&self, s: u32, leader: Option<NodeId>) {
        let mut g = self.leader_hint.lock();
        match leader {
            Some(l) if l != 0 => {
                g.insert(s, l);
            }
            _ => {
                g.remove(&s);
            }
        }
    }

    /// Writes one batch to shard `s` through its leader, waiting for a quorum. Retries through
    /// leader changes until `write_timeout`; never reports success unless the leader committed.
    pub async fn write_shard(&self, s: u32, batch: Vec<u8>) -> Result<ApplyResult, ClusterError> {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = bytes::Bytes::from(batch);
        let deadline = Instant::now() + self.opts.write_timeout;
        let mut last_err = String::from("no leader known");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if attempt > 1 {
                if Instant::now() >= deadline {
                    self.stats.unavailable.fetch_add(1, Relaxed);
                    return Err(ClusterError::Unavailable {
                        shard: s,
                        reason: last_err,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(6)))).await;
            }
            let leader = self.leader_guess(s, attempt);
            let Some(leader) = leader else { continue };
            if leader == self.opts.node_id {
                // A leader cut off from its quorum never commits: bound the wait.
                let left = deadline.saturating_duration_since(Instant::now());
                let res = match tokio::time::timeout(left, self.local_write(s, batch.clone())).await
                {
                    Ok(r) => r,
                    Err(_) => Err((None, "no quorum acknowledged the write in time".to_string())),
                };
                match res {
                    Ok(r) => {
                        self.stats.batches.fetch_add(1, Relaxed);
                        self.stats.samples_accepted.fetch_add(r.accepted, Relaxed);
                        self.stats.samples_rejected.fetch_add(r.rejected, Relaxed);
                        return Ok(r);
                    }
                    Err((hint, e)) => {
                        self.set_hint(s, hint);
                        last_err = e;
                    }
                }
                continue;
            }
            let Ok(mut c) = self.clients.get(leader, &self.addr_of(leader)) else {
                continue;
            };
            let mut r = Request::new(pb::WriteRequest {
                shard: s,
                batch: batch.to_vec(),
            });
            r.set_timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100)),
            );
            self.stats.forwarded.fetch_add(1, Relaxed);
            match c.write(r).await {
                Ok(rep) => {
                    let rep = rep.into_inner();
                    match pb::WriteStatus::try_from(rep.status) {
                        Ok(pb::WriteStatus::WriteOk) => {
                            let r = ApplyResult {
                                accepted: rep.accepted,
                                rejected: rep.rejected,
                                first_error: (!rep.error.is_empty()).then_some(rep.error),
                            };
                            self.stats.batches.fetch_add(1, Relaxed);
                            self.stats.samples_accepted.fetch_add(r.accepted, Relaxed);
                            self.stats.samples_rejected.fetch_add(r.rejected, Relaxed);
                            return Ok(r);
                        }
                        Ok(pb::WriteStatus::NotLeader) => {
                            self.set_hint(s, Some(rep.leader));
                            last_err = format!("node {leader} is not the leader");
                        }
                        Ok(pb::WriteStatus::Invalid) => {
                            return Err(ClusterError::Invalid(rep.error));
                        }
                        _ => {
                            last_err = rep.error;
                        }
                    }
                }
                Err(st) => {
                    self.set_hint(s, None);
                    last_err = format!("node {leader}: {}", st.message());
                }
            }
        }
    }

    /// Proposes a batch on this node's replica of shard `s`. Err: (leader hint, reason).
    async fn local_write(
        &self,
        s: u32,
        batch: bytes::Bytes,
    ) -> Result<ApplyResult, (Option<NodeId>, String)> {
        let Some(sh) = self.shard(s) else {
            return Err((
                None,
                format!("shard {s} is not hosted on node {}", self.opts.node_id),
            ));
        };
        if let Some(to) = self.transfers.lock().get(&s) {
            // Leader balance: nothing new goes into this leader's log until the handover
            // ends, so the new leader's log has all of it when it campaigns.
            return Err((Some(*to), format!("leadership is moving to node {to}")));
        }
        match sh.raft.client_write(Batch(batch)).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err((f.leader_id, "not the leader".into()))
            }
            Err(e) => Err((None, e.to_string())),
        }
    }

    /// Writes batches to their shards in parallel. Ok only when every shard acknowledged.
    pub async fn write(&self, batches: Vec<(u32, Vec<u8>)>) -> Result<ApplyResult, ClusterError> {
        let futs = batches.into_iter().map(|(s, b)| self.write_shard(s, b));
        sum_results(futures::future::join_all(futs).await)
    }

    /// Writes for scrapes: queues the batches and returns. Each shard's sample batches that
    /// arrive within `write_batch_window` of the first are written as one Raft entry (a
    /// shard's Raft round, log write, fsync and apply then serve many scrapes instead of one),
    /// other payloads (metadata, exemplars) on their own. Nothing waits for them: a write
    /// that fails is logged and counted (`batched_failed`). While more than
    /// [`MAX_QUEUED_BYTES`] wait in the queues (the shards cannot keep up), this waits for
    /// its own writes instead, so the queues stay bounded.
    pub async fn write_batched(self: &Arc<Self>, batches: Vec<(u32, Vec<u8>)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
        let wait = self.queued.load(Relaxed) > MAX_QUEUED_BYTES;
        let mut answers = Vec::new();
        for (s, b) in batches {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.queued.fetch_add(b.len(), Relaxed);
            if crate::batch::is_samples(&b) {
                let sent = match self.batcher(s) {
                    Some(q) => q.send((b, tx)).map_err(|e| e.0.0.len()),
                    None => Err(b.len()),
                };
                if let Err(n) = sent {
                    // Shutting down: nothing is written any more.
                    self.queued.fetch_sub(n, Relaxed);
                }
            } else {
                let node = self.clone();
                tokio::spawn(async move {
                    let n = b.len();
                    let res = node.write_shard(s, b).await;
                    node.queued.fetch_sub(n, Relaxed);
                    node.batched_done(s, &res);
                    let _ = tx.send(res);
                });
            }
            answers.push(rx);
        }
        if wait {
            tracing::debug!(bytes, "write queues full: waiting for the writes");
            for rx in answers {
                let _ = rx.await;
            }
        }
    }

    /// Logs and counts the failure of a queued write.
    fn batched_done(&self, s: u32, res: &Result<ApplyResult, ClusterError>) {
        if let Err(e) = res {
            self.stats
                .batched_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(shard = s, error = %e, "queued scrape write failed");
        }
    }

    /// The queue of shard `s`'s batcher, starting the batcher on first use (`None` once the
    /// node is shutting down).
    fn batcher(self: &Arc<Self>, s: u32) -> Option<tokio::sync::mpsc::UnboundedSender<Batched>> {
        let mut g = self.batchers.lock();
        if let Some(tx) = g.get(&s) {
            return Some(tx.clone());
        }
        if *self.shutdown.borrow() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        g.insert(s, tx.clone());
        tokio::spawn(run_batcher(Arc::downgrade(self), s, rx));
        Some(tx)
    }

    /// Runs an admin command on every shard through its log (every replica applies it at the
    /// same point); returns once every shard's leader applied it.
    pub async fn run_command(&self, cmd: &crate::batch::Command) -> Result<(), ClusterError> {
        let payload = cmd
            .encode()
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let batches = (0..self.opts.num_shards)
            .map(|s| (s, payload.clone()))
            .collect();
        self.write(batches).await.map(|_| ())
    }

    /// Waits until this replica may serve linearizable reads of shard `s` (it is the leader
    /// and has applied everything committed before the read). Err: (leader hint, reason).
    async fn ensure_readable(&self, sh: &Shard) -> Result<Db, (Option<NodeId>, String)> {
        // Lease read: a leader that heard from a quorum less than half the minimum election
        // timeout ago cannot have been replaced (no follower campaigns before its election
        // timeout passes without a heartbeat), and when it has applied its whole log (including
        // the blank entry of its own term) every acknowledged write is visible here. Otherwise
        // confirm leadership with a read-index round (ensure_linearizable).
        if self.leased_applied(sh).is_some() {
            return sh
                .data
                .db()
                .ok_or_else(|| (None, "shard data is being replaced".to_string()));
        }
        match sh.raft.ensure_linearizable().await {
            Ok(_) => {}
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                return Err((f.leader_id, "not the leader".into()));
            }
            Err(e) => return Err((None, e.to_string())),
        }
        sh.data
            .db()
            .ok_or_else(|| (None, "shard data is being replaced".to_string()))
    }

    /// The read index this leader hands out for shard `sh` (Raft's ReadIndex): an index every
    /// write acknowledged so far is at or below. Under the lease (see [`Node::ensure_readable`])
    /// that is the applied index; otherwise leadership is confirmed by a heartbeat round.
    async fn read_index(&self, sh: &Shard) -> Result<u64, (Option<NodeId>, String)> {
        if let Some(i) = self.leased_applied(sh) {
            return Ok(i);
        }
        match sh.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err((f.leader_id, "not the leader".into()))
            }
            Err(e) => Err((None, e.to_string())),
        }
    }

    /// The applied index when this node leads `sh` under a valid lease with its whole log
    /// applied; `None` otherwise.
    fn leased_applied(&self, sh: &Shard) -> Option<u64> {
        if self.transfers.lock().contains_key(&sh.id) {
            // Handing leadership over: the new leader may win at any moment.
            return None;
        }
        let lease_ms = self.opts.election_timeout_ms.0 / 2;
        let m = sh.raft.metrics();
        let m = m.borrow();
        let ok = m.state == openraft::ServerState::Leader
            && m.current_leader == Some(self.opts.node_id)
            && m.millis_since_quorum_ack.is_some_and(|ms| ms < lease_ms)
            && m.last_log_index.is_some()
            && m.last_applied.map(|l| l.index) == m.last_log_index;
        if ok {
            m.last_applied.map(|l| l.index)
        } else {
            None
        }
    }

    /// The shards hosted here by who leads them as this node knows it: the ones it leads, and
    /// the ones it follows grouped by leader (one read-index request per leader node). Shards
    /// without a known leader are in neither.
    pub(crate) fn read_plan(&self) -> (Vec<Shard>, BTreeMap<NodeId, Vec<Shard>>) {
        let mut led = Vec::new();
        let mut followed: BTreeMap<NodeId, Vec<Shard>> = BTreeMap::new();
        for sh in self.hosted() {
            match self.leader_of(sh.id) {
                Some(l) if l == self.opts.node_id => led.push(sh),
                Some(l) => followed.entry(l).or_default().push(sh),
                None => {}
            }
        }
        (led, followed)
    }

    /// This leader's replica of `sh` when its lease lets it serve a linearizable read right
    /// away (no waiting; see [`Node::ensure_readable`]).
    pub(crate) fn leased_db(&self, sh: &Shard) -> Option<Db> {
        self.leased_applied(sh)?;
        sh.data.db()
    }

    /// This leader's replica of `sh` once it may serve a linearizable read (lease, or a
    /// read-index round); `None` when it cannot.
    pub(crate) async fn leader_db(&self, sh: &Shard) -> Option<Db> {
        self.ensure_readable(sh).await.ok()
    }

    /// This follower's replica of `sh` for a read that accepts data up to
    /// [`ClusterOptions::stale_reads`] old: when the leader reached it within that time and
    /// it has applied what the leader had committed then. `None` otherwise (or when off).
    pub(crate) fn stale_db(&self, sh: &Shard) -> Option<Db> {
        let max = self.opts.stale_reads?;
        let commit = sh.data.leader_commit_within(max)?;
        if !applied_at_least(sh, commit) {
            return None;
        }
        let db = sh.data.db()?;
        self.stats
            .stale_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(db)
    }

    /// This follower's replica of `sh` when it has applied `index` (the leader's read index);
    /// waits at most 500 ms for it.
    pub(crate) async fn follower_db(&self, sh: &Shard, index: u64) -> Option<Db> {
        if !applied_at_least(sh, index) {
            sh.raft
                .wait(Some(Duration::from_millis(500)))
                .applied_index_at_least(Some(index), "follower read")
                .await
                .ok()?;
        }
        sh.data.db()
    }

    /// Connections to the other nodes' read-index service.
    pub(crate) fn read_clients(&self) -> &ReadIndexClients {
        &self.read_clients
    }

    /// The read indexes this node hands out for `shards` as their leader (Raft's ReadIndex),
    /// in order; a shard it does not lead or host gets -1 and the leader it knows.
    pub(crate) async fn read_indexes(&self, shards: Vec<u32>) -> pb::ReadIndexReply {
        let shards = futures::future::join_all(shards.into_iter().map(|s| async move {
            let Some(sh) = self.shard(s) else {
                return pb::ShardReadIndex {
                    shard: s,
                    index: -1,
                    leader: self.leader_hint.lock().get(&s).copied().unwrap_or(0),
                    error: format!("shard {s} is not hosted on node {}", self.opts.node_id),
                };
            };
            match self.read_index(&sh).await {
                Ok(i) => pb::ShardReadIndex {
                    shard: s,
                    index: i64::try_from(i).unwrap_or(i64::MAX),
                    ..Default::default()
                },
                Err((leader, e)) => pb::ShardReadIndex {
                    shard: s,
                    index: -1,
                    leader: leader.unwrap_or(0),
                    error: e,
                },
            }
        }))
        .await;
        pb::ReadIndexReply { shards }
    }

    /// Runs a read of shard `s` on its leader: `local` with this replica's Db when this node
    /// leads (and may serve reads), else `remote` against the leader's service. Follows leader
    /// hints and retries with backoff until `read_timeout`. `remote` answers `Ok(Err((leader,
    /// reason)))` when the node it asked cannot serve the read.
    async fn read_on_leader<T, L, LF, R, RF>(
        &self,
        s: u32,
        local: L,
        remote: R,
    ) -> Result<T, ClusterError>
    where
        L: Fn(Db) -> LF,
        LF: std::future::Future<Output = Result<T, ClusterError>>,
        R: Fn(ClusterClient<Channel>, Duration) -> RF,
        RF: std::future::Future<Output = Result<Result<T, (NodeId, String)>, Status>>,
    {
        let deadline = Instant::now() + self.opts.read_timeout;
        let mut last_err = String::from("no leader known");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if attempt > 1 {
                if Instant::now() >= deadline {
                    return Err(ClusterError::Unavailable {
                        shard: s,
                        reason: last_err,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(6)))).await;
            }
            let leader = self.leader_guess(s, attempt);
            let Some(leader) = leader else { continue };
            if leader == self.opts.node_id {
                let Some(sh) = self.shard(s) else {
                    continue;
                };
                match self.ensure_readable(&sh).await {
                    Ok(db) => return local(db).await,
                    Err((hint, e)) => {
                        self.set_hint(s, hint);
                        last_err = e;
                        continue;
                    }
                }
            }
            let Ok(c) = self.clients.get(leader, &self.addr_of(leader)) else {
                continue;
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            match remote(c, left).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err((hint, e))) => {
                    self.set_hint(s, Some(hint));
                    last_err = e;
                }
                Err(st) => {
                    self.set_hint(s, None);
                    last_err = format!("node {leader}: {}", st.message());
                }
            }
        }
    }

    /// Reads shard `s` from its leader (or from this replica when `allow_stale`).
    pub async fn select_shard(
        &self,
        s: u32,
        matchers: &[Matcher],
        (mint, maxt): (i64, i64),
        source: ReadSource,
        allow_stale: bool,
    ) -> Result<Vec<ShardSeries>, ClusterError> {
        if allow_stale && let Some(db) = self.shard(s).and_then(|sh| sh.data.db()) {
            return local_select(db, matchers.to_vec(), mint, maxt, source).await;
        }
        let pb_matchers: Vec<pb::LabelMatcher> = matchers.iter().map(to_pb_matcher).collect();
        self.read_on_leader(
            s,
            |db| local_select(db, matchers.to_vec(), mint, maxt, source),
            |mut c, timeout| {
                let mut r = Request::new(pb::SelectRequest {
                    shard: s,
                    matchers: pb_matchers.clone(),
                    min_time: mint,
                    max_time: maxt,
                    allow_stale: false,
                    resolution: source.map_or(0, |x| x.0),
                    aggregate: source.map(|x| x.1.name().to_string()).unwrap_or_default(),
                });
                r.set_timeout(timeout);
                async move {
                    let rep = c.select(r).await?.into_inner();
                    if !rep.error.is_empty() {
                        return Ok(Err((rep.leader, rep.error)));
                    }
                    Ok(Ok(decode_series(rep.series).map_err(Status::internal)?))
                }
            },
        )
        .await
    }

    /// Label names (`name` empty) or values of label `name` in shard `s`, read on its leader.
    pub async fn labels_shard(
        &self,
        s: u32,
        name: Option<&str>,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> Result<Vec<String>, ClusterError> {
        let pb_matchers: Vec<pb::LabelMatcher> = matchers.iter().map(to_pb_matcher).collect();
        self.read_on_leader(
            s,
            |db| {
                local_labels(
                    db,
                    name.map(str::to_string),
                    matchers.to_vec(),
                    mint,
                    maxt,
                    limit,
                )
            },
            |mut c, timeout| {
                let mut r = Request::new(pb::LabelsRequest {
                    shard: s,
                    name: name.unwrap_or_default().to_string(),
                    matchers: pb_matchers.clone(),
                    min_time: mint,
                    max_time: maxt,
                    limit: limit as u64,
                    allow_stale: false,
                });
                r.set_timeout(timeout);
                async move {
                    let rep = if name.is_some() {
                        c.label_values(r).await?
                    } else {
                        c.label_names(r).await?
                    }
                    .into_inner();
                    if !rep.error.is_empty() {
                        return Ok(Err((rep.leader, rep.error)));
                    }
                    Ok(Ok(rep.values))
                }
            },
        )
        .await
    }

    /// Metadata (`exemplars` false) or exemplars of shard `s` as this node's replica keeps
    /// them, or as a replica that hosts it answers (the leader first). Best effort, like on a
    /// single node: a replica that is catching up may miss the newest.
    async fn shard_extras(
        &self,
        s: u32,
        exemplars: Option<(&[Vec<Matcher>], i64, i64)>,
    ) -> Result<crate::batch::Extras, ClusterError> {
        use crate::batch::Extras;
        if let Some(sh) = self.shard(s) {
            return Ok(match exemplars {
                Some((sets, start, end)) => Extras {
                    exemplars: sh.data.extras.exemplars(sets, start, end),
                    ..Default::default()
                },
                None => Extras {
                    metadata: crate::extras::metadata_as_series(sh.data.extras.metadata()),
                    ..Default::default()
                },
            });
        }
        let req = pb::ExtrasRequest {
            shard: s,
            exemplars: exemplars.is_some(),
            sets: exemplars
                .map(|(sets, _, _)| {
                    sets.iter()
                        .map(|set| pb::MatcherSet {
                            matchers: set.iter().map(to_pb_matcher).collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            start: exemplars.map_or(0, |x| x.1),
            end: exemplars.map_or(0, |x| x.2),
        };
        let mut candidates: Vec<NodeId> = self.leader_of(s).into_iter().collect();
        candidates.extend(self.replicas(s));
        let mut last_err = String::from("no replica known");
        for id in candidates {
            let Ok(mut c) = self.clients.get(id, &self.addr_of(id)) else {
                continue;
            };
            let mut r = Request::new(req.clone());
            r.set_timeout(self.opts.read_timeout.min(Duration::from_secs(5)));
            match c.extras(r).await {
                Ok(rep) => {
                    let rep = rep.into_inner();
                    if !rep.error.is_empty() {
                        last_err = format!("node {id}: {}", rep.error);
                        continue;
                    }
                    return match crate::batch::decode_extras(&rep.extras) {
                        Some(Ok(e)) => Ok(e),
                        Some(Err(e)) => Err(ClusterError::Other(format!("node {id}: {e}"))),
                        None => Err(ClusterError::Other(format!(
                            "node {id}: not an extras payload"
                        ))),
                    };
                }
                Err(st) => last_err = format!("node {id}: {}", st.message()),
            }
        }
        Err(ClusterError::Unavailable {
            shard: s,
            reason: last_err,
        })
    }

    /// Exemplars of series matching any matcher set within `[start, end]`, from every shard.
    pub async fn exemplars(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, tidemark_model::Exemplar)>, ClusterError> {
        let futs =
            (0..self.opts.num_shards).map(|s| self.shard_extras(s, Some((sets, start, end))));
        let mut out = Vec::new();
        for r in futures::future::join_all(futs).await {
            out.extend(r?.exemplars);
        }
        Ok(out)
    }

    /// Metadata from every shard: (metric family, target labels, metadata).
    pub async fn metadata(
        &self,
    ) -> Result<Vec<(String, Labels, tidemark_model::Metadata)>, ClusterError> {
        let futs = (0..self.opts.num_shards).map(|s| self.shard_extras(s, None));
        let mut out = Vec::new();
        for r in futures::future::join_all(futs).await {
            for (l, m) in r?.metadata {
                let Some(name) = l.metric_name() else {
                    continue;
                };
                out.push((name.to_string(), crate::extras::target_of(&l), m));
            }
        }
        Ok(out)
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> pb::StatusReply {
        let live: BTreeSet<NodeId> = self.live_nodes().into_iter().collect();
        let members = self.members();
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let rf = self.opts.replication_factor;
        let shards: Vec<pb::ShardStatus> = self
            .hosted()
            .iter()
            .map(|sh| group_status(sh, shard_replicas(&ids, sh.id, rf)))
            .collect();
        pb::StatusReply {
            node_id: self.opts.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            nodes: members
                .iter()
                .map(|(id, a)| pb::NodeInfo {
                    id: *id,
                    address: a.clone(),
                    live: live.contains(id),
                })
                .collect(),
            shards,
            num_shards: self.opts.num_shards,
            meta: Some(group_status(&self.meta, ids)),
            replication_factor: u32::try_from(rf).unwrap_or(u32::MAX),
        }
    }

    /// Runs every second on every node: brings the shards hosted here and their replica sets
    /// in line with the shard map of the current node set (module docs).
    async fn reconcile(self: &Arc<Self>) {
        let nodes = self.newest_nodes();
        if nodes.is_empty() {
            return; // not part of a cluster yet (a joining node before add-node)
        }
        {
            // Addresses of nodes added since start; the peer list keeps precedence.
            let mut book = self.book.write();
            for (id, addr) in &nodes {
                if !self.opts.peers.contains_key(id) && !addr.starts_with("node-") {
                    book.insert(*id, addr.clone());
                }
            }
        }
        let me = self.opts.node_id;
        // Removed from the cluster: drop each replica once its shard has moved on, then stop
        // the metadata group (the process stays up, idle, until it is stopped).
        let removed = self.removed_from(META_GROUP);
        if removed {
            let marker = self.opts.data_dir.join(REMOVED_MARKER);
            if !marker.exists() {
                tracing::warn!("this node was removed from the cluster; stop it");
                if let Err(e) = std::fs::write(&marker, b"removed from the cluster\n") {
                    tracing::warn!(error = %e, "writing the removed marker");
                }
            }
            if self.shards.read().is_empty() {
                let _ = self.meta.raft.shutdown().await;
                return;
            }
        }
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        for s in 0..self.opts.num_shards {
            let target: BTreeSet<NodeId> = shard_replicas(&ids, s, self.opts.replication_factor)
                .into_iter()
                .collect();
            let Some(sh) = self.shard(s) else {
                if target.contains(&me) && !removed {
                    // A new replica: open the group empty; the leader adds it as a learner.
                    let dir = self.opts.data_dir.join("shards").join(s.to_string());
                    match open_group(
                        &self.opts,
                        &self.raft_config,
                        &self.clients,
                        &self.book,
                        s,
                        &dir,
                    )
                    .await
                    {
                        Ok(sh) => {
                            tracing::info!(shard = s, "hosting a new replica");
                            self.shards.write().insert(s, sh);
                        }
                        Err(e) => tracing::warn!(shard = s, error = %e, "opening a new replica"),
                    }
                }
                continue;
            };
            let m = sh.raft.metrics().borrow().clone();
            {
                let mut since = self.leader_since.lock();
                if m.current_leader == Some(me) {
                    let e = since.entry(s).or_insert((m.current_term, Instant::now()));
                    if e.0 != m.current_term {
                        *e = (m.current_term, Instant::now());
                    }
                } else {
                    since.remove(&s);
                }
            }
            let mem = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
            if m.current_leader == Some(me) && voters != target && !voters.is_empty() {
                self.start_move(sh.clone(), target.clone());
            }
            // By state, not by `current_leader`: a leader that removed itself from the group
            // steps down to learner but keeps naming itself as the leader it last knew.
            if (removed || !target.contains(&me)) && m.state != openraft::ServerState::Leader {
                self.maybe_drop(sh).await;
            }
        }
        if !removed {
            self.balance_leaders(&ids);
        }
    }

    /// Leader balance (docs/cluster.md "Leader balance"): when every node is up and this node
    /// leads the most shards (ties: the lowest id leads the way) and more than its fair share
    /// (`ceil(shards / nodes)`), it hands one shard to a caught-up voter that leads fewer than
    /// the fair share. Rate-limited: one handover at a time, none within 3 s of the last one
    /// from this node, none of the same shard within 10 s, and only of a shard this node has led
    /// for 5 s.
    fn balance_leaders(self: &Arc<Self>, ids: &[NodeId]) {
        let me = self.opts.node_id;
        let now = Instant::now();
        if !self.transfers.lock().is_empty()
            || !self.moving.lock().is_empty()
            || self
                .transferred
                .lock()
                .1
                .is_some_and(|t| now.duration_since(t) < BALANCE_PAUSE)
            || ids.len() < 2
        {
            return;
        }
        // Every node up, and a self-reported leader for every shard.
        let live: BTreeSet<NodeId> = self.live_nodes().into_iter().collect();
        if ids.iter().any(|id| !live.contains(id)) {
            return;
        }
        let mut leader: BTreeMap<u32, NodeId> = BTreeMap::new();
        for sh in self.hosted() {
            if sh.raft.metrics().borrow().current_leader == Some(me) {
                leader.insert(sh.id, me);
            }
        }
        let statuses = self.fresh_peer_statuses();
        for id in ids.iter().filter(|id| **id != me) {
            let Some(st) = statuses.iter().find(|st| st.node_id == *id) else {
                return;
            };
            for x in st.shards.iter().filter(|x| x.leader == *id) {
                leader.insert(x.shard, *id);
            }
        }
        if leader.len() != self.opts.num_shards as usize {
            return;
        }
        let mut count: BTreeMap<NodeId, usize> = ids.iter().map(|id| (*id, 0)).collect();
        for l in leader.values() {
            *count.entry(*l).or_default() += 1;
        }
        let fair = (self.opts.num_shards as usize).div_ceil(ids.len());
        // The node that leads the most moves first: only one node moves at a time.
        let busiest = count
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(id, _)| *id);
        let mine = count.get(&me).copied().unwrap_or(0);
        if busiest != Some(me) || mine <= fair {
            return;
        }
        let recent = self.transferred.lock().0.clone();
        let since = self.leader_since.lock().clone();
        let mut best: Option<((bool, usize, NodeId), Shard, NodeId)> = None;
        for (s, _) in leader.iter().filter(|(_, l)| **l == me) {
            let Some(sh) = self.shard(*s) else { continue };
            if recent
                .get(s)
                .is_some_and(|t| now.duration_since(*t) < BALANCE_SHARD_PAUSE)
                || since
                    .get(s)
                    .is_none_or(|(_, t)| now.duration_since(*t) < BALANCE_LED_FOR)
            {
                continue;
            }
            let m = sh.raft.metrics().borrow().clone();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            // With more than three voters the other followers' leases would refuse the vote.
            if voters.len() > 3 || m.membership_config.membership().get_joint_config().len() > 1 {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let preferred = self.replicas(*s).first().copied();
            for t in voters.into_iter().filter(|t| *t != me) {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&t).copied().flatten())
                    .map_or(0, |l| l.index);
                let n = count.get(&t).copied().unwrap_or(0);
                if n >= fair || matched + BALANCE_MAX_LAG < last {
                    continue;
                }
                // Prefer the shard's preferred leader, then the node that leads the fewest.
                let key = (preferred != Some(t), n, t);
                if best.as_ref().is_none_or(|b| key < b.0) {
                    best = Some((key, sh.clone(), t));
                }
            }
        }
        if let Some((_, sh, to)) = best {
            self.start_transfer(sh, to);
        }
    }

    /// Hands the leadership of `sh` to `to` in the background: this node stops proposing
    /// writes to the shard, waits until everything in its log is applied here and replicated to
    /// `to`, then asks `to` to campaign (`TransferLeader`). `to` wins with this node's vote (a
    /// leader grants a higher-term vote to a candidate whose log is as long as its own, and
    /// steps down); the shard's other voters still follow this node's lease, so nobody else
    /// campaigns. Writes refused meanwhile are retried by their senders on the new leader.
    fn start_transfer(self: &Arc<Self>, sh: Shard, to: NodeId) {
        let s = sh.id;
        {
            let mut t = self.transfers.lock();
            if !t.is_empty() {
                return;
            }
            t.insert(s, to);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let me = node.opts.node_id;
            let term = sh.raft.metrics().borrow().current_term;
            tracing::info!(shard = s, to, "leader balance: handing the leadership over");
            let res: Result<(), String> = async {
                let deadline = Instant::now() + Duration::from_secs(2);
                let last = loop {
                    let m = sh.raft.metrics().borrow().clone();
                    if m.current_leader != Some(me) || m.current_term != term {
                        return Err("no longer the leader".to_string());
                    }
                    let last = m.last_log_index.unwrap_or(0);
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&to).copied().flatten())
                        .map_or(0, |l| l.index);
                    if m.last_applied.map(|l| l.index) == m.last_log_index && matched >= last {
                        break last;
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("node {to} did not catch up in 2 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                let mut c = node
                    .clients
                    .get(to, &node.addr_of(to))
                    .map_err(|e| e.to_string())?;
                let mut r = Request::new(pb::TransferLeaderRequest {
                    shard: s,
                    last_log_index: last,
                });
                r.set_timeout(Duration::from_secs(2));
                let rep = c
                    .transfer_leader(r)
                    .await
                    .map_err(|e| format!("node {to}: {}", e.message()))?
                    .into_inner();
                if !rep.error.is_empty() {
                    return Err(format!("node {to}: {}", rep.error));
                }
                // Wait for the vote to take the leadership away from here.
                let mut rx = sh.raft.metrics();
                let gone = tokio::time::timeout(Duration::from_secs(3), async {
                    loop {
                        {
                            let m = rx.borrow_and_update();
                            if m.current_leader != Some(me) || m.current_term != term {
                                return;
                            }
                        }
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                gone.map_err(|_| format!("node {to} did not take over within 3 s"))
            }
            .await;
            match res {
                Ok(()) => tracing::info!(shard = s, to, "leader balance: leadership handed over"),
                Err(e) => {
                    tracing::warn!(shard = s, to, error = %e, "leader balance: handover failed")
                }
            }
            let now = Instant::now();
            {
                let mut t = node.transferred.lock();
                t.0.insert(s, now);
                t.1 = Some(now);
            }
            node.transfers.lock().remove(&s);
        });
    }

    /// `TransferLeader` on the receiving side: campaign for `s` once this replica's log reaches
    /// `last_log_index` (at most 1 s).
    async fn take_leadership(&self, s: u32, last_log_index: u64) -> Result<(), String> {
        let sh = self
            .shard(s)
            .ok_or_else(|| format!("shard {s} is not hosted here"))?;
        let is_voter = sh
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.opts.node_id);
        if !is_voter {
            return Err(format!("not a voter of shard {s}"));
        }
        sh.raft
            .wait(Some(Duration::from_secs(1)))
            .log_index_at_least(Some(last_log_index), "leader balance")
            .await
            .map_err(|e| format!("log did not reach {last_log_index}: {e}"))?;
        sh.raft.trigger().elect().await.map_err(|e| e.to_string())?;
        tracing::info!(
            shard = s,
            "leader balance: campaigning to take the leadership over"
        );
        Ok(())
    }

    /// As leader of `sh`, moves its replicas to `target` in the background: each new replica
    /// joins as a learner and catches up (log or snapshot), then one membership change
    /// (joint consensus) makes `target` the voters and removes the others.
    fn start_move(self: &Arc<Self>, sh: Shard, target: BTreeSet<NodeId>) {
        if !self.moving.lock().insert(sh.id) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let s = sh.id;
            tracing::info!(shard = s, target = ?target, "moving replicas");
            let res: Result<(), String> = async {
                let present: BTreeSet<NodeId> = sh
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect();
                for id in target.difference(&present) {
                    let add = sh
                        .raft
                        .add_learner(*id, BasicNode::new(format!("node-{id}")), true);
                    match tokio::time::timeout(Duration::from_secs(120), add).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("adding node {id} as a learner: {e}")),
                        Err(_) => return Err(format!("node {id} did not catch up in 120 s")),
                    }
                }
                sh.raft
                    .change_membership(target.clone(), false)
                    .await
                    .map_err(|e| format!("changing the voters: {e}"))?;
                Ok(())
            }
            .await;
            match res {
                Ok(()) => tracing::info!(shard = s, voters = ?target, "replicas moved"),
                Err(e) => tracing::warn!(shard = s, error = %e, "moving replicas (retried)"),
            }
            node.moving.lock().remove(&s);
        });
    }

    /// Drops this node's replica of `sh` once the shard's leader has committed a membership
    /// without this node (never on local knowledge alone: an uncommitted change can still be
    /// undone by a new leader, and then this replica would be needed).
    async fn maybe_drop(&self, sh: Shard) {
        if !self.removed_from(sh.id) {
            return;
        }
        tracing::info!(shard = sh.id, "replica moved away: dropping its data here");
        self.shards.write().remove(&sh.id);
        if let Err(e) = sh.raft.shutdown().await {
            tracing::warn!(shard = sh.id, error = %e, "raft shutdown");
        }
        sh.data.close();
        let dir = self.opts.data_dir.join("shards").join(sh.id.to_string());
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(shard = sh.id, error = %e, dir = %dir.display(), "removing a dropped replica");
        }
    }

    /// Adds (`add`: id and address) or removes a node: a membership change of the metadata
    /// group, run on its leader (forwarded there). Added nodes join as learners of the
    /// metadata group; a removed voter is replaced by the lowest learner, so it keeps up to
    /// three voters. Returns the node set after the change.
    pub async fn change_nodes(
        &self,
        add: Option<(NodeId, String)>,
        remove: Option<NodeId>,
    ) -> Result<BTreeMap<NodeId, String>, ClusterError> {
        // Bad input is refused before anything else, whatever the state of the cluster.
        if let Some((id, addr)) = &add {
            if *id == 0 || addr.is_empty() {
                return Err(ClusterError::Invalid(
                    "add-node needs a node id > 0 and an address".into(),
                ));
            }
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok || addr.contains(char::is_whitespace) || addr.contains('/') {
                return Err(ClusterError::Invalid(format!(
                    "add-node: {addr:?} is not HOST:PORT"
                )));
            }
        }
        let me = self.opts.node_id;
        let leader = self.meta.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == me => {}
            Some(l) => return Self::remote_change_nodes(&self.addr_of(l), add, remove).await,
            None => {
                return Err(ClusterError::Unavailable {
                    shard: META_GROUP,
                    reason: "the metadata group has no leader".into(),
                });
            }
        }
        let raft = &self.meta.raft;
        let err = |e: String| ClusterError::Other(e);
        if let Some((id, addr)) = add {
            if let Some(old) = group_nodes(&self.meta).get(&id)
                && !old.starts_with("node-")
                && *old != addr
            {
                return Err(ClusterError::Invalid(format!(
                    "node {id} is already a member with address {old}"
                )));
            }
            self.book.write().entry(id).or_insert_with(|| addr.clone());
            let add = raft.add_learner(id, BasicNode::new(addr.clone()), true);
            tokio::time::timeout(Duration::from_secs(120), add)
                .await
                .map_err(|_| err(format!("node {id} at {addr} did not catch up in 120 s")))?
                .map_err(|e| err(format!("adding node {id}: {e}")))?;
            tracing::info!(node = id, address = %addr, "node added");
        }
        if let Some(id) = remove {
            let mem = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .clone();
            let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
            let nodes: BTreeSet<NodeId> = mem.nodes().map(|(i, _)| *i).collect();
            if !nodes.contains(&id) {
                return Err(ClusterError::Invalid(format!("node {id} is not a member")));
            }
            if nodes.len() <= 1 {
                return Err(ClusterError::Invalid("cannot remove the last node".into()));
            }
            if voters.contains(&id) {
                let mut new: BTreeSet<NodeId> =
                    voters.iter().copied().filter(|v| *v != id).collect();
                if let Some(l) = nodes.iter().find(|n| !voters.contains(n)) {
                    new.insert(*l);
                }
                raft.change_membership(new, false)
                    .await
                    .map_err(|e| err(format!("removing node {id}: {e}")))?;
            } else {
                raft.change_membership(
                    openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                    false,
                )
                .await
                .map_err(|e| err(format!("removing node {id}: {e}")))?;
            }
            tracing::info!(node = id, "node removed");
        }
        Ok(self.members())
    }

    /// [`Node::status`] plus a checksum of each hosted shard's data.
    pub async fn status_with_checksums(&self) -> pb::StatusReply {
        let mut st = self.status();
        for sh in st.shards.iter_mut() {
            let Some(db) = self.shard(sh.shard).and_then(|s| s.data.db()) else {
                continue;
            };
            if let Ok(Ok((sum, n))) = tokio::task::spawn_blocking(move || data_checksum(&db)).await
            {
                sh.checksum = sum;
                sh.samples = n;
            }
        }
        st
    }

    /// Asks `addr` for its status (the `tidemark cluster status` command).
    pub async fn remote_status(
        addr: &str,
        checksums: bool,
    ) -> Result<pb::StatusReply, ClusterError> {
        let clients = Clients::new();
        let mut c = clients
            .get(0, addr)
            .map_err(|e| ClusterError::Other(e.to_string()))?;
        let mut r = Request::new(pb::StatusRequest { checksums });
        r.set_timeout(Duration::from_secs(if checksums { 120 } else { 5 }));
        c.status(r)
            .await
            .map(|r| r.into_inner())
            .map_err(|e| ClusterError::Other(format!("{addr}: {}", e.message())))
    }

    /// Asks the node at `addr` to add and/or remove a node (`tidemark cluster add-node` /
    /// `remove-node`); returns the cluster's nodes after the change.
    pub async fn remote_change_nodes(
        addr: &str,
        add: Option<(NodeId, String)>,
        remove: Option<NodeId>,
    ) -> Result<BTreeMap<NodeId, String>, ClusterError> {
        let clients = Clients::new();
        let mut c = clients
            .get(0, addr)
            .map_err(|e| ClusterError::Other(e.to_string()))?;
        let mut r = Request::new(pb::ChangeNodesRequest {
            add_id: add.as_ref().map_or(0, |a| a.0),
            add_address: add.map(|a| a.1).unwrap_or_default(),
            remove_id: remove.unwrap_or(0),
        });
        r.set_timeout(Duration::from_secs(180));
        let rep = c
            .change_nodes(r)
            .await
            .map_err(|e| ClusterError::Other(format!("{addr}: {}", e.message())))?
            .into_inner();
        if !rep.error.is_empty() {
            return Err(ClusterError::Other(rep.error));
        }
        Ok(rep.nodes.into_iter().map(|n| (n.id, n.address)).collect())
    }

    /// Stops the Raft groups and the service, and closes the shards' data.
    pub async fn shutdown(&self) {
        {
            // Ends the batchers once their queues are empty; no new ones start (the flag is
            // set under the same lock `batcher` checks it under).
            let mut g = self.batchers.lock();
            let _ = self.shutdown.send(true);
            g.clear();
        }
        let mut groups = self.hosted();
        groups.push(self.meta.clone());
        for sh in groups {
            if let Err(e) = sh.raft.shutdown().await {
                tracing::warn!(shard = sh.id, error = %e, "raft shutdown");
            }
            sh.data.close();
        }
    }
}

/// Opens (creating it when new) the Raft group `id` stored in `dir`: its log, its data, its
/// Raft instance (not initialized).
async fn open_group(
    opts: &ClusterOptions,
    config: &Arc<Config>,
    clients: &Clients,
    book: &AddressBook,
    id: u32,
    dir: &std::path::Path,
) -> Result<Shard, ClusterError> {
    let what = if id == META_GROUP {
        "metadata group".to_string()
    } else {
        format!("shard {id}")
    };
    let log = LogStore::open(&dir.join("raft"), 64 << 20)
        .map_err(|e| ClusterError::Other(format!("{what} log: {e}")))?;
    let sm = StateMachine::open(dir, opts.db.clone())
        .map_err(|e| ClusterError::Other(format!("{what} data: {e}")))?;
    let data = sm.data().clone();
    let raft = Raft::new(
        opts.node_id,
        config.clone(),
        NetworkFactory {
            shard: id,
            clients: clients.clone(),
            peers: book.clone(),
        },
        log.clone(),
        sm,
    )
    .await
    .map_err(|e| ClusterError::Other(format!("{what} raft: {e}")))?;
    Ok(Shard {
        id,
        raft,
        data,
        log,
    })
}

/// The members (voters and learners) of a group's membership in effect here, with the
/// address recorded for each (`node-<id>` for the initial nodes: theirs come from the peers).
fn group_nodes(sh: &Shard) -> BTreeMap<NodeId, String> {
    sh.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

fn group_status(sh: &Shard, target: Vec<NodeId>) -> pb::ShardStatus {
    let m = sh.raft.metrics().borrow().clone();
    let replication = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, l)| pb::ReplicaProgress {
                    node: *id,
                    matched: l.map_or(-1, |l| l.index as i64),
                })
                .collect()
        })
        .unwrap_or_default();
    let mem = m.membership_config.membership();
    pb::ShardStatus {
        shard: sh.id,
        leader: m.current_leader.unwrap_or(0),
        state: format!("{:?}", m.state),
        last_log_index: m.last_log_index.map_or(-1, |i| i as i64),
        last_applied: m.last_applied.map_or(-1, |l| l.index as i64),
        snapshot_index: m.snapshot.map_or(-1, |l| l.index as i64),
        voters: mem.voter_ids().collect(),
        learners: mem.learner_ids().collect(),
        replication,
        head_series: sh.data.db().map_or(0, |d| d.head().num_series() as u64),
        term: m.current_term,
        checksum: 0,
        samples: 0,
        rejected_samples: sh.data.rejected_samples(),
        dropped_at_commit: sh
            .data
            .db()
            .map_or(0, |d| d.head().stats().samples_dropped_at_commit),
        target,
        membership_index: m.membership_config.log_id().map_or(-1, |l| l.index as i64),
    }
}

/// xxh3-64 over every series and sample of a Db, in label order; and the number of samples.
fn data_checksum(db: &Db) -> Result<(u64, u64), String> {
    let q = db.querier(i64::MIN, i64::MAX).map_err(|e| e.to_string())?;
    let all = Matcher::new(MatchType::Regex, "__name__", ".*").map_err(|e| e.to_string())?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut n = 0u64;
    for s in q.select(true, None, &[all]) {
        let s = s.map_err(|e| e.to_string())?;
        h.update(s.labels().encoded());
        let mut it = s.iter();
        while it.next() {
            let x = it.at();
            h.update(&x.t.to_le_bytes());
            h.update(&x.v.to_bits().to_le_bytes());
            n += 1;
        }
    }
    Ok((h.digest(), n))
}

/// Whether this replica of `sh` has applied log index `index`.
pub(crate) fn applied_at_least(sh: &Shard, index: u64) -> bool {
    sh.raft
        .metrics()
        .borrow()
        .last_applied
        .is_some_and(|l| l.index >= index)
}

/// Accepts connections to the cluster port until shutdown: a read-index connection (it opens
/// with [`crate::read_index::MAGIC`]) is served by its own task; every other one is handed to
/// the gRPC server through the returned stream.
fn sniff_connections(
    listener: tokio::net::TcpListener,
    node: std::sync::Weak<Node>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<tokio::net::TcpStream>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait_for(|v| *v) => return,
            };
            let Ok((s, _)) = accepted else {
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            let (tx, node) = (tx.clone(), node.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                // A peer that sends nothing for 10 s is dropped.
                match tokio::time::timeout(Duration::from_secs(10), s.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == crate::read_index::MAGIC[0] => {
                        let mut s = s;
                        let mut magic = [0u8; 4];
                        if tokio::io::AsyncReadExt::read_exact(&mut s, &mut magic)
                            .await
                            .is_ok()
                            && magic == crate::read_index::MAGIC
                        {
                            crate::read_index::serve(node, s).await;
                        }
                    }
                    Ok(Ok(n)) if n > 0 => {
                        let _ = tx.send(s).await;
                    }
                    _ => {}
                }
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
    )
}

fn to_pb_matcher(m: &Matcher) -> pb::LabelMatcher {
    pb::LabelMatcher {
        kind: match m.kind {
            MatchType::Equal => 0,
            MatchType::NotEqual => 1,
            MatchType::Regex => 2,
            MatchType::NotRegex => 3,
        },
        name: m.name.clone(),
        value: m.value.clone(),
    }
}

fn from_pb_matcher(m: &pb::LabelMatcher) -> Result<Matcher, String> {
    let kind = match m.kind {
        0 => MatchType::Equal,
        1 => MatchType::NotEqual,
        2 => MatchType::Regex,
        3 => MatchType::NotRegex,
        k => return Err(format!("unknown matcher kind {k}")),
    };
    Matcher::new(kind, &m.name, &m.value).map_err(|e| e.to_string())
}

async fn local_select(
    db: Db,
    matchers: Vec<Matcher>,
    mint: i64,
    maxt: i64,
    source: ReadSource,
) -> Result<Vec<ShardSeries>, ClusterError> {
    tokio::task::spawn_blocking(move || -> Result<Vec<ShardSeries>, ClusterError> {
        let q = match source {
            None => db.querier(mint, maxt),
            Some((res, aggr)) => {
                ResolutionQueryable::querier_resolution(&db, mint, maxt, res, aggr)
            }
        }
        .map_err(|e| ClusterError::Other(e.to_string()))?;
        let mut out = Vec::new();
        for s in q.select(true, None, &matchers) {
            let s = s.map_err(|e| ClusterError::Other(e.to_string()))?;
            let mut it = s.iter();
            let mut samples = Vec::new();
            while it.next() {
                samples.push(it.at());
            }
            if let Some(e) = it.err() {
                return Err(ClusterError::Other(e.to_string()));
            }
            if !samples.is_empty() {
                out.push(ShardSeries {
                    labels: s.labels().clone(),
                    samples,
                });
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| ClusterError::Other(e.to_string()))?
}

async fn local_labels(
    db: Db,
    name: Option<String>,
    matchers: Vec<Matcher>,
    mint: i64,
    maxt: i64,
    limit: usize,
) -> Result<Vec<String>, ClusterError> {
    tokio::task::spawn_blocking(move || {
        let q = db
            .querier(mint, maxt)
            .map_err(|e| ClusterError::Other(e.to_string()))?;
        match name {
            Some(n) => q.label_values(&n, &matchers, limit),
            None => q.label_names(&matchers, limit),
        }
        .map_err(|e| ClusterError::Other(e.to_string()))
    })
    .await
    .map_err(|e| ClusterError::Other(e.to_string()))?
}

fn encode_series(series: Vec<ShardSeries>) -> Result<Vec<pb::Series>, String> {
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let mut chunks = Vec::new();
        for part in s.samples.chunks(CHUNK_SAMPLES) {
            let mut enc = ChunkEncoder::new();
            for x in part {
                enc.append(x.t, x.v).map_err(|e| e.to_string())?;
            }
            chunks.push(pb::Chunk { data: enc.bytes() });
        }
        out.push(pb::Series {
            labels: s.labels.encoded().to_vec(),
            chunks,
        });
    }
    Ok(out)
}

fn decode_series(series: Vec<pb::Series>) -> Result<Vec<ShardSeries>, String> {
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let labels = Labels::from_encoded(&s.labels).map_err(|e| e.to_string())?;
        let mut samples = Vec::new();
        for c in &s.chunks {
            tidemark_tsdb::chunk::decode_all(&c.data, &mut samples).map_err(|e| e.to_string())?;
        }
        out.push(ShardSeries { labels, samples });
    }
    Ok(out)
}

/// The gRPC service (holds the node weakly: the node owns the server).
#[derive(Debug)]
struct Service {
    node: std::sync::Weak<Node>,
}

impl Service {
    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .upgrade()
            .ok_or_else(|| Status::unavailable("node is shutting down"))
    }

    fn shard(&self, node: &Node, s: u32) -> Result<Shard, Status> {
        node.shard(s).ok_or_else(|| {
            Status::not_found(format!(
                "shard {s} is not hosted on node {}",
                node.opts.node_id
            ))
        })
    }
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftReply>, Status> {
    encode(v)
        .map(|payload| Response::new(pb::RaftReply { payload }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Service {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let sh = self.shard(&node, req.shard)?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let commit = rpc.leader_commit.map_or(0, |l| l.index);
        let res = sh.raft.append_entries(rpc).await;
        if matches!(res, Ok(openraft::raft::AppendEntriesResponse::Success)) {
            sh.data.heard_from_leader(commit);
        }
        reply(&res)
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let sh = self.shard(&node, req.shard)?;
        let rpc = decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        reply(&sh.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let sh = self.shard(&node, req.shard)?;
        let rpc = decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        reply(&sh.raft.install_snapshot(rpc).await)
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        if let Err(e) = crate::batch::validate(&req.batch) {
            return Ok(Response::new(pb::WriteReply {
                status: pb::WriteStatus::Invalid as i32,
                error: e.to_string(),
                ..Default::default()
            }));
        }
        let res = match tokio::time::timeout(
            node.opts.write_timeout,
            node.local_write(req.shard, req.batch.into()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err((None, "no quorum acknowledged the write in time".to_string())),
        };
        let rep = match res {
            Ok(r) => pb::WriteReply {
                status: pb::WriteStatus::WriteOk as i32,
                leader: node.opts.node_id,
                accepted: r.accepted,
                rejected: r.rejected,
                error: r.first_error.unwrap_or_default(),
            },
            Err((Some(l), e)) => pb::WriteReply {
                status: pb::WriteStatus::NotLeader as i32,
                leader: l,
                error: e,
                ..Default::default()
            },
            Err((None, e)) => pb::WriteReply {
                status: pb::WriteStatus::Unavailable as i32,
                error: e,
                ..Default::default()
            },
        };
        Ok(Response::new(rep))
    }

    async fn select(
        &self,
        req: Request<pb::SelectRequest>,
    ) -> Result<Response<pb::SelectReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let (db, matchers) = match self
            .read_target(&node, req.shard, &req.matchers, req.allow_stale)
            .await?
        {
            Ok(x) => x,
            Err((l, e)) => {
                return Ok(Response::new(pb::SelectReply {
                    error: e,
                    leader: l.unwrap_or(0),
                    ..Default::default()
                }));
            }
        };
        let source = if req.resolution > 0 {
            let aggr = DownsampleAggregate::from_name(&req.aggregate).ok_or_else(|| {
                Status::invalid_argument(format!("unknown aggregate {:?}", req.aggregate))
            })?;
            Some((req.resolution, aggr))
        } else {
            None
        };
        let series = local_select(db, matchers, req.min_time, req.max_time, source)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let series = tokio::task::spawn_blocking(move || encode_series(series))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::internal)?;
        Ok(Response::new(pb::SelectReply {
            series,
            ..Default::default()
        }))
    }

    async fn label_names(
        &self,
        req: Request<pb::LabelsRequest>,
    ) -> Result<Response<pb::LabelsReply>, Status> {
        self.labels(req.into_inner(), false).await
    }

    async fn label_values(
        &self,
        req: Request<pb::LabelsRequest>,
    ) -> Result<Response<pb::LabelsReply>, Status> {
        self.labels(req.into_inner(), true).await
    }

    async fn change_nodes(
        &self,
        req: Request<pb::ChangeNodesRequest>,
    ) -> Result<Response<pb::ChangeNodesReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let add = (req.add_id != 0).then_some((req.add_id, req.add_address));
        let remove = (req.remove_id != 0).then_some(req.remove_id);
        Ok(Response::new(match node.change_nodes(add, remove).await {
            Ok(nodes) => pb::ChangeNodesReply {
                error: String::new(),
                nodes: nodes
                    .into_iter()
                    .map(|(id, address)| pb::NodeInfo {
                        id,
                        address,
                        live: true,
                    })
                    .collect(),
            },
            Err(e) => pb::ChangeNodesReply {
                error: e.to_string(),
                nodes: Vec::new(),
            },
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let error = match node.take_leadership(req.shard, req.last_log_index).await {
            Ok(()) => String::new(),
            Err(e) => e,
        };
        Ok(Response::new(pb::TransferLeaderReply { error }))
    }

    async fn extras(
        &self,
        req: Request<pb::ExtrasRequest>,
    ) -> Result<Response<pb::ExtrasReply>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let Some(sh) = node.shard(req.shard) else {
            return Ok(Response::new(pb::ExtrasReply {
                error: format!("shard {} is not hosted here", req.shard),
                ..Default::default()
            }));
        };
        let e = if req.exemplars {
            let sets = req
                .sets
                .iter()
                .map(|set| set.matchers.iter().map(from_pb_matcher).collect())
                .collect::<Result<Vec<Vec<Matcher>>, String>>()
                .map_err(Status::invalid_argument)?;
            crate::batch::Extras {
                exemplars: sh.data.extras.exemplars(&sets, req.start, req.end),
                ..Default::default()
            }
        } else {
            crate::batch::Extras {
                metadata: crate::extras::metadata_as_series(sh.data.extras.metadata()),
                ..Default::default()
            }
        };
        Ok(Response::new(pb::ExtrasReply {
            extras: e.encode(),
            error: String::new(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let node = self.node()?;
        if req.into_inner().checksums {
            return Ok(Response::new(node.status_with_checksums().await));
        }
        Ok(Response::new(node.status()))
    }
}

/// A read target: this replica's Db and the request's matchers, or why this replica must not
/// serve the read (leader hint, reason) — then the caller answers with the hint.
type ReadTarget = Result<(Db, Vec<Matcher>), (Option<NodeId>, String)>;

impl Service {
    async fn read_target(
        &self,
        node: &Node,
        shard: u32,
        matchers: &[pb::LabelMatcher],
        allow_stale: bool,
    ) -> Result<ReadTarget, Status> {
        let sh = self.shard(node, shard)?;
        let matchers = matchers
            .iter()
            .map(from_pb_matcher)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        if allow_stale {
            let db = sh
                .data
                .db()
                .ok_or_else(|| Status::unavailable("shard data is being replaced"))?;
            return Ok(Ok((db, matchers)));
        }
        Ok(node.ensure_readable(&sh).await.map(|db| (db, matchers)))
    }

    async fn labels(
        &self,
        req: pb::LabelsRequest,
        values: bool,
    ) -> Result<Response<pb::LabelsReply>, Status> {
        let node = self.node()?;
        let (db, matchers) = match self
            .read_target(&node, req.shard, &req.matchers, req.allow_stale)
            .await?
        {
            Ok(x) => x,
            Err((l, e)) => {
                return Ok(Response::new(pb::LabelsReply {
                    error: e,
                    leader: l.unwrap_or(0),
                    ..Default::default()
                }));
            }
        };
        let name = values.then_some(req.name);
        let v = local_labels(
            db,
            name,
            matchers,
            req.min_time,
            req.max_time,
            req.limit as usize,
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::LabelsReply {
            values: v,
            ..Default::default()
        }))
    }
}
