//! Devices and gateways gone silent (DOMAIN.md,
//! "Device offline": no message for max(3 × report interval, 15 min); a gateway offline raises one
//! task and suppresses its devices'; clears at the next message), routed to the device
//! contractor.
//!
//! The rule reads the store's own state (when each device and gateway was last heard from), so it
//! keeps nothing in memory that a restart could lose, and the one-open-task-per-(subject, rule)
//! index means a restart, or a second evaluation, never opens a duplicate. When the device speaks
//! again its task is verified by the sensor and closed, with that in the audit trail.
//!
//! Evaluation takes the clock as an argument ([`evaluate_offline`]); the rules thread runs it
//! every [`EVERY`] on the wall clock (silence is about messages arriving). When the rules' clock
//! runs faster than real time (the demo's town), the 15 minutes are the town's, but never shorter
//! than [`ACCELERATED_FLOOR_MS`] of real time: heartbeats and polls are not accelerated
//! ([`silence_limit`]).

use std::time::Duration;

use crate::db::{self, Begin, Sql, Tx};

/// How often the hub evaluates.
pub const EVERY: Duration = Duration::from_secs(30);
/// The shortest silence that counts as offline.
pub const MIN_SILENCE_MS: i64 = 15 * 60_000;
/// The shortest real silence that counts when the rules' clock runs faster than real time: a
/// device heard only through its gateway's heartbeat (every 30 s by default) is heard at most
/// a heartbeat and a poll ago.
pub const ACCELERATED_FLOOR_MS: i64 = 60_000;
/// The department offline devices go to.
pub const DEVICE_CONTRACTOR: &str = "device-contractor";

pub const RULE_DEVICE: &str = "device_offline";
pub const RULE_GATEWAY: &str = "gateway_offline";

/// What an evaluation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Task ids opened.
    pub opened: Vec<i64>,
    /// Task ids closed because the device or gateway spoke again.
    pub cleared: Vec<i64>,
}

fn rfc3339(ms: i64) -> String {
    protocol::Timestamp::from_unix_millis(ms).to_rfc3339()
}

/// How often the rules thread checks for silence: [`EVERY`], or every 5 s when the rules' clock
/// runs fast (the silence limit is then about a minute).
pub fn offline_every(clock: &super::RuleClock) -> std::time::Duration {
    if clock.speed > 1.0 {
        std::time::Duration::from_secs(5)
    } else {
        EVERY
    }
}

/// A silence of `rule_ms` on the rules' clock, in real milliseconds: the same in production; in an
/// accelerated town shorter, but not under [`ACCELERATED_FLOOR_MS`].
pub fn silence_limit(clock: &super::RuleClock, rule_ms: i64) -> i64 {
    if clock.speed <= 1.0 {
        rule_ms
    } else {
        clock.real_span(rule_ms).max(ACCELERATED_FLOOR_MS)
    }
}

