//! The demo town's first day as scenarios, each stating the tasks the hub must raise for it.
//!
//! The town's physics ([`super::town`]) and the cameras' script ([`CAPTURES`], [`STALL`]) decide
//! what happens and when; this module says, for the gateway files and rules file the demo runs,
//! which device plays which part and which tasks (rule and subject) the hub must raise by which
//! town hour — and, by saying nothing else, that it must raise no other. `hub demo` writes the plan
//! to `<data dir>/demo-scenarios.json` and logs it; the system test compares the hub's tasks with
//! it and names what is missing or extra.
//!
//! Thresholds and time windows come from the rules file the hub runs (its overrides included), so
//! the plan follows a changed rules file; what each device does comes from the town's constants.

use std::collections::BTreeMap;

use firmware_config::GatewayConfig;
use protocol::{AssetKind, Timestamp};
use serde::Serialize;

use super::town;
use crate::rules::config::{AssetPlace, Rules, ZoneClass};
use crate::rules::{RuleClock, plate_subject};

/// What a vehicle in the parking camera's script stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Parks in the no-parking zone: seen now and again later.
    Violator,
    /// Stops for a moment: seen once.
    ShortStop,
    /// A muck truck (yellow plate) in the zone, maybe in its ban hours.
    Truck,
    /// The market's delivery truck, with a permit.
    PermittedTruck,
    /// The management office's car, on the whitelist, parked for an hour.
    Whitelisted,
}

/// One scripted capture of the parking cameras.
#[derive(Debug, Clone, Copy)]
pub struct Capture {
    /// Town hours after the demo's start.
    pub after_h: f64,
    /// The plate as the camera reads it, colour first (Hikvision's Chinese firmware).
    pub plate: &'static str,
    pub part: Part,
}

/// The parking cameras' script; between these, passers-by each seen once.
pub const CAPTURES: [Capture; 7] = [
    Capture {
        after_h: 0.5,
        plate: "蓝苏A8HK52",
        part: Part::Violator,
    },
    Capture {
        after_h: 1.0,
        plate: "蓝苏A3M771",
        part: Part::ShortStop,
    },
    Capture {
        after_h: 1.5,
        plate: "黄苏A0T923",
        part: Part::Truck,
    },
    Capture {
        after_h: 2.0,
        plate: "蓝苏A8HK52",
        part: Part::Violator,
    },
    Capture {
        after_h: 2.5,
        plate: "黄苏A6H318",
        part: Part::PermittedTruck,
    },
    Capture {
        after_h: 3.0,
        plate: "绿苏AD12345",
        part: Part::Whitelisted,
    },
    Capture {
        after_h: 3.5,
        plate: "绿苏AD12345",
        part: Part::Whitelisted,
    },
];

/// The street vendor watched by the AI cameras: sets up and leaves, town hours after the start.
pub const STALL: (f64, f64) = (0.75, 1.75);

/// One gateway's uplink is cut: town hours after the start, and for how long (20 minutes).
pub const OUTAGE: (f64, f64) = (3.5, 20.0 / 60.0);

/// How long after its start a scenario's tasks may take to appear, in real seconds: a camera
/// event's upload, the rules' evaluation, the hub's periodic checks.
const LATENCY_S: f64 = 20.0;

/// How often (real time) a parking camera sees a passer-by; an AI box looks five times as often.
pub const CAMERA_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// A task the hub must raise.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expected {
    pub rule: String,
    pub subject: String,
    /// Town hour (since the first midnight) by which it must exist.
    pub by_hour: f64,
    /// The same, as a real time.
    pub due: String,
    /// False when the hub may raise it or not: an event under way when the demo started, or a
    /// condition too close to a rule's threshold for the town's coarse sampling to decide.
    pub required: bool,
}

/// One scenario of the day.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    pub name: &'static str,
    pub story: String,
    /// Town hours since the first midnight.
    pub from_hour: f64,
    pub to_hour: f64,
    /// The same, as real times.
    pub from: String,
    pub to: String,
    /// The gateway it happens to, where it happens to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The tasks it must (`required`) or may produce; no other (none: it must produce none).
    pub tasks: Vec<Expected>,
}

