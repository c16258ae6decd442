//! Cameras that push events to the gateway over HTTP (ANPR parking cameras, AI encroachment boxes):
//! `[camera_server]` is the agent's HTTP endpoint, `[evidence]` the bounded image store and where it
//! uploads to, and each `[[camera]]` one camera with its place and zone. The spec as written, its
//! validation and the resolved view the agent runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};

use protocol::{AssetId, AssetKind, DeviceId, DeviceInfo, ZoneId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::device_check::DeviceIndex;
use crate::gateway::LocationSpec;
use crate::locate::{Path, Problem};
use crate::place::{check_place, place};

/// The agent's HTTP endpoint for camera events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CameraServerSpec {
    /// `address:port` to listen on. Cameras post to
    /// `http://<this>/api/v1/cameras/<camera id>/events`.
    pub listen: String,
    /// Largest request (event plus all its images) accepted, in bytes.
    pub max_request_bytes: u64,
    /// Largest single image accepted, in bytes.
    pub max_image_bytes: u64,
}

impl Default for CameraServerSpec {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8088".into(),
            max_request_bytes: 16 * 1024 * 1024,
            max_image_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Where evidence images are kept on the gateway and where they are uploaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceSpec {
    /// Directory of the image store; default `<agent.data_dir>/evidence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Most bytes the store may hold (default 1 GiB). When full, images already uploaded go first,
    /// then the oldest not yet uploaded (counted as dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// The hub's HTTP base URL, e.g. `http://hub.example:8080`; images are uploaded to
    /// `<hub_url>/api/v1/evidence/<sha256>`. Absent: images stay on the gateway only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_url: Option<String>,
}

/// Default evidence budget.
pub const DEFAULT_EVIDENCE_BYTES: u64 = 1024 * 1024 * 1024;

/// One camera pushing events to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraSpec {
    /// Unique within the gateway; the camera posts to `/api/v1/cameras/<id>/events`.
    pub id: DeviceId,
    pub asset: AssetId,
    /// `parkingCamera` (ANPR) or `encroachmentCamera` (AI detection).
    pub kind: AssetKind,
    /// Longitude; with `lat`, defaults to the gateway location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<ZoneId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<ZoneId>,
    /// The zone the camera watches (its no-parking or controlled zone); defaults to the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// Zones of single lanes when they differ from `zone`, by lane number: `{ "2" = "bus-lane-7" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lane_zones: BTreeMap<String, ZoneId>,
    /// Source addresses allowed to post as this camera; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// The offset of the camera's local time, for capture times it sends without one
    /// (default `+08:00`, China Standard Time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
}

/// Resolved camera settings; present when the gateway has at least one camera.
#[derive(Debug, Clone)]
pub struct CameraSetup {
    pub listen: SocketAddr,
    pub max_request_bytes: u64,
    pub max_image_bytes: u64,
    pub evidence_dir: PathBuf,
    pub evidence_max_bytes: u64,
    pub hub_url: Option<String>,
    pub cameras: Vec<Camera>,
}

/// One resolved camera.
#[derive(Debug, Clone)]
pub struct Camera {
    pub id: DeviceId,
    pub info: DeviceInfo,
    /// Zone by lane number.
    pub lane_zones: BTreeMap<u32, ZoneId>,
    pub allow_from: Vec<IpAddr>,
    /// Seconds east of UTC of the camera's local time.
    pub utc_offset_s: i32,
}

impl Camera {
    /// The zone of an event seen in `lane` (the camera's zone when the lane has none of its own).
    pub fn zone_for(&self, lane: Option<u32>) -> Option<&ZoneId> {
        lane.and_then(|l| self.lane_zones.get(&l))
            .or(self.info.zone.as_ref())
    }
}

impl CameraSetup {
    /// Resolves validated specs; `None` when there is no camera.
    pub fn resolve(
        server: &CameraServerSpec,
        evidence: &EvidenceSpec,
        cameras: &[CameraSpec],
        loc: &LocationSpec,
        data_dir: &FsPath,
    ) -> Result<Option<CameraSetup>, String> {
        if cameras.is_empty() {
            return Ok(None);
        }
        let listen = server
            .listen
            .parse()
            .map_err(|e| format!("camera_server.listen {:?}: {e}", server.listen))?;
        let mut resolved = Vec::new();
        for c in cameras {
            let lane_zones = c
                .lane_zones
                .iter()
                .map(|(k, z)| Ok((lane_number(k)?, z.clone())))
                .collect::<Result<_, String>>()?;
            let allow_from = c
                .allow_from
                .iter()
                .map(|a| a.parse().map_err(|e| format!("allow_from {a:?}: {e}")))
                .collect::<Result<_, String>>()?;
            resolved.push(Camera {
                id: c.id.clone(),
                // Cameras report when something happens, not on a schedule.
                info: place!(c).info(loc, &c.id, &c.asset, c.kind, "camera-http", None),
                lane_zones,
                allow_from,
                utc_offset_s: utc_offset(c.utc_offset.as_deref().unwrap_or(DEFAULT_UTC_OFFSET))?,
            });
        }
        Ok(Some(CameraSetup {
            listen,
            max_request_bytes: server.max_request_bytes,
            max_image_bytes: server.max_image_bytes,
            evidence_dir: evidence
                .dir
                .clone()
                .unwrap_or_else(|| data_dir.join("evidence")),
            evidence_max_bytes: evidence.max_bytes.unwrap_or(DEFAULT_EVIDENCE_BYTES),
            hub_url: evidence
                .hub_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            cameras: resolved,
        }))
    }
}

