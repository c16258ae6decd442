//! Modbus RTU on a serial line, against a real peer: pymodbus serving RTU on one end of a socat pty
//! pair, the edge agent polling the other end, then the embedded broker and the hub's API. One of
//! the three configured units is absent — a dead sensor on the shared RS-485 bus — and must be
//! reported down without stopping the others.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tests::{eventually, free_addr, get_json};

#[test]
fn rtu_bus_with_a_dead_sensor() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (_socat, device_end, agent_end) = tests::socat_pty_pair(dir.path());
    let _device = tests::pymodbus_rtu(
        &device_end,
        &json!({ "1": tests::test_meter_registers(231.25), "2": tests::test_meter_registers(219.5) }),
        dir.path(),
    );
    let (http, mqtt) = (free_addr(), free_addr());
    let gw_file = dir.path().join("gw-rtu-01.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"
gateway = "gw-rtu-01"
[location]
lon = 118.78
lat = 32.04
road_segment = "rtu-rd-s1"
grid = "grid-1"
[uplink]
broker = "mqtt://{mqtt}"
[agent]
batch_max_wait_ms = 200
heartbeat_s = 1

[[bus]]
name = "rs485-1"
type = "rtu"
port = "{port}"
baud = 9600
parity = "none"
data_bits = 8
stop_bits = 1
timeout_ms = 300
pause_ms = 5

[[bus.device]]
id = "meter-1"
unit = 1
profile = "test-meter"
asset = "meter-a1"
poll_ms = 1000

[[bus.device]]
id = "meter-2"
unit = 2
profile = "test-meter"
asset = "meter-a2"
poll_ms = 1000

[[bus.device]]
id = "meter-dead"
unit = 9
profile = "test-meter"
asset = "meter-a9"
poll_ms = 1000
"#,
            port = agent_end.display()
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let agent = tests::Agent::start(&rt, &gw_file, Some(tests::test_profiles()));

    let base = format!("http://{http}");
    let latest = |id: &str| -> Option<serde_json::Value> {
        let assets = get_json(&format!("{base}/api/v1/assets"))?;
        let a = assets.as_array()?.iter().find(|a| a["id"] == id)?.clone();
        (a["latest"].as_object()?.len() == 6).then(|| a["latest"].clone())
    };
    let one = eventually(Duration::from_secs(20), "unit 1 over RTU", || {
        latest("meter-a1")
    });
    let two = eventually(Duration::from_secs(20), "unit 2 over RTU", || {
        latest("meter-a2")
    });
    assert_eq!(one["voltage"], 231.25);
    assert_eq!(two["voltage"], 219.5);
    assert_eq!(one["temperature"], -12.5);
    assert_eq!(one["activeEnergy"], 1_234_567.89);
    assert_eq!(one["mode"], "manual");
    assert_eq!(one["powerState"], true);

    // The dead unit is reported down in the heartbeat; the live ones stay up.
    let links = eventually(
        Duration::from_secs(20),
        "the dead unit reported down",
        || {
            let gws = get_json(&format!("{base}/api/v1/gateways"))?;
            let devices = gws[0]["last_heartbeat"]["devices"].as_array()?.clone();
            devices
                .iter()
                .any(|d| d["device"] == "meter-dead" && d["link"] == "down")
                .then_some(devices)
        },
    );
    for d in &links {
        let want = if d["device"] == "meter-dead" {
            "down"
        } else {
            "up"
        };
        assert_eq!(d["link"], want, "{d}");
    }
    // And polling of the live units goes on after that.
    let before = get_json(&format!(
        "{base}/api/v1/assets/meter-a1/readings?metric=voltage"
    ))
    .unwrap();
    let n = before.as_array().unwrap().len();
    eventually(Duration::from_secs(10), "more readings of unit 1", || {
        let r = get_json(&format!(
            "{base}/api/v1/assets/meter-a1/readings?metric=voltage"
        ))?;
        (r.as_array()?.len() >= n + 2).then_some(())
    });

    agent.stop(&rt);
    rt.block_on(hub.stop());
}

/// Issue 3's promise: one dead unit among five costs the other four less than 10 % of their poll rate.
/// Measured over a generous real window (12 s at 500 ms polls, after a warm-up in which the dead unit
/// is found and backed off), counting the readings the hub stored for each live unit.
#[test]
fn one_dead_unit_of_five_costs_the_others_under_ten_percent() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (_socat, device_end, agent_end) = tests::socat_pty_pair(dir.path());
    let spec: serde_json::Map<String, serde_json::Value> = (1..=4)
        .map(|u| {
            (
                u.to_string(),
                tests::test_meter_registers(220.0 + f64::from(u)),
            )
        })
        .collect();
    let _device = tests::pymodbus_rtu(&device_end, &serde_json::Value::Object(spec), dir.path());
    let (http, mqtt) = (free_addr(), free_addr());
    let mut devices = String::new();
    for u in 1..=5 {
        devices += &format!(
            "[[bus.device]]\nid = \"m-{u}\"\nunit = {unit}\nprofile = \"test-meter\"\nasset = \"a-{u}\"\npoll_ms = 500\n\n",
            unit = if u == 5 { 9 } else { u }
        );
    }
    let gw_file = dir.path().join("gw.toml");
    std::fs::write(
        &gw_file,
        format!(
            "gateway = \"gw-five\"\n[location]\nlon = 118.78\nlat = 32.04\nroad_segment = \"rd-1\"\ngrid = \"g-1\"\n\
             [uplink]\nbroker = \"mqtt://{mqtt}\"\n[agent]\nbatch_max_wait_ms = 200\nheartbeat_s = 1\n\n\
             [[bus]]\nname = \"rs485-1\"\ntype = \"rtu\"\nport = \"{}\"\nbaud = 9600\ntimeout_ms = 300\npause_ms = 5\n\n{devices}",
            agent_end.display()
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let agent = tests::Agent::start(&rt, &gw_file, Some(tests::test_profiles()));
    let base = format!("http://{http}");
    // Warm-up: every live unit answering, and the dead one found down.
    eventually(
        Duration::from_secs(30),
        "four live units and the dead one down",
        || {
            let gws = get_json(&format!("{base}/api/v1/gateways"))?;
            let devices = gws[0]["last_heartbeat"]["devices"].as_array()?.clone();
            let up = devices.iter().filter(|d| d["link"] == "up").count();
            let down = devices
                .iter()
                .any(|d| d["device"] == "m-5" && d["link"] == "down");
            (up == 4 && down).then_some(())
        },
    );
    let from = protocol::Timestamp::now();
    std::thread::sleep(Duration::from_secs(12));
    let to = protocol::Timestamp::now();
    std::thread::sleep(Duration::from_secs(1)); // let the last batch arrive
    let expected = to.millis_since(from) as f64 / 500.0;
    for u in 1..=4 {
        let r = get_json(&format!(
            "{base}/api/v1/assets/a-{u}/readings?metric=voltage&from={from}&to={to}"
        ))
        .unwrap();
        let n = r.as_array().unwrap().len() as f64;
        eprintln!(
            "unit {u}: {n} polls in the window, {expected:.1} configured ({:.0} %)",
            100.0 * n / expected
        );
        assert!(
            n >= 0.9 * expected,
            "unit {u}: {n} polls, expected at least 90 % of {expected:.1}"
        );
    }
    agent.stop(&rt);
    rt.block_on(hub.stop());
}
