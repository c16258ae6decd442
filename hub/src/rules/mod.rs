//! Rules that raise tasks by themselves (DOMAIN.md's table): the readings and camera events rules
//! of [`engine`], the device and gateway silence rule of [`offline`], and escalation of tasks not
//! handled in time.
//!
//! ```text
//! store writer ─(after commit: series touched, events)─▶ Feed ─▶ rules thread
//!                                                                 │ per series: readings after its cursor, in time order
//!                                                                 │ camera events after the event cursor
//!                                                                 ▼
//!                                                   Engine (pure; clock = the readings' own time)
//!                                                                 │ actions
//!                                                                 ▼
//!        one IMMEDIATE transaction: tasks opened/closed/escalated + the engine's changed state + cursors
//! ```
//!
//! Rules are evaluated incrementally as data is stored, on the time the readings were taken (the
//! clock is injected: [`RuleClock`]), never the wall clock, so `hub rules backtest` over stored
//! history runs the same code and raises the same tasks. The engine's state (conditions in
//! progress, sightings of plates) and the cursors are written in the same transaction as the tasks
//! they produced: a hub restarted at any moment neither forgets a condition in progress nor opens a
//! duplicate task (and the one-open-task-per-(subject, rule) index stands behind that).
//!
//! Readings that arrive older than their series' cursor (a gateway replaying its spool while its
//! newer readings are already in) are stored and shown but not evaluated: a duration rule cannot go
//! back in time. Silence and the agent's in-order replay make this rare.

pub mod config;
pub mod engine;
pub mod lighting;
mod offline;
pub mod sun;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{Owned, Ownership};
use crate::db::{self, Begin, Sql, Tx, args};

pub use config::{ConfigError, Rules};
pub use engine::{Action, Asset, CameraEvent, Engine, Place, Raise, plate_subject};
pub use offline::{
    Changes, DEVICE_CONTRACTOR, EVERY, MIN_SILENCE_MS, RULE_DEVICE, RULE_GATEWAY, evaluate_offline,
    offline_every, silence_limit,
};

/// How far back the rules look for a series or events they have never seen, at start.
pub const LOOKBACK_MS: i64 = 3_600_000;
/// Readings read per series and cycle; the rest next cycle.
const CHUNK: i64 = 20_000;
/// In a cluster, how old a camera event must be before the rules take it (see [`Runner::cycle`]).
const EVENT_SETTLE_MS: i64 = 5_000;
/// A task not accepted this long after dispatch goes to the supervisor (DOMAIN.md).
pub const ACCEPT_WITHIN_MS: i64 = 15 * 60_000;

/// Maps the time a reading was taken to the rules' clock. In production the identity; the demo's
/// town lives `speed` times faster than the timestamps its devices put on readings, and tells the
/// rules so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleClock {
    pub real0: i64,
    pub rule0: i64,
    pub speed: f64,
}

impl RuleClock {
    pub const REAL: RuleClock = RuleClock {
        real0: 0,
        rule0: 0,
        speed: 1.0,
    };

    /// The rules' time of a reading taken at `ts`.
    pub fn at(&self, ts: i64) -> i64 {
        self.rule0 + ((ts - self.real0) as f64 * self.speed) as i64
    }

    /// The real time at which the rules' clock shows `rule_ms`.
    pub fn real_at(&self, rule_ms: i64) -> i64 {
        self.real0 + ((rule_ms - self.rule0) as f64 / self.speed.max(1e-9)) as i64
    }

    /// A span of the rules' time in real milliseconds.
    pub fn real_span(&self, rule_ms: i64) -> i64 {
        (rule_ms as f64 / self.speed.max(1e-9)) as i64
    }
}

/// The rules as the hub runs them.
#[derive(Debug, Clone)]
pub struct Setup {
    pub rules: Arc<Rules>,
    pub clock: RuleClock,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            rules: Arc::new(Rules::defaults()),
            clock: RuleClock::REAL,
        }
    }
}

/// What the store writer has committed since the rules last looked.
#[derive(Debug, Clone, Default)]
pub struct Feed(Arc<(Mutex<Dirty>, Condvar)>);

#[derive(Debug, Default)]
struct Dirty {
    series: HashSet<i64>,
    events: bool,
}

impl Feed {
    /// Called by the store writer after each commit.
    pub fn touch(&self, series: impl IntoIterator<Item = i64>, events: bool) {
        let (lock, cv) = &*self.0;
        let mut d = lock.lock().unwrap_or_else(|p| p.into_inner());
        d.series.extend(series);
        d.events |= events;
        cv.notify_one();
    }

    fn wait(&self, timeout: Duration) -> (HashSet<i64>, bool) {
        let (lock, cv) = &*self.0;
        let mut d = lock.lock().unwrap_or_else(|p| p.into_inner());
        if d.series.is_empty() && !d.events {
            d = cv
                .wait_timeout(d, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        (std::mem::take(&mut d.series), std::mem::take(&mut d.events))
    }
}

/// Opens a task unless one is open for (subject, rule); returns the new task's id.
pub(crate) fn open_task(
    tx: &dyn Sql,
    now_ms: i64,
    r: &Raise,
    department: &str,
    due: i64,
) -> db::Result<Option<i64>> {
    // The partial unique index (one open task per subject and rule) is the conflict target.
    let Some(row) = tx.query_opt(
        "INSERT INTO tasks (kind, category, rule, subject, asset, road_segment, grid, zone, department,
            severity, state, title, detail, opened_at, due_at, updated_at)
         VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $13)
         ON CONFLICT (subject, rule) WHERE state NOT IN ('closed', 'cancelled') DO NOTHING
         RETURNING id",
        args![
            r.kind,
            r.rule,
            r.subject,
            r.asset,
            r.place.segment,
            r.place.grid,
            r.place.zone,
            department,
            r.severity,
            r.state,
            r.title,
            r.detail.to_string(),
            now_ms,
            due,
        ],
    )?
    else {
        return Ok(None);
    };
    let id: i64 = row.get(0)?;
    let note = if r.state == "filed" {
        format!(
            "rule {}: {} (to be confirmed by an operator)",
            r.rule, r.title
        )
    } else {
        format!("rule {}: {}", r.rule, r.title)
    };
    crate::tasks::audit(tx, id, now_ms, "rules", "file", None, r.state, Some(&note))?;
    Ok(Some(id))
}

