//! Fleet configuration: every gateway's configuration, versioned, uploaded through the API,
//! validated with the same code as `edge-agent config check`, and pushed to the gateway.
//!
//! ```text
//! POST /api/v1/gateways/{id}/config           the gateway file (TOML) as the body, ?comment=...
//!   ─▶ validated (firmware_config, built-in profiles + hub --profiles) ─▶ 422 with every located problem
//!   ─▶ row in gateway_configs (version = previous + 1) ─▶ signed push on {root}/v1/gw/{id}/config
//! GET  /api/v1/gateways/{id}/config           versions, what the gateway runs, what it did not keep
//! GET  /api/v1/gateways/{id}/config/{version} the file
//! ```
//!
//! The gateway tries a new version and keeps it once it reaches the broker, or rolls back within a
//! minute (see the edge agent's `fleet` module); its heartbeat says which version runs and which
//! was not kept. [`run`] pushes the newest version again to an online gateway that runs an older
//! one: at once when the gateway connected after the last push (it was offline at upload), else at
//! most once a minute (the push was lost); never a version the gateway refused or rolled back: that
//! needs a new upload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{self, Sql, args};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{ConfigPush, ConfigReport, ConfigSource, GatewayId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, ApiState};
use crate::ingest::Outgoing;
use crate::store::{Store, StoreError};

/// How often [`run`] looks for gateways behind their newest version.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Pushes of one version to one gateway are at least this far apart.
const PUSH_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// One stored version.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version: u64,
    pub sha256: String,
    pub bytes: usize,
    pub uploaded_at: String,
    pub uploaded_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `GET /api/v1/gateways/{id}/config`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    pub gateway: String,
    /// `none` (nothing uploaded), `applied` (runs the newest version), `trial` (trying it),
    /// `pending` (not yet running it), `rolledBack` / `refused` (the gateway did not keep the
    /// newest version), `localOverride` (the gateway's local file was edited after the newest
    /// version was applied, and wins), `ahead` (the gateway runs a newer version than this hub
    /// has: a database restored from backup), `unknown` (no heartbeat with a configuration report
    /// yet).
    pub state: &'static str,
    pub latest: Option<VersionView>,
    /// What the gateway last reported in its heartbeat.
    pub running: Option<ConfigReport>,
    /// Newest first.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    comment: Option<String>,
}

/// The state of a gateway's configuration given the newest version and its last report.
pub fn state(latest: Option<u64>, running: Option<&ConfigReport>) -> &'static str {
    let Some(latest) = latest else {
        return "none";
    };
    let Some(r) = running else {
        return "unknown";
    };
    if let Some(f) = &r.failed
        && f.version >= latest
    {
        return match f.outcome {
            protocol::ConfigOutcome::Refused => "refused",
            protocol::ConfigOutcome::RolledBack => "rolledBack",
        };
    }
    match (r.source, r.version) {
        (ConfigSource::Hub, Some(v)) if v == latest && r.trial => "trial",
        (ConfigSource::Hub, Some(v)) if v == latest => "applied",
        // Runs a version this hub does not have (its database was restored from an older backup):
        // the next upload is numbered above it.
        (ConfigSource::Hub, Some(v)) if v > latest => "ahead",
        (ConfigSource::Local, Some(v)) if v >= latest => "localOverride",
        _ => "pending",
    }
}

fn version_view(r: &db::Row) -> db::Result<VersionView> {
    Ok(VersionView {
        version: r.get::<i64>(0)? as u64,
        sha256: r.get(1)?,
        bytes: r.get::<i64>(2)? as usize,
        uploaded_at: Timestamp::from_unix_millis(r.get(3)?).to_rfc3339(),
        uploaded_by: r.get(4)?,
        comment: r.get(5)?,
    })
}

const VERSION_COLUMNS: &str = "version, sha256, length(toml), uploaded_at, uploaded_by, comment";

