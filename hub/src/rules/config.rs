//! The rules file: thresholds, durations and windows of every rule (defaults and their sources as
//! in DOMAIN.md), overridable per zone, road segment, grid, site or asset; the town's zones with
//! their class and weekly windows; road segments with their class and road chief; routing of each
//! rule to a department; plate whitelists and permits.
//!
//! Without a file the defaults apply. A broken file is refused with its name, line and column and
//! what is wrong (unknown keys included), never half-applied.
//!
//! ```toml
//! utc_offset = "+08:00"
//!
//! [waterlogging]
//! warn_cm = 15
//!
//! [[zone]]
//! id = "np-zhongshan-s1"
//! class = "forbidden"                    # 严禁区; "controlled" 严控区; "regulated" 规范区
//! no_parking = ["mon-sun 07:00-22:00"]   # enforcement hours
//! truck_ban = ["mon-fri 07:00-09:00", "mon-fri 17:00-19:30"]
//!
//! [[override]]
//! zone = "hz-site-0417"
//! dust = { pm10_15min = 70 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 60 * MIN;

/// Streetlights: the astronomical clock and the lamp faults (TALQ `lampFailure`,
/// `lampUnexpectedOn`; supply tolerance +7 % / −10 % of 220 V).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LampRules {
    /// Lamps are scheduled on this many minutes after sunset (negative: before).
    pub on_offset_min: f64,
    /// ... and off this many minutes after sunrise (negative: before).
    pub off_offset_min: f64,
    /// Below this share of rated power a lamp counts as dark.
    pub lit_ratio: f64,
    /// Rated power when the controller does not report `ratedPower`.
    pub rated_w: f64,
    pub out_for_min: f64,
    pub on_by_day_for_min: f64,
    /// A fault clears after the lamp behaves for this long.
    pub clear_for_min: f64,
    pub voltage_min: f64,
    pub voltage_max: f64,
    pub voltage_for_min: f64,
    /// On/off switchings within the window that count as cycling.
    pub cycles: u32,
    pub cycles_window_min: f64,
}

impl Default for LampRules {
    fn default() -> Self {
        Self {
            on_offset_min: 0.0,
            off_offset_min: 0.0,
            lit_ratio: 0.10,
            rated_w: 150.0,
            out_for_min: 10.0,
            on_by_day_for_min: 15.0,
            clear_for_min: 10.0,
            voltage_min: 198.0,
            voltage_max: 235.0,
            voltage_for_min: 5.0,
            cycles: 4,
            cycles_window_min: 10.0,
        }
    }
}

/// Waterlogging points (GB 51222-2017: one lane's water no deeper than 15 cm; 25 cm closes the road
/// in city flood plans).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WaterRules {
    pub warn_cm: f64,
    pub warn_for_min: f64,
    pub critical_cm: f64,
    /// Early warning: a rise of this much within the window.
    pub rise_cm: f64,
    pub rise_window_min: f64,
    /// Clears below this depth held for `clear_for_min` (hysteresis).
    pub clear_cm: f64,
    pub clear_for_min: f64,
}

impl Default for WaterRules {
    fn default() -> Self {
        Self {
            warn_cm: 15.0,
            warn_for_min: 5.0,
            critical_cm: 25.0,
            rise_cm: 5.0,
            rise_window_min: 10.0,
            clear_cm: 5.0,
            clear_for_min: 10.0,
        }
    }
}

/// Smart bins (FIWARE `WasteContainer`; city practice 80 %).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BinRules {
    /// Fill level 0..1 that counts as full.
    pub full: f64,
    pub full_for_min: f64,
    pub overflow: f64,
    /// Full and not emptied within this long: escalated.
    pub not_emptied_h: f64,
    /// A drop of this much (0..1) is an emptying.
    pub emptied_drop: f64,
    pub fire_c: f64,
    pub lid_open_min: f64,
}

impl Default for BinRules {
    fn default() -> Self {
        Self {
            full: 0.80,
            full_for_min: 10.0,
            overflow: 0.95,
            not_emptied_h: 4.0,
            emptied_drop: 0.50,
            fire_c: 60.0,
            lid_open_min: 30.0,
        }
    }
}

