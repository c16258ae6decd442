//! `hub demo`: a town in a box. Starts simulated field devices served over Modbus TCP on loopback
//! (as the example gateway files describe them), the hub on embedded defaults, and one real
//! `edge-agent` process per gateway file — the same binary and code path a Raspberry Pi runs.
//! Simulated cameras post to the agents over HTTP, and one gateway's uplink runs through a relay
//! that goes dark for a while. What happens when, and the tasks the hub must raise for it, is the
//! day's plan ([`scenario`]), written to `<data dir>/demo-scenarios.json`.

pub mod agents;
pub mod cameras;
pub mod modbus_sim;
pub mod outage;
pub mod scenario;
pub mod town;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use firmware_config::{GatewayConfig, Link, ProfileSet};
use tokio_util::sync::CancellationToken;

use crate::{HubConfig, MqttMode};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub gateways_dir: PathBuf,
    pub agent_bin: Option<PathBuf>,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Simulated hour of day at start.
    pub start_hour: f64,
    pub seed: u64,
}

/// Loads every `*.toml` gateway file of `dir`, in name order.
pub fn load_gateways(dir: &std::path::Path) -> anyhow::Result<Vec<GatewayConfig>> {
    let profiles = ProfileSet::builtin().map_err(diagnostics)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read gateway directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no gateway files (*.toml) in {}",
        dir.display()
    );
    files
        .iter()
        .map(|f| firmware_config::load_gateway(f, &profiles).map_err(diagnostics))
        .collect()
}

fn diagnostics(d: Vec<firmware_config::Diagnostic>) -> anyhow::Error {
    anyhow::Error::msg(firmware_config::report(&d))
}

/// Builds the simulated buses for `gateways`: one per TCP bus, keyed by its address.
pub fn simulate(
    gateways: &[GatewayConfig],
    clock: &town::SimClock,
    seed: u64,
    sun: impl Fn(f64, f64) -> Option<(f64, f64)>,
) -> anyhow::Result<Vec<(SocketAddr, modbus_sim::SimBus)>> {
    let start_hour = clock.start_s() / 3600.0;
    let numbers: BTreeMap<(&str, &str), u32> = town::numbered(gateways)
        .into_iter()
        .map(|(gw, d, n)| ((gw.gateway.as_str(), d.id.as_str()), n))
        .collect();
    let mut buses = Vec::new();
    for gw in gateways {
        for bus in &gw.buses {
            let Link::Tcp { addr } = &bus.link else {
                anyhow::bail!(
                    "{}: bus {:?}: the demo simulates Modbus TCP buses only",
                    gw.file.display(),
                    bus.name
                );
            };
            let addr: SocketAddr = addr
                .parse()
                .ok()
                .filter(|a: &SocketAddr| a.ip().is_loopback())
                .with_context(|| format!("{}: bus {:?}: the demo serves devices on loopback; host must be 127.0.0.1:PORT, not {addr}", gw.file.display(), bus.name))?;
            let mut units = BTreeMap::new();
            for d in &bus.devices {
                let index = numbers[&(gw.gateway.as_str(), d.id.as_str())];
                let mut model = town::SimDevice::new(d.kind, index, d.params.clone(), seed)
                    .with_sun(sun(d.location.lat(), d.location.lon()).unwrap_or(town::DEFAULT_SUN));
                if (d.kind, index) == (protocol::AssetKind::SmartBin, town::DYING_BIN.0) {
                    model = model.dying_at((start_hour + town::DYING_BIN.1) * 3600.0);
                }
                units.insert(d.unit, modbus_sim::SimUnit::new(d.clone(), model));
            }
            buses.push((
                addr,
                modbus_sim::SimBus {
                    units,
                    clock: clock.clone(),
                },
            ));
        }
    }
    Ok(buses)
}

