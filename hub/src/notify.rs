//! Notifications of task changes to the people who act on them: a JSON webhook signed with
//! HMAC-SHA256, WeCom (企业微信) and DingTalk (钉钉) group robots, and an MQTT topic per department.
//! Channels are `[[notify]]` entries of the rules file.
//!
//! ```text
//! task_events (every transition, by rules or people) ─▶ notifier thread: one delivery row per
//!   (event, matching channel) in `notifications` ─▶ send ─ ok ─▶ delivered
//!                                                        └ fail ─▶ retry in 2 s, 4 s, … 1 h; after
//!                                                                   10 attempts: dead (a dead letter)
//! ```
//!
//! The notifier reads the audit trail after its own cursor on a thread of its own, so no task writer
//! (and never ingest) waits for a robot on the internet; a restart resumes where it stopped and
//! delivers what was pending.
//!
//! Several hub processes may run the notifier on one PostgreSQL database (docs/SCALING.md); each
//! notification is still sent once:
//! - a delivery row is unique per (event, channel), and creating it is `ON CONFLICT DO NOTHING`,
//!   so two notifiers reading the same events create it once;
//! - the events read are those after the cursor and the [`RESCAN`] before it, because on
//!   PostgreSQL a task event can commit after one with a higher id (ids are handed out before
//!   commit), which a plain cursor would skip for ever;
//! - a notifier claims due rows before it sends them by moving their `next_at` a [`LEASE_MS`]
//!   ahead in one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so no other notifier takes
//!   them; if it dies before recording the outcome, the lease runs out and another one sends. That
//!   one may send a second time what the dead one sent just before dying: receivers that must
//!   not act twice use the `x-city-delivery` header, the same for every attempt.
//!
//! The delivery state of each task's notifications is in its detail
//! (`GET /api/v1/tasks/{id}`). Notifications never carry plates: only the task's title, which rules
//! write without them.

use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::db::{self, Begin, Sql, Tx, args};

/// Attempts before a delivery is given up as dead.
pub const MAX_ATTEMPTS: i64 = 10;

/// What kind of receiver a channel is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Webhook,
    Wecom,
    Dingtalk,
    Mqtt,
}

/// A `[[notify]]` entry of the rules file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// Where to POST (all kinds but `mqtt`).
    #[serde(default)]
    pub url: Option<String>,
    /// Departments whose tasks go here; all when empty.
    #[serde(default)]
    pub departments: Vec<String>,
    /// Task actions that are sent (`file`, `dispatch`, `escalate`, `cleared`, `reopen`, ...).
    #[serde(default = "default_actions")]
    pub actions: Vec<String>,
    /// File holding the secret: the webhook's HMAC key, or DingTalk's signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

fn default_actions() -> Vec<String> {
    ["file", "dispatch", "remind", "escalate", "reopen"]
        .map(String::from)
        .to_vec()
}

impl Channel {
    /// Problems a rules file's channel has, checked at load.
    pub fn problem(&self) -> Option<String> {
        match (self.kind, &self.url) {
            (ChannelKind::Mqtt, Some(_)) => Some(
                "an mqtt channel takes no url (it publishes to <root>/v1/notify/<department>)"
                    .into(),
            ),
            (ChannelKind::Mqtt, None) => None,
            (_, None) => Some("needs a url".into()),
            (_, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                Some(format!("url {u:?} is not http:// or https://"))
            }
            _ => None,
        }
    }

    fn wants(&self, action: &str, department: Option<&str>) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
            && (self.departments.is_empty()
                || department.is_some_and(|d| self.departments.iter().any(|x| x == d)))
    }
}

