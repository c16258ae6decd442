//! The edge agent: the program on each Raspberry Pi gateway.
//!
//! ```text
//! pollers (one task per bus) ─▶ decode per device profile ─▶ uplink (envelopes over MQTT, QoS 1)
//! ```
//! [`run`] loads the gateway file, starts one poller per bus and the uplink, and on shutdown stops the
//! pollers first; the uplink then flushes what they produced and marks the gateway offline.

pub mod camera;
pub mod clock;
pub mod command;
pub mod commands;
pub mod commission;
pub mod evidence;
pub mod fleet;
pub mod gpio;
pub mod health;
pub mod job;
pub mod modbus;
pub mod mqtt_source;
pub mod poller;
pub mod report;
pub mod rules;
pub mod spool;
pub mod status;
pub mod sysinfo;
pub mod uplink;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::ClockSource;

/// How an agent is started (the `edge-agent run` flags).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: PathBuf,
    /// Extra profile directory on top of the built-in profiles.
    pub profiles: Option<PathBuf>,
    /// Overrides the gateway file's broker URL.
    pub broker: Option<String>,
    pub clock: ClockSource,
    /// Overrides `[evidence] hub_url`.
    pub hub_url: Option<String>,
    /// Overrides `[agent] data_dir` (the evidence store goes under it).
    pub data_dir: Option<PathBuf>,
    /// Overrides `[camera_server] listen`.
    pub camera_listen: Option<String>,
    /// Overrides `[agent] status_listen`.
    pub status_listen: Option<String>,
    /// Overrides `[uplink] key_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// How long a configuration pushed by the hub has to reach the broker before it is rolled
    /// back ([`fleet::DEFAULT_TRIAL`]).
    pub config_trial: std::time::Duration,
}

/// Capacity of the channel from the pollers to the uplink, in items. Full: pollers wait.
pub const ITEM_QUEUE: usize = 8192;

/// Runs the agent until `shutdown` is cancelled, then stops in pipeline order.
///
/// The pipeline runs with the configuration [`fleet::ConfigStore::choose`] picks (the local gateway
/// file, or the version the hub pushed), and starts again in-process when the hub pushes a new
/// version or a trial fails (see [`fleet`]).
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The local file says where the data directory (and so the configuration store) is. A broken
    // local file stops the start with every problem located, as `config check` shows them.
    let profiles = job::profiles(opts.profiles.as_deref())?;
    let local = firmware_config::load_gateway(&opts.config, &profiles).map_err(job::diagnostics)?;
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| local.agent.data_dir.clone());
    let dir = data_dir.join("config");
    let store = tokio::task::spawn_blocking(move || fleet::ConfigStore::open(&dir))
        .await?
        .map_err(anyhow::Error::msg)?;
    let fleet = Fleet {
        store: Arc::new(std::sync::Mutex::new(store)),
        local: opts.config.clone(),
        data_dir,
        profiles: Arc::new(profiles),
        started: Arc::new(std::sync::Once::new()),
        shutdown: shutdown.clone(),
    };
    loop {
        let choice = fleet.lock().choose(&opts.config);
        if choice.report.source == protocol::ConfigSource::Hub {
            tracing::info!(file = %choice.path.display(), version = ?choice.report.version, trial = choice.trial.is_some(), "running the configuration pushed by the hub");
        }
        let mut run_opts = opts.clone();
        run_opts.config = choice.path.clone();
        let generation = shutdown.child_token();
        let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (trial, source) = (choice.trial, choice.report.source);
        let result = run_once(
            run_opts,
            generation,
            Generation {
                fleet: fleet.clone(),
                choice,
                reload: reload.clone(),
            },
        )
        .await;
        if shutdown.is_cancelled() {
            return result;
        }
        match result {
            Err(e) if trial.is_some() => fleet.lock().rollback(format!("cannot start: {e:#}")),
            // A hub version that started before and cannot now: the local file is the fallback.
            Err(e) if source == protocol::ConfigSource::Hub => {
                fleet.lock().abandon(format!("cannot start: {e:#}"));
            }
            Err(e) => return Err(e),
            Ok(()) if reload.load(std::sync::atomic::Ordering::SeqCst) => {}
            Ok(()) => return Ok(()),
        }
    }
}

