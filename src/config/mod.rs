//! Configuration: the YAML file users write, validated into typed values.
//!
//! Two stages: the file is parsed into a located [`node::Node`] tree, then read field by field
//! into [`Config`]. Every problem (unknown key, wrong type, unset `${VAR}`, invalid cron, a feature
//! this build does not have) is collected with its dotted path and line/column, so `check-config`
//! reports them all at once. The reference config users bring (`database:`, `local_backup_dir:`,
//! `retention:`, `schedules:`, `aws:`, `notifications:`, `compression:`, `encryption:`) is a
//! subset of this schema, every key keeping its meaning.

mod connections;
pub mod files;
mod model;
pub mod node;
pub mod notify;
pub mod reader;
mod retention;
mod schedules;
mod settings;
pub mod sqlite;
pub mod storage;

use crate::schedule;
use crate::secret::Secret;
use chrono_tz::Tz;
pub(crate) use connections::read_secret;
use connections::{read_connection_defaults, read_databases, read_restore, read_test_restore};
pub use files::FileSetConfig;
pub use model::*;
use node::{Loc, Node};
use reader::{ConfigIssue, Ctx};
use retention::read_retention;
use schedules::read_schedules;
use settings::{
    read_backup, read_compression, read_daemon, read_encryption, read_locks, read_logging, read_reports,
    read_verification, read_wal,
};
pub use sqlite::SqliteConfig;
use std::path::{Path, PathBuf};

/// Files among `paths` that others may read, each with what to do about it. Group read is fine
/// when the group is this process's own (a config installed `root:pgbackd 0640` for a service
/// running as group pgbackd): only the service reads it.
pub fn loose_permissions(paths: impl Iterator<Item = PathBuf>) -> Vec<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let own_group = rustix::process::getegid().as_raw();
    paths
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            let mode = meta.permissions().mode();
            let group_ok = meta.gid() == own_group;
            let loose = mode & 0o007 != 0 || (mode & 0o070 != 0 && !group_ok);
            loose.then(|| {
                format!(
                    "{} is readable by {} (mode {:o}): chmod 600 {}, or chmod 640 with the service's group",
                    p.display(),
                    if mode & 0o007 != 0 { "others" } else { "a group other than the process's own" },
                    mode & 0o777,
                    p.display()
                )
            })
        })
        .collect()
}

/// `channel: #backups` is a key without a value: YAML reads `#backups` as a comment. A comment
/// that starts right after `#` (no space) where a value belongs, with no block under the key,
/// was most likely meant as the value.
fn warn_comment_values(ctx: &Ctx<'_>, text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let body = body.strip_prefix("- ").unwrap_or(body);
        let Some((key, rest)) = body.split_once(": ") else { continue };
        let rest = rest.trim_start();
        let looks_like_value =
            rest.starts_with('#') && rest[1..].chars().next().is_some_and(|c| !c.is_whitespace() && c != '#');
        if key.is_empty() || key.contains(' ') || key.starts_with('#') || !looks_like_value {
            continue;
        }
        // a block under the key (more indented lines) is its value: the comment is a comment
        let next = lines[i + 1..].iter().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if next.is_some_and(|n| n.len() - n.trim_start().len() > indent) {
            continue;
        }
        let word = rest.split_whitespace().next().unwrap_or(rest);
        ctx.warn(
            key,
            format!("has no value: {word:?} after it is a YAML comment; quote it (\"{word}\") if it is the value"),
            Some(Loc { line: i as u64 + 1, column: indent as u64 + 1 }),
        );
    }
}

/// The configuration the `demo` command runs on (a throwaway cluster on a unix socket).
pub const EMBEDDED_DEMO: &str = include_str!("../../config/demo.yaml");

