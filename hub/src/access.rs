//! Who may use the API: bearer tokens with roles.
//!
//! Tokens are made with `hub tokens add NAME --role ROLE [--department D]`, shown once, and kept
//! only as their SHA-256 (a token is 32 random bytes, so a fast hash is enough: there is nothing to
//! guess). Every request under `/api/v1` needs one, as `Authorization: Bearer <token>` or, for links
//! a browser opens (the demo's URL, server-sent events), `?token=<token>`. `/healthz` is open;
//! `/metrics` is open unless the hub runs with `--metrics-auth`. Gateways upload evidence with their
//! message key instead (see `crate::evidence`).
//!
//! | role | reads | plates | evidence images | commands | dead letters |
//! |------|-------|--------|-----------------|----------|--------------|
//! | admin | all | shown | yes | yes | with payload |
//! | operator | all | masked | no | yes | without payload |
//! | enforcement | all | shown | yes | no | no |
//! | crew (of a department) | all | masked | no | no | no |
//! | installer | all | masked | no | yes | without payload |

use std::path::Path;

use crate::db::{Begin, Sql, Tx, args};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{ApiError, ApiState};

/// The roles of people using the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Enforcement,
    Crew,
    Installer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Enforcement => "enforcement",
            Role::Crew => "crew",
            Role::Installer => "installer",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::Operator,
            Role::Enforcement,
            Role::Crew,
            Role::Installer,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The authenticated user of a request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub department: Option<String>,
}

impl Principal {
    /// May see plates in full and evidence images (enforcement rights).
    pub fn sees_plates(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Enforcement)
    }

    /// May send commands to devices.
    pub fn may_command(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator | Role::Installer)
    }

    /// May list dead letters (`with_payload`: and see their payloads, which may hold plates).
    pub fn may_read_dead_letters(&self) -> (bool, bool) {
        match self.role {
            Role::Admin => (true, true),
            Role::Operator | Role::Installer => (true, false),
            Role::Enforcement | Role::Crew => (false, false),
        }
    }

    /// A 403 naming what the role lacks.
    pub fn forbidden(&self, what: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{what} is not allowed for role {} (token {:?})",
                self.role.as_str(),
                self.name
            ),
        )
    }
}

/// Hides all but the first four characters of a plate: 苏A8HK52 → 苏A8H***.
pub fn mask_plate(plate: &str) -> String {
    let n = plate.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    plate
        .chars()
        .take(4)
        .chain(std::iter::repeat_n('*', n - 4))
        .collect()
}

/// Masks every `plate` (and `plates[]`) field in an event's attributes, in place.
pub fn mask_attributes(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k.eq_ignore_ascii_case("plate") || k.eq_ignore_ascii_case("licensePlate") {
                    if let Some(s) = val.as_str() {
                        *val = serde_json::Value::String(mask_plate(s));
                    }
                } else {
                    mask_attributes(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_attributes),
        _ => {}
    }
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The token table, for `hub tokens` and the demo.
#[derive(Debug)]
pub struct TokenAdmin {
    conn: Box<dyn Sql + Send>,
}

/// A token as listed (never the token).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    pub department: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl TokenAdmin {
    /// Opens the hub database (creating and migrating it if needed).
    pub fn open(database: &crate::store::Database) -> anyhow::Result<Self> {
        Ok(Self {
            conn: database.connect_and_migrate()?,
        })
    }

    /// Makes a token and returns it (it is not kept: only its hash is).
    pub fn add(&self, name: &str, role: Role, department: Option<&str>) -> anyhow::Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
        let token = format!(
            "cty_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        self.add_token(name, role, department, &token)?;
        Ok(token)
    }

    /// Records a token made elsewhere (provisioning tools); at least 32 printable characters.
    pub fn add_token(
        &self,
        name: &str,
        role: Role,
        department: Option<&str>,
        token: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            token.len() >= 32 && token.bytes().all(|b| b.is_ascii_graphic()),
            "a token must be at least 32 printable ASCII characters without spaces"
        );
        anyhow::ensure!(
            !name.trim().is_empty() && name.len() <= 100,
            "a token needs a name of 1 to 100 characters (who or what uses it)"
        );
        anyhow::ensure!(
            (role == Role::Crew) == department.is_some(),
            "a crew token needs --department, and only a crew token has one"
        );
        let n = self.conn.execute(
            "INSERT INTO api_tokens (name, role, department, hash, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            args![name, role.as_str(), department, hash(token), crate::now_ms()],
        )?;
        anyhow::ensure!(
            n == 1,
            "a token named {name:?}, or this very token, exists already"
        );
        Ok(())
    }

    /// Revokes the token called `name` (refused from the next request on).
    pub fn revoke(&self, name: &str) -> anyhow::Result<()> {
        let n = self.conn.execute(
            "UPDATE api_tokens SET revoked_at = $2, name = name || '#revoked-' || CAST(CAST($2 AS BIGINT) AS TEXT) WHERE name = $1 AND revoked_at IS NULL",
            args![name, crate::now_ms()],
        )?;
        anyhow::ensure!(
            n == 1,
            "no current token named {name:?} (see `hub tokens list`)"
        );
        Ok(())
    }

    pub fn list(&self) -> anyhow::Result<Vec<TokenInfo>> {
        let rows = self.conn.query(
            "SELECT name, role, department, created_at, revoked_at FROM api_tokens ORDER BY created_at, name",
            &[],
        )?;
        let ts = |ms: i64| protocol::Timestamp::from_unix_millis(ms).to_rfc3339();
        let infos = rows.iter().map(|r| {
            Ok(TokenInfo {
                name: r.get(0)?,
                role: r.get(1)?,
                department: r.get(2)?,
                created_at: ts(r.get(3)?),
                revoked_at: r.get::<Option<i64>>(4)?.map(ts),
            })
        });
        Ok(infos.collect::<crate::db::Result<_>>()?)
    }
}

