//! API keys: who may call the server, in which governance contexts, with
//! which scopes.
//!
//! A key is shown once, at creation, as `bsm_<id>_<secret>`; the database
//! keeps only the SHA-256 digest of the secret, so a copy of the database
//! does not let anyone call the server. A presented key is found by its
//! public id and checked by comparing digests (fixed length, constant
//! time). Lookups are cached for [`LOOKUP_TTL`]: a key created or revoked
//! by this process takes effect at once; one created or revoked by another
//! process sharing the data directory (`bsm keys create` beside a running
//! server) within that time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bsm::governance::KNOWN_CONTEXTS;
use crate::store::{Store, StoreError};

/// How long a key lookup (or the answer "no keys configured") is trusted
/// before the database is asked again.
pub const LOOKUP_TTL: Duration = Duration::from_secs(2);

/// Every key starts with this, so leaked keys are easy to search for.
const PREFIX: &str = "bsm_";

/// What a key lets its holder do. Routes ask for one scope each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Run one agent (`POST /api/agents/run`).
    Run,
    /// Start orchestration jobs (`POST /api/orchestrator/run`).
    Orchestrate,
    /// Read agents, jobs, reports, approvals, knowledge, metrics.
    Read,
    /// Everything that changes the server: plugins, keys, approvals,
    /// caches, breakers, knowledge writes.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Run, Scope::Orchestrate, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Run => "run",
            Scope::Orchestrate => "orchestrate",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key as listings show it: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The governance contexts its calls may run in; the first is the
    /// default when a request names none.
    pub contexts: Vec<String>,
    pub scopes: BTreeSet<Scope>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl ApiKey {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// What an admin asks for when creating a key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
    pub contexts: Vec<String>,
    pub scopes: Vec<String>,
}

