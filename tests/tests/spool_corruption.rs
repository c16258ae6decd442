//! A damaged spool: the agent spools an outage, stops; a record in the middle of the spool file is
//! garbled and the tail is torn (an SD card and a power cut). The agent starts, reports what it
//! skipped, and delivers everything else: the hub ends with every count except exactly the ones in
//! the damaged records.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tests::{eventually, free_addr, get_json};

fn agent_bin() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/edge-agent")
}

#[test]
fn garbled_and_torn_spool_records_are_skipped_and_the_rest_delivered() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt, status) = (free_addr(), free_addr(), free_addr());
    let device = free_addr().port();
    let _device = tests::pymodbus_tcp(
        device,
        &serde_json::json!({ "1": { "counter": 100 } }),
        dir.path(),
    );
    let gw = dir.path().join("gw.toml");
    std::fs::write(
        &gw,
        format!(
            r#"{head}[agent]
heartbeat_s = 1
status_listen = "{status}"
[[bus]]
name = "tcp-1"
type = "tcp"
host = "127.0.0.1:{device}"
[[bus.device]]
id = "counter-1"
unit = 1
profile = "test-counter"
asset = "counter-1"
poll_ms = 100
"#,
            head = tests::gateway_head("gw-spool", &format!("mqtt://{mqtt}"))
        ),
    )
    .unwrap();
    let profiles = tests::test_profiles();
    let data = dir.path().join("agent-data");

    // No broker yet: everything goes to the spool, one record per poll.
    let agent = tests::agent_process(&gw, Some(&profiles), &data);
    std::thread::sleep(Duration::from_secs(4));
    agent.terminate();

    let seg = std::fs::read_dir(data.join("spool/bulk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let starts: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"SPR1")
        .map(|(i, _)| i)
        .collect();
    assert!(starts.len() >= 20, "only {} records spooled", starts.len());
    // Each record's header says how many readings it holds (u32 after magic and length).
    let items = |at: usize| {
        i64::from(u32::from_le_bytes(
            bytes[at + 8..at + 12].try_into().unwrap(),
        ))
    };
    let total: i64 = starts.iter().map(|s| items(*s)).sum();
    // Garble the payload of a record in the middle; tear the last record in half.
    let mid = starts[starts.len() / 2];
    let damaged = items(mid) + items(*starts.last().unwrap());
    bytes[mid + 40] ^= 0x5a;
    let last = *starts.last().unwrap();
    let torn_len = last + (bytes.len() - last) / 2;
    bytes.truncate(torn_len);
    std::fs::write(&seg, &bytes).unwrap();
    let records = total;

    // The hub comes up; the agent starts again, skips the two damaged records, sends the rest.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let agent = tests::agent_process(&gw, Some(&profiles), &data);
    let out = eventually(Duration::from_secs(15), "the agent's status", || {
        let o = Command::new(agent_bin())
            .args(["status", "--json", "--agent", &format!("http://{status}")])
            .output()
            .ok()?;
        o.status.success().then_some(o.stdout)
    });
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(st["spool"]["corruptRecords"], 2, "{st}");
    assert!(st["spool"]["corruptBytes"].as_u64().unwrap() > 0, "{st}");
    let base = format!("http://{http}");
    let from = protocol::Timestamp::now().add_millis(-3_600_000);
    let values = eventually(Duration::from_secs(30), "the spooled readings", || {
        let r = get_json(&format!(
            "{base}/api/v1/assets/counter-1/readings?metric=pollCount&max_points=20000&from={from}"
        ))?;
        let v: Vec<i64> = r
            .as_array()?
            .iter()
            .filter_map(|p| p["value"].as_f64().map(|x| x as i64))
            .collect();
        // The spooled ones (1..=records) are in once everything below `records` has arrived.
        let spooled: Vec<i64> = v.iter().copied().filter(|x| *x <= records).collect();
        (spooled.len() as i64 >= records - damaged).then_some(spooled)
    });
    // Exactly the readings of the two damaged records are missing: the garbled and the torn one.
    let missing: Vec<i64> = (1..=records).filter(|n| !values.contains(n)).collect();
    assert_eq!(missing.len() as i64, damaged, "missing {missing:?}");
    assert_eq!(*missing.last().unwrap(), records, "the torn tail");
    assert_eq!(values.len() as i64, records - damaged, "no doubles");
    agent.terminate();
    rt.block_on(hub.stop());
}
