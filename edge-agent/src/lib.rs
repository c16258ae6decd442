//! The edge agent: the program on each Raspberry Pi gateway.
//!
//! ```text
//! pollers (one task per bus) ─▶ decode per device profile ─▶ uplink (envelopes over MQTT, QoS 1)
//! ```
//! [`run`] loads the gateway file, starts one poller per bus and the uplink, and on shutdown stops the
//! pollers first; the uplink then flushes what they produced and marks the gateway offline.

pub mod camera;
pub mod clock;
pub mod command;
pub mod commands;
pub mod commission;
pub mod evidence;
pub mod gpio;
pub mod health;
pub mod job;
pub mod modbus;
pub mod mqtt_source;
pub mod poller;
pub mod report;
pub mod rules;
pub mod spool;
pub mod status;
pub mod sysinfo;
pub mod uplink;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::ClockSource;

/// How an agent is started (the `edge-agent run` flags).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: PathBuf,
    /// Extra profile directory on top of the built-in profiles.
    pub profiles: Option<PathBuf>,
    /// Overrides the gateway file's broker URL.
    pub broker: Option<String>,
    pub clock: ClockSource,
    /// Overrides `[evidence] hub_url`.
    pub hub_url: Option<String>,
    /// Overrides `[agent] data_dir` (the evidence store goes under it).
    pub data_dir: Option<PathBuf>,
    /// Overrides `[camera_server] listen`.
    pub camera_listen: Option<String>,
    /// Overrides `[agent] status_listen`.
    pub status_listen: Option<String>,
    /// Overrides `[uplink] key_file`.
    pub key_file: Option<std::path::PathBuf>,
}

/// Capacity of the channel from the pollers to the uplink, in items. Full: pollers wait.
pub const ITEM_QUEUE: usize = 8192;

