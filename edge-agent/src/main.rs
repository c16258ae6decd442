//! `edge-agent`: the gateway program. See `edge-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_agent::clock::ClockSource;

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Edge agent: polls field devices and publishes to the hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with a gateway file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Extra device profiles (*.toml) on top of the built-in ones.
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
        /// Override the gateway file's broker (mqtt://host:port).
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        /// How to decide whether the clock is synchronised.
        #[arg(long, value_enum, default_value_t = ClockArg::Auto)]
        clock: ClockArg,
        /// Override `[evidence] hub_url` (the hub's HTTP base URL for image uploads).
        #[arg(long, value_name = "URL")]
        hub_url: Option<String>,
        /// Override `[agent] data_dir` (the evidence store lives under it).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Override `[camera_server] listen` (ADDRESS:PORT).
        #[arg(long, value_name = "ADDR")]
        camera_listen: Option<String>,
        /// Override `[agent] status_listen` (ADDRESS:PORT).
        #[arg(long, value_name = "ADDR")]
        status_listen: Option<String>,
        /// Override `[uplink] key_file` (the gateway's message key, from `hub keys add`).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Stop (SIGTERM) when the process that started this one dies, however it dies: for
        /// supervisors such as `hub demo` that may be killed without a chance to stop their agents.
        #[arg(long, hide = true)]
        exit_with_parent: bool,
        /// Seconds a configuration pushed by the hub has to reach the broker before it is rolled
        /// back (tests shorten it).
        #[arg(long, hide = true, default_value_t = edge_agent::fleet::DEFAULT_TRIAL.as_secs())]
        config_trial_s: u64,
    },
    /// Show a running agent's state: uplink, spool, drops, clock, every device's link.
    Status {
        /// The gateway file (to find the status endpoint)...
        #[arg(long, short, conflicts_with = "agent")]
        config: Option<PathBuf>,
        /// ...or the status endpoint, e.g. http://127.0.0.1:9101.
        #[arg(long, value_name = "URL")]
        agent: Option<String>,
        /// Print the JSON document instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools for installers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read one device of a gateway file now: each request's raw registers and the decoded values.
    Probe {
        /// The gateway file.
        config: PathBuf,
        /// The device id, as in the gateway file.
        device: String,
        /// Read this many times, a poll interval apart.
        #[arg(long, default_value_t = 1)]
        times: u32,
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
    },
    /// Modbus tools for commissioning: read, write, scan.
    #[command(subcommand)]
    Modbus(ModbusCommand),
    /// Camera tools for commissioning.
    #[command(subcommand)]
    Camera(CameraCommand),
}

