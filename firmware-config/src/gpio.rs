//! Local signals on the Raspberry Pi's GPIO header: `[gpio]` picks the backend (the Pi's GPIO through
//! rppal, or files under `sim_dir` on a machine without one), each `[[gpio.input]]` is a contact
//! (cabinet door, float switch) reported as start/end events, each `[[gpio.counter]]` a pulse input
//! (tipping-bucket rain gauge) reported as an amount per interval, and each `[[gpio.output]]` a relay
//! (warning light, siren) the hub switches with a command. The spec as written, its validation, and
//! the resolved view the agent runs.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use protocol::{AssetId, AssetKind, DeviceId, DeviceInfo, MetricId, Unit, ZoneId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::device_check::DeviceIndex;
use crate::gateway::LocationSpec;
use crate::locate::{Path, Problem};
use crate::place::{Place, check_place, place};

/// Highest BCM GPIO number on the Raspberry Pi's 40-pin header.
pub const MAX_PIN: u32 = 27;
/// Longest debounce accepted, in ms.
pub const MAX_DEBOUNCE_MS: u32 = 5000;
/// Longest counter report interval accepted, in s.
pub const MAX_REPORT_S: u32 = 3600;
/// The metric every output is switched and reported by (`true` = on, relay energised).
pub const OUTPUT_METRIC: &str = "powerState";

/// The `[gpio]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioSpec {
    /// `rppal` (the Raspberry Pi's GPIO, the default) or `simulated` (files under `sim_dir`, for a
    /// machine without GPIO: tests and the demo).
    #[serde(default)]
    pub backend: GpioBackendKind,
    /// Simulated backend only: input pin N is the file `{sim_dir}/in/N` holding `0` or `1` (absent:
    /// the input's inactive level), output pin N is written to `{sim_dir}/out/N`. Default
    /// `{agent.data_dir}/gpio-sim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_dir: Option<PathBuf>,
    /// Contacts reported as start/end events (cabinet door, float switch).
    #[serde(default, rename = "input", skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<GpioInputSpec>,
    /// Pulse counters reported as an amount per interval (tipping-bucket rain gauge).
    #[serde(default, rename = "counter", skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<GpioCounterSpec>,
    /// Relay outputs switched by commands (warning light, siren).
    #[serde(default, rename = "output", skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<GpioOutputSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackendKind {
    /// The Raspberry Pi's GPIO (character device), through the rppal crate.
    #[default]
    Rppal,
    /// Files under `sim_dir`, driven from outside the agent.
    Simulated,
}

impl GpioBackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GpioBackendKind::Rppal => "rppal",
            GpioBackendKind::Simulated => "simulated",
        }
    }
}

/// The pin's built-in pull resistor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    Up,
    Down,
    /// No pull: the wiring drives the pin both ways.
    #[default]
    None,
}

/// What a digital input watches; decides its event type and asset kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A cabinet door contact: active (open) is a `tamper` condition of a `cabinet` asset.
    Door,
    /// A float switch at a waterlogging point: active is a `floatSwitch` condition.
    FloatSwitch,
    /// Any other contact: an `input` condition.
    Digital,
}

impl InputKind {
    /// The event type of its start/end events, also the metric of its state reading.
    pub fn event_type(self) -> &'static str {
        match self {
            InputKind::Door => "tamper",
            InputKind::FloatSwitch => "floatSwitch",
            InputKind::Digital => "input",
        }
    }

    pub fn asset_kind(self) -> AssetKind {
        match self {
            InputKind::Door => AssetKind::Cabinet,
            InputKind::FloatSwitch => AssetKind::Waterlogging,
            InputKind::Digital => AssetKind::Other,
        }
    }
}

/// Which edge of the (debounced) pin level counts as one pulse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    Rising,
    /// A contact to ground with a pull-up (the usual reed switch wiring) pulses low.
    #[default]
    Falling,
}

/// What a relay output drives; decides its asset kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    WarningLight,
    Siren,
    Relay,
}

