//! The gateway file loader: `firmware_config::parse_gateway` (TOML parse, every validation check,
//! diagnostics located by line and column, resolution against the built-in profiles, read plans)
//! on arbitrary text, and `parse_profile` on the same text (profiles are the other file kind).
//!
//! Properties: nothing panics; errors come back as diagnostics with a message; a loaded gateway's
//! read plans stay within the Modbus limits.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use firmware_config::{ProfileSet, parse_gateway, parse_profile, plan_reads};
use libfuzzer_sys::fuzz_target;

fn profiles() -> &'static ProfileSet {
    static SET: OnceLock<ProfileSet> = OnceLock::new();
    SET.get_or_init(|| ProfileSet::builtin().expect("the built-in profiles load"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // The validator reads `[uplink] key_file` and TLS files by path: keep the fuzzer off device
    // files (`/dev/zero` would never end), which no real gateway file names.
    if ["/dev", "/proc", "/sys"].iter().any(|p| source.contains(p)) {
        return;
    }
    match parse_gateway(Path::new("fuzz.toml"), source, profiles()) {
        Ok(config) => {
            for bus in &config.buses {
                for dev in &bus.devices {
                    for req in &dev.requests {
                        assert!(req.count >= 1, "empty request {req:?}");
                        assert!(
                            req.count <= req.table.max_read(),
                            "request too long {req:?}"
                        );
                        for slot in &req.fields {
                            let end = u32::from(slot.offset) + u32::from(slot.len);
                            assert!(end <= u32::from(req.count), "slot outside {req:?}");
                        }
                    }
                    assert_eq!(dev.requests, plan_reads(&dev.profile, &dev.knobs));
                }
            }
            let _ = config.inventory();
            let _ = config.buses.iter().map(|b| b.utilisation()).sum::<f64>();
            let _ = firmware_config::report(&config.warnings);
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "Err without a diagnostic");
            assert!(firmware_config::diagnostic::has_errors(&diagnostics));
            let _ = firmware_config::report(&diagnostics);
        }
    }
    if let Err(d) = parse_profile(Path::new(""), source) {
        assert!(!d.is_empty());
        let _ = firmware_config::report(&d);
    }
});
