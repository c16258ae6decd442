//! The data envelope a gateway publishes on `{root}/v1/gw/{gateway}/up`: a numbered batch of readings
//! and events.
//!
//! `(gateway, boot, seq)` names an envelope uniquely: `boot` is new at every agent start and `seq`
//! rises by one for each envelope within a boot, so the hub can store each envelope once however often
//! it is redelivered. All timestamps in one envelope come from the same clock in the same state
//! (`clock`): an agent whose clock becomes synchronised starts a new envelope.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Violation, ViolationKind};
use crate::id::{BootId, DeviceId, EventType, GatewayId, MetricId};
use crate::timestamp::Timestamp;
use crate::value::{TEXT_MAX_CHARS, Unit, Value};

/// Whether the gateway's wall clock could be trusted when it stamped the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClockState {
    /// Synchronised (NTP / chrony reports sync): timestamps are taken as they are.
    Synced,
    /// Not (yet) synchronised, e.g. after a power cut on a Raspberry Pi without a real-time clock.
    /// The hub corrects item times by the difference between `sentAt` and its own receive time.
    Unsynced,
}

/// One batch from one gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Protocol version, always [`crate::PROTOCOL_VERSION`] for this crate.
    pub v: u32,
    pub gateway: GatewayId,
    pub boot: BootId,
    /// Starts at 0 for each boot and rises by one per envelope.
    pub seq: u64,
    /// The gateway's clock when it built the envelope.
    pub sent_at: Timestamp,
    pub clock: ClockState,
    pub items: Vec<Item>,
}

/// One entry of an envelope. The `kind` field selects the variant; an unknown kind is an error, never
/// silently skipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Item {
    Reading(Reading),
    Event(Event),
}

/// The item kinds, as `kind` names them (read as a variant name, as the derived form reads a tag).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", variant_identifier)]
enum Kind {
    Reading,
    Event,
}

/// Reads an item straight into its variant when `kind` comes first, as every encoder here writes
/// it. serde's derived form of an internally tagged enum first copies every field of every item
/// into a buffer of its own (it cannot know the variant before it has seen `kind`), and for a hub
/// taking in hundreds of thousands of readings a second that copying cost more than the reading.
/// An item with `kind` elsewhere is still accepted, by way of such a buffer. Unlike the derived
/// form, an item must be an object (the derived form also took an array of the fields in order,
/// which no encoder writes); a repeated `kind` is refused either way, as an unknown field when
/// `kind` came first.
impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ItemVisitor)
    }
}

struct ItemVisitor;

/// An item's first key: `kind`, or another to keep for the detour.
enum FirstKey {
    Kind,
    Other(String),
}

impl<'de> Deserialize<'de> for FirstKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FirstKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FirstKey, E> {
                Ok(if v == "kind" {
                    FirstKey::Kind
                } else {
                    FirstKey::Other(v.to_owned())
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an item: an object whose `kind` is reading or event")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        use serde::de::Error as _;
        use serde::de::value::MapAccessDeserializer;
        let first = map.next_key::<FirstKey>()?;
        if let Some(FirstKey::Kind) = first {
            return match map.next_value::<Kind>()? {
                Kind::Reading => {
                    Reading::deserialize(MapAccessDeserializer::new(map)).map(Item::Reading)
                }
                Kind::Event => Event::deserialize(MapAccessDeserializer::new(map)).map(Item::Event),
            };
        }
        let mut fields = serde_json::Map::new();
        if let Some(FirstKey::Other(key)) = first {
            fields.insert(key, map.next_value()?);
        }
        while let Some(key) = map.next_key::<String>()? {
            let value: serde_json::Value = map.next_value()?;
            if fields.insert(key.clone(), value).is_some() {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
        }
        let kind = fields
            .remove("kind")
            .ok_or_else(|| A::Error::missing_field("kind"))?;
        let rest = serde_json::Value::Object(fields);
        match Kind::deserialize(kind).map_err(A::Error::custom)? {
            Kind::Reading => Reading::deserialize(rest).map(Item::Reading),
            Kind::Event => Event::deserialize(rest).map(Item::Event),
        }
        .map_err(A::Error::custom)
    }
}

impl Item {
    pub fn device(&self) -> &DeviceId {
        match self {
            Item::Reading(r) => &r.device,
            Item::Event(e) => &e.device,
        }
    }

    pub fn observed_at(&self) -> Timestamp {
        match self {
            Item::Reading(r) => r.observed_at,
            Item::Event(e) => e.observed_at,
        }
    }
}

/// A measured value of one metric of one device at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reading {
    pub device: DeviceId,
    pub metric: MetricId,
    pub observed_at: Timestamp,
    /// Required when the quality is good; may be absent when it is bad (nothing could be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    /// Omitted on the wire when good.
    #[serde(default, skip_serializing_if = "Quality::is_good")]
    pub quality: Quality,
}

/// Whether a reading can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Quality {
    #[default]
    Good,
    Bad {
        reason: BadReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }
}

