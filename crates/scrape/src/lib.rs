//! Tidemark's scraper: the Prometheus scrape configuration, target discovery (static and
//! file-based), relabeling, the exposition-format parsers and the scheduler that scrapes
//! targets and writes their samples into a [`tidemark_storage::Appendable`].
//!
//! Entry points: [`load_config`] / [`parse_config`] for the configuration file,
//! [`ScrapeManager`] to run scrapes, [`parse::parse`] to read exposition text (import paths).

mod client;
pub mod config;
pub mod discovery;
mod manager;
pub mod parse;
pub mod relabel;
mod scrape;
pub mod target;

pub use client::{ACCEPT_HEADER, Connection, HttpClient, base64};
pub use config::{ConfigError, PrometheusConfig, ScrapeConfig, load_config, parse_config};
pub use manager::{
    ActiveTargetInfo, DroppedTargetInfo, Health, ScrapeError, ScrapeManager, ScrapeOptions,
    TargetFilter, TargetMetadata, TargetsSnapshot,
};

/// Benchmark access to the scrape append step (not a stable API).
#[doc(hidden)]
pub mod bench_support {
    use tidemark_model::Labels;
    use tidemark_storage::Appender;

    use crate::parse::Format;
    use crate::scrape::{AppendOptions, ScrapeCache};

    /// One target's scrape cache, fed bodies as the scrape loop does.
    #[derive(Debug, Default)]
    pub struct ScrapeBench {
        cache: ScrapeCache,
        opts: AppendOptions,
    }

    impl ScrapeBench {
        pub fn new() -> ScrapeBench {
            ScrapeBench {
                cache: ScrapeCache::default(),
                opts: AppendOptions {
                    honor_timestamps: true,
                    ..Default::default()
                },
            }
        }

        /// Appends one scraped body; returns the number of samples appended.
        pub fn append(
            &mut self,
            app: &mut dyn Appender,
            body: &[u8],
            ts: i64,
            target: &Labels,
        ) -> Result<u64, String> {
            self.cache
                .append(app, body, Format::PrometheusText, ts, target, &self.opts)
                .map(|s| s.post_relabel)
                .map_err(|e| e.msg)
        }
    }
}
