//! Gateway configuration: typed schema, loading with precise errors, validation, device profiles,
//! Modbus read plans and register decoding.
//!
//! The flow: [`ProfileSet`] (shipped profiles, optionally overlaid by a directory) →
//! [`load_gateway`] (parse, validate every problem at once as located [`Diagnostic`]s, resolve) →
//! [`GatewayConfig`] with its [`Bus`]es and [`Device`]s, each carrying its profile, effective
//! request knobs and [`ReadRequest`]s → the agent reads each request and calls
//! [`Device::decode`] and [`Device::derive`] on the response. [`encode`] is the inverse for writes
//! and simulators. Everything except the loaders is pure.

pub mod camera;
pub mod config;
pub mod decode;
pub mod derive;
pub mod device_check;
pub mod diagnostic;
pub mod encode;
pub mod field;
pub mod field_check;
pub mod gateway;
pub mod gateway_check;
pub mod gpio;
pub mod keyfile;
pub mod link;
pub mod load;
pub mod locate;
pub mod mqtt_source;
pub mod place;
pub mod plan;
pub mod plan_table;
pub mod profile;
pub mod profile_check;
pub mod profile_set;
pub mod register;
pub mod rules;
pub mod schema;
pub mod timing;
pub mod tls;

pub use camera::{Camera, CameraSetup, CameraSpec};
pub use config::{Bus, Device, GatewayConfig};
pub use decode::{DecodeProblem, Decoded, apply_scale, decode, decode_response};
pub use derive::derive;
pub use diagnostic::{Diagnostic, Severity, report};
pub use encode::{EncodeError, Encoded, encode};
pub use field::{Derived, Field, Formula};
pub use gateway::{
    AgentSpec, BusKind, BusSpec, DeviceSpec, GatewaySpec, LocationSpec, Parity, TlsSpec, UplinkSpec,
};
pub use gpio::{Gpio, GpioBackend, GpioCounter, GpioInput, GpioOutput};
pub use link::{Broker, Link, Uplink};
pub use load::{check_files, load_gateway, load_profile, parse_gateway, parse_profile, read_spec};
pub use mqtt_source::{JsonMetric, MqttDevice, MqttSource};
pub use plan::{ReadRequest, Slot, plan_reads};
pub use plan_table::PlanTable;
pub use profile::{ByteOrder, DataType, Profile, RequestKnobs, RequestOverrides, Table};
pub use profile_set::ProfileSet;
pub use register::Raw;
pub use schema::{gateway_schema, profile_schema};
pub use timing::{BusTiming, SerialLine};
