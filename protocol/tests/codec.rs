//! Codec contract tests: every message that validates round-trips exactly; bad input gets a typed error.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::codec::Message;
use protocol::*;

const T0: i64 = 1_795_000_000_000; // 2026-11-18

fn limits() -> Limits {
    Limits::default()
}

fn id_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        // Every finite double, including subnormals, -0.0 and extremes.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Number),
        "\\PC{1,40}".prop_map(Value::Text),
    ]
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        Just(Quality::Good),
        (
            prop_oneof![
                Just(BadReason::Timeout),
                Just(BadReason::OutOfRange),
                Just(BadReason::DeviceException),
                Just(BadReason::CorruptReply),
            ],
            proptest::option::of("\\PC{0,60}")
        )
            .prop_map(|(reason, detail)| Quality::Bad { reason, detail }),
    ]
}

fn reading(sent: i64) -> impl Strategy<Value = Item> {
    (
        id_string(),
        id_string(),
        0..600_000i64,
        value(),
        proptest::option::of("[a-zA-Z%/()0-9]{1,8}"),
        quality(),
    )
        .prop_map(move |(d, m, back, v, u, q)| {
            Item::Reading(Reading {
                device: DeviceId::new(d).unwrap(),
                metric: MetricId::new(m).unwrap(),
                observed_at: Timestamp::from_unix_millis(sent - back),
                value: Some(v),
                unit: u.map(|u| Unit::new(u).unwrap()),
                quality: q,
            })
        })
}

