//! The manifest: the JSON document that makes a backup exist. Written last, atomically, on every
//! target; a backup directory without one is leftover data, never a backup.
//!
//! One envelope for every subject: id, subject, kind, the backups it depends on, when and why it
//! was taken, its stored objects, the targets holding it, warnings, and its authentication (an
//! HMAC when encrypted). What depends on the subject is the `content`: a dump's source server,
//! archive facts, row counts and globals; a file set's sources and the record of every file.
//! Schema 1 manifests (pgbackd 0.1, two separate formats) are read too ([`v1`]).

mod v1;

use crate::config::{RowCounts, VerifyMode};
use crate::crypto::EncryptionInfo;
use crate::fileset::{FileProblem, FileRecord};
use crate::pg::archive::{BlockStart, TableRows};
pub use crate::pg::basebackup::{LsnText, WalRange};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use super::subject::Subject;
pub use crate::pipeline::object::{CompressionAlgorithm, Frame, StoredObject};

/// Bumped when the manifest changes incompatibly; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// Self-contained.
    Full,
    /// Reads objects of the backups it depends on (a dump's base, down its chain to a full; a file
    /// backup's holders of unchanged files).
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

/// Why a job ran (and so, why a backup was taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A command line.
    Manual,
    /// A schedule of the daemon.
    Schedule,
    /// The daemon's start found a missed scheduled run.
    CatchUp,
    /// Taken of a restore target before `restore --clean` overwrote it.
    SafetyBeforeRestore,
    /// Asked of the running daemon over HTTP (`pgbackd trigger`, a CI pipeline).
    Request,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::SafetyBeforeRestore => "safety_before_restore",
            Trigger::Request => "request",
        }
    }
}

/// The connection a dump was taken from (no secrets).
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
    pub subject: Subject,
    pub kind: BackupKind,
    /// The backups whose stored objects this one reads: an incremental dump's base (a full or the
    /// previous incremental of a chain), an
    /// incremental file backup's holders of unchanged files. Restore reads them, retention keeps
    /// them, verification follows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The main object: the pg_dump custom archive, or the tar archive, as zstd frames.
    pub data: StoredObject,
    #[serde(flatten)]
    pub content: Content,
    /// Storage targets holding this backup.
    pub targets: Vec<String>,
    pub warnings: Vec<String>,
    pub pgbackd_version: String,
    /// How the backup is encrypted (None: it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// HMAC-SHA256 of this manifest (with `mac` unset) under the backup's authentication key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// For a schema 1 manifest: the bytes its MAC was computed over (its own serialization).
    #[serde(skip)]
    legacy_mac_input: Option<Arc<[u8]>>,
}

/// What a backup holds, by kind of subject. (Manifests are few and short-lived: the size
/// difference of the variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "content", rename_all = "snake_case")]
pub enum Content {
    /// A logical dump of a database.
    Dump(Dump),
    /// A file or configuration set.
    Files(FileSet),
    /// A physical base backup of a cluster (`pg_basebackup`).
    Base(BaseBackup),
    /// A consistent snapshot of a SQLite database file (SQLite's online backup API).
    Sqlite(crate::sqlite::Snapshot),
}

/// A cluster's base backup: the tar of its data directory (`data`), PostgreSQL's own
/// `backup_manifest` beside it, and where in the WAL it starts and ends; restorable with the
/// archived WAL from `start_wal` to `stop_wal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseBackup {
    pub source: Source,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_basebackup_version: String,
    /// From the backup's own `global/pg_control`: the WAL archive it belongs to.
    pub system_identifier: u64,
    pub wal_segment_size: u64,
    pub timeline: u32,
    pub start_lsn: LsnText,
    pub checkpoint_lsn: LsnText,
    pub stop_lsn: LsnText,
    /// The first and last WAL segment a restore of it needs.
    pub start_wal: String,
    pub stop_wal: String,
    /// Per timeline, the WAL the backup needs (PostgreSQL's `WAL-Ranges`).
    pub wal_ranges: Vec<WalRange>,
    /// `primary` or `standby`.
    pub backup_from: String,
    pub label: String,
    /// The backup's `backup_label` and (with tablespaces) `tablespace_map`, as PostgreSQL wrote them.
    pub backup_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Files in the data directory (as `backup_manifest` lists them).
    pub files: usize,
    /// PostgreSQL's `backup_manifest`, for `pg_verifybackup`.
    pub backup_manifest: StoredObject,
    /// The user tablespaces, each its own tar (none for a cluster with only `pg_default` and
    /// `pg_global`, whose files are all in `data`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<TablespaceArchive>,
}

