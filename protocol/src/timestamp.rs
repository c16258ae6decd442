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
        if let Some(ts) = Self::parse_utc(s) {
            return Ok(ts);
        }
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

    /// `YYYY-MM-DDTHH:MM:SS[.f]Z` (1 to 9 fractional digits) within the codec's range, the form
    /// every encoder here writes, read by hand: every reading carries one, and the general parser
    /// took a tenth of the time of decoding a reading. Anything else (an offset, lower case, a leap
    /// second, a field out of range) is left to the general parser, which also words the errors.
    fn parse_utc(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 20 || b[b.len() - 1] != b'Z' {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            b[from..to].iter().try_fold(0i64, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
            })
        };
        let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if seps.iter().any(|&(i, c)| b[i] != c) {
            return None;
        }
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        let ms = match b.len() {
            20 => 0,
            n if b[19] == b'.' && (22..=30).contains(&n) => {
                let digits = &b[20..n - 1];
                let first3: i64 = num(20, 20 + digits.len().min(3))?;
                num(20, n - 1)?; // all digits
                first3 * 10i64.pow(3 - digits.len().min(3) as u32)
            }
            _ => return None,
        };
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month)
            || day < 1
            || day > month_days[(month - 1) as usize]
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        // Days from the epoch to a civil date (H. Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let t = Timestamp((((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + ms);
        t.in_codec_range().then_some(t)
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

    /// The hand-read form agrees with the general parser wherever it answers, and answers for
    /// every time the encoders write.
    #[test]
    fn the_quick_utc_form_agrees_with_the_general_parser() {
        let general = |s: &str| {
            OffsetDateTime::parse(s, &Rfc3339)
                .ok()
                .map(Timestamp::from_offset_date_time)
                .filter(|t| t.in_codec_range())
        };
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..200_000 {
            let frac = match next(4) {
                0 => String::new(),
                1 => format!(".{:03}", next(1000)),
                2 => format!(".{}", next(10)),
                _ => format!(".{:09}", next(1_000_000_000)),
            };
            // Fields a little past their ranges too (month 13, day 32, hour 24, second 60).
            let s = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
                1960 + next(150),
                next(14),
                next(33),
                next(25),
                next(61),
                next(61)
            );
            let quick = Timestamp::parse_utc(&s);
            if quick.is_some() {
                assert_eq!(quick, general(&s), "{s}");
            }
            assert_eq!(Timestamp::parse_rfc3339(&s).ok(), general(&s), "{s}");
        }
        for ms in [0, 951_782_400_000, 4_102_444_799_999, 1_795_305_600_123] {
            let t = Timestamp(ms);
            assert_eq!(Timestamp::parse_utc(&t.to_rfc3339()), Some(t));
        }
        for s in [
            "2024-02-29T00:00:00z",
            "2024-02-29 00:00:00Z",
            "2024-2-29T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_utc(s), None, "{s}");
        }
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(Timestamp::parse_rfc3339("2100-01-01T00:00:00Z").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(serde_json::from_str::<Timestamp>("1700000000").is_err());
    }
}
