//! One entry of a profile's register map ([`Field`]) and one computed value ([`Derived`]).

use std::collections::BTreeMap;

use protocol::{MetricId, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::profile::{ByteOrder, DataType, Table};

/// One metric read from the device's registers.
///
/// The value is `raw * scale + offset` for numeric types; with `enum` labels it is the label of the
/// raw code instead. A value outside `range` is still sent, marked bad `outOfRange`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The metric name, FIWARE-style where one exists (`activePower`, `pm10`, `fillingLevel`).
    pub metric: MetricId,
    pub table: Table,
    /// Register (or coil) address as written in the manual; see `request.address_base`.
    pub address: u32,
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Length in registers; only for `type = "string"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u16>,
    /// Bit number 0..=15 (0 = least significant); only for `type = "bit"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit: Option<u8>,
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// value = raw * scale + offset.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f64,
    /// Unit of the scaled value, UCUM-style: `V`, `A`, `W`, `kWh`, `ug/m3`, `dB(A)`, `Cel`, `%`, `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub unit: Option<Unit>,
    /// Plausible physical range `[min, max]` of the scaled value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Labels of raw codes, e.g. `{ 0 = "off", 1 = "on", 2 = "fault" }`; an unknown code is undecodable.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<i64, String>>,
    /// Report on change: after a reading is sent, the next is sent only when the value moved by more
    /// than this (in the field's unit; for booleans and labels, when it changed at all), when its
    /// quality changed, or after `agent.max_silent_s`. Absent: every poll is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
    /// The hub may command this field (coils and holding registers only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
    /// What the manual says about the register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Field {
    /// Registers (or bits) the field occupies.
    pub fn size(&self) -> u16 {
        self.data_type
            .fixed_len()
            .unwrap_or_else(|| self.count.unwrap_or(1))
    }

    /// Address on the wire given the address base, if it fits 0..=65535 with the whole length.
    pub fn wire_address(&self, address_base: u16) -> Option<u16> {
        let start = self.address.checked_sub(u32::from(address_base))?;
        let end = start + u32::from(self.size().max(1)) - 1;
        if end > u32::from(u16::MAX) {
            None
        } else {
            u16::try_from(start).ok()
        }
    }

    /// The plausible range, if one is given.
    pub fn range(&self) -> Option<(f64, f64)> {
        self.range.map(|[lo, hi]| (lo, hi))
    }

    /// The field decodes to a number (numeric type without enum labels).
    pub fn is_numeric(&self) -> bool {
        self.data_type.is_numeric() && self.labels.is_none()
    }
}

/// How a derived value is computed from its source `from` and the device parameter `param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Formula {
    /// `max(param - from, 0) * scale + offset`: depth below a sensor mounted `param` above the ground.
    HeightMinus,
    /// `from / param * scale + offset`: e.g. power as a share of the rated power.
    Ratio,
    /// `from * param * scale + offset`: e.g. a per-device calibration factor.
    Product,
}

impl Formula {
    pub fn as_str(self) -> &'static str {
        match self {
            Formula::HeightMinus => "height_minus",
            Formula::Ratio => "ratio",
            Formula::Product => "product",
        }
    }
}

/// A metric computed from a field and a per-device parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Derived {
    pub metric: MetricId,
    /// The numeric field the value is computed from.
    pub from: MetricId,
    pub formula: Formula,
    /// Name of the parameter every device must give in its `params` table.
    pub param: String,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub unit: Option<Unit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Report on change: after a reading is sent, the next is sent only when the value moved by more
    /// than this (in the field's unit; for booleans and labels, when it changed at all), when its
    /// quality changed, or after `agent.max_silent_s`. Absent: every poll is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Derived {
    pub fn range(&self) -> Option<(f64, f64)> {
        self.range.map(|[lo, hi]| (lo, hi))
    }
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_false(b: &bool) -> bool {
    !*b
}
