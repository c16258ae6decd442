//! The shipped profiles and example gateways load and validate without a single diagnostic.

// Helpers outside #[test] functions unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use firmware_config::{ProfileSet, check_files, load_gateway};
use protocol::AssetKind;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn toml_files(name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn builtin_profiles_are_the_shipped_files() {
    let builtin = ProfileSet::builtin().unwrap_or_else(|d| panic!("{d:#?}"));
    let from_dir = ProfileSet::load_dir(&dir("profiles")).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(
        builtin.names().collect::<Vec<_>>(),
        from_dir.names().collect::<Vec<_>>()
    );
    for p in from_dir.iter() {
        assert_eq!(
            **p,
            *builtin.get(&p.name).unwrap(),
            "{} differs from its embedded copy",
            p.name
        );
    }
    assert_eq!(
        builtin.names().collect::<Vec<_>>(),
        ["bin-fill", "dm-pm", "sl-100", "wl-ultra"]
    );
}

#[test]
fn shipped_files_have_no_diagnostics() {
    let mut paths = toml_files("profiles");
    paths.extend(toml_files("gateways"));
    assert!(paths.len() >= 6, "{paths:?}");
    let diagnostics = check_files(&paths, &ProfileSet::new());
    let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert!(diagnostics.is_empty(), "{shown:#?}");
}

#[test]
fn example_gateways_cover_the_demo() {
    let profiles = ProfileSet::builtin().unwrap();
    let mut devices = Vec::new();
    let mut hosts = Vec::new();
    for path in toml_files("gateways") {
        let config = load_gateway(&path, &profiles).unwrap_or_else(|d| panic!("{d:#?}"));
        assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
        assert_eq!(config.uplink.broker.to_string(), "mqtt://127.0.0.1:1883");
        for bus in &config.buses {
            let firmware_config::Link::Tcp { addr } = &bus.link else {
                panic!("demo buses are tcp: {}", bus.link)
            };
            assert!(addr.starts_with("127.0.0.1:150"), "{addr}");
            hosts.push(addr.clone());
            assert!(bus.devices.len() >= 2);
        }
        for (_, d) in config.devices() {
            assert!((2000..=5000).contains(&d.poll_ms));
            assert!(
                (118.7..118.9).contains(&d.location.lon())
                    && (32.0..32.1).contains(&d.location.lat())
            );
            devices.push((d.kind, d.asset.clone()));
        }
        // The plan renders every device.
        let plan = config.plan_table().to_string();
        for (_, d) in config.devices() {
            assert!(plan.contains(d.id.as_str()), "{plan}");
        }
    }
    let count = |k| devices.iter().filter(|(kind, _)| *kind == k).count();
    assert!(devices.len() >= 10);
    assert!(count(AssetKind::Streetlight) >= 4);
    assert!(count(AssetKind::Waterlogging) >= 2);
    assert!(count(AssetKind::DustMonitor) >= 1);
    assert!(count(AssetKind::SmartBin) >= 2);
    let mut sorted = hosts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), hosts.len(), "one port per bus: {hosts:?}");
}
