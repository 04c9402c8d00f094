//! The one place where admin failures become HTTP responses.

use crate::store::WriteError;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use nio_proto::model::FieldError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token; send 'Authorization: Bearer <token>' with the token from the control plane's data dir (file admin-token) or NIO_ADMIN_TOKEN",
        )
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        let message = e.to_string();
        match e {
            WriteError::Decode(d) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message,
                details: vec![d.0],
            },
            WriteError::Invalid(v) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message,
                details: v.errors,
            },
            WriteError::Batch(v) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message,
                details: v
                    .iter()
                    .flat_map(|e| {
                        e.errors.iter().map(|f| {
                            FieldError::new(
                                format!("{} \"{}\" {}", e.kind, e.name, f.field),
                                f.message.clone(),
                            )
                        })
                    })
                    .collect(),
            },
            WriteError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, message),
            WriteError::AlreadyExists { .. } | WriteError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, message)
            }
            WriteError::Store(err) => {
                tracing::error!(error = %err, "admin write failed in the store");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.message,
            "code": self.status.as_u16(),
            "details": self.details,
        });
        (self.status, Json(body)).into_response()
    }
}
