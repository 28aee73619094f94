//! Configuration: the YAML file users write, validated into typed values.
//!
//! Two stages: the file is parsed into a located [`node::Node`] tree, then read field by field
//! into [`Config`]. Every problem (unknown key, wrong type, unset `${VAR}`, invalid cron, a feature
//! this build does not have) is collected with its dotted path and line/column, so `check-config`
//! reports them all at once. The reference config users bring (`database:`, `local_backup_dir:`,
//! `retention:`, `schedules:`, `aws:`, `notifications:`, `compression:`, `encryption:`) is a
//! subset of this schema, every key keeping its meaning.

pub mod files;
pub mod node;
pub mod notify;
pub mod reader;
pub mod storage;

pub use crate::jobs::kind::JobKind;
use crate::schedule::{self, Schedule};
use crate::secret::Secret;
use chrono_tz::Tz;
pub use files::FileSetConfig;
use node::{Node, Value};
use reader::{ByteSize, ConfigIssue, Ctx, Dur, MapReader};
use std::fmt;
use std::path::{Path, PathBuf};
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSettings {
    /// Take a backup of the target before `--clean` overwrites it.
    pub safety_backup: bool,
    /// Default `pg_restore --jobs`.
    pub jobs: u32,
    /// Server to restore into, when not the backup's own server (database name comes from the CLI).
    pub target: Option<Connection>,
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

/// `encryption:`: age encryption of everything stored (see docs/security.md).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncryptionConfig {
    pub enabled: bool,
    /// X25519 recipients (`age1...`) new backups are encrypted to.
    pub recipients: Vec<String>,
    /// A file of recipients, one per line.
    pub recipients_file: Option<PathBuf>,
    /// Identities (`AGE-SECRET-KEY-1...`) that decrypt: needed where restores and checks run.
    pub identity_file: Option<PathBuf>,
    /// The reference config's key: an age identity file, or a passphrase (scrypt).
    pub key_file: Option<PathBuf>,
    /// scrypt work factor (log2 N) for passphrase mode.
    pub passphrase_work_factor: u8,
    /// Key files readable by group or others are an error, not a warning.
    pub strict: bool,
    /// Identity files given on the command line (`--identity`): they decrypt, and are never
    /// encrypted to; with `enabled: false` they make a decrypt-only configuration.
    pub extra_identity_files: Vec<PathBuf>,
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
    pub config_backup: Option<KindPolicy>,
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
            config_backup: None,
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
    pub encryption: EncryptionConfig,
    pub notifications: notify::NotificationsConfig,
    pub monitoring: notify::MonitoringConfig,
    /// Source sets of file backups (`file_backup`) and configuration backups (`config_backup`).
    pub files: Vec<FileSetConfig>,
    pub configs: Vec<FileSetConfig>,
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

/// Files among `paths` that group or others may read, each with what to do about it.
pub fn loose_permissions(paths: impl Iterator<Item = PathBuf>) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    paths
        .filter_map(|p| {
            let mode = std::fs::metadata(&p).ok()?.permissions().mode();
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{} is readable by group or others (mode {:o}): chmod 600 {}",
                    p.display(),
                    mode & 0o777,
                    p.display()
                )
            })
        })
        .collect()
}

/// The configuration the `demo` command runs on (a throwaway cluster on a unix socket).
pub const EMBEDDED_DEMO: &str = include_str!("../../config/demo.yaml");

