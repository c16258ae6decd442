//! A gateway whose SD card fills up during an outage: the agent's data directory is a 1 MB tmpfs
//! (in a mount namespace of its own, by `unshare`) with 700 KB already taken, the broker is
//! unreachable, and twenty devices keep producing. When the disk is full the agent drops its
//! oldest unsent readings (counted) to keep the new ones, never fails to write what is new, and
//! when the hub comes back it delivers what it kept. A spool write that fails is counted as lost
//! (`spool.lostItems`), apart from the uplink's connection errors.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tests::{eventually, free_addr, get_json, pymodbus_tcp, workspace_root};

#[test]
fn a_full_disk_drops_the_oldest_unsent_readings_not_the_new_ones() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let modbus = free_addr();
    let units: serde_json::Map<String, serde_json::Value> = (1..=20)
        .map(|u| {
            (
                u.to_string(),
                tests::test_meter_registers(220.0 + f64::from(u)),
            )
        })
        .collect();
    let _devices = pymodbus_tcp(modbus.port(), &json!(units), dir.path());
    let (http, mqtt, status) = (free_addr(), free_addr(), free_addr());
    // Four buses (serial servers, say) of five devices each, polled ten times a second.
    let buses: String = (0..4)
        .map(|b| {
            let devices: String = (1..=5)
                .map(|d| {
                    let u = b * 5 + d;
                    format!(
                        "\n[[bus.device]]\nid = \"m-{u}\"\nunit = {u}\nprofile = \"test-meter\"\nasset = \"m-{u}\"\npoll_ms = 100\n"
                    )
                })
                .collect();
            format!(
                "\n[[bus]]\nname = \"tcp-{b}\"\ntype = \"tcp\"\nhost = \"{modbus}\"\ntimeout_ms = 1000\n{devices}"
            )
        })
        .collect();
    let gw = dir.path().join("gw-full.toml");
    std::fs::write(
        &gw,
        format!(
            "{}[agent]\nbatch_max_wait_ms = 200\nheartbeat_s = 1\nspool_bulk_max_mb = 4\n{buses}",
            tests::gateway_head("gw-full", &format!("mqtt://{mqtt}"))
        ),
    )
    .unwrap();
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    // A small card, mostly taken by something else (logs, an old image).
    // Killed however the test ends: a failed assertion left it running, holding the test
    // runner's output open, and the whole suite waited for it.
    let agent = Command::new("unshare")
        .args(["-Urm", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o size=1m tmpfs "$1" && head -c 700000 /dev/zero > "$1/filler" && shift && exec "$@""#,
        )
        .arg("sh")
        .arg(&data)
        .arg(workspace_root().join("target/debug/edge-agent"))
        .arg("run")
        .arg("--config")
        .arg(&gw)
        .arg("--profiles")
        .arg(tests::test_profiles())
        .arg("--data-dir")
        .arg(&data)
        .args(["--clock", "synced"])
        .arg("--status-listen")
        .arg(status.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = tests::Peer::new("edge-agent", agent);
    let agent_status = || get_json(&format!("http://{status}/status"));
    let started = std::time::Instant::now();
    let full = eventually(
        Duration::from_secs(120),
        "the disk full and the oldest dropped",
        || {
            if let Ok(Some(code)) = agent.try_wait() {
                panic!("the agent exited: {code}");
            }
            let s = agent_status()?;
            (s["spool"]["droppedItems"].as_u64()? > 0).then_some(s)
        },
    );
    assert_eq!(
        full["spool"]["lostItems"], 0,
        "new readings failed to be written: {full}"
    );
    // A few more seconds on a full disk: still nothing new lost.
    std::thread::sleep(Duration::from_secs(3));
    let s = agent_status().unwrap();
    assert_eq!(s["spool"]["lostItems"], 0, "{s}");
    assert!(
        s["spool"]["droppedItems"].as_u64().unwrap()
            > full["spool"]["droppedItems"].as_u64().unwrap(),
        "still dropping the oldest to keep the new: {s}"
    );
    // What is kept is the newest: the oldest unsent record is younger than the outage.
    let outage_s = started.elapsed().as_secs();
    let oldest = s["spool"]["oldestAgeS"].as_u64().unwrap();
    assert!(
        oldest + 3 < outage_s,
        "oldest unsent {oldest} s old after a {outage_s} s outage: {s}"
    );
    assert!(s["spool"]["items"].as_u64().unwrap() > 0, "{s}");

    // The hub comes back: what was kept arrives.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub_dir = dir.path().join("hub");
    tests::provision_admin(&hub_dir);
    let _hub = tests::start_embedded_hub(&rt, &hub_dir, http, mqtt);
    let base = format!("http://{http}");
    eventually(Duration::from_secs(90), "the spool drained", || {
        let s = agent_status()?;
        (s["spool"]["depth"].as_u64()? <= 2).then_some(())
    });
    // Every device's data is at the hub. (How much the spool held when the hub came is not known
    // here: the disk stays full, and the oldest keep making room, until the agent reconnects.)
    // The broker acknowledged the spool's last records before the hub committed them, and a busy
    // hub writes latest values up to a quarter second after the readings: so, eventually.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let assets = get_json(&format!("{base}/api/v1/assets")).unwrap();
        let with_data = assets
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["latest"].as_object().is_some_and(|m| !m.is_empty()))
            .count();
        if with_data == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "{with_data} of 20 devices with latest values: {assets}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let s = agent_status().unwrap();
    assert_eq!(s["spool"]["lostItems"], 0, "{s}");
    agent.terminate();
}
