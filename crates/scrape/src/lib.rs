//! Tidemark's scraper: the Prometheus scrape configuration, target discovery (static and
//! file-based), relabeling, the exposition-format parsers and the scheduler that scrapes
//! targets and writes their samples into a [`tidemark_storage::Appendable`].

pub mod config;
pub mod parse;
pub mod relabel;

pub use config::{ConfigError, PrometheusConfig, ScrapeConfig, load_config, parse_config};
mod scrape;
pub mod target;
