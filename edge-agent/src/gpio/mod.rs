//! Local signals on the Raspberry Pi's GPIO header, a first stage beside the bus pollers:
//! gpio ─▶ uplink, and for outputs commands ─▶ gpio ─▶ replies.
//!
//! - An input (`[[gpio.input]]`: cabinet door, float switch) reports each debounced change as an
//!   event — `start` when it turns active, `end` when it turns inactive — with a boolean reading of
//!   the same name. At start the agent sends the current state the same way (`start` or `end`, with
//!   attribute `initial = true`), so the hub opens or closes the condition whatever happened while
//!   the agent was not running.
//! - A counter (`[[gpio.counter]]`: tipping-bucket rain gauge) counts debounced pulses and sends, every
//!   `report_s`, the amount counted in the interval (pulses × `per_pulse`, 0 when none); at shutdown
//!   the amount counted since the last reading goes out too.
//! - An output (`[[gpio.output]]`: warning light, siren, relay) is set to its `initial` (safe) state at
//!   start and at shutdown; in between a command writing `powerState` (`true` = on) switches it, the
//!   level is read back, and the reply goes out like a Modbus command's. Its state is sent as a
//!   `powerState` reading at start and after every switch.
//!
//! Pins come from a [`GpioBackend`]: the Pi's GPIO through rppal, or files for tests and the demo.
//! Debouncing is here, not in the backend, so both run the same logic. Every second each input is
//! read as well: an edge the driver missed is caught up, and the device is marked up in the
//! heartbeat (or down when it cannot be read).

pub mod backend;
pub mod debounce;
pub mod pi;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use firmware_config::gpio::{Edge, GpioBackend as BackendConfig, OUTPUT_METRIC};
use firmware_config::{Gpio, GpioCounter, GpioInput, GpioOutput};
use protocol::{
    Action, Command, CommandOutcome, DeviceId, Event, EventType, GatewayId, Item, MetricId, Phase,
    Quality, Reading, Reply, Timestamp, Unit, Value,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use backend::{GpioBackend, GpioError, InputConfig, InputLine, OutputLine, RawEdge};
use debounce::Debouncer;

use crate::health::Health;

/// How often inputs are read besides their edges.
pub const RESYNC: Duration = Duration::from_secs(1);
/// Raw edges buffered per input before the driver waits.
const EDGE_QUEUE: usize = 256;

/// What the GPIO tasks are connected to.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub gateway: GatewayId,
    pub items: mpsc::Sender<Item>,
    pub replies: mpsc::Sender<Reply>,
    pub health: Arc<Health>,
    /// A state reading that has not changed is sent again after this long.
    pub max_silent: Duration,
    pub shutdown: CancellationToken,
}

