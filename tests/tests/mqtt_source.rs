//! Devices that publish themselves: `mosquitto_pub` plays a LoRa network server publishing smart-bin
//! uplinks (ChirpStack-style JSON) to Mosquitto; the agent's MQTT source maps them by JSON pointer to
//! readings and sends them to the hub. A payload that is not JSON is counted and ignored.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tests::{eventually, free_addr, get_json, mosquitto};

fn publish(port: u16, topic: &str, payload: &str) {
    assert!(tests::mosquitto_pub(port, None, topic, payload.as_bytes()));
}

#[test]
fn lora_bins_through_an_mqtt_source() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let lns = free_addr();
    let _lns_broker = mosquitto(lns.port(), dir.path());
    let (http, mqtt) = (free_addr(), free_addr());
    let gw_file = dir.path().join("gw.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"{head}[agent]
batch_max_wait_ms = 200
heartbeat_s = 1

[[mqtt_source]]
name = "lns"
broker = "mqtt://{lns}"

[[mqtt_source.device]]
id = "bin-c5d1"
asset = "bin-lora-0001"
kind = "smartBin"
topic = "application/2/device/a84041000181c5d1/event/up"
time_pointer = "/time"
report_interval_s = 600
lon = 118.781
lat = 32.041

[[mqtt_source.device.metric]]
metric = "fillingLevel"
pointer = "/object/fill_pct"
scale = 0.01
unit = "1"
range = [0, 1]

[[mqtt_source.device.metric]]
metric = "temperature"
pointer = "/object/temp_c"
unit = "Cel"

[[mqtt_source.device.metric]]
metric = "batteryLevel"
pointer = "/object/battery"
unit = "%"
"#,
            head = tests::gateway_head("gw-lora", &format!("mqtt://{mqtt}"))
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/../target/debug/edge-agent")
        .args(["config", "check"])
        .arg(&gw_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let agent = tests::Agent::start(&rt, &gw_file, None);
    let base = format!("http://{http}");
    // The bin is in the inventory before it has said anything.
    let bin = eventually(Duration::from_secs(10), "the bin announced", || {
        let a = get_json(&format!("{base}/api/v1/assets"))?;
        a.as_array()?
            .iter()
            .find(|x| x["id"] == "bin-lora-0001")
            .cloned()
    });
    assert_eq!(bin["kind"], "smartBin");
    assert_eq!(bin["location"]["lon"], 118.781);

    let topic = "application/2/device/a84041000181c5d1/event/up";
    let time = protocol::Timestamp::now().add_millis(-60_000);
    // Until the agent has subscribed, messages are lost (QoS 1 without a session): repeat briefly.
    let latest = eventually(Duration::from_secs(20), "the bin's readings", || {
        publish(lns.port(), topic, "this is not json");
        publish(
            lns.port(),
            topic,
            &format!(
                r#"{{"deviceInfo":{{"devEui":"a84041000181c5d1"}},"time":"{time}","object":{{"fill_pct":83,"temp_c":21.5,"battery":92}},"rxInfo":[{{"rssi":-97}}]}}"#
            ),
        );
        std::thread::sleep(Duration::from_millis(300));
        let a = get_json(&format!("{base}/api/v1/assets"))?;
        let bin = a
            .as_array()?
            .iter()
            .find(|x| x["id"] == "bin-lora-0001")?
            .clone();
        (bin["latest"].as_object()?.len() == 3).then(|| bin["latest"].clone())
    });
    assert_eq!(latest["fillingLevel"], 0.83);
    assert_eq!(latest["temperature"], 21.5);
    assert_eq!(latest["batteryLevel"], 92.0);
    // Observation time taken from the payload, not the arrival.
    let r = get_json(&format!(
        "{base}/api/v1/assets/bin-lora-0001/readings?metric=fillingLevel"
    ))
    .unwrap();
    assert_eq!(r[0]["ts"], time.to_rfc3339());

    agent.stop(&rt);
    rt.block_on(hub.stop());
}