/// What all generations of the pipeline share.
#[derive(Clone)]
struct Fleet {
    store: Arc<std::sync::Mutex<fleet::ConfigStore>>,
    /// The local gateway file (`--config`).
    local: PathBuf,
    /// The data directory the agent started with; a push may not move it.
    data_dir: PathBuf,
    profiles: Arc<firmware_config::ProfileSet>,
    /// Tells systemd the agent is ready, once.
    started: Arc<std::sync::Once>,
    shutdown: CancellationToken,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, fleet::ConfigStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One run of the pipeline with one configuration.
struct Generation {
    fleet: Fleet,
    choice: fleet::Choice,
    /// Set when the pipeline stopped to start again (a new version, a failed trial).
    reload: Arc<std::sync::atomic::AtomicBool>,
}

/// Applies pushes and decides trials while one generation runs; cancels the generation (with
/// `reload` set) when the pipeline must start again.
async fn supervise(
    g: Generation,
    opts: AgentOptions,
    mut pushes: mpsc::Receiver<protocol::ConfigPush>,
    health: Arc<health::Health>,
    gateway: protocol::GatewayId,
    generation: CancellationToken,
) {
    let deadline = g
        .choice
        .trial
        .map(|_| tokio::time::Instant::now() + opts.config_trial);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let restart = |why: &str| {
        tracing::info!("{why}: restarting the pipeline");
        g.reload.store(true, std::sync::atomic::Ordering::SeqCst);
        generation.cancel();
    };
    let mut on_trial = deadline.is_some();
    loop {
        tokio::select! {
            () = generation.cancelled() => return,
            Some(push) = pushes.recv() => {
                let (fleet, gw, opts) = (g.fleet.clone(), gateway.clone(), opts.clone());
                let version = push.version;
                let staged = tokio::task::spawn_blocking(move || {
                    let check = |file: &std::path::Path, text: &str| check_pushed(&fleet, &opts, file, text);
                    let local = fleet.local.clone();
                    fleet.lock().stage(&push, &gw, &local, check)
                })
                .await;
                match staged {
                    Ok(Ok(fleet::Staged::Trial(v))) => {
                        restart(&format!("configuration v{v} from the hub is valid and written"));
                        return;
                    }
                    Ok(Ok(fleet::Staged::Old)) => {
                        tracing::debug!(version, "configuration push not newer than what this gateway has; ignored");
                    }
                    Ok(Ok(fleet::Staged::Refused(reason))) => {
                        tracing::error!(version, %reason, "configuration from the hub refused");
                        let (failed, newest) = {
                            let store = g.fleet.lock();
                            (store.failed(), store.newest())
                        };
                        health.update_config(|r| {
                            r.failed = failed;
                            r.newest = newest;
                        });
                        health.heartbeat_now.notify_one();
                    }
                    Ok(Err(e)) => tracing::error!(version, error = %e, "cannot store the configuration from the hub"),
                    Err(e) => tracing::error!(version, error = %e, "configuration check panicked"),
                }
            }
            _ = tick.tick(), if on_trial => {
                // Kept once the broker has taken the connection and granted the subscriptions the
                // hub reaches the gateway by (a broker whose ACL refuses them is no way back).
                if health.connected.load(std::sync::atomic::Ordering::Relaxed)
                    && health.subscribed.load(std::sync::atomic::Ordering::Relaxed)
                {
                    match g.fleet.lock().commit() {
                        Ok(v) => tracing::info!(version = ?v, "configuration from the hub reached the broker: kept"),
                        Err(e) => tracing::error!(error = %e, "cannot record the configuration as kept; it is tried again at the next start"),
                    }
                    health.update_config(|r| r.trial = false);
                    health.heartbeat_now.notify_one();
                    on_trial = false;
                } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    let why = health.last_uplink_error().unwrap_or_else(|| "no answer".into());
                    let reason = format!(
                        "did not reach the broker within {} s: {why}",
                        opts.config_trial.as_secs()
                    );
                    g.fleet.lock().rollback(reason);
                    restart("configuration rolled back");
                    return;
                }
            }
        }
    }
}

