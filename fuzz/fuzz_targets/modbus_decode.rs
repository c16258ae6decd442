//! Modbus response decoding (`firmware_config::decode`): registers or bits → values per field
//! (data type u16..f64/string/bit/bool, byte order, scale and offset, enum labels, plausible range),
//! the read plan (`plan_reads`) and `decode_response` that slices a response among the fields of a
//! request, then derived values (`derive`) and the inverse `encode`.
//!
//! Structured input (`arbitrary`): a profile's fields and derived values, request knobs, per-device
//! parameters and the raw response words and bits.
//!
//! Properties:
//! * `decode` never panics, for any field (validated or not) and any registers;
//! * for a profile that passes `check_profile`: the plan covers every field within the Modbus
//!   limits, and every value decoded or derived may go on the wire (finite numbers, 1..=256
//!   character texts), as may the value sent with an out-of-range problem; `encode` of a decoded
//!   value does not panic.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use firmware_config::profile_check::check_profile;
use firmware_config::{
    ByteOrder, DataType, Decoded, Derived, Field, Formula, Profile, Raw, RequestKnobs, Severity,
    Table, decode, decode_response, derive, encode, plan_reads,
};
use libfuzzer_sys::fuzz_target;
use protocol::{AssetKind, MetricId, Unit, Value};

#[derive(Debug, Arbitrary)]
enum Num {
    /// A value a profile would plausibly hold.
    Pick(u8),
    /// Any bits at all: NaN, infinities, subnormals, huge.
    Any(f64),
}

const PICKS: [f64; 16] = [
    1.0, 0.1, 0.01, 0.001, 10.0, 100.0, -1.0, 0.5, 0.0, -40.0, 1e-300, 1e300, 65535.0, -0.0, 1e15,
    3.0,
];

