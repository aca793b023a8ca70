//! Structured JSON logs on stderr (tracing-subscriber). `--log.level` sets the default filter;
//! `RUST_LOG` overrides it. Request-scoped lines carry the request id through the API's spans.

use tracing_subscriber::EnvFilter;

pub(crate) fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second `init` (tests calling twice) is harmless: try_init reports and we ignore it.
    let _ = if format == "logfmt" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
}
