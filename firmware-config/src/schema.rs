//! JSON Schemas of the gateway and profile files, for editors (Taplo, VS Code "Even Better TOML").
//!
//! The committed copies in `firmware-config/schema/` are checked against these by a test;
//! regenerate them with `UPDATE_SCHEMA=1 cargo test -p firmware-config`.

use crate::gateway::GatewaySpec;
use crate::profile::Profile;

/// The schema of `gateways/*.toml`.
pub fn gateway_schema() -> serde_json::Value {
    schemars::schema_for!(GatewaySpec).to_value()
}

/// The schema of `profiles/*.toml`.
pub fn profile_schema() -> serde_json::Value {
    schemars::schema_for!(Profile).to_value()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn check(name: &str, schema: serde_json::Value) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(name);
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date with the config types; regenerate it with `UPDATE_SCHEMA=1 cargo test -p firmware-config` and commit it",
            path.display()
        );
    }

    #[test]
    fn committed_gateway_schema_is_current() {
        check("gateway.schema.json", gateway_schema());
    }

    #[test]
    fn committed_profile_schema_is_current() {
        check("profile.schema.json", profile_schema());
    }

    #[test]
    fn schemas_forbid_unknown_keys() {
        let g = gateway_schema();
        assert_eq!(g["additionalProperties"], serde_json::Value::Bool(false));
        assert!(g["properties"]["bus"].is_object());
        assert!(profile_schema()["properties"]["field"].is_object());
    }
}
