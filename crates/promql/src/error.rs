//! [`QueryError`] and its [`ErrorKind`], mapped by the API to Prometheus' `errorType`.

/// The class of a query error; [`ErrorKind::as_str`] is Prometheus' `errorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query cannot be parsed or is invalid (HTTP 400).
    BadData,
    /// The query ran past its timeout (HTTP 503).
    Timeout,
    /// The query was canceled (HTTP 503).
    Canceled,
    /// Evaluation failed: limits, many-to-many matching, storage errors (HTTP 422).
    Execution,
    /// A bug (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// Prometheus' `errorType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Canceled => "canceled",
            ErrorKind::Execution => "execution",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A query error: its kind and Prometheus' message text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> QueryError {
        QueryError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_data(message: impl Into<String>) -> QueryError {
        QueryError::new(ErrorKind::BadData, message)
    }

    pub(crate) fn execution(message: impl Into<String>) -> QueryError {
        QueryError::new(ErrorKind::Execution, message)
    }
}

impl From<tidemark_storage::Error> for QueryError {
    fn from(e: tidemark_storage::Error) -> QueryError {
        match e {
            tidemark_storage::Error::Canceled(m) => QueryError::new(ErrorKind::Canceled, m),
            other => QueryError::execution(other.to_string()),
        }
    }
}
