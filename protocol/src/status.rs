//! Gateway presence (with its device inventory) and the periodic heartbeat.
//!
//! Presence is published retained on `{root}/v1/gw/{gateway}/state`: `online` with the inventory when
//! the agent connects, and `offline` as the MQTT last will. The inventory tells the hub which asset
//! each device serves, its kind and where it stands, so a new gateway needs no registration step.
//! The heartbeat goes to `{root}/v1/gw/{gateway}/status` every few seconds.

use serde::{Deserialize, Serialize};

use crate::envelope::ClockState;
use crate::error::{Violation, ViolationKind};
use crate::id::{AssetId, BootId, DeviceId, GatewayId, ZoneId};
use crate::timestamp::Timestamp;

/// Most devices one gateway may declare.
pub const MAX_DEVICES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PresenceState {
    Online,
    Offline,
}

/// What kind of city asset a device serves; decides which rules apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AssetKind {
    Streetlight,
    Waterlogging,
    DustMonitor,
    SmartBin,
    ParkingCamera,
    EncroachmentCamera,
    RainGauge,
    // A roadside cabinet (its door contact reports `tamper`); no doc comment, so the JSON Schema
    // keeps one plain enum.
    Cabinet,
    WarningLight,
    Siren,
    Other,
}

impl AssetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Streetlight => "streetlight",
            AssetKind::Waterlogging => "waterlogging",
            AssetKind::DustMonitor => "dustMonitor",
            AssetKind::SmartBin => "smartBin",
            AssetKind::ParkingCamera => "parkingCamera",
            AssetKind::EncroachmentCamera => "encroachmentCamera",
            AssetKind::RainGauge => "rainGauge",
            AssetKind::Cabinet => "cabinet",
            AssetKind::WarningLight => "warningLight",
            AssetKind::Siren => "siren",
            AssetKind::Other => "other",
        }
    }
}

/// A GeoJSON point (WGS 84), as FIWARE's `location`: `{"type":"Point","coordinates":[lon, lat]}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "Point")]
pub struct Point {
    /// `[longitude, latitude]` in degrees.
    pub coordinates: [f64; 2],
}

impl Point {
    pub fn new(lon: f64, lat: f64) -> Self {
        Self {
            coordinates: [lon, lat],
        }
    }
    pub fn lon(&self) -> f64 {
        self.coordinates[0]
    }
    pub fn lat(&self) -> f64 {
        self.coordinates[1]
    }
    pub fn problem(&self) -> Option<String> {
        let (lon, lat) = (self.lon(), self.lat());
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Some(format!("longitude {lon} is outside -180..180"));
        }
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Some(format!("latitude {lat} is outside -90..90"));
        }
        None
    }
}

/// One device in a gateway's inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub asset: AssetId,
    pub kind: AssetKind,
    /// The device profile (register map) name, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Point>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// Expected seconds between reports (the poll interval); the hub's offline rule uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_s: Option<u32>,
}

/// Retained presence of a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Presence {
    pub v: u32,
    pub gateway: GatewayId,
    pub boot: BootId,
    pub state: PresenceState,
    /// When the agent connected (for `offline`, the last will, also the connect time).
    pub sent_at: Timestamp,
    pub clock: ClockState,
    /// Agent name and version, e.g. `edge-agent 0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Content hash of the configuration the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkState {
    /// Not polled yet, or failing but not yet long enough to count as down.
    Unknown,
    /// The device answered its last poll.
    Up,
    /// The device failed enough consecutive polls to count as down.
    Down,
}

/// Link state of one device as its gateway sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceLink {
    pub device: DeviceId,
    pub link: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    /// Failed requests since the agent started.
    #[serde(default)]
    pub failures: u64,
}

/// Store-and-forward state of the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpoolStats {
    /// Envelopes waiting to be sent.
    pub depth: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<u64>,
    /// Items dropped since the agent started to make room: a budget (or the disk) was full, so
    /// the oldest unsent went.
    pub dropped: u64,
    /// Items lost since the agent started because they could not be written to the spool at all
    /// (a disk error, or a disk full of nothing the spool could give up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The gateway's evidence (camera image) store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceStats {
    /// Images waiting to be uploaded to the hub, and their bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Bytes held in total (pending and already uploaded).
    pub stored_bytes: u64,
    /// Images uploaded since the agent started.
    pub uploaded: u64,
    /// Images deleted before they were uploaded, because the store was full (since start).
    pub dropped: u64,
    /// Camera requests refused (malformed, oversized, unknown camera), since start.
    pub rejected_requests: u64,
}

impl EvidenceStats {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Periodic health report of a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub v: u32,
    pub gateway: GatewayId,
    pub boot: BootId,
    pub sent_at: Timestamp,
    pub clock: ClockState,
    pub uptime_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_temp_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    #[serde(default)]
    pub spool: SpoolStats,
    /// Present on gateways with cameras.
    #[serde(default, skip_serializing_if = "EvidenceStats::is_empty")]
    pub evidence: EvidenceStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceLink>,
    /// The configuration the gateway runs and the last pushed version it did not keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::config::ConfigReport>,
}

pub(crate) fn check_version(v: u32) -> Result<(), Violation> {
    if v != crate::PROTOCOL_VERSION {
        return Err(Violation::new(
            "v",
            ViolationKind::UnsupportedVersion { found: v },
        ));
    }
    Ok(())
}

impl Presence {
    pub fn validate(&self) -> Result<(), Violation> {
        check_version(self.v)?;
        if self.devices.len() > MAX_DEVICES {
            return Err(Violation::new(
                "devices",
                ViolationKind::TooMany {
                    found: self.devices.len(),
                    max: MAX_DEVICES,
                },
            ));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(p) = d.location.and_then(|l| l.problem()) {
                return Err(Violation::new(
                    format!("devices[{i}].location"),
                    ViolationKind::BadValue(p),
                ));
            }
        }
        for (field, s) in [
            ("agent", &self.agent),
            ("configVersion", &self.config_version),
        ] {
            if s.as_ref().is_some_and(|s| s.chars().count() > 128) {
                return Err(Violation::new(
                    field,
                    ViolationKind::BadValue("longer than 128 characters".into()),
                ));
            }
        }
        Ok(())
    }
}

impl Heartbeat {
    pub fn validate(&self) -> Result<(), Violation> {
        check_version(self.v)?;
        if self.cpu_temp_c.is_some_and(|t| !t.is_finite()) {
            return Err(Violation::new(
                "cpuTempC",
                ViolationKind::BadValue("not finite".into()),
            ));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(Violation::new(
                "devices",
                ViolationKind::TooMany {
                    found: self.devices.len(),
                    max: MAX_DEVICES,
                },
            ));
        }
        if let Some(c) = &self.config {
            c.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_kind_names_are_their_wire_names() {
        for k in [
            AssetKind::Streetlight,
            AssetKind::Waterlogging,
            AssetKind::DustMonitor,
            AssetKind::SmartBin,
            AssetKind::ParkingCamera,
            AssetKind::EncroachmentCamera,
            AssetKind::RainGauge,
            AssetKind::Cabinet,
            AssetKind::WarningLight,
            AssetKind::Siren,
            AssetKind::Other,
        ] {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }
}
