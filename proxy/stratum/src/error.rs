//! Stratum V1 error codes (20–25) and their messages.

use std::fmt;

/// An error a Stratum server answers with: `[code, "message", null]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StratumError {
    pub code: ErrorCode,
    pub message: String,
}

/// The codes 20–25 miners and pools use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Other = 20,
    JobNotFound = 21,
    Duplicate = 22,
    LowDifficulty = 23,
    Unauthorized = 24,
    NotSubscribed = 25,
}

impl ErrorCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Stable short name, used as a reject reason in storage and as a metric label.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCode::Other => "other",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::LowDifficulty => "low_difficulty",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotSubscribed => "not_subscribed",
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            20 => ErrorCode::Other,
            21 => ErrorCode::JobNotFound,
            22 => ErrorCode::Duplicate,
            23 => ErrorCode::LowDifficulty,
            24 => ErrorCode::Unauthorized,
            25 => ErrorCode::NotSubscribed,
            _ => return None,
        })
    }
}

impl StratumError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Other, message)
    }
    pub fn job_not_found() -> Self {
        Self::new(ErrorCode::JobNotFound, "Job not found")
    }
    pub fn stale() -> Self {
        Self::new(ErrorCode::JobNotFound, "Stale share")
    }
    pub fn duplicate() -> Self {
        Self::new(ErrorCode::Duplicate, "Duplicate share")
    }
    pub fn low_difficulty() -> Self {
        Self::new(ErrorCode::LowDifficulty, "Low difficulty share")
    }
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "Unauthorized worker")
    }
    pub fn not_subscribed() -> Self {
        Self::new(ErrorCode::NotSubscribed, "Not subscribed")
    }
}

impl fmt::Display for StratumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.code())
    }
}

impl std::error::Error for StratumError {}
