//! Reading history through the API: three hours of readings arrive late (a gateway replaying its
//! spool), the hub rolls them into minutes and hours, and `step` queries answer from the rollups
//! with the same counts, means, minima and maxima as the raw readings give.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use protocol::{BootId, ClockState, Envelope, GatewayId, Item, Limits, Reading, Timestamp, Value};
use tests::{eventually, free_addr, get_status, get_status_as};

const EVERY_MS: i64 = 10_000;
const READINGS: i64 = 3 * 360; // three hours, one every 10 s

fn value(i: i64) -> f64 {
    (i % 97) as f64 / 2.0
}

fn envelopes(boot: BootId, start: Timestamp) -> Vec<Vec<u8>> {
    (0..READINGS)
        .collect::<Vec<_>>()
        .chunks(60)
        .enumerate()
        .map(|(seq, chunk)| {
            let env = Envelope {
                v: 1,
                gateway: GatewayId::new("gw-h").unwrap(),
                boot,
                seq: seq as u64,
                sent_at: Timestamp::now(),
                clock: ClockState::Synced,
                items: chunk
                    .iter()
                    .map(|&i| {
                        Item::Reading(Reading {
                            device: "dev-1".parse().unwrap(),
                            metric: "pm10".parse().unwrap(),
                            observed_at: start.add_millis(i * EVERY_MS),
                            value: Some(Value::Number(value(i))),
                            unit: Some(protocol::Unit::new("ug/m3").unwrap()),
                            quality: Default::default(),
                        })
                    })
                    .collect(),
            };
            protocol::encode(&env, &Limits::default()).unwrap()
        })
        .collect()
}

/// GET with the test token: status, the `x-step-seconds` header, and the points.
fn history(url: &str) -> (u16, Option<i64>, serde_json::Value) {
    let mut resp = ureq::get(url)
        .header("authorization", &tests::bearer())
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let step = resp
        .headers()
        .get("x-step-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let status = resp.status().as_u16();
    (status, step, resp.body_mut().read_json().unwrap())
}

#[test]
fn step_queries_answer_from_rollups_like_the_raw_readings() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub = tests::start_embedded_hub(&rt, dir.path(), http, mqtt);
    let base = format!("http://{http}");
    let boot = BootId::from_uuid(uuid::Uuid::from_u128(0x4849_5354));
    // Aligned to the hour so the expected buckets are easy to name.
    let now = Timestamp::now().unix_millis();
    let start = Timestamp::from_unix_millis(now - now % 3_600_000 - 3 * 3_600_000);
    let mut msgs = vec![(
        "city/v1/gw/gw-h/state".to_owned(),
        tests::wire::presence("gw-h", boot, "dust-h"),
    )];
    for e in envelopes(boot, start) {
        msgs.push(("city/v1/gw/gw-h/up".to_owned(), e));
    }
    rt.block_on(tests::publish_all(mqtt.port(), msgs));

    let from = start.add_millis(-3_600_000);
    let url = |q: &str| format!("{base}/api/v1/assets/dust-h/readings?metric=pm10&from={from}{q}");
    let total = |points: &serde_json::Value| -> i64 {
        points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["count"].as_i64().unwrap())
            .sum()
    };
    // Every reading came behind the rollups' watermark: the hub recomputes those minutes (every
    // few seconds), after which hourly buckets hold all of them.
    let (_, step, hours) = eventually(
        Duration::from_secs(30),
        "hourly buckets of every reading",
        || {
            let r = history(&url("&step=1h"));
            (r.0 == 200 && total(&r.2) == READINGS).then_some(r)
        },
    );
    assert_eq!(step, Some(3600));
    let hours = hours.as_array().unwrap();
    assert_eq!(hours.len(), 3, "{hours:?}");
    for (h, p) in hours.iter().enumerate() {
        let h = h as i64;
        let vals: Vec<f64> = (h * 360..(h + 1) * 360).map(value).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert_eq!(p["ts"], start.add_millis(h * 3_600_000).to_rfc3339(), "{p}");
        assert_eq!(p["count"], 360);
        assert!(
            (p["value"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{p} vs {mean}"
        );
        assert_eq!(p["min"].as_f64().unwrap(), 0.0);
        assert_eq!(p["max"].as_f64().unwrap(), 48.0);
    }

    // 5-minute buckets from the minute rollups: 36 of them, 30 readings each.
    let (status, step, fives) = history(&url("&step=5m"));
    assert_eq!((status, step), (200, Some(300)));
    let fives = fives.as_array().unwrap();
    assert_eq!(fives.len(), 36);
    assert!(fives.iter().all(|p| p["count"] == 30), "{fives:?}");
    // Sub-minute steps come from the raw readings: one reading per 10 s bucket.
    let (status, step, tens) =
        history(&url(&format!("&step=10s&to={}", start.add_millis(599_999))));
    assert_eq!((status, step), (200, Some(10)));
    assert_eq!(tens.as_array().unwrap().len(), 60);

    // Without a step: raw points when few enough, otherwise a step the hub picks to fit.
    let (status, step, raw) = history(&url("&max_points=2000"));
    assert_eq!((status, step), (200, None));
    assert_eq!(raw.as_array().unwrap().len() as i64, READINGS);
    assert!(raw[0].get("count").is_none(), "raw points carry no count");
    let (status, step, fitted) = history(&url("&max_points=100"));
    assert_eq!(status, 200);
    // 4 h in at most 100 buckets: 144 s needed, 300 s is the next nice width.
    assert_eq!(step, Some(300));
    assert_eq!(total(&fitted), READINGS);

    // Bad steps are refused with the reason.
    for (q, needle) in [
        ("&step=abc", "not a duration"),
        ("&step=0s", "not a duration"),
        ("&step=5w", "not a duration"),
        ("&step=1s&from=2026-01-01T00:00:00Z", "too fine"),
    ] {
        let (status, body) = get_status(&format!(
            "{base}/api/v1/assets/dust-h/readings?metric=pm10{q}"
        ));
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{q}: {body}"
        );
    }

    // The API describes itself (behind a token, like everything under /api/v1).
    let doc = tests::get_json(&format!("{base}/api/v1/openapi.json")).unwrap();
    assert!(
        doc["paths"]["/api/v1/assets/{id}/readings"]["get"]["parameters"]
            .to_string()
            .contains("step"),
        "{doc}"
    );
    assert_eq!(
        get_status_as(&format!("{base}/api/v1/openapi.json"), "nope").0,
        401
    );

    let metrics = tests::metrics_text(&base);
    assert!(metrics.contains("hub_rollup_micros_total "), "{metrics}");
    rt.block_on(hub.stop());
}
