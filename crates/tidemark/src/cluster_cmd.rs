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
    }
}

fn status_json(st: &tidemark_cluster::pb::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "node_id": st.node_id,
        "version": st.version,
        "num_shards": st.num_shards,
        "nodes": st.nodes.iter().map(|n| serde_json::json!({
            "id": n.id, "address": n.address, "live": n.live,
        })).collect::<Vec<_>>(),
        "shards": st.shards.iter().map(|s| serde_json::json!({
            "shard": s.shard, "leader": s.leader, "state": s.state, "term": s.term,
            "last_log_index": s.last_log_index, "last_applied": s.last_applied,
            "snapshot_index": s.snapshot_index, "voters": s.voters,
            "head_series": s.head_series,
            "checksum": format!("{:016x}", s.checksum), "samples": s.samples,
            "rejected_samples": s.rejected_samples, "dropped_at_commit": s.dropped_at_commit,
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
        "\nSHARD LEADER  THIS NODE  TERM  LAST LOG  APPLIED  SNAPSHOT  HEAD SERIES  LAG (leader's view)"
    );
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
            "{:<5} {:<7} {:<10} {:<5} {:<9} {:<8} {:<9} {:<12} {}",
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
            lag.join(" ")
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
