//! `edge-agent`: the gateway program. See `edge-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    /// Find which unit ids answer on a bus.
    Scan {
        /// tcp:HOST:PORT, rtu:/dev/ttyUSB0[:9600[:8N1]] or rtu-tcp:HOST:PORT[:9600[:8N1]].
        #[arg(long)]
        link: String,
        /// Unit ids to try, e.g. 1-247 or 5.
        #[arg(long, default_value = "1-247")]
        units: String,
        /// The register asked for: TABLE:ADDRESS with TABLE coil, discrete_input, input or holding.
        #[arg(long, default_value = "holding:0")]
        register: String,
        /// How long to wait for each unit.
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
    },
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
        Command::Scan {
            link,
            units,
            register,
            timeout_ms,
        } => {
            let parsed = (|| -> Result<_, String> {
                let transport = edge_agent::commission::parse_link(&link)?;
                let units = parse_units(&units)?;
                let (table, address) = parse_register(&register)?;
                Ok((transport, units, table, address))
            })();
            match parsed {
                Ok((transport, units, table, address)) => block_on(async move {
                    let timeout = std::time::Duration::from_millis(timeout_ms);
                    let found =
                        edge_agent::commission::scan(transport, units, table, address, timeout)
                            .await;
                    print!("{}", edge_agent::commission::scan_report(&found));
                    if found.is_empty() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }),
                Err(e) => {
                    eprintln!("edge-agent scan: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run {
            config,
            profiles,
            broker,
            clock,
        } => {
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