/// Dust and noise at building sites (DB13/2934-2019 80 µg/m³; DB31/964-2016 15-minute means;
/// GB 3095-2012 150; GB 12523-2011 70 / 55 dB(A)).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DustRules {
    /// A quarter-hour PM10 mean above this is a warning.
    pub pm10_15min: f64,
    /// An hourly mean above this is a task (with a background feed).
    pub pm10_hourly: f64,
    /// This many warnings in a day is a task.
    pub warnings_per_day: u32,
    /// Without a background feed: an hourly mean above this is a task.
    pub pm10_hourly_no_background: f64,
    /// The asset id of the background monitor whose PM10 is subtracted (per site, by override).
    pub background: Option<String>,
    /// Clears after a whole hour below the limit.
    pub clear_for_min: f64,
    pub noise_day_db: f64,
    pub noise_night_db: f64,
    /// Day time for noise, local "HH:MM-HH:MM".
    pub noise_day: String,
    pub noise_clear_for_min: f64,
}

impl Default for DustRules {
    fn default() -> Self {
        Self {
            pm10_15min: 80.0,
            pm10_hourly: 80.0,
            warnings_per_day: 3,
            pm10_hourly_no_background: 150.0,
            background: None,
            clear_for_min: 60.0,
            noise_day_db: 70.0,
            noise_night_db: 55.0,
            noise_day: "06:00-22:00".into(),
            noise_clear_for_min: 30.0,
        }
    }
}

/// Sensors stuck on one value, or reporting what cannot be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SensorRules {
    /// Metrics that must vary; identical for `flatline_h` is a stuck sensor.
    pub flatline_metrics: Vec<String>,
    pub flatline_h: f64,
    /// Physical range per metric; a value outside is implausible.
    pub ranges: BTreeMap<String, (f64, f64)>,
    /// Consecutive implausible readings before a task.
    pub implausible_count: u32,
}

impl Default for SensorRules {
    fn default() -> Self {
        let ranges = [
            ("waterDepth", (-5.0, 300.0)),
            // 0..1 by FIWARE, but some bins send percent.
            ("fillingLevel", (-0.05, 105.0)),
            ("pm10", (0.0, 3000.0)),
            ("pm25", (0.0, 2000.0)),
            ("LAeq", (20.0, 140.0)),
            ("voltage", (0.0, 300.0)),
            ("temperature", (-40.0, 90.0)),
            ("relativeHumidity", (0.0, 1.0)),
        ];
        Self {
            flatline_metrics: ["pm10", "pm25", "LAeq", "temperature"]
                .map(String::from)
                .to_vec(),
            flatline_h: 3.0,
            ranges: ranges.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            implausible_count: 3,
        }
    }
}

/// Parking cameras: the two-capture practice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParkingRules {
    /// Captures of the same plate in the same zone at least this far apart are a violation (3–10).
    pub min_gap_min: f64,
    /// ... and at most this far apart (a car seen in the morning and again at night left between).
    pub max_gap_min: f64,
    pub confidence: f64,
    /// Plates never enforced (police, ambulance, permits), as the camera reads them, colour-free.
    pub whitelist: Vec<String>,
    /// One case per plate and zone per this window.
    pub case_window_h: f64,
}

impl Default for ParkingRules {
    fn default() -> Self {
        Self {
            min_gap_min: 5.0,
            max_gap_min: 120.0,
            confidence: 0.9,
            whitelist: Vec::new(),
            case_window_h: 24.0,
        }
    }
}

/// Trucks in restricted zones during restricted hours (FIWARE `RestrictedTrafficArea`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TruckRules {
    /// Vehicle types that count as trucks.
    pub vehicle_types: Vec<String>,
    /// A yellow plate counts as a truck too.
    pub yellow_plates: bool,
    pub confidence: f64,
    /// Plates with a permit to enter.
    pub permits: Vec<String>,
    pub case_window_h: f64,
}

impl Default for TruckRules {
    fn default() -> Self {
        Self {
            vehicle_types: ["truck", "muckTruck", "heavyTruck", "lorry"]
                .map(String::from)
                .to_vec(),
            yellow_plates: true,
            confidence: 0.9,
            permits: Vec::new(),
            case_window_h: 24.0,
        }
    }
}

