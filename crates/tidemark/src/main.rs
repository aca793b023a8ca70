//! `tidemark`: the binary. The only crate that knows every concrete type: it opens the engine,
//! builds the PromQL engine, the scrape manager and the HTTP API over the storage traits, and
//! handles signals.

mod cli;
mod cluster_cmd;
mod config;
mod logging;
mod rules_cmd;
mod server;
mod status;
mod tsdb_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Server(s) => {
            if s.cluster_node_id.is_some() {
                limit_malloc_arenas();
            }
            logging::init(&s.log_level, &s.log_format);
            server::run(*s)?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Tsdb { command } => tsdb_cmd::run(command),
        cli::Command::Promqltest { files } => {
            let summary = tidemark_promql::promqltest::run_test_files(&files);
            println!("{summary}");
            Ok(if summary.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        cli::Command::Cluster { command } => cluster_cmd::run(command),
        cli::Command::DevCluster(a) => cluster_cmd::dev_cluster(a),
        cli::Command::Test { command } => match command {
            cli::TestCommand::Rules { files } => Ok(rules_cmd::test_rules(&files)),
        },
        cli::Command::Check { command } => match command {
            cli::CheckCommand::Rules { files } => Ok(rules_cmd::check_rules(&files)),
            cli::CheckCommand::Config { files } => {
                let mut ok = true;
                for f in files {
                    // Rule files are part of the configuration (as in `promtool check config`).
                    match config::load(&f).and_then(|c| {
                        tidemark_rules::load_groups(&c.prometheus)
                            .map(|g| (c, g.len()))
                            .map_err(|e| anyhow::anyhow!("rule files: {e}"))
                    }) {
                        Ok((c, groups)) => println!(
                            "SUCCESS: {} is valid ({} scrape configs, {groups} rule groups)",
                            f.display(),
                            c.scrape_jobs()
                        ),
                        Err(e) => {
                            ok = false;
                            println!("FAILED: {}: {e:#}", f.display());
                        }
                    }
                }
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        },
    }
}

/// Caps glibc's malloc arenas at one per core (glibc's default is eight per core) on a cluster
/// node, unless `MALLOC_ARENA_MAX` is set (the operator's choice wins). Must run before any
/// other thread starts.
///
/// Every thread that allocates gets an arena of its own up to the cap, and each arena keeps
/// its own freed memory. A cluster node allocates its write batches, Raft entries and head
/// series on many threads (HTTP workers, the blocking-pool threads of the write path and of
/// the state machines' applies, the gRPC tasks): in the 3-node ingest bench each node had
/// 13-16 arenas, and after leader handovers under load about twice as much RSS as live heap
/// (peak RSS 1.8-2.7x Prometheus's with glibc's default, 1.5-1.8x with one arena per core;
/// ~1.5x either way without handovers), for about 5 % more ingest CPU per sample
/// (docs/benchmarks.md "Cluster").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
