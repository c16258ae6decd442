//! The rules through a running hub, as a waterlogging point's data really arrives: over MQTT into the
//! embedded broker, stored, evaluated. The water stands above 15 cm; the hub is stopped and started
//! again while the five minutes are running; the task is raised once, routed by the rules file, and
//! when the water recedes it is closed, verified by the sensor. A redelivered message changes
//! nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use protocol::{
    AssetKind, BootId, ClockState, Envelope, GatewayId, Item, Limits, Reading, Timestamp, Value,
};
use tests::{free_addr, get_json};

const GW: &str = "gw-rain";

fn presence(boot: BootId) -> Vec<u8> {
    let p = protocol::Presence {
        v: 1,
        gateway: GatewayId::new(GW).unwrap(),
        boot,
        state: protocol::PresenceState::Online,
        sent_at: Timestamp::now(),
        clock: ClockState::Synced,
        agent: None,
        config_version: None,
        devices: vec![protocol::DeviceInfo {
            device: "level-1".parse().unwrap(),
            asset: "wl-test-01".parse().unwrap(),
            kind: AssetKind::Waterlogging,
            profile: None,
            location: Some(protocol::Point::new(118.78, 32.04)),
            road_segment: Some("hanzhong-rd-s2".parse().unwrap()),
            grid: None,
            zone: None,
            report_interval_s: Some(60),
        }],
    };
    protocol::encode(&p, &Limits::default()).unwrap()
}

/// Water depth readings, one a minute, for the minutes `from..to` before `t0`.
fn depths(
    boot: BootId,
    seq: u64,
    t0: Timestamp,
    minutes: std::ops::Range<i64>,
    cm: f64,
) -> Vec<u8> {
    let env = Envelope {
        v: 1,
        gateway: GatewayId::new(GW).unwrap(),
        boot,
        seq,
        sent_at: Timestamp::now(),
        clock: ClockState::Synced,
        items: minutes
            .map(|m| {
                Item::Reading(Reading {
                    device: "level-1".parse().unwrap(),
                    metric: "waterDepth".parse().unwrap(),
                    observed_at: t0.add_millis(m * 60_000),
                    value: Some(Value::Number(cm)),
                    unit: Some(protocol::Unit::new("cm").unwrap()),
                    quality: Default::default(),
                })
            })
            .collect(),
    };
    protocol::encode(&env, &Limits::default()).unwrap()
}

fn start(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    postgres: Option<&str>,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
) -> hub::RunningHub {
    let rules = hub::rules::Rules::parse(
        "[[route]]\nrules = [\"waterlogging\"]\nsegments = [\"hanzhong-rd-s2\"]\ndepartment = \"drainage-gulou\"\n",
        "rules.toml",
    )
    .unwrap();
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            auth: hub::keys::AuthPolicy::AllowUnsigned,
            postgres: postgres.map(str::to_owned),
            rules: hub::rules::Setup {
                rules: Arc::new(rules),
                clock: hub::rules::RuleClock::REAL,
            },
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

#[test]
fn water_above_the_limit_raises_one_task_across_a_restart_and_the_sensor_closes_it() {
    water_above_the_limit(None);
}

/// The same with the hub's state in PostgreSQL: the condition in progress is in the shared
/// database, so the process that starts next (here the same hub restarted; at scale another hub
/// process) finishes it.
#[test]
fn water_above_the_limit_raises_one_task_across_a_restart_on_postgres() {
    if let Some(pg) = tests::postgres_database() {
        water_above_the_limit(Some(&pg));
    }
}

fn water_above_the_limit(postgres: Option<&str>) {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    tests::provision_admin_in(&hub::store::Database::new(dir.path(), postgres));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let base = format!("http://{http}");
    let boot = BootId::from_uuid(uuid::Uuid::from_u128(0x5a1));
    let t0 = Timestamp::now().add_millis(-30 * 60_000);
    let topic = format!("city/v1/gw/{GW}/up");
    let stored = |n: usize| {
        let url =
            format!("{base}/api/v1/assets/wl-test-01/readings?metric=waterDepth&max_points=1000");
        move || (get_json(&url)?.as_array()?.len() >= n).then_some(())
    };
    let tasks = || get_json(&format!("{base}/api/v1/tasks?status=all")).unwrap();

    let hub = start(&rt, dir.path(), postgres, http, mqtt);
    assert!(tests::mosquitto_pub(
        mqtt.port(),
        None,
        &format!("city/v1/gw/{GW}/state"),
        &presence(boot)
    ));
    tests::eventually(Duration::from_secs(10), "the asset", || {
        get_json(&format!("{base}/api/v1/assets"))?
            .as_array()?
            .iter()
            .any(|a| a["id"] == "wl-test-01")
            .then_some(())
    });
    // Four minutes above 15 cm: not yet five.
    assert!(tests::mosquitto_pub(
        mqtt.port(),
        None,
        &topic,
        &depths(boot, 1, t0, 0..4, 17.0)
    ));
    tests::eventually(Duration::from_secs(10), "the first readings", stored(4));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tasks().as_array().unwrap().len(), 0, "{}", tasks());
    rt.block_on(hub.stop());

    // Restarted (on fresh ports: the embedded broker's listener is not reusable at once): the
    // condition in progress is remembered; two more minutes make it five.
    let (http, mqtt) = (free_addr(), free_addr());
    let base = format!("http://{http}");
    let stored = |n: usize| {
        let url =
            format!("{base}/api/v1/assets/wl-test-01/readings?metric=waterDepth&max_points=1000");
        move || (get_json(&url)?.as_array()?.len() >= n).then_some(())
    };
    let tasks = || get_json(&format!("{base}/api/v1/tasks?status=all")).unwrap();
    let hub = start(&rt, dir.path(), postgres, http, mqtt);
    let more = depths(boot, 2, t0, 4..6, 18.0);
    assert!(tests::mosquitto_pub(mqtt.port(), None, &topic, &more));
    let task = tests::eventually(Duration::from_secs(15), "the waterlogging task", || {
        tasks().as_array()?.first().cloned()
    });
    assert_eq!(task["rule"], "waterlogging");
    assert_eq!(task["asset"], "wl-test-01");
    assert_eq!(
        task["department"], "drainage-gulou",
        "routed by the rules file"
    );
    assert_eq!(task["road_segment"], "hanzhong-rd-s2");
    // The same message again, and more water: still one task.
    assert!(tests::mosquitto_pub(mqtt.port(), None, &topic, &more));
    assert!(tests::mosquitto_pub(
        mqtt.port(),
        None,
        &topic,
        &depths(boot, 3, t0, 6..8, 19.0)
    ));
    tests::eventually(Duration::from_secs(10), "more readings", stored(8));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tasks().as_array().unwrap().len(), 1, "{}", tasks());

    // The water recedes below 5 cm for ten minutes: closed, verified by the sensor.
    assert!(tests::mosquitto_pub(
        mqtt.port(),
        None,
        &topic,
        &depths(boot, 4, t0, 8..20, 2.0)
    ));
    let id = task["id"].as_i64().unwrap();
    let closed = tests::eventually(
        Duration::from_secs(15),
        "the task closed by the sensor",
        || {
            let t = get_json(&format!("{base}/api/v1/tasks/{id}"))?;
            (t["state"] == "closed").then_some(t)
        },
    );
    let history = closed["history"].as_array().unwrap();
    assert_eq!(history.first().unwrap()["actor"], "rules");
    let last = history.last().unwrap();
    assert!(
        last["note"]
            .as_str()
            .unwrap()
            .contains("verified by the sensor"),
        "{last}"
    );
    rt.block_on(hub.stop());
}
