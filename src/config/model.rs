//! The typed configuration: what the YAML means once validated (durations, schedules, secrets,
//! policies as types). The readers beside this module build it.

use super::node::{Node, Value};
use super::reader::{self, ConfigIssue, Ctx};
use super::{FileSetConfig, notify, storage};
pub use crate::jobs::kind::JobKind;
use crate::schedule::Schedule;
use crate::secret::Secret;
use chrono_tz::Tz;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach one PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Host name, IP address, or a directory holding the server's unix socket.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// The database name on the server.
    pub dbname: String,
}

impl Connection {
    /// Same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Connection {
        Connection { dbname: dbname.to_owned(), ..self.clone() }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// One database pgbackd backs up.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    /// The name backups are filed under in the repository (defaults to the database name).
    pub name: String,
    pub connection: Connection,
}

/// `wal:`: continuous archiving of one cluster's WAL (and its base backups).
#[derive(Debug, Clone, PartialEq)]
pub struct WalSettings {
    /// The cluster's name in the repository (`clusters/<name>/`).
    pub name: String,
    /// How the WAL arrives: PostgreSQL's `archive_command`, or the daemon's `pg_receivewal`.
    pub method: WalMethod,
    /// The server base backups and streaming connect to (its `database` is the one the few SQL
    /// queries run in); from `database:` when not given.
    pub server: Connection,
    /// The physical replication slot streaming uses (`pgbackd_<name>`).
    pub slot: String,
    /// `pg_receivewal --synchronous`: flush and report each write at once (for a synchronous
    /// standby setting naming the slot's application name).
    pub synchronous: bool,
    /// Where the received WAL waits until every required target has it.
    pub spool_dir: PathBuf,
    /// How long a base backup waits for the last WAL segment it needs to be archived.
    pub archive_timeout: Duration,
    /// Alert when the slot holds back more WAL than this on the server.
    pub slot_lag_alert: u64,
    /// Alert (and `/readyz` fails) when a completed segment has waited longer than this to be
    /// archived, or the server has not answered the monitor for this long.
    pub max_lag: Duration,
    /// How many segments `archive-get` keeps fetched ahead of recovery (0: none).
    pub prefetch: u32,
    /// Create a restore point `before-<backup id>` before each dump of a database on `server`.
    pub restore_point_before_backup: bool,
}

/// `wal.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalMethod {
    #[default]
    ArchiveCommand,
    Stream,
}
crate::enum_from_node!(WalMethod, "a WAL method", { "archive_command" => WalMethod::ArchiveCommand, "stream" => WalMethod::Stream });

impl WalMethod {
    pub fn name(self) -> &'static str {
        match self {
            WalMethod::ArchiveCommand => "archive_command",
            WalMethod::Stream => "stream",
        }
    }
}