/// The checks a pushed file must pass on this gateway: those of `edge-agent config check`, the
/// files it names (key, password, certificates) readable here, the same gateway id and data directory.
fn check_pushed(
    fleet: &Fleet,
    opts: &AgentOptions,
    file: &std::path::Path,
    text: &str,
) -> Result<(), String> {
    let config = firmware_config::parse_gateway(file, text, &fleet.profiles)
        .map_err(|d| firmware_config::report(&d))?;
    if opts.data_dir.is_none() && config.agent.data_dir != fleet.data_dir {
        return Err(format!(
            "agent.data_dir would move from {} to {}: the spool and evidence stay where they are; change the data directory in the local file on the gateway instead",
            fleet.data_dir.display(),
            config.agent.data_dir.display()
        ));
    }
    // The key must not leave the gateway as a broker password to wherever the file points.
    let key_file = opts.key_file.as_ref().or(config.uplink.key_file.as_ref());
    if let (Some(p), Some(k)) = (&config.uplink.password_file, key_file) {
        let same = match (std::fs::canonicalize(p), std::fs::canonicalize(k)) {
            (Ok(a), Ok(b)) => a == b,
            _ => p == k,
        };
        if same {
            return Err(format!(
                "uplink.password_file {} is the gateway's key file",
                p.display()
            ));
        }
    }
    let mut o = opts.clone();
    o.config = file.to_owned();
    job::Setup::from_config(config, &o)
        .map(drop)
        .map_err(|e| format!("{e:#}"))
}

/// One generation: the pipeline with one configuration, until `shutdown` (the agent's, or a reload).
/// A start that fails part-way stops what it had started.
async fn run_once(
    opts: AgentOptions,
    shutdown: CancellationToken,
    g: Generation,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let result = pipeline(opts, shutdown.clone(), g, &mut tasks).await;
    if result.is_err() {
        // What had started stops and lets go of its pins, ports and stores before anything else
        // starts (the next generation, or the process's exit).
        shutdown.cancel();
        for t in tasks {
            let _ = t.await;
        }
    }
    result
}

