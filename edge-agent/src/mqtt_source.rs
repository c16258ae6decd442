//! Devices that publish themselves: one MQTT client per `[[mqtt_source]]`, subscribed to each
//! device's topic filter, turning each JSON payload into readings by JSON pointer. A parallel first
//! stage of the agent's flow, beside the bus pollers: mqtt source ─▶ uplink.
//!
//! A payload that is not JSON, or lacks a metric, is counted and logged (at most once a minute per
//! device) and otherwise ignored: one misbehaving device never disturbs the others.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use firmware_config::{JsonMetric, MqttDevice, MqttSource};
use protocol::{BadReason, Item, Quality, Reading, Timestamp, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::report::ReportFilter;

struct Subscribed {
    device: MqttDevice,
    report: ReportFilter,
    last_warning: Option<Instant>,
}

/// Runs one source until `shutdown`.
pub async fn run(
    source: MqttSource,
    items: mpsc::Sender<Item>,
    health: Arc<Health>,
    max_silent: Duration,
    shutdown: CancellationToken,
) {
    let mut opts = MqttOptions::new(
        source.client_id.clone(),
        source.broker.host.clone(),
        source.broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let password = match (&source.password, &source.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .ok()
            .map(|s| s.trim_end().to_owned()),
        (None, None) => None,
    };
    if let (Some(u), Some(p)) = (&source.username, password) {
        opts.set_credentials(u.clone(), p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut devices: Vec<Subscribed> = source
        .devices
        .iter()
        .map(|d| {
            health.register(&d.spec.id);
            let bands = d
                .spec
                .metrics
                .iter()
                .filter_map(|m| m.deadband.map(|b| (m.metric.clone(), b)))
                .collect();
            Subscribed {
                device: d.clone(),
                report: ReportFilter::new(bands, max_silent),
                last_warning: None,
            }
        })
        .collect();
    tracing::info!(source = %source.name, broker = %source.broker, devices = devices.len(), "mqtt source started");
    let mut failures = 0u32;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                for d in &devices {
                    let _ = client.try_subscribe(d.device.spec.topic.clone(), QoS::AtLeastOnce);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let received = Timestamp::now();
                for d in devices
                    .iter_mut()
                    .filter(|d| rumqttc::matches(&p.topic, &d.device.spec.topic))
                {
                    let out = match serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        Ok(json) => readings(d, &json, received),
                        Err(e) => Err(format!("payload on {} is not JSON: {e}", p.topic)),
                    };
                    match out {
                        Ok(list) => {
                            health.success(&d.device.spec.id, received);
                            health.count_readings(list.len() as u64);
                            for item in list {
                                if items.send(item).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(problem) => {
                            health.source_rejected.fetch_add(1, Relaxed);
                            if d.last_warning
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                            {
                                d.last_warning = Some(Instant::now());
                                tracing::warn!(device = %d.device.spec.id, %problem, "message ignored");
                            }
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(source = %source.name, error = %e, "mqtt source lost its broker; reconnecting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(protocol::reconnect::delay(failures, fastrand::f64())) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
    tracing::info!(source = %source.name, "mqtt source stopped");
}

/// The readings in one payload, or why there are none.
fn readings(
    d: &mut Subscribed,
    json: &serde_json::Value,
    received: Timestamp,
) -> Result<Vec<Item>, String> {
    let spec = &d.device.spec;
    let at = spec
        .time_pointer
        .as_deref()
        .and_then(|p| json.pointer(p))
        .and_then(time_of)
        .unwrap_or(received);
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for m in &spec.metrics {
        let Some((value, quality)) = json.pointer(&m.pointer).and_then(|v| value_of(m, v)) else {
            missing.push(m.pointer.as_str());
            continue;
        };
        if d.report
            .admit(&m.metric, Some(&value), &quality, Instant::now())
        {
            out.push(Item::Reading(Reading {
                device: spec.id.clone(),
                metric: m.metric.clone(),
                observed_at: at,
                value: Some(value),
                unit: m.unit.clone(),
                quality,
            }));
        }
    }
    if missing.len() == spec.metrics.len() {
        return Err(format!(
            "none of the configured pointers ({}) is in the payload",
            missing.join(", ")
        ));
    }
    Ok(out)
}

/// A metric's value and quality from a JSON value: numbers (or numeric text) scaled and range-checked,
/// booleans as they are, other text as a label.
fn value_of(m: &JsonMetric, v: &serde_json::Value) -> Option<(Value, Quality)> {
    let number = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        serde_json::Value::Bool(b) => return Some((Value::Bool(*b), Quality::Good)),
        _ => None,
    };
    match number {
        Some(raw) => {
            let x = firmware_config::apply_scale(raw, m.scale, m.offset);
            if !x.is_finite() {
                return None;
            }
            let quality = match m.range {
                Some([lo, hi]) if !(lo..=hi).contains(&x) => Quality::Bad {
                    reason: BadReason::OutOfRange,
                    detail: Some(format!("{x} is outside the plausible range {lo}..{hi}")),
                },
                _ => Quality::Good,
            };
            Some((Value::Number(x), quality))
        }
        None => match v {
            serde_json::Value::String(s) if !s.is_empty() && s.chars().count() <= 256 => {
                Some((Value::Text(s.clone()), Quality::Good))
            }
            _ => None,
        },
    }
}

/// An observation time: RFC 3339 text, or Unix seconds (or milliseconds, when that large).
fn time_of(v: &serde_json::Value) -> Option<Timestamp> {
    match v {
        serde_json::Value::String(s) => Timestamp::parse_rfc3339(s).ok(),
        serde_json::Value::Number(n) => {
            let x = n.as_f64()?;
            let ms = if x > 1e11 { x } else { x * 1000.0 };
            let t = Timestamp::from_unix_millis(ms as i64);
            t.in_codec_range().then_some(t)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(pointer: &str, scale: f64, range: Option<[f64; 2]>) -> JsonMetric {
        JsonMetric {
            metric: "fillingLevel".parse().unwrap(),
            pointer: pointer.into(),
            scale,
            offset: 0.0,
            unit: None,
            range,
            deadband: None,
        }
    }

    #[test]
    fn values_are_scaled_and_checked() {
        let m = metric("/x", 0.01, Some([0.0, 1.0]));
        assert_eq!(
            value_of(&m, &serde_json::json!(83)),
            Some((Value::Number(0.83), Quality::Good))
        );
        assert_eq!(
            value_of(&m, &serde_json::json!("83")).map(|v| v.0),
            Some(Value::Number(0.83))
        );
        let (v, q) = value_of(&m, &serde_json::json!(130)).unwrap();
        assert_eq!(v, Value::Number(1.3));
        assert!(matches!(
            q,
            Quality::Bad {
                reason: BadReason::OutOfRange,
                ..
            }
        ));
        assert_eq!(value_of(&m, &serde_json::json!(null)), None);
        assert_eq!(
            value_of(&m, &serde_json::json!(true)).map(|v| v.0),
            Some(Value::Bool(true))
        );
    }

    #[test]
    fn times() {
        assert_eq!(
            time_of(&serde_json::json!(1_795_000_000)),
            Some(Timestamp::from_unix_millis(1_795_000_000_000))
        );
        assert_eq!(
            time_of(&serde_json::json!(1_795_000_000_123i64)),
            Some(Timestamp::from_unix_millis(1_795_000_000_123))
        );
        assert_eq!(
            time_of(&serde_json::json!("2026-11-22T08:00:00+08:00")).map(|t| t.to_rfc3339()),
            Some("2026-11-22T00:00:00.000Z".into())
        );
        assert_eq!(time_of(&serde_json::json!("soon")), None);
    }
}
