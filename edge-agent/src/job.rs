//! What the agent runs, resolved from the gateway file: one [`BusSetup`] per bus with its link and
//! device jobs, and the uplink settings. Also turns a device's responses into readings (decode per
//! profile, derived values, quality).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use firmware_config::{Device, GatewayConfig, Link, ProfileSet, ReadRequest};
use protocol::{BadReason, Item, Quality, Reading, Timestamp, TopicScheme};

use crate::AgentOptions;
use crate::modbus::client::{ClientLink, Transport};
use crate::modbus::link::{LinkError, Registers};
use crate::report::ReportFilter;
use crate::uplink::UplinkConfig;

/// One device's polling job.
#[derive(Debug, Clone)]
pub struct DeviceJob {
    pub device: protocol::DeviceId,
    pub unit: u8,
    pub poll: Duration,
    pub requests: Vec<ReadRequest>,
    resolved: Arc<Device>,
    report: ReportFilter,
}

#[derive(Debug)]
pub struct BusSetup {
    pub name: String,
    pub link: ClientLink,
    pub pause: Duration,
    pub jobs: Vec<DeviceJob>,
}

#[derive(Debug)]
pub struct Setup {
    pub buses: Vec<BusSetup>,
    pub mqtt_sources: Vec<firmware_config::MqttSource>,
    /// Local rules.
    pub rules: Vec<firmware_config::rules::Rule>,
    /// Cameras, their endpoint and evidence store; `None` without cameras.
    pub cameras: Option<firmware_config::CameraSetup>,
    /// Inputs, counters and relay outputs on the GPIO header, if configured.
    pub gpio: Option<firmware_config::Gpio>,
    /// Longest silence of a metric with a deadband.
    pub max_silent: Duration,
    pub uplink: UplinkConfig,
    pub spool: SpoolSetup,
    /// Where the status endpoint listens.
    pub status_listen: std::net::SocketAddr,
}

/// Where the spool lives and its budgets.
#[derive(Debug, Clone)]
pub struct SpoolSetup {
    pub dir: std::path::PathBuf,
    pub event: crate::spool::Budget,
    pub bulk: crate::spool::Budget,
}

/// The Modbus link of a configured bus.
pub fn link_for(bus: &firmware_config::Bus) -> ClientLink {
    let transport = match &bus.link {
        Link::Tcp { addr } => Transport::Tcp { host: addr.clone() },
        Link::Rtu { port, line } => Transport::RtuSerial {
            port: port.clone(),
            line: *line,
        },
        Link::RtuOverTcp { addr, line } => Transport::RtuOverTcp {
            host: addr.clone(),
            line: *line,
        },
    };
    // A link opens once for all devices of its bus: wait as long as the slowest needs.
    let pause_after_connect = bus
        .devices
        .iter()
        .map(|d| d.knobs.pause_after_connect_ms)
        .max()
        .unwrap_or(0);
    ClientLink::new(
        transport,
        Duration::from_millis(u64::from(bus.timeout_ms)),
        Duration::from_millis(u64::from(pause_after_connect)),
    )
}

/// Loads the built-in profiles plus `dir`, reporting every problem as file:line:column.
pub fn profiles(dir: Option<&std::path::Path>) -> anyhow::Result<ProfileSet> {
    let set = ProfileSet::builtin().map_err(diagnostics)?;
    match dir {
        Some(d) => set.with_dir(d).map_err(diagnostics),
        None => Ok(set),
    }
}

/// Diagnostics as one error, one per line.
pub fn diagnostics(d: Vec<firmware_config::Diagnostic>) -> anyhow::Error {
    anyhow::Error::msg(firmware_config::report(&d))
}

impl Setup {
    /// Loads `opts.config` with `profiles` (built-in plus `--profiles`, read once at start).
    pub fn load(opts: &AgentOptions, profiles: &ProfileSet) -> anyhow::Result<Setup> {
        let config = firmware_config::load_gateway(&opts.config, profiles).map_err(diagnostics)?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        Self::from_config(config, opts)
    }