impl Num {
    fn get(&self) -> f64 {
        match *self {
            Num::Pick(i) => PICKS[usize::from(i) % PICKS.len()],
            Num::Any(x) => x,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FuzzField {
    table: u8,
    address: u16,
    ty: u8,
    count: Option<u8>,
    bit: Option<u8>,
    order: u8,
    scale: Num,
    offset: Num,
    range: Option<(Num, Num)>,
    labels: Option<Vec<(i64, u8)>>,
    unit: bool,
}

#[derive(Debug, Arbitrary)]
struct FuzzDerived {
    from: u8,
    formula: u8,
    param: u8,
    scale: Num,
    offset: Num,
    range: Option<(Num, Num)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    fields: Vec<FuzzField>,
    derived: Vec<FuzzDerived>,
    address_base: bool,
    max_registers: u8,
    max_gap: u8,
    one_request_per_field: bool,
    params: Vec<(u8, Num)>,
    words: Vec<u16>,
    bits: Vec<bool>,
}

const TABLES: [Table; 4] = [
    Table::Holding,
    Table::Input,
    Table::Coil,
    Table::DiscreteInput,
];
const TYPES: [DataType; 11] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::String,
    DataType::Bit,
    DataType::Bool,
];
const LABELS: [&str; 4] = ["off", "on", "fault", "维护中"];

fn metric(s: String) -> MetricId {
    MetricId::new(s).expect("valid metric id")
}

fn field(i: usize, f: &FuzzField) -> Field {
    Field {
        metric: metric(format!("m{i}")),
        table: TABLES[usize::from(f.table) % TABLES.len()],
        address: u32::from(f.address),
        data_type: TYPES[usize::from(f.ty) % TYPES.len()],
        count: f.count.map(u16::from),
        bit: f.bit,
        byte_order: ByteOrder::ALL[usize::from(f.order) % 4],
        scale: f.scale.get(),
        offset: f.offset.get(),
        unit: f.unit.then(|| Unit::new("W").expect("valid unit")),
        range: f.range.as_ref().map(|(a, b)| [a.get(), b.get()]),
        labels: f.labels.as_ref().map(|l| {
            l.iter()
                .take(8)
                .map(|(code, label)| (*code, LABELS[usize::from(*label) % LABELS.len()].into()))
                .collect()
        }),
        deadband: None,
        writable: false,
        description: None,
    }
}

fn wire_ok(v: &Value, what: &str) {
    assert!(
        v.problem().is_none(),
        "{what}: {v:?} may not go on the wire: {:?}",
        v.problem()
    );
}

fn check_decoded(d: &Decoded, profile: &Profile) {
    match &d.outcome {
        Ok(v) => {
            wire_ok(v, d.metric.as_str());
            if let Some((_, f)) = profile.field(d.metric.as_str()) {
                let _ = encode(f, v);
            }
        }
        Err(problem) => {
            let _ = (problem.reason(), problem.to_string());
            if let Some(v) = problem.value() {
                wire_ok(&v, d.metric.as_str());
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let fields: Vec<Field> = input
        .fields
        .iter()
        .take(12)
        .enumerate()
        .map(|(i, f)| field(i, f))
        .collect();
    // Any field, validated or not, with any registers or bits: no panic.
    for f in &fields {
        let _ = decode(f, Raw::Words(&input.words));
        let _ = decode(f, Raw::Bits(&input.bits));
        let n = usize::from(f.size()).min(input.words.len());
        let _ = decode(f, Raw::Words(&input.words[..n]));
    }
    if fields.is_empty() {
        return;
    }
    let derived: Vec<Derived> = input
        .derived
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, d)| Derived {
            metric: metric(format!("d{i}")),
            from: metric(format!("m{}", usize::from(d.from) % fields.len())),
            formula: [Formula::HeightMinus, Formula::Ratio, Formula::Product]
                [usize::from(d.formula) % 3],
            param: format!("p{}", d.param % 3),
            scale: d.scale.get(),
            offset: d.offset.get(),
            unit: None,
            range: d.range.as_ref().map(|(a, b)| [a.get(), b.get()]),
            deadband: None,
            description: None,
        })
        .collect();
    let profile = Profile {
        name: "fuzz".into(),
        description: None,
        kind: AssetKind::Other,
        request: RequestKnobs {
            max_registers: u16::from(input.max_registers),
            max_gap: u16::from(input.max_gap),
            one_request_per_field: input.one_request_per_field,
            address_base: u16::from(input.address_base),
            ..RequestKnobs::default()
        },
        fields,
        derived,
    };
    let problems = check_profile(&profile, None);
    if problems.iter().any(|p| p.severity == Severity::Error) {
        return;
    }
    let params: BTreeMap<String, f64> = input
        .params
        .iter()
        .map(|(k, v)| (format!("p{}", k % 3), v.get()))
        // The gateway validator refuses parameters that are not finite.
        .filter(|(_, v)| v.is_finite())
        .collect();
    let requests = plan_reads(&profile, &profile.request);
    let mut planned = vec![false; profile.fields.len()];
    let (mut w, mut b) = (&input.words[..], &input.bits[..]);
    let mut decoded = Vec::new();
    for req in &requests {
        assert!(
            req.count >= 1 && req.count <= req.table.max_read(),
            "{req:?}"
        );
        for slot in &req.fields {
            assert!(u32::from(slot.offset) + u32::from(slot.len) <= u32::from(req.count));
            planned[slot.field] = true;
        }
        // Each request answered by the next stretch of the input; the last may come up short.
        let n = usize::from(req.count);
        let response = if req.table.is_bits() {
            let (now, rest) = b.split_at(n.min(b.len()));
            b = rest;
            Raw::Bits(now)
        } else {
            let (now, rest) = w.split_at(n.min(w.len()));
            w = rest;
            Raw::Words(now)
        };
        let out = decode_response(&profile, req, response);
        assert_eq!(out.len(), req.fields.len());
        decoded.extend(out);
    }
    assert!(
        planned.iter().all(|p| *p),
        "a valid field is in no request: {requests:?}"
    );
    for d in &decoded {
        check_decoded(d, &profile);
    }
    for d in derive(&profile, &params, &decoded) {
        check_decoded(&d, &profile);
    }
});
