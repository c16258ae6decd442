//! The agent's HTTP endpoint for cameras: `POST /api/v1/cameras/{camera}/events` takes an event in
//! the generic JSON form or the Hikvision ISAPI form (plain or multipart with images), keeps the
//! images in the evidence store, and publishes one normalised event.
//!
//! ```text
//! camera ─HTTP─▶ parse (no IO) ─▶ images to the evidence store (fsync) ─▶ event to the uplink ─▶ 200
//!                                         └──▶ uploader ─HTTP PUT─▶ hub (SHA-256 checked there)
//! ```
//! A request that cannot be used gets a 4xx with the reason as JSON, is counted, and affects nothing
//! else.

pub mod parse;
pub mod sample;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use firmware_config::{Camera, CameraSetup};
use protocol::{Event, EvidenceRef, Item, Phase, Timestamp, Value};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::evidence::EvidenceStore;
use crate::health::Health;
use crate::uplink::DurableEvent;
use parse::{Parsed, Part, Reject};

/// A camera time this far ahead of the gateway's clock is not believed.
const MAX_CAMERA_AHEAD_MS: i64 = 60_000;
/// A camera time this far behind the gateway's clock is not believed either (a camera whose clock
/// was reset to its factory date).
const MAX_CAMERA_BEHIND_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Clone)]
struct ServerState {
    cameras: Arc<HashMap<String, Camera>>,
    store: Arc<EvidenceStore>,
    events: mpsc::Sender<DurableEvent>,
    health: Arc<Health>,
    max_image_bytes: u64,
    max_request_bytes: u64,
}

/// A bound camera endpoint, ready to serve.
#[derive(Debug)]
pub struct CameraServer {
    listener: tokio::net::TcpListener,
    app: axum::Router,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("cameras", &self.cameras.len())
            .finish()
    }
}

impl CameraServer {
    /// Binds the listen address (so a port in use fails the agent's start, not later).
    pub async fn bind(
        setup: &CameraSetup,
        store: Arc<EvidenceStore>,
        events: mpsc::Sender<DurableEvent>,
        health: Arc<Health>,
    ) -> anyhow::Result<CameraServer> {
        let listener = tokio::net::TcpListener::bind(setup.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("camera_server.listen {}: cannot listen: {e}", setup.listen)
            })?;
        for c in &setup.cameras {
            health.register(&c.id);
        }
        let state = ServerState {
            cameras: Arc::new(
                setup
                    .cameras
                    .iter()
                    .map(|c| (c.id.as_str().to_owned(), c.clone()))
                    .collect(),
            ),
            store,
            events,
            health,
            max_image_bytes: setup.max_image_bytes,
            max_request_bytes: setup.max_request_bytes,
        };
        let limit = usize::try_from(setup.max_request_bytes).unwrap_or(usize::MAX);
        let app = axum::Router::new()
            .route("/api/v1/cameras/{camera}/events", post(post_event))
            .fallback(|| async {
                refuse(
                    StatusCode::NOT_FOUND,
                    "no such endpoint; cameras post to /api/v1/cameras/<camera id>/events",
                )
            })
            .layer(DefaultBodyLimit::max(limit))
            .with_state(state);
        Ok(CameraServer { listener, app })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then finishes the requests in flight.
    pub async fn serve(self, shutdown: CancellationToken) {
        let addr = self.listener.local_addr().ok();
        tracing::info!(addr = ?addr, "camera endpoint listening");
        let service = self.app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "camera endpoint failed");
        }
    }
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "accepted": false, "error": reason.into() })),
    )
        .into_response()
}

async fn post_event(
    State(st): State<ServerState>,
    Path(camera): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match accept(&st, &camera, peer, req).await {
        Ok(resp) => resp,
        Err(r) => {
            st.health.camera_rejected.fetch_add(1, Relaxed);
            tracing::warn!(camera = %camera, %peer, status = r.status, reason = %r.reason, "camera request refused");
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            refuse(status, r.reason)
        }
    }
}