fn gateway_id(id: &str) -> Result<GatewayId, ApiError> {
    GatewayId::new(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `None` for a gateway the hub has never heard from; else its last heartbeat (if any).
fn known_gateway(c: &dyn Sql, gw: &str) -> db::Result<Option<Option<String>>> {
    c.query_opt(
        "SELECT last_heartbeat FROM gateways WHERE id = $1",
        args![gw],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// The configuration report in a gateway's last heartbeat.
fn running(last_heartbeat: Option<String>) -> Option<ConfigReport> {
    let hb: serde_json::Value = serde_json::from_str(&last_heartbeat?).ok()?;
    serde_json::from_value(hb.get("config")?.clone()).ok()
}

/// `POST /api/v1/gateways/{id}/config`: the gateway file as the body (`text/plain` or
/// `application/toml`). 201 with the new version; 200 with the newest version when the text is the
/// same; 422 with every problem located by line and column.
pub async fn upload(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<crate::access::Principal>,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    body: String,
) -> Result<Response, ApiError> {
    if !who.may_command() {
        return Err(who.forbidden("uploading gateway configuration"));
    }
    let gateway = gateway_id(&id)?;
    if body.len() > protocol::config::MAX_CONFIG_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the file has {} bytes; at most {}",
                body.len(),
                protocol::config::MAX_CONFIG_BYTES
            ),
        ));
    }
    if q.comment.as_ref().is_some_and(|c| c.chars().count() > 500) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "comment: at most 500 characters",
        ));
    }
    let name = std::path::PathBuf::from(format!("{gateway}.toml"));
    let checked = firmware_config::parse_gateway(&name, &body, &s.profiles);
    let warnings = match checked {
        Err(d) => return Ok(invalid(&d)),
        Ok(config) if config.gateway != gateway => {
            let d = firmware_config::Diagnostic::file_error(
                &name,
                format!("the file is for gateway {}, not {gateway}", config.gateway),
            );
            return Ok(invalid(&[d]));
        }
        Ok(config) => config.warnings,
    };
    let (gw, text, by, comment) = (
        gateway.to_string(),
        body.clone(),
        who.name.clone(),
        q.comment.clone(),
    );
    let sha = protocol::config::config_sha256(&body);
    let stored = s
        .store
        .write_aside(move |c| {
            let Some(hb) = known_gateway(c, &gw)? else {
                return Ok(None);
            };
            let report = running(hb);
            // Numbers above any the gateway has seen (a hub database restored from an older
            // backup must not reuse numbers the gateway would ignore).
            let seen = report.as_ref().and_then(|r| r.newest).unwrap_or(0) as i64;
            let failed = report.as_ref().and_then(|r| r.failed.as_ref()).map(|f| f.version as i64);
            let newest: Option<(i64, String)> = c
                .query_opt(
                    "SELECT version, sha256 FROM gateway_configs WHERE gateway = $1 ORDER BY version DESC LIMIT 1",
                    args![gw],
                )?
                .map(|r| Ok::<_, db::DbError>((r.get(0)?, r.get(1)?)))
                .transpose()?;
            let (version, created) = match newest {
                // The same text again: nothing new, unless the gateway did not keep it (a trial
                // that failed while the broker was down may be tried again).
                Some((v, h)) if h == sha && failed != Some(v) => (v, false),
                newest => {
                    let v = newest.map_or(0, |(v, _)| v).max(seen) + 1;
                    c.execute(
                        "INSERT INTO gateway_configs (gateway, version, sha256, toml, uploaded_at, uploaded_by, comment)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        args![gw, v, sha, text, Timestamp::now().unix_millis(), by, comment],
                    )?;
                    (v, true)
                }
            };
            let view = version_view(&c
                .query_opt(
                    &format!("SELECT {VERSION_COLUMNS} FROM gateway_configs WHERE gateway = $1 AND version = $2"),
                    args![gw, version],
                )?
                .ok_or(StoreError::Closed)?)?;
            Ok(Some((view, created)))
        })
        .await?;
    let Some((view, created)) = stored else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no gateway {gateway}: a gateway is known once it has connected"),
        ));
    };
    if created {
        push(&s.outgoing, &s.topics, &gateway, view.version, body).await?;
        s.metrics
            .configs_pushed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%gateway, version = view.version, by = %who.name, "gateway configuration uploaded and pushed");
    }
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({
            "gateway": gateway.as_str(),
            "created": created,
            "version": view,
            "warnings": warnings,
        })),
    )
        .into_response())
}

