//! `edge-agent camera test`: posts a sample event with images to a running agent, the way a camera
//! does, and shows what the agent made of it and where it stored the images.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use protocol::{Timestamp, camera_forms};

/// A real JPEG of a blue plate and one of a street scene, for the sample event.
pub const SAMPLE_PLATE_JPEG: &[u8] = include_bytes!("../../samples/plate.jpg");
pub const SAMPLE_SCENE_JPEG: &[u8] = include_bytes!("../../samples/scene.jpg");

/// Which form to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleForm {
    /// Hikvision ISAPI: `anpr.xml` plus JPEG parts.
    Isapi,
    /// The generic JSON form.
    Generic,
}

/// Posts a sample event to `agent_url` (e.g. `http://127.0.0.1:8088`) as camera `camera` and returns
/// a report; `Err` carries the report of a refused request too.
pub fn send(
    agent_url: &str,
    camera: &str,
    form: SampleForm,
    plate: &str,
    images: &[(String, Vec<u8>)],
) -> Result<String, String> {
    let at = Timestamp::now();
    let (doc_name, doc_type, doc) = match form {
        SampleForm::Isapi => (
            "anpr.xml",
            "application/xml",
            camera_forms::isapi_anpr_xml(plate, at, 97, 1),
        ),
        SampleForm::Generic => (
            "event",
            "application/json",
            camera_forms::generic_plate_json(plate, at, 0.97, 1),
        ),
    };
    let imgs: Vec<(&str, &[u8])> = images
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (content_type, body) = camera_forms::multipart(
        (doc_name, doc_type, doc.as_bytes()),
        &imgs,
        fastrand::u64(..),
    );
    let url = format!(
        "{}/api/v1/cameras/{camera}/events",
        agent_url.trim_end_matches('/')
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "POST {url}\n  {} form, {} image(s), {} bytes",
        match form {
            SampleForm::Isapi => "Hikvision ISAPI",
            SampleForm::Generic => "generic JSON",
        },
        images.len(),
        body.len()
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let started = Instant::now();
    let mut resp = agent
        .post(&url)
        .header("content-type", &content_type)
        .send(&body[..])
        .map_err(|e| format!("{out}cannot reach the agent at {agent_url}: {e}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let _ = writeln!(out, "{} in {} ms", status, started.elapsed().as_millis());
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !status.is_success() {
        let reason = json["error"].as_str().unwrap_or(&text);
        let _ = writeln!(out, "  refused: {reason}");
        return Err(out);
    }
    let ev = &json["event"];
    let attrs = &ev["attributes"];
    let a = |k: &str| match &attrs[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let _ = writeln!(
        out,
        "  event      {} at {} (time from {})",
        ev["event"].as_str().unwrap_or("?"),
        ev["observedAt"].as_str().unwrap_or("?"),
        a("timeSource")
    );
    let _ = writeln!(
        out,
        "  plate      {} ({})   vehicle {}   confidence {}   lane {}   zone {}",
        a("plate"),
        a("plateColor"),
        a("vehicleType"),
        a("confidence"),
        a("lane"),
        a("zone")
    );
    for e in json["evidence"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  image      {}  {}  {} bytes\n             sha256 {}\n             kept at {}",
            e["name"].as_str().unwrap_or("?"),
            e["mediaType"].as_str().unwrap_or("?"),
            e["bytes"],
            e["sha256"].as_str().unwrap_or("?"),
            e["path"].as_str().unwrap_or("(not kept)")
        );
    }
    Ok(out)
}