/// Street trading and encroachment seen by AI cameras (AI accuracy is about 70 %: an operator
/// confirms each case before it is dispatched).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TradingRules {
    /// Detection classes that are street trading or encroachment.
    pub classes: Vec<String>,
    pub confidence: f64,
    /// Detected in the zone this long (or the camera says it dwelt this long): a case.
    pub dwell_min: f64,
    /// Not detected again for this long: the episode is over.
    pub clear_min: f64,
}

impl Default for TradingRules {
    fn default() -> Self {
        Self {
            classes: [
                "streetVendor",
                "streetTrading",
                "stall",
                "encroachment",
                "occupation",
            ]
            .map(String::from)
            .to_vec(),
            confidence: 0.6,
            dwell_min: 5.0,
            clear_min: 15.0,
        }
    }
}

/// Time limits per category (hours), and escalation (CJ/T 315-style case catalogues).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Hours to close, by rule; rules not named get `default_h`.
    pub close_h: BTreeMap<String, f64>,
    pub default_h: f64,
    /// When this share of a task's time limit has passed and it is still not handled, its
    /// department is reminded once (0 turns reminders off).
    pub remind_at: f64,
}

impl Default for Limits {
    fn default() -> Self {
        let close = [
            ("lamp_out", 48.0),
            ("lamp_on_by_day", 48.0),
            ("lamp_electrical", 48.0),
            ("waterlogging", 4.0),
            ("waterlogging_critical", 2.0),
            ("waterlogging_rise", 2.0),
            ("bin_full", 4.0),
            ("bin_overflow", 2.0),
            ("bin_hazard", 1.0),
            ("dust", 24.0),
            ("noise", 24.0),
            ("parking_violation", 24.0),
            ("truck_restricted", 24.0),
            ("street_trading", 4.0),
            ("sensor_flatline", 72.0),
            ("sensor_implausible", 72.0),
            ("lighting_rate", 24.0),
        ];
        Self {
            close_h: close.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            default_h: 48.0,
            remind_at: 0.75,
        }
    }
}

/// The thresholds that overrides may change, as one group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub lamp: LampRules,
    pub waterlogging: WaterRules,
    pub bin: BinRules,
    pub dust: DustRules,
    pub sensor: SensorRules,
}

/// 严禁区 / 严控区 / 规范区.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZoneClass {
    Forbidden,
    Controlled,
    Regulated,
}

/// A zone of the town.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub class: ZoneClass,
    /// When parking is enforced; a forbidden zone without windows is enforced always.
    #[serde(default)]
    pub no_parking: Vec<Window>,
    /// When trucks may not enter.
    #[serde(default)]
    pub truck_ban: Vec<Window>,
    /// When street trading is allowed (严控区: its set hours; 规范区: its stalls' hours); never in a
    /// forbidden zone.
    #[serde(default)]
    pub trading: Vec<Window>,
}

/// Main roads are held to 98 % lighting, secondary and branch roads to 96 %.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoadClass {
    Main,
    Secondary,
    Branch,
}

/// A road segment and its road chief (路长).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "secondary")]
    pub class: RoadClass,
    #[serde(default)]
    pub chief: Option<String>,
}

fn secondary() -> RoadClass {
    RoadClass::Secondary
}

/// Routes rules to a department, optionally only in some segments, grids or zones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub rules: Vec<String>,
    #[serde(default)]
    pub segments: Vec<String>,
    #[serde(default)]
    pub grids: Vec<String>,
    #[serde(default)]
    pub zones: Vec<String>,
    pub department: String,
}

/// Thresholds changed for the assets that match (all given keys must match).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    #[serde(default)]
    pub asset: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub segment: Option<String>,
    #[serde(default)]
    pub grid: Option<String>,
    #[serde(default)]
    pub lamp: Option<toml::Table>,
    #[serde(default)]
    pub waterlogging: Option<toml::Table>,
    #[serde(default)]
    pub bin: Option<toml::Table>,
    #[serde(default)]
    pub dust: Option<toml::Table>,
    #[serde(default)]
    pub sensor: Option<toml::Table>,
}

