//! Reads for the HTTP API: assets with their latest values, reading history, gateways, dead letters.

use std::collections::BTreeMap;

use crate::db::{self, Sql, args};
use serde::Serialize;

use super::rollup::{DAY_MS, HOUR_MS, MINUTE_MS};
use super::{Store, StoreError};

/// An asset as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AssetView {
    pub id: String,
    pub kind: String,
    pub gateway: String,
    pub device: String,
    pub profile: Option<String>,
    pub location: Option<Location>,
    pub road_segment: Option<String>,
    pub grid: Option<String>,
    pub zone: Option<String>,
    /// When the hub last received data from the asset's device (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// Latest value of each metric.
    pub latest: BTreeMap<String, serde_json::Value>,
    /// Metrics whose latest reading is of bad quality, with the reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bad: BTreeMap<String, String>,
    pub units: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Location {
    pub lon: f64,
    pub lat: f64,
}

/// One point of a reading series.
#[derive(Debug, Clone, Serialize)]
pub struct ReadingPoint {
    pub ts: String,
    pub value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// In a bucketed answer (`value` is then the mean): the smallest and largest reading and how
    /// many good readings the bucket holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// Readings as the API answers them: the points and, when they are buckets, their width.
#[derive(Debug, Clone)]
pub struct Readings {
    pub points: Vec<ReadingPoint>,
    pub step_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ReadingsQuery {
    pub asset: String,
    pub metric: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// More raw points than this in the range are answered in time buckets instead, at most this
    /// many.
    pub max_points: usize,
    /// Bucket width asked for; `None`: raw points if there are few enough, else buckets of a
    /// width chosen to fit `max_points`.
    pub step_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayView {
    pub id: String,
    pub state: String,
    pub boot: Option<String>,
    pub clock: Option<String>,
    pub agent: Option<String>,
    pub config_version: Option<String>,
    pub connected_at: Option<String>,
    pub last_seen: String,
    pub last_heartbeat: Option<serde_json::Value>,
    pub assets: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub id: i64,
    pub received: String,
    pub topic: String,
    pub gateway: Option<String>,
    pub code: String,
    pub reason: String,
    pub size: i64,
    /// The payload as text (lossy), cut to 4 KiB.
    pub payload: String,
}

fn rfc3339(ms: i64) -> String {
    protocol::Timestamp::from_unix_millis(ms).to_rfc3339()
}

fn json_value(value: Option<f64>, text: Option<String>, vtype: Option<&str>) -> serde_json::Value {
    match (value, text) {
        (_, Some(t)) => serde_json::Value::String(t),
        (Some(v), None) if vtype == Some("bool") => serde_json::Value::Bool(v != 0.0),
        (Some(v), None) => serde_json::Number::from_f64(v)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        (None, None) => serde_json::Value::Null,
    }
}

impl Store {
    pub async fn assets(&self) -> Result<Vec<AssetView>, StoreError> {
        self.read(list_assets).await
    }

    pub async fn readings(&self, q: ReadingsQuery) -> Result<Readings, StoreError> {
        let retention = self.retention();
        self.read(move |c| readings(c, &q, retention, crate::now_ms()))
            .await
    }

    /// How many gateways the hub knows; cheap enough for every health check.
    pub async fn gateway_count(&self) -> Result<i64, StoreError> {
        self.read(|c| Ok(db::one(c, "SELECT COUNT(*) FROM gateways", &[])?))
            .await
    }

    /// The cluster's partitions and hubs, with what `own` holds (`GET /api/v1/cluster`).
    pub async fn cluster_status(
        &self,
        own: std::sync::Arc<crate::cluster::Owned>,
    ) -> Result<serde_json::Value, StoreError> {
        self.read(move |c| Ok(crate::cluster::status(c, &own)?))
            .await
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayView>, StoreError> {
        self.read(list_gateways).await
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterView>, StoreError> {
        self.read(move |c| list_dead_letters(c, limit)).await
    }
}

fn list_assets(c: &dyn Sql) -> Result<Vec<AssetView>, StoreError> {
    let rows = c.query(
        "SELECT a.id, a.kind, a.gateway, a.device, a.profile, a.lon, a.lat, a.road_segment, a.grid, a.zone,
                s.metric, s.unit, s.last_value, s.last_text, s.last_quality, s.last_received, s.vtype
         FROM assets a LEFT JOIN series s ON s.gateway = a.gateway AND s.device = a.device
         ORDER BY a.id, s.metric",
        &[],
    )?;
    let mut out: Vec<AssetView> = Vec::new();
    for r in &rows {
        let id: String = r.get(0)?;
        if out.last().is_none_or(|a| a.id != id) {
            let (lon, lat): (Option<f64>, Option<f64>) = (r.get(5)?, r.get(6)?);
            out.push(AssetView {
                id,
                kind: r.get(1)?,
                gateway: r.get(2)?,
                device: r.get(3)?,
                profile: r.get(4)?,
                location: lon.zip(lat).map(|(lon, lat)| Location { lon, lat }),
                road_segment: r.get(7)?,
                grid: r.get(8)?,
                zone: r.get(9)?,
                last_seen: None,
                latest: BTreeMap::new(),
                bad: BTreeMap::new(),
                units: BTreeMap::new(),
            });
        }
        let Some(asset) = out.last_mut() else {
            continue;
        };
        let Some(metric) = r.get::<Option<String>>(10)? else {
            continue;
        };
        let received: Option<i64> = r.get(15)?;
        if let Some(ms) = received {
            let seen = rfc3339(ms);
            if asset.last_seen.as_ref().is_none_or(|s| *s < seen) {
                asset.last_seen = Some(seen);
            }
        }
        if let Some(unit) = r.get::<Option<String>>(11)? {
            asset.units.insert(metric.clone(), unit);
        }
        if let Some(q) = r.get::<Option<String>>(14)? {
            asset.bad.insert(metric.clone(), q);
        }
        let vtype: Option<String> = r.get(16)?;
        let v = json_value(r.get(12)?, r.get(13)?, vtype.as_deref());
        if !v.is_null() {
            asset.latest.insert(metric, v);
        }
    }
    // With report on change a steady device sends few readings, but its gateway's heartbeat still
    // says when it last answered a poll: that counts as seen too (when the gateway's clock is synced).
    let answered = last_answered(c)?;
    for a in &mut out {
        if let Some(ms) = answered.get(&(a.gateway.clone(), a.device.clone())) {
            let seen = rfc3339(*ms);
            if a.last_seen.as_ref().is_none_or(|s| *s < seen) {
                a.last_seen = Some(seen);
            }
        }
    }
    Ok(out)
}

/// When each device last answered a poll, by (gateway, device), from the latest heartbeats.
pub(crate) fn last_answered(
    c: &dyn crate::db::Sql,
) -> Result<std::collections::HashMap<(String, String), i64>, StoreError> {
    let rows = c.query(
        "SELECT id, last_heartbeat FROM gateways WHERE last_heartbeat IS NOT NULL",
        &[],
    )?;
    let mut out = std::collections::HashMap::new();
    for r in &rows {
        let (gw, json): (String, String) = (r.get(0)?, r.get(1)?);
        let Ok(hb) = serde_json::from_str::<protocol::Heartbeat>(&json) else {
            continue;
        };
        if hb.clock != protocol::ClockState::Synced {
            continue;
        }
        for d in hb.devices {
            if let (protocol::LinkState::Up, Some(t)) = (d.link, d.last_success) {
                out.insert((gw.clone(), d.device.to_string()), t.unix_millis());
            }
        }
    }
    Ok(out)
}

fn readings(
    c: &dyn Sql,
    q: &ReadingsQuery,
    retention: super::Retention,
    now_ms: i64,
) -> Result<Readings, StoreError> {
    let series: Option<(i64, Option<String>)> = c
        .query_opt(
            "SELECT s.id, s.vtype FROM assets a JOIN series s ON s.gateway = a.gateway AND s.device = a.device
             WHERE a.id = $1 AND s.metric = $2",
            args![q.asset, q.metric],
        )?
        .map(|r| Ok::<_, db::DbError>((r.get(0)?, r.get(1)?)))
        .transpose()?;
    let Some((series, vtype)) = series else {
        let known = c
            .query_opt("SELECT 1 FROM assets WHERE id = $1", args![q.asset])?
            .is_some();
        return if known {
            Ok(Readings {
                points: Vec::new(),
                step_ms: q.step_ms,
            })
        } else {
            Err(StoreError::UnknownAsset(q.asset.clone()))
        };
    };
    // The raw readings, when few enough are asked for (read with a limit, and used as they are).
    let mut raw = Vec::new();
    let step_ms = match q.step_ms {
        Some(step) => Some(step),
        None => {
            // Raw points when there are few enough and the raw readings cover the range: it is
            // within raw retention, or nothing older than that was ever rolled up (there was no
            // data then).
            let raw_cutoff = now_ms - i64::from(retention.raw_days) * DAY_MS;
            let raw_kept = q.from_ms >= raw_cutoff
                || c.query_opt(
                    "SELECT 1 FROM rollup_1h WHERE series = $1 AND ts >= $2 AND ts < $3 LIMIT 1",
                    args![
                        series,
                        q.from_ms - q.from_ms.rem_euclid(HOUR_MS),
                        raw_cutoff
                    ],
                )?
                .is_none();
            let few = raw_kept && {
                raw = super::raw::range(
                    c,
                    series,
                    q.from_ms,
                    q.to_ms.saturating_add(1),
                    Some(q.max_points + 1),
                )?;
                raw.len() <= q.max_points
            };
            (!few).then(|| {
                auto_step(
                    q.to_ms - q.from_ms,
                    q.max_points,
                    q.from_ms,
                    now_ms,
                    retention,
                )
            })
        }
    };
    let mut points = Vec::new();
    match step_ms {
        None => {
            for r in raw {
                if r.value.is_none() && r.text.is_none() {
                    continue;
                }
                points.push(ReadingPoint {
                    ts: rfc3339(r.ts),
                    value: json_value(r.value, r.text, vtype.as_deref()),
                    quality: r.quality,
                    min: None,
                    max: None,
                    count: None,
                });
            }
        }
        Some(step) => {
            // Server-side downsampling: the mean, minimum and maximum of the good numeric readings
            // in each bucket (booleans: the fraction of time true), from the rollups where they
            // exist. Text values are not averaged; they are left out here.
            for b in super::rollup::buckets(c, series, q.from_ms, q.to_ms, step)? {
                points.push(ReadingPoint {
                    ts: rfc3339(b.ts),
                    value: json_value(Some(b.sum / b.n.max(1) as f64), None, None),
                    quality: None,
                    min: Some(b.min),
                    max: Some(b.max),
                    count: Some(b.n),
                });
            }
        }
    }
    Ok(Readings { points, step_ms })
}

/// Bucket widths a chart reads well, from 1 s to a week.
const NICE_STEPS_S: [i64; 20] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800,
];

/// The bucket width for a range of `span_ms` in at most `max_points` buckets: the smallest nice
/// width that fits, and no finer than what is still kept for data as old as `from_ms`.
fn auto_step(
    span_ms: i64,
    max_points: usize,
    from_ms: i64,
    now_ms: i64,
    retention: super::Retention,
) -> i64 {
    let needed = (span_ms / max_points.max(1) as i64).max(1);
    let mut floor = 1_000;
    if from_ms < now_ms - i64::from(retention.raw_days) * DAY_MS {
        floor = MINUTE_MS;
    }
    if from_ms < now_ms - i64::from(retention.minute_days) * DAY_MS {
        floor = HOUR_MS;
    }
    let wanted = needed.max(floor);
    NICE_STEPS_S
        .iter()
        .map(|s| s * 1000)
        .find(|&s| s >= wanted)
        // Longer than a week: whole days.
        .unwrap_or_else(|| (wanted + DAY_MS - 1) / DAY_MS * DAY_MS)
}

fn list_gateways(c: &dyn Sql) -> Result<Vec<GatewayView>, StoreError> {
    let rows = c.query(
        "SELECT g.id, g.state, g.boot, g.clock, g.agent, g.config_version, g.connected_at, g.last_seen, g.last_heartbeat,
                (SELECT COUNT(*) FROM assets a WHERE a.gateway = g.id)
         FROM gateways g ORDER BY g.id",
        &[],
    )?;
    let views = rows.iter().map(|r| {
        Ok(GatewayView {
            id: r.get(0)?,
            state: r.get(1)?,
            boot: r.get(2)?,
            clock: r.get(3)?,
            agent: r.get(4)?,
            config_version: r.get(5)?,
            connected_at: r.get::<Option<i64>>(6)?.map(rfc3339),
            last_seen: rfc3339(r.get(7)?),
            last_heartbeat: r
                .get::<Option<String>>(8)?
                .and_then(|s| serde_json::from_str(&s).ok()),
            assets: r.get(9)?,
        })
    });
    Ok(views.collect::<db::Result<_>>()?)
}

fn list_dead_letters(c: &dyn Sql, limit: usize) -> Result<Vec<DeadLetterView>, StoreError> {
    let rows = c.query(
        "SELECT id, received, topic, gateway, code, reason, size, payload FROM dead_letters ORDER BY id DESC LIMIT $1",
        args![limit],
    )?;
    let views = rows.iter().map(|r| {
        let payload: Vec<u8> = r.get(7)?;
        let text = String::from_utf8_lossy(&payload[..payload.len().min(4096)]).into_owned();
        Ok(DeadLetterView {
            id: r.get(0)?,
            received: rfc3339(r.get(1)?),
            topic: r.get(2)?,
            gateway: r.get(3)?,
            code: r.get(4)?,
            reason: r.get(5)?,
            size: r.get(6)?,
            payload: text,
        })
    });
    Ok(views.collect::<db::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T0: i64 = 1_790_000_000_000 - 1_790_000_000_000 % DAY_MS;

    /// The API's reads give the same answers on SQLite and on PostgreSQL.
    #[test]
    fn the_apis_reads_on_both_engines() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            c.batch(&format!(
                "INSERT INTO gateways (id, state, last_seen) VALUES ('gw-1', 'online', {T0});
                 INSERT INTO assets (id, kind, gateway, device, lon, lat, updated_at)
                   VALUES ('dm-1', 'dust', 'gw-1', 'd1', 118.78, 32.04, 0), ('sl-1', 'streetlight', 'gw-1', 'l1', NULL, NULL, 0);
                 INSERT INTO series (id, gateway, device, metric, unit, last_value, last_received, vtype)
                   VALUES (1, 'gw-1', 'd1', 'pm10', 'ug/m3', 80.0, {T0}, 'number'),
                          (2, 'gw-1', 'l1', 'lampOn', NULL, 1.0, {T0}, 'bool');"
            ))
            .unwrap();
            c.execute(
                "INSERT INTO dead_letters (received, topic, gateway, code, reason, payload, size)
                 VALUES ($1, 'city/v1/gw/gw-1/up', 'gw-1', 'bad_signature', 'no', $2, 1)",
                crate::db::args![T0, b"x".to_vec()],
            )
            .unwrap();
            // An hour of pm10 a minute apart, the first half hour also rolled up.
            let hour: Vec<_> = (0..60_i64)
                .map(|m| super::super::raw::good(T0 + m * MINUTE_MS, 50.0 + m as f64))
                .collect();
            super::super::raw::insert(c, 1, &hour).unwrap();
            let assets = list_assets(c).unwrap();
            assert_eq!(assets.len(), 2, "{name}");
            assert_eq!(assets[0].latest["pm10"], serde_json::json!(80.0), "{name}");
            assert_eq!(
                assets[1].latest["lampOn"],
                serde_json::json!(true),
                "{name}"
            );
            assert!(assets[1].location.is_none(), "{name}");
            let q = |step_ms, max_points| ReadingsQuery {
                asset: "dm-1".into(),
                metric: "pm10".into(),
                from_ms: T0,
                to_ms: T0 + HOUR_MS - 1,
                max_points,
                step_ms,
            };
            let retention = super::super::Retention::default();
            let raw = readings(c, &q(None, 100), retention, T0 + HOUR_MS).unwrap();
            assert_eq!((raw.points.len(), raw.step_ms), (60, None), "{name}");
            let auto = readings(c, &q(None, 10), retention, T0 + HOUR_MS).unwrap();
            assert_eq!(auto.step_ms, Some(10 * MINUTE_MS), "{name}");
            assert_eq!(auto.points.len(), 6, "{name}");
            assert_eq!(auto.points[0].count, Some(10), "{name}");
            assert_eq!(auto.points[0].value, serde_json::json!(54.5), "{name}");
            assert_eq!(
                (auto.points[5].min, auto.points[5].max),
                (Some(100.0), Some(109.0)),
                "{name}"
            );
            let none = ReadingsQuery {
                asset: "dm-9".into(),
                ..q(None, 10)
            };
            assert!(
                matches!(
                    readings(c, &none, retention, T0),
                    Err(StoreError::UnknownAsset(_))
                ),
                "{name}"
            );
            let gws = list_gateways(c).unwrap();
            assert_eq!((gws[0].id.as_str(), gws[0].assets), ("gw-1", 2), "{name}");
            let dl = list_dead_letters(c, 10).unwrap();
            assert_eq!(
                (dl[0].code.as_str(), dl[0].payload.as_str()),
                ("bad_signature", "x"),
                "{name}"
            );
        }
    }
}
