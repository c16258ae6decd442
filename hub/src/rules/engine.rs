//! The rules of DOMAIN.md over readings and camera events, as a pure state machine: readings and
//! events go in, in time order, with the time they happened on the rules' clock; task actions come
//! out. No IO and no wall clock, so the live hub, a restarted hub (state reloaded from the store)
//! and `hub rules backtest` (state fresh) run the very same code.
//!
//! Each condition keeps when it started holding and when it started clearing ([`Cond`]): a trigger
//! must hold for its duration, a clearing for its own (hysteresis), and a gap in the data longer
//! than [`MAX_GAP`] restarts the count instead of bridging it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{AssetPlace, HOUR, MIN, Rules, Thresholds, ZoneClass};

/// A longer silence between two readings restarts a duration rather than counting it as held.
pub const MAX_GAP: i64 = 20 * MIN;

/// A task to open (unless the same subject and rule has one open).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Raise {
    pub rule: &'static str,
    /// `maintenance` or `enforcement`.
    pub kind: &'static str,
    pub subject: String,
    pub asset: Option<String>,
    pub place: Place,
    pub severity: &'static str,
    pub title: String,
    pub detail: serde_json::Value,
    /// When the condition was met, on the rules' clock.
    pub at: i64,
    /// `dispatched`, or `filed` when an operator must confirm first.
    pub state: &'static str,
}

/// Where a task is, as stored with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Place {
    pub segment: Option<String>,
    pub grid: Option<String>,
    pub zone: Option<String>,
}

/// What a rule asks of the task store.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Raise(Raise),
    /// The condition cleared by itself: a maintenance task is verified by the sensor and closed;
    /// an enforcement task gets a note.
    Clear {
        rule: &'static str,
        subject: String,
        at: i64,
        note: String,
    },
    /// Still not resolved in time: severity raised, noted in the audit trail.
    Escalate {
        rule: &'static str,
        subject: String,
        at: i64,
        severity: &'static str,
        note: String,
    },
}

impl Action {
    pub fn at(&self) -> i64 {
        match self {
            Action::Raise(r) => r.at,
            Action::Clear { at, .. } | Action::Escalate { at, .. } => *at,
        }
    }

    pub fn rule(&self) -> &'static str {
        match self {
            Action::Raise(r) => r.rule,
            Action::Clear { rule, .. } | Action::Escalate { rule, .. } => rule,
        }
    }
}

/// What the engine knows of an asset.
#[derive(Debug, Clone)]
pub struct Asset {
    pub id: String,
    pub kind: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub place: AssetPlace,
    pub th: Thresholds,
}

impl Asset {
    /// An asset of `kind` at (`lat`, `lon`) and `place` (whose `asset` is its id), with the
    /// thresholds the rules give that place.
    pub fn new(
        rules: &Rules,
        kind: String,
        lat: Option<f64>,
        lon: Option<f64>,
        place: AssetPlace,
    ) -> Asset {
        let th = rules.thresholds_for(&place);
        Asset {
            id: place.asset.clone(),
            kind,
            lat,
            lon,
            place,
            th,
        }
    }

    fn place(&self) -> Place {
        Place {
            segment: self.place.segment.clone(),
            grid: self.place.grid.clone(),
            zone: self.place.zone.clone(),
        }
    }
}

/// The metrics the rules read, by asset kind.
pub fn wanted(kind: &str, metric: &str, rules: &Rules) -> bool {
    let by_kind = match kind {
        "streetlight" => ["activePower", "ratedPower", "voltage", "powerState"].contains(&metric),
        "waterlogging" => metric == "waterDepth",
        "smartBin" => ["fillingLevel", "temperature", "tilted", "lidOpen"].contains(&metric),
        "dustMonitor" => ["pm10", "LAeq"].contains(&metric),
        _ => false,
    };
    by_kind
        || rules
            .base
            .sensor
            .flatline_metrics
            .iter()
            .any(|m| m == metric)
        || rules.base.sensor.ranges.contains_key(metric)
}

/// A condition with a duration to raise and a duration to clear.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cond {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<i64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Edge {
    /// Raised; the condition held since then.
    Raise(i64),
    /// Cleared; the condition was clear since then.
    Clear(i64),
}

impl Cond {
    /// One observation at `t`: whether the trigger holds, whether the clearing condition holds.
    pub fn step(
        &mut self,
        t: i64,
        hold: bool,
        hold_for: i64,
        release: bool,
        release_for: i64,
    ) -> Option<Edge> {
        if self.last.is_some_and(|l| t - l > MAX_GAP) {
            self.since = None;
            self.clear_since = None;
        }
        self.last = Some(t);
        if !self.on {
            if hold {
                let s = *self.since.get_or_insert(t);
                if t - s >= hold_for {
                    self.on = true;
                    self.since = None;
                    self.clear_since = None;
                    return Some(Edge::Raise(s));
                }
            } else {
                self.since = None;
            }
        } else if release {
            let s = *self.clear_since.get_or_insert(t);
            if t - s >= release_for {
                self.on = false;
                self.clear_since = None;
                return Some(Edge::Clear(s));
            }
        } else {
            self.clear_since = None;
        }
        None
    }
}

fn mins(m: f64) -> i64 {
    (m * MIN as f64) as i64
}

fn rfc(ms: i64) -> String {
    protocol::Timestamp::from_unix_millis(ms).to_rfc3339()
}

/// The persisted state of one asset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssetState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub water: Option<WaterState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lamp: Option<LampState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bin: Option<BinState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dust: Option<DustState>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sensor: BTreeMap<String, SensorState>,
    #[serde(skip_serializing_if = "Cond::is_off")]
    pub flatline: Cond,
    #[serde(skip_serializing_if = "Cond::is_off")]
    pub implausible: Cond,
}

impl Cond {
    fn is_off(&self) -> bool {
        *self == Cond::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaterState {
    pub warn: Cond,
    pub critical: Cond,
    pub rise: Cond,
    /// Recent (time, depth) samples, at least a twentieth of the rise window apart.
    pub recent: VecDeque<(i64, f64)>,
    pub peak: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LampState {
    pub rated: Option<f64>,
    pub out: Cond,
    pub by_day: Cond,
    pub volt: Cond,
    pub cycling: Cond,
    pub last_on: Option<bool>,
    pub switches: VecDeque<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BinState {
    pub full: Cond,
    pub overflow: Cond,
    pub escalated: bool,
    /// Highest fill since the last emptying.
    pub peak: f64,
    /// The first reading since the last emptying (time, fill), for the fill rate.
    pub emptied: Option<(i64, f64)>,
    /// The first reading at or above full since the bin was last below it (or emptied).
    pub full_since: Option<i64>,
    pub fire: Cond,
    pub tilt: Cond,
    pub lid: Cond,
}

/// Running block means: (block start, sum, count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DustState {
    pub quarter: Option<(i64, f64, u32)>,
    pub hour: Option<(i64, f64, u32)>,
    /// Completed block means (start, mean), kept for a background monitor's neighbours.
    pub last_quarter: Option<(i64, f64)>,
    pub last_hour: Option<(i64, f64)>,
    /// Warnings today: (local day, count).
    pub warnings: (i64, u32),
    pub task: Cond,
    /// Noise: running energetic mean of the quarter hour.
    pub noise_quarter: Option<(i64, f64, u32)>,
    pub noise: Cond,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SensorState {
    /// The value and since when it has not changed.
    pub same: Option<(f64, i64)>,
    /// The last reading's time: a gap restarts the count.
    pub last: i64,
    pub stuck: bool,
    pub bad_run: u32,
    pub bad: bool,
}

/// A plate seen in a zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub at: i64,
    pub event: i64,
    pub images: Vec<String>,
    pub confidence: f64,
}

/// The persisted state of one zone: first sightings per plate, and cases already made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZoneState {
    pub parked: BTreeMap<String, Sighting>,
    /// Plate → case raised until (no second case before).
    pub parking_cases: BTreeMap<String, i64>,
    pub truck_cases: BTreeMap<String, i64>,
    /// Street trading seen in the zone now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trading: Option<Trading>,
}

/// An episode of street trading in a zone: from its first detection to 15 minutes after its last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trading {
    pub first: i64,
    pub last: i64,
    pub raised: bool,
    /// The detections (event id, time, images), the first few kept as evidence.
    pub evidence: Vec<(i64, i64, Vec<String>)>,
}

/// A camera event as the rules read it.
#[derive(Debug, Clone)]
pub struct CameraEvent {
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub attributes: serde_json::Value,
    pub images: Vec<String>,
}

/// The rules with their state.
#[derive(Debug)]
pub struct Engine {
    pub rules: Arc<Rules>,
    pub assets: HashMap<String, AssetState>,
    pub zones: HashMap<String, ZoneState>,
    /// State keys changed since [`Engine::take_changed`]: `asset:ID` or `zone:ID`.
    changed: HashSet<String>,
}

impl Engine {
    pub fn new(rules: Arc<Rules>) -> Engine {
        Engine {
            rules,
            assets: HashMap::new(),
            zones: HashMap::new(),
            changed: HashSet::new(),
        }
    }

    pub fn take_changed(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changed)
    }

    /// The state to persist under `key` (`None`: delete it).
    pub fn state_json(&self, key: &str) -> Option<String> {
        let json = match key.split_once(':') {
            Some(("asset", id)) => self.assets.get(id).map(serde_json::to_string),
            Some(("zone", id)) => self.zones.get(id).map(serde_json::to_string),
            _ => None,
        };
        json.and_then(Result::ok)
    }

    /// Restores state saved by [`Engine::state_json`]; unreadable state is dropped with a warning
    /// (the rules then start that subject afresh).
    pub fn restore(&mut self, key: &str, json: &str) {
        let ok = match key.split_once(':') {
            Some(("asset", id)) => serde_json::from_str(json)
                .map(|s| {
                    self.assets.insert(id.to_owned(), s);
                })
                .is_ok(),
            Some(("zone", id)) => serde_json::from_str(json)
                .map(|s| {
                    self.zones.insert(id.to_owned(), s);
                })
                .is_ok(),
            _ => false,
        };
        if !ok {
            tracing::warn!(key, "rule state unreadable; starting it afresh");
        }
    }

