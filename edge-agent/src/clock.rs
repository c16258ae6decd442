//! Whether the gateway's wall clock can be trusted.
//!
//! A Raspberry Pi has no real-time clock: after a power cut it runs from the last saved time (or 1970)
//! until NTP answers. systemd-timesyncd marks a completed sync by creating
//! `/run/systemd/timesync/synchronized`; chrony and ntpd leave no such file, so where that file's
//! directory does not exist the clock is trusted if it reads a time after this program was built.

use std::path::Path;

use protocol::{ClockState, Timestamp};

/// How the agent decides the clock state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSource {
    /// Detect from the system (see the module documentation).
    Auto,
    /// Always report this state (tests, or gateways with a GPS or RTC hat).
    Fixed(ClockState),
}

const TIMESYNC_DIR: &str = "/run/systemd/timesync";

/// The earliest plausible "now": a clock reading before this is certainly wrong.
pub fn plausible_floor() -> Timestamp {
    // 2026-01-01T00:00:00Z; releases move this forward.
    Timestamp::from_unix_millis(1_767_225_600_000)
}

pub fn state(source: ClockSource) -> ClockState {
    match source {
        ClockSource::Fixed(s) => s,
        ClockSource::Auto => detect(Path::new(TIMESYNC_DIR), Timestamp::now()),
    }
}

fn detect(timesync_dir: &Path, now: Timestamp) -> ClockState {
    if now < plausible_floor() {
        return ClockState::Unsynced;
    }
    if timesync_dir.is_dir() && !timesync_dir.join("synchronized").exists() {
        return ClockState::Unsynced;
    }
    ClockState::Synced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::parse_rfc3339("2026-11-22T00:00:00Z").unwrap();
        assert_eq!(detect(&dir.path().join("absent"), now), ClockState::Synced);
        assert_eq!(detect(dir.path(), now), ClockState::Unsynced);
        std::fs::write(dir.path().join("synchronized"), "").unwrap();
        assert_eq!(detect(dir.path(), now), ClockState::Synced);
        assert_eq!(
            detect(dir.path(), Timestamp::from_unix_millis(60_000)),
            ClockState::Unsynced
        );
    }
}
