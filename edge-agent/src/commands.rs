//! The installer commands: `config check`, `config plan`, `config schema`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use firmware_config::Severity;

/// `edge-agent config check FILE...`: every problem as `file:line:column: severity: message`; exit
/// status 0 when there are no errors (warnings alone pass), 1 otherwise.
pub fn check(files: &[PathBuf], profiles_dir: Option<&Path>) -> ExitCode {
    let profiles = match crate::job::profiles(profiles_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let diagnostics = firmware_config::check_files(files, &profiles);
    for d in &diagnostics {
        println!("{d}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    if errors > 0 {
        eprintln!(
            "{errors} error(s), {warnings} warning(s) in {} file(s)",
            files.len()
        );
        ExitCode::FAILURE
    } else {
        eprintln!("{} file(s) OK, {warnings} warning(s)", files.len());
        ExitCode::SUCCESS
    }
}

/// `edge-agent config plan FILE`: the read plan of each bus.
pub fn plan(file: &Path, profiles_dir: Option<&Path>) -> ExitCode {
    let loaded = crate::job::profiles(profiles_dir)
        .and_then(|p| firmware_config::load_gateway(file, &p).map_err(crate::job::diagnostics));
    match loaded {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("{w}");
            }
            print!("{}", config.plan_table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `edge-agent config schema gateway|profile`.
pub fn schema(gateway: bool) -> ExitCode {
    let s = if gateway {
        firmware_config::gateway_schema()
    } else {
        firmware_config::profile_schema()
    };
    match serde_json::to_string_pretty(&s) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