fn event(sent: i64) -> impl Strategy<Value = Item> {
    (
        id_string(),
        id_string(),
        0..600_000i64,
        prop_oneof![Just(Phase::Instant), Just(Phase::Start), Just(Phase::End)],
        proptest::collection::btree_map(id_string(), value(), 0..5),
        proptest::collection::vec(("[0-9a-f]{64}", 0..10_000_000u64), 0..3),
    )
        .prop_map(move |(d, e, back, phase, attributes, ev)| {
            Item::Event(Event {
                device: DeviceId::new(d).unwrap(),
                event: EventType::new(e).unwrap(),
                observed_at: Timestamp::from_unix_millis(sent - back),
                phase,
                attributes,
                evidence: ev
                    .into_iter()
                    .map(|(sha256, bytes)| EvidenceRef {
                        sha256,
                        media_type: "image/jpeg".into(),
                        bytes,
                    })
                    .collect(),
            })
        })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        id_string(),
        any::<u128>(),
        any::<u64>(),
        0..1_000_000_000i64,
        any::<bool>(),
    )
        .prop_flat_map(|(gw, boot, seq, jitter, synced)| {
            let sent = T0 + jitter;
            proptest::collection::vec(prop_oneof![reading(sent), event(sent)], 1..20).prop_map(
                move |items| Envelope {
                    v: PROTOCOL_VERSION,
                    gateway: GatewayId::new(gw.clone()).unwrap(),
                    boot: BootId::from_uuid(uuid::Uuid::from_u128(boot)),
                    seq,
                    sent_at: Timestamp::from_unix_millis(sent),
                    clock: if synced {
                        ClockState::Synced
                    } else {
                        ClockState::Unsynced
                    },
                    items,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn envelope_round_trips_exactly(env in envelope()) {
        let bytes = encode(&env, &limits()).unwrap();
        let back: Envelope = decode(&bytes, &limits()).unwrap();
        // Bit-exact floats: PartialEq would let -0.0 == 0.0 pass.
        prop_assert_eq!(format!("{back:?}"), format!("{env:?}"));
        prop_assert_eq!(&back, &env);
        // And the bytes are stable: encoding the decoded value gives the same bytes.
        prop_assert_eq!(encode(&back, &limits()).unwrap(), bytes);
    }

    #[test]
    fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode::<Envelope>(&bytes, &limits());
    }

    /// A good envelope damaged in up to four places (bytes replaced, inserted or removed, where
    /// strings and numbers are): what sonic-rs accepts, serde_json accepts and reads the same.
    #[test]
    fn sonic_rs_is_no_looser_than_serde_json_on_damaged_envelopes(
        env in envelope(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..5),
    ) {
        let mut bytes = encode(&env, &limits()).unwrap();
        for (at, how, byte) in edits {
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        fast_reads_as_reference(&bytes);
    }

    #[test]
    fn timestamps_round_trip(ms in 0i64..4_102_444_800_000) {
        let t = Timestamp::from_unix_millis(ms);
        prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
    }
}

fn good_envelope() -> serde_json::Value {
    serde_json::json!({
        "v": 1,
        "gateway": "gw-01",
        "boot": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "seq": 7,
        "sentAt": "2026-11-22T05:53:15.123Z",
        "clock": "synced",
        "items": [
            {"kind": "reading", "device": "lamp-1", "metric": "activePower", "observedAt": "2026-11-22T05:53:14.000Z", "value": 87.5, "unit": "W"},
            {"kind": "reading", "device": "lamp-1", "metric": "voltage", "observedAt": "2026-11-22T05:53:14.000Z",
             "quality": {"bad": {"reason": "timeout", "detail": "no reply in 500 ms"}}},
            {"kind": "event", "device": "cam-3", "event": "parkingCapture", "observedAt": "2026-11-22T05:50:00.000Z", "phase": "instant",
             "attributes": {"plate": "苏A8HK52", "plateColor": "blue", "confidence": 0.97},
             "evidence": [{"sha256": "a".repeat(64), "mediaType": "image/jpeg", "bytes": 183211}]}
        ]
    })
}

fn decode_json(v: &serde_json::Value) -> Result<Envelope, DecodeError> {
    decode(&serde_json::to_vec(v).unwrap(), &limits())
}

#[test]
fn documented_example_decodes() {
    let env = decode_json(&good_envelope()).unwrap();
    assert_eq!(env.items.len(), 3);
    assert!(matches!(&env.items[1], Item::Reading(r) if r.value.is_none() && !r.quality.is_good()));
}

fn mutate(f: impl FnOnce(&mut serde_json::Value)) -> DecodeError {
    let mut v = good_envelope();
    f(&mut v);
    decode_json(&v).unwrap_err()
}

#[test]
fn unknown_item_kind_is_rejected() {
    let e = mutate(|v| v["items"][0]["kind"] = "alarm".into());
    assert!(matches!(e, DecodeError::Schema { .. }), "{e:?}");
    assert!(e.to_string().contains("alarm"), "{e}");
}

/// Items are read straight into their variant when `kind` comes first (as encoders write them) and
/// through a buffer otherwise (`json!` sorts keys, so the other tests here put `kind` elsewhere):
/// both ways give the same item and refuse the same items.
#[test]
fn an_item_reads_the_same_wherever_its_kind_is() {
    let envelope = |items: &str| {
        format!(
            r#"{{"v":1,"gateway":"gw-01","boot":"67e55044-10b1-426f-9247-bb680e5fe0c8","seq":7,"sentAt":"2026-11-22T05:53:15.123Z","clock":"synced","items":[{items}]}}"#
        )
    };
    let decode_str = |s: String| decode::<Envelope>(s.as_bytes(), &limits());
    let first = decode_str(envelope(
        r#"{"kind":"reading","device":"lamp-1","metric":"activePower","observedAt":"2026-11-22T05:53:14.000Z","value":87.5,"unit":"W"},
           {"kind":"event","device":"cam-3","event":"parkingCapture","observedAt":"2026-11-22T05:50:00.000Z","phase":"instant","attributes":{"plate":"苏A8HK52"}}"#,
    ))
    .unwrap();
    let last = decode_str(envelope(
        r#"{"device":"lamp-1","metric":"activePower","observedAt":"2026-11-22T05:53:14.000Z","value":87.5,"unit":"W","kind":"reading"},
           {"device":"cam-3","event":"parkingCapture","observedAt":"2026-11-22T05:50:00.000Z","phase":"instant","attributes":{"plate":"苏A8HK52"},"kind":"event"}"#,
    ))
    .unwrap();
    assert_eq!(first, last);
    assert!(
        matches!(&first.items[0], Item::Reading(r) if r.value == Some(protocol::Value::Number(87.5)))
    );
    assert!(matches!(&first.items[1], Item::Event(e) if e.attributes.len() == 1));
    // Encoding writes `kind` first.
    let bytes = protocol::encode(&first, &limits()).unwrap();
    assert!(
        String::from_utf8(bytes)
            .unwrap()
            .contains(r#"[{"kind":"reading","#)
    );
    for (items, wanted) in [
        (r#"{"kind":"alarm","device":"d"}"#, "alarm"),
        (r#"{"device":"d","kind":"alarm"}"#, "alarm"),
        (
            r#"{"kind":"reading","device":"d","metric":"m","observedAt":"2026-11-22T05:53:14.000Z","value":1,"valeu":2}"#,
            "valeu",
        ),
        (
            r#"{"device":"d","metric":"m","observedAt":"2026-11-22T05:53:14.000Z","value":1,"valeu":2,"kind":"reading"}"#,
            "valeu",
        ),
        (
            r#"{"kind":"reading","device":"d","observedAt":"2026-11-22T05:53:14.000Z","value":1}"#,
            "metric",
        ),
        (
            r#"{"device":"d","metric":"m","observedAt":"2026-11-22T05:53:14.000Z","value":1}"#,
            "kind",
        ),
        (
            r#"{"kind":"reading","kind":"event","device":"d"}"#,
            "unknown field `kind`",
        ),
        (
            r#"{"device":"d","kind":"reading","kind":"event"}"#,
            "duplicate field `kind`",
        ),
        (r#"{}"#, "missing field `kind`"),
        (r#"["reading"]"#, "an object"),
        (r#"{"kind":1,"device":"d"}"#, "variant identifier"),
        (r#"{"device":"d","kind":1}"#, "variant identifier"),
        (r#"{"kind":null,"device":"d"}"#, "variant identifier"),
        (
            r#"{"kind":{"reading":null},"device":"d"}"#,
            "variant identifier",
        ),
        (
            r#"{"device":"d","kind":{"reading":null}}"#,
            "variant identifier",
        ),
    ] {
        let e = decode_str(envelope(items)).unwrap_err();
        assert!(matches!(e, DecodeError::Schema { .. }), "{items}: {e:?}");
        assert!(e.to_string().contains(wanted), "{items}: {e}");
    }
}

#[test]
fn unknown_field_is_rejected() {
    let e = mutate(|v| v["items"][0]["valeu"] = 3.into());
    assert!(matches!(e, DecodeError::Schema { .. }), "{e:?}");
    let e = mutate(|v| v["extra"] = 3.into());
    assert!(matches!(e, DecodeError::Schema { .. }), "{e:?}");
}

#[test]
fn newer_version_is_named() {
    let e = mutate(|v| {
        v["v"] = 2.into();
        v["newField"] = true.into();
    });
    assert_eq!(
        e,
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    // Also when the newer message happens to fit v1's shape.
    let e = mutate(|v| v["v"] = 2.into());
    assert_eq!(
        e,
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
}

#[test]
fn bad_ids_and_times_are_rejected() {
    let e = mutate(|v| v["gateway"] = "gw/01".into());
    assert!(e.to_string().contains("gateway id"), "{e}");
    let e = mutate(|v| v["items"][0]["observedAt"] = "2026-11-22T07:53:14.000Z".into());
    assert!(
        matches!(e, DecodeError::Invalid(Violation { ref path, .. }) if path == "items[0].observedAt"),
        "{e:?}"
    );
    // A synchronised clock cannot read 1970; an unsynchronised one can.
    let e = mutate(|v| {
        v["sentAt"] = "1970-01-01T00:10:00.000Z".into();
        for i in 0..3 {
            v["items"][i]["observedAt"] = "1970-01-01T00:09:00.000Z".into();
        }
    });
    assert!(
        matches!(e, DecodeError::Invalid(Violation { ref path, .. }) if path == "sentAt"),
        "{e:?}"
    );
    let mut v = good_envelope();
    v["clock"] = "unsynced".into();
    v["sentAt"] = "1970-01-01T00:10:00.000Z".into();
    for i in 0..3 {
        v["items"][i]["observedAt"] = "1970-01-01T00:09:00.000Z".into();
    }
    decode_json(&v).unwrap();
}

#[test]
fn good_reading_needs_a_value() {
    let e = mutate(|v| {
        v["items"][0].as_object_mut().unwrap().remove("value");
    });
    assert!(
        matches!(e, DecodeError::Invalid(Violation { ref path, kind: ViolationKind::Missing }) if path == "items[0].value"),
        "{e:?}"
    );
}

#[test]
fn syntax_errors_carry_position() {
    let e = decode::<Envelope>(b"{\"v\":1,\n \"gateway\": }", &limits()).unwrap_err();
    assert!(matches!(e, DecodeError::Syntax { line: 2, .. }), "{e:?}");
    let e = decode::<Envelope>(b"", &limits()).unwrap_err();
    assert!(matches!(e, DecodeError::Syntax { .. }), "{e:?}");
}

#[test]
fn oversize_and_empty_batches_are_rejected() {
    let big = vec![b' '; Limits::default().max_payload + 1];
    assert!(matches!(
        decode::<Envelope>(&big, &limits()),
        Err(DecodeError::TooLarge { .. })
    ));
    let e = mutate(|v| v["items"] = serde_json::json!([]));
    assert!(
        matches!(
            e,
            DecodeError::Invalid(Violation {
                kind: ViolationKind::Empty,
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn encoder_refuses_non_finite_numbers() {
    let mut env = decode_json(&good_envelope()).unwrap();
    if let Item::Reading(r) = &mut env.items[0] {
        r.value = Some(Value::Number(f64::NAN));
    }
    assert!(matches!(
        encode(&env, &limits()),
        Err(EncodeError::Invalid(_))
    ));
    let mut attrs = BTreeMap::new();
    attrs.insert("confidence".to_owned(), Value::Number(f64::INFINITY));
    if let Item::Event(e) = &mut env.items[2] {
        e.attributes = attrs;
    }
    if let Item::Reading(r) = &mut env.items[0] {
        r.value = Some(Value::Number(1.0));
    }
    assert!(env.check(&limits()).is_err());
}

#[test]
fn presence_and_heartbeat_round_trip() {
    let p = Presence {
        v: 1,
        gateway: GatewayId::new("gw-01").unwrap(),
        boot: BootId::from_uuid(uuid::Uuid::from_u128(42)),
        state: PresenceState::Online,
        sent_at: Timestamp::from_unix_millis(T0),
        clock: ClockState::Synced,
        agent: Some("edge-agent 0.1.0".into()),
        config_version: None,
        devices: vec![DeviceInfo {
            device: DeviceId::new("lamp-1").unwrap(),
            asset: AssetId::new("sl-0001").unwrap(),
            kind: AssetKind::Streetlight,
            profile: Some("sl-100".into()),
            location: Some(Point::new(118.78, 32.04)),
            road_segment: Some(ZoneId::new("zhongshan-s1").unwrap()),
            grid: None,
            zone: None,
            report_interval_s: Some(5),
        }],
    };
    let bytes = encode(&p, &limits()).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.contains(r#""location":{"type":"Point","coordinates":[118.78,32.04]}"#),
        "{text}"
    );
    assert_eq!(decode::<Presence>(&bytes, &limits()).unwrap(), p);

    let mut bad = p.clone();
    bad.devices[0].location = Some(Point::new(218.0, 32.0));
    assert!(encode(&bad, &limits()).is_err());
}

#[test]
fn command_round_trips_and_rejects_expired_window() {
    let c: Command = decode(
        br#"{"v":1,"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","device":"lamp-1","issuedAt":"2026-11-22T05:00:00Z","expiresAt":"2026-11-22T05:01:00Z","action":{"write":{"metric":"dimLevel","value":50}}}"#,
        &limits(),
    )
    .unwrap();
    assert!(matches!(&c.action, Action::Write { value: Value::Number(n), .. } if *n == 50.0));
    let back: Command = decode(&encode(&c, &limits()).unwrap(), &limits()).unwrap();
    assert_eq!(back, c);
    let e = decode::<Command>(
        br#"{"v":1,"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","device":"lamp-1","issuedAt":"2026-11-22T05:00:00Z","expiresAt":"2026-11-22T05:00:00Z","action":"reset"}"#,
        &limits(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("expiresAt"), "{e}");
}

/// `decode` reads with sonic-rs first and falls back to serde_json, the reference, on whatever
/// sonic-rs refuses. So the protocol's language stays serde_json's only if sonic-rs accepts
/// nothing that serde_json refuses, and reads what it accepts the same way.
fn fast_reads_as_reference(bytes: &[u8]) {
    let input = String::from_utf8_lossy(bytes);
    let reference = serde_json::from_slice::<Envelope>(bytes);
    if let Some(fast) = protocol::codec::fast_read::<Envelope>(bytes) {
        match &reference {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{input}"),
            Err(e) => panic!("sonic-rs accepts what serde_json refuses ({e}): {input}"),
        }
    }
    assert_eq!(
        decode::<Envelope>(bytes, &limits()).is_ok(),
        reference.is_ok_and(|e| e.check(&limits()).is_ok()),
        "{input}"
    );
}

fn one_reading_envelope(value: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"gateway":"gw-01","boot":"67e55044-10b1-426f-9247-bb680e5fe0c8","seq":7,"sentAt":"2026-11-22T05:53:15.123Z","clock":"synced","items":[{{"kind":"reading","device":"d","metric":"m","observedAt":"2026-11-22T05:53:14.000Z","value":{value}}}]}}"#
    )
    .into_bytes()
}

/// The corners of JSON where parsers differ, each in an otherwise good envelope.
#[test]
fn sonic_rs_is_no_looser_than_serde_json_at_the_corners() {
    let values = [
        "1",
        "-0",
        "-0.0",
        "1E5",
        "1e+5",
        "0.1e1",
        "2.2250738585072011e-308",
        "5e-324",
        "1.7976931348623157e308",
        "-0e5",
        "-0.000",
        "-0.0e-3",
        "-0.01",
        "-0.5",
        "1e400",
        "-1e400",
        "1e-400",
        "01",
        "1.",
        ".5",
        "+1",
        "NaN",
        "Infinity",
        "-",
        "1e",
        "123456789012345678901234567890",
        "0x10",
        "true",
        "tru",
        "null",
        r#""text""#,
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud83d\ude00""#,
        r#""\ud800\u0041""#,
        r#""a\u0000b""#,
        "\"a\tb\"",
        "\"a\nb\"",
        r#""\x""#,
        r#""\u12""#,
        r#""\/""#,
        r#""é""#,
        r#""unterminated"#,
        "[1]",
        "{}",
    ];
    for v in values {
        fast_reads_as_reference(&one_reading_envelope(v));
    }
    let good = String::from_utf8(one_reading_envelope("1")).unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        format!("{good} x").into_bytes(),
        format!("{good},").into_bytes(),
        format!("{good}\n\t ").into_bytes(),
        format!("{good}{good}").into_bytes(),
        format!("\u{feff}{good}").into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":7,"seq":8"#)
            .into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":18446744073709551615"#)
            .into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":18446744073709551616"#)
            .into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":-1"#).into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":7.0"#).into_bytes(),
        good.replace(r#""seq":7"#, r#""seq":7e0"#).into_bytes(),
        good.replace(r#""v":1"#, r#""v":1.0"#).into_bytes(),
        good.replace(r#""v":1"#, r#""v" : 1 "#).into_bytes(),
        good.replace(
            r#""kind":"reading""#,
            r#""kind":"reading","kind":"reading""#,
        )
        .into_bytes(),
        good.replace("}]}", "},]}").into_bytes(),
        good.replace(r#""device":"d""#, r#""device":"d","extra":1"#)
            .into_bytes(),
        good.replace(r#""clock":"synced""#, r#""clock":"Synced""#)
            .into_bytes(),
    ];
    // Bad UTF-8 in a string: a stray byte, a cut sequence, an overlong form, a surrogate.
    for bad in [&[0xff][..], &[0xc3], &[0xc0, 0xaf], &[0xed, 0xa0, 0x80]] {
        let at = good.find(r#""d""#).unwrap() + 1;
        let mut b = good.clone().into_bytes();
        b.splice(at..at + 1, bad.iter().copied());
        inputs.push(b);
    }
    for input in &inputs {
        fast_reads_as_reference(input);
    }
}

/// Nothing in an envelope nests deeply, so a deep nest anywhere must be an error, never a stack
/// overflow, on a thread with a worker's 2 MiB stack.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for depth in [200, 10_000, 100_000] {
                let nest = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                let bytes = format!(
                    r#"{{"v":1,"gateway":"gw-01","boot":"67e55044-10b1-426f-9247-bb680e5fe0c8","seq":7,"sentAt":"2026-11-22T05:53:15.123Z","clock":"synced","items":[{{"kind":"event","device":"cam-3","event":"parkingCapture","observedAt":"2026-11-22T05:50:00.000Z","phase":"instant","attributes":{{"a":{nest}}}}}]}}"#
                );
                assert!(decode::<Envelope>(bytes.as_bytes(), &limits()).is_err());
                fast_reads_as_reference(bytes.as_bytes());
                let items = format!(r#"{{"v":1,"items":{nest}}}"#);
                assert!(decode::<Envelope>(items.as_bytes(), &limits()).is_err());
                // sonic-rs itself, reading any JSON: an error or a value, not a crash.
                let _ = sonic_rs::from_str::<serde_json::Value>(&items);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
