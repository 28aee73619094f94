//! The command-line tree (clap derive): every subcommand and its arguments.

use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "pgbackd", version, about = "PostgreSQL backups you can prove restore")]
pub struct Cli {
    /// The YAML config file.
    #[arg(long, short = 'c', env = "PGBACKD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
    /// Log format: JSON lines when stderr is not a terminal (auto), or forced.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print every error at once (exit 78 if any).
    CheckConfig(CheckConfigArgs),
    /// Take a backup now and print its id.
    Backup(BackupArgs),
    /// List backups.
    List(ListArgs),
    /// Restore a backup into a database and check its row counts.
    Restore(RestoreArgs),
    /// Write a backup's raw pg_dump archive to stdout (for a manual pg_restore).
    Cat(CatArgs),
    /// Check backups on every target: quick (present, right sizes) or --deep (every byte read,
    /// every checksum and frame checked, the archive read by pg_restore); --wal checks the WAL
    /// archive (every segment there, gaps named).
    Verify(VerifyArgs),
    /// Restore a backup into a scratch database, compare row counts, run the configured checks,
    /// measure the restore time, and drop the scratch database.
    TestRestore(CatArgs),
    /// Apply the retention policies: print the plan (keep/delete and why) and execute it.
    Retention(RetentionArgs),
    /// Run as a service: schedules, reload on SIGHUP, graceful stop on SIGTERM.
    Run,
    /// What the running daemon is doing: next and last run of every schedule, running jobs
    /// (exit 0 while it runs, 3 when it does not).
    Status(StatusArgs),
    /// Exit 0 if the daemon is alive and every database has a recent enough full backup, else 1
    /// (for Docker's HEALTHCHECK).
    Healthcheck,
    /// Run a local demo: throwaway PostgreSQL, one backup, one verified restore.
    Demo(crate::demo::DemoArgs),
    /// Back up a source set of `files:` (or of `configs:` with --configs) now; prints the backup
    /// id; exit 1 when the backup is partial (files unreadable, vanished or changed).
    BackupFiles(FilesArgs),
    /// List the file backups of a source set.
    ListFiles(ListFilesArgs),
    /// Restore a file backup into an empty or new directory, checking every file's SHA-256.
    RestoreFiles(RestoreFilesArgs),
    /// Back up a SQLite database of `sqlite:` now (a consistent snapshot through SQLite's online
    /// backup API; a full every full_every backups, else an incremental); prints the backup id.
    BackupSqlite(SqliteBackupArgs),
    /// Restore a SQLite backup to a file, rebuilt and checked (integrity_check, foreign_key_check,
    /// row counts) beside it first; an existing database is replaced only with --replace and kept
    /// as FILE.pre-BACKUP (`pgbackd rollback --sqlite FILE` swaps it back).
    RestoreSqlite(RestoreSqliteArgs),
    /// Send a test message through every notification channel and ping (or the one named);
    /// exit 1 if any fails.
    NotifyTest(NotifyTestArgs),
    /// Delete one backup on purpose (a damaged one too): shows what it would delete unless
    /// given --yes; refuses a backup that a reader holds or an incremental needs.
    Forget(ForgetArgs),
    /// Remove stale locks (of processes that are gone or stopped refreshing them); with --all,
    /// every lock: only when no pgbackd runs against this repository anywhere.
    Unlock(UnlockArgs),
    /// Swap back the database that `restore --replace` replaced (kept as NAME_pre_BACKUP); the
    /// database swapped out is kept as NAME_rolled_back_TIME. With --sqlite FILE, the SQLite file
    /// `restore-sqlite --replace` replaced (kept as FILE.pre-BACKUP).
    Rollback(RollbackArgs),
    /// Create an age identity file (like `age-keygen -o FILE`) and print its public key, the
    /// recipient to put in encryption.recipients.
    Keygen(KeygenArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    /// (e.g. `pgbackd completions bash > /etc/bash_completion.d/pgbackd`).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per command into --dir
    /// (e.g. `pgbackd man | man -l -`).
    Man(ManArgs),
    /// Archive one WAL file (archive_command = 'pgbackd -c CONFIG archive-push %p'): compressed,
    /// hashed, encrypted if configured, stored on every target. A file already archived with the
    /// same contents succeeds; with different contents it fails and nothing is overwritten.
    ArchivePush(ArchivePushArgs),
    /// Take a physical base backup of the cluster whose WAL is archived (wal:) now: pg_basebackup
    /// streamed to every target with PostgreSQL's backup_manifest; kept only once the WAL it needs
    /// is archived. Prints its id.
    BaseBackup,
    /// Fetch one archived WAL file (restore_command = 'pgbackd -c CONFIG archive-get %f %p'),
    /// its SHA-256 checked; exit 1 when the archive does not hold it.
    ArchiveGet(ArchiveGetArgs),
    /// Store what the WAL spool holds now (wal.method stream), the partial segment the receiver
    /// is writing included: the archive then reaches the last WAL received. Prints what it stored.
    WalFlush,
    /// Recover the cluster into an empty data directory, to a moment: the newest base backup
    /// before the target (every frame checked), the WAL up to it checked in the archive, recovery
    /// settings written (restore_command = pgbackd archive-get); with --start, run the server
    /// until recovery reaches the target and print the LSN and commit time reached.
    RestoreCluster(RestoreClusterArgs),
    /// Create a named restore point on the wal.server, archive the WAL holding it, and record it
    /// (restore-cluster --to-restore-point NAME then starts from a base backup before it).
    RestorePoint(RestorePointArgs),
    /// Run a recovery drill now (schedule key recovery_drill): recover into a scratch copy (to
    /// recovery_drill.pick), read every table, pg_amcheck, compare the schema with the live
    /// server, run the checks, pg_checksums, measure RTO and RPO, remove the copy; exit 1 if any
    /// check failed.
    RecoveryDrill(RecoveryDrillArgs),
    /// Ask the running daemon to run a job now, over its HTTP endpoint (monitoring.trigger), and
    /// with --wait follow it to its end: exit 0 with the backup id (or restore point) on stdout,
    /// 1 when the job failed, 2 when the daemon refused, 3 when no daemon answers. For deploy
    /// pipelines: no database credentials needed (docs/ci.md).
    Trigger(TriggerArgs),
    /// The prefetcher archive-get starts (keeps the next wal.prefetch segments queued).
    #[command(hide = true)]
    ArchivePrefetch(ArchivePrefetchArgs),
}

#[derive(Debug, Args)]
pub struct RecoveryDrillArgs {
    /// Print the drill's report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct ArchivePrefetchArgs {
    #[arg(long)]
    pub system_id: u64,
    #[arg(long)]
    pub queue: PathBuf,
    #[arg(long)]
    pub segment_size: u64,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_time", "to_lsn", "to_restore_point", "latest"])))]
pub struct RestoreClusterArgs {
    /// The data directory to create (absent or empty).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Recover up to the last commit at or before this time: RFC 3339 (2026-12-03T14:02:00Z) or
    /// "2026-12-03 14:02[:SS]" in this machine's time zone, or with an offset (+01:00).
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    /// Recover up to this WAL location (0/3000060).
    #[arg(long, value_name = "LSN")]
    pub to_lsn: Option<String>,
    /// Recover up to a restore point (pgbackd restore-point NAME, or pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub to_restore_point: Option<String>,
    /// Recover to the end of the archived WAL.
    #[arg(long)]
    pub latest: bool,
    /// recovery_target_timeline (default: latest, the newest timeline in the archive).
    #[arg(long, value_name = "N")]
    pub timeline: Option<u32>,
    /// Start from this base backup (default: the newest one that ends before the target).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Start the server and wait until recovery reaches the target (it keeps running).
    #[arg(long)]
    pub start: bool,
    /// The restored server's port (written to its postgresql.auto.conf).
    #[arg(long)]
    pub port: Option<u16>,
    /// Put a tablespace elsewhere: NAME=DIR (its name, OID or old location).
    #[arg(long, value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// archive_mode = off in the restored server: a side copy must not archive into the
    /// production cluster's archive.
    #[arg(long)]
    pub no_archive: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct RestorePointArgs {
    /// The point's name (letters, digits, '-', '_', '.'; up to 63).
    pub name: String,
}

/// The server a restore writes to, when not the configured one.
#[derive(Debug, Args)]
pub struct TargetServerArgs {
    /// Target server host (default: restore.target, else the backup's own server).
    #[arg(long)]
    pub target_host: Option<String>,
    /// Target server port (default: as for --target-host).
    #[arg(long)]
    pub target_port: Option<u16>,
    /// Role to connect as on the target server (default: as for --target-host); it needs
    /// CREATEDB to create or replace a database.
    #[arg(long)]
    pub target_user: Option<String>,
}

impl TargetServerArgs {
    pub fn overrides(&self) -> crate::jobs::restore::TargetOverride {
        crate::jobs::restore::TargetOverride {
            host: self.target_host.clone(),
            port: self.target_port,
            user: self.target_user.clone(),
            server: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The database to roll back (default: --database, else the only configured database).
    #[arg(long)]
    pub target_database: Option<String>,
    /// The configured database whose server it is on.
    #[arg(long)]
    pub database: Option<String>,
    #[command(flatten)]
    pub server: TargetServerArgs,
    /// Which kept database to swap in (default: the newest kept for it); with --sqlite, the kept
    /// file (FILE.pre-BACKUP).
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    /// Confirm: connections to the database are terminated (with --sqlite: swap even though
    /// processes have the file open).
    #[arg(long)]
    pub yes: bool,
    /// Roll back a SQLite file that `restore-sqlite --replace` replaced instead of a database.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target_database", "database"])]
    pub sqlite: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SqliteBackupArgs {
    /// The database's name under `sqlite:` (default: the only one configured).
    #[arg(long)]
    pub name: Option<String>,
    /// A full backup, whatever full_every says.
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct RestoreSqliteArgs {
    /// The backup to restore (see `pgbackd list --database sqlite:NAME`).
    pub backup_id: Option<String>,
    /// The newest backup of --name.
    #[arg(long)]
    pub latest: bool,
    /// The database's name under `sqlite:` (default: the only one configured).
    #[arg(long)]
    pub name: Option<String>,
    /// The file to restore to (its directory must exist).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace the database at --to (kept as FILE.pre-BACKUP for `pgbackd rollback --sqlite`).
    #[arg(long)]
    pub replace: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// The source set's name.
    #[arg(long)]
    pub name: String,
    /// A set of `configs:` (job config_backup) instead of `files:`.
    #[arg(long)]
    pub configs: bool,
}

#[derive(Debug, Args)]
pub struct ListFilesArgs {
    #[command(flatten)]
    pub set: FilesArgs,
    /// A JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct RestoreFilesArgs {
    /// The file backup to restore (see `pgbackd list-files`).
    pub backup_id: Option<String>,
    /// The newest backup of the set.
    #[arg(long)]
    pub latest: bool,
    #[command(flatten)]
    pub set: FilesArgs,
    /// The directory to restore into (created; must be empty unless --overwrite).
    #[arg(long)]
    pub to: PathBuf,
    /// Only paths matching this glob (repeatable), e.g. 'srv/app/uploads/2026/**'.
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Read and check everything, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace files that exist in the target directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct NotifyTestArgs {
    /// Only this channel (email, slack, a webhook's or a healthchecks entry's name).
    #[arg(long)]
    pub channel: Option<String>,
}

#[derive(Debug, Args)]
pub struct ArchivePushArgs {
    /// The file to archive (%p: pg_wal/000000010000000000000003, a .history, .partial or .backup file).
    pub path: PathBuf,
    /// The cluster's data directory (default: the one above pg_wal, or the working directory),
    /// read for the system identifier of files without a WAL page header (.history, .backup).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ArchiveGetArgs {
    /// The WAL file wanted (%f).
    pub file: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// Which cluster's archive (default: the system identifier in the working directory's
    /// global/pg_control, the data directory restore_command runs in).
    #[arg(long, value_name = "ID")]
    pub system_id: Option<u64>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Also remove locks that look alive (of a process that still refreshes them).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The backup's id (see `pgbackd list`).
    pub backup_id: String,
    /// Delete it (without: only show what would be deleted).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pgbackd.1 and a pgbackd-COMMAND.1 per command into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the identity (mode 0600; an existing file is never overwritten).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The job: full_backup, incremental_backup, verification, test_restore, retention,
    /// file_backup, config_backup, sqlite_backup, base_backup, recovery_drill or restore_point.
    pub job: String,
    /// What it runs on: a database's name, or files:NAME, configs:NAME, sqlite:NAME, cluster:NAME
    /// (may be left out when the job has one possible subject).
    #[arg(long, short = 'd')]
    pub database: Option<String>,
    /// The restore point's name (job restore_point).
    #[arg(long)]
    pub name: Option<String>,
    /// Wait for the job to end; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (e.g. 2h) and exit 1; the job goes on.
    #[arg(long, requires = "wait")]
    pub timeout: Option<String>,
    /// The daemon's endpoint (default: http:// + monitoring.listen of --config).
    #[arg(long, env = "PGBACKD_URL")]
    pub url: Option<String>,
    /// A file holding the trigger token (default: the PGBACKD_TRIGGER_TOKEN variable, else
    /// monitoring.trigger.token of --config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the run's final state (or, without --wait, the started run) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's status as JSON (exit 0 while it runs, 3 when it does not).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Also connect: each database (server version, pg_dump compatibility) and each storage
    /// target (write, read, list, delete a small object). Exit 1 if anything fails.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// A complete pg_dump archive.
    Full,
    /// Only what changed since the previous backup (delta frames against it; backup.incremental_base,
    /// backup.max_chain).
    Incremental,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Full, or incremental against the previous backup (a full once backup.max_chain incrementals
    /// follow the last full).
    #[arg(long, value_enum, default_value = "full")]
    pub kind: KindArg,
    /// The database to back up (default: the only configured one).
    #[arg(long, conflicts_with = "all")]
    pub database: Option<String>,
    /// Every configured database, one after the other (exit 1 if any fails; the others still run).
    #[arg(long)]
    pub all: bool,
    /// Accept a dump much smaller than the previous full backup (after a real cleanup).
    #[arg(long)]
    pub allow_shrink: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this database's backups, or a SQLite file's (sqlite:NAME) (default: every subject's).
    #[arg(long)]
    pub database: Option<String>,
    /// A JSON array (a stable format; see docs/operations.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct RestoreArgs {
    /// The backup to restore (see `pgbackd list`).
    pub backup_id: Option<String>,
    /// Restore the newest backup of --database (or of the only configured database).
    #[arg(long)]
    pub latest: bool,
    /// The configured database whose newest backup --latest means.
    #[arg(long)]
    pub database: Option<String>,
    /// The database to restore into.
    #[arg(long)]
    pub target_database: String,
    #[command(flatten)]
    pub server: TargetServerArgs,
    /// Create the target database when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Drop the target's objects before restoring them in place (needs --yes; a safety backup
    /// is taken first).
    #[arg(long)]
    pub clean: bool,
    /// Restore into a new database beside the target, check it, then swap names (the old one is
    /// kept as NAME_pre_BACKUP until dropped or `pgbackd rollback`; needs --yes).
    #[arg(long, conflicts_with_all = ["clean", "create"])]
    pub replace: bool,
    /// Confirm --clean or --replace.
    #[arg(long)]
    pub yes: bool,
    /// Parallel pg_restore jobs (spools the archive to a temp file when > 1).
    #[arg(long, default_value_t = 0)]
    pub jobs: u32,
    /// Restore only this schema (repeatable).
    #[arg(long = "schema")]
    pub schemas: Vec<String>,
    /// Restore only this table (repeatable).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Do not restore object ownership (pg_restore --no-owner), nor the database's owner.
    #[arg(long)]
    pub no_owner: bool,
    /// Do not restore grants (pg_restore --no-privileges), nor the database's ACL: for a server
    /// without the source's roles.
    #[arg(long)]
    pub no_privileges: bool,
    /// Create the database with this encoding instead of the backup's.
    #[arg(long, value_name = "ENCODING")]
    pub encoding: Option<String>,
    /// Create the database with this LC_COLLATE and LC_CTYPE instead of the backup's (a target
    /// server without the source's locale).
    #[arg(long, value_name = "LOCALE")]
    pub locale: Option<String>,
    /// Create the database with the ICU locale provider and this locale.
    #[arg(long, value_name = "LOCALE")]
    pub icu_locale: Option<String>,
    /// Also replay the saved roles and tablespaces (pg_dumpall --globals-only) first.
    #[arg(long)]
    pub globals: bool,
    /// Check everything and verify the backup's content, but change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep a database this restore created when the restore fails (it is dropped otherwise).
    #[arg(long)]
    pub keep_failed: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Keys that read encrypted backups, beside the config's.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// An age identity file (AGE-SECRET-KEY-1... lines) that decrypts encrypted backups; added to
    /// encryption.identity_file, never encrypted to.
    #[arg(long, env = "PGBACKD_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct CatArgs {
    /// The backup (see `pgbackd list`).
    pub backup_id: Option<String>,
    /// The newest backup of --database (or of the only configured database).
    #[arg(long)]
    pub latest: bool,
    /// The configured database (or sqlite:NAME) whose newest backup --latest means.
    #[arg(long)]
    pub database: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest", "all", "wal"])))]
pub struct VerifyArgs {
    /// The backup to verify (see `pgbackd list`).
    pub backup_id: Option<String>,
    /// The newest backup of --database (or of every configured database).
    #[arg(long)]
    pub latest: bool,
    /// Every backup (of --database, or all).
    #[arg(long)]
    pub all: bool,
    /// The WAL archive of the cluster in `wal:`: every segment from the oldest archived to the
    /// newest is there on every target, across timeline switches (gaps named by their first
    /// missing segment); with --deep every file is read and checked against its SHA-256.
    #[arg(long, conflicts_with = "database")]
    pub wal: bool,
    /// Only this database's (or sqlite:NAME's) backups, with --latest or --all.
    #[arg(long)]
    pub database: Option<String>,
    /// Read and check every stored byte (default: quick, objects and sizes only).
    #[arg(long)]
    pub deep: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Only one database (default: every configured one).
    #[arg(long)]
    pub database: Option<String>,
    /// Print the plan, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Plan as of this time (2026-11-22 or 2026-11-22T06:00:00Z); needs --dry-run.
    #[arg(long, requires = "dry_run")]
    pub at: Option<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and option says what it does in `--help`.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.is_hide_set() || matches!(a.get_id().as_str(), "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_long().unwrap_or(a.get_id().as_str())));
                }
            }
            for s in cmd.get_subcommands() {
                if s.is_hide_set() {
                    continue;
                }
                let p = format!("{path} {}", s.get_name());
                if s.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "pgbackd", &mut missing);
        assert!(missing.is_empty(), "without help text:\n{}", missing.join("\n"));
    }
}
