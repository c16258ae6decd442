//! Gateway keys: which gateway may sign with which key (see `protocol::auth`).
//!
//! Keys live in the hub's database (`gateway_keys`), managed with `hub keys ...` (also while the
//! hub runs: SQLite in WAL mode takes a second writer). Ingest verifies every message with a
//! [`KeyRing`], an in-memory copy. A trigger bumps a version number on every change to the table;
//! the ring reloads when it moves, checked every [`RELOAD_EVERY`] and whenever a message names a
//! key the ring does not hold. So a key added for a gateway works from its first message, and a
//! revoked key stops working within [`RELOAD_EVERY`].
//!
//! Rotation without downtime: `hub keys add GW` (the gateway's old key still works), install the
//! new key file on the gateway and restart its agent, then `hub keys revoke GW OLD`. The hub signs
//! its commands with the key the gateway last used, so commands keep working during the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::db::{self, Begin, Sql, Tx, args};
use crate::store::Database;
use protocol::GatewayId;
use protocol::auth::{AuthError, Key, KeyId, Opened};
use serde::Serialize;

/// How often the ring checks the database for changed keys (revocations take effect within this).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A key as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub gateway: String,
    pub key_id: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// Direct access to the key table, for the `hub keys` commands and the demo.
pub struct KeyAdmin {
    conn: Box<dyn Sql + Send>,
}

impl std::fmt::Debug for KeyAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAdmin")
    }
}

impl KeyAdmin {
    /// Opens the hub database (creating and migrating it if needed).
    pub fn open(database: &Database) -> anyhow::Result<Self> {
        Ok(Self {
            conn: database.connect_and_migrate()?,
        })
    }

    /// Makes a new random key for `gateway` (its other keys stay valid).
    pub fn add(&self, gateway: &GatewayId, key_id: Option<KeyId>) -> anyhow::Result<Key> {
        let id = match key_id {
            Some(k) => k,
            None => new_key_id()?,
        };
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
        let key = Key::new(id, secret)?;
        self.import(gateway, &key)?;
        Ok(key)
    }

    /// Records a key made elsewhere (a key file). Refuses an id the gateway already has.
    pub fn import(&self, gateway: &GatewayId, key: &Key) -> anyhow::Result<()> {
        let n = self.conn.execute(
            "INSERT INTO gateway_keys (gateway, key_id, secret, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            args![
                gateway.as_str(),
                key.id.as_str(),
                key.secret(),
                crate::now_ms()
            ],
        )?;
        anyhow::ensure!(
            n == 1,
            "gateway {gateway} already has a key {}; choose another id",
            key.id
        );
        Ok(())
    }

    /// Revokes a key: messages signed with it are refused from the next reload on.
    pub fn revoke(&self, gateway: &GatewayId, key_id: &KeyId) -> anyhow::Result<()> {
        let n = self.conn.execute(
            "UPDATE gateway_keys SET revoked_at = $3 WHERE gateway = $1 AND key_id = $2 AND revoked_at IS NULL",
            args![gateway.as_str(), key_id.as_str(), crate::now_ms()],
        )?;
        anyhow::ensure!(
            n == 1,
            "gateway {gateway} has no current key {key_id} (see `hub keys list`)"
        );
        Ok(())
    }

    /// Every key, or one gateway's, oldest first.
    pub fn list(&self, gateway: Option<&GatewayId>) -> anyhow::Result<Vec<KeyInfo>> {
        let rows = self.conn.query(
            "SELECT gateway, key_id, created_at, revoked_at FROM gateway_keys
             WHERE CAST($1 AS TEXT) IS NULL OR gateway = $1 ORDER BY gateway, created_at, key_id",
            args![gateway.map(|g| g.as_str())],
        )?;
        let ts = |ms: i64| protocol::Timestamp::from_unix_millis(ms).to_rfc3339();
        let keys = rows.iter().map(|r| {
            Ok(KeyInfo {
                gateway: r.get(0)?,
                key_id: r.get(1)?,
                created_at: ts(r.get(2)?),
                revoked_at: r.get::<Option<i64>>(3)?.map(ts),
            })
        });
        Ok(keys.collect::<db::Result<_>>()?)
    }

    /// The gateway's newest current key, made if it has none (the demo provisions its gateways so).
    pub fn ensure(&self, gateway: &GatewayId) -> anyhow::Result<Key> {
        let found = self
            .conn
            .query_opt(
                "SELECT key_id, secret FROM gateway_keys WHERE gateway = $1 AND revoked_at IS NULL
                 ORDER BY created_at DESC LIMIT 1",
                args![gateway.as_str()],
            )?
            .map(|r| Ok::<_, db::DbError>((r.get::<String>(0)?, r.get::<Vec<u8>>(1)?)))
            .transpose()?;
        match found {
            Some((id, secret)) => Ok(Key::new(KeyId::new(&id)?, secret)?),
            None => self.add(gateway, None),
        }
    }
}