/// Runs the demo until `shutdown` resolves, then stops agents, hub and devices in that order.
pub async fn run(
    mut cfg: HubConfig,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let MqttMode::Embedded { listen } = cfg.mqtt else {
        anyhow::bail!("the demo runs the embedded broker");
    };
    let bin = agents::locate(opts.agent_bin.as_deref())?;
    let mut gateways = load_gateways(&opts.gateways_dir)?;
    let devices_stop = CancellationToken::new();
    // The town lives `speed` times faster than the clock its devices stamp readings with; the
    // rules are told, so "water above 15 cm for 5 minutes" means 5 minutes of the town's time.
    let now = crate::now_ms();
    let offset_ms = i64::from(cfg.rules.rules.offset_s) * 1000;
    let midnight = now - (now + offset_ms).rem_euclid(86_400_000);
    cfg.rules.clock = crate::rules::RuleClock {
        real0: now,
        rule0: midnight + (opts.start_hour * 3_600_000.0) as i64,
        speed: opts.speed,
    };
    let day = (midnight + offset_ms) / 86_400_000;
    let sun = |lat: f64, lon: f64| {
        let (rise, set) = crate::rules::sun::rise_set(lat, lon, day)?;
        let hour = |ms: i64| (ms - midnight) as f64 / 3_600_000.0;
        Some((hour(rise), hour(set)))
    };
    let clock = town::SimClock::new(opts.start_hour, opts.speed);
    let buses = simulate(&gateways, &clock, opts.seed, sun)?;
    // The day's scenarios and the tasks each must raise, for the log and for the system test.
    let plan = scenario::Town {
        gateways: &gateways,
        rules: &cfg.rules.rules,
        start_hour: opts.start_hour,
        clock: cfg.rules.clock,
        midnight,
        sun: &sun,
    }
    .plan();
    for line in plan.summary() {
        tracing::info!("scenario {line}");
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    std::fs::write(
        cfg.data_dir.join("demo-scenarios.json"),
        serde_json::to_vec_pretty(&plan)?,
    )?;
    let (n_buses, n_units) = (
        buses.len(),
        buses.iter().map(|(_, b)| b.units.len()).sum::<usize>(),
    );
    for (addr, bus) in buses {
        modbus_sim::serve(addr, Arc::new(bus), devices_stop.clone()).await?;
    }
    tracing::info!(
        buses = n_buses,
        devices = n_units,
        speed = opts.speed,
        "simulated field devices listening"
    );

    let agents_dir = cfg.data_dir.join("agents");
    // Every gateway gets its message key, as an installer would give it with `hub keys add`.
    let mut key_files = Vec::new();
    let database = crate::store::Database::new(&cfg.data_dir, cfg.postgres.as_deref());
    {
        let admin = crate::keys::KeyAdmin::open(&database)?;
        for gw in &gateways {
            let key = admin.ensure(&gw.gateway)?;
            let dir = agents_dir.join(gw.gateway.as_str());
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("gateway.key");
            std::fs::write(
                &file,
                firmware_config::keyfile::key_file_text(&gw.gateway, &key),
            )?;
            #[cfg(unix)]
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            key_files.push(file);
        }
    }
    // An admin token for this run (the previous run's is revoked), in a file and in the URL printed.
    let token = {
        let tokens = crate::access::TokenAdmin::open(&database)?;
        let _ = tokens.revoke("demo-admin");
        tokens.add("demo-admin", crate::access::Role::Admin, None)?
    };
    let token_file = cfg.data_dir.join("demo-admin.token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    #[cfg(unix)]
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let hub = crate::start(cfg).await?;
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let broker = format!("mqtt://{host}:{}", listen.port());
    // One gateway's uplink goes through a relay that the scenario cuts for a while.
    let outage = match (
        scenario::outage_gateway(&gateways),
        clock.instant_at(clock.start_s() + scenario::OUTAGE.0 * 3600.0),
        clock.instant_at(clock.start_s() + (scenario::OUTAGE.0 + scenario::OUTAGE.1) * 3600.0),
    ) {
        (Some(gw), Some(down), Some(up)) => {
            let upstream = SocketAddr::new(host.parse()?, listen.port());
            let relay = outage::relay(upstream, (down, up), devices_stop.clone()).await?;
            Some((gw, format!("mqtt://{relay}")))
        }
        _ => None,
    };
    let mut http = hub.http_addr();
    if http.ip().is_unspecified() {
        http.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let hub_url = format!("http://{http}");
    let mut procs = Vec::new();
    for (gw, key) in gateways.iter_mut().zip(&key_files) {
        // Each agent's spool and evidence under the demo's data directory.
        let data = agents_dir.join(gw.gateway.as_str());
        let listen = agents::Listen {
            status: agents::free_loopback()?,
            cameras: match gw.cameras.as_mut() {
                Some(setup) => {
                    // The simulated cameras post where the agent really listens.
                    setup.listen = agents::free_loopback()?;
                    Some(setup.listen)
                }
                None => None,
            },
        };
        tracing::info!(gateway = %gw.gateway, status = %listen.status, cameras = ?listen.cameras, "starting the gateway's agent");
        let broker = match &outage {
            Some((id, relay)) if *id == gw.gateway.as_str() => relay,
            _ => &broker,
        };
        procs.push(agents::spawn(
            &bin, &gw.file, broker, &hub_url, &data, key, &listen,
        )?);
    }
    let cams = cameras::start(
        &gateways,
        scenario::CAMERA_EVERY,
        &clock,
        opts.seed,
        devices_stop.clone(),
    );
    tracing::info!(cameras = cams, "simulated cameras posting to their agents");
    tracing::info!(agents = procs.len(), console = %format!("http://{http}/?token={token}"), api = %format!("http://{http}/api/v1/assets?token={token}"), token_file = %token_file.display(), "demo town running; Ctrl-C stops it");

    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(Duration::from_secs(2));
    let mut reported = vec![false; procs.len()];
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = check.tick() => {
                for (p, done) in procs.iter_mut().zip(reported.iter_mut()) {
                    if let (Some(status), false) = (p.exited(), *done) {
                        tracing::error!(file = %p.gateway_file.display(), %status, "an edge agent exited");
                        *done = true;
                    }
                }
            }
        }
    }
    futures_join(procs.into_iter().map(|p| p.stop(Duration::from_secs(8)))).await;
    hub.stop().await;
    devices_stop.cancel();
    Ok(())
}

async fn futures_join<F: Future<Output = ()> + Send + 'static>(futs: impl Iterator<Item = F>) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}