/// Opens tasks for devices and gateways silent too long at `now_ms` (real time), and closes those
/// whose device or gateway has spoken since.
pub fn evaluate_offline(
    c: &dyn Sql,
    now_ms: i64,
    clock: &super::RuleClock,
) -> Result<Changes, crate::store::StoreError> {
    let min_silence = silence_limit(clock, MIN_SILENCE_MS);
    // A last will says offline at once; it gets a third of that grace, so that a gateway that
    // reboots is not a task.
    let will_grace = silence_limit(clock, MIN_SILENCE_MS / 3);
    // IMMEDIATE: the write lock first (waiting for the store writer), so the read below cannot
    // go stale before the write (a deferred transaction would fail to upgrade then).
    let tx = Tx::begin(c, Begin::Write)?;
    let mut changes = Changes::default();
    // Gateways: offline by their last will, or silent (heartbeats every few seconds) too long.
    let mut gateways: Vec<(String, i64, bool)> = Vec::new();
    {
        for r in tx.query("SELECT id, last_seen, state FROM gateways ORDER BY id", &[])? {
            let (id, last_seen, state): (String, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let silent = now_ms - last_seen > min_silence;
            let offline = silent || (state == "offline" && now_ms - last_seen > will_grace);
            gateways.push((id, last_seen, offline));
        }
    }
    let last_seen: std::collections::HashMap<&str, i64> =
        gateways.iter().map(|g| (g.0.as_str(), g.1)).collect();
    let offline_gateways: std::collections::HashSet<&str> = gateways
        .iter()
        .filter(|g| g.2)
        .map(|g| g.0.as_str())
        .collect();
    for (id, last_seen, offline) in &gateways {
        let subject = format!("gateway:{id}");
        if *offline {
            if let Some(t) = open_task(
                &tx,
                now_ms,
                RULE_GATEWAY,
                &subject,
                None,
                (None, None, None),
                "critical",
                &format!("Gateway {id} offline since {}", rfc3339(*last_seen)),
                serde_json::json!({ "gateway": id, "lastSeen": rfc3339(*last_seen) }),
            )? {
                changes.opened.push(t);
            }
        } else if let Some(t) = clear(&tx, now_ms, RULE_GATEWAY, &subject, *last_seen)? {
            changes.cleared.push(t);
        }
    }

    // Devices: the newest of their readings and of the polls their gateway says they answered.
    let answered = crate::store::query::last_answered(&tx)?;
    let rows = tx.query(
        "SELECT a.id, a.gateway, a.device, a.report_interval_s, a.updated_at, a.road_segment, a.grid, a.zone,
                (SELECT MAX(s.last_received) FROM series s WHERE s.gateway = a.gateway AND s.device = a.device)
         FROM assets a ORDER BY a.id",
        &[],
    )?;
    type Row = (
        String,
        String,
        String,
        Option<i64>,
        i64,
        (Option<String>, Option<String>, Option<String>),
        Option<i64>,
    );
    let assets: Vec<Row> = rows
        .iter()
        .map(|r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                (r.get(5)?, r.get(6)?, r.get(7)?),
                r.get(8)?,
            ))
        })
        .collect::<db::Result<_>>()?;
    for (asset, gateway, device, interval_s, announced, place, received) in assets {
        let heard = received
            .into_iter()
            .chain(answered.get(&(gateway.clone(), device.clone())).copied())
            .max();
        // Never heard from: counted from when its gateway announced it.
        let since = heard.unwrap_or(announced);
        let limit = (3 * interval_s.unwrap_or(0) * 1000).max(min_silence);
        let subject = asset.clone();
        // A device's silence counts only while its gateway is heard: silent up to the gateway's
        // last message. Otherwise the devices of a gateway that has just gone down (they spoke
        // last up to a report interval before its last heartbeat) would each get a task in the
        // minutes before the gateway's one task suppresses them.
        let until = last_seen
            .get(gateway.as_str())
            .copied()
            .unwrap_or(now_ms)
            .min(now_ms);
        if until - since > limit && !offline_gateways.contains(gateway.as_str()) {
            let title = match heard {
                Some(t) => format!("{asset} silent since {}", rfc3339(t)),
                None => format!("{asset} has never reported since it was installed"),
            };
            if let Some(t) = open_task(
                &tx,
                now_ms,
                RULE_DEVICE,
                &subject,
                Some(&asset),
                place,
                "warning",
                &title,
                serde_json::json!({ "gateway": gateway, "device": device, "lastHeard": heard.map(rfc3339), "limitS": limit / 1000 }),
            )? {
                changes.opened.push(t);
            }
        } else if heard.is_some_and(|t| now_ms - t <= limit)
            && let Some(t) = clear(&tx, now_ms, RULE_DEVICE, &subject, since)?
        {
            changes.cleared.push(t);
        }
    }
    tx.commit()?;
    Ok(changes)
}

/// Opens a task unless one is open for (subject, rule); returns the new task's id.
#[allow(clippy::too_many_arguments)]
fn open_task(
    tx: &dyn Sql,
    now_ms: i64,
    rule: &'static str,
    subject: &str,
    asset: Option<&str>,
    place: (Option<String>, Option<String>, Option<String>),
    severity: &'static str,
    title: &str,
    detail: serde_json::Value,
) -> db::Result<Option<i64>> {
    let raise = super::Raise {
        rule,
        kind: "maintenance",
        subject: subject.to_owned(),
        asset: asset.map(str::to_owned),
        place: super::Place {
            segment: place.0,
            grid: place.1,
            zone: place.2,
        },
        severity,
        title: title.to_owned(),
        detail,
        at: now_ms,
        state: "dispatched",
    };
    // Device repairs are due within two working days (DOMAIN.md's service standard for single
    // faults); a gateway within one day.
    let due = now_ms
        + if rule == RULE_GATEWAY {
            86_400_000
        } else {
            2 * 86_400_000
        };
    super::open_task(tx, now_ms, &raise, DEVICE_CONTRACTOR, due)
}

