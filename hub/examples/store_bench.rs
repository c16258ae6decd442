//! The store writer alone: what committing decoded envelopes costs, without MQTT, signatures or
//! decoding in the way.
//!
//! `cargo run --release -p hub --example store_bench -- [READINGS [GATEWAYS [INFLIGHT [RUNS
//! [live|late]]]]]` (defaults 1,000,000 readings, 4 gateways, 100 envelopes in flight, 5 runs,
//! live). Envelopes have the ingest benchmark's shape: 500 readings each (50 devices × 10
//! metrics, so 500 series per gateway), round-robin from GATEWAYS gateways. `live`: a gateway's
//! envelopes a millisecond apart from now, as live data; `late`: a second apart from an hour ago,
//! as a spool replays an outage (minutes already rolled up, so each is noted for a recompute).
//! They are built before the clock starts and queued to `Store::write` with at most INFLIGHT
//! unacknowledged, as the hub's MQTT client has at most the broker's in-flight window
//! unacknowledged; each run stores into a fresh SQLite database (WAL, `synchronous=FULL`).
//!
//! Prints per run the wall-clock rate and the writer thread's own CPU time per reading (from
//! `/proc/self/task/TID/schedstat`, nanoseconds on the CPU), which the rest of a shared machine
//! disturbs far less than a wall-clock rate; then the medians.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use hub::store::{Database, Store, WriteOp};
use protocol::{BootId, ClockState, Envelope, GatewayId, Item, Reading, Timestamp, Value};

#[path = "support/proc.rs"]
mod procfs;
use procfs::thread_cpu_ns;

const PER_ENVELOPE: usize = 500;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map_or(default, |a| a.parse().expect("arguments are numbers"))
}

/// Bytes this process has handed to `write` and the like (`wchar` of `/proc/self/io`): the
/// writer's WAL frames and the checkpointer's copies into the database file.
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn envelopes(count: usize, gateways: usize, late: bool) -> Vec<Envelope> {
    let boots: Vec<BootId> = (0..gateways)
        .map(|_| BootId::from_uuid(uuid::Uuid::new_v4()))
        .collect();
    let (base, step) = match late {
        true => (Timestamp::now().add_millis(-3_600_000), 1000),
        false => (Timestamp::now(), 1),
    };
    (0..count)
        .map(|n| {
            let g = n % gateways;
            let seq = (n / gateways) as u64;
            Envelope {
                v: 1,
                gateway: format!("bench-gw-{g}").parse::<GatewayId>().unwrap(),
                boot: boots[g],
                seq,
                sent_at: Timestamp::now(),
                clock: ClockState::Synced,
                items: (0..PER_ENVELOPE)
                    .map(|r| {
                        Item::Reading(Reading {
                            device: format!("dev-{}", r % 50).parse().unwrap(),
                            metric: format!("m{}", r / 50).parse().unwrap(),
                            observed_at: base.add_millis(seq as i64 * step),
                            value: Some(Value::Number((n * PER_ENVELOPE + r) as f64)),
                            unit: None,
                            quality: Default::default(),
                        })
                    })
                    .collect(),
            }
        })
        .collect()
}

struct Run {
    rate: f64,
    cpu_ns_per_reading: f64,
    envelopes_per_batch: f64,
    bytes_per_reading: f64,
}

fn run(count: usize, gateways: usize, inflight: usize, late: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(hub::metrics::Metrics::default());
    let (store, writer) = Store::open(
        dir.path(),
        &Database::Sqlite(dir.path().join("hub.sqlite3")),
        metrics.clone(),
        None,
        hub::live::Live::default(),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let envs = envelopes(count, gateways, late);
    let written_before = bytes_written();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let window = Arc::new(tokio::sync::Semaphore::new(inflight));
    let cpu_before = thread_cpu_ns("store-writer").unwrap_or(0);
    let started = Instant::now();
    rt.block_on(async {
        for env in envs {
            let permit = window.clone().acquire_owned().await.unwrap();
            let op = WriteOp::Envelope {
                env,
                received: Timestamp::now(),
            };
            store
                .write(op, Some(Box::new(move || drop(permit))))
                .await
                .unwrap();
        }
        // Every acknowledgement back.
        let _all = window.acquire_many(inflight as u32).await.unwrap();
    });
    let secs = started.elapsed().as_secs_f64();
    let written = bytes_written() - written_before;
    let cpu = thread_cpu_ns("store-writer").unwrap_or(0) - cpu_before;
    let readings = metrics.readings_stored.load(Relaxed) as f64;
    assert_eq!(
        readings as usize,
        count * PER_ENVELOPE,
        "every reading stored"
    );
    let batches = metrics.store_batches.load(Relaxed).max(1) as f64;
    drop(store);
    writer.join().unwrap();
    Run {
        rate: readings / secs,
        cpu_ns_per_reading: cpu as f64 / readings,
        envelopes_per_batch: count as f64 / batches,
        bytes_per_reading: written as f64 / readings,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let readings = arg(1, 1_000_000);
    let gateways = arg(2, 4);
    let inflight = arg(3, 100);
    let runs = arg(4, 5);
    let late = match std::env::args().nth(5).as_deref() {
        None | Some("live") => false,
        Some("late") => true,
        Some(other) => panic!("live or late, not {other}"),
    };
    let count = (readings / PER_ENVELOPE).max(gateways);
    println!(
        "{count} envelopes of {PER_ENVELOPE} readings from {gateways} gateway(s), {inflight} in flight, {}\n",
        if late { "an hour late" } else { "live" }
    );
    println!(
        "| run | readings/s | writer CPU ns/reading | envelopes/batch | bytes written/reading |"
    );
    println!("|---|---|---|---|---|");
    let mut all = Vec::new();
    for i in 1..=runs {
        let r = run(count, gateways, inflight, late);
        println!(
            "| {i} | {:.0} | {:.0} | {:.1} | {:.1} |",
            r.rate, r.cpu_ns_per_reading, r.envelopes_per_batch, r.bytes_per_reading
        );
        all.push(r);
    }
    println!(
        "| median | {:.0} | {:.0} | {:.1} | {:.1} |",
        median(all.iter().map(|r| r.rate).collect()),
        median(all.iter().map(|r| r.cpu_ns_per_reading).collect()),
        median(all.iter().map(|r| r.envelopes_per_batch).collect()),
        median(all.iter().map(|r| r.bytes_per_reading).collect()),
    );
}
