//! The hub against bad and repeated input, over its embedded broker: a malformed message is counted
//! and set aside, never a crash; an envelope delivered twice is stored once, even across a hub restart.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use protocol::BootId;
use tests::wire::envelope;
use tests::{eventually, free_addr, get_json};

fn presence(gateway: &str, boot: BootId) -> Vec<u8> {
    tests::wire::presence(gateway, boot, "dust-1")
}

fn config(
    dir: &std::path::Path,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
) -> hub::HubConfig {
    config_on(dir, None, http, mqtt)
}

/// A hub on SQLite under `dir`, or on the PostgreSQL database `postgres`.
fn config_on(
    dir: &std::path::Path,
    postgres: Option<&str>,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
) -> hub::HubConfig {
    tests::provision_admin_in(&hub::store::Database::new(dir, postgres));
    hub::HubConfig {
        auth: hub::keys::AuthPolicy::AllowUnsigned,
        postgres: postgres.map(str::to_owned),
        ..hub::HubConfig::new(
            http,
            dir.to_owned(),
            hub::MqttMode::Embedded { listen: mqtt },
        )
    }
}

#[test]
fn bad_input_is_set_aside_and_redelivery_is_stored_once() {
    bad_input_and_redelivery(None);
}

/// The same, the hub's state in PostgreSQL: the shared store of several hub processes.
#[test]
fn bad_input_is_set_aside_and_redelivery_is_stored_once_on_postgres() {
    if let Some(pg) = tests::postgres_database() {
        bad_input_and_redelivery(Some(&pg));
    }
}

