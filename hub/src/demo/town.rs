//! The demo town's physics: what each simulated field device would measure at a given time of day.
//!
//! Pure and deterministic for a given seed and time: a day with dusk and dawn (lamps on from sunset
//! to sunrise at their coordinates, by the same astronomical clock as the hub's rules; dimmed to
//! 60 % after midnight), a rainstorm from 18:00 that floods the waterlogging points (the underpass
//! fast, a flash flood the early warning catches; the others slowly, one not even to the warning
//! depth) and recedes by 21:30, a dust episode at the building site from 16:40 to 17:40 as the
//! afternoon's earthworks meet the wind, and bins that fill with foot traffic and are emptied by
//! rounds at 06:00, 15:00 and 21:00 (one, by the night market, overflows in the evening). One lamp
//! fails at the first dusk and one burns by day, and one bin's sensor dies an hour in, so the hub has
//! something to find. Which device plays which part is decided by its number within its kind
//! (the constants below); [`super::scenario`] turns them into the tasks the hub must raise.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use firmware_config::{Device, GatewayConfig};
use protocol::{AssetKind, Value};

/// Simulated time of day, advancing `speed` times faster than real time from a starting hour.
#[derive(Debug, Clone)]
pub struct SimClock {
    started: Instant,
    start_s: f64,
    speed: f64,
}

impl SimClock {
    /// `start_hour` in 0..24 local time; `speed` simulated seconds per real second.
    pub fn new(start_hour: f64, speed: f64) -> Self {
        Self {
            started: Instant::now(),
            start_s: start_hour * 3600.0,
            speed: speed.max(0.0),
        }
    }

    /// Simulated seconds since the simulation's first midnight.
    pub fn now_s(&self) -> f64 {
        self.start_s + self.started.elapsed().as_secs_f64() * self.speed
    }

    /// The simulated second the simulation started at.
    pub fn start_s(&self) -> f64 {
        self.start_s
    }

    /// When (real time) the simulation reaches `sim_s`; `None` when its clock stands still.
    pub fn instant_at(&self, sim_s: f64) -> Option<tokio::time::Instant> {
        if self.speed <= 0.0 {
            return None;
        }
        let ahead = ((sim_s - self.start_s) / self.speed).max(0.0);
        Some(
            tokio::time::Instant::from_std(self.started)
                + std::time::Duration::from_secs_f64(ahead),
        )
    }
}

/// Hour of day (0..24) of a simulated time.
pub fn hour_of_day(sim_s: f64) -> f64 {
    (sim_s / 3600.0).rem_euclid(24.0)
}

/// Sunrise and sunset as local hours when the demo does not say (Nanjing in late November).
pub const DEFAULT_SUN: (f64, f64) = (6.7, 17.03);

/// When lamps should be lit, given the local (sunrise, sunset) hours.
pub fn lamps_scheduled_on(hour: f64, sun: (f64, f64)) -> bool {
    !(sun.0..sun.1).contains(&hour)
}

/// Every Modbus device of `gateways` with its number within its kind, counted in file, bus and
/// device order. The number decides the part a device plays (the constants below); the simulation
/// and the scenario plan both number devices with this, so they agree on who is who.
pub fn numbered(gateways: &[GatewayConfig]) -> Vec<(&GatewayConfig, &Device, u32)> {
    let mut per_kind: BTreeMap<AssetKind, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for gw in gateways {
        for d in gw.buses.iter().flat_map(|b| &b.devices) {
            let n = per_kind.entry(d.kind).or_default();
            out.push((gw, d, *n));
            *n += 1;
        }
    }
    out
}

