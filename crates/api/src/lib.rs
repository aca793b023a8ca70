//! tidemark-api: Tidemark's HTTP interface, byte-compatible in shape with Prometheus' HTTP API v1
//! so that Grafana, promtool and remote_write senders use it as a plain Prometheus.
//!
//! * [`Api`]: the state and [`Api::router`] (axum) with every endpoint: `/api/v1/query`,
//!   `query_range`, `series`, `labels`, `label/<name>/values`, `metadata`, `query_exemplars`,
//!   `format_query`, `status/*`, `targets`, `rules`, `alerts`, remote write (1.0 and 2.0),
//!   remote read (sampled and streamed XOR chunks), `/api/v1/import`, `/federate`, admin,
//!   `/-/healthy`, `/-/ready`, `/-/reload` and `/metrics`.
//! * [`serve`]: the HTTP(S) server loop with TLS and basic auth from a Prometheus
//!   `--web.config.file` ([`load_web_config`]), slow-client timeouts and a connection limit.
//!
//! The API sees storage only through [`tidemark_storage::Queryable`] and
//! [`tidemark_storage::Appendable`]; everything engine-specific (cardinality statistics, admin
//! operations), the scrape manager and the rule manager come in through the small provider traits
//! of [`providers`], implemented by the `tidemark` binary. Storage calls and PromQL evaluation are
//! synchronous and run on blocking threads.
//!
//! See docs/api.md for endpoints, limits, status codes and decisions.

mod body;
mod error;
mod exemplars;
mod federate;
mod handlers;
mod import;
mod json;
mod metrics;
mod middleware;
mod params;
pub mod providers;
mod remote_read;
mod remote_write;
mod selectors;
mod series_cache;
mod server;
mod state;
mod web_config;
pub mod xor;

/// Generated Prometheus wire messages (from `proto/`, compiled by build.rs).
pub mod proto {
    /// `prometheus.*`: remote write 1.0 and remote read.
    #[allow(missing_docs, clippy::all, unreachable_pub)]
    pub mod prometheus {
        include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
    }
    /// `io.prometheus.write.v2.*`: remote write 2.0.
    #[allow(missing_docs, clippy::all, unreachable_pub)]
    pub mod write_v2 {
        include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
    }
}

pub use error::{ApiError, ErrorType};
pub use json::format_float;
pub use metrics::Metrics;
pub use providers::{
    BuildInfo, ExpositionParser, ImportEntry, MetricsSource, Reloader, RulesProvider, RulesQuery,
    StoredExtras, TargetsProvider, TsdbAdmin, TsdbStatus,
};
pub use server::{ServeError, ServeOptions, serve, serve_with};
pub use state::{Api, ApiOptions};
pub use web_config::{WebConfig, WebConfigError, load_web_config, parse_web_config};

/// Entry points over the decoders of untrusted bytes, for the cargo-fuzz targets in `fuzz/`
/// and the random/mutated-bytes test that CI runs. None of them may panic, whatever the input.
#[doc(hidden)]
pub mod fuzzing {
    use crate::remote_write::{LabelLimits, decode_v1, decode_v2, decompress};

    const LIMITS: LabelLimits = LabelLimits {
        max_labels: 256,
        max_name: 1024,
        max_value: 16 * 1024,
    };

    /// A snappy-compressed remote write body, decoded as 1.0 and as 2.0. Returns how many
    /// series decoded.
    pub fn remote_write(body: &[u8]) -> usize {
        match decompress(body, 16 << 20) {
            Ok(b) => remote_write_decompressed(&b),
            Err(_) => 0,
        }
    }

    /// An uncompressed remote write protobuf, decoded as 1.0 and as 2.0.
    pub fn remote_write_decompressed(b: &[u8]) -> usize {
        static CACHE: std::sync::LazyLock<crate::series_cache::SeriesCache> =
            std::sync::LazyLock::new(|| crate::series_cache::SeriesCache::new(64));
        let v1 = decode_v1(b, LIMITS).map(|x| x.series.len()).unwrap_or(0);
        // Through the (shared, rotating) series cache: twice, so the second pass hits it.
        for _ in 0..2 {
            let cached = crate::remote_write::decode_v1_cached(b, LIMITS, Some(&CACHE))
                .map(|x| x.series.len())
                .unwrap_or(0);
            assert_eq!(cached, v1, "cached 1.0 decoding disagrees");
        }
        let v2 = decode_v2(b, LIMITS).map(|x| x.series.len()).unwrap_or(0);
        v1 + v2
    }

    /// A snappy-compressed remote read request.
    pub fn read_request(body: &[u8]) -> bool {
        use prost::Message;
        decompress(body, 16 << 20)
            .is_ok_and(|b| crate::proto::prometheus::ReadRequest::decode(&b[..]).is_ok())
    }

    /// A Prometheus XOR chunk.
    pub fn xor_chunk(body: &[u8]) -> usize {
        crate::xor::decode(body).map(|s| s.len()).unwrap_or(0)
    }

    /// A web config file.
    pub fn web_config(text: &str) -> bool {
        crate::web_config::parse_web_config(text, std::path::Path::new("/nonexistent")).is_ok()
    }
}

/// Hooks for the criterion benchmarks in `benches/` (not a stable API).
#[doc(hidden)]
pub mod bench {
    use crate::remote_write::{LabelLimits, decode_v1, decompress};

    /// Snappy decompression and 1.0 decode with label validation; returns the sample count.
    pub fn decode_remote_write_v1(body: &[u8]) -> usize {
        let limits = LabelLimits {
            max_labels: 256,
            max_name: 1024,
            max_value: 16 * 1024,
        };
        decompress(body, 256 << 20)
            .ok()
            .and_then(|b| decode_v1(&b, limits).ok())
            .map_or(0, |b| b.series.iter().map(|s| s.samples.len()).sum())
    }

    /// The JSON `data` of a query result, as `/api/v1/query[_range]` writes it.
    pub fn encode_query_data(v: &tidemark_promql::Value) -> String {
        crate::json::query_data(v, None)
    }
}
