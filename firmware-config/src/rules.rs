//! Local rules: conditions the gateway watches itself, so they act with the uplink down. When a
//! metric of a device stays beyond a threshold for a duration, the rule raises (a `start` event, and
//! its actions: writes to devices, e.g. a warning light's `powerState`); when the metric is back past
//! the clearing threshold (hysteresis) for a duration, it clears (an `end` event, the actions undone).
//!
//! ```toml
//! [[rule]]
//! name = "waterlogging-warning"
//! device = "water-0001"
//! metric = "waterDepth"
//! above = 15.0          # cm; or `below = ...`
//! for_s = 60
//! clear = 12.0          # hysteresis: clears at or below 12 (for `above`)
//! clear_for_s = 300
//! [[rule.action]]
//! device = "warn-light-01"
//! metric = "powerState"
//! raise = true
//! clear = false
//! ```

use std::collections::HashMap;

use protocol::{DeviceId, MetricId, Value};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::locate::{Path, Problem};

/// One local rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique within the gateway; named in the rule's events.
    pub name: String,
    /// The device whose metric is watched.
    pub device: DeviceId,
    pub metric: MetricId,
    /// Raise when the value is above this...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// ...or below this (give one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// For this long without interruption (0: at the first reading).
    #[serde(default)]
    pub for_s: u32,
    /// Clears when the value is back at or past this (default: the threshold itself). With `above`
    /// it must not be higher than the threshold, with `below` not lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// For this long (0: at the first reading).
    #[serde(default)]
    pub clear_for_s: u32,
    /// The event type of the rule's start and end events (default `localAlarm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Writes performed when the rule raises, undone when it clears.
    #[serde(default, rename = "action", skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionSpec>,
}

/// A write to a device when a rule raises and when it clears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub device: DeviceId,
    /// A writable metric of the device (`powerState` for a GPIO output or a streetlight).
    pub metric: MetricId,
    /// The value written when the rule raises.
    #[schemars(with = "serde_json::Value")]
    pub raise: Value,
    /// The value written when it clears (absent: nothing is written then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub clear: Option<Value>,
}

/// Which way a rule's threshold points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Direction {
    Above,
    Below,
}

/// A validated rule, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub device: DeviceId,
    pub metric: MetricId,
    pub direction: Direction,
    pub threshold: f64,
    pub clear: f64,
    pub for_ms: i64,
    pub clear_for_ms: i64,
    pub event: String,
    pub actions: Vec<ActionSpec>,
}

impl Rule {
    /// Resolves a validated spec.
    pub fn resolve(s: &RuleSpec) -> Result<Rule, String> {
        let (direction, threshold) = match (s.above, s.below) {
            (Some(a), None) => (Direction::Above, a),
            (None, Some(b)) => (Direction::Below, b),
            _ => return Err(format!("rule {}: give either above or below", s.name)),
        };
        Ok(Rule {
            name: s.name.clone(),
            device: s.device.clone(),
            metric: s.metric.clone(),
            direction,
            threshold,
            clear: s.clear.unwrap_or(threshold),
            for_ms: i64::from(s.for_s) * 1000,
            clear_for_ms: i64::from(s.clear_for_s) * 1000,
            event: s.event.clone().unwrap_or_else(|| "localAlarm".into()),
            actions: s.actions.clone(),
        })
    }

    /// Whether `v` is beyond the raising threshold.
    pub fn beyond(&self, v: f64) -> bool {
        match self.direction {
            Direction::Above => v > self.threshold,
            Direction::Below => v < self.threshold,
        }
    }

    /// Whether `v` is back past the clearing threshold.
    pub fn back(&self, v: f64) -> bool {
        match self.direction {
            Direction::Above => v <= self.clear,
            Direction::Below => v >= self.clear,
        }
    }
}

/// What the rule checks need to know about the gateway's devices: for each device, its metrics and
/// which of them can be written (`None`: the device's metrics are not known in advance).
pub type DeviceMetrics = HashMap<DeviceId, Option<(Vec<MetricId>, Vec<MetricId>)>>;

