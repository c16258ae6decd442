//! Devices that publish themselves over MQTT (smart bins behind a LoRa or NB-IoT network server, AI
//! cameras): `[[mqtt_source]]` names a broker, each `[[mqtt_source.device]]` a topic filter, and each
//! `[[mqtt_source.device.metric]]` a JSON pointer into the payload with scale, offset, unit and range.
//! The spec as written, its validation, and the resolved view the agent runs.

use std::collections::HashMap;
use std::path::PathBuf;

use protocol::{AssetId, AssetKind, DeviceId, DeviceInfo, MetricId, Unit, ZoneId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::device_check::DeviceIndex;
use crate::gateway::LocationSpec;
use crate::link::Broker;
use crate::locate::{Path, Problem};
use crate::place::{check_place, place};

/// A broker the agent subscribes to for self-publishing devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceSpec {
    /// A name for logs, e.g. `lora-bins`.
    pub name: String,
    /// `mqtt://host:port` of the local or remote broker.
    pub broker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, rename = "device")]
    pub devices: Vec<MqttDeviceSpec>,
}

/// One self-publishing device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttDeviceSpec {
    pub id: DeviceId,
    pub asset: AssetId,
    pub kind: AssetKind,
    /// MQTT topic filter of the device's messages (`+` and `#` allowed), e.g.
    /// `application/2/device/a84041000181c5d1/event/up`.
    pub topic: String,
    /// JSON pointer to the observation time (RFC 3339 text, or Unix seconds or milliseconds);
    /// absent: the time the message arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_pointer: Option<String>,
    /// Expected seconds between messages; the hub's offline rule uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    #[serde(default, rename = "metric")]
    pub metrics: Vec<JsonMetric>,
}

/// One metric taken from the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonMetric {
    pub metric: MetricId,
    /// JSON pointer (RFC 6901) to the value, e.g. `/object/fill_pct`.
    pub pointer: String,
    /// value = raw * scale + offset, for numbers (0.01 turns percent into a fraction).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub unit: Option<Unit>,
    /// Plausible range `[min, max]` of the scaled value; outside: sent marked bad `outOfRange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Report on change, as for register fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// A resolved source: parsed broker and devices placed on the map.
#[derive(Debug, Clone)]
pub struct MqttSource {
    pub name: String,
    pub broker: Broker,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub devices: Vec<MqttDevice>,
}

/// A resolved self-publishing device.
#[derive(Debug, Clone)]
pub struct MqttDevice {
    pub spec: MqttDeviceSpec,
    pub info: DeviceInfo,
}

impl MqttSource {
    pub fn resolve(
        spec: &MqttSourceSpec,
        gateway: &str,
        loc: &LocationSpec,
    ) -> Result<MqttSource, String> {
        let devices = spec
            .devices
            .iter()
            .map(|d| MqttDevice {
                spec: d.clone(),
                info: place!(d).info(
                    loc,
                    &d.id,
                    &d.asset,
                    d.kind,
                    &format!("mqtt:{}", spec.name),
                    d.report_interval_s,
                ),
            })
            .collect();
        Ok(MqttSource {
            name: spec.name.clone(),
            broker: Broker::parse(&spec.broker)?,
            client_id: spec
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{gateway}-{}", spec.name)),
            username: spec.username.clone(),
            password: spec.password.clone(),
            password_file: spec.password_file.clone(),
            devices,
        })
    }
}

/// Why `filter` is not a valid MQTT topic filter, if it is not.
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("topic is empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some(format!(
                "topic {filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Some(format!("topic {filter:?}: '+' must be a whole level"));
        }
    }
    None
}

/// Checks the sources; device and asset ids share `index` with the Modbus devices.
pub fn check_sources(sources: &[MqttSourceSpec], index: &mut DeviceIndex, out: &mut Vec<Problem>) {
    let mut names: HashMap<&str, Path> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        let at = Path::root().at("mqtt_source", i);
        if let Err(e) = protocol::id::validate("source name", &s.name) {
            out.push(Problem::error(at.key("name"), e.to_string()));
        } else if let Some(first) = names.get(s.name.as_str()) {
            out.push(
                Problem::error(
                    at.key("name"),
                    format!("source name {:?} is used twice", s.name),
                )
                .related(first.clone()),
            );
        } else {
            names.insert(&s.name, at.key("name"));
        }
        if let Err(e) = Broker::parse(&s.broker) {
            out.push(Problem::error(at.key("broker"), e));
        }
        if s.password.is_some() && s.password_file.is_some() {
            out.push(Problem::error(
                at.key("password_file"),
                "give either password or password_file, not both",
            ));
        }
        if s.devices.is_empty() {
            out.push(Problem::warning(
                at.key("name"),
                format!("source {:?} has no [[mqtt_source.device]]", s.name),
            ));
        }
        for (j, d) in s.devices.iter().enumerate() {
            let at = at.at("device", j);
            index.claim(&d.id, &d.asset, &at, out);
            if let Some(p) = filter_problem(&d.topic) {
                out.push(Problem::error(at.key("topic"), p));
            }
            if let Some(p) = d.time_pointer.as_deref().and_then(pointer_problem) {
                out.push(Problem::error(at.key("time_pointer"), p));
            }
            check_place(&place!(d), &at, out);
            if d.metrics.is_empty() {
                out.push(Problem::error(
                    at.key("id"),
                    format!("device {} has no [[mqtt_source.device.metric]]", d.id),
                ));
            }
            let mut metrics: HashMap<&str, Path> = HashMap::new();
            for (k, m) in d.metrics.iter().enumerate() {
                let at = at.at("metric", k);
                if let Some(first) = metrics.get(m.metric.as_str()) {
                    out.push(
                        Problem::error(
                            at.key("metric"),
                            format!("metric {} is used twice", m.metric),
                        )
                        .related(first.clone()),
                    );
                } else {
                    metrics.insert(m.metric.as_str(), at.key("metric"));
                }
                if let Some(p) = pointer_problem(&m.pointer) {
                    out.push(Problem::error(at.key("pointer"), p));
                }
                if !(m.scale.is_finite() && m.scale != 0.0 && m.offset.is_finite()) {
                    out.push(Problem::error(
                        at.key("scale"),
                        "scale must be a finite number other than 0, offset finite",
                    ));
                }
                if let Some([lo, hi]) = m.range
                    && !(lo.is_finite() && hi.is_finite() && lo <= hi)
                {
                    out.push(Problem::error(
                        at.key("range"),
                        format!("range [{lo}, {hi}] must be finite with min <= max"),
                    ));
                }
                if m.deadband.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
                    out.push(Problem::error(
                        at.key("deadband"),
                        "deadband must be a number >= 0",
                    ));
                }
            }
        }
    }
}

fn pointer_problem(p: &str) -> Option<String> {
    (!p.is_empty() && !p.starts_with('/')).then(|| {
        format!(
            "pointer {p:?} must start with '/' (JSON pointer, RFC 6901), e.g. \"/object/fill_pct\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a/b", "a/+/c", "a/#", "#", "+"] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        for bad in ["", "a/#/b", "a/b#", "a+/b"] {
            assert!(filter_problem(bad).is_some(), "{bad}");
        }
    }
}
