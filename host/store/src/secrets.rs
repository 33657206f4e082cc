//! The `secrets` table: values encrypted with AES-256-GCM under a master key, a random 96-bit
//! nonce per value, the key id stored beside each value so keys can rotate, and the scope and
//! name bound in as associated data so a ciphertext cannot be moved to another secret.
//!
//! The master key comes from `CHENGIS_MASTER_KEY` (64 hex characters) or a key file created on
//! first start with mode 0600. Values never appear in errors or logs.

use super::{Store, StoreError, now_ms};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sqlx::Row;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The scope of a secret: every job, or one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretScope {
    /// Readable by every job.
    Global,
    /// Readable by the job of this name only.
    Job(String),
    /// The webhook secrets of the job of this name: never given to builds, only to the
    /// webhook receiver.
    Webhook(String),
}

impl SecretScope {
    pub(crate) fn column(&self) -> String {
        match self {
            SecretScope::Global => String::new(),
            SecretScope::Job(name) => format!("job:{name}"),
            SecretScope::Webhook(name) => format!("hook:{name}"),
        }
    }
}

/// The master keys: the current one encrypts; all of them decrypt. Keys read from a key file
/// follow it: a key id this process does not know (a value encrypted after `chengis secret
/// rotate-key` ran beside a running server) and a changed file (before encrypting) read the
/// file again, so a running server picks a rotation up without a restart.
pub struct MasterKeys {
    ring: std::sync::RwLock<Ring>,
    file: Option<std::path::PathBuf>,
}

/// The keys as last read.
#[derive(Clone)]
struct Ring {
    current: String,
    keys: BTreeMap<String, [u8; 32]>,
    /// The key file's modification time and size when read.
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl Clone for MasterKeys {
    fn clone(&self) -> Self {
        MasterKeys { ring: std::sync::RwLock::new(self.ring()), file: self.file.clone() }
    }
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring();
        f.debug_struct("MasterKeys").field("current", &ring.current).field("ids", &ring.keys.keys()).finish()
    }
}

fn parse_hex_key(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short id for a key: the first 8 hex characters of its SHA-256.
fn key_id(key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    to_hex(&Sha256::digest(key)[..4])
}

/// The modification time and size of the key file, when it can be read.
fn stamp_of(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads a key file: one hex key per line, the last line current.
fn read_key_file(path: &Path) -> Result<Ring, StoreError> {
    let io = |e: std::io::Error| StoreError::Crypto(format!("master key file {}: {e}", path.display()));
    let stamp = stamp_of(path);
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut keys = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let key = parse_hex_key(line).ok_or_else(|| {
            StoreError::Crypto(format!("master key file {} line {}: not 64 hex characters", path.display(), n + 1))
        })?;
        let id = key_id(&key);
        keys.insert(id.clone(), key);
        current = Some(id);
    }
    let current = current.ok_or_else(|| StoreError::Crypto(format!("master key file {} is empty", path.display())))?;
    Ok(Ring { current, keys, stamp })
}

impl MasterKeys {
    /// One key given as 64 hex characters (the `CHENGIS_MASTER_KEY` form).
    pub fn from_hex(hex: &str) -> Result<MasterKeys, StoreError> {
        let key = parse_hex_key(hex)
            .ok_or_else(|| StoreError::Crypto("the master key must be 64 hexadecimal characters (32 bytes)".into()))?;
        let id = key_id(&key);
        let ring = Ring { current: id.clone(), keys: BTreeMap::from([(id, key)]), stamp: None };
        Ok(MasterKeys { ring: std::sync::RwLock::new(ring), file: None })
    }

    /// Reads the key file (one hex key per line, the last line current), creating it with a
    /// fresh random key and mode 0600 when it does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(MasterKeys, bool), StoreError> {
        let io = |e: std::io::Error| StoreError::Crypto(format!("master key file {}: {e}", path.display()));
        let created = if path.exists() {
            false
        } else {
            let key = Aes256Gcm::generate_key(OsRng);
            write_key_file(path, &[to_hex(&key)]).map_err(io)?;
            true
        };
        let ring = read_key_file(path)?;
        Ok((MasterKeys { ring: std::sync::RwLock::new(ring), file: Some(path.to_path_buf()) }, created))
    }

    fn ring(&self) -> Ring {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the key file again (keys from `CHENGIS_MASTER_KEY` have none). A file that cannot
    /// be read now keeps the keys already known.
    fn reload(&self) {
        let Some(path) = &self.file else { return };
        match read_key_file(path) {
            Ok(ring) => {
                let mut held = self.ring.write().unwrap_or_else(|e| e.into_inner());
                if held.current != ring.current {
                    tracing::info!("master key file {} changed: key {} is current now", path.display(), ring.current);
                }
                // Keys only ever join: a key removed from the file stays known to this process.
                let mut keys = std::mem::take(&mut held.keys);
                keys.extend(ring.keys);
                *held = Ring { current: ring.current, keys, stamp: ring.stamp };
            }
            Err(e) => tracing::warn!("reading the master key file again: {e}"),
        }
    }

    /// Reads the key file again when it changed since it was read.
    fn follow_file(&self) {
        if let Some(path) = &self.file
            && stamp_of(path) != self.ring.read().unwrap_or_else(|e| e.into_inner()).stamp
        {
            self.reload();
        }
    }

    /// Adds a new random key to the key file and makes it current; returns its id.
    pub fn add_key(&mut self, path: &Path) -> Result<String, StoreError> {
        let key: [u8; 32] = Aes256Gcm::generate_key(OsRng).into();
        let id = key_id(&key);
        let mut ring = self.ring();
        ring.keys.insert(id.clone(), key);
        ring.current = id.clone();
        let mut lines: Vec<String> = ring.keys.iter().filter(|(k, _)| **k != id).map(|(_, v)| to_hex(v)).collect();
        lines.push(to_hex(&key));
        write_key_file(path, &lines)
            .map_err(|e| StoreError::Crypto(format!("master key file {}: {e}", path.display())))?;
        ring.stamp = stamp_of(path);
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(id)
    }

    /// The id of the key new values are encrypted with.
    pub fn current_id(&self) -> String {
        self.follow_file();
        self.ring().current
    }

    fn cipher(&self, id: &str) -> Result<Aes256Gcm, StoreError> {
        let known = |ring: &Ring| ring.keys.get(id).map(|k| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k)));
        if let Some(c) = known(&self.ring.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(c);
        }
        // Encrypted under a key added since this process read the file: read it again.
        self.reload();
        known(&self.ring.read().unwrap_or_else(|e| e.into_inner())).ok_or_else(|| {
            StoreError::Crypto(format!("secret encrypted with key `{id}`, which is not among the master keys"))
        })
    }

    fn seal(&self, aad: &str, value: &str) -> Result<(String, Vec<u8>, Vec<u8>), StoreError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let current = self.current_id();
        let ct = self
            .cipher(&current)?
            .encrypt(&nonce, Payload { msg: value.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        Ok((current, nonce.to_vec(), ct))
    }

    fn open(&self, aad: &str, id: &str, nonce: &[u8], ct: &[u8]) -> Result<String, StoreError> {
        if nonce.len() != 12 {
            return Err(StoreError::Corrupt { what: "secret nonce", detail: format!("{} bytes", nonce.len()) });
        }
        let plain = self
            .cipher(id)?
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| StoreError::Crypto("a secret failed to decrypt (wrong key or tampered value)".into()))?;
        String::from_utf8(plain).map_err(|_| StoreError::Corrupt { what: "secret", detail: "not UTF-8".into() })
    }
}

