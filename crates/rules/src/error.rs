//! The crate's error type.

/// Errors of rule loading, evaluation and notification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("{path}: {}", errs.join("; "))]
    Invalid { path: String, errs: Vec<String> },
    #[error("rule_files pattern {pattern:?}: {msg}")]
    Glob { pattern: String, msg: String },
    #[error("template: {0}")]
    Template(String),
    #[error("query: {0}")]
    Query(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Other(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
