//! Camera events end to end: `curl` plays an ANPR camera posting the Hikvision ISAPI form (XML plus
//! two JPEGs) to the agent; the hub ends up with one plate event whose two images download from the
//! hub and match their SHA-256. Broken requests get a 4xx with the reason, are counted in the
//! heartbeat, and do not disturb the next good request. `edge-agent camera test` sends the generic
//! form.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_agent::camera::sample;
use tests::{eventually, free_addr, get_json};

fn agent_bin() -> String {
    env!("CARGO_MANIFEST_DIR").to_owned() + "/../target/debug/edge-agent"
}

/// Posts with curl; returns the HTTP status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (run ./test.sh, which installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn download(url: &str) -> (u16, Vec<u8>, String) {
    let mut resp = ureq::get(url)
        .header("authorization", &tests::bearer())
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, bytes, ct)
}

#[test]
fn hikvision_anpr_event_with_two_jpegs_reaches_the_hub_with_its_images() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt, cam) = (free_addr(), free_addr(), free_addr());
    let gw_file = dir.path().join("gw.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"gateway = "gw-cam"
[location]
lon = 118.78
lat = 32.04
road_segment = "rd-zhongshan"
grid = "g-1"
[uplink]
broker = "mqtt://{mqtt}"
[agent]
batch_max_wait_ms = 100
heartbeat_s = 1
data_dir = "{data}"

[camera_server]
listen = "{cam}"
max_request_bytes = 1048576
max_image_bytes = 262144

[evidence]
hub_url = "http://{http}"

[[camera]]
id = "cam-zs-01"
asset = "anpr-zhongshan-01"
kind = "parkingCamera"
zone = "np-zhongshan-a"
lane_zones = {{ "2" = "bus-lane-zhongshan" }}
"#,
            data = dir.path().join("agent").display()
        ),
    )
    .unwrap();
    let check = Command::new(agent_bin())
        .args(["config", "check"])
        .arg(&gw_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub(&rt, &dir.path().join("hub"), http, mqtt);
    let agent = tests::Agent::start(&rt, &gw_file, None);
    tests::wait_for_port(cam, Duration::from_secs(10));
    let base = format!("http://{http}");
    let post_url = format!("http://{cam}/api/v1/cameras/cam-zs-01/events");

    // The camera announced in the inventory.
    eventually(Duration::from_secs(10), "the camera announced", || {
        let a = get_json(&format!("{base}/api/v1/assets"))?;
        a.as_array()?
            .iter()
            .find(|x| x["id"] == "anpr-zhongshan-01" && x["kind"] == "parkingCamera")
            .cloned()
    });

    // Broken requests first: each refused with a reason, none affecting what follows.
    let bad_xml = write(
        dir.path(),
        "bad.xml",
        b"<EventNotificationAlert><eventType>ANPR",
    );
    let (code, body) = curl(&[
        "-F",
        &format!("anpr.xml=@{bad_xml};type=application/xml"),
        &post_url,
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("ends before its root element closes"),
        "{body}"
    );
    let (code, body) = curl(&[
        "-H",
        "content-type: application/xml",
        "--data-binary",
        "<EventNotificationAlert><eventType>ANPR</eventType></EventNotificationAlert>",
        &format!("http://{cam}/api/v1/cameras/cam-nope/events"),
    ]);
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("no camera") && body.contains("cam-nope"),
        "{body}"
    );
    let huge = write(dir.path(), "huge.jpg", &{
        let mut v = vec![0xff, 0xd8, 0xff, 0xe0];
        v.resize(300_000, 7);
        v
    });
    let xml = write(
        dir.path(),
        "anpr.xml",
        protocol::camera_forms::isapi_anpr_xml("蓝苏A8HK52", protocol::Timestamp::now(), 97, 2)
            .as_bytes(),
    );
    let (code, body) = curl(&[
        "-F",
        &format!("anpr.xml=@{xml};type=application/xml"),
        "-F",
        &format!("licensePlatePicture.jpg=@{huge};type=image/jpeg"),
        &post_url,
    ]);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("max_image_bytes"), "{body}");
    let not_jpeg = write(dir.path(), "fake.jpg", b"GIF89a definitely not a jpeg");
    let (code, body) = curl(&[
        "-F",
        &format!("anpr.xml=@{xml};type=application/xml"),
        "-F",
        &format!("licensePlatePicture.jpg=@{not_jpeg};type=image/jpeg"),
        &post_url,
    ]);
    assert_eq!(code, 422, "{body}");

    // The real thing: Hikvision form, two JPEGs, as curl -F sends them.
    let plate = write(
        dir.path(),
        "licensePlatePicture.jpg",
        sample::SAMPLE_PLATE_JPEG,
    );
    let scene = write(
        dir.path(),
        "detectionPicture.jpg",
        sample::SAMPLE_SCENE_JPEG,
    );
    let (code, body) = curl(&[
        "-F",
        &format!("anpr.xml=@{xml};type=application/xml"),
        "-F",
        &format!("licensePlatePicture.jpg=@{plate};type=image/jpeg"),
        "-F",
        &format!("detectionPicture.jpg=@{scene};type=image/jpeg"),
        &post_url,
    ]);
    assert_eq!(code, 200, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["event"]["attributes"]["plate"], "苏A8HK52");

    let sha_plate = edge_agent::evidence::sha256_hex(sample::SAMPLE_PLATE_JPEG);
    let sha_scene = edge_agent::evidence::sha256_hex(sample::SAMPLE_SCENE_JPEG);
    // One plate event at the hub, both images uploaded and verified there.
    let event = eventually(
        Duration::from_secs(30),
        "the plate event with both images",
        || {
            let events = get_json(&format!("{base}/api/v1/events?device=cam-zs-01"))?;
            let list = events.as_array()?;
            let e = list.first()?.clone();
            let available = e["evidence"]
                .as_array()?
                .iter()
                .all(|x| x["available"] == true);
            (list.len() == 1 && available).then_some(e)
        },
    );
    assert_eq!(event["event"], "plate");
    assert_eq!(event["gateway"], "gw-cam");
    assert_eq!(event["asset"], "anpr-zhongshan-01");
    let a = &event["attributes"];
    assert_eq!(a["plate"], "苏A8HK52");
    assert_eq!(a["plateColor"], "blue");
    assert_eq!(a["vehicleType"], "car");
    assert_eq!(a["confidence"], 0.97);
    assert_eq!(a["lane"], 2.0);
    assert_eq!(
        a["zone"], "bus-lane-zhongshan",
        "lane 2 has a zone of its own"
    );
    assert_eq!(a["timeSource"], "camera");
    let shas: Vec<&str> = event["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [sha_plate.as_str(), sha_scene.as_str()]);
    for (sha, original) in [
        (&sha_plate, sample::SAMPLE_PLATE_JPEG),
        (&sha_scene, sample::SAMPLE_SCENE_JPEG),
    ] {
        let (status, bytes, ct) = download(&format!("{base}/api/v1/evidence/{sha}"));
        assert_eq!(status, 200);
        assert_eq!(ct, "image/jpeg");
        assert_eq!(edge_agent::evidence::sha256_hex(&bytes), *sha);
        assert_eq!(bytes, original);
    }

    // The hub refuses an upload that does not match its name, and one no event references.
    let put = |sha: &str, bytes: &[u8]| {
        let resp = ureq::put(&format!("{base}/api/v1/evidence/{sha}"))
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "image/jpeg")
            .header("x-gateway", "gw-cam")
            .send(bytes)
            .unwrap();
        resp.status().as_u16()
    };
    assert_eq!(put(&sha_plate, b"\xff\xd8\xff tampered"), 422);
    let stranger = [0xff, 0xd8, 0xff, 0xe0, 1, 2, 3];
    assert_eq!(
        put(&edge_agent::evidence::sha256_hex(&stranger), &stranger),
        409
    );

    // The same event posted again (a camera retrying) is stored once.
    let (code, _) = curl(&[
        "-F",
        &format!("anpr.xml=@{xml};type=application/xml"),
        "-F",
        &format!("licensePlatePicture.jpg=@{plate};type=image/jpeg"),
        &post_url,
    ]);
    assert_eq!(code, 200);

    // `edge-agent camera test` sends the generic form and shows what was kept.
    let out = Command::new(agent_bin())
        .args([
            "camera",
            "test",
            "cam-zs-01",
            "--form",
            "generic",
            "--plate",
            "黄苏E5X789",
        ])
        .args(["--agent", &format!("http://{cam}")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("200 OK"), "{report}");
    assert!(report.contains("苏E5X789 (yellow)"), "{report}");
    assert!(report.contains(&sha_plate), "{report}");
    assert!(report.contains("/evidence/"), "{report}");
    let events = eventually(Duration::from_secs(20), "the second plate", || {
        let e = get_json(&format!(
            "{base}/api/v1/events?device=cam-zs-01&event=plate"
        ))?;
        (e.as_array()?.len() == 2).then_some(e)
    });
    assert_eq!(events[0]["attributes"]["plate"], "苏E5X789");

    // Roles: a crew member sees masked plates and no images; enforcement sees both; no token, nothing.
    use hub::access::Role;
    let hub_dir = dir.path().join("hub");
    let crew = tests::api_token(&hub_dir, "li-crew", Role::Crew, Some("sanitation"));
    let enforcement = tests::api_token(&hub_dir, "wang-enforcement", Role::Enforcement, None);
    let events_url = format!("{base}/api/v1/events?device=cam-zs-01&event=plate");
    let evidence_url = format!("{base}/api/v1/evidence/{sha_plate}");
    let seen = tests::get_json_as(&events_url, &crew).unwrap();
    assert_eq!(seen[0]["attributes"]["plate"], "苏E5X***", "{seen}");
    assert_eq!(seen[1]["attributes"]["plate"], "苏A8H***", "{seen}");
    assert_eq!(seen[0]["attributes"]["plateColor"], "yellow");
    let (code, body) = tests::get_status_as(&evidence_url, &crew);
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("crew"), "{body}");
    let (code, body) = tests::get_status_as(&format!("{base}/api/v1/dead-letters"), &crew);
    assert_eq!(code, 403, "{body}");
    let seen = tests::get_json_as(&events_url, &enforcement).unwrap();
    assert_eq!(seen[0]["attributes"]["plate"], "苏E5X789");
    let resp = ureq::get(&evidence_url)
        .header("authorization", &format!("Bearer {enforcement}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The token may come in the query (links a browser opens).
    let (code, _) = tests::get_status_as(&format!("{evidence_url}?token={enforcement}"), "x");
    assert_eq!(
        code, 401,
        "a wrong header token is not overridden by the query"
    );
    let resp = ureq::get(&format!("{evidence_url}?token={enforcement}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    for (token, code) in [
        (None, 401),
        (Some("cty_not-a-real-token-of-this-hub-at-all"), 401),
    ] {
        let mut req = ureq::get(&events_url)
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    let (code, _) = tests::get_status_as(&format!("{base}/healthz"), "none");
    assert_eq!(code, 200, "health stays open");

    // Refusals are counted in the heartbeat.
    eventually(Duration::from_secs(10), "refusals in the heartbeat", || {
        let gws = get_json(&format!("{base}/api/v1/gateways"))?;
        let hb = &gws.as_array()?.first()?["last_heartbeat"];
        let ev = &hb["evidence"];
        (ev["rejectedRequests"].as_u64()? >= 4 && ev["uploaded"].as_u64()? >= 2).then_some(())
    });

    agent.stop(&rt);
    rt.block_on(hub.stop());
}