/// The tokens file (`hub serve --tokens-file`): tokens as configuration, kept as their SHA-256
/// only, so the file may live in a repository with the rest of the hub's configuration.
///
/// ```toml
/// [[token]]
/// name = "control-room"
/// role = "operator"
/// sha256 = "…64 hex digits…"   # `hub tokens hash` prints it for a token
///
/// [[token]]
/// name = "lighting-crew-1"
/// role = "crew"
/// department = "lighting"
/// sha256 = "…"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: toml::Spanned<String>,
    role: Role,
    #[serde(default)]
    department: Option<String>,
    sha256: toml::Spanned<String>,
}

impl TokenAdmin {
    /// Makes the tokens of a tokens file current: adds and updates them, and revokes tokens that
    /// came from the file before and are no longer in it. Every problem is reported with the
    /// file and line; nothing changes unless the whole file is right.
    pub fn sync_file(&mut self, file: &Path) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
        let parsed: TokensFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        let mut entries = Vec::new();
        for t in &parsed.token {
            let at = format!("{}:{}", file.display(), line(t.name.span().start));
            let name = t.name.get_ref().trim();
            if name.is_empty() || name.len() > 100 || name.contains('#') {
                problems.push(format!(
                    "{at}: token name {name:?} must be 1 to 100 characters without '#'"
                ));
            }
            if !names.insert(name.to_owned()) {
                problems.push(format!("{at}: token name {name:?} appears twice"));
            }
            if (t.role == Role::Crew) != t.department.is_some() {
                problems.push(format!("{at}: token {name:?}: a crew token needs a department, and only a crew token has one"));
            }
            let hex = t.sha256.get_ref().trim().to_ascii_lowercase();
            let digest = (hex.len() == 64)
                .then(|| {
                    (0..32)
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .flatten();
            match digest {
                Some(d) => {
                    if !hashes.insert(d.clone()) {
                        problems.push(format!(
                            "{}:{}: token {name:?}: the same token as another entry",
                            file.display(),
                            line(t.sha256.span().start)
                        ));
                    }
                    entries.push((name.to_owned(), t.role, t.department.clone(), d));
                }
                None => problems.push(format!(
                    "{}:{}: token {name:?}: sha256 must be 64 hex digits (the SHA-256 of the token; `hub tokens hash` prints it), not the token itself",
                    file.display(),
                    line(t.sha256.span().start)
                )),
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        let now = crate::now_ms();
        let tx = Tx::begin(&*self.conn, Begin::Write)?;
        for (name, role, department, digest) in &entries {
            let cli = tx
                .query_opt(
                    "SELECT 1 FROM api_tokens WHERE name = $1 AND source = 'cli'",
                    args![name],
                )?
                .is_some();
            anyhow::ensure!(
                !cli,
                "{}: token {name:?} exists already, made with `hub tokens add`; revoke it or rename the entry",
                file.display()
            );
            tx.execute(
                "INSERT INTO api_tokens (name, role, department, hash, created_at, source) VALUES ($1, $2, $3, $4, $5, 'config')
                 ON CONFLICT (name) DO UPDATE SET role = $2, department = $3, hash = $4, revoked_at = NULL",
                args![name, role.as_str(), department, digest, now],
            )
            .map_err(|e| anyhow::anyhow!("{}: token {name:?}: {e} (is the same token also made with `hub tokens add`?)", file.display()))?;
        }
        let keep: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let stale: Vec<String> = {
            let names = tx
                .query(
                    "SELECT name FROM api_tokens WHERE source = 'config' AND revoked_at IS NULL",
                    &[],
                )?
                .iter()
                .map(|r| r.get::<String>(0))
                .collect::<crate::db::Result<Vec<_>>>()?;
            names
                .into_iter()
                .filter(|n| !keep.contains(&n.as_str()))
                .collect()
        };
        for name in &stale {
            tx.execute(
                "UPDATE api_tokens SET revoked_at = $2, name = name || '#revoked-' || CAST(CAST($2 AS BIGINT) AS TEXT) WHERE name = $1",
                args![name, now],
            )?;
            tracing::info!(token = %name, "token no longer in the tokens file: revoked");
        }
        tx.commit()?;
        Ok(entries.len())
    }
}

/// The SHA-256 of a token in hex, as a tokens file names it.
pub fn token_sha256_hex(token: &str) -> String {
    hash(token.trim())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Looks a token up (current tokens only).
pub(crate) fn lookup(c: &dyn crate::db::Sql, token: &str) -> crate::db::Result<Option<Principal>> {
    let Some(r) = c.query_opt(
        "SELECT name, role, department FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
        crate::db::args![hash(token)],
    )?
    else {
        return Ok(None);
    };
    let (name, role, department): (String, String, Option<String>) =
        (r.get(0)?, r.get(1)?, r.get(2)?);
    Ok(Role::parse(&role).map(|role| Principal {
        name,
        role,
        department,
    }))
}

/// The token of a request: `Authorization: Bearer`, else the `token` query parameter.
fn token_of(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    })
}

/// Middleware: authenticates every request it wraps and adds its [`Principal`].
pub async fn require_token(
    State(s): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, Response> {
    let unauthorised = |msg: &str| {
        s.metrics.rejected("api_unauthorised");
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"city-hub\""),
        );
        r
    };
    let Some(token) = token_of(&req) else {
        return Err(unauthorised(
            "this endpoint needs a token: Authorization: Bearer <token> (made with `hub tokens add`)",
        ));
    };
    let found = s
        .store
        .read(move |c| lookup(c, &token).map_err(Into::into))
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let Some(principal) = found else {
        return Err(unauthorised("unknown or revoked token"));
    };
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn tokens_file_adds_updates_revokes_and_reports_lines() {
        for (name, database, dir) in crate::db::testing::databases() {
            eprintln!("engine: {name}");
            tokens_file_on(&database, dir.path());
        }
    }

    #[allow(clippy::unwrap_used)]
    fn tokens_file_on(database: &crate::store::Database, dir: &std::path::Path) {
        let mut admin = TokenAdmin::open(database).unwrap();
        let cli = admin.add("made-by-cli", Role::Admin, None).unwrap();
        let (t1, t2) = ("a".repeat(40), "b".repeat(40));
        let file = dir.join("tokens.toml");
        let write = |body: String| std::fs::write(&file, body).unwrap();
        write(format!(
            "[[token]]\nname = \"control-room\"\nrole = \"operator\"\nsha256 = \"{}\"\n\n\
             [[token]]\nname = \"crew-1\"\nrole = \"crew\"\ndepartment = \"lighting\"\nsha256 = \"{}\"\n",
            token_sha256_hex(&t1),
            token_sha256_hex(&t2)
        ));
        assert_eq!(admin.sync_file(&file).unwrap(), 2);
        let db = database.connect().unwrap();
        let who = |t: &str| lookup(&*db, t).unwrap();
        assert_eq!(who(&t1).unwrap().role, Role::Operator);
        assert_eq!(who(&t2).unwrap().department.as_deref(), Some("lighting"));
        assert!(
            who(&cli).is_some(),
            "tokens made with the CLI are left alone"
        );
        // Synced again (a restart): nothing changes.
        assert_eq!(admin.sync_file(&file).unwrap(), 2);
        assert!(who(&t1).is_some());
        // crew-1 leaves the file: revoked; control-room gets a new role.
        write(format!(
            "[[token]]\nname = \"control-room\"\nrole = \"enforcement\"\nsha256 = \"{}\"\n",
            token_sha256_hex(&t1)
        ));
        admin.sync_file(&file).unwrap();
        assert_eq!(who(&t1).unwrap().role, Role::Enforcement);
        assert!(who(&t2).is_none(), "removed from the file: revoked");
        // Mistakes name the file and line, and change nothing.
        write(
            "[[token]]\nname = \"ok\"\nrole = \"operator\"\nsha256 = \"{}\"\n\n[[token]]\nname = \"bad\"\nrole = \"crew\"\nsha256 = \"cty_not_a_hash\"\n"
                .replace("{}", &token_sha256_hex(&"c".repeat(40))),
        );
        let err = admin.sync_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("tokens.toml:7: token \"bad\": a crew token needs a department"),
            "{err}"
        );
        assert!(
            err.contains("tokens.toml:9: token \"bad\": sha256 must be 64 hex digits"),
            "{err}"
        );
        assert!(who(&t1).is_some(), "nothing changed");
        write("[[token]]\nname = \"x\"\nrole = \"mayor\"\nsha256 = \"00\"\n".into());
        let err = admin.sync_file(&file).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("mayor"), "{err}");
        write(format!(
            "[[token]]\nname = \"made-by-cli\"\nrole = \"operator\"\nsha256 = \"{}\"\n",
            token_sha256_hex(&t2)
        ));
        let err = admin.sync_file(&file).unwrap_err().to_string();
        assert!(err.contains("made with `hub tokens add`"), "{err}");
    }

    #[test]
    fn masks_plates_everywhere_in_attributes() {
        assert_eq!(mask_plate("苏A8HK52"), "苏A8H***");
        assert_eq!(mask_plate("苏AD12345"), "苏AD1****");
        assert_eq!(mask_plate("AB"), "**");
        let mut v = serde_json::json!({"plate": "苏A8HK52", "plateColor": "blue", "nested": [{"plate": "京N12345"}]});
        mask_attributes(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"plate": "苏A8H***", "plateColor": "blue", "nested": [{"plate": "京N12***"}]})
        );
    }

    #[test]
    fn tokens_are_kept_hashed_and_revocable() {
        for (name, database, _dir) in crate::db::testing::databases() {
            eprintln!("engine: {name}");
            tokens_are_kept_hashed_and_revocable_on(&database);
        }
    }

    #[allow(clippy::unwrap_used)]
    fn tokens_are_kept_hashed_and_revocable_on(database: &crate::store::Database) {
        let admin = TokenAdmin::open(database).unwrap();
        let t = admin
            .add("zhang-crew", Role::Crew, Some("sanitation"))
            .unwrap();
        assert!(admin.add("x", Role::Crew, None).is_err());
        assert!(admin.add("zhang-crew", Role::Admin, None).is_err());
        let conn = database.connect().unwrap();
        let conn = &*conn;
        let p = lookup(conn, &t).unwrap().unwrap();
        assert_eq!(p.role, Role::Crew);
        assert_eq!(p.department.as_deref(), Some("sanitation"));
        let stored: Vec<u8> = crate::db::one(conn, "SELECT hash FROM api_tokens", &[]).unwrap();
        assert_ne!(stored, t.as_bytes());
        assert!(lookup(conn, "cty_guess").unwrap().is_none());
        admin.revoke("zhang-crew").unwrap();
        assert!(lookup(conn, &t).unwrap().is_none());
        // The name is free again after revocation.
        admin
            .add("zhang-crew", Role::Crew, Some("sanitation"))
            .unwrap();
        assert_eq!(admin.list().unwrap().len(), 2);
    }
}