/// The whole rules file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The town's local time, for windows and nights ("+08:00": China has no daylight saving).
    pub utc_offset: String,
    pub lamp: LampRules,
    pub waterlogging: WaterRules,
    pub bin: BinRules,
    pub dust: DustRules,
    pub sensor: SensorRules,
    pub parking: ParkingRules,
    pub truck: TruckRules,
    pub trading: TradingRules,
    pub limits: Limits,
    #[serde(rename = "zone", skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<Zone>,
    #[serde(rename = "segment", skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    #[serde(rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// Where task changes are sent (see crate::notify).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::Channel>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            utc_offset: "+08:00".into(),
            lamp: LampRules::default(),
            waterlogging: WaterRules::default(),
            bin: BinRules::default(),
            dust: DustRules::default(),
            sensor: SensorRules::default(),
            parking: ParkingRules::default(),
            truck: TruckRules::default(),
            trading: TradingRules::default(),
            limits: Limits::default(),
            zones: Vec::new(),
            segments: Vec::new(),
            routes: Vec::new(),
            overrides: Vec::new(),
            notify: Vec::new(),
        }
    }
}

/// A weekly window, written `"mon-fri 07:00-09:00"`, `"sat,sun 10:00-02:00"` (past midnight) or
/// `"07:00-22:00"` (every day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    /// Days it starts on, bit 0 = Monday.
    days: u8,
    /// Minutes after local midnight.
    from: u16,
    to: u16,
    text: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TryFrom<String> for Window {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad =
            |why: &str| format!("window {text:?}: {why} (write e.g. \"mon-fri 07:00-09:00\")");
        let (days_s, hours) = match text.trim().split_once(' ') {
            Some((d, h)) => (Some(d.trim()), h.trim()),
            None => (None, text.trim()),
        };
        let mut days = 0u8;
        match days_s {
            None => days = 0x7f,
            Some(d) => {
                for part in d.split(',') {
                    let day = |s: &str| DAYS.iter().position(|x| *x == s.trim().to_lowercase());
                    match part.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (
                                day(a).ok_or_else(|| bad("unknown day"))?,
                                day(b).ok_or_else(|| bad("unknown day"))?,
                            );
                            let mut i = a;
                            loop {
                                days |= 1 << i;
                                if i == b {
                                    break;
                                }
                                i = (i + 1) % 7;
                            }
                        }
                        None => days |= 1 << day(part).ok_or_else(|| bad("unknown day"))?,
                    }
                }
            }
        }
        let (from, to) = hours.split_once('-').ok_or_else(|| bad("no time range"))?;
        let hm = |s: &str| -> Result<u16, String> {
            let (h, m) = s
                .trim()
                .split_once(':')
                .ok_or_else(|| bad("time not HH:MM"))?;
            let (h, m): (u16, u16) = (
                h.parse().map_err(|_| bad("hour not a number"))?,
                m.parse().map_err(|_| bad("minute not a number"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(bad("no such time of day"));
            }
            Ok(h * 60 + m)
        };
        Ok(Window {
            days,
            from: hm(from)?,
            to: hm(to)?,
            text,
        })
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.text
    }
}

impl Window {
    /// Whether local time `(weekday 0 = Monday, minute of day)` falls in the window.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let starts = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.from <= self.to {
            starts(weekday) && (self.from..self.to).contains(&minute)
        } else {
            // Past midnight: the evening part on a start day, the morning part the day after one.
            (starts(weekday) && minute >= self.from)
                || (starts((weekday + 6) % 7) && minute < self.to)
        }
    }
}

/// A loading error with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}{at}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub at: String,
    pub message: String,
}

/// The loaded file, with what is derived from it.
#[derive(Debug, Clone)]
pub struct Rules {
    pub cfg: RulesConfig,
    /// The thresholds before overrides.
    pub base: Thresholds,
    pub offset_s: i32,
    pub file: Option<PathBuf>,
}

