//! Reads of events and their evidence: the event list of the API, and what the evidence upload and
//! download endpoints need to know about an image.

use crate::db::{self, Sql, args};
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
            let Some(r) = c.query_opt(
                "SELECT media_type, bytes FROM event_evidence WHERE sha256 = $1 AND gateway = $2 LIMIT 1",
                args![sha256, gateway],
            )?
            else {
                return Ok(None);
            };
            let (media_type, bytes): (String, i64) = (r.get(0)?, r.get(1)?);
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
            let Some(r) = c.query_opt(
                "SELECT media_type, bytes, expired_at FROM evidence WHERE sha256 = $1",
                args![sha256],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(EvidenceMeta {
                media_type: r.get(0)?,
                bytes: r.get::<i64>(1)?.max(0) as u64,
                stored: true,
                expired_at: r.get(2)?,
            }))
        })
        .await
    }

    /// Whether any event references `sha256`, for a helpful 404.
    pub async fn evidence_referenced(&self, sha256: String) -> Result<bool, StoreError> {
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT 1 FROM event_evidence WHERE sha256 = $1 LIMIT 1",
                args![sha256],
            )?
            .is_some())
        })
        .await
    }
}

fn is_stored(c: &dyn Sql, sha256: &str) -> db::Result<bool> {
    Ok(
        c.query_opt("SELECT 1 FROM evidence WHERE sha256 = $1", args![sha256])?
            .is_some(),
    )
}

fn list_events(c: &dyn Sql, q: &EventsQuery) -> Result<Vec<EventView>, StoreError> {
    // CAST: PostgreSQL cannot tell a parameter's type from `$n IS NULL` alone.
    let rows = c
        .query(
            "SELECT e.id, e.gateway, e.device, a.id, e.event, e.ts, e.phase, e.received, e.attributes
             FROM events e LEFT JOIN assets a ON a.gateway = e.gateway AND a.device = e.device
             WHERE e.ts >= $1 AND e.ts <= $2
               AND (CAST($3 AS TEXT) IS NULL OR e.gateway = $3)
               AND (CAST($4 AS TEXT) IS NULL OR e.device = $4)
               AND (CAST($5 AS TEXT) IS NULL OR e.event = $5)
             ORDER BY e.ts DESC, e.id DESC
             LIMIT $6",
            args![q.from_ms, q.to_ms, q.gateway, q.device, q.event, q.limit],
        )?
        .iter()
        .map(|r| {
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
                attributes: serde_json::from_str(&attributes).unwrap_or(serde_json::Value::Null),
                evidence: Vec::new(),
            })
        })
        .collect::<db::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for mut ev in rows {
        ev.evidence = c
            .query(
                "SELECT r.sha256, r.media_type, r.bytes, CASE WHEN s.sha256 IS NULL THEN 0 ELSE 1 END
                 FROM event_evidence r LEFT JOIN evidence s ON s.sha256 = r.sha256
                 WHERE r.event_id = $1 ORDER BY r.position",
                args![ev.id],
            )?
            .iter()
            .map(|r| {
                let sha256: String = r.get(0)?;
                Ok(EvidenceView {
                    url: format!("/api/v1/evidence/{sha256}"),
                    sha256,
                    media_type: r.get(1)?,
                    bytes: r.get(2)?,
                    available: r.get(3)?,
                })
            })
            .collect::<db::Result<Vec<_>>>()?;
        out.push(ev);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_with_their_evidence_on_both_engines() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            c.batch(
                "INSERT INTO assets (id, kind, gateway, device, updated_at) VALUES ('anpr-1', 'parkingCamera', 'gw-1', 'cam-1', 0);
                 INSERT INTO events (id, gateway, device, event, ts, phase, attributes, evidence, received)
                   VALUES (1, 'gw-1', 'cam-1', 'plate', 1000, 'instant', '{\"plate\":\"苏A8HK52\"}', '[]', 1000),
                          (2, 'gw-1', 'cam-2', 'plate', 2000, 'instant', '{}', '[]', 2000);
                 INSERT INTO event_evidence (event_id, sha256, position, gateway, media_type, bytes)
                   VALUES (1, 'b', 1, 'gw-1', 'image/jpeg', 20), (1, 'a', 0, 'gw-1', 'image/jpeg', 10);
                 INSERT INTO evidence (sha256, media_type, bytes, gateway, stored_at) VALUES ('a', 'image/jpeg', 10, 'gw-1', 1000);",
            )
            .unwrap();
            let q = |device: Option<&str>| EventsQuery {
                gateway: Some("gw-1".into()),
                device: device.map(str::to_owned),
                event: None,
                from_ms: 0,
                to_ms: 5000,
                limit: 10,
            };
            let all = list_events(c, &q(None)).unwrap();
            assert_eq!(
                all.iter().map(|e| e.id).collect::<Vec<_>>(),
                [2, 1],
                "{name}"
            );
            let one = list_events(c, &q(Some("cam-1"))).unwrap();
            assert_eq!(one.len(), 1, "{name}");
            assert_eq!(one[0].asset.as_deref(), Some("anpr-1"), "{name}");
            assert_eq!(one[0].attributes["plate"], "苏A8HK52", "{name}");
            let ev: Vec<(&str, bool)> = one[0]
                .evidence
                .iter()
                .map(|e| (e.sha256.as_str(), e.available))
                .collect();
            assert_eq!(ev, [("a", true), ("b", false)], "{name}");
            assert!(
                is_stored(c, "a").unwrap() && !is_stored(c, "b").unwrap(),
                "{name}"
            );
        }
    }
}