/// 422 with the problems as `file:line:column: severity: message` lines and as objects.
fn invalid(d: &[firmware_config::Diagnostic]) -> Response {
    let problems: Vec<serde_json::Value> = d
        .iter()
        .map(|d| {
            serde_json::json!({
                "line": d.line,
                "column": d.column,
                "severity": d.severity.to_string(),
                "message": d.message,
            })
        })
        .collect();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({
            "error": firmware_config::report(d),
            "problems": problems,
        })),
    )
        .into_response()
}

async fn push(
    outgoing: &tokio::sync::mpsc::Sender<Outgoing>,
    topics: &protocol::TopicScheme,
    gateway: &GatewayId,
    version: u64,
    toml: String,
) -> Result<(), ApiError> {
    let msg = ConfigPush::new(gateway.clone(), version, toml);
    let payload = protocol::encode(&msg, &protocol::Limits::default())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    outgoing
        .send(Outgoing {
            topic: topics.topic(gateway, protocol::Channel::Config),
            payload,
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))
}

/// `GET /api/v1/gateways/{id}/config`.
pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigView>, ApiError> {
    let gateway = gateway_id(&id)?.to_string();
    let gw = gateway.clone();
    let found = s
        .store
        .read(move |c| {
            let Some(hb) = known_gateway(c, &gw)? else {
                return Ok(None);
            };
            let versions = c
                .query(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM gateway_configs WHERE gateway = $1 ORDER BY version DESC"
                    ),
                    args![gw],
                )?
                .iter()
                .map(version_view)
                .collect::<db::Result<Vec<_>>>()?;
            Ok(Some((running(hb), versions)))
        })
        .await?;
    let Some((running, versions)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no gateway {gateway}"),
        ));
    };
    let latest = versions.first().cloned();
    Ok(Json(ConfigView {
        state: state(latest.as_ref().map(|v| v.version), running.as_ref()),
        gateway,
        latest,
        running,
        versions,
    }))
}