fn write_key_file(path: &Path, lines: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn aad(scope: &str, name: &str) -> String {
    format!("chengis-secret\0{scope}\0{name}")
}

/// Decrypts a `secrets` row selected with `scope, name, key_id, nonce, ciphertext`: its scope,
/// name and value.
pub(crate) fn open_row(keys: &MasterKeys, row: &sqlx::any::AnyRow) -> Result<(String, String, String), StoreError> {
    let (scope, name): (String, String) = (row.try_get("scope")?, row.try_get("name")?);
    let id: String = row.try_get("key_id")?;
    let nonce: Vec<u8> = row.try_get("nonce")?;
    let ct: Vec<u8> = row.try_get("ciphertext")?;
    let value = keys.open(&aad(&scope, &name), &id, &nonce, &ct)?;
    Ok((scope, name, value))
}

impl Store {
    /// Creates or replaces a secret.
    pub async fn set_secret(
        &self,
        keys: &MasterKeys,
        scope: &SecretScope,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let scope = scope.column();
        let (key_id, nonce, ct) = keys.seal(&aad(&scope, name), value)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM secrets WHERE scope = $1 AND name = $2")
            .bind(&scope)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO secrets (scope, name, key_id, nonce, ciphertext, updated_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&scope)
        .bind(name)
        .bind(key_id)
        .bind(nonce)
        .bind(ct)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Names of the secrets in a scope (values are never listed).
    pub async fn secret_names(&self, scope: &SecretScope) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT name FROM secrets WHERE scope = $1 ORDER BY name")
            .bind(scope.column())
            .fetch_all(self.pool())
            .await?)
    }

    /// Deletes a secret.
    pub async fn delete_secret(&self, scope: &SecretScope, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE scope = $1 AND name = $2")
            .bind(scope.column())
            .bind(name)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("secret `{name}`")));
        }
        Ok(())
    }

    /// The secrets a job may read, decrypted: global ones, overridden by the job's own.
    pub async fn secrets_for_job(&self, keys: &MasterKeys, job: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.job_secrets(keys, job, None).await
    }

    /// The secrets named `names` that job `job` sees (as [`Store::secrets_for_job`]); only those
    /// are decrypted.
    pub async fn secrets_named(
        &self,
        keys: &MasterKeys,
        job: &str,
        names: &[&str],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.job_secrets(keys, job, Some(names)).await
    }

    async fn job_secrets(
        &self,
        keys: &MasterKeys,
        job: &str,
        names: Option<&[&str]>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let job_scope = SecretScope::Job(job.to_string()).column();
        let rows = sqlx::query(
            "SELECT scope, name, key_id, nonce, ciphertext FROM secrets WHERE scope = '' OR scope = $1 ORDER BY scope",
        )
        .bind(&job_scope)
        .fetch_all(self.pool())
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            if let Some(names) = names {
                let name: String = row.try_get("name")?;
                if !names.contains(&name.as_str()) {
                    continue;
                }
            }
            let (_, name, value) = open_row(keys, &row)?;
            out.insert(name, value);
        }
        Ok(out)
    }

    /// Re-encrypts every secret not under the current key; returns how many were rewritten.
    pub async fn rotate_secrets(&self, keys: &MasterKeys) -> Result<usize, StoreError> {
        let rows = sqlx::query("SELECT id, scope, name, key_id, nonce, ciphertext FROM secrets WHERE key_id <> $1")
            .bind(keys.current_id())
            .fetch_all(self.pool())
            .await?;
        let mut tx = self.pool().begin().await?;
        for row in &rows {
            let (scope, name, value) = open_row(keys, row)?;
            let (new_id, new_nonce, new_ct) = keys.seal(&aad(&scope, &name), &value)?;
            sqlx::query("UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3 WHERE id = $4")
                .bind(new_id)
                .bind(new_nonce)
                .bind(new_ct)
                .bind(row.try_get::<i64, _>("id")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }
}
