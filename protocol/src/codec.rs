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
    // sonic-rs (SIMD) reads a good message in about 0.6 of serde_json's time, through the same
    // serde impls. Whatever it refuses, serde_json decides: it is the reference the rest of the
    // protocol is tested against, and its errors carry the line and column an installer reads. The
    // contract tests check that sonic-rs accepts nothing serde_json refuses, and reads the same;
    // they found one difference: sonic-rs 0.5 reads `-0` and `-0.0` as +0.0, so a message that
    // may hold a negative zero goes to serde_json, which keeps the sign.
    let msg: M = match fast_read(bytes) {
        Some(m) => m,
        None => match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(e) => return Err(version_error(bytes).unwrap_or_else(|| json_error(&e))),
        },
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

/// The fast half of [`decode`]: sonic-rs, unless the message may hold a negative zero; `None`
/// where serde_json must decide. Public for the contract tests, which hold it to serde_json.
#[doc(hidden)]
pub fn fast_read<M: DeserializeOwned>(bytes: &[u8]) -> Option<M> {
    match may_hold_negative_zero(bytes) {
        false => sonic_rs::from_slice(bytes).ok(),
        true => None,
    }
}

/// Whether `bytes` may hold a JSON number that is a negative zero (`-0`, `-0.00`, `-0e7`): a `-0`
/// where a value starts (after `:`, `[` or `,`, and any white space) not followed by a non-zero
/// fraction digit. A string holding such text only costs the slower parser. `-0` is looked for
/// with memchr's SIMD search: dates and identifiers hold a few per reading.
fn may_hold_negative_zero(bytes: &[u8]) -> bool {
    for i in memchr::memmem::find_iter(bytes, b"-0") {
        let before = bytes[..i]
            .iter()
            .rev()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if !matches!(before, Some(b':' | b'[' | b',')) {
            continue;
        }
        let mut j = i + 2;
        if bytes.get(j) == Some(&b'.') {
            j += 1;
            while bytes.get(j) == Some(&b'0') {
                j += 1;
            }
        }
        if !bytes.get(j).is_some_and(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    false
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
