//! The monthly assessment (考核排名): for a month of the town's calendar, per road segment, road
//! chief and department — tasks raised, closed and cancelled, the on-time closure rate, the mean time
//! to close, recurrence, the average nightly lighting rate, violations by type — and a ranking by a
//! published score. `GET /api/v1/reports/assessment?month=YYYY-MM[&format=csv&table=segments]`.
//!
//! The score (0–100) weighs what DOMAIN.md's assessment names, and is in every answer:
//! 50 × on-time closure rate + 20 × speed (1 − mean hours to close ÷ 48, at least 0) + 20 × lighting
//! rate + 10 × (1 − share of recurring tasks). A part with nothing to measure (no tasks due, no
//! lamps) counts in full: a quiet road is not marked down.

use std::collections::{BTreeMap, HashSet};

use crate::db::{self, Sql, args};
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::access::Principal;
use crate::api::{ApiError, ApiState};
use crate::rules::Rules;

pub const FORMULA: &str = "50 × on-time closure rate + 20 × (1 − mean hours to close ÷ 48, at least 0) + 20 × lighting rate + 10 × (1 − recurring share); a part with nothing to measure counts in full";

/// One row of a table: a segment, a road chief or a department.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub rank: usize,
    pub key: String,
    pub name: Option<String>,
    /// The road chief (segments only).
    pub chief: Option<String>,
    pub raised: i64,
    pub closed: i64,
    pub cancelled: i64,
    /// Closed by their due time.
    pub closed_on_time: i64,
    /// Closed on time ÷ (closed, or past due and still open); `None`: nothing due yet.
    pub on_time_rate: Option<f64>,
    pub mean_hours_to_close: Option<f64>,
    /// Tasks raised again for a subject and rule already raised this month.
    pub recurring: i64,
    pub lighting_rate: Option<f64>,
    pub lighting_nights: i64,
    /// Enforcement tasks by rule.
    pub violations: BTreeMap<String, i64>,
    pub score: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub month: String,
    pub from: String,
    pub to: String,
    pub formula: &'static str,
    pub segments: Vec<Row>,
    pub chiefs: Vec<Row>,
    pub departments: Vec<Row>,
}

/// UTC milliseconds of local midnight on the first of `month` and of the month after.
fn bounds(rules: &Rules, year: i32, month: u8) -> Option<(i64, i64)> {
    let first = |y: i32, m: u8| -> Option<i64> {
        let d = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, 1).ok()?;
        let days = i64::from(d.to_julian_day()) - 2_440_588;
        Some(days * 86_400_000 - i64::from(rules.offset_s) * 1000)
    };
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Some((first(year, month)?, first(ny, nm)?))
}

struct Task {
    segment: Option<String>,
    department: Option<String>,
    kind: String,
    rule: String,
    subject: String,
    state: String,
    opened: i64,
    due: Option<i64>,
    closed: Option<i64>,
}

#[derive(Default)]
struct Acc {
    row: Row,
    hours: Vec<f64>,
    due: i64,
    lighting: Vec<f64>,
}

impl Acc {
    fn add(&mut self, t: &Task, recurring: bool, now: i64) {
        let r = &mut self.row;
        r.raised += 1;
        if recurring {
            r.recurring += 1;
        }
        if t.kind == "enforcement" {
            *r.violations.entry(t.rule.clone()).or_default() += 1;
        }
        match (t.state.as_str(), t.closed) {
            ("cancelled", _) => r.cancelled += 1,
            ("closed", Some(c)) => {
                r.closed += 1;
                self.due += 1;
                self.hours.push((c - t.opened) as f64 / 3_600_000.0);
                if t.due.is_none_or(|d| c <= d) {
                    r.closed_on_time += 1;
                }
            }
            _ => {
                if t.due.is_some_and(|d| d < now) {
                    self.due += 1;
                }
            }
        }
    }

