//! GPIO with the simulated backend, driven from outside as the demo and the system tests do: input
//! files toggled (with bounces) give start/end events, pulses give rainfall, commands switch outputs
//! whose files change, and what cannot be done is refused precisely.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edge_agent::gpio::{Started, Wiring};
use protocol::{Action, Command, CommandId, CommandOutcome, Item, Phase, Reply, Timestamp, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BASE: &str = r#"gateway = "gw-gpio"
[location]
lon = 118.78
lat = 32.04
road_segment = "rd-1"
grid = "g-1"
[uplink]
broker = "mqtt://127.0.0.1:1883"
"#;

struct Rig {
    items: mpsc::Receiver<Item>,
    replies: mpsc::Receiver<Reply>,
    started: Started,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    sim: std::path::PathBuf,
    health: Arc<edge_agent::health::Health>,
}

/// Starts the GPIO of a gateway whose `[gpio]` section (after its header) is `section`.
fn rig(section: &str, max_silent: Duration) -> Rig {
    rig_with(section, max_silent, &[])
}

/// As [`rig`], with input files written before the start.
fn rig_with(section: &str, max_silent: Duration, inputs: &[(u8, &str)]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    std::fs::create_dir_all(sim.join("in")).unwrap();
    for (pin, level) in inputs {
        std::fs::write(sim.join("in").join(pin.to_string()), level).unwrap();
    }
    let text = format!(
        "{BASE}[gpio]\nbackend = \"simulated\"\nsim_dir = \"{}\"\n{section}",
        sim.display()
    );
    let config = firmware_config::parse_gateway(
        Path::new("gw.toml"),
        &text,
        &firmware_config::ProfileSet::builtin().unwrap(),
    )
    .unwrap_or_else(|d| panic!("{d:#?}"));
    let (tx, items) = mpsc::channel(1000);
    let (reply_tx, replies) = mpsc::channel(100);
    let shutdown = CancellationToken::new();
    let health = Arc::new(edge_agent::health::Health::default());
    let started = edge_agent::gpio::start(
        config.gpio,
        Wiring {
            gateway: "gw-gpio".parse().unwrap(),
            items: tx,
            replies: reply_tx,
            health: health.clone(),
            max_silent,
            shutdown: shutdown.clone(),
        },
    )
    .unwrap();
    Rig {
        items,
        replies,
        started,
        shutdown,
        _dir: dir,
        sim,
        health,
    }
}

impl Rig {
    /// Sets input pin `pin` as a test or the demo would: write a temporary file, rename it over.
    fn set(&self, pin: u8, high: bool) {
        let dir = self.sim.join("in");
        let tmp = dir.join(format!(".{pin}.tmp"));
        std::fs::write(&tmp, if high { "1" } else { "0" }).unwrap();
        std::fs::rename(&tmp, dir.join(pin.to_string())).unwrap();
    }

    fn output(&self, pin: u8) -> String {
        std::fs::read_to_string(self.sim.join("out").join(pin.to_string())).unwrap()
    }

    async fn next(&mut self) -> Item {
        tokio::time::timeout(Duration::from_secs(5), self.items.recv())
            .await
            .expect("an item within 5 s")
            .unwrap()
    }

    /// Every item arriving within `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Item> {
        let mut out = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout(quiet, self.items.recv()).await {
            out.push(item);
        }
        out
    }

    /// Every item arriving in the next `span`.
    async fn collect_for(&mut self, span: Duration) -> Vec<Item> {
        let end = tokio::time::Instant::now() + span;
        let mut out = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout_at(end, self.items.recv()).await {
            out.push(item);
        }
        out
    }

    async fn command(&mut self, device: &str, action: Action, expires_in_ms: i64) -> Reply {
        let now = Timestamp::now();
        let cmd = Command {
            v: 1,
            id: CommandId::from_uuid(uuid::Uuid::new_v4()),
            device: device.parse().unwrap(),
            issued_at: now.add_millis(-1000),
            expires_at: now.add_millis(expires_in_ms),
            action,
        };
        let route = self
            .started
            .routes
            .iter()
            .find(|(d, _)| d.as_str() == device)
            .unwrap_or_else(|| panic!("no route for {device}"))
            .1
            .clone();
        route.send(cmd.clone()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), self.replies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((reply.id, reply.device.clone()), (cmd.id, cmd.device));
        reply
    }

    /// Stops every task; returns the directory (kept for a last look) and the sim dir in it.
    async fn stop(self) -> (tempfile::TempDir, std::path::PathBuf) {
        self.shutdown.cancel();
        let Rig {
            started, _dir, sim, ..
        } = self;
        let Started { routes, tasks } = started;
        drop(routes);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
        (_dir, sim)
    }
}