/// The lamp (by number among the streetlights) that fails at the first dusk.
pub const FAILING_LAMP: u32 = 2;
/// The lamp that burns by day (its photocell is broken).
pub const DAY_BURNING_LAMP: u32 = 3;
/// The bin by the night market, filling fast from 16:00 to 22:00.
pub const MARKET_BIN: u32 = 2;
/// The bin whose sensor dies (stops answering its bus), and how many hours after the start.
pub const DYING_BIN: (u32, f64) = (0, 1.0);
/// Waterlogging points by number: (peak depth in cm, minutes from 18:00 to reach it).
pub const WATER_POINTS: [(f64, f64); 4] = [(28.0, 20.0), (18.0, 60.0), (12.0, 45.0), (22.0, 45.0)];
/// The storm: water rises from 18:00, holds its peak to 19:30, and is gone by 21:30.
pub const STORM: (f64, f64, f64) = (18.0, 19.5, 21.5);
/// The dust episode at the building site (hours), and its peak above the background (µg/m³).
pub const DUST_EPISODE: (f64, f64, f64) = (16.0 + 40.0 / 60.0, 17.0 + 40.0 / 60.0, 110.0);
/// The bin collection rounds (hours).
pub const ROUNDS: [f64; 3] = [6.0, 15.0, 21.0];

/// Deterministic noise in -1..1 from a seed, a device and a time step.
fn noise(seed: u64, device: u32, step: u64) -> f64 {
    let mut x = seed ^ (u64::from(device) << 32) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x as f64 / u64::MAX as f64) * 2.0 - 1.0
}

/// Integrating state of a device (energy), advanced on every observation.
#[derive(Debug, Default)]
struct Integrals {
    last_s: Option<f64>,
    energy_kwh: f64,
}

/// One simulated field device.
#[derive(Debug)]
pub struct SimDevice {
    pub kind: AssetKind,
    /// Distinct number of the device within its kind, choosing its personality (which lamp fails).
    pub index: u32,
    /// Installation parameters from the gateway file (e.g. `mounting_height_mm`).
    pub params: BTreeMap<String, f64>,
    /// Local sunrise and sunset hours at the device.
    pub sun: (f64, f64),
    /// The simulated second from which the device no longer answers.
    pub dies_at_s: Option<f64>,
    seed: u64,
    state: Mutex<Integrals>,
}

impl SimDevice {
    pub fn new(kind: AssetKind, index: u32, params: BTreeMap<String, f64>, seed: u64) -> Self {
        let state = Integrals {
            last_s: None,
            energy_kwh: 1200.0 + f64::from(index) * 37.0,
        };
        Self {
            kind,
            index,
            params,
            sun: DEFAULT_SUN,
            dies_at_s: None,
            seed,
            state: Mutex::new(state),
        }
    }

    /// With the local sunrise and sunset hours at the device.
    pub fn with_sun(mut self, sun: (f64, f64)) -> Self {
        self.sun = sun;
        self
    }

    /// With the device dying (no longer answering) at simulated second `sim_s`.
    pub fn dying_at(mut self, sim_s: f64) -> Self {
        self.dies_at_s = Some(sim_s);
        self
    }

    /// Whether the device still answers at simulated time `sim_s` (a dead one stays dead: the
    /// simulation's first day decides).
    pub fn alive(&self, sim_s: f64) -> bool {
        self.dies_at_s.is_none_or(|d| sim_s < d)
    }

