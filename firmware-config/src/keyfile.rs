//! Gateway key files: the secret a gateway signs its messages with (see `protocol::auth`).
//!
//! `hub keys add` writes one; the installer copies it to the gateway (mode 0600) and names it in
//! `[uplink] key_file`. It is TOML so that an installer can read it and errors point at a line:
//!
//! ```toml
//! gateway = "gw-zhongshan-01"
//! key_id = "k-20261122-3f9a"
//! secret = "base64 of 32 random bytes"
//! ```

use std::path::Path;

use protocol::GatewayId;
use protocol::auth::{Key, KeyId};
use serde::Deserialize;

use crate::diagnostic::{Diagnostic, Severity};

/// A key file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub gateway: GatewayId,
    pub key: Key,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gateway: toml::Spanned<String>,
    key_id: toml::Spanned<String>,
    secret: toml::Spanned<String>,
}

/// Reads and checks a key file; errors name the file and line.
pub fn read_key_file(path: &Path) -> Result<KeyFile, Diagnostic> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::file_error(path, format!("cannot read the key file: {e}")))?;
    parse_key_file(path, &source)
}

/// Parses a key file's text.
pub fn parse_key_file(path: &Path, source: &str) -> Result<KeyFile, Diagnostic> {
    let raw: Raw = toml::from_str(source).map_err(|e| Diagnostic::from_toml(path, source, &e))?;
    let at = |span: std::ops::Range<usize>, msg: String| {
        Diagnostic::at_offset(path, source, span.start, Severity::Error, msg)
    };
    let gateway = GatewayId::new(raw.gateway.get_ref())
        .map_err(|e| at(raw.gateway.span(), format!("gateway: {e}")))?;
    let id = KeyId::new(raw.key_id.get_ref()).map_err(|e| at(raw.key_id.span(), e.to_string()))?;
    let key = Key::from_base64(id, raw.secret.get_ref())
        .map_err(|e| at(raw.secret.span(), e.to_string()))?;
    Ok(KeyFile { gateway, key })
}

/// The text of a key file.
pub fn key_file_text(gateway: &GatewayId, key: &Key) -> String {
    format!(
        "# Message key of gateway {gateway}. Keep it secret: copy it to the gateway only (mode 0600)\n\
         # and name it in the gateway file's [uplink] key_file.\n\
         gateway = \"{gateway}\"\nkey_id = \"{}\"\nsecret = \"{}\"\n",
        key.id,
        key.secret_base64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_with_lines() {
        let gw = GatewayId::new("gw-1").unwrap();
        let key = Key::new(KeyId::new("k1").unwrap(), vec![3; 32]).unwrap();
        let text = key_file_text(&gw, &key);
        let f = parse_key_file(Path::new("gw.key"), &text).unwrap();
        assert_eq!(f, KeyFile { gateway: gw, key });

        let bad = text.replace("key_id = \"k1\"", "key_id = \"k 1\"");
        let d = parse_key_file(Path::new("gw.key"), &bad).unwrap_err();
        assert_eq!(d.line, 4, "{d:?}");
        assert!(d.message.contains("key id"), "{}", d.message);

        let short = "gateway = \"gw-1\"\nkey_id = \"k1\"\nsecret = \"AAAA\"\n";
        let d = parse_key_file(Path::new("gw.key"), short).unwrap_err();
        assert_eq!(d.line, 3);
        assert!(d.message.contains("16 to 64"), "{}", d.message);

        let d = parse_key_file(Path::new("gw.key"), "gateway = \"gw-1\"\n").unwrap_err();
        assert!(d.message.contains("key_id"), "{}", d.message);
    }
}
