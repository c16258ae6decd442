//! Shared health state of the agent: per-device link state and counters, read by the heartbeat.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use protocol::{DeviceId, DeviceLink, LinkState, Timestamp};

#[derive(Debug, Default)]
pub struct Health {
    links: Mutex<BTreeMap<DeviceId, DeviceLink>>,
    pub readings_collected: AtomicU64,
    pub envelopes_published: AtomicU64,
    /// Connection failures and losses of the uplink, and envelopes the encoder refused.
    pub publish_errors: AtomicU64,
    /// Items that could not be written to the spool (or encoded): lost.
    pub lost_items: AtomicU64,
    /// Messages from MQTT sources that gave no reading (not JSON, no configured field).
    pub source_rejected: AtomicU64,
    /// Camera requests refused (malformed, oversized, unknown camera).
    pub camera_rejected: AtomicU64,
    /// Reconnects forced because acknowledgements stalled.
    pub watchdog_resets: AtomicU64,
    /// Messages on the command topic refused: unsigned, or not signed with this gateway's key.
    pub commands_refused: AtomicU64,
    /// The id of the key messages are signed with, if any.
    pub signing_key: std::sync::OnceLock<String>,
    spool: Mutex<crate::spool::SpoolFigures>,
    /// The uplink is connected to the broker.
    pub connected: std::sync::atomic::AtomicBool,
    /// The broker granted this connection's subscriptions (commands and configuration).
    pub subscribed: std::sync::atomic::AtomicBool,
    /// Publishes a heartbeat at once (the configuration report changed).
    pub heartbeat_now: tokio::sync::Notify,
    /// Broker connections made since start.
    pub connects: AtomicU64,
    /// This run's boot id, once the uplink has started.
    pub boot: std::sync::OnceLock<protocol::BootId>,
    /// The gateway id.
    pub gateway: std::sync::OnceLock<protocol::GatewayId>,
    /// The clock state the agent last stamped data with.
    pub clock_synced: std::sync::atomic::AtomicBool,
    /// The evidence store, on gateways with cameras.
    pub evidence: std::sync::OnceLock<std::sync::Arc<crate::evidence::EvidenceStore>>,
    /// The configuration running, for the heartbeat and the status endpoint.
    config: Mutex<Option<protocol::ConfigReport>>,
    /// The file running (the local gateway file or a hub version in the data directory).
    pub config_file: std::sync::OnceLock<std::path::PathBuf>,
    /// Why the uplink last failed to connect or lost its connection.
    last_uplink_error: Mutex<Option<String>>,
}

impl Health {
    pub fn register(&self, device: &DeviceId) {
        self.lock()
            .entry(device.clone())
            .or_insert_with(|| DeviceLink {
                device: device.clone(),
                link: LinkState::Unknown,
                last_success: None,
                failures: 0,
            });
    }

    pub fn success(&self, device: &DeviceId, at: Timestamp) {
        let mut links = self.lock();
        if let Some(l) = links.get_mut(device) {
            l.link = LinkState::Up;
            l.last_success = Some(at);
        }
    }

    pub fn failure(&self, device: &DeviceId, down: bool) {
        let mut links = self.lock();
        if let Some(l) = links.get_mut(device) {
            l.failures += 1;
            if down {
                l.link = LinkState::Down;
            }
        }
    }

    pub fn links(&self) -> Vec<DeviceLink> {
        self.lock().values().cloned().collect()
    }

    pub fn set_spool(&self, s: crate::spool::SpoolFigures) {
        *self.spool.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The spool's figures as last reported by the uplink.
    pub fn spool_figures(&self) -> crate::spool::SpoolFigures {
        self.spool.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spool's figures for the heartbeat.
    pub fn spool(&self) -> protocol::SpoolStats {
        let f = self.spool_figures();
        protocol::SpoolStats {
            depth: f.depth,
            bytes: f.bytes,
            oldest_age_s: f.oldest_age_s,
            dropped: f.dropped_items,
            lost: self.lost_items.load(Relaxed),
        }
    }

    /// The evidence store's figures for the heartbeat (all zero without cameras).
    pub fn evidence_stats(&self) -> protocol::EvidenceStats {
        let mut s = self.evidence.get().map(|e| e.stats()).unwrap_or_default();
        s.rejected_requests = self.camera_rejected.load(Relaxed);
        s
    }

    pub fn config(&self) -> Option<protocol::ConfigReport> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, report: protocol::ConfigReport) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Changes the configuration report in place (a trial kept, a push refused).
    pub fn update_config(&self, f: impl FnOnce(&mut protocol::ConfigReport)) {
        if let Some(r) = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(r);
        }
    }

    pub fn last_uplink_error(&self) -> Option<String> {
        self.last_uplink_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_uplink_error(&self, e: &str) {
        *self
            .last_uplink_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_owned());
    }

    pub fn count_readings(&self, n: u64) {
        self.readings_collected.fetch_add(n, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceId, DeviceLink>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }
}