impl Config {
    /// Reads and validates a config file, resolving `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |message: String, loc: Option<Loc>| ConfigErrors {
            file: path.display().to_string(),
            issues: vec![ConfigIssue { path: String::new(), message, loc }],
        };
        let bytes = std::fs::read(path).map_err(|e| {
            let hint = crate::storage::local::hint(&e).map(|h| format!("; {h}")).unwrap_or_default();
            fail(format!("cannot read the config file: {e}{hint}"), None)
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let at = e.utf8_error().valid_up_to();
            let before = &bytes[..at];
            let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..]).chars().count() as u64 + 1;
            fail(
                format!(
                    "the file is not UTF-8 text: byte 0x{:02X} cannot start a character (saved as Latin-1 or \
                     Windows-1252? convert it: iconv -f latin1 -t utf-8)",
                    bytes[at]
                ),
                Some(Loc { line, column }),
            )
        })?;
        let env = |name: &str| std::env::var(name).ok();
        let mut cfg = Config::from_yaml(&text, &path.display().to_string(), &env)?;
        cfg.path = Some(path.to_owned());
        // the config file itself matters when it holds a secret as it is (not `${VAR}` or a file)
        let holds_secret = cfg.secret_values().iter().any(|s| !s.expose().is_empty() && text.contains(s.expose()));
        let files = holds_secret.then(|| path.to_owned()).into_iter().chain(cfg.secret_files.iter().cloned());
        let loose = loose_permissions(files);
        if !loose.is_empty() && (cfg.strict || cfg.encryption.strict) {
            return Err(ConfigErrors {
                file: path.display().to_string(),
                issues: loose
                    .into_iter()
                    .map(|message| ConfigIssue { path: "strict".into(), message, loc: None })
                    .collect(),
            });
        }
        cfg.warnings.extend(
            loose.into_iter().map(|l| format!("a file holding secrets: {l} (strict: true makes this an error)")),
        );
        Ok(cfg)
    }

    /// Every secret value the config holds (database passwords, S3 keys).
    pub fn secret_values(&self) -> Vec<&Secret> {
        let mut out: Vec<&Secret> = Vec::new();
        let connections = self.databases.iter().map(|d| &d.connection);
        let others = [&self.restore.target, &self.test_restore.target].into_iter().flatten();
        out.extend(connections.chain(others).filter_map(|c| c.password.as_ref()));
        for t in &self.targets {
            match &t.kind {
                storage::TargetKind::S3(s3) => out.extend(s3.access_key.iter().chain(s3.secret_key.iter())),
                storage::TargetKind::Azure(az) => match &az.auth {
                    storage::AzureAuth::AccessKey(s) | storage::AzureAuth::Sas(s) => out.push(s),
                    storage::AzureAuth::Ambient => {}
                },
                storage::TargetKind::Sftp(sftp) => out.extend(sftp.key_passphrase.iter()),
                storage::TargetKind::Local { .. } | storage::TargetKind::Gcs(_) => {}
            }
        }
        out.extend(self.notifications.secrets());
        out.extend(self.monitoring.secrets());
        out
    }

    /// Validates YAML text; `file` names it in messages; `env` resolves `${VAR}`.
    pub fn from_yaml(text: &str, file: &str, env: reader::EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        let fail = |issues| ConfigErrors { file: file.to_owned(), issues };
        let root = Node::parse(text).map_err(|(message, loc)| {
            fail(vec![ConfigIssue { path: String::new(), message: format!("invalid YAML: {message}"), loc }])
        })?;
        let ctx = Ctx::new(env);
        warn_comment_values(&ctx, text);
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

    /// Resolves `--name` of a SQLite command (or the only configured SQLite database).
    pub fn select_sqlite(&self, name: Option<&str>) -> anyhow::Result<&SqliteConfig> {
        let names = || self.sqlite.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self.sqlite.iter().find(|s| s.name == n).ok_or_else(|| {
                anyhow::anyhow!("no SQLite database {n:?} under sqlite: in the config (configured: {})", {
                    let n = names();
                    if n.is_empty() { "none".to_owned() } else { n }
                })
            }),
            None if self.sqlite.len() == 1 => Ok(&self.sqlite[0]),
            None if self.sqlite.is_empty() => {
                anyhow::bail!("the config has no sqlite: section: add sqlite: [{{name: NAME, path: /abs/path/app.db}}]")
            }
            None => anyhow::bail!("several SQLite databases are configured ({}): choose one with --name", names()),
        }
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
    let wal = read_wal(&mut top, &default_conn);
    let recovery_drill = settings::read_recovery_drill(&mut top);
    let encryption = read_encryption(&mut top);
    let locks = read_locks(&mut top);
    let strict = top.opt::<bool>("strict").unwrap_or(false);
    let notifications = notify::read_notifications(&mut top);
    let monitoring = notify::read_monitoring(&mut top);
    let files = files::read_sets(&mut top, "files");
    let configs = files::read_sets(&mut top, "configs");
    let sqlite = sqlite::read_sqlite(&mut top);
    if sqlite.is_empty() {
        for s in schedules.iter().filter(|s| s.kind == JobKind::SqliteBackup) {
            ctx.warn(
                "schedules.sqlite_backup",
                "the sqlite_backup job backs up the files under sqlite:, and there are none, so this schedule does \
                 nothing: add sqlite: [{name: NAME, path: /abs/path/app.db}], or remove it",
                s.loc,
            );
        }
        schedules.retain(|s| s.kind != JobKind::SqliteBackup);
    }
    // a schedule of file or config backups without sets does nothing: said, and dropped
    for (kind, sets, key) in [(JobKind::FileBackup, &files, "files"), (JobKind::ConfigBackup, &configs, "configs")] {
        if !sets.is_empty() {
            continue;
        }
        for s in schedules.iter().filter(|s| s.kind == kind) {
            let dir = if kind == JobKind::FileBackup { "file_backup_dir" } else { "config_backup_dir" };
            ctx.warn(
                &format!("schedules.{}", kind.name()),
                format!(
                    "the {} job backs up the source sets under {key}:, and there are none, so this schedule does \
                     nothing: add {key}: [{{name: NAME, paths: [/abs/path, ...]}}] (stored in {dir} when set), or \
                     remove it",
                    kind.name()
                ),
                s.loc,
            );
        }
        schedules.retain(|s| s.kind != kind);
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
        recovery_drill: recovery_drill?,
        wal,
        secret_files: ctx.secret_files(),
        encryption,
        locks,
        notifications,
        monitoring,
        files,
        configs,
        sqlite,
        strict,
        warnings: ctx.warnings(),
    })
}

#[cfg(test)]
mod tests;
