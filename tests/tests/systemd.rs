//! The agent as its packaged systemd unit runs it (`deploy/debian/edge-agent/edge-agent.service`:
//! `Type=notify`, `WatchdogSec`): the real binary, with a Unix datagram socket standing in for
//! systemd's notify socket. It says READY=1 once started, WATCHDOG=1 at half the interval while it
//! runs, and STOPPING=1 when SIGTERM stops it, then exits cleanly.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{free_addr, gateway_head, workspace_root};

#[test]
fn agent_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = dir.path().join("gw-systemd.toml");
    // No broker listens there: the agent starts (and spools) all the same.
    let broker = free_addr();
    std::fs::write(
        &config,
        gateway_head("gw-systemd", &format!("mqtt://{broker}")),
    )
    .unwrap();
    let agent = workspace_root().join("target/debug/edge-agent");
    assert!(agent.is_file(), "cargo build --bins first (./test.sh does)");
    // systemd sets WATCHDOG_PID to the service's pid: a shell that execs the agent keeps its pid.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$@""#)
        .arg("sh")
        .arg(&agent)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--clock", "synced"])
        .arg("--status-listen")
        .arg(free_addr().to_string())
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = systemd
            .recv(&mut buf)
            .expect("a notification from the agent");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    assert_eq!(recv(), "READY=1");
    for _ in 0..5 {
        assert_eq!(recv(), "WATCHDOG=1");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut last = recv();
    while last == "WATCHDOG=1" {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
