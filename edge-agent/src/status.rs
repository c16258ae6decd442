//! The agent's own status on a loopback port: `GET /status` (JSON) and `GET /metrics` (Prometheus),
//! and the report `edge-agent status` prints from it. What an installer at the cabinet, or a
//! monitoring agent on the gateway, needs: is the uplink up, how much is waiting in the spool, what
//! was dropped, which devices answer, can the clock be trusted.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The `/status` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub gateway: Option<String>,
    pub boot: Option<String>,
    pub version: String,
    pub uptime_s: u64,
    pub clock: String,
    pub uplink: UplinkStatus,
    pub spool: SpoolStatus,
    pub evidence: protocol::EvidenceStats,
    pub devices: Vec<protocol::DeviceLink>,
    pub readings_collected: u64,
    pub source_rejected: u64,
    /// The configuration running: local file or hub version, trial, last version not kept.
    #[serde(default)]
    pub config: Option<protocol::ConfigReport>,
    /// The file running.
    #[serde(default)]
    pub config_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkStatus {
    pub connected: bool,
    pub connects: u64,
    pub envelopes_acknowledged: u64,
    pub errors: u64,
    pub watchdog_resets: u64,
    /// The key messages are signed with; `None`: unsigned.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// Command messages refused as not from the hub.
    #[serde(default)]
    pub commands_refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStatus {
    pub depth: u64,
    pub items: u64,
    pub bytes: u64,
    pub oldest_age_s: Option<u64>,
    pub dropped_items: u64,
    /// Items that could not be written to the spool: lost.
    #[serde(default)]
    pub lost_items: u64,
    pub corrupt_bytes: u64,
    pub corrupt_records: u64,
}

#[derive(Clone)]
struct St {
    health: Arc<Health>,
    started: std::time::Instant,
}

impl std::fmt::Debug for St {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("St")
    }
}

/// Builds the status from the shared health.
pub fn status(health: &Health, started: std::time::Instant) -> Status {
    let f = health.spool_figures();
    Status {
        gateway: health.gateway.get().map(|g| g.to_string()),
        boot: health.boot.get().map(|b| b.to_string()),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: started.elapsed().as_secs(),
        clock: if health.clock_synced.load(Relaxed) {
            "synced"
        } else {
            "unsynced"
        }
        .into(),
        uplink: UplinkStatus {
            connected: health.connected.load(Relaxed),
            connects: health.connects.load(Relaxed),
            envelopes_acknowledged: health.envelopes_published.load(Relaxed),
            errors: health.publish_errors.load(Relaxed),
            watchdog_resets: health.watchdog_resets.load(Relaxed),
            signing_key: health.signing_key.get().cloned(),
            commands_refused: health.commands_refused.load(Relaxed),
        },
        spool: SpoolStatus {
            depth: f.depth,
            items: f.items,
            bytes: f.bytes,
            oldest_age_s: f.oldest_age_s,
            dropped_items: f.dropped_items,
            lost_items: health.lost_items.load(Relaxed),
            corrupt_bytes: f.corrupt_bytes,
            corrupt_records: f.corrupt_records,
        },
        evidence: health.evidence_stats(),
        devices: health.links(),
        readings_collected: health.readings_collected.load(Relaxed),
        source_rejected: health.source_rejected.load(Relaxed),
        config: health.config(),
        config_file: health.config_file.get().map(|p| p.display().to_string()),
    }
}

/// Binds `addr` and serves until `shutdown`. A port in use is logged, not fatal: collection goes on.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve the status endpoint; the agent runs without it");
            return;
        }
    };
    tracing::info!(addr = ?listener.local_addr().ok(), "status endpoint listening");
    let st = St {
        health,
        started: std::time::Instant::now(),
    };
    let app = axum::Router::new()
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .with_state(st);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "status endpoint failed");
    }
}

async fn get_status(State(st): State<St>) -> impl IntoResponse {
    Json(status(&st.health, st.started))
}