/// The day's plan, as written to `demo-scenarios.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub start_hour: f64,
    pub speed: f64,
    pub started: String,
    /// The plan covers the first 24 town hours from the start.
    pub until: String,
    pub scenarios: Vec<Scenario>,
}

impl Plan {
    /// The scenario named `name`.
    pub fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// One line per scenario, for the log.
    pub fn summary(&self) -> Vec<String> {
        self.scenarios
            .iter()
            .map(|s| {
                let tasks: Vec<String> = s
                    .tasks
                    .iter()
                    .map(|t| format!("{} {} by {}", t.rule, t.subject, clock_time(t.by_hour)))
                    .collect();
                format!(
                    "{} ({}–{}): {}",
                    s.name,
                    clock_time(s.from_hour),
                    clock_time(s.to_hour),
                    if tasks.is_empty() {
                        "no task".to_owned()
                    } else {
                        tasks.join(", ")
                    }
                )
            })
            .collect()
    }
}

fn clock_time(hour: f64) -> String {
    let m = (hour * 60.0).round() as i64;
    let day = if m >= 24 * 60 { "+1d " } else { "" };
    format!("{day}{:02}:{:02}", (m / 60) % 24, m % 60)
}

/// The town the plan is made for.
pub struct Town<'a> {
    pub gateways: &'a [GatewayConfig],
    pub rules: &'a Rules,
    pub start_hour: f64,
    /// Maps readings' times to the rules' (the town's) time.
    pub clock: RuleClock,
    /// The rules' time of the town's first midnight (ms).
    pub midnight: i64,
    /// Local (sunrise, sunset) hours at a latitude and longitude.
    pub sun: &'a dyn Fn(f64, f64) -> Option<(f64, f64)>,
}

impl std::fmt::Debug for Town<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Town")
            .field("gateways", &self.gateways.len())
            .field("start_hour", &self.start_hour)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

struct Role {
    asset: String,
    gateway: String,
    place: AssetPlace,
    sun: (f64, f64),
    /// Seconds (real time) between the device's polls.
    poll_s: f64,
}

