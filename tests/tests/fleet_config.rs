//! Fleet configuration, end to end with the real agent binary, a real pymodbus device and a hub
//! that takes only signed messages:
//! - an installer uploads gateway files through the API; a broken one is refused with its line, one
//!   for another gateway too;
//! - a good one (adding a Modbus device) is pushed, signed, applied and kept: its device's readings
//!   arrive and the hub shows the gateway running it;
//! - one whose broker address is wrong is applied, cannot reach the broker within the trial time,
//!   and is rolled back by the gateway itself, which reports it; the readings go on;
//! - after a restart the gateway still runs the hub's version; after an edit of its local file the
//!   local file wins, and `edge-agent status` and the API say so, until a newer version comes;
//! - a version uploaded while the gateway is off is pushed again when it is back.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tests::{Peer, eventually, free_addr, get_json, pymodbus_tcp, workspace_root};

const GW: &str = "gw-fleet";

fn upload(base: &str, token: &str, gateway: &str, text: &str) -> (u16, serde_json::Value) {
    tests::post_as(
        &format!("{base}/api/v1/gateways/{gateway}/config?comment=test"),
        token,
        "application/toml",
        text.as_bytes(),
    )
}

fn agent(config: &Path, data: &Path, status: SocketAddr) -> Peer {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let child = Command::new(workspace_root().join("target/debug/edge-agent"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--profiles")
        .arg(tests::test_profiles())
        .args(["--clock", "synced", "--config-trial-s", "5"])
        .arg("--status-listen")
        .arg(status.to_string())
        .stdout(log)
        .spawn()
        .expect("target/debug/edge-agent (cargo build --bins)");
    Peer::new("edge-agent", child)
}

/// `edge-agent status --agent URL` as an installer runs it.
fn status_report(status: SocketAddr) -> String {
    let out = Command::new(workspace_root().join("target/debug/edge-agent"))
        .args(["status", "--agent", &format!("http://{status}")])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn config_view(base: &str) -> serde_json::Value {
    get_json(&format!("{base}/api/v1/gateways/{GW}/config")).unwrap()
}

fn readings(base: &str) -> usize {
    get_json(&format!(
        "{base}/api/v1/assets/meter-fleet/readings?metric=voltage"
    ))
    .and_then(|p| p.as_array().map(Vec::len))
    .unwrap_or(0)
}

#[test]
fn pushed_configuration_is_applied_kept_or_rolled_back_by_the_gateway() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let device = free_addr();
    let _meter = pymodbus_tcp(
        device.port(),
        &json!({ "7": tests::test_meter_registers(231.0) }),
        dir.path(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub_dir = dir.path().join("hub");
    tests::provision_admin(&hub_dir);
    // The hub checks uploads against the same profiles as the gateway (`hub serve --profiles`).
    let _hub = rt
        .block_on(hub::start(hub::HubConfig {
            profiles: Some(tests::test_profiles()),
            ..hub::HubConfig::new(
                http,
                hub_dir.clone(),
                hub::MqttMode::Embedded { listen: mqtt },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    let base = format!("http://{http}");
    let key = dir.path().join("gw-fleet.key");
    tests::provision_key(&hub_dir, GW, "k1", &key);
    let installer = tests::api_token(&hub_dir, "installer", hub::access::Role::Installer, None);
    let crew = tests::api_token(
        &hub_dir,
        "crew",
        hub::access::Role::Crew,
        Some("lighting-maintenance"),
    );

    let head = |broker: &str| {
        format!(
            "{}key_file = \"{}\"\n[agent]\nheartbeat_s = 1\nbatch_max_wait_ms = 200\n",
            tests::gateway_head(GW, broker),
            key.display()
        )
    };
    let meter = format!(
        "\n[[bus]]\nname = \"cabinet\"\ntype = \"tcp\"\nhost = \"{device}\"\ntimeout_ms = 500\n\n\
         [[bus.device]]\nid = \"meter-fleet\"\nunit = 7\nprofile = \"test-meter\"\nasset = \"meter-fleet\"\npoll_ms = 300\n"
    );
    let local = dir.path().join("gateway.toml");
    let local_text = head(&format!("mqtt://{mqtt}"));
    std::fs::write(&local, &local_text).unwrap();
    let data = dir.path().join("agent");
    let status = free_addr();
    let mut gateway = agent(&local, &data, status);

    // The gateway runs its local file and says so.
    let v = eventually(Duration::from_secs(30), "the gateway's report", || {
        let v = config_view(&base);
        (v["running"]["source"] == "local").then_some(v)
    });
    assert_eq!(v["state"], "none", "{v}");
    assert!(
        status_report(status).contains("the hub has pushed no version"),
        "{}",
        status_report(status)
    );

    // Refused at upload: a broken file (with its line), another gateway's file, and a crew member.
    let broken = format!("{local_text}{meter}").replace("poll_ms = 300", "poll_ms = \"often\"");
    let line = broken.lines().position(|l| l.contains("often")).unwrap() + 1;
    let (code, body) = upload(&base, &installer, GW, &broken);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["line"] == line && p["severity"] == "error"),
        "line {line}: {body}"
    );
    let (code, body) = upload(&base, &installer, GW, &local_text.replace(GW, "gw-other"));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("gw-other"),
        "{body}"
    );
    let (code, body) = upload(&base, &crew, GW, &local_text);
    assert_eq!(code, 403, "{body}");
    let (code, _) = upload(
        &base,
        &installer,
        "gw-nobody",
        &local_text.replace(GW, "gw-nobody"),
    );
    assert_eq!(code, 404);
    assert_eq!(config_view(&base)["versions"], json!([]));

    // Version 1 adds the meter: pushed, applied, kept, and in effect.
    let v1 = format!("{local_text}{meter}");
    let (code, body) = upload(&base, &installer, GW, &v1);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["version"]["version"], 1, "{body}");
    let (code, body) = upload(&base, &installer, GW, &v1);
    assert_eq!(
        (code, &body["created"]),
        (200, &json!(false)),
        "same text: {body}"
    );
    let v = eventually(Duration::from_secs(40), "version 1 applied", || {
        let v = config_view(&base);
        (v["state"] == "applied").then_some(v)
    });
    assert_eq!(v["running"]["version"], 1, "{v}");
    assert_eq!(
        v["running"]["sha256"],
        protocol::config::config_sha256(&v1),
        "{v}"
    );
    eventually(Duration::from_secs(30), "the new meter's readings", || {
        (readings(&base) >= 3).then_some(())
    });
    let (code, _) = tests::get_status_as(&format!("{base}/api/v1/gateways/{GW}/config/1"), &crew);
    assert_eq!(
        code, 403,
        "a crew member may not read files with broker passwords"
    );
    let text = ureq::get(&format!("{base}/api/v1/gateways/{GW}/config/1"))
        .header("authorization", &format!("Bearer {installer}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(text, v1);

    // Version 2 points at a broker nobody runs: applied, on trial, rolled back, reported.
    let nowhere = free_addr();
    let v2 = v1.replace(&format!("mqtt://{mqtt}"), &format!("mqtt://{nowhere}"));
    let (code, body) = upload(&base, &installer, GW, &v2);
    assert_eq!(
        (code, &body["version"]["version"]),
        (201, &json!(2)),
        "{body}"
    );
    let v = eventually(Duration::from_secs(60), "version 2 rolled back", || {
        let v = config_view(&base);
        (v["state"] == "rolledBack").then_some(v)
    });
    assert_eq!(v["running"]["source"], "hub", "{v}");
    assert_eq!(v["running"]["version"], 1, "{v}");
    let failed = &v["running"]["failed"];
    assert_eq!(
        (&failed["version"], &failed["outcome"]),
        (&json!(2), &json!("rolledBack")),
        "{v}"
    );
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not reach the broker within 5 s"),
        "{reason}"
    );
    let report = status_report(status);
    assert!(report.contains("hub version 1 ("), "{report}");
    assert!(report.contains("hub version 2 ROLLED BACK"), "{report}");
    let before = readings(&base);
    eventually(
        Duration::from_secs(30),
        "readings after the rollback",
        || (readings(&base) >= before + 3).then_some(()),
    );
    let kept: Vec<String> = std::fs::read_dir(data.join("config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        kept.contains(&"v1.toml".into()) && kept.contains(&"v2.toml".into()),
        "{kept:?}"
    );
    // Only the agent's user may read them (they may hold a broker password).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("config/v1.toml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The same text again is a new version (the trial may have failed for a passing reason): it
    // is tried, and rolled back again.
    let (code, body) = upload(&base, &installer, GW, &v2);
    assert_eq!(
        (code, &body["version"]["version"]),
        (201, &json!(3)),
        "{body}"
    );
    eventually(Duration::from_secs(60), "version 3 rolled back", || {
        let v = config_view(&base);
        (v["state"] == "rolledBack" && v["running"]["failed"]["version"] == 3).then_some(())
    });

    // Restarted, the gateway still runs the hub's version 1.
    gateway.terminate();
    let boot = |base: &str| {
        let gws = get_json(&format!("{base}/api/v1/gateways")).unwrap();
        gws.as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == GW)
            .map(|g| g["boot"].clone())
            .unwrap()
    };
    let old_boot = boot(&base);
    gateway = agent(&local, &data, status);
    eventually(Duration::from_secs(30), "the restarted gateway", || {
        (boot(&base) != old_boot && config_view(&base)["running"]["version"] == 1).then_some(())
    });
    assert_eq!(config_view(&base)["state"], "rolledBack");
    let report = status_report(status);
    assert!(report.contains("hub version 1 ("), "{report}");
    assert!(report.contains("hub version 3 ROLLED BACK"), "{report}");

    // An installer edits the local file on site: it wins until the hub pushes a newer version.
    gateway.terminate();
    std::fs::write(&local, format!("# edited on site\n{local_text}")).unwrap();
    let old_boot = boot(&base);
    gateway = agent(&local, &data, status);
    let v = eventually(Duration::from_secs(30), "the local file running", || {
        let v = config_view(&base);
        (boot(&base) != old_boot && v["running"]["source"] == "local").then_some(v)
    });
    assert_eq!(v["running"]["version"], 1, "{v}");
    let report = status_report(status);
    assert!(
        report.contains("changed after hub version 1 was applied"),
        "{report}"
    );
    // Version 4 (the meter again, a slower poll) wins over the edit.
    let v4 = v1.replace("poll_ms = 300", "poll_ms = 500");
    let (code, _) = upload(&base, &installer, GW, &v4);
    assert_eq!(code, 201);
    let v = eventually(Duration::from_secs(40), "version 4 applied", || {
        let v = config_view(&base);
        (v["state"] == "applied").then_some(v)
    });
    assert_eq!(v["running"]["version"], 4, "{v}");

    // Uploaded while the gateway is off: the hub pushes it again once the gateway is back.
    gateway.terminate();
    let v5 = v1.replace("poll_ms = 300", "poll_ms = 400");
    let (code, _) = upload(&base, &installer, GW, &v5);
    assert_eq!(code, 201);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(config_view(&base)["running"]["version"], 4);
    gateway = agent(&local, &data, status);
    let v = eventually(Duration::from_secs(60), "version 5 applied", || {
        let v = config_view(&base);
        (v["state"] == "applied" && v["running"]["version"] == 5).then_some(v)
    });
    assert_eq!(v["versions"].as_array().unwrap().len(), 5, "{v}");
    let pushed = tests::metrics_text(&base)
        .lines()
        .find_map(|l| l.strip_prefix("hub_configs_pushed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    assert!(pushed >= 6.0, "5 uploads and a push again: {pushed}");
    gateway.terminate();
}