async fn get_metrics(State(st): State<St>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics(&status(&st.health, st.started)),
    )
}

/// Prometheus text exposition of a status.
pub fn metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut m = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP edge_agent_{name} {help}\n# TYPE edge_agent_{name} {kind}\nedge_agent_{name} {v}"
        );
    };
    m(
        "uptime_seconds",
        "gauge",
        "Seconds since start",
        s.uptime_s as f64,
    );
    m(
        "clock_synced",
        "gauge",
        "1 when the wall clock is synchronised",
        f64::from(u8::from(s.clock == "synced")),
    );
    m(
        "uplink_connected",
        "gauge",
        "1 while connected to the broker",
        f64::from(u8::from(s.uplink.connected)),
    );
    m(
        "uplink_connects_total",
        "counter",
        "Broker connections made",
        s.uplink.connects as f64,
    );
    m(
        "envelopes_acknowledged_total",
        "counter",
        "Envelopes the broker acknowledged",
        s.uplink.envelopes_acknowledged as f64,
    );
    m(
        "uplink_errors_total",
        "counter",
        "Connection and publish errors",
        s.uplink.errors as f64,
    );
    m(
        "watchdog_resets_total",
        "counter",
        "Reconnects forced by stalled acknowledgements",
        s.uplink.watchdog_resets as f64,
    );
    m(
        "commands_refused_total",
        "counter",
        "Command messages refused as not signed by the hub",
        s.uplink.commands_refused as f64,
    );
    m(
        "messages_signed",
        "gauge",
        "1 when messages are signed with a gateway key",
        f64::from(u8::from(s.uplink.signing_key.is_some())),
    );
    m(
        "spool_envelopes",
        "gauge",
        "Envelopes waiting in the spool",
        s.spool.depth as f64,
    );
    m(
        "spool_items",
        "gauge",
        "Items waiting in the spool",
        s.spool.items as f64,
    );
    m(
        "spool_bytes",
        "gauge",
        "Spool bytes on disk",
        s.spool.bytes as f64,
    );
    m(
        "spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest unsent envelope",
        s.spool.oldest_age_s.unwrap_or(0) as f64,
    );
    m(
        "spool_dropped_items_total",
        "counter",
        "Items dropped because a spool budget was full",
        s.spool.dropped_items as f64,
    );
    m(
        "spool_lost_items_total",
        "counter",
        "Items that could not be written to the spool (disk error, or a full disk with nothing to give up): lost",
        s.spool.lost_items as f64,
    );
    m(
        "spool_corrupt_bytes_total",
        "counter",
        "Spool bytes skipped as torn or corrupt at start",
        s.spool.corrupt_bytes as f64,
    );
    m(
        "readings_collected_total",
        "counter",
        "Readings produced by pollers and sources",
        s.readings_collected as f64,
    );
    m(
        "evidence_pending",
        "gauge",
        "Camera images waiting for upload",
        s.evidence.pending as f64,
    );
    m(
        "evidence_dropped_total",
        "counter",
        "Camera images deleted before upload",
        s.evidence.dropped as f64,
    );
    let _ = writeln!(
        out,
        "# HELP edge_agent_device_up 1 when the device answered its last poll\n# TYPE edge_agent_device_up gauge"
    );
    for d in &s.devices {
        let _ = writeln!(
            out,
            "edge_agent_device_up{{device=\"{}\"}} {}",
            d.device,
            u8::from(d.link == protocol::LinkState::Up)
        );
    }
    out
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn duration(s: u64) -> String {
    match s {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The human report of `edge-agent status`.
pub fn report(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway   {}   boot {}   up {}   edge-agent {}",
        s.gateway.as_deref().unwrap_or("?"),
        s.boot.as_deref().unwrap_or("?"),
        duration(s.uptime_s),
        s.version
    );
    if let Some(c) = &s.config {
        let file = s.config_file.as_deref().unwrap_or("?");
        let sha = &c.sha256[..c.sha256.len().min(12)];
        let line = match (c.source, c.version) {
            (protocol::ConfigSource::Hub, Some(v)) => format!(
                "hub version {v}{} ({file}, sha256 {sha})",
                if c.trial {
                    ", ON TRIAL until it reaches the broker"
                } else {
                    ""
                }
            ),
            (protocol::ConfigSource::Local, Some(v)) => format!(
                "local file {file} (sha256 {sha}); it was changed after hub version {v} was applied, so it wins until the hub pushes a newer version"
            ),
            _ => format!("local file {file} (sha256 {sha}); the hub has pushed no version"),
        };
        let _ = writeln!(out, "config    {line}");
        if let Some(f) = &c.failed {
            let _ = writeln!(
                out,
                "          hub version {} {} at {}: {}",
                f.version,
                match f.outcome {
                    protocol::ConfigOutcome::Refused => "REFUSED",
                    protocol::ConfigOutcome::RolledBack => "ROLLED BACK",
                },
                f.at.to_rfc3339(),
                f.reason
            );
        }
    }
    let _ = writeln!(
        out,
        "clock     {}",
        if s.clock == "synced" {
            "synced"
        } else {
            "NOT synchronised (data is marked; the hub corrects its times)"
        }
    );
    let _ = writeln!(
        out,
        "uplink    {}   {} connects, {} envelopes acknowledged, {} errors, {} watchdog resets",
        if s.uplink.connected {
            "connected"
        } else {
            "DOWN"
        },
        s.uplink.connects,
        s.uplink.envelopes_acknowledged,
        s.uplink.errors,
        s.uplink.watchdog_resets
    );
    let _ = writeln!(
        out,
        "signing   {}{}",
        match &s.uplink.signing_key {
            Some(k) => format!("messages signed with key {k}"),
            None =>
                "NO KEY: messages unsigned (the hub takes them only with --allow-unsigned)".into(),
        },
        if s.uplink.commands_refused > 0 {
            format!(
                "; {} forged or unsigned commands refused",
                s.uplink.commands_refused
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "spool     {} envelopes ({} items) waiting, oldest {}, {} on disk; dropped {} items, skipped {} corrupt bytes",
        s.spool.depth,
        s.spool.items,
        s.spool.oldest_age_s.map_or("-".into(), duration),
        bytes(s.spool.bytes),
        s.spool.dropped_items,
        s.spool.corrupt_bytes
    );
    if s.spool.lost_items > 0 {
        let _ = writeln!(
            out,
            "          {} items LOST: they could not be written to the spool (see the log)",
            s.spool.lost_items
        );
    }
    if !s.evidence.is_empty() {
        let e = &s.evidence;
        let _ = writeln!(
            out,
            "evidence  {} images ({}) waiting for upload, {} uploaded, {} dropped, {} camera requests refused",
            e.pending,
            bytes(e.pending_bytes),
            e.uploaded,
            e.dropped,
            e.rejected_requests
        );
    }
    let _ = writeln!(out, "devices   {}", s.devices.len());
    for d in &s.devices {
        let link = match d.link {
            protocol::LinkState::Up => "up",
            protocol::LinkState::Down => "DOWN",
            protocol::LinkState::Unknown => "unknown",
        };
        let _ = writeln!(
            out,
            "  {:<24} {:<8} last answer {:<26} failures {}",
            d.device.as_str(),
            link,
            d.last_success.map_or("-".into(), |t| t.to_rfc3339()),
            d.failures
        );
    }
    out
}

/// Fetches and formats the status of the agent at `url` (e.g. `http://127.0.0.1:9101`).
pub fn fetch(url: &str) -> Result<Status, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent
        .get(&format!("{}/status", url.trim_end_matches('/')))
        .call()
        .map_err(|e| format!("cannot reach the agent's status endpoint at {url}: {e}"))?;
    resp.body_mut()
        .read_json()
        .map_err(|e| format!("{url}/status: not a status document: {e}"))
}
