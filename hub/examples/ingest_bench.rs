//! Hub ingest end to end (MQTT → verified → decoded → deduped → committed to SQLite), against a bare
//! `mosquitto_sub` reading the same stream from the same Mosquitto in the same run.
//!
//! `cargo run --release -p hub --example ingest_bench -- [READINGS [GATEWAYS]]` (default 1,000,000;
//! GATEWAYS, 1 or 4, runs only that pair, for a profile or an A/B of two builds). Needs
//! `mosquitto` and `mosquitto_sub` (./test.sh installs them). For 1 and for 4 publishing gateways:
//! 1. a fresh Mosquitto; `mosquitto_sub -q 1 -C N` subscribes; the publisher sends N envelopes of 500
//!    readings (encoded and signed as an agent does, QoS 1); time until the subscriber has them all;
//! 2. a fresh Mosquitto; the hub (external-broker mode, signatures required) subscribes; the same
//!    publisher; time until the hub has committed every envelope, and the envelopes' age at commit
//!    (p50, p99: upper bounds of the histogram buckets the hub exports).
//!
//! Then the same into the hub's embedded broker (rumqttd), which has no bare-subscriber twin, and
//! the 4-gateway hub case again with readings an hour old (a spool's replay: minutes already
//! rolled up, noted for a recompute), against the 4-gateway bare run. Elsewhere readings are
//! stamped live (see [`publish_with`]).
//! Prints a markdown table. Each case is timed from the first publish.
//!
//! `... --example ingest_bench -- postgres [READINGS]` (default 200,000): the hub storing into
//! SQLite and into PostgreSQL (a throwaway local server started with scripts/postgres.sh, default
//! durability), one gateway through Mosquitto each, in the same run; prints both rates and their
//! ratio.
//!
//! `... --example ingest_bench -- paced RATE [SECONDS [late]]`: latency at a sustainable rate
//! instead. Ten gateways publish envelopes of 100 readings, RATE readings/s in all, for SECONDS
//! (default 60), into the hub on Mosquitto; prints the envelopes' age at commit (publish to
//! committed, p50 / p90 / p99 as histogram bucket bounds) and whether the hub kept up. `late`:
//! the readings an hour old, a replay at that pace.
//!
//! `... --example ingest_bench -- tasks [RATE [SECONDS]]` (default 10,000 readings/s for 60 s):
//! reading-to-task latency under that load through Mosquitto, the hub and its rules (see
//! [`task_latency`]); prints how many probe tasks appeared and their latency p50 / p90 / p99 / max.
//!
//! `... --example ingest_bench -- soak RATE [SECONDS]`: memory over time. The hub runs as its own
//! process (the release `hub serve` built next to this example: `cargo build --release -p hub
//! --bins --examples`) on a fresh Mosquitto; ten gateways publish RATE readings/s in envelopes of
//! 100 for SECONDS (default 300); the hub's resident memory (`/proc/PID/status`, VmRSS) is sampled
//! every second. Prints the mean over each quarter of the run, the peak, the hub's CPU (share of
//! one core), how many envelopes it stored, and the size of its database at the end (SQLite's page
//! cache, up to 64 MiB, grows with the database: part of any growth is that).
//!
//! The hub's per-gateway rate limit is off here: one publisher plays each gateway far faster than
//! an agent would.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use protocol::auth::{Key, KeyId};
use protocol::{BootId, ClockState, Envelope, GatewayId, Item, Limits, Reading, Timestamp, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[path = "support/proc.rs"]
mod procfs;
use procfs::thread_cpu_ns;

const PER_ENVELOPE: usize = 500;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install mosquitto and mosquitto-clients (./test.sh does)");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path, port: u16) -> Killed {
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "user {}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 100\n\
             max_packet_size 300000\nlog_dest stderr\nlog_type error\n",
            user.trim()
        ),
    )
    .unwrap();
    let child = Command::new(program("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Killed(child)
}

/// The machine's (busy, all) clock ticks so far, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let all: u64 = ticks.iter().take(8).sum();
    (all - idle, all)
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gateway(i: usize) -> GatewayId {
    GatewayId::new(format!("gw-bench-{i:02}")).unwrap()
}

fn key(i: usize) -> Key {
    Key::new(KeyId::new("k1").unwrap(), vec![i as u8 + 1; 32]).unwrap()
}

/// Publishes `envelopes` envelopes round-robin from `gateways` gateways at QoS 1, encoding and
/// signing each just before it goes (so `sentAt` is the real send time). Returns when every one is
/// acknowledged by the broker. `late`: readings an hour old, as a spool replays an outage.
async fn publish(
    port: u16,
    gateways: usize,
    envelopes: usize,
    embedded: bool,
    late: bool,
) -> Duration {
    publish_with(
        port,
        gateways,
        envelopes,
        PER_ENVELOPE,
        None,
        embedded,
        late,
    )
    .await
}

/// Publishes `envelopes` of `per_envelope` readings round-robin from `gateways`; with `rate`
/// (envelopes/s) paced evenly, otherwise as fast as the broker takes them.
///
/// Live (not `late`), a gateway's readings are stamped from now on, a millisecond apart in a
/// burst and as far apart as its envelopes go when paced: live data, the hub's usual case. `late`,
/// from an hour ago and a second apart in a burst: the minutes they fall in are already rolled
/// up, so the hub notes each batch's (series, minute) pairs for a recompute, as in a replay.
async fn publish_with(
    port: u16,
    gateways: usize,
    envelopes: usize,
    per_envelope: usize,
    rate: Option<f64>,
    embedded: bool,
    late: bool,
) -> Duration {
    let mut opts = MqttOptions::new(format!("bench-pub-{port}"), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    opts.set_keep_alive(Duration::from_secs(30));
    if embedded {
        // The embedded broker takes logins only: as the first gateway, with its key's password.
        opts.set_credentials(
            gateway(0).to_string(),
            protocol::auth::broker_password(&key(0), gateway(0).as_str()),
        );
    }
    let (client, mut ev) = AsyncClient::new(opts, 200);
    let boots: Vec<BootId> = (0..gateways)
        .map(|_| BootId::from_uuid(uuid::Uuid::new_v4()))
        .collect();
    let keys: Vec<Key> = (0..gateways).map(key).collect();
    let started = Instant::now();
    // Each gateway's readings a step apart; paced, as far apart as its envelopes are sent, so the
    // readings' time keeps pace with the clock in a long run (the hub refuses readings from more
    // than five minutes ahead).
    let (base, burst_step) = match late {
        true => (Timestamp::now().add_millis(-3_600_000), 1000.0),
        false => (Timestamp::now(), 1.0),
    };
    let step_ms = rate.map_or(burst_step, |r| 1000.0 * gateways as f64 / r);
    let producer = tokio::spawn(async move {
        let limits = Limits::default();
        let start = tokio::time::Instant::now();
        for n in 0..envelopes {
            if let Some(rate) = rate {
                tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
            }
            let g = n % gateways;
            let seq = (n / gateways) as u64;
            let env = Envelope {
                v: 1,
                gateway: gateway(g),
                boot: boots[g],
                seq,
                sent_at: Timestamp::now(),
                clock: ClockState::Synced,
                items: (0..per_envelope)
                    .map(|r| {
                        Item::Reading(Reading {
                            device: format!("dev-{}", r % 50).parse().unwrap(),
                            metric: format!("m{}", r / 50).parse().unwrap(),
                            observed_at: base.add_millis((seq as f64 * step_ms) as i64),
                            value: Some(Value::Number((n * per_envelope + r) as f64)),
                            unit: None,
                            quality: Default::default(),
                        })
                    })
                    .collect(),
            };
            let bytes = protocol::encode(&env, &limits).unwrap();
            let topic = format!("city/v1/gw/{}/up", gateway(g));
            let payload = protocol::auth::seal(&keys[g], &topic, &bytes);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < envelopes {
        match tokio::time::timeout(Duration::from_secs(60), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher: no acknowledgement for 60 s"),
        }
    }
    producer.await.unwrap();
    started.elapsed()
}

#[derive(Clone)]
struct Row {
    case: String,
    readings: usize,
    secs: f64,
    publish_secs: f64,
    p50: Option<u64>,
    p99: Option<u64>,
}

fn bare(dir: &Path, rt: &tokio::runtime::Runtime, gateways: usize, envelopes: usize) -> Row {
    let port = free_port();
    let _broker = mosquitto(dir, port);
    let mut sub = Killed(
        Command::new(program("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "city/v1/gw/+/up", "-C", &envelopes.to_string()])
            .args(["-i", "bench-bare-sub"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700)); // let it subscribe
    let started = Instant::now();
    let publish_secs = rt
        .block_on(publish(port, gateways, envelopes, false, false))
        .as_secs_f64();
    let status = sub.0.wait().unwrap();
    assert!(status.success(), "mosquitto_sub failed: {status}");
    Row {
        case: format!("bare `mosquitto_sub`, {gateways} gateway(s), Mosquitto"),
        readings: envelopes * PER_ENVELOPE,
        secs: started.elapsed().as_secs_f64(),
        publish_secs,
        p50: None,
        p99: None,
    }
}

/// A hub with the keys of `gateways` bench gateways under `data`, on `mqtt`, once subscribed.
fn start_hub(
    rt: &tokio::runtime::Runtime,
    data: PathBuf,
    postgres: Option<&str>,
    mqtt: hub::MqttMode,
    gateways: usize,
) -> hub::RunningHub {
    start_hub_in(rt, data, postgres, mqtt, gateways, None)
}

/// [`start_hub`], as one process of a cluster when `cluster` is given.
fn start_hub_in(
    rt: &tokio::runtime::Runtime,
    data: PathBuf,
    postgres: Option<&str>,
    mqtt: hub::MqttMode,
    gateways: usize,
    cluster: Option<hub::cluster::ClusterConfig>,
) -> hub::RunningHub {
    let admin = hub::keys::KeyAdmin::open(&hub::store::Database::new(&data, postgres)).unwrap();
    for g in 0..gateways {
        admin.import(&gateway(g), &key(g)).unwrap();
    }
    drop(admin);
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            client_id: "hub-bench".into(),
            rate_limit: None,
            postgres: postgres.map(str::to_owned),
            cluster,
            ..hub::HubConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), data, mqtt)
        }))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    while !hub.metrics.ingest_ready.load(Relaxed) {
        assert!(Instant::now() < end, "hub never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    hub
}

/// The hub as a client of the Mosquitto on `port`.
fn external(port: u16) -> hub::MqttMode {
    hub::MqttMode::External {
        url: hub::Broker::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap(),
        username: None,
        password: None,
        tls: None,
    }
}

fn hub_case(
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    gateways: usize,
    envelopes: usize,
    embedded: bool,
    late: bool,
) -> Row {
    hub_case_on(dir, rt, None, gateways, envelopes, embedded, late)
}

/// [`hub_case`] with the hub's state in PostgreSQL when `postgres` is given.
fn hub_case_on(
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    postgres: Option<&str>,
    gateways: usize,
    envelopes: usize,
    embedded: bool,
    late: bool,
) -> Row {
    let data = dir.join(format!(
        "hub-{gateways}-{embedded}-{}-{late}",
        postgres.is_some()
    ));
    let port = free_port();
    let broker = (!embedded).then(|| mosquitto(dir, port));
    let mqtt = if embedded {
        hub::MqttMode::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    } else {
        external(port)
    };
    let hub = start_hub(rt, data, postgres, mqtt, gateways);
    let writer_before = thread_cpu_ns("store-writer").unwrap_or(0);
    let machine_before = machine_ticks();
    let started = Instant::now();
    let publish_secs = rt
        .block_on(publish(port, gateways, envelopes, embedded, late))
        .as_secs_f64();
    let end = Instant::now() + Duration::from_secs(600);
    while hub.metrics.envelopes_stored.load(Relaxed) < envelopes as u64 {
        assert!(
            Instant::now() < end,
            "hub stored only {} of {envelopes} envelopes; rejected {}",
            hub.metrics.envelopes_stored.load(Relaxed),
            hub.metrics.rejected_total()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(hub.metrics.rejected_total(), 0, "messages were rejected");
    let (busy, total) = machine_ticks();
    let writer_ns = thread_cpu_ns("store-writer").unwrap_or(0) - writer_before;
    let batches = hub.metrics.store_batches.load(Relaxed).max(1);
    let readings = hub.metrics.readings_stored.load(Relaxed).max(1) as f64;
    eprintln!(
        "store: {batches} batches, {:.1} envelopes and {:.1} ms each; rollups {:.1} ms in all; \
         writer CPU {:.0} ns/reading; machine {:.0} % busy; requests waited {} times",
        envelopes as f64 / batches as f64,
        hub.metrics.store_batch_micros.load(Relaxed) as f64 / batches as f64 / 1000.0,
        hub.metrics.rollup_micros.load(Relaxed) as f64 / 1000.0,
        writer_ns as f64 / readings,
        100.0 * (busy - machine_before.0) as f64 / (total - machine_before.1).max(1) as f64,
        hub.metrics.request_waits.load(Relaxed),
    );
    let row = Row {
        case: format!(
            "hub{}, {gateways} gateway(s), {}{}",
            if postgres.is_some() {
                " on PostgreSQL"
            } else {
                ""
            },
            if embedded {
                "embedded broker"
            } else {
                "Mosquitto"
            },
            if late {
                ", readings an hour late (a replay)"
            } else {
                ""
            }
        ),
        readings: hub.metrics.readings_stored.load(Relaxed) as usize,
        secs,
        publish_secs,
        p50: hub.metrics.commit_age.quantile_ms(0.5),
        p99: hub.metrics.commit_age.quantile_ms(0.99),
    };
    rt.block_on(hub.stop());
    drop(broker);
    row
}

/// The runtime the publisher and the hub share: two workers, as on the 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes `envelopes` of `per` readings from `gateways`, `env_rate` envelopes a second in
/// all, to the broker on `port`; the seconds it took.
fn publish_paced(
    rt: &tokio::runtime::Runtime,
    port: u16,
    gateways: usize,
    envelopes: usize,
    per: usize,
    env_rate: f64,
    late: bool,
) -> f64 {
    rt.block_on(publish_with(
        port,
        gateways,
        envelopes,
        per,
        Some(env_rate),
        false,
        late,
    ))
    .as_secs_f64()
}

/// Latency at a paced rate: `readings_per_s` from 10 gateways in envelopes of 100, for `secs`;
/// `late`, the readings an hour old (a replay at that pace).
fn paced(readings_per_s: f64, secs: f64, late: bool) {
    const GATEWAYS: usize = 10;
    const PER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port);
    let hub = start_hub(
        &rt,
        dir.path().join("hub-paced"),
        None,
        external(port),
        GATEWAYS,
    );
    let env_rate = readings_per_s / PER as f64;
    let envelopes = ((env_rate * secs) as usize).max(GATEWAYS);
    let took = publish_paced(&rt, port, GATEWAYS, envelopes, PER, env_rate, late);
    let end = Instant::now() + Duration::from_secs(120);
    while hub.metrics.envelopes_stored.load(Relaxed) < envelopes as u64 {
        assert!(Instant::now() < end, "the hub fell behind for good");
        std::thread::sleep(Duration::from_millis(5));
    }
    let q = |x| {
        hub.metrics
            .commit_age
            .quantile_ms(x)
            .map_or("> 300 s".into(), |v| format!("≤ {v} ms"))
    };
    println!(
        "| {readings_per_s:.0} readings/s ({env_rate:.0} envelopes/s of {PER}, {GATEWAYS} gateways{}) | {secs:.0} s | {} / {} / {} | publisher took {took:.1} s |",
        if late { ", an hour late" } else { "" },
        q(0.5),
        q(0.9),
        q(0.99)
    );
    rt.block_on(hub.stop());
}

/// Reading-to-task latency under load: `readings_per_s` of water depth from 10 gateways (500
/// waterlogging sensors, all well below any threshold, so every reading goes through the rules),
/// and ten times a second one more sensor reports water 17 cm deep for five minutes (two readings,
/// five minutes apart by their timestamps, in one envelope): the default rules raise a
/// `waterlogging` task for it. The latency is from publishing that envelope to the task being
/// visible to a reader of the database (polled every 2 ms).
fn task_latency(readings_per_s: f64, secs: f64) {
    const GATEWAYS: usize = 10;
    const PER: usize = 100;
    const BACKGROUND: usize = 50;
    // One probe a second from each gateway: ten a second in all.
    let probes_per_gateway = (secs as usize).max(1);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port);
    let data = dir.path().join("hub-tasks");
    let hub = start_hub(&rt, data.clone(), None, external(port), GATEWAYS);
    let sensor = |name: String| protocol::DeviceInfo {
        device: name.parse().unwrap(),
        asset: name.parse().unwrap(),
        kind: protocol::AssetKind::Waterlogging,
        profile: None,
        location: None,
        road_segment: None,
        grid: None,
        zone: None,
        report_interval_s: Some(1),
    };
    let boots: Vec<BootId> = (0..GATEWAYS)
        .map(|_| BootId::from_uuid(uuid::Uuid::new_v4()))
        .collect();
    let published: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Default::default();
    let mut opts = MqttOptions::new("bench-tasks", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    let env_rate = readings_per_s / PER as f64;
    let envelopes = (env_rate * secs) as usize;
    let probe_every = (env_rate / GATEWAYS as f64).max(1.0) as u64;
    // The tasks as a reader of the database sees them, from a thread of its own.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (db, stop) = (data.join("hub.sqlite3"), stop.clone());
        std::thread::spawn(move || {
            let db = rusqlite::Connection::open_with_flags(
                db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let mut seen: std::collections::HashMap<String, Instant> = Default::default();
            let mut last = 0i64;
            while !stop.load(Relaxed) {
                let mut q = db
                    .prepare_cached(
                        "SELECT id, asset FROM tasks WHERE rule = 'waterlogging' AND id > ?1 ORDER BY id",
                    )
                    .unwrap();
                let rows: Vec<(i64, String)> = q
                    .query_map([last], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let at = Instant::now();
                for (id, asset) in rows {
                    last = id;
                    seen.entry(asset).or_insert(at);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    let log = published.clone();
    let took = rt.block_on(async move {
        let (client, mut ev) = AsyncClient::new(opts, 200);
        let limits = Limits::default();
        let keys: Vec<Key> = (0..GATEWAYS).map(key).collect();
        // Each gateway announces its sensors first (retained presence), as an agent does at birth.
        for g in 0..GATEWAYS {
            let p = protocol::Presence {
                v: 1,
                gateway: gateway(g),
                boot: boots[g],
                state: protocol::PresenceState::Online,
                sent_at: Timestamp::now(),
                clock: ClockState::Synced,
                agent: None,
                config_version: None,
                devices: (0..BACKGROUND)
                    .map(|d| sensor(format!("wl-{g}-{d}")))
                    .chain((0..probes_per_gateway).map(|d| sensor(format!("probe-{g}-{d}"))))
                    .collect(),
            };
            let topic = format!("city/v1/gw/{}/state", gateway(g));
            let payload =
                protocol::auth::seal(&keys[g], &topic, &protocol::encode(&p, &limits).unwrap());
            client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .unwrap();
        }
        let acks = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let start = tokio::time::Instant::now();
        let mut probes = [0usize; GATEWAYS];
        for n in 0..envelopes {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / env_rate)).await;
            let g = n % GATEWAYS;
            let seq = (n / GATEWAYS) as u64;
            let now = Timestamp::now();
            let reading = |device: String, at: Timestamp, cm: f64| {
                Item::Reading(Reading {
                    device: device.parse().unwrap(),
                    metric: "waterDepth".parse().unwrap(),
                    observed_at: at,
                    value: Some(Value::Number(cm)),
                    unit: Some(protocol::Unit::new("cm").unwrap()),
                    quality: Default::default(),
                })
            };
            let mut items: Vec<Item> = (0..PER)
                .map(|r| {
                    reading(
                        format!("wl-{g}-{}", r % BACKGROUND),
                        now.add_millis(-((r / BACKGROUND) as i64)),
                        2.0,
                    )
                })
                .collect();
            let probe = (seq.is_multiple_of(probe_every) && probes[g] < probes_per_gateway)
                .then(|| format!("probe-{g}-{}", probes[g]));
            if let Some(p) = &probe {
                items.push(reading(p.clone(), now.add_millis(-300_000), 17.0));
                items.push(reading(p.clone(), now, 17.0));
                probes[g] += 1;
            }
            let env = Envelope {
                v: 1,
                gateway: gateway(g),
                boot: boots[g],
                seq,
                sent_at: now,
                clock: ClockState::Synced,
                items,
            };
            let topic = format!("city/v1/gw/{}/up", gateway(g));
            let payload =
                protocol::auth::seal(&keys[g], &topic, &protocol::encode(&env, &limits).unwrap());
            if let Some(p) = probe {
                log.lock().unwrap().insert(p, Instant::now());
            }
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        acks.abort();
        took
    });
    let probes = published.lock().unwrap().len();
    let end = Instant::now() + Duration::from_secs(60);
    while hub.metrics.envelopes_stored.load(Relaxed) < envelopes as u64 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Relaxed);
    let seen = watcher.join().unwrap();
    let mut ms: Vec<f64> = published
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(asset, sent)| {
            seen.get(asset)
                .map(|at| at.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let q = |x: f64| {
        ms.get(((ms.len() as f64 * x).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let stored = hub.metrics.envelopes_stored.load(Relaxed);
    // The same run's envelopes from publish to committed, before the rules see them.
    let commit = |x| {
        hub.metrics
            .commit_age
            .quantile_ms(x)
            .map_or("> 300 s".into(), |v| format!("≤ {v} ms"))
    };
    println!(
        "| {readings_per_s:.0} readings/s for {secs:.0} s ({GATEWAYS} gateways, {} sensors) | {} of {probes} | {:.0} / {:.0} / {:.0} / {:.0} ms | {} / {} | {} | publisher took {:.1} s |",
        GATEWAYS * (BACKGROUND + probes_per_gateway),
        ms.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        commit(0.5),
        commit(0.99),
        if stored >= envelopes as u64 {
            "kept up".to_owned()
        } else {
            format!("stored {stored} of {envelopes} envelopes")
        },
        took.as_secs_f64(),
    );
    rt.block_on(hub.stop());
}

/// A process's resident memory in KiB and its CPU time in clock ticks (user + system).
fn rss_and_cpu(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// A counter from the hub's `/metrics` (a metric without labels).
fn metric(http: u16, name: &str) -> Option<u64> {
    let text = ureq::get(&format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Memory of the hub process under `readings_per_s` for `secs` (see the module's documentation).
fn soak(readings_per_s: f64, secs: f64) {
    const GATEWAYS: usize = 10;
    const PER: usize = 100;
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("hub"))
        .filter(|p| p.is_file())
        .expect("the hub binary next to this example: cargo build --release -p hub --bins");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port);
    let data = dir.path().join("hub-soak");
    {
        let admin = hub::keys::KeyAdmin::open(&hub::store::Database::new(&data, None)).unwrap();
        for g in 0..GATEWAYS {
            admin.import(&gateway(g), &key(g)).unwrap();
        }
    }
    let http = free_port();
    let child = Command::new(&bin)
        .arg("serve")
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("hub.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _hub = Killed(child);
    let end = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{http}/healthz"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < end, "the hub never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let env_rate = readings_per_s / PER as f64;
    let envelopes = ((env_rate * secs) as usize).max(GATEWAYS);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Relaxed) {
                if let Some(s) = rss_and_cpu(pid) {
                    samples.push(s);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            samples
        })
    };
    let rt = runtime();
    let took = publish_paced(&rt, port, GATEWAYS, envelopes, PER, env_rate, false);
    sampling.store(false, Relaxed);
    let samples = sampler.join().unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let n = metric(http, "hub_envelopes_stored_total").unwrap_or(0);
        if n >= envelopes as u64 || Instant::now() > end {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Mean resident memory over each quarter of the run.
    let quarters: Vec<String> = samples
        .chunks(samples.len().div_ceil(4).max(1))
        .map(|c| {
            let kib = c.iter().map(|x| x.0 as f64).sum::<f64>() / c.len() as f64;
            format!("{:.1}", kib / 1024.0)
        })
        .collect();
    let peak = samples.iter().map(|s| s.0).max().unwrap_or(0) as f64 / 1024.0;
    let ticks = samples.last().map_or(0, |s| s.1) - samples.first().map_or(0, |s| s.1);
    let cpu = ticks as f64 / 100.0 / took.max(1e-9) * 100.0;
    let db_mib = ["hub.sqlite3", "hub.sqlite3-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / (1024.0 * 1024.0);
    println!(
        "| {readings_per_s:.0} readings/s ({GATEWAYS} gateways, envelopes of {PER}) | {took:.0} s | {} MiB | {peak:.1} MiB | {cpu:.1} % | {stored} of {envelopes} | {db_mib:.0} MiB |",
        quarters.join(" / ")
    );
}

/// A throwaway PostgreSQL server for the bench (scripts/postgres.sh), stopped on drop.
struct PgServer {
    dir: PathBuf,
    params: String,
}

impl PgServer {
    fn start(dir: &Path) -> PgServer {
        let dir = dir.join("pg");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
        let out = std::process::Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let params = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        PgServer { dir, params }
    }

    /// A fresh database: its connection string.
    fn database(&self, name: &str) -> String {
        use hub::db::Sql as _;
        hub::db::PgConn::connect(&self.params)
            .and_then(|c| c.batch(&format!("CREATE DATABASE {name}")))
            .unwrap();
        format!("{} dbname={name}", self.params)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// `ingest_bench postgres READINGS`: the hub storing into SQLite and into PostgreSQL (a local
/// server with its default durability, fsync on), one gateway through Mosquitto each, same run.
fn postgres_compare(readings: usize) {
    let envelopes = (readings / PER_ENVELOPE).max(4) / 4 * 4;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let pg = PgServer::start(dir.path());
    let lite = hub_case(dir.path(), &rt, 1, envelopes, false, false);
    let db = pg.database("bench");
    let post = hub_case_on(dir.path(), &rt, Some(&db), 1, envelopes, false, false);
    println!("{envelopes} envelopes of {PER_ENVELOPE} readings per case\n");
    println!("| case | readings/s | seconds | age at commit p50 / p99 |");
    println!("|---|---|---|---|");
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("≤ {v} ms"));
    for r in [&lite, &post] {
        println!(
            "| {} | {:.0} | {:.2} | {} / {} |",
            r.case,
            r.readings as f64 / r.secs,
            r.secs,
            ms(r.p50),
            ms(r.p99)
        );
    }
    println!(
        "\nPostgreSQL ÷ SQLite: {:.2}",
        (post.readings as f64 / post.secs) / (lite.readings as f64 / lite.secs)
    );
}

/// `ingest_bench cluster READINGS`: 8 gateways through one Mosquitto into one PostgreSQL, taken
/// in by one cluster hub, then by two sharing the partitions (same run; in one process here, so
/// the two share its runtime's two workers as two processes would share the two cores).
fn cluster_compare(readings: usize) {
    const GATEWAYS: usize = 8;
    let envelopes = (readings / PER_ENVELOPE).max(GATEWAYS) / GATEWAYS * GATEWAYS;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let pg = PgServer::start(dir.path());
    let mut rows = Vec::new();
    // One hub again at the end: the first case runs on a server just started, the last on a
    // warm one; the two one-hub rows show how much that matters.
    for (case, hubs) in [1usize, 2, 1].into_iter().enumerate() {
        let db = pg.database(&format!("cluster{case}"));
        let port = free_port();
        let broker = mosquitto(dir.path(), port);
        let started: Vec<hub::RunningHub> = (0..hubs)
            .map(|i| {
                let data = dir.path().join(format!("cluster-{case}-{i}"));
                let cluster = hub::cluster::ClusterConfig {
                    hub: format!("bench-{i}"),
                    partitions: 8,
                    lease: Duration::from_secs(3),
                };
                // The keys are in the shared database once.
                let keys = if i == 0 { GATEWAYS } else { 0 };
                start_hub_in(&rt, data, Some(&db), external(port), keys, Some(cluster))
            })
            .collect();
        // Until the partitions are shared out, and a moment for the sessions to subscribe.
        let end = Instant::now() + Duration::from_secs(60);
        while started.iter().any(|h| h.owned().parts.len() != 8 / hubs) {
            assert!(Instant::now() < end, "the partitions were never shared out");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        let publish_secs = rt
            .block_on(publish(port, GATEWAYS, envelopes, false, false))
            .as_secs_f64();
        let stored = || {
            started
                .iter()
                .map(|h| h.metrics.envelopes_stored.load(Relaxed))
                .sum::<u64>()
        };
        let end = Instant::now() + Duration::from_secs(600);
        while stored() < envelopes as u64 {
            assert!(
                Instant::now() < end,
                "only {} of {envelopes} stored",
                stored()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = t0.elapsed().as_secs_f64();
        let per_hub: Vec<(usize, usize)> = started
            .iter()
            .map(|h| {
                let own = h.owned();
                let gws = (0..GATEWAYS)
                    .filter(|g| own.owns(gateway(*g).as_str()))
                    .count();
                (gws, h.metrics.readings_stored.load(Relaxed) as usize)
            })
            .collect();
        for h in started {
            rt.block_on(h.stop());
        }
        drop(broker);
        rows.push((hubs, secs, publish_secs, per_hub));
    }
    println!(
        "{envelopes} envelopes of {PER_ENVELOPE} readings from {GATEWAYS} gateways per case\n"
    );
    println!(
        "| hub processes | readings/s in all | seconds | publisher done (s) | per process: gateways, readings/s |"
    );
    println!("|---|---|---|---|---|");
    for (hubs, secs, publish_secs, per_hub) in &rows {
        let total: usize = per_hub.iter().map(|p| p.1).sum();
        let each: Vec<String> = per_hub
            .iter()
            .map(|(g, r)| format!("{g} gw, {:.0}", *r as f64 / secs))
            .collect();
        println!(
            "| {hubs} | {:.0} | {secs:.2} | {publish_secs:.2} | {} |",
            total as f64 / secs,
            each.join("; ")
        );
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if std::env::args().nth(1).as_deref() == Some("postgres") {
        let readings = std::env::args()
            .nth(2)
            .map(|a| a.parse().expect("READINGS must be a number"))
            .unwrap_or(200_000);
        return postgres_compare(readings);
    }
    if std::env::args().nth(1).as_deref() == Some("cluster") {
        let readings = std::env::args()
            .nth(2)
            .map(|a| a.parse().expect("READINGS must be a number"))
            .unwrap_or(400_000);
        return cluster_compare(readings);
    }
    if std::env::args().nth(1).as_deref() == Some("soak") {
        let rate: f64 = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .expect("soak RATE [SECONDS]: RATE in readings/s");
        let secs: f64 = std::env::args()
            .nth(3)
            .map_or(300.0, |a| a.parse().expect("SECONDS must be a number"));
        soak(rate, secs);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("tasks") {
        let rate: f64 = std::env::args()
            .nth(2)
            .map_or(10_000.0, |a| a.parse().expect("RATE in readings/s"));
        let secs: f64 = std::env::args()
            .nth(3)
            .map_or(60.0, |a| a.parse().expect("SECONDS must be a number"));
        task_latency(rate, secs);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("paced") {
        let rate: f64 = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .expect("paced RATE [SECONDS [late]]: RATE in readings/s");
        let secs: f64 = std::env::args()
            .nth(3)
            .map_or(60.0, |a| a.parse().expect("SECONDS must be a number"));
        paced(
            rate,
            secs,
            std::env::args().nth(4).as_deref() == Some("late"),
        );
        return;
    }
    let readings: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("READINGS must be a number"))
        .unwrap_or(1_000_000);
    let only: Option<usize> = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("GATEWAYS must be a number"));
    let envelopes = (readings / PER_ENVELOPE).max(4) / 4 * 4;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut rows = Vec::new();
    for gateways in [1, 4] {
        if only.is_some_and(|g| g != gateways) {
            continue;
        }
        let b = bare(dir.path(), &rt, gateways, envelopes);
        let h = hub_case(dir.path(), &rt, gateways, envelopes, false, false);
        rows.push((b, Some(h)));
    }
    if only.is_none() {
        rows.push((hub_case(dir.path(), &rt, 1, envelopes, true, false), None));
        // The replay case, against the last bare run (4 gateways).
        let late = hub_case(dir.path(), &rt, 4, envelopes, false, true);
        if let Some((b, _)) = rows.iter().rev().find(|(_, h)| h.is_some()) {
            rows.push((b.clone(), Some(late)));
        }
    }
    println!(
        "{} envelopes of {PER_ENVELOPE} readings per case; {} cores\n",
        envelopes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| case | readings/s | seconds | publisher done (s) | age at commit p50 / p99 | hub ÷ bare |"
    );
    println!("|---|---|---|---|---|---|");
    let rate = |r: &Row| r.readings as f64 / r.secs;
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("≤ {v} ms"));
    let mut printed = std::collections::HashSet::new();
    for (first, hub_row) in &rows {
        let print = |r: &Row, ratio: String| {
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {} / {} | {} |",
                r.case,
                rate(r),
                r.secs,
                r.publish_secs,
                ms(r.p50),
                ms(r.p99),
                ratio
            );
        };
        // A bare run a second hub case is compared with is printed once.
        if printed.insert(first.case.clone()) {
            print(first, String::new());
        }
        if let Some(h) = hub_row {
            print(h, format!("{:.2}", rate(h) / rate(first)));
        }
    }
}