impl OutputKind {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::WarningLight => "warning_light",
            OutputKind::Siren => "siren",
            OutputKind::Relay => "relay",
        }
    }

    pub fn asset_kind(self) -> AssetKind {
        match self {
            OutputKind::WarningLight => AssetKind::WarningLight,
            OutputKind::Siren => AssetKind::Siren,
            OutputKind::Relay => AssetKind::Other,
        }
    }
}

/// A digital input: start/end events when it turns active/inactive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioInputSpec {
    /// Unique within the gateway (with the Modbus and MQTT devices).
    pub id: DeviceId,
    pub asset: AssetId,
    pub kind: InputKind,
    /// BCM GPIO number, 0..=27 (not the physical pin number of the header).
    #[schemars(range(max = 27))]
    pub pin: u32,
    #[serde(default)]
    pub pull: Pull,
    /// Active when the pin reads low (a contact to ground with a pull-up).
    #[serde(default)]
    pub active_low: bool,
    /// A level must hold this long to count (contacts bounce).
    #[serde(default = "default_input_debounce_ms")]
    pub debounce_ms: u32,
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
}

/// A pulse counter: every `report_s` a reading of the amount counted in the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioCounterSpec {
    pub id: DeviceId,
    pub asset: AssetId,
    /// BCM GPIO number, 0..=27.
    #[schemars(range(max = 27))]
    pub pin: u32,
    #[serde(default)]
    pub edge: Edge,
    #[serde(default)]
    pub pull: Pull,
    /// A level must hold this long to count (a tipping bucket's reed switch bounces).
    #[serde(default = "default_counter_debounce_ms")]
    pub debounce_ms: u32,
    /// The amount one pulse stands for, e.g. 0.2 (mm of rain per tip); > 0.
    pub per_pulse: f64,
    #[serde(default = "default_counter_metric")]
    pub metric: MetricId,
    #[serde(default = "default_counter_unit")]
    #[schemars(with = "String")]
    pub unit: Unit,
    /// Seconds per reading; each reading is the amount counted since the previous one (0 when
    /// nothing was counted).
    #[serde(default = "default_report_s")]
    #[schemars(range(min = 1, max = 3600))]
    pub report_s: u32,
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
}

/// A relay output, switched by a command writing `powerState` (true = on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpioOutputSpec {
    pub id: DeviceId,
    pub asset: AssetId,
    pub kind: OutputKind,
    /// BCM GPIO number, 0..=27.
    #[schemars(range(max = 27))]
    pub pin: u32,
    /// On drives the pin low (most relay boards).
    #[serde(default)]
    pub active_low: bool,
    /// The safe state: set when the agent starts and again when it stops.
    #[serde(default)]
    pub initial: bool,
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
}

fn default_input_debounce_ms() -> u32 {
    50
}

fn default_counter_debounce_ms() -> u32 {
    20
}

fn default_counter_metric() -> MetricId {
    MetricId::new("rainfall").unwrap_or_else(|_| unreachable!("valid literal"))
}

fn default_counter_unit() -> Unit {
    Unit::new("mm").unwrap_or_else(|_| unreachable!("valid literal"))
}

fn default_report_s() -> u32 {
    60
}

/// The resolved backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpioBackend {
    Rppal,
    Simulated { dir: PathBuf },
}

impl GpioBackend {
    pub fn kind(&self) -> GpioBackendKind {
        match self {
            GpioBackend::Rppal => GpioBackendKind::Rppal,
            GpioBackend::Simulated { .. } => GpioBackendKind::Simulated,
        }
    }
}

/// A resolved `[gpio]` section: backend and devices placed on the map.
#[derive(Debug, Clone)]
pub struct Gpio {
    pub backend: GpioBackend,
    pub inputs: Vec<GpioInput>,
    pub counters: Vec<GpioCounter>,
    pub outputs: Vec<GpioOutput>,
}

#[derive(Debug, Clone)]
pub struct GpioInput {
    pub spec: GpioInputSpec,
    /// The validated pin number.
    pub pin: u8,
    pub info: DeviceInfo,
}

