//! `hub`: the central program. See `hub --help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use firmware_config::Broker;
use hub::{HubConfig, MqttMode};

#[derive(Parser)]
#[command(
    name = "hub",
    version,
    about = "City IoT hub: MQTT ingest, storage and HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep the hub's relational state (assets, gateways, tasks, rule state, keys, tokens,
    /// readings) in this PostgreSQL database instead of SQLite under --data-dir, so several hub
    /// processes can share it (docs/SCALING.md). A libpq connection string
    /// ("host=db.example dbname=city user=hub") or URL; give the password in the environment
    /// (HUB_POSTGRES, PGPASSWORD) rather than on the command line.
    #[arg(
        long,
        global = true,
        env = "HUB_POSTGRES",
        value_name = "CONNINFO",
        hide_env_values = true
    )]
    postgres: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Run the hub with a simulated town: field devices served over Modbus TCP on loopback and edge
    /// agents (the edge-agent binary) using the example gateway files.
    Demo(DemoArgs),
    /// Gateway message keys: add, list, revoke, import (works beside a running hub).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// API tokens with roles: add, list, revoke (works beside a running hub).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The rules that raise tasks: check a rules file, show the defaults, backtest over history.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check a rules file; errors name the file, line and what is wrong.
    Check { file: PathBuf },
    /// Print the rules in effect (the defaults of DOMAIN.md, or a file with them filled in), as a
    /// rules file.
    Show {
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
    },
    /// Evaluate the rules over stored history with fresh state and list the tasks they would have
    /// raised, closed and escalated, without doing any of it (works beside a running hub).
    Backtest {
        /// From (RFC 3339, e.g. 2026-11-21T00:00:00+08:00).
        #[arg(long, value_parser = parse_time)]
        from: i64,
        /// To (RFC 3339); now by default.
        #[arg(long, value_parser = parse_time)]
        to: Option<i64>,
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    protocol::Timestamp::parse_rfc3339(s)
        .map(|t| t.unix_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (2026-11-21T08:00:00+08:00): {e}"))
}

fn load_rules(file: Option<&std::path::Path>) -> anyhow::Result<hub::rules::Rules> {
    match file {
        Some(f) => hub::rules::Rules::load(f).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(hub::rules::Rules::defaults()),
    }
}

fn rules(cmd: RulesCommand, postgres: Option<&str>) -> anyhow::Result<()> {
    match cmd {
        RulesCommand::Check { file } => {
            let r = load_rules(Some(&file))?;
            println!(
                "{}: OK ({} zones, {} road segments, {} routes, {} overrides)",
                file.display(),
                r.cfg.zones.len(),
                r.cfg.segments.len(),
                r.cfg.routes.len(),
                r.cfg.overrides.len()
            );
        }
        RulesCommand::Show { rules } => {
            let r = load_rules(rules.as_deref())?;
            print!("{}", toml::to_string(&r.cfg)?);
        }
        RulesCommand::Backtest {
            from,
            to,
            rules,
            data_dir,
            json,
        } => {
            let r = std::sync::Arc::new(load_rules(rules.as_deref())?);
            let to = to.unwrap_or_else(|| protocol::Timestamp::now().unix_millis());
            anyhow::ensure!(from < to, "--from must be before --to");
            let conn = hub::store::Database::new(&data_dir, postgres).connect_and_migrate()?;
            let offset = r.offset_s;
            let actions = hub::rules::backtest(&*conn, r, hub::rules::RuleClock::REAL, from, to)?;
            let local = |ms: i64| {
                protocol::Timestamp::from_unix_millis(ms + i64::from(offset) * 1000)
                    .to_rfc3339()
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " ")
            };
            let mut raised = 0;
            for a in &actions {
                if json {
                    println!("{}", serde_json::to_string(a)?);
                    continue;
                }
                let (what, subject, text) = match a {
                    hub::rules::Action::Raise(r) => {
                        raised += 1;
                        (
                            "raise",
                            r.subject.as_str(),
                            format!("[{}] {}", r.severity, r.title),
                        )
                    }
                    hub::rules::Action::Clear { subject, note, .. } => {
                        ("clear", subject.as_str(), note.clone())
                    }
                    hub::rules::Action::Escalate { subject, note, .. } => {
                        ("escalate", subject.as_str(), note.clone())
                    }
                };
                println!(
                    "{}  {:<8} {:<22} {:<24} {}",
                    local(a.at()),
                    what,
                    a.rule(),
                    subject,
                    text
                );
            }
            if !json {
                println!(
                    "{raised} tasks would have been raised ({} actions in all)",
                    actions.len()
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Make a token and print it (only its hash is kept: it cannot be shown again).
    Add {
        /// Who or what uses it (unique), e.g. "zhang-san" or "grafana".
        name: String,
        #[arg(long, value_enum)]
        role: hub::access::Role,
        /// The crew's department (crew tokens only), e.g. "sanitation".
        #[arg(long)]
        department: Option<String>,
        /// Record the token in this file instead of making one.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// List tokens (names and roles, never tokens).
    List {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Print the SHA-256 of a token read from standard input, for the tokens file.
    Hash,
    /// Revoke a token: refused from the next request on.
    Revoke {
        name: String,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new key for a gateway and write its key file (the gateway's other keys stay valid:
    /// that is how a key is rotated).
    Add {
        gateway: String,
        /// The key's id (default: k-YYYYMMDD-xxxxxx).
        #[arg(long)]
        key_id: Option<String>,
        /// Write the key file here (mode 0600) instead of printing it.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// List keys (never their secrets).
    List {
        gateway: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Revoke a key: messages signed with it are refused within seconds.
    Revoke {
        gateway: String,
        key_id: String,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Record a key from an existing key file.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Use this external broker (mqtt://host:port, or mqtts://host:port for TLS) instead of the
    /// embedded one.
    #[arg(long, value_name = "URL", value_parser = Broker::parse)]
    broker: Option<Broker>,
    /// CA certificate(s) (PEM) that sign the broker's certificate; the system's roots by default.
    #[arg(long, requires = "broker", value_name = "FILE")]
    broker_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one (with --broker-key-file).
    #[arg(long, requires_all = ["broker", "broker_key_file"], value_name = "FILE")]
    broker_cert_file: Option<PathBuf>,
    #[arg(long, requires = "broker_cert_file", value_name = "FILE")]
    broker_key_file: Option<PathBuf>,
    #[arg(long, requires = "broker", env = "HUB_BROKER_USERNAME")]
    broker_username: Option<String>,
    /// File holding the broker password (kept out of the process list).
    #[arg(long, requires = "broker_username", value_name = "FILE")]
    broker_password_file: Option<PathBuf>,
    /// Tokens as configuration (names, roles and SHA-256 only; see `hub tokens hash`), made
    /// current at start: tokens that left the file are revoked.
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,
    /// Take unsigned messages from gateways that have no key on this hub (counted; a gateway
    /// with a key must still sign). For moving a fleet over to keys, and for development.
    #[arg(long)]
    allow_unsigned: bool,
    /// The rules file: thresholds and overrides, zones, road segments, routing (see
    /// deploy/rules/README.md); DOMAIN.md's defaults without it.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Run as one of several hub processes sharing the gateways, under this name (unique among
    /// them); needs --postgres and --broker. See docs/SCALING.md.
    #[arg(long, requires = "broker", value_name = "NAME")]
    cluster: Option<String>,
    /// How many partitions the gateways are divided into; the same in every hub of the cluster.
    #[arg(long, requires = "cluster", default_value_t = hub::cluster::ClusterConfig::DEFAULT_PARTITIONS)]
    partitions: u32,
    /// How long a hub's hold on its partitions lasts without renewal: a hub that dies has its
    /// partitions taken over after this.
    #[arg(long, requires = "cluster", value_name = "SECONDS", default_value_t = hub::cluster::ClusterConfig::DEFAULT_LEASE.as_secs())]
    lease_secs: u64,
}

#[derive(Args)]
struct CommonArgs {
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Where the hub keeps its database.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Address of the embedded MQTT broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// First level(s) of every topic.
    #[arg(long, default_value = protocol::topic::DEFAULT_ROOT)]
    topic_root: String,
    /// Require an API token for /metrics too.
    #[arg(long)]
    metrics_auth: bool,
    /// Also write every reading and event to this InfluxDB 2 (http://host:8086); see docs/INFLUXDB.md.
    #[arg(long, value_name = "URL", requires_all = ["influx_org", "influx_bucket", "influx_token_file"])]
    influx_url: Option<String>,
    #[arg(long)]
    influx_org: Option<String>,
    #[arg(long)]
    influx_bucket: Option<String>,
    /// File holding the InfluxDB API token (kept out of the process list).
    #[arg(long, value_name = "FILE")]
    influx_token_file: Option<PathBuf>,
    /// Messages per second one gateway may send on average (0: no limit); messages over it are
    /// counted (`rate_limited`) and one per 10 s kept as a dead letter.
    #[arg(long, value_name = "PER_S", default_value_t = hub::ingest::RateLimit::default().per_s)]
    gateway_rate_limit: f64,
    /// Device profiles (*.toml) beyond the built-in ones, for checking gateway files uploaded
    /// through the API (give the hub the profiles your gateways use).
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// Messages one gateway may send in a burst above the average.
    #[arg(long, value_name = "MESSAGES", default_value_t = hub::ingest::RateLimit::default().burst)]
    gateway_rate_burst: f64,
    /// Days raw readings are kept (and envelope names, which recognise redelivered data).
    #[arg(long, value_name = "DAYS", default_value_t = hub::store::Retention::default().raw_days)]
    keep_raw_days: u32,
    /// Days 1-minute rollups are kept.
    #[arg(long, value_name = "DAYS", default_value_t = hub::store::Retention::default().minute_days)]
    keep_minute_days: u32,
    /// Days 1-hour rollups are kept.
    #[arg(long, value_name = "DAYS", default_value_t = hub::store::Retention::default().hour_days)]
    keep_hour_days: u32,
    /// Days evidence images are kept; then they are deleted and their records marked expired.
    #[arg(long, value_name = "DAYS", default_value_t = hub::store::Retention::default().evidence_days)]
    keep_evidence_days: u32,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The edge-agent binary; by default the one next to this program.
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// Directory of gateway files to run agents for.
    #[arg(long, default_value = "firmware-config/gateways")]
    gateways: PathBuf,
    /// Simulated seconds of town life per real second (120: a day in 12 minutes; 1: real time).
    #[arg(long, default_value_t = 120.0)]
    speed: f64,
    /// Simulated hour of day at start (16: an hour before dusk, two hours before the storm).
    #[arg(long, default_value_t = 16.0)]
    start_hour: f64,
    /// Random seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The demo town's rules file (zones, road segments, routing).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "deploy/rules/demo-town.toml"
    )]
    rules: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // rumqttd logs every ordinary client disconnect at ERROR level; those two targets stay quiet
    // unless RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,rumqttd=warn,rumqttd::server::broker=off,rumqttd::router::routing=off".into()
    });
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let cli = Cli::parse();
    let postgres = cli.postgres.clone();
    let db = |data_dir: &std::path::Path| hub::store::Database::new(data_dir, postgres.as_deref());
    match cli.command {
        Command::Serve(a) => {
            let password = match &a.broker_password_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim_end()
                        .to_owned(),
                ),
                None => None,
            };
            let mqtt = match a.broker {
                Some(url) => MqttMode::External {
                    url,
                    username: a.broker_username,
                    password,
                    tls: (a.broker_ca_file.is_some() || a.broker_cert_file.is_some()).then_some(
                        firmware_config::TlsSpec {
                            ca_file: a.broker_ca_file,
                            client_cert_file: a.broker_cert_file,
                            client_key_file: a.broker_key_file,
                        },
                    ),
                },
                None => MqttMode::Embedded {
                    listen: a.common.mqtt_listen,
                },
            };
            if let Some(file) = &a.tokens_file {
                let n = hub::access::TokenAdmin::open(&db(&a.common.data_dir))?.sync_file(file)?;
                tracing::info!(tokens = n, file = %file.display(), "tokens file loaded");
            }
            let mut cfg = config(&a.common, mqtt)?;
            cfg.postgres = postgres.clone();
            cfg.rules.rules = std::sync::Arc::new(load_rules(a.rules.as_deref())?);
            if a.allow_unsigned {
                cfg.auth = hub::keys::AuthPolicy::AllowUnsigned;
            }
            cfg.cluster = a.cluster.map(|hub| hub::cluster::ClusterConfig {
                hub,
                partitions: a.partitions,
                lease: std::time::Duration::from_secs(a.lease_secs),
            });
            let hub = hub::start(cfg).await?;
            shutdown_signal().await;
            hub.stop().await;
        }
        Command::Demo(a) => {
            let mqtt = MqttMode::Embedded {
                listen: a.common.mqtt_listen,
            };
            let opts = hub::demo::DemoOptions {
                gateways_dir: a.gateways,
                agent_bin: a.agent_bin,
                speed: a.speed,
                start_hour: a.start_hour,
                seed: a.seed,
            };
            let mut cfg = config(&a.common, mqtt)?;
            cfg.postgres = postgres.clone();
            cfg.rules.rules = std::sync::Arc::new(load_rules(Some(&a.rules))?);
            hub::demo::run(cfg, opts, shutdown_signal()).await?;
        }
        Command::Keys(k) => return keys(k, postgres.as_deref()),
        Command::Tokens(t) => return tokens(t, postgres.as_deref()),
        Command::Rules(r) => return rules(r, postgres.as_deref()),
    }
    Ok(())
}

fn base_config(c: &CommonArgs, mqtt: MqttMode) -> anyhow::Result<HubConfig> {
    Ok(HubConfig {
        topic_root: c.topic_root.clone(),
        metrics_auth: c.metrics_auth,
        retention: hub::store::Retention {
            raw_days: c.keep_raw_days,
            minute_days: c.keep_minute_days,
            hour_days: c.keep_hour_days,
            evidence_days: c.keep_evidence_days,
        },
        rate_limit: (c.gateway_rate_limit > 0.0).then_some(hub::ingest::RateLimit {
            per_s: c.gateway_rate_limit,
            burst: c.gateway_rate_burst,
        }),
        profiles: c.profiles.clone(),
        ..HubConfig::new(c.http, c.data_dir.clone(), mqtt)
    })
}

/// The hub configuration from the common arguments, reading secret files.
fn config(c: &CommonArgs, mqtt: MqttMode) -> anyhow::Result<HubConfig> {
    let mut cfg = base_config(c, mqtt)?;
    if let (Some(url), Some(org), Some(bucket), Some(file)) = (
        &c.influx_url,
        &c.influx_org,
        &c.influx_bucket,
        &c.influx_token_file,
    ) {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        cfg.influx = Some(hub::influx::InfluxConfig::new(
            url,
            org,
            bucket,
            token.trim(),
        ));
    }
    Ok(cfg)
}

fn tokens(cmd: TokensCommand, postgres: Option<&str>) -> anyhow::Result<()> {
    let db = |data_dir: &std::path::Path| hub::store::Database::new(data_dir, postgres);
    use hub::access::TokenAdmin;
    match cmd {
        TokensCommand::Add {
            name,
            role,
            department,
            token_file,
            data_dir,
        } => {
            let admin = TokenAdmin::open(&db(&data_dir))?;
            match token_file {
                Some(f) => {
                    let token = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    admin.add_token(&name, role, department.as_deref(), token.trim())?;
                    eprintln!("token {name:?} ({}) recorded", role.as_str());
                }
                None => {
                    let token = admin.add(&name, role, department.as_deref())?;
                    eprintln!(
                        "token {name:?} ({}); shown once, keep it safe. Use it as `Authorization: Bearer <token>`:",
                        role.as_str()
                    );
                    println!("{token}");
                }
            }
        }
        TokensCommand::List { data_dir } => {
            println!(
                "{:<32} {:<12} {:<16} {:<26} revoked",
                "name", "role", "department", "created"
            );
            for t in TokenAdmin::open(&db(&data_dir))?.list()? {
                println!(
                    "{:<32} {:<12} {:<16} {:<26} {}",
                    t.name,
                    t.role,
                    t.department.as_deref().unwrap_or("-"),
                    t.created_at,
                    t.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }
        TokensCommand::Hash => {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
                .context("cannot read the token from standard input")?;
            anyhow::ensure!(
                token.trim().len() >= 32,
                "give the token on standard input (at least 32 characters)"
            );
            println!("{}", hub::access::token_sha256_hex(&token));
        }
        TokensCommand::Revoke { name, data_dir } => {
            TokenAdmin::open(&db(&data_dir))?.revoke(&name)?;
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}

fn keys(cmd: KeysCommand, postgres: Option<&str>) -> anyhow::Result<()> {
    let db = |data_dir: &std::path::Path| hub::store::Database::new(data_dir, postgres);
    use hub::keys::KeyAdmin;
    use protocol::GatewayId;
    use protocol::auth::KeyId;
    let gw = |s: &str| GatewayId::new(s).map_err(|e| anyhow::anyhow!("gateway {s:?}: {e}"));
    match cmd {
        KeysCommand::Add {
            gateway,
            key_id,
            out,
            data_dir,
        } => {
            let gateway = gw(&gateway)?;
            let key_id = key_id.map(|k| KeyId::new(&k)).transpose()?;
            let key = KeyAdmin::open(&db(&data_dir))?.add(&gateway, key_id)?;
            let text = firmware_config::keyfile::key_file_text(&gateway, &key);
            match out {
                Some(path) => {
                    write_secret(&path, &text)?;
                    eprintln!(
                        "key {} of gateway {gateway} written to {} (mode 0600).\n\
                         Copy it to the gateway and name it in its gateway file: [uplink] key_file = \"...\".",
                        key.id,
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        KeysCommand::List {
            gateway,
            json,
            data_dir,
        } => {
            let gateway = gateway.as_deref().map(gw).transpose()?;
            let list = KeyAdmin::open(&db(&data_dir))?.list(gateway.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<24} {:<26} revoked", "gateway", "key", "created");
                for k in list {
                    println!(
                        "{:<24} {:<24} {:<26} {}",
                        k.gateway,
                        k.key_id,
                        k.created_at,
                        k.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        KeysCommand::Revoke {
            gateway,
            key_id,
            data_dir,
        } => {
            let gateway = gw(&gateway)?;
            KeyAdmin::open(&db(&data_dir))?.revoke(&gateway, &KeyId::new(&key_id)?)?;
            eprintln!(
                "key {key_id} of gateway {gateway} revoked; a running hub refuses it within seconds"
            );
        }
        KeysCommand::Import { file, data_dir } => {
            let k = firmware_config::keyfile::read_key_file(&file)
                .map_err(|d| anyhow::anyhow!("{}:{}: {}", d.file.display(), d.line, d.message))?;
            KeyAdmin::open(&db(&data_dir))?.import(&k.gateway, &k.key)?;
            eprintln!("key {} of gateway {} recorded", k.key.id, k.gateway);
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (created so, never widened after the fact).
fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
