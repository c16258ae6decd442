//! The edge agent: the program on each Raspberry Pi gateway.
//!
//! ```text
//! pollers (one task per bus) ─▶ decode per device profile ─▶ uplink (envelopes over MQTT, QoS 1)
//! ```
//! [`run`] loads the gateway file, starts one poller per bus and the uplink, and on shutdown stops the
//! pollers first; the uplink then flushes what they produced and marks the gateway offline.

pub mod clock;
pub mod command;
pub mod commands;
pub mod commission;
pub mod gpio;
pub mod health;
pub mod job;
pub mod modbus;
pub mod mqtt_source;
pub mod poller;
pub mod report;
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
}

/// Capacity of the channel from the pollers to the uplink, in items. Full: pollers wait.
pub const ITEM_QUEUE: usize = 8192;

/// Runs the agent until `shutdown` is cancelled, then stops in pipeline order.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let setup = job::Setup::load(&opts)?;
    let health = Arc::new(health::Health::default());
    let (tx, rx) = mpsc::channel(ITEM_QUEUE);
    let mut pollers = Vec::new();
    // Commands: uplink ─▶ router ─▶ the poller owning the device's bus ─▶ replies ─▶ uplink.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<protocol::Command>(64);
    let (reply_tx, reply_rx) = mpsc::channel::<protocol::Reply>(64);
    let mut routes = std::collections::HashMap::new();
    let gateway = setup.uplink.gateway.clone();
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
    drop(tx);
    tracing::info!(gateway = %setup.uplink.gateway, buses = pollers.len(), broker = %format!("{}:{}", setup.uplink.host, setup.uplink.port), "edge agent started");
    // The uplink ends when every poller has stopped and the channel is drained.
    uplink::run(setup.uplink, rx, health, cmd_tx, reply_rx).await;
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