    pub(crate) fn from_config(config: GatewayConfig, opts: &AgentOptions) -> anyhow::Result<Setup> {
        let broker = match &opts.broker {
            Some(url) => firmware_config::Broker::parse(url).map_err(anyhow::Error::msg)?,
            None => config.uplink.broker.clone(),
        };
        let tls = if broker.tls {
            Some(firmware_config::tls::client_config(
                config.uplink.tls.as_ref(),
                "[uplink.tls]",
            )?)
        } else {
            None
        };
        let password = match (&config.uplink.password, &config.uplink.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read uplink.password_file {}", f.display()))?
                    .trim_end()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let mut cameras = config.cameras.clone();
        if let Some(c) = &mut cameras {
            if let Some(url) = &opts.hub_url {
                c.hub_url = Some(url.trim_end_matches('/').to_owned());
            }
            if let Some(dir) = &opts.data_dir {
                c.evidence_dir = dir.join("evidence");
            }
            if let Some(listen) = &opts.camera_listen {
                c.listen = listen
                    .parse()
                    .with_context(|| format!("--camera-listen {listen:?}"))?;
            }
            anyhow::ensure!(
                !c.hub_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
                "{}: evidence hub_url over https:// is not supported by this build yet; use http:// on a private network",
                config.file.display()
            );
        }
        let mut buses = Vec::new();
        for bus in &config.buses {
            let link = link_for(bus);
            let max_silent = Duration::from_secs(u64::from(config.agent.max_silent_s));
            let jobs = bus
                .devices
                .iter()
                .map(|d| DeviceJob {
                    device: d.id.clone(),
                    unit: d.unit,
                    poll: Duration::from_millis(u64::from(d.poll_ms)),
                    requests: d.requests.clone(),
                    resolved: Arc::new(d.clone()),
                    report: ReportFilter::new(deadbands(d), max_silent),
                })
                .collect();
            buses.push(BusSetup {
                name: bus.name.clone(),
                link,
                pause: Duration::from_millis(u64::from(bus.pause_ms)),
                jobs,
            });
        }
        let key = load_key(
            opts.key_file.as_ref().or(config.uplink.key_file.as_ref()),
            &config.gateway,
        )?;
        // No login configured but a key: log in as the gateway with the password derived from
        // the key (what the hub's embedded broker expects; see protocol::auth::broker_password).
        let (username, password) = match (&config.uplink.username, password, &key) {
            (None, None, Some(k)) => (
                Some(config.gateway.to_string()),
                Some(protocol::auth::broker_password(k, config.gateway.as_str())),
            ),
            (user, password, _) => (user.clone(), password),
        };
        let mut uplink = UplinkConfig {
            host: broker.host.clone(),
            port: broker.port,
            client_id: config.uplink.client_id.clone(),
            username,
            password,
            keep_alive: Duration::from_secs(u64::from(config.uplink.keep_alive_s.max(5))),
            topics: TopicScheme::new(&config.uplink.topic_root)?,
            gateway: config.gateway.clone(),
            batch_max_items: config.agent.batch_max_items.max(1) as usize,
            batch_max_wait: Duration::from_millis(u64::from(config.agent.batch_max_wait_ms)),
            heartbeat: Duration::from_secs(u64::from(config.agent.heartbeat_s.max(1))),
            clock: opts.clock,
            devices: config.inventory(),
            config_version: Some(config_version(&opts.config)),
            tls,
            data_dir: None,
            replay_items_per_s: config.agent.replay_items_per_s,
            ack_timeout: Duration::from_secs(u64::from(config.agent.ack_timeout_s)),
            key,
        };
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| config.agent.data_dir.clone());
        let a = &config.agent;
        let mb = |m: u32| u64::from(m) * 1024 * 1024;
        let hours = |h: u32| Duration::from_secs(u64::from(h) * 3600);
        uplink.data_dir = Some(data_dir.clone());
        let spool = SpoolSetup {
            dir: data_dir.join("spool"),
            event: crate::spool::Budget {
                max_bytes: mb(a.spool_event_max_mb),
                max_age: hours(a.spool_event_max_age_h),
                segment_bytes: (mb(a.spool_event_max_mb) / 16).clamp(64 * 1024, 4 * 1024 * 1024),
            },
            bulk: crate::spool::Budget {
                max_bytes: mb(a.spool_bulk_max_mb),
                max_age: hours(a.spool_bulk_max_age_h),
                segment_bytes: (mb(a.spool_bulk_max_mb) / 16).clamp(256 * 1024, 16 * 1024 * 1024),
            },
        };
        Ok(Setup {
            buses,
            mqtt_sources: config.mqtt_sources.clone(),
            cameras,
            rules: config.rules.clone(),
            spool,
            status_listen: opts
                .status_listen
                .as_deref()
                .unwrap_or(&config.agent.status_listen)
                .parse()
                .with_context(|| "status_listen: not an address:port".to_owned())?,
            gpio: config.gpio.clone(),
            max_silent: Duration::from_secs(u64::from(config.agent.max_silent_s)),
            uplink,
        })
    }
}