impl Rules {
    /// The defaults of DOMAIN.md, no zones.
    pub fn defaults() -> Rules {
        Rules::from_config(RulesConfig::default(), None).unwrap_or_else(|_| Rules {
            cfg: RulesConfig::default(),
            base: Thresholds::default(),
            offset_s: 8 * 3600,
            file: None,
        })
    }

    pub fn load(path: &Path) -> Result<Rules, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            at: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Rules::parse(&text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Rules, ConfigError> {
        let cfg: RulesConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            ConfigError {
                file: name.to_owned(),
                at,
                message: e.message().to_owned(),
            }
        })?;
        Rules::from_config(cfg, Some(PathBuf::from(name)))
    }

    fn from_config(cfg: RulesConfig, file: Option<PathBuf>) -> Result<Rules, ConfigError> {
        let err = |message: String| ConfigError {
            file: file
                .as_ref()
                .map_or("rules".into(), |f| f.display().to_string()),
            at: String::new(),
            message,
        };
        let offset_s = parse_offset(&cfg.utc_offset).ok_or_else(|| {
            err(format!(
                "utc_offset {:?}: write it as +08:00",
                cfg.utc_offset
            ))
        })?;
        let base = Thresholds {
            lamp: cfg.lamp.clone(),
            waterlogging: cfg.waterlogging.clone(),
            bin: cfg.bin.clone(),
            dust: cfg.dust.clone(),
            sensor: cfg.sensor.clone(),
        };
        let t = &base;
        let checks = [
            (
                t.waterlogging.clear_cm < t.waterlogging.warn_cm,
                "waterlogging.clear_cm must be below warn_cm (hysteresis)",
            ),
            (
                t.waterlogging.warn_cm <= t.waterlogging.critical_cm,
                "waterlogging.critical_cm must not be below warn_cm",
            ),
            (
                (0.0..=1.0).contains(&t.bin.full) && t.bin.full <= t.bin.overflow,
                "bin.full must be in 0..1 and not above bin.overflow",
            ),
            (
                (0.0..1.0).contains(&t.lamp.lit_ratio),
                "lamp.lit_ratio must be in 0..1",
            ),
            (
                t.lamp.voltage_min < t.lamp.voltage_max,
                "lamp.voltage_min must be below voltage_max",
            ),
            (
                cfg.parking.min_gap_min < cfg.parking.max_gap_min,
                "parking.min_gap_min must be below max_gap_min",
            ),
            (
                parse_day_range(&t.dust.noise_day).is_some(),
                "dust.noise_day must be \"HH:MM-HH:MM\"",
            ),
            (
                (0.0..1.0).contains(&cfg.limits.remind_at),
                "limits.remind_at must be in 0..1 (a share of the time limit; 0 turns reminders off)",
            ),
            (
                (0.0..=1.0).contains(&cfg.trading.confidence)
                    && cfg.trading.dwell_min >= 0.0
                    && cfg.trading.clear_min > 0.0,
                "trading.confidence must be in 0..1, dwell_min not negative and clear_min above 0",
            ),
        ];
        for (ok, why) in checks {
            if !ok {
                return Err(err(why.to_owned()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for z in &cfg.zones {
            if !seen.insert(&z.id) {
                return Err(err(format!("zone {:?} is defined twice", z.id)));
            }
        }
        let mut names = std::collections::HashSet::new();
        for ch in &cfg.notify {
            if !names.insert(&ch.name) {
                return Err(err(format!(
                    "notify channel {:?} is defined twice",
                    ch.name
                )));
            }
            if let Some(p) = ch.problem() {
                return Err(err(format!("notify channel {:?}: {p}", ch.name)));
            }
        }
        for (i, o) in cfg.overrides.iter().enumerate() {
            if o.asset.is_none() && o.zone.is_none() && o.segment.is_none() && o.grid.is_none() {
                return Err(err(format!(
                    "override #{}: name an asset, zone, segment or grid it applies to",
                    i + 1
                )));
            }
            // Each override must apply cleanly on the defaults: a misspelt key is refused now.
            let probe = AssetPlace {
                asset: o.asset.clone().unwrap_or_default(),
                zone: o.zone.clone(),
                segment: o.segment.clone(),
                grid: o.grid.clone(),
            };
            apply_override(&base, o, &probe)
                .map_err(|e| err(format!("override #{}: {e}", i + 1)))?;
        }
        Ok(Rules {
            cfg,
            base,
            offset_s,
            file,
        })
    }

    /// The thresholds for an asset: the defaults with every matching override applied in order.
    pub fn thresholds_for(&self, place: &AssetPlace) -> Thresholds {
        let mut t = self.base.clone();
        for o in &self.cfg.overrides {
            if o.matches(place) {
                // Checked at load, so this cannot fail.
                if let Ok(next) = apply_override(&t, o, place) {
                    t = next;
                }
            }
        }
        t
    }

    pub fn zone(&self, id: &str) -> Option<&Zone> {
        self.cfg.zones.iter().find(|z| z.id == id)
    }

    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.cfg.segments.iter().find(|s| s.id == id)
    }

    /// The department a rule's task goes to at a place.
    pub fn department(&self, rule: &str, place: &AssetPlace) -> String {
        let hit = |list: &[String], v: &Option<String>| {
            list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v))
        };
        self.cfg
            .routes
            .iter()
            .find(|r| {
                r.rules.iter().any(|x| x == rule || x == "*")
                    && hit(&r.segments, &place.segment)
                    && hit(&r.grids, &place.grid)
                    && hit(&r.zones, &place.zone)
            })
            .map_or_else(
                || default_department(rule).to_owned(),
                |r| r.department.clone(),
            )
    }

    /// Hours to close a task of `rule`.
    pub fn limit_ms(&self, rule: &str) -> i64 {
        let h = self
            .cfg
            .limits
            .close_h
            .get(rule)
            .copied()
            .unwrap_or(self.cfg.limits.default_h);
        (h * HOUR as f64) as i64
    }

    /// Local (weekday 0 = Monday, minute of day, days since the epoch) of a UTC time.
    pub fn local(&self, ms: i64) -> (u8, u16, i64) {
        let local = ms.div_euclid(1000) + i64::from(self.offset_s);
        let day = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        ((day + 3).rem_euclid(7) as u8, minute, day)
    }

    pub fn in_windows(&self, windows: &[Window], ms: i64) -> bool {
        let (wd, min, _) = self.local(ms);
        windows.iter().any(|w| w.contains(wd, min))
    }
}

