//! The wire contract between edge gateways and the hub.
//!
//! Everything a gateway publishes and the hub receives (and back) is defined here as plain data with
//! strict validation: identifiers ([`id`]), times ([`timestamp`]), values ([`value`]), the data
//! envelope ([`envelope`]), presence and heartbeat ([`status`]), commands and replies ([`command`]),
//! configuration pushed to gateways ([`config`]),
//! the MQTT topic scheme ([`topic`]) and the JSON codec with its limits ([`codec`]).
//!
//! This crate does no IO and knows nothing of tokio or MQTT clients, so both programs and the tests
//! share exactly one definition of the contract. `docs/PROTOCOL.md` is its human-readable form.

pub mod auth;
pub mod camera_forms;
pub mod codec;
pub mod command;
pub mod config;
pub mod envelope;
pub mod error;
pub mod id;
pub mod reconnect;
pub mod status;
pub mod timestamp;
pub mod topic;
pub mod value;

pub use codec::{Limits, decode, encode};
pub use command::{Action, Command, CommandOutcome, Reply};
pub use config::{ConfigFailure, ConfigOutcome, ConfigPush, ConfigReport, ConfigSource};
pub use envelope::{
    BadReason, ClockState, Envelope, Event, EvidenceRef, Item, Phase, Quality, Reading,
};
pub use error::{DecodeError, EncodeError, Violation, ViolationKind};
pub use id::{
    AssetId, BootId, CommandId, DeviceId, EventType, GatewayId, IdError, MetricId, ZoneId,
};
pub use status::{
    AssetKind, DeviceInfo, DeviceLink, EvidenceStats, Heartbeat, LinkState, Point, Presence,
    PresenceState, SpoolStats,
};
pub use timestamp::Timestamp;
pub use topic::{Channel, TopicError, TopicScheme};
pub use value::{Unit, Value};

/// The protocol version this crate speaks; carried as `v` in every message and as `v1` in topics.
pub const PROTOCOL_VERSION: u32 = 1;
