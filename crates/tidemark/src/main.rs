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
