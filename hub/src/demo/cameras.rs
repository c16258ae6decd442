//! Simulated ANPR cameras for the demo: each camera of the gateway files posts Hikvision ISAPI alerts
//! with two JPEGs to its gateway's agent over HTTP, as a real camera does. A seeded mix of vehicles:
//! some stay parked in the no-parking zone across several captures, most pass by; the third capture
//! is always a muck truck (yellow plate) in the carriageway, in the evening's truck ban.

use std::time::Duration;

use firmware_config::GatewayConfig;
use protocol::{Timestamp, camera_forms};
use tokio_util::sync::CancellationToken;

const PLATE_JPEG: &[u8] = include_bytes!("../../../edge-agent/samples/plate.jpg");
const SCENE_JPEG: &[u8] = include_bytes!("../../../edge-agent/samples/scene.jpg");

/// Plates the demo's cameras see; colour prefixes as Hikvision's Chinese firmware writes them.
const PLATES: [&str; 10] = [
    "蓝苏A8HK52",
    "蓝苏A3M771",
    "黄苏A0T923",
    "绿苏AD12345",
    "蓝苏A55P21",
    "蓝苏AQ7K09",
    "黄苏A6H318",
    "蓝苏A2W5E8",
    "绿苏AF80066",
    "蓝苏A9C4L3",
];

/// Starts one task per configured camera, posting every `every` (real time) until `stop`.
pub fn start(
    gateways: &[GatewayConfig],
    every: Duration,
    seed: u64,
    stop: CancellationToken,
) -> usize {
    let mut n = 0;
    for gw in gateways {
        let Some(setup) = &gw.cameras else { continue };
        let mut addr = setup.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        for (i, cam) in setup.cameras.iter().enumerate() {
            let url = format!("http://{addr}/api/v1/cameras/{}/events", cam.id);
            let rng = fastrand::Rng::with_seed(seed ^ (n as u64 + 1).wrapping_mul(0x9e37_79b9));
            let offset = Duration::from_millis(1500 * i as u64);
            if cam.info.kind == protocol::AssetKind::EncroachmentCamera {
                tokio::spawn(run_ai(url, every, offset, rng, stop.clone()));
            } else {
                tokio::spawn(run(url, every, offset, rng, stop.clone()));
            }
            n += 1;
        }
    }
    n
}

async fn run(
    url: String,
    every: Duration,
    offset: Duration,
    mut rng: fastrand::Rng,
    stop: CancellationToken,
) {
    let agent = http_client();
    // A parked vehicle stays for a few captures, so the same plate is seen minutes apart.
    let mut parked: Option<(&str, u32)> = None;
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(every + offset) => {}
    }
    let mut n = 0u32;
    loop {
        n += 1;
        let plate = match parked.as_mut() {
            Some((p, left)) if *left > 0 => {
                *left -= 1;
                *p
            }
            _ => {
                let p = PLATES[rng.usize(..PLATES.len())];
                parked = (rng.u8(..100) < 30).then(|| (p, rng.u32(2..5)));
                p
            }
        };
        let at = Timestamp::now();
        let (plate, confidence, lane) = if n == 3 {
            ("黄苏A0T923", 97, 1)
        } else {
            (plate, rng.u8(86..100), rng.u32(1..3))
        };
        let xml = camera_forms::isapi_anpr_xml(plate, at, confidence, lane);
        let stamp = format!("{plate} {at}");
        let close_up = camera_forms::jpeg_with_comment(PLATE_JPEG, &stamp);
        let scene = camera_forms::jpeg_with_comment(SCENE_JPEG, &stamp);
        let (ct, body) = camera_forms::multipart(
            ("anpr.xml", "application/xml", xml.as_bytes()),
            &[
                ("licensePlatePicture.jpg", &close_up),
                ("detectionPicture.jpg", &scene),
            ],
            rng.u64(..),
        );
        if !post(&agent, &url, ct, body, "camera capture").await {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// An edge AI box watching a pavement: it looks five times as often as an ANPR camera posts (every
/// 6 minutes of the town's time at the demo's speed); from its third look a street vendor sets up
/// and stays for ten looks (an hour of the town's time), then leaves. The box posts a detection
/// with a snapshot each time it sees the stall, in the generic JSON form.
async fn run_ai(
    url: String,
    every: Duration,
    offset: Duration,
    mut rng: fastrand::Rng,
    stop: CancellationToken,
) {
    let agent = http_client();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(every + offset) => {}
    }
    let every = every / 5;
    let mut n = 0u32;
    loop {
        n += 1;
        if (3..13).contains(&n) {
            let at = Timestamp::now();
            let json = serde_json::json!({
                "type": "detection",
                "capturedAt": at.to_rfc3339(),
                "class": "streetVendor",
                "confidence": f64::from(rng.u8(70..95)) / 100.0,
                "trackId": "stall-1",
                "bbox": [0.31, 0.52, 0.18, 0.22],
            })
            .to_string();
            let scene = camera_forms::jpeg_with_comment(SCENE_JPEG, &format!("stall {at}"));
            let (ct, body) = camera_forms::multipart(
                ("event.json", "application/json", json.as_bytes()),
                &[("snapshot.jpg", &scene)],
                rng.u64(..),
            );
            if !post(&agent, &url, ct, body, "AI detection").await {
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// A camera's HTTP client: answers of any status are results, not errors.
fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Posts one camera request to its agent (off the runtime: ureq blocks) and logs how it went;
/// false when the runtime is shutting down.
async fn post(agent: &ureq::Agent, url: &str, ct: String, body: Vec<u8>, what: &str) -> bool {
    let (agent2, url2) = (agent.clone(), url.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        agent2
            .post(&url2)
            .header("content-type", &ct)
            .send(&body[..])
            .map(|r| r.status().as_u16())
    })
    .await;
    match result {
        Ok(Ok(200)) => tracing::debug!(%url, what, "posted"),
        Ok(Ok(status)) => tracing::warn!(%url, status, what, "the agent refused a camera request"),
        Ok(Err(e)) => tracing::debug!(%url, error = %e, "agent not reachable yet"),
        Err(_) => return false,
    }
    true
}
