//! The HTTP API (JSON under `/api/v1`), health and metrics. Reads from the store only.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use protocol::Timestamp;
use serde::Deserialize;

use crate::access::Principal;
use crate::metrics::Metrics;
use crate::store::{ReadingsQuery, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub evidence: Arc<crate::evidence::EvidenceFiles>,
    /// Messages to publish (commands), through the ingest client.
    pub outgoing: tokio::sync::mpsc::Sender<crate::ingest::Outgoing>,
    pub topics: protocol::TopicScheme,
    /// Gateway keys, for evidence uploads.
    pub keys: Arc<crate::keys::KeyRing>,
    /// `/metrics` needs a token too.
    pub metrics_auth: bool,
    /// The live feed (`/api/v1/stream`).
    pub live: crate::live::Live,
    /// Cancelled when the HTTP server stops: long-lived responses (the live feed) end then.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The rules file (road segments and chiefs for the assessment).
    pub rules: Arc<crate::rules::Rules>,
    /// Device profiles gateway files are checked against (built-in and `--profiles`).
    pub profiles: Arc<firmware_config::ProfileSet>,
    /// The partitions this process holds (see [`crate::cluster`]).
    pub own: crate::cluster::Ownership,
}

pub fn router(state: ApiState) -> axum::Router {
    let auth = axum::middleware::from_fn_with_state(state.clone(), crate::access::require_token);
    let metrics_route = axum::Router::new().route("/metrics", get(metrics));
    let metrics_route = if state.metrics_auth {
        metrics_route.route_layer(auth.clone())
    } else {
        metrics_route
    };
    // Gateways upload evidence with their message key, not a token (see crate::evidence).
    let gateway_routes = axum::Router::new().route(
        "/api/v1/evidence/{sha256}",
        axum::routing::put(crate::evidence::put_evidence)
            .layer(DefaultBodyLimit::max(crate::evidence::MAX_UPLOAD_BYTES)),
    );
    let api = axum::Router::new()
        .route("/api/v1/assets", get(assets))
        .route("/api/v1/assets/{id}/readings", get(readings))
        .route("/api/v1/gateways", get(gateways))
        .route("/api/v1/cluster", get(cluster))
        .route(
            "/api/v1/gateways/{id}/config",
            get(crate::fleet::get).post(crate::fleet::upload),
        )
        .route(
            "/api/v1/gateways/{id}/config/{version}",
            get(crate::fleet::get_version),
        )
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/events", get(crate::evidence::list_events))
        .route(
            "/api/v1/assets/{id}/commands",
            get(crate::commands::list_for_asset).post(crate::commands::issue),
        )
        .route("/api/v1/commands/{id}", get(crate::commands::get_one))
        .route(
            "/api/v1/evidence/{sha256}",
            get(crate::evidence::get_evidence),
        )
        .route(
            "/api/v1/tasks",
            get(crate::tasks::list).post(crate::tasks::file),
        )
        .route("/api/v1/tasks/{id}", get(crate::tasks::get_one))
        .route(
            "/api/v1/tasks/{id}/actions",
            axum::routing::post(crate::tasks::act),
        )
        .route("/api/v1/reports/assessment", get(crate::assessment::get))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stream", get(crate::live::stream))
        .route_layer(auth);
    axum::Router::new()
        .route("/healthz", get(healthz))
        .merge(metrics_route)
        .merge(gateway_routes)
        .merge(api)
        .merge(crate::console::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1/assets",
            )
        })
        .with_state(state)
}

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownAsset(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            other => {
                tracing::error!(error = %other, "store read failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

async fn healthz(State(s): State<ApiState>) -> Result<Response, ApiError> {
    // Healthy means: the store answers and ingest is connected and subscribed. Otherwise 503, so a
    // load balancer or systemd watchdog sees a hub that cannot take data in.
    let gateways = s.store.gateway_count().await?;
    let ready = s
        .metrics
        .ingest_ready
        .load(std::sync::atomic::Ordering::Relaxed);
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "degraded" },
        "mqtt": if ready { "subscribed" } else { "connecting" },
        "gateways": gateways,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn assets(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.store.assets().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingsParams {
    /// The API token, when given in the query (checked by the middleware).
    #[serde(rename = "token")]
    _token: Option<String>,
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    max_points: Option<usize>,
    /// Bucket width: `30s`, `5m`, `1h`, `1d`, or seconds.
    step: Option<String>,
}

/// Default and largest number of points one readings request returns.
const DEFAULT_POINTS: usize = 2_000;
const MAX_POINTS: usize = 20_000;

async fn readings(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    params: Result<Query<ReadingsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let metric = p.metric.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing query parameter metric (e.g. ?metric=activePower)",
        )
    })?;
    let to = time_param("to", p.to)?.unwrap_or_else(Timestamp::now);
    let from = time_param("from", p.from)?.unwrap_or_else(|| to.add_millis(-3_600_000));
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) is after to ({to})"),
        ));
    }
    let max_points = p.max_points.unwrap_or(DEFAULT_POINTS);
    if max_points == 0 || max_points > MAX_POINTS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("max_points must be 1..={MAX_POINTS}"),
        ));
    }
    let step_ms = p.step.as_deref().map(parse_step).transpose()?;
    let span = to.unix_millis() - from.unix_millis();
    if let Some(step) = step_ms
        && span / step >= MAX_POINTS as i64
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "step {} is too fine for this range: it would give {} buckets, at most {MAX_POINTS} are served",
                p.step.unwrap_or_default(),
                span / step + 1
            ),
        ));
    }
    let q = ReadingsQuery {
        asset: id,
        metric,
        from_ms: from.unix_millis(),
        to_ms: to.unix_millis(),
        max_points,
        step_ms,
    };
    let r = s.store.readings(q).await?;
    let mut response = Json(r.points).into_response();
    if let Some(step) = r.step_ms {
        // Which bucket width answered (chosen by the hub when not asked for).
        response
            .headers_mut()
            .insert("x-step-seconds", header::HeaderValue::from(step / 1000));
    }
    Ok(response)
}

