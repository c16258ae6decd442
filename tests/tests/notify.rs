//! Notifications of tasks to a real HTTP receiver: an operator files a task for drainage; the
//! drainage webhook receives it signed with HMAC-SHA256 (checked here independently), after a first
//! answer of 503 that the hub retries; the lighting channel gets nothing; a channel whose receiver is
//! down keeps the error in the task's delivery state. Filing never waits for any of it.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use tests::{TEST_TOKEN, free_addr, post_json_as};

#[test]
fn a_filed_task_reaches_its_departments_webhook_signed_and_retried() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    tests::provision_admin(dir.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let url = tests::webhook(log.clone(), 1);
    let down = format!("http://{}/hook", free_addr());
    std::fs::write(
        dir.path().join("hook.secret"),
        "s3cret-shared-with-drainage\n",
    )
    .unwrap();
    let rules = format!(
        r#"
        [[notify]]
        name = "drainage-hook"
        kind = "webhook"
        url = "{url}"
        departments = ["drainage"]
        secret_file = "{}"

        [[notify]]
        name = "lighting-hook"
        kind = "webhook"
        url = "{url}"
        departments = ["lighting"]

        [[notify]]
        name = "drainage-wecom"
        kind = "wecom"
        url = "{down}"
        departments = ["drainage"]
        "#,
        dir.path().join("hook.secret").display()
    );
    let rules = hub::rules::Rules::parse(&rules, "rules.toml").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            rules: hub::rules::Setup {
                rules: Arc::new(rules),
                clock: hub::rules::RuleClock::REAL,
            },
            ..hub::HubConfig::new(
                http,
                dir.path().to_owned(),
                hub::MqttMode::Embedded { listen: mqtt },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    let base = format!("http://{http}");

    let (status, task) = post_json_as(
        &format!("{base}/api/v1/tasks"),
        TEST_TOKEN,
        &serde_json::json!({"kind": "maintenance", "category": "waterlogging", "title": "积水 at the underpass (citizen call)",
                            "department": "drainage", "due_in_h": 4}),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();

    // Delivered on the second attempt (the first got 503), a couple of seconds later.
    let mut last = serde_json::Value::Null;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let detail = loop {
        if let Some(t) = tests::get_json(&format!("{base}/api/v1/tasks/{id}")) {
            let delivered = t["notifications"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|d| d["channel"] == "drainage-hook" && d["state"] == "delivered")
            });
            if delivered {
                break t;
            }
            last = t;
        }
        assert!(
            std::time::Instant::now() < end,
            "not delivered within 20 s; the task's deliveries: {:#}; the receiver got {} request(s)",
            last["notifications"],
            log.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let deliveries = detail["notifications"].as_array().unwrap();
    let hook = deliveries
        .iter()
        .find(|d| d["channel"] == "drainage-hook")
        .unwrap();
    assert_eq!(hook["attempts"], 2, "{hook}");
    assert_eq!(hook["action"], "file");
    assert!(
        deliveries.iter().all(|d| d["channel"] != "lighting-hook"),
        "{deliveries:?}"
    );
    // The robot whose receiver is down: pending, with the error kept.
    let wecom = tests::eventually(Duration::from_secs(10), "the failed robot", || {
        let t = tests::get_json(&format!("{base}/api/v1/tasks/{id}"))?;
        t["notifications"]
            .as_array()?
            .iter()
            .find(|d| d["channel"] == "drainage-wecom" && d["lastError"].is_string())
            .cloned()
    });
    assert_eq!(wecom["state"], "pending", "{wecom}");

    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "only drainage's hook was called, twice");
    let last = received.last().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["task"]["id"], id);
    assert_eq!(body["action"], "file");
    assert_eq!(body["task"]["department"], "drainage");
    // The signature, recomputed as a receiver would: HMAC-SHA256(secret, timestamp "." body).
    let ts = last.header("x-city-timestamp").unwrap();
    let sig = last.header("x-city-signature").unwrap();
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-shared-with-drainage").unwrap();
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(&last.body);
    let expected: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("sha256={expected}"));
    let age = protocol::Timestamp::now().unix_millis() / 1000 - ts.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "{age}");
    rt.block_on(hub.stop());
}

/// The MQTT channel: a department's tasks published to `<root>/v1/notify/<department>` on the
/// broker the hub uses, here a real Mosquitto with `mosquitto_sub` as the department's client.
#[test]
fn a_task_reaches_its_departments_mqtt_topic_on_mosquitto() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    tests::provision_admin(dir.path());
    let broker = free_addr();
    let _mosquitto = tests::mosquitto(broker.port(), dir.path());
    let rules = hub::rules::Rules::parse(
        "[[notify]]\nname = \"drainage-mqtt\"\nkind = \"mqtt\"\ndepartments = [\"drainage\"]\n",
        "rules.toml",
    )
    .unwrap();
    let sub = |topic: &str| {
        std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-t", topic, "-q", "1", "-v"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut drainage = sub("city/v1/notify/drainage");
    let mut lighting = sub("city/v1/notify/lighting");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = free_addr();
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            rules: hub::rules::Setup {
                rules: Arc::new(rules),
                clock: hub::rules::RuleClock::REAL,
            },
            ..hub::HubConfig::new(
                http,
                dir.path().to_owned(),
                hub::MqttMode::External {
                    url: hub::Broker::parse(&format!("mqtt://{broker}")).unwrap(),
                    username: None,
                    password: None,
                    tls: None,
                },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    // The departments' clients are subscribed by now (they started before the hub).
    std::thread::sleep(Duration::from_millis(300));
    let base = format!("http://{http}");
    let file = |dept: &str| {
        let (status, task) = post_json_as(
            &format!("{base}/api/v1/tasks"),
            TEST_TOKEN,
            &serde_json::json!({"kind": "maintenance", "category": "waterlogging",
                                "title": format!("积水 reported to {dept}"), "department": dept}),
        );
        assert_eq!(status, 201, "{task}");
        task["id"].as_i64().unwrap()
    };
    let lamp = file("lighting");
    let id = file("drainage");
    let mut line = String::new();
    BufReader::new(drainage.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (topic, json) = line.trim().split_once(' ').unwrap();
    assert_eq!(topic, "city/v1/notify/drainage");
    let body: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(body["task"]["id"], id, "{body}");
    assert_eq!(body["action"], "file");
    // Delivered, in the task's delivery state; and nothing for a department without the channel.
    tests::eventually(Duration::from_secs(10), "the delivery state", || {
        let t = tests::get_json(&format!("{base}/api/v1/tasks/{id}"))?;
        t["notifications"]
            .as_array()?
            .iter()
            .any(|d| d["channel"] == "drainage-mqtt" && d["state"] == "delivered")
            .then_some(())
    });
    let t = tests::get_json(&format!("{base}/api/v1/tasks/{lamp}")).unwrap();
    assert_eq!(t["notifications"], serde_json::json!([]), "{t}");
    let _ = lighting.kill();
    let mut quiet = String::new();
    lighting
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut quiet)
        .unwrap();
    assert_eq!(quiet, "", "the lighting topic got a message");
    let _ = drainage.kill();
    let _ = drainage.wait();
    let _ = lighting.wait();
    rt.block_on(hub.stop());
}
