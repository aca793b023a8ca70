//! [`ApiError`]: Prometheus' `{"status":"error","errorType":...,"error":...}` with its HTTP code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::json;

/// Prometheus' `errorType`, each with the HTTP status Prometheus gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// 400: a parameter or the query is invalid.
    BadData,
    /// 422: the query could not be executed (limits, many-to-many matching...).
    Execution,
    /// 503: the query timed out.
    Timeout,
    /// 503: the query was canceled.
    Canceled,
    /// 503: the server cannot serve this now (or the feature is disabled).
    Unavailable,
    /// 404.
    NotFound,
    /// 500: a bug or a storage failure.
    Internal,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
            ErrorType::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Canceled | ErrorType::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An API error answered in Prometheus' JSON error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_data(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorType::BadData, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorType::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorType::Unavailable, message)
    }
    /// `invalid parameter "name": reason`, Prometheus' wording for bad parameters.
    pub fn invalid_param(name: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::bad_data(format!("invalid parameter {name:?}: {reason}"))
    }
}

impl From<tidemark_storage::Error> for ApiError {
    fn from(e: tidemark_storage::Error) -> ApiError {
        use tidemark_storage::Error as E;
        let kind = match &e {
            E::Unavailable(_) => ErrorType::Unavailable,
            E::Canceled(_) => ErrorType::Canceled,
            E::Limit(_) => ErrorType::Execution,
            E::InvalidLabels(_) => ErrorType::BadData,
            _ => ErrorType::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<tidemark_promql::QueryError> for ApiError {
    fn from(e: tidemark_promql::QueryError) -> ApiError {
        use tidemark_promql::ErrorKind as K;
        let kind = match e.kind {
            K::BadData => ErrorType::BadData,
            K::Timeout => ErrorType::Timeout,
            K::Canceled => ErrorType::Canceled,
            K::Execution => ErrorType::Execution,
            K::Internal => ErrorType::Internal,
        };
        ApiError::new(kind, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json::error_body(self.kind.as_str(), &self.message);
        let mut r = (self.kind.status(), body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Result of an API handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
