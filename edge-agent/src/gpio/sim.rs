//! The simulated backend: pins are files, so tests and the demo drive an agent from outside its
//! process. Input pin N is `{dir}/in/N` holding `0` or `1` (absent: the input's idle level), read every
//! [`POLL`]; output pin N is written to `{dir}/out/N` as `0` or `1` (a temporary file renamed over
//! it, so a reader never sees it half written).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::backend::{GpioBackend, GpioError, InputConfig, InputLine, OutputLine, RawEdge};

/// How often an input file is read.
pub const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct Simulated {
    dir: PathBuf,
}

impl Simulated {
    /// Uses `dir`, creating `dir/in` and `dir/out`.
    pub fn open(dir: &Path) -> Result<Self, GpioError> {
        for sub in ["in", "out"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| GpioError(format!("cannot create {}: {e}", d.display())))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The file of input pin `pin`.
    pub fn input_file(dir: &Path, pin: u8) -> PathBuf {
        dir.join("in").join(pin.to_string())
    }

    /// The file of output pin `pin`.
    pub fn output_file(dir: &Path, pin: u8) -> PathBuf {
        dir.join("out").join(pin.to_string())
    }
}

/// The level in `path`: `idle` when the file is absent, `None` while it is empty (being written).
fn read_level(path: &Path, idle: bool) -> Result<Option<bool>, GpioError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(idle)),
        Err(e) => Err(GpioError(format!("cannot read {}: {e}", path.display()))),
        Ok(s) => match s.trim() {
            "" => Ok(None),
            "0" => Ok(Some(false)),
            "1" => Ok(Some(true)),
            other => Err(GpioError(format!(
                "{} holds {:?}; expected 0 or 1",
                path.display(),
                other.chars().take(20).collect::<String>()
            ))),
        },
    }
}

#[derive(Debug)]
struct SimInput {
    path: PathBuf,
    idle: bool,
    /// The level last read by the polling task.
    last: Arc<AtomicBool>,
    task: AbortHandle,
}

impl Drop for SimInput {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InputLine for SimInput {
    fn is_high(&self) -> Result<bool, GpioError> {
        Ok(read_level(&self.path, self.idle)?.unwrap_or_else(|| self.last.load(Relaxed)))
    }
}

#[derive(Debug)]
struct SimOutput {
    path: PathBuf,
}

/// Distinguishes the temporary files of concurrent writers.
static WRITES: AtomicU64 = AtomicU64::new(0);

impl OutputLine for SimOutput {
    fn set(&mut self, high: bool) -> Result<(), GpioError> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Relaxed)
        ));
        let fail =
            |e: std::io::Error| GpioError(format!("cannot write {}: {e}", self.path.display()));
        std::fs::write(&tmp, if high { "1" } else { "0" }).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })
    }

    fn is_high(&self) -> Result<bool, GpioError> {
        read_level(&self.path, false)?
            .ok_or_else(|| GpioError(format!("{} is empty", self.path.display())))
    }
}

impl GpioBackend for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn input(
        &self,
        input: InputConfig,
        edges: mpsc::Sender<RawEdge>,
    ) -> Result<Box<dyn InputLine>, GpioError> {
        let path = Self::input_file(&self.dir, input.pin);
        let idle = input.idle_high;
        let level = read_level(&path, idle)?.unwrap_or(idle);
        let last = Arc::new(AtomicBool::new(level));
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| GpioError(format!("the simulated backend needs a tokio runtime: {e}")))?;
        let task = runtime.spawn(poll(path.clone(), idle, last.clone(), edges));
        Ok(Box::new(SimInput {
            path,
            idle,
            last,
            task: task.abort_handle(),
        }))
    }

    fn output(&self, pin: u8, high: bool) -> Result<Box<dyn OutputLine>, GpioError> {
        let mut line = SimOutput {
            path: Self::output_file(&self.dir, pin),
        };
        line.set(high)?;
        Ok(Box::new(line))
    }
}

/// Reads `path` every [`POLL`] and sends each change of level.
async fn poll(path: PathBuf, idle: bool, last: Arc<AtomicBool>, edges: mpsc::Sender<RawEdge>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        match read_level(&path, idle) {
            Ok(Some(level)) => {
                warned = false;
                if level != last.swap(level, Relaxed)
                    && edges.send(RawEdge::now(level)).await.is_err()
                {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "simulated input unreadable; keeping its last level");
                    warned = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("5");
        assert_eq!(read_level(&p, true), Ok(Some(true)), "absent: idle");
        assert_eq!(read_level(&p, false), Ok(Some(false)));
        std::fs::write(&p, "1\n").unwrap();
        assert_eq!(read_level(&p, false), Ok(Some(true)));
        std::fs::write(&p, " 0 ").unwrap();
        assert_eq!(read_level(&p, true), Ok(Some(false)));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_level(&p, true), Ok(None), "being written");
        std::fs::write(&p, "open").unwrap();
        let e = read_level(&p, true).unwrap_err();
        assert!(e.0.contains("holds \"open\"; expected 0 or 1"), "{e}");
    }

    #[test]
    fn outputs_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulated::open(&dir.path().join("sim")).unwrap();
        let mut out = sim.output(22, true).unwrap();
        let file = Simulated::output_file(&dir.path().join("sim"), 22);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");
        assert_eq!(out.is_high(), Ok(true));
        out.set(false).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "0");
        assert_eq!(out.is_high(), Ok(false));
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
