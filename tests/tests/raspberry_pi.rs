//! The agent built for 64-bit Raspberry Pi OS (`aarch64-unknown-linux-gnu`, by `./test.sh` with
//! the cross toolchain of `.cargo/config.toml`) run under qemu-user, as a smoke test of the Pi
//! build: it is an aarch64 binary; it checks gateway files as on a Pi; and it polls a real Modbus
//! TCP device (pymodbus) and delivers its readings to a hub, then stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tests::{eventually, free_addr, get_json, pymodbus_tcp, workspace_root};

const TARGET: &str = "aarch64-unknown-linux-gnu";

fn pi_agent() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let bin = target.join(TARGET).join("debug/edge-agent");
    assert!(
        bin.is_file(),
        "{} not built: `cargo build --target {TARGET} -p edge-agent` (./test.sh does)",
        bin.display()
    );
    bin
}

/// `qemu-aarch64 -L /usr/aarch64-linux-gnu <agent>`: Debian's qemu-user with the cross libc.
fn under_qemu(bin: &PathBuf) -> Command {
    let qemu = std::env::var("CITY_PEER_QEMU_AARCH64").unwrap_or_else(|_| "qemu-aarch64".into());
    let mut c = Command::new(qemu);
    c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(bin);
    c
}

#[test]
fn the_raspberry_pi_agent_runs_under_qemu_and_delivers_readings() {
    let bin = pi_agent();
    // An ELF for the Pi's CPU (e_machine 183, AArch64), not for this machine.
    let head = std::fs::read(&bin).unwrap();
    assert_eq!(&head[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([head[18], head[19]]),
        183,
        "not an aarch64 binary"
    );

    let out = under_qemu(&bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge-agent "));

    // An installer's check on the Pi: the shipped gateway files pass; a broken one names its line.
    let gateways = workspace_root().join("firmware-config/gateways");
    let out = under_qemu(&bin)
        .args(["config", "check"])
        .arg(gateways.join("gw-zhongshan-01.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "gateway = \"gw-x\"\n[uplink]\nbroker = \"mqtt://127.0.0.1:1883\"\npoll_ms = \"fast\"\n",
    )
    .unwrap();
    let out = under_qemu(&bin)
        .args(["config", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("broken.toml:4"), "{text}");

    // Field device → Pi agent → hub.
    let modbus = free_addr();
    let _device = pymodbus_tcp(
        modbus.port(),
        &json!({ "7": tests::test_meter_registers(231.5) }),
        dir.path(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub_dir = dir.path().join("hub");
    tests::provision_admin(&hub_dir);
    let _hub = tests::start_embedded_hub(&rt, &hub_dir, http, mqtt);
    let gw = dir.path().join("gw-pi-01.toml");
    std::fs::write(
        &gw,
        format!(
            "{}[agent]\nbatch_max_wait_ms = 200\nheartbeat_s = 1\n\n[[bus]]\nname = \"tcp-1\"\ntype = \"tcp\"\n\
             host = \"127.0.0.1:{}\"\ntimeout_ms = 2000\n\n[[bus.device]]\nid = \"meter-7\"\nunit = 7\n\
             profile = \"test-meter\"\nasset = \"pi-meter-7\"\npoll_ms = 500\n",
            tests::gateway_head("gw-pi-01", &format!("mqtt://{mqtt}")),
            modbus.port()
        ),
    )
    .unwrap();
    let mut agent = under_qemu(&bin)
        .arg("run")
        .arg("--config")
        .arg(&gw)
        .arg("--profiles")
        .arg(tests::test_profiles())
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .args(["--clock", "synced"])
        .arg("--status-listen")
        .arg(free_addr().to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{http}");
    let latest = eventually(
        Duration::from_secs(60),
        "the Pi agent's readings at the hub",
        || {
            let assets = get_json(&format!("{base}/api/v1/assets"))?;
            let a = assets
                .as_array()?
                .iter()
                .find(|a| a["id"] == "pi-meter-7")?
                .clone();
            a["latest"]["voltage"]
                .is_number()
                .then_some(a["latest"].clone())
        },
    );
    assert_eq!(latest["voltage"], 231.5);
    assert_eq!(latest["temperature"], -12.5);
    // qemu-user passes SIGTERM to the agent, which flushes and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = eventually(Duration::from_secs(30), "the agent to stop", || {
        agent.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
}