fn event(item: &Item) -> (&str, &str, Phase, bool) {
    let Item::Event(e) = item else {
        panic!("expected an event, got {item:?}")
    };
    assert_eq!(e.attributes.get("pin"), Some(&Value::Number(17.0)));
    (
        e.device.as_str(),
        e.event.as_str(),
        e.phase,
        e.attributes.get("initial") == Some(&Value::Bool(true)),
    )
}

fn reading(item: &Item) -> (&str, &str, Value) {
    let Item::Reading(r) = item else {
        panic!("expected a reading, got {item:?}")
    };
    assert!(r.quality.is_good());
    (
        r.device.as_str(),
        r.metric.as_str(),
        r.value.clone().unwrap(),
    )
}

const DOOR: &str = r#"
[[gpio.input]]
id = "door-1"
asset = "cab-1"
kind = "door"
pin = 17
pull = "up"
debounce_ms = 200
"#;

#[tokio::test]
async fn a_door_opens_and_shuts_once_however_its_contact_bounces() {
    let mut rig = rig(DOOR, Duration::from_secs(300));
    // The state at start: shut (no file: the inactive level), so the hub can close an old condition.
    assert_eq!(
        event(&rig.next().await),
        ("door-1", "tamper", Phase::End, true)
    );
    assert_eq!(
        reading(&rig.next().await),
        ("door-1", "tamper", Value::Bool(false))
    );

    // Opened, with a bounce on the way: one start.
    for high in [true, false, true] {
        rig.set(17, high);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(
        event(&rig.next().await),
        ("door-1", "tamper", Phase::Start, false)
    );
    assert_eq!(
        reading(&rig.next().await),
        ("door-1", "tamper", Value::Bool(true))
    );

    // Shut, bouncing: one end and nothing else.
    for high in [false, true, false, true, false] {
        rig.set(17, high);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let items = rig.drain(Duration::from_millis(700)).await;
    assert_eq!(items.len(), 2, "{items:#?}");
    assert_eq!(event(&items[0]), ("door-1", "tamper", Phase::End, false));

    // A glitch shorter than the debounce is nothing.
    rig.set(17, true);
    tokio::time::sleep(Duration::from_millis(60)).await;
    rig.set(17, false);
    let items = rig.drain(Duration::from_millis(700)).await;
    assert!(items.is_empty(), "{items:#?}");
    rig.stop().await;
}

#[tokio::test]
async fn an_active_door_at_start_is_a_start_and_a_steady_state_is_repeated() {
    let section = DOOR.replace("debounce_ms = 200", "debounce_ms = 20\nactive_low = true");
    let mut rig = rig(&section, Duration::from_secs(1));
    // active_low: no file is the inactive level, high.
    assert_eq!(
        event(&rig.next().await),
        ("door-1", "tamper", Phase::End, true)
    );
    rig.next().await;
    // Steady: after max_silent the state reading comes again, without an event.
    let again = rig.collect_for(Duration::from_millis(2500)).await;
    assert!((1..=3).contains(&again.len()), "{again:#?}");
    for item in &again {
        assert_eq!(reading(item), ("door-1", "tamper", Value::Bool(false)));
    }
    rig.stop().await;

    // Opened while the agent was not running: the first thing it says is a start.
    let mut rig2 = rig_with(&section, Duration::from_secs(300), &[(17, "0")]);
    assert_eq!(
        event(&rig2.next().await),
        ("door-1", "tamper", Phase::Start, true)
    );
    rig2.stop().await;
}

#[tokio::test]
async fn rain_gauge_pulses_add_up_to_rainfall() {
    let mut rig = rig(
        r#"
[[gpio.counter]]
id = "rain-1"
asset = "rg-1"
pin = 27
pull = "up"
per_pulse = 0.2
report_s = 2
"#,
        Duration::from_secs(300),
    );
    // The first interval: nothing counted, and it says so.
    let Item::Reading(first) = rig.next().await else {
        panic!()
    };
    assert_eq!(
        (
            first.metric.as_str(),
            first.value,
            first.unit.as_ref().map(|u| u.as_str())
        ),
        ("rainfall", Some(Value::Number(0.0)), Some("mm"))
    );
    // Five tips of the bucket: the reed contact pulls the pin low for 80 ms each.
    for _ in 0..5 {
        rig.set(27, false);
        tokio::time::sleep(Duration::from_millis(80)).await;
        rig.set(27, true);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_eq!(
        reading(&rig.next().await),
        ("rain-1", "rainfall", Value::Number(1.0))
    );
    // Counted but not yet reported when the agent stops: sent on the way out.
    rig.set(27, false);
    tokio::time::sleep(Duration::from_millis(80)).await;
    rig.set(27, true);
    tokio::time::sleep(Duration::from_millis(80)).await;
    rig.shutdown.cancel();
    let rest = rig.drain(Duration::from_millis(500)).await;
    let amounts: Vec<Value> = rest.iter().map(|i| reading(i).2).collect();
    assert!(
        amounts == [Value::Number(0.2)]
            || amounts == [Value::Number(0.2), Value::Number(0.0)]
            || amounts == [Value::Number(0.0), Value::Number(0.2)],
        "{amounts:?}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn commands_switch_outputs_and_the_rest_is_refused_precisely() {
    let mut rig = rig(
        &(DOOR.to_owned()
            + r#"
[[gpio.output]]
id = "lamp-warn-1"
asset = "warn-1"
kind = "warning_light"
pin = 22

[[gpio.output]]
id = "siren-1"
asset = "siren-1"
kind = "siren"
pin = 24
active_low = true
"#),
        Duration::from_secs(300),
    );
    // Both off at start; the active-low relay's off is a high pin.
    assert_eq!(rig.output(22), "0");
    assert_eq!(rig.output(24), "1");
    let start = rig.drain(Duration::from_millis(300)).await;
    let states: Vec<_> = start
        .iter()
        .filter(|i| matches!(i, Item::Reading(r) if r.metric.as_str() == "powerState"))
        .map(reading)
        .collect();
    assert_eq!(states.len(), 2, "{start:#?}");
    assert!(states.contains(&("lamp-warn-1", "powerState", Value::Bool(false))));

    let on = |v: bool| Action::Write {
        metric: "powerState".parse().unwrap(),
        value: Value::Bool(v),
    };
    let r = rig.command("lamp-warn-1", on(true), 60_000).await;
    assert_eq!(
        (r.outcome, r.read_back),
        (CommandOutcome::Ok, Some(Value::Bool(true)))
    );
    assert_eq!(rig.output(22), "1");
    assert_eq!(
        reading(&rig.next().await),
        ("lamp-warn-1", "powerState", Value::Bool(true))
    );
    let r = rig.command("siren-1", on(true), 60_000).await;
    assert_eq!(
        (r.outcome, r.read_back),
        (CommandOutcome::Ok, Some(Value::Bool(true)))
    );
    assert_eq!(rig.output(24), "0");
    rig.next().await;

    let refused = [
        (
            "lamp-warn-1",
            Action::Write {
                metric: "dimLevel".parse().unwrap(),
                value: Value::Number(50.0),
            },
            CommandOutcome::Rejected,
            "lamp-warn-1 (warning_light on BCM 22) has no metric dimLevel; writable: powerState (true = on)",
        ),
        (
            "lamp-warn-1",
            Action::Write {
                metric: "powerState".parse().unwrap(),
                value: Value::Number(1.0),
            },
            CommandOutcome::Rejected,
            "powerState takes true (on) or false (off)",
        ),
        (
            "lamp-warn-1",
            Action::Reset,
            CommandOutcome::Rejected,
            "has no reset",
        ),
        (
            "door-1",
            on(true),
            CommandOutcome::Rejected,
            "door-1 is a GPIO input: it has nothing to write",
        ),
    ];
    for (device, action, outcome, detail) in refused {
        let r = rig.command(device, action, 60_000).await;
        assert_eq!(r.outcome, outcome, "{r:?}");
        assert!(r.detail.as_deref().unwrap().contains(detail), "{r:?}");
        assert_eq!(r.read_back, None);
    }
    let r = rig.command("lamp-warn-1", on(false), -1).await;
    assert_eq!(r.outcome, CommandOutcome::Expired, "{r:?}");
    // Nothing refused changed a pin.
    assert_eq!(rig.output(22), "1");

    // Back to the safe state when the agent stops.
    let (_dir, sim) = rig.stop().await;
    let read = |pin: &str| std::fs::read_to_string(sim.join("out").join(pin)).unwrap();
    assert_eq!((read("22").as_str(), read("24").as_str()), ("0", "1"));
}

/// An output nobody switches is still read back every second, so it counts as heard (the hub takes
/// a silent device for a dead one), and a change made behind the agent's back is reported.
#[tokio::test]
async fn an_idle_output_is_heard_and_a_change_behind_the_agents_back_is_reported() {
    let mut rig = rig(
        r#"
[[gpio.output]]
id = "lamp-warn-1"
asset = "warn-1"
kind = "warning_light"
pin = 22
"#,
        Duration::from_secs(300),
    );
    assert_eq!(
        reading(&rig.next().await),
        ("lamp-warn-1", "powerState", Value::Bool(false))
    );
    fn heard(rig: &Rig) -> protocol::Timestamp {
        rig.health
            .links()
            .into_iter()
            .find(|l| l.device.as_str() == "lamp-warn-1")
            .and_then(|l| l.last_success)
            .unwrap()
    }
    let first = heard(&rig);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        heard(&rig).millis_since(first) >= 1000,
        "not read back since the start"
    );
    // Nothing new while nothing changes.
    assert!(rig.drain(Duration::from_millis(300)).await.is_empty());
    // Someone switches the relay by hand (here: the simulated pin's file).
    std::fs::write(rig.sim.join("out").join("22"), "1").unwrap();
    assert_eq!(
        reading(&rig.next().await),
        ("lamp-warn-1", "powerState", Value::Bool(true))
    );
    rig.stop().await;
}

#[tokio::test]
async fn rppal_off_a_pi_stops_the_agent_with_a_way_out() {
    let model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default();
    if model.contains("Raspberry Pi") {
        return; // There the GPIO opens; this is about every other machine.
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "{BASE}[agent]\ndata_dir = \"{}\"\n{}",
            dir.path().display(),
            "[gpio]\n".to_owned() + DOOR
        ),
    )
    .unwrap();
    let opts = edge_agent::AgentOptions {
        config: file,
        profiles: None,
        broker: None,
        clock: edge_agent::clock::ClockSource::Auto,
        hub_url: None,
        data_dir: None,
        camera_listen: None,
        status_listen: Some("127.0.0.1:0".into()),
        key_file: None,
        config_trial: edge_agent::fleet::DEFAULT_TRIAL,
    };
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        edge_agent::run(opts, CancellationToken::new()),
    )
    .await
    .expect("fails at once")
    .unwrap_err();
    let shown = format!("{err:#}");
    assert!(
        shown.contains("[gpio] backend = \"rppal\" cannot open the Raspberry Pi's GPIO")
            && shown.contains("set backend = \"simulated\" in [gpio]"),
        "{shown}"
    );
}