fn table_version(conn: &dyn Sql) -> db::Result<i64> {
    db::one(
        conn,
        "SELECT version FROM gateway_keys_version WHERE id = 0",
        &[],
    )
}

/// `k-YYYYMMDD-xxxxxx`: sorts by date, and two made the same day differ.
fn new_key_id() -> anyhow::Result<KeyId> {
    let mut r = [0u8; 3];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let day = protocol::Timestamp::now().to_rfc3339();
    let day: String = day.chars().take(10).filter(|c| *c != '-').collect();
    Ok(KeyId::new(&format!(
        "k-{day}-{:02x}{:02x}{:02x}",
        r[0], r[1], r[2]
    ))?)
}

/// Whether gateways without a key may send unsigned messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// Every message must be signed with a current key of its gateway (the default).
    #[default]
    Required,
    /// A gateway with no key on the hub may send unsigned messages (counted); a gateway that has a
    /// key must sign. For fleets being moved over to keys, and for development.
    AllowUnsigned,
}

#[derive(Debug, Default)]
struct Ring {
    keys: HashMap<String, Vec<Key>>,
    /// The key each gateway last signed with: the hub signs its commands to it with the same.
    last_used: HashMap<String, KeyId>,
}

/// The keys ingest verifies with.
#[derive(Debug)]
pub struct KeyRing {
    ring: RwLock<Ring>,
    conn: Mutex<Box<dyn Sql + Send>>,
    /// The table version the ring holds.
    loaded: Mutex<i64>,
    pub policy: AuthPolicy,
}