/// A bucket width: a whole number of seconds, minutes, hours or days (`30s`, `5m`, `1h`, `1d`), or
/// of seconds without a unit.
fn parse_step(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "query parameter step: {s:?} is not a duration such as 30s, 5m, 1h or 1d (1 s to 366 d)"
            ),
        )
    };
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if !(1_000..=366 * 86_400_000).contains(&ms) {
        return Err(bad());
    }
    Ok(ms)
}

/// An optional RFC 3339 query parameter.
pub fn time_param(name: &str, v: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        Timestamp::parse_rfc3339(&s).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter {name}: {e}"),
            )
        })
    })
    .transpose()
}

async fn cluster(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> Result<impl IntoResponse, ApiError> {
    if !matches!(
        who.role,
        crate::access::Role::Admin | crate::access::Role::Operator
    ) {
        return Err(who.forbidden("reading the cluster's state"));
    }
    let own = s.own.borrow().clone();
    Ok(Json(s.store.cluster_status(own).await?))
}

async fn gateways(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.store.gateways().await?))
}

#[derive(Debug, Deserialize)]
struct LimitParams {
    limit: Option<usize>,
}

async fn dead_letters(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(p): Query<LimitParams>,
) -> Result<impl IntoResponse, ApiError> {
    let (may, with_payload) = who.may_read_dead_letters();
    if !may {
        return Err(who.forbidden("reading dead letters"));
    }
    let mut list = s
        .store
        .dead_letters(p.limit.unwrap_or(100).min(1000))
        .await?;
    if !with_payload {
        // Payloads may hold plates and other personal data.
        for d in &mut list {
            d.payload = String::new();
        }
    }
    Ok(Json(list))
}

/// The OpenAPI 3.1 document of this API (hand-written next to the handlers: a test checks that it
/// and the router name the same paths).
pub const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /api/v1/whoami`: the token's name, role and department.
async fn whoami(Extension(who): Extension<Principal>) -> Json<Principal> {
    Json(who)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every path the router serves is in the OpenAPI document, and every documented path is
    /// served, with the same methods.
    #[test]
    fn openapi_document_and_router_agree() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (path.clone(), m.to_uppercase()))
            })
            .collect();
        // The routes as the code declares them (this file and the handlers' modules).
        let mut served = std::collections::BTreeSet::new();
        let src = include_str!("api.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        let mut rest = src;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + 7..];
            let start = rest.find('"').unwrap() + 1;
            let end = start + rest[start..].find('"').unwrap();
            let path = rest[start..end].to_owned();
            let call = &rest[end..rest.find(";").unwrap_or(rest.len()).min(end + 300)];
            let call = &call[..call.find(".route(").unwrap_or(call.len())];
            for (needle, method) in [
                ("get(", "GET"),
                ("post(", "POST"),
                ("put(", "PUT"),
                ("delete(", "DELETE"),
            ] {
                if call.contains(needle) {
                    served.insert((path.clone(), method.to_owned()));
                }
            }
        }
        assert!(served.len() >= 14, "{served:?}");
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(missing.is_empty(), "served but not documented: {missing:?}");
        assert!(extra.is_empty(), "documented but not served: {extra:?}");
        // Every $ref points at something.
        let text = OPENAPI;
        let mut rest = text;
        while let Some(i) = rest.find("\"$ref\": \"#/") {
            rest = &rest[i + 9..];
            let end = rest.find('"').unwrap();
            let pointer = &rest[1..end];
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {pointer}");
            rest = &rest[end..];
        }
    }
}