/// Why a reading is bad. "The device said no" (`deviceException`) is kept apart from "the link is
/// down" (`timeout`, `linkDown`, `corruptReply`) and from "the value makes no sense" (`outOfRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BadReason {
    /// No reply within the request timeout.
    Timeout,
    /// The connection to the bus or device is down.
    LinkDown,
    /// A reply arrived but was corrupt (CRC error, wrong length, wrong unit or function).
    CorruptReply,
    /// The device answered with a protocol exception (e.g. Modbus "illegal data address").
    DeviceException,
    /// The registers could not be decoded as the profile says (bad enum code, invalid text).
    Undecodable,
    /// Decoded, but outside the profile's plausible range.
    OutOfRange,
    /// The device reports a fault of its own sensor.
    SensorFault,
}

impl BadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BadReason::Timeout => "timeout",
            BadReason::LinkDown => "linkDown",
            BadReason::CorruptReply => "corruptReply",
            BadReason::DeviceException => "deviceException",
            BadReason::Undecodable => "undecodable",
            BadReason::OutOfRange => "outOfRange",
            BadReason::SensorFault => "sensorFault",
        }
    }
}

/// Where an event sits in a condition's life, after TALQ: a condition that starts and ends is two
/// events (`start`, `end`) with the same device and event type, so the hub opens and closes it
/// deterministically; a capture is `instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Instant,
    Start,
    End,
}

/// Something that happened: a camera capture, a lamp fault, a device going down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    pub device: DeviceId,
    pub event: EventType,
    pub observed_at: Timestamp,
    pub phase: Phase,
    /// Event details (`plate`, `plateColor`, `vehicleType`, `confidence` 0..1, ...); keys use the
    /// identifier character set, values are finite numbers, booleans or short texts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
    /// Images or clips that prove the event, by content hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<EvidenceRef>,
}

/// A piece of evidence held by the gateway (and later uploaded), named by its SHA-256 so that
/// tampering is detectable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceRef {
    /// Lowercase hex SHA-256 of the content, 64 characters.
    pub sha256: String,
    /// MIME type, e.g. `image/jpeg`.
    pub media_type: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// How far ahead of `sentAt` an item may be stamped (clock jitter within the gateway), in ms.
pub const MAX_ITEM_AHEAD_MS: i64 = 5 * 60 * 1000;
/// How far behind `sentAt` an item may be stamped (the longest a spool may hold it), in ms.
pub const MAX_ITEM_BEHIND_MS: i64 = 400 * 24 * 3600 * 1000;
/// Most attributes on one event.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most evidence references on one event.
pub const MAX_EVIDENCE: usize = 8;

