//! Raft's ReadIndex between nodes over a plain TCP exchange on the cluster port.
//!
//! A follower serves a linearizable read from its own replica once it has applied the read
//! index its shard's leader hands out after the read started. That round trip is on the path
//! of every query, so it skips gRPC: a connection to the cluster port that opens with
//! [`MAGIC`] (which cannot start an HTTP/2 connection) carries length-prefixed
//! `ReadIndexRequest` / `ReadIndexReply` messages (proto/tidemark/cluster/v1/cluster.proto),
//! one reply per request, in order. The asking side is a blocking thread (the storage
//! traits are synchronous): it writes to a pooled connection and reads the reply itself, and
//! the leader answers from the connection's task, so one round trip wakes one thread on each
//! side.
//!
//! Frame: `u32` little-endian length, then the protobuf message.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::Node;
use crate::pb;
use crate::types::NodeId;

/// First bytes of a read-index connection (an HTTP/2 connection starts with `PRI `).
pub const MAGIC: [u8; 4] = [0xF1, b'T', b'R', b'I'];

/// Largest frame either side accepts (a request lists shard ids).
const MAX_FRAME: usize = 1 << 20;

/// Idle connections kept per peer.
const POOL: usize = 8;

/// How long a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Idle connections to one node, and the address they were made to.
type Idle = (String, Vec<TcpStream>);

/// Connections to the other nodes' read-index service, pooled per node (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ReadIndexClients {
    idle: Arc<Mutex<HashMap<NodeId, Idle>>>,
}

/// One question: the read indexes of `shards`, all led by `node` at `addr`.
#[derive(Debug)]
pub struct Ask {
    pub node: NodeId,
    pub addr: String,
    pub shards: Vec<u32>,
}

impl ReadIndexClients {
    pub fn new() -> ReadIndexClients {
        ReadIndexClients::default()
    }

    /// Asks every node of `asks` at once (all requests are sent before the first reply is
    /// read, so the leaders answer in parallel) and waits at most `timeout` for each reply.
    /// Blocks this thread. `None` for a node that did not answer.
    pub fn ask(&self, asks: &[Ask], timeout: Duration) -> Vec<Option<pb::ReadIndexReply>> {
        let sent: Vec<Option<(TcpStream, bool)>> = asks
            .iter()
            .map(|a| {
                let req = frame(&pb::ReadIndexRequest {
                    shards: a.shards.clone(),
                });
                // A pooled connection the peer closed fails here or on the read: one retry on a
                // new connection.
                if let Some(mut s) = self.pooled(a)
                    && s.write_all(&req).is_ok()
                {
                    return Some((s, true));
                }
                let mut s = connect(&a.addr, timeout).ok()?;
                s.write_all(&req).ok()?;
                Some((s, false))
            })
            .collect();
        asks.iter()
            .zip(sent)
            .map(|(a, sent)| {
                let (mut s, reused) = sent?;
                let rep = match read_reply(&mut s, timeout) {
                    Ok(r) => r,
                    Err(_) if reused => {
                        s = connect(&a.addr, timeout).ok()?;
                        s.write_all(&frame(&pb::ReadIndexRequest {
                            shards: a.shards.clone(),
                        }))
                        .ok()?;
                        read_reply(&mut s, timeout).ok()?
                    }
                    Err(_) => return None,
                };
                self.put_back(a, s);
                Some(rep)
            })
            .collect()
    }

    fn pooled(&self, a: &Ask) -> Option<TcpStream> {
        let mut g = self.idle.lock();
        match g.get_mut(&a.node) {
            Some((addr, v)) if *addr == a.addr => v.pop(),
            _ => None,
        }
    }

    fn put_back(&self, a: &Ask, s: TcpStream) {
        let mut g = self.idle.lock();
        let e = g
            .entry(a.node)
            .or_insert_with(|| (a.addr.clone(), Vec::new()));
        if e.0 != a.addr {
            *e = (a.addr.clone(), Vec::new());
        }
        if e.1.len() < POOL {
            e.1.push(s);
        }
    }
}

fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no address for {addr}"),
    );
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(mut s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.write_all(&MAGIC)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn frame(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut b = Vec::with_capacity(4 + body.len());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&body);
    b
}

fn read_reply(s: &mut TcpStream, timeout: Duration) -> std::io::Result<pb::ReadIndexReply> {
    s.set_read_timeout(Some(timeout))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("read-index reply of {n} bytes, at most {MAX_FRAME} expected"),
        ));
    }
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    pb::ReadIndexReply::decode(b.as_slice())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Serves one read-index connection (its [`MAGIC`] already read) until the peer closes it,
/// sends a bad frame, or the node stops.
pub async fn serve(node: Weak<Node>, mut s: tokio::net::TcpStream) {
    let mut len = [0u8; 4];
    let mut buf = Vec::new();
    loop {
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            tracing::debug!(bytes = n, "read-index request too large; closing");
            return;
        }
        buf.resize(n, 0);
        if s.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(req) = pb::ReadIndexRequest::decode(buf.as_slice()) else {
            tracing::debug!("undecodable read-index request; closing");
            return;
        };
        let Some(node) = node.upgrade() else { return };
        let rep = node.read_indexes(req.shards).await;
        drop(node);
        if s.write_all(&frame(&rep)).await.is_err() {
            return;
        }
    }
}