/// A task event to tell about.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub delivery: i64,
    pub action: String,
    pub at: String,
    pub actor: String,
    pub note: Option<String>,
    pub task: MessageTask,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageTask {
    pub id: i64,
    pub kind: String,
    pub rule: String,
    pub subject: String,
    pub asset: Option<String>,
    pub department: Option<String>,
    pub road_segment: Option<String>,
    pub severity: String,
    pub state: String,
    pub title: String,
    pub due_at: Option<String>,
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp.body`: what the webhook's receiver recomputes
/// (the timestamp inside the signature stops replays of old deliveries).
pub fn webhook_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of every length"),
    };
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    let hex: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// DingTalk's robot signature: base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")), URL-encoded.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    use base64::Engine as _;
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of every length"),
    };
    m.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    b64.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The robots' markdown text of a message.
pub fn markdown(m: &Message) -> String {
    let t = &m.task;
    let mut s = format!(
        "**[{}] {}**\n\n> 任务 Task #{} · {} · {}\n> 部门 Department: {}\n",
        t.severity,
        t.title,
        t.id,
        t.rule,
        m.action,
        t.department.as_deref().unwrap_or("-")
    );
    if let Some(seg) = &t.road_segment {
        s.push_str(&format!("> 路段 Road: {seg}\n"));
    }
    if let Some(due) = &t.due_at {
        s.push_str(&format!("> 时限 Due: {due}\n"));
    }
    if let Some(n) = &m.note {
        s.push_str(&format!("\n{n}\n"));
    }
    s
}

/// The body a channel sends.
pub fn body(kind: ChannelKind, m: &Message) -> serde_json::Value {
    match kind {
        ChannelKind::Webhook | ChannelKind::Mqtt => serde_json::to_value(m).unwrap_or_default(),
        ChannelKind::Wecom => serde_json::json!({
            "msgtype": "markdown",
            "markdown": {"content": markdown(m)},
        }),
        ChannelKind::Dingtalk => serde_json::json!({
            "msgtype": "markdown",
            "markdown": {"title": m.task.title, "text": markdown(m)},
        }),
    }
}

/// How many task event ids before the cursor are read again on PostgreSQL (see the module
/// documentation), and how recent such an event must be.
pub const RESCAN: i64 = 1_000;
pub const RESCAN_MS: i64 = 5 * 60_000;
/// Deliveries taken per claim: all of them are sent within the lease even when every send takes
/// its full timeout (10 s).
const CLAIM: i64 = 5;
/// How long a claimed delivery is left to its notifier before another may take it.
pub const LEASE_MS: i64 = 60_000;

/// Creates the deliveries for task events after the cursor (and the [`RESCAN`] before it).
/// Returns how many.
fn enqueue(c: &dyn Sql, channels: &[Channel], now: i64) -> db::Result<usize> {
    let tx = Tx::begin(c, Begin::Write)?;
    let meta = |key: &str| -> db::Result<Option<i64>> {
        tx.query_opt("SELECT value FROM rule_meta WHERE key = $1", args![key])?
            .map(|r| r.get(0))
            .transpose()
    };
    let (cursor, floor) = match (meta("notify_cursor")?, meta("notify_floor")?) {
        (Some(cursor), floor) => (cursor, floor.unwrap_or(0)),
        // First start: only what happens from now on (not the whole history).
        (None, _) => {
            let last: i64 = db::one(
                &tx,
                "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM task_events",
                &[],
            )?;
            for key in ["notify_cursor", "notify_floor"] {
                tx.execute(
                    "INSERT INTO rule_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    args![key, last],
                )?;
            }
            tx.commit()?;
            return Ok(0);
        }
    };
    // Only PostgreSQL needs the rescan (SQLite commits one writer at a time, ids in order), and
    // only for recent events: an event behind the cursor is one that committed late, moments
    // ago, not an old one a new or widened channel would now match.
    let rescan_from = match c.engine() {
        db::Engine::Sqlite => cursor,
        db::Engine::Postgres => (cursor - RESCAN).max(floor),
    };
    let events = tx.query(
        "SELECT e.id, e.task, e.action, t.department FROM task_events e JOIN tasks t ON t.id = e.task
         WHERE e.id > $1 AND (e.id > $2 OR e.at > $3) ORDER BY e.id LIMIT 2000",
        args![rescan_from, cursor, now - RESCAN_MS],
    )?;
    let mut n = 0;
    let mut last = cursor;
    for r in &events {
        let (id, task, action, dept): (i64, i64, String, Option<String>) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        last = last.max(id);
        for ch in channels
            .iter()
            .filter(|c| c.wants(&action, dept.as_deref()))
        {
            n += tx.execute(
                "INSERT INTO notifications (event, task, channel, state, attempts, next_at, created_at)
                 VALUES ($1, $2, $3, 'pending', 0, $4, $4)
                 ON CONFLICT (event, channel) DO NOTHING",
                args![id, task, ch.name, now],
            )?;
        }
    }
    // Never backwards: another notifier may have gone further meanwhile.
    tx.execute(
        "INSERT INTO rule_meta (key, value) VALUES ('notify_cursor', $1)
         ON CONFLICT (key) DO UPDATE SET value = CASE WHEN excluded.value > rule_meta.value
             THEN excluded.value ELSE rule_meta.value END",
        args![last],
    )?;
    tx.commit()?;
    Ok(n)
}

/// A delivery claimed for sending: (id, task event, channel, attempts so far).
type Claimed = (i64, i64, String, i64);

/// Takes up to `limit` due deliveries for this notifier: their `next_at` moves [`LEASE_MS`]
/// ahead, so no other notifier takes them while this one sends.
fn claim(c: &dyn Sql, now: i64, limit: i64) -> db::Result<Vec<Claimed>> {
    let skip_locked = match c.engine() {
        db::Engine::Sqlite => "",
        db::Engine::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    // Most rounds find nothing due: a read says so without taking the write lock.
    if c.query_opt(
        "SELECT id FROM notifications WHERE state = 'pending' AND next_at <= $1 LIMIT 1",
        args![now],
    )?
    .is_none()
    {
        return Ok(Vec::new());
    }
    let tx = Tx::begin(c, Begin::Write)?;
    let rows = tx.query(
        &format!(
            "UPDATE notifications SET next_at = $2 WHERE id IN (
                 SELECT id FROM notifications WHERE state = 'pending' AND next_at <= $1
                 ORDER BY next_at, id LIMIT $3{skip_locked})
             RETURNING id, event, channel, attempts"
        ),
        args![now, now + LEASE_MS, limit],
    )?;
    tx.commit()?;
    let mut claimed = rows
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<db::Result<Vec<Claimed>>>()?;
    claimed.sort_by_key(|c| c.0);
    Ok(claimed)
}

/// Records the outcome of one attempt.
/// Records the outcome of one attempt, if this notifier still holds the delivery's lease
/// (`leased_until`, as [`claim`] set it): a notifier whose lease ran out must not overwrite what
/// the one that took the delivery over recorded. Returns whether it recorded.
fn record(
    c: &dyn Sql,
    id: i64,
    attempts: i64,
    result: &Result<(), String>,
    now: i64,
    leased_until: i64,
) -> db::Result<bool> {
    let n = match result {
        Ok(()) => c.execute(
            "UPDATE notifications SET state = 'delivered', attempts = $2, delivered_at = $3, last_error = NULL
             WHERE id = $1 AND state = 'pending' AND next_at = $4",
            args![id, attempts, now, leased_until],
        ),
        Err(e) => c.execute(
            "UPDATE notifications SET state = $2, attempts = $3, next_at = $4, last_error = $5
             WHERE id = $1 AND state = 'pending' AND next_at = $6",
            args![
                id,
                if attempts >= MAX_ATTEMPTS { "dead" } else { "pending" },
                attempts,
                now + backoff_ms(attempts),
                e,
                leased_until
            ],
        ),
    }?;
    Ok(n == 1)
}

fn message(c: &dyn Sql, delivery: i64, event: i64) -> db::Result<Option<Message>> {
    let text = |ms: i64| protocol::Timestamp::from_unix_millis(ms).to_rfc3339();
    let Some(r) = c.query_opt(
        "SELECT e.action, e.at, e.actor, e.note, t.id, t.kind, t.rule, t.subject, t.asset, t.department,
                t.road_segment, t.severity, t.state, t.title, t.due_at
         FROM task_events e JOIN tasks t ON t.id = e.task WHERE e.id = $1",
        args![event],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Message {
        delivery,
        action: r.get(0)?,
        at: text(r.get(1)?),
        actor: r.get(2)?,
        note: r.get(3)?,
        task: MessageTask {
            id: r.get(4)?,
            kind: r.get(5)?,
            rule: r.get(6)?,
            subject: r.get(7)?,
            asset: r.get(8)?,
            department: r.get(9)?,
            road_segment: r.get(10)?,
            severity: r.get(11)?,
            state: r.get(12)?,
            title: r.get(13)?,
            due_at: r.get::<Option<i64>>(14)?.map(text),
        },
    }))
}

/// Sends one message on one channel.
fn send(
    agent: &ureq::Agent,
    ch: &Channel,
    secret: Option<&str>,
    m: &Message,
    topics: &protocol::TopicScheme,
    outgoing: &tokio::sync::mpsc::Sender<crate::ingest::Outgoing>,
) -> Result<(), String> {
    let body = body(ch.kind, m);
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    if ch.kind == ChannelKind::Mqtt {
        let dept = m.task.department.as_deref().unwrap_or("unassigned");
        let topic = format!("{}/v1/notify/{dept}", topics.root());
        return outgoing
            .try_send(crate::ingest::Outgoing {
                topic,
                payload: bytes,
            })
            .map_err(|e| format!("MQTT client busy or stopped: {e}"));
    }
    let Some(url) = &ch.url else {
        return Err("no url".into());
    };
    let now = crate::now_ms();
    let url = match (ch.kind, secret) {
        (ChannelKind::Dingtalk, Some(s)) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}timestamp={now}&sign={}", dingtalk_sign(s, now))
        }
        _ => url.clone(),
    };
    let mut req = agent
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-city-delivery", &m.delivery.to_string());
    if ch.kind == ChannelKind::Webhook
        && let Some(s) = secret
    {
        let ts = (now / 1000).to_string();
        req = req.header("x-city-timestamp", &ts).header(
            "x-city-signature",
            &webhook_signature(s.as_bytes(), &ts, &bytes),
        );
    }
    let mut resp = req.send(&bytes[..]).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect::<String>();
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}: {text}"));
    }
    // The robots answer 200 with an error code in the body.
    if matches!(ch.kind, ChannelKind::Wecom | ChannelKind::Dingtalk) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["errcode"].as_i64().is_some_and(|c| c != 0) {
            return Err(format!("robot refused: {text}"));
        }
    }
    Ok(())
}

/// How long before attempt `n + 1` (after `n` failures): 2 s, 4 s, … at most an hour.
pub fn backoff_ms(n: i64) -> i64 {
    (2_000i64 << (n - 1).clamp(0, 20)).min(3_600_000)
}

/// Sends what is due, a few deliveries per claim (each claim with a lease of its own), up to
/// 100 a round; returns (delivered, failed).
fn deliver(
    c: &dyn Sql,
    agent: &ureq::Agent,
    channels: &[(Channel, Option<String>)],
    topics: &protocol::TopicScheme,
    outgoing: &tokio::sync::mpsc::Sender<crate::ingest::Outgoing>,
) -> db::Result<(usize, usize)> {
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..100 / CLAIM {
        let now = crate::now_ms();
        let claimed = claim(c, now, CLAIM)?;
        if claimed.is_empty() {
            break;
        }
        let leased_until = now + LEASE_MS;
        for (id, event, channel, attempts) in claimed {
            let result = match (
                channels.iter().find(|(c, _)| c.name == channel),
                message(c, id, event)?,
            ) {
                (Some((ch, secret)), Some(m)) => {
                    send(agent, ch, secret.as_deref(), &m, topics, outgoing)
                }
                (None, _) => Err(format!(
                    "channel {channel:?} is no longer in the rules file"
                )),
                (_, None) => Err("the task event is gone".into()),
            };
            let attempts = attempts + 1;
            match &result {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    let dead = attempts >= MAX_ATTEMPTS;
                    tracing::warn!(delivery = id, channel, attempts, dead, error = %e, "notification not delivered");
                }
            }
            if !record(c, id, attempts, &result, crate::now_ms(), leased_until)? {
                tracing::warn!(
                    delivery = id,
                    "lease ran out before the outcome was recorded; another notifier has it"
                );
            }
        }
    }
    Ok((ok, failed))
}

/// A notification's state, for the task detail.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub channel: String,
    pub action: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

pub(crate) fn deliveries(c: &dyn Sql, task: i64) -> db::Result<Vec<DeliveryView>> {
    let text = |ms: i64| protocol::Timestamp::from_unix_millis(ms).to_rfc3339();
    c.query(
        "SELECT n.channel, e.action, n.state, n.attempts, n.last_error, n.delivered_at
         FROM notifications n JOIN task_events e ON e.id = n.event WHERE n.task = $1 ORDER BY n.id",
        args![task],
    )?
    .iter()
    .map(|r| {
        Ok(DeliveryView {
            channel: r.get(0)?,
            action: r.get(1)?,
            state: r.get(2)?,
            attempts: r.get(3)?,
            last_error: r.get(4)?,
            delivered_at: r.get::<Option<i64>>(5)?.map(text),
        })
    })
    .collect()
}

/// Runs the notifier on a thread of its own until `stop`; nothing to do without channels.
pub fn start(
    db: crate::store::Database,
    channels: Vec<Channel>,
    topics: protocol::TopicScheme,
    outgoing: tokio::sync::mpsc::Sender<crate::ingest::Outgoing>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    if channels.is_empty() {
        return Ok(None);
    }
    let mut with_secrets = Vec::new();
    for ch in channels {
        let secret = match &ch.secret_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "notify channel {:?}: cannot read {}: {e}",
                            ch.name,
                            f.display()
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        with_secrets.push((ch, secret));
    }
    let conn = db.connect()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    tracing::info!(channels = with_secrets.len(), "notifier started");
    Ok(Some(
        std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                let plain: Vec<Channel> = with_secrets.iter().map(|(c, _)| c.clone()).collect();
                while !stop.is_cancelled() {
                    let now = crate::now_ms();
                    if let Err(e) = enqueue(&*conn, &plain, now) {
                        tracing::error!(error = %e, "notifier cannot read task events; retrying");
                    }
                    if let Err(e) = deliver(&*conn, &agent, &with_secrets, &topics, &outgoing) {
                        tracing::error!(error = %e, "notifier cannot record deliveries; retrying");
                    }
                    for _ in 0..10 {
                        if stop.is_cancelled() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signatures() {
        // The receiver's side, written independently: HMAC-SHA256 of "timestamp.body".
        let sig = webhook_signature(b"secret", "1795305600", br#"{"a":1}"#);
        let mut m = HmacSha256::new_from_slice(b"secret").unwrap();
        m.update(br#"1795305600.{"a":1}"#);
        m.verify_slice(
            &(0..32)
                .map(|i| u8::from_str_radix(&sig[7 + 2 * i..9 + 2 * i], 16).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        // DingTalk's documented example shape: URL-encoded base64 (no raw '+', '/' or '=').
        let s = dingtalk_sign("SEC000", 1_600_000_000_000);
        assert!(!s.contains(['+', '/', '=']), "{s}");
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(3), 8_000);
        assert_eq!(backoff_ms(30), 3_600_000);
    }

    #[test]
    fn robot_formats() {
        let m = Message {
            delivery: 7,
            action: "file".into(),
            at: "2026-11-22T10:00:00.000Z".into(),
            actor: "rules".into(),
            note: None,
            task: MessageTask {
                id: 3,
                kind: "maintenance".into(),
                rule: "waterlogging".into(),
                subject: "wl-1".into(),
                asset: Some("wl-1".into()),
                department: Some("drainage".into()),
                road_segment: Some("hanzhong-rd-s2".into()),
                severity: "warning".into(),
                state: "dispatched".into(),
                title: "Water 18 cm deep at wl-1".into(),
                due_at: None,
            },
        };
        let w = body(ChannelKind::Wecom, &m);
        assert_eq!(w["msgtype"], "markdown");
        assert!(
            w["markdown"]["content"]
                .as_str()
                .unwrap()
                .contains("Water 18 cm")
        );
        let d = body(ChannelKind::Dingtalk, &m);
        assert_eq!(d["markdown"]["title"], "Water 18 cm deep at wl-1");
        let j = body(ChannelKind::Webhook, &m);
        assert_eq!(j["task"]["roadSegment"], "hanzhong-rd-s2");
        let ch = Channel {
            name: "x".into(),
            kind: ChannelKind::Webhook,
            url: Some("http://h".into()),
            departments: vec!["drainage".into()],
            actions: default_actions(),
            secret_file: None,
        };
        assert!(ch.wants("file", Some("drainage")) && !ch.wants("file", Some("lighting")));
        assert!(!ch.wants("accept", Some("drainage")));
    }

    fn channel(name: &str, departments: &[&str]) -> Channel {
        Channel {
            name: name.into(),
            kind: ChannelKind::Webhook,
            url: Some("http://127.0.0.1:9/".into()),
            departments: departments.iter().map(|d| d.to_string()).collect(),
            actions: default_actions(),
            secret_file: None,
        }
    }

    /// A task in `department` and one event of it; the event's id.
    fn task_event(c: &dyn Sql, department: &str, action: &str) -> i64 {
        let task: i64 = db::one(
            c,
            "INSERT INTO tasks (kind, category, rule, subject, department, severity, state, title, detail, opened_at, updated_at)
             VALUES ('maintenance', 'lamp_out', 'manual', $1, $2, 'warning', 'filed', 't', '{}', 0, 0) RETURNING id",
            args![uuid::Uuid::new_v4().to_string(), department],
        )
        .unwrap();
        db::one(
            c,
            "INSERT INTO task_events (task, at, actor, action, to_state) VALUES ($1, 0, 'op', $2, 'filed') RETURNING id",
            args![task, action],
        )
        .unwrap()
    }

    fn states(c: &dyn Sql) -> Vec<(String, String, i64)> {
        c.query(
            "SELECT channel, state, attempts FROM notifications ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap()))
        .collect()
    }

    #[test]
    fn deliveries_are_created_once_claimed_once_and_retried_on_both_engines() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            let channels = [channel("all", &[]), channel("drains", &["drainage"])];
            task_event(c, "lighting", "file");
            // First start: what came before is not sent.
            assert_eq!(enqueue(c, &channels, 1_000).unwrap(), 0, "{name}");
            assert_eq!(enqueue(c, &channels, 1_000).unwrap(), 0, "{name}");
            let drains = task_event(c, "drainage", "file");
            task_event(c, "lighting", "accept");
            assert_eq!(enqueue(c, &channels, 2_000).unwrap(), 2, "{name}");
            // Read again (the rescan): nothing twice.
            assert_eq!(enqueue(c, &channels, 2_000).unwrap(), 0, "{name}");
            let claimed = claim(c, 2_000, 100).unwrap();
            assert_eq!(
                claimed
                    .iter()
                    .map(|c| (c.1, c.2.as_str(), c.3))
                    .collect::<Vec<_>>(),
                [(drains, "all", 0), (drains, "drains", 0)],
                "{name}"
            );
            // Claimed: not due again until the lease runs out.
            assert!(
                claim(c, 2_000 + LEASE_MS - 1, 100).unwrap().is_empty(),
                "{name}"
            );
            let lease = 2_000 + LEASE_MS;
            // A notifier whose lease is not the current one records nothing.
            assert!(
                !record(c, claimed[0].0, 1, &Ok(()), 3_000, lease - 1).unwrap(),
                "{name}"
            );
            assert!(
                record(c, claimed[0].0, 1, &Ok(()), 3_000, lease).unwrap(),
                "{name}"
            );
            assert!(record(c, claimed[1].0, 1, &Err("HTTP 502".into()), 3_000, lease).unwrap());
            // Recorded once: a second outcome for the delivered one changes nothing.
            assert!(
                !record(c, claimed[0].0, 2, &Err("late".into()), 3_500, lease).unwrap(),
                "{name}"
            );
            assert_eq!(
                states(c),
                [
                    ("all".into(), "delivered".into(), 1),
                    ("drains".into(), "pending".into(), 1)
                ],
                "{name}"
            );
            // The failed one is due after its backoff, not before; after the last attempt, dead.
            assert!(
                claim(c, 3_000 + backoff_ms(1) - 1, 100).unwrap().is_empty(),
                "{name}"
            );
            let again = claim(c, 3_000 + backoff_ms(1), 100).unwrap();
            assert_eq!(again.len(), 1, "{name}");
            let lease = 3_000 + backoff_ms(1) + LEASE_MS;
            assert!(
                record(
                    c,
                    again[0].0,
                    MAX_ATTEMPTS,
                    &Err("HTTP 502".into()),
                    9_000,
                    lease
                )
                .unwrap()
            );
            assert_eq!(
                states(c)[1],
                ("drains".into(), "dead".into(), MAX_ATTEMPTS),
                "{name}"
            );
            let views = deliveries(c, 2).unwrap();
            assert_eq!(views.len(), 2, "{name}");
            assert_eq!(
                views[0].delivered_at.as_deref(),
                Some("1970-01-01T00:00:03.000Z"),
                "{name}"
            );
            assert_eq!(views[1].last_error.as_deref(), Some("HTTP 502"), "{name}");
        }
    }

    /// Two notifiers (two hub processes) claiming from one database at once never take the same
    /// delivery, and between them take every one.
    #[test]
    fn two_notifiers_never_claim_the_same_delivery() {
        for (name, a, b, _keep) in crate::db::testing::pairs() {
            let channels = [channel("all", &[])];
            enqueue(&*a, &channels, 0).unwrap();
            for _ in 0..150 {
                task_event(&*a, "lighting", "file");
            }
            assert_eq!(enqueue(&*a, &channels, 0).unwrap(), 150, "{name}");
            // Both read the same events: still one delivery each.
            assert_eq!(enqueue(&*b, &channels, 0).unwrap(), 0, "{name}");
            let run = |c: Box<dyn Sql + Send>| {
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let got = claim(&*c, 1_000, 7).unwrap();
                        if got.is_empty() {
                            break mine;
                        }
                        mine.extend(got.into_iter().map(|c| c.0));
                    }
                })
            };
            let (ta, tb) = (run(a), run(b));
            let (ma, mb) = (ta.join().unwrap(), tb.join().unwrap());
            let mut all: Vec<i64> = ma.iter().chain(&mb).copied().collect();
            all.sort_unstable();
            let n = all.len();
            all.dedup();
            assert_eq!(
                (n, all.len()),
                (150, 150),
                "{name}: claimed {} and {}",
                ma.len(),
                mb.len()
            );
        }
    }

    /// On PostgreSQL a task event can commit after one with a higher id; the rescan still finds it.
    #[test]
    fn an_event_committed_late_is_still_notified() {
        for (name, a, b, _keep) in crate::db::testing::pairs() {
            if name != "postgres" {
                continue; // SQLite has one writer at a time: ids commit in order.
            }
            let channels = [channel("all", &[])];
            enqueue(&*a, &channels, 0).unwrap();
            let late = Tx::begin(&*b, Begin::Deferred).unwrap();
            let early_id = task_event(&late, "lighting", "file");
            let later_id = task_event(&*a, "lighting", "file");
            assert!(later_id > early_id);
            assert_eq!(enqueue(&*a, &channels, 0).unwrap(), 1, "{name}");
            late.commit().unwrap();
            assert_eq!(
                enqueue(&*a, &channels, 0).unwrap(),
                1,
                "{name}: the late event"
            );
            let events: Vec<i64> = a
                .query("SELECT event FROM notifications ORDER BY event", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(events, [early_id, later_id]);
        }
    }
}
