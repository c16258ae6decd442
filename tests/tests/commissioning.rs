//! The installer's commissioning tools against a real peer (pymodbus): `edge-agent scan` finds exactly
//! the units present on a bus; `edge-agent probe` shows a device's raw registers and decoded values,
//! and says which request failed when a device does not answer.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use tests::{free_addr, pymodbus_tcp};

fn edge_agent() -> Command {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/edge-agent");
    assert!(
        bin.is_file(),
        "{} not built: run ./test.sh (it builds the binaries first)",
        bin.display()
    );
    Command::new(bin)
}

#[test]
fn scan_finds_exactly_the_present_units_and_probe_decodes_one() {
    let dir = tempfile::tempdir().unwrap();
    let modbus = free_addr();
    let _device = pymodbus_tcp(
        modbus.port(),
        &json!({ "3": tests::test_meter_registers(230.5), "7": tests::test_meter_registers(227.0) }),
        dir.path(),
    );

    let out = edge_agent()
        .args([
            "scan",
            "--link",
            &format!("tcp:{modbus}"),
            "--units",
            "1-9",
            "--register",
            "input:0",
            "--timeout-ms",
            "300",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let units: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(units, ["3", "7"], "{stdout}");
    // 230.5 as f32 in CDAB order: 0x43668000 → words 8000 4366.
    assert!(stdout.lines().next().unwrap().contains("8000"), "{stdout}");

    let gw = dir.path().join("gw.toml");
    std::fs::write(
        &gw,
        format!(
            r#"gateway = "gw-probe"
[location]
lon = 118.78
lat = 32.04
road_segment = "rd-1"
grid = "grid-1"
[uplink]
broker = "mqtt://127.0.0.1:1883"
[[bus]]
name = "tcp-1"
type = "tcp"
host = "{modbus}"
timeout_ms = 300
[[bus.device]]
id = "meter-3"
unit = 3
profile = "test-meter"
asset = "a-3"
poll_ms = 1000
[[bus.device]]
id = "meter-absent"
unit = 5
profile = "test-meter"
asset = "a-5"
poll_ms = 1000
"#
        ),
    )
    .unwrap();
    let probe = |device: &str| {
        edge_agent()
            .arg("probe")
            .arg(&gw)
            .arg(device)
            .arg("--profiles")
            .arg(tests::test_profiles())
            .output()
            .unwrap()
    };
    let out = probe("meter-3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "voltage",
        "230.5 V",
        "-12.5 Cel",
        "1234567.89 kWh",
        "\"manual\"",
        "BAD outOfRange",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }

    let out = probe("meter-absent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAILED: no reply within 300 ms"),
        "{stdout}"
    );

    let out = probe("meter-9");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("meter-3, meter-absent"));
}
