//! Reads of events and their evidence: the event list of the API, and what the evidence upload and
//! download endpoints need to know about an image.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError};

/// Filters of the event list; every field is optional except the time range and the limit.
#[derive(Debug, Clone)]
pub struct EventsQuery {
    pub gateway: Option<String>,
    pub device: Option<String>,
    pub event: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
}

/// An event as the API lists it, newest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: i64,
    pub gateway: String,
    pub device: String,
    /// The asset of the device, when the gateway announced it.
    pub asset: Option<String>,
    pub event: String,
    pub observed_at: String,
    pub phase: String,
    pub received_at: String,
    pub attributes: serde_json::Value,
    pub evidence: Vec<EvidenceView>,
}

/// One piece of evidence of an event, and whether the hub holds it yet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceView {
    pub sha256: String,
    pub media_type: String,
    pub bytes: i64,
    /// The gateway has uploaded it (and its hash was verified).
    pub available: bool,
    /// Where to download it.
    pub url: String,
}

/// What the hub knows of one piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceMeta {
    pub media_type: String,
    pub bytes: u64,
    /// Stored (uploaded and verified).
    pub stored: bool,
    /// When the image was deleted after its retention period (the record stays).
    pub expired_at: Option<i64>,
}

impl Store {
    pub async fn events(&self, q: EventsQuery) -> Result<Vec<EventView>, StoreError> {
        self.read(move |c| list_events(c, &q)).await
    }

    /// The evidence `sha256` as referenced by an event of `gateway` (`None`: no such event yet).
    pub async fn evidence_reference(
        &self,
        sha256: String,
        gateway: String,
    ) -> Result<Option<EvidenceMeta>, StoreError> {
        self.read(move |c| {
            let referenced: Option<(String, i64)> = c
                .query_row(
                    "SELECT media_type, bytes FROM event_evidence WHERE sha256 = ?1 AND gateway = ?2 LIMIT 1",
                    params![sha256, gateway],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((media_type, bytes)) = referenced else {
                return Ok(None);
            };
            Ok(Some(EvidenceMeta {
                media_type,
                bytes: bytes.max(0) as u64,
                stored: is_stored(c, &sha256)?,
                expired_at: None,
            }))
        })
        .await
    }

    /// The stored evidence `sha256` (`None`: not uploaded, or unknown).
    pub async fn evidence(&self, sha256: String) -> Result<Option<EvidenceMeta>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT media_type, bytes, expired_at FROM evidence WHERE sha256 = ?1",
                [&sha256],
                |r| {
                    Ok(EvidenceMeta {
                        media_type: r.get(0)?,
                        bytes: r.get::<_, i64>(1)?.max(0) as u64,
                        stored: true,
                        expired_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Whether any event references `sha256`, for a helpful 404.
    pub async fn evidence_referenced(&self, sha256: String) -> Result<bool, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM event_evidence WHERE sha256 = ?1)",
                [&sha256],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

fn is_stored(c: &Connection, sha256: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM evidence WHERE sha256 = ?1)",
        [sha256],
        |r| r.get(0),
    )
}

fn list_events(c: &Connection, q: &EventsQuery) -> Result<Vec<EventView>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT e.id, e.gateway, e.device, a.id, e.event, e.ts, e.phase, e.received, e.attributes
         FROM events e LEFT JOIN assets a ON a.gateway = e.gateway AND a.device = e.device
         WHERE e.ts >= ?1 AND e.ts <= ?2
           AND (?3 IS NULL OR e.gateway = ?3)
           AND (?4 IS NULL OR e.device = ?4)
           AND (?5 IS NULL OR e.event = ?5)
         ORDER BY e.ts DESC, e.id DESC
         LIMIT ?6",
    )?;
    let mut evidence = c.prepare_cached(
        "SELECT r.sha256, r.media_type, r.bytes, s.sha256 IS NOT NULL
         FROM event_evidence r LEFT JOIN evidence s ON s.sha256 = r.sha256
         WHERE r.event_id = ?1 ORDER BY r.position",
    )?;
    let rows = stmt
        .query_map(
            params![
                q.from_ms,
                q.to_ms,
                q.gateway,
                q.device,
                q.event,
                q.limit as i64
            ],
            |r| {
                let attributes: String = r.get(8)?;
                Ok(EventView {
                    id: r.get(0)?,
                    gateway: r.get(1)?,
                    device: r.get(2)?,
                    asset: r.get(3)?,
                    event: r.get(4)?,
                    observed_at: protocol::Timestamp::from_unix_millis(r.get(5)?).to_rfc3339(),
                    phase: r.get(6)?,
                    received_at: protocol::Timestamp::from_unix_millis(r.get(7)?).to_rfc3339(),
                    attributes: serde_json::from_str(&attributes)
                        .unwrap_or(serde_json::Value::Null),
                    evidence: Vec::new(),
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for mut ev in rows {
        ev.evidence = evidence
            .query_map([ev.id], |r| {
                let sha256: String = r.get(0)?;
                Ok(EvidenceView {
                    url: format!("/api/v1/evidence/{sha256}"),
                    sha256,
                    media_type: r.get(1)?,
                    bytes: r.get(2)?,
                    available: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(ev);
    }
    Ok(out)
}
