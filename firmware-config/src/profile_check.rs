//! Validation of one device profile: every problem at once, each with the path of the offending key.

use std::collections::HashMap;

use crate::field::Derived;
use crate::field_check::{check_field, check_scale_range, value_kind};
use crate::locate::{Path, Problem};
use crate::profile::{DataType, MAX_READ_BITS, MAX_READ_REGISTERS, Profile, RequestKnobs, Table};

/// Checks `profile`; `stem` is its file name without `.toml` (the name must match it).
pub fn check_profile(profile: &Profile, stem: Option<&str>) -> Vec<Problem> {
    let mut out = Vec::new();
    let root = Path::root();
    if let Err(e) = protocol::id::validate("profile name", &profile.name) {
        out.push(Problem::error(root.key("name"), e.to_string()));
    }
    if let Some(stem) = stem.filter(|s| *s != profile.name) {
        let msg = format!(
            "profile name {:?} must equal the file name {stem:?} (without .toml)",
            profile.name
        );
        out.push(Problem::error(root.key("name"), msg));
    }
    check_knobs(&profile.request, &root.key("request"), &mut out);
    if profile.fields.is_empty() {
        out.push(Problem::error(
            root,
            "a profile needs at least one [[field]]",
        ));
    }
    for (i, field) in profile.fields.iter().enumerate() {
        check_field(
            field,
            profile.request.address_base,
            &Path::root().at("field", i),
            &mut out,
        );
    }
    out.extend(fields_fit(
        profile,
        &profile.request,
        &Path::root().key("request"),
    ));
    check_overlaps(profile, &mut out);
    check_metrics_unique(profile, &mut out);
    for (i, derived) in profile.derived.iter().enumerate() {
        check_derived(profile, derived, &Path::root().at("derived", i), &mut out);
    }
    out
}

/// Checks request knobs (of a profile, or a device's effective knobs at `at`).
pub fn check_knobs(knobs: &RequestKnobs, at: &Path, out: &mut Vec<Problem>) {
    if !(1..=MAX_READ_REGISTERS).contains(&knobs.max_registers) {
        let msg = format!(
            "max_registers is {}; expected 1..={MAX_READ_REGISTERS} (the Modbus limit)",
            knobs.max_registers
        );
        out.push(Problem::error(at.key("max_registers"), msg));
    }
    if !(1..=MAX_READ_BITS).contains(&knobs.max_bits) {
        let msg = format!(
            "max_bits is {}; expected 1..={MAX_READ_BITS} (the Modbus limit)",
            knobs.max_bits
        );
        out.push(Problem::error(at.key("max_bits"), msg));
    }
    if knobs.address_base > 1 {
        let msg = format!(
            "address_base is {}; expected 0 (wire addresses) or 1 (1-based manual)",
            knobs.address_base
        );
        out.push(Problem::error(at.key("address_base"), msg));
    }
}

/// Fields longer than one request may be (reported at `at.max_registers` / `at.max_bits`).
pub fn fields_fit(profile: &Profile, knobs: &RequestKnobs, at: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    for f in &profile.fields {
        let (limit, key, what) = if f.table.is_bits() {
            (knobs.max_bits, "max_bits", "bits")
        } else {
            (knobs.max_registers, "max_registers", "registers")
        };
        if f.size() > limit && f.size() <= f.table.max_read() {
            let msg = format!(
                "field {:?} needs {} {what} in one request, but {key} is {limit}",
                f.metric.as_str(),
                f.size()
            );
            out.push(Problem::error(at.key(key), msg));
        }
    }
    out
}