/// Closes the open task of (subject, rule), verified by the device or gateway speaking again.
fn clear(
    tx: &dyn Sql,
    now_ms: i64,
    rule: &str,
    subject: &str,
    heard_ms: i64,
) -> db::Result<Option<i64>> {
    let note = format!(
        "verified by the sensor: heard from again at {}",
        rfc3339(heard_ms)
    );
    super::clear_task(tx, now_ms, rule, subject, &note)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rules::RuleClock;
    use rusqlite::{Connection, params};

    const REAL: RuleClock = RuleClock::REAL;

    #[test]
    fn silence_is_the_towns_when_its_clock_runs_fast_but_never_under_a_minute() {
        assert_eq!(silence_limit(&REAL, MIN_SILENCE_MS), MIN_SILENCE_MS);
        let fast = |speed| RuleClock {
            real0: 0,
            rule0: 0,
            speed,
        };
        assert_eq!(silence_limit(&fast(10.0), MIN_SILENCE_MS), 90_000);
        assert_eq!(
            silence_limit(&fast(120.0), MIN_SILENCE_MS),
            ACCELERATED_FLOOR_MS
        );
    }

    const MIN: i64 = 60_000;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::prepare(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO gateways (id, state, last_seen) VALUES ('gw-a', 'online', 0), ('gw-b', 'online', 0);
             INSERT INTO assets (id, kind, gateway, device, report_interval_s, road_segment, updated_at)
               VALUES ('lamp-1', 'streetlight', 'gw-a', 'd1', 60, 'zhongshan-rd-1', 0),
                      ('bin-1', 'smart_bin', 'gw-a', 'd2', 1800, NULL, 0),
                      ('lamp-2', 'streetlight', 'gw-b', 'd1', 60, NULL, 0),
                      ('lamp-3', 'streetlight', 'gw-b', 'd2', 60, NULL, 0);
             INSERT INTO series (gateway, device, metric, last_received) VALUES
               ('gw-a', 'd1', 'power', 0), ('gw-a', 'd2', 'fill', 0), ('gw-b', 'd1', 'power', 0), ('gw-b', 'd2', 'power', 0);",
        )
        .unwrap();
        c
    }

    fn heard(c: &Connection, gw: &str, device: &str, at: i64) {
        c.execute(
            "UPDATE series SET last_received = ?3 WHERE gateway = ?1 AND device = ?2",
            params![gw, device, at],
        )
        .unwrap();
        c.execute(
            "UPDATE gateways SET last_seen = MAX(last_seen, ?2) WHERE id = ?1",
            params![gw, at],
        )
        .unwrap();
    }

    fn open(c: &Connection) -> Vec<(String, String, String)> {
        c.prepare("SELECT rule, subject, state FROM tasks WHERE state != 'closed' ORDER BY subject")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn silent_devices_raise_one_task_each_and_close_when_heard_again() {
        let c = db();
        // Everyone speaks until minute 10; gw-a's lamp and gw-b's lamps stay quiet afterwards.
        for (gw, d) in [
            ("gw-a", "d1"),
            ("gw-a", "d2"),
            ("gw-b", "d1"),
            ("gw-b", "d2"),
        ] {
            heard(&c, gw, d, 10 * MIN);
        }
        // At 24 min 59 s nobody has been silent for 15 minutes: nothing.
        assert_eq!(
            evaluate_offline(&c, 25 * MIN - 1000, &REAL).unwrap(),
            Changes::default()
        );
        // gw-b keeps its lamp-3 talking, and the gateway with it; lamp-2 on gw-b is silent.
        heard(&c, "gw-b", "d2", 24 * MIN);
        heard(&c, "gw-a", "d2", 24 * MIN);
        // At 25 min and 1 s lamp-1 and lamp-2 have been silent for more than 15 min (3 × 60 s is
        // less); the bin reports every 30 min, so its limit is 90 min: not yet.
        // Their gateways' heartbeats say the gateways are up.
        beat(&c, 25 * MIN + 1000);
        let ch = evaluate_offline(&c, 25 * MIN + 1000, &REAL).unwrap();
        assert_eq!(ch.opened.len(), 2);
        assert_eq!(
            open(&c),
            vec![
                (
                    "device_offline".into(),
                    "lamp-1".into(),
                    "dispatched".into()
                ),
                (
                    "device_offline".into(),
                    "lamp-2".into(),
                    "dispatched".into()
                ),
            ]
        );
        let (dept, segment): (String, String) = c
            .query_row(
                "SELECT department, road_segment FROM tasks WHERE subject = 'lamp-1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (dept.as_str(), segment.as_str()),
            (DEVICE_CONTRACTOR, "zhongshan-rd-1")
        );
        // Evaluating again (or after a restart) opens nothing twice.
        assert_eq!(
            evaluate_offline(&c, 26 * MIN, &REAL).unwrap(),
            Changes::default()
        );
        // lamp-1 speaks again: its task is closed, verified by the sensor.
        heard(&c, "gw-a", "d1", 27 * MIN);
        let ch = evaluate_offline(&c, 27 * MIN + 1000, &REAL).unwrap();
        assert_eq!(ch.cleared.len(), 1);
        let note: String = c
            .query_row(
                "SELECT note FROM task_events WHERE action = 'cleared'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(note.contains("verified by the sensor"), "{note}");
        // Silent again later (its gateway still talking): a new task, the old one stays closed.
        heard(&c, "gw-a", "d2", 40 * MIN);
        heard(&c, "gw-b", "d2", 40 * MIN);
        beat(&c, 27 * MIN + 15 * MIN + 2000);
        let ch = evaluate_offline(&c, 27 * MIN + 15 * MIN + 2000, &REAL).unwrap();
        assert_eq!(ch.opened.len(), 1);
        let tasks: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE subject = 'lamp-1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tasks, 2);
    }

    #[test]
    fn an_offline_gateway_is_one_task_and_suppresses_its_devices() {
        let c = db();
        for (gw, d) in [
            ("gw-a", "d1"),
            ("gw-a", "d2"),
            ("gw-b", "d1"),
            ("gw-b", "d2"),
        ] {
            heard(&c, gw, d, 10 * MIN);
        }
        // gw-a keeps talking; gw-b falls silent with both its lamps.
        heard(&c, "gw-a", "d1", 40 * MIN);
        heard(&c, "gw-a", "d2", 40 * MIN);
        evaluate_offline(&c, 40 * MIN, &REAL).unwrap();
        assert_eq!(
            open(&c),
            vec![(
                "gateway_offline".into(),
                "gateway:gw-b".into(),
                "dispatched".into()
            )],
            "one task for the gateway, none for its two silent lamps"
        );
        // The gateway comes back with its lamps: the gateway task closes, no device task opens.
        heard(&c, "gw-b", "d1", 41 * MIN);
        heard(&c, "gw-b", "d2", 41 * MIN);
        let ch = evaluate_offline(&c, 41 * MIN + 1000, &REAL).unwrap();
        assert_eq!((ch.opened.len(), ch.cleared.len()), (0, 1));
        assert!(open(&c).is_empty());
        // A last will marks a gateway offline after 5 minutes of silence, not at once.
        c.execute(
            "UPDATE gateways SET state = 'offline' WHERE id = 'gw-a'",
            [],
        )
        .unwrap();
        assert!(
            evaluate_offline(&c, 42 * MIN, &REAL)
                .unwrap()
                .opened
                .is_empty()
        );
        let ch = evaluate_offline(&c, 40 * MIN + 5 * MIN + 1000, &REAL).unwrap();
        assert_eq!(ch.opened.len(), 1);
    }

    /// Adds gateway gw-c with ten lamps (reporting every minute), each with a series; the gateway
    /// and the lamps last heard at `at`.
    fn gateway_with_ten(c: &Connection, at: i64) {
        c.execute(
            "INSERT INTO gateways (id, state, last_seen) VALUES ('gw-c', 'online', ?1)",
            [at],
        )
        .unwrap();
        for i in 0..10 {
            let device = format!("d{i}");
            c.execute(
                "INSERT INTO assets (id, kind, gateway, device, report_interval_s, updated_at)
                 VALUES (?1, 'streetlight', 'gw-c', ?2, 60, 0)",
                params![format!("lamp-c{i}"), device],
            )
            .unwrap();
            c.execute(
                "INSERT INTO series (gateway, device, metric, last_received) VALUES ('gw-c', ?1, 'power', ?2)",
                params![device, at],
            )
            .unwrap();
        }
    }

    /// Heartbeats of gw-a and gw-b at `at` (their devices say nothing).
    fn beat(c: &Connection, at: i64) {
        c.execute(
            "UPDATE gateways SET last_seen = MAX(last_seen, ?1) WHERE id IN ('gw-a', 'gw-b')",
            [at],
        )
        .unwrap();
    }

    /// gw-a and gw-b and their devices speak at `at`, so only gw-c can be silent.
    fn others_speak(c: &Connection, at: i64) {
        for (gw, d) in [
            ("gw-a", "d1"),
            ("gw-a", "d2"),
            ("gw-b", "d1"),
            ("gw-b", "d2"),
        ] {
            heard(c, gw, d, at);
        }
    }

    #[test]
    fn a_gateway_offline_with_ten_devices_is_one_task() {
        struct Row {
            name: &'static str,
            /// gw-c sent its last will (state 'offline').
            last_will: bool,
            /// gw-c's own heartbeats go on while its devices are silent.
            heartbeats: bool,
            /// Evaluated at each of these times (minutes, and ms added).
            evaluations: Vec<i64>,
            /// The open tasks at the end: (rule, subject).
            expect: Vec<(&'static str, String)>,
        }
        let gateway = || vec![(RULE_GATEWAY, "gateway:gw-c".to_owned())];
        // gw-c and its ten lamps are last heard at minute 10.
        let every_30_s = (20..=140).map(|i| i * 30_000).collect::<Vec<_>>();
        let rows = [
            Row {
                name: "silent 15 min and 1 s",
                last_will: false,
                heartbeats: false,
                evaluations: vec![25 * MIN + 1000],
                expect: gateway(),
            },
            Row {
                name: "silent 14 min 59 s",
                last_will: false,
                heartbeats: false,
                evaluations: vec![25 * MIN - 1000],
                expect: vec![],
            },
            Row {
                name: "silent for an hour, evaluated every 30 s",
                last_will: false,
                heartbeats: false,
                evaluations: every_30_s.clone(),
                expect: gateway(),
            },
            Row {
                name: "last will, then silent for an hour, evaluated every 30 s",
                last_will: true,
                heartbeats: false,
                evaluations: every_30_s.clone(),
                expect: gateway(),
            },
            Row {
                name: "the gateway heartbeats on, its ten lamps silent: ten device tasks",
                last_will: false,
                heartbeats: true,
                evaluations: vec![25 * MIN + 1000],
                expect: (0..10)
                    .map(|i| (RULE_DEVICE, format!("lamp-c{i}")))
                    .collect(),
            },
        ];
        for row in &rows {
            let c = db();
            gateway_with_ten(&c, 10 * MIN);
            if row.last_will {
                c.execute(
                    "UPDATE gateways SET state = 'offline' WHERE id = 'gw-c'",
                    [],
                )
                .unwrap();
            }
            let mut opened = 0;
            for &now in &row.evaluations {
                others_speak(&c, now);
                if row.heartbeats {
                    c.execute(
                        "UPDATE gateways SET last_seen = ?1 WHERE id = 'gw-c'",
                        [now],
                    )
                    .unwrap();
                }
                opened += evaluate_offline(&c, now, &REAL).unwrap().opened.len();
            }
            let want: Vec<(String, String, String)> = row
                .expect
                .iter()
                .map(|(rule, subject)| ((*rule).into(), subject.clone(), "dispatched".into()))
                .collect();
            assert_eq!(open(&c), want, "{}", row.name);
            // Nothing opened and closed again on the way.
            let all: i64 = c
                .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                (opened, all),
                (row.expect.len(), row.expect.len() as i64),
                "{}",
                row.name
            );
        }
    }

    /// The lamps' last readings come in up to a minute before the gateway's last heartbeat (they
    /// report every minute; the gateway every few seconds), and the hub evaluates every 30 s.
    /// Fails today: each lamp's silence is measured against `now`, so the lamps cross 15 min up
    /// to a minute before their gateway does, get ten device tasks, and those stay open once the
    /// gateway task opens.
    #[test]
    fn a_gateway_offline_with_ten_devices_heard_just_before_it_is_one_task() {
        let c = db();
        gateway_with_ten(&c, 10 * MIN);
        for i in 0..10 {
            heard(&c, "gw-c", &format!("d{i}"), 9 * MIN + i * 6000);
        }
        for now in (20..=140).map(|i| i * 30_000) {
            others_speak(&c, now);
            evaluate_offline(&c, now, &REAL).unwrap();
        }
        assert_eq!(
            open(&c),
            vec![(
                RULE_GATEWAY.into(),
                "gateway:gw-c".into(),
                "dispatched".into()
            )]
        );
    }
}