/// Camera local time when none is configured: China Standard Time.
pub const DEFAULT_UTC_OFFSET: &str = "+08:00";

/// Seconds east of UTC from `+HH:MM` / `-HH:MM`.
fn utc_offset(s: &str) -> Result<i32, String> {
    let bad = || format!("utc_offset {s:?} must look like +08:00 or -05:30");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn lane_number(key: &str) -> Result<u32, String> {
    key.parse::<u32>()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| format!("lane {key:?} must be a lane number 1..=16"))
}

/// Checks the camera sections; device and asset ids share `index` with the other devices.
pub fn check_cameras(
    server: Option<&CameraServerSpec>,
    evidence: Option<&EvidenceSpec>,
    cameras: &[CameraSpec],
    index: &mut DeviceIndex,
    out: &mut Vec<Problem>,
) {
    if let Some(s) = server {
        let at = Path::root().key("camera_server");
        if let Err(e) = s.listen.parse::<SocketAddr>() {
            out.push(Problem::error(
                at.key("listen"),
                format!(
                    "listen {:?} is not an address:port such as 0.0.0.0:8088 ({e})",
                    s.listen
                ),
            ));
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&s.max_request_bytes) {
            out.push(Problem::error(
                at.key("max_request_bytes"),
                format!(
                    "max_request_bytes is {}; expected 64 KiB to 256 MiB",
                    s.max_request_bytes
                ),
            ));
        }
        if s.max_image_bytes == 0 || s.max_image_bytes > s.max_request_bytes {
            out.push(Problem::error(
                at.key("max_image_bytes"),
                format!(
                    "max_image_bytes is {}; expected 1 up to max_request_bytes ({})",
                    s.max_image_bytes, s.max_request_bytes
                ),
            ));
        }
        if cameras.is_empty() {
            out.push(Problem::warning(
                at,
                "[camera_server] without any [[camera]]: the endpoint is not started",
            ));
        }
    }
    if let Some(e) = evidence {
        let at = Path::root().key("evidence");
        if let Some(m) = e.max_bytes
            && m < 16 * 1024 * 1024
        {
            out.push(Problem::error(
                at.key("max_bytes"),
                format!("max_bytes is {m}; expected at least 16 MiB (a few dozen events)"),
            ));
        }
        if let Some(u) = &e.hub_url
            && let Some(p) = http_url_problem(u)
        {
            out.push(Problem::error(at.key("hub_url"), p));
        }
    }
    if !cameras.is_empty() && evidence.and_then(|e| e.hub_url.as_ref()).is_none() {
        out.push(Problem::warning(
            Path::root().at("camera", 0).key("id"),
            "no [evidence] hub_url: camera images stay on the gateway and never reach the hub",
        ));
    }
    for (i, c) in cameras.iter().enumerate() {
        let at = Path::root().at("camera", i);
        index.claim(&c.id, &c.asset, &at, out);
        if !matches!(
            c.kind,
            AssetKind::ParkingCamera | AssetKind::EncroachmentCamera
        ) {
            out.push(Problem::error(
                at.key("kind"),
                format!(
                    "kind {:?} is not a camera; expected parkingCamera or encroachmentCamera",
                    c.kind.as_str()
                ),
            ));
        }
        check_place(&place!(c), &at, out);
        for key in c.lane_zones.keys() {
            if let Err(e) = lane_number(key) {
                out.push(Problem::error(at.key("lane_zones").key(key), e));
            }
        }
        if let Some(o) = &c.utc_offset
            && let Err(e) = utc_offset(o)
        {
            out.push(Problem::error(at.key("utc_offset"), e));
        }
        for (j, a) in c.allow_from.iter().enumerate() {
            if let Err(e) = a.parse::<IpAddr>() {
                out.push(Problem::error(
                    at.key("allow_from").index(j),
                    format!("{a:?} is not an IP address ({e})"),
                ));
            }
        }
    }
}

fn http_url_problem(u: &str) -> Option<String> {
    let Some(rest) = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
    else {
        return Some(format!("hub_url {u:?} must start with http:// or https://"));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Some(format!("hub_url {u:?} has no host"));
    }
    if rest.contains(['?', '#', ' ']) {
        return Some(format!(
            "hub_url {u:?} must be a base URL without query, fragment or spaces"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(http_url_problem("http://127.0.0.1:8080"), None);
        assert_eq!(http_url_problem("https://hub.example/city/"), None);
        assert!(http_url_problem("ftp://x").is_some());
        assert!(http_url_problem("http://").is_some());
        assert!(http_url_problem("http://h/?a=1").is_some());
    }

    #[test]
    fn offsets() {
        assert_eq!(utc_offset("+08:00"), Ok(8 * 3600));
        assert_eq!(utc_offset("-05:30"), Ok(-(5 * 3600 + 1800)));
        for bad in ["08:00", "+8:00", "+08", "+15:00", "+08:60", ""] {
            assert!(utc_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lanes() {
        assert_eq!(lane_number("2"), Ok(2));
        assert!(lane_number("0").is_err());
        assert!(lane_number("left").is_err());
    }
}