/// A new key and its one-time secret. The token is not printed by `Debug`.
pub struct IssuedKey {
    pub key: ApiKey,
    pub token: secrecy::SecretString,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no API key {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored key with the digest its secret must match.
struct StoredKey {
    key: Arc<ApiKey>,
    digest: [u8; 32],
}

/// The API keys of one data directory.
pub struct ApiKeys {
    store: Store,
    by_id: moka::sync::Cache<String, Option<Arc<StoredKey>>>,
    /// Whether any unrevoked key exists, and when that was last asked.
    configured: Mutex<Option<(Instant, bool)>>,
}

impl ApiKeys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            by_id: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LOOKUP_TTL)
                .build(),
            configured: Mutex::new(None),
        }
    }

    /// The keys of a data directory, without the rest of the platform
    /// (the `bsm keys` commands).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let (store, _) = Store::open(&data_dir.join("bsm.db"))?;
        Ok(Self::new(store))
    }

    /// Creates a key. Its contexts must be ones BSM knows, its scopes
    /// known scopes, its name 1-64 printable characters.
    pub async fn create(&self, request: KeyRequest) -> Result<IssuedKey, KeyError> {
        let (name, contexts, scopes) = validate(request)?;
        let id = hex::encode(random_bytes::<6>());
        let secret = hex::encode(random_bytes::<32>());
        let key = ApiKey {
            id: id.clone(),
            name,
            contexts,
            scopes,
            created_at: crate::store::now(),
            revoked_at: None,
        };
        let row = key.clone();
        let digest = digest(&secret);
        self.store
            .with(move |c| {
                c.execute(
                    "INSERT INTO api_keys (id, name, digest, contexts, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![row.id, row.name, digest.to_vec(), join(row.contexts.iter().map(String::as_str)), join(row.scopes.iter().map(|s| s.as_str())), row.created_at],
                )
            })
            .await?;
        self.forget(&id);
        Ok(IssuedKey {
            key,
            token: format!("{PREFIX}{id}_{secret}").into(),
        })
    }

    /// Every key, newest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        let rows = self
            .store
            .with(|c| {
                c.prepare("SELECT id, name, digest, contexts, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at DESC, id")?
                    .query_map([], key_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(rows.into_iter().map(|s| (*s.key).clone()).collect())
    }

    /// Revokes a key: it stops working at once in this process (within
    /// [`LOOKUP_TTL`] in others). Revoking twice keeps the first time.
    pub async fn revoke(&self, id: &str) -> Result<ApiKey, KeyError> {
        let key_id = id.to_string();
        let found = self
            .store
            .with(move |c| {
                c.execute(
                    "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                    params![crate::store::now(), key_id],
                )?;
                c.query_row(
                    "SELECT id, name, digest, contexts, scopes, created_at, revoked_at FROM api_keys WHERE id = ?1",
                    params![key_id],
                    key_row,
                )
                .optional()
            })
            .await?;
        self.forget(id);
        found
            .map(|s| (*s.key).clone())
            .ok_or_else(|| KeyError::NotFound(id.to_string()))
    }

    /// The unrevoked key a presented token belongs to, if any.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Arc<ApiKey>>, StoreError> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let stored = match self.by_id.get(id) {
            Some(cached) => cached,
            None => {
                let key_id = id.to_string();
                let found = self
                    .store
                    .with(move |c| {
                        c.query_row(
                            "SELECT id, name, digest, contexts, scopes, created_at, revoked_at FROM api_keys WHERE id = ?1",
                            params![key_id],
                            key_row,
                        )
                        .optional()
                    })
                    .await?
                    .map(Arc::new);
                self.by_id.insert(id.to_string(), found.clone());
                found
            }
        };
        Ok(stored.and_then(|s| {
            let matches: bool = s.digest.ct_eq(&digest(secret)).into();
            (matches && !s.key.is_revoked()).then(|| s.key.clone())
        }))
    }

    /// Whether any unrevoked key exists (if none, the server is in open
    /// mode). Asked again after [`LOOKUP_TTL`].
    pub async fn configured(&self) -> Result<bool, StoreError> {
        if let Some((at, answer)) = *self.configured.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < LOOKUP_TTL
        {
            return Ok(answer);
        }
        let answer = self
            .store
            .with(|c| {
                c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)",
                    [],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await?;
        *self.configured.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), answer));
        Ok(answer)
    }

    fn forget(&self, id: &str) {
        self.by_id.invalidate(id);
        *self.configured.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn validate(request: KeyRequest) -> Result<(String, Vec<String>, BTreeSet<Scope>), KeyError> {
    let name = request.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(KeyError::Invalid(
            "name must be 1-64 characters, without control characters".into(),
        ));
    }
    if request.contexts.is_empty() {
        return Err(KeyError::Invalid(format!(
            "contexts must name at least one of: {}",
            KNOWN_CONTEXTS.join(", ")
        )));
    }
    let mut contexts: Vec<String> = Vec::new();
    for context in request.contexts {
        if !KNOWN_CONTEXTS.contains(&context.as_str()) {
            return Err(KeyError::Invalid(format!(
                "unknown context {context:?} (known: {})",
                KNOWN_CONTEXTS.join(", ")
            )));
        }
        if !contexts.contains(&context) {
            contexts.push(context);
        }
    }
    if request.scopes.is_empty() {
        return Err(KeyError::Invalid(
            "scopes must name at least one of: run, orchestrate, read, admin".into(),
        ));
    }
    let scopes = request
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                KeyError::Invalid(format!(
                    "unknown scope {s:?} (known: run, orchestrate, read, admin)"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((name, contexts, scopes))
}

/// `bsm_<12 hex>_<64 hex>` → (id, secret); anything else is no key.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn join<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let digest: Vec<u8> = r.get(2)?;
    let contexts: String = r.get(3)?;
    let scopes: String = r.get(4)?;
    Ok(StoredKey {
        digest: digest.try_into().unwrap_or([0u8; 32]),
        key: Arc::new(ApiKey {
            id: r.get(0)?,
            name: r.get(1)?,
            contexts: contexts
                .split(',')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
            scopes: scopes.split(',').filter_map(Scope::parse).collect(),
            created_at: r.get(5)?,
            revoked_at: r.get(6)?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn request(contexts: &[&str], scopes: &[&str]) -> KeyRequest {
        KeyRequest {
            name: "ci bot".into(),
            contexts: contexts.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn keys() -> (tempfile::TempDir, ApiKeys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        (dir, keys)
    }

    #[tokio::test]
    async fn a_created_key_authenticates_and_only_its_digest_is_stored() {
        let (dir, keys) = keys();
        assert!(!keys.configured().await.unwrap());
        let issued = keys.create(request(&["ci"], &["run"])).await.unwrap();
        let token = issued.token.expose_secret().to_string();
        let found = keys.authenticate(&token).await.unwrap().expect("valid key");
        assert_eq!(found.contexts, vec!["ci"]);
        assert!(found.allows(Scope::Run) && !found.allows(Scope::Admin));
        assert!(keys.configured().await.unwrap());
        let secret = token.rsplit('_').next().unwrap();
        let db = std::fs::read(dir.path().join("bsm.db")).unwrap();
        let wal = std::fs::read(dir.path().join("bsm.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is not stored"
            );
        }
        assert!(!format!("{issued:?}").contains(secret), "Debug hides it");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_a_malformed_token_is_no_key() {
        let (_dir, keys) = keys();
        let token = keys
            .create(request(&["api"], &["read"]))
            .await
            .unwrap()
            .token;
        let token = token.expose_secret();
        let mut wrong = token.to_string();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(keys.authenticate(&wrong).await.unwrap().is_none());
        for bad in [
            "",
            "bsm_",
            "bsm_zz_yy",
            "Bearer x",
            &token[..token.len() - 1],
        ] {
            assert!(keys.authenticate(bad).await.unwrap().is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_revoked_key_stops_working_at_once() {
        let (_dir, keys) = keys();
        let issued = keys.create(request(&["api"], &["run"])).await.unwrap();
        let token = issued.token.expose_secret();
        assert!(keys.authenticate(token).await.unwrap().is_some());
        let revoked = keys.revoke(&issued.key.id).await.unwrap();
        assert!(revoked.is_revoked());
        assert!(keys.authenticate(token).await.unwrap().is_none());
        assert!(!keys.configured().await.unwrap(), "no unrevoked key left");
        assert!(matches!(
            keys.revoke("000000000000").await,
            Err(KeyError::NotFound(_))
        ));
        assert_eq!(keys.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unknown_contexts_and_scopes_are_refused_at_creation() {
        let (_dir, keys) = keys();
        for (contexts, scopes) in [
            (&["nowhere"][..], &["run"][..]),
            (&[][..], &["run"][..]),
            (&["ci"][..], &["root"][..]),
            (&["ci"][..], &[][..]),
        ] {
            let err = keys.create(request(contexts, scopes)).await.unwrap_err();
            assert!(matches!(err, KeyError::Invalid(_)), "{err}");
        }
    }
}