    /// Everything this device measures at simulated time `sim_s`, by FIWARE metric name.
    pub fn observe(&self, sim_s: f64) -> BTreeMap<&'static str, Value> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dt_h = st
            .last_s
            .map_or(0.0, |last| ((sim_s - last) / 3600.0).max(0.0));
        st.last_s = Some(sim_s);
        let hour = hour_of_day(sim_s);
        let step = (sim_s / 10.0) as u64;
        let n = |k: u32| noise(self.seed, self.index * 16 + k, step);
        let mut out = BTreeMap::new();
        match self.kind {
            AssetKind::Streetlight => {
                let rated = 150.0;
                let scheduled = lamps_scheduled_on(hour, self.sun);
                // One lamp fails at the first dusk (scheduled on, draws nothing); one burns by day.
                let failed = self.index == FAILING_LAMP && sim_s >= self.sun.1 * 3600.0;
                let on = scheduled || self.index == DAY_BURNING_LAMP;
                let dim = if (0.0..5.0).contains(&hour) {
                    60.0
                } else {
                    100.0
                };
                let power = if on && !failed {
                    rated * dim / 100.0 * (0.97 + 0.02 * n(1))
                } else {
                    0.4
                };
                let voltage =
                    221.0 + 3.0 * (hour / 24.0 * std::f64::consts::TAU).sin() + 1.5 * n(2);
                let pf = if on && !failed {
                    0.95 + 0.02 * n(3)
                } else {
                    0.5
                };
                st.energy_kwh += power / 1000.0 * dt_h;
                out.insert("powerState", Value::Bool(on));
                out.insert("dimLevel", Value::Number(dim));
                out.insert("voltage", Value::Number(voltage));
                out.insert("intensity", Value::Number(power / (voltage * pf)));
                out.insert("activePower", Value::Number(power));
                out.insert("powerFactor", Value::Number(pf));
                out.insert("activeEnergy", Value::Number(st.energy_kwh));
                out.insert("ratedPower", Value::Number(rated));
                out.insert("lampFailure", Value::Bool(failed));
                out.insert(
                    "temperature",
                    Value::Number(
                        14.0 + 4.0 * day_wave(hour) + if on { 9.0 } else { 0.0 } + 0.3 * n(4),
                    ),
                );
            }
            AssetKind::Waterlogging => {
                // A storm from 18:00; points flood to different peaks at different speeds.
                let (peak, rise_min) = WATER_POINTS[self.index as usize % WATER_POINTS.len()];
                let depth = storm_depth(hour, peak, rise_min).max(0.0);
                let height = self
                    .params
                    .get("mounting_height_mm")
                    .copied()
                    .unwrap_or(3500.0);
                let distance = (height - depth * 10.0 + 3.0 * n(1)).clamp(0.0, height);
                out.insert("measuredDistance", Value::Number(distance.round()));
                out.insert("waterDepth", Value::Number(depth));
                out.insert(
                    "temperature",
                    Value::Number(11.0 + 4.0 * day_wave(hour) + 0.3 * n(2)),
                );
            }
            AssetKind::DustMonitor => {
                let pm10 = pm10(hour) + 4.0 * n(1);
                let working = (7.0..18.0).contains(&hour);
                out.insert("pm10", Value::Number(pm10));
                out.insert("pm25", Value::Number(pm10 * 0.55 + 2.0 * n(2)));
                out.insert("tsp", Value::Number(pm10 * 1.6));
                out.insert(
                    "LAeq",
                    Value::Number(if working {
                        66.0 + 4.0 * n(3)
                    } else {
                        47.0 + 3.0 * n(3)
                    }),
                );
                out.insert("windSpeed", Value::Number((2.2 + 1.2 * n(4)).max(0.0)));
                out.insert(
                    "windDirection",
                    Value::Number((135.0 + 40.0 * n(5)).rem_euclid(360.0)),
                );
                out.insert(
                    "temperature",
                    Value::Number(11.0 + 5.0 * day_wave(hour) + 0.3 * n(6)),
                );
                out.insert(
                    "relativeHumidity",
                    Value::Number(if (18.0..21.5).contains(&hour) {
                        0.92
                    } else {
                        0.63 + 0.05 * n(7)
                    }),
                );
            }
            AssetKind::SmartBin => {
                let fill = bin_fill(self.index, hour);
                out.insert("fillingLevel", Value::Number(fill));
                out.insert(
                    "temperature",
                    Value::Number(12.0 + 3.0 * day_wave(hour) + 0.3 * n(1)),
                );
                out.insert("batteryLevel", Value::Number(86.0 - f64::from(self.index)));
                // An ultrasonic sensor under the lid of a 1.1 m bin: distance to the rubbish surface.
                out.insert(
                    "measuredDistance",
                    Value::Number((60.0 + 1100.0 * (1.0 - fill)).round()),
                );
                out.insert("tilted", Value::Bool(false));
                out.insert("lidOpen", Value::Bool(false));
            }
            _ => {}
        }
        out
    }
}

