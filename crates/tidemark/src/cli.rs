//! Command-line interface. Flag names follow Prometheus where one exists (`--storage.tsdb.path`
//! etc. are accepted as aliases of Tidemark's shorter spellings).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default HTTP port: 9190 — clashes with neither Prometheus (9090), Alertmanager (9093),
/// node_exporter (9100) nor Grafana (3000). See docs/api.md.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:9190";

#[derive(Debug, Parser)]
#[command(
    name = "tidemark",
    version,
    about = "A clustered, Prometheus-compatible time-series database"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server: storage, scraping, PromQL and the Prometheus HTTP API.
    Server(Box<ServerArgs>),
    /// Offline tools for a data directory.
    Tsdb {
        #[command(subcommand)]
        command: TsdbCommand,
    },
    /// Run Prometheus `.test` PromQL scripts; ends with `N passed, M failed, K skipped`.
    Promqltest {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate files.
    Check {
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Run unit tests.
    Test {
        #[command(subcommand)]
        command: TestCommand,
    },
    /// Inspect a cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Start a local cluster of `--nodes` `tidemark server` processes on 127.0.0.1 (HTTP ports
    /// from `--http-port`, cluster ports from `--cluster-port`), data under `--dir`. Ctrl-C
    /// stops them all.
    DevCluster(DevClusterArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Nodes, shards, leaders, replication progress and health, as seen by one node.
    Status {
        /// Cluster (gRPC) address of any node.
        #[arg(long, default_value = "127.0.0.1:9290")]
        address: String,
        /// Print the raw status as JSON.
        #[arg(long)]
        json: bool,
        /// Also checksum each shard's data on that node (reads all of it), to compare replicas.
        #[arg(long)]
        checksums: bool,
    },
    /// Adds a node (started with `--cluster.join`) to the cluster; shard replicas then move to
    /// it through Raft membership changes, with no downtime.
    AddNode {
        /// Cluster (gRPC) address of any current node.
        #[arg(long, default_value = "127.0.0.1:9290")]
        address: String,
        /// Id of the new node (its `--cluster.node-id`).
        #[arg(long = "node-id")]
        node_id: u64,
        /// Cluster address the other nodes reach the new node at.
        #[arg(long = "node-address")]
        node_address: String,
        /// Wait until every shard's replicas have moved (up to this many seconds; 0: return
        /// once the node is a member).
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Removes a node: its shard replicas move to the remaining nodes, then it leaves the
    /// cluster (stop it afterwards).
    RemoveNode {
        /// Cluster (gRPC) address of any node (not the one removed).
        #[arg(long, default_value = "127.0.0.1:9290")]
        address: String,
        /// Id of the node to remove.
        #[arg(long = "node-id")]
        node_id: u64,
        /// Wait until every shard's replicas have moved (up to this many seconds; 0: return
        /// once the node is no longer a member).
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DevClusterArgs {
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u32,
    #[arg(long, default_value = "dev-cluster")]
    pub(crate) dir: PathBuf,
    #[arg(long = "http-port", default_value_t = 9190)]
    pub(crate) http_port: u16,
    #[arg(long = "cluster-port", default_value_t = 9290)]
    pub(crate) cluster_port: u16,
    #[arg(long = "cluster.shards", default_value_t = 8)]
    pub(crate) shards: u32,
    /// Extra `tidemark server` flags for every node (after `--`), e.g.
    /// `-- --config.file prometheus.yml --storage.retention.time 30d`.
    #[arg(last = true)]
    pub(crate) server_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TestCommand {
    /// Run rule unit-test files in promtool's format (`promtool test rules`).
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CheckCommand {
    /// Validate configuration files (Prometheus format plus the `tidemark:` section).
    Config {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate rule files like `promtool check rules`.
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TsdbCommand {
    /// Print series, samples, chunks, bytes per sample and the highest-cardinality metrics/labels.
    Analyze {
        dir: PathBuf,
        /// How many entries per top-N list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Backfill a text/OpenMetrics file (timestamps of any age) into blocks in DIR.
    Import {
        file: PathBuf,
        dir: PathBuf,
        /// Block duration of the created blocks.
        #[arg(long = "block-duration", default_value = "2h")]
        block_duration: String,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Configuration file (Prometheus `prometheus.yml` plus an optional `tidemark:` section).
    /// Without one, Tidemark scrapes itself (job "tidemark").
    #[arg(long = "config.file")]
    pub(crate) config_file: Option<PathBuf>,

    /// Data directory.
    #[arg(
        long = "storage.path",
        visible_alias = "storage.tsdb.path",
        default_value = "data/"
    )]
    pub(crate) storage_path: PathBuf,

    /// This node's id in a cluster (1, 2, ...). Without it the server is a single node.
    #[arg(long = "cluster.node-id")]
    pub(crate) cluster_node_id: Option<u64>,

    /// Address of this node's cluster (gRPC) service.
    #[arg(long = "cluster.listen-address", default_value = "0.0.0.0:9290")]
    pub(crate) cluster_listen_address: String,

    /// Every node of the cluster, this one included: `1=host:port,2=host:port,3=host:port`
    /// (cluster addresses, as the other nodes reach them).
    #[arg(long = "cluster.peers", value_delimiter = ',')]
    pub(crate) cluster_peers: Vec<String>,

    /// Number of shards; fixed when the cluster is created.
    #[arg(long = "cluster.shards", default_value_t = 8)]
    pub(crate) cluster_shards: u32,

    /// Start as a new node of an existing cluster: initialize nothing and wait for
    /// `tidemark cluster add-node` (its --cluster.peers lists the current nodes and itself).
    #[arg(long = "cluster.join")]
    pub(crate) cluster_join: bool,

    /// Replicas of each shard (capped at the number of nodes).
    #[arg(long = "cluster.replication-factor", default_value_t = 3)]
    pub(crate) cluster_replication_factor: usize,

    /// A shard snapshot is taken after this many Raft log entries (then its log is purged).
    #[arg(long = "cluster.snapshot-after-entries", default_value_t = 50_000)]
    pub(crate) cluster_snapshot_after_entries: u64,

    /// Log entries kept behind a snapshot for replicas that catch up from the log.
    #[arg(long = "cluster.keep-entries-after-snapshot", default_value_t = 5_000)]
    pub(crate) cluster_keep_entries: u64,

    /// How old the data of a query may be (Prometheus duration, e.g. 2s): a follower then
    /// answers from its own replica, without asking the leader, when the leader reached it
    /// within that time and it has applied what the leader had committed then. 0 (default):
    /// every read is linearizable (read-your-writes through any node).
    #[arg(long = "cluster.read-staleness", default_value = "0s")]
    pub(crate) cluster_read_staleness: String,

    /// Scrape results for one shard that arrive within this time (Prometheus duration) are
    /// written as one Raft entry; a scrape's samples become visible up to this much later.
    /// 0s: no waiting (scrapes that queue up while an entry is written still share the next).
    #[arg(long = "cluster.write-batch-window", default_value = "200ms")]
    pub(crate) cluster_write_batch_window: String,

    /// How long to keep samples (Prometheus duration). Default 15d.
    #[arg(
        long = "storage.retention.time",
        visible_alias = "storage.tsdb.retention.time"
    )]
    pub(crate) retention_time: Option<String>,

    /// Maximum bytes of blocks to keep (e.g. 512MB, 10GB); oldest blocks go first. 0 = off.
    #[arg(
        long = "storage.retention.size",
        visible_alias = "storage.tsdb.retention.size"
    )]
    pub(crate) retention_size: Option<String>,

    /// Address to listen on for the HTTP API.
    #[arg(long = "web.listen-address", default_value = DEFAULT_LISTEN)]
    pub(crate) listen_address: String,

    /// Prometheus web config file (TLS, basic auth).
    #[arg(long = "web.config.file")]
    pub(crate) web_config_file: Option<PathBuf>,

    /// Enable the admin API (delete_series, clean_tombstones, snapshot, flush).
    #[arg(long = "web.enable-admin-api")]
    pub(crate) enable_admin_api: bool,

    /// Accepted for Prometheus compatibility; the remote-write receiver is always on.
    #[arg(long = "web.enable-remote-write-receiver", hide = true)]
    pub(crate) enable_remote_write_receiver: bool,

    /// Accepted for Prometheus compatibility (lifecycle endpoints are always on).
    #[arg(long = "web.enable-lifecycle", hide = true)]
    pub(crate) enable_lifecycle: bool,

    /// External URL (used in generator URLs); accepted for compatibility.
    #[arg(long = "web.external-url")]
    pub(crate) external_url: Option<String>,

    /// Largest accepted request body before decompression (e.g. 32MB; remote write, import).
    #[arg(long = "web.max-request-body-bytes", default_value = "32MB")]
    pub(crate) max_request_body: String,

    /// Time allowed to receive a request body (slow clients are cut off with 408).
    #[arg(long = "web.read-timeout", default_value = "60s")]
    pub(crate) web_read_timeout: String,

    /// Time allowed for a request's headers (the connection is closed after it).
    #[arg(long = "web.read-header-timeout", default_value = "10s")]
    pub(crate) web_read_header_timeout: String,

    /// Most open HTTP connections; more are closed at once.
    #[arg(long = "web.max-connections", default_value_t = 512)]
    pub(crate) web_max_connections: usize,

    /// Most labels on one ingested series (remote write, import).
    #[arg(long = "web.max-labels-per-series", default_value_t = 256)]
    pub(crate) max_labels_per_series: usize,

    /// Longest label value accepted on ingest, bytes.
    #[arg(long = "web.max-label-value-bytes", default_value_t = 16 * 1024)]
    pub(crate) max_label_value_bytes: usize,

    /// Exemplars kept in memory for /api/v1/query_exemplars.
    #[arg(long = "storage.exemplars.exemplars-limit", default_value_t = 100_000)]
    pub(crate) exemplars_limit: usize,

    /// Most samples one remote read request may return (0: no limit).
    #[arg(
        long = "storage.remote.read-sample-limit",
        default_value_t = 50_000_000
    )]
    pub(crate) remote_read_sample_limit: usize,

    /// Concurrent remote read requests (0: no limit).
    #[arg(long = "storage.remote.read-concurrent-limit", default_value_t = 10)]
    pub(crate) remote_read_concurrent_limit: usize,

    /// Largest frame of a streamed remote read response, bytes.
    #[arg(
        long = "storage.remote.read-max-bytes-in-frame",
        default_value_t = 1_048_576
    )]
    pub(crate) remote_read_max_bytes_in_frame: usize,

    /// Lookback delta of instant selectors.
    #[arg(long = "query.lookback-delta", default_value = "5m")]
    pub(crate) lookback_delta: String,

    /// Maximum samples a query may load.
    #[arg(long = "query.max-samples", default_value_t = 50_000_000)]
    pub(crate) max_samples: usize,

    /// Maximum time a query may take.
    #[arg(long = "query.timeout", default_value = "2m")]
    pub(crate) query_timeout: String,

    /// Coarsest downsampled data queries read: auto (the planner picks per selector), raw,
    /// or a resolution such as 5m; the max_source_resolution query parameter overrides it.
    #[arg(long = "query.max-source-resolution", default_value = "auto")]
    pub(crate) max_source_resolution: String,

    /// Log level (debug, info, warn, error).
    #[arg(long = "log.level", default_value = "info")]
    pub(crate) log_level: String,

    /// Log format: json (default) or logfmt.
    #[arg(long = "log.format", default_value = "json")]
    pub(crate) log_format: String,
}