/// What authentication decided about a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Signed with a current key of the gateway: the message bytes.
    Signed(&'a [u8]),
    /// Unsigned, from a gateway without a key, under [`AuthPolicy::AllowUnsigned`].
    UnsignedAllowed(&'a [u8]),
}

impl KeyRing {
    /// Loads every current key from the database.
    pub fn open(database: &Database, policy: AuthPolicy) -> anyhow::Result<Arc<Self>> {
        let conn = database.connect()?;
        let ring = KeyRing {
            ring: RwLock::new(Ring::default()),
            conn: Mutex::new(conn),
            loaded: Mutex::new(-1),
            policy,
        };
        ring.reload()?;
        Ok(Arc::new(ring))
    }

    /// Reads the current keys again.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut keys: HashMap<String, Vec<Key>> = HashMap::new();
        let version;
        {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            // One read transaction: the keys and the version they belong to. (REPEATABLE READ
            // on PostgreSQL: one snapshot for both statements.)
            let tx = Tx::begin(&**conn, Begin::Deferred)?;
            if tx.engine() == db::Engine::Postgres {
                tx.batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
            }
            version = table_version(&tx)?;
            let rows = tx.query(
                "SELECT gateway, key_id, secret FROM gateway_keys WHERE revoked_at IS NULL ORDER BY created_at",
                &[],
            )?;
            tx.commit()?;
            for r in &rows {
                let gateway: String = r.get(0)?;
                let id: String = r.get(1)?;
                let secret: Vec<u8> = r.get(2)?;
                match KeyId::new(&id).and_then(|id| Key::new(id, secret)) {
                    Ok(k) => keys.entry(gateway).or_default().push(k),
                    Err(e) => {
                        tracing::error!(%gateway, key = %id, error = %e, "unusable key in the database; ignored")
                    }
                }
            }
        }
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        ring.keys = keys;
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = version;
        Ok(())
    }

    /// Reloads if the key table changed since the last load (one single-row read otherwise).
    /// Returns whether it reloaded.
    pub fn refresh(&self) -> bool {
        let current = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            table_version(&**conn)
        };
        let changed = match current {
            Ok(v) => v != *self.loaded.lock().unwrap_or_else(|p| p.into_inner()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the key table's version");
                false
            }
        };
        if changed {
            match self.reload() {
                Ok(()) => tracing::info!(
                    gateways_with_keys = self.gateways_with_keys(),
                    "gateway keys reloaded"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload gateway keys; keeping the ones loaded")
                }
            }
        }
        changed
    }

    /// Whether `password` is the broker password of a current key of gateway `username` (see
    /// [`protocol::auth::broker_password`]). A miss reloads the keys if they changed (a key added
    /// a moment ago works at once).
    pub fn check_broker_login(&self, username: &str, password: &str) -> bool {
        let matches = || {
            let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
            ring.keys.get(username).is_some_and(|keys| {
                keys.iter()
                    .any(|k| protocol::auth::verify_broker_password(k, username, password))
            })
        };
        matches() || (self.refresh() && matches())
    }

    /// [`Self::check`], but a key id the ring does not hold makes it look at the key table first
    /// and reload it if it changed: a key added a moment ago works from its first message. The
    /// look is one single-row read of the version (microseconds), so even a stream of made-up key
    /// ids (which only a logged-in client can send) costs little.
    pub fn check_fresh<'a>(
        &self,
        gateway: &GatewayId,
        topic: &str,
        payload: &'a [u8],
    ) -> Result<Verdict<'a>, AuthError> {
        match self.check(gateway, topic, payload) {
            Err(AuthError::UnknownKey(_)) if self.refresh() => self.check(gateway, topic, payload),
            other => other,
        }
    }

    /// Authenticates a message that arrived on `topic`, which names `gateway`.
    pub fn check<'a>(
        &self,
        gateway: &GatewayId,
        topic: &str,
        payload: &'a [u8],
    ) -> Result<Verdict<'a>, AuthError> {
        // A payload refused after the quick split (`open`) may be a malformed wrapper: that is
        // the reason to give, as a strict reading of it would have.
        self.check_opened(gateway, topic, payload).map_err(|e| {
            match protocol::auth::open_strict(payload) {
                Err(strict) => strict,
                Ok(_) => e,
            }
        })
    }

    fn check_opened<'a>(
        &self,
        gateway: &GatewayId,
        topic: &str,
        payload: &'a [u8],
    ) -> Result<Verdict<'a>, AuthError> {
        let opened = protocol::auth::open(payload)?;
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let keys = ring.keys.get(gateway.as_str());
        match &opened {
            Opened::Unsigned(msg) => {
                if keys.is_none_or(|k| k.is_empty()) && self.policy == AuthPolicy::AllowUnsigned {
                    Ok(Verdict::UnsignedAllowed(msg))
                } else {
                    Err(AuthError::Unsigned)
                }
            }
            Opened::Signed { kid, msg, .. } => {
                let key = keys
                    .and_then(|ks| ks.iter().find(|k| k.id == *kid))
                    .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))?;
                opened.verify(key, topic)?;
                if ring.last_used.get(gateway.as_str()) != Some(kid) {
                    drop(ring);
                    self.ring
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .last_used
                        .insert(gateway.to_string(), kid.clone());
                }
                Ok(Verdict::Signed(msg))
            }
        }
    }

    /// Authenticates an evidence upload by `gateway` of the image `sha256` (headers `X-Gateway-Key`
    /// and `X-Gateway-Mac`, see `protocol::auth::evidence_mac`), under the same policy as messages.
    pub fn check_evidence(
        &self,
        gateway: &GatewayId,
        sha256: &str,
        kid: Option<&str>,
        mac: Option<&str>,
    ) -> Result<(), AuthError> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let keys = ring.keys.get(gateway.as_str());
        let (Some(kid), Some(mac)) = (kid, mac) else {
            return if keys.is_none_or(|k| k.is_empty()) && self.policy == AuthPolicy::AllowUnsigned
            {
                Ok(())
            } else {
                Err(AuthError::Unsigned)
            };
        };
        let key = keys
            .and_then(|ks| ks.iter().find(|k| k.id.as_str() == kid))
            .ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))?;
        protocol::auth::verify_evidence_mac(key, gateway.as_str(), sha256, mac)
    }

    /// The key to sign a command to `gateway` with: the one it last signed with if still current,
    /// else its newest. `None`: the gateway has no key (the command goes unsigned).
    pub fn signing_key(&self, gateway: &str) -> Option<Key> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let keys = ring.keys.get(gateway)?;
        ring.last_used
            .get(gateway)
            .and_then(|id| keys.iter().find(|k| k.id == *id))
            .or_else(|| keys.last())
            .cloned()
    }

    /// Gateways with at least one current key.
    pub fn gateways_with_keys(&self) -> usize {
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .values()
            .filter(|k| !k.is_empty())
            .count()
    }
}

