//! The resolved gateway configuration the agent runs: every default applied, every device joined
//! with its profile, effective request knobs, read plan and estimated cycle time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use protocol::{AssetId, AssetKind, DeviceId, DeviceInfo, GatewayId, Point, ZoneId};

use crate::decode::{Decoded, decode_response};
use crate::diagnostic::Diagnostic;
use crate::field::Field;
use crate::gateway::{AgentSpec, GatewaySpec};
use crate::link::{Broker, Link, Uplink};
use crate::plan::{ReadRequest, plan_reads};
use crate::profile::{Profile, RequestKnobs};
use crate::profile_set::ProfileSet;
use crate::register::Raw;
use crate::timing::BusTiming;

/// A validated gateway configuration, ready to run.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// The configuration as written.
    pub spec: GatewaySpec,
    pub gateway: GatewayId,
    pub uplink: Uplink,
    pub agent: AgentSpec,
    pub buses: Vec<Bus>,
    /// Self-publishing devices, by broker.
    pub mqtt_sources: Vec<crate::mqtt_source::MqttSource>,
    /// Cameras pushing events over HTTP, with the endpoint and evidence settings; `None` without
    /// cameras.
    pub cameras: Option<crate::camera::CameraSetup>,
    /// Local rules.
    pub rules: Vec<crate::rules::Rule>,
    /// Local signals on the GPIO header, when the file has a `[gpio]` section.
    pub gpio: Option<crate::gpio::Gpio>,
    /// Problems that did not stop loading (e.g. a bus close to saturation).
    pub warnings: Vec<Diagnostic>,
}

impl GatewayConfig {
    /// Every device, with its bus.
    pub fn devices(&self) -> impl Iterator<Item = (&Bus, &Device)> {
        self.buses
            .iter()
            .flat_map(|b| b.devices.iter().map(move |d| (b, d)))
    }

    /// The inventory for the presence message.
    pub fn inventory(&self) -> Vec<DeviceInfo> {
        let polled = self.devices().map(|(_, d)| d.info());
        let published = self
            .mqtt_sources
            .iter()
            .flat_map(|s| s.devices.iter().map(|d| d.info.clone()));
        let cameras = self
            .cameras
            .iter()
            .flat_map(|c| c.cameras.iter().map(|c| c.info.clone()));
        let local = self.gpio.iter().flat_map(|g| g.inventory().cloned());
        polled
            .chain(published)
            .chain(cameras)
            .chain(local)
            .collect()
    }
}

/// One bus and its devices, polled by one task.
#[derive(Debug, Clone)]
pub struct Bus {
    pub name: String,
    pub link: Link,
    pub timeout_ms: u32,
    pub pause_ms: u32,
    pub timing: BusTiming,
    pub devices: Vec<Device>,
}

impl Bus {
    /// Share of the bus's time the devices' polling needs (1.0 = saturated).
    pub fn utilisation(&self) -> f64 {
        self.devices
            .iter()
            .map(|d| d.cycle_ms / f64::from(d.poll_ms.max(1)))
            .sum()
    }
}

/// One device joined with its profile.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: DeviceId,
    /// Modbus unit id.
    pub unit: u8,
    pub asset: AssetId,
    pub kind: AssetKind,
    pub profile: Arc<Profile>,
    /// The profile's request knobs with the device's overrides.
    pub knobs: RequestKnobs,
    pub location: Point,
    pub road_segment: ZoneId,
    pub grid: ZoneId,
    pub zone: Option<ZoneId>,
    pub poll_ms: u32,
    pub params: BTreeMap<String, f64>,
    /// The requests of one poll cycle.
    pub requests: Vec<ReadRequest>,
    /// Estimated bus time of one poll cycle.
    pub cycle_ms: f64,
}

impl Device {
    /// Decodes the device's `response` to one of its `requests`.
    pub fn decode(&self, request: &ReadRequest, response: Raw<'_>) -> Vec<Decoded> {
        decode_response(&self.profile, request, response)
    }