    /// One good reading of `asset`, at `t` on the rules' clock.
    pub fn reading(&mut self, asset: &Asset, metric: &str, t: i64, v: f64, out: &mut Vec<Action>) {
        let rules = Arc::clone(&self.rules);
        let st = self.assets.entry(asset.id.clone()).or_default();
        self.changed.insert(format!("asset:{}", asset.id));
        sensor(asset, st, metric, t, v, out);
        match (asset.kind.as_str(), metric) {
            ("waterlogging", "waterDepth") => water(asset, st, t, v, out),
            ("streetlight", _) => lamp(&rules, asset, st, metric, t, v, out),
            ("smartBin", _) => bin(asset, st, metric, t, v, out),
            ("dustMonitor", "pm10") => {
                let bg = asset.th.dust.background.as_ref().and_then(|b| {
                    self.assets
                        .get(b)
                        .and_then(|s| s.dust.as_ref())
                        .map(|d| (d.last_quarter, d.last_hour, d.quarter, d.hour))
                });
                let st = self.assets.entry(asset.id.clone()).or_default();
                dust(&rules, asset, st, t, v, bg, out);
            }
            ("dustMonitor", "LAeq") => noise(&rules, asset, st, t, v, out),
            _ => {}
        }
    }

    /// Ends what has gone quiet by `now` (rules' clock): street trading not detected again.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Action>) {
        let clear = mins(self.rules.cfg.trading.clear_min);
        for (zone, st) in self.zones.iter_mut() {
            if st.trading.as_ref().is_some_and(|t| now - t.last > clear) {
                if let Some(t) = st.trading.take()
                    && t.raised
                {
                    out.push(Action::Clear {
                        rule: "street_trading",
                        subject: format!("trading:{zone}"),
                        at: now,
                        note: format!(
                            "not detected again since {}: the traders have left",
                            rfc(t.last)
                        ),
                    });
                }
                self.changed.insert(format!("zone:{zone}"));
            }
        }
    }

    /// One camera event; `asset` is the camera's.
    pub fn camera(&mut self, asset: Option<&Asset>, ev: &CameraEvent, out: &mut Vec<Action>) {
        if ev.event == "detection" {
            self.trading(asset, ev, out);
            return;
        }
        if ev.event != "plate" {
            return;
        }
        let a = &ev.attributes;
        let Some(plate) = a.get("plate").and_then(|p| p.as_str()).map(str::to_owned) else {
            return;
        };
        let zone_id = a
            .get("zone")
            .and_then(|z| z.as_str())
            .map(str::to_owned)
            .or_else(|| asset.and_then(|a| a.place.zone.clone()));
        let Some(zone_id) = zone_id else { return };
        let rules = Arc::clone(&self.rules);
        let Some(zone) = rules.zone(&zone_id) else {
            return;
        };
        let confidence = a.get("confidence").and_then(|c| c.as_f64()).unwrap_or(0.0);
        let colour = a.get("plateColor").and_then(|c| c.as_str()).unwrap_or("");
        let vehicle = a.get("vehicleType").and_then(|c| c.as_str()).unwrap_or("");
        let st = self.zones.entry(zone_id.clone()).or_default();
        self.changed.insert(format!("zone:{zone_id}"));
        let t = ev.at;
        let place = Place {
            segment: asset.and_then(|a| a.place.segment.clone()),
            grid: asset.and_then(|a| a.place.grid.clone()),
            zone: Some(zone_id.clone()),
        };
        let zone_name = zone.name.clone().unwrap_or_else(|| zone_id.clone());
        let this = Sighting {
            at: t,
            event: ev.id,
            images: ev.images.clone(),
            confidence,
        };

        // Trucks in a restricted zone during its ban hours.
        let p = &rules.cfg.truck;
        let truck = p
            .vehicle_types
            .iter()
            .any(|x| x.eq_ignore_ascii_case(vehicle))
            || (p.yellow_plates && colour == "yellow");
        st.truck_cases.retain(|_, until| *until > t);
        if truck
            && confidence >= p.confidence
            && rules.in_windows(&zone.truck_ban, t)
            && !p.permits.contains(&plate)
            && !st.truck_cases.contains_key(&plate)
        {
            st.truck_cases
                .insert(plate.clone(), t + (p.case_window_h * HOUR as f64) as i64);
            out.push(Action::Raise(Raise {
                rule: "truck_restricted",
                kind: "enforcement",
                subject: plate_subject("truck", &zone_id, &plate),
                asset: asset.map(|a| a.id.clone()),
                place: place.clone(),
                severity: "warning",
                title: format!("Truck in restricted zone {zone_name} during ban hours"),
                detail: serde_json::json!({
                    "plate": plate, "plateColor": colour, "vehicleType": vehicle,
                    "zone": zone_id, "at": rfc(t), "confidence": confidence,
                    "evidence": [{"event": ev.id, "at": rfc(t), "images": ev.images}],
                }),
                at: t,
                state: "dispatched",
            }));
        }

        // Parking: two captures in a no-parking zone, far enough apart, inside its hours.
        let p = &rules.cfg.parking;
        let enforced = if zone.no_parking.is_empty() {
            zone.class == ZoneClass::Forbidden
        } else {
            rules.in_windows(&zone.no_parking, t)
        };
        let (min_gap, max_gap) = (mins(p.min_gap_min), mins(p.max_gap_min));
        st.parked.retain(|_, s| t - s.at <= max_gap);
        st.parking_cases.retain(|_, until| *until > t);
        if !enforced
            || confidence < p.confidence
            || p.whitelist.contains(&plate)
            || st.parking_cases.contains_key(&plate)
        {
            return;
        }
        match st.parked.get(&plate) {
            None => {
                st.parked.insert(plate, this);
            }
            Some(first) if t - first.at >= min_gap => {
                let first = first.clone();
                st.parked.remove(&plate);
                st.parking_cases
                    .insert(plate.clone(), t + (p.case_window_h * HOUR as f64) as i64);
                out.push(Action::Raise(Raise {
                    rule: "parking_violation",
                    kind: "enforcement",
                    subject: plate_subject("parking", &zone_id, &plate),
                    asset: asset.map(|a| a.id.clone()),
                    place,
                    severity: "warning",
                    title: format!(
                        "Parked {} min in no-parking zone {zone_name}",
                        (t - first.at) / MIN
                    ),
                    detail: serde_json::json!({
                        "plate": plate, "plateColor": colour, "zone": zone_id,
                        "firstSeen": rfc(first.at), "lastSeen": rfc(t),
                        "evidence": [
                            {"event": first.event, "at": rfc(first.at), "images": first.images, "confidence": first.confidence},
                            {"event": ev.id, "at": rfc(t), "images": ev.images, "confidence": confidence},
                        ],
                    }),
                    at: t,
                    state: "dispatched",
                }));
            }
            Some(_) => {}
        }
    }
}

impl Engine {
    /// Street trading by zone class and weekly windows: detections of a trading class, confident
    /// enough, for `dwell_min` in a zone where trading is not allowed at that hour: a case filed for
    /// an operator to confirm (AI detections are wrong often enough that nobody is sent on one alone).
    fn trading(&mut self, asset: Option<&Asset>, ev: &CameraEvent, out: &mut Vec<Action>) {
        let a = &ev.attributes;
        let rules = Arc::clone(&self.rules);
        let p = &rules.cfg.trading;
        let class = a.get("class").and_then(|c| c.as_str()).unwrap_or("");
        let confidence = a.get("confidence").and_then(|c| c.as_f64()).unwrap_or(0.0);
        if !p.classes.iter().any(|c| c.eq_ignore_ascii_case(class)) || confidence < p.confidence {
            return;
        }
        let Some(zone_id) = a
            .get("zone")
            .and_then(|z| z.as_str())
            .map(str::to_owned)
            .or_else(|| asset.and_then(|a| a.place.zone.clone()))
        else {
            return;
        };
        let Some(zone) = rules.zone(&zone_id) else {
            return;
        };
        let t = ev.at;
        let allowed = match zone.class {
            ZoneClass::Forbidden => false,
            ZoneClass::Controlled | ZoneClass::Regulated => rules.in_windows(&zone.trading, t),
        };
        // A detection closes an episode that had gone quiet before it starts a new one.
        let mut quiet = Vec::new();
        self.tick(t, &mut quiet);
        out.extend(quiet);
        if allowed {
            return;
        }
        let st = self.zones.entry(zone_id.clone()).or_default();
        self.changed.insert(format!("zone:{zone_id}"));
        let ep = st.trading.get_or_insert(Trading {
            first: t,
            last: t,
            raised: false,
            evidence: Vec::new(),
        });
        ep.last = ep.last.max(t);
        if ep.evidence.len() < 4 {
            ep.evidence.push((ev.id, t, ev.images.clone()));
        }
        let dwelt = (t - ep.first).max(
            a.get("dwellS")
                .and_then(|d| d.as_f64())
                .map_or(0, |s| (s * 1000.0) as i64),
        );
        if ep.raised || dwelt < mins(p.dwell_min) {
            return;
        }
        ep.raised = true;
        let name = zone.name.clone().unwrap_or_else(|| zone_id.clone());
        let class_name = match zone.class {
            ZoneClass::Forbidden => "严禁区 forbidden",
            ZoneClass::Controlled => "严控区 controlled",
            ZoneClass::Regulated => "规范区 regulated",
        };
        out.push(Action::Raise(Raise {
            rule: "street_trading",
            kind: "enforcement",
            subject: format!("trading:{zone_id}"),
            asset: asset.map(|a| a.id.clone()),
            place: Place {
                segment: asset.and_then(|a| a.place.segment.clone()),
                grid: asset.and_then(|a| a.place.grid.clone()),
                zone: Some(zone_id.clone()),
            },
            severity: "warning",
            title: format!(
                "Street trading for {} min in {name} ({class_name}) outside its hours: to confirm",
                dwelt / MIN
            ),
            detail: serde_json::json!({
                "zone": zone_id, "zoneClass": zone.class, "class": class, "confidence": confidence,
                "since": rfc(ep.first),
                "evidence": ep.evidence.iter().map(|(id, at, images)| serde_json::json!({"event": id, "at": rfc(*at), "images": images})).collect::<Vec<_>>(),
            }),
            at: t,
            state: "filed",
        }));
    }
}

