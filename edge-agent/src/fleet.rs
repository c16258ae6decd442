//! Fleet configuration on the gateway: versions pushed by the hub, kept on disk, tried, and kept or
//! rolled back.
//!
//! ```text
//! <data_dir>/config/v7.toml     the pushed files (the newest ten, and the one applied, are kept)
//! <data_dir>/config/state.json  applied version, trial in progress, last failure (written atomically)
//! ```
//!
//! A push ([`protocol::ConfigPush`], signed with the gateway's key) is validated with the same code as
//! `edge-agent config check`; a file that fails is refused and the refusal reported. A valid one is
//! written (temporary file, fsync, rename) and marked *on trial*, and the agent restarts its pipeline
//! with it in-process (the spool is on disk, so nothing is lost). The trial succeeds when the uplink
//! reaches the broker within the trial time (a minute); otherwise, or when the new file cannot start
//! at all, the agent goes back to the previous configuration and reports the rollback in every
//! heartbeat. A trial interrupted by a restart (power cut, crash) is resumed, at most
//! [`MAX_TRIAL_STARTS`] times, so a file that crashes the agent is rolled back too.
//!
//! Which file runs: the hub's newest applied version, unless the local gateway file (the `--config`
//! path, e.g. `/etc/edge-agent/gateway.toml`) has changed since that version was applied. An
//! installer's edit on site therefore wins until the hub pushes a newer version, and the newest
//! decision is always the one in effect. Command-line overrides (`--broker`, `--data-dir`, ...) apply
//! to whichever file runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{
    ConfigFailure, ConfigOutcome, ConfigPush, ConfigReport, ConfigSource, Timestamp,
    config::config_sha256,
};
use serde::{Deserialize, Serialize};

/// Pushed files kept besides the applied one.
pub const KEEP_VERSIONS: usize = 10;
/// How long a new configuration has to reach the broker.
pub const DEFAULT_TRIAL: Duration = Duration::from_secs(60);
/// Starts of one trial (the first and resumptions after a restart) before it is rolled back.
pub const MAX_TRIAL_STARTS: u32 = 3;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// The newest hub version applied (kept after a successful trial).
    applied: Option<Applied>,
    /// A version being tried.
    trial: Option<Trial>,
    /// The newest pushed version not kept.
    failed: Option<ConfigFailure>,
    /// The newest version applied, tried or refused: older or equal pushes are ignored.
    newest_seen: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Applied {
    version: u64,
    sha256: String,
    /// The local file's hash when this version was applied: a different hash now means the local
    /// file was edited since, and wins.
    local_sha256: String,
    at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trial {
    version: u64,
    sha256: String,
    local_sha256: String,
    starts: u32,
}

/// The configuration store in `<data_dir>/config`.
#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    state: State,
}

/// Which file to run, and what to report about it.
#[derive(Debug, Clone)]
pub struct Choice {
    pub path: PathBuf,
    pub report: ConfigReport,
    /// `Some(version)`: the file is on trial.
    pub trial: Option<u64>,
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Written and on trial: restart the pipeline with it.
    Trial(u64),
    /// Not newer than what this gateway has seen: ignored.
    Old,
    /// Invalid here: refused (and reported).
    Refused(String),
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

fn local_sha256(local: &Path) -> String {
    std::fs::read_to_string(local)
        .map(|t| config_sha256(&t))
        .unwrap_or_default()
}

impl ConfigStore {
    /// Opens (creating) the store. A state file that cannot be read is reported and set aside: the
    /// local file then runs, which is always safe.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = dir.join("state.json.corrupt");
                    tracing::error!(file = %path.display(), error = %e, aside = %aside.display(), "configuration state unreadable; set aside, running the local file");
                    let _ = std::fs::rename(&path, &aside);
                    State::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut store = Self {
            dir: dir.to_owned(),
            state,
        };
        // A state file lost or set aside must not make old pushes new again.
        let on_disk = store.versions_on_disk().into_iter().max().unwrap_or(0);
        store.state.newest_seen = store.state.newest_seen.max(on_disk);
        Ok(store)
    }