/// Where an asset is, for overrides and routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssetPlace {
    pub asset: String,
    pub zone: Option<String>,
    pub segment: Option<String>,
    pub grid: Option<String>,
}

impl Override {
    fn matches(&self, p: &AssetPlace) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.asset.as_ref().is_none_or(|a| *a == p.asset)
            && eq(&self.zone, &p.zone)
            && eq(&self.segment, &p.segment)
            && eq(&self.grid, &p.grid)
    }
}

fn apply_override(t: &Thresholds, o: &Override, _p: &AssetPlace) -> Result<Thresholds, String> {
    let mut base = toml::Table::try_from(t).map_err(|e| e.to_string())?;
    for (key, table) in [
        ("lamp", &o.lamp),
        ("waterlogging", &o.waterlogging),
        ("bin", &o.bin),
        ("dust", &o.dust),
        ("sensor", &o.sensor),
    ] {
        let Some(table) = table else { continue };
        let Some(toml::Value::Table(group)) = base.get_mut(key) else {
            continue;
        };
        for (k, v) in table {
            group.insert(k.clone(), v.clone());
        }
    }
    toml::Value::Table(base)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())
}

fn parse_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// "HH:MM-HH:MM" as minutes of the day.
pub fn parse_day_range(s: &str) -> Option<(u16, u16)> {
    let w = Window::try_from(s.to_owned()).ok()?;
    (w.days == 0x7f).then_some((w.from, w.to))
}