/// Whether a backup records every table's row count (`exact`, counted in the dump's snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCounts {
    Exact,
    Off,
}
impl reader::FromNode for RowCounts {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        // YAML 1.1 readers turn a bare `off` into the boolean false: both mean off
        if let Value::Bool(false) = node.value {
            return Ok(Some(RowCounts::Off));
        }
        match <String as reader::FromNode>::from_node(node, ctx)?.as_deref() {
            None => Ok(None),
            Some("exact") => Ok(Some(RowCounts::Exact)),
            Some("off") => Ok(Some(RowCounts::Off)),
            Some(other) => Err(format!("expected a row-count mode (one of: exact, off), found {other:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    pub enabled: bool,
    /// zstd level (1-19 normal, 20-22 need a lot of memory, negative levels are faster).
    pub level: i32,
    /// Compression threads; 0 means one per CPU core.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    /// Raw bytes per independently compressed frame.
    pub segment_size: u64,
    /// A dump smaller than this fails.
    pub min_size: u64,
    /// A full dump smaller than this fraction of the previous full's raw size fails (0 = off).
    pub min_size_ratio: f64,
    pub row_counts: RowCounts,
    /// Store `pg_dumpall --globals-only` (roles, tablespaces) with each full backup.
    pub globals: bool,
    /// Hard limit on one backup job.
    pub timeout: Duration,
    /// A dump whose stream moves no bytes for this long is cancelled.
    pub stall_timeout: Duration,
    /// Raw bytes per delta frame of an incremental.
    pub incremental_segment_size: u64,
    /// Bytes of the base taken on either side of a segment's aligned position as its reference.
    pub incremental_slack: u64,
    /// What an incremental is a delta against.
    pub incremental_base: IncrementalBase,
    /// At most this many incrementals after a full: the next incremental request takes a full.
    pub max_chain: u32,
}

/// What an incremental dump is a delta against (`backup.incremental_base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncrementalBase {
    /// The newest backup, full or incremental: each stores about one period's change; a restore
    /// decodes the chain back to its full (at most `max_chain` deltas).
    Previous,
    /// The newest full (a differential): one delta to decode, but each stores all the change
    /// since that full.
    Full,
}

impl IncrementalBase {
    pub fn name(self) -> &'static str {
        match self {
            IncrementalBase::Previous => "previous",
            IncrementalBase::Full => "full",
        }
    }
}

impl reader::FromNode for IncrementalBase {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        match <String as reader::FromNode>::from_node(node, ctx)?.as_deref() {
            None => Ok(None),
            Some("previous") => Ok(Some(IncrementalBase::Previous)),
            Some("full") => Ok(Some(IncrementalBase::Full)),
            Some(other) => {
                Err(format!("expected what incrementals are based on (one of: previous, full), found {other:?}"))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSettings {
    /// Take a backup of the target before `--clean` overwrites it.
    pub safety_backup: bool,
    /// Default `pg_restore --jobs`.
    pub jobs: u32,
    /// Server to restore into, when not the backup's own server (database name comes from the CLI).
    pub target: Option<Connection>,
    /// Where a parallel restore spools the decoded archive.
    pub spool: SpoolPlace,
}

/// Where `restore --jobs N` (and a test restore with jobs > 1) puts the decoded archive that
/// pg_restore seeks in: both are unnamed, gone when the restore ends, even after kill -9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpoolPlace {
    /// In memory when the archive takes at most a quarter of the memory available (the cgroup's
    /// limit included), else on disk.
    #[default]
    Auto,
    /// An unnamed memory file (memfd): decrypted data never reaches a disk.
    Memory,
    /// An unlinked file in TMPDIR.
    Disk,
}

impl reader::FromNode for SpoolPlace {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = <String as reader::FromNode>::from_node(node, ctx)? else { return Ok(None) };
        match text.as_str() {
            "auto" => Ok(Some(SpoolPlace::Auto)),
            "memory" => Ok(Some(SpoolPlace::Memory)),
            "disk" => Ok(Some(SpoolPlace::Disk)),
            _ => Err(format!("expected auto, memory or disk, found {text:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub kind: JobKind,
    pub schedule: Schedule,
    /// Databases this schedule covers (empty = all).
    pub databases: Vec<String>,
    /// What to do when the previous run of this job on a database is still going.
    pub overlap: Overlap,
    /// On start, run a missed backup now (at most one per database).
    pub catch_up: bool,
    /// Hard limit on one run (default: `backup.timeout` for backups).
    pub timeout: Option<Duration>,
    /// Where the schedule is in the file (for messages).
    pub loc: Option<super::node::Loc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the new run, with a warning and a counter.
    Skip,
    /// Run it once the running one ends (at most one waits).
    Queue,
}
crate::enum_from_node!(Overlap, "an overlap policy", { "skip" => Overlap::Skip, "queue" => Overlap::Queue });

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Manifests parse; every object is on every target with its recorded size.
    Quick,
    /// Every stored byte re-read, every checksum and frame checked, the archive read by pg_restore.
    Deep,
}
crate::enum_from_node!(VerifyMode, "a verification mode", { "quick" => VerifyMode::Quick, "deep" => VerifyMode::Deep });

impl VerifyMode {
    pub fn name(self) -> &'static str {
        match self {
            VerifyMode::Quick => "quick",
            VerifyMode::Deep => "deep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope {
    /// Backups never verified (new ones).
    Unverified,
    /// The newest backup of each database.
    Latest,
    /// Every backup.
    All,
}
crate::enum_from_node!(VerifyScope, "a verification scope", {
    "unverified" => VerifyScope::Unverified, "latest" => VerifyScope::Latest, "all" => VerifyScope::All
});

/// `verification:`: what the scheduled `verification` job checks.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationSettings {
    pub mode: VerifyMode,
    pub scope: VerifyScope,
}

/// Which backup a scheduled test restore takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Latest,
    /// One of the newest N, at random (so every backup gets a chance).
    RandomRecent(usize),
}

impl reader::FromNode for Pick {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = <String as reader::FromNode>::from_node(node, ctx)? else { return Ok(None) };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["latest"] => Ok(Some(Pick::Latest)),
            ["random_recent", n] => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Some(Pick::RandomRecent(n))),
                _ => Err(format!("expected random_recent N with N >= 1, found {text:?}")),
            },
            _ => Err(format!("expected latest or random_recent N, found {text:?}")),
        }
    }
}

