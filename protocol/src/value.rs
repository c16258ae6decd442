//! Reading and attribute values (number, boolean or short text) and units.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest text value or detail string accepted, in characters.
pub const TEXT_MAX_CHARS: usize = 256;
/// Longest unit symbol accepted, in characters.
pub const UNIT_MAX_CHARS: usize = 16;

/// A measured or reported value. Numbers are IEEE 754 doubles and must be finite (JSON has no NaN or
/// infinity, and the encoder refuses to write them); integers above 2^53 lose precision.
/// Text is for enumerations (a label from the device profile) and must be 1..=256 characters.
#[derive(Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl Value {
    /// The value as a number: booleans are 0 or 1; text has none.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Number(n) => Some(*n),
            Value::Text(_) => None,
        }
    }

    /// Why this value may not go on the wire, if it may not.
    pub fn problem(&self) -> Option<String> {
        match self {
            Value::Number(n) if !n.is_finite() => Some(format!("number {n} is not finite")),
            Value::Text(t) if t.is_empty() => Some("text value is empty".to_owned()),
            Value::Text(t) if t.chars().count() > TEXT_MAX_CHARS => Some(format!(
                "text value is longer than {TEXT_MAX_CHARS} characters"
            )),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n:?}"),
            Value::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => s.serialize_f64(*n),
            Value::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a boolean or a text")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::Number(n as f64))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(Value::Number(n as f64))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
                Ok(Value::Number(n))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Text(s))
            }
        }
        d.deserialize_any(V)
    }
}

/// A unit symbol, UCUM-style where one exists: `V`, `A`, `W`, `kWh`, `cm`, `mm`, `ug/m3`, `dB(A)`,
/// `%`, `Cel`, `1` (dimensionless ratio). 1 to 16 printable characters, no spaces at either end.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Unit(String);

impl Unit {
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > UNIT_MAX_CHARS {
            return Err(format!(
                "unit {s:?} must be 1 to {UNIT_MAX_CHARS} characters"
            ));
        }
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(format!(
                "unit {s:?} has control characters or surrounding spaces"
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Unit {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(s)
    }
}

impl From<Unit> for String {
    fn from(u: Unit) -> String {
        u.0
    }
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unit({:?})", self.0)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