    fn finish(mut self) -> Row {
        let r = &mut self.row;
        r.on_time_rate = (self.due > 0).then(|| r.closed_on_time as f64 / self.due as f64);
        r.mean_hours_to_close = (!self.hours.is_empty())
            .then(|| self.hours.iter().sum::<f64>() / self.hours.len() as f64);
        r.lighting_nights = self.lighting.len() as i64;
        r.lighting_rate = (!self.lighting.is_empty())
            .then(|| self.lighting.iter().sum::<f64>() / self.lighting.len() as f64);
        let counted = r.raised - r.cancelled;
        let recurring_share = if counted > 0 {
            r.recurring as f64 / r.raised as f64
        } else {
            0.0
        };
        let speed = r
            .mean_hours_to_close
            .map_or(1.0, |h| (1.0 - h / 48.0).max(0.0));
        r.score = 50.0 * r.on_time_rate.unwrap_or(1.0)
            + 20.0 * speed
            + 20.0 * r.lighting_rate.unwrap_or(1.0)
            + 10.0 * (1.0 - recurring_share);
        r.score = (r.score * 10.0).round() / 10.0;
        self.row
    }
}

fn ranked(map: BTreeMap<String, Acc>) -> Vec<Row> {
    let mut rows: Vec<Row> = map.into_values().map(Acc::finish).collect();
    rows.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.raised.cmp(&b.raised))
            .then(a.key.cmp(&b.key))
    });
    for (i, r) in rows.iter_mut().enumerate() {
        r.rank = i + 1;
    }
    rows
}

/// The assessment of `year`-`month` at `now`.
pub fn report(
    c: &dyn Sql,
    rules: &Rules,
    year: i32,
    month: u8,
    now: i64,
) -> Result<Report, String> {
    let (from, to) = bounds(rules, year, month).ok_or("no such month")?;
    let q = |e: db::DbError| e.to_string();
    let tasks: Vec<Task> = c
        .query(
            "SELECT road_segment, department, kind, rule, subject, state, opened_at, due_at, closed_at
             FROM tasks WHERE opened_at >= $1 AND opened_at < $2 ORDER BY opened_at, id",
            args![from, to],
        )
        .map_err(q)?
        .iter()
        .map(|r| {
            Ok(Task {
                segment: r.get(0)?,
                department: r.get(1)?,
                kind: r.get(2)?,
                rule: r.get(3)?,
                subject: r.get(4)?,
                state: r.get(5)?,
                opened: r.get(6)?,
                due: r.get(7)?,
                closed: r.get(8)?,
            })
        })
        .collect::<db::Result<_>>()
        .map_err(q)?;
    let (first_day, last_day) = (
        (from + i64::from(rules.offset_s) * 1000) / 86_400_000,
        (to + i64::from(rules.offset_s) * 1000) / 86_400_000,
    );
    let nights: Vec<(String, f64)> = c
        .query(
            "SELECT segment, rate FROM lighting_nights WHERE night >= $1 AND night < $2",
            args![first_day, last_day],
        )
        .map_err(q)?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<db::Result<_>>()
        .map_err(q)?;

    let chief_of = |seg: &Option<String>| {
        seg.as_deref()
            .and_then(|s| rules.segment(s))
            .and_then(|s| s.chief.clone())
    };
    let unassigned = || "(unassigned)".to_owned();
    let mut segments: BTreeMap<String, Acc> = BTreeMap::new();
    let mut chiefs: BTreeMap<String, Acc> = BTreeMap::new();
    let mut departments: BTreeMap<String, Acc> = BTreeMap::new();
    // Every configured segment is ranked, even one with nothing this month.
    for s in &rules.cfg.segments {
        segments.entry(s.id.clone()).or_default();
        if let Some(ch) = &s.chief {
            chiefs.entry(ch.clone()).or_default();
        }
    }
    let mut seen = HashSet::new();
    for t in &tasks {
        let recurring = !seen.insert((t.subject.clone(), t.rule.clone()));
        let seg = t.segment.clone().unwrap_or_else(unassigned);
        segments.entry(seg).or_default().add(t, recurring, now);
        let chief = chief_of(&t.segment).unwrap_or_else(unassigned);
        chiefs.entry(chief).or_default().add(t, recurring, now);
        let dept = t.department.clone().unwrap_or_else(unassigned);
        departments.entry(dept).or_default().add(t, recurring, now);
    }
    for (seg, rate) in nights {
        let chief = chief_of(&Some(seg.clone()));
        segments.entry(seg).or_default().lighting.push(rate);
        if let Some(ch) = chief {
            chiefs.entry(ch).or_default().lighting.push(rate);
        }
    }
    for (key, acc) in segments.iter_mut() {
        acc.row.key = key.clone();
        if let Some(s) = rules.segment(key) {
            acc.row.name = s.name.clone();
            acc.row.chief = s.chief.clone();
        }
    }
    for (key, acc) in chiefs.iter_mut().chain(departments.iter_mut()) {
        acc.row.key = key.clone();
    }
    let text = |ms: i64| protocol::Timestamp::from_unix_millis(ms).to_rfc3339();
    Ok(Report {
        month: format!("{year:04}-{month:02}"),
        from: text(from),
        to: text(to),
        formula: FORMULA,
        segments: ranked(segments),
        chiefs: ranked(chiefs),
        departments: ranked(departments),
    })
}