impl Town<'_> {
    fn rule_ms(&self, hour: f64) -> i64 {
        self.midnight + (hour * 3_600_000.0) as i64
    }

    fn real(&self, hour: f64) -> String {
        Timestamp::from_unix_millis(self.clock.real_at(self.rule_ms(hour))).to_rfc3339()
    }

    /// Town hours that `real_s` seconds of real time take.
    fn town_h(&self, real_s: f64) -> f64 {
        real_s * self.clock.speed / 3600.0
    }

    /// When a daily event from `from` to `to` (hours of the day) first happens: today if it has
    /// not ended by the start, and whether it was already under way then.
    fn next_event(&self, from: f64, to: f64) -> (f64, bool) {
        let start = self.start_hour;
        if start < from {
            (from, false)
        } else if start < to {
            (from, true)
        } else {
            (from + 24.0, false)
        }
    }

    /// Town hours a duration rule needs beyond its own minutes: the first poll after the change
    /// and whole polls of evidence (a poll is minutes of the town's time when it runs fast).
    fn polls(&self, poll_s: f64) -> f64 {
        self.town_h(2.0 * poll_s + 10.0)
    }

    fn expect(&self, rule: &str, subject: &str, by_hour: f64) -> Expected {
        Expected {
            rule: rule.to_owned(),
            subject: subject.to_owned(),
            by_hour,
            due: self.real(by_hour),
            required: true,
        }
    }

    /// A task the hub may raise or not.
    fn may(&self, rule: &str, subject: &str, by_hour: f64) -> Expected {
        Expected {
            required: false,
            ..self.expect(rule, subject, by_hour)
        }
    }

    fn scenario(
        &self,
        name: &'static str,
        story: String,
        (from_hour, to_hour): (f64, f64),
        tasks: Vec<Expected>,
    ) -> Scenario {
        Scenario {
            name,
            story,
            from_hour,
            to_hour,
            from: self.real(from_hour),
            to: self.real(to_hour),
            gateway: None,
            tasks,
        }
    }

    /// Every Modbus device by kind and its number within the kind, as the simulation numbers
    /// them ([`town::numbered`]).
    fn roles(&self) -> BTreeMap<(AssetKind, u32), Role> {
        town::numbered(self.gateways)
            .into_iter()
            .map(|(gw, d, index)| {
                let role = Role {
                    asset: d.asset.to_string(),
                    gateway: gw.gateway.to_string(),
                    place: AssetPlace {
                        asset: d.asset.to_string(),
                        zone: d.zone.as_ref().map(ToString::to_string),
                        segment: Some(d.road_segment.to_string()),
                        grid: Some(d.grid.to_string()),
                    },
                    sun: (self.sun)(d.location.lat(), d.location.lon())
                        .unwrap_or(town::DEFAULT_SUN),
                    poll_s: f64::from(d.poll_ms) / 1000.0,
                };
                ((d.kind, index), role)
            })
            .collect()
    }

    /// The plan of the first day.
    pub fn plan(&self) -> Plan {
        let roles = self.roles();
        let start = self.start_hour;
        let mut scenarios = Vec::new();
        let role = |kind, index| roles.get(&(kind, index));

        // Dusk and dawn: one lamp fails at the first dusk, one burns by day.
        let mut lamps = Vec::new();
        if let Some(l) = role(AssetKind::Streetlight, town::FAILING_LAMP) {
            let (rise, set) = l.sun;
            let th = self.rules.thresholds_for(&l.place).lamp;
            // It fails at the first dusk (at once when the demo starts after it) and stays dark.
            let fails = start.max(set);
            let by = fails + th.out_for_min / 60.0 + self.polls(l.poll_s) + 0.25;
            lamps.push(self.expect("lamp_out", &l.asset, by));
            // The night's lighting rate, computed an hour after sunrise (checked once a minute).
            let dawn = if rise + 24.0 > fails {
                rise + 24.0
            } else {
                rise + 48.0
            };
            if dawn + 1.0 < start + 24.0
                && let Some(segment) = &l.place.segment
            {
                let by = dawn + 1.5 + self.town_h(70.0);
                lamps.push(self.expect("lighting_rate", &format!("segment:{segment}"), by));
            }
        }
        if let Some(l) = role(AssetKind::Streetlight, town::DAY_BURNING_LAMP) {
            let (rise, set) = l.sun;
            let th = self.rules.thresholds_for(&l.place).lamp;
            let need = th.on_by_day_for_min / 60.0 + self.polls(l.poll_s);
            let by = if (rise..set).contains(&start) && start + need <= set {
                start + need + 0.25
            } else {
                // Not enough daylight left at the start: the next morning, once the lamps
                // should be off.
                let morning = if start < rise { rise } else { rise + 24.0 };
                morning + th.off_offset_min.max(0.0) / 60.0 + need + 0.25
            };
            lamps.push(self.expect("lamp_on_by_day", &l.asset, by));
        }
        let failing = role(AssetKind::Streetlight, town::FAILING_LAMP)
            .map_or("none".to_owned(), |l| l.asset.clone());
        let burning = role(AssetKind::Streetlight, town::DAY_BURNING_LAMP)
            .map_or("none".to_owned(), |l| l.asset.clone());
        scenarios.push(self.scenario(
            "dusk-and-dawn",
            format!(
                "lamps light at dusk and go out at dawn; {failing} fails at the first dusk (its night's lighting rate falls below target), {burning} burns by day"
            ),
            (start, start + 24.0),
            lamps,
        ));

        // The storm.
        let (storm, hold, gone) = town::STORM;
        let (storm_at, under_way) = self.next_event(storm, gone);
        let mut water = Vec::new();
        let mut story = Vec::new();
        for index in 0.. {
            let Some(p) = role(AssetKind::Waterlogging, index) else {
                break;
            };
            let (peak, rise_min) = town::WATER_POINTS[index as usize % town::WATER_POINTS.len()];
            let th = self.rules.thresholds_for(&p.place).waterlogging;
            let by = (storm_at + (hold - storm)).max(start) + self.polls(p.poll_s) + 0.25;
            // Under way at the start: the hub sees part of it, so its tasks may come or not.
            let task = |rule: &str, certain: bool| {
                if certain && !under_way {
                    self.expect(rule, &p.asset, by)
                } else {
                    self.may(rule, &p.asset, by)
                }
            };
            // The early warning sees rises over its window; readings every few real seconds are
            // minutes apart in the town, so count on 80 % of the window; no reading can show more
            // than the whole window's rise (plus the sensor's half-centimetre of noise).
            let rise = peak / rise_min * th.rise_window_min;
            if rise * 0.8 >= th.rise_cm {
                water.push(task("waterlogging_rise", true));
            } else if rise + 0.5 >= th.rise_cm {
                water.push(task("waterlogging_rise", false));
            }
            if peak >= th.warn_cm {
                water.push(task("waterlogging", true));
            }
            if peak >= th.critical_cm {
                water.push(task("waterlogging_critical", true));
            }
            story.push(format!("{} to {peak} cm in {rise_min} min", p.asset));
        }
        scenarios.push(self.scenario(
            "rainstorm",
            format!(
                "a rainstorm from {}: {}; held to {}, gone by {}",
                clock_time(storm),
                story.join(", "),
                clock_time(hold),
                clock_time(gone)
            ),
            (storm_at, storm_at + (gone - storm)),
            water,
        ));

        // The building site's dust episode.
        let (from, to, peak) = town::DUST_EPISODE;
        let (dust_at, under_way) = self.next_event(from, to);
        let mut dust = Vec::new();
        for index in 0.. {
            let Some(d) = role(AssetKind::DustMonitor, index) else {
                break;
            };
            let th = self.rules.thresholds_for(&d.place).dust;
            // As the hub judges it: a quarter-hour mean above the limit is a warning, the day's
            // allowance of warnings or an hourly mean above its limit a task. From the town's
            // PM10 without its noise (±4 µg/m³), so within 5 of a limit is undecided.
            let mean = |a: f64, b: f64| {
                let n = 60;
                (0..n)
                    .map(|i| town::pm10(a + (b - a) * (f64::from(i) + 0.5) / f64::from(n)))
                    .sum::<f64>()
                    / f64::from(n)
            };
            let quarters: Vec<f64> = (0..((to - from) * 4.0).ceil() as i32 + 4)
                .map(|q| {
                    (
                        from.floor() + f64::from(q) / 4.0,
                        from.floor() + f64::from(q + 1) / 4.0,
                    )
                })
                .map(|(a, b)| mean(a, b))
                .collect();
            let over = |margin: f64| {
                let warnings = quarters
                    .iter()
                    .filter(|m| **m > th.pm10_15min + margin)
                    .count();
                // With a background monitor the hourly limit applies to the difference, which
                // this plan does not model: the warnings decide alone.
                let hourly = th.background.is_none()
                    && quarters.windows(4).any(|w| {
                        w.iter().sum::<f64>() / 4.0 > th.pm10_hourly_no_background + margin
                    });
                warnings >= th.warnings_per_day as usize || hourly
            };
            let by = dust_at.max(start) + (to - from) + self.polls(d.poll_s) + 0.5;
            if over(5.0) && !under_way {
                dust.push(self.expect("dust", &d.asset, by));
            } else if over(-5.0) {
                dust.push(self.may("dust", &d.asset, by));
            }
        }
        scenarios.push(self.scenario(
            "dust-episode",
            format!("earthworks meet the wind: PM10 up by {peak} µg/m³ at its peak"),
            (dust_at, dust_at + (to - from)),
            dust,
        ));

        // Bins.
        let mut bins = Vec::new();
        for index in 0.. {
            let Some(b) = role(AssetKind::SmartBin, index) else {
                break;
            };
            if index == town::DYING_BIN.0 {
                continue;
            }
            let th = self.rules.thresholds_for(&b.place).bin;
            // The bin's level minute by minute over the day (each computed once).
            let minute = |m: usize| start + m as f64 / 60.0;
            let fill: Vec<f64> = (0..24 * 60)
                .map(|m| town::bin_fill(index, minute(m).rem_euclid(24.0)))
                .collect();
            let hold = th.full_for_min.ceil() as usize;
            if let Some(m) = fill
                .windows(hold + 1)
                .position(|w| w.iter().all(|f| *f >= th.full))
            {
                let by = minute(m) + th.full_for_min / 60.0 + 0.5;
                bins.push(self.expect("bin_full", &b.asset, by));
            }
            if let Some(m) = fill.iter().position(|f| *f >= th.overflow) {
                bins.push(self.expect("bin_overflow", &b.asset, minute(m) + 0.5));
            }
        }
        let market = role(AssetKind::SmartBin, town::MARKET_BIN)
            .map_or("none".to_owned(), |b| b.asset.clone());
        scenarios.push(self.scenario(
            "bins",
            format!(
                "foot traffic fills the bins, rounds at {} empty them; {market} by the night market overflows in the evening",
                town::ROUNDS.map(clock_time).join(", ")
            ),
            (start, start + 24.0),
            bins,
        ));

        // A sensor dies.
        if let Some(Role { asset, gateway, .. }) = role(AssetKind::SmartBin, town::DYING_BIN.0) {
            let dies = start + town::DYING_BIN.1;
            // The hub's silence limit, in the town's hours (see crate::rules::silence_limit).
            let silence = crate::rules::silence_limit(&self.clock, crate::rules::MIN_SILENCE_MS);
            let by = dies
                + self.town_h(silence as f64 / 1000.0 + LATENCY_S + offline_every(&self.clock));
            let mut s = self.scenario(
                "sensor-dies",
                format!(
                    "{asset}'s sensor stops answering its bus; the other devices on the bus go on"
                ),
                (dies, dies),
                vec![self.expect(crate::rules::RULE_DEVICE, asset, by)],
            );
            s.gateway = Some(gateway.clone());
            scenarios.push(s);
        }

        // A gateway loses its uplink for 20 minutes. The broker announces its last will; the hub
        // raises a task only when the silence outlasts its grace (a third of the silence limit,
        // in real time; the reconnection takes a few seconds more). What it read meanwhile
        // arrives afterwards either way.
        if let Some(gw) = outage_gateway(self.gateways) {
            let from = start + OUTAGE.0;
            let grace_s = crate::rules::silence_limit(&self.clock, crate::rules::MIN_SILENCE_MS / 3)
                as f64
                / 1000.0;
            let dark_s = OUTAGE.1 * 3600.0 / self.clock.speed.max(1e-9);
            let subject = format!("gateway:{gw}");
            let by = from + self.town_h(grace_s + LATENCY_S + offline_every(&self.clock));
            let tasks = if dark_s > grace_s + 15.0 {
                vec![self.expect(crate::rules::RULE_GATEWAY, &subject, by)]
            } else if dark_s + 15.0 > grace_s {
                vec![self.may(crate::rules::RULE_GATEWAY, &subject, by)]
            } else {
                Vec::new()
            };
            let mut s = self.scenario(
                "uplink-outage",
                format!(
                    "{gw} loses its uplink for {} minutes; it keeps reading into its spool and sends the backlog when the uplink returns",
                    (OUTAGE.1 * 60.0).round()
                ),
                (from, from + OUTAGE.1),
                tasks,
            );
            s.gateway = Some(gw);
            scenarios.push(s);
        }

        // The parking cameras' script and the AI cameras' street vendor.
        let mut enforcement = Vec::new();
        let mut trading = Vec::new();
        for cam in self
            .gateways
            .iter()
            .filter_map(|g| g.cameras.as_ref())
            .flat_map(|c| &c.cameras)
        {
            let Some(zone_id) = cam.zone_for(Some(1)).map(ToString::to_string) else {
                continue;
            };
            let Some(zone) = self.rules.zone(&zone_id) else {
                continue;
            };
            match cam.info.kind {
                AssetKind::ParkingCamera => {
                    enforcement.extend(self.parking(&zone_id, zone));
                }
                AssetKind::EncroachmentCamera => {
                    // The longest stretch of the stall's stay outside the zone's trading hours,
                    // minute by minute, against the dwell the rule wants plus two looks.
                    let allowed = |h: f64| match zone.class {
                        ZoneClass::Forbidden => false,
                        _ => self.rules.in_windows(&zone.trading, self.rule_ms(h)),
                    };
                    let (mut best, mut run, mut run_from) = ((0.0, 0.0), 0.0, 0.0);
                    for m in 0..((STALL.1 - STALL.0) * 60.0) as i32 {
                        let h = start + STALL.0 + f64::from(m) / 60.0;
                        if allowed(h) {
                            run = 0.0;
                        } else {
                            if run == 0.0 {
                                run_from = h;
                            }
                            run += 1.0 / 60.0;
                            if run > best.1 {
                                best = (run_from, run);
                            }
                        }
                    }
                    let dwell = self.rules.cfg.trading.dwell_min / 60.0;
                    let look = self.town_h(CAMERA_EVERY.as_secs_f64() / 5.0);
                    let by = best.0 + dwell + 2.0 * look + 0.25 + self.town_h(LATENCY_S);
                    let subject = format!("trading:{zone_id}");
                    if best.1 >= dwell + 2.0 * look {
                        trading.push(self.expect("street_trading", &subject, by));
                    } else if best.1 > 0.0 {
                        trading.push(self.may("street_trading", &subject, by));
                    }
                }
                _ => {}
            }
        }
        scenarios.push(self.scenario(
            "parking-cameras",
            "a car parks in the no-parking stretch and is seen again 90 minutes later; a car stops \
             for a moment; a muck truck drives in during the evening truck ban; the market's \
             permitted truck and the office's whitelisted car do the same without a case"
                .to_owned(),
            (start + CAPTURES[0].after_h, start + CAPTURES[CAPTURES.len() - 1].after_h),
            enforcement,
        ));
        scenarios.push(self.scenario(
            "street-vendor",
            "a street vendor sets up on the pavement of the shopping street outside its market \
             hours and leaves an hour later; the case is filed for an operator to confirm"
                .to_owned(),
            (start + STALL.0, start + STALL.1),
            trading,
        ));

        Plan {
            start_hour: start,
            speed: self.clock.speed,
            started: self.real(start),
            until: self.real(start + 24.0),
            scenarios,
        }
    }

    /// The tasks the parking script raises in a camera's zone.
    fn parking(&self, zone_id: &str, zone: &crate::rules::config::Zone) -> Vec<Expected> {
        let start = self.start_hour;
        let cfg = &self.rules.cfg;
        let enforced = |t: i64| {
            if zone.no_parking.is_empty() {
                zone.class == ZoneClass::Forbidden
            } else {
                self.rules.in_windows(&zone.no_parking, t)
            }
        };
        let mut out = Vec::new();
        let mut first_seen: BTreeMap<&str, f64> = BTreeMap::new();
        for c in CAPTURES {
            let at = start + c.after_h;
            let t = self.rule_ms(at);
            let (colour, plate) = split_plate(c.plate);
            let by = at + self.town_h(LATENCY_S) + 0.1;
            let truck_ban = (colour == "黄" && cfg.truck.yellow_plates)
                && self.rules.in_windows(&zone.truck_ban, t)
                && !cfg.truck.permits.iter().any(|p| p == plate);
            if truck_ban {
                out.push(self.expect(
                    "truck_restricted",
                    &plate_subject("truck", zone_id, plate),
                    by,
                ));
            }
            if !enforced(t) || cfg.parking.whitelist.iter().any(|p| p == plate) {
                continue;
            }
            match first_seen.get(plate) {
                None => {
                    first_seen.insert(plate, at);
                }
                Some(first) => {
                    let gap_min = (at - first) * 60.0;
                    if gap_min >= cfg.parking.min_gap_min && gap_min <= cfg.parking.max_gap_min {
                        out.push(self.expect(
                            "parking_violation",
                            &plate_subject("parking", zone_id, plate),
                            by,
                        ));
                    }
                }
            }
        }
        out
    }
}