/// A user check run in the scratch database after a test restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreCheck {
    pub name: String,
    pub sql: String,
    /// The first column of the first row, as text: exact (`42`, `ok`) or a comparison
    /// (`> 0`, `>= 1000`, `!= 0`, `< 5`).
    pub expect: String,
}

/// `test_restore:`: the scheduled restore that proves a backup restores.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRestoreSettings {
    pub pick: Pick,
    pub jobs: u32,
    /// Server for the scratch database (default `restore.target`, else the source server).
    pub target: Option<Connection>,
    pub checks: Vec<RestoreCheck>,
}

/// `recovery_drill:`: the scheduled point-in-time recovery that proves the base backups and the
/// WAL archive restore (job `recovery_drill`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryDrillSettings {
    pub pick: DrillPick,
    /// A drill whose RTO (to a ready server) is longer fails, so it alerts.
    pub max_rto: Option<Duration>,
    /// `pg_amcheck` of every database (the amcheck extension installed in the scratch copy).
    pub amcheck: bool,
    /// `pg_amcheck --heapallindexed` (every index entry checked against the heap; slower).
    pub heapallindexed: bool,
    /// The scratch server's `shared_buffers`.
    pub shared_buffers: String,
}

impl Default for RecoveryDrillSettings {
    fn default() -> Self {
        RecoveryDrillSettings {
            pick: DrillPick::Latest,
            max_rto: None,
            amcheck: true,
            heapallindexed: false,
            shared_buffers: "128MB".into(),
        }
    }
}

/// Which moment a drill recovers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPick {
    /// The end of the archived WAL.
    Latest,
    /// A random moment within the last this long (not before the oldest base backup's end).
    RandomWithin(Duration),
}

impl reader::FromNode for DrillPick {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = <String as reader::FromNode>::from_node(node, ctx)? else { return Ok(None) };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["latest"] => Ok(Some(DrillPick::Latest)),
            ["random_within", d] => match reader::parse_duration(d) {
                Ok(d) if !d.is_zero() => Ok(Some(DrillPick::RandomWithin(d))),
                _ => Err(format!("{d:?} is not a duration: write random_within 24h")),
            },
            _ => Err(format!("{text:?}: write latest or random_within DURATION (e.g. random_within 24h)")),
        }
    }
}

pub use crate::crypto::keys::EncryptionConfig;

/// `locks:`: how the repository's locks age and how long a job waits for one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LockSettings {
    /// A lock not refreshed for this long is stale (its holder is gone or stuck); held locks
    /// are refreshed every minute.
    pub stale_after: Duration,
    /// How long a job waits for a conflicting lock before it fails naming the holder.
    pub wait: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings { stale_after: Duration::from_secs(600), wait: Duration::from_secs(600) }
    }
}

/// `daemon:` settings of `pgbackd run`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    pub max_concurrent_jobs: usize,
    /// On SIGTERM, how long running jobs may finish before they are cancelled.
    pub shutdown_grace: Duration,
    /// Default of each schedule's `catch_up`.
    pub catch_up: bool,
}

/// Where per-run JSON reports and the daemon's status file go.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    pub dir: PathBuf,
    /// Reports older than this are deleted.
    pub keep: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Hourly,
    Daily,
    Never,
}
crate::enum_from_node!(Rotation, "a log rotation", { "hourly" => Rotation::Hourly, "daily" => Rotation::Daily, "never" => Rotation::Never });

/// `logging.file`: a rolling log file beside stdout/stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFile {
    pub dir: PathBuf,
    pub rotation: Rotation,
    /// Files kept.
    pub keep: usize,
}

