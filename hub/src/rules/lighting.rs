//! The lighting rate (亮灯率) of each road segment per night: how much of the time its lamps should
//! have been lit (sunset to sunrise at each lamp, with the rules' offsets) they were lit, averaged over
//! the segment's lamps — a lamp that said nothing all night counts as dark. Computed once a night has
//! ended (an hour after sunrise), kept in `lighting_nights` for the monthly assessment, and held to
//! 98 % on main roads and 96 % on secondary and branch roads (provincial lighting rules): below it, a
//! KPI task for the road chief, closed when a later night is back on target.

use std::collections::BTreeMap;

use crate::db::{self, Begin, Sql, Tx, args};
use serde::Serialize;

use super::config::{HOUR, MIN, RoadClass, Rules};
use super::{Place, Raise, RuleClock};

pub const RULE: &str = "lighting_rate";

/// One segment's night.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Night {
    /// The local day the night began on (days since 1970-01-01 in the town's time zone).
    pub night: i64,
    pub segment: String,
    pub lamps: usize,
    pub rate: f64,
    pub target: f64,
    /// Lamps lit less than half the night.
    pub dark: Vec<String>,
}

pub fn target(rules: &Rules, segment: &str) -> f64 {
    match rules.segment(segment).map(|s| s.class) {
        Some(RoadClass::Main) => 0.98,
        _ => 0.96,
    }
}

struct Lamp {
    id: String,
    segment: String,
    lat: f64,
    lon: f64,
    power: Option<i64>,
    rated: Option<f64>,
}

fn lamps(c: &dyn Sql) -> db::Result<Vec<Lamp>> {
    c.query(
        "SELECT a.id, a.road_segment, a.lat, a.lon,
            (SELECT s.id FROM series s WHERE s.gateway = a.gateway AND s.device = a.device AND s.metric = 'activePower'),
            (SELECT s.last_value FROM series s WHERE s.gateway = a.gateway AND s.device = a.device AND s.metric = 'ratedPower')
         FROM assets a
         WHERE a.kind = 'streetlight' AND a.road_segment IS NOT NULL AND a.lat IS NOT NULL AND a.lon IS NOT NULL
         ORDER BY a.id",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(Lamp {
            id: r.get(0)?,
            segment: r.get(1)?,
            lat: r.get(2)?,
            lon: r.get(3)?,
            power: r.get(4)?,
            rated: r.get(5)?,
        })
    })
    .collect()
}

/// The segments' lighting for the night beginning on local day `night`, from stored readings.
pub fn measure(c: &dyn Sql, rules: &Rules, clock: RuleClock, night: i64) -> db::Result<Vec<Night>> {
    let mut per: BTreeMap<String, (Vec<f64>, Vec<String>)> = BTreeMap::new();
    for lamp in lamps(c)? {
        let place = super::config::AssetPlace {
            asset: lamp.id.clone(),
            segment: Some(lamp.segment.clone()),
            ..Default::default()
        };
        let th = rules.thresholds_for(&place).lamp;
        let (Some((_, set)), Some((rise, _))) = (
            super::sun::rise_set(lamp.lat, lamp.lon, night),
            super::sun::rise_set(lamp.lat, lamp.lon, night + 1),
        ) else {
            continue;
        };
        let from = set + (th.on_offset_min * MIN as f64) as i64;
        let to = rise + (th.off_offset_min * MIN as f64) as i64;
        let rated = lamp.rated.filter(|r| *r > 0.0).unwrap_or(th.rated_w);
        let (n, lit): (i64, i64) = match lamp.power {
            Some(series) => {
                let points = crate::store::raw::range(
                    c,
                    series,
                    clock.real_at(from),
                    clock.real_at(to),
                    None,
                )?;
                let watts = points.iter().filter_map(|p| p.good());
                watts.fold((0, 0), |(n, lit), w| {
                    (n + 1, lit + i64::from(w >= th.lit_ratio * rated))
                })
            }
            None => (0, 0),
        };
        let rate = if n > 0 { lit as f64 / n as f64 } else { 0.0 };
        let entry = per.entry(lamp.segment).or_default();
        entry.0.push(rate);
        if rate < 0.5 {
            entry.1.push(lamp.id);
        }
    }
    Ok(per
        .into_iter()
        .map(|(segment, (rates, dark))| Night {
            night,
            target: target(rules, &segment),
            lamps: rates.len(),
            rate: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
            segment,
            dark,
        })
        .collect())
}