#[derive(Debug, Clone)]
pub struct GpioCounter {
    pub spec: GpioCounterSpec,
    pub pin: u8,
    pub info: DeviceInfo,
}

#[derive(Debug, Clone)]
pub struct GpioOutput {
    pub spec: GpioOutputSpec,
    pub pin: u8,
    pub info: DeviceInfo,
}

fn pin_of(pin: u32) -> Result<u8, String> {
    u8::try_from(pin)
        .ok()
        .filter(|p| u32::from(*p) <= MAX_PIN)
        .ok_or_else(|| format!("gpio pin {pin} is out of range"))
}

impl Gpio {
    /// Resolves a (validated) section; `data_dir` is the agent's, for the default `sim_dir`.
    pub fn resolve(spec: &GpioSpec, loc: &LocationSpec, data_dir: &FsPath) -> Result<Gpio, String> {
        let backend = match spec.backend {
            GpioBackendKind::Rppal => GpioBackend::Rppal,
            GpioBackendKind::Simulated => GpioBackend::Simulated {
                dir: spec
                    .sim_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("gpio-sim")),
            },
        };
        let profile = format!("gpio:{}", spec.backend.as_str());
        let inputs = spec
            .inputs
            .iter()
            .map(|d| {
                Ok(GpioInput {
                    pin: pin_of(d.pin)?,
                    info: place!(d).info(loc, &d.id, &d.asset, d.kind.asset_kind(), &profile, None),
                    spec: d.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let counters = spec
            .counters
            .iter()
            .map(|d| {
                Ok(GpioCounter {
                    pin: pin_of(d.pin)?,
                    info: place!(d).info(
                        loc,
                        &d.id,
                        &d.asset,
                        AssetKind::RainGauge,
                        &profile,
                        Some(d.report_s),
                    ),
                    spec: d.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let outputs = spec
            .outputs
            .iter()
            .map(|d| {
                Ok(GpioOutput {
                    pin: pin_of(d.pin)?,
                    info: place!(d).info(loc, &d.id, &d.asset, d.kind.asset_kind(), &profile, None),
                    spec: d.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Gpio {
            backend,
            inputs,
            counters,
            outputs,
        })
    }

    /// Every GPIO device's inventory entry.
    pub fn inventory(&self) -> impl Iterator<Item = &DeviceInfo> {
        let inputs = self.inputs.iter().map(|d| &d.info);
        let counters = self.counters.iter().map(|d| &d.info);
        let outputs = self.outputs.iter().map(|d| &d.info);
        inputs.chain(counters).chain(outputs)
    }
}

/// Checks the `[gpio]` section; device and asset ids share `index` with the other devices.
pub fn check_gpio(spec: &GpioSpec, index: &mut DeviceIndex, out: &mut Vec<Problem>) {
    let at = Path::root().key("gpio");
    if spec.backend == GpioBackendKind::Rppal && spec.sim_dir.is_some() {
        out.push(Problem::error(
            at.key("sim_dir"),
            "sim_dir applies to backend = \"simulated\" only; this [gpio] uses the Raspberry Pi's GPIO (backend = \"rppal\", the default)",
        ));
    }
    if spec
        .sim_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        out.push(Problem::error(at.key("sim_dir"), "sim_dir is empty"));
    }
    if spec.inputs.is_empty() && spec.counters.is_empty() && spec.outputs.is_empty() {
        out.push(Problem::warning(
            at.clone(),
            "[gpio] has no [[gpio.input]], [[gpio.counter]] or [[gpio.output]]",
        ));
    }
    let mut pins: HashMap<u32, Path> = HashMap::new();
    let mut device = |d: Device<'_>, out: &mut Vec<Problem>| {
        index.claim(d.id, d.asset, &d.at, out);
        check_pin(d.pin, &d.at, &mut pins, out);
        check_place(&d.place, &d.at, out);
        if let Some((ms, max)) = d.debounce_ms
            && ms > max
        {
            out.push(Problem::error(
                d.at.key("debounce_ms"),
                format!("debounce_ms is {ms}; expected 0..={max}"),
            ));
        }
    };
    for (i, d) in spec.inputs.iter().enumerate() {
        let at = at.at("input", i);
        device(
            Device {
                id: &d.id,
                asset: &d.asset,
                pin: d.pin,
                debounce_ms: Some((d.debounce_ms, MAX_DEBOUNCE_MS)),
                place: place!(d),
                at,
            },
            out,
        );
    }
    for (i, d) in spec.counters.iter().enumerate() {
        let at = at.at("counter", i);
        device(
            Device {
                id: &d.id,
                asset: &d.asset,
                pin: d.pin,
                // A pulse shorter than the debounce is never counted; tips are ~100 ms.
                debounce_ms: Some((d.debounce_ms, 1000)),
                place: place!(d),
                at: at.clone(),
            },
            out,
        );
        if !(d.per_pulse.is_finite() && d.per_pulse > 0.0) {
            out.push(Problem::error(
                at.key("per_pulse"),
                format!(
                    "per_pulse is {}; expected the amount one pulse stands for, a number > 0 (e.g. 0.2 mm of rain per tip)",
                    d.per_pulse
                ),
            ));
        }
        if !(1..=MAX_REPORT_S).contains(&d.report_s) {
            out.push(Problem::error(
                at.key("report_s"),
                format!("report_s is {}; expected 1..={MAX_REPORT_S}", d.report_s),
            ));
        }
    }
    for (i, d) in spec.outputs.iter().enumerate() {
        let at = at.at("output", i);
        device(
            Device {
                id: &d.id,
                asset: &d.asset,
                pin: d.pin,
                debounce_ms: None,
                place: place!(d),
                at,
            },
            out,
        );
    }
}

struct Device<'a> {
    id: &'a DeviceId,
    asset: &'a AssetId,
    pin: u32,
    /// The value and its maximum.
    debounce_ms: Option<(u32, u32)>,
    place: Place<'a>,
    at: Path,
}

fn check_pin(pin: u32, at: &Path, pins: &mut HashMap<u32, Path>, out: &mut Vec<Problem>) {
    let key = at.key("pin");
    if pin > MAX_PIN {
        out.push(Problem::error(
            key,
            format!(
                "pin {pin} is not a GPIO of the Raspberry Pi's header; expected a BCM GPIO number 0..={MAX_PIN} (BCM numbering, not the physical pin number)"
            ),
        ));
        return;
    }
    if let Some(first) = pins.get(&pin) {
        out.push(
            Problem::error(key, format!("pin {pin} is used twice in [gpio]"))
                .related(first.clone()),
        );
        return;
    }
    if pin <= 1 {
        out.push(Problem::warning(
            key.clone(),
            format!(
                "pin {pin} (ID_SD/ID_SC) is reserved for a HAT's ID EEPROM; prefer another pin"
            ),
        ));
    }
    pins.insert(pin, key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_events_and_assets() {
        assert_eq!(InputKind::Door.event_type(), "tamper");
        assert_eq!(InputKind::FloatSwitch.event_type(), "floatSwitch");
        assert_eq!(InputKind::Digital.event_type(), "input");
        assert_eq!(InputKind::Door.asset_kind(), AssetKind::Cabinet);
        assert_eq!(InputKind::FloatSwitch.asset_kind(), AssetKind::Waterlogging);
        assert_eq!(OutputKind::Siren.asset_kind(), AssetKind::Siren);
        for k in [InputKind::Door, InputKind::FloatSwitch, InputKind::Digital] {
            assert!(protocol::EventType::new(k.event_type()).is_ok());
            assert!(MetricId::new(k.event_type()).is_ok());
        }
        assert!(MetricId::new(OUTPUT_METRIC).is_ok());
    }

    #[test]
    fn pins_resolve_only_in_range() {
        assert_eq!(pin_of(0), Ok(0));
        assert_eq!(pin_of(27), Ok(27));
        assert!(pin_of(28).is_err());
        assert!(pin_of(300).is_err());
    }
}
