//! Simulated cameras for the demo: each camera of the gateway files posts to its gateway's agent
//! over HTTP, as a real one does. A parking (ANPR) camera posts Hikvision ISAPI alerts with two
//! JPEGs: the day's script ([`super::scenario::CAPTURES`]: a car that parks, a short stop, a truck
//! in the ban hours, a permitted truck, a whitelisted car) at its town hours, and between them
//! passers-by, each seen once. An AI box posts a street vendor's stall while it is there
//! ([`super::scenario::STALL`]) in the generic JSON form, and a heartbeat when it sees nothing.

use std::time::Duration;

use firmware_config::GatewayConfig;
use protocol::{Timestamp, camera_forms};
use tokio_util::sync::CancellationToken;

use super::scenario::{CAPTURES, Capture, STALL};
use super::town::SimClock;

const PLATE_JPEG: &[u8] = include_bytes!("../../../edge-agent/samples/plate.jpg");
const SCENE_JPEG: &[u8] = include_bytes!("../../../edge-agent/samples/scene.jpg");

/// Starts one task per configured camera, posting passers-by every `every` (real time) and the
/// script on the town's clock, until `stop`.
pub fn start(
    gateways: &[GatewayConfig],
    every: Duration,
    clock: &SimClock,
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
            let clock = clock.clone();
            if cam.info.kind == protocol::AssetKind::EncroachmentCamera {
                tokio::spawn(run_ai(url, every / 5, offset, clock, rng, stop.clone()));
            } else {
                tokio::spawn(run(url, every, offset, clock, n, rng, stop.clone()));
            }
            n += 1;
        }
    }
    n
}

/// Sleeps until `at`; false when stopped first.
async fn sleep_until(at: tokio::time::Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

async fn run(
    url: String,
    every: Duration,
    offset: Duration,
    clock: SimClock,
    camera: usize,
    mut rng: fastrand::Rng,
    stop: CancellationToken,
) {
    let agent = http_client();
    let start_s = clock.start_s();
    let script: Vec<(tokio::time::Instant, Capture)> = CAPTURES
        .into_iter()
        .filter_map(|c| Some((clock.instant_at(start_s + c.after_h * 3600.0)?, c)))
        .collect();
    let mut script = script.into_iter().peekable();
    let mut next_passer = tokio::time::Instant::now() + every + offset;
    let mut passers = 0u32;
    loop {
        let scripted = script.peek().is_some_and(|(at, _)| *at <= next_passer);
        let (plate, lane, confidence) = if scripted {
            let Some((at, c)) = script.next() else { return };
            if !sleep_until(at, &stop).await {
                return;
            }
            (c.plate.to_owned(), 1u32, 95u8)
        } else {
            if !sleep_until(next_passer, &stop).await {
                return;
            }
            next_passer += every;
            passers += 1;
            // Seen once and never again: a plate no one else in the town has.
            let plate = format!("蓝苏A{}", 10_000 + camera as u32 * 50_000 + passers);
            (plate, 1 + passers % 2, rng.u8(86..100))
        };
        let at = Timestamp::now();
        let xml = camera_forms::isapi_anpr_xml(&plate, at, confidence, lane);
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
        // The script's captures are the scenario: one the agent did not take (not listening yet,
        // busy) is posted again until it is; a passer-by is not worth it.
        loop {
            match post(&agent, &url, ct.clone(), body.clone(), "camera capture").await {
                Posted::Taken => break,
                Posted::Stopping => return,
                Posted::NotTaken if scripted => {
                    let again = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
                    if !sleep_until(again, &stop).await {
                        return;
                    }
                }
                Posted::NotTaken => break,
            }
        }
    }
}

/// An edge AI box watching a pavement, looking every `every`: while the stall is there (town
/// time) it posts a detection with a snapshot, otherwise a heartbeat.
async fn run_ai(
    url: String,
    every: Duration,
    offset: Duration,
    clock: SimClock,
    mut rng: fastrand::Rng,
    stop: CancellationToken,
) {
    let agent = http_client();
    let (from, to) = (
        clock.start_s() + STALL.0 * 3600.0,
        clock.start_s() + STALL.1 * 3600.0,
    );
    let mut next = tokio::time::Instant::now() + every + offset;
    loop {
        if !sleep_until(next, &stop).await {
            return;
        }
        next += every;
        let posted = if (from..to).contains(&clock.now_s()) {
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
            post(&agent, &url, ct, body, "AI detection").await
        } else {
            let body = br#"{"type":"heartbeat"}"#.to_vec();
            post(
                &agent,
                &url,
                "application/json".into(),
                body,
                "AI heartbeat",
            )
            .await
        };
        if posted == Posted::Stopping {
            return;
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

/// How a camera request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    Taken,
    /// Refused, or the agent not reachable.
    NotTaken,
    /// The runtime is shutting down.
    Stopping,
}

/// Posts one camera request to its agent (off the runtime: ureq blocks) and logs how it went.
async fn post(agent: &ureq::Agent, url: &str, ct: String, body: Vec<u8>, what: &str) -> Posted {
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
        Ok(Ok(200)) => {
            tracing::debug!(%url, what, "posted");
            Posted::Taken
        }
        Ok(Ok(status)) => {
            tracing::warn!(%url, status, what, "the agent refused a camera request");
            Posted::NotTaken
        }
        Ok(Err(e)) => {
            tracing::debug!(%url, error = %e, "agent not reachable yet");
            Posted::NotTaken
        }
        Err(_) => Posted::Stopping,
    }
}
