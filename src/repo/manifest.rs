//! The manifest: the JSON document that makes a backup exist. Written last, atomically, on every
//! target; a backup directory without one is leftover data, never a backup.

use crate::pg::archive::TableRows;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::pipeline::object::{CompressionAlgorithm, Frame, StoredObject};

/// Bumped when the manifest changes incompatibly; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl BackupKind {
    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `pgbackd backup` on the command line.
    Manual,
    /// A schedule of the daemon.
    Schedule,
    /// Taken of a restore target before `restore --clean` overwrote it.
    SafetyBeforeRestore,
}

/// The connection a backup was taken from (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub id: String,
    /// The repository name of the database (config `name`).
    pub database: String,
    pub kind: BackupKind,
    pub base_id: Option<String>,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub source: Source,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub archive_version: String,
    /// `pg_database_size` when the backup started.
    pub database_size: u64,
    /// The `pg_dump --format=custom` archive, as zstd frames.
    pub data: StoredObject,
    /// `pg_dumpall --globals-only` (roles, tablespaces), when it could be taken.
    pub globals: Option<StoredObject>,
    /// `exact` (counted in the dump's snapshot) or `off`.
    pub row_counts: String,
    pub tables: Vec<TableRows>,
    pub large_objects: u64,
    /// Where each data block starts in the raw archive (incrementals align on them).
    #[serde(default)]
    pub blocks: Vec<crate::pg::archive::BlockStart>,
    /// Storage targets holding this backup.
    pub targets: Vec<String>,
    pub warnings: Vec<String>,
    pub pgbackd_version: String,
    /// How the backup is encrypted (None: it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypto::EncryptionInfo>,
    /// HMAC-SHA256 of this manifest (with `mac` unset) under the backup's authentication key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Manifest {
    pub fn parse(bytes: &[u8], what: &str) -> anyhow::Result<Manifest> {
        #[derive(Deserialize)]
        struct VersionOnly {
            schema_version: u32,
        }
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {what} is not valid JSON: {e}"))?;
        if v.schema_version != SCHEMA_VERSION {
            anyhow::bail!(
                "manifest {what} has schema version {}, this pgbackd reads version {SCHEMA_VERSION}: upgrade pgbackd",
                v.schema_version
            );
        }
        serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {what} is malformed: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The bytes the MAC covers: the manifest as JSON with `mac` unset.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac = None;
        serde_json::to_vec(&copy).expect("manifest serializes")
    }

    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }
}

/// What was learnt about a backup after it was taken: its last verification and test restore.
/// Stored beside the manifest (`annotations.json`) on the targets holding the backup; the
/// manifest itself never changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotations {
    pub verification: Option<VerificationRecord>,
    pub test_restore: Option<TestRestoreRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub verified_at: DateTime<Utc>,
    /// `quick` (objects present with their sizes) or `deep` (every byte read and decoded).
    pub mode: String,
    /// `passed` or `failed`.
    pub outcome: String,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRestoreRecord {
    pub tested_at: DateTime<Utc>,
    /// `passed` or `failed`.
    pub outcome: String,
    /// The measured recovery time: how long the restore took, in seconds.
    pub restore_seconds: f64,
    pub restored_bytes: Option<u64>,
    pub tables_checked: usize,
    pub error: Option<String>,
}
