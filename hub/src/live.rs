//! The live feed: `GET /api/v1/stream`, server-sent events of what the hub has just stored.
//!
//! The store writer publishes, after each commit, the new readings and events, gateway presence
//! changes and command replies to a broadcast channel (nothing at all when nobody listens). Each
//! subscriber filters its own copy; one that falls behind by more than the channel holds gets a
//! `lagged` event saying how many it missed, never an unbounded buffer. Plates in event attributes
//! are masked for roles without enforcement rights, as in the events API.
//!
//! ```text
//! event: reading
//! data: {"gateway":"gw-zhongshan-01","device":"wl-zs-01","metric":"waterDepth","ts":"...","value":12.5}
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use protocol::{Envelope, Item, Quality, Value};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::access::Principal;
use crate::api::{ApiError, ApiState};

/// Items the feed keeps for a slow subscriber before it reports `lagged`.
const CAPACITY: usize = 16_384;

/// One thing that happened, as it goes on the feed.
#[derive(Debug, Clone)]
pub struct LiveItem {
    /// `reading`, `event`, `presence`, `reply`, `task`.
    pub kind: &'static str,
    pub gateway: String,
    pub device: Option<String>,
    /// The JSON object sent as `data`.
    pub data: serde_json::Value,
}

/// The writer's end of the feed.
#[derive(Debug, Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<LiveItem>>,
    /// In a cluster, task changes come from the audit trail ([`follow_tasks`]) for every
    /// process's tasks alike, not from the code that made them.
    tasks_from_audit: bool,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            tasks_from_audit: false,
        }
    }
}

impl Live {
    /// The feed of one hub of a cluster (see [`crate::cluster`]).
    pub fn for_cluster() -> Self {
        Self {
            tasks_from_audit: true,
            ..Self::default()
        }
    }

    /// Whether task changes are announced where they are made (not in a cluster).
    pub fn announces_tasks_in_place(&self) -> bool {
        !self.tasks_from_audit
    }

    /// A gateway's presence.
    pub fn presence(&self, presence: &protocol::Presence) {
        self.send(LiveItem {
            kind: "presence",
            gateway: presence.gateway.to_string(),
            device: None,
            data: serde_json::json!({
                "gateway": presence.gateway.as_str(),
                "state": presence.state,
                "boot": presence.boot.to_string(),
                "ts": presence.sent_at.to_rfc3339(),
            }),
        });
    }

    /// A command's reply.
    pub fn reply(&self, reply: &protocol::Reply) {
        self.send(LiveItem {
            kind: "reply",
            gateway: reply.gateway.to_string(),
            device: Some(reply.device.to_string()),
            data: serde_json::json!({
                "gateway": reply.gateway.as_str(),
                "device": reply.device.as_str(),
                "command": reply.id.to_string(),
                "outcome": reply.outcome,
                "detail": reply.detail,
                "ts": reply.at.to_rfc3339(),
            }),
        });
    }

    /// True when someone listens (the writer builds nothing otherwise).
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn send(&self, item: LiveItem) {
        let _ = self.tx.send(Arc::new(item));
    }

    /// The readings and events of a newly stored envelope.
    pub fn envelope(&self, env: &Envelope) {
        let gw = env.gateway.as_str();
        for item in &env.items {
            let li = match item {
                Item::Reading(r) => LiveItem {
                    kind: "reading",
                    gateway: gw.to_owned(),
                    device: Some(r.device.to_string()),
                    data: serde_json::json!({
                        "gateway": gw,
                        "device": r.device.as_str(),
                        "metric": r.metric.as_str(),
                        "ts": r.observed_at.to_rfc3339(),
                        "value": r.value.as_ref().map(value_json),
                        "unit": r.unit.as_ref().map(|u| u.as_str()),
                        "bad": match &r.quality {
                            Quality::Good => None,
                            Quality::Bad { reason, .. } => Some(reason.as_str()),
                        },
                    }),
                },
                Item::Event(e) => LiveItem {
                    kind: "event",
                    gateway: gw.to_owned(),
                    device: Some(e.device.to_string()),
                    data: serde_json::json!({
                        "gateway": gw,
                        "device": e.device.as_str(),
                        "event": e.event.as_str(),
                        "phase": e.phase,
                        "ts": e.observed_at.to_rfc3339(),
                        "attributes": e.attributes,
                        "evidence": e.evidence.iter().map(|r| &r.sha256).collect::<Vec<_>>(),
                    }),
                },
            };
            self.send(li);
        }
    }
}

