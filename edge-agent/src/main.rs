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
