//! Register decoding: a field's raw registers or bits → a [`protocol::Value`], pure.
//!
//! Byte order, then data type, then enum labels or `raw * scale + offset`, then the plausibility
//! check. A value outside the profile's range is a distinct [`DecodeProblem::OutOfRange`] that still
//! carries the value, so the agent can send it marked bad `outOfRange`.

use protocol::{BadReason, MetricId, Unit, Value};
use thiserror::Error;

use crate::field::Field;
use crate::plan::ReadRequest;
use crate::profile::{DataType, Profile};
use crate::register::{Raw, string_order, to_bytes};

/// Why a field's registers did not give a good value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeProblem {
    #[error("expected {expected} {what}, got {got}")]
    ShortResponse {
        expected: usize,
        got: usize,
        what: &'static str,
    },
    #[error("the field's table holds {expected}, but the response has the other kind")]
    WrongData { expected: &'static str },
    #[error("raw code {code} has no label in the profile's enum")]
    UnknownCode { code: i128 },
    #[error("{0}")]
    BadText(String),
    #[error("registers hold {0}, not a finite number")]
    NotFinite(f64),
    #[error("{value} is outside the plausible range {min}..{max}")]
    OutOfRange { value: f64, min: f64, max: f64 },
    #[error("source {from} is bad ({})", reason.as_str())]
    SourceBad { from: MetricId, reason: BadReason },
    #[error("device parameter {0:?} is missing")]
    MissingParam(String),
    #[error("device parameter {0:?} is 0; cannot divide by it")]
    DivisionByZero(String),
}

impl DecodeProblem {
    /// The reading quality this problem maps to.
    pub fn reason(&self) -> BadReason {
        match self {
            DecodeProblem::ShortResponse { .. } => BadReason::CorruptReply,
            DecodeProblem::OutOfRange { .. } => BadReason::OutOfRange,
            DecodeProblem::SourceBad { reason, .. } => *reason,
            _ => BadReason::Undecodable,
        }
    }

    /// The value to send despite the problem, if there is one (out of range values are sent).
    pub fn value(&self) -> Option<Value> {
        match self {
            DecodeProblem::OutOfRange { value, .. } => Some(Value::Number(*value)),
            _ => None,
        }
    }
}

/// One metric decoded from a response (or derived from other metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub metric: MetricId,
    pub unit: Option<Unit>,
    pub outcome: Result<Value, DecodeProblem>,
}

/// Decodes one field from exactly its own registers (or bits).
pub fn decode(field: &Field, raw: Raw<'_>) -> Result<Value, DecodeProblem> {
    let need = usize::from(field.size());
    let short = |got: usize, what| DecodeProblem::ShortResponse {
        expected: need,
        got,
        what,
    };
    let words = match raw {
        Raw::Bits(_) if !field.table.is_bits() => {
            return Err(DecodeProblem::WrongData {
                expected: "registers",
            });
        }
        Raw::Words(_) if field.table.is_bits() => {
            return Err(DecodeProblem::WrongData { expected: "bits" });
        }
        Raw::Bits(bits) => {
            let bit = *bits.first().ok_or(short(0, "bits"))?;
            return labelled(field, i128::from(bit)).unwrap_or(Ok(Value::Bool(bit)));
        }
        Raw::Words(words) if words.len() < need => return Err(short(words.len(), "registers")),
        Raw::Words(words) => &words[..need],
    };
    let order = field.byte_order;
    let raw_int: i128 = match field.data_type {
        DataType::String => return decode_text(&to_bytes(words, string_order(order))),
        DataType::Bool | DataType::Bit => {
            let bytes = to_bytes(words, order);
            let word = u16::from_be_bytes([bytes[0], bytes[1]]);
            let bit = (word >> field.bit.unwrap_or(0).min(15)) & 1 == 1;
            return labelled(field, i128::from(bit)).unwrap_or(Ok(Value::Bool(bit)));
        }
        DataType::F32 | DataType::F64 => {
            let bytes = to_bytes(words, order);
            let x = match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(b8) => f64::from_be_bytes(b8),
                Err(_) => widen(f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            };
            if !x.is_finite() {
                return Err(DecodeProblem::NotFinite(x));
            }
            return scaled(field, x);
        }
        ty => integer(ty, &to_bytes(words, order)),
    };
    if let Some(label) = labelled(field, raw_int) {
        return label;
    }
    scaled(field, raw_int as f64)
}