/// The condition of an open task cleared by itself: a maintenance task is closed, verified by the
/// sensor; an enforcement task (the violation happened) gets the note and stays with its crew.
/// Returns the task's id when it was closed.
pub(crate) fn clear_task(
    tx: &dyn Sql,
    now_ms: i64,
    rule: &str,
    subject: &str,
    note: &str,
) -> db::Result<Option<i64>> {
    let Some(open) = tx.query_opt(
        &format!(
            "SELECT id, state, kind FROM tasks WHERE subject = $1 AND rule = $2 AND state NOT IN ('closed', 'cancelled'){}",
            db::for_update(tx)
        ),
        args![subject, rule],
    )?
    else {
        return Ok(None);
    };
    let (id, from, kind): (i64, String, String) = (open.get(0)?, open.get(1)?, open.get(2)?);
    if kind != "maintenance" {
        crate::tasks::audit(
            tx,
            id,
            now_ms,
            "rules",
            "note",
            Some(&from),
            &from,
            Some(note),
        )?;
        return Ok(None);
    }
    tx.execute(
        "UPDATE tasks SET state = 'closed', updated_at = $2, closed_at = $2 WHERE id = $1",
        args![id, now_ms],
    )?;
    crate::tasks::audit(
        tx,
        id,
        now_ms,
        "rules",
        "cleared",
        Some(&from),
        "closed",
        Some(note),
    )?;
    Ok(Some(id))
}

fn escalate_task(
    tx: &dyn Sql,
    now_ms: i64,
    rule: &str,
    subject: &str,
    severity: &str,
    note: &str,
) -> db::Result<Option<i64>> {
    let Some(open) = tx.query_opt(
        &format!(
            "SELECT id, state FROM tasks WHERE subject = $1 AND rule = $2 AND state NOT IN ('closed', 'cancelled'){}",
            db::for_update(tx)
        ),
        args![subject, rule],
    )?
    else {
        return Ok(None);
    };
    let (id, state): (i64, String) = (open.get(0)?, open.get(1)?);
    tx.execute(
        "UPDATE tasks SET severity = $2, updated_at = $3 WHERE id = $1",
        args![id, severity, now_ms],
    )?;
    crate::tasks::audit(
        tx,
        id,
        now_ms,
        "rules",
        "escalate",
        Some(&state),
        &state,
        Some(note),
    )?;
    Ok(Some(id))
}

