//! Typed errors of the codec: what was wrong, and where in the message.

use thiserror::Error;

use crate::timestamp::Timestamp;

/// A message that could not be decoded. Every variant names a stable [`DecodeError::code`] for
/// counters and the hub's dead-letter table.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("does not match the message schema at line {line}, column {column}: {message}")]
    Schema {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("protocol version {found} is not supported (this build speaks {supported})")]
    UnsupportedVersion { found: u64, supported: u32 },
    #[error("invalid message: {0}")]
    Invalid(#[from] Violation),
}

impl DecodeError {
    /// A short stable name for metrics labels and dead-letter reasons.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Syntax { .. } => "syntax",
            DecodeError::Schema { .. } => "schema",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// A message this side refuses to send.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    #[error("encoded message is {size} bytes; at most {max} may be sent")]
    TooLarge { size: usize, max: usize },
    #[error("refusing to encode an invalid message: {0}")]
    Invalid(#[from] Violation),
    #[error("serialisation failed: {0}")]
    Serialize(String),
}

/// One rule broken by a message that parsed: the field's path (`items[3].value`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{path}: {kind}")]
pub struct Violation {
    pub path: String,
    pub kind: ViolationKind,
}

impl Violation {
    pub fn new(path: impl Into<String>, kind: ViolationKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ViolationKind {
    #[error("version {found} is not supported")]
    UnsupportedVersion { found: u32 },
    #[error("must not be empty")]
    Empty,
    #[error("{found} entries; at most {max} allowed")]
    TooMany { found: usize, max: usize },
    #[error("required when quality is good")]
    Missing,
    #[error("{0}")]
    BadValue(String),
    #[error("time {found} out of bounds: {reason}")]
    TimeOutOfBounds { found: Timestamp, reason: String },
}