impl Config {
    /// Reads and validates a config file, resolving `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.display().to_string(),
            issues: vec![ConfigIssue {
                path: String::new(),
                message: format!("cannot read the config file: {e}"),
                loc: None,
            }],
        })?;
        let env = |name: &str| std::env::var(name).ok();
        let mut cfg = Config::from_yaml(&text, &path.display().to_string(), &env)?;
        cfg.path = Some(path.to_owned());
        let loose = loose_permissions(std::iter::once(path.to_owned()).chain(cfg.secret_files.iter().cloned()));
        if !loose.is_empty() && (cfg.strict || cfg.encryption.strict) {
            return Err(ConfigErrors {
                file: path.display().to_string(),
                issues: loose
                    .into_iter()
                    .map(|message| ConfigIssue { path: "strict".into(), message, loc: None })
                    .collect(),
            });
        }
        cfg.warnings = loose;
        Ok(cfg)
    }

    /// Every secret value the config holds (database passwords, S3 keys).
    pub fn secret_values(&self) -> Vec<&Secret> {
        let mut out: Vec<&Secret> = Vec::new();
        let connections = self.databases.iter().map(|d| &d.connection);
        let others = [&self.restore.target, &self.test_restore.target].into_iter().flatten();
        out.extend(connections.chain(others).filter_map(|c| c.password.as_ref()));
        for t in &self.targets {
            if let storage::TargetKind::S3(s3) = &t.kind {
                out.extend(s3.access_key.iter().chain(s3.secret_key.iter()));
            }
        }
        out.extend(self.notifications.secrets());
        out
    }

    /// Validates YAML text; `file` names it in messages; `env` resolves `${VAR}`.
    pub fn from_yaml(text: &str, file: &str, env: reader::EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        let fail = |issues| ConfigErrors { file: file.to_owned(), issues };
        let root = Node::parse(text).map_err(|message| {
            fail(vec![ConfigIssue { path: String::new(), message: format!("invalid YAML: {message}"), loc: None }])
        })?;
        let ctx = Ctx::new(env);
        let cfg = read_config(&ctx, &root);
        match cfg {
            Some(cfg) if !ctx.has_errors() => Ok(cfg),
            _ => {
                let mut issues = ctx.into_issues();
                issues.sort_by_key(|i| i.loc.map(|l| (l.line, l.column)).unwrap_or_default());
                Err(fail(issues))
            }
        }
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Resolves `--database` (or the only configured database).
    pub fn select_database(&self, name: Option<&str>) -> anyhow::Result<&DatabaseConfig> {
        match name {
            Some(n) => self.database(n).ok_or_else(|| {
                anyhow::anyhow!(
                    "database {n:?} is not in the config (configured: {})",
                    self.databases.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            }),
            None if self.databases.len() == 1 => Ok(&self.databases[0]),
            None => anyhow::bail!(
                "several databases are configured ({}): choose one with --database",
                self.databases.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    pub fn compression_threads(&self) -> usize {
        match self.compression.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }
}

fn read_config(ctx: &Ctx<'_>, root: &Node) -> Option<Config> {
    let mut top = ctx.map(root, "")?;

    let default_conn = read_connection_defaults(&mut top);
    let databases = read_databases(&mut top, &default_conn);
    let pg_bin_dir = top.opt::<PathBuf>("pg_bin_dir");
    let targets = storage::read_targets(&mut top);
    let file_backup_dir = top.opt::<PathBuf>("file_backup_dir");
    let config_backup_dir = top.opt::<PathBuf>("config_backup_dir");
    let timezone = match top.node("timezone") {
        Some(node) => ctx.read::<String>(node, "timezone").and_then(|name| {
            schedule::parse_timezone(&name).map_err(|e| ctx.error("timezone", e, Some(node.loc))).ok()
        }),
        None => Some(Tz::UTC),
    };
    let retention = read_retention(&mut top);
    let (mut schedules, unset_catch_up) = read_schedules(&mut top, timezone.unwrap_or(Tz::UTC), &databases);
    let compression = read_compression(&mut top);
    let backup = read_backup(&mut top);
    let restore = read_restore(&mut top, &default_conn);
    let daemon = read_daemon(&mut top);
    if let Some(d) = &daemon {
        for i in unset_catch_up {
            schedules[i].catch_up = d.catch_up;
        }
    }
    let reports = read_reports(&mut top);
    let log_file = read_logging(&mut top);
    let verification = read_verification(&mut top);
    let test_restore = read_test_restore(&mut top, &default_conn);
    let encryption = read_encryption(&mut top);
    let strict = top.opt::<bool>("strict").unwrap_or(false);
    let notifications = notify::read_notifications(&mut top);
    let monitoring = notify::read_monitoring(&mut top);
    let files = files::read_sets(&mut top, "files");
    let configs = files::read_sets(&mut top, "configs");
    for (kind, sets, key) in [(JobKind::FileBackup, &files, "files"), (JobKind::ConfigBackup, &configs, "configs")] {
        if sets.is_empty() && schedules.iter().any(|s| s.kind == kind) {
            let dir = if kind == JobKind::FileBackup { "file_backup_dir" } else { "config_backup_dir" };
            ctx.error(
                &format!("schedules.{}", kind.name()),
                format!(
                    "the {} job backs up the source sets under {key}:, and there are none: add {key}: [{{name: NAME, \
                     paths: [/abs/path, ...]}}] (stored in {dir} when set), or remove this schedule",
                    kind.name()
                ),
                None,
            );
        }
    }
    top.finish();

    Some(Config {
        path: None,
        databases,
        pg_bin_dir,
        targets,
        file_backup_dir,
        config_backup_dir,
        retention,
        timezone: timezone?,
        schedules,
        compression: compression?,
        backup: backup?,
        restore: restore?,
        daemon: daemon?,
        reports: reports?,
        log_file,
        verification: verification?,
        test_restore: test_restore?,
        secret_files: ctx.secret_files(),
        encryption,
        notifications,
        monitoring,
        files,
        configs,
        strict,
        warnings: Vec::new(),
    })
}

/// Connection fields shared by `database:`, each `databases:` entry and `restore.target`.
#[derive(Debug, Clone, Default)]
struct ConnFields {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
}

impl ConnFields {
    fn or(self, base: &ConnFields) -> ConnFields {
        ConnFields {
            host: self.host.or_else(|| base.host.clone()),
            port: self.port.or(base.port),
            user: self.user.or_else(|| base.user.clone()),
            password: self.password.or_else(|| base.password.clone()),
            dbname: self.dbname.or_else(|| base.dbname.clone()),
        }
    }

    fn into_connection(self, dbname: String) -> Connection {
        Connection {
            host: self.host.unwrap_or_else(|| "localhost".into()),
            port: self.port.unwrap_or(5432),
            user: self.user.unwrap_or_else(|| "postgres".into()),
            password: self.password,
            dbname,
        }
    }
}

fn read_conn_fields(m: &mut MapReader<'_, '_>) -> ConnFields {
    let host = m.opt::<String>("host");
    let port = m.opt::<u16>("port");
    if port == Some(0) {
        m.ctx().error(&m.child_path("port"), "must be between 1 and 65535", Some(m.loc_of("port")));
    }
    let user = m.opt::<String>("username");
    let password = read_secret(m, "password");
    let dbname = m.opt::<String>("database");
    ConnFields { host, port, user, password, dbname }
}

/// A secret given inline (`key: ${ENV}`) or as a file (`key_file: /run/secrets/x`).
pub(crate) fn read_secret(m: &mut MapReader<'_, '_>, key: &str) -> Option<Secret> {
    let file_key = format!("{key}_file");
    let inline = m.opt::<String>(key);
    let file = m.opt::<PathBuf>(&file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            m.ctx().error(
                &m.child_path(&file_key),
                format!("give either {key} or {file_key}, not both"),
                Some(m.loc_of(&file_key)),
            );
            None
        }
        (Some(v), None) => Some(Secret::new(v)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                m.ctx().note_secret_file(&path);
                Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
            Err(e) => {
                m.ctx().error(
                    &m.child_path(&file_key),
                    format!("cannot read secret file {}: {e}", path.display()),
                    Some(m.loc_of(&file_key)),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn read_connection_defaults(top: &mut MapReader<'_, '_>) -> ConnFields {
    match top.map("database") {
        Some(mut m) => {
            let f = read_conn_fields(&mut m);
            m.finish();
            f
        }
        None => ConnFields::default(),
    }
}

fn read_databases(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Vec<DatabaseConfig> {
    let ctx = top.ctx();
    let mut out: Vec<DatabaseConfig> = Vec::new();
    if let Some(dbname) = &defaults.dbname {
        out.push(DatabaseConfig { name: dbname.clone(), connection: defaults.clone().into_connection(dbname.clone()) });
    }
    if let Some(list) = top.node("databases") {
        let Value::Seq(items) = &list.value else {
            ctx.error("databases", format!("expected a list, found {}", list.value.kind()), Some(list.loc));
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("databases[{i}]");
            // A bare string is a database name on the default server.
            if let Value::Str(_) = item.value {
                if let Some(name) = ctx.read::<String>(item, &path) {
                    push_database(ctx, &mut out, &path, item.loc, name.clone(), defaults.clone().into_connection(name));
                }
                continue;
            }
            let Some(mut m) = ctx.map(item, &path) else {
                continue;
            };
            let name = m.req::<String>("name");
            let own = read_conn_fields(&mut m);
            let own_dbname = own.dbname.clone();
            let fields = own.or(defaults);
            let loc = m.loc();
            m.finish();
            if let Some(name) = name {
                let dbname = own_dbname.unwrap_or_else(|| name.clone());
                push_database(ctx, &mut out, &path, loc, name, fields.into_connection(dbname));
            }
        }
    }
    if out.is_empty() && !ctx.has_errors() {
        ctx.error(
            "database.database",
            "no database to back up: set database.database or list them under databases:",
            Some(top.loc()),
        );
    }
    out
}

fn push_database(
    ctx: &Ctx<'_>,
    out: &mut Vec<DatabaseConfig>,
    path: &str,
    loc: node::Loc,
    name: String,
    connection: Connection,
) {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        ctx.error(
            &format!("{path}.name"),
            format!("{name:?} cannot be used as a repository directory name"),
            Some(loc),
        );
        return;
    }
    if out.iter().any(|d| d.name == name) {
        ctx.error(&format!("{path}.name"), format!("database {name:?} is listed twice"), Some(loc));
        return;
    }
    out.push(DatabaseConfig { name, connection });
}

fn read_retention(top: &mut MapReader<'_, '_>) -> Retention {
    let mut r = Retention::default();
    let Some(mut m) = top.map("retention") else {
        return r;
    };
    let ctx = m.ctx();
    for (key, slot) in [
        ("full_backup", &mut r.full_backup),
        ("incremental_backup", &mut r.incremental_backup),
        ("file_backup", &mut r.file_backup),
        ("config_backup", &mut r.config_backup),
    ] {
        let path = m.child_path(key);
        let Some(node) = m.node(key) else { continue };
        *slot = match &node.value {
            Value::Map(_) => read_kind_policy(ctx, node, &path),
            _ => match ctx.read::<u32>(node, &path) {
                Some(0) => {
                    ctx.error(&path, "0 days would delete every backup; give at least 1", Some(node.loc));
                    None
                }
                Some(days) => Some(KindPolicy {
                    keep_within: Some(Duration::from_secs(u64::from(days) * 86400)),
                    min_keep: 3,
                    ..Default::default()
                }),
                None => None,
            },
        };
    }
    r.skip_after_failure = m.opt::<bool>("skip_after_failure").unwrap_or(true);
    if let Some(d) = m.opt::<Dur>("orphan_grace") {
        r.orphan_grace = d.0;
    }
    m.finish();
    r
}

fn read_kind_policy(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<KindPolicy> {
    let mut m = ctx.map(node, path)?;
    let mut count = |key: &str| {
        let n = m.opt::<u32>(key);
        if n == Some(0) {
            ctx.error(&m.child_path(key), "must be at least 1 (leave it out to not use the rule)", Some(m.loc_of(key)));
        }
        n.filter(|n| *n > 0)
    };
    let keep_last = count("keep_last");
    let keep_hourly = count("keep_hourly");
    let keep_daily = count("keep_daily");
    let keep_weekly = count("keep_weekly");
    let keep_monthly = count("keep_monthly");
    let keep_yearly = count("keep_yearly");
    let keep_within = m.opt::<Dur>("keep_within").map(|d| d.0);
    let max_total_size = m.opt::<ByteSize>("max_total_size").map(|b| b.0);
    let min_keep = m.opt::<u32>("min_keep").unwrap_or(3);
    let loc = m.loc();
    m.finish();
    let policy = KindPolicy {
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        max_total_size,
        min_keep,
    };
    let has_rule = keep_last.is_some()
        || keep_hourly.is_some()
        || keep_daily.is_some()
        || keep_weekly.is_some()
        || keep_monthly.is_some()
        || keep_yearly.is_some()
        || keep_within.is_some();
    if !has_rule {
        ctx.error(
            path,
            "an empty policy would keep nothing but the floor: give at least one keep_* rule \
             (or remove the key to keep every backup of this kind)",
            Some(loc),
        );
        return None;
    }
    Some(policy)
}

fn read_schedules(
    top: &mut MapReader<'_, '_>,
    default_tz: Tz,
    databases: &[DatabaseConfig],
) -> (Vec<ScheduleConfig>, Vec<usize>) {
    let mut out = Vec::new();
    // schedules without their own catch_up, which take daemon.catch_up
    let mut unset_catch_up = Vec::new();
    let Some(mut m) = top.map("schedules") else {
        return (out, unset_catch_up);
    };
    let ctx = m.ctx();
    let base = m.child_path("");
    for (key, value) in m.entries() {
        let name = key.key_text();
        let path = format!("{base}{name}");
        let Some(kind) = JobKind::scheduled(&name) else {
            ctx.error(
                &path,
                format!(
                    "unknown job kind; expected one of: {}",
                    JobKind::SCHEDULED.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                ),
                Some(key.loc),
            );
            continue;
        };
        let mut overlap = Overlap::Skip;
        let mut catch_up = None;
        let mut timeout = None;
        let (expr, tz_name, dbs, loc) = match &value.value {
            Value::Map(_) => {
                let Some(mut sm) = ctx.map(value, &path) else {
                    continue;
                };
                let expr = sm.req::<String>("cron");
                let tz = sm.opt::<String>("timezone");
                let dbs = sm.opt::<Vec<String>>("databases").unwrap_or_default();
                overlap = sm.opt::<Overlap>("overlap").unwrap_or(Overlap::Skip);
                catch_up = sm.opt::<bool>("catch_up");
                timeout = sm.opt::<Dur>("timeout").map(|d| d.0);
                sm.finish();
                (expr, tz, dbs, value.loc)
            }
            _ => (ctx.read::<String>(value, &path), None, Vec::new(), value.loc),
        };
        let Some(expr) = expr else { continue };
        let tz_text = tz_name.unwrap_or_else(|| default_tz.name().to_owned());
        match Schedule::parse(&expr, Some(&tz_text)) {
            Ok(schedule) => {
                for db in &dbs {
                    if !databases.iter().any(|d| &d.name == db) {
                        ctx.error(
                            &format!("{path}.databases"),
                            format!("database {db:?} is not configured"),
                            Some(loc),
                        );
                    }
                }
                // resolved against daemon.catch_up once that section is read
                out.push(ScheduleConfig {
                    kind,
                    schedule,
                    databases: dbs,
                    overlap,
                    catch_up: catch_up.unwrap_or(true),
                    timeout,
                });
                if catch_up.is_none() {
                    unset_catch_up.push(out.len() - 1);
                }
            }
            Err(e) => ctx.error(&path, e, Some(loc)),
        }
    }
    m.finish();
    (out, unset_catch_up)
}

fn read_compression(top: &mut MapReader<'_, '_>) -> Option<Compression> {
    let mut m = top.map("compression")?;
    let enabled = m.opt::<bool>("enabled").unwrap_or(true);
    let level_node = m.node("level");
    let level = match level_node {
        Some(node) => {
            let path = m.child_path("level");
            let level = m.ctx().read::<i32>(node, &path).unwrap_or(DEFAULT_LEVEL);
            if !(-7..=22).contains(&level) || level == 0 {
                m.ctx().error(
                    &path,
                    format!("zstd level {level} is out of range: use 1-19 (20-22 need much memory; -7..-1 are faster)"),
                    Some(node.loc),
                );
            }
            level
        }
        None => DEFAULT_LEVEL,
    };
    let threads = m.opt::<usize>("threads").unwrap_or(0);
    m.finish();
    Some(Compression { enabled, level, threads })
}

fn read_backup(top: &mut MapReader<'_, '_>) -> Option<BackupSettings> {
    let mut m = top.map("backup")?;
    let ctx = m.ctx();
    let segment_size = m.opt::<ByteSize>("segment_size").map(|b| b.0).unwrap_or(DEFAULT_SEGMENT_SIZE);
    if !((64 << 10)..=(256 << 20)).contains(&segment_size) {
        ctx.error(
            &m.child_path("segment_size"),
            "must be between 64KiB and 256MiB (4MiB is a good default)",
            Some(m.loc_of("segment_size")),
        );
    }
    let min_size = m.opt::<ByteSize>("min_size").map(|b| b.0).unwrap_or(1024);
    let min_size_ratio = m.opt::<f64>("min_size_ratio").unwrap_or(0.1);
    if !(0.0..=1.0).contains(&min_size_ratio) {
        ctx.error(&m.child_path("min_size_ratio"), "must be between 0 (off) and 1", Some(m.loc_of("min_size_ratio")));
    }
    let row_counts = m.opt::<RowCounts>("row_counts").unwrap_or(RowCounts::Exact);
    let globals = m.opt::<bool>("globals").unwrap_or(true);
    let timeout = m.opt::<Dur>("timeout").map(|d| d.0).unwrap_or(Duration::from_secs(12 * 3600));
    let stall_timeout = m.opt::<Dur>("stall_timeout").map(|d| d.0).unwrap_or(Duration::from_secs(600));
    let incremental_segment_size = m.opt::<ByteSize>("incremental_segment_size").map(|b| b.0).unwrap_or(8 << 20);
    let incremental_slack = m.opt::<ByteSize>("incremental_slack").map(|b| b.0).unwrap_or(4 << 20);
    if !((1 << 20)..=(64 << 20)).contains(&incremental_segment_size) {
        ctx.error(
            &m.child_path("incremental_segment_size"),
            "must be between 1MiB and 64MiB (8MiB is a good default)",
            Some(m.loc_of("incremental_segment_size")),
        );
    }
    if incremental_slack > (256 << 20) {
        ctx.error(&m.child_path("incremental_slack"), "must be at most 256MiB", Some(m.loc_of("incremental_slack")));
    }
    for (key, d) in [("timeout", timeout), ("stall_timeout", stall_timeout)] {
        if d.is_zero() {
            ctx.error(&m.child_path(key), "must be greater than zero", Some(m.loc_of(key)));
        }
    }
    m.finish();
    Some(BackupSettings {
        segment_size,
        min_size,
        min_size_ratio,
        row_counts,
        globals,
        timeout,
        stall_timeout,
        incremental_segment_size,
        incremental_slack,
    })
}

fn read_restore(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Option<RestoreSettings> {
    let mut m = top.map("restore")?;
    let safety_backup = m.opt::<bool>("safety_backup").unwrap_or(true);
    let jobs = m.opt::<u32>("jobs").unwrap_or(1).max(1);
    let target = if m.has("target") {
        let mut t = m.map("target")?;
        let fields = read_conn_fields(&mut t);
        if fields.dbname.is_some() {
            t.ctx().error(
                &t.child_path("database"),
                "the target database name is given on the command line (--target-database)",
                Some(t.loc()),
            );
        }
        t.finish();
        Some(fields.or(defaults).into_connection(String::new()))
    } else {
        None
    };
    m.finish();
    Some(RestoreSettings { safety_backup, jobs, target })
}

fn read_encryption(top: &mut MapReader<'_, '_>) -> EncryptionConfig {
    let Some(mut m) = top.map("encryption") else { return EncryptionConfig::default() };
    let ctx = m.ctx();
    let enabled = m.opt::<bool>("enabled").unwrap_or(false);
    let recipients = m.opt::<Vec<String>>("recipients").unwrap_or_default();
    let recipients_file = m.opt::<PathBuf>("recipients_file");
    let identity_file = m.opt::<PathBuf>("identity_file");
    let key_file = m.opt::<PathBuf>("key_file");
    let passphrase_work_factor = m.opt::<u8>("passphrase_work_factor").unwrap_or(16);
    if !(10..=22).contains(&passphrase_work_factor) {
        ctx.error(
            &m.child_path("passphrase_work_factor"),
            "must be between 10 and 22",
            Some(m.loc_of("passphrase_work_factor")),
        );
    }
    let strict = m.opt::<bool>("strict").unwrap_or(false);
    for r in &recipients {
        if !r.starts_with("age1") {
            ctx.error(
                &m.child_path("recipients"),
                format!("{r:?} is not an age recipient (age1...)"),
                Some(m.loc_of("recipients")),
            );
        }
    }
    if enabled && recipients.is_empty() && recipients_file.is_none() && key_file.is_none() && identity_file.is_none() {
        ctx.error(
            &m.child_path("enabled"),
            "encryption is enabled but there is nothing to encrypt to: set recipients (recommended), recipients_file \
             or key_file",
            Some(m.loc_of("enabled")),
        );
    }
    if let Some(p) = &recipients_file
        && enabled
        && !p.exists()
    {
        let loc = Some(m.loc_of("recipients_file"));
        ctx.error(&m.child_path("recipients_file"), format!("{} does not exist", p.display()), loc);
    }
    for (key, path) in [("identity_file", &identity_file), ("key_file", &key_file)] {
        if let Some(p) = path {
            if enabled && !p.exists() {
                let hint = match key {
                    "key_file" => "create it: `age-keygen -o FILE` (an identity), or a passphrase of 12+ characters",
                    _ => "point it at the age identity (AGE-SECRET-KEY-1...) made with `age-keygen`",
                };
                ctx.error(&m.child_path(key), format!("{} does not exist: {hint}", p.display()), Some(m.loc_of(key)));
            }
            ctx.note_secret_file(p);
        }
    }
    m.finish();
    EncryptionConfig {
        enabled,
        recipients,
        recipients_file,
        identity_file,
        key_file,
        passphrase_work_factor,
        strict,
        extra_identity_files: Vec::new(),
    }
}

fn read_verification(top: &mut MapReader<'_, '_>) -> Option<VerificationSettings> {
    let mut m = top.map("verification")?;
    let mode = m.opt::<VerifyMode>("mode").unwrap_or(VerifyMode::Deep);
    let scope = m.opt::<VerifyScope>("scope").unwrap_or(VerifyScope::Unverified);
    m.finish();
    Some(VerificationSettings { mode, scope })
}

fn read_test_restore(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Option<TestRestoreSettings> {
    let mut m = top.map("test_restore")?;
    let ctx = m.ctx();
    let pick = m.opt::<Pick>("pick").unwrap_or(Pick::Latest);
    let jobs = m.opt::<u32>("jobs").unwrap_or(2).max(1);
    let target = if m.has("target") {
        let mut t = m.map("target")?;
        let fields = read_conn_fields(&mut t);
        if fields.dbname.is_some() {
            t.ctx().error(
                &t.child_path("database"),
                "the scratch database is named by pgbackd (pgbackd_restore_...)",
                Some(t.loc()),
            );
        }
        t.finish();
        Some(fields.or(defaults).into_connection(String::new()))
    } else {
        None
    };
    let mut checks = Vec::new();
    if let Some(list) = m.node("checks") {
        match &list.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{}[{i}]", m.child_path("checks"));
                    let Some(mut c) = ctx.map(item, &path) else { continue };
                    let name = c.req::<String>("name");
                    let sql = c.req::<String>("sql");
                    let expect = c.req::<String>("expect");
                    c.finish();
                    if let (Some(name), Some(sql), Some(expect)) = (name, sql, expect) {
                        checks.push(RestoreCheck { name, sql, expect });
                    }
                }
            }
            other => {
                ctx.error(&m.child_path("checks"), format!("expected a list, found {}", other.kind()), Some(list.loc))
            }
        }
    }
    m.finish();
    Some(TestRestoreSettings { pick, jobs, target, checks })
}

fn read_daemon(top: &mut MapReader<'_, '_>) -> Option<DaemonSettings> {
    let mut m = top.map("daemon")?;
    let max_concurrent_jobs = m.opt::<usize>("max_concurrent_jobs").unwrap_or(2);
    if max_concurrent_jobs == 0 {
        m.ctx().error(
            &m.child_path("max_concurrent_jobs"),
            "must be at least 1",
            Some(m.loc_of("max_concurrent_jobs")),
        );
    }
    let shutdown_grace = m.opt::<Dur>("shutdown_grace").map(|d| d.0).unwrap_or(Duration::from_secs(300));
    let catch_up = m.opt::<bool>("catch_up").unwrap_or(true);
    m.finish();
    Some(DaemonSettings { max_concurrent_jobs: max_concurrent_jobs.max(1), shutdown_grace, catch_up })
}

fn read_reports(top: &mut MapReader<'_, '_>) -> Option<ReportSettings> {
    let mut m = top.map("reports")?;
    let dir = m.opt::<PathBuf>("dir").unwrap_or_else(|| PathBuf::from("reports"));
    let keep = m.opt::<Dur>("keep").map(|d| d.0).unwrap_or(Duration::from_secs(30 * 86400));
    m.finish();
    Some(ReportSettings { dir, keep })
}

fn read_logging(top: &mut MapReader<'_, '_>) -> Option<LogFile> {
    let mut m = top.map("logging")?;
    let file = if m.has("file") {
        let mut f = m.map("file")?;
        let dir = f.req::<PathBuf>("dir");
        let rotation = f.opt::<Rotation>("rotation").unwrap_or(Rotation::Daily);
        let keep = f.opt::<usize>("keep").unwrap_or(14).max(1);
        f.finish();
        dir.map(|dir| LogFile { dir, rotation, keep })
    } else {
        None
    };
    m.finish();
    file
}

#[cfg(test)]
mod tests;
