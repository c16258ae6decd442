//! A device that answers garbage, beside a good one on the same gateway: a Modbus TCP "device"
//! (a socket in this test) that answers every request with something wrong — random bytes, a frame
//! for another transaction, a length field promising 65,535 bytes, a half frame, or nothing before
//! closing. (A Modbus exception is not garbage: it is the device answering, and the agent counts
//! the device as up.) The agent must not crash, must keep delivering the good device's
//! readings, and must report the bad one as down with its failures counted, in its heartbeat at
//! the hub.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use tests::{eventually, free_addr, get_json, pymodbus_tcp};

/// Answers each Modbus TCP request with the next of five wrong answers, forever.
fn garbage_device() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut rng = fastrand_lite(0x5eed);
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = [0u8; 260];
            while let Ok(k) = s.read(&mut req) {
                if k < 8 {
                    break;
                }
                let (tid, unit, func) = ([req[0], req[1]], req[6], req[7]);
                n += 1;
                let answer: Vec<u8> = match n % 5 {
                    // Random bytes of a random length.
                    0 => (0..(rng() % 40 + 1)).map(|_| rng() as u8).collect(),
                    // A well-formed answer to another transaction.
                    1 => vec![tid[0] ^ 0x55, tid[1], 0, 0, 0, 5, unit, func, 2, 0x12, 0x34],
                    // A length field promising 65,535 bytes that never come.
                    2 => vec![tid[0], tid[1], 0, 0, 0xff, 0xff, unit, func, 0xfe, 1, 2, 3],
                    // Half a frame, then silence until the agent gives up on it.
                    3 => vec![tid[0], tid[1], 0, 0],
                    // Nothing: the connection closes.
                    _ => break,
                };
                if s.write_all(&answer).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// A small xorshift generator (the test needs noise, not quality).
fn fastrand_lite(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn a_device_answering_garbage_is_down_and_counted_while_the_good_one_is_delivered() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let good = free_addr();
    let _device = pymodbus_tcp(
        good.port(),
        &json!({ "7": tests::test_meter_registers(228.0) }),
        dir.path(),
    );
    let bad = garbage_device();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub_dir = dir.path().join("hub");
    tests::provision_admin(&hub_dir);
    let _hub = tests::start_embedded_hub(&rt, &hub_dir, http, mqtt);
    let gw = dir.path().join("gw-garbage.toml");
    let bus = |name: &str, host: std::net::SocketAddr, id: &str, unit: u8| {
        format!(
            "\n[[bus]]\nname = \"{name}\"\ntype = \"tcp\"\nhost = \"{host}\"\ntimeout_ms = 300\n\n\
             [[bus.device]]\nid = \"{id}\"\nunit = {unit}\nprofile = \"test-meter\"\nasset = \"{id}\"\npoll_ms = 300\n"
        )
    };
    std::fs::write(
        &gw,
        format!(
            "{}[agent]\nbatch_max_wait_ms = 200\nheartbeat_s = 1\n{}{}",
            tests::gateway_head("gw-garbage", &format!("mqtt://{mqtt}")),
            bus("good", good, "meter-good", 7),
            bus("noisy", bad, "meter-noisy", 7)
        ),
    )
    .unwrap();
    let agent = tests::agent_process(
        &gw,
        Some(&tests::test_profiles()),
        &dir.path().join("agent"),
    );
    let base = format!("http://{http}");

    // The noisy device is down with failures counted, in the heartbeat the hub keeps.
    let link = |gw: &serde_json::Value, device: &str| {
        gw["last_heartbeat"]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == device)
            .cloned()
    };
    let noisy = eventually(Duration::from_secs(60), "the noisy device down", || {
        let gws = get_json(&format!("{base}/api/v1/gateways"))?;
        let g = gws
            .as_array()?
            .iter()
            .find(|g| g["id"] == "gw-garbage")?
            .clone();
        let d = link(&g, "meter-noisy")?;
        (d["link"] == "down" && d["failures"].as_u64()? >= 6).then_some(d)
    });
    assert!(noisy["lastSuccess"].is_null(), "{noisy}");
    // ...while the good one's readings keep coming, and the agent lives on.
    let count = || {
        get_json(&format!(
            "{base}/api/v1/assets/meter-good/readings?metric=voltage"
        ))
        .and_then(|p| p.as_array().map(Vec::len))
        .unwrap_or(0)
    };
    let before = count();
    eventually(
        Duration::from_secs(30),
        "more readings of the good device",
        || (count() >= before + 5).then_some(()),
    );
    let gws = get_json(&format!("{base}/api/v1/gateways")).unwrap();
    let g = gws
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == "gw-garbage")
        .unwrap();
    assert_eq!(link(g, "meter-good").unwrap()["link"], "up", "{g}");
    let asset = get_json(&format!("{base}/api/v1/assets")).unwrap();
    let noisy_asset = asset
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "meter-noisy");
    assert!(
        noisy_asset.is_none_or(|a| a["latest"].as_object().is_none_or(|m| m.is_empty())),
        "no value made from garbage: {noisy_asset:?}"
    );
    agent.terminate();
}
