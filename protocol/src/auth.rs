//! Message authentication: every message a gateway publishes (and every command the hub sends it)
//! carries an HMAC-SHA256 made with that gateway's own key.
//!
//! Why: no MQTT subscriber learns which credential published a message, and the embedded broker
//! (rumqttd 0.20) has no topic ACL, so without this any client of the broker could publish under
//! any gateway's topic. With it, the hub verifies each message with the key of the gateway its
//! topic names; a message from another gateway, signed with another key, or altered after signing
//! fails.
//!
//! The wire form wraps the unchanged message:
//!
//! ```text
//! {"auth":{"kid":"k-20261122-3f9a","mac":"<base64 of 32 bytes>"},"msg":{ ...the message... }}
//! ```
//!
//! The MAC covers a domain tag, the MQTT topic and the exact bytes of `msg` as they appear in the
//! payload ([`mac_input`]), so a message cannot be moved to another topic (another gateway, or
//! another channel) and nothing in it can be changed. The receiver takes `msg` as raw bytes
//! (`serde_json::value::RawValue`): no re-serialisation, so no canonical JSON is needed.
//!
//! A gateway may have several keys at once (`kid` says which), so a key is rotated without
//! downtime: add the new key to the hub, give it to the gateway, revoke the old one.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// What an evidence upload's MAC input starts with (see [`evidence_mac`]).
pub const EVIDENCE_DOMAIN: &[u8] = b"city-iot/evidence/v1\n";

/// The MAC a gateway sends with an evidence upload (`PUT /api/v1/evidence/{sha256}`, headers
/// `X-Gateway`, `X-Gateway-Key`, `X-Gateway-Mac`): over the gateway id and the image's SHA-256.
/// The body is bound by its hash (the hub refuses a body that does not hash to its name), so the
/// request cannot be turned into another gateway's or another image's. Base64, no padding.
pub fn evidence_mac(key: &Key, gateway: &str, sha256: &str) -> String {
    B64.encode(evidence_hmac(key, gateway, sha256).finalize().into_bytes())
}

/// Checks an evidence upload's MAC (constant time).
pub fn verify_evidence_mac(
    key: &Key,
    gateway: &str,
    sha256: &str,
    mac: &str,
) -> Result<(), AuthError> {
    let mac = B64
        .decode(mac.trim().trim_end_matches('='))
        .map_err(|e| AuthError::Malformed(format!("mac is not base64: {e}")))?;
    evidence_hmac(key, gateway, sha256)
        .verify_slice(&mac)
        .map_err(|_| AuthError::BadMac)
}

/// What a broker password's MAC input starts with (see [`broker_password`]).
pub const BROKER_PASSWORD_DOMAIN: &[u8] = b"city-iot/broker-password/v1\n";

/// The password a gateway logs in to the hub's embedded broker with (its username is its gateway
/// id): derived from its message key, so an installer provisions one secret, not two, and rotating
/// the key rotates the password. Knowing the password lets one connect, not sign. Base64, no padding.
pub fn broker_password(key: &Key, gateway: &str) -> String {
    B64.encode(broker_hmac(key, gateway).finalize().into_bytes())
}

/// Checks a broker password against a key (constant time).
pub fn verify_broker_password(key: &Key, gateway: &str, password: &str) -> bool {
    let Ok(mac) = B64.decode(password.trim_end_matches('=')) else {
        return false;
    };
    broker_hmac(key, gateway).verify_slice(&mac).is_ok()
}

fn broker_hmac(key: &Key, gateway: &str) -> HmacSha256 {
    let mut m = match HmacSha256::new_from_slice(&key.secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of every length"),
    };
    m.update(BROKER_PASSWORD_DOMAIN);
    m.update(gateway.as_bytes());
    m
}

fn evidence_hmac(key: &Key, gateway: &str, sha256: &str) -> HmacSha256 {
    let mut m = match HmacSha256::new_from_slice(&key.secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of every length"),
    };
    for part in [
        EVIDENCE_DOMAIN,
        gateway.as_bytes(),
        b"\n",
        sha256.as_bytes(),
    ] {
        m.update(part);
    }
    m
}

/// What the MAC input starts with: binds the MAC to this protocol and its version.
pub const DOMAIN: &[u8] = b"city-iot/mqtt/v1\n";
/// Shortest secret accepted (bytes). Generated keys have 32.
pub const MIN_SECRET: usize = 16;
/// Longest secret accepted (bytes).
pub const MAX_SECRET: usize = 64;

