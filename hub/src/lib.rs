//! The hub: takes in every gateway's data over MQTT, stores it, and serves it over HTTP.
//!
//! ```text
//! MQTT (embedded rumqttd, or an external broker) ─▶ ingest (decode, check, dedupe) ─▶ store (SQLite)
//!                                                                        HTTP API ◀─┘
//! ```
//! [`start`] wires the stages and returns a handle whose [`RunningHub::stop`] shuts them down in
//! pipeline order: stop taking messages, stop serving, then write and acknowledge what was taken.

pub mod access;
pub mod api;
pub mod assessment;
pub mod broker;
pub mod cluster;
pub mod commands;
pub mod console;
pub mod db;
pub mod demo;
pub mod evidence;
pub mod fleet;
pub mod influx;
pub mod ingest;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod rules;
pub mod store;
pub mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use protocol::{Limits, TopicScheme};
use tokio_util::sync::CancellationToken;

pub use firmware_config::Broker;

/// Where the hub's MQTT broker is.
#[derive(Debug, Clone)]
pub enum MqttMode {
    /// Run rumqttd inside the hub, listening here.
    Embedded { listen: SocketAddr },
    /// Be a client of an existing broker (Mosquitto, EMQX).
    External {
        url: Broker,
        username: Option<String>,
        password: Option<String>,
        /// CA and client certificate for `mqtts://` (system roots and no client certificate when
        /// `None`).
        tls: Option<firmware_config::TlsSpec>,
    },
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// HTTP API address; port 0 picks a free port (see [`RunningHub::http_addr`]).
    pub http: SocketAddr,
    /// Evidence images, and the SQLite database unless `postgres` is given.
    pub data_dir: PathBuf,
    /// A PostgreSQL database for the relational state (shared by several hub processes) instead
    /// of SQLite: a libpq-style connection string or `postgresql://` URL.
    pub postgres: Option<String>,
    pub mqtt: MqttMode,
    pub topic_root: String,
    /// MQTT client id of the ingest session; keep it stable so the broker keeps the session.
    pub client_id: String,
    /// Whether gateways without a key may send unsigned messages.
    pub auth: keys::AuthPolicy,
    /// `/metrics` needs an API token too (by default it is open, like `/healthz`).
    pub metrics_auth: bool,
    /// Also write every reading and event to this InfluxDB 2.
    pub influx: Option<influx::InfluxConfig>,
    /// How long raw readings, rollups and evidence images are kept.
    pub retention: store::Retention,
    /// Per-gateway message rate limit; `None`: none.
    pub rate_limit: Option<ingest::RateLimit>,
    /// The rules file and the rules' clock.
    pub rules: rules::Setup,
    /// Device profiles beyond the built-in ones, for checking uploaded gateway files.
    pub profiles: Option<PathBuf>,
    /// One of several hub processes sharing the gateways (needs `postgres` and an external
    /// broker); see [`cluster`].
    pub cluster: Option<cluster::ClusterConfig>,
}

impl HubConfig {
    /// A hub serving HTTP on `http`, keeping its data under `data_dir`, with MQTT as `mqtt`; the
    /// rest at its defaults: topic root `city`, signed messages required, `/metrics` open, no
    /// InfluxDB, default retention and per-gateway rate limit.
    pub fn new(http: SocketAddr, data_dir: impl Into<PathBuf>, mqtt: MqttMode) -> Self {
        Self {
            http,
            data_dir: data_dir.into(),
            postgres: None,
            mqtt,
            topic_root: protocol::topic::DEFAULT_ROOT.into(),
            client_id: "hub-ingest".into(),
            auth: keys::AuthPolicy::Required,
            metrics_auth: false,
            influx: None,
            retention: store::Retention::default(),
            rate_limit: Some(ingest::RateLimit::default()),
            rules: rules::Setup::default(),
            profiles: None,
            cluster: None,
        }
    }
}