/// In a cluster: puts every task change on this process's feed, whichever process made it, from
/// the audit trail (`task_events`), once a second while someone listens. Until `shutdown`.
pub async fn follow_tasks(
    store: crate::store::Store,
    live: Live,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::db::{self, args};
    let mut cursor: Option<i64> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !live.wanted() {
            // Nobody listens: nothing is read, and a new listener starts from now.
            cursor = None;
            continue;
        }
        let after = cursor;
        let read = store
            .read(move |c| {
                let after = match after {
                    Some(a) => a,
                    None => db::one(
                        c,
                        "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM task_events",
                        &[],
                    )?,
                };
                let mut out = Vec::new();
                let rows = c.query(
                    "SELECT id, task, action FROM task_events WHERE id > $1 ORDER BY id LIMIT 500",
                    args![after],
                )?;
                let mut last = after;
                for r in &rows {
                    last = r.get(0)?;
                    if let Some(t) = crate::tasks::load(c, r.get(1)?)? {
                        out.push((t, r.get::<String>(2)?));
                    }
                }
                Ok((last, out))
            })
            .await;
        match read {
            Ok((last, changed)) => {
                cursor = Some(last);
                for (t, action) in changed {
                    crate::tasks::announce_now(&live, &t, &action);
                }
            }
            Err(crate::store::StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "live feed: cannot read task changes"),
        }
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Number(n) => serde_json::json!(n),
        Value::Bool(b) => serde_json::json!(b),
        Value::Text(t) => serde_json::json!(t),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Only this gateway.
    gateway: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// Comma-separated kinds: reading, event, presence, reply (default all).
    types: Option<String>,
    /// The API token, when given in the query (EventSource cannot send headers).
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// `GET /api/v1/stream?gateway=&device=&types=reading,event`.
pub async fn stream(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let types: Option<Vec<String>> = p
        .types
        .map(|t| t.split(',').map(|x| x.trim().to_owned()).collect());
    if let Some(bad) = types.iter().flatten().find(|t| {
        !matches!(
            t.as_str(),
            "reading" | "event" | "presence" | "reply" | "task"
        )
    }) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("types: unknown kind {bad:?}; use reading, event, presence, reply, task"),
        ));
    }
    let mask = !who.sees_plates();
    let rx = s.live.tx.subscribe();
    let events = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(item) => {
            let wanted = p.gateway.as_deref().is_none_or(|g| g == item.gateway)
                && p.device
                    .as_deref()
                    .is_none_or(|d| item.device.as_deref() == Some(d))
                && types
                    .as_ref()
                    .is_none_or(|t| t.iter().any(|k| k == item.kind))
                // Task changes carry no gateway or device, so those filters leave them out; a
                // crew sees its own department's only.
                && (item.kind != "task" || crate::tasks::live_visible(&who, &item.data));
            if !wanted {
                return None;
            }
            let data = if mask && item.kind == "event" {
                let mut d = item.data.clone();
                crate::access::mask_attributes(&mut d["attributes"]);
                d
            } else {
                item.data.clone()
            };
            Some(Ok(SseEvent::default()
                .event(item.kind)
                .data(data.to_string())))
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(SseEvent::default()
            .event("lagged")
            .data(format!("{{\"missed\":{n}}}")))),
    });
    // The stream ends when the hub stops, so a graceful shutdown does not wait for subscribers.
    let stopping = s.stopping.clone().cancelled_owned();
    let events = futures_util::StreamExt::take_until(events, stopping);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
