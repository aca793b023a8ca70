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
//!
//! Concurrent reads on one node share requests: at most one request is in flight to each leader
//! node, and a read that arrives while one is in flight waits for the **next** one (whose
//! request carries the shards of every read waiting for it), never for the one in flight: that
//! request may have left before the read started, and a read index fetched before a read
//! started could miss a write acknowledged just before it (Raft's ReadIndex must be asked after
//! the read begins). So a read costs at most two round trips, and a burst of concurrent reads
//! costs the leader two requests instead of one per read.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
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

/// Finished requests whose replies are kept per node for the reads that waited for them.
const FINISHED_KEPT: usize = 16;

/// Idle connections to one node, and the address they were made to.
type Idle = (String, Vec<TcpStream>);

/// Connections to the other nodes' read-index service, pooled per node, and the requests to
/// each node (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ReadIndexClients {
    idle: Arc<Mutex<HashMap<NodeId, Idle>>>,
    flights: Arc<Mutex<HashMap<NodeId, Arc<Flight>>>>,
}

/// The requests to one leader node (see the module documentation). Requests are numbered in
/// the order they are sent (their sequence number).
#[derive(Debug, Default)]
struct Flight {
    state: Mutex<FlightState>,
    /// Signalled when a request finishes.
    finished: Condvar,
}

#[derive(Debug, Default)]
struct FlightState {
    /// The sequence number of the request in flight (then `next` is the one after it).
    in_flight: Option<u64>,
    /// The sequence number of the next request.
    next: u64,
    /// Shards of the reads waiting for request `next`.
    waiting: BTreeSet<u32>,
    /// Replies of the last finished requests (`None`: no answer), oldest first.
    done: VecDeque<(u64, Option<pb::ReadIndexReply>)>,
}

/// What a read does about one leader node.
#[derive(Debug)]
enum Role {
    /// Send request `seq` for `shards` (no request was in flight).
    Send { seq: u64, shards: Vec<u32> },
    /// Wait for request `seq`, the one after the request in flight.
    Wait { seq: u64 },
}

/// Publishes "no answer" for a request whose sender did not publish one (so that the reads
/// waiting for it and the next request are not held up).
struct Sending<'a> {
    clients: &'a ReadIndexClients,
    node: NodeId,
    seq: u64,
    published: bool,
}