/// Runs the agent until `shutdown` is cancelled, then stops in pipeline order.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let setup = job::Setup::load(&opts)?;
    let health = Arc::new(health::Health::default());
    // The spool first: a spool that cannot be opened stops the start with the reason.
    let sp = setup.spool.clone();
    let spool = tokio::task::spawn_blocking(move || spool::Spool::open(&sp.dir, sp.event, sp.bulk))
        .await?
        .map_err(|e| anyhow::anyhow!("spool {}: {e}", setup.spool.dir.display()))?;
    let spool = Arc::new(std::sync::Mutex::new(spool));
    let (durable_tx, durable_rx) = mpsc::channel::<uplink::DurableEvent>(256);
    let (tx, rx) = mpsc::channel(ITEM_QUEUE);
    let mut pollers = Vec::new();
    // Commands: uplink ─▶ router ─▶ the poller owning the device's bus ─▶ replies ─▶ uplink.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<protocol::Command>(64);
    let (reply_tx, reply_rx) = mpsc::channel::<protocol::Reply>(64);
    let mut routes = std::collections::HashMap::new();
    let gateway = setup.uplink.gateway.clone();
    if let Some(k) = &setup.uplink.key {
        let _ = health.signing_key.set(k.id.to_string());
    }
    // GPIO first: a backend or pin that cannot be opened stops the start before anything runs.
    let gpio = gpio::start(
        setup.gpio,
        gpio::Wiring {
            gateway: gateway.clone(),
            items: tx.clone(),
            replies: reply_tx.clone(),
            health: health.clone(),
            max_silent: setup.max_silent,
            shutdown: shutdown.clone(),
        },
    )?;
    routes.extend(gpio.routes);
    pollers.extend(gpio.tasks);
    for bus in setup.buses {
        let (bus_tx, bus_rx) = mpsc::channel(16);
        for job in &bus.jobs {
            routes.insert(job.device.clone(), bus_tx.clone());
        }
        let commands = poller::Commands {
            gateway: gateway.clone(),
            rx: bus_rx,
            replies: reply_tx.clone(),
        };
        let (tx, health, shutdown) = (tx.clone(), health.clone(), shutdown.clone());
        pollers.push(tokio::spawn(poller::run(
            bus.link, bus.pause, bus.jobs, tx, commands, health, shutdown,
        )));
    }
    let router = tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            match routes.get(&cmd.device) {
                Some(bus) => {
                    let _ = bus.send(cmd).await;
                }
                None => {
                    let detail = format!("gateway {gateway} has no device {}", cmd.device);
                    let reply = command::reply(
                        &gateway,
                        &cmd,
                        protocol::CommandOutcome::Rejected,
                        Some(detail),
                        None,
                    );
                    let _ = reply_tx.send(reply).await;
                }
            }
        }
    });
    for source in setup.mqtt_sources {
        let (tx, health, shutdown) = (tx.clone(), health.clone(), shutdown.clone());
        pollers.push(tokio::spawn(mqtt_source::run(
            source,
            tx,
            health,
            setup.max_silent,
            shutdown,
        )));
    }
    if let Some(cameras) = &setup.cameras {
        let dir = cameras.evidence_dir.clone();
        let max = cameras.evidence_max_bytes;
        // Upload an image once its event (batched for up to batch_max_wait) has had time to arrive.
        let delay = setup.uplink.batch_max_wait + std::time::Duration::from_millis(500);
        let store =
            tokio::task::spawn_blocking(move || evidence::EvidenceStore::open(&dir, max, delay))
                .await??;
        let store = Arc::new(store);
        let _ = health.evidence.set(store.clone());
        let server =
            camera::CameraServer::bind(cameras, store.clone(), durable_tx.clone(), health.clone())
                .await?;
        pollers.push(tokio::spawn(server.serve(shutdown.clone())));
        if let Some(url) = &cameras.hub_url {
            tokio::spawn(evidence::upload(
                store,
                url.clone(),
                setup.uplink.gateway.clone(),
                setup.uplink.key.clone(),
                shutdown.clone(),
            ));
        }
    }
    tokio::spawn(status::serve(
        setup.status_listen,
        health.clone(),
        shutdown.clone(),
    ));
    // The uplink runs until its producers are gone; hold one sender of each until shutdown so a
    // gateway with nothing to poll (heartbeats only) keeps its uplink too.
    let (keep_items, keep_events, sd) = (tx, durable_tx, shutdown.clone());
    tokio::spawn(async move {
        sd.cancelled().await;
        drop((keep_items, keep_events));
    });
    tracing::info!(gateway = %setup.uplink.gateway, buses = pollers.len(), broker = %format!("{}:{}", setup.uplink.host, setup.uplink.port), "edge agent started");
    systemd_notify(shutdown.clone());
    // Local rules sit between the producers and the uplink, so they act whatever the uplink does.
    let engine = rules::Engine::new(setup.rules.clone());
    let local_commands = engine.issued.clone();
    let rx = if engine.is_empty() {
        rx
    } else {
        let (rules_tx, rules_rx) = mpsc::channel(ITEM_QUEUE);
        tokio::spawn(rules::run(
            engine,
            setup.uplink.gateway.clone(),
            rx,
            rules_tx,
            cmd_tx.clone(),
        ));
        rules_rx
    };
    // The uplink ends when every poller has stopped and the channel is drained.
    let channels = uplink::Channels {
        items: rx,
        durable: durable_rx,
        commands: cmd_tx,
        replies: reply_rx,
        local_commands,
    };
    uplink::run(setup.uplink, spool, health, channels).await;
    router.abort();
    for p in pollers {
        let _ = p.await;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Under systemd with `Type=notify` (`NOTIFY_SOCKET` set): tells it the agent has started; and
/// while the unit sets `WatchdogSec`, pings the watchdog at half its interval from a task of this
/// runtime, so a runtime that stops running its tasks (a deadlock, a worker blocked on IO) stops
/// the pings and systemd restarts the agent, spool intact. Says `STOPPING=1` on shutdown. Outside
/// systemd it does nothing.
fn systemd_notify(shutdown: CancellationToken) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready");
    }
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec) && usec > 0;
    let every = std::time::Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        if watchdog {
            tracing::info!(
                every_ms = every.as_millis() as u64,
                "pinging the systemd watchdog"
            );
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                    }
                }
            }
        } else {
            shutdown.cancelled().await;
        }
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    });
}