fn bad_input_and_redelivery(postgres: Option<&str>) {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub = rt
        .block_on(hub::start(config_on(dir.path(), postgres, http, mqtt)))
        .unwrap();
    let base = format!("http://{http}");
    tests::wait_hub_ready(http);
    // Let the ingest client subscribe before publishing (messages before that have no subscriber).

    let boot = BootId::from_uuid(uuid_v(1));
    let up = "city/v1/gw/gw-a/up".to_owned();
    let mut too_new =
        serde_json::from_slice::<serde_json::Value>(&envelope("gw-a", boot, 9, 1.0)).unwrap();
    too_new["v"] = 2.into();
    rt.block_on(tests::publish_all(
        mqtt.port(),
        vec![
            ("city/v1/gw/gw-a/state".into(), presence("gw-a", boot)),
            (up.clone(), b"{not json".to_vec()),
            (up.clone(), br#"{"v":1,"gateway":"gw-a"}"#.to_vec()),
            (up.clone(), serde_json::to_vec(&too_new).unwrap()),
            // gw-b pretending to be gw-a: the topic says gw-a, the message says gw-b.
            (up.clone(), envelope("gw-b", boot, 0, 666.0)),
            // A topic level that is no valid gateway id.
            ("city/v1/gw/gw a!/up".into(), envelope("gw-a", boot, 0, 1.0)),
            (up.clone(), envelope("gw-a", boot, 0, 10.0)),
            (up.clone(), envelope("gw-a", boot, 0, 10.0)), // redelivered
            (up.clone(), envelope("gw-a", boot, 1, 11.0)),
        ],
    ));

    let letters = eventually(Duration::from_secs(10), "five dead letters", || {
        let d = get_json(&format!("{base}/api/v1/dead-letters"))?;
        (d.as_array()?.len() == 5).then_some(d)
    });
    let codes: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    for code in [
        "syntax",
        "schema",
        "unsupported_version",
        "gateway_mismatch",
        "topic",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    let syntax = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "syntax")
        .unwrap();
    assert_eq!(syntax["payload"], "{not json");
    assert!(
        syntax["reason"].as_str().unwrap().contains("line 1"),
        "{syntax}"
    );

    let readings = eventually(Duration::from_secs(10), "two stored readings", || {
        let r = get_json(&format!("{base}/api/v1/assets/dust-1/readings?metric=pm10"))?;
        (r.as_array()?.len() == 2).then_some(r)
    });
    let mut values: Vec<f64> = readings
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(
        values,
        vec![10.0, 11.0],
        "each envelope once, the impostor's 666 nowhere"
    );
    let metrics = tests::metrics_text(&base);
    assert!(
        metrics.contains("hub_envelopes_duplicate_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hub_messages_rejected_total{reason=\"gateway_mismatch\"} 1"),
        "{metrics}"
    );
    rt.block_on(hub.stop());

    // After a restart on the same data directory, the same envelope is still recognised.
    let (http2, mqtt2) = (free_addr(), free_addr());
    let hub = rt
        .block_on(hub::start(config_on(dir.path(), postgres, http2, mqtt2)))
        .unwrap();
    tests::wait_hub_ready(http2);
    rt.block_on(tests::publish_all(
        mqtt2.port(),
        vec![(up.clone(), envelope("gw-a", boot, 1, 11.0))],
    ));
    eventually(Duration::from_secs(10), "the duplicate counted", || {
        (hub.metrics
            .envelopes_duplicate
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    });
    let r = get_json(&format!(
        "http://{http2}/api/v1/assets/dust-1/readings?metric=pm10"
    ))
    .unwrap();
    assert_eq!(r.as_array().unwrap().len(), 2);
    rt.block_on(hub.stop());
}

fn uuid_v(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

#[test]
fn a_gateway_over_its_rate_limit_is_counted_and_sampled_others_unaffected() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let mut cfg = config(dir.path(), http, mqtt);
    cfg.rate_limit = Some(hub::ingest::RateLimit {
        per_s: 2.0,
        burst: 10.0,
    });
    let hub = rt.block_on(hub::start(cfg)).unwrap();
    let base = format!("http://{http}");
    tests::wait_hub_ready(http);
    let (noisy, quiet) = (BootId::from_uuid(uuid_v(7)), BootId::from_uuid(uuid_v(8)));
    let mut msgs = vec![
        (
            "city/v1/gw/gw-noisy/state".to_owned(),
            tests::wire::presence("gw-noisy", noisy, "dust-noisy"),
        ),
        (
            "city/v1/gw/gw-quiet/state".to_owned(),
            tests::wire::presence("gw-quiet", quiet, "dust-quiet"),
        ),
    ];
    for seq in 0..60 {
        msgs.push((
            "city/v1/gw/gw-noisy/up".into(),
            envelope("gw-noisy", noisy, seq, seq as f64),
        ));
        if seq % 10 == 0 {
            msgs.push((
                "city/v1/gw/gw-quiet/up".into(),
                envelope("gw-quiet", quiet, seq, seq as f64),
            ));
        }
    }
    rt.block_on(tests::publish_all(mqtt.port(), msgs));
    let count = |asset: &str| {
        get_json(&format!(
            "{base}/api/v1/assets/{asset}/readings?metric=pm10"
        ))
        .and_then(|r| r.as_array().map(Vec::len))
        .unwrap_or(0)
    };
    let limited = |text: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix("hub_messages_rejected_total{reason=\"rate_limited\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let metrics = || tests::metrics_text(&base);
    // Every noisy message is either stored or counted as limited; the quiet gateway loses nothing.
    let (stored, over) = eventually(
        Duration::from_secs(10),
        "all 60 noisy envelopes accounted for",
        || {
            let (s, l) = (count("dust-noisy"), limited(&metrics()));
            (s + l == 60).then_some((s, l))
        },
    );
    assert!(
        (9..=20).contains(&stored),
        "burst of 10 (one for the presence) plus 2/s: {stored} stored"
    );
    assert!(over >= 40, "{over}");
    // Limited messages are counted when decoded, before the writes queued ahead of them commit:
    // wait for the quiet gateway's last envelope, then check it lost nothing and gained nothing.
    eventually(
        Duration::from_secs(10),
        "the quiet gateway's six readings",
        || (count("dust-quiet") >= 6).then_some(()),
    );
    assert_eq!(count("dust-quiet"), 6);
    // One limited message kept as a dead letter (one per 10 s), with the reason.
    let letters = get_json(&format!("{base}/api/v1/dead-letters")).unwrap();
    let limited_letters: Vec<_> = letters
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"] == "rate_limited")
        .collect();
    assert_eq!(limited_letters.len(), 1, "{letters}");
    assert_eq!(limited_letters[0]["gateway"], "gw-noisy");
    assert!(
        limited_letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than 2 messages/s"),
        "{}",
        limited_letters[0]
    );
    rt.block_on(hub.stop());
}
