//! How fast an envelope decodes, against serde's derived form of the same types in the same run.
//!
//! `cargo run --release -p protocol --example decode_bench [ROUNDS]` (default 7): an envelope of
//! 500 readings shaped as `ingest_bench` sends them (50 devices × 10 metrics; its size is
//! printed) is decoded 200 times per round by each way, alternating; the median round of each.
//! - **items as derived**: `Item` read by serde's derive for an internally tagged enum (`kind`),
//!   as the protocol crate did until 2026-12-04: every item's fields are buffered first;
//! - **items read directly**: the crate's own `Item` deserializer (`kind` first, no buffer);
//! - **decode**: `protocol::decode`, as the hub calls it: the direct read by sonic-rs (serde_json
//!   only for what sonic-rs refuses or a negative zero) plus the envelope's validation.

use std::time::Instant;

use protocol::envelope::{Event, Reading};
use protocol::{BootId, ClockState, Envelope, GatewayId, Item, Limits, Timestamp, Value};
use serde::Deserialize;

/// `Item` as serde derives it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[allow(dead_code)]
enum DerivedItem {
    Reading(Reading),
    Event(Event),
}

/// `Envelope` with [`DerivedItem`]s.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct DerivedEnvelope {
    v: u32,
    gateway: GatewayId,
    boot: BootId,
    seq: u64,
    sent_at: Timestamp,
    clock: ClockState,
    items: Vec<DerivedItem>,
}

const PER_ENVELOPE: usize = 500;
const PER_ROUND: usize = 200;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |a| a.parse().expect("ROUNDS must be a number"));
    let base = Timestamp::now().add_millis(-3_600_000);
    let env = Envelope {
        v: 1,
        gateway: "gw-bench-0".parse().expect("gateway id"),
        boot: BootId::from_uuid(uuid::Uuid::nil()),
        seq: 1,
        sent_at: Timestamp::now(),
        clock: ClockState::Synced,
        items: (0..PER_ENVELOPE)
            .map(|r| {
                Item::Reading(Reading {
                    device: format!("dev-{}", r % 50).parse().expect("device id"),
                    metric: format!("m{}", r / 50).parse().expect("metric id"),
                    observed_at: base,
                    value: Some(Value::Number(r as f64 * 1.5)),
                    unit: None,
                    quality: Default::default(),
                })
            })
            .collect(),
    };
    let limits = Limits::default();
    let bytes = protocol::encode(&env, &limits).expect("encodes");
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        times[0].push(round(|| {
            serde_json::from_slice::<DerivedEnvelope>(&bytes).expect("decodes");
        }));
        times[1].push(round(|| {
            serde_json::from_slice::<Envelope>(&bytes).expect("decodes");
        }));
        times[2].push(round(|| {
            protocol::decode::<Envelope>(&bytes, &limits).expect("decodes");
        }));
    }
    println!(
        "{PER_ROUND} envelopes of {PER_ENVELOPE} readings ({} bytes each) per round, {rounds} rounds, median round\n",
        bytes.len()
    );
    println!("| way | readings/s | ns per reading |");
    println!("|---|---|---|");
    let readings = (PER_ROUND * PER_ENVELOPE) as f64;
    let mut medians = Vec::new();
    for (name, t) in [
        "items as derived (serde_json)",
        "items read directly (serde_json)",
        "decode (sonic-rs direct + validation)",
    ]
    .iter()
    .zip(&mut times)
    {
        t.sort_by(f64::total_cmp);
        let secs = t[t.len() / 2];
        medians.push(secs);
        println!(
            "| {name} | {:.0} | {:.0} |",
            readings / secs,
            secs * 1e9 / readings
        );
    }
    println!(
        "\nitems read directly ÷ as derived, in time: {:.2}",
        medians[1] / medians[0]
    );
}

/// Seconds for [`PER_ROUND`] runs of `f`.
fn round(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..PER_ROUND {
        f();
    }
    started.elapsed().as_secs_f64()
}
