//! Where a device stands. Every kind of device (Modbus, MQTT, camera, GPIO) may give its own `lon`,
//! `lat`, `road_segment`, `grid` and `zone`, each falling back to the gateway's `[location]`. The
//! fields are repeated in each spec because serde's `flatten` does not work with
//! `deny_unknown_fields`, which the precise configuration errors rely on; the logic is here, once.

use protocol::{AssetId, AssetKind, DeviceId, DeviceInfo, Point, ZoneId};

use crate::gateway::LocationSpec;
use crate::locate::{Path, Problem};

/// Where a device stands: its own place where given, the gateway's otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub lon: Option<f64>,
    pub lat: Option<f64>,
    pub road_segment: &'a Option<ZoneId>,
    pub grid: &'a Option<ZoneId>,
    pub zone: &'a Option<ZoneId>,
}

impl Place<'_> {
    pub fn info(
        &self,
        loc: &LocationSpec,
        device: &DeviceId,
        asset: &AssetId,
        kind: AssetKind,
        profile: &str,
        report_interval_s: Option<u32>,
    ) -> DeviceInfo {
        DeviceInfo {
            device: device.clone(),
            asset: asset.clone(),
            kind,
            profile: Some(profile.to_owned()),
            location: Some(Point::new(
                self.lon.unwrap_or(loc.lon),
                self.lat.unwrap_or(loc.lat),
            )),
            road_segment: Some(
                self.road_segment
                    .clone()
                    .unwrap_or_else(|| loc.road_segment.clone()),
            ),
            grid: Some(self.grid.clone().unwrap_or_else(|| loc.grid.clone())),
            zone: self.zone.clone().or_else(|| loc.zone.clone()),
            report_interval_s,
        }
    }
}

/// The [`Place`] of any device spec with `lon`, `lat`, `road_segment`, `grid` and `zone` fields.
macro_rules! place {
    ($d:expr) => {
        $crate::place::Place {
            lon: $d.lon,
            lat: $d.lat,
            road_segment: &$d.road_segment,
            grid: &$d.grid,
            zone: &$d.zone,
        }
    };
}

pub(crate) use place;

/// Checks a device's own coordinates: both or neither, and on the globe.
pub fn check_place(p: &Place<'_>, at: &Path, out: &mut Vec<Problem>) {
    match (p.lon, p.lat) {
        (Some(lon), Some(lat)) => {
            if let Some(msg) = Point::new(lon, lat).problem() {
                out.push(Problem::error(
                    at.key(if msg.starts_with("lat") { "lat" } else { "lon" }),
                    msg,
                ));
            }
        }
        (None, None) => {}
        (Some(_), None) => out.push(Problem::error(at.key("lon"), "lon needs lat as well")),
        (None, Some(_)) => out.push(Problem::error(at.key("lat"), "lat needs lon as well")),
    }
}
