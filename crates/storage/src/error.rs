//! The storage error type, shared by every implementation of the traits.

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the storage traits. The `Display` texts of the per-sample errors are Prometheus'
/// own, since clients (remote_write senders, scrapers' logs) match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("out of order sample")]
    OutOfOrder,
    #[error("out of bounds")]
    OutOfBounds,
    #[error("duplicate sample for timestamp")]
    DuplicateSampleForTimestamp,
    #[error("too old sample")]
    TooOld,
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    /// A configured limit was hit; the text names the limit and the flag that raises it.
    #[error("{0}")]
    Limit(String),
    /// Temporarily unable to serve (no quorum, overloaded, shutting down): retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// On-disk data failed a check; the text names the file and offset.
    #[error("corruption: {0}")]
    Corruption(String),
    #[error("query canceled: {0}")]
    Canceled(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Errors that reject one sample without failing the whole batch.
    pub fn is_sample_error(&self) -> bool {
        matches!(
            self,
            Error::OutOfOrder
                | Error::OutOfBounds
                | Error::DuplicateSampleForTimestamp
                | Error::TooOld
        )
    }

    /// Errors a client should retry later (HTTP 503/429) rather than drop.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}
