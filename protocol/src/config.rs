//! Fleet configuration: the hub pushes a gateway file to a gateway on `{root}/v1/gw/{gateway}/config`,
//! signed with the gateway's key like a command; the gateway reports what it runs in every heartbeat
//! ([`ConfigReport`]).
//!
//! Versions are numbered by the hub per gateway, from 1. A gateway takes only a version newer than
//! the newest it has applied or refused, so a replayed or reordered push changes nothing.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Violation, ViolationKind};
use crate::id::GatewayId;
use crate::status::check_version;
use crate::timestamp::Timestamp;

/// Largest gateway file the hub may push, in bytes (the envelope limit leaves room for JSON escaping).
pub const MAX_CONFIG_BYTES: usize = 96 * 1024;

/// A gateway file pushed by the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPush {
    pub v: u32,
    pub gateway: GatewayId,
    /// The hub's version number of this gateway's configuration, from 1.
    pub version: u64,
    pub issued_at: Timestamp,
    /// Hex SHA-256 of `toml`.
    pub sha256: String,
    /// The gateway file, as uploaded.
    pub toml: String,
}

/// Hex SHA-256 of a configuration text.
pub fn config_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ConfigPush {
    pub fn new(gateway: GatewayId, version: u64, toml: String) -> Self {
        Self {
            v: crate::PROTOCOL_VERSION,
            gateway,
            version,
            issued_at: Timestamp::now(),
            sha256: config_sha256(&toml),
            toml,
        }
    }

    pub fn validate(&self) -> Result<(), Violation> {
        check_version(self.v)?;
        if self.version == 0 {
            return Err(Violation::new(
                "version",
                ViolationKind::BadValue("versions start at 1".into()),
            ));
        }
        if self.toml.len() > MAX_CONFIG_BYTES {
            return Err(Violation::new(
                "toml",
                ViolationKind::BadValue(format!(
                    "{} bytes; at most {MAX_CONFIG_BYTES}",
                    self.toml.len()
                )),
            ));
        }
        if config_sha256(&self.toml) != self.sha256 {
            return Err(Violation::new(
                "sha256",
                ViolationKind::BadValue("does not match the text".into()),
            ));
        }
        Ok(())
    }
}

/// Where the configuration a gateway runs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConfigSource {
    /// The gateway file on the gateway (e.g. `/etc/edge-agent/gateway.toml`).
    Local,
    /// A version pushed by the hub, kept in the gateway's data directory.
    Hub,
}

/// A pushed version the gateway did not keep: refused (invalid on the gateway) or rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFailure {
    pub version: u64,
    pub at: Timestamp,
    /// `refused` (never applied) or `rolledBack` (applied, then undone).
    pub outcome: ConfigOutcome,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConfigOutcome {
    Refused,
    RolledBack,
}

impl ConfigOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigOutcome::Refused => "refused",
            ConfigOutcome::RolledBack => "rolledBack",
        }
    }
}

/// What configuration a gateway runs, in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigReport {
    pub source: ConfigSource,
    /// The hub version running (source `hub`), or the newest hub version applied before the local
    /// file was changed (source `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Hex SHA-256 of the running file.
    pub sha256: String,
    /// The running version is on trial: it is kept once the gateway reaches the broker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trial: bool,
    /// The newest pushed version the gateway did not keep, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<ConfigFailure>,
    /// The newest version number the gateway has seen (applied, tried or refused): it takes only
    /// newer ones, so the hub numbers new versions above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u64>,
}

impl ConfigReport {
    pub fn validate(&self) -> Result<(), Violation> {
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Violation::new(
                "config.sha256",
                ViolationKind::BadValue("not a hex SHA-256".into()),
            ));
        }
        if self
            .failed
            .as_ref()
            .is_some_and(|f| f.reason.chars().count() > 1024)
        {
            return Err(Violation::new(
                "config.failed.reason",
                ViolationKind::BadValue("longer than 1024 characters".into()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_checks_its_hash_and_size() {
        let gw = GatewayId::new("gw-01").unwrap();
        let mut p = ConfigPush::new(gw.clone(), 3, "gateway = \"gw-01\"\n".into());
        p.validate().unwrap();
        let bytes = crate::encode(&p, &crate::Limits::default()).unwrap();
        let back: ConfigPush = crate::decode(&bytes, &crate::Limits::default()).unwrap();
        assert_eq!(back, p);
        p.toml.push('#');
        assert!(p.validate().unwrap_err().to_string().contains("sha256"));
        let big = ConfigPush::new(gw.clone(), 1, "#".repeat(MAX_CONFIG_BYTES + 1));
        assert!(big.validate().is_err());
        let zero = ConfigPush::new(gw, 0, String::new());
        assert!(zero.validate().is_err());
    }
}