    /// The version numbers of the `v<N>.toml` files present.
    fn versions_on_disk(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix('v')?.strip_suffix(".toml")?.parse().ok()
            })
            .collect()
    }

    fn file(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version}.toml"))
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join("state.json"), &text)
    }

    /// Saves; a failure (a full or failing card) is logged, and the state holds in memory until
    /// the next save or restart.
    fn save_or_log(&self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot save the configuration state; it holds until the agent restarts");
        }
    }

    /// Decides what runs now, given the local gateway file. Counts a start of a trial in progress,
    /// and rolls it back when it has had [`MAX_TRIAL_STARTS`] starts.
    pub fn choose(&mut self, local: &Path) -> Choice {
        let local_hash = local_sha256(local);
        if let Some(t) = self.state.trial.clone() {
            if t.local_sha256 != local_hash {
                self.fail(
                    ConfigOutcome::RolledBack,
                    "the local gateway file changed during the trial; the local file wins".into(),
                );
            } else if t.starts >= MAX_TRIAL_STARTS {
                self.fail(
                    ConfigOutcome::RolledBack,
                    format!(
                        "started {} times without reaching the broker (the agent restarted during the trial)",
                        t.starts
                    ),
                );
            } else if self.hash_of(t.version).as_deref() != Some(t.sha256.as_str()) {
                self.fail(
                    ConfigOutcome::RolledBack,
                    format!("v{}.toml is missing or changed on disk", t.version),
                );
            } else if let Err(e) = {
                if let Some(t) = self.state.trial.as_mut() {
                    t.starts += 1;
                }
                self.save()
            } {
                // Unrecorded, a trial could outlive restarts unbounded: not tried at all.
                self.fail(
                    ConfigOutcome::RolledBack,
                    format!("cannot record the trial: {e}"),
                );
            } else {
                return Choice {
                    path: self.file(t.version),
                    report: ConfigReport {
                        source: ConfigSource::Hub,
                        version: Some(t.version),
                        sha256: t.sha256.clone(),
                        trial: true,
                        failed: self.state.failed.clone(),
                        newest: self.newest(),
                    },
                    trial: Some(t.version),
                };
            }
        }
        if let Some(a) = &self.state.applied {
            let intact = self.hash_of(a.version).as_deref() == Some(a.sha256.as_str());
            if a.local_sha256 == local_hash && intact {
                return Choice {
                    path: self.file(a.version),
                    report: ConfigReport {
                        source: ConfigSource::Hub,
                        version: Some(a.version),
                        sha256: a.sha256.clone(),
                        trial: false,
                        failed: self.state.failed.clone(),
                        newest: self.newest(),
                    },
                    trial: None,
                };
            }
            if intact {
                tracing::warn!(local = %local.display(), hub_version = a.version, "the local gateway file changed after hub version {} was applied: the local file runs until the hub pushes a newer version", a.version);
            } else {
                tracing::error!(
                    version = a.version,
                    "the applied hub version is missing or changed on disk: running the local file"
                );
            }
        }
        Choice {
            path: local.to_owned(),
            report: ConfigReport {
                source: ConfigSource::Local,
                version: self.state.applied.as_ref().map(|a| a.version),
                sha256: local_hash,
                trial: false,
                failed: self.state.failed.clone(),
                newest: self.newest(),
            },
            trial: None,
        }
    }

    fn hash_of(&self, version: u64) -> Option<String> {
        std::fs::read_to_string(self.file(version))
            .ok()
            .map(|t| config_sha256(&t))
    }

    /// Takes a push: checks it is newer, for this gateway, and valid (`check` runs the same
    /// validation as `edge-agent config check` and returns the problems); writes it and starts a
    /// trial, or records the refusal.
    pub fn stage(
        &mut self,
        push: &ConfigPush,
        gateway: &protocol::GatewayId,
        local: &Path,
        check: impl FnOnce(&Path, &str) -> Result<(), String>,
    ) -> Result<Staged, String> {
        if push.version <= self.state.newest_seen {
            return Ok(Staged::Old);
        }
        let reason = if push.gateway != *gateway {
            Some(format!(
                "the push is for gateway {}, this is {gateway}",
                push.gateway
            ))
        } else {
            let name = self.file(push.version);
            check(&name, &push.toml).err()
        };
        if let Some(reason) = reason {
            self.state.newest_seen = push.version;
            self.state.failed = Some(ConfigFailure {
                version: push.version,
                at: Timestamp::now(),
                outcome: ConfigOutcome::Refused,
                reason: reason.clone(),
            });
            self.save_or_log();
            return Ok(Staged::Refused(reason));
        }
        write_atomic(&self.file(push.version), push.toml.as_bytes())?;
        let before = self.state.clone();
        self.state.newest_seen = push.version;
        self.state.trial = Some(Trial {
            version: push.version,
            sha256: push.sha256.clone(),
            local_sha256: local_sha256(local),
            starts: 0,
        });
        if let Err(e) = self.save() {
            // Not recorded, not tried: the hub pushes it again later.
            self.state = before;
            return Err(e);
        }
        self.prune();
        Ok(Staged::Trial(push.version))
    }

    /// The trial reached the broker: its version is now the applied one.
    pub fn commit(&mut self) -> Result<Option<u64>, String> {
        let Some(t) = self.state.trial.take() else {
            return Ok(None);
        };
        self.state.applied = Some(Applied {
            version: t.version,
            sha256: t.sha256,
            local_sha256: t.local_sha256,
            at: Timestamp::now(),
        });
        self.save()?;
        self.prune();
        Ok(Some(t.version))
    }

    /// Ends the trial in progress as failed; the previous configuration runs next.
    pub fn rollback(&mut self, reason: String) {
        self.fail(ConfigOutcome::RolledBack, reason);
    }

    /// The applied hub version cannot start (a file it names is gone, a port is taken): it is
    /// given up for the local file, and reported as rolled back.
    pub fn abandon(&mut self, reason: String) {
        if let Some(a) = self.state.applied.take() {
            tracing::error!(version = a.version, %reason, "the applied hub configuration cannot start: running the local file");
            self.state.failed = Some(ConfigFailure {
                version: a.version,
                at: Timestamp::now(),
                outcome: ConfigOutcome::RolledBack,
                reason,
            });
            self.save_or_log();
        }
    }

    fn fail(&mut self, outcome: ConfigOutcome, reason: String) {
        if let Some(t) = self.state.trial.take() {
            tracing::error!(version = t.version, %reason, "configuration rolled back");
            self.state.failed = Some(ConfigFailure {
                version: t.version,
                at: Timestamp::now(),
                outcome,
                reason,
            });
            self.save_or_log();
        }
    }

    /// The newest pushed version not kept, for the heartbeat.
    pub fn failed(&self) -> Option<ConfigFailure> {
        self.state.failed.clone()
    }

    /// The newest version number seen, for the heartbeat.
    pub fn newest(&self) -> Option<u64> {
        (self.state.newest_seen > 0).then_some(self.state.newest_seen)
    }

    /// Deletes pushed files beyond the newest [`KEEP_VERSIONS`], never the applied or trial one.
    fn prune(&self) {
        let mut versions = self.versions_on_disk();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let keep = [
            self.state.applied.as_ref().map(|a| a.version),
            self.state.trial.as_ref().map(|t| t.version),
        ];
        for v in versions.into_iter().skip(KEEP_VERSIONS) {
            if !keep.contains(&Some(v)) {
                let _ = std::fs::remove_file(self.file(v));
            }
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: a temporary
/// file, fsync, rename, fsync of the directory. Readable by the agent's user only (a gateway file
/// may hold a broker password).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> protocol::GatewayId {
        protocol::GatewayId::new("gw-01").unwrap()
    }

    fn setup() -> (tempfile::TempDir, PathBuf, ConfigStore) {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("gateway.toml");
        std::fs::write(&local, "local = 1\n").unwrap();
        let store = ConfigStore::open(&d.path().join("config")).unwrap();
        (d, local, store)
    }

    fn ok(_: &Path, _: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn trial_commit_and_restart_keep_the_hub_version() {
        let (d, local, mut s) = setup();
        assert_eq!(s.choose(&local).report.source, ConfigSource::Local);
        let push = ConfigPush::new(gw(), 1, "hub = 1\n".into());
        assert_eq!(s.stage(&push, &gw(), &local, ok).unwrap(), Staged::Trial(1));
        let c = s.choose(&local);
        assert_eq!((c.trial, c.report.trial), (Some(1), true));
        assert_eq!(std::fs::read_to_string(&c.path).unwrap(), "hub = 1\n");
        assert_eq!(s.commit().unwrap(), Some(1));
        // Reopened (agent restart): still the hub's version.
        let mut s = ConfigStore::open(&d.path().join("config")).unwrap();
        let c = s.choose(&local);
        assert_eq!(
            (c.report.source, c.report.version, c.trial),
            (ConfigSource::Hub, Some(1), None)
        );
        // The same version again is ignored.
        assert_eq!(s.stage(&push, &gw(), &local, ok).unwrap(), Staged::Old);
        // An edit of the local file wins over the applied version.
        std::fs::write(&local, "local = 2\n").unwrap();
        let c = s.choose(&local);
        assert_eq!(c.path, local);
        assert_eq!(
            (c.report.source, c.report.version),
            (ConfigSource::Local, Some(1))
        );
        // ... until the hub pushes a newer version.
        let push = ConfigPush::new(gw(), 2, "hub = 2\n".into());
        s.stage(&push, &gw(), &local, ok).unwrap();
        s.commit().unwrap();
        assert_eq!(s.choose(&local).report.version, Some(2));
    }

    #[test]
    fn rollback_refusal_and_interrupted_trials() {
        let (_d, local, mut s) = setup();
        s.stage(&ConfigPush::new(gw(), 1, "a\n".into()), &gw(), &local, ok)
            .unwrap();
        s.commit().unwrap();
        s.stage(&ConfigPush::new(gw(), 2, "b\n".into()), &gw(), &local, ok)
            .unwrap();
        s.rollback("no broker".into());
        let c = s.choose(&local);
        assert_eq!(c.report.version, Some(1));
        let f = c.report.failed.unwrap();
        assert_eq!((f.version, f.outcome), (2, ConfigOutcome::RolledBack));
        // An invalid file is refused, and the version is not taken again.
        let bad = ConfigPush::new(gw(), 3, "c\n".into());
        let r = s
            .stage(&bad, &gw(), &local, |_, _| Err("line 1: bad".into()))
            .unwrap();
        assert_eq!(r, Staged::Refused("line 1: bad".into()));
        assert_eq!(s.failed().unwrap().outcome, ConfigOutcome::Refused);
        assert_eq!(s.stage(&bad, &gw(), &local, ok).unwrap(), Staged::Old);
        // Another gateway's file is refused.
        let other = protocol::GatewayId::new("gw-02").unwrap();
        let r = s
            .stage(&ConfigPush::new(other, 4, "d\n".into()), &gw(), &local, ok)
            .unwrap();
        assert!(matches!(r, Staged::Refused(m) if m.contains("gw-02")));
        // A trial that keeps being interrupted is rolled back on the fourth start.
        s.stage(&ConfigPush::new(gw(), 5, "e\n".into()), &gw(), &local, ok)
            .unwrap();
        for _ in 0..MAX_TRIAL_STARTS {
            assert_eq!(s.choose(&local).trial, Some(5));
        }
        let c = s.choose(&local);
        assert_eq!((c.trial, c.report.version), (None, Some(1)));
        assert_eq!(c.report.failed.unwrap().version, 5);
    }

    #[test]
    fn keeps_the_newest_ten_and_the_applied_one() {
        let (d, local, mut s) = setup();
        s.stage(&ConfigPush::new(gw(), 1, "1\n".into()), &gw(), &local, ok)
            .unwrap();
        s.commit().unwrap();
        for v in 2..=15 {
            s.stage(
                &ConfigPush::new(gw(), v, format!("{v}\n")),
                &gw(),
                &local,
                ok,
            )
            .unwrap();
            s.rollback("x".into());
        }
        let mut kept: Vec<String> = std::fs::read_dir(d.path().join("config"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        kept.sort();
        assert_eq!(kept.len(), KEEP_VERSIONS + 1, "{kept:?}");
        assert!(kept.contains(&"v1.toml".to_string()));
        assert!(!kept.contains(&"v5.toml".to_string()));
    }

    #[test]
    fn a_corrupt_state_file_is_set_aside_and_old_pushes_stay_old() {
        let (d, local, mut s) = setup();
        s.stage(&ConfigPush::new(gw(), 7, "a\n".into()), &gw(), &local, ok)
            .unwrap();
        std::fs::write(d.path().join("config/state.json"), "{not json").unwrap();
        let mut s = ConfigStore::open(&d.path().join("config")).unwrap();
        assert_eq!(s.choose(&local).report.source, ConfigSource::Local);
        assert!(d.path().join("config/state.json.corrupt").exists());
        // v7.toml on disk: a replayed v7 (or older) is not taken again.
        assert_eq!(s.newest(), Some(7));
        let replay = ConfigPush::new(gw(), 7, "a\n".into());
        assert_eq!(s.stage(&replay, &gw(), &local, ok).unwrap(), Staged::Old);
    }

    #[test]
    fn an_applied_version_that_cannot_start_is_given_up_for_the_local_file() {
        let (_d, local, mut s) = setup();
        s.stage(&ConfigPush::new(gw(), 1, "a\n".into()), &gw(), &local, ok)
            .unwrap();
        s.commit().unwrap();
        assert_eq!(s.choose(&local).report.source, ConfigSource::Hub);
        s.abandon("cannot start: port in use".into());
        let c = s.choose(&local);
        assert_eq!((c.report.source, c.path), (ConfigSource::Local, local));
        let f = c.report.failed.unwrap();
        assert_eq!((f.version, f.outcome), (1, ConfigOutcome::RolledBack));
    }
}