/// PM10 (µg/m³) at a dust monitor at `hour`, without its noise: a daily wave and the episode.
pub fn pm10(hour: f64) -> f64 {
    let (from, to, peak) = DUST_EPISODE;
    let episode = if (from..to).contains(&hour) {
        peak * (((hour - from) / (to - from)) * std::f64::consts::PI).sin()
    } else {
        0.0
    };
    55.0 + 12.0 * day_wave(hour) + episode
}

/// Water depth in cm at `hour` for the storm: rising from 18:00 to `peak` in `rise_min` minutes,
/// held to 19:30, gone by 21:30.
pub fn storm_depth(hour: f64, peak: f64, rise_min: f64) -> f64 {
    let (start, hold, gone) = STORM;
    let top = start + rise_min / 60.0;
    match hour {
        h if (start..top).contains(&h) => peak * (h - start) / (top - start),
        h if (top..hold).contains(&h) => peak,
        h if (hold..gone).contains(&h) => peak * (gone - h) / (gone - hold),
        _ => 0.0,
    }
}

/// Fill per hour of bin `index` at `hour`: foot traffic, and the night market by one bin.
fn fill_rate(index: u32, hour: f64) -> f64 {
    let market = if index == MARKET_BIN && (16.0..22.0).contains(&hour) {
        0.25
    } else {
        0.0
    };
    traffic(hour) * (0.04 + 0.015 * f64::from(index % 3)) + market
}

/// Fill level (0..1) of bin `index` at `hour`: what foot traffic has put in since the last
/// collection round left it at 3 %. A pure function of the time of day, so a bin's level does not
/// depend on when the simulation started or how often it is read.
pub fn bin_fill(index: u32, hour: f64) -> f64 {
    let since = ROUNDS
        .iter()
        .map(|r| (hour - r).rem_euclid(24.0))
        .fold(f64::INFINITY, f64::min);
    let step: f64 = 1.0 / 60.0;
    let mut fill = 0.03;
    let mut h = hour - since;
    while h < hour {
        let dt = step.min(hour - h);
        fill += fill_rate(index, h.rem_euclid(24.0)) * dt;
        h += dt;
    }
    fill.min(1.0)
}

/// -1 before dawn .. +1 mid-afternoon.
fn day_wave(hour: f64) -> f64 {
    ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin()
}

