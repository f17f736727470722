use serde::{Deserialize, Serialize};

/// Stable, documented error codes. Every platform error the API or the gateway returns carries
/// one, as `{"error":{"code":..., "message":...}}`; the code is the contract, the message is for
/// people. The HTTP status for each code is decided here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidManifest,
    InvalidArchive,
    PayloadTooLarge,
    Unauthorized,
    FunctionNotFound,
    VersionNotFound,
    AliasNotFound,
    RouteNotFound,
    InvocationNotFound,
    AlarmNotFound,
    CaptureNotFound,
    Conflict,
    AliasInUse,
    NoHistory,
    DeployFailed,
    InstanceStartFailed,
    UpstreamError,
    Timeout,
    Overloaded,
    Throttled,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidManifest => "invalid_manifest",
            ErrorCode::InvalidArchive => "invalid_archive",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::FunctionNotFound => "function_not_found",
            ErrorCode::VersionNotFound => "version_not_found",
            ErrorCode::AliasNotFound => "alias_not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::InvocationNotFound => "invocation_not_found",
            ErrorCode::AlarmNotFound => "alarm_not_found",
            ErrorCode::CaptureNotFound => "capture_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::AliasInUse => "alias_in_use",
            ErrorCode::NoHistory => "no_history",
            ErrorCode::DeployFailed => "deploy_failed",
            ErrorCode::InstanceStartFailed => "instance_start_failed",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Throttled => "throttled",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidManifest | ErrorCode::InvalidArchive => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::FunctionNotFound
            | ErrorCode::VersionNotFound
            | ErrorCode::AliasNotFound
            | ErrorCode::RouteNotFound
            | ErrorCode::InvocationNotFound
            | ErrorCode::AlarmNotFound
            | ErrorCode::CaptureNotFound => 404,
            ErrorCode::Conflict | ErrorCode::AliasInUse | ErrorCode::NoHistory => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Throttled => 429,
            ErrorCode::DeployFailed => 422,
            ErrorCode::Internal => 500,
            ErrorCode::InstanceStartFailed | ErrorCode::UpstreamError => 502,
            ErrorCode::Overloaded | ErrorCode::ShuttingDown => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

/// An error that crosses a crate boundary on its way to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PlatformError {
    pub code: ErrorCode,
    pub message: String,
}

impl PlatformError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The JSON body every platform error is sent as.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}