/// A task subject for a plate in a zone that does not spell the plate out (task lists are seen
/// by roles that must not see plates): the zone and a digest of the plate.
pub fn plate_subject(what: &str, zone: &str, plate: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("{zone}\n{plate}").as_bytes());
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{what}:{zone}:{hex}")
}

fn raise(
    asset: &Asset,
    rule: &'static str,
    severity: &'static str,
    title: String,
    detail: serde_json::Value,
    at: i64,
) -> Action {
    let kind = match rule {
        "dust" | "noise" => "enforcement",
        _ => "maintenance",
    };
    Action::Raise(Raise {
        rule,
        kind,
        subject: asset.id.clone(),
        asset: Some(asset.id.clone()),
        place: asset.place(),
        severity,
        title,
        detail,
        at,
        state: "dispatched",
    })
}

fn clear(asset: &Asset, rule: &'static str, at: i64, note: String) -> Action {
    Action::Clear {
        rule,
        subject: asset.id.clone(),
        at,
        note,
    }
}

fn water(a: &Asset, st: &mut AssetState, t: i64, depth: f64, out: &mut Vec<Action>) {
    let r = &a.th.waterlogging;
    let w = st.water.get_or_insert_with(Default::default);
    let release = depth < r.clear_cm;
    let clear_for = mins(r.clear_for_min);
    w.peak = if w.warn.on || w.critical.on {
        w.peak.max(depth)
    } else {
        depth
    };
    match w.warn.step(
        t,
        depth > r.warn_cm,
        mins(r.warn_for_min),
        release,
        clear_for,
    ) {
        Some(Edge::Raise(since)) => out.push(raise(
            a,
            "waterlogging",
            "warning",
            format!(
                "Water {depth:.0} cm deep at {} (limit {} cm)",
                a.id, r.warn_cm
            ),
            serde_json::json!({"depthCm": depth, "limitCm": r.warn_cm, "since": rfc(since)}),
            t,
        )),
        Some(Edge::Clear(since)) => out.push(clear(
            a,
            "waterlogging",
            t,
            format!(
                "verified by the sensor: water below {} cm since {} (peak {:.0} cm)",
                r.clear_cm,
                rfc(since),
                w.peak
            ),
        )),
        None => {}
    }
    // Critical: the road is to be closed; the traffic police are told at once.
    match w
        .critical
        .step(t, depth >= r.critical_cm, MIN, release, clear_for)
    {
        Some(Edge::Raise(since)) => out.push(raise(
            a,
            "waterlogging_critical",
            "critical",
            format!(
                "Water {depth:.0} cm at {}: close the road (≥ {} cm)",
                a.id, r.critical_cm
            ),
            serde_json::json!({"depthCm": depth, "limitCm": r.critical_cm, "since": rfc(since)}),
            t,
        )),
        Some(Edge::Clear(since)) => out.push(clear(
            a,
            "waterlogging_critical",
            t,
            format!(
                "verified by the sensor: water below {} cm since {}",
                r.clear_cm,
                rfc(since)
            ),
        )),
        None => {}
    }
    // Early warning: rising fast.
    let window = mins(r.rise_window_min);
    while w.recent.front().is_some_and(|(at, _)| t - at > window) {
        w.recent.pop_front();
    }
    let lowest = w.recent.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    let rise = if lowest.is_finite() {
        depth - lowest
    } else {
        0.0
    };
    if w.recent.back().is_none_or(|(at, _)| t - at >= window / 20) {
        w.recent.push_back((t, depth));
    }
    match w.rise.step(t, rise > r.rise_cm, 0, release, clear_for) {
        Some(Edge::Raise(_)) => out.push(raise(
            a,
            "waterlogging_rise",
            "warning",
            format!(
                "Water rising {rise:.1} cm in {} min at {}: early warning",
                r.rise_window_min, a.id
            ),
            serde_json::json!({"depthCm": depth, "riseCm": rise, "windowMin": r.rise_window_min}),
            t,
        )),
        Some(Edge::Clear(_)) => out.push(clear(
            a,
            "waterlogging_rise",
            t,
            format!("verified by the sensor: water below {} cm", r.clear_cm),
        )),
        None => {}
    }
}

/// Whether a lamp at (lat, lon) should be lit at `t` by the astronomical clock.
pub fn scheduled_on(
    rules: &Rules,
    lamp: &super::config::LampRules,
    lat: f64,
    lon: f64,
    t: i64,
) -> Option<bool> {
    let (_, _, day) = rules.local(t);
    let (rise, set) = super::sun::rise_set(lat, lon, day)?;
    let on_at = set + mins(lamp.on_offset_min);
    let off_at = rise + mins(lamp.off_offset_min);
    Some(t < off_at || t >= on_at)
}

fn lamp(
    rules: &Rules,
    a: &Asset,
    st: &mut AssetState,
    metric: &str,
    t: i64,
    v: f64,
    out: &mut Vec<Action>,
) {
    let r = &a.th.lamp;
    let l = st.lamp.get_or_insert_with(Default::default);
    match metric {
        "ratedPower" if v > 0.0 => l.rated = Some(v),
        "activePower" => {
            let rated = l.rated.unwrap_or(r.rated_w);
            let lit = v >= r.lit_ratio * rated;
            let Some(sched) = a
                .lat
                .zip(a.lon)
                .and_then(|(lat, lon)| scheduled_on(rules, r, lat, lon, t))
            else {
                return;
            };
            let clear_for = mins(r.clear_for_min);
            match l
                .out
                .step(t, sched && !lit, mins(r.out_for_min), lit, clear_for)
            {
                Some(Edge::Raise(since)) => out.push(raise(
                    a,
                    "lamp_out",
                    "warning",
                    format!(
                        "Lamp {} out: {v:.0} W of {rated:.0} W while it should be lit",
                        a.id
                    ),
                    serde_json::json!({"powerW": v, "ratedW": rated, "since": rfc(since)}),
                    t,
                )),
                Some(Edge::Clear(since)) => out.push(clear(
                    a,
                    "lamp_out",
                    t,
                    format!(
                        "verified by the sensor: lit ({v:.0} W) since {}",
                        rfc(since)
                    ),
                )),
                None => {}
            }
            match l
                .by_day
                .step(t, !sched && lit, mins(r.on_by_day_for_min), !lit, clear_for)
            {
                Some(Edge::Raise(since)) => out.push(raise(
                    a,
                    "lamp_on_by_day",
                    "info",
                    format!("Lamp {} burning by day ({v:.0} W)", a.id),
                    serde_json::json!({"powerW": v, "ratedW": rated, "since": rfc(since)}),
                    t,
                )),
                Some(Edge::Clear(since)) => out.push(clear(
                    a,
                    "lamp_on_by_day",
                    t,
                    format!("verified by the sensor: off since {}", rfc(since)),
                )),
                None => {}
            }
        }
        "voltage" => {
            let bad = v < r.voltage_min || v > r.voltage_max;
            let edge = l
                .volt
                .step(t, bad, mins(r.voltage_for_min), !bad, mins(r.clear_for_min));
            electrical(
                a,
                l,
                edge,
                format!(
                    "supply {v:.0} V outside {}–{} V",
                    r.voltage_min, r.voltage_max
                ),
                t,
                out,
            );
        }
        "powerState" => {
            let on = v != 0.0;
            let window = mins(r.cycles_window_min);
            if l.last_on.is_some_and(|was| was != on) {
                l.switches.push_back(t);
            }
            l.last_on = Some(on);
            while l.switches.front().is_some_and(|at| t - at > window) {
                l.switches.pop_front();
            }
            let n = l.switches.len();
            let cycling = n >= r.cycles as usize * 2;
            let edge = l.cycling.step(t, cycling, 0, n == 0, mins(r.clear_for_min));
            electrical(
                a,
                l,
                edge,
                format!(
                    "switched on and off {} times in {} min",
                    n / 2,
                    r.cycles_window_min
                ),
                t,
                out,
            );
        }
        _ => {}
    }
}

/// Over- or under-voltage and cycling share one task per lamp; it clears when both are fine.
fn electrical(
    a: &Asset,
    l: &LampState,
    edge: Option<Edge>,
    what: String,
    t: i64,
    out: &mut Vec<Action>,
) {
    match edge {
        Some(Edge::Raise(since)) => out.push(raise(
            a,
            "lamp_electrical",
            "warning",
            format!("Lamp {} electrical fault: {what}", a.id),
            serde_json::json!({"fault": what, "since": rfc(since)}),
            t,
        )),
        Some(Edge::Clear(_)) if !l.volt.on && !l.cycling.on => out.push(clear(
            a,
            "lamp_electrical",
            t,
            "verified by the sensor: supply in range, no cycling".into(),
        )),
        _ => {}
    }
}