/// One user tablespace of a base backup: the tar of its directory, which a restore extracts
/// where `tablespace_map` (or the operator's mapping) says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablespaceArchive {
    /// The tablespace's OID: its directory is `pg_tblspc/<oid>` in the data directory.
    pub oid: u32,
    pub name: String,
    /// Where it was on the server.
    pub location: String,
    pub data: StoredObject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub source: Source,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub archive_version: String,
    /// `pg_database_size` when the backup started.
    pub database_size: u64,
    /// `pg_dumpall --globals-only` (roles, tablespaces), when it could be taken.
    pub globals: Option<StoredObject>,
    pub row_counts: RowCounts,
    pub tables: Vec<TableRows>,
    pub large_objects: u64,
    /// Where each data block starts in the raw archive (incrementals align on them).
    #[serde(default)]
    pub blocks: Vec<BlockStart>,
    /// What `restore --table` can select, and every schema (empty in backups before 0.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relations: Vec<crate::pg::archive::Relation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// The database's own properties (encoding, locale, settings, ACL...), which a restore
    /// with `--create` gives the new database (none in backups before 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::pg::database::DatabaseProperties>,
}

/// Whether every file was captured as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilesOutcome {
    Success,
    /// A file could not be read, vanished or changed while read (see `problems`).
    Partial,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSet {
    /// The machine the files were read on.
    pub host: String,
    pub sources: Vec<String>,
    pub file_count: u64,
    pub total_bytes: u64,
    pub outcome: FilesOutcome,
    pub problems: Vec<FileProblem>,
    pub files: Vec<FileRecord>,
}

