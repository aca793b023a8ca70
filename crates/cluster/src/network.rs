//! openraft's network over tonic: every Raft message of a shard is one unary gRPC call carrying
//! openraft's request type as MessagePack (proto/tidemark/cluster/v1/cluster.proto).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::pb::RaftRequest;
use crate::pb::cluster_client::ClusterClient;
use crate::types::{NodeId, TypeConfig, decode, encode};

/// Largest gRPC message either side accepts (snapshot chunks, select replies).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// gRPC clients to the other nodes, one lazily connected channel each (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Clients {
    inner: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    /// A client for `node` at `addr` (host:port).
    pub fn get(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
        let mut g = self.inner.lock();
        if let Some((a, ch)) = g.get(&node)
            && a == addr
        {
            return Ok(client(ch.clone()));
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        g.insert(node, (addr.to_string(), ch.clone()));
        Ok(client(ch))
    }
}

fn client(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Node id -> gRPC address: this node's `--cluster.peers`, plus the nodes added since (their
/// addresses come from the metadata group's membership). Shared by every group's network.
pub type AddressBook = Arc<parking_lot::RwLock<std::collections::BTreeMap<NodeId, String>>>;

/// Creates the connections of one shard group. Addresses come from this node's peer list, not
/// from the membership stored in the Raft log: each node may reach the others by different
/// addresses (NAT, proxies), and an address may change across restarts.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    pub shard: u32,
    pub clients: Clients,
    pub peers: AddressBook,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = ShardConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> ShardConnection {
        ShardConnection {
            shard: self.shard,
            target,
            addr: self
                .peers
                .read()
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.addr.clone()),
            clients: self.clients.clone(),
        }
    }
}

/// One shard group's connection to one node.
#[derive(Debug)]
pub struct ShardConnection {
    shard: u32,
    target: NodeId,
    addr: String,
    clients: Clients,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl ShardConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut c = self
            .clients
            .get(self.target, &self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut r = tonic::Request::new(RaftRequest {
            shard: self.shard,
            payload,
        });
        r.set_timeout(option.hard_ttl());
        let reply = match kind {
            Kind::Append => c.append_entries(r).await,
            Kind::Vote => c.vote(r).await,
            Kind::Snapshot => c.install_snapshot(r).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&s))
            }
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let res: Result<Resp, RaftError<NodeId, E>> = decode(&reply.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for ShardConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