fn bin(a: &Asset, st: &mut AssetState, metric: &str, t: i64, v: f64, out: &mut Vec<Action>) {
    let r = &a.th.bin;
    let b = st.bin.get_or_insert_with(Default::default);
    match metric {
        "fillingLevel" => {
            // FIWARE says 0..1; some sensors send percent.
            let f = if v > 1.5 { v / 100.0 } else { v };
            let emptied = f <= b.peak - r.emptied_drop;
            if emptied || b.emptied.is_none() {
                b.emptied = Some((t, f));
                b.peak = f;
                b.escalated = false;
            } else {
                b.peak = b.peak.max(f);
            }
            let note =
                |what: &str| format!("verified by the sensor: emptied at {} ({what})", rfc(t));
            match b
                .full
                .step(t, f >= r.full, mins(r.full_for_min), emptied, 0)
            {
                Some(Edge::Raise(since)) => {
                    let forecast =
                        b.emptied
                            .filter(|(at, f0)| t > *at && f > *f0)
                            .map(|(at, f0)| {
                                let per_h = (f - f0) / ((t - at) as f64 / HOUR as f64);
                                ((1.0 - f) / per_h * 60.0).round()
                            });
                    out.push(raise(
                        a,
                        "bin_full",
                        "warning",
                        format!("Bin {} {:.0} % full", a.id, f * 100.0),
                        serde_json::json!({"fill": f, "limit": r.full, "since": rfc(since), "minutesToOverflow": forecast}),
                        t,
                    ));
                }
                Some(Edge::Clear(_)) => out.push(clear(a, "bin_full", t, note("full"))),
                None => {}
            }
            match b.overflow.step(t, f >= r.overflow, 0, emptied, 0) {
                Some(Edge::Raise(_)) => out.push(raise(
                    a,
                    "bin_overflow",
                    "high",
                    format!("Bin {} overflowing ({:.0} %)", a.id, f * 100.0),
                    serde_json::json!({"fill": f, "limit": r.overflow}),
                    t,
                )),
                Some(Edge::Clear(_)) => out.push(clear(a, "bin_overflow", t, note("overflowing"))),
                None => {}
            }
            if emptied {
                b.full_since = None;
            }
            if f >= r.full {
                b.full_since.get_or_insert(t);
            } else if !b.full.on {
                b.full_since = None;
            }
            let limit = (r.not_emptied_h * HOUR as f64) as i64;
            if let Some(since) = b.full_since
                && b.full.on
                && !b.escalated
                && t - since >= limit
            {
                b.escalated = true;
                out.push(Action::Escalate {
                    rule: "bin_full",
                    subject: a.id.clone(),
                    at: t,
                    severity: "high",
                    note: format!(
                        "full since {} and not emptied within {} h",
                        rfc(since),
                        r.not_emptied_h
                    ),
                });
            }
        }
        "temperature" => {
            let hot = v > r.fire_c;
            let edge = b.fire.step(t, hot, 0, !hot, mins(10.0));
            hazard(
                a,
                b,
                edge,
                format!("temperature {v:.0} °C: possible fire"),
                "critical",
                t,
                out,
            );
        }
        "tilted" => {
            let edge = b.tilt.step(t, v != 0.0, 0, v == 0.0, 0);
            hazard(a, b, edge, "tilted or moved".into(), "high", t, out);
        }
        "lidOpen" => {
            let edge = b.lid.step(t, v != 0.0, mins(r.lid_open_min), v == 0.0, 0);
            hazard(
                a,
                b,
                edge,
                format!("lid open for {} min", r.lid_open_min),
                "warning",
                t,
                out,
            );
        }
        _ => {}
    }
}

fn hazard(
    a: &Asset,
    b: &BinState,
    edge: Option<Edge>,
    what: String,
    severity: &'static str,
    t: i64,
    out: &mut Vec<Action>,
) {
    match edge {
        Some(Edge::Raise(since)) => out.push(raise(
            a,
            "bin_hazard",
            severity,
            format!("Bin {}: {what}", a.id),
            serde_json::json!({"hazard": what, "since": rfc(since)}),
            t,
        )),
        Some(Edge::Clear(_)) if !b.fire.on && !b.tilt.on && !b.lid.on => out.push(clear(
            a,
            "bin_hazard",
            t,
            "verified by the sensor: temperature, position and lid normal".into(),
        )),
        _ => {}
    }
}

type Background = (
    Option<(i64, f64)>,
    Option<(i64, f64)>,
    Option<(i64, f64, u32)>,
    Option<(i64, f64, u32)>,
);

/// The mean of a finished or running block of the background monitor, for the block starting at
/// `start`.
fn bg_mean(done: Option<(i64, f64)>, running: Option<(i64, f64, u32)>, start: i64) -> Option<f64> {
    done.filter(|(s, _)| *s == start)
        .map(|(_, m)| m)
        .or_else(|| {
            running
                .filter(|(s, _, n)| *s == start && *n > 0)
                .map(|(_, sum, n)| sum / f64::from(n))
        })
}

fn dust(
    rules: &Rules,
    a: &Asset,
    st: &mut AssetState,
    t: i64,
    pm10: f64,
    bg: Option<Background>,
    out: &mut Vec<Action>,
) {
    let r = &a.th.dust;
    let d = st.dust.get_or_insert_with(Default::default);
    let q_start = t - t.rem_euclid(15 * MIN);
    let h_start = t - t.rem_euclid(HOUR);
    // A finished quarter hour: its mean (minus the background's) against the warning limit.
    if let Some((start, sum, n)) = d.quarter
        && start != q_start
        && n > 0
    {
        let mean = sum / f64::from(n);
        d.last_quarter = Some((start, mean));
        let net = mean - bg.and_then(|b| bg_mean(b.0, b.2, start)).unwrap_or(0.0);
        let (_, _, day) = rules.local(start);
        if d.warnings.0 != day {
            d.warnings = (day, 0);
        }
        if net > r.pm10_15min {
            d.warnings.1 += 1;
        }
    }
    if d.quarter.is_none_or(|q| q.0 != q_start) {
        d.quarter = Some((q_start, 0.0, 0));
    }
    if let Some(q) = d.quarter.as_mut() {
        q.1 += pm10;
        q.2 += 1;
    }
    // A finished hour: a task when its mean is over the limit, or enough warnings today.
    if let Some((start, sum, n)) = d.hour
        && start != h_start
        && n > 0
    {
        let mean = sum / f64::from(n);
        d.last_hour = Some((start, mean));
        let background = bg.and_then(|b| bg_mean(b.1, b.3, start));
        let (net, limit) = match background {
            Some(b) => (mean - b, r.pm10_hourly),
            None if r.background.is_some() => (mean, r.pm10_hourly),
            None => (mean, r.pm10_hourly_no_background),
        };
        let over = net > limit;
        let warned = d.warnings.1 >= r.warnings_per_day;
        let end = start + HOUR;
        match d.task.step(end, over || warned, 0, !over, mins(r.clear_for_min)) {
            Some(Edge::Raise(_)) => out.push(raise(
                a,
                "dust",
                "warning",
                if over {
                    format!("PM10 hourly mean {net:.0} µg/m³ at {} (limit {limit:.0})", a.id)
                } else {
                    format!("{} PM10 warnings today at {} (15-min mean over {:.0} µg/m³)", d.warnings.1, a.id, r.pm10_15min)
                },
                serde_json::json!({"hourlyMean": mean, "background": background, "net": net, "limit": limit,
                    "warningsToday": d.warnings.1, "hour": rfc(start)}),
                end,
            )),
            Some(Edge::Clear(since)) => out.push(clear(
                a,
                "dust",
                end,
                format!("PM10 below the limit for an hour since {}", rfc(since)),
            )),
            None => {}
        }
    }
    if d.hour.is_none_or(|h| h.0 != h_start) {
        d.hour = Some((h_start, 0.0, 0));
    }
    if let Some(h) = d.hour.as_mut() {
        h.1 += pm10;
        h.2 += 1;
    }
}

fn noise(rules: &Rules, a: &Asset, st: &mut AssetState, t: i64, laeq: f64, out: &mut Vec<Action>) {
    let r = &a.th.dust;
    let d = st.dust.get_or_insert_with(Default::default);
    let q_start = t - t.rem_euclid(15 * MIN);
    if let Some((start, energy, n)) = d.noise_quarter
        && start != q_start
        && n > 0
    {
        // LAeq over the quarter hour: the energetic mean, not the arithmetic one.
        let level = 10.0 * (energy / f64::from(n)).log10();
        let (_, minute, _) = rules.local(start);
        let (from, to) = super::config::parse_day_range(&r.noise_day).unwrap_or((360, 1320));
        let day = (from..to).contains(&minute);
        let limit = if day {
            r.noise_day_db
        } else {
            r.noise_night_db
        };
        let over = level > limit;
        let end = start + 15 * MIN;
        match d
            .noise
            .step(end, over, 0, !over, mins(r.noise_clear_for_min))
        {
            Some(Edge::Raise(_)) => out.push(raise(
                a,
                "noise",
                "warning",
                format!(
                    "Noise LAeq {level:.0} dB(A) over 15 min at {} ({} limit {limit:.0})",
                    a.id,
                    if day { "day" } else { "night" }
                ),
                serde_json::json!({"laeq": level, "limit": limit, "quarter": rfc(start)}),
                end,
            )),
            Some(Edge::Clear(since)) => out.push(clear(
                a,
                "noise",
                end,
                format!("noise below the limit since {}", rfc(since)),
            )),
            None => {}
        }
    }
    if d.noise_quarter.is_none_or(|q| q.0 != q_start) {
        d.noise_quarter = Some((q_start, 0.0, 0));
    }
    if let Some(q) = d.noise_quarter.as_mut() {
        q.1 += 10f64.powf(laeq / 10.0);
        q.2 += 1;
    }
}

