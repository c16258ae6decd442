//! The live feed (`GET /api/v1/stream`, server-sent events): what a gateway publishes appears on the
//! stream as it is stored, filtered as asked; a bad filter is a 400 and no token a 401.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::Duration;

use protocol::BootId;
use tests::wire::{envelope, presence};
use tests::{free_addr, mosquitto_pub};

fn subscribe(url: &str) -> mpsc::Receiver<(String, serde_json::Value)> {
    tests::sse_subscribe(url, tests::TEST_TOKEN)
}

fn next(rx: &mpsc::Receiver<(String, serde_json::Value)>) -> (String, serde_json::Value) {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an event on the stream within 10 s")
}

#[test]
fn stored_data_appears_on_the_stream_filtered() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, dir.path(), http, mqtt);
    let base = format!("http://{http}");

    let all = subscribe(&format!("{base}/api/v1/stream"));
    let only_b = subscribe(&format!("{base}/api/v1/stream?gateway=gw-b&types=reading"));
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());
    let port = mqtt.port();
    assert!(mosquitto_pub(
        port,
        None,
        "city/v1/gw/gw-a/state",
        &presence("gw-a", boot, "dust-a")
    ));
    assert!(mosquitto_pub(
        port,
        None,
        "city/v1/gw/gw-a/up",
        &envelope("gw-a", boot, 0, 42.5)
    ));
    assert!(mosquitto_pub(
        port,
        None,
        "city/v1/gw/gw-a/up",
        &envelope("gw-a", boot, 0, 42.5)
    ));
    assert!(mosquitto_pub(
        port,
        None,
        "city/v1/gw/gw-b/up",
        &envelope("gw-b", boot, 0, 7.0)
    ));

    let (kind, data) = next(&all);
    assert_eq!(kind, "presence", "{data}");
    assert_eq!(data["gateway"], "gw-a");
    assert_eq!(data["state"], "online");
    let (kind, data) = next(&all);
    assert_eq!(kind, "reading", "{data}");
    assert_eq!(data["gateway"], "gw-a");
    assert_eq!(data["device"], "dev-1");
    assert_eq!(data["metric"], "pm10");
    assert_eq!(data["value"], 42.5);
    assert_eq!(data["unit"], "ug/m3");
    // The redelivered envelope is not news: the next item is gw-b's reading.
    let (kind, data) = next(&all);
    assert_eq!(
        (kind.as_str(), &data["gateway"]),
        ("reading", &serde_json::json!("gw-b"))
    );
    // The filtered stream saw only that one.
    let (kind, data) = next(&only_b);
    assert_eq!(kind, "reading");
    assert_eq!(data["value"], 7.0);
    assert!(only_b.recv_timeout(Duration::from_millis(500)).is_err());

    let (code, body) = tests::get_status(&format!("{base}/api/v1/stream?types=gossip"));
    assert_eq!(code, 400, "{body}");
    let resp = ureq::get(&format!("{base}/api/v1/stream"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    drop((all, only_b));
    rt.block_on(hub.stop());
}