/// Two fields overlap when they share a register of the same table, unless both are bit fields
/// (bits of one status register), which may share it as long as their bit numbers differ.
fn check_overlaps(profile: &Profile, out: &mut Vec<Problem>) {
    let base = profile.request.address_base;
    let spans: Vec<(usize, Table, u32, u32)> = profile
        .fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.wire_address(base).map(|a| {
                (
                    i,
                    f.table,
                    u32::from(a),
                    // A string of `count = 0` (reported by check_field) still spans its address.
                    u32::from(a) + u32::from(f.size().max(1)) - 1,
                )
            })
        })
        .collect();
    for (n, &(i, table, start, end)) in spans.iter().enumerate() {
        for &(j, other_table, other_start, other_end) in &spans[..n] {
            if table != other_table || start > other_end || other_start > end {
                continue;
            }
            let (a, b) = (&profile.fields[j], &profile.fields[i]);
            let both_bits = a.data_type == DataType::Bit && b.data_type == DataType::Bit;
            if both_bits && a.bit != b.bit {
                continue;
            }
            let what = if both_bits {
                format!("bit {} of the same register", b.bit.unwrap_or(0))
            } else {
                "registers".to_owned()
            };
            let msg = format!(
                "field {:?} ({} {}..={}) overlaps field {:?} ({} {}..={}): they share {what}",
                b.metric.as_str(),
                table.as_str(),
                start,
                end,
                a.metric.as_str(),
                table.as_str(),
                other_start,
                other_end
            );
            out.push(
                Problem::error(Path::root().at("field", i).key("address"), msg)
                    .related(Path::root().at("field", j).key("address")),
            );
        }
    }
}

fn check_metrics_unique(profile: &Profile, out: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, Path> = HashMap::new();
    let named = profile
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (Path::root().at("field", i), f.metric.as_str()));
    let derived = profile
        .derived
        .iter()
        .enumerate()
        .map(|(i, d)| (Path::root().at("derived", i), d.metric.as_str()));
    for (at, metric) in named.chain(derived) {
        if let Some(first) = seen.get(metric) {
            out.push(
                Problem::error(
                    at.key("metric"),
                    format!("metric {metric:?} is defined twice"),
                )
                .related(first.clone()),
            );
        } else {
            seen.insert(metric, at.key("metric"));
        }
    }
}

fn check_derived(profile: &Profile, d: &Derived, at: &Path, out: &mut Vec<Problem>) {
    if let Some(band) = d.deadband
        && !(band.is_finite() && band >= 0.0)
    {
        out.push(Problem::error(
            at.key("deadband"),
            format!("deadband is {band}; expected a number >= 0 in the value's unit"),
        ));
    }
    match profile.field(d.from.as_str()) {
        None => {
            let known: Vec<&str> = profile
                .fields
                .iter()
                .filter(|f| f.is_numeric())
                .map(|f| f.metric.as_str())
                .collect();
            let msg = format!(
                "from = {:?} names no field of this profile; numeric fields are: {}",
                d.from.as_str(),
                known.join(", ")
            );
            out.push(Problem::error(at.key("from"), msg));
        }
        Some((_, f)) if !f.is_numeric() => {
            let msg = format!(
                "from = {:?} decodes to {}; a derived value needs a number",
                d.from.as_str(),
                value_kind(f)
            );
            out.push(Problem::error(at.key("from"), msg));
        }
        Some(_) => {}
    }
    if let Err(e) = protocol::id::validate("parameter name", &d.param) {
        out.push(Problem::error(at.key("param"), e.to_string()));
    }
    check_scale_range(d.scale, d.offset, d.range, at, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `modbus_decode` fuzz target: a string field of zero registers at address 0
    /// made the overlap check subtract below zero (a panic in debug builds) before its error could
    /// be reported.
    #[test]
    fn zero_register_string_at_address_zero_is_an_error_not_a_panic() {
        let src = r#"
name = "p"
kind = "other"
[[field]]
metric = "serial"
table = "holding"
address = 0
type = "string"
count = 0
"#;
        let profile: Profile = toml::from_str(src).unwrap_or_else(|e| panic!("{e}"));
        let problems = check_profile(&profile, Some("p"));
        assert!(
            problems
                .iter()
                .any(|p| p.severity == crate::diagnostic::Severity::Error
                    && p.message.contains("count is 0")),
            "{problems:?}"
        );
    }
}