/// The running GPIO devices: command routes by device, and the tasks (ended by the shutdown token;
/// the command task ends when the routes are dropped).
#[derive(Debug, Default)]
pub struct Started {
    pub routes: Vec<(DeviceId, mpsc::Sender<Command>)>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens the configured backend.
pub fn open_backend(config: &BackendConfig) -> anyhow::Result<Arc<dyn GpioBackend>> {
    match config {
        BackendConfig::Rppal => match pi::Pi::open() {
            Ok(pi) => Ok(Arc::new(pi)),
            Err(e) => anyhow::bail!(
                "[gpio] backend = \"rppal\" cannot open the Raspberry Pi's GPIO: {e}; \
                 on a machine without GPIO (a PC, CI, the demo) set backend = \"simulated\" in [gpio]"
            ),
        },
        BackendConfig::Simulated { dir } => match sim::Simulated::open(dir) {
            Ok(sim) => Ok(Arc::new(sim)),
            Err(e) => anyhow::bail!("[gpio] backend = \"simulated\": {e}"),
        },
    }
}

/// Opens the backend and every pin of `config` (none: nothing to do), then starts the tasks. Fails
/// before any task runs if the backend or a pin cannot be opened.
pub fn start(config: Option<Gpio>, wiring: Wiring) -> anyhow::Result<Started> {
    let Some(config) = config else {
        return Ok(Started::default());
    };
    let backend = open_backend(&config.backend)?;
    start_with(config, backend.as_ref(), wiring)
}

/// As [`start`], on an open backend.
pub fn start_with(
    config: Gpio,
    backend: &dyn GpioBackend,
    wiring: Wiring,
) -> anyhow::Result<Started> {
    // Open everything first: a pin that cannot be opened stops the start with nothing running.
    let mut inputs = Vec::new();
    for d in config.inputs {
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        let idle_high = d.spec.active_low;
        let line = backend
            .input(
                InputConfig {
                    pin: d.pin,
                    pull: d.spec.pull,
                    idle_high,
                },
                tx,
            )
            .with_context(|| format!("[gpio] input {} (BCM {})", d.spec.id, d.pin))?;
        let names = InputNames::of(&d)?;
        // The receiver drops before the line (tuple order): a driver thread blocked on a full
        // channel is released before the line waits for it to stop.
        inputs.push((d, names, rx, line));
    }
    let mut counters = Vec::new();
    for d in config.counters {
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        let line = backend
            .input(
                InputConfig {
                    pin: d.pin,
                    pull: d.spec.pull,
                    idle_high: d.spec.edge == Edge::Falling,
                },
                tx,
            )
            .with_context(|| format!("[gpio] counter {} (BCM {})", d.spec.id, d.pin))?;
        counters.push((d, rx, line));
    }
    let metric = MetricId::new(OUTPUT_METRIC)?;
    let mut outputs = Vec::new();
    for d in config.outputs {
        let line = backend
            .output(d.pin, d.spec.initial != d.spec.active_low)
            .with_context(|| format!("[gpio] output {} (BCM {})", d.spec.id, d.pin))?;
        outputs.push((d, line));
    }
    tracing::info!(
        backend = backend.name(),
        inputs = inputs.len(),
        counters = counters.len(),
        outputs = outputs.len(),
        "gpio started"
    );

    let mut started = Started::default();
    let mut not_commandable = BTreeMap::new();
    for (d, names, rx, line) in inputs {
        not_commandable.insert(d.spec.id.clone(), "input");
        let w = wiring.clone();
        started
            .tasks
            .push(tokio::spawn(run_input(d, names, line, rx, w)));
    }
    for (d, rx, line) in counters {
        not_commandable.insert(d.spec.id.clone(), "counter");
        let w = wiring.clone();
        started
            .tasks
            .push(tokio::spawn(run_counter(d, line, rx, w)));
    }
    for (d, line) in outputs {
        let (tx, rx) = mpsc::channel(16);
        started.routes.push((d.spec.id.clone(), tx));
        let w = wiring.clone();
        started
            .tasks
            .push(tokio::spawn(run_output(d, metric.clone(), line, rx, w)));
    }
    if !not_commandable.is_empty() {
        let (tx, rx) = mpsc::channel(16);
        for id in not_commandable.keys() {
            started.routes.push((id.clone(), tx.clone()));
        }
        started.tasks.push(tokio::spawn(reject_commands(
            rx,
            not_commandable,
            wiring.gateway,
            wiring.replies,
        )));
    }
    Ok(started)
}

/// The event type and state metric of an input.
#[derive(Debug)]
struct InputNames {
    event: EventType,
    metric: MetricId,
}

impl InputNames {
    fn of(d: &GpioInput) -> anyhow::Result<Self> {
        let name = d.spec.kind.event_type();
        Ok(Self {
            event: EventType::new(name)?,
            metric: MetricId::new(name)?,
        })
    }
}

/// Sends `list` to the uplink, counting its readings; false when the uplink is gone.
async fn send(w: &Wiring, list: Vec<Item>) -> bool {
    let readings = list
        .iter()
        .filter(|i| matches!(i, Item::Reading(_)))
        .count();
    w.health.count_readings(readings as u64);
    for item in list {
        if w.items.send(item).await.is_err() {
            return false;
        }
    }
    true
}

/// Sleeps until `due`, or forever when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// Reads an input's level for the resync tick; marks the device up or (once) down.
fn read_level(
    line: &dyn InputLine,
    device: &DeviceId,
    health: &Health,
    failing: &mut bool,
) -> Option<bool> {
    match line.is_high() {
        Ok(level) => {
            if *failing {
                tracing::info!(device = %device, "gpio input readable again");
                *failing = false;
            }
            health.success(device, Timestamp::now());
            Some(level)
        }
        Err(e) => {
            if !*failing {
                tracing::warn!(device = %device, error = %e, "gpio input cannot be read");
                *failing = true;
            }
            health.failure(device, true);
            None
        }
    }
}

async fn run_input(
    d: GpioInput,
    names: InputNames,
    line: Box<dyn InputLine>,
    mut edges: mpsc::Receiver<RawEdge>,
    w: Wiring,
) {
    let id = d.spec.id.clone();
    w.health.register(&id);
    let active_low = d.spec.active_low;
    let state = |high: bool| high != active_low;
    let mut failing = false;
    let level = read_level(line.as_ref(), &id, &w.health, &mut failing).unwrap_or(active_low);
    let mut debouncer = Debouncer::new(level, Duration::from_millis(u64::from(d.spec.debounce_ms)));
    let items = |active: bool, at: Timestamp, initial: bool| {
        let mut attributes = BTreeMap::from([("pin".to_owned(), Value::Number(f64::from(d.pin)))]);
        if initial {
            attributes.insert("initial".to_owned(), Value::Bool(true));
        }
        vec![
            Item::Event(Event {
                device: id.clone(),
                event: names.event.clone(),
                observed_at: at,
                phase: if active { Phase::Start } else { Phase::End },
                attributes,
                evidence: Vec::new(),
            }),
            state_reading(&id, &names.metric, active, at),
        ]
    };
    tracing::info!(device = %id, pin = d.pin, active = state(level), "gpio input watched");
    if !send(&w, items(state(level), Timestamp::now(), true)).await {
        return;
    }
    let mut last_sent = Instant::now();
    let mut resync = every(RESYNC);
    let mut edges_open = true;
    loop {
        let settled = tokio::select! {
            _ = w.shutdown.cancelled() => break,
            e = edges.recv(), if edges_open => match e {
                Some(e) => debouncer.raw(e),
                None => {
                    tracing::warn!(device = %id, "gpio input stopped reporting edges; reading it every second");
                    edges_open = false;
                    None
                }
            },
            _ = sleep_until(debouncer.due()) => debouncer.settle(Instant::now()),
            _ = resync.tick() => {
                match read_level(line.as_ref(), &id, &w.health, &mut failing) {
                    Some(level) if level != debouncer.last_raw() => debouncer.raw(RawEdge::now(level)),
                    Some(_) if last_sent.elapsed() >= w.max_silent => {
                        // Steady: say so now and then, like report on change does.
                        let r = state_reading(&id, &names.metric, state(debouncer.stable()), Timestamp::now());
                        last_sent = Instant::now();
                        if !send(&w, vec![r]).await {
                            return;
                        }
                        None
                    }
                    _ => None,
                }
            }
        };
        if let Some(change) = settled {
            let active = state(change.high);
            tracing::info!(device = %id, event = %names.event, active, "gpio input changed");
            last_sent = Instant::now();
            if !send(&w, items(active, change.wall, false)).await {
                return;
            }
        }
    }
    // Receiver first: a driver thread blocked on a full channel is released before the line
    // waits for it to stop.
    drop(edges);
    drop(line);
    tracing::debug!(device = %id, "gpio input stopped");
}

fn state_reading(device: &DeviceId, metric: &MetricId, on: bool, at: Timestamp) -> Item {
    Item::Reading(Reading {
        device: device.clone(),
        metric: metric.clone(),
        observed_at: at,
        value: Some(Value::Bool(on)),
        unit: None,
        quality: Quality::Good,
    })
}

/// `pulses × per_pulse`, without the binary fraction's noise (3 × 0.2 is 0.6, not 0.6000000000000001).
pub fn amount(pulses: u64, per_pulse: f64) -> f64 {
    let x = pulses as f64 * per_pulse;
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // Round to 12 significant digits.
    let scale = 10f64.powi(11 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

async fn run_counter(
    d: GpioCounter,
    line: Box<dyn InputLine>,
    mut edges: mpsc::Receiver<RawEdge>,
    w: Wiring,
) {
    let id = d.spec.id.clone();
    w.health.register(&id);
    // The level a pulse goes to; the counter counts arrivals there.
    let pulse_level = d.spec.edge == Edge::Rising;
    let mut failing = false;
    let level = read_level(line.as_ref(), &id, &w.health, &mut failing).unwrap_or(!pulse_level);
    let mut debouncer = Debouncer::new(level, Duration::from_millis(u64::from(d.spec.debounce_ms)));
    let reading = |pulses: u64, unit: &Unit| {
        Item::Reading(Reading {
            device: id.clone(),
            metric: d.spec.metric.clone(),
            observed_at: Timestamp::now(),
            value: Some(Value::Number(amount(pulses, d.spec.per_pulse))),
            unit: Some(unit.clone()),
            quality: Quality::Good,
        })
    };
    tracing::info!(device = %id, pin = d.pin, report_s = d.spec.report_s, "gpio counter started");
    let mut pulses = 0u64;
    let mut report = every(Duration::from_secs(u64::from(d.spec.report_s)));
    let mut resync = every(RESYNC);
    let mut edges_open = true;
    loop {
        let settled = tokio::select! {
            _ = w.shutdown.cancelled() => break,
            e = edges.recv(), if edges_open => match e {
                Some(e) => debouncer.raw(e),
                None => {
                    tracing::warn!(device = %id, "gpio counter stopped reporting edges");
                    edges_open = false;
                    None
                }
            },
            _ = sleep_until(debouncer.due()) => debouncer.settle(Instant::now()),
            _ = resync.tick() => match read_level(line.as_ref(), &id, &w.health, &mut failing) {
                Some(level) if level != debouncer.last_raw() => debouncer.raw(RawEdge::now(level)),
                _ => None,
            },
            _ = report.tick() => {
                if debouncer.settle(Instant::now()).is_some_and(|c| c.high == pulse_level) {
                    pulses += 1;
                }
                let r = reading(pulses, &d.spec.unit);
                tracing::debug!(device = %id, pulses, "gpio counter report");
                pulses = 0;
                if !send(&w, vec![r]).await {
                    return;
                }
                None
            }
        };
        if settled.is_some_and(|c| c.high == pulse_level) {
            pulses += 1;
        }
    }
    // What was counted since the last reading is not lost to a restart.
    if debouncer
        .settle(Instant::now())
        .is_some_and(|c| c.high == pulse_level)
    {
        pulses += 1;
    }
    if pulses > 0 {
        let r = reading(pulses, &d.spec.unit);
        let _ = send(&w, vec![r]).await;
    }
    drop(edges);
    drop(line);
    tracing::debug!(device = %id, "gpio counter stopped");
}

async fn run_output(
    d: GpioOutput,
    metric: MetricId,
    mut line: Box<dyn OutputLine>,
    mut commands: mpsc::Receiver<Command>,
    w: Wiring,
) {
    let id = d.spec.id.clone();
    w.health.register(&id);
    let active_low = d.spec.active_low;
    // The state last reported; read back on every resync tick, so that the output counts as heard
    // (an output nobody switches would otherwise go silent and be taken for dead at the hub), and a
    // change made behind the agent's back is reported.
    let mut reported: Option<bool> = None;
    let mut failing = false;
    // The first tick at once: the state at start is reported straight away.
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(device = %id, pin = d.pin, on = d.spec.initial, "gpio output ready");
    loop {
        let cmd = tokio::select! {
            _ = w.shutdown.cancelled() => break,
            _ = resync.tick() => {
                match line.is_high() {
                    Ok(high) => {
                        if failing {
                            tracing::info!(device = %id, "gpio output readable again");
                            failing = false;
                        }
                        w.health.success(&id, Timestamp::now());
                        let on = high != active_low;
                        if reported != Some(on) {
                            reported = Some(on);
                            let r = state_reading(&id, &metric, on, Timestamp::now());
                            if !send(&w, vec![r]).await {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(device = %id, error = %e, "gpio output cannot be read back");
                            failing = true;
                        }
                        w.health.failure(&id, true);
                    }
                }
                continue;
            }
            cmd = commands.recv() => match cmd {
                Some(cmd) => cmd,
                None => break,
            },
        };
        let (outcome, detail, read_back) = match switch(&d, line.as_mut(), &cmd) {
            Ok(on) => (CommandOutcome::Ok, None, Some(on)),
            Err((outcome, detail, back)) => (outcome, Some(detail), back),
        };
        if outcome == CommandOutcome::Ok {
            tracing::info!(device = %id, command = %cmd.id, on = ?read_back, "command performed");
        } else {
            tracing::warn!(device = %id, command = %cmd.id, ?outcome, detail = ?detail, "command not performed");
        }
        match read_back {
            Some(on) => {
                w.health.success(&id, Timestamp::now());
                reported = Some(on);
                let r = state_reading(&id, &metric, on, Timestamp::now());
                if !send(&w, vec![r]).await {
                    break;
                }
            }
            None if outcome == CommandOutcome::Failed => w.health.failure(&id, false),
            None => {}
        }
        let reply = crate::command::reply(
            &w.gateway,
            &cmd,
            outcome,
            detail,
            read_back.map(Value::Bool),
        );
        let _ = w.replies.send(reply).await;
    }
    // Back to the safe state.
    match line.set(d.spec.initial != active_low) {
        Ok(()) => {
            tracing::info!(device = %id, on = d.spec.initial, "gpio output back to its initial state")
        }
        Err(e) => {
            tracing::error!(device = %id, error = %e, "gpio output could not be set back to its initial state")
        }
    }
}

type Failure = (CommandOutcome, String, Option<bool>);

/// Performs a command on an output: the new state read back, or why not.
fn switch(d: &GpioOutput, line: &mut dyn OutputLine, cmd: &Command) -> Result<bool, Failure> {
    let rejected = |detail: String| (CommandOutcome::Rejected, detail, None);
    if Timestamp::now() > cmd.expires_at {
        return Err((
            CommandOutcome::Expired,
            format!("arrived after it expired at {}", cmd.expires_at),
            None,
        ));
    }
    let what = format!("{} ({} on BCM {})", d.spec.id, d.spec.kind.as_str(), d.pin);
    let (metric, value) = match &cmd.action {
        Action::Write { metric, value } => (metric, value),
        Action::Reset => {
            return Err(rejected(format!(
                "{what} has no reset; write {OUTPUT_METRIC} true (on) or false (off)"
            )));
        }
    };
    if metric.as_str() != OUTPUT_METRIC {
        return Err(rejected(format!(
            "{what} has no metric {metric}; writable: {OUTPUT_METRIC} (true = on)"
        )));
    }
    let Value::Bool(on) = *value else {
        return Err(rejected(format!(
            "{OUTPUT_METRIC} takes true (on) or false (off), not {value:?}"
        )));
    };
    let active_low = d.spec.active_low;
    line.set(on != active_low).map_err(|e| {
        (
            CommandOutcome::Failed,
            format!("setting BCM {} failed: {e}", d.pin),
            None,
        )
    })?;
    let back = line.is_high().map_err(|e| {
        (
            CommandOutcome::Failed,
            format!("set, but reading BCM {} back failed: {e}", d.pin),
            None,
        )
    })? != active_low;
    if back == on {
        Ok(on)
    } else {
        Err((
            CommandOutcome::Failed,
            format!("wrote {on} but read back {back}"),
            Some(back),
        ))
    }
}

/// Answers commands for inputs and counters: they have nothing to write.
async fn reject_commands(
    mut commands: mpsc::Receiver<Command>,
    kinds: BTreeMap<DeviceId, &'static str>,
    gateway: GatewayId,
    replies: mpsc::Sender<Reply>,
) {
    while let Some(cmd) = commands.recv().await {
        let kind = kinds.get(&cmd.device).copied().unwrap_or("input");
        let detail = format!(
            "{} is a GPIO {kind}: it has nothing to write; only [[gpio.output]] devices take commands",
            cmd.device
        );
        let reply =
            crate::command::reply(&gateway, &cmd, CommandOutcome::Rejected, Some(detail), None);
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(amount(0, 0.2), 0.0);
        assert_eq!(amount(3, 0.2), 0.6);
        assert_eq!(amount(7, 0.1), 0.7);
        assert_eq!(amount(5, 0.2), 1.0);
        assert_eq!(amount(123_456, 0.01), 1234.56);
        assert_eq!(amount(1, 0.000_25), 0.000_25);
    }
}