/// A key id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(s: &str) -> Result<Self, AuthError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(AuthError::BadKeyId(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gateway key: its id and secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: KeyId,
    secret: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Key {
    pub fn new(id: KeyId, secret: Vec<u8>) -> Result<Self, AuthError> {
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(AuthError::BadSecret(format!(
                "{} bytes; a key must have {MIN_SECRET} to {MAX_SECRET}",
                secret.len()
            )));
        }
        Ok(Self { id, secret })
    }

    /// A key from its id and the base64 form of its secret.
    pub fn from_base64(id: KeyId, secret: &str) -> Result<Self, AuthError> {
        let s = secret.trim().trim_end_matches('=');
        let bytes = B64
            .decode(s)
            .map_err(|e| AuthError::BadSecret(format!("not base64: {e}")))?;
        Self::new(id, bytes)
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The secret in base64 (no padding), as key files hold it.
    pub fn secret_base64(&self) -> String {
        B64.encode(&self.secret)
    }

    fn mac(&self, topic: &str, msg: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new` bounds them anyway.
        let mut m = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of every length"),
        };
        for part in mac_input(topic, msg) {
            m.update(part);
        }
        m
    }
}

/// What the MAC is computed over, in order: [`DOMAIN`], the topic, a newline, the message bytes.
pub fn mac_input<'a>(topic: &'a str, msg: &'a [u8]) -> [&'a [u8]; 4] {
    [DOMAIN, topic.as_bytes(), b"\n", msg]
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("key id {0:?} is invalid: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadKeyId(String),
    #[error("key secret is invalid: {0}")]
    BadSecret(String),
    #[error("the signed wrapper is malformed: {0}")]
    Malformed(String),
    #[error("the message is not signed")]
    Unsigned,
    #[error("signed with key {0:?}, which is not a current key of this gateway")]
    UnknownKey(String),
    #[error(
        "the authentication code does not match (another gateway's key, another topic, or altered after signing)"
    )]
    BadMac,
}

impl AuthError {
    /// A short stable name for counters and dead-letter reasons.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::BadKeyId(_) | AuthError::BadSecret(_) | AuthError::Malformed(_) => {
                "auth_malformed"
            }
            AuthError::Unsigned => "unsigned",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadMac => "bad_mac",
        }
    }
}

/// Wraps `msg` (an encoded message) in its signature for `topic`.
pub fn seal(key: &Key, topic: &str, msg: &[u8]) -> Vec<u8> {
    let tag = key.mac(topic, msg).finalize().into_bytes();
    let mac = B64.encode(tag);
    let mut out = Vec::with_capacity(msg.len() + key.id.0.len() + mac.len() + 40);
    out.extend_from_slice(br#"{"auth":{"kid":""#);
    out.extend_from_slice(key.id.0.as_bytes());
    out.extend_from_slice(br#"","mac":""#);
    out.extend_from_slice(mac.as_bytes());
    out.extend_from_slice(br#""},"msg":"#);
    out.extend_from_slice(msg);
    out.push(b'}');
    out
}

/// A payload taken apart: signed (with the key id, the MAC and the message's exact bytes) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened<'a> {
    Signed {
        kid: KeyId,
        mac: Vec<u8>,
        msg: &'a [u8],
    },
    Unsigned(&'a [u8]),
}

impl<'a> Opened<'a> {
    /// The message bytes, signed or not.
    pub fn msg(&self) -> &'a [u8] {
        match self {
            Opened::Signed { msg, .. } | Opened::Unsigned(msg) => msg,
        }
    }

    pub fn kid(&self) -> Option<&KeyId> {
        match self {
            Opened::Signed { kid, .. } => Some(kid),
            Opened::Unsigned(_) => None,
        }
    }

    /// Checks the MAC with `key` (constant time). `Unsigned` fails.
    pub fn verify(&self, key: &Key, topic: &str) -> Result<(), AuthError> {
        match self {
            Opened::Unsigned(_) => Err(AuthError::Unsigned),
            Opened::Signed { mac, msg, .. } => key
                .mac(topic, msg)
                .verify_slice(mac)
                .map_err(|_| AuthError::BadMac),
        }
    }
}

/// Takes a payload apart. A payload whose first key is `"auth"` must be a well-formed signed
/// wrapper; anything else is returned whole as unsigned (the codec then judges it).
///
/// A payload laid out exactly as [`seal`] writes it is split at its known places, without a JSON
/// scan of the message (which the decoder reads in full anyway: the scan was a tenth of the cost
/// of taking a message in). Whether something other than the closing brace follows the message is
/// then not checked here: the MAC, made over the message alone, fails, or the decoder finds the
/// trailing text. A caller that reports why a payload failed asks [`open_strict`] for the reason.
pub fn open(payload: &[u8]) -> Result<Opened<'_>, AuthError> {
    if let Some((kid, mac, msg)) = split_sealed(payload) {
        return Ok(Opened::Signed {
            kid: KeyId::new(kid)?,
            mac: decode_mac(mac)?,
            msg,
        });
    }
    open_strict(payload)
}

/// The key id, MAC and message of a payload in [`seal`]'s layout (no escapes in the first two).
fn split_sealed(payload: &[u8]) -> Option<(&str, &str, &[u8])> {
    fn field<'a>(rest: &'a [u8], end: &[u8]) -> Option<(&'a str, &'a [u8])> {
        let q = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        let tail = rest[q..].strip_prefix(end)?;
        Some((std::str::from_utf8(&rest[..q]).ok()?, tail))
    }
    let rest = payload.strip_prefix(br#"{"auth":{"kid":""#)?;
    let (kid, rest) = field(rest, br#"","mac":""#)?;
    let (mac, rest) = field(rest, br#""},"msg":"#)?;
    let msg = rest.trim_ascii_end().strip_suffix(b"}")?.trim_ascii();
    Some((kid, mac, msg))
}

fn decode_mac(mac: &str) -> Result<Vec<u8>, AuthError> {
    let mac = B64
        .decode(mac.trim_end_matches('='))
        .map_err(|e| AuthError::Malformed(format!("mac is not base64: {e}")))?;
    if mac.len() != 32 {
        return Err(AuthError::Malformed(format!(
            "mac has {} bytes; HMAC-SHA256 has 32",
            mac.len()
        )));
    }
    Ok(mac)
}

/// [`open`], reading the whole wrapper as JSON whatever its layout: a wrapper with anything more
/// or less than `auth` and `msg` is refused as malformed.
pub fn open_strict(payload: &[u8]) -> Result<Opened<'_>, AuthError> {
    let signed = payload
        .trim_ascii_start()
        .strip_prefix(b"{")
        .is_some_and(|r| r.trim_ascii_start().starts_with(br#""auth""#));
    if !signed {
        return Ok(Opened::Unsigned(payload));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Auth<'a> {
        #[serde(borrow)]
        kid: &'a str,
        #[serde(borrow)]
        mac: &'a str,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper<'a> {
        #[serde(borrow)]
        auth: Auth<'a>,
        #[serde(borrow)]
        msg: &'a RawValue,
    }
    let w: Wrapper<'_> =
        serde_json::from_slice(payload).map_err(|e| AuthError::Malformed(e.to_string()))?;
    let kid = KeyId::new(w.auth.kid)?;
    let mac = decode_mac(w.auth.mac)?;
    // The raw value borrows from `payload`: find its place to hand out the exact bytes.
    let raw = w.msg.get().as_bytes();
    let offset = raw.as_ptr() as usize - payload.as_ptr() as usize;
    let msg = &payload[offset..offset + raw.len()];
    Ok(Opened::Signed { kid, mac, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, fill: u8) -> Key {
        Key::new(KeyId::new(id).unwrap(), vec![fill; 32]).unwrap()
    }

    const TOPIC: &str = "city/v1/gw/gw-a/up";
    const MSG: &[u8] = br#"{"v":1,"gateway":"gw-a","x":[1, 2]}"#;

    #[test]
    fn sealed_message_opens_and_verifies() {
        let k = key("k1", 7);
        let p = seal(&k, TOPIC, MSG);
        let o = open(&p).unwrap();
        assert_eq!(o.msg(), MSG);
        assert_eq!(o.kid().unwrap().as_str(), "k1");
        o.verify(&k, TOPIC).unwrap();
        // The wrapper is plain JSON.
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["msg"]["gateway"], "gw-a");
    }

    #[test]
    fn another_key_topic_or_byte_fails() {
        let k = key("k1", 7);
        let p = seal(&k, TOPIC, MSG);
        let o = open(&p).unwrap();
        assert_eq!(o.verify(&key("k1", 8), TOPIC), Err(AuthError::BadMac));
        assert_eq!(o.verify(&k, "city/v1/gw/gw-b/up"), Err(AuthError::BadMac));
        assert_eq!(
            o.verify(&k, "city/v1/gw/gw-a/status"),
            Err(AuthError::BadMac)
        );
        // Alter one byte inside the message (2 → 3), even one JSON ignores (a space).
        for (back, from, to) in [(4, b'2', b'3'), (5, b' ', b'\n')] {
            let mut bad = p.clone();
            let at = bad.len() - back;
            assert_eq!(bad[at], from, "{}", String::from_utf8_lossy(&bad));
            bad[at] = to;
            let o = open(&bad).unwrap();
            assert_eq!(o.verify(&k, TOPIC), Err(AuthError::BadMac));
        }
    }

    #[test]
    fn unsigned_and_malformed() {
        let o = open(MSG).unwrap();
        assert_eq!(o, Opened::Unsigned(MSG));
        assert_eq!(o.verify(&key("k1", 7), TOPIC), Err(AuthError::Unsigned));
        assert_eq!(
            open(b"not json").unwrap(),
            Opened::Unsigned(&b"not json"[..])
        );
        for bad in [
            &br#"{"auth":{"kid":"k1"},"msg":{}}"#[..],
            br#"{"auth":{"kid":"k 1","mac":"AAAA"},"msg":{}}"#,
            br#"{"auth":{"kid":"k1","mac":"AAAA"},"msg":{}}"#,
            br#"{"auth":{"kid":"k1","mac":"AAAA"},"msg":{},"extra":1}"#,
            br#" { "auth" : 5 }"#,
        ] {
            let e = open(bad).unwrap_err();
            assert_eq!(e.code(), "auth_malformed", "{e}");
        }
    }

    #[test]
    fn the_quick_split_and_the_strict_reading_agree() {
        let k = key("k1", 7);
        let p = seal(&k, TOPIC, MSG);
        assert_eq!(open(&p).unwrap(), open_strict(&p).unwrap());
        // Another layout of the same wrapper: read strictly, the same message.
        let text = String::from_utf8(p.clone()).unwrap();
        let spaced = text.replacen("{\"auth\":", "{ \"auth\" : ", 1).replacen(
            ",\"msg\":",
            ", \"msg\" :\n",
            1,
        );
        let o = open(spaced.as_bytes()).unwrap();
        assert_eq!(o, open_strict(spaced.as_bytes()).unwrap());
        assert_eq!(o.msg(), MSG);
        o.verify(&k, TOPIC).unwrap();
        // An escape in the key id is left to the strict path (which refuses it, as before).
        let escaped = text.replacen("\"k1\"", "\"\\u006b1\"", 1);
        assert_eq!(open(escaped.as_bytes()), open_strict(escaped.as_bytes()));
        // Something after the message: split quickly, its MAC fails; strictly, it is malformed.
        let mut extra = p[..p.len() - 1].to_vec();
        extra.extend_from_slice(br#","extra":1}"#);
        assert_eq!(
            open(&extra).unwrap().verify(&k, TOPIC),
            Err(AuthError::BadMac)
        );
        assert_eq!(open_strict(&extra).unwrap_err().code(), "auth_malformed");
    }

    #[test]
    fn evidence_macs_bind_gateway_and_image() {
        let k = key("k1", 7);
        let sha = "ab".repeat(32);
        let mac = evidence_mac(&k, "gw-a", &sha);
        verify_evidence_mac(&k, "gw-a", &sha, &mac).unwrap();
        assert_eq!(
            verify_evidence_mac(&k, "gw-b", &sha, &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify_evidence_mac(&k, "gw-a", &"cd".repeat(32), &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify_evidence_mac(&key("k1", 8), "gw-a", &sha, &mac),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn keys_check_their_secret_and_hide_it() {
        assert!(Key::new(KeyId::new("k").unwrap(), vec![1; 8]).is_err());
        let k = key("k-2026.1_a", 9);
        let again = Key::from_base64(k.id.clone(), &k.secret_base64()).unwrap();
        assert_eq!(again, k);
        assert!(!format!("{k:?}").contains("9, 9"));
        assert!(KeyId::new("").is_err());
        assert!(KeyId::new(&"a".repeat(65)).is_err());
        assert!(KeyId::new("a/b").is_err());
    }
}
