//! Validated identifiers: gateways, devices, assets, metrics, event types, zones, boots and commands.
//!
//! One character set for every name-like identifier, so that each is safe as an MQTT topic level,
//! a SQL key, an InfluxDB tag and a file name: 1 to 64 characters, ASCII letters, digits, `-`, `_`
//! and `.`, starting with a letter or digit. Identifiers are case-sensitive (FIWARE metric names such
//! as `fillingLevel` or `LAeq` are camel case).

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Longest identifier accepted, in bytes (all accepted characters are one byte).
pub const ID_MAX_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is {len} characters long; at most {ID_MAX_LEN} are allowed")]
    TooLong {
        what: &'static str,
        value: String,
        len: usize,
    },
    #[error(
        "{what} {value:?} has {found:?} at position {position}; allowed are ASCII letters, digits, '-', '_' and '.', starting with a letter or digit"
    )]
    BadChar {
        what: &'static str,
        value: String,
        found: char,
        position: usize,
    },
    #[error("{what} {value:?} is not a UUID: {reason}")]
    NotUuid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// Checks `s` against the identifier character set; `what` names the kind for the error message.
pub fn validate(what: &'static str, s: &str) -> Result<(), IdError> {
    // Every identifier of every reading passes here: bytes first, the error (in characters) only
    // for one that fails.
    let b = s.as_bytes();
    if b.len() <= ID_MAX_LEN
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Ok(());
    }
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    for (position, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || (position > 0 && matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(IdError::BadChar {
                what,
                value: s.to_owned(),
                found: c,
                position,
            });
        }
    }
    if s.len() > ID_MAX_LEN {
        return Err(IdError::TooLong {
            what,
            value: s.to_owned(),
            len: s.chars().count(),
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// Held inline up to 24 bytes (most names): every reading names a device and a metric,
        /// and two allocations per reading were a tenth of the cost of decoding one.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(CompactString);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($what, &s)?;
                Ok(Self(CompactString::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into_string()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                validate($what, s)?;
                Ok(Self(CompactString::new(s)))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", $what))
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("A ", $what, ": 1 to 64 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit."),
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
                })
            }
        }
    };
}

name_id!(
    /// A gateway (one edge agent), e.g. `gw-xinjiekou-01`. Named in every topic it publishes on.
    GatewayId,
    "gateway id"
);
name_id!(
    /// A field device as its gateway knows it (one Modbus unit, one camera), unique within the gateway.
    DeviceId,
    "device id"
);
name_id!(
    /// A city asset (a lamp post, a waterlogging point, a bin), unique in the town.
    AssetId,
    "asset id"
);
name_id!(
    /// A measured quantity, named after FIWARE Smart Data Models where one fits (`fillingLevel`, `pm10`).
    MetricId,
    "metric id"
);
name_id!(
    /// A kind of event (`parkingCapture`, `lampFailure`, `deviceDown`).
    EventType,
    "event type"
);
name_id!(
    /// A zone, road segment or grid cell name.
    ZoneId,
    "zone id"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Uuid);

        impl $name {
            pub fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::try_parse(s).map(Self).map_err(|e| IdError::NotUuid {
                    what: $what,
                    value: s.chars().take(80).collect(),
                    reason: e.to_string(),
                })
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.hyphenated().to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// Identifies one run of an edge agent: a fresh random UUID at every start. Together with the
    /// sequence number it names each envelope uniquely, which is what the hub deduplicates on.
    BootId,
    "boot id"
);
uuid_id!(
    /// Identifies one command from the hub, echoed in the gateway's reply.
    CommandId,
    "command id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charset() {
        for ok in ["gw-1", "lamp_0001", "LAeq", "pm2.5", "a", &"x".repeat(64)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(
            GatewayId::new(""),
            Err(IdError::Empty { what: "gateway id" })
        );
        for bad in [
            "-lead",
            ".x",
            "_x",
            "a/b",
            "a+b",
            "a#",
            "a b",
            "路灯",
            "a\u{0}",
            &"x".repeat(65),
        ] {
            assert!(GatewayId::new(bad).is_err(), "{bad:?} accepted");
        }
        let e = GatewayId::new("gw/1").unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("position 2"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let ok: DeviceId = serde_json::from_str("\"lamp-1\"").unwrap();
        assert_eq!(ok.as_str(), "lamp-1");
        let err = serde_json::from_str::<DeviceId>("\"lamp 1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("device id"), "{err}");
    }

    #[test]
    fn boot_id_round_trips() {
        let b: BootId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        let s = serde_json::to_string(&b).unwrap();
        assert_eq!(s, "\"67e55044-10b1-426f-9247-bb680e5fe0c8\"");
        assert!("not-a-uuid".parse::<BootId>().is_err());
    }
}
