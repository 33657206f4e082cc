//! API errors: every failure is JSON `{"error": {"code", "message", "details"}}` with the right
//! status code, including bad JSON, unknown fields and oversized bodies.

use crate::store::StoreError;
use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The JSON shape of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What an error says.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, such as `not_found` or `invalid_json`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Extra data, or null.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// An error answered by the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, such as `not_found`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Extra data (diagnostics, allowed values).
    pub details: serde_json::Value,
}

impl ApiError {
    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into(), details: json!(null) }
    }

    /// A 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into(), details: json!(null) }
    }

    /// A 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into(), details: json!(null) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_string(), message: self.message, details: self.details },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::IllegalTransition { .. } => (StatusCode::CONFLICT, "illegal_transition"),
            StoreError::StaleLease { .. } => (StatusCode::CONFLICT, "stale_lease"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!("store: {e}");
        }
        ApiError { status, code, message: e.to_string(), details: json!(null) }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            JsonRejection::BytesRejection(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            _ => (StatusCode::BAD_REQUEST, "invalid_json"),
        };
        ApiError { status, code, message: r.body_text(), details: json!(null) }
    }
}

/// JSON body extractor whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_path", message: r.body_text(), details: json!(null) }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_query",
            message: r.body_text(),
            details: json!(null),
        }
    }
}

/// Path extractor whose rejections are [`ApiError`]s (a non-numeric id is a 400, not a 500).
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
