//! Validation of the devices on one bus: unique ids, unit ids, profile, location, parameters,
//! request overrides, and whether the bus has the time to poll them as often as asked.

use std::collections::HashMap;

use protocol::{AssetId, DeviceId};

use crate::gateway::{BusKind, BusSpec, DeviceSpec};
use crate::locate::{Path, Problem};
use crate::plan::plan_reads;
use crate::profile::Profile;
use crate::profile_check::{check_knobs, fields_fit};
use crate::profile_set::ProfileSet;
use crate::timing::UTILISATION_WARNING;

/// Shortest poll interval accepted.
pub const MIN_POLL_MS: u32 = 100;

/// Device and asset ids seen so far in the gateway, with where.
#[derive(Debug, Default)]
pub struct DeviceIndex {
    devices: HashMap<DeviceId, Path>,
    assets: HashMap<AssetId, Path>,
}

impl DeviceIndex {
    /// Records a device and its asset at `at`, reporting either id used before.
    pub fn claim(&mut self, id: &DeviceId, asset: &AssetId, at: &Path, out: &mut Vec<Problem>) {
        if let Some(first) = self.devices.get(id) {
            out.push(
                Problem::error(
                    at.key("id"),
                    format!("device id {:?} is used twice", id.as_str()),
                )
                .related(first.clone()),
            );
        } else {
            self.devices.insert(id.clone(), at.key("id"));
        }
        if let Some(first) = self.assets.get(asset) {
            out.push(
                Problem::error(
                    at.key("asset"),
                    format!("asset id {:?} is used twice", asset.as_str()),
                )
                .related(first.clone()),
            );
        } else {
            self.assets.insert(asset.clone(), at.key("asset"));
        }
    }
}

/// Checks the devices of `bus` (at path `at`) and the bus's time budget.
pub fn check_bus_devices(
    bus: &BusSpec,
    at: &Path,
    profiles: &ProfileSet,
    index: &mut DeviceIndex,
    out: &mut Vec<Problem>,
) {
    let timing = bus.timing();
    let mut units: HashMap<u8, Path> = HashMap::new();
    let mut utilisation = 0.0;
    let mut load: Vec<String> = Vec::new();
    for (j, d) in bus.devices.iter().enumerate() {
        let at = at.at("device", j);
        index.claim(&d.id, &d.asset, &at, out);
        if let Some(first) = units.get(&d.unit) {
            let msg = format!("unit {} is used twice on bus {:?}", d.unit, bus.name);
            out.push(Problem::error(at.key("unit"), msg).related(first.clone()));
        } else {
            units.insert(d.unit, at.key("unit"));
        }
        check_unit(bus.kind, d.unit, &at, out);
        crate::place::check_place(&crate::place::place!(d), &at, out);
        if d.poll_ms < MIN_POLL_MS {
            out.push(Problem::error(
                at.key("poll_ms"),
                format!("poll_ms is {}; expected at least {MIN_POLL_MS}", d.poll_ms),
            ));
        }
        let Some(profile) = profiles.get(&d.profile) else {
            let known: Vec<&str> = profiles.names().collect();
            let msg = format!(
                "unknown profile {:?}; known profiles: {}",
                d.profile,
                known.join(", ")
            );
            out.push(Problem::error(at.key("profile"), msg));
            continue;
        };
        check_params(d, &profile, &at, out);
        let knobs = d.overrides.apply(&profile.request);
        let overrides = at.key("overrides");
        check_knobs(&knobs, &overrides, out);
        out.extend(fields_fit(&profile, &knobs, &overrides));
        if d.overrides.address_base.is_some() {
            for f in profile
                .fields
                .iter()
                .filter(|f| f.wire_address(knobs.address_base).is_none())
            {
                let msg = format!(
                    "field {:?} at address {} does not fit address_base {}",
                    f.metric.as_str(),
                    f.address,
                    knobs.address_base
                );
                out.push(Problem::error(overrides.key("address_base"), msg));
            }
        }
        let requests = plan_reads(&profile, &knobs);
        let cycle_ms = timing.cycle_ms(&requests);
        if f64::from(d.poll_ms) < cycle_ms && d.poll_ms >= MIN_POLL_MS {
            let msg = format!(
                "poll_ms is {} but one poll cycle of this device takes ~{cycle_ms:.1} ms on this bus ({} requests); expected poll_ms ≥ {}",
                d.poll_ms,
                requests.len(),
                cycle_ms.ceil()
            );
            out.push(Problem::error(at.key("poll_ms"), msg));
        }
        utilisation += cycle_ms / f64::from(d.poll_ms.max(1));
        load.push(format!("{} {cycle_ms:.0} ms/{} ms", d.id, d.poll_ms));
    }
    if utilisation > UTILISATION_WARNING {
        let line = bus
            .serial_line()
            .map_or_else(|| bus.kind.as_str().to_owned(), |l| l.to_string());
        let msg = format!(
            "bus {:?} ({line}) is busy {:.0} % of the time (cycle/poll: {}); {}",
            bus.name,
            utilisation * 100.0,
            load.join(", "),
            "lengthen poll_ms, raise the baud rate or split the bus"
        );
        let at = at.key("name");
        out.push(if utilisation > 1.0 {
            Problem::error(at, msg)
        } else {
            Problem::warning(at, msg)
        });
    }
}

fn check_unit(kind: BusKind, unit: u8, at: &Path, out: &mut Vec<Problem>) {
    let ok = match kind {
        BusKind::Tcp => unit <= 247 || unit == 255,
        BusKind::Rtu | BusKind::RtuOverTcp => (1..=247).contains(&unit),
    };
    if !ok {
        let expected = if kind == BusKind::Tcp {
            "0..=247 or 255 on tcp"
        } else {
            "1..=247 (0 is broadcast)"
        };
        out.push(Problem::error(
            at.key("unit"),
            format!("unit {unit} is out of range; expected {expected}"),
        ));
    }
}

fn check_params(d: &DeviceSpec, profile: &Profile, at: &Path, out: &mut Vec<Problem>) {
    for derived in &profile.derived {
        if !d.params.contains_key(&derived.param) {
            let msg = format!(
                "profile {:?} computes {} from parameter {:?}; add params = {{ {} = ... }}",
                profile.name,
                derived.metric.as_str(),
                derived.param,
                derived.param
            );
            out.push(Problem::error(at.key("params"), msg));
        }
    }
    for (name, value) in &d.params {
        let path = at.key("params").key(name);
        if !value.is_finite() {
            out.push(Problem::error(
                path.clone(),
                format!("parameter {name:?} is {value}; expected a finite number"),
            ));
        }
        if !profile.required_params().any(|p| p == name) {
            let msg = format!(
                "parameter {name:?} is not used by profile {:?}",
                profile.name
            );
            out.push(Problem::warning(path, msg));
        }
    }
}
