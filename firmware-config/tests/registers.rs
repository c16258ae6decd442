//! Register decoding and encoding: known vectors for every data type in every byte order, response

// Helpers outside #[test] functions unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]
//! splitting, derived values, and encode → decode round trips as property tests.

use firmware_config::{
    ByteOrder, DecodeProblem, Encoded, Field, Profile, Raw, RequestKnobs, decode, decode_response,
    encode, plan_reads,
};
use proptest::prelude::*;
use protocol::{BadReason, Value};

fn field(table: &str, ty: &str, order: ByteOrder, extra: &str) -> Field {
    let src = format!(
        "metric = \"m\"\ntable = \"{table}\"\naddress = 0\ntype = \"{ty}\"\nbyte_order = \"{order:?}\"\n{extra}"
    );
    toml::from_str(&src).unwrap()
}

fn reg(ty: &str, order: ByteOrder) -> Field {
    field("holding", ty, order, "")
}

use ByteOrder::{ABCD, BADC, CDAB, DCBA};

/// A data type, a value and its registers in each byte order.
type Vector = (&'static str, f64, Vec<(ByteOrder, Vec<u16>)>);

/// Known vectors for every numeric type.
fn vectors() -> Vec<Vector> {
    vec![
        (
            "u16",
            4660.0,
            vec![
                (ABCD, vec![0x1234]),
                (CDAB, vec![0x1234]),
                (BADC, vec![0x3412]),
                (DCBA, vec![0x3412]),
            ],
        ),
        (
            "i16",
            -2.0,
            vec![
                (ABCD, vec![0xFFFE]),
                (CDAB, vec![0xFFFE]),
                (BADC, vec![0xFEFF]),
                (DCBA, vec![0xFEFF]),
            ],
        ),
        (
            "u32",
            305_419_896.0, // 0x12345678
            vec![
                (ABCD, vec![0x1234, 0x5678]),
                (CDAB, vec![0x5678, 0x1234]),
                (BADC, vec![0x3412, 0x7856]),
                (DCBA, vec![0x7856, 0x3412]),
            ],
        ),
        (
            "i32",
            -123_456.0, // 0xFFFE1DC0
            vec![
                (ABCD, vec![0xFFFE, 0x1DC0]),
                (CDAB, vec![0x1DC0, 0xFFFE]),
                (BADC, vec![0xFEFF, 0xC01D]),
                (DCBA, vec![0xC01D, 0xFEFF]),
            ],
        ),
        (
            "u64",
            5_124_095_576_030_430.0, // 0x00123456789ABCDE, below 2^53 so exact in a double
            vec![
                (ABCD, vec![0x0012, 0x3456, 0x789A, 0xBCDE]),
                (CDAB, vec![0xBCDE, 0x789A, 0x3456, 0x0012]),
                (BADC, vec![0x1200, 0x5634, 0x9A78, 0xDEBC]),
                (DCBA, vec![0xDEBC, 0x9A78, 0x5634, 0x1200]),
            ],
        ),
        (
            "i64",
            -2.0,
            vec![
                (ABCD, vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
                (CDAB, vec![0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
                (BADC, vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF]),
                (DCBA, vec![0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
            ],
        ),
        (
            "f32",
            123.456, // 0x42F6E979, decoded to its shortest decimal form, not 123.45600128173828
            vec![
                (ABCD, vec![0x42F6, 0xE979]),
                (CDAB, vec![0xE979, 0x42F6]),
                (BADC, vec![0xF642, 0x79E9]),
                (DCBA, vec![0x79E9, 0xF642]),
            ],
        ),
        (
            "f64",
            1.5, // 0x3FF8000000000000
            vec![
                (ABCD, vec![0x3FF8, 0, 0, 0]),
                (CDAB, vec![0, 0, 0, 0x3FF8]),
                (BADC, vec![0xF83F, 0, 0, 0]),
                (DCBA, vec![0, 0, 0, 0xF83F]),
            ],
        ),
    ]
}

#[test]
fn every_numeric_type_in_every_byte_order() {
    for (ty, value, cases) in vectors() {
        assert_eq!(cases.len(), 4);
        for (order, words) in cases {
            let f = reg(ty, order);
            assert_eq!(
                decode(&f, Raw::Words(&words)),
                Ok(Value::Number(value)),
                "{ty} {order:?}"
            );
            assert_eq!(
                encode(&f, &Value::Number(value)),
                Ok(Encoded::Words(words)),
                "{ty} {order:?}"
            );
        }
    }
}

#[test]
fn strings_swap_bytes_but_never_registers() {
    let big = vec![0x5632, 0x2E33, 0x2E31, 0x0000]; // "V2.3.1" NUL padded
    let little = vec![0x3256, 0x332E, 0x312E, 0x0000];
    for (order, words) in [(ABCD, &big), (CDAB, &big), (BADC, &little), (DCBA, &little)] {
        let f = field("holding", "string", order, "count = 4");
        assert_eq!(
            decode(&f, Raw::Words(words)),
            Ok(Value::Text("V2.3.1".into())),
            "{order:?}"
        );
        assert_eq!(
            encode(&f, &Value::Text("V2.3.1".into())),
            Ok(Encoded::Words(words.clone()))
        );
    }
    let f = field("holding", "string", ABCD, "count = 2");
    assert_eq!(
        decode(&f, Raw::Words(&[0x4142, 0x2020])),
        Ok(Value::Text("AB".into())),
        "trailing spaces trimmed"
    );
    assert!(matches!(
        decode(&f, Raw::Words(&[0, 0])),
        Err(DecodeProblem::BadText(_))
    ));
    assert!(matches!(
        decode(&f, Raw::Words(&[0xFFFE, 0])),
        Err(DecodeProblem::BadText(_))
    ));
    assert!(encode(&f, &Value::Text("ABCDE".into())).is_err());
}

#[test]
fn bits_of_a_register_and_coils() {
    let f = field("input", "bit", ABCD, "bit = 3");
    assert_eq!(decode(&f, Raw::Words(&[0x0008])), Ok(Value::Bool(true)));
    assert_eq!(decode(&f, Raw::Words(&[0xFFF7])), Ok(Value::Bool(false)));
    assert_eq!(
        encode(&f, &Value::Bool(true)),
        Ok(Encoded::RegisterBit {
            mask: 0x0008,
            set: true
        })
    );
    let swapped = field("input", "bit", BADC, "bit = 3");
    assert_eq!(
        decode(&swapped, Raw::Words(&[0x0800])),
        Ok(Value::Bool(true))
    );
    let e = encode(&swapped, &Value::Bool(false)).unwrap();
    assert_eq!(e.apply_to_register(0xFFFF), 0xF7FF);
    let coil = field("coil", "bool", ABCD, "");
    assert_eq!(decode(&coil, Raw::Bits(&[true])), Ok(Value::Bool(true)));
    assert_eq!(encode(&coil, &Value::Bool(true)), Ok(Encoded::Bit(true)));
}

#[test]
fn enum_labels_scale_offset_and_range() {
    let f = field(
        "holding",
        "u16",
        ABCD,
        "enum = { 0 = \"off\", 1 = \"on\", 2 = \"fault\" }",
    );
    assert_eq!(
        decode(&f, Raw::Words(&[2])),
        Ok(Value::Text("fault".into()))
    );
    assert_eq!(
        decode(&f, Raw::Words(&[7])),
        Err(DecodeProblem::UnknownCode { code: 7 })
    );
    assert_eq!(
        encode(&f, &Value::Text("on".into())),
        Ok(Encoded::Words(vec![1]))
    );
    assert!(encode(&f, &Value::Text("dim".into())).is_err());
    let coil = field("coil", "bool", ABCD, "enum = { 0 = \"off\", 1 = \"on\" }");
    assert_eq!(
        decode(&coil, Raw::Bits(&[false])),
        Ok(Value::Text("off".into()))
    );

    let v = field(
        "input",
        "i16",
        ABCD,
        "scale = 0.1\noffset = -40.0\nrange = [-40, 85]",
    );
    let Ok(Value::Number(x)) = decode(&v, Raw::Words(&[655])) else {
        panic!()
    };
    assert!((x - 25.5).abs() < 1e-9, "{x}");
    let out = decode(&v, Raw::Words(&[2000])).unwrap_err();
    assert_eq!(out.reason(), BadReason::OutOfRange);
    let Some(Value::Number(sent)) = out.value() else {
        panic!()
    };
    assert!((sent - 160.0).abs() < 1e-9);
    assert_eq!(
        encode(&v, &Value::Number(25.5)),
        Ok(Encoded::Words(vec![655]))
    );
    assert!(
        encode(&v, &Value::Number(5000.0)).is_err(),
        "raw 50400 does not fit i16"
    );

    let nan = reg("f32", ABCD);
    let problem = decode(&nan, Raw::Words(&[0x7FC0, 0])).unwrap_err();
    assert_eq!(problem.reason(), BadReason::Undecodable);
    assert!(matches!(
        decode(&reg("u32", ABCD), Raw::Words(&[1])),
        Err(DecodeProblem::ShortResponse { .. })
    ));
}

#[test]
fn a_merged_response_is_split_into_fields() {
    let profile: Profile = toml::from_str(include_str!("../profiles/sl-100.toml")).unwrap();
    let plan = plan_reads(&profile, &profile.request);
    let input = plan
        .iter()
        .find(|r| r.table == firmware_config::Table::Input)
        .unwrap();
    assert_eq!((input.start, input.count), (0, 11));
    // 230.5 V, 0.182 A, 41.5 W, pf 0.98, 1234.56 kWh (CDAB), 31.2 °C, lamp failure + relay fault, 5000 h (DCBA).
    let p = 41.5f32.to_bits();
    let words = [
        2305,
        182,
        (p >> 16) as u16,
        p as u16,
        980,
        0xE240,
        0x0001,
        312,
        0b1_0001,
        0x8813,
        0x0000,
    ];
    let out = decode_response(&profile, input, Raw::Words(&words));
    let got: Vec<(String, Value)> = out
        .into_iter()
        .map(|d| (d.metric.to_string(), d.outcome.unwrap()))
        .collect();
    let num = |m: &str| match got.iter().find(|(k, _)| k == m).unwrap().1 {
        Value::Number(x) => x,
        ref v => panic!("{m}: {v:?}"),
    };
    assert!((num("voltage") - 230.5).abs() < 1e-9);
    assert!((num("intensity") - 0.182).abs() < 1e-9);
    assert_eq!(num("activePower"), 41.5);
    assert!((num("activeEnergy") - 1234.56).abs() < 1e-6);
    assert!((num("temperature") - 31.2).abs() < 1e-9);
    assert_eq!(num("operatingHours"), 5000.0);
    let flag = |m: &str| got.iter().find(|(k, _)| k == m).unwrap().1.clone();
    assert_eq!(flag("lampFailure"), Value::Bool(true));
    assert_eq!(flag("overVoltage"), Value::Bool(false));
    assert_eq!(flag("relayFault"), Value::Bool(true));
    // A short reply makes the fields past its end bad, not the ones it holds.
    let short = decode_response(&profile, input, Raw::Words(&words[..4]));
    assert!(short[0].outcome.is_ok() && short[2].outcome.is_ok());
    assert_eq!(
        short[3].outcome.as_ref().unwrap_err().reason(),
        BadReason::CorruptReply
    );
}

#[test]
fn one_plan_per_device_respects_overrides() {
    let profile: Profile = toml::from_str(include_str!("../profiles/dm-pm.toml")).unwrap();
    assert_eq!(plan_reads(&profile, &profile.request).len(), 1);
    let quirky = RequestKnobs {
        one_request_per_field: true,
        ..profile.request.clone()
    };
    assert_eq!(plan_reads(&profile, &quirky).len(), profile.fields.len());
}

const INTEGERS: [(&str, i128, i128); 6] = [
    ("u16", 0, u16::MAX as i128),
    ("i16", i16::MIN as i128, i16::MAX as i128),
    ("u32", 0, u32::MAX as i128),
    ("i32", i32::MIN as i128, i32::MAX as i128),
    // 64-bit integers are exact in a double only up to 2^53.
    ("u64", 0, 1 << 53),
    ("i64", -(1 << 53), 1 << 53),
];

fn any_order() -> impl Strategy<Value = ByteOrder> {
    prop::sample::select(ByteOrder::ALL.to_vec())
}

proptest! {
    #[test]
    fn integers_round_trip(t in 0..INTEGERS.len(), fraction in 0.0f64..=1.0, order in any_order()) {
        let (ty, lo, hi) = INTEGERS[t];
        let raw = (lo as f64 + fraction * (hi - lo) as f64).round();
        let f = reg(ty, order);
        let Encoded::Words(words) = encode(&f, &Value::Number(raw)).unwrap() else { panic!() };
        prop_assert_eq!(decode(&f, Raw::Words(&words)), Ok(Value::Number(raw)));
    }

    #[test]
    fn scaled_integers_round_trip_to_the_raw_code(raw in any::<i16>(), order in any_order()) {
        let f = field("holding", "i16", order, "scale = 0.1\noffset = 2.5");
        let value = decode(&f, Raw::Words(&[u16::from_be_bytes(raw.to_be_bytes())])).unwrap();
        let Encoded::Words(words) = encode(&f, &value).unwrap() else { panic!() };
        prop_assert_eq!(decode(&f, Raw::Words(&words)), Ok(value));
    }

    #[test]
    fn f32_round_trips(x in any::<f32>().prop_filter("finite", |x| x.is_finite()), order in any_order()) {
        let f = reg("f32", order);
        let Encoded::Words(words) = encode(&f, &Value::Number(f64::from(x))).unwrap() else { panic!() };
        // Decoded as the shortest decimal that is exactly this f32 (what the device meant), so
        // narrowing back to f32 is lossless.
        let Ok(Value::Number(d)) = decode(&f, Raw::Words(&words)) else { panic!() };
        prop_assert_eq!(d as f32, x);
        prop_assert_eq!(d, x.to_string().parse::<f64>().unwrap());
    }

    #[test]
    fn f64_round_trips(x in any::<f64>().prop_filter("finite", |x| x.is_finite()), order in any_order()) {
        let f = reg("f64", order);
        let Encoded::Words(words) = encode(&f, &Value::Number(x)).unwrap() else { panic!() };
        prop_assert_eq!(decode(&f, Raw::Words(&words)), Ok(Value::Number(x)));
    }

    #[test]
    fn decode_never_panics(words in prop::collection::vec(any::<u16>(), 0..6), t in 0..11usize, order in any_order()) {
        let ty = ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bit", "bool"][t];
        let extra = match ty { "string" => "count = 3", "bit" => "bit = 15", _ => "" };
        let f = field(if ty == "bool" { "coil" } else { "input" }, ty, order, extra);
        let _ = decode(&f, Raw::Words(&words));
        let bits: Vec<bool> = words.iter().map(|w| w % 2 == 1).collect();
        let _ = decode(&f, Raw::Bits(&bits));
    }
}

#[test]
fn decimal_scales_give_the_nearest_double() {
    // 142 * 0.1 is 14.200000000000001; the device meant 14.2.
    for (raw, scale, want) in [
        (142u16, 0.1, 14.2),
        (12345, 0.01, 123.45),
        (1001, 0.001, 1.001),
        (7, 0.5, 3.5),
    ] {
        let mut f = reg("u16", ABCD);
        f.scale = scale;
        assert_eq!(
            decode(&f, Raw::Words(&[raw])),
            Ok(Value::Number(want)),
            "{raw} * {scale}"
        );
    }
    let mut f = reg("i16", ABCD);
    f.scale = 0.1;
    assert_eq!(
        decode(&f, Raw::Words(&[(-125i16) as u16])),
        Ok(Value::Number(-12.5))
    );
}

#[test]
fn derived_depth_has_no_float_noise() {
    let profiles = firmware_config::ProfileSet::builtin().unwrap();
    let wl = profiles.get("wl-ultra").unwrap();
    let d = wl
        .derived
        .iter()
        .find(|d| d.metric.as_str() == "waterDepth")
        .unwrap();
    let params = std::collections::BTreeMap::from([(d.param.clone(), 3500.0)]);
    // (3500 - 3493) mm * 0.1 = 0.7 cm, not 0.7000000000000001.
    assert_eq!(
        firmware_config::derive::compute(d, 3493.0, &params),
        Ok(Value::Number(0.7))
    );
}
