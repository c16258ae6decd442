//! Report on change: decides which readings of a device go up the (cellular) uplink. A metric with a
//! deadband is sent when its value moved by more than the deadband since the last reading sent (any
//! change for booleans and labels), when its quality changed, or when it has been silent for
//! `max_silent`; a metric without a deadband is sent every poll. Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{BadReason, MetricId, Quality, Value};

#[derive(Debug, Clone)]
struct Sent {
    value: Option<Value>,
    bad: Option<BadReason>,
    at: Instant,
}

#[derive(Debug, Clone)]
pub struct ReportFilter {
    deadbands: HashMap<MetricId, f64>,
    max_silent: Duration,
    last: HashMap<MetricId, Sent>,
}

impl ReportFilter {
    pub fn new(deadbands: HashMap<MetricId, f64>, max_silent: Duration) -> Self {
        Self {
            deadbands,
            max_silent,
            last: HashMap::new(),
        }
    }

    /// Whether a reading of `metric` with `value` and `quality` observed `now` should be sent; if so
    /// it becomes the new reference.
    pub fn admit(
        &mut self,
        metric: &MetricId,
        value: Option<&Value>,
        quality: &Quality,
        now: Instant,
    ) -> bool {
        let Some(&band) = self.deadbands.get(metric) else {
            return true;
        };
        let bad = match quality {
            Quality::Good => None,
            Quality::Bad { reason, .. } => Some(*reason),
        };
        let send = match self.last.get(metric) {
            None => true,
            Some(prev) => {
                prev.bad != bad
                    || now.saturating_duration_since(prev.at) >= self.max_silent
                    || moved(prev.value.as_ref(), value, band)
            }
        };
        if send {
            self.last.insert(
                metric.clone(),
                Sent {
                    value: value.cloned(),
                    bad,
                    at: now,
                },
            );
        }
        send
    }

    /// Forgets what was sent: after a device comes back, every value goes out again.
    pub fn reset(&mut self) {
        self.last.clear();
    }
}

fn moved(before: Option<&Value>, now: Option<&Value>, band: f64) -> bool {
    match (before, now) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => (a - b).abs() > band,
        (a, b) => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MetricId {
        MetricId::new(s).unwrap()
    }

    #[test]
    fn sends_on_change_beyond_the_deadband_and_after_silence() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut f = ReportFilter::new(HashMap::from([(m("pm10"), 2.0)]), Duration::from_secs(300));
        let good = Quality::Good;
        let n = Value::Number;
        assert!(
            f.admit(&m("pm10"), Some(&n(50.0)), &good, s(0)),
            "first reading"
        );
        assert!(
            !f.admit(&m("pm10"), Some(&n(51.5)), &good, s(5)),
            "inside the band"
        );
        assert!(
            !f.admit(&m("pm10"), Some(&n(48.0)), &good, s(10)),
            "exactly the band is not beyond it"
        );
        assert!(
            f.admit(&m("pm10"), Some(&n(52.5)), &good, s(15)),
            "beyond the band"
        );
        // Drift below the band per step is still caught against the last value sent.
        assert!(!f.admit(&m("pm10"), Some(&n(53.5)), &good, s(20)));
        assert!(f.admit(&m("pm10"), Some(&n(54.6)), &good, s(25)));
        assert!(!f.admit(&m("pm10"), Some(&n(54.6)), &good, s(324)));
        assert!(
            f.admit(&m("pm10"), Some(&n(54.6)), &good, s(325)),
            "max silent reached"
        );
        let bad = Quality::Bad {
            reason: BadReason::OutOfRange,
            detail: None,
        };
        assert!(
            f.admit(&m("pm10"), Some(&n(54.6)), &bad, s(326)),
            "quality changed"
        );
        assert!(!f.admit(&m("pm10"), Some(&n(54.6)), &bad, s(327)));
    }

    #[test]
    fn metrics_without_deadband_always_pass_and_labels_pass_on_change() {
        let t = Instant::now();
        let mut f = ReportFilter::new(HashMap::from([(m("mode"), 0.0)]), Duration::from_secs(300));
        for _ in 0..3 {
            assert!(f.admit(
                &m("voltage"),
                Some(&Value::Number(230.0)),
                &Quality::Good,
                t
            ));
        }
        let auto = Value::Text("auto".into());
        assert!(f.admit(&m("mode"), Some(&auto), &Quality::Good, t));
        assert!(!f.admit(&m("mode"), Some(&auto), &Quality::Good, t));
        assert!(f.admit(
            &m("mode"),
            Some(&Value::Text("manual".into())),
            &Quality::Good,
            t
        ));
        f.reset();
        assert!(f.admit(
            &m("mode"),
            Some(&Value::Text("manual".into())),
            &Quality::Good,
            t
        ));
    }
}
