//! `tidemark tsdb analyze|import`: offline tools for a data directory.

use std::process::ExitCode;

use anyhow::Context;
use tidemark_model::time::parse_duration_millis;
use tidemark_scrape::parse::Entry;

use crate::cli::TsdbCommand;

pub(crate) fn run(cmd: TsdbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TsdbCommand::Analyze { dir, limit } => {
            let report = tidemark_tsdb::analyze::analyze(&dir, limit)
                .with_context(|| format!("analyzing {}", dir.display()))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        TsdbCommand::Import {
            file,
            dir,
            block_duration,
        } => {
            let range = parse_duration_millis(&block_duration).context("--block-duration")?;
            anyhow::ensure!(range >= 60_000, "--block-duration must be at least 1m");
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // OpenMetrics when the file ends with `# EOF` (what promtool expects), else the
            // Prometheus text format; samples without a timestamp get the current time.
            let is_om = body.trim_ascii_end().ends_with(b"# EOF");
            let ct = if is_om {
                "application/openmetrics-text; version=1.0.0"
            } else {
                "text/plain; version=0.0.4"
            };
            let now = tidemark_model::time::now_millis();
            let mut samples = Vec::new();
            for (i, e) in tidemark_scrape::parse::parse(&body, ct, now).enumerate() {
                match e.with_context(|| format!("{}: entry {}", file.display(), i + 1))? {
                    Entry::Sample { labels, t, v, .. } => samples.push((labels, t, v)),
                    _ => continue,
                }
            }
            let n = samples.len();
            let metas = tidemark_tsdb::import::import_samples(&dir, samples.into_iter(), range)
                .with_context(|| format!("writing blocks into {}", dir.display()))?;
            println!(
                "imported {n} samples into {} blocks in {}",
                metas.len(),
                dir.display()
            );
            for m in metas {
                println!(
                    "  block {} [{}, {}] {} series",
                    m.id, m.min_time, m.max_time, m.stats.num_series
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
