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
    pub request_waits: AtomicU64,
    pub evidence_stored: AtomicU64,
    pub commands_issued: AtomicU64,
    /// Configuration pushes published to gateways (uploads and pushes again).
    pub configs_pushed: AtomicU64,
    /// Unsigned messages taken from gateways without a key (`--allow-unsigned`).
    pub unsigned_accepted: AtomicU64,
    /// Ingest is connected and its subscriptions are acknowledged.
    pub ingest_ready: AtomicBool,
    /// A cluster hub (`--cluster`): partitions it serves, and their MQTT sessions connected now.
    pub partitions_served: AtomicU64,
    pub partition_sessions_connected: AtomicU64,
    /// Age of each envelope (now − its `sentAt`) when its batch commits: transit, broker queueing,
    /// ingest and store together; a gateway's backlog after an outage shows as a long tail.
    pub commit_age: Histogram,
    /// The InfluxDB sink's counters, when it runs.
    pub influx: std::sync::OnceLock<std::sync::Arc<crate::influx::SinkMetrics>>,
    /// Logins the embedded broker refused.
    pub broker_logins_refused: AtomicU64,
    /// Time the writer spent rolling readings up into minutes and hours.
    pub rollup_micros: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    /// Rows (or files) deleted by retention, by kind.
    retention: Mutex<BTreeMap<&'static str, u64>>,
}

/// Upper bounds (milliseconds) of the [`Histogram`] buckets.
pub const AGE_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A Prometheus histogram over [`AGE_BUCKETS_MS`] (plus +Inf), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; AGE_BUCKETS_MS.len() + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let i = AGE_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(AGE_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ms.fetch_add(ms, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (0..1); `None` without data or
    /// beyond the last finite bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let n = self.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        let rank = (q * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return AGE_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            match AGE_BUCKETS_MS.get(i) {
                Some(ms) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        *ms as f64 / 1000.0
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {}",
            self.sum_ms.load(Relaxed) as f64 / 1000.0,
            self.count.load(Relaxed)
        );
    }
}

impl Metrics {
    /// Counts a message set aside, by reason code.
    pub fn rejected(&self, code: &str) {
        let mut map = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code.to_owned()).or_default() += 1;
    }

    /// Counts what retention deleted.
    pub fn retention_deleted(&self, kind: &'static str, n: u64) {
        let mut map = self.retention.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(kind).or_default() += n;
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
        let counters: [(&str, &str, &AtomicU64); 20] = [
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
                "hub_broker_logins_refused_total",
                "Logins the embedded broker refused (unknown user or wrong password)",
                &self.broker_logins_refused,
            ),
            (
                "hub_rollup_micros_total",
                "Time spent rolling readings up into 1-minute and 1-hour buckets, microseconds",
                &self.rollup_micros,
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
                "hub_mqtt_request_waits_total",
                "Times requests to the broker (acknowledgements, subscriptions, commands) found the MQTT client's request queue full and waited (tried again every 5 ms)",
                &self.request_waits,
            ),
            (
                "hub_commands_issued_total",
                "Commands published to gateways through the API",
                &self.commands_issued,
            ),
            (
                "hub_configs_pushed_total",
                "Gateway configuration pushes published (uploads, and pushes again to gateways behind)",
                &self.configs_pushed,
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
            "# HELP hub_cluster_partitions_served Partitions this hub serves (--cluster; 0 otherwise)\n# TYPE hub_cluster_partitions_served gauge\nhub_cluster_partitions_served {}",
            self.partitions_served.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP hub_cluster_partition_sessions_connected Partition MQTT sessions connected now; below partitions_served, a partition's gateways are not being taken in\n# TYPE hub_cluster_partition_sessions_connected gauge\nhub_cluster_partition_sessions_connected {}",
            self.partition_sessions_connected.load(Relaxed)
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
        let _ = writeln!(
            out,
            "# HELP hub_retention_deleted_total Rows (evidence: images) deleted after their retention period, by kind\n# TYPE hub_retention_deleted_total counter"
        );
        for (kind, n) in self
            .retention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "hub_retention_deleted_total{{kind=\"{kind}\"}} {n}");
        }
        if let Some(m) = self.influx.get() {
            let _ = writeln!(
                out,
                "# HELP hub_influx_lines_written_total Lines written to InfluxDB\n# TYPE hub_influx_lines_written_total counter\nhub_influx_lines_written_total {}\n\
                 # HELP hub_influx_batches_written_total Write requests InfluxDB accepted\n# TYPE hub_influx_batches_written_total counter\nhub_influx_batches_written_total {}\n\
                 # HELP hub_influx_retries_total Write requests retried (busy, unreachable, 5xx)\n# TYPE hub_influx_retries_total counter\nhub_influx_retries_total {}\n\
                 # HELP hub_influx_queued_items Items waiting for the sink\n# TYPE hub_influx_queued_items gauge\nhub_influx_queued_items {}\n\
                 # HELP hub_influx_dropped_total Items or lines not written, by reason\n# TYPE hub_influx_dropped_total counter\n\
                 hub_influx_dropped_total{{reason=\"queue_full\"}} {}\nhub_influx_dropped_total{{reason=\"rejected\"}} {}\n\
                 hub_influx_dropped_total{{reason=\"too_large\"}} {}\nhub_influx_dropped_total{{reason=\"bad_quality\"}} {}",
                m.lines_written.load(Relaxed),
                m.batches_written.load(Relaxed),
                m.retries.load(Relaxed),
                m.queued_lines.load(Relaxed),
                m.dropped_queue_full.load(Relaxed),
                m.dropped_rejected.load(Relaxed),
                m.dropped_too_large.load(Relaxed),
                m.skipped_bad_quality.load(Relaxed),
            );
        }
        self.commit_age.render(
            &mut out,
            "hub_envelope_age_at_commit_seconds",
            "Age of an envelope (now minus its sentAt) when the hub committed it",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_text() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in [1, 3, 7, 20, 20, 20, 40, 90, 900, 400_000] {
            h.observe_ms(ms);
        }
        assert_eq!(h.quantile_ms(0.5), Some(25));
        assert_eq!(h.quantile_ms(0.9), Some(1_000));
        assert_eq!(h.quantile_ms(1.0), None, "beyond the last bucket");
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 10\n"), "{out}");
        assert!(out.contains("x_count 10\n"), "{out}");
    }
}
