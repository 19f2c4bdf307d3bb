//! The API's JSON error object: `{"error": {"code", "message", "details"}}` with categories
//! `CONNECTION_*`, `AUTH_*`, `PROTOCOL_*`, `POOL_*`, `DATABASE_*`, `CONFIG_*`, `VALIDATION_*`.
//! Clients get a generic message; details that could leak internals go to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn auth_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "Authentication required: send Authorization: Bearer <token>",
        )
    }
    pub fn invalid_token(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_TOKEN",
            format!("Invalid token: {why}"),
        )
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AUTH_FORBIDDEN",
            "This token does not grant admin access",
        )
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "VALIDATION_NOT_FOUND", what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if !self.details.is_null() {
            body["details"] = self.details;
        }
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}
