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

pub use client::ACCEPT_HEADER;
pub use config::{ConfigError, PrometheusConfig, ScrapeConfig, load_config, parse_config};
pub use manager::{
    ActiveTargetInfo, DroppedTargetInfo, Health, ScrapeError, ScrapeManager, ScrapeOptions,
    TargetMetadata, TargetsSnapshot,
};
