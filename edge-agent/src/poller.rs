//! One poller task per bus: owns the bus's link, polls each device on its interval, one request at a
//! time with the bus's pause between requests, and turns responses into readings. First stage of the
//! agent's flow: poller ─▶ uplink.
//!
//! A device that keeps failing is marked down after [`DOWN_AFTER`] consecutive failed polls and then
//! retried on a growing backoff (up to [`MAX_RETRY`]), so one dead sensor on a shared RS-485 bus costs
//! the others one timeout per retry instead of one per poll. Up/down changes are logged once and sent
//! to the hub as `linkDown` events (`start` when it goes down, `end` when it comes back).

use std::sync::Arc;
use std::time::Duration;

use protocol::{EventType, Item, Timestamp};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::job::DeviceJob;
use crate::modbus::link::{LinkError, ModbusLink, Registers};

/// Consecutive failed polls after which a device counts as down.
pub const DOWN_AFTER: u32 = 3;
/// Longest wait between retries of a device that is down.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Commands for the devices of one bus, and where their replies go.
#[derive(Debug)]
pub struct Commands {
    pub gateway: protocol::GatewayId,
    pub rx: mpsc::Receiver<protocol::Command>,
    pub replies: mpsc::Sender<protocol::Reply>,
}

struct Slot {
    job: DeviceJob,
    next_due: Instant,
    failures: u32,
    down: bool,
}

/// Polls every device of one bus until `shutdown`; stops between requests, never in the middle of one.
pub async fn run<L: ModbusLink>(
    mut link: L,
    pause: Duration,
    jobs: Vec<DeviceJob>,
    items: mpsc::Sender<Item>,
    mut commands: Commands,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    // Stagger first polls across the first interval so devices on one bus do not all fall due at once.
    let n = jobs.len().max(1) as u32;
    let mut slots: Vec<Slot> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            health.register(&job.device);
            let offset = (job.poll / n)
                .saturating_mul(i as u32)
                .min(Duration::from_secs(2));
            Slot {
                job,
                next_due: start + offset,
                failures: 0,
                down: false,
            }
        })
        .collect();
    tracing::info!(bus = %link.describe(), devices = slots.len(), "poller started");
    while let Some(i) = slots
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| s.next_due)
        .map(|(i, _)| i)
    {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(cmd) = commands.rx.recv() => {
                // Between polls: the bus is ours and idle.
                let reply = match slots.iter().find(|s| s.job.device == cmd.device) {
                    Some(slot) => crate::command::perform(&mut link, slot.job.device(), &commands.gateway, &cmd).await,
                    None => crate::command::reply(&commands.gateway, &cmd, protocol::CommandOutcome::Rejected, Some("device is not on this bus".into()), None),
                };
                let _ = commands.replies.send(reply).await;
                continue;
            }
            _ = tokio::time::sleep_until(slots[i].next_due) => {}
        }
        let slot = &mut slots[i];
        let at = Timestamp::now();
        let mut responses: Vec<Result<Registers, LinkError>> =
            Vec::with_capacity(slot.job.requests.len());
        for (k, req) in slot.job.requests.iter().enumerate() {
            if k > 0 {
                tokio::time::sleep(pause).await;
            }
            let r = link
                .read(slot.job.unit, req.table, req.start, req.count)
                .await;
            // After a transport failure the rest of this device's requests would fail the same way.
            let stop = matches!(r, Err(LinkError::Timeout { .. } | LinkError::Down(_)));
            responses.push(r);
            if stop {
                break;
            }
        }
        let answered = responses
            .iter()
            .any(|r| r.as_ref().is_ok() || r.as_ref().is_err_and(LinkError::device_answered));
        let mut out = Vec::new();
        if answered {
            if slot.down {
                tracing::info!(device = %slot.job.device, after_failures = slot.failures, "device is back up");
                out.push(link_event(&slot.job, at, protocol::Phase::End, None));
            }
            slot.failures = 0;
            slot.down = false;
            health.success(&slot.job.device, at);
            out.extend(slot.job.readings(&responses, at));
            // Keep the cadence; after a stall, skip missed polls instead of bursting.
            slot.next_due = (slot.next_due + slot.job.poll).max(Instant::now());
        } else {
            slot.failures += 1;
            let newly_down = !slot.down && slot.failures >= DOWN_AFTER;
            health.failure(&slot.job.device, slot.failures >= DOWN_AFTER);
            let error = responses
                .iter()
                .find_map(|r| r.as_ref().err())
                .map(ToString::to_string)
                .unwrap_or_default();
            if newly_down {
                slot.down = true;
                slot.job.reset_reports();
                tracing::warn!(device = %slot.job.device, unit = slot.job.unit, bus = %link.describe(), %error, "device is down");
                out.push(link_event(
                    &slot.job,
                    at,
                    protocol::Phase::Start,
                    Some(error),
                ));
            } else if !slot.down {
                tracing::debug!(device = %slot.job.device, failures = slot.failures, %error, "poll failed");
            }
            slot.next_due = Instant::now() + retry_delay(slot.job.poll, slot.failures);
        }
        health.count_readings(out.len() as u64);
        for item in out {
            // Waits while the uplink is behind: backpressure instead of unbounded memory.
            if items.send(item).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(pause).await;
    }
    tracing::info!(bus = %link.describe(), "poller stopped");
}

/// Wait before the next attempt after `failures` consecutive failures: the poll interval until the
/// device is down, then doubling per failure up to [`MAX_RETRY`].
pub fn retry_delay(poll: Duration, failures: u32) -> Duration {
    if failures < DOWN_AFTER {
        return poll;
    }
    let doublings = (failures - DOWN_AFTER + 1).min(16);
    poll.saturating_mul(1 << doublings).min(MAX_RETRY).max(poll)
}

fn link_event(
    job: &DeviceJob,
    at: Timestamp,
    phase: protocol::Phase,
    error: Option<String>,
) -> Item {
    let mut attributes = std::collections::BTreeMap::new();
    if let Some(e) = error {
        attributes.insert(
            "error".to_owned(),
            protocol::Value::Text(e.chars().take(200).collect()),
        );
    }
    attributes.insert(
        "unit".to_owned(),
        protocol::Value::Number(f64::from(job.unit)),
    );
    Item::Event(protocol::Event {
        device: job.device.clone(),
        event: link_down_type(),
        observed_at: at,
        phase,
        attributes,
        evidence: Vec::new(),
    })
}

fn link_down_type() -> EventType {
    EventType::new("linkDown").unwrap_or_else(|_| unreachable!("valid literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backs_off_to_the_cap() {
        let poll = Duration::from_secs(5);
        assert_eq!(retry_delay(poll, 1), poll);
        assert_eq!(retry_delay(poll, 2), poll);
        assert_eq!(retry_delay(poll, 3), Duration::from_secs(10));
        assert_eq!(retry_delay(poll, 4), Duration::from_secs(20));
        assert_eq!(retry_delay(poll, 30), MAX_RETRY);
    }
}