/// `GET /api/v1/gateways/{id}/config/{version}`: the file as uploaded (it may hold a broker
/// password, so only for roles that may upload).
pub async fn get_version(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<crate::access::Principal>,
    Path((id, version)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    if !who.may_command() {
        return Err(who.forbidden("reading gateway configuration files"));
    }
    let gateway = gateway_id(&id)?.to_string();
    let gw = gateway.clone();
    let text: Option<String> = s
        .store
        .read(move |c| {
            Ok(c.query_opt(
                "SELECT toml FROM gateway_configs WHERE gateway = $1 AND version = $2",
                args![gw, version],
            )?
            .map(|r| r.get(0))
            .transpose()?)
        })
        .await?;
    match text {
        Some(t) => Ok((
            [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
            t,
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("gateway {gateway} has no configuration version {version}"),
        )),
    }
}

/// Pushes the newest version again to online gateways that do not run it and have not refused or
/// rolled it back, at most once a minute each, until `shutdown`.
pub async fn run(
    store: Store,
    outgoing: tokio::sync::mpsc::Sender<Outgoing>,
    topics: protocol::TopicScheme,
    metrics: Arc<crate::metrics::Metrics>,
    own: crate::cluster::Ownership,
    shutdown: CancellationToken,
) {
    // Pushes made here; an upload counts as a push made at its upload time.
    let mut last_push: HashMap<(String, u64), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let behind = store
            .read(|c| {
                let rows = c.query(
                    "SELECT g.id, g.last_heartbeat, v.version, g.online_at, v.uploaded_at
                     FROM gateways g
                     JOIN gateway_configs v ON v.gateway = g.id
                       AND v.version = (SELECT MAX(version) FROM gateway_configs WHERE gateway = g.id)
                     WHERE g.state = 'online'",
                    &[],
                )?;
                let rows = rows
                    .iter()
                    .map(|r| {
                        Ok((
                            r.get::<String>(0)?,
                            r.get::<Option<String>>(1)?,
                            r.get::<i64>(2)? as u64,
                            r.get::<Option<i64>>(3)?.unwrap_or(0),
                            r.get::<i64>(4)?,
                        ))
                    })
                    .collect::<db::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await;
        let rows = match behind {
            Ok(r) => r,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read gateway configurations");
                continue;
            }
        };
        let now_ms = Timestamp::now().unix_millis();
        let owned = own.borrow().clone();
        for (gw, hb, version, online_at, uploaded_at) in rows {
            // In a cluster, the holder of the gateway's partition pushes again (it sees the
            // gateway's heartbeats first).
            if !owned.owns(&gw) {
                continue;
            }
            let report = running(hb);
            // Only a gateway that reports its configuration (and so understands pushes), and
            // whose state says it still needs this version.
            if report.is_none() || state(Some(version), report.as_ref()) != "pending" {
                continue;
            }
            // A gateway connected at the last push got it (QoS 1 on its subscription); one that
            // came online since (by the hub's clock) may have missed it.
            let key = (gw.clone(), version);
            let pushed_ms = last_push.get(&key).map_or(uploaded_at, |t| {
                now_ms - i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX)
            });
            let reconnected = online_at > pushed_ms;
            let long_ago = now_ms - pushed_ms >= PUSH_AGAIN_AFTER.as_millis() as i64;
            if !reconnected && !long_ago {
                continue;
            }
            let Ok(gateway) = GatewayId::new(gw.clone()) else {
                continue;
            };
            // The file itself is read only for a push, not for every gateway at every check.
            let (g, v) = (gw.clone(), version as i64);
            let toml = store
                .read(move |c| {
                    Ok(db::one::<String>(
                        c,
                        "SELECT toml FROM gateway_configs WHERE gateway = $1 AND version = $2",
                        args![g, v],
                    )?)
                })
                .await;
            let Ok(toml) = toml else { continue };
            tracing::info!(gateway = %gw, version, "gateway does not run its newest configuration: pushing it again");
            if push(&outgoing, &topics, &gateway, version, toml)
                .await
                .is_err()
            {
                return;
            }
            metrics
                .configs_pushed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            last_push.insert(key, Instant::now());
        }
        last_push.retain(|_, t| t.elapsed() < PUSH_AGAIN_AFTER * 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ConfigFailure, ConfigOutcome};

    fn report(source: ConfigSource, version: Option<u64>, trial: bool) -> ConfigReport {
        ConfigReport {
            source,
            version,
            sha256: "0".repeat(64),
            trial,
            failed: None,
            newest: None,
        }
    }

    #[test]
    fn states() {
        use ConfigSource::*;
        assert_eq!(state(None, None), "none");
        assert_eq!(state(Some(2), None), "unknown");
        assert_eq!(state(Some(2), Some(&report(Local, None, false))), "pending");
        assert_eq!(
            state(Some(2), Some(&report(Hub, Some(1), false))),
            "pending"
        );
        assert_eq!(state(Some(2), Some(&report(Hub, Some(2), true))), "trial");
        assert_eq!(
            state(Some(2), Some(&report(Hub, Some(2), false))),
            "applied"
        );
        assert_eq!(state(Some(2), Some(&report(Hub, Some(5), false))), "ahead");
        assert_eq!(
            state(Some(2), Some(&report(Local, Some(2), false))),
            "localOverride"
        );
        let mut r = report(Hub, Some(1), false);
        r.failed = Some(ConfigFailure {
            version: 2,
            at: Timestamp::now(),
            outcome: ConfigOutcome::RolledBack,
            reason: "x".into(),
        });
        assert_eq!(state(Some(2), Some(&r)), "rolledBack");
        // A newer upload after the failure is pending again.
        assert_eq!(state(Some(3), Some(&r)), "pending");
    }
}