/// Measures every night that has ended (an hour after sunrise) since the last one measured, keeps it,
/// and opens or closes the road chiefs' KPI tasks. Returns the tasks changed.
pub fn evaluate_nights(
    c: &dyn Sql,
    rules: &Rules,
    clock: RuleClock,
    now_ms: i64,
) -> db::Result<Vec<(i64, &'static str)>> {
    let now_rule = clock.at(now_ms);
    let (_, _, today) = rules.local(now_rule);
    let tx = Tx::begin(c, Begin::Write)?;
    // FOR UPDATE (PostgreSQL): of two hub processes, one measures a night; the other then finds
    // it measured.
    let last: Option<i64> = tx
        .query_opt(
            &format!(
                "SELECT value FROM rule_meta WHERE key = 'lighting_night'{}",
                db::for_update(c)
            ),
            &[],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    let any_lamp = lamps(&tx)?.into_iter().next();
    let mut changed = Vec::new();
    // The first night measured is the one that begins the day the rules first run: nights before,
    // the hub was not there to hear the lamps.
    let mut night = last.map_or(today, |l| l + 1);
    if last.is_none() {
        tx.execute(
            "INSERT INTO rule_meta (key, value) VALUES ('lighting_night', $1) ON CONFLICT (key) DO NOTHING",
            args![today - 1],
        )?;
    }
    while night < today {
        // Over when the morning is an hour old at the first lamp (all of a town's lamps see the sun
        // rise within minutes of each other).
        let ended = any_lamp.as_ref().is_none_or(|l| {
            super::sun::rise_set(l.lat, l.lon, night + 1)
                .is_none_or(|(rise, _)| now_rule >= rise + HOUR)
        });
        if !ended {
            break;
        }
        for n in measure(&tx, rules, clock, night)? {
            tx.execute(
                "INSERT INTO lighting_nights (night, segment, lamps, rate, target, dark)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (night, segment) DO UPDATE SET lamps = excluded.lamps, rate = excluded.rate,
                    target = excluded.target, dark = excluded.dark",
                args![
                    n.night,
                    n.segment,
                    n.lamps as i64,
                    n.rate,
                    n.target,
                    serde_json::to_string(&n.dark).unwrap_or_default()
                ],
            )?;
            let name = rules
                .segment(&n.segment)
                .and_then(|s| s.name.clone())
                .unwrap_or_else(|| n.segment.clone());
            let date = day_text(n.night);
            let subject = format!("segment:{}", n.segment);
            if n.rate < n.target {
                let chief = rules.segment(&n.segment).and_then(|s| s.chief.clone());
                let raise = Raise {
                    rule: RULE,
                    kind: "maintenance",
                    subject,
                    asset: None,
                    place: Place {
                        segment: Some(n.segment.clone()),
                        grid: None,
                        zone: None,
                    },
                    severity: "warning",
                    title: format!(
                        "Lighting rate {:.1} % on {name} the night of {date} (target {:.0} %)",
                        n.rate * 100.0,
                        n.target * 100.0
                    ),
                    detail: serde_json::json!({"night": date, "rate": n.rate, "target": n.target,
                        "lamps": n.lamps, "darkLamps": n.dark, "roadChief": chief}),
                    at: now_rule,
                    state: "dispatched",
                };
                let place = super::config::AssetPlace {
                    segment: Some(n.segment.clone()),
                    ..Default::default()
                };
                let due = now_ms + clock.real_span(rules.limit_ms(RULE));
                if let Some(id) =
                    super::open_task(&tx, now_ms, &raise, &rules.department(RULE, &place), due)?
                {
                    changed.push((id, "file"));
                }
            } else if let Some(id) = super::clear_task(
                &tx,
                now_ms,
                RULE,
                &subject,
                &format!(
                    "verified by the sensors: {:.1} % the night of {date}",
                    n.rate * 100.0
                ),
            )? {
                changed.push((id, "cleared"));
            }
        }
        tx.execute(
            "INSERT INTO rule_meta (key, value) VALUES ('lighting_night', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            args![night],
        )?;
        night += 1;
    }
    tx.commit()?;
    Ok(changed)
}

/// `YYYY-MM-DD` of a local day number.
pub fn day_text(day: i64) -> String {
    let date = time::Date::from_julian_day((day + 2_440_588) as i32);
    date.map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_else(|_| day.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn a_night_with_a_dark_lamp_is_a_kpi_task_and_a_good_night_closes_it() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::prepare(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO assets (id, kind, gateway, device, lat, lon, road_segment, updated_at) VALUES
               ('sl-1', 'streetlight', 'gw', 'l1', 32.04, 118.78, 'a', 0),
               ('sl-2', 'streetlight', 'gw', 'l2', 32.04, 118.78, 'a', 0);
             INSERT INTO series (id, gateway, device, metric, last_value) VALUES
               (1, 'gw', 'l1', 'activePower', NULL), (2, 'gw', 'l2', 'activePower', NULL),
               (3, 'gw', 'l1', 'ratedPower', 100.0);",
        )
        .unwrap();
        let rules = Rules::parse(
            "[[segment]]\nid = \"a\"\nclass = \"main\"\nchief = \"王建国\"\n",
            "r.toml",
        )
        .unwrap();
        // The night of 2026-11-22 in China.
        let night = (1_795_305_600_000 + 8 * HOUR) / 86_400_000;
        let fill = |day: i64, dark_lamp: bool| {
            let (_, set) = crate::rules::sun::rise_set(32.04, 118.78, day).unwrap();
            let (rise, _) = crate::rules::sun::rise_set(32.04, 118.78, day + 1).unwrap();
            let mut t = set;
            while t < rise {
                for (series, lit) in [(1, true), (2, !dark_lamp)] {
                    let p = crate::store::raw::good(t, if lit { 95.0 } else { 0.5 });
                    crate::store::raw::insert(&c, series, &[p]).unwrap();
                }
                t += 10 * MIN;
            }
            rise
        };
        let rise = fill(night, true);
        // The hub runs from the evening on; the night is measured once the morning is an hour old.
        let clock = RuleClock::REAL;
        let (_, set) = crate::rules::sun::rise_set(32.04, 118.78, night).unwrap();
        assert!(evaluate_nights(&c, &rules, clock, set).unwrap().is_empty());
        assert!(
            evaluate_nights(&c, &rules, clock, rise + 30 * MIN)
                .unwrap()
                .is_empty()
        );
        let changed = evaluate_nights(&c, &rules, clock, rise + 2 * HOUR).unwrap();
        assert_eq!(changed.len(), 1);
        let (rate, dark): (f64, String) = c
            .query_row(
                "SELECT rate, dark FROM lighting_nights WHERE night = ?1 AND segment = 'a'",
                [night],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!((rate - 0.5).abs() < 1e-9, "{rate}");
        assert_eq!(dark, r#"["sl-2"]"#);
        let t = crate::tasks::load(&c, changed[0].0).unwrap().unwrap();
        assert_eq!(
            (t.rule.as_str(), t.subject.as_str(), t.department.as_deref()),
            (RULE, "segment:a", Some("road-chief"))
        );
        assert_eq!(t.detail["roadChief"], "王建国");
        // Measured once: evaluating again changes nothing.
        assert!(
            evaluate_nights(&c, &rules, clock, rise + 3 * HOUR)
                .unwrap()
                .is_empty()
        );
        // The next night both burn: the task is closed.
        let rise = fill(night + 1, false);
        let changed = evaluate_nights(&c, &rules, clock, rise + 2 * HOUR).unwrap();
        assert_eq!(changed, [(t.id, "cleared")]);
    }
}