/// Stuck sensors and implausible values.
fn sensor(a: &Asset, st: &mut AssetState, metric: &str, t: i64, v: f64, out: &mut Vec<Action>) {
    let r = &a.th.sensor;
    let flat = r.flatline_metrics.iter().any(|m| m == metric);
    let range = r.ranges.get(metric).copied();
    if !flat && range.is_none() {
        return;
    }
    let s = st.sensor.entry(metric.to_owned()).or_default();
    let gap = t - s.last > MAX_GAP;
    s.last = t;
    if flat {
        match s.same {
            Some((x, since)) if x == v && !gap => {
                if !s.stuck && t - since >= (r.flatline_h * HOUR as f64) as i64 {
                    s.stuck = true;
                    if !st.flatline.on {
                        st.flatline.on = true;
                        out.push(raise(
                            a,
                            "sensor_flatline",
                            "warning",
                            format!("Sensor {} stuck: {metric} = {v} since {}", a.id, rfc(since)),
                            serde_json::json!({"metric": metric, "value": v, "since": rfc(since)}),
                            t,
                        ));
                    }
                }
            }
            _ => {
                s.same = Some((v, t));
                s.stuck = false;
            }
        }
    }
    if let Some((lo, hi)) = range {
        if v < lo || v > hi {
            s.bad_run += 1;
            if s.bad_run >= r.implausible_count && !s.bad {
                s.bad = true;
                if !st.implausible.on {
                    st.implausible.on = true;
                    out.push(raise(
                        a,
                        "sensor_implausible",
                        "warning",
                        format!(
                            "Sensor {} reports impossible {metric} = {v} (range {lo}..{hi})",
                            a.id
                        ),
                        serde_json::json!({"metric": metric, "value": v, "range": [lo, hi]}),
                        t,
                    ));
                }
            }
        } else {
            s.bad_run = 0;
            s.bad = false;
        }
    }
    let (stuck, bad) = st
        .sensor
        .values()
        .fold((false, false), |(a, b), s| (a || s.stuck, b || s.bad));
    if st.flatline.on && !stuck {
        st.flatline.on = false;
        out.push(clear(
            a,
            "sensor_flatline",
            t,
            format!("verified by the sensor: {metric} varies again"),
        ));
    }
    if st.implausible.on && !bad {
        st.implausible.on = false;
        out.push(clear(
            a,
            "sensor_implausible",
            t,
            format!("verified by the sensor: {metric} back in range"),
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 2026-11-22 00:00 in China.
    const DAY: i64 = 1_795_305_600_000 - 8 * HOUR;

    fn rules(extra: &str) -> Arc<Rules> {
        Arc::new(Rules::parse(extra, "rules.toml").unwrap())
    }

    fn asset(r: &Rules, id: &str, kind: &str) -> Asset {
        Asset::new(
            r,
            kind.into(),
            Some(32.04),
            Some(118.78),
            AssetPlace {
                asset: id.into(),
                segment: Some("zhongshan-rd-s1".into()),
                grid: Some("grid-3".into()),
                zone: Some("site-1".into()),
            },
        )
    }

    fn rules_of(out: &[Action]) -> Vec<(&'static str, &'static str)> {
        out.iter()
            .map(|a| {
                let what = match a {
                    Action::Raise(_) => "raise",
                    Action::Clear { .. } => "clear",
                    Action::Escalate { .. } => "escalate",
                };
                (what, a.rule())
            })
            .collect()
    }

    /// Feeds one metric every `step` from `from` for `n` readings of `f(i)`.
    fn run(
        e: &mut Engine,
        a: &Asset,
        metric: &str,
        from: i64,
        step: i64,
        n: i64,
        f: impl Fn(i64) -> f64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..n {
            e.reading(a, metric, from + i * step, f(i), &mut out);
        }
        out
    }

    #[test]
    fn water_needs_its_duration_and_clears_with_hysteresis() {
        let r = rules("");
        let a = asset(&r, "wl-1", "waterlogging");
        let mut e = Engine::new(r.clone());
        // 16 cm for 4 minutes (readings every minute): not yet.
        let out = run(&mut e, &a, "waterDepth", DAY, MIN, 5, |_| 16.0);
        assert!(out.is_empty(), "{out:?}");
        // The fifth minute: raised, once.
        let out = run(&mut e, &a, "waterDepth", DAY + 5 * MIN, MIN, 3, |_| 16.0);
        assert_eq!(rules_of(&out), [("raise", "waterlogging")]);
        // Down to 10 cm: under the limit but above the clearing depth; stays.
        let out = run(&mut e, &a, "waterDepth", DAY + 8 * MIN, MIN, 30, |_| 10.0);
        assert!(out.is_empty(), "{out:?}");
        // Below 5 cm for 10 minutes clears it.
        let out = run(&mut e, &a, "waterDepth", DAY + 38 * MIN, MIN, 11, |_| 3.0);
        assert_eq!(rules_of(&out), [("clear", "waterlogging")]);
    }

    #[test]
    fn water_critical_and_rising_fast() {
        let r = rules("");
        let a = asset(&r, "wl-1", "waterlogging");
        let mut e = Engine::new(r.clone());
        // 1 cm a minute: 5 cm in 10 minutes is not "more than 5".
        let out = run(&mut e, &a, "waterDepth", DAY, MIN, 11, |i| 0.5 * i as f64);
        assert!(out.is_empty(), "{out:?}");
        // Then 2 cm a minute: the early warning, then over 15 for 5 min, then 25: critical.
        let out = run(&mut e, &a, "waterDepth", DAY + 11 * MIN, MIN, 15, |i| {
            6.0 + 2.0 * i as f64
        });
        assert_eq!(
            rules_of(&out),
            [
                ("raise", "waterlogging_rise"),
                ("raise", "waterlogging"),
                ("raise", "waterlogging_critical")
            ]
        );
        let Action::Raise(crit) = &out[2] else {
            panic!()
        };
        assert_eq!(crit.severity, "critical");
        assert_eq!(
            r.department("waterlogging_critical", &a.place),
            "traffic-police"
        );
    }

    #[test]
    fn a_gap_in_the_data_restarts_a_duration() {
        let r = rules("");
        let a = asset(&r, "wl-1", "waterlogging");
        let mut e = Engine::new(r.clone());
        let mut out = Vec::new();
        e.reading(&a, "waterDepth", DAY, 16.0, &mut out);
        // The next reading an hour later: the water was not seen above 15 cm for 5 minutes.
        e.reading(&a, "waterDepth", DAY + HOUR, 16.0, &mut out);
        assert!(out.is_empty());
        e.reading(&a, "waterDepth", DAY + HOUR + 5 * MIN, 16.0, &mut out);
        assert_eq!(rules_of(&out), [("raise", "waterlogging")]);
    }

    #[test]
    fn lamps_by_the_astronomical_clock() {
        let r = rules("");
        let a = asset(&r, "sl-1", "streetlight");
        let mut e = Engine::new(r.clone());
        let mut out = Vec::new();
        e.reading(&a, "ratedPower", DAY + 12 * HOUR, 100.0, &mut out);
        // Noon, the lamp burns (60 W of 100): by day, after 15 minutes.
        let out = run(&mut e, &a, "activePower", DAY + 12 * HOUR, MIN, 16, |_| {
            60.0
        });
        assert_eq!(rules_of(&out), [("raise", "lamp_on_by_day")]);
        // It goes off: cleared after 10 minutes off.
        let out = run(&mut e, &a, "activePower", DAY + 13 * HOUR, MIN, 11, |_| 0.5);
        assert_eq!(rules_of(&out), [("clear", "lamp_on_by_day")]);
        // 16:50: dark before sunset (17:02 in Nanjing) is right. From 17:05 it should burn: out
        // after 10 minutes dark.
        let out = run(
            &mut e,
            &a,
            "activePower",
            DAY + 16 * HOUR + 50 * MIN,
            MIN,
            14,
            |_| 0.5,
        );
        assert!(out.is_empty(), "{out:?}");
        let out = run(
            &mut e,
            &a,
            "activePower",
            DAY + 17 * HOUR + 4 * MIN,
            MIN,
            12,
            |_| 0.5,
        );
        assert_eq!(rules_of(&out), [("raise", "lamp_out")]);
        // Lit again for 10 minutes: verified by the sensor.
        let out = run(&mut e, &a, "activePower", DAY + 18 * HOUR, MIN, 11, |_| {
            95.0
        });
        assert_eq!(rules_of(&out), [("clear", "lamp_out")]);
        // Supply at 190 V for 5 minutes; and a relay cycling.
        let out = run(&mut e, &a, "voltage", DAY + 19 * HOUR, MIN, 6, |_| 190.0);
        assert_eq!(rules_of(&out), [("raise", "lamp_electrical")]);
        let out = run(
            &mut e,
            &a,
            "voltage",
            DAY + 19 * HOUR + 6 * MIN,
            MIN,
            11,
            |_| 221.0,
        );
        assert_eq!(rules_of(&out), [("clear", "lamp_electrical")]);
        let out = run(&mut e, &a, "powerState", DAY + 20 * HOUR, MIN, 9, |i| {
            (i % 2) as f64
        });
        assert_eq!(rules_of(&out), [("raise", "lamp_electrical")]);
    }

    #[test]
    fn bins_full_escalated_emptied_and_hazards() {
        let r = rules("");
        let a = asset(&r, "bin-1", "smartBin");
        let mut e = Engine::new(r.clone());
        // Emptied at 06:00, filling 5 points an hour, readings every 10 minutes.
        let out = run(
            &mut e,
            &a,
            "fillingLevel",
            DAY + 6 * HOUR,
            10 * MIN,
            6 * 24,
            |i| (0.1 + 0.05 * i as f64 / 6.0).min(0.9),
        );
        assert_eq!(
            rules_of(&out),
            [("raise", "bin_full"), ("escalate", "bin_full")]
        );
        let Action::Raise(full) = &out[0] else {
            panic!()
        };
        assert!(
            full.detail["minutesToOverflow"].as_f64().unwrap() > 60.0,
            "{:?}",
            full.detail
        );
        // Emptied: the drop clears it at once.
        let mut out = Vec::new();
        e.reading(&a, "fillingLevel", DAY + 30 * HOUR, 0.05, &mut out);
        assert_eq!(rules_of(&out), [("clear", "bin_full")]);
        // Fire: at once, critical.
        e.reading(&a, "temperature", DAY + 30 * HOUR, 75.0, &mut out);
        let Some(Action::Raise(fire)) = out.last() else {
            panic!()
        };
        assert_eq!((fire.rule, fire.severity), ("bin_hazard", "critical"));
        // Percent from sensors that send it.
        let b = asset(&r, "bin-2", "smartBin");
        let out = run(&mut e, &b, "fillingLevel", DAY, MIN, 12, |_| 97.0);
        assert_eq!(
            rules_of(&out),
            [("raise", "bin_overflow"), ("raise", "bin_full")]
        );
    }

    #[test]
    fn dust_hourly_means_warnings_and_background() {
        let r = rules("[[override]]\nasset = \"dust-site\"\ndust = { background = \"dust-bg\" }\n");
        let site = asset(&r, "dust-site", "dustMonitor");
        let bg = asset(&r, "dust-bg", "dustMonitor");
        let plain = asset(&r, "dust-2", "dustMonitor");
        let mut e = Engine::new(r.clone());
        // Without background: an hour at 70 is fine; at 160 it is over 150 (and over 80 in every
        // quarter hour, which are warnings too).
        let out = run(&mut e, &plain, "pm10", DAY, MIN, 61, |_| 70.0);
        assert!(out.is_empty(), "{out:?}");
        let out = run(&mut e, &plain, "pm10", DAY + 61 * MIN, MIN, 60, |_| 160.0);
        assert_eq!(rules_of(&out), [("raise", "dust")]);
        let Action::Raise(t) = &out[0] else { panic!() };
        assert_eq!((t.kind, t.at), ("enforcement", DAY + 2 * HOUR));
        // With a background of 60: the site at 130 is 70 net — under 80 — no task, and no warning.
        let mut out = Vec::new();
        let wobble = |i: i64| (i % 3) as f64;
        for i in 0..121 {
            e.reading(&bg, "pm10", DAY + i * MIN, 59.0 + wobble(i), &mut out);
            e.reading(&site, "pm10", DAY + i * MIN, 129.0 + wobble(i), &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        // The background clears up to 20 for the next hour: 110 net, a task.
        for i in 121..181 {
            e.reading(&bg, "pm10", DAY + i * MIN, 19.0 + wobble(i), &mut out);
            e.reading(&site, "pm10", DAY + i * MIN, 129.0 + wobble(i), &mut out);
        }
        assert_eq!(rules_of(&out), [("raise", "dust")]);
    }

    #[test]
    fn noise_day_and_night_limits() {
        let r = rules("");
        let a = asset(&r, "dust-1", "dustMonitor");
        let mut e = Engine::new(r.clone());
        // 65 dB(A) at 10:00 is within the day limit; at 23:00 over the night one.
        let out = run(&mut e, &a, "LAeq", DAY + 10 * HOUR, MIN, 31, |_| 65.0);
        assert!(out.is_empty(), "{out:?}");
        let out = run(&mut e, &a, "LAeq", DAY + 23 * HOUR, MIN, 16, |_| 65.0);
        assert_eq!(rules_of(&out), [("raise", "noise")]);
    }

    #[test]
    fn flatline_and_implausible() {
        let r = rules("[sensor]\nflatline_h = 2\n");
        let a = asset(&r, "dust-1", "dustMonitor");
        let mut e = Engine::new(r.clone());
        let out = run(&mut e, &a, "temperature", DAY, 10 * MIN, 13, |_| 12.5);
        assert_eq!(rules_of(&out), [("raise", "sensor_flatline")]);
        let out = run(&mut e, &a, "temperature", DAY + 3 * HOUR, MIN, 1, |_| 12.6);
        assert_eq!(rules_of(&out), [("clear", "sensor_flatline")]);
        let out = run(&mut e, &a, "pm10", DAY, MIN, 3, |_| 9999.0);
        assert_eq!(rules_of(&out), [("raise", "sensor_implausible")]);
    }

    fn capture(id: i64, at: i64, plate: &str, colour: &str, confidence: f64) -> CameraEvent {
        CameraEvent {
            id,
            at,
            event: "plate".into(),
            attributes: serde_json::json!({"plate": plate, "plateColor": colour, "confidence": confidence,
                "vehicleType": "car", "zone": "np-1"}),
            images: vec![format!("sha-{id}")],
        }
    }

    const ZONE: &str = r#"
        [parking]
        whitelist = ["苏A0110警"]
        [truck]
        permits = ["苏A6H318"]
        [[zone]]
        id = "np-1"
        class = "forbidden"
        no_parking = ["mon-sun 07:00-22:00"]
        truck_ban = ["mon-sun 07:00-09:00"]
    "#;

    #[test]
    fn parking_needs_two_captures_apart_inside_the_hours() {
        let r = rules(ZONE);
        let cam = asset(&r, "anpr-1", "parkingCamera");
        let mut e = Engine::new(r.clone());
        let mut out = Vec::new();
        let t = DAY + 10 * HOUR;
        // 3 minutes apart: a short stop.
        e.camera(
            Some(&cam),
            &capture(1, t, "苏A8HK52", "blue", 0.95),
            &mut out,
        );
        e.camera(
            Some(&cam),
            &capture(2, t + 3 * MIN, "苏A8HK52", "blue", 0.95),
            &mut out,
        );
        assert!(out.is_empty());
        // Seen again at 6 minutes: a violation naming both captures and their images.
        e.camera(
            Some(&cam),
            &capture(3, t + 6 * MIN, "苏A8HK52", "blue", 0.95),
            &mut out,
        );
        assert_eq!(rules_of(&out), [("raise", "parking_violation")]);
        let Action::Raise(v) = &out[0] else { panic!() };
        assert_eq!(v.detail["evidence"][0]["event"], 1);
        assert_eq!(v.detail["evidence"][1]["images"][0], "sha-3");
        assert!(!v.subject.contains("8HK52") && !v.title.contains("8HK52"));
        // One case per plate and zone: still parked later, no second case.
        e.camera(
            Some(&cam),
            &capture(4, t + 40 * MIN, "苏A8HK52", "blue", 0.95),
            &mut out,
        );
        e.camera(
            Some(&cam),
            &capture(5, t + 50 * MIN, "苏A8HK52", "blue", 0.95),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        // Whitelisted, unsure, or outside the hours (23:00): nothing.
        for (i, (plate, conf, at)) in [
            ("苏A0110警", 0.99, t),
            ("苏A3M771", 0.8, t),
            ("苏A55P21", 0.99, DAY + 23 * HOUR),
        ]
        .into_iter()
        .enumerate()
        {
            let i = i as i64 * 10;
            e.camera(
                Some(&cam),
                &capture(10 + i, at, plate, "blue", conf),
                &mut out,
            );
            e.camera(
                Some(&cam),
                &capture(11 + i, at + 10 * MIN, plate, "blue", conf),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "{out:?}");
    }

    fn detection(id: i64, at: i64, zone: &str, confidence: f64) -> CameraEvent {
        CameraEvent {
            id,
            at,
            event: "detection".into(),
            attributes: serde_json::json!({"class": "streetVendor", "confidence": confidence, "zone": zone}),
            images: vec![format!("img-{id}")],
        }
    }

    #[test]
    fn street_trading_by_zone_class_and_hours_filed_for_confirmation() {
        let r = rules(
            r#"
            [[zone]]
            id = "forbidden-1"
            class = "forbidden"
            [[zone]]
            id = "controlled-1"
            class = "controlled"
            trading = ["mon-sun 17:00-21:00"]
            "#,
        );
        let cam = asset(&r, "ai-1", "encroachmentCamera");
        let mut e = Engine::new(r.clone());
        let mut out = Vec::new();
        let feed =
            |e: &mut Engine, out: &mut Vec<Action>, zone: &str, from: i64, n: i64, conf: f64| {
                for i in 0..n {
                    e.camera(
                        Some(&cam),
                        &detection(100 + i, from + i * MIN, zone, conf),
                        out,
                    );
                }
            };
        // In the controlled zone inside its trading hours: allowed.
        feed(&mut e, &mut out, "controlled-1", DAY + 18 * HOUR, 10, 0.9);
        assert!(out.is_empty(), "{out:?}");
        // Outside its hours, 4 minutes: not yet; the fifth minute: a case, filed for an operator.
        feed(&mut e, &mut out, "controlled-1", DAY + 10 * HOUR, 5, 0.9);
        assert!(out.is_empty(), "{out:?}");
        feed(
            &mut e,
            &mut out,
            "controlled-1",
            DAY + 10 * HOUR + 5 * MIN,
            3,
            0.9,
        );
        assert_eq!(rules_of(&out), [("raise", "street_trading")]);
        let Action::Raise(t) = &out[0] else { panic!() };
        assert_eq!(
            (t.state, t.kind, t.subject.as_str()),
            ("filed", "enforcement", "trading:controlled-1")
        );
        assert_eq!(t.detail["evidence"].as_array().unwrap().len(), 4);
        // Not detected for 15 minutes: the episode ends (a note on the case).
        let mut quiet = Vec::new();
        e.tick(DAY + 10 * HOUR + 22 * MIN, &mut quiet);
        assert!(quiet.is_empty());
        e.tick(DAY + 10 * HOUR + 23 * MIN, &mut quiet);
        assert_eq!(rules_of(&quiet), [("clear", "street_trading")]);
        // In a forbidden zone at any hour; unsure detections never count; a camera's own dwell
        // time counts at once.
        let mut out = Vec::new();
        feed(&mut e, &mut out, "forbidden-1", DAY + 19 * HOUR, 10, 0.5);
        assert!(out.is_empty());
        let mut long = detection(300, DAY + 19 * HOUR, "forbidden-1", 0.8);
        long.attributes["dwellS"] = serde_json::json!(360);
        e.camera(Some(&cam), &long, &mut out);
        assert_eq!(rules_of(&out), [("raise", "street_trading")]);
    }

    #[test]
    fn trucks_in_ban_hours_without_permit() {
        let r = rules(ZONE);
        let cam = asset(&r, "anpr-1", "parkingCamera");
        let mut e = Engine::new(r.clone());
        let mut out = Vec::new();
        e.camera(
            Some(&cam),
            &capture(1, DAY + 8 * HOUR, "苏A0T923", "yellow", 0.95),
            &mut out,
        );
        e.camera(
            Some(&cam),
            &capture(2, DAY + 8 * HOUR + MIN, "苏A0T923", "yellow", 0.95),
            &mut out,
        );
        e.camera(
            Some(&cam),
            &capture(3, DAY + 8 * HOUR, "苏A6H318", "yellow", 0.95),
            &mut out,
        );
        e.camera(
            Some(&cam),
            &capture(4, DAY + 12 * HOUR, "苏A0T924", "yellow", 0.95),
            &mut out,
        );
        assert_eq!(rules_of(&out), [("raise", "truck_restricted")]);
    }

    #[test]
    fn state_survives_a_round_trip() {
        let r = rules("");
        let a = asset(&r, "wl-1", "waterlogging");
        let mut e = Engine::new(r.clone());
        let out = run(&mut e, &a, "waterDepth", DAY, MIN, 4, |_| 16.0);
        assert!(out.is_empty());
        let json = e.state_json("asset:wl-1").unwrap();
        // A restarted engine carries on: one more minute completes the five.
        let mut e2 = Engine::new(r.clone());
        e2.restore("asset:wl-1", &json);
        let out = run(&mut e2, &a, "waterDepth", DAY + 5 * MIN, MIN, 1, |_| 16.0);
        assert_eq!(rules_of(&out), [("raise", "waterlogging")]);
    }

    // The edges of the issue, as tables run on the injected clock: each row a fresh engine fed
    // readings or captures at the times given, and the actions it must produce.

    /// A run of readings of one metric: the first time, the step, how many, the i-th value.
    type Feed = (&'static str, i64, i64, i64, fn(i64) -> f64);

    fn feed(metric: &'static str, from: i64, step: i64, n: i64, f: fn(i64) -> f64) -> Feed {
        (metric, from, step, n, f)
    }

    /// The actions expected, as [`rules_of`] gives them.
    type Expect = Vec<(&'static str, &'static str)>;

    /// A row: the readings in, in order, and the actions out.
    struct Case {
        name: &'static str,
        feeds: Vec<Feed>,
        expect: Expect,
    }

    /// Runs each row on a fresh engine with one asset of `kind`; returns each row's actions.
    fn table(r: &Arc<Rules>, kind: &str, cases: &[Case]) -> Vec<Vec<Action>> {
        let a = asset(r, "a-1", kind);
        cases
            .iter()
            .map(|c| {
                let mut e = Engine::new(r.clone());
                let mut out = Vec::new();
                for &(metric, from, step, n, f) in &c.feeds {
                    out.extend(run(&mut e, &a, metric, from, step, n, f));
                }
                assert_eq!(rules_of(&out), c.expect, "{}: {out:#?}", c.name);
                out
            })
            .collect()
    }

    /// The feeds as one list of (metric, time, value).
    fn readings(feeds: &[Feed]) -> Vec<(&'static str, i64, f64)> {
        feeds
            .iter()
            .flat_map(|&(m, from, step, n, f)| (0..n).map(move |i| (m, from + i * step, f(i))))
            .collect()
    }

    /// Feeds `list` to an engine that is restarted after the first `split` readings: its state
    /// saved with `state_json` and restored into a new engine, as the hub does across a restart.
    /// Returns all the actions and the engine that finished.
    fn restarted(
        r: &Arc<Rules>,
        a: &Asset,
        list: &[(&'static str, i64, f64)],
        split: usize,
    ) -> (Vec<Action>, Engine) {
        let key = format!("asset:{}", a.id);
        let mut out = Vec::new();
        let mut e = Engine::new(r.clone());
        for &(m, t, v) in &list[..split] {
            e.reading(a, m, t, v, &mut out);
        }
        let mut e2 = Engine::new(r.clone());
        if let Some(json) = e.state_json(&key) {
            e2.restore(&key, &json);
        }
        for &(m, t, v) in &list[split..] {
            e2.reading(a, m, t, v, &mut out);
        }
        (out, e2)
    }

    /// The `since` a raise names, in milliseconds.
    fn since_of(out: &[Action], i: usize) -> i64 {
        let Action::Raise(r) = &out[i] else {
            panic!("not a raise: {:?}", out[i])
        };
        protocol::Timestamp::parse_rfc3339(r.detail["since"].as_str().unwrap())
            .unwrap()
            .unix_millis()
    }

    fn sunset(r: &Rules) -> i64 {
        let (_, _, day) = r.local(DAY + 12 * HOUR);
        crate::rules::sun::rise_set(32.04, 118.78, day).unwrap().1
    }

    #[test]
    fn parking_edges() {
        let r = rules(&format!(
            "{ZONE}\n[[zone]]\nid = \"np-2\"\nclass = \"forbidden\"\nno_parking = [\"mon-sun 07:00-22:00\"]\n"
        ));
        let cam = asset(&r, "anpr-1", "parkingCamera");
        let t = DAY + 10 * HOUR;
        let p = "苏A8HK52";
        let c = |id: i64, at: i64, plate: &str, conf: f64| capture(id, at, plate, "blue", conf);
        let c_in = |zone: &str, id: i64, at: i64| {
            let mut ev = capture(id, at, p, "blue", 0.95);
            ev.attributes["zone"] = zone.into();
            ev
        };
        let case = vec![("raise", "parking_violation")];
        let none = vec![];
        let cases: Vec<(&str, Vec<CameraEvent>, Expect)> = vec![
            (
                "4 min 59 s apart: a short stop",
                vec![c(1, t, p, 0.95), c(2, t + 5 * MIN - 1000, p, 0.95)],
                none.clone(),
            ),
            (
                "exactly 5 min apart",
                vec![c(1, t, p, 0.95), c(2, t + 5 * MIN, p, 0.95)],
                case.clone(),
            ),
            (
                "whitelisted plate",
                vec![
                    c(1, t, "苏A0110警", 0.99),
                    c(2, t + 10 * MIN, "苏A0110警", 0.99),
                ],
                none.clone(),
            ),
            (
                "21:50 and 21:59, inside the hours 07:00-22:00",
                vec![
                    c(1, DAY + 21 * HOUR + 50 * MIN, p, 0.95),
                    c(2, DAY + 21 * HOUR + 59 * MIN, p, 0.95),
                ],
                case.clone(),
            ),
            (
                "21:50 and 22:01, the second after the hours",
                vec![
                    c(1, DAY + 21 * HOUR + 50 * MIN, p, 0.95),
                    c(2, DAY + 22 * HOUR + MIN, p, 0.95),
                ],
                none.clone(),
            ),
            (
                "confidence just below 0.9",
                vec![c(1, t, p, 0.8999), c(2, t + 10 * MIN, p, 0.8999)],
                none.clone(),
            ),
            (
                "confidence exactly 0.9",
                vec![c(1, t, p, 0.9), c(2, t + 10 * MIN, p, 0.9)],
                case.clone(),
            ),
            (
                "one capture in each of two zones",
                vec![c_in("np-1", 1, t), c_in("np-2", 2, t + 10 * MIN)],
                none.clone(),
            ),
            (
                "both captures in the second zone",
                vec![c_in("np-2", 1, t), c_in("np-2", 2, t + 10 * MIN)],
                case.clone(),
            ),
        ];
        for (name, events, expect) in &cases {
            let mut e = Engine::new(r.clone());
            let mut out = Vec::new();
            for ev in events {
                e.camera(Some(&cam), ev, &mut out);
            }
            assert_eq!(rules_of(&out), *expect, "{name}: {out:#?}");
        }
    }

    #[test]
    fn truck_edges() {
        // np-1 bans trucks 07:00-09:00; 苏A6H318 has a permit.
        let r = rules(ZONE);
        let cam = asset(&r, "anpr-1", "parkingCamera");
        let case = vec![("raise", "truck_restricted")];
        let cases = [
            (
                "yellow plate at 08:00, in the ban",
                capture(1, DAY + 8 * HOUR, "苏A0T923", "yellow", 0.95),
                case.clone(),
            ),
            (
                "yellow plate at 08:59, in the ban",
                capture(1, DAY + 8 * HOUR + 59 * MIN, "苏A0T923", "yellow", 0.95),
                case.clone(),
            ),
            (
                "yellow plate at 09:01, one minute after the ban",
                capture(1, DAY + 9 * HOUR + MIN, "苏A0T923", "yellow", 0.95),
                vec![],
            ),
            (
                "permit plate in the ban",
                capture(1, DAY + 8 * HOUR, "苏A6H318", "yellow", 0.95),
                vec![],
            ),
            (
                "blue-plated car in the ban",
                capture(1, DAY + 8 * HOUR, "苏A0T923", "blue", 0.95),
                vec![],
            ),
        ];
        for (name, ev, expect) in &cases {
            let mut e = Engine::new(r.clone());
            let mut out = Vec::new();
            e.camera(Some(&cam), ev, &mut out);
            assert_eq!(rules_of(&out), *expect, "{name}: {out:#?}");
        }
    }

    #[test]
    fn lamp_out_counts_from_sunset_plus_the_on_offset() {
        let r = rules("[lamp]\non_offset_min = 15\n");
        // Nanjing (the asset's coordinates), the local day of DAY.
        let set = sunset(&r);
        let on_at = set + 15 * MIN;
        // Dark (0.5 W of 150) every minute from sunset, n readings.
        let dark = |n| feed("activePower", set, MIN, n, |_| 0.5);
        let out = vec![("raise", "lamp_out")];
        let cases = [
            Case {
                name: "dark from sunset to sunset + 14 min: not scheduled yet",
                feeds: vec![dark(15)],
                expect: vec![],
            },
            Case {
                name: "dark until sunset + 24 min: 9 min of the schedule",
                feeds: vec![dark(25)],
                expect: vec![],
            },
            Case {
                name: "dark until sunset + 25 min: 10 min of the schedule",
                feeds: vec![dark(26)],
                expect: out.clone(),
            },
            Case {
                name: "dark until sunset + 60 min",
                feeds: vec![dark(61)],
                expect: out.clone(),
            },
        ];
        let outs = table(&r, "streetlight", &cases);
        for out in &outs[2..] {
            let since = since_of(out, 0);
            assert!(
                since >= on_at,
                "since {since} before sunset + 15 min {on_at}"
            );
            assert_eq!(since, on_at);
            assert_eq!(out[0].at(), on_at + 10 * MIN);
        }
    }

    #[test]
    fn water_edges_at_the_limit_and_around_the_hysteresis_band() {
        let r = rules("");
        let w = |from, n, f| feed("waterDepth", from, MIN, n, f);
        // Raised at minute 5, then 4 and 6 cm alternating every minute for an hour.
        let raised = w(DAY, 6, |_| 16.0);
        let flapping = w(DAY + 6 * MIN, 60, |i| if i % 2 == 0 { 4.0 } else { 6.0 });
        let cases = [
            Case {
                name: "exactly 15.0 cm for 10 min (the rule is > 15)",
                feeds: vec![w(DAY, 11, |_| 15.0)],
                expect: vec![],
            },
            Case {
                name: "15.01 cm for 4 min",
                feeds: vec![w(DAY, 5, |_| 15.01)],
                expect: vec![],
            },
            Case {
                name: "15.01 cm for 5 min",
                feeds: vec![w(DAY, 6, |_| 15.01)],
                expect: vec![("raise", "waterlogging")],
            },
            Case {
                name: "14 and 16 cm alternating every minute for an hour",
                feeds: vec![w(DAY, 61, |i| if i % 2 == 0 { 14.0 } else { 16.0 })],
                expect: vec![],
            },
            Case {
                name: "raised, then 4 and 6 cm alternating every minute for an hour",
                feeds: vec![raised, flapping],
                expect: vec![("raise", "waterlogging")],
            },
            Case {
                name: "raised, flapping, then 4 cm for 9 min",
                feeds: vec![raised, flapping, w(DAY + 66 * MIN, 10, |_| 4.0)],
                expect: vec![("raise", "waterlogging")],
            },
            Case {
                name: "raised, flapping, then 4 cm for 10 min and 20 more",
                feeds: vec![raised, flapping, w(DAY + 66 * MIN, 31, |_| 4.0)],
                expect: vec![("raise", "waterlogging"), ("clear", "waterlogging")],
            },
        ];
        let outs = table(&r, "waterlogging", &cases);
        assert_eq!(outs[2][0].at(), DAY + 5 * MIN);
        // Cleared once, 10 minutes after the flapping stopped.
        assert_eq!(outs[6][1].at(), DAY + 76 * MIN);
    }

    #[test]
    fn bin_emptied_and_refilled_starts_afresh() {
        let r = rules("");
        // Every 10 minutes: 0.875 full (of 0.8), or a single lower reading.
        let full = |from, n| feed("fillingLevel", from, 10 * MIN, n, |_| 0.875);
        let one = |at, f| feed("fillingLevel", at, MIN, 1, f);
        let (raise, clear, esc) = (
            ("raise", "bin_full"),
            ("clear", "bin_full"),
            ("escalate", "bin_full"),
        );
        let cases = [
            Case {
                name: "full 10 min, emptied to 0.1, full 10 min again",
                feeds: vec![
                    full(DAY, 2),
                    one(DAY + 20 * MIN, |_| 0.1),
                    full(DAY + 30 * MIN, 2),
                ],
                expect: vec![raise, clear, raise],
            },
            Case {
                name: "a drop of exactly 0.5 is an emptying",
                feeds: vec![
                    full(DAY, 2),
                    one(DAY + 20 * MIN, |_| 0.375),
                    full(DAY + 30 * MIN, 2),
                ],
                expect: vec![raise, clear, raise],
            },
            Case {
                name: "a drop of 0.49 is not",
                feeds: vec![
                    full(DAY, 2),
                    one(DAY + 20 * MIN, |_| 0.385),
                    full(DAY + 30 * MIN, 2),
                ],
                expect: vec![raise],
            },
            Case {
                name: "two fills of 3 h: the first fill's hours are not carried over",
                feeds: vec![
                    full(DAY, 19),
                    one(DAY + 190 * MIN, |_| 0.1),
                    full(DAY + 200 * MIN, 19),
                ],
                expect: vec![raise, clear, raise],
            },
            Case {
                name: "escalated after 4 h, emptied, refilled for 3 h: not escalated",
                feeds: vec![
                    full(DAY, 25),
                    one(DAY + 250 * MIN, |_| 0.1),
                    full(DAY + 260 * MIN, 19),
                ],
                expect: vec![raise, esc, clear, raise],
            },
            Case {
                name: "escalated, emptied, refilled for 4 h: escalated on its own clock",
                feeds: vec![
                    full(DAY, 25),
                    one(DAY + 250 * MIN, |_| 0.1),
                    full(DAY + 260 * MIN, 25),
                ],
                expect: vec![raise, esc, clear, raise, esc],
            },
        ];
        let outs = table(&r, "smartBin", &cases);
        // The second fill is timed from the refill, not from the first fill.
        assert_eq!(since_of(&outs[0], 2), DAY + 30 * MIN);
        assert_eq!(outs[0][2].at(), DAY + 40 * MIN);
        assert_eq!(since_of(&outs[5], 3), DAY + 260 * MIN);
        assert_eq!(outs[5][4].at(), DAY + 500 * MIN);
    }

    #[test]
    fn a_restart_in_the_middle_of_a_duration_changes_nothing() {
        let r = rules("");
        let set = sunset(&r);
        struct Restart {
            name: &'static str,
            kind: &'static str,
            feeds: Vec<Feed>,
            /// Restarted before the first reading at or after each of these times.
            at: Vec<i64>,
            expect: Vec<(&'static str, &'static str)>,
        }
        let cases = [
            Restart {
                name: "lamp dark from sunset, then lit",
                kind: "streetlight",
                feeds: vec![
                    feed("ratedPower", set - 10 * MIN, MIN, 1, |_| 100.0),
                    // 5 W of 100: out from sunset, raised at sunset + 10 min.
                    feed("activePower", set - 10 * MIN, MIN, 31, |_| 5.0),
                    // Lit from sunset + 21 min: cleared at + 31 min.
                    feed("activePower", set + 21 * MIN, MIN, 15, |_| 95.0),
                ],
                // Halfway through the 10 min dark, and halfway through the 10 min lit.
                at: vec![set + 5 * MIN, set + 26 * MIN],
                expect: vec![("raise", "lamp_out"), ("clear", "lamp_out")],
            },
            Restart {
                name: "bin filling, full, escalated, emptied",
                kind: "smartBin",
                feeds: vec![
                    feed("fillingLevel", DAY, 10 * MIN, 6, |i| 0.2 + 0.1 * i as f64),
                    // Full from + 60 min: raised at + 70, escalated at + 300.
                    feed("fillingLevel", DAY + 60 * MIN, 5 * MIN, 60, |_| 0.875),
                    feed("fillingLevel", DAY + 360 * MIN, MIN, 1, |_| 0.1),
                ],
                // Halfway through the 10 min full, and halfway through the 4 h not emptied.
                at: vec![DAY + 65 * MIN, DAY + 180 * MIN],
                expect: vec![
                    ("raise", "bin_full"),
                    ("escalate", "bin_full"),
                    ("clear", "bin_full"),
                ],
            },
        ];
        for c in &cases {
            let a = asset(&r, "a-1", c.kind);
            let list = readings(&c.feeds);
            let mut e = Engine::new(r.clone());
            let mut whole = Vec::new();
            for &(m, t, v) in &list {
                e.reading(&a, m, t, v, &mut whole);
            }
            assert_eq!(rules_of(&whole), c.expect, "{}: {whole:#?}", c.name);
            for &at in &c.at {
                let split = list.iter().position(|x| x.1 >= at).unwrap();
                let (out, e2) = restarted(&r, &a, &list, split);
                assert_eq!(out, whole, "{}: restarted at reading {split}", c.name);
                assert_eq!(e2.assets, e.assets, "{}: restarted at {split}", c.name);
            }
        }
    }

    #[test]
    fn water_restarted_after_any_reading_acts_as_if_it_ran_through() {
        let r = rules("");
        let a = asset(&r, "wl-1", "waterlogging");
        // A storm, deterministic: quiet, rising 2 cm a minute, over 25 cm, flapping around 15,
        // then around 5, draining, 25 minutes without data (longer than MAX_GAP), up again
        // and down. Readings about a minute apart, some 20 or 40 seconds late.
        let mut x: u32 = 20_261_122;
        let mut noise = move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            f64::from((x >> 16) % 1000) / 1000.0 - 0.5
        };
        let mut list = Vec::new();
        for i in 0..230i64 {
            let depth = match i {
                0..20 => 1.0 + noise(),
                20..35 => 1.0 + 2.0 * (i - 20) as f64 + noise(),
                35..60 => 27.0 + 4.0 * noise(),
                60..90 => 15.0 + if i % 2 == 0 { -1.0 } else { 1.0 } + noise(),
                90..130 => 5.0 + if i % 2 == 0 { -1.0 } else { 1.0 },
                130..150 => 3.0 + noise(),
                150..175 => continue,
                175..195 => 16.0 + noise(),
                _ => 2.0 + noise(),
            };
            list.push(("waterDepth", DAY + i * MIN + (i % 3) * 20_000, depth));
        }
        let mut e = Engine::new(r.clone());
        let mut whole = Vec::new();
        for &(m, t, v) in &list {
            e.reading(&a, m, t, v, &mut whole);
        }
        // Not vacuous: every water rule raised and cleared.
        for rule in ["waterlogging", "waterlogging_critical", "waterlogging_rise"] {
            for what in ["raise", "clear"] {
                assert!(
                    rules_of(&whole).contains(&(what, rule)),
                    "no {what} of {rule}: {:?}",
                    rules_of(&whole)
                );
            }
        }
        for split in 0..=list.len() {
            let (out, e2) = restarted(&r, &a, &list, split);
            assert_eq!(out, whole, "restarted after {split} readings");
            assert_eq!(e2.assets, e.assets, "restarted after {split} readings");
        }
    }
}