impl Sending<'_> {
    fn publish(mut self, rep: Option<pb::ReadIndexReply>) {
        self.published = true;
        self.clients.publish(self.node, self.seq, rep);
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.clients.publish(self.node, self.seq, None);
        }
    }
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

    /// The read indexes of `asks`, each asked after this call started: every node of
    /// `asks` at once (the requests this call sends are all sent before the first reply is
    /// read, so the leaders answer in parallel), sharing requests with concurrent calls (see
    /// the module documentation). Waits at most `timeout` per round trip. Blocks this thread.
    /// `None` for a node that did not answer; otherwise the shards in the order asked (a shard
    /// missing from the leader's answer gets index -1).
    pub fn ask(&self, asks: &[Ask], timeout: Duration) -> Vec<Option<pb::ReadIndexReply>> {
        let roles: Vec<Role> = asks.iter().map(|a| self.join(a)).collect();
        let mut out: Vec<Option<pb::ReadIndexReply>> = vec![None; asks.len()];
        // The requests this call starts: all sent, then every reply read and published.
        let mut sending = Vec::new();
        for (i, (a, role)) in asks.iter().zip(&roles).enumerate() {
            if let Role::Send { seq, shards } = role {
                let guard = Sending {
                    clients: self,
                    node: a.node,
                    seq: *seq,
                    published: false,
                };
                let sent = self.send(a, shards, timeout);
                sending.push((i, guard, shards, sent));
            }
        }
        for (i, guard, shards, sent) in sending {
            let rep = self.receive(&asks[i], shards, sent, timeout);
            out[i] = rep.as_ref().map(|r| pick(r, &asks[i].shards));
            guard.publish(rep);
        }
        // Then the requests it waits for.
        for (i, (a, role)) in asks.iter().zip(&roles).enumerate() {
            if let Role::Wait { seq } = role {
                out[i] = self.wait_for(a, *seq, timeout);
            }
        }
        out
    }

    fn flight(&self, node: NodeId) -> Arc<Flight> {
        self.flights.lock().entry(node).or_default().clone()
    }

    /// Sends a request to `a.node` now when none is in flight, else waits for the next one.
    fn join(&self, a: &Ask) -> Role {
        let f = self.flight(a.node);
        let mut g = f.state.lock();
        if g.in_flight.is_none() {
            let seq = g.next;
            g.next += 1;
            g.in_flight = Some(seq);
            // Reads that waited for this request and have not sent it yet.
            let mut shards = std::mem::take(&mut g.waiting);
            shards.extend(&a.shards);
            Role::Send {
                seq,
                shards: shards.into_iter().collect(),
            }
        } else {
            g.waiting.extend(&a.shards);
            Role::Wait { seq: g.next }
        }
    }

    /// The answer of request `seq` to `a.node` (for `a.shards`); sends it when it is due and
    /// nobody sent it yet. Waits at most two round trips (the request in flight, then `seq`).
    fn wait_for(&self, a: &Ask, seq: u64, timeout: Duration) -> Option<pb::ReadIndexReply> {
        let f = self.flight(a.node);
        let deadline = Instant::now() + timeout * 2;
        let mut g = f.state.lock();
        loop {
            if let Some((_, rep)) = g.done.iter().find(|(x, _)| *x == seq) {
                return rep.as_ref().map(|r| pick(r, &a.shards));
            }
            if g.done.front().is_some_and(|(x, _)| *x > seq) {
                // Finished so long ago that its answer was dropped (practically never).
                return None;
            }
            if g.in_flight.is_none() && g.next == seq {
                g.next += 1;
                g.in_flight = Some(seq);
                let mut shards = std::mem::take(&mut g.waiting);
                shards.extend(&a.shards);
                drop(g);
                let shards: Vec<u32> = shards.into_iter().collect();
                let guard = Sending {
                    clients: self,
                    node: a.node,
                    seq,
                    published: false,
                };
                let sent = self.send(a, &shards, timeout);
                let rep = self.receive(a, &shards, sent, timeout);
                let out = rep.as_ref().map(|r| pick(r, &a.shards));
                guard.publish(rep);
                return out;
            }
            if f.finished.wait_until(&mut g, deadline).timed_out() {
                return None;
            }
        }
    }

    /// Records the answer of request `seq` to `node` and wakes the reads waiting for it.
    fn publish(&self, node: NodeId, seq: u64, rep: Option<pb::ReadIndexReply>) {
        let f = self.flight(node);
        {
            let mut g = f.state.lock();
            if g.in_flight == Some(seq) {
                g.in_flight = None;
            }
            g.done.push_back((seq, rep));
            while g.done.len() > FINISHED_KEPT {
                g.done.pop_front();
            }
        }
        f.finished.notify_all();
    }

    /// Writes a request for `shards` to `a.node`: on a pooled connection (`true`) or a new one.
    fn send(&self, a: &Ask, shards: &[u32], timeout: Duration) -> Option<(TcpStream, bool)> {
        let req = frame(&pb::ReadIndexRequest {
            shards: shards.to_vec(),
        });
        // A pooled connection the peer closed fails here or on the read: one retry on a new
        // connection.
        if let Some(mut s) = self.pooled(a)
            && s.write_all(&req).is_ok()
        {
            return Some((s, true));
        }
        let mut s = connect(&a.addr, timeout).ok()?;
        s.write_all(&req).ok()?;
        Some((s, false))
    }

    /// Reads the reply to what [`ReadIndexClients::send`] sent (retrying once on a new
    /// connection when a pooled one failed) and pools the connection again.
    fn receive(
        &self,
        a: &Ask,
        shards: &[u32],
        sent: Option<(TcpStream, bool)>,
        timeout: Duration,
    ) -> Option<pb::ReadIndexReply> {
        let (mut s, reused) = sent?;
        let rep = match read_reply(&mut s, timeout) {
            Ok(r) => r,
            Err(_) if reused => {
                s = connect(&a.addr, timeout).ok()?;
                s.write_all(&frame(&pb::ReadIndexRequest {
                    shards: shards.to_vec(),
                }))
                .ok()?;
                read_reply(&mut s, timeout).ok()?
            }
            Err(_) => return None,
        };
        self.put_back(a, s);
        Some(rep)
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

/// The answers for `shards`, in that order, from a reply that may cover more shards (-1 for a
/// shard it does not cover).
fn pick(rep: &pb::ReadIndexReply, shards: &[u32]) -> pb::ReadIndexReply {
    pb::ReadIndexReply {
        shards: shards
            .iter()
            .map(|&s| {
                rep.shards
                    .iter()
                    .find(|x| x.shard == s)
                    .cloned()
                    .unwrap_or_else(|| pb::ShardReadIndex {
                        shard: s,
                        index: -1,
                        error: "not in the leader's answer".into(),
                        ..Default::default()
                    })
            })
            .collect(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The asking side against a real listener on 127.0.0.1 that plays the leader (one thread
    //! per connection), and [`serve`] against a real socket. Every wait is bounded.
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// How the fake leader answers a request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        /// Index `100 + shard` for every shard; the connection stays open.
        Indexes,
        /// As `Indexes`, then closes the connection.
        OnceThenClose,
        /// A frame length above [`MAX_FRAME`] (and nothing after it).
        Oversized,
        /// A frame whose body is not a `ReadIndexReply`.
        Garbage,
        /// A frame length of 100 followed by 3 bytes, then the connection is closed.
        Truncated,
        /// Nothing (the connection stays open).
        Silent,
    }

    struct Fake {
        addr: String,
        /// Connections accepted so far.
        accepted: Arc<AtomicUsize>,
        /// Requests received so far (on any connection).
        requests: Arc<AtomicUsize>,
    }

    /// Serves one connection of a fake leader: checks the magic, then writes what `answer`
    /// returns for each request frame, and closes when it says so (or on any error).
    fn serve_fake(
        mut s: std::net::TcpStream,
        mut answer: impl FnMut(pb::ReadIndexRequest) -> (Vec<u8>, bool),
    ) {
        let mut magic = [0u8; 4];
        if s.read_exact(&mut magic).is_err() || magic != MAGIC {
            return;
        }
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            let Ok(req) = pb::ReadIndexRequest::decode(b.as_slice()) else {
                return;
            };
            let (out, close) = answer(req);
            if s.write_all(&out).is_err() || close {
                return;
            }
        }
    }

    /// A reply with `index(shard)` for every shard `req` asks about.
    fn reply_with(req: &pb::ReadIndexRequest, index: impl Fn(u32) -> i64) -> pb::ReadIndexReply {
        pb::ReadIndexReply {
            shards: req
                .shards
                .iter()
                .map(|&shard| pb::ShardReadIndex {
                    shard,
                    index: index(shard),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// A fake leader on a fresh port: connection `i` (from 0) answers with `replies[i]`, the
    /// last entry for later connections.
    fn fake(replies: Vec<Reply>) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (accepted.clone(), requests.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let i = a.fetch_add(1, Ordering::SeqCst);
                let reply = replies[i.min(replies.len() - 1)];
                let r = r.clone();
                std::thread::spawn(move || {
                    serve_fake(s, |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let out = match reply {
                            Reply::Indexes | Reply::OnceThenClose => {
                                frame(&reply_with(&req, |shard| 100 + i64::from(shard)))
                            }
                            Reply::Oversized => ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),
                            // Field 1 (length-delimited) claims 5 bytes, 1 follows.
                            Reply::Garbage => vec![3, 0, 0, 0, 0x0a, 0x05, 0x01],
                            Reply::Truncated => vec![100, 0, 0, 0, 1, 2, 3],
                            Reply::Silent => Vec::new(),
                        };
                        let close = matches!(reply, Reply::OnceThenClose | Reply::Truncated);
                        (out, close)
                    });
                });
            }
        });
        Fake {
            addr,
            accepted,
            requests,
        }
    }

    fn ask_one(
        c: &ReadIndexClients,
        f: &Fake,
        shards: Vec<u32>,
        timeout: Duration,
    ) -> Option<pb::ReadIndexReply> {
        let asks = [Ask {
            node: 2,
            addr: f.addr.clone(),
            shards,
        }];
        let mut r = c.ask(&asks, timeout);
        assert_eq!(r.len(), 1);
        r.pop().unwrap()
    }

    fn indexes(r: &pb::ReadIndexReply) -> Vec<(u32, i64)> {
        r.shards.iter().map(|s| (s.shard, s.index)).collect()
    }

    fn idle(c: &ReadIndexClients, node: NodeId) -> usize {
        c.idle.lock().get(&node).map_or(0, |(_, v)| v.len())
    }

    /// Runs `f` on its own thread and fails the test if it takes longer than `limit` (a hang
    /// must not hang the test run).
    fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no result within {limit:?}"))
    }

    #[test]
    fn a_connection_is_reused_for_the_next_request() {
        bounded(Duration::from_secs(10), || {
            let f = fake(vec![Reply::Indexes]);
            let c = ReadIndexClients::new();
            let t = Duration::from_secs(2);
            let r = ask_one(&c, &f, vec![0, 2], t).unwrap();
            assert_eq!(indexes(&r), vec![(0, 100), (2, 102)]);
            assert_eq!(idle(&c, 2), 1, "the connection went back to the pool");
            let r = ask_one(&c, &f, vec![1], t).unwrap();
            assert_eq!(indexes(&r), vec![(1, 101)]);
            assert_eq!(
                f.accepted.load(Ordering::SeqCst),
                1,
                "one connection for both"
            );
            assert_eq!(f.requests.load(Ordering::SeqCst), 2);
            assert_eq!(idle(&c, 2), 1);
        });
    }

    #[test]
    fn a_closed_connection_is_dropped_and_the_next_request_reconnects() {
        bounded(Duration::from_secs(10), || {
            // Every connection answers once and is closed by the leader.
            let f = fake(vec![Reply::OnceThenClose]);
            let c = ReadIndexClients::new();
            let t = Duration::from_secs(2);
            for round in 1..=3 {
                let r = ask_one(&c, &f, vec![round], t).unwrap();
                assert_eq!(indexes(&r), vec![(round, 100 + i64::from(round))]);
                // Each request after the first finds its pooled connection dead and makes a
                // new one; the dead one is not pooled again.
                assert_eq!(f.accepted.load(Ordering::SeqCst), round as usize);
                assert_eq!(f.requests.load(Ordering::SeqCst), round as usize);
                assert_eq!(idle(&c, 2), 1);
            }
        });
    }

    #[test]
    fn a_node_that_is_gone_gives_none_and_leaves_no_connection() {
        bounded(Duration::from_secs(10), || {
            // A port nobody listens on (bound, then released).
            let addr = {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            };
            let c = ReadIndexClients::new();
            let asks = [Ask {
                node: 3,
                addr,
                shards: vec![0],
            }];
            assert_eq!(c.ask(&asks, Duration::from_secs(1)), vec![None]);
            assert_eq!(idle(&c, 3), 0);
        });
    }

    #[test]
    fn bad_replies_are_errors_not_panics_or_hangs() {
        for reply in [
            Reply::Oversized,
            Reply::Garbage,
            Reply::Truncated,
            Reply::Silent,
        ] {
            let took = bounded(Duration::from_secs(10), move || {
                let f = fake(vec![reply]);
                let c = ReadIndexClients::new();
                let start = Instant::now();
                assert!(
                    ask_one(&c, &f, vec![0], Duration::from_millis(300)).is_none(),
                    "{reply:?}"
                );
                assert_eq!(
                    idle(&c, 2),
                    0,
                    "{reply:?}: a failed connection is not pooled"
                );
                start.elapsed()
            });
            // Only the silent leader costs the timeout.
            assert!(took < Duration::from_secs(2), "{reply:?} took {took:?}");
        }
    }

    #[test]
    fn a_bad_reply_on_a_pooled_connection_is_retried_on_a_new_one() {
        bounded(Duration::from_secs(10), || {
            // The first connection answers once, then with garbage; later ones answer.
            let f = fake(vec![Reply::Indexes, Reply::Indexes]);
            let c = ReadIndexClients::new();
            let t = Duration::from_secs(2);
            assert!(ask_one(&c, &f, vec![0], t).is_some());
            // Replace the pooled connection with one to a leader that answers garbage.
            let g = fake(vec![Reply::Garbage]);
            let bad = connect(&g.addr, t).unwrap();
            c.idle.lock().insert(2, (f.addr.clone(), vec![bad]));
            let r = ask_one(&c, &f, vec![4], t).unwrap();
            assert_eq!(indexes(&r), vec![(4, 104)]);
            assert_eq!(g.requests.load(Ordering::SeqCst), 1);
            assert_eq!(
                f.accepted.load(Ordering::SeqCst),
                2,
                "retried on a new connection"
            );
            assert_eq!(idle(&c, 2), 1);
        });
    }

    /// The requests a fake leader received: (number from 1, shards).
    type Seen = Arc<Mutex<Vec<(i64, Vec<u32>)>>>;

    /// A fake leader that records every request (number from 1, shards) and answers index =
    /// the request's number for every shard asked; it holds its answer to request 1 until
    /// `gate` receives.
    fn gated_leader(gate: std::sync::mpsc::Receiver<()>) -> (String, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let gate = Arc::new(Mutex::new(gate));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (seen, gate) = (s2.clone(), gate.clone());
                std::thread::spawn(move || {
                    serve_fake(s, |req| {
                        let n = {
                            let mut g = seen.lock();
                            let n = g.len() as i64 + 1;
                            g.push((n, req.shards.clone()));
                            g.len() as i64
                        };
                        if n == 1 {
                            let _ = gate.lock().recv_timeout(Duration::from_secs(10));
                        }
                        (frame(&reply_with(&req, |_| n)), false)
                    });
                });
            }
        });
        (addr, seen)
    }

    /// Polls `cond` every millisecond for at most 5 s.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(5), "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn reads_arriving_during_a_request_share_the_next_one_not_the_one_in_flight() {
        bounded(Duration::from_secs(20), || {
            let (open, gate) = std::sync::mpsc::channel();
            let (addr, seen) = gated_leader(gate);
            let c = ReadIndexClients::new();
            let t = Duration::from_secs(5);
            let ask = |shards: Vec<u32>| {
                let (c, addr) = (c.clone(), addr.clone());
                std::thread::spawn(move || {
                    let asks = [Ask {
                        node: 2,
                        addr,
                        shards,
                    }];
                    c.ask(&asks, t).pop().unwrap().map(|r| indexes(&r))
                })
            };
            // Read A sends request 1, which the leader holds.
            let a = ask(vec![0]);
            eventually("request 1 at the leader", || seen.lock().len() == 1);
            // Reads B and C start while request 1 is in flight: they must not use its answer
            // (it may predate them), and they share one request after it.
            let b = ask(vec![1]);
            let cc = ask(vec![2, 0]);
            let flight = c.flight(2);
            eventually("B and C waiting", || {
                flight.state.lock().waiting == BTreeSet::from([0, 1, 2])
            });
            assert_eq!(
                seen.lock().len(),
                1,
                "nothing sent while request 1 is in flight"
            );
            open.send(()).unwrap();
            assert_eq!(a.join().unwrap(), Some(vec![(0, 1)]));
            assert_eq!(b.join().unwrap(), Some(vec![(1, 2)]));
            assert_eq!(cc.join().unwrap(), Some(vec![(2, 2), (0, 2)]));
            assert_eq!(
                *seen.lock(),
                vec![(1, vec![0]), (2, vec![0, 1, 2])],
                "one request for both waiting reads, covering their shards"
            );
            // A read after that sends a request of its own.
            assert_eq!(ask(vec![1]).join().unwrap(), Some(vec![(1, 3)]));
            assert_eq!(seen.lock().len(), 3);
        });
    }

    #[test]
    fn a_request_that_gets_no_answer_does_not_hold_up_the_next_reads() {
        bounded(Duration::from_secs(20), || {
            // The first leader connection never answers; later ones do.
            let f = fake(vec![Reply::Silent, Reply::Indexes]);
            let c = ReadIndexClients::new();
            let t = Duration::from_millis(300);
            let c2 = c.clone();
            let addr = f.addr.clone();
            let first = std::thread::spawn(move || {
                let asks = [Ask {
                    node: 2,
                    addr,
                    shards: vec![0],
                }];
                c2.ask(&asks, t)
            });
            eventually("request 1 at the leader", || {
                f.requests.load(Ordering::SeqCst) == 1
            });
            // Waits for the silent request to time out, then sends its own.
            let r = ask_one(&c, &f, vec![1], t).unwrap();
            assert_eq!(indexes(&r), vec![(1, 101)]);
            assert_eq!(first.join().unwrap(), vec![None]);
            assert_eq!(f.requests.load(Ordering::SeqCst), 2);
            assert!(c.flight(2).state.lock().in_flight.is_none());
        });
    }

    /// The leader's side closes a connection that sends an oversized or undecodable frame,
    /// without reading (or allocating) the announced length.
    #[test]
    fn serve_closes_on_oversized_or_malformed_requests() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bad_frames: [Vec<u8>; 2] = [
            (u32::MAX).to_le_bytes().to_vec(),
            vec![3, 0, 0, 0, 0x0a, 0x05, 0x01],
        ];
        for bad in bad_frames {
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                let server = tokio::spawn(async move {
                    let (s, _) = l.accept().await.unwrap();
                    let mut magic = [0u8; 4];
                    let mut s = s;
                    s.read_exact(&mut magic).await.unwrap();
                    serve(Weak::new(), s).await;
                });
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.write_all(&MAGIC).await.unwrap();
                c.write_all(&bad).await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), server)
                    .await
                    .expect("serve returned")
                    .unwrap();
                // The connection is closed: the client reads end of stream.
                let mut b = [0u8; 1];
                let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                    .await
                    .expect("closed")
                    .unwrap_or(0);
                assert_eq!(n, 0);
            });
        }
    }
}
