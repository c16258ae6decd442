//! Device profiles: the register map of one device model, written once from the vendor's manual and
//! shared by every gateway that polls such a device (in the spirit of Telegraf's modbus input).
//!
//! A profile lists [`Field`]s (one metric each: table, address, data type, byte order, scale, unit,
//! plausible range, optional enum labels) and [`Derived`] values computed from fields and per-device
//! parameters. [`RequestKnobs`] tune how the read plan groups fields into Modbus requests.

use protocol::AssetKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::field::{Derived, Field, Formula};

/// Most registers one Modbus read may return (function codes 3 and 4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one Modbus read may return (function codes 1 and 2).
pub const MAX_READ_BITS: u16 = 2000;

/// A device model's register map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Device profile",
    description = "The register map of one device model (profiles/NAME.toml)."
)]
pub struct Profile {
    /// Profile name; must equal the file stem (`sl-100` for `sl-100.toml`).
    pub name: String,
    /// What the device is, for people: vendor, model, link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The kind of city asset this device serves.
    pub kind: AssetKind,
    /// How to group fields into requests; every knob has a default.
    #[serde(default)]
    pub request: RequestKnobs,
    /// The registers to read, one metric each.
    #[serde(default, rename = "field")]
    pub fields: Vec<Field>,
    /// Values computed from fields and per-device parameters.
    #[serde(default, rename = "derived", skip_serializing_if = "Vec::is_empty")]
    pub derived: Vec<Derived>,
}

impl Profile {
    /// The field for `metric`, with its index.
    pub fn field(&self, metric: &str) -> Option<(usize, &Field)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.metric.as_str() == metric)
    }

    /// Parameter names the derived values need from each device's `params`.
    pub fn required_params(&self) -> impl Iterator<Item = &str> {
        self.derived.iter().map(|d| d.param.as_str())
    }
}

/// Read-plan knobs of a profile; a device may override each in `[bus.device.overrides]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestKnobs {
    /// Most registers per read request (1..=125).
    pub max_registers: u16,
    /// Most bits per coil or discrete-input read request (1..=2000).
    pub max_bits: u16,
    /// Merge two fields into one request when at most this many unused registers (or bits) lie
    /// between them. 0 reads only contiguous runs, which is safe for devices that reject reads of
    /// unmapped registers.
    pub max_gap: u16,
    /// Device quirk: read every field with its own request.
    pub one_request_per_field: bool,
    /// 0: addresses are written as on the wire. 1: addresses are 1-based as in the manual, and 1 is
    /// subtracted before sending.
    pub address_base: u16,
    /// Wait this long after connecting before the first request (some TCP gateways need it).
    pub pause_after_connect_ms: u32,
}

impl Default for RequestKnobs {
    fn default() -> Self {
        Self {
            max_registers: MAX_READ_REGISTERS,
            max_bits: MAX_READ_BITS,
            max_gap: 0,
            one_request_per_field: false,
            address_base: 0,
            pause_after_connect_ms: 0,
        }
    }
}

/// Per-device overrides of a profile's [`RequestKnobs`]; absent knobs keep the profile's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_registers: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bits: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_request_per_field: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_base: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_connect_ms: Option<u32>,
}

impl RequestOverrides {
    /// The profile's knobs with these overrides applied.
    pub fn apply(&self, base: &RequestKnobs) -> RequestKnobs {
        RequestKnobs {
            max_registers: self.max_registers.unwrap_or(base.max_registers),
            max_bits: self.max_bits.unwrap_or(base.max_bits),
            max_gap: self.max_gap.unwrap_or(base.max_gap),
            one_request_per_field: self
                .one_request_per_field
                .unwrap_or(base.one_request_per_field),
            address_base: self.address_base.unwrap_or(base.address_base),
            pause_after_connect_ms: self
                .pause_after_connect_ms
                .unwrap_or(base.pause_after_connect_ms),
        }
    }
}

/// The four Modbus data tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write bits (function codes 1, 5, 15).
    Coil,
    /// Read-only bits (function code 2).
    DiscreteInput,
    /// Read-only 16-bit registers (function code 4).
    Input,
    /// Read/write 16-bit registers (function codes 3, 6, 16).
    Holding,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }

    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Coils and holding registers can be written.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    /// The Modbus function code that reads this table.
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::DiscreteInput => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// Most items one read of this table may return.
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }
}

/// How a field's registers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Fixed-length text of `count` registers (two bytes each); trailing NULs and spaces are trimmed.
    String,
    /// Bit `bit` (0 = least significant) of one 16-bit register.
    Bit,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
            DataType::Bit => "bit",
        }
    }

    /// Registers (or bits, for `bool`) the type occupies; `None` for strings, whose length is `count`.
    pub fn fixed_len(self) -> Option<u16> {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::Bit => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::String => None,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Self::U16 | Self::I16 | Self::U32 | Self::I32 | Self::U64 | Self::I64
        )
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }

    /// Integer and float types decode to numbers (unless the field has enum labels).
    pub fn is_numeric(self) -> bool {
        self.is_integer() || self.is_float()
    }
}

/// Byte order of a multi-byte value, named by where bytes A (most significant) to D land on the
/// wire. ABCD is big endian, DCBA little endian, BADC swaps the bytes inside each register, CDAB
/// swaps the registers. For 16-bit types only the byte order inside the register matters (ABCD and
/// CDAB are big endian, BADC and DCBA little endian); for 64-bit types the same rule extends to
/// four registers. Strings honour only the byte order inside each register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ByteOrder {
    #[default]
    ABCD,
    DCBA,
    BADC,
    CDAB,
}

impl ByteOrder {
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::ABCD,
        ByteOrder::DCBA,
        ByteOrder::BADC,
        ByteOrder::CDAB,
    ];

    /// Registers come least significant first (CDAB, DCBA).
    pub fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::CDAB | ByteOrder::DCBA)
    }

    /// Bytes inside each register come least significant first (BADC, DCBA).
    pub fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::BADC | ByteOrder::DCBA)
    }
}
