//! GPIO end to end: an agent with the simulated backend and an embedded hub. Opening the cabinet door
//! (its pin's file) reaches the hub as a `tamper` start event, tips of the rain gauge as rainfall, and a
//! command issued through the hub's API switches the warning light (its pin's file); the gateway's
//! reply shows in the API. The gateway signs with its key and the hub takes nothing unsigned; the
//! hub signs its commands, and a forged command published straight to the broker is refused.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tests::{eventually, free_addr, get_json};

/// Sets a simulated input the way an outside driver should: a whole file renamed into place.
fn set_pin(sim: &Path, pin: u8, high: bool) {
    let tmp = sim.join("in").join(format!(".{pin}.tmp"));
    std::fs::write(&tmp, if high { "1" } else { "0" }).unwrap();
    std::fs::rename(&tmp, sim.join("in").join(pin.to_string())).unwrap();
}

/// The `tamper` events the hub serves for `door-1`: (phase, attributes as JSON text), in time order.
fn stored_events(base: &str) -> Vec<(String, String)> {
    let Some(list) = get_json(&format!(
        "{base}/api/v1/events?gateway=gw-gpio&device=door-1&event=tamper"
    )) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["phase"].as_str().unwrap_or("").to_owned(),
                e["attributes"].to_string(),
            )
        })
        .collect();
    // The API lists newest first.
    out.reverse();
    out
}

fn asset(base: &str, id: &str) -> Option<serde_json::Value> {
    get_json(&format!("{base}/api/v1/assets"))?
        .as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
}

