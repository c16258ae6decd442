//! Validation of one field of a profile: data type against table, length, bit number, address
//! range, writability, enum labels, scale, offset and range.

use crate::field::Field;
use crate::locate::{Path, Problem};
use crate::profile::{DataType, MAX_READ_REGISTERS};

/// Checks `f` (at path `at`) with the profile's address base.
pub fn check_field(f: &Field, base: u16, at: &Path, out: &mut Vec<Problem>) {
    let err =
        |out: &mut Vec<Problem>, key: &str, msg: String| out.push(Problem::error(at.key(key), msg));
    let ty = f.data_type;
    if let Some(d) = f.deadband
        && !(d.is_finite() && d >= 0.0)
    {
        err(
            out,
            "deadband",
            format!("deadband is {d}; expected a number >= 0 in the field's unit"),
        );
    }
    if f.table.is_bits() && ty != DataType::Bool {
        err(
            out,
            "type",
            format!(
                "the {} table holds bits: type must be \"bool\", not {:?}",
                f.table.as_str(),
                ty.as_str()
            ),
        );
    }
    if !f.table.is_bits() && ty == DataType::Bool {
        let msg = "type \"bool\" is for coils and discrete inputs; for one bit of a register use type = \"bit\" with bit = 0..15";
        err(out, "type", msg.to_owned());
    }
    match (ty, f.count) {
        (DataType::String, None) => err(
            out,
            "type",
            "type \"string\" needs count = registers (2 characters each)".into(),
        ),
        (DataType::String, Some(n)) if n == 0 || n > MAX_READ_REGISTERS => err(
            out,
            "count",
            format!("count is {n}; a string must be 1..={MAX_READ_REGISTERS} registers (one read)"),
        ),
        (DataType::String, Some(_)) | (_, None) => {}
        (_, Some(_)) => err(
            out,
            "count",
            format!(
                "count is only for type \"string\"; {} has a fixed length",
                ty.as_str()
            ),
        ),
    }
    match (ty, f.bit) {
        (DataType::Bit, None) => err(out, "type", "type \"bit\" needs bit = 0..15".into()),
        (DataType::Bit, Some(b)) if b > 15 => err(
            out,
            "bit",
            format!("bit is {b}; expected 0..15 (a register has 16 bits)"),
        ),
        (DataType::Bit, Some(_)) | (_, None) => {}
        (_, Some(_)) => err(
            out,
            "bit",
            format!("bit is only for type \"bit\", not {:?}", ty.as_str()),
        ),
    }
    if f.address < u32::from(base) {
        err(
            out,
            "address",
            format!(
                "address {} is below address_base {base} (the manual's first register)",
                f.address
            ),
        );
    } else if f.wire_address(base).is_none() {
        let last = u64::from(f.address) - u64::from(base) + u64::from(f.size()) - 1;
        err(
            out,
            "address",
            format!("field occupies wire addresses up to {last}; expected at most 65535"),
        );
    }
    if f.writable && !f.table.is_writable() {
        err(
            out,
            "writable",
            format!(
                "the {} table is read-only; only coils and holding registers can be written",
                f.table.as_str()
            ),
        );
    }
    if let Some(labels) = &f.labels {
        if ty.is_float() || ty == DataType::String {
            err(
                out,
                "enum",
                format!(
                    "enum labels need an integer, bit or bool type, not {:?}",
                    ty.as_str()
                ),
            );
        }
        if let Some((lo, hi)) = integer_bounds(ty) {
            for (code, label) in labels {
                if (*code as i128) < lo || (*code as i128) > hi {
                    err(
                        out,
                        "enum",
                        format!(
                            "code {code} can never be read from a {} field ({lo}..={hi})",
                            ty.as_str()
                        ),
                    );
                }
                if label.is_empty() || label.chars().count() > protocol::value::TEXT_MAX_CHARS {
                    err(
                        out,
                        "enum",
                        format!("label for code {code} must be 1 to 256 characters"),
                    );
                }
            }
        }
    }
    let numeric = f.is_numeric();
    if !numeric && (f.scale != 1.0 || f.offset != 0.0) {
        err(
            out,
            "scale",
            format!(
                "scale and offset apply to numbers; this field decodes to {}",
                value_kind(f)
            ),
        );
    }
    if !numeric && f.range.is_some() {
        err(
            out,
            "range",
            format!(
                "range applies to numbers; this field decodes to {}",
                value_kind(f)
            ),
        );
    }
    check_scale_range(f.scale, f.offset, f.range, at, out);
}

/// Shared by fields and derived values.
pub fn check_scale_range(
    scale: f64,
    offset: f64,
    range: Option<[f64; 2]>,
    at: &Path,
    out: &mut Vec<Problem>,
) {
    if scale == 0.0 || !scale.is_finite() {
        out.push(Problem::error(
            at.key("scale"),
            format!("scale is {scale}; expected a finite non-zero number"),
        ));
    }
    if !offset.is_finite() {
        out.push(Problem::error(
            at.key("offset"),
            format!("offset is {offset}; expected a finite number"),
        ));
    }
    if let Some([lo, hi]) = range {
        if !lo.is_finite() || !hi.is_finite() {
            out.push(Problem::error(
                at.key("range"),
                "range bounds must be finite numbers",
            ));
        } else if lo > hi {
            out.push(Problem::error(
                at.key("range"),
                format!("range [{lo}, {hi}] has min > max"),
            ));
        }
    }
}

pub fn value_kind(f: &Field) -> &'static str {
    match f.data_type {
        _ if f.labels.is_some() => "an enum label",
        DataType::Bool | DataType::Bit => "a boolean",
        DataType::String => "text",
        _ => "a number",
    }
}

/// Inclusive bounds of the raw integer a type can hold (bits and bools are 0 or 1).
pub(crate) fn integer_bounds(ty: DataType) -> Option<(i128, i128)> {
    Some(match ty {
        DataType::Bool | DataType::Bit => (0, 1),
        DataType::U16 => (0, u16::MAX.into()),
        DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::U32 => (0, u32::MAX.into()),
        DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::U64 => (0, u64::MAX.into()),
        DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::F32 | DataType::F64 | DataType::String => return None,
    })
}
