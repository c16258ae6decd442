//! The edge agent: the program on each Raspberry Pi gateway.
//!
//! ```text
//! pollers (one task per bus) ─▶ decode per device profile ─▶ uplink (envelopes over MQTT, QoS 1)
//! ```
//! [`run`] loads the gateway file, starts one poller per bus and the uplink, and on shutdown stops the
//! pollers first; the uplink then flushes what they produced and marks the gateway offline.

pub mod clock;
pub mod commands;
pub mod commission;
pub mod health;
pub mod job;
pub mod modbus;
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
    for bus in setup.buses {
        let (tx, health, shutdown) = (tx.clone(), health.clone(), shutdown.clone());
        pollers.push(tokio::spawn(poller::run(
            bus.link, bus.pause, bus.jobs, tx, health, shutdown,
        )));
    }
    drop(tx);
    tracing::info!(gateway = %setup.uplink.gateway, buses = pollers.len(), broker = %format!("{}:{}", setup.uplink.host, setup.uplink.port), "edge agent started");
    // The uplink ends when every poller has stopped and the channel is drained.
    uplink::run(setup.uplink, rx, health).await;
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