/// A short content hash of the gateway file, reported in the presence message so the hub can tell
/// which configuration each gateway runs (the heartbeat carries the full hash and its source).
fn config_version(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let sha = protocol::config::config_sha256(&text);
    format!("sha256:{}", &sha[..16])
}

/// The deadband of each metric of `d` that has one (fields and derived values).
fn deadbands(d: &Device) -> std::collections::HashMap<protocol::MetricId, f64> {
    let fields = d
        .profile
        .fields
        .iter()
        .filter_map(|f| f.deadband.map(|b| (f.metric.clone(), b)));
    let derived = d
        .profile
        .derived
        .iter()
        .filter_map(|x| x.deadband.map(|b| (x.metric.clone(), b)));
    fields.chain(derived).collect()
}

impl DeviceJob {
    /// The device as configured (profile, unit, knobs).
    pub fn device(&self) -> &Device {
        &self.resolved
    }

    /// Forgets what was reported, so that every value is sent again (after the device was down).
    pub fn reset_reports(&mut self) {
        self.report.reset();
    }

    /// Readings from one poll: `responses[i]` answers `requests[i]` (fewer responses than requests
    /// means the rest were not attempted after a link failure).
    pub fn readings(
        &mut self,
        responses: &[Result<Registers, LinkError>],
        at: Timestamp,
    ) -> Vec<Item> {
        let mut decoded = Vec::new();
        let mut items = Vec::new();
        let last_err = responses
            .iter()
            .rev()
            .find_map(|r| r.as_ref().err())
            .cloned();
        for (i, req) in self.requests.iter().enumerate() {
            match responses.get(i) {
                Some(Ok(regs)) => {
                    let raw = regs.raw();
                    decoded.extend(self.resolved.decode(req, raw));
                }
                other => {
                    // The request failed (or was not attempted): its fields are bad with the link's reason.
                    let err = match other {
                        Some(Err(e)) => e.clone(),
                        _ => last_err
                            .clone()
                            .unwrap_or(LinkError::Down("not attempted".into())),
                    };
                    for slot in &req.fields {
                        if let Some(field) = self.resolved.profile.fields.get(slot.field) {
                            items.push(self.bad(
                                field.metric.clone(),
                                field.unit.clone(),
                                at,
                                err.bad_reason(),
                                err.to_string(),
                                None,
                            ));
                        }
                    }
                }
            }
        }
        let derived = self.resolved.derive(&decoded);
        for d in decoded.into_iter().chain(derived) {
            let item = match d.outcome {
                Ok(value) => Item::Reading(Reading {
                    device: self.device.clone(),
                    metric: d.metric,
                    observed_at: at,
                    value: Some(value),
                    unit: d.unit,
                    quality: Quality::Good,
                }),
                Err(problem) => self.bad(
                    d.metric,
                    d.unit,
                    at,
                    problem.reason(),
                    problem.to_string(),
                    problem.value(),
                ),
            };
            items.push(item);
        }
        let now = std::time::Instant::now();
        items.retain(|item| match item {
            Item::Reading(r) => self
                .report
                .admit(&r.metric, r.value.as_ref(), &r.quality, now),
            Item::Event(_) => true,
        });
        items
    }

    fn bad(
        &self,
        metric: protocol::MetricId,
        unit: Option<protocol::Unit>,
        at: Timestamp,
        reason: BadReason,
        detail: String,
        value: Option<protocol::Value>,
    ) -> Item {
        Item::Reading(Reading {
            device: self.device.clone(),
            metric,
            observed_at: at,
            value,
            unit,
            quality: Quality::Bad {
                reason,
                detail: Some(detail.chars().take(200).collect()),
            },
        })
    }
}

/// The gateway's message key from its key file, checked to be this gateway's.
fn load_key(
    file: Option<&std::path::PathBuf>,
    gateway: &protocol::GatewayId,
) -> anyhow::Result<Option<protocol::auth::Key>> {
    let Some(file) = file else {
        tracing::warn!(
            "no key_file: messages go unsigned, and the hub takes them only with --allow-unsigned"
        );
        return Ok(None);
    };
    let k = firmware_config::keyfile::read_key_file(file)
        .map_err(|d| anyhow::anyhow!("{}:{}: {}", d.file.display(), d.line, d.message))?;
    anyhow::ensure!(
        k.gateway == *gateway,
        "{} is the key of gateway {}, not of {gateway}",
        file.display(),
        k.gateway
    );
    tracing::info!(key = %k.key.id, "messages are signed");
    Ok(Some(k.key))
}
