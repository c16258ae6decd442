//! Counters at every stage of the hub's flow, exported in Prometheus text format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_received: AtomicU64,
    pub envelopes_stored: AtomicU64,
    pub envelopes_duplicate: AtomicU64,
    pub readings_stored: AtomicU64,
    pub events_stored: AtomicU64,
    pub presences: AtomicU64,
    pub heartbeats: AtomicU64,
    pub replies: AtomicU64,
    pub store_batches: AtomicU64,
    pub store_batch_micros: AtomicU64,
    pub store_errors: AtomicU64,
    pub mqtt_connections: AtomicU64,
    pub mqtt_errors: AtomicU64,
    pub evidence_stored: AtomicU64,
    pub commands_issued: AtomicU64,
    /// Unsigned messages taken from gateways without a key (`--allow-unsigned`).
    pub unsigned_accepted: AtomicU64,
    /// Ingest is connected and its subscriptions are acknowledged.
    pub ingest_ready: AtomicBool,
    rejected: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts a message set aside, by reason code.
    pub fn rejected(&self, code: &str) {
        let mut map = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code.to_owned()).or_default() += 1;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "hub_messages_received_total",
                "MQTT messages received on gateway topics",
                &self.messages_received,
            ),
            (
                "hub_envelopes_stored_total",
                "Data envelopes stored",
                &self.envelopes_stored,
            ),
            (
                "hub_envelopes_duplicate_total",
                "Envelopes received again and skipped",
                &self.envelopes_duplicate,
            ),
            (
                "hub_readings_stored_total",
                "Readings stored",
                &self.readings_stored,
            ),
            (
                "hub_events_stored_total",
                "Events stored",
                &self.events_stored,
            ),
            (
                "hub_presence_total",
                "Presence messages applied",
                &self.presences,
            ),
            (
                "hub_heartbeats_total",
                "Heartbeats applied",
                &self.heartbeats,
            ),
            (
                "hub_replies_total",
                "Command replies received",
                &self.replies,
            ),
            (
                "hub_store_batches_total",
                "Store transactions committed",
                &self.store_batches,
            ),
            (
                "hub_store_batch_micros_total",
                "Time spent writing batches, microseconds",
                &self.store_batch_micros,
            ),
            (
                "hub_store_errors_total",
                "Store batches that failed and were retried",
                &self.store_errors,
            ),
            (
                "hub_mqtt_connections_total",
                "MQTT connections made by the ingest client",
                &self.mqtt_connections,
            ),
            (
                "hub_mqtt_errors_total",
                "MQTT connection errors of the ingest client",
                &self.mqtt_errors,
            ),
            (
                "hub_commands_issued_total",
                "Commands published to gateways through the API",
                &self.commands_issued,
            ),
            (
                "hub_evidence_stored_total",
                "Evidence files uploaded by gateways and stored",
                &self.evidence_stored,
            ),
            (
                "hub_unsigned_accepted_total",
                "Unsigned messages taken from gateways without a key (--allow-unsigned)",
                &self.unsigned_accepted,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hub_ingest_ready 1 when ingest is connected and subscribed\n# TYPE hub_ingest_ready gauge\nhub_ingest_ready {}",
            u8::from(self.ingest_ready.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP hub_messages_rejected_total Messages set aside as dead letters, by reason\n# TYPE hub_messages_rejected_total counter"
        );
        for (code, n) in self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "hub_messages_rejected_total{{reason=\"{code}\"}} {n}");
        }
        out
    }
}