impl Envelope {
    /// Checks everything the types alone cannot: version, item count, finite values, timestamps
    /// within bounds, quality consistent with value, attribute and evidence shapes. Returns the first
    /// problem with the path of the offending field.
    pub fn validate(&self, max_items: usize) -> Result<(), Violation> {
        if self.v != crate::PROTOCOL_VERSION {
            return Err(Violation::new(
                "v",
                ViolationKind::UnsupportedVersion { found: self.v },
            ));
        }
        check_time(|| "sentAt".into(), self.sent_at, self.clock)?;
        if self.items.is_empty() {
            return Err(Violation::new("items", ViolationKind::Empty));
        }
        if self.items.len() > max_items {
            return Err(Violation::new(
                "items",
                ViolationKind::TooMany {
                    found: self.items.len(),
                    max: max_items,
                },
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            let at = |field: &str| format!("items[{i}].{field}");
            let ts = item.observed_at();
            check_time(|| at("observedAt"), ts, self.clock)?;
            let ahead = ts.millis_since(self.sent_at);
            if ahead > MAX_ITEM_AHEAD_MS || -ahead > MAX_ITEM_BEHIND_MS {
                return Err(Violation::new(
                    at("observedAt"),
                    ViolationKind::TimeOutOfBounds {
                        found: ts,
                        reason: format!(
                            "{} ms from sentAt {}; allowed is {} ms ahead to {} ms behind",
                            ahead, self.sent_at, MAX_ITEM_AHEAD_MS, MAX_ITEM_BEHIND_MS
                        ),
                    },
                ));
            }
            match item {
                Item::Reading(r) => validate_reading(r, &at)?,
                Item::Event(e) => validate_event(e, &at)?,
            }
        }
        Ok(())
    }
}

/// `path` is only built for a violation: this runs for every item of every envelope.
fn check_time(
    path: impl FnOnce() -> String,
    ts: Timestamp,
    clock: ClockState,
) -> Result<(), Violation> {
    let min = match clock {
        ClockState::Synced => Timestamp::SANE_SYNCED_MIN,
        ClockState::Unsynced => Timestamp::MIN,
    };
    if ts < min || ts >= Timestamp::MAX {
        return Err(Violation::new(
            path(),
            ViolationKind::TimeOutOfBounds {
                found: ts,
                reason: format!(
                    "a {clock:?} clock must read between {min} and {}",
                    Timestamp::MAX
                ),
            },
        ));
    }
    Ok(())
}

fn validate_reading(r: &Reading, at: &dyn Fn(&str) -> String) -> Result<(), Violation> {
    match (&r.value, &r.quality) {
        (None, Quality::Good) => return Err(Violation::new(at("value"), ViolationKind::Missing)),
        (Some(v), _) => {
            if let Some(p) = v.problem() {
                return Err(Violation::new(at("value"), ViolationKind::BadValue(p)));
            }
        }
        (None, Quality::Bad { .. }) => {}
    }
    if let Quality::Bad {
        detail: Some(d), ..
    } = &r.quality
    {
        check_text(&at("quality.bad.detail"), d)?;
    }
    Ok(())
}

fn validate_event(e: &Event, at: &dyn Fn(&str) -> String) -> Result<(), Violation> {
    if e.attributes.len() > MAX_ATTRIBUTES {
        return Err(Violation::new(
            at("attributes"),
            ViolationKind::TooMany {
                found: e.attributes.len(),
                max: MAX_ATTRIBUTES,
            },
        ));
    }
    for (k, v) in &e.attributes {
        if let Err(err) = crate::id::validate("attribute name", k) {
            return Err(Violation::new(
                at("attributes"),
                ViolationKind::BadValue(err.to_string()),
            ));
        }
        if let Some(p) = v.problem() {
            return Err(Violation::new(
                at(&format!("attributes.{k}")),
                ViolationKind::BadValue(p),
            ));
        }
    }
    if e.evidence.len() > MAX_EVIDENCE {
        return Err(Violation::new(
            at("evidence"),
            ViolationKind::TooMany {
                found: e.evidence.len(),
                max: MAX_EVIDENCE,
            },
        ));
    }
    for (j, ev) in e.evidence.iter().enumerate() {
        let ok_hash = ev.sha256.len() == 64
            && ev
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok_hash {
            return Err(Violation::new(
                at(&format!("evidence[{j}].sha256")),
                ViolationKind::BadValue("expected 64 lowercase hex digits".into()),
            ));
        }
        let ok_mime = ev.media_type.len() <= 64
            && ev.media_type.split_once('/').is_some_and(|(a, b)| {
                let tok = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
                };
                tok(a) && tok(b)
            });
        if !ok_mime {
            return Err(Violation::new(
                at(&format!("evidence[{j}].mediaType")),
                ViolationKind::BadValue(format!(
                    "{:?} is not a media type like image/jpeg",
                    ev.media_type
                )),
            ));
        }
    }
    Ok(())
}

fn check_text(path: &str, s: &str) -> Result<(), Violation> {
    if s.chars().count() > TEXT_MAX_CHARS {
        return Err(Violation::new(
            path,
            ViolationKind::BadValue(format!("longer than {TEXT_MAX_CHARS} characters")),
        ));
    }
    Ok(())
}
