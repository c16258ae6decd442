//! Loading configuration files with precise errors: read, parse (syntax and type errors located by
//! their byte span), validate (every problem, located by path), resolve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{GatewayConfig, resolve};
use crate::diagnostic::{Diagnostic, has_errors};
use crate::gateway::GatewaySpec;
use crate::gateway_check::check_gateway;
use crate::locate::{Locator, Path as DocPath, Problem};
use crate::profile::Profile;
use crate::profile_check::check_profile;
use crate::profile_set::ProfileSet;

/// Loads and validates a gateway file. `Ok` carries the warnings in [`GatewayConfig::warnings`];
/// `Err` carries every error and warning, in file order.
pub fn load_gateway(path: &Path, profiles: &ProfileSet) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let source = read(path)?;
    parse_gateway(path, &source, profiles)
}

/// As [`load_gateway`], for text already read; `file` names it in diagnostics.
pub fn parse_gateway(
    file: &Path,
    source: &str,
    profiles: &ProfileSet,
) -> Result<GatewayConfig, Vec<Diagnostic>> {
    let (spec, diagnostics) = gateway_diagnostics(file, source, profiles);
    match spec {
        Some(spec) if !has_errors(&diagnostics) => match resolve(file.to_owned(), spec, profiles) {
            Ok(mut config) => {
                config.warnings = diagnostics;
                Ok(config)
            }
            Err(e) => Err(vec![Diagnostic::file_error(file, e)]),
        },
        _ => Err(diagnostics),
    }
}

/// Loads and validates a profile file; its name must equal the file stem.
pub fn load_profile(path: &Path) -> Result<Profile, Vec<Diagnostic>> {
    let source = read(path)?;
    parse_profile(path, &source)
}

/// As [`load_profile`], for text already read; the file stem of `file` must equal the name.
pub fn parse_profile(file: &Path, source: &str) -> Result<Profile, Vec<Diagnostic>> {
    match profile_diagnostics(file, source) {
        (Some(profile), d) if !has_errors(&d) => Ok(profile),
        (_, d) => Err(d),
    }
}

/// Checks gateway and profile files together, for `edge-agent config check FILE...`.
///
/// A file with a top-level `gateway`, `location`, `uplink` or `bus` key is a gateway, any other a
/// profile. Profiles given here are known to the gateways given here (on top of `profiles`). Also
/// reports asset and gateway ids used in two files. Returns errors and warnings.
pub fn check_files(paths: &[PathBuf], profiles: &ProfileSet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut gateways = Vec::new();
    let mut profiles = profiles.clone();
    for path in paths {
        let source = match read(path) {
            Ok(s) => s,
            Err(mut e) => {
                out.append(&mut e);
                continue;
            }
        };
        let is_gateway = toml::de::DeTable::parse(&source).is_ok_and(|t| {
            ["gateway", "location", "uplink", "bus"]
                .iter()
                .any(|k| t.get_ref().contains_key(*k))
        });
        if is_gateway {
            gateways.push((path, source));
        } else {
            let (profile, mut d) = profile_diagnostics(path, &source);
            out.append(&mut d);
            if let Some(p) = profile {
                profiles.insert(p);
            }
        }
    }
    let mut seen_gateways = HashMap::new();
    let mut seen_assets = HashMap::new();
    for (path, source) in &gateways {
        let (spec, mut d) = gateway_diagnostics(path, source, &profiles);
        out.append(&mut d);
        let Some(spec) = spec else { continue };
        let locator = Locator::new(source);
        let mut here =
            |doc_path: DocPath, key: String, seen: &mut HashMap<String, String>, what: &str| {
                let d = locator.diagnostic(path, source, Problem::error(doc_path, String::new()));
                let place = format!("{}:{}:{}", d.file.display(), d.line, d.column);
                if let Some(first) = seen.get(&key) {
                    out.push(Diagnostic {
                        message: format!("{what} {key:?} is also used at {first}"),
                        ..d
                    });
                } else {
                    seen.insert(key, place);
                }
            };
        here(
            DocPath::root().key("gateway"),
            spec.gateway.to_string(),
            &mut seen_gateways,
            "gateway id",
        );
        for (i, bus) in spec.buses.iter().enumerate() {
            for (j, dev) in bus.devices.iter().enumerate() {
                let at = DocPath::root().at("bus", i).at("device", j).key("asset");
                here(at, dev.asset.to_string(), &mut seen_assets, "asset id");
            }
        }
        if let Some(gpio) = &spec.gpio {
            let section = DocPath::root().key("gpio");
            let assets = [
                (
                    "input",
                    gpio.inputs.iter().map(|d| &d.asset).collect::<Vec<_>>(),
                ),
                ("counter", gpio.counters.iter().map(|d| &d.asset).collect()),
                ("output", gpio.outputs.iter().map(|d| &d.asset).collect()),
            ];
            for (key, list) in assets {
                for (j, asset) in list.into_iter().enumerate() {
                    let at = section.at(key, j).key("asset");
                    here(at, asset.to_string(), &mut seen_assets, "asset id");
                }
            }
        }
    }
    out
}

fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])
}

/// Parses and validates; the spec is returned whenever it parsed, with all diagnostics.
fn gateway_diagnostics(
    file: &Path,
    source: &str,
    profiles: &ProfileSet,
) -> (Option<GatewaySpec>, Vec<Diagnostic>) {
    let spec: GatewaySpec = match toml::from_str(source) {
        Ok(spec) => spec,
        Err(e) => return (None, vec![Diagnostic::from_toml(file, source, &e)]),
    };
    let problems = check_gateway(&spec, profiles);
    (Some(spec), locate(file, source, problems))
}

fn profile_diagnostics(file: &Path, source: &str) -> (Option<Profile>, Vec<Diagnostic>) {
    let profile: Profile = match toml::from_str(source) {
        Ok(p) => p,
        Err(e) => return (None, vec![Diagnostic::from_toml(file, source, &e)]),
    };
    let stem = file.file_stem().and_then(|s| s.to_str());
    let problems = check_profile(&profile, stem);
    (Some(profile), locate(file, source, problems))
}

/// Locates problems and sorts them in file order.
fn locate(file: &Path, source: &str, problems: Vec<Problem>) -> Vec<Diagnostic> {
    let locator = Locator::new(source);
    let mut out: Vec<Diagnostic> = problems
        .into_iter()
        .map(|p| locator.diagnostic(file, source, p))
        .collect();
    out.sort_by_key(|d| (d.line, d.column));
    out
}

/// Reads a gateway file's settings as written, without checking devices against profiles: for tools
/// that need one setting of a running gateway (`edge-agent status` finds the status address).
pub fn read_spec(file: &Path) -> Result<crate::gateway::GatewaySpec, String> {
    let source = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    toml::from_str(&source).map_err(|e| format!("{}: {e}", file.display()))
}
