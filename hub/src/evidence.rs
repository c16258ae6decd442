//! Evidence (camera images) on the hub: uploads from gateways, checked against their SHA-256 and
//! against the events that reference them, stored content-addressed; downloads verified on the way
//! out; and the event list that names them.
//!
//! ```text
//! PUT /api/v1/evidence/{sha256}   (header X-Gateway) ─▶ hash check ─▶ referenced by a stored event of
//!                                  that gateway? ─▶ <data_dir>/evidence/ab/abcdef… (fsync) ─▶ row ─▶ 201
//! GET /api/v1/evidence/{sha256}   ─▶ the bytes, re-hashed: a damaged file is an error, never served
//! GET /api/v1/events              ─▶ events with their evidence and whether each is available
//! ```

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use protocol::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::access::Principal;
use crate::api::{ApiError, ApiState};
use crate::store::{EventsQuery, WriteOp};

/// Largest evidence upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 32 * 1024 * 1024;

/// The content-addressed evidence directory.
#[derive(Debug, Clone)]
pub struct EvidenceFiles {
    dir: PathBuf,
}

impl EvidenceFiles {
    pub fn new(data_dir: &FsPath) -> Self {
        Self {
            dir: data_dir.join("evidence"),
        }
    }

    fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(&sha[..2]).join(sha)
    }

    /// Writes durably: temp file, fsync, rename, fsync of the directory.
    fn write(&self, sha: &str, bytes: &[u8]) -> std::io::Result<()> {
        let dest = self.path(sha);
        let parent = dest.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&parent)?;
        let tmp = parent.join(format!(".{sha}.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(&parent)?.sync_all()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn check_sha(sha: &str) -> Result<(), ApiError> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{sha:?} is not a SHA-256 (64 lowercase hex digits)"),
        ))
    }
}

/// `PUT /api/v1/evidence/{sha256}`: a gateway uploads an image an event of its own references.
pub async fn put_evidence(
    State(s): State<ApiState>,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let refuse = |status: StatusCode, code: &str, msg: String| {
        s.metrics.rejected(code);
        if status == StatusCode::CONFLICT {
            // Expected now and then: the image overtook its event; the gateway retries.
            tracing::debug!(sha256 = %sha, code, "evidence upload deferred: {msg}");
        } else {
            tracing::warn!(sha256 = %sha, code, "evidence upload refused: {msg}");
        }
        ApiError::new(status, msg)
    };
    check_sha(&sha)?;
    let gateway = headers
        .get("x-gateway")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "evidence_no_gateway",
                "missing header X-Gateway (the uploading gateway's id)".into(),
            )
        })?;
    let gateway = protocol::GatewayId::new(gateway).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "evidence_no_gateway",
            format!("X-Gateway: {e}"),
        )
    })?;
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = s.keys.check_evidence(
        &gateway,
        &sha,
        header_str("x-gateway-key"),
        header_str("x-gateway-mac"),
    ) {
        let reason = crate::keys::explain(&e, &gateway, s.keys.policy);
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            &format!("evidence_{}", e.code()),
            format!("{reason} (headers X-Gateway-Key and X-Gateway-Mac)"),
        ));
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !matches!(media_type.as_str(), "image/jpeg" | "image/png") {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "evidence_media_type",
            format!("content type {media_type:?}; evidence is image/jpeg or image/png"),
        ));
    }
    let actual = sha256_hex(&body);
    if actual != sha {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "evidence_hash_mismatch",
            format!(
                "the content ({} bytes) hashes to {actual}, not {sha}",
                body.len()
            ),
        ));
    }
    let Some(reference) = s
        .store
        .evidence_reference(sha.clone(), gateway.to_string())
        .await?
    else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "evidence_unreferenced",
            format!(
                "no stored event of gateway {gateway} references {sha} (yet); retry after the event has arrived"
            ),
        ));
    };
    if reference.bytes != body.len() as u64 || reference.media_type != media_type {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "evidence_mismatch",
            format!(
                "the event names {} bytes of {}, the upload is {} bytes of {media_type}",
                reference.bytes,
                reference.media_type,
                body.len()
            ),
        ));
    }
    if reference.stored {
        return Ok((
            StatusCode::OK,
            Json(serde_json::json!({ "stored": true, "sha256": sha, "already": true })),
        )
            .into_response());
    }
    let files = s.evidence.clone();
    let (sha2, bytes) = (sha.clone(), body.clone());
    tokio::task::spawn_blocking(move || files.write(&sha2, &bytes))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))?
        .map_err(|e| {
            tracing::error!(error = %e, sha256 = %sha, "cannot write evidence");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot write the evidence file: {e}"),
            )
        })?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    s.store
        .write(
            WriteOp::Evidence {
                sha256: sha.clone(),
                media_type,
                bytes: body.len() as u64,
                gateway: gateway.to_string(),
                received: Timestamp::now(),
            },
            Some(Box::new(move || {
                let _ = done_tx.send(());
            })),
        )
        .await?;
    done_rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))?;
    s.metrics.evidence_stored.fetch_add(1, Relaxed);
    tracing::debug!(sha256 = %sha, %gateway, bytes = body.len(), "evidence stored");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "stored": true, "sha256": sha })),
    )
        .into_response())
}

/// `GET /api/v1/evidence/{sha256}`: the image, after checking it still hashes to its name.
pub async fn get_evidence(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    if !who.sees_plates() {
        return Err(who.forbidden("viewing evidence images"));
    }
    check_sha(&sha)?;
    let Some(meta) = s.store.evidence(sha.clone()).await? else {
        let msg = if s.store.evidence_referenced(sha.clone()).await? {
            format!(
                "evidence {sha} is referenced by an event but the gateway has not uploaded it yet"
            )
        } else {
            format!("no evidence {sha}")
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, msg));
    };
    if let Some(at) = meta.expired_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!(
                "evidence {sha} was deleted on {} after its retention period ({} days)",
                protocol::Timestamp::from_unix_millis(at).to_rfc3339(),
                s.store.retention().evidence_days
            ),
        ));
    }
    let path = s.evidence.path(&sha);
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))?
        .map_err(|e| {
            tracing::error!(error = %e, sha256 = %sha, "evidence file missing");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("evidence {sha} is recorded but its file cannot be read: {e}"),
            )
        })?;
    if sha256_hex(&bytes) != sha {
        tracing::error!(sha256 = %sha, "evidence file does not match its hash: damaged or tampered with");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "evidence {sha} is damaged on the hub (its content no longer matches its hash)"
            ),
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, meta.media_type),
            (header::ETAG, format!("\"{sha}\"")),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable".into(),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// The API token, when given in the query (checked by the middleware).
    #[serde(rename = "token")]
    _token: Option<String>,
    gateway: Option<String>,
    device: Option<String>,
    event: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events?gateway&device&event&from&to&limit`: newest first; default the last 24 h.
pub async fn list_events(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let to = crate::api::time_param("to", p.to)?.unwrap_or_else(Timestamp::now);
    let from =
        crate::api::time_param("from", p.from)?.unwrap_or_else(|| to.add_millis(-86_400_000));
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) is after to ({to})"),
        ));
    }
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit must be 1..=1000",
        ));
    }
    let q = EventsQuery {
        gateway: p.gateway,
        device: p.device,
        event: p.event,
        from_ms: from.unix_millis(),
        to_ms: to.unix_millis(),
        limit,
    };
    let mut events = s.store.events(q).await?;
    if !who.sees_plates() {
        for e in &mut events {
            crate::access::mask_attributes(&mut e.attributes);
        }
    }
    Ok(Json(events))
}
