//! A local rule acts with no uplink at all: a rain gauge (simulated GPIO counter) reporting more than
//! 0.3 mm per second switches the warning light (a simulated GPIO output) on; when the rain stops the
//! light goes off again. The broker is not there the whole time; when the hub comes up later, the
//! rule's start and end events arrive from the spool.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tests::{eventually, free_addr, get_json};

fn set_pin(sim: &Path, pin: u8, high: bool) {
    std::fs::create_dir_all(sim.join("in")).unwrap();
    let tmp = sim.join("in").join(format!(".{pin}.tmp"));
    std::fs::write(&tmp, if high { "1" } else { "0" }).unwrap();
    std::fs::rename(&tmp, sim.join("in").join(pin.to_string())).unwrap();
}

fn light(sim: &Path) -> Option<bool> {
    match std::fs::read_to_string(sim.join("out/22")).ok()?.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

#[test]
fn warning_light_follows_the_rule_with_the_uplink_down() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let sim = dir.path().join("gpio-sim");
    let gw = dir.path().join("gw.toml");
    std::fs::write(
        &gw,
        format!(
            r#"{head}[agent]
heartbeat_s = 1

[gpio]
backend = "simulated"
sim_dir = "{sim}"

[[gpio.counter]]
id = "rain-1"
asset = "rg-1"
pin = 27
pull = "up"
debounce_ms = 10
per_pulse = 0.2
report_s = 1

[[gpio.output]]
id = "warn-1"
asset = "warn-light-1"
kind = "warning_light"
pin = 22

[[rule]]
name = "heavy-rain-light"
device = "rain-1"
metric = "rainfall"
above = 0.3
clear = 0.0
clear_for_s = 2

[[rule.action]]
device = "warn-1"
metric = "powerState"
raise = true
clear = false
"#,
            head = tests::gateway_head("gw-rules", &format!("mqtt://{mqtt}")),
            sim = sim.display()
        ),
    )
    .unwrap();
    set_pin(&sim, 27, true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // No broker and no hub: the uplink stays down.
    let agent = tests::Agent::start(&rt, &gw, None);
    eventually(Duration::from_secs(10), "the light off at start", || {
        (light(&sim) == Some(false)).then_some(())
    });

    // Heavy rain: 4 tips within a second (0.8 mm).
    let pulse = |n: usize| {
        for _ in 0..n {
            set_pin(&sim, 27, false);
            std::thread::sleep(Duration::from_millis(60));
            set_pin(&sim, 27, true);
            std::thread::sleep(Duration::from_millis(60));
        }
    };
    pulse(4);
    eventually(
        Duration::from_secs(5),
        "the light switched on by the rule",
        || (light(&sim) == Some(true)).then_some(()),
    );
    // The rain stops: after two dry seconds the light goes off.
    eventually(
        Duration::from_secs(10),
        "the light switched off again",
        || (light(&sim) == Some(false)).then_some(()),
    );

    // The hub comes up: the rule's events were kept and arrive.
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let base = format!("http://{http}");
    let events = eventually(
        Duration::from_secs(30),
        "the rule's events at the hub",
        || {
            let e = get_json(&format!(
                "{base}/api/v1/events?device=rain-1&event=localAlarm"
            ))?;
            (e.as_array()?.len() == 2).then_some(e)
        },
    );
    // Newest first: end, then start.
    assert_eq!(events[0]["phase"], "end");
    assert_eq!(events[1]["phase"], "start");
    assert_eq!(events[1]["attributes"]["rule"], "heavy-rain-light");
    assert!(events[1]["attributes"]["value"].as_f64().unwrap() > 0.3);
    agent.stop(&rt);
    rt.block_on(hub.stop());
}
