//! The InfluxDB sink against a real server of the InfluxDB v2 write API (VictoriaMetrics, from
//! Debian): readings published to the hub are read back from the server with their tags and times,
//! a redelivered envelope is written once; and with the server away the hub goes on storing.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::BootId;
use tests::wire::{envelope, presence};
use tests::{Peer, eventually, free_addr, get_json, mosquitto_pub};

fn victoria_metrics(dir: &std::path::Path, addr: std::net::SocketAddr) -> Peer {
    let bin = [
        "/usr/bin/victoria-metrics",
        "/usr/local/bin/victoria-metrics",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("victoria-metrics (Debian package victoria-metrics; run ./test.sh, which installs it)");
    let child = Command::new(bin)
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr={addr}"))
        .arg("-search.latencyOffset=0s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tests::wait_for_port(addr, Duration::from_secs(20));
    Peer::new("victoria-metrics", child)
}

fn start_hub(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    influx_url: &str,
) -> hub::RunningHub {
    tests::provision_admin(dir);
    let mut influx = hub::influx::InfluxConfig::new(influx_url, "city", "iot", "test-token");
    influx.max_wait = Duration::from_millis(200);
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            client_id: "hub-influx".into(),
            auth: hub::keys::AuthPolicy::AllowUnsigned,
            influx: Some(influx),
            ..hub::HubConfig::new(
                http,
                dir.to_owned(),
                hub::MqttMode::Embedded { listen: mqtt },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    hub
}

fn metric(base: &str, name: &str) -> Option<f64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

#[test]
fn readings_reach_victoria_metrics_once_with_their_tags() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt, vm) = (free_addr(), free_addr(), free_addr());
    let _vm = victoria_metrics(&dir.path().join("vm"), vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = start_hub(
        &rt,
        &dir.path().join("hub"),
        http,
        mqtt,
        &format!("http://{vm}"),
    );
    let base = format!("http://{http}");
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());
    assert!(mosquitto_pub(
        mqtt.port(),
        None,
        "city/v1/gw/gw-a/state",
        &presence("gw-a", boot, "dust-1")
    ));
    for seq in [0u64, 1, 2, 3, 4, 0] {
        // The last is envelope 0 again: stored and written once.
        assert!(mosquitto_pub(
            mqtt.port(),
            None,
            "city/v1/gw/gw-a/up",
            &envelope("gw-a", boot, seq, 10.0 + seq as f64)
        ));
    }
    eventually(Duration::from_secs(10), "5 readings in SQLite", || {
        let r = get_json(&format!(
            "{base}/api/v1/assets/dust-1/readings?metric=pm10&from=2000-01-01T00:00:00Z"
        ))?;
        (r.as_array()?.len() == 5).then_some(())
    });
    let series = eventually(
        Duration::from_secs(20),
        "the points in VictoriaMetrics",
        || {
            let _ = ureq::get(&format!("http://{vm}/internal/force_flush")).call();
            let text = ureq::get(&format!(
                "http://{vm}/api/v1/export?match[]=dust_monitor_pm10"
            ))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
            let line = text.lines().next()?;
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["values"].as_array()?.len() >= 5).then_some(v)
        },
    );
    let m = &series["metric"];
    assert_eq!(m["gateway"], "gw-a", "{series}");
    assert_eq!(m["device"], "dev-1");
    assert_eq!(m["asset"], "dust-1");
    assert_eq!(m["kind"], "dustMonitor");
    let values: Vec<f64> = series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values, [10.0, 11.0, 12.0, 13.0, 14.0], "{series}");
    let base_ms = tests::wire::base().unix_millis();
    let want: Vec<i64> = (0..5).map(|s| base_ms + s * 1000).collect();
    assert_eq!(series["timestamps"], serde_json::json!(want));
    assert_eq!(metric(&base, "hub_influx_lines_written_total"), Some(5.0));
    rt.block_on(hub.stop());
}

#[test]
fn ingest_goes_on_while_influx_is_away() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let dead = free_addr(); // nothing listens here
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = start_hub(
        &rt,
        &dir.path().join("hub"),
        http,
        mqtt,
        &format!("http://{dead}"),
    );
    let base = format!("http://{http}");
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());
    assert!(mosquitto_pub(
        mqtt.port(),
        None,
        "city/v1/gw/gw-a/state",
        &presence("gw-a", boot, "dust-1")
    ));
    for seq in 0..3u64 {
        assert!(mosquitto_pub(
            mqtt.port(),
            None,
            "city/v1/gw/gw-a/up",
            &envelope("gw-a", boot, seq, 1.0)
        ));
    }
    eventually(Duration::from_secs(10), "3 readings in SQLite", || {
        let r = get_json(&format!(
            "{base}/api/v1/assets/dust-1/readings?metric=pm10&from=2000-01-01T00:00:00Z"
        ))?;
        (r.as_array()?.len() == 3).then_some(())
    });
    eventually(Duration::from_secs(10), "the sink retrying", || {
        metric(&base, "hub_influx_retries_total").filter(|r| *r >= 1.0)
    });
    assert_eq!(metric(&base, "hub_influx_lines_written_total"), Some(0.0));
    // Stopping does not hang on the unreachable server.
    let stopped = std::time::Instant::now();
    rt.block_on(hub.stop());
    assert!(stopped.elapsed() < Duration::from_secs(15));
}
