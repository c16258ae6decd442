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
    // pymodbus's first answer can take longer than the scan's 300 ms on a loaded machine (a CI run
    // once saw no unit answer): wait until unit 3 answers a plain read, as the RTU test does.
    tests::eventually(
        std::time::Duration::from_secs(20),
        "pymodbus answering over TCP",
        || {
            let out = edge_agent()
                .args(["modbus", "read", "--link", &format!("tcp:{modbus}")])
                .args(["--unit", "3", "--table", "input", "--address", "0"])
                .args(["--timeout-ms", "1000"])
                .output()
                .unwrap();
            out.status.success().then_some(())
        },
    );

    let out = edge_agent()
        .args([
            "modbus",
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

    // modbus read: the f32 in CDAB order shows its value on the CDAB line.
    let out = edge_agent()
        .args([
            "modbus",
            "read",
            "--link",
            &format!("tcp:{modbus}"),
            "--unit",
            "3",
            "--table",
            "input",
        ])
        .args(["--address", "0", "--type", "f32"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cdab = stdout.lines().find(|l| l.contains("f32 CDAB")).unwrap();
    assert!(cdab.ends_with(" 230.5"), "{stdout}");
    assert!(
        !stdout
            .lines()
            .find(|l| l.contains("f32 ABCD"))
            .unwrap()
            .ends_with(" 230.5"),
        "{stdout}"
    );
    // With the profile's field the plausible one is marked.
    let out = edge_agent()
        .args([
            "modbus",
            "read",
            "--link",
            &format!("tcp:{modbus}"),
            "--unit",
            "3",
            "--profile",
            "test-meter",
        ])
        .args(["--metric", "voltage", "--profiles"])
        .arg(tests::test_profiles())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("f32 CDAB  230.5 V  ← in range")),
        "{stdout}"
    );

    // modbus write: a u32 in DCBA order, written and read back.
    let out = edge_agent()
        .args([
            "modbus",
            "write",
            "--link",
            &format!("tcp:{modbus}"),
            "--unit",
            "7",
            "--table",
            "holding",
        ])
        .args([
            "--address",
            "20",
            "--type",
            "u32",
            "--order",
            "DCBA",
            "--value",
            "305419896",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("wrote 7856 3412") && stdout.ends_with("= 305419896.0\n"),
        "{stdout}"
    );

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

#[test]
fn scan_on_an_rtu_bus_lists_exactly_the_served_units() {
    let dir = tempfile::tempdir().unwrap();
    let (_socat, device_end, agent_end) = tests::socat_pty_pair(dir.path());
    let _device = tests::pymodbus_rtu(
        &device_end,
        &json!({ "2": tests::test_meter_registers(1.0), "5": tests::test_meter_registers(2.0), "6": tests::test_meter_registers(3.0) }),
        dir.path(),
    );
    let link = format!("rtu:{}:9600:8N1", agent_end.display());
    // pymodbus needs a moment to open its end of the line: wait until unit 2 answers a plain read.
    tests::eventually(
        std::time::Duration::from_secs(20),
        "pymodbus answering on the pty",
        || {
            let out = edge_agent()
                .args([
                    "modbus", "read", "--link", &link, "--unit", "2", "--table", "input",
                ])
                .args(["--address", "0", "--timeout-ms", "200"])
                .output()
                .unwrap();
            out.status.success().then_some(())
        },
    );
    let out = edge_agent()
        .args([
            "modbus",
            "scan",
            "--link",
            &link,
            "--units",
            "1-8",
            "--register",
            "input:0",
        ])
        .args(["--timeout-ms", "150"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    let units: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(units, ["2", "5", "6"], "{stdout}");
}