/// Relative foot traffic (0.2 at night .. 1.5 at rush hours).
fn traffic(hour: f64) -> f64 {
    match hour {
        h if (7.0..9.0).contains(&h) || (11.0..13.0).contains(&h) || (17.0..20.0).contains(&h) => {
            1.5
        }
        h if (6.0..22.0).contains(&h) => 0.8,
        _ => 0.2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(v: &Value) -> f64 {
        v.as_f64().unwrap()
    }

    #[test]
    fn lamps_follow_the_day() {
        let lamp = SimDevice::new(AssetKind::Streetlight, 0, BTreeMap::new(), 1);
        assert_eq!(
            lamp.observe(12.0 * 3600.0)["powerState"],
            Value::Bool(false)
        );
        let night = lamp.observe(22.0 * 3600.0);
        assert_eq!(night["powerState"], Value::Bool(true));
        assert!(num(&night["activePower"]) > 100.0);
        let failed =
            SimDevice::new(AssetKind::Streetlight, 2, BTreeMap::new(), 1).observe(22.0 * 3600.0);
        assert!(num(&failed["activePower"]) < 1.0);
        let by_day =
            SimDevice::new(AssetKind::Streetlight, 3, BTreeMap::new(), 1).observe(12.0 * 3600.0);
        assert_eq!(by_day["powerState"], Value::Bool(true));
    }

    #[test]
    fn water_rises_in_the_storm_and_recedes() {
        let params = BTreeMap::from([("mounting_height_mm".to_owned(), 3500.0)]);
        let p = SimDevice::new(AssetKind::Waterlogging, 0, params, 1);
        assert!(num(&p.observe(12.0 * 3600.0)["waterDepth"]) == 0.0);
        let peak = p.observe(19.5 * 3600.0 - 1.0);
        assert!(num(&peak["waterDepth"]) > 25.0);
        assert!((num(&peak["measuredDistance"]) - (3500.0 - 280.0)).abs() < 10.0);
        assert!(num(&p.observe(22.0 * 3600.0)["waterDepth"]) == 0.0);
    }

    #[test]
    fn bins_fill_and_are_emptied() {
        let bin = SimDevice::new(AssetKind::SmartBin, 0, BTreeMap::new(), 1);
        let a = num(&bin.observe(7.0 * 3600.0)["fillingLevel"]);
        let b = num(&bin.observe(13.0 * 3600.0)["fillingLevel"]);
        assert!(b > a, "{a} -> {b}");
        let c = num(&bin.observe(15.5 * 3600.0)["fillingLevel"]);
        assert!(c < 0.1, "emptied at 15:00: {c}");
    }

    #[test]
    fn deterministic() {
        let a =
            SimDevice::new(AssetKind::DustMonitor, 0, BTreeMap::new(), 9).observe(17.17 * 3600.0);
        let b =
            SimDevice::new(AssetKind::DustMonitor, 0, BTreeMap::new(), 9).observe(17.17 * 3600.0);
        assert_eq!(a, b);
        assert!(num(&a["pm10"]) > 150.0);
        let calm =
            SimDevice::new(AssetKind::DustMonitor, 0, BTreeMap::new(), 9).observe(16.5 * 3600.0);
        assert!(num(&calm["pm10"]) < 75.0, "{calm:?}");
    }

    #[test]
    fn only_the_market_bin_fills_up_and_the_rounds_empty_it() {
        let full = |i: u32| {
            (0..24 * 60)
                .map(|m| f64::from(m) / 60.0)
                .filter(|h| bin_fill(i, *h) >= 0.8)
                .collect::<Vec<_>>()
        };
        for i in 0..6 {
            if i != MARKET_BIN {
                assert!(full(i).is_empty(), "bin {i} full at {:?}", full(i));
            }
        }
        let market = full(MARKET_BIN);
        let (first, last) = (market[0], market[market.len() - 1]);
        assert!((17.5..19.0).contains(&first), "{first}");
        assert!(bin_fill(MARKET_BIN, 20.9) >= 0.95);
        assert!(last < 21.0 && bin_fill(MARKET_BIN, 21.1) < 0.1, "{last}");
    }

    #[test]
    fn the_dying_bin_stops_answering() {
        let bin = SimDevice::new(AssetKind::SmartBin, 0, BTreeMap::new(), 1).dying_at(3600.0);
        assert!(bin.alive(3599.0));
        assert!(!bin.alive(3600.0));
        assert!(SimDevice::new(AssetKind::SmartBin, 1, BTreeMap::new(), 1).alive(1e9));
    }

    #[test]
    fn storm_rises_at_each_points_speed() {
        let (peak, rise) = WATER_POINTS[0];
        // The underpass: more than the early warning's 5 cm in any 8 minutes of the rise.
        assert!(storm_depth(18.0 + 8.0 / 60.0, peak, rise) >= 10.0);
        let (peak, rise) = WATER_POINTS[1];
        assert!(storm_depth(18.0 + 10.0 / 60.0, peak, rise) < 3.5);
        assert_eq!(storm_depth(19.0, peak, rise), peak);
    }
}
