//! Records that cross process lines as they are: plugins in the trust allowlist, cache entries
//! and artifact files (the store keeps them, the API shows them, agents send and receive them).

use serde::{Deserialize, Serialize};

/// An allowlist decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrustState {
    /// May be instantiated.
    Allowed,
    /// Never instantiated.
    Denied,
    /// Installed, waiting for an operator.
    Pending,
}

impl TrustState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustState::Allowed => "allowed",
            TrustState::Denied => "denied",
            TrustState::Pending => "pending",
        }
    }

    /// Parses the stored text (unknown text is `pending`).
    pub fn parse(s: &str) -> TrustState {
        match s {
            "allowed" => TrustState::Allowed,
            "denied" => TrustState::Denied,
            _ => TrustState::Pending,
        }
    }
}

/// A plugin as recorded in the allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginRecord {
    /// Database id.
    pub id: i64,
    /// Name from the manifest.
    pub name: String,
    /// Version from the manifest.
    pub version: String,
    /// `sha256:` and 64 hex digits of the component bytes.
    pub digest: String,
    /// The WIT world it implements.
    pub world: String,
    /// Kinds from the manifest.
    pub kinds: Vec<String>,
    /// Description from the manifest.
    pub description: String,
    /// Capabilities the manifest requests.
    pub requested: Vec<String>,
    /// Capabilities an operator granted.
    pub granted: Vec<String>,
    /// The decision.
    pub state: TrustState,
    /// Where the component is stored.
    pub path: String,
    /// Shipped with Chengis.
    pub builtin: bool,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When (ms since the epoch).
    pub decided_ms: Option<i64>,
    /// When it was installed.
    pub created_ms: i64,
}

/// A stored cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CacheEntry {
    /// Its id.
    pub id: i64,
    /// The job (by name).
    pub job: String,
    /// The branch (or tag ref) whose build wrote it.
    pub scope: String,
    /// The key.
    pub key: String,
    /// The archive's file name in the cache directory.
    #[serde(skip)]
    pub file: String,
    /// Archive size in bytes.
    pub size: i64,
    /// SHA-256 of the archive.
    pub sha256: String,
    /// The build that saved it.
    pub build_id: Option<i64>,
    /// When it was saved.
    pub created_ms: i64,
    /// When it was last restored (or saved).
    pub last_used_ms: i64,
}

/// One stored artifact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactFile {
    /// Its id (download with `GET /api/v1/artifacts/{id}`).
    pub id: i64,
    /// The build.
    pub build_id: i64,
    /// The planned job that produced it.
    pub job: String,
    /// The artifact's name.
    pub name: String,
    /// The file's path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 of the content.
    pub sha256: String,
    /// When it was stored.
    pub created_ms: i64,
    /// When it expires, if it does.
    pub expires_ms: Option<i64>,
}

/// An artifact file to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewArtifactFile {
    /// The artifact's name.
    pub name: String,
    /// Path relative to the workspace.
    pub path: String,
    /// Size.
    pub size: i64,
    /// SHA-256 (the blob's name).
    pub sha256: String,
    /// Expiry time.
    pub expires_ms: Option<i64>,
}
