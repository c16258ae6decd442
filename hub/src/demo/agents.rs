//! The demo's edge agents: real `edge-agent` processes, one per gateway file, stopped with SIGTERM
//! (the same graceful path as under systemd) and killed if they outlive the deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Finds the edge-agent binary: the given path, else the one next to this executable (cargo puts
/// both in the same target directory).
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(
            p.is_file(),
            "edge-agent binary {} does not exist",
            p.display()
        );
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let candidate = exe.with_file_name(format!("edge-agent{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        candidate.is_file(),
        "edge-agent binary not found at {} — build both programs first: cargo build --release --bins (or pass --agent-bin)",
        candidate.display()
    );
    Ok(candidate)
}

#[derive(Debug)]
pub struct AgentProcess {
    pub gateway_file: PathBuf,
    child: Child,
}

/// Where a demo agent listens: ports picked free at start, so that two demos (or a demo and a
/// real agent) on one machine do not collide on the gateway files' fixed ports.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub status: std::net::SocketAddr,
    pub cameras: Option<std::net::SocketAddr>,
}

/// A free port on loopback (free when asked; the agent binds it a moment later).
pub fn free_loopback() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts one agent for `gateway_file`, publishing to `broker` and uploading evidence to `hub_url`.
pub fn spawn(
    bin: &Path,
    gateway_file: &Path,
    broker: &str,
    hub_url: &str,
    data_dir: &Path,
    key_file: &Path,
    listen: &Listen,
) -> anyhow::Result<AgentProcess> {
    let mut cmd = Command::new(bin);
    cmd.arg("run");
    if let Some(cameras) = listen.cameras {
        cmd.arg("--camera-listen").arg(cameras.to_string());
    }
    let child = cmd
        .arg("--config")
        .arg(gateway_file)
        .arg("--broker")
        .arg(broker)
        .arg("--hub-url")
        .arg(hub_url)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--key-file")
        .arg(key_file)
        .arg("--status-listen")
        .arg(listen.status.to_string())
        // If the demo is killed (SIGKILL gives it no chance to stop its agents), they stop too.
        .arg("--exit-with-parent")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(AgentProcess {
        gateway_file: gateway_file.to_owned(),
        child,
    })
}

impl AgentProcess {
    /// SIGTERM, then SIGKILL after `deadline`.
    pub async fn stop(mut self, deadline: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(deadline, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(file = %self.gateway_file.display(), "agent did not stop in time; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