/// The pipeline; every task it starts that holds a resource goes into `pollers`, which are awaited
/// at the end (and by [`run_once`] when the start fails part-way).
async fn pipeline(
    opts: AgentOptions,
    shutdown: CancellationToken,
    g: Generation,
    pollers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let setup = job::Setup::load(&opts, &g.fleet.profiles)?;
    let health = Arc::new(health::Health::default());
    health.set_config(g.choice.report.clone());
    let _ = health.config_file.set(g.choice.path.clone());
    // The spool first: a spool that cannot be opened stops the start with the reason.
    let sp = setup.spool.clone();
    let spool = tokio::task::spawn_blocking(move || spool::Spool::open(&sp.dir, sp.event, sp.bulk))
        .await?
        .map_err(|e| anyhow::anyhow!("spool {}: {e}", setup.spool.dir.display()))?;
    let spool = Arc::new(std::sync::Mutex::new(spool));
    let (durable_tx, durable_rx) = mpsc::channel::<uplink::DurableEvent>(256);
    let (tx, rx) = mpsc::channel(ITEM_QUEUE);
    // Commands: uplink ─▶ router ─▶ the poller owning the device's bus ─▶ replies ─▶ uplink.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<protocol::Command>(64);
    let (reply_tx, reply_rx) = mpsc::channel::<protocol::Reply>(64);
    let mut routes = std::collections::HashMap::new();
    let gateway = setup.uplink.gateway.clone();
    if let Some(k) = &setup.uplink.key {
        let _ = health.signing_key.set(k.id.to_string());
    }
    // GPIO first: a backend or pin that cannot be opened stops the start before anything runs.
    let gpio = gpio::start(
        setup.gpio,
        gpio::Wiring {
            gateway: gateway.clone(),
            items: tx.clone(),
            replies: reply_tx.clone(),
            health: health.clone(),
            max_silent: setup.max_silent,
            shutdown: shutdown.clone(),
        },
    )?;
    routes.extend(gpio.routes);
    pollers.extend(gpio.tasks);
    for bus in setup.buses {
        let (bus_tx, bus_rx) = mpsc::channel(16);
        for job in &bus.jobs {
            routes.insert(job.device.clone(), bus_tx.clone());
        }
        let commands = poller::Commands {
            gateway: gateway.clone(),
            rx: bus_rx,
            replies: reply_tx.clone(),
        };
        let (tx, health, shutdown) = (tx.clone(), health.clone(), shutdown.clone());
        pollers.push(tokio::spawn(poller::run(
            bus.link, bus.pause, bus.jobs, tx, commands, health, shutdown,
        )));
    }
    let router = tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            match routes.get(&cmd.device) {
                Some(bus) => {
                    let _ = bus.send(cmd).await;
                }
                None => {
                    let detail = format!("gateway {gateway} has no device {}", cmd.device);
                    let reply = command::reply(
                        &gateway,
                        &cmd,
                        protocol::CommandOutcome::Rejected,
                        Some(detail),
                        None,
                    );
                    let _ = reply_tx.send(reply).await;
                }
            }
        }
    });
    for source in setup.mqtt_sources {
        let (tx, health, shutdown) = (tx.clone(), health.clone(), shutdown.clone());
        pollers.push(tokio::spawn(mqtt_source::run(
            source,
            tx,
            health,
            setup.max_silent,
            shutdown,
        )));
    }
    if let Some(cameras) = &setup.cameras {
        let dir = cameras.evidence_dir.clone();
        let max = cameras.evidence_max_bytes;
        // Upload an image once its event (batched for up to batch_max_wait) has had time to arrive.
        let delay = setup.uplink.batch_max_wait + std::time::Duration::from_millis(500);
        let store =
            tokio::task::spawn_blocking(move || evidence::EvidenceStore::open(&dir, max, delay))
                .await??;
        let store = Arc::new(store);
        let _ = health.evidence.set(store.clone());
        let server =
            camera::CameraServer::bind(cameras, store.clone(), durable_tx.clone(), health.clone())
                .await?;
        pollers.push(tokio::spawn(server.serve(shutdown.clone())));
        if let Some(url) = &cameras.hub_url {
            pollers.push(tokio::spawn(evidence::upload(
                store,
                url.clone(),
                setup.uplink.gateway.clone(),
                setup.uplink.key.clone(),
                shutdown.clone(),
            )));
        }
    }
    let status_server = tokio::spawn(status::serve(
        setup.status_listen,
        health.clone(),
        shutdown.clone(),
    ));
    // The uplink runs until its producers are gone; hold one sender of each until shutdown so a
    // gateway with nothing to poll (heartbeats only) keeps its uplink too.
    let (keep_items, keep_events, sd) = (tx, durable_tx, shutdown.clone());
    tokio::spawn(async move {
        sd.cancelled().await;
        drop((keep_items, keep_events));
    });
    tracing::info!(gateway = %setup.uplink.gateway, buses = pollers.len(), broker = %format!("{}:{}", setup.uplink.host, setup.uplink.port), "edge agent started");
    {
        let parent = g.fleet.shutdown.clone();
        g.fleet.started.call_once(|| systemd_notify(parent));
    }
    let (config_tx, config_rx) = mpsc::channel(1);
    let supervisor = tokio::spawn(supervise(
        g,
        opts.clone(),
        config_rx,
        health.clone(),
        setup.uplink.gateway.clone(),
        shutdown.clone(),
    ));
    // Local rules sit between the producers and the uplink, so they act whatever the uplink does.
    let engine = rules::Engine::new(setup.rules.clone());
    let local_commands = engine.issued.clone();
    let rx = if engine.is_empty() {
        rx
    } else {
        let (rules_tx, rules_rx) = mpsc::channel(ITEM_QUEUE);
        tokio::spawn(rules::run(
            engine,
            setup.uplink.gateway.clone(),
            rx,
            rules_tx,
            cmd_tx.clone(),
        ));
        rules_rx
    };
    // The uplink ends when every poller has stopped and the channel is drained.
    let channels = uplink::Channels {
        items: rx,
        durable: durable_rx,
        commands: cmd_tx,
        replies: reply_rx,
        local_commands,
        configs: config_tx,
    };
    uplink::run(setup.uplink, spool, health, channels).await;
    router.abort();
    for p in pollers.drain(..) {
        let _ = p.await;
    }
    // Before a next generation binds the same ports and opens the same stores.
    let _ = status_server.await;
    let _ = supervisor.await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Under systemd with `Type=notify` (`NOTIFY_SOCKET` set): tells it the agent has started; and
/// while the unit sets `WatchdogSec`, pings the watchdog at half its interval from a task of this
/// runtime, so a runtime that stops running its tasks (a deadlock, a worker blocked on IO) stops
/// the pings and systemd restarts the agent, spool intact. Says `STOPPING=1` on shutdown. Outside
/// systemd it does nothing.
fn systemd_notify(shutdown: CancellationToken) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready");
    }
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec) && usec > 0;
    let every = std::time::Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        if watchdog {
            tracing::info!(
                every_ms = every.as_millis() as u64,
                "pinging the systemd watchdog"
            );
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                    }
                }
            }
        } else {
            shutdown.cancelled().await;
        }
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    });
}