#[test]
fn door_rain_gauge_and_warning_light_through_the_hub() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let sim = dir.path().join("gpio-sim");
    let gw_file = dir.path().join("gw.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"{head}[agent]
batch_max_wait_ms = 200
heartbeat_s = 1
data_dir = "{data}"

[gpio]
backend = "simulated"
sim_dir = "{sim}"

[[gpio.input]]
id = "door-1"
asset = "cab-1"
kind = "door"
pin = 17
pull = "up"
debounce_ms = 20

[[gpio.counter]]
id = "rain-1"
asset = "rg-1"
pin = 27
pull = "up"
per_pulse = 0.2
report_s = 1

[[gpio.output]]
id = "lamp-warn-1"
asset = "warn-1"
kind = "warning_light"
pin = 22
lon = 118.781
lat = 32.041
"#,
            head = tests::gateway_head("gw-gpio", &format!("mqtt://{mqtt}")),
            data = dir.path().join("agent").display(),
            sim = sim.display(),
        ),
    )
    .unwrap();
    // The installer's check passes (the same code as `edge-agent config check`).
    let config =
        firmware_config::load_gateway(&gw_file, &firmware_config::ProfileSet::builtin().unwrap())
            .unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub_dir = dir.path().join("hub");
    let key_file = dir.path().join("gw-gpio.key");
    let key = tests::provision_key(&hub_dir, "gw-gpio", "k1", &key_file);
    let hub = tests::start_embedded_hub_signed(&rt, &hub_dir, http, mqtt);
    let agent = tests::Agent::start_with_key(&rt, &gw_file, None, Some(key_file));
    let base = format!("http://{http}");

    // Announced in the inventory, with the door's state at start: shut.
    let cabinet = eventually(Duration::from_secs(15), "the cabinet's state", || {
        asset(&base, "cab-1").filter(|a| a["latest"]["tamper"] == false)
    });
    assert_eq!(cabinet["kind"], "cabinet");
    assert_eq!(cabinet["device"], "door-1");
    let initial = eventually(Duration::from_secs(10), "the state-at-start event", || {
        let e = stored_events(&base);
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(initial[0].0, "end");
    assert!(initial[0].1.contains("\"initial\":true"), "{initial:?}");
    let light = asset(&base, "warn-1").unwrap();
    assert_eq!(light["kind"], "warningLight");
    assert_eq!(light["location"]["lon"], 118.781);
    assert_eq!(asset(&base, "rg-1").unwrap()["kind"], "rainGauge");

    // Someone opens the cabinet.
    set_pin(&sim, 17, true);
    let events = eventually(
        Duration::from_secs(10),
        "the tamper start at the hub",
        || {
            let e = stored_events(&base);
            (e.len() >= 2).then_some(e)
        },
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "start");
    let attributes: serde_json::Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"pin": 17.0}),
        "not marked initial"
    );
    eventually(
        Duration::from_secs(10),
        "the cabinet open in the API",
        || asset(&base, "cab-1").filter(|a| a["latest"]["tamper"] == true),
    );
    // ... and shuts it.
    set_pin(&sim, 17, false);
    eventually(Duration::from_secs(10), "the tamper end at the hub", || {
        let e = stored_events(&base);
        (e.len() == 3 && e[2].0 == "end").then_some(())
    });

    // Three tips of the rain gauge: 0.6 mm over the readings of the last hour.
    for _ in 0..3 {
        set_pin(&sim, 27, false);
        std::thread::sleep(Duration::from_millis(80));
        set_pin(&sim, 27, true);
        std::thread::sleep(Duration::from_millis(80));
    }
    eventually(Duration::from_secs(10), "0.6 mm of rain at the hub", || {
        let r = get_json(&format!(
            "{base}/api/v1/assets/rg-1/readings?metric=rainfall"
        ))?;
        let total: f64 = r
            .as_array()?
            .iter()
            .filter_map(|p| p["value"].as_f64())
            .sum();
        ((total - 0.6).abs() < 1e-9).then_some(())
    });

    // An operator switches the warning light on through the hub's API.
    let post = |asset: &str, body: serde_json::Value| -> (u16, serde_json::Value) {
        let mut resp = ureq::post(&format!("{base}/api/v1/assets/{asset}/commands"))
            .header("authorization", &tests::bearer())
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(body)
            .unwrap();
        (resp.status().as_u16(), resp.body_mut().read_json().unwrap())
    };
    let (code, issued) = post(
        "warn-1",
        serde_json::json!({"action": {"write": {"metric": "powerState", "value": true}}}),
    );
    assert_eq!(code, 202, "{issued}");
    assert_eq!(issued["state"], "sent");
    assert_eq!(issued["device"], "lamp-warn-1");
    let id = issued["id"].as_str().unwrap().to_owned();
    let done = eventually(Duration::from_secs(10), "the command's reply", || {
        get_json(&format!("{base}/api/v1/commands/{id}")).filter(|c| c["state"] != "sent")
    });
    assert_eq!(done["state"], "ok", "{done}");
    assert_eq!(done["readBack"], true);
    assert_eq!(std::fs::read_to_string(sim.join("out/22")).unwrap(), "1");

    // Someone on the broker forges "light off": unsigned, and signed with a key that is not the
    // gateway's. Both are refused; the light stays on.
    let cmd_topic = "city/v1/gw/gw-gpio/cmd";
    let forged = protocol::Command {
        v: 1,
        id: protocol::CommandId::from_uuid(uuid::Uuid::new_v4()),
        device: "lamp-warn-1".parse().unwrap(),
        issued_at: protocol::Timestamp::now(),
        expires_at: protocol::Timestamp::now().add_millis(60_000),
        action: protocol::Action::Write {
            metric: "powerState".parse().unwrap(),
            value: protocol::Value::Bool(false),
        },
    };
    let forged = protocol::encode(&forged, &protocol::Limits::default()).unwrap();
    let wrong = protocol::auth::Key::new(key.id.clone(), vec![7; 32]).unwrap();
    let rogue = tests::provision_key(&hub_dir, "gw-rogue", "k1", &dir.path().join("rogue.key"));
    let rogue_password = protocol::auth::broker_password(&rogue, "gw-rogue");
    for payload in [
        forged.clone(),
        protocol::auth::seal(&wrong, cmd_topic, &forged),
    ] {
        // Sent by another gateway of the town, logged in with its own key's broker password.
        assert!(tests::mosquitto_pub(
            mqtt.port(),
            Some(("gw-rogue", &rogue_password)),
            cmd_topic,
            &payload
        ));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::read_to_string(sim.join("out/22")).unwrap(),
        "1",
        "a forged command switched the light"
    );
    let status = eventually(Duration::from_secs(5), "the refusals counted", || {
        get_json(&format!("http://{}/status", agent.status))
            .filter(|s| s["uplink"]["commandsRefused"] == 2)
    });
    assert_eq!(status["uplink"]["signingKey"], "k1", "{status}");
    // A write the output cannot do is refused by the gateway with the reason.
    let (_, bad) = post(
        "warn-1",
        serde_json::json!({"action": {"write": {"metric": "dimLevel", "value": 50}}}),
    );
    let bad_id = bad["id"].as_str().unwrap().to_owned();
    let refused = eventually(Duration::from_secs(10), "the refusal", || {
        get_json(&format!("{base}/api/v1/commands/{bad_id}")).filter(|c| c["state"] != "sent")
    });
    assert_eq!(refused["state"], "rejected", "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("powerState"),
        "{refused}"
    );
    // A crew token may look but not switch.
    let crew = tests::api_token(
        &hub_dir,
        "crew-1",
        hub::access::Role::Crew,
        Some("lighting"),
    );
    let resp = ureq::post(&format!("{base}/api/v1/assets/warn-1/commands"))
        .header("authorization", &format!("Bearer {crew}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(serde_json::json!({"action": "reset"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // Bad requests to the API: an unknown asset, a malformed action.
    assert_eq!(post("nope", serde_json::json!({"action": "reset"})).0, 404);
    assert_eq!(
        post("warn-1", serde_json::json!({"action": {"fly": 1}})).0,
        400
    );
    let listed = get_json(&format!("{base}/api/v1/assets/warn-1/commands")).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    eventually(Duration::from_secs(10), "the light on in the API", || {
        asset(&base, "warn-1").filter(|a| a["latest"]["powerState"] == true)
    });

    agent.stop(&rt);
    // Stopped: the light is back in its safe state.
    assert_eq!(std::fs::read_to_string(sim.join("out/22")).unwrap(), "0");
    rt.block_on(hub.stop());
}