impl Manifest {
    /// A new manifest (schema [`SCHEMA_VERSION`]) that depends on nothing, finished when it
    /// started, held by no target, not authenticated: the caller fills those in.
    pub fn new(
        id: String,
        subject: Subject,
        kind: BackupKind,
        trigger: Trigger,
        started_at: DateTime<Utc>,
        data: StoredObject,
        content: Content,
    ) -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            id,
            subject,
            kind,
            depends_on: Vec::new(),
            trigger,
            started_at,
            finished_at: started_at,
            data,
            content,
            targets: Vec::new(),
            warnings: Vec::new(),
            pgbackd_version: env!("CARGO_PKG_VERSION").to_owned(),
            encryption: None,
            mac: None,
            legacy_mac_input: None,
        }
    }

    /// A dump manifest with nothing stored, for tests of what reads manifests.
    #[cfg(test)]
    pub fn for_tests(subject: Subject, id: &str, kind: BackupKind, started_at: DateTime<Utc>) -> Manifest {
        let data = StoredObject {
            key: format!("{}data.zst", super::keys::backup_dir(&subject, id)),
            compression: CompressionAlgorithm::Zstd,
            compression_level: Some(1),
            raw_bytes: 0,
            stored_bytes: 0,
            raw_sha256: String::new(),
            stored_sha256: String::new(),
            frames: Vec::new(),
            encrypted: false,
            frames_sha256: None,
        };
        let content = Content::Dump(Dump {
            source: Source {
                host: "localhost".into(),
                port: 5432,
                user: "postgres".into(),
                dbname: subject.name().into(),
            },
            server_version: "15".into(),
            server_version_num: 150000,
            pg_dump_version: "15".into(),
            archive_version: "1.14.0".into(),
            database_size: 0,
            globals: None,
            row_counts: RowCounts::Exact,
            tables: Vec::new(),
            large_objects: 0,
            blocks: Vec::new(),
            relations: Vec::new(),
            schemas: Vec::new(),
            database: None,
        });
        Manifest::new(id.to_owned(), subject, kind, Trigger::Manual, started_at, data, content)
    }

    /// Reads a manifest of any known schema version; `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &str) -> anyhow::Result<Manifest> {
        #[derive(Deserialize)]
        struct VersionOnly {
            schema_version: u32,
        }
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {what} is not valid JSON: {e}"))?;
        match v.schema_version {
            SCHEMA_VERSION => {
                serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {what} is malformed: {e}"))
            }
            1 => v1::parse(bytes, what),
            other => anyhow::bail!(
                "manifest {what} has schema version {other}, this pgbackd reads versions 1 and {SCHEMA_VERSION}: \
                 upgrade pgbackd"
            ),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The bytes the MAC covers: the manifest as JSON with `mac` unset.
    pub fn mac_input(&self) -> Vec<u8> {
        if let Some(legacy) = &self.legacy_mac_input {
            return legacy.to_vec();
        }
        let mut copy = self.clone();
        copy.mac = None;
        serde_json::to_vec(&copy).expect("manifest serializes")
    }

    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }

    /// Names the backup in messages: `backup 2026...-full-3f9a1c of database app`.
    pub fn describe(&self) -> String {
        format!("backup {} of {}", self.id, self.subject.describe())
    }

    pub fn dump(&self) -> Option<&Dump> {
        match &self.content {
            Content::Dump(d) => Some(d),
            _ => None,
        }
    }

    pub fn file_set(&self) -> Option<&FileSet> {
        match &self.content {
            Content::Files(f) => Some(f),
            _ => None,
        }
    }

    pub fn sqlite(&self) -> Option<&crate::sqlite::Snapshot> {
        match &self.content {
            Content::Sqlite(s) => Some(s),
            _ => None,
        }
    }

    pub fn base_backup(&self) -> Option<&BaseBackup> {
        match &self.content {
            Content::Base(b) => Some(b),
            _ => None,
        }
    }

    /// What it is, in a word: `full`, `incremental`, or `base` for a base backup.
    pub fn kind_label(&self) -> &'static str {
        if self.base_backup().is_some() { "base" } else { self.kind.name() }
    }

    /// The backup an incremental dump or SQLite snapshot is a delta against (a full, or an
    /// incremental of a chain).
    pub fn base_id(&self) -> Option<&str> {
        match (&self.content, self.kind) {
            (Content::Dump(_) | Content::Sqlite(_), BackupKind::Incremental) => {
                self.depends_on.first().map(String::as_str)
            }
            _ => None,
        }
    }

    /// Every object the backup itself stores (not those of the backups it depends on).
    pub fn objects(&self) -> Vec<&StoredObject> {
        let globals = self.dump().and_then(|d| d.globals.as_ref());
        let pg_manifest = self.base_backup().map(|b| &b.backup_manifest);
        let tablespaces = self.base_backup().into_iter().flat_map(|b| b.tablespaces.iter().map(|t| &t.data));
        std::iter::once(&self.data).chain(globals).chain(pg_manifest).chain(tablespaces).collect()
    }

    /// Bytes stored for this backup on each target that holds it.
    pub fn stored_bytes(&self) -> u64 {
        self.objects().iter().map(|o| o.stored_bytes).sum()
    }

    /// Raw bytes of what was backed up: the archive (dumps), the files' contents (file sets).
    pub fn raw_bytes(&self) -> u64 {
        match &self.content {
            Content::Dump(_) | Content::Sqlite(_) => self.data.raw_bytes,
            Content::Base(b) => self.data.raw_bytes + b.tablespaces.iter().map(|t| t.data.raw_bytes).sum::<u64>(),
            Content::Files(f) => f.total_bytes,
        }
    }

    /// Whether some file was not captured as it was (a partial file backup).
    pub fn problems(&self) -> &[FileProblem] {
        self.file_set().map(|f| f.problems.as_slice()).unwrap_or_default()
    }
}

/// Whether a check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Passed,
    Failed,
}

impl CheckOutcome {
    pub fn of(ok: bool) -> CheckOutcome {
        if ok { CheckOutcome::Passed } else { CheckOutcome::Failed }
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckOutcome::Passed => "passed",
            CheckOutcome::Failed => "failed",
        }
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

impl Annotations {
    /// The last verification was deep and passed.
    pub fn deep_verified(&self) -> bool {
        self.verification.as_ref().is_some_and(|v| v.mode == VerifyMode::Deep && v.outcome == CheckOutcome::Passed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub verified_at: DateTime<Utc>,
    /// `quick` (objects present with their sizes) or `deep` (every byte read and decoded).
    pub mode: VerifyMode,
    pub outcome: CheckOutcome,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub outcome: CheckOutcome,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRestoreRecord {
    pub tested_at: DateTime<Utc>,
    pub outcome: CheckOutcome,
    /// The measured recovery time: how long the restore took, in seconds.
    pub restore_seconds: f64,
    pub restored_bytes: Option<u64>,
    pub tables_checked: usize,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests;