    /// The derived values of one cycle's decoded fields.
    pub fn derive(&self, decoded: &[Decoded]) -> Vec<Decoded> {
        crate::derive::derive(&self.profile, &self.params, decoded)
    }

    /// The profile field of `metric` (e.g. to check `writable` before a command).
    pub fn field(&self, metric: &str) -> Option<&Field> {
        self.profile.field(metric).map(|(_, f)| f)
    }

    /// This device's entry in the gateway's presence inventory.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            device: self.id.clone(),
            asset: self.asset.clone(),
            kind: self.kind,
            profile: Some(self.profile.name.clone()),
            location: Some(self.location),
            road_segment: Some(self.road_segment.clone()),
            grid: Some(self.grid.clone()),
            zone: self.zone.clone(),
            report_interval_s: Some(self.poll_ms.div_ceil(1000)),
        }
    }
}

/// Joins a (validated) spec with its profiles. Fails with a message only if the spec was not
/// validated first: an unknown profile, a bus without its port or host, a bad broker.
pub fn resolve(
    file: PathBuf,
    spec: GatewaySpec,
    profiles: &ProfileSet,
) -> Result<GatewayConfig, String> {
    let u = &spec.uplink;
    let uplink = Uplink {
        broker: Broker::parse(&u.broker)?,
        client_id: u
            .client_id
            .clone()
            .unwrap_or_else(|| spec.gateway.to_string()),
        username: u.username.clone(),
        password: u.password.clone(),
        password_file: u.password_file.clone(),
        key_file: u.key_file.clone(),
        topic_root: u.topic_root.clone(),
        keep_alive_s: u.keep_alive_s,
        tls: u.tls.clone(),
    };
    let loc = &spec.location;
    let mut buses = Vec::new();
    for b in &spec.buses {
        let timing = b.timing();
        let mut devices = Vec::new();
        for d in &b.devices {
            let profile = profiles
                .get(&d.profile)
                .ok_or_else(|| format!("unknown profile {:?}", d.profile))?;
            let knobs = d.overrides.apply(&profile.request);
            let requests = plan_reads(&profile, &knobs);
            devices.push(Device {
                id: d.id.clone(),
                unit: d.unit,
                asset: d.asset.clone(),
                kind: profile.kind,
                knobs,
                location: Point::new(d.lon.unwrap_or(loc.lon), d.lat.unwrap_or(loc.lat)),
                road_segment: d
                    .road_segment
                    .clone()
                    .unwrap_or_else(|| loc.road_segment.clone()),
                grid: d.grid.clone().unwrap_or_else(|| loc.grid.clone()),
                zone: d.zone.clone().or_else(|| loc.zone.clone()),
                poll_ms: d.poll_ms,
                params: d.params.clone(),
                cycle_ms: timing.cycle_ms(&requests),
                requests,
                profile,
            });
        }
        let link = Link::of(b)?;
        buses.push(Bus {
            name: b.name.clone(),
            link,
            timeout_ms: b.timeout_ms,
            pause_ms: b.pause_ms,
            timing,
            devices,
        });
    }
    let mqtt_sources = spec
        .mqtt_sources
        .iter()
        .map(|m| crate::mqtt_source::MqttSource::resolve(m, spec.gateway.as_str(), loc))
        .collect::<Result<Vec<_>, _>>()?;
    let cameras = crate::camera::CameraSetup::resolve(
        &spec.camera_server.clone().unwrap_or_default(),
        &spec.evidence.clone().unwrap_or_default(),
        &spec.cameras,
        loc,
        &spec.agent.data_dir,
    )?;
    let rules = spec
        .rules
        .iter()
        .map(crate::rules::Rule::resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let gpio = spec
        .gpio
        .as_ref()
        .map(|g| crate::gpio::Gpio::resolve(g, loc, &spec.agent.data_dir))
        .transpose()?;
    Ok(GatewayConfig {
        file,
        mqtt_sources,
        cameras,
        rules,
        gpio,
        gateway: spec.gateway.clone(),
        uplink,
        agent: spec.agent.clone(),
        buses,
        spec,
        warnings: Vec::new(),
    })
}
