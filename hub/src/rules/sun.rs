//! The streetlights' astronomical clock: sunrise and sunset at a lamp's coordinates on a local date,
//! from the `sunrise` crate (NOAA's sunrise equation, the same method lamp controllers use).

use sunrise::{Coordinates, SolarDay, SolarEvent};

/// Sunrise and sunset (UTC milliseconds) on local day `day` (days since 1970-01-01 in the town's
/// time zone) at (`lat`, `lon`); `None` for coordinates that cannot be, or the polar day and night
/// (where the crate has no answer, and no Chinese town is).
pub fn rise_set(lat: f64, lon: f64, day: i64) -> Option<(i64, i64)> {
    let coord = Coordinates::new(lat, lon)?;
    // 1970-01-01 is day 719 163 counted from 0001-01-01 as day 1.
    let date = chrono::NaiveDate::from_num_days_from_ce_opt(i32::try_from(719_163 + day).ok()?)?;
    let solar = SolarDay::new(coord, date);
    let rise = solar.event_time(SolarEvent::Sunrise).timestamp_millis();
    let set = solar.event_time(SolarEvent::Sunset).timestamp_millis();
    (rise < set && set - rise < 86_400_000).then_some((rise, set))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nanjing_in_late_november() {
        // 2026-11-22 in China (UTC+8): day 20 414 since the epoch. Published tables give sunrise
        // 06:42 and sunset 17:02 for Nanjing.
        let day = 1_795_305_600_000 / 86_400_000;
        let (rise, set) = rise_set(32.04, 118.78, day).unwrap();
        let local = |ms: i64| ((ms / 1000 + 8 * 3600).rem_euclid(86_400)) / 60;
        let (r, s) = (local(rise), local(set));
        assert!(
            (6 * 60 + 38..=6 * 60 + 46).contains(&r),
            "sunrise {}:{:02}",
            r / 60,
            r % 60
        );
        assert!(
            (16 * 60 + 58..=17 * 60 + 6).contains(&s),
            "sunset {}:{:02}",
            s / 60,
            s % 60
        );
    }
}