/// Retention rules for one kind of backup (restic `forget` semantics): a backup is kept if any
/// rule keeps it; the floor (`min_keep`) is kept whatever the rules say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KindPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Keep everything younger than this (the reference config's number of days).
    pub keep_within: Option<Duration>,
    /// Delete the oldest kept backups until the kind's total stored size is under this (never
    /// below the floor).
    pub max_total_size: Option<u64>,
    /// The newest this many successful backups are always kept.
    pub min_keep: u32,
}

/// `retention:`: a policy per backup kind (`full_backup: 30` days, or the long form).
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub full_backup: Option<KindPolicy>,
    pub incremental_backup: Option<KindPolicy>,
    pub file_backup: Option<KindPolicy>,
    pub sqlite_backup: Option<KindPolicy>,
    pub config_backup: Option<KindPolicy>,
    /// Base backups of the cluster (`wal:`); the WAL older than the oldest kept one goes with them.
    pub base_backup: Option<KindPolicy>,
    /// Backups taken of a restore target before `restore --clean` (default: 7 days).
    pub safety_backup: KindPolicy,
    /// Skip retention for a database whose newest backup attempt failed.
    pub skip_after_failure: bool,
    /// Data with no manifest is removed only when older than this (an upload in progress has none).
    pub orphan_grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            full_backup: None,
            incremental_backup: None,
            file_backup: None,
            sqlite_backup: None,
            config_backup: None,
            base_backup: None,
            safety_backup: KindPolicy {
                keep_within: Some(Duration::from_secs(7 * 86400)),
                min_keep: 0,
                ..Default::default()
            },
            skip_after_failure: true,
            orphan_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (None for the embedded demo config).
    pub path: Option<PathBuf>,
    pub databases: Vec<DatabaseConfig>,
    /// Directory holding pg_dump, pg_restore, pg_dumpall, psql (default: newest under
    /// /usr/lib/postgresql, else $PATH).
    pub pg_bin_dir: Option<PathBuf>,
    /// Where backups are stored: `local_backup_dir` (target `local`), `aws:` (target `s3`) and
    /// `storage:` entries, in that order. Reads prefer the first target holding a backup.
    pub targets: Vec<storage::TargetConfig>,
    pub file_backup_dir: Option<PathBuf>,
    pub config_backup_dir: Option<PathBuf>,
    pub retention: Retention,
    pub timezone: Tz,
    pub schedules: Vec<ScheduleConfig>,
    pub compression: Compression,
    pub backup: BackupSettings,
    pub restore: RestoreSettings,
    pub daemon: DaemonSettings,
    pub reports: ReportSettings,
    pub log_file: Option<LogFile>,
    pub verification: VerificationSettings,
    pub test_restore: TestRestoreSettings,
    pub recovery_drill: RecoveryDrillSettings,
    /// WAL archiving, when configured.
    pub wal: Option<WalSettings>,
    pub encryption: EncryptionConfig,
    pub locks: LockSettings,
    pub notifications: notify::NotificationsConfig,
    pub monitoring: notify::MonitoringConfig,
    /// Source sets of file backups (`file_backup`) and configuration backups (`config_backup`).
    pub files: Vec<FileSetConfig>,
    pub configs: Vec<FileSetConfig>,
    /// SQLite database files (`sqlite_backup`).
    pub sqlite: Vec<super::SqliteConfig>,
    /// Files holding secrets that the config names (checked for loose permissions).
    pub secret_files: Vec<PathBuf>,
    /// Config and key files readable by group or others are errors (else warnings).
    pub strict: bool,
    /// Problems worth a warning (loose permissions), logged once logging runs.
    pub warnings: Vec<String>,
}

/// All problems found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "{}: {n} configuration error{}", self.file, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// zstd level 1: on pg_dump archives it is both faster and smaller than level 3 (measured in
/// docs/performance.md); higher levels trade CPU for size.
pub const DEFAULT_LEVEL: i32 = 1;

/// Raw bytes per zstd frame: large enough for zstd's window at normal levels, small enough that a
/// few segments in flight keep memory well under 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 << 20;
/// `backup.max_chain`'s default: daily incrementals between weekly fulls fit.
pub const DEFAULT_MAX_CHAIN: u32 = 6;
/// `backup.max_chain`'s limit: every link is one more delta decoded by each restore.
pub const MAX_CHAIN_LIMIT: u32 = 30;