/// Decodes every field of `request` from the device's `response` to it.
pub fn decode_response(
    profile: &Profile,
    request: &ReadRequest,
    response: Raw<'_>,
) -> Vec<Decoded> {
    request
        .fields
        .iter()
        .filter_map(|slot| {
            let field = profile.fields.get(slot.field)?;
            let outcome = match response.slice(usize::from(slot.offset), usize::from(slot.len)) {
                Some(raw) => decode(field, raw),
                None => Err(DecodeProblem::ShortResponse {
                    expected: usize::from(request.count),
                    got: response.len(),
                    what: if request.table.is_bits() {
                        "bits"
                    } else {
                        "registers"
                    },
                }),
            };
            Some(Decoded {
                metric: field.metric.clone(),
                unit: field.unit.clone(),
                outcome,
            })
        })
        .collect()
}

fn integer(ty: DataType, bytes: &[u8]) -> i128 {
    let mut be = [0u8; 16];
    be[16 - bytes.len()..].copy_from_slice(bytes);
    let unsigned = i128::from_be_bytes(be);
    let bits = 8 * bytes.len() as u32;
    match ty {
        DataType::I16 | DataType::I32 | DataType::I64 if unsigned >> (bits - 1) == 1 => {
            unsigned - (1i128 << bits)
        }
        _ => unsigned,
    }
}

fn labelled(field: &Field, code: i128) -> Option<Result<Value, DecodeProblem>> {
    let labels = field.labels.as_ref()?;
    let label = i64::try_from(code).ok().and_then(|c| labels.get(&c));
    Some(
        label
            .map(|l| Value::Text(l.clone()))
            .ok_or(DecodeProblem::UnknownCode { code }),
    )
}

fn scaled(field: &Field, raw: f64) -> Result<Value, DecodeProblem> {
    in_range(apply_scale(raw, field.scale, field.offset), field.range())
}

/// `raw * scale + offset`, where decimal scales (0.1, 0.01, ...) divide by their integer reciprocal:
/// 142 / 10 is exactly the double nearest 14.2, where 142 * 0.1 gives 14.200000000000001 on every
/// dashboard.
pub fn apply_scale(raw: f64, scale: f64, offset: f64) -> f64 {
    if scale == 1.0 && offset == 0.0 {
        return raw;
    }
    let recip = 1.0 / scale;
    let scaled = if scale.abs() < 1.0 && (recip - recip.round()).abs() < 1e-9 {
        raw / recip.round()
    } else {
        raw * scale
    };
    scaled + offset
}

/// An f32 as the f64 with the same shortest decimal form: the device meant 229.1, not
/// 229.10000610351562 (what a plain widening shows).
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// `value` as a number, or out of range. A scale, offset or formula can overflow a finite raw
/// value to infinity, which no message may carry: that is `NotFinite`, not a value.
pub(crate) fn in_range(value: f64, range: Option<(f64, f64)>) -> Result<Value, DecodeProblem> {
    if !value.is_finite() {
        return Err(DecodeProblem::NotFinite(value));
    }
    match range {
        Some((min, max)) if !(min..=max).contains(&value) => {
            Err(DecodeProblem::OutOfRange { value, min, max })
        }
        _ => Ok(Value::Number(value)),
    }
}

fn decode_text(bytes: &[u8]) -> Result<Value, DecodeProblem> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end])
        .map_err(|e| DecodeProblem::BadText(format!("registers are not UTF-8 text: {e}")))?
        .trim_end_matches(' ');
    if text.is_empty() {
        return Err(DecodeProblem::BadText("text registers are empty".into()));
    }
    if text.chars().any(char::is_control) {
        return Err(DecodeProblem::BadText(format!(
            "text {text:?} has control characters"
        )));
    }
    Ok(Value::Text(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `modbus_decode` fuzz target: a valid field whose scale overflows the raw value
    /// gave `Ok(Number(inf))`, which the envelope encoder refuses (dropping the whole batch).
    #[test]
    fn scale_overflowing_to_infinity_is_not_finite() {
        let field: Field = toml::from_str(
            r#"
metric = "energy"
table = "input"
address = 0
type = "u64"
scale = 1e300
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let words = [0xffff; 4];
        assert!(matches!(
            decode(&field, Raw::Words(&words)),
            Err(DecodeProblem::NotFinite(x)) if x.is_infinite()
        ));
        // Out of range and infinite: still not a value to send.
        let ranged = Field {
            range: Some([0.0, 1.0]),
            ..field
        };
        let problem = decode(&ranged, Raw::Words(&words)).unwrap_err();
        assert_eq!(problem.value(), None);
        assert_eq!(problem.reason(), BadReason::Undecodable);
    }
}