/// Checks the rules against the gateway's devices.
pub fn check_rules(rules: &[RuleSpec], devices: &DeviceMetrics, out: &mut Vec<Problem>) {
    let mut names: HashMap<&str, Path> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let at = Path::root().at("rule", i);
        if let Err(e) = protocol::id::validate("rule name", &r.name) {
            out.push(Problem::error(at.key("name"), e.to_string()));
        } else if let Some(first) = names.get(r.name.as_str()) {
            out.push(
                Problem::error(
                    at.key("name"),
                    format!("rule name {:?} is used twice", r.name),
                )
                .related(first.clone()),
            );
        } else {
            names.insert(&r.name, at.key("name"));
        }
        match devices.get(&r.device) {
            None => out.push(Problem::error(
                at.key("device"),
                format!("no device {:?} on this gateway", r.device.as_str()),
            )),
            Some(Some((metrics, _))) if !metrics.contains(&r.metric) => {
                out.push(Problem::error(
                    at.key("metric"),
                    format!(
                        "device {} has no metric {:?}; it has {}",
                        r.device,
                        r.metric.as_str(),
                        metrics
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            _ => {}
        }
        match (r.above, r.below) {
            (Some(_), Some(_)) => out.push(Problem::error(
                at.key("below"),
                "give either above or below, not both",
            )),
            (None, None) => out.push(Problem::error(
                at.key("name"),
                format!("rule {:?} has neither above nor below", r.name),
            )),
            (Some(t), None) | (None, Some(t)) if !t.is_finite() => {
                out.push(Problem::error(
                    at.key("above"),
                    "threshold must be a finite number",
                ));
            }
            (Some(t), None) => {
                if let Some(c) = r.clear
                    && !(c.is_finite() && c <= t)
                {
                    out.push(Problem::error(
                        at.key("clear"),
                        format!("clear {c} must be at or below the threshold {t} (hysteresis)"),
                    ));
                }
            }
            (None, Some(t)) => {
                if let Some(c) = r.clear
                    && !(c.is_finite() && c >= t)
                {
                    out.push(Problem::error(
                        at.key("clear"),
                        format!("clear {c} must be at or above the threshold {t} (hysteresis)"),
                    ));
                }
            }
        }
        for (key, v) in [("for_s", r.for_s), ("clear_for_s", r.clear_for_s)] {
            if v > 7 * 24 * 3600 {
                out.push(Problem::error(
                    at.key(key),
                    format!("{key} is {v}; at most a week (604800)"),
                ));
            }
        }
        if let Some(e) = &r.event
            && let Err(err) = protocol::EventType::new(e.clone())
        {
            out.push(Problem::error(at.key("event"), err.to_string()));
        }
        if r.actions.is_empty() {
            out.push(Problem::warning(
                at.key("name"),
                format!(
                    "rule {:?} has no [[rule.action]]: it only sends events",
                    r.name
                ),
            ));
        }
        for (j, a) in r.actions.iter().enumerate() {
            let at = at.at("action", j);
            match devices.get(&a.device) {
                None => out.push(Problem::error(
                    at.key("device"),
                    format!("no device {:?} on this gateway", a.device.as_str()),
                )),
                Some(Some((_, writable))) if !writable.contains(&a.metric) => {
                    out.push(Problem::error(
                        at.key("metric"),
                        format!(
                            "metric {:?} of {} cannot be written; writable: {}",
                            a.metric.as_str(),
                            a.device,
                            if writable.is_empty() {
                                "none".to_owned()
                            } else {
                                writable
                                    .iter()
                                    .map(|m| m.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                    ));
                }
                _ => {}
            }
            for (key, v) in [("raise", Some(&a.raise)), ("clear", a.clear.as_ref())] {
                if let Some(p) = v.and_then(|v| v.problem()) {
                    out.push(Problem::error(at.key(key), p));
                }
            }
        }
    }
}