/// One table as CSV, UTF-8 with a byte-order mark (so spreadsheet programs read the Chinese names).
pub fn csv(rows: &[Row]) -> String {
    let mut rules: Vec<&String> = rows.iter().flat_map(|r| r.violations.keys()).collect();
    rules.sort();
    rules.dedup();
    let mut out = String::from(
        "\u{feff}rank,key,name,chief,raised,closed,cancelled,closed_on_time,on_time_rate,mean_hours_to_close,recurring,lighting_rate,lighting_nights",
    );
    for r in &rules {
        out.push(',');
        out.push_str(r);
    }
    out.push_str(",score\n");
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.rank,
            field(&r.key),
            field(r.name.as_deref().unwrap_or("")),
            field(r.chief.as_deref().unwrap_or("")),
            r.raised,
            r.closed,
            r.cancelled,
            r.closed_on_time,
            num(r.on_time_rate),
            num(r.mean_hours_to_close),
            r.recurring,
            num(r.lighting_rate),
            r.lighting_nights
        ));
        for rule in &rules {
            out.push_str(&format!(
                ",{}",
                r.violations.get(*rule).copied().unwrap_or(0)
            ));
        }
        out.push_str(&format!(",{:.1}\n", r.score));
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(rename = "token")]
    _token: Option<String>,
    /// `YYYY-MM`; this month by default.
    month: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// For CSV: `segments` (default), `chiefs` or `departments`.
    table: Option<String>,
}