/// A started hub.
#[derive(Debug)]
pub struct RunningHub {
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    http_stop: CancellationToken,
    ingest: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
    writer: std::thread::JoinHandle<()>,
    /// The rules that raise tasks (see [`rules`]).
    rules: std::thread::JoinHandle<()>,
    /// The notifier (see [`notify`]), when the rules file names channels.
    notifier: Option<std::thread::JoinHandle<()>>,
    /// The cluster's lease supervisor, and what stops it (after ingest and the rules).
    cluster: Option<(std::thread::JoinHandle<()>, CancellationToken)>,
    store: store::Store,
    pub metrics: Arc<metrics::Metrics>,
    own: cluster::Ownership,
}

/// A password for the hub's own login to its embedded broker, new at every start.
fn random_password() -> anyhow::Result<String> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn now_ms() -> i64 {
    protocol::Timestamp::now().unix_millis()
}

/// Starts the broker (embedded mode), the store, ingest and the HTTP API.
pub async fn start(cfg: HubConfig) -> anyhow::Result<RunningHub> {
    let topics = TopicScheme::new(&cfg.topic_root)?;
    // Gateway files uploaded through the API are checked against these profiles.
    let profiles = firmware_config::ProfileSet::builtin()
        .and_then(|p| match &cfg.profiles {
            Some(dir) => p.with_dir(dir),
            None => Ok(p),
        })
        .map_err(|d| anyhow::anyhow!("{}", firmware_config::report(&d)))?;
    let profiles = Arc::new(profiles);
    cfg.retention
        .validate()
        .map_err(|e| anyhow::anyhow!("retention: {e}"))?;
    if let Some(c) = &cfg.cluster {
        c.validate()?;
        anyhow::ensure!(
            cfg.postgres.is_some(),
            "--cluster needs --postgres: the hubs share their state in PostgreSQL"
        );
        anyhow::ensure!(
            matches!(cfg.mqtt, MqttMode::External { .. }),
            "--cluster needs --broker: the hubs share one external broker"
        );
    }
    let limits = Limits::default();
    let metrics = Arc::new(metrics::Metrics::default());
    let live = if cfg.cluster.is_some() {
        live::Live::for_cluster()
    } else {
        live::Live::default()
    };
    let feed = rules::Feed::default();
    let database = store::Database::new(&cfg.data_dir, cfg.postgres.as_deref());
    let (store, writer) = store::Store::open(
        &cfg.data_dir,
        &database,
        metrics.clone(),
        cfg.influx.clone(),
        live.clone(),
        cfg.retention,
        feed.clone(),
    )?;
    let keys = keys::KeyRing::open(&database, cfg.auth)?;
    if cfg.auth == keys::AuthPolicy::AllowUnsigned {
        tracing::warn!("--allow-unsigned: gateways without a key may send unsigned messages");
    }
    tracing::info!(
        gateways_with_keys = keys.gateways_with_keys(),
        "gateway keys loaded"
    );

    let (ingest_cfg, mqtt_addr) = match &cfg.mqtt {
        MqttMode::Embedded { listen } => {
            // Logins are required when messages must be signed: gateways log in with their key.
            let logins = match cfg.auth {
                keys::AuthPolicy::Required => Some(broker::BrokerLogins {
                    keys: keys.clone(),
                    hub_username: format!("{}-{}", cfg.client_id, std::process::id()),
                    hub_password: random_password()?,
                    metrics: metrics.clone(),
                }),
                keys::AuthPolicy::AllowUnsigned => {
                    tracing::warn!("--allow-unsigned: the embedded broker takes anonymous clients");
                    None
                }
            };
            broker::start(*listen, limits.max_payload, logins.clone())?;
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                listen.ip().to_string()
            };
            let ingest = ingest::IngestConfig {
                tls: None,
                host,
                port: listen.port(),
                client_id: cfg.client_id.clone(),
                username: logins.as_ref().map(|l| l.hub_username.clone()),
                password: logins.map(|l| l.hub_password),
                topics: topics.clone(),
                limits,
                keys: keys.clone(),
                rate_limit: cfg.rate_limit,
            };
            (ingest, Some(*listen))
        }
        MqttMode::External {
            url,
            username,
            password,
            tls,
        } => {
            let tls = match (url.tls, tls) {
                (true, spec) => Some(firmware_config::tls::client_config(
                    spec.as_ref(),
                    "broker TLS:",
                )?),
                (false, Some(_)) => anyhow::bail!(
                    "TLS files are given but the broker URL mqtt://{}:{} is not TLS; use mqtts://",
                    url.host,
                    url.port
                ),
                (false, None) => None,
            };
            let ingest = ingest::IngestConfig {
                tls,
                host: url.host.clone(),
                port: url.port,
                client_id: cfg.client_id.clone(),
                username: username.clone(),
                password: password.clone(),
                topics: topics.clone(),
                limits,
                keys: keys.clone(),
                rate_limit: cfg.rate_limit,
            };
            (ingest, None)
        }
    };

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", cfg.http))?;
    let http_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let (outgoing_tx, outgoing_rx) = tokio::sync::mpsc::channel(256);
    let serving = cluster::Serving::default();
    let (own, cluster) = match &cfg.cluster {
        Some(c) => {
            let stop = CancellationToken::new();
            let (own, handle) =
                cluster::start(database.clone(), c.clone(), serving.clone(), stop.clone())?;
            (own, Some((handle, stop)))
        }
        None => (cluster::only_hub(), None),
    };
    let rules = rules::start(
        database.clone(),
        cfg.rules.clone(),
        feed,
        own.clone(),
        live.clone(),
        shutdown.clone(),
    )?;
    let notifier = notify::start(
        database.clone(),
        cfg.rules.rules.cfg.notify.clone(),
        topics.clone(),
        outgoing_tx.clone(),
        shutdown.clone(),
    )?;
    if let Some(c) = &cfg.cluster {
        // The live feed shows the whole city whichever process serves it.
        tokio::spawn(ingest::live_session(
            ingest_cfg.clone(),
            c.hub.clone(),
            live.clone(),
            own.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(live::follow_tasks(
            store.clone(),
            live.clone(),
            shutdown.clone(),
        ));
    }
    let ingest = match &cfg.cluster {
        Some(c) => tokio::spawn(ingest::run_partitions(
            ingest_cfg,
            ingest::Member {
                hub: c.hub.clone(),
                own: own.clone(),
                serving,
            },
            store.clone(),
            metrics.clone(),
            outgoing_rx,
            shutdown.clone(),
        )),
        None => tokio::spawn(ingest::run(
            ingest_cfg,
            store.clone(),
            metrics.clone(),
            outgoing_rx,
            shutdown.clone(),
        )),
    };
    tokio::spawn(fleet::run(
        store.clone(),
        outgoing_tx.clone(),
        topics.clone(),
        metrics.clone(),
        own.clone(),
        shutdown.clone(),
    ));
    let app = api::router(api::ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        evidence: Arc::new(evidence::EvidenceFiles::new(&cfg.data_dir)),
        outgoing: outgoing_tx,
        topics: topics.clone(),
        keys: keys.clone(),
        metrics_auth: cfg.metrics_auth,
        live,
        stopping: http_stop.clone(),
        rules: cfg.rules.rules.clone(),
        profiles: profiles.clone(),
        own: own.clone(),
    });
    let stop = http_stop.clone();
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, data_dir = %cfg.data_dir.display(), ?database, "hub started");
    Ok(RunningHub {
        http_addr,
        mqtt_addr,
        shutdown,
        http_stop,
        ingest,
        http,
        writer,
        rules,
        notifier,
        cluster,
        store,
        metrics,
        own,
    })
}

impl RunningHub {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The embedded broker's address, if the hub runs one.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// The partitions this process holds now (everything without `--cluster`).
    pub fn owned(&self) -> Arc<cluster::Owned> {
        self.own.borrow().clone()
    }

    /// Ordered shutdown: ingest stops taking messages, the HTTP server stops (it holds store
    /// handles), then the store writes and acknowledges everything queued and its writer exits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.ingest.await;
        let RunningHub {
            store,
            writer,
            rules,
            notifier,
            cluster,
            http_stop,
            http,
            ..
        } = self;
        let _ = tokio::task::spawn_blocking(move || rules.join()).await;
        if let Some((handle, stop)) = cluster {
            stop.cancel();
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        if let Some(n) = notifier {
            let _ = tokio::task::spawn_blocking(move || n.join()).await;
        }
        http_stop.cancel();
        let _ = http.await;
        drop(store);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        tracing::info!("hub stopped");
    }
}
