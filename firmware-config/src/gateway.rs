//! The gateway file as written (`gateways/NAME.toml`): identity and location, uplink, agent
//! settings, the Modbus buses with their devices, MQTT sources and GPIO. Validation is in
//! [`gateway_check`](crate::gateway_check); the resolved, ready-to-run view in [`config`](crate::config).

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::{AssetId, DeviceId, GatewayId, ZoneId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::profile::RequestOverrides;

/// One gateway (edge agent) configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Gateway configuration",
    description = "One edge gateway (gateways/NAME.toml)."
)]
pub struct GatewaySpec {
    /// The gateway id, named in every MQTT topic it publishes on.
    pub gateway: GatewayId,
    /// Where the cabinet stands; devices inherit it unless they give their own.
    pub location: LocationSpec,
    pub uplink: UplinkSpec,
    #[serde(default)]
    pub agent: AgentSpec,
    /// Modbus buses (RS-485 lines or TCP links).
    #[serde(default, rename = "bus", skip_serializing_if = "Vec::is_empty")]
    pub buses: Vec<BusSpec>,
    /// Brokers with devices that publish themselves (smart bins behind a LoRa network server).
    #[serde(default, rename = "mqtt_source", skip_serializing_if = "Vec::is_empty")]
    pub mqtt_sources: Vec<crate::mqtt_source::MqttSourceSpec>,
    /// The agent's HTTP endpoint for camera events (defaults apply when cameras are configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_server: Option<crate::camera::CameraServerSpec>,
    /// The gateway's evidence (image) store and the hub it uploads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::camera::EvidenceSpec>,
    /// Cameras that push events (ANPR, AI detection) to the agent over HTTP.
    #[serde(default, rename = "camera", skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<crate::camera::CameraSpec>,
    /// Local rules: thresholds the gateway acts on itself, uplink or not.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rules::RuleSpec>,
    /// Local signals on the Raspberry Pi's GPIO: door contacts, float switches, rain gauge pulses,
    /// relay outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpio: Option<crate::gpio::GpioSpec>,
}

/// The cabinet's position and its place in the road-chief and grid systems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationSpec {
    /// Longitude, WGS 84 degrees.
    pub lon: f64,
    /// Latitude, WGS 84 degrees.
    pub lat: f64,
    /// The road segment (its road chief is responsible).
    pub road_segment: ZoneId,
    /// The territorial grid cell.
    pub grid: ZoneId,
    /// The management zone, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
}

/// The MQTT connection to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    /// `mqtt://host:port` or `mqtts://host:port` (ports default to 1883 and 8883).
    pub broker: String,
    /// MQTT client id; defaults to the gateway id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password in clear; prefer `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The gateway's message key (written by `hub keys add`): every message is signed with it and
    /// every command from the hub is checked with it. Without one the hub accepts this gateway only
    /// if it runs with `--allow-unsigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// First topic level(s): topics are `{topic_root}/v1/gw/{gateway}/{channel}`.
    #[serde(default = "default_topic_root")]
    pub topic_root: String,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS files for `mqtts://`; without `ca_file` the system roots are used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

/// Agent behaviour; every setting has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSpec {
    /// Most readings in one published envelope.
    pub batch_max_items: u32,
    /// Publish a partial batch after this long.
    pub batch_max_wait_ms: u32,
    /// Seconds between heartbeats.
    pub heartbeat_s: u32,
    /// With report on change (a field's `deadband`), a reading is sent at least this often even when
    /// the value has not moved, so the hub can tell "steady" from "silent".
    pub max_silent_s: u32,
    /// Where the spool and state live (on the SD card).
    pub data_dir: PathBuf,
    /// Most MiB of readings the spool keeps while the uplink is down; beyond, the oldest go (counted).
    pub spool_bulk_max_mb: u32,
    /// Most MiB of events (camera captures, alarms) the spool keeps; a budget of their own.
    pub spool_event_max_mb: u32,
    /// Readings older than this many hours are dropped from the spool (counted).
    pub spool_bulk_max_age_h: u32,
    /// Events older than this many hours are dropped from the spool (counted).
    pub spool_event_max_age_h: u32,
    /// After an outage, spooled data is sent at most this fast (items per second) beside live data.
    pub replay_items_per_s: u32,
    /// With publishes unacknowledged this long, the agent drops the connection and reconnects.
    pub ack_timeout_s: u32,
    /// Where `GET /status` and `GET /metrics` are served (`edge-agent status` reads it); keep it on
    /// loopback.
    pub status_listen: String,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            batch_max_items: 500,
            batch_max_wait_ms: 1000,
            heartbeat_s: 30,
            max_silent_s: 300,
            data_dir: PathBuf::from("/var/lib/edge-agent"),
            spool_bulk_max_mb: 256,
            spool_event_max_mb: 64,
            spool_bulk_max_age_h: 7 * 24,
            spool_event_max_age_h: 30 * 24,
            replay_items_per_s: 5000,
            ack_timeout_s: 30,
            status_listen: "127.0.0.1:9101".into(),
        }
    }
}

/// How a bus reaches its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// Modbus RTU on a serial port (RS-485).
    Rtu,
    /// Modbus TCP.
    Tcp,
    /// RTU frames tunnelled over TCP by a serial device server.
    RtuOverTcp,
}

impl BusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BusKind::Rtu => "rtu",
            BusKind::Tcp => "tcp",
            BusKind::RtuOverTcp => "rtu_over_tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

impl Parity {
    /// The letter of the `8N1` notation.
    pub fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        }
    }
}

/// One Modbus bus: a serial line (`rtu`) or a TCP endpoint (`tcp`, `rtu_over_tcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusSpec {
    /// Unique within the gateway, e.g. `rs485-1`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: BusKind,
    /// Serial device, for `rtu` (e.g. `/dev/ttyUSB0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Bits per second, for `rtu` (default 9600); for `rtu_over_tcp` the serial side's rate, used
    /// only to estimate bus time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// Default `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    /// 7 or 8 (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bits: Option<u8>,
    /// 1 or 2 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_bits: Option<u8>,
    /// `host:port`, for `tcp` and `rtu_over_tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How long to wait for a reply.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// Silence between two requests (slow devices need it).
    #[serde(default)]
    pub pause_ms: u32,
    #[serde(default, rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
}

/// One Modbus device (unit) on a bus, serving one city asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Unique within the gateway.
    pub id: DeviceId,
    /// Modbus unit (slave) id: 1..=247 (0 is allowed on TCP).
    pub unit: u8,
    /// Profile (register map) name.
    pub profile: String,
    /// The city asset, unique in the town.
    pub asset: AssetId,
    /// Longitude; with `lat`, defaults to the gateway location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Overrides the gateway's road segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// Poll interval.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u32,
    /// Parameters for the profile's derived values, e.g. `{ mounting_height_mm = 3500 }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, f64>,
    /// Per-device overrides of the profile's request knobs.
    #[serde(default, skip_serializing_if = "is_default")]
    pub overrides: RequestOverrides,
}

fn default_topic_root() -> String {
    protocol::topic::DEFAULT_ROOT.to_owned()
}

fn default_keep_alive_s() -> u16 {
    30
}

fn default_timeout_ms() -> u32 {
    500
}

fn default_poll_ms() -> u32 {
    5000
}

fn is_default(o: &RequestOverrides) -> bool {
    *o == RequestOverrides::default()
}
