//! Commands to field devices through the API: an operator switches or dims a streetlight, or turns
//! a warning light on; the hub records the command, publishes it on the gateway's `cmd` topic, and
//! records the gateway's reply (which the gateway sends after performing the write and reading it
//! back).
//!
//! ```text
//! POST /api/v1/assets/{asset}/commands {"action": {"write": {"metric": "powerState", "value": true}}, "ttlS": 60}
//!   ─▶ row in `commands` (committed) ─▶ MQTT {root}/v1/gw/{gateway}/cmd ─▶ gateway ─▶ reply ─▶ row updated
//! GET  /api/v1/commands/{id}          state: sent | ok | rejected | failed | expired | unanswered
//! GET  /api/v1/assets/{asset}/commands  the asset's commands, newest first
//! ```

use std::sync::atomic::Ordering::Relaxed;

use crate::db::{self, args};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use protocol::{Action, Command, CommandId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::ingest::Outgoing;
use crate::store::{StoreError, WriteOp};

/// Longest time to live of a command.
const MAX_TTL_S: u32 = 3600;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCommand {
    action: Action,
    /// Seconds the gateway may still perform it (default 60).
    ttl_s: Option<u32>,
}

/// A command as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub id: String,
    pub gateway: String,
    pub device: String,
    pub asset: Option<String>,
    pub action: serde_json::Value,
    pub issued_at: String,
    pub expires_at: String,
    /// `sent` (no reply yet), the gateway's outcome (`ok`, `rejected`, `failed`, `expired`), or
    /// `unanswered` (no reply and past its expiry).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replied_at: Option<String>,
}

fn view(r: &db::Row) -> db::Result<CommandView> {
    let ts = |ms: i64| Timestamp::from_unix_millis(ms).to_rfc3339();
    let expires: i64 = r.get(6)?;
    let outcome: Option<String> = r.get(7)?;
    let state = match outcome {
        Some(o) => o,
        None if Timestamp::now().unix_millis() > expires => "unanswered".into(),
        None => "sent".into(),
    };
    let action: String = r.get(4)?;
    let read_back: Option<String> = r.get(9)?;
    Ok(CommandView {
        id: r.get(0)?,
        gateway: r.get(1)?,
        device: r.get(2)?,
        asset: r.get(3)?,
        action: serde_json::from_str(&action).unwrap_or_default(),
        issued_at: ts(r.get(5)?),
        expires_at: ts(expires),
        state,
        detail: r.get(8)?,
        read_back: read_back.and_then(|s| serde_json::from_str(&s).ok()),
        replied_at: r.get::<Option<i64>>(10)?.map(ts),
    })
}

const COLUMNS: &str = "id, gateway, device, asset, action, issued_at, expires_at, outcome, detail, read_back, replied_at";

/// `POST /api/v1/assets/{asset}/commands`.
pub async fn issue(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<crate::access::Principal>,
    Path(asset): Path<String>,
    body: Result<Json<NewCommand>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !who.may_command() {
        return Err(who.forbidden("sending commands"));
    }
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let ttl = req.ttl_s.unwrap_or(60);
    if ttl == 0 || ttl > MAX_TTL_S {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("ttlS must be 1..={MAX_TTL_S}"),
        ));
    }
    let a = asset.clone();
    let target: Option<(String, String)> = s
        .store
        .read(move |c| {
            c.query_opt("SELECT gateway, device FROM assets WHERE id = $1", args![a])?
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .transpose()
        })
        .await?;
    let Some((gateway, device)) = target else {
        return Err(StoreError::UnknownAsset(asset).into());
    };
    let gateway_id = protocol::GatewayId::new(gateway.clone())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = Timestamp::now();
    let command = Command {
        v: protocol::PROTOCOL_VERSION,
        id: CommandId::from_uuid(uuid::Uuid::new_v4()),
        device: device.parse().map_err(|e: protocol::IdError| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?,
        issued_at: now,
        expires_at: now.add_millis(i64::from(ttl) * 1000),
        action: req.action,
    };
    command
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let payload = protocol::encode(&command, &protocol::Limits::default())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    // Recorded (committed) first, so a quick reply always finds its command.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    s.store
        .write(
            WriteOp::Command {
                command: command.clone(),
                gateway: gateway.clone(),
                asset: Some(asset.clone()),
            },
            Some(Box::new(move || {
                let _ = done_tx.send(());
            })),
        )
        .await?;
    done_rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))?;
    s.outgoing
        .send(Outgoing {
            topic: s.topics.topic(&gateway_id, protocol::Channel::Cmd),
            payload,
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))?;
    s.metrics.commands_issued.fetch_add(1, Relaxed);
    tracing::info!(command = %command.id, %gateway, %device, %asset, "command issued");
    let id = command.id.to_string();
    let row = s
        .store
        .read(move |c| {
            Ok(view(
                &c.query_opt(
                    &format!("SELECT {COLUMNS} FROM commands WHERE id = $1"),
                    args![id],
                )?
                .ok_or(StoreError::Closed)?,
            )?)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(row)))
}

/// `GET /api/v1/commands/{id}`.
pub async fn get_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let key = id.clone();
    let row = s
        .store
        .read(move |c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM commands WHERE id = $1"),
                args![key],
            )?
            .map(|r| Ok(view(&r)?))
            .transpose()
        })
        .await?;
    row.map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no command {id}")))
}

/// `GET /api/v1/assets/{asset}/commands`: the asset's last 100 commands, newest first.
pub async fn list_for_asset(
    State(s): State<ApiState>,
    Path(asset): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let rows = s
        .store
        .read(move |c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM commands WHERE asset = $1 ORDER BY issued_at DESC LIMIT 100"
                ),
                args![asset],
            )?;
            Ok(rows.iter().map(view).collect::<db::Result<Vec<_>>>()?)
        })
        .await?;
    Ok(Json(rows))
}