/// How often (real seconds) the hub checks for silence at this clock's speed.
fn offline_every(clock: &RuleClock) -> f64 {
    crate::rules::offline_every(clock).as_secs_f64()
}

/// The plate's colour character and the plate itself.
pub fn split_plate(read: &str) -> (&str, &str) {
    let split = read.chars().next().map_or(0, char::len_utf8);
    read.split_at(split)
}

/// The gateway whose uplink the demo cuts: the one with waterlogging point number 1 (its water
/// is receding then, so it has readings to keep), else the last gateway.
pub fn outage_gateway(gateways: &[GatewayConfig]) -> Option<String> {
    town::numbered(gateways)
        .into_iter()
        .find(|(_, d, n)| d.kind == AssetKind::Waterlogging && *n == 1)
        .map(|(gw, _, _)| gw)
        .or(gateways.last())
        .map(|g| g.gateway.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 2026-11-22 00:00 in China.
    const MIDNIGHT: i64 = 1_795_305_600_000 - 8 * 3_600_000;

    fn plan(speed: f64) -> Plan {
        plan_at(16.0, speed)
    }

    fn plan_at(start_hour: f64, speed: f64) -> Plan {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let gateways = super::super::load_gateways(&root.join("firmware-config/gateways")).unwrap();
        let text = std::fs::read_to_string(root.join("deploy/rules/demo-town.toml")).unwrap();
        let rules = Rules::parse(&text, "demo-town.toml").unwrap();
        let now = MIDNIGHT + 16 * 3_600_000;
        let clock = RuleClock {
            real0: now,
            rule0: MIDNIGHT + (start_hour * 3_600_000.0) as i64,
            speed,
        };
        let sun = |_: f64, _: f64| Some(town::DEFAULT_SUN);
        Town {
            gateways: &gateways,
            rules: &rules,
            start_hour,
            clock,
            midnight: MIDNIGHT,
            sun: &sun,
        }
        .plan()
    }

    /// The scenario's required tasks.
    fn tasks(p: &Plan, name: &str) -> Vec<(String, String)> {
        p.scenario(name)
            .unwrap()
            .tasks
            .iter()
            .filter(|t| t.required)
            .map(|t| (t.rule.clone(), t.subject.clone()))
            .collect()
    }

    /// The scenario's optional tasks.
    fn optional(p: &Plan, name: &str) -> Vec<(String, String)> {
        p.scenario(name)
            .unwrap()
            .tasks
            .iter()
            .filter(|t| !t.required)
            .map(|t| (t.rule.clone(), t.subject.clone()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_demo_towns_day_names_its_tasks() {
        let p = plan(120.0);
        for line in p.summary() {
            eprintln!("{line}");
        }
        assert_eq!(
            tasks(&p, "dusk-and-dawn"),
            pairs(&[
                ("lamp_out", "sl-hz-0003"),
                ("lighting_rate", "segment:hanzhong-rd-s2"),
                ("lamp_on_by_day", "sl-zs-0001"),
            ])
        );
        assert_eq!(
            tasks(&p, "rainstorm"),
            pairs(&[
                ("waterlogging_rise", "wl-hz-0001"),
                ("waterlogging", "wl-hz-0001"),
                ("waterlogging_critical", "wl-hz-0001"),
                ("waterlogging", "wl-zs-0001"),
            ])
        );
        assert_eq!(tasks(&p, "dust-episode"), pairs(&[("dust", "dm-hz-0001")]));
        assert_eq!(
            tasks(&p, "bins"),
            pairs(&[("bin_full", "bin-zs-0002"), ("bin_overflow", "bin-zs-0002")])
        );
        assert_eq!(
            tasks(&p, "sensor-dies"),
            pairs(&[("device_offline", "bin-hz-0001")])
        );
        for s in &p.scenarios {
            assert!(s.tasks.iter().all(|t| t.required), "{s:?}");
        }
        let outage = p.scenario("uplink-outage").unwrap();
        assert!(outage.tasks.is_empty());
        assert_eq!(outage.gateway.as_deref(), Some("gw-zhongshan-01"));
        let enforcement = tasks(&p, "parking-cameras");
        assert_eq!(
            enforcement,
            pairs(&[
                (
                    "truck_restricted",
                    &plate_subject("truck", "np-zhongshan-s1", "苏A0T923")
                ),
                (
                    "parking_violation",
                    &plate_subject("parking", "np-zhongshan-s1", "苏A8HK52")
                ),
            ])
        );
        assert_eq!(
            tasks(&p, "street-vendor"),
            pairs(&[("street_trading", "trading:xjk-commercial")])
        );
        // The storm's tasks are due by 19:45, the dead sensor's once the silence limit (a minute of
        // real time, two town hours at this speed) has passed.
        let storm = &p.scenario("rainstorm").unwrap().tasks[0];
        assert!((19.75..20.5).contains(&storm.by_hour), "{}", storm.by_hour);
        let dead = &p.scenario("sensor-dies").unwrap().tasks[0];
        assert!((18.5..20.0).contains(&dead.by_hour), "{}", dead.by_hour);
        let day = &p.scenario("dusk-and-dawn").unwrap().tasks[2];
        assert!(
            day.by_hour < 17.5,
            "caught the same afternoon: {}",
            day.by_hour
        );
    }

    #[test]
    fn in_real_time_the_dead_sensor_and_the_outage_meet_the_silence_limit() {
        let p = plan(1.0);
        let dead = &p.scenario("sensor-dies").unwrap().tasks[0];
        assert!((dead.by_hour - (17.0 + 0.25 + 50.0 / 3600.0)).abs() < 1e-6);
        // Twenty real minutes without the gateway outlast the last will's five-minute grace.
        assert_eq!(
            tasks(&p, "uplink-outage"),
            pairs(&[("gateway_offline", "gateway:gw-zhongshan-01")])
        );
    }

    #[test]
    fn a_late_start_leaves_the_day_burning_lamp_to_the_morning() {
        let p = plan_at(16.8, 120.0);
        let day = p
            .scenario("dusk-and-dawn")
            .unwrap()
            .tasks
            .iter()
            .find(|t| t.rule == "lamp_on_by_day")
            .unwrap()
            .clone();
        assert!(day.required && day.by_hour > 24.0 + 6.7, "{day:?}");
    }

    #[test]
    fn an_event_under_way_at_the_start_may_or_may_not_raise_its_tasks() {
        let p = plan_at(18.5, 120.0);
        assert!(tasks(&p, "rainstorm").is_empty());
        assert!(
            optional(&p, "rainstorm")
                .contains(&("waterlogging_critical".to_owned(), "wl-hz-0001".to_owned()))
        );
        let storm = p.scenario("rainstorm").unwrap();
        assert!(
            (storm.from_hour - 18.0).abs() < 1e-9,
            "today's storm, not tomorrow's"
        );
    }

    #[test]
    fn trading_inside_the_market_hours_is_no_case_and_across_their_end_is_one() {
        // Stall from 10:45 to 11:45: inside 10:00-14:00.
        assert!(tasks(&plan_at(10.0, 120.0), "street-vendor").is_empty());
        assert!(optional(&plan_at(10.0, 120.0), "street-vendor").is_empty());
        // Stall from 13:15 to 14:15: fifteen minutes after the market closes, less than the dwell
        // and two looks (5 + 12 minutes): undecided.
        assert_eq!(
            optional(&plan_at(12.5, 120.0), "street-vendor"),
            pairs(&[("street_trading", "trading:xjk-commercial")])
        );
        // Stall from 13:00 to 14:00 at real time: nothing outside the hours.
        assert!(
            plan_at(12.25, 1.0)
                .scenario("street-vendor")
                .unwrap()
                .tasks
                .is_empty()
        );
    }

    #[test]
    fn plates_split_at_their_colour() {
        assert_eq!(split_plate("绿苏AD12345"), ("绿", "苏AD12345"));
        assert_eq!(split_plate(""), ("", ""));
    }
}
