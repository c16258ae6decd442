//! Spool write and replay rates, as the uplink uses the spool: envelopes of 500 readings encoded as
//! on the wire, appended with a sync every `SYNC_EVERY` envelopes (the uplink syncs once a second),
//! then replayed oldest first (read + acknowledge). Prints readings/s and bytes per reading.
//!
//! `cargo run --release -p edge-agent --example spool_bench [ENVELOPES] [DIR]`; DIR should be on the
//! disk the spool lives on (default: a temporary directory).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use edge_agent::spool::{Budget, Class, Spool};
use protocol::{BootId, ClockState, Envelope, Item, Limits, Quality, Reading, Timestamp, Value};

const READINGS: usize = 500;
const SYNC_EVERY: usize = 10;

fn envelope(seq: u64, boot: BootId, t0: Timestamp) -> Vec<u8> {
    let items = (0..READINGS)
        .map(|i| {
            Item::Reading(Reading {
                device: format!("lamp-{:04}", i / 10).parse().unwrap(),
                metric: [
                    "voltage",
                    "current",
                    "activePower",
                    "powerFactor",
                    "dimLevel",
                ][i % 5]
                    .parse()
                    .unwrap(),
                observed_at: t0.add_millis(seq as i64 * 1000 + i as i64),
                value: Some(Value::Number(220.0 + (i % 17) as f64 * 0.1)),
                unit: Some(protocol::Unit::new("V").unwrap()),
                quality: Quality::Good,
            })
        })
        .collect();
    let env = Envelope {
        v: protocol::PROTOCOL_VERSION,
        gateway: "gw-bench".parse().unwrap(),
        boot,
        seq,
        sent_at: t0.add_millis(seq as i64 * 1000 + 999),
        clock: ClockState::Synced,
        items,
    };
    protocol::encode(&env, &Limits::default()).unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(400);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let budget = Budget {
        max_bytes: 4 << 30,
        max_age: Duration::from_secs(86_400),
        segment_bytes: 16 << 20,
    };
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());
    let t0 = Timestamp::now();
    let payloads: Vec<Vec<u8>> = (0..n as u64).map(|s| envelope(s, boot, t0)).collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    let mut spool = Spool::open(&dir.join("spool"), budget, budget).unwrap();
    let started = Instant::now();
    for (i, p) in payloads.iter().enumerate() {
        spool
            .append(Class::Bulk, p, READINGS as u32, t0.unix_millis())
            .unwrap();
        if (i + 1) % SYNC_EVERY == 0 {
            spool.sync().unwrap();
        }
    }
    spool.sync().unwrap();
    let write = started.elapsed();
    let on_disk = spool.figures(t0.unix_millis()).bytes;
    drop(spool);

    // Replay after a restart: open (scanning every record), then read and acknowledge in order.
    let started = Instant::now();
    let mut spool = Spool::open(&dir.join("spool"), budget, budget).unwrap();
    let opened = started.elapsed();
    let mut next = 0;
    let mut replayed = 0usize;
    while let Some(id) = spool.next_unacked(Class::Bulk, next) {
        let r = spool.read(Class::Bulk, id).unwrap().unwrap();
        replayed += r.items as usize;
        spool.ack(Class::Bulk, id);
        next = id + 1;
    }
    spool.sync().unwrap();
    let replay = started.elapsed();
    let total = n * READINGS;
    assert_eq!(replayed, total);
    println!(
        "envelopes {n} x {READINGS} readings, {:.1} MB encoded, {:.0} bytes/reading on disk",
        bytes as f64 / 1e6,
        on_disk as f64 / total as f64
    );
    println!(
        "write  {:>10.0} readings/s  ({:.2} s, sync every {SYNC_EVERY} envelopes)",
        total as f64 / write.as_secs_f64(),
        write.as_secs_f64()
    );
    println!(
        "replay {:>10.0} readings/s  ({:.2} s, of which opening and scanning {:.2} s)",
        total as f64 / replay.as_secs_f64(),
        replay.as_secs_f64(),
        opened.as_secs_f64()
    );
}
