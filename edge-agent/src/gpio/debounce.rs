//! Debouncing a contact: a new level counts once it has held for the debounce window. Pure: the
//! caller passes raw changes with their times and asks for settled changes.
//!
//! Each raw change first settles the change before it if that one held until this one arrived, so
//! a burst of queued changes (the agent was busy) is judged by when the changes happened, not by
//! when they were read: no pulse is lost to a late reader.

use std::time::Duration;

use tokio::time::Instant;

use super::backend::RawEdge;

#[derive(Debug, Clone)]
pub struct Debouncer {
    stable: bool,
    pending: Option<RawEdge>,
    window: Duration,
}

impl Debouncer {
    pub fn new(level: bool, window: Duration) -> Self {
        Self {
            stable: level,
            pending: None,
            window,
        }
    }

    /// The settled level.
    pub fn stable(&self) -> bool {
        self.stable
    }

    /// The level last seen, settled or not.
    pub fn last_raw(&self) -> bool {
        self.pending.map_or(self.stable, |p| p.high)
    }

    /// A raw level seen at `e.at`. Returns the change that settled before it, if any.
    pub fn raw(&mut self, e: RawEdge) -> Option<RawEdge> {
        let settled = self.settle(e.at);
        if e.high != self.last_raw() {
            // Any change restarts the window; going back to the settled level cancels the change.
            self.pending = (e.high != self.stable).then_some(e);
        }
        settled
    }

    /// When the pending change settles, if one is pending.
    pub fn due(&self) -> Option<Instant> {
        self.pending.map(|p| p.at + self.window)
    }

    /// The pending change, if it has held for the window by `now`; it becomes the settled level.
    pub fn settle(&mut self, now: Instant) -> Option<RawEdge> {
        let p = self.pending?;
        if now < p.at + self.window {
            return None;
        }
        self.stable = p.high;
        self.pending = None;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Timestamp;

    fn edge(t0: Instant, ms: u64, high: bool) -> RawEdge {
        RawEdge {
            high,
            at: t0 + Duration::from_millis(ms),
            wall: Timestamp::from_unix_millis(1_795_000_000_000 + ms as i64),
        }
    }

    #[test]
    fn a_bounce_inside_the_window_settles_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, Duration::from_millis(50));
        for (ms, high) in [(0, true), (5, false), (9, true), (12, false), (20, true)] {
            assert_eq!(d.raw(edge(t0, ms, high)), None);
        }
        assert_eq!(d.due(), Some(t0 + Duration::from_millis(70)));
        assert_eq!(d.settle(t0 + Duration::from_millis(69)), None);
        let settled = d.settle(t0 + Duration::from_millis(70)).unwrap();
        assert!(settled.high);
        // Stamped with the change that held, not when it was judged.
        assert_eq!(settled.wall, edge(t0, 20, true).wall);
        assert!(d.stable());
        assert_eq!(d.due(), None);
    }

    #[test]
    fn a_glitch_that_returns_is_no_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(true, Duration::from_millis(20));
        assert_eq!(d.raw(edge(t0, 0, false)), None);
        assert_eq!(d.raw(edge(t0, 10, true)), None);
        assert_eq!(d.due(), None);
        assert_eq!(d.settle(t0 + Duration::from_secs(1)), None);
        assert!(d.stable());
        // Repeating the settled level is nothing either.
        assert_eq!(d.raw(edge(t0, 30, true)), None);
        assert_eq!(d.due(), None);
    }

    #[test]
    fn queued_pulses_are_judged_by_their_own_times() {
        // Two 100 ms pulses read late, in one go: both count.
        let t0 = Instant::now();
        let mut d = Debouncer::new(true, Duration::from_millis(20));
        let mut settled = Vec::new();
        for (ms, high) in [(0, false), (100, true), (200, false), (300, true)] {
            settled.extend(d.raw(edge(t0, ms, high)));
        }
        settled.extend(d.settle(t0 + Duration::from_millis(400)));
        let levels: Vec<bool> = settled.iter().map(|e| e.high).collect();
        assert_eq!(levels, [false, true, false, true]);
    }

    #[test]
    fn no_window_settles_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, Duration::ZERO);
        assert_eq!(d.raw(edge(t0, 0, true)), None);
        assert!(d.settle(t0).is_some_and(|e| e.high));
    }
}
