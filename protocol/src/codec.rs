//! JSON encoding and decoding of every message, with size limits and validation.
//!
//! Decoding is strict: the payload must fit [`Limits::max_payload`], parse as the message type with no
//! unknown fields or item kinds, and pass the message's `validate`. Encoding validates first, so a
//! program can never put a message on the wire that the other side would reject.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::command::{Command, Reply};
use crate::envelope::Envelope;
use crate::error::{DecodeError, EncodeError, Violation, ViolationKind};
use crate::status::{Heartbeat, Presence};

/// Size limits. The defaults are what every program uses; tests may shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload in bytes (256 KiB: well under every broker's default and a cellular burst).
    pub max_payload: usize,
    /// Most items in one envelope.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 256 * 1024,
            max_items: 2000,
        }
    }
}

/// A message of the protocol: serialisable and able to check itself.
pub trait Message: Serialize + DeserializeOwned {
    fn check(&self, limits: &Limits) -> Result<(), Violation>;
}

impl Message for Envelope {
    fn check(&self, limits: &Limits) -> Result<(), Violation> {
        self.validate(limits.max_items)
    }
}
impl Message for Presence {
    fn check(&self, _: &Limits) -> Result<(), Violation> {
        self.validate()
    }
}
impl Message for Heartbeat {
    fn check(&self, _: &Limits) -> Result<(), Violation> {
        self.validate()
    }
}
impl Message for crate::config::ConfigPush {
    fn check(&self, _: &Limits) -> Result<(), Violation> {
        self.validate()
    }
}
impl Message for Command {
    fn check(&self, _: &Limits) -> Result<(), Violation> {
        self.validate()
    }
}
impl Message for Reply {
    fn check(&self, _: &Limits) -> Result<(), Violation> {
        self.validate()
    }
}

/// Validates and encodes a message as compact JSON.
pub fn encode<M: Message>(msg: &M, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    msg.check(limits)?;
    let bytes = serde_json::to_vec(msg).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > limits.max_payload {
        return Err(EncodeError::TooLarge {
            size: bytes.len(),
            max: limits.max_payload,
        });
    }
    Ok(bytes)
}

/// Decodes and validates a message.
pub fn decode<M: Message>(bytes: &[u8], limits: &Limits) -> Result<M, DecodeError> {
    if bytes.len() > limits.max_payload {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: limits.max_payload,
        });
    }
    let msg: M = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => return Err(version_error(bytes).unwrap_or_else(|| json_error(&e))),
    };
    match msg.check(limits) {
        Ok(()) => Ok(msg),
        Err(Violation {
            kind: ViolationKind::UnsupportedVersion { found },
            ..
        }) => Err(DecodeError::UnsupportedVersion {
            found: u64::from(found),
            supported: crate::PROTOCOL_VERSION,
        }),
        Err(v) => Err(DecodeError::Invalid(v)),
    }
}

/// On a parse failure, a message from a newer protocol version deserves a clearer error than the
/// unknown field it probably tripped over. Only done on the error path, so good messages parse once.
fn version_error(bytes: &[u8]) -> Option<DecodeError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        v: u64,
    }
    let peek: Peek = serde_json::from_slice(bytes).ok()?;
    (peek.v != u64::from(crate::PROTOCOL_VERSION)).then_some(DecodeError::UnsupportedVersion {
        found: peek.v,
        supported: crate::PROTOCOL_VERSION,
    })
}

fn json_error(e: &serde_json::Error) -> DecodeError {
    let (line, column, message) = (e.line(), e.column(), e.to_string());
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::Schema {
            line,
            column,
            message,
        },
        _ => DecodeError::Syntax {
            line,
            column,
            message,
        },
    }
}