/// A message to explain an authentication failure to an operator.
pub fn explain(e: &AuthError, gateway: &GatewayId, policy: AuthPolicy) -> String {
    match e {
        AuthError::Unsigned if policy == AuthPolicy::Required => format!(
            "unsigned message; gateway {gateway} must sign with its key (`hub keys add {gateway}`, then `[uplink] key_file` on the gateway), or run the hub with --allow-unsigned"
        ),
        AuthError::Unsigned => format!(
            "unsigned message; gateway {gateway} has a key on this hub, so its messages must be signed"
        ),
        AuthError::UnknownKey(kid) => format!(
            "signed with key {kid}, which is not a current key of gateway {gateway} (revoked, another gateway's, or never added: `hub keys list {gateway}`)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forged_key(k: &Key) -> Key {
        Key::new(KeyId::new("made-up").unwrap(), k.secret().to_vec()).unwrap()
    }

    #[test]
    fn add_verify_rotate_revoke() {
        for (name, database, _dir) in crate::db::testing::databases() {
            eprintln!("engine: {name}");
            add_verify_rotate_revoke_on(&database);
        }
    }

    fn add_verify_rotate_revoke_on(database: &Database) {
        let admin = KeyAdmin::open(database).unwrap();
        let gw = GatewayId::new("gw-a").unwrap();
        let other = GatewayId::new("gw-b").unwrap();
        let k1 = admin.add(&gw, None).unwrap();
        let kb = admin.add(&other, None).unwrap();
        let ring = KeyRing::open(database, AuthPolicy::Required).unwrap();
        let topic = "city/v1/gw/gw-a/up";
        let msg = br#"{"v":1}"#;

        let p = protocol::auth::seal(&k1, topic, msg);
        assert_eq!(ring.check(&gw, topic, &p), Ok(Verdict::Signed(&msg[..])));
        // Another gateway's key, even for its own topic id.
        let p = protocol::auth::seal(&kb, topic, msg);
        assert!(matches!(
            ring.check(&gw, topic, &p),
            Err(AuthError::UnknownKey(_))
        ));
        assert_eq!(ring.check(&gw, topic, msg), Err(AuthError::Unsigned));
        // In seal's layout with a field after the message: refused as a malformed wrapper (the
        // quick split only sees a MAC that fails), as a strict reading says.
        let p = protocol::auth::seal(&k1, topic, msg);
        let mut extra = p[..p.len() - 1].to_vec();
        extra.extend_from_slice(br#","extra":1}"#);
        let e = ring.check(&gw, topic, &extra).unwrap_err();
        assert_eq!(e.code(), "auth_malformed", "{e}");

        // Rotation: a second key works once reloaded; commands follow the key last used.
        let k2 = admin.add(&gw, Some(KeyId::new("k-two").unwrap())).unwrap();
        let p2 = protocol::auth::seal(&k2, topic, msg);
        assert!(matches!(
            ring.check(&gw, topic, &p2),
            Err(AuthError::UnknownKey(_))
        ));
        assert_eq!(ring.signing_key("gw-a").unwrap().id, k1.id);
        // check_fresh reads the key table on an unknown key id, and takes it from its first message.
        assert!(ring.check_fresh(&gw, topic, &p2).is_ok());
        assert!(!ring.refresh(), "loaded now");
        // Made-up key ids are refused and change nothing.
        let bogus = protocol::auth::seal(&forged_key(&kb), topic, msg);
        let reads = |ring: &KeyRing| *ring.loaded.lock().unwrap();
        let before = reads(&ring);
        for _ in 0..100 {
            assert!(ring.check_fresh(&gw, topic, &bogus).is_err());
        }
        assert_eq!(reads(&ring), before, "nothing changed, nothing reloaded");
        assert_eq!(ring.signing_key("gw-a").unwrap().id, k2.id);
        admin.revoke(&gw, &k1.id).unwrap();
        assert!(admin.revoke(&gw, &k1.id).is_err(), "revoked twice");
        assert!(ring.refresh());
        let p1 = protocol::auth::seal(&k1, topic, msg);
        assert!(matches!(
            ring.check(&gw, topic, &p1),
            Err(AuthError::UnknownKey(_))
        ));
        assert!(admin.import(&gw, &k2).is_err(), "same id twice");
        assert_eq!(admin.ensure(&gw).unwrap(), k2);
        let listed = admin.list(Some(&gw)).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].revoked_at.is_some() && listed[1].revoked_at.is_none());
    }

    #[test]
    fn unsigned_only_for_gateways_without_keys_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("hub.sqlite3"));
        let admin = KeyAdmin::open(&database).unwrap();
        let keyed = GatewayId::new("gw-keyed").unwrap();
        admin.add(&keyed, None).unwrap();
        let ring = KeyRing::open(&database, AuthPolicy::AllowUnsigned).unwrap();
        let free = GatewayId::new("gw-free").unwrap();
        assert_eq!(
            ring.check(&free, "t", b"{}"),
            Ok(Verdict::UnsignedAllowed(&b"{}"[..]))
        );
        assert_eq!(ring.check(&keyed, "t", b"{}"), Err(AuthError::Unsigned));
    }
}
