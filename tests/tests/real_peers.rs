//! The first end-to-end path against software this team did not write: a pymodbus device (values packed
//! by Python's struct module) ─▶ edge-agent ─▶ Mosquitto ─▶ hub (external-broker mode) ─▶ HTTP API.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tests::{eventually, free_addr, get_json, get_status, mosquitto, pymodbus_tcp};

#[test]
fn modbus_device_to_hub_api_through_mosquitto() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = free_addr();
    let _broker = mosquitto(mqtt.port(), dir.path());
    let modbus = free_addr();
    let _device = pymodbus_tcp(
        modbus.port(),
        &json!({ "7": tests::test_meter_registers(229.5) }),
        dir.path(),
    );

    let profiles = tests::test_profiles();
    let gw_file = dir.path().join("gw-test-01.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"
gateway = "gw-test-01"
[location]
lon = 118.78
lat = 32.04
road_segment = "test-rd-s1"
grid = "grid-1"
[uplink]
broker = "mqtt://127.0.0.1:{mqtt_port}"
[agent]
batch_max_wait_ms = 200
heartbeat_s = 1

[[bus]]
name = "tcp-1"
type = "tcp"
host = "127.0.0.1:{modbus_port}"
timeout_ms = 1000
pause_ms = 5

[[bus.device]]
id = "meter-7"
unit = 7
profile = "test-meter"
asset = "meter-asset-7"
poll_ms = 500
"#,
            mqtt_port = mqtt.port(),
            modbus_port = modbus.port()
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = free_addr();
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            client_id: "hub-test".into(),
            auth: hub::keys::AuthPolicy::AllowUnsigned,
            ..hub::HubConfig::new(
                http,
                {
                    tests::provision_admin(&dir.path().join("hub"));
                    dir.path().join("hub")
                },
                hub::MqttMode::External {
                    url: firmware_config::Broker::parse(&format!(
                        "mqtt://127.0.0.1:{}",
                        mqtt.port()
                    ))
                    .unwrap(),
                    username: None,
                    password: None,
                    tls: None,
                },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    let agent = tests::Agent::start(&rt, &gw_file, Some(profiles));

    let base = format!("http://{http}");
    let asset = eventually(
        Duration::from_secs(20),
        "the meter with all its metrics",
        || {
            let assets = get_json(&format!("{base}/api/v1/assets"))?;
            let a = assets
                .as_array()?
                .iter()
                .find(|a| a["id"] == "meter-asset-7")?
                .clone();
            (a["latest"].as_object()?.len() == 6).then_some(a)
        },
    );
    assert_eq!(asset["kind"], "other");
    assert_eq!(asset["gateway"], "gw-test-01");
    assert_eq!(asset["road_segment"], "test-rd-s1");
    assert_eq!(asset["location"]["lon"], 118.78);
    let latest = &asset["latest"];
    assert_eq!(latest["voltage"], 229.5);
    assert_eq!(latest["temperature"], -12.5);
    assert_eq!(latest["activeEnergy"], 1_234_567.89);
    assert_eq!(latest["mode"], "manual");
    assert_eq!(latest["powerState"], true);
    // 1500 µg/m³ is outside the plausible range: sent, stored, and flagged.
    assert_eq!(latest["pm10"], 1500.0);
    assert_eq!(asset["bad"]["pm10"], "outOfRange");
    assert_eq!(asset["units"]["voltage"], "V");
    let seen = protocol::Timestamp::parse_rfc3339(asset["last_seen"].as_str().unwrap()).unwrap();
    assert!(protocol::Timestamp::now().millis_since(seen) < 30_000);

    // History, with several points by now.
    let points = eventually(Duration::from_secs(10), "three voltage readings", || {
        let p = get_json(&format!(
            "{base}/api/v1/assets/meter-asset-7/readings?metric=voltage"
        ))?;
        (p.as_array()?.len() >= 3).then_some(p)
    });
    for p in points.as_array().unwrap() {
        assert_eq!(p["value"], 229.5);
        protocol::Timestamp::parse_rfc3339(p["ts"].as_str().unwrap()).unwrap();
    }
    // Report on change: temperature has a deadband and never moves, so it was sent once while the
    // voltage (no deadband) arrived every poll.
    let temps = get_json(&format!(
        "{base}/api/v1/assets/meter-asset-7/readings?metric=temperature"
    ))
    .unwrap();
    assert_eq!(temps.as_array().unwrap().len(), 1, "{temps}");
    // Precise errors from the API.
    assert_eq!(
        get_status(&format!(
            "{base}/api/v1/assets/nope/readings?metric=voltage"
        ))
        .0,
        404
    );
    let (code, body) = get_status(&format!("{base}/api/v1/assets/meter-asset-7/readings"));
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("metric"), "{body}");
    let (code, body) = get_status(&format!(
        "{base}/api/v1/assets/meter-asset-7/readings?metric=voltage&from=yesterday"
    ));
    assert_eq!(code, 400, "{body}");

    // The gateway and its heartbeat are visible.
    let gw = eventually(
        Duration::from_secs(10),
        "a heartbeat with link state",
        || {
            let gws = get_json(&format!("{base}/api/v1/gateways"))?;
            let g = gws
                .as_array()?
                .iter()
                .find(|g| g["id"] == "gw-test-01")?
                .clone();
            (g["last_heartbeat"]["devices"][0]["link"] == "up").then_some(g)
        },
    );
    assert_eq!(gw["state"], "online");

    // A clean agent stop marks the gateway offline.
    agent.stop(&rt);
    eventually(Duration::from_secs(10), "the gateway offline", || {
        let gws = get_json(&format!("{base}/api/v1/gateways"))?;
        (gws[0]["state"] == "offline").then_some(())
    });
    rt.block_on(hub.stop());
}