/// `GET /api/v1/reports/assessment?month=YYYY-MM&format=json|csv&table=segments|chiefs|departments`
pub async fn get(
    State(s): State<ApiState>,
    Extension(_who): Extension<Principal>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let rules = s.rules.clone();
    let now = crate::now_ms();
    let (year, month) = match &p.month {
        Some(m) => {
            let parsed = m
                .split_once('-')
                .and_then(|(y, mo)| Some((y.parse::<i32>().ok()?, mo.parse::<u8>().ok()?)))
                .filter(|(y, mo)| (2000..=2100).contains(y) && (1..=12).contains(mo));
            parsed.ok_or_else(|| bad(format!("month {m:?}: write it as YYYY-MM, e.g. 2026-11")))?
        }
        None => {
            let t =
                time::OffsetDateTime::from_unix_timestamp(now / 1000 + i64::from(rules.offset_s))
                    .map_err(|e| bad(e.to_string()))?;
            (t.year(), u8::from(t.month()))
        }
    };
    let csv_table = match p.format.as_deref() {
        None | Some("json") => None,
        Some("csv") => Some(p.table.clone().unwrap_or_else(|| "segments".into())),
        Some(f) => return Err(bad(format!("format {f:?}: json or csv"))),
    };
    if let Some(t) = &csv_table
        && !["segments", "chiefs", "departments"].contains(&t.as_str())
    {
        return Err(bad(format!("table {t:?}: segments, chiefs or departments")));
    }
    let r = rules.clone();
    let report = s
        .store
        .read(move |c| Ok(report(c, &r, year, month, now)))
        .await?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(match csv_table {
        None => axum::Json(report).into_response(),
        Some(table) => {
            let rows = match table.as_str() {
                "chiefs" => &report.chiefs,
                "departments" => &report.departments,
                _ => &report.segments,
            };
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!(
                            "attachment; filename=\"assessment-{}-{table}.csv\"",
                            report.month
                        ),
                    ),
                ],
                csv(rows),
            )
                .into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rusqlite::{Connection, params};

    const H: i64 = 3_600_000;

    #[test]
    fn ranks_segments_chiefs_and_departments() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::prepare(&mut c).unwrap();
        let rules = Rules::parse(
            "[[segment]]\nid = \"a\"\nname = \"中山南路\"\nclass = \"main\"\nchief = \"王建国\"\n\
             [[segment]]\nid = \"b\"\nchief = \"陈静\"\n[[segment]]\nid = \"quiet\"\n",
            "rules.toml",
        )
        .unwrap();
        let (from, _) = bounds(&rules, 2026, 11).unwrap();
        // 2026-11-01 00:00 in China is 2026-10-31 16:00 UTC.
        assert_eq!(from, 1_793_462_400_000);
        let t = from + 24 * H;
        let add = |seg: &str,
                   dept: &str,
                   kind: &str,
                   rule: &str,
                   subject: &str,
                   state: &str,
                   closed: Option<i64>| {
            c.execute(
                "INSERT INTO tasks (kind, category, rule, subject, road_segment, department, severity, state, title, detail,
                    opened_at, due_at, updated_at, closed_at)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, 'warning', ?6, 't', '{}', ?7, ?8, ?7, ?9)",
                params![kind, rule, subject, seg, dept, state, t, t + 4 * H, closed],
            )
            .unwrap();
        };
        // Segment a: two closed on time, one recurring; a parking case still open past its due time.
        add(
            "a",
            "drainage",
            "maintenance",
            "waterlogging",
            "wl-1",
            "closed",
            Some(t + H),
        );
        add(
            "a",
            "drainage",
            "maintenance",
            "waterlogging",
            "wl-1",
            "closed",
            Some(t + 2 * H),
        );
        add(
            "a",
            "traffic-police",
            "enforcement",
            "parking_violation",
            "parking:z:1",
            "dispatched",
            None,
        );
        // Segment b: one closed late, one overdue and open.
        add(
            "b",
            "lighting",
            "maintenance",
            "lamp_out",
            "sl-1",
            "closed",
            Some(t + 10 * H),
        );
        add(
            "b",
            "lighting",
            "maintenance",
            "lamp_out",
            "sl-2",
            "accepted",
            None,
        );
        // Last month: not counted.
        c.execute("UPDATE tasks SET opened_at = ?1 WHERE id = 5", [from - H])
            .unwrap();
        let night = (from + 8 * H) / 86_400_000 + 3;
        c.execute(
            "INSERT INTO lighting_nights (night, segment, lamps, rate, target, dark) VALUES (?1, 'b', 10, 0.9, 0.96, '[]')",
            [night],
        )
        .unwrap();
        let r = report(&c, &rules, 2026, 11, t + 30 * H).unwrap();
        let seg = |k: &str| r.segments.iter().find(|x| x.key == k).unwrap().clone();
        let a = seg("a");
        assert_eq!(
            (a.raised, a.closed, a.closed_on_time, a.recurring),
            (3, 2, 2, 1)
        );
        assert_eq!(a.on_time_rate, Some(2.0 / 3.0));
        assert_eq!(a.violations.get("parking_violation"), Some(&1));
        assert_eq!(a.chief.as_deref(), Some("王建国"));
        let b = seg("b");
        assert_eq!((b.raised, b.closed, b.closed_on_time), (1, 1, 0));
        assert_eq!(b.on_time_rate, Some(0.0));
        assert_eq!(b.lighting_rate, Some(0.9));
        // The quiet segment ranks first (nothing late), then a, then b.
        let order: Vec<&str> = r.segments.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(order, ["quiet", "a", "b"]);
        assert_eq!(r.segments[0].rank, 1);
        assert!(
            r.chiefs
                .iter()
                .any(|x| x.key == "陈静" && x.lighting_rate == Some(0.9))
        );
        assert!(
            r.departments
                .iter()
                .any(|x| x.key == "drainage" && x.raised == 2)
        );
        let text = csv(&r.segments);
        assert!(text.starts_with('\u{feff}'));
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .starts_with("2,a,中山南路,王建国,3,2,0,2,0.6667"),
            "{text}"
        );
    }
}
