//! Failures as the API server reports them: a `Status` object whose `code`
//! is the HTTP status and whose `reason` is one of the `StatusReason`
//! constants of k8s.io/apimachinery (`metav1.StatusReason*`).

use serde_json::{json, Value};

/// One failed request, ready to be written as a `Status` body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError { code, reason: reason_for(code), message: message.into(), details: None }
    }

    pub fn with_reason(mut self, reason: &'static str) -> ApiError {
        self.reason = reason;
        self
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// 422 Invalid: a parameter combination the server refuses.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, message)
    }

    /// `services "web" not found`.
    pub fn not_found(plural: &str, name: &str) -> ApiError {
        ApiError::new(404, format!("{plural} \"{name}\" not found")).with_details(json!({"name": name, "kind": plural}))
    }

    /// 410 Gone, reason Expired: the history or continue token is compacted
    /// away (`errors.NewResourceExpired`).
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, message).with_reason("Expired")
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// The reason the real server gives with each code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