/// Where each rule's tasks go when no route says otherwise (DOMAIN.md).
pub fn default_department(rule: &str) -> &'static str {
    match rule {
        "lamp_out" | "lamp_on_by_day" | "lamp_electrical" => "lighting",
        "waterlogging" | "waterlogging_rise" => "drainage",
        "waterlogging_critical" | "parking_violation" | "truck_restricted" => "traffic-police",
        "bin_full" | "bin_overflow" | "bin_hazard" => "sanitation",
        "dust" => "construction",
        "noise" | "street_trading" => "enforcement-squad",
        "lighting_rate" => "road-chief",
        _ => "device-contractor",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_domain_md() {
        let r = Rules::defaults();
        assert_eq!(r.offset_s, 8 * 3600);
        assert_eq!(r.base.waterlogging.warn_cm, 15.0);
        assert_eq!(r.base.bin.full, 0.8);
        assert_eq!(r.department("lamp_out", &AssetPlace::default()), "lighting");
        assert_eq!(r.limit_ms("lamp_out"), 48 * HOUR);
    }

    #[test]
    fn overrides_apply_by_place_in_order() {
        let r = Rules::parse(
            r#"
            [dust]
            pm10_15min = 90
            [[override]]
            zone = "site-1"
            dust = { pm10_15min = 70, background = "dust-bg" }
            [[override]]
            asset = "dust-2"
            zone = "site-1"
            dust = { pm10_15min = 60 }
            [[route]]
            rules = ["dust"]
            zones = ["site-1"]
            department = "environment"
            "#,
            "rules.toml",
        )
        .unwrap();
        let place = |a: &str, z: &str| AssetPlace {
            asset: a.into(),
            zone: Some(z.into()),
            ..Default::default()
        };
        assert_eq!(
            r.thresholds_for(&place("dust-1", "other")).dust.pm10_15min,
            90.0
        );
        let t = r.thresholds_for(&place("dust-1", "site-1"));
        assert_eq!(
            (t.dust.pm10_15min, t.dust.background.as_deref()),
            (70.0, Some("dust-bg"))
        );
        assert_eq!(
            r.thresholds_for(&place("dust-2", "site-1")).dust.pm10_15min,
            60.0
        );
        assert_eq!(
            r.department("dust", &place("dust-1", "site-1")),
            "environment"
        );
        assert_eq!(r.department("dust", &place("dust-1", "x")), "construction");
    }

    #[test]
    fn errors_name_file_line_and_what() {
        let e = Rules::parse(
            "[waterlogging]\nwarn_cm = 15\nwarn_cm_x = 3\n",
            "town/rules.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("town/rules.toml:3:1: unknown field `warn_cm_x`"),
            "{e}"
        );
        let e = Rules::parse(
            "[[zone]]\nid = \"a\"\nclass = \"forbidden\"\nno_parking = [\"mon-frx 07:00-09:00\"]\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("r.toml:4:") && e.contains("unknown day"),
            "{e}"
        );
        let e = Rules::parse(
            "[[override]]\nzone = \"z\"\nlamp = { out_for = 3 }\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("override #1") && e.contains("out_for"), "{e}");
        let e = Rules::parse("[waterlogging]\nclear_cm = 20\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hysteresis"), "{e}");
        for bad in [
            "[limits]\nremind_at = 1.5\n",
            "[trading]\nconfidence = 60\n",
        ] {
            let e = Rules::parse(bad, "r.toml").unwrap_err().to_string();
            assert!(
                e.contains("remind_at") || e.contains("trading.confidence"),
                "{e}"
            );
        }
    }

    #[test]
    fn weekly_windows() {
        let w = Window::try_from("mon-fri 07:00-09:00".to_owned()).unwrap();
        assert!(w.contains(0, 7 * 60) && w.contains(4, 8 * 60 + 59));
        assert!(!w.contains(5, 8 * 60) && !w.contains(0, 9 * 60));
        let night = Window::try_from("sat,sun 22:00-02:00".to_owned()).unwrap();
        assert!(night.contains(5, 23 * 60) && night.contains(6, 60) && night.contains(0, 60));
        assert!(!night.contains(0, 23 * 60) && !night.contains(5, 60));
        let r = Rules::defaults();
        // 2026-11-23 was a Monday; 08:00 in China is 00:00 UTC.
        let monday_8 = 1_795_392_000_000;
        assert_eq!(r.local(monday_8), (0, 8 * 60, r.local(monday_8).2));
        assert!(r.in_windows(&[w], monday_8));
    }
}