async fn accept(
    st: &ServerState,
    camera: &str,
    peer: SocketAddr,
    req: Request,
) -> Result<Response, Reject> {
    let Some(cam) = st.cameras.get(camera) else {
        return Err(Reject {
            status: 404,
            reason: format!("no camera {camera:?} on this gateway (see [[camera]] in its file)"),
        });
    };
    if !cam.allow_from.is_empty() && !cam.allow_from.contains(&peer.ip()) {
        return Err(Reject {
            status: 403,
            reason: format!("camera {camera} may not post from {}", peer.ip()),
        });
    }
    let parts = read_parts(st, req).await?;
    let offset =
        time::UtcOffset::from_whole_seconds(cam.utc_offset_s).unwrap_or(time::UtcOffset::UTC);
    let parsed = parse::parse(parts, offset)?;
    let now = Timestamp::now();
    let ev = match parsed {
        Parsed::KeepAlive { detail } => {
            st.health.success(&cam.id, now);
            return Ok(Json(json!({ "accepted": true, "keepAlive": detail })).into_response());
        }
        Parsed::Event(ev) => ev,
    };
    // Keep the images first: an event is published only with evidence that is on disk.
    let store = st.store.clone();
    let images = ev.images.clone();
    let stored = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|im| {
                store
                    .put(&im.bytes, im.media_type)
                    .map(|r| (im.name.clone(), r))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| Reject {
        status: 503,
        reason: "the agent is shutting down".into(),
    })?
    .map_err(|e| {
        tracing::error!(error = %e, "cannot keep camera images");
        Reject {
            status: 507,
            reason: format!("cannot keep the images: {e}"),
        }
    })?;
    let mut attributes = ev.attributes;
    let (observed_at, source) = event_time(ev.captured_at, now);
    attributes.insert("timeSource".into(), Value::Text(source.into()));
    if let (Some(t), "gateway") = (ev.captured_at, source) {
        attributes.insert(
            "cameraClockSkewS".into(),
            Value::Number((t.millis_since(now) / 1000) as f64),
        );
    }
    if let Some(l) = ev.lane {
        attributes.insert("lane".into(), Value::Number(f64::from(l)));
    }
    if let Some(z) = cam.zone_for(ev.lane) {
        attributes.insert("zone".into(), Value::Text(z.as_str().to_owned()));
    }
    attributes.insert("form".into(), Value::Text(ev.form.as_str().into()));
    let event = Event {
        device: cam.id.clone(),
        event: ev.event,
        observed_at,
        phase: Phase::Instant,
        attributes,
        evidence: stored
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<EvidenceRef>>(),
    };
    let body = json!({
        "accepted": true,
        "event": &event,
        "evidence": stored.iter().map(|(name, r)| json!({
            "name": name,
            "sha256": r.sha256,
            "mediaType": r.media_type,
            "bytes": r.bytes,
            "path": st.store.path(&r.sha256),
        })).collect::<Vec<_>>(),
    });
    // Answer only once the event is on disk in the spool: then the camera need not resend it.
    let (done, kept) = tokio::sync::oneshot::channel();
    let stopping = || Reject {
        status: 503,
        reason: "the agent is shutting down".into(),
    };
    st.events
        .send(DurableEvent {
            item: Item::Event(event),
            done,
        })
        .await
        .map_err(|_| stopping())?;
    kept.await.map_err(|_| stopping())?.map_err(|e| Reject {
        status: 507,
        reason: e,
    })?;
    st.health.success(&cam.id, now);
    Ok(Json(body).into_response())
}

/// The event time: the camera's, unless it is missing or implausible against the gateway clock.
fn event_time(captured: Option<Timestamp>, now: Timestamp) -> (Timestamp, &'static str) {
    match captured {
        Some(t) if (-MAX_CAMERA_BEHIND_MS..=MAX_CAMERA_AHEAD_MS).contains(&t.millis_since(now)) => {
            (t, "camera")
        }
        _ => (now, "gateway"),
    }
}

async fn read_parts(st: &ServerState, req: Request) -> Result<Vec<Part>, Reject> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let too_large = || Reject {
        status: 413,
        reason: format!(
            "request larger than camera_server.max_request_bytes ({} bytes)",
            st.max_request_bytes
        ),
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > st.max_request_bytes
    {
        return Err(too_large());
    }
    if content_type.to_ascii_lowercase().starts_with("multipart/") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| Reject::bad(format!("multipart request: {}", e.body_text())))?;
        let mut parts = Vec::new();
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                Err(e) => return Err(Reject::bad(format!("multipart body: {}", e.body_text()))),
            };
            let name = field.name().map(str::to_owned);
            let filename = field.file_name().map(str::to_owned);
            let ct = field.content_type().map(str::to_owned);
            let mut field = field;
            let mut bytes = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() as u64 > st.max_image_bytes {
                            return Err(Reject {
                                status: 413,
                                reason: format!(
                                    "part {:?} is larger than camera_server.max_image_bytes ({} bytes)",
                                    filename.as_deref().or(name.as_deref()).unwrap_or(""),
                                    st.max_image_bytes
                                ),
                            });
                        }
                    }
                    Ok(None) => break,
                    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        return Err(too_large());
                    }
                    Err(e) => {
                        return Err(Reject::bad(format!("multipart body: {}", e.body_text())));
                    }
                }
            }
            parts.push(Part {
                name,
                filename,
                content_type: ct,
                bytes,
            });
        }
        Ok(parts)
    } else {
        let limit = usize::try_from(st.max_request_bytes).unwrap_or(usize::MAX);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large())?;
        if bytes.is_empty() {
            return Err(Reject::bad("empty request body"));
        }
        let ct = content_type.trim();
        if !ct.is_empty() {
            let main = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !matches!(
                main.as_str(),
                "application/json" | "application/xml" | "text/xml" | "text/plain"
            ) {
                return Err(Reject::unsupported(format!(
                    "content type {main}; send application/json, application/xml or multipart/form-data"
                )));
            }
        }
        let ct = (!ct.is_empty() && !ct.starts_with("text/plain")).then(|| ct.to_owned());
        Ok(vec![Part {
            name: Some("event".into()),
            filename: None,
            content_type: ct,
            bytes: bytes.to_vec(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_times() {
        let now = Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        let at = |s: &str| Some(Timestamp::parse_rfc3339(s).unwrap());
        assert_eq!(
            event_time(at("2026-11-22T09:59:00Z"), now),
            (at("2026-11-22T09:59:00Z").unwrap(), "camera")
        );
        assert_eq!(
            event_time(at("2026-11-22T10:05:00Z"), now),
            (now, "gateway")
        );
        assert_eq!(
            event_time(at("2000-01-01T00:00:00Z"), now),
            (now, "gateway")
        );
        assert_eq!(event_time(None, now), (now, "gateway"));
    }
}
