//! `tidemark cluster status` and `tidemark dev-cluster`.

use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use anyhow::Context;
use tidemark_cluster::node::Node;

use crate::cli::{ClusterCommand, DevClusterArgs};

pub(crate) fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Status {
            address,
            json,
            checksums,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let st = rt
                .block_on(Node::remote_status(&address, checksums))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", status_json(&st));
            } else {
                print!("{}", status_text(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::AddNode {
            address,
            node_id,
            node_address,
            wait,
        } => change_nodes(&address, Some((node_id, node_address)), None, wait),
        ClusterCommand::RemoveNode {
            address,
            node_id,
            wait,
        } => change_nodes(&address, None, Some(node_id), wait),
    }
}

/// `add-node` / `remove-node`: the membership change, then (with `wait`) polling every node
/// until each shard's leader reports the voters the shard map asks for.
fn change_nodes(
    address: &str,
    add: Option<(u64, String)>,
    remove: Option<u64>,
    wait: u64,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let nodes = rt
        .block_on(Node::remote_change_nodes(address, add, remove))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "cluster nodes: {}",
        nodes
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    if wait == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let pending = rt.block_on(moving_shards(&nodes));
        match &pending {
            Ok(p) if p.is_empty() => {
                println!("every shard's replicas are in place");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(p) => tracing::debug!(pending = ?p, "replicas still moving"),
            Err(e) => tracing::debug!(error = %e, "status"),
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "replicas still moving after {wait} s: {}",
                match pending {
                    Ok(p) => format!("shards {p:?}"),
                    Err(e) => e,
                }
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Shards whose leader (found by asking every node) does not have exactly the target voters
/// yet, or that no node reports a leader for.
async fn moving_shards(
    nodes: &std::collections::BTreeMap<u64, String>,
) -> Result<Vec<u32>, String> {
    let mut num_shards = 0;
    let mut done = std::collections::BTreeSet::new();
    for addr in nodes.values() {
        let st = Node::remote_status(addr, false)
            .await
            .map_err(|e| e.to_string())?;
        num_shards = st.num_shards;
        let ids: Vec<u64> = nodes.keys().copied().collect();
        for sh in &st.shards {
            // The replicas the map gives the shard over the new node set.
            let mut want = tidemark_cluster::node::shard_replicas(
                &ids,
                sh.shard,
                st.replication_factor as usize,
            );
            let mut v = sh.voters.clone();
            want.sort_unstable();
            v.sort_unstable();
            if sh.leader == st.node_id && sh.learners.is_empty() && v == want {
                done.insert(sh.shard);
            }
        }
    }
    Ok((0..num_shards).filter(|s| !done.contains(s)).collect())
}

fn status_json(st: &tidemark_cluster::pb::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "node_id": st.node_id,
        "version": st.version,
        "num_shards": st.num_shards,
        "nodes": st.nodes.iter().map(|n| serde_json::json!({
            "id": n.id, "address": n.address, "live": n.live,
        })).collect::<Vec<_>>(),
        "meta": st.meta.as_ref().map(|m| serde_json::json!({
            "leader": m.leader, "voters": m.voters, "learners": m.learners, "term": m.term,
        })),
        "shards": st.shards.iter().map(|s| serde_json::json!({
            "shard": s.shard, "leader": s.leader, "state": s.state, "term": s.term,
            "last_log_index": s.last_log_index, "last_applied": s.last_applied,
            "snapshot_index": s.snapshot_index, "voters": s.voters,
            "head_series": s.head_series,
            "checksum": format!("{:016x}", s.checksum), "samples": s.samples,
            "rejected_samples": s.rejected_samples, "dropped_at_commit": s.dropped_at_commit,
            "target": s.target, "learners": s.learners,
            "replication": s.replication.iter().map(|r| serde_json::json!({
                "node": r.node, "matched": r.matched,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn status_text(st: &tidemark_cluster::pb::StatusReply) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "node {} (tidemark {}), {} shards",
        st.node_id, st.version, st.num_shards
    );
    let _ = writeln!(s, "\nNODE  ADDRESS                 HEALTH");
    for n in &st.nodes {
        let _ = writeln!(
            s,
            "{:<5} {:<23} {}",
            n.id,
            n.address,
            if n.live { "up" } else { "down" }
        );
    }
    let _ = writeln!(
        s,
        "\nSHARD LEADER  THIS NODE  TERM  LAST LOG  APPLIED  SNAPSHOT  HEAD SERIES  VOTERS   TARGET   LAG (leader's view)"
    );
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    for sh in &st.shards {
        let lag: Vec<String> = sh
            .replication
            .iter()
            .map(|r| {
                let lag = if r.matched < 0 {
                    "?".to_string()
                } else {
                    (sh.last_log_index - r.matched).max(0).to_string()
                };
                format!("{}:{lag}", r.node)
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<5} {:<7} {:<10} {:<5} {:<9} {:<8} {:<9} {:<12} {:<8} {:<8} {}",
            sh.shard,
            if sh.leader == 0 {
                "none".to_string()
            } else {
                sh.leader.to_string()
            },
            sh.state,
            sh.term,
            sh.last_log_index,
            sh.last_applied,
            sh.snapshot_index,
            sh.head_series,
            ids(&sh.voters),
            ids(&sh.target),
            lag.join(" ")
        );
    }
    if let Some(m) = &st.meta {
        let _ = writeln!(
            s,
            "\nmetadata group: leader {}, voters {}, learners {}",
            if m.leader == 0 {
                "none".to_string()
            } else {
                m.leader.to_string()
            },
            ids(&m.voters),
            if m.learners.is_empty() {
                "none".to_string()
            } else {
                ids(&m.learners)
            }
        );
    }
    s
}

/// Starts `n` server processes on 127.0.0.1 and waits; Ctrl-C (or one exiting) stops all.
pub(crate) fn dev_cluster(a: DevClusterArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the tidemark binary")?;
    let peers: Vec<String> = (1..=a.nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", u32::from(a.cluster_port) + i - 1))
        .collect();
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=a.nodes {
        let http = u32::from(a.http_port) + i - 1;
        let cport = u32::from(a.cluster_port) + i - 1;
        let dir = a.dir.join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&exe)
            .arg("server")
            .arg(format!("--web.listen-address=127.0.0.1:{http}"))
            .arg(format!("--storage.path={}", dir.display()))
            .arg(format!("--cluster.node-id={i}"))
            .arg(format!("--cluster.listen-address=127.0.0.1:{cport}"))
            .arg(format!("--cluster.peers={}", peers.join(",")))
            .arg(format!("--cluster.shards={}", a.shards))
            .args(&a.server_args)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        println!(
            "node {i}: HTTP http://127.0.0.1:{http}  cluster 127.0.0.1:{cport}  data {}",
            dir.display()
        );
        children.push(child);
    }
    println!(
        "cluster status: tidemark cluster status --address 127.0.0.1:{}",
        a.cluster_port
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut code = ExitCode::SUCCESS;
    'wait: while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for c in children.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("a node exited ({st}); stopping the others");
                code = ExitCode::from(1);
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in children.iter_mut() {
        // SIGTERM: each node shuts down cleanly.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    Ok(code)
}