#[derive(Subcommand)]
enum CameraCommand {
    /// Send a sample plate event with images to a running agent, as a camera does, and show what
    /// the agent stored.
    Test {
        /// The camera id, as in the gateway file.
        camera: String,
        /// The gateway file (to find the camera endpoint's address)...
        #[arg(long, short, conflicts_with = "agent")]
        config: Option<PathBuf>,
        /// ...or the agent's camera endpoint, e.g. http://127.0.0.1:8088.
        #[arg(long, value_name = "URL")]
        agent: Option<String>,
        /// isapi (Hikvision XML + JPEGs) or generic (JSON + JPEGs).
        #[arg(long, value_enum, default_value_t = FormArg::Isapi)]
        form: FormArg,
        /// The plate to send; a colour prefix (蓝, 黄, 绿, 白, 黑) is allowed.
        #[arg(long, default_value = "蓝苏A8HK52")]
        plate: String,
        /// Images to attach (JPEG or PNG); default: a built-in plate close-up and scene.
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormArg {
    Isapi,
    Generic,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check gateway files: exit 0 when valid, else list every problem as file:line:column.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
    },
    /// Show the Modbus read plan of each bus and its estimated bus time per poll cycle.
    Plan {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
    },
    /// Print the JSON Schema of gateway files or device profiles (for editors).
    Schema {
        #[arg(value_enum)]
        which: SchemaArg,
    },
}

#[derive(Subcommand)]
enum ModbusCommand {
    /// Read registers and show them raw and decoded in all four byte orders.
    Read {
        #[command(flatten)]
        link: LinkArgs,
        #[arg(long)]
        unit: u8,
        /// coil, discrete_input, input or holding (default: the profile field's, else holding).
        #[arg(long)]
        table: Option<String>,
        /// Wire address (0-based; default: the profile field's).
        #[arg(long)]
        address: Option<u16>,
        /// bool, u16, i16, u32, i32, u64, i64, f32, f64 or string.
        #[arg(long = "type", default_value = "u16")]
        data_type: String,
        /// Registers, for type string.
        #[arg(long)]
        count: Option<u16>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Write a value (to a coil or holding registers) and read it back.
    Write {
        #[command(flatten)]
        link: LinkArgs,
        #[arg(long)]
        unit: u8,
        /// coil or holding (default: the profile field's, else holding).
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        address: Option<u16>,
        #[arg(long = "type", default_value = "u16")]
        data_type: String,
        /// Byte order for multi-register types: ABCD, DCBA, BADC or CDAB.
        #[arg(long, default_value = "ABCD")]
        order: String,
        /// true, false, a number, or an enum label of the profile field.
        #[arg(long)]
        value: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Find which unit ids answer on a bus.
    Scan {
        #[command(flatten)]
        link: LinkArgs,
        /// Unit ids to try, e.g. 1-247 or 5.
        #[arg(long, default_value = "1-247")]
        units: String,
        /// The register asked for: TABLE:ADDRESS with TABLE coil, discrete_input, input or holding.
        #[arg(long, default_value = "holding:0")]
        register: String,
    },
}

#[derive(Args)]
struct LinkArgs {
    /// tcp:HOST:PORT, rtu:/dev/ttyUSB0[:9600[:8N1]] or rtu-tcp:HOST:PORT[:9600[:8N1]].
    #[arg(long)]
    link: String,
    /// How long to wait for each answer.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
}

#[derive(Args)]
struct ProfileArgs {
    /// Take type, table, address, scale and plausible range from this profile's field...
    #[arg(long, requires = "metric")]
    profile: Option<String>,
    /// ...for this metric.
    #[arg(long, requires = "profile")]
    metric: Option<String>,
    /// Extra profile directory.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ClockArg {
    Auto,
    Synced,
    Unsynced,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaArg {
    Gateway,
    Profile,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { files, profiles }) => {
            edge_agent::commands::check(&files, profiles.as_deref())
        }
        Command::Config(ConfigCommand::Plan { file, profiles }) => {
            edge_agent::commands::plan(&file, profiles.as_deref())
        }
        Command::Config(ConfigCommand::Schema { which }) => {
            edge_agent::commands::schema(matches!(which, SchemaArg::Gateway))
        }
        Command::Probe {
            config,
            device,
            times,
            profiles,
        } => block_on(async move {
            match edge_agent::commission::probe(&config, profiles.as_deref(), &device, times).await
            {
                Ok((report, all_ok)) => {
                    print!("{report}");
                    if all_ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("edge-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Modbus(cmd) => match modbus(cmd) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("edge-agent modbus: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status {
            config,
            agent,
            json,
        } => agent_status(config, agent, json),
        Command::Camera(CameraCommand::Test {
            camera,
            config,
            agent,
            form,
            plate,
            images,
        }) => camera_test(camera, config, agent, form, plate, images),
        Command::Run {
            config,
            profiles,
            broker,
            clock,
            hub_url,
            data_dir,
            camera_listen,
            status_listen,
            key_file,
            exit_with_parent,
            config_trial_s,
        } => {
            if exit_with_parent {
                // Watch the parent process (not prctl's parent-death signal, which fires when the
                // parent's *thread* that started us ends, as a runtime's threads do): when it is
                // gone we are re-parented, and stop as if sent SIGTERM (spool flushed, clean exit).
                let parent = nix::unistd::getppid();
                let _ = std::thread::Builder::new()
                    .name("parent-watch".into())
                    .spawn(move || {
                        while nix::unistd::getppid() == parent {
                            std::thread::sleep(std::time::Duration::from_millis(500));
                        }
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
                    });
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let clock = match clock {
                ClockArg::Auto => ClockSource::Auto,
                ClockArg::Synced => ClockSource::Fixed(protocol::ClockState::Synced),
                ClockArg::Unsynced => ClockSource::Fixed(protocol::ClockState::Unsynced),
            };
            let opts = edge_agent::AgentOptions {
                config,
                profiles,
                broker,
                clock,
                hub_url,
                data_dir,
                camera_listen,
                status_listen,
                key_file,
                config_trial: std::time::Duration::from_secs(config_trial_s.max(1)),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("edge-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    edge_agent::shutdown_signal().await;
                    signal.cancel();
                });
                match edge_agent::run(opts, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("edge-agent: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn agent_status(config: Option<PathBuf>, agent: Option<String>, json: bool) -> ExitCode {
    let url = match (agent, config) {
        (Some(url), _) => url,
        (None, file) => {
            let file = file.unwrap_or_else(|| PathBuf::from("/etc/edge-agent/gateway.toml"));
            match firmware_config::read_spec(&file) {
                Ok(spec) => format!("http://{}", spec.agent.status_listen),
                Err(e) => {
                    eprintln!("edge-agent status: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    match edge_agent::status::fetch(&url) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", edge_agent::status::report(&s));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-agent status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn camera_test(
    camera: String,
    config: Option<PathBuf>,
    agent: Option<String>,
    form: FormArg,
    plate: String,
    images: Vec<PathBuf>,
) -> ExitCode {
    use edge_agent::camera::sample;
    let url = match (agent, config) {
        (Some(url), _) => url,
        (None, Some(file)) => {
            let loaded = edge_agent::job::profiles(None).and_then(|p| {
                firmware_config::load_gateway(&file, &p).map_err(edge_agent::job::diagnostics)
            });
            match loaded {
                Ok(cfg) => match &cfg.cameras {
                    Some(c) => {
                        let mut addr = c.listen;
                        if addr.ip().is_unspecified() {
                            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                        }
                        format!("http://{addr}")
                    }
                    None => {
                        eprintln!(
                            "edge-agent camera test: {} has no [[camera]]",
                            file.display()
                        );
                        return ExitCode::from(2);
                    }
                },
                Err(e) => {
                    eprintln!("edge-agent camera test: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, None) => {
            eprintln!("edge-agent camera test: give --config FILE or --agent URL");
            return ExitCode::from(2);
        }
    };
    let mut attached = Vec::new();
    if images.is_empty() {
        attached.push((
            "licensePlatePicture.jpg".to_owned(),
            sample::SAMPLE_PLATE_JPEG.to_vec(),
        ));
        attached.push((
            "detectionPicture.jpg".to_owned(),
            sample::SAMPLE_SCENE_JPEG.to_vec(),
        ));
    }
    for path in images {
        match std::fs::read(&path) {
            Ok(bytes) => attached.push((
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image.jpg".into()),
                bytes,
            )),
            Err(e) => {
                eprintln!(
                    "edge-agent camera test: cannot read {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    let form = match form {
        FormArg::Isapi => sample::SampleForm::Isapi,
        FormArg::Generic => sample::SampleForm::Generic,
    };
    match sample::send(&url, &camera, form, &plate, &attached) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(report) => {
            print!("{report}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("edge-agent: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_units(s: &str) -> Result<std::ops::RangeInclusive<u8>, String> {
    let bad = || format!("units {s:?}: expected N or FROM-TO within 0..=255, e.g. 1-247");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (
        a.trim().parse::<u8>().map_err(|_| bad())?,
        b.trim().parse::<u8>().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

fn parse_register(s: &str) -> Result<(firmware_config::Table, u16), String> {
    use firmware_config::Table;
    let bad = || format!("register {s:?}: expected TABLE:ADDRESS, e.g. holding:0 or input:100");
    let (t, a) = s.split_once(':').ok_or_else(bad)?;
    let table = match t {
        "coil" => Table::Coil,
        "discrete_input" => Table::DiscreteInput,
        "input" => Table::Input,
        "holding" => Table::Holding,
        _ => return Err(bad()),
    };
    Ok((table, a.parse().map_err(|_| bad())?))
}

/// The field a read or write talks about, and its wire address.
fn target_field(
    table: Option<&str>,
    address: Option<u16>,
    data_type: &str,
    count: Option<u16>,
    profile: &ProfileArgs,
) -> Result<(firmware_config::Field, u16), String> {
    use edge_agent::commission::{adhoc_field, parse_name};
    if let (Some(name), Some(metric)) = (&profile.profile, &profile.metric) {
        let set =
            edge_agent::job::profiles(profile.profiles.as_deref()).map_err(|e| format!("{e:#}"))?;
        let p = set
            .get(name)
            .ok_or_else(|| format!("no profile {name:?}"))?;
        let (_, f) = p
            .field(metric)
            .ok_or_else(|| format!("profile {name} has no metric {metric:?}"))?;
        let wire = f
            .wire_address(p.request.address_base)
            .ok_or_else(|| format!("{metric} has no valid address"))?;
        return Ok((f.clone(), address.unwrap_or(wire)));
    }
    let table = parse_name("table", table.unwrap_or("holding"))?;
    let ty = parse_name("type", data_type)?;
    let address = address.ok_or("--address is needed (or --profile and --metric)")?;
    Ok((adhoc_field(table, address, ty, count), address))
}

fn parse_value(s: &str) -> protocol::Value {
    match s {
        "true" | "on" => protocol::Value::Bool(true),
        "false" | "off" => protocol::Value::Bool(false),
        _ => s.parse::<f64>().map_or_else(
            |_| protocol::Value::Text(s.to_owned()),
            protocol::Value::Number,
        ),
    }
}

fn print_outcome(what: &str, r: Result<String, String>) -> ExitCode {
    match r {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-agent modbus {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn modbus(cmd: ModbusCommand) -> Result<ExitCode, String> {
    use edge_agent::commission::{parse_link, parse_name};
    use std::io::IsTerminal;
    let timeout = |l: &LinkArgs| std::time::Duration::from_millis(l.timeout_ms);
    match cmd {
        ModbusCommand::Read {
            link,
            unit,
            table,
            address,
            data_type,
            count,
            profile,
        } => {
            let transport = parse_link(&link.link)?;
            let (field, address) =
                target_field(table.as_deref(), address, &data_type, count, &profile)?;
            Ok(block_on(async move {
                let r =
                    edge_agent::commission::read(transport, timeout(&link), unit, &field, address)
                        .await;
                print_outcome("read", r.map_err(|e| e.to_string()))
            }))
        }
        ModbusCommand::Write {
            link,
            unit,
            table,
            address,
            data_type,
            order,
            value,
            profile,
        } => {
            let transport = parse_link(&link.link)?;
            let (mut field, address) =
                target_field(table.as_deref(), address, &data_type, None, &profile)?;
            if profile.profile.is_none() {
                field.byte_order = parse_name("byte order", &order)?;
            }
            let value = parse_value(&value);
            Ok(block_on(async move {
                let r = edge_agent::commission::write(
                    transport,
                    timeout(&link),
                    unit,
                    &field,
                    address,
                    &value,
                )
                .await;
                print_outcome("write", r)
            }))
        }
        ModbusCommand::Scan {
            link,
            units,
            register,
        } => {
            let transport = parse_link(&link.link)?;
            let units = parse_units(&units)?;
            let (table, address) = parse_register(&register)?;
            let total = usize::from(*units.end()) - usize::from(*units.start()) + 1;
            let first = *units.start();
            let tty = std::io::stderr().is_terminal();
            Ok(block_on(async move {
                let progress = |unit: u8, found: usize| {
                    if tty {
                        let done = usize::from(unit - first);
                        let bar = "#".repeat(done * 30 / total);
                        eprint!(
                            "\rscanning unit {unit:>3} [{bar:<30}] {done}/{total}, {found} found"
                        );
                    }
                };
                let found = edge_agent::commission::scan(
                    transport,
                    units,
                    table,
                    address,
                    timeout(&link),
                    progress,
                )
                .await;
                if tty {
                    eprintln!();
                }
                print!("{}", edge_agent::commission::scan_report(&found));
                if found.is_empty() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }))
        }
    }
}
