//! Points in time on the wire: UTC milliseconds since the Unix epoch, written as RFC 3339.
//!
//! On the wire a timestamp is always a string such as `"2026-11-22T05:53:15.123Z"` (readable in
//! `mosquitto_sub`). Any RFC 3339 offset is accepted on input (`+08:00` from devices set to China
//! time) and normalised to UTC; precision beyond the millisecond is truncated. Output is always UTC
//! with exactly three fractional digits, so a decoded timestamp re-encodes to the same value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z: the earliest instant the codec accepts (an unsynchronised Raspberry Pi
    /// without a real-time clock starts here).
    pub const MIN: Timestamp = Timestamp(0);
    /// 2100-01-01T00:00:00Z, exclusive: the latest the codec accepts.
    pub const MAX: Timestamp = Timestamp(4_102_444_800_000);
    /// 2020-01-01T00:00:00Z: a synchronised clock never reads earlier than this.
    pub const SANE_SYNCED_MIN: Timestamp = Timestamp(1_577_836_800_000);

    pub const fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. The protocol itself never calls this; programs pass it in.
    pub fn now() -> Self {
        Self::from_offset_date_time(OffsetDateTime::now_utc())
    }

    pub fn from_offset_date_time(t: OffsetDateTime) -> Self {
        Self((t.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// Milliseconds from `earlier` to `self` (negative when `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn add_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Whether the codec accepts this instant at all (see [`Timestamp::MIN`], [`Timestamp::MAX`]).
    pub fn in_codec_range(self) -> bool {
        self >= Self::MIN && self < Self::MAX
    }

    /// Parses RFC 3339, truncating to milliseconds.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
        let ts = Self::from_offset_date_time(t);
        if !ts.in_codec_range() {
            return Err(format!(
                "{s:?} is outside 1970-01-01T00:00:00Z..2100-01-01T00:00:00Z"
            ));
        }
        Ok(ts)
    }

    /// RFC 3339 in UTC with exactly three fractional digits, e.g. `2026-11-22T05:53:15.123Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        match OffsetDateTime::from_unix_timestamp(secs) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                ms
            ),
            // Only reachable for instants hundreds of millennia away, which validation rejects first.
            Err(_) => format!("@{}ms", self.0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time string such as \"2026-11-22T05:53:15.123Z\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_millis() {
        let t = Timestamp::parse_rfc3339("2026-11-22T13:53:15.1234+08:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T05:53:15.123Z");
        assert_eq!(Timestamp::MIN.to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(Timestamp::parse_rfc3339("2100-01-01T00:00:00Z").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(serde_json::from_str::<Timestamp>("1700000000").is_err());
    }
}
