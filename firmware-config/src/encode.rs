//! Register encoding, the inverse of [`decode`](crate::decode::decode): a value → the registers or
//! bit a device would hold for it. Used for writes (commands) and by simulators serving a profile.

use protocol::Value;
use thiserror::Error;

use crate::field::Field;
use crate::field_check::integer_bounds;
use crate::profile::DataType;
use crate::register::{from_bytes, string_order};

/// What to put on the wire for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A coil or discrete input.
    Bit(bool),
    /// The field's registers, in wire order.
    Words(Vec<u16>),
    /// One bit of a register (`type = "bit"`): set or clear `mask` in the register's wire value.
    RegisterBit { mask: u16, set: bool },
}

impl Encoded {
    /// For [`Encoded::RegisterBit`]: the register's new wire value given its current one. Other
    /// variants return the first register (or the bit as 0/1).
    pub fn apply_to_register(&self, current: u16) -> u16 {
        match self {
            Encoded::RegisterBit { mask, set: true } => current | mask,
            Encoded::RegisterBit { mask, set: false } => current & !mask,
            Encoded::Words(w) => w.first().copied().unwrap_or(current),
            Encoded::Bit(b) => u16::from(*b),
        }
    }
}

/// Why a value cannot be encoded for a field.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    #[error("field {metric} takes {expected}, not {found:?}")]
    WrongType {
        metric: String,
        expected: &'static str,
        found: Value,
    },
    #[error("field {metric} has no enum label {label:?}")]
    UnknownLabel { metric: String, label: String },
    #[error("field {metric}: {value} needs raw {raw}, outside {ty} ({min}..={max})")]
    OutOfType {
        metric: String,
        value: f64,
        raw: f64,
        ty: &'static str,
        min: i128,
        max: i128,
    },
    #[error("field {metric}: {value} is not a finite number")]
    NotFinite { metric: String, value: f64 },
    #[error("field {metric}: text of {bytes} bytes does not fit {max} bytes")]
    TooLong {
        metric: String,
        bytes: usize,
        max: usize,
    },
}

/// Encodes `value` for `field`: the inverse of its labels or of `raw * scale + offset` (rounded to
/// the nearest integer for integer types), checked against the range of the data type.
pub fn encode(field: &Field, value: &Value) -> Result<Encoded, EncodeError> {
    let metric = || field.metric.as_str().to_owned();
    let wrong = |expected| EncodeError::WrongType {
        metric: metric(),
        expected,
        found: value.clone(),
    };
    let ty = field.data_type;
    if ty == DataType::String {
        let Value::Text(text) = value else {
            return Err(wrong("text"));
        };
        let max = usize::from(field.size()) * 2;
        if text.len() > max {
            return Err(EncodeError::TooLong {
                metric: metric(),
                bytes: text.len(),
                max,
            });
        }
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(max, 0);
        return Ok(Encoded::Words(from_bytes(
            &bytes,
            string_order(field.byte_order),
        )));
    }
    // With labels the value is a label (or the raw code itself).
    let raw: f64 = match (value, &field.labels) {
        (Value::Text(label), Some(labels)) => match labels.iter().find(|(_, l)| *l == label) {
            Some((code, _)) => *code as f64,
            None => {
                return Err(EncodeError::UnknownLabel {
                    metric: metric(),
                    label: label.clone(),
                });
            }
        },
        (Value::Text(_), None) => {
            return Err(wrong(if field.is_numeric() {
                "a number"
            } else {
                "a boolean"
            }));
        }
        (Value::Bool(b), _) => f64::from(u8::from(*b)),
        (Value::Number(n), Some(_)) => *n,
        (Value::Number(n), None) if ty.is_numeric() => (n - field.offset) / field.scale,
        (Value::Number(n), None) => *n,
    };
    if !raw.is_finite() {
        return Err(EncodeError::NotFinite {
            metric: metric(),
            value: value.as_f64().unwrap_or(raw),
        });
    }
    let out_of_type = |min: i128, max: i128| EncodeError::OutOfType {
        metric: metric(),
        value: value.as_f64().unwrap_or(raw),
        raw,
        ty: ty.as_str(),
        min,
        max,
    };
    let bytes = match ty {
        DataType::F32 => {
            let narrow = raw as f32;
            if !narrow.is_finite() {
                return Err(EncodeError::NotFinite {
                    metric: metric(),
                    value: raw,
                });
            }
            narrow.to_be_bytes().to_vec()
        }
        DataType::F64 => raw.to_be_bytes().to_vec(),
        _ => {
            let (min, max) = integer_bounds(ty).unwrap_or((0, 0));
            let rounded = raw.round();
            if rounded < min as f64 || rounded > max as f64 {
                return Err(out_of_type(min, max));
            }
            let int = rounded as i128;
            if matches!(ty, DataType::Bool | DataType::Bit) {
                return Ok(bit_encoding(field, int == 1));
            }
            let len = usize::from(field.size()) * 2;
            int.to_be_bytes()[16 - len..].to_vec()
        }
    };
    Ok(Encoded::Words(from_bytes(&bytes, field.byte_order)))
}

fn bit_encoding(field: &Field, set: bool) -> Encoded {
    if field.table.is_bits() {
        return Encoded::Bit(set);
    }
    let logical = 1u16 << field.bit.unwrap_or(0).min(15);
    let mask = if field.byte_order.swaps_bytes() {
        logical.swap_bytes()
    } else {
        logical
    };
    Encoded::RegisterBit { mask, set }
}