/// Reminds and escalates open tasks not handled in time: `[limits] remind_at` of their time
/// limit gone and not yet handled → a reminder to their department; not accepted within
/// [`ACCEPT_WITHIN_MS`] of dispatch → the department's supervisor; not closed by their due time →
/// the road chief of their segment. Each step once per task, in its audit trail (from which the
/// notifications go out). Returns the task ids and what was done to each.
pub fn escalate_overdue(
    c: &dyn Sql,
    rules: &Rules,
    clock: RuleClock,
    now_ms: i64,
) -> db::Result<Vec<(i64, &'static str)>> {
    let tx = Tx::begin(c, Begin::Write)?;
    // FOR UPDATE (PostgreSQL): two hub processes escalating at once remind and escalate once;
    // the second waits, then finds the step already in the trail.
    let lock = db::for_update(c);
    let mut done = Vec::new();
    let share = rules.cfg.limits.remind_at;
    // In 0..1, checked when the rules file is loaded.
    if share > 0.0 {
        let due_soon = tx.query(
            &format!(
                "SELECT t.id, t.state, t.department, t.due_at FROM tasks t
                 WHERE t.state IN ('filed', 'dispatched', 'accepted', 'handling')
                   AND t.due_at IS NOT NULL AND t.due_at > $1
                   AND t.opened_at + (t.due_at - t.opened_at) * CAST($2 AS DOUBLE PRECISION) <= $1
                   AND NOT EXISTS (SELECT 1 FROM task_events e WHERE e.task = t.id AND e.action = 'remind')
                 ORDER BY t.id{lock}"
            ),
            args![now_ms, share],
        )?;
        for r in &due_soon {
            let (id, state, dept, due): (i64, String, Option<String>, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            // Read again now that the row is locked: another hub process may have just reminded.
            if tx
                .query_opt(
                    "SELECT id FROM task_events WHERE task = $1 AND action = 'remind'",
                    args![id],
                )?
                .is_some()
            {
                continue;
            }
            // What is left, in the rules' (the town's) time.
            let left_min = ((due - now_ms) as f64 * clock.speed / 60_000.0).round() as i64;
            let left = if left_min >= 120 {
                format!("{} h {} min", left_min / 60, left_min % 60)
            } else {
                format!("{left_min} min")
            };
            let note = format!(
                "{left} left to close it (due at {}): reminder to {}",
                protocol::Timestamp::from_unix_millis(clock.at(due)).to_rfc3339(),
                dept.as_deref().unwrap_or("its department")
            );
            crate::tasks::audit(
                &tx,
                id,
                now_ms,
                "rules",
                "remind",
                Some(&state),
                &state,
                Some(&note),
            )?;
            done.push((id, "remind"));
        }
    }
    let accept_by = now_ms - clock.real_span(ACCEPT_WITHIN_MS);
    let late = tx.query(
        &format!(
            "SELECT t.id, t.state, t.department FROM tasks t
             WHERE t.state = 'dispatched' AND t.escalation < 1 AND t.opened_at <= $1 ORDER BY t.id{lock}"
        ),
        args![accept_by],
    )?;
    for r in &late {
        let (id, state, dept): (i64, String, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?);
        tx.execute(
            "UPDATE tasks SET escalation = 1, updated_at = $2 WHERE id = $1",
            args![id, now_ms],
        )?;
        let note = format!(
            "not accepted within {} min: escalated to the supervisor of {}",
            ACCEPT_WITHIN_MS / 60_000,
            dept.as_deref().unwrap_or("the department")
        );
        crate::tasks::audit(
            &tx,
            id,
            now_ms,
            "rules",
            "escalate",
            Some(&state),
            &state,
            Some(&note),
        )?;
        done.push((id, "escalate"));
    }
    let overdue = tx.query(
        &format!(
            "SELECT id, state, road_segment FROM tasks
             WHERE state NOT IN ('closed', 'cancelled') AND escalation < 2 AND due_at IS NOT NULL AND due_at <= $1
             ORDER BY id{lock}"
        ),
        args![now_ms],
    )?;
    for r in &overdue {
        let (id, state, segment): (i64, String, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let chief = segment.as_deref().and_then(|s| {
            rules.segment(s).map(|seg| {
                seg.chief
                    .clone()
                    .unwrap_or_else(|| format!("the road chief of {s}"))
            })
        });
        let to = chief.unwrap_or_else(|| match &segment {
            Some(s) => format!("the road chief of {s}"),
            None => "the district road chief".into(),
        });
        tx.execute(
            "UPDATE tasks SET escalation = 2, updated_at = $2 WHERE id = $1",
            args![id, now_ms],
        )?;
        let note = format!("not closed by its time limit: escalated to {to} (路长)");
        crate::tasks::audit(
            &tx,
            id,
            now_ms,
            "rules",
            "escalate",
            Some(&state),
            &state,
            Some(&note),
        )?;
        done.push((id, "escalate"));
    }
    tx.commit()?;
    Ok(done)
}

/// The assets the rules know, and which series of theirs the rules read.
#[derive(Debug, Default)]
struct Catalogue {
    assets: HashMap<String, Asset>,
    by_device: HashMap<(String, String), String>,
    /// Asset id → its gateway.
    gateway: HashMap<String, String>,
    /// Series id → (asset id, metric) if the rules read it.
    series: HashMap<i64, Option<(String, String)>>,
}

impl Catalogue {
    fn load(c: &dyn Sql, rules: &Rules) -> db::Result<Catalogue> {
        let mut cat = Catalogue::default();
        let rows = c.query(
            "SELECT id, kind, gateway, device, lat, lon, road_segment, grid, zone FROM assets",
            &[],
        )?;
        for r in &rows {
            let (id, kind, gw, dev): (String, String, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let (lat, lon): (Option<f64>, Option<f64>) = (r.get(4)?, r.get(5)?);
            let (seg, grid, zone): (Option<String>, Option<String>, Option<String>) =
                (r.get(6)?, r.get(7)?, r.get(8)?);
            cat.gateway.insert(id.clone(), gw.clone());
            cat.by_device.insert((gw, dev), id.clone());
            cat.assets.insert(
                id.clone(),
                Asset::new(
                    rules,
                    kind,
                    lat,
                    lon,
                    config::AssetPlace {
                        asset: id,
                        zone,
                        segment: seg,
                        grid,
                    },
                ),
            );
        }
        Ok(cat)
    }

    /// Which (asset, metric) a series is, if the rules read it; unknown series are looked up (and
    /// the assets reloaded when the series belongs to a device not known yet).
    fn series(
        &mut self,
        c: &dyn Sql,
        rules: &Rules,
        id: i64,
    ) -> db::Result<Option<(String, String)>> {
        if let Some(known) = self.series.get(&id) {
            return Ok(known.clone());
        }
        let Some(r) = c.query_opt(
            "SELECT gateway, device, metric FROM series WHERE id = $1",
            args![id],
        )?
        else {
            return Ok(None);
        };
        let (gw, dev, metric): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let key = (gw, dev);
        if !self.by_device.contains_key(&key) {
            *self = Catalogue {
                series: std::mem::take(&mut self.series),
                ..Catalogue::load(c, rules)?
            };
        }
        // A device no gateway has announced yet: not cached, asked again next time.
        let Some(asset) = self.by_device.get(&key) else {
            return Ok(None);
        };
        let kind = self.assets.get(asset).map_or("", |a| a.kind.as_str());
        let hit = engine::wanted(kind, &metric, rules).then(|| (asset.clone(), metric));
        self.series.insert(id, hit.clone());
        Ok(hit)
    }
}

/// Feeds `engine` the good readings of one asset's `series` in `(after, to]` (per series), merged
/// in time order; returns the newest timestamp read per series and whether a series had more.
fn feed_asset(
    c: &dyn Sql,
    engine: &mut Engine,
    clock: RuleClock,
    asset: &Asset,
    series: &[(i64, String, i64)],
    to: i64,
    out: &mut Vec<Action>,
) -> db::Result<(Vec<(i64, i64)>, bool)> {
    let mut merged: Vec<(i64, usize, f64)> = Vec::new();
    let mut newest = Vec::new();
    let mut more = false;
    for (i, (id, _, after)) in series.iter().enumerate() {
        // CHUNK readings at most; the rules see the good numeric ones, and the series is read up to
        // the last one, whatever it is (so a run of bad readings cannot stall it).
        let points = crate::store::raw::range(
            c,
            *id,
            after.saturating_add(1),
            to.saturating_add(1),
            Some(CHUNK as usize),
        )?;
        more |= points.len() as i64 == CHUNK;
        if let Some(last) = points.last() {
            newest.push((*id, last.ts));
        }
        let rows: Vec<(i64, f64)> = points
            .iter()
            .filter_map(|p| Some((p.ts, p.good()?)))
            .collect();
        merged.extend(rows.into_iter().map(|(ts, v)| (ts, i, v)));
    }
    merged.sort_by_key(|x| (x.0, x.1));
    for (ts, i, v) in merged {
        engine.reading(asset, &series[i].1, clock.at(ts), v, out);
    }
    Ok((newest, more))
}

fn camera_event(row: &db::Row) -> db::Result<(CameraEvent, String, String)> {
    let attributes: serde_json::Value =
        serde_json::from_str(&row.get::<String>(5)?).unwrap_or_default();
    let evidence: serde_json::Value =
        serde_json::from_str(&row.get::<String>(6)?).unwrap_or_default();
    let images = evidence
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("sha256").and_then(|s| s.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        CameraEvent {
            id: row.get(0)?,
            at: row.get(4)?,
            event: row.get(3)?,
            attributes,
            images,
        },
        row.get(1)?,
        row.get(2)?,
    ))
}

/// The live evaluation: engine, catalogue and cursors, persisted with every change.
struct Runner {
    conn: Box<dyn Sql + Send>,
    setup: Setup,
    engine: Engine,
    cat: Catalogue,
    cursors: HashMap<i64, i64>,
    /// The camera event cursor of each partition held.
    event_cursors: HashMap<u32, i64>,
    /// Whether state, catalogue and cursors are loaded (a failed reload leaves this false, and
    /// nothing is evaluated until one succeeds).
    loaded: bool,
    /// The partitions this process holds (all, for the only hub), as last seen.
    own: Ownership,
    owned: Arc<Owned>,
    /// Series that existed when the rules started: without a cursor they look back
    /// [`LOOKBACK_MS`]; series created later are read from their start.
    started_with: HashSet<i64>,
    started_at: i64,
}

impl Runner {
    fn open(
        conn: Box<dyn Sql + Send>,
        setup: Setup,
        mut own: Ownership,
        now_ms: i64,
    ) -> db::Result<Runner> {
        let owned = own.borrow_and_update().clone();
        let mut r = Runner {
            conn,
            engine: Engine::new(Arc::clone(&setup.rules)),
            setup,
            cat: Catalogue::default(),
            cursors: HashMap::new(),
            event_cursors: HashMap::new(),
            loaded: false,
            own,
            owned,
            started_with: HashSet::new(),
            started_at: now_ms,
        };
        r.reload()?;
        Ok(r)
    }

    /// (Re)loads everything from the store: what a restart does.
    fn reload(&mut self) -> db::Result<()> {
        // Nothing is evaluated on half-loaded state: set again at the end.
        self.loaded = false;
        let c = &*self.conn;
        self.cat = Catalogue::load(c, &self.setup.rules)?;
        self.engine = Engine::new(Arc::clone(&self.setup.rules));
        // Only the state of what this process evaluates: another process writes the rest.
        for r in c.query("SELECT key, state FROM rule_state", &[])? {
            let key: String = r.get(0)?;
            if self.mine(&key) {
                self.engine.restore(&key, &r.get::<String>(1)?);
            }
        }
        self.engine.take_changed();
        self.cursors = c
            .query("SELECT series, ts FROM rule_cursor", &[])?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<db::Result<_>>()?;
        self.started_with = self.all_series()?;
        let meta = |key: &str| -> db::Result<Option<i64>> {
            c.query_opt("SELECT value FROM rule_meta WHERE key = $1", args![key])?
                .map(|r| r.get(0))
                .transpose()
        };
        // A partition's own cursor; else the one hub's cursor (a hub that became a cluster);
        // else events of the last LOOKBACK_MS.
        let global = meta("event_cursor")?;
        // The only hub after a cluster: where the cluster's partitions had got to (the furthest;
        // the one hub's own key stopped moving when the cluster began).
        let after_cluster: Option<i64> = c
            .query_opt(
                "SELECT MAX(value) FROM rule_meta WHERE key LIKE 'event_cursor:%'",
                &[],
            )?
            .and_then(|r| r.get::<Option<i64>>(0).transpose())
            .transpose()?;
        self.event_cursors.clear();
        let mut lookback: Option<i64> = None;
        for &p in &self.owned.parts {
            let cursor = match self.owned.hub {
                Some(_) => meta(&format!("event_cursor:{p}"))?.or(global),
                // None < Some: the furthest of the two that exist.
                None => global.max(after_cluster),
            };
            let cursor = match (cursor, lookback) {
                (Some(v), _) | (None, Some(v)) => v,
                (None, None) => {
                    // Read once for every partition without a cursor.
                    let v = db::one(
                        c,
                        "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM events WHERE received < $1",
                        args![self.started_at - LOOKBACK_MS],
                    )?;
                    lookback = Some(v);
                    v
                }
            };
            self.event_cursors.insert(p, cursor);
        }
        self.loaded = true;
        Ok(())
    }

    /// Takes a change of the partitions held: reloads the state of what is now this process's.
    /// Returns whether anything changed.
    fn follow_ownership(&mut self) -> db::Result<bool> {
        if !self.own.has_changed().unwrap_or(false) {
            return Ok(false);
        }
        let now = self.own.borrow_and_update().clone();
        // New gateways change nothing here (a gateway's partition is its hash).
        if now.parts == self.owned.parts {
            self.owned = now;
            return Ok(false);
        }
        self.owned = now;
        self.reload()?;
        Ok(true)
    }

    /// Whether this process evaluates (and so writes) the rule state under `key`.
    fn mine(&self, key: &str) -> bool {
        match key.split_once(':') {
            Some(("asset", id)) => self.cat.gateway.get(id).is_none_or(|g| self.owned.owns(g)),
            Some(("zone", z)) => self.owned.owns_zone(z),
            _ => true,
        }
    }

    /// A dust monitor's background monitor in another partition: its state as its holder last
    /// saved it (read, never written here).
    fn foreign_backgrounds(&mut self, assets: &HashSet<&String>) -> db::Result<()> {
        let wanted: Vec<String> = assets
            .iter()
            .filter_map(|a| self.cat.assets.get(*a))
            .filter_map(|a| a.th.dust.background.clone())
            .filter(|b| !self.mine(&format!("asset:{b}")))
            .collect();
        for b in wanted {
            let key = format!("asset:{b}");
            if let Some(r) = self
                .conn
                .query_opt("SELECT state FROM rule_state WHERE key = $1", args![key])?
            {
                self.engine.restore(&key, &r.get::<String>(0)?);
            }
        }
        Ok(())
    }

    /// The key in `rule_meta` of partition `p`'s event cursor.
    fn cursor_key(&self, p: u32) -> String {
        match self.owned.hub {
            Some(_) => format!("event_cursor:{p}"),
            None => "event_cursor".into(),
        }
    }

    fn all_series(&self) -> db::Result<HashSet<i64>> {
        self.conn
            .query("SELECT id FROM series", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Evaluates what changed; returns the tasks changed (id, action) and whether more is waiting.
    fn cycle(
        &mut self,
        dirty: HashSet<i64>,
        events: bool,
        now_ms: i64,
    ) -> db::Result<(Vec<(i64, &'static str)>, bool)> {
        let rules = Arc::clone(&self.setup.rules);
        let clock = self.setup.clock;
        if !self.loaded {
            return Err(db::DbError::Other(
                "the rules' state is not loaded; loading it again".into(),
            ));
        }
        if self.owned.parts.is_empty() {
            // Nothing held (a cluster hub between leases): nothing to evaluate.
            return Ok((Vec::new(), false));
        }
        // Dirty series grouped by asset, each with its cursor.
        let mut by_asset: HashMap<String, Vec<(i64, String, i64)>> = HashMap::new();
        for id in dirty {
            if let Some((asset, metric)) = self.cat.series(&*self.conn, &rules, id)? {
                let gw = self.cat.gateway.get(&asset);
                if !gw.is_some_and(|g| self.owned.owns(g)) {
                    continue;
                }
                let after = self.cursors.get(&id).copied().unwrap_or_else(|| {
                    if self.started_with.contains(&id) {
                        self.started_at - LOOKBACK_MS
                    } else {
                        i64::MIN
                    }
                });
                by_asset.entry(asset).or_default().push((id, metric, after));
            }
        }
        let mut actions = Vec::new();
        let mut moved = Vec::new();
        let mut more = false;
        // Never past a minute ahead of now: a reading from a gateway whose clock runs ahead must not
        // carry a cursor into the future.
        let to = now_ms + 60_000;
        let dirty_assets: HashSet<&String> = by_asset.keys().collect();
        if self.owned.hub.is_some() {
            self.foreign_backgrounds(&dirty_assets)?;
        }
        for (asset_id, series) in &by_asset {
            let Some(asset) = self.cat.assets.get(asset_id) else {
                continue;
            };
            let (newest, m) = feed_asset(
                &*self.conn,
                &mut self.engine,
                clock,
                asset,
                series,
                to,
                &mut actions,
            )?;
            moved.extend(newest);
            more |= m;
        }
        let mut event_cursors = self.event_cursors.clone();
        if events || more {
            let from = event_cursors.values().copied().min().unwrap_or(0);
            let rows = self.conn.query(
                "SELECT id, gateway, device, event, ts, attributes, evidence, received FROM events
                 WHERE id > $1 ORDER BY id LIMIT 2000",
                args![from],
            )?;
            let full = rows.len() == 2000;
            let mut cut = false;
            // Several processes store events: one can commit after another's with a higher id.
            // Events are taken in id order only once EVENT_SETTLE_MS old, so that an id left
            // behind has committed by then.
            let settled = match self.owned.hub {
                Some(_) => now_ms - EVENT_SETTLE_MS,
                None => i64::MAX,
            };
            let mut last = None;
            for row in &rows {
                if row.get::<i64>(7)? > settled {
                    cut = true;
                    break;
                }
                let (mut ev, gw, dev) = camera_event(row)?;
                last = Some(ev.id);
                let asset = self
                    .cat
                    .by_device
                    .get(&(gw, dev))
                    .and_then(|a| self.cat.assets.get(a));
                // Camera rules keep state per zone: the zone's partition evaluates them.
                let zone = ev
                    .attributes
                    .get("zone")
                    .and_then(|z| z.as_str())
                    .map(str::to_owned)
                    .or_else(|| asset.and_then(|a| a.place.zone.clone()));
                let part = zone.as_deref().map(|z| self.owned.part_of_zone(z));
                let seen = |p: u32| event_cursors.get(&p).is_none_or(|&c| ev.id <= c);
                match part {
                    Some(p) if self.owned.parts.contains(&p) && !seen(p) => {}
                    // No zone: no camera rule applies. Another partition's, or seen.
                    _ => continue,
                }
                ev.at = clock.at(ev.at);
                self.engine.camera(asset, &ev, &mut actions);
            }
            more |= full && !cut;
            if let Some(last) = last {
                for c in event_cursors.values_mut() {
                    *c = (*c).max(last);
                }
            }
        }
        // What went quiet (street trading not seen again) ends on the clock, data or not.
        self.engine.tick(clock.at(now_ms), &mut actions);
        // Everything in one transaction: tasks, state and cursors (only this process's state:
        // a background monitor's read from another partition is not written back).
        let changed: Vec<String> = self
            .engine
            .take_changed()
            .into_iter()
            .filter(|k| self.mine(k))
            .collect();
        let tx = Tx::begin(&*self.conn, Begin::Write)?;
        if let Some(hub) = &self.owned.hub
            && !crate::cluster::still_holds(&tx, hub, &self.owned.parts)?
        {
            // Another process holds one of these partitions now (this one stalled past its
            // lease): write nothing; the supervisor's next round says what is still held.
            return Err(db::DbError::Other(
                "a partition's lease ran out: the rules' work of this cycle is dropped".into(),
            ));
        }
        let mut tasks = Vec::new();
        for a in &actions {
            if let Some(t) = apply(&tx, &rules, clock, now_ms, a)? {
                tasks.push(t);
            }
        }
        for key in &changed {
            match self.engine.state_json(key) {
                Some(json) => tx.execute(
                    "INSERT INTO rule_state (key, state, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    args![key, json, now_ms],
                )?,
                None => tx.execute("DELETE FROM rule_state WHERE key = $1", args![key])?,
            };
        }
        for (id, ts) in &moved {
            tx.execute(
                "INSERT INTO rule_cursor (series, ts) VALUES ($1, $2)
                 ON CONFLICT (series) DO UPDATE SET ts = excluded.ts",
                args![id, ts],
            )?;
        }
        for (p, c) in &event_cursors {
            if self.event_cursors.get(p) != Some(c) {
                tx.execute(
                    "INSERT INTO rule_meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    args![self.cursor_key(*p), c],
                )?;
            }
        }
        tx.commit()?;
        self.cursors.extend(moved);
        self.event_cursors = event_cursors;
        Ok((tasks, more))
    }
}

/// Carries out one action in the task store; returns the task changed.
fn apply(
    tx: &dyn Sql,
    rules: &Rules,
    clock: RuleClock,
    now_ms: i64,
    a: &Action,
) -> db::Result<Option<(i64, &'static str)>> {
    Ok(match a {
        Action::Raise(r) => {
            let place = config::AssetPlace {
                asset: r.asset.clone().unwrap_or_default(),
                zone: r.place.zone.clone(),
                segment: r.place.segment.clone(),
                grid: r.place.grid.clone(),
            };
            let dept = rules.department(r.rule, &place);
            let due = now_ms + clock.real_span(rules.limit_ms(r.rule));
            open_task(tx, now_ms, r, &dept, due)?.map(|id| (id, "file"))
        }
        Action::Clear {
            rule,
            subject,
            note,
            ..
        } => clear_task(tx, now_ms, rule, subject, note)?.map(|id| (id, "cleared")),
        Action::Escalate {
            rule,
            subject,
            severity,
            note,
            ..
        } => escalate_task(tx, now_ms, rule, subject, severity, note)?.map(|id| (id, "escalate")),
    })
}

/// `hub rules backtest`: evaluates the rules over stored history in `[from, to]` (the readings'
/// time) with fresh state, and returns what they would have done, in time order, without doing it.
pub fn backtest(
    c: &dyn Sql,
    rules: Arc<Rules>,
    clock: RuleClock,
    from_ms: i64,
    to_ms: i64,
) -> db::Result<Vec<Action>> {
    let mut cat = Catalogue::load(c, &rules)?;
    let mut engine = Engine::new(Arc::clone(&rules));
    let ids: Vec<i64> = c
        .query("SELECT id FROM series ORDER BY id", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect::<db::Result<_>>()?;
    let mut by_asset: std::collections::BTreeMap<String, Vec<(i64, String, i64)>> =
        Default::default();
    for id in ids {
        if let Some((asset, metric)) = cat.series(c, &rules, id)? {
            by_asset
                .entry(asset)
                .or_default()
                .push((id, metric, from_ms - 1));
        }
    }
    let mut out = Vec::new();
    // A day at a time, every asset, so memory stays bounded over long ranges.
    let mut start = from_ms;
    while start <= to_ms {
        let end = (start + 86_400_000 - 1).min(to_ms);
        for (asset_id, series) in by_asset.iter_mut() {
            let Some(asset) = cat.assets.get(asset_id) else {
                continue;
            };
            loop {
                let (newest, more) =
                    feed_asset(c, &mut engine, clock, asset, series, end, &mut out)?;
                for (id, ts) in newest {
                    if let Some(s) = series.iter_mut().find(|s| s.0 == id) {
                        s.2 = ts;
                    }
                }
                if !more {
                    break;
                }
            }
        }
        start = end + 1;
    }
    let evs = c.query(
        "SELECT id, gateway, device, event, ts, attributes, evidence FROM events
         WHERE ts >= $1 AND ts <= $2 ORDER BY ts, id",
        args![from_ms, to_ms],
    )?;
    for ev in &evs {
        let (mut ev, gw, dev) = camera_event(ev)?;
        ev.at = clock.at(ev.at);
        let asset = cat
            .by_device
            .get(&(gw, dev))
            .and_then(|a| cat.assets.get(a));
        engine.camera(asset, &ev, &mut out);
    }
    engine.tick(clock.at(to_ms), &mut out);
    out.sort_by_key(Action::at);
    Ok(out)
}

/// Runs the rules on a thread of their own with their own connection until `stop`: readings and
/// events as the store commits them, silence every [`EVERY`], escalation every minute; puts what
/// changed on the live feed.
pub fn start(
    db: crate::store::Database,
    setup: Setup,
    feed: Feed,
    own: Ownership,
    live: crate::live::Live,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut runner = Runner::open(db.connect()?, setup, own, crate::now_ms())?;
    Ok(std::thread::Builder::new()
        .name("rules".into())
        .spawn(move || {
            // At start every series is looked at: whatever came in while the hub was down.
            let mut pending = runner.all_series().unwrap_or_default();
            let mut events = true;
            let mut last_offline = Instant::now() - EVERY;
            let offline_every = offline::offline_every(&runner.setup.clock);
            let mut last_escalation = Instant::now() - Duration::from_secs(60);
            let mut last_tick = Instant::now();
            let mut last_cycle = Instant::now();
            while !stop.is_cancelled() {
                match runner.follow_ownership() {
                    // Partitions taken over: whatever came in for them meanwhile.
                    Ok(true) => {
                        pending = runner.all_series().unwrap_or_default();
                        events = true;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the rules' state of the partitions held; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
                let announce = |runner: &Runner, changed: &[(i64, &str)]| {
                    for &(id, action) in changed {
                        if let Ok(Some(t)) = crate::tasks::load(&*runner.conn, id) {
                            tracing::info!(task = id, rule = %t.rule, subject = %t.subject, action, "task by rule");
                            crate::tasks::announce(&live, &t, action);
                        }
                    }
                };
                if !pending.is_empty() || events {
                    last_cycle = Instant::now();
                    let dirty = std::mem::take(&mut pending);
                    match runner.cycle(dirty.clone(), events, crate::now_ms()) {
                        Ok((changed, more)) => {
                            announce(&runner, &changed);
                            if more {
                                // Still behind: go again at once with the same series.
                                pending = dirty;
                            }
                            events = more;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "rule evaluation failed; reloading the rules' state and retrying");
                            std::thread::sleep(Duration::from_secs(1));
                            if let Err(e) = runner.reload() {
                                tracing::error!(error = %e, "cannot reload the rules' state");
                            }
                            pending = dirty;
                            events = true;
                            continue;
                        }
                    }
                }
                // In a cluster other processes store events for this one's zones: look every 2 s.
                let tick_every = match runner.owned.hub {
                    Some(_) => Duration::from_secs(2),
                    None => Duration::from_secs(10),
                };
                if last_tick.elapsed() >= tick_every {
                    // A cycle now and then without new data, for what ends with time alone.
                    last_tick = Instant::now();
                    events = true;
                }
                // Work over every gateway: one process of a cluster does it.
                let leads = runner.owned.leads();
                if leads && last_offline.elapsed() >= offline_every {
                    last_offline = Instant::now();
                    match evaluate_offline(&*runner.conn, crate::now_ms(), &runner.setup.clock) {
                        Ok(ch) => {
                            let changed: Vec<(i64, &str)> = ch
                                .opened
                                .iter()
                                .map(|&id| (id, "file"))
                                .chain(ch.cleared.iter().map(|&id| (id, "cleared")))
                                .collect();
                            announce(&runner, &changed);
                        }
                        Err(e) => tracing::error!(error = %e, "offline rule failed; retrying"),
                    }
                }
                if leads && last_escalation.elapsed() >= Duration::from_secs(60) {
                    last_escalation = Instant::now();
                    let (rules, clock) = (Arc::clone(&runner.setup.rules), runner.setup.clock);
                    match escalate_overdue(&*runner.conn, &rules, clock, crate::now_ms()) {
                        Ok(changed) => announce(&runner, &changed),
                        Err(e) => tracing::error!(error = %e, "escalation failed; retrying"),
                    }
                    match lighting::evaluate_nights(&*runner.conn, &rules, clock, crate::now_ms()) {
                        Ok(changed) => announce(&runner, &changed),
                        Err(e) => tracing::error!(error = %e, "lighting rate failed; retrying"),
                    }
                }
                if pending.is_empty() && !events {
                    // Coalesce: at most one cycle per MIN_CYCLE however fast readings arrive
                    // (each cycle is one transaction), and no waiting longer than that when
                    // they come slowly: a reading's task is in the next cycle.
                    let since = last_cycle.elapsed();
                    if since < MIN_CYCLE {
                        std::thread::sleep(MIN_CYCLE - since);
                    }
                    let (s, e) = runner_feed_wait(&feed, &stop);
                    pending = s;
                    events = e;
                }
            }
        })?)
}

/// The shortest time between two cycles of the rules: readings that arrive meanwhile are taken
/// together (one transaction), and a reading waits at most this long before the rules see it.
const MIN_CYCLE: Duration = Duration::from_millis(50);

/// Waits up to a second for the store to commit something, noticing `stop`.
fn runner_feed_wait(
    feed: &Feed,
    stop: &tokio_util::sync::CancellationToken,
) -> (HashSet<i64>, bool) {
    if stop.is_cancelled() {
        return (HashSet::new(), false);
    }
    feed.wait(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR_MS: i64 = 60 * MIN;
    /// 2026-11-22 10:00 in China.
    const T0: i64 = 1_795_305_600_000 - 8 * 3_600_000 + 10 * 3_600_000;

    /// The town of these tests on `c`: a water level sensor and a parking camera.
    fn town(c: &dyn Sql) {
        c.batch(
            "INSERT INTO assets (id, kind, gateway, device, lat, lon, road_segment, zone, updated_at)
               VALUES ('wl-1', 'waterlogging', 'gw-a', 'd1', 32.04, 118.78, 'hanzhong-rd-s2', NULL, 0),
                      ('anpr-1', 'parkingCamera', 'gw-a', 'cam-1', 32.04, 118.78, 'zhongshan-rd-s1', 'np-1', 0);
             INSERT INTO series (id, gateway, device, metric) VALUES (1, 'gw-a', 'd1', 'waterDepth'), (2, 'gw-a', 'd1', 'temperature');",
        )
        .unwrap();
    }

    /// Two connections to one database with the town, per engine (two hub processes, or one
    /// restarted).
    #[allow(clippy::type_complexity)]
    fn towns() -> Vec<(
        &'static str,
        Box<dyn Sql + Send>,
        Box<dyn Sql + Send>,
        Option<tempfile::TempDir>,
    )> {
        let v = crate::db::testing::pairs();
        for (_, a, _, _) in &v {
            town(&**a);
        }
        v
    }

    fn depth(c: &dyn Sql, minutes: std::ops::Range<i64>, cm: f64) {
        let points: Vec<_> = minutes
            .map(|m| crate::store::raw::good(T0 + m * MIN, cm))
            .collect();
        crate::store::raw::insert(c, 1, &points).unwrap();
    }

    fn setup() -> Setup {
        let rules = Rules::parse(
            r#"
            [[zone]]
            id = "np-1"
            class = "forbidden"
            [[segment]]
            id = "hanzhong-rd-s2"
            chief = "陈静"
            [[route]]
            rules = ["waterlogging"]
            segments = ["hanzhong-rd-s2"]
            department = "drainage-gulou"
            "#,
            "rules.toml",
        )
        .unwrap();
        Setup {
            rules: Arc::new(rules),
            clock: RuleClock::REAL,
        }
    }

    fn tasks(c: &dyn Sql) -> Vec<(String, String, String, String)> {
        c.query(
            "SELECT rule, subject, state, department FROM tasks ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0).unwrap(),
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get(3).unwrap(),
            )
        })
        .collect()
    }

    /// Two cluster processes: only the holder of a gateway's partition evaluates it; one whose
    /// lease was taken writes nothing; the new holder continues the condition in progress.
    #[test]
    fn only_the_holder_of_a_partition_evaluates_it_and_a_new_holder_continues() {
        use crate::cluster::Owned;
        use std::collections::BTreeSet;
        for (name, a, b, _keep) in towns() {
            let now = T0 + 30 * MIN;
            // gw-a's partition (of two) is a's, the other b's.
            let pa = crate::cluster::partition_of("gw-a", 2);
            let pb = 1 - pa;
            let owned = |hub: &str, parts: &[u32]| Owned {
                hub: Some(hub.into()),
                parts: parts.iter().copied().collect::<BTreeSet<u32>>(),
                count: 2,
                gateways: BTreeSet::from(["gw-a".to_owned()]),
                valid_until: None,
            };
            let far = T0 + 1000 * HOUR_MS;
            a.execute(
                "INSERT INTO cluster_partitions (part, owner, lease_until) VALUES ($1, 'a', $3), ($2, 'b', $3)",
                args![pa, pb, far],
            )
            .unwrap();
            let (_a_tx, a_own) = tokio::sync::watch::channel(Arc::new(owned("a", &[pa])));
            let (b_tx, b_own) = tokio::sync::watch::channel(Arc::new(owned("b", &[pb])));
            let mut ra = Runner::open(a, setup(), a_own, now).unwrap();
            let mut rb = Runner::open(b, setup(), b_own, now).unwrap();
            let all = ra.all_series().unwrap();
            depth(&*ra.conn, 0..3, 16.0);
            assert!(
                ra.cycle(all.clone(), false, now).unwrap().0.is_empty(),
                "{name}"
            );
            // b does not hold gw-a's partition: it reads nothing of it, moves no cursor.
            depth(&*rb.conn, 3..6, 16.0);
            assert!(
                rb.cycle(all.clone(), false, now).unwrap().0.is_empty(),
                "{name}"
            );
            assert!(tasks(&*rb.conn).is_empty(), "{name}");
            // a stalls past its lease; b takes gw-a's partition over.
            rb.conn
                .execute(
                    "UPDATE cluster_partitions SET owner = 'b' WHERE part = $1",
                    args![pa],
                )
                .unwrap();
            let e = ra.cycle(all.clone(), false, now).unwrap_err();
            assert!(e.to_string().contains("lease"), "{name}: {e}");
            assert!(tasks(&*rb.conn).is_empty(), "{name}: a wrote nothing");
            b_tx.send_replace(Arc::new(owned("b", &[0, 1])));
            assert!(rb.follow_ownership().unwrap(), "{name}");
            // b continues a's condition from its saved state: five minutes above 15 cm.
            let (changed, _) = rb.cycle(all.clone(), false, now).unwrap();
            assert_eq!(changed.len(), 1, "{name}");
            assert_eq!(tasks(&*rb.conn).len(), 1, "{name}");
            assert!(
                rb.cycle(all.clone(), false, now).unwrap().0.is_empty(),
                "{name}"
            );
        }
    }

    /// In a cluster, camera events are evaluated by the holder of their zone's partition, once
    /// they are old enough that no earlier id can still commit; the others move past them.
    #[test]
    fn camera_events_go_to_the_holder_of_their_zone() {
        use crate::cluster::Owned;
        use std::collections::BTreeSet;
        for (name, a, b, _keep) in towns() {
            let now = T0 + 30 * MIN;
            let probe = Owned {
                count: 2,
                ..Owned::everything()
            };
            let pz = probe.part_of_zone("np-1");
            let owned = |hub: &str, parts: &[u32]| Owned {
                hub: Some(hub.into()),
                parts: parts.iter().copied().collect::<BTreeSet<u32>>(),
                count: 2,
                gateways: BTreeSet::new(),
                valid_until: None,
            };
            a.execute(
                "INSERT INTO cluster_partitions (part, owner, lease_until) VALUES ($1, 'a', $3), ($2, 'b', $3)",
                args![pz, 1 - pz, T0 + 1000 * HOUR_MS],
            )
            .unwrap();
            let (_ta, own_a) = tokio::sync::watch::channel(Arc::new(owned("a", &[pz])));
            let (_tb, own_b) = tokio::sync::watch::channel(Arc::new(owned("b", &[1 - pz])));
            let mut ra = Runner::open(a, setup(), own_a, now).unwrap();
            let mut rb = Runner::open(b, setup(), own_b, now).unwrap();
            let plate = |c: &dyn Sql, id: i64, at: i64, received: i64| {
                c.execute(
                    "INSERT INTO events (id, gateway, device, event, ts, phase, attributes, evidence, received)
                     VALUES ($1, 'gw-a', 'cam-1', 'plate', $2, 'instant', $3, '[]', $4)",
                    args![
                        id,
                        at,
                        r#"{"plate":"苏A8HK52","plateColor":"blue","confidence":0.95}"#,
                        received
                    ],
                )
                .unwrap();
            };
            plate(&*ra.conn, 1, T0, T0);
            // Just received: not taken yet (an earlier id might still commit elsewhere).
            plate(&*ra.conn, 2, T0 + 7 * MIN, now - 1_000);
            assert!(
                rb.cycle(HashSet::new(), true, now).unwrap().0.is_empty(),
                "{name}"
            );
            assert!(
                ra.cycle(HashSet::new(), true, now).unwrap().0.is_empty(),
                "{name}"
            );
            // Five seconds on, the zone's holder makes the case; the other makes none.
            let later = now + EVENT_SETTLE_MS;
            assert!(
                rb.cycle(HashSet::new(), true, later).unwrap().0.is_empty(),
                "{name}"
            );
            let (changed, _) = ra.cycle(HashSet::new(), true, later).unwrap();
            assert_eq!(changed.len(), 1, "{name}");
            assert_eq!(tasks(&*ra.conn).len(), 1, "{name}");
            // b moved its cursor past both.
            assert_eq!(rb.event_cursors[&(1 - pz)], 2, "{name}");
        }
    }

    /// The rules' state is in the store: a hub process that stops in the middle of a condition
    /// (a restart, or on PostgreSQL another process taking over) goes on from its start.
    #[test]
    fn a_restart_or_another_process_neither_forgets_a_condition_nor_duplicates_a_task() {
        for (name, a, b, _keep) in towns() {
            let now = T0 + 30 * MIN;
            depth(&*a, 0..3, 16.0);
            let mut r = Runner::open(a, setup(), crate::cluster::only_hub(), now).unwrap();
            let all = r.all_series().unwrap();
            let (changed, _) = r.cycle(all.clone(), false, now).unwrap();
            assert!(changed.is_empty(), "{name}");
            // Stopped in the middle of the five minutes; the other connection takes over.
            drop(r);
            depth(&*b, 3..6, 16.0);
            let mut r = Runner::open(b, setup(), crate::cluster::only_hub(), now).unwrap();
            let (changed, _) = r.cycle(all.clone(), false, now).unwrap();
            assert_eq!(changed.len(), 1, "{name}");
            assert_eq!(
                tasks(&*r.conn),
                [(
                    "waterlogging".into(),
                    "wl-1".into(),
                    "dispatched".into(),
                    "drainage-gulou".into()
                )],
                "{name}"
            );
            // Evaluated again, and after another restart: nothing twice.
            assert!(
                r.cycle(all.clone(), false, now).unwrap().0.is_empty(),
                "{name}"
            );
            let c = r.conn;
            let mut r = Runner::open(c, setup(), crate::cluster::only_hub(), now).unwrap();
            assert!(
                r.cycle(all.clone(), false, now).unwrap().0.is_empty(),
                "{name}"
            );
            assert_eq!(tasks(&*r.conn).len(), 1, "{name}");
            // The water goes down: below 5 cm for 10 minutes closes it, verified by the sensor.
            depth(&*r.conn, 6..20, 2.0);
            let (changed, _) = r.cycle(all.clone(), false, now).unwrap();
            assert_eq!(
                changed.iter().map(|c| c.1).collect::<Vec<_>>(),
                ["cleared"],
                "{name}"
            );
            assert_eq!(tasks(&*r.conn)[0].2, "closed", "{name}");

            // The backtest over the same hour says the same, without touching the tasks.
            let actions =
                backtest(&*r.conn, setup().rules, RuleClock::REAL, T0, T0 + HOUR_MS).unwrap();
            let kinds: Vec<(&str, &str)> = actions
                .iter()
                .map(|a| {
                    (
                        if matches!(a, Action::Raise(_)) {
                            "raise"
                        } else {
                            "clear"
                        },
                        a.rule(),
                    )
                })
                .collect();
            assert_eq!(
                kinds,
                [("raise", "waterlogging"), ("clear", "waterlogging")],
                "{name}"
            );
            assert_eq!(tasks(&*r.conn).len(), 1, "{name}");
        }
    }

    #[test]
    fn camera_events_raise_enforcement_tasks_masked_in_the_subject() {
        for (name, a, b, _keep) in towns() {
            let now = T0 + 30 * MIN;
            let mut r = Runner::open(a, setup(), crate::cluster::only_hub(), now).unwrap();
            for (id, at) in [(1, T0), (2, T0 + 7 * MIN)] {
                r.conn
                    .execute(
                        "INSERT INTO events (id, gateway, device, event, ts, phase, attributes, evidence, received)
                         VALUES ($1, 'gw-a', 'cam-1', 'plate', $2, 'instant', $3, $4, $2)",
                        args![
                            id,
                            at,
                            r#"{"plate":"苏A8HK52","plateColor":"blue","confidence":0.95}"#,
                            format!(r#"[{{"sha256":"img-{id}"}}]"#)
                        ],
                    )
                    .unwrap();
            }
            let (changed, _) = r.cycle(HashSet::new(), true, now).unwrap();
            assert_eq!(changed.len(), 1, "{name}");
            let t = crate::tasks::load(&*r.conn, changed[0].0).unwrap().unwrap();
            assert_eq!(
                (
                    t.kind.as_str(),
                    t.rule.as_str(),
                    t.department.as_deref(),
                    t.zone.as_deref()
                ),
                (
                    "enforcement",
                    "parking_violation",
                    Some("traffic-police"),
                    Some("np-1")
                ),
                "{name}"
            );
            assert!(!t.subject.contains("8HK52"), "{}", t.subject);
            assert_eq!(t.detail["evidence"][1]["images"][0], "img-2", "{name}");
            // The event cursor is kept: after a restart (or in another process) the same captures
            // raise nothing.
            drop(r);
            let mut r = Runner::open(b, setup(), crate::cluster::only_hub(), now).unwrap();
            assert!(
                r.cycle(HashSet::new(), true, now).unwrap().0.is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn overdue_tasks_go_to_the_supervisor_then_the_road_chief() {
        for (name, a, b, _keep) in towns() {
            let now = T0 + 6 * MIN;
            depth(&*a, 0..6, 16.0);
            let mut r = Runner::open(a, setup(), crate::cluster::only_hub(), now).unwrap();
            let all = r.all_series().unwrap();
            r.cycle(all, false, now).unwrap();
            let rules = setup().rules;
            // Two hub processes escalate: each step still happens once.
            let esc = |at: i64| {
                let mut done = escalate_overdue(&*r.conn, &rules, RuleClock::REAL, at).unwrap();
                done.extend(escalate_overdue(&*b, &rules, RuleClock::REAL, at).unwrap());
                done
            };
            assert!(esc(now + 14 * MIN).is_empty(), "{name}");
            assert_eq!(esc(now + 16 * MIN).len(), 1, "{name}");
            assert!(esc(now + 17 * MIN).is_empty(), "{name}");
            // Waterlogging is due within 4 hours: a reminder after three, once; then the road chief.
            let id: i64 = db::one(&*r.conn, "SELECT id FROM tasks", &[]).unwrap();
            assert!(esc(now + 3 * HOUR_MS - MIN).is_empty(), "{name}");
            assert_eq!(esc(now + 3 * HOUR_MS + MIN), [(id, "remind")], "{name}");
            assert!(esc(now + 3 * HOUR_MS + 2 * MIN).is_empty(), "{name}");
            assert_eq!(esc(now + 4 * HOUR_MS + MIN), [(id, "escalate")], "{name}");
            let reminder: String = db::one(
                &*r.conn,
                "SELECT note FROM task_events WHERE action = 'remind'",
                &[],
            )
            .unwrap();
            assert!(
                reminder.contains("59 min left") && reminder.contains("reminder to drainage-gulou"),
                "{reminder}"
            );
            let notes: Vec<String> = r
                .conn
                .query(
                    "SELECT note FROM task_events WHERE action = 'escalate' ORDER BY id",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert!(
                notes[0].contains("supervisor of drainage-gulou"),
                "{notes:?}"
            );
            assert!(notes[1].contains("陈静"), "{notes:?}");
        }
    }
}
