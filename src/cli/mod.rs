//! The command line: clap definitions and one function per subcommand. Formatting only; the work
//! is in [`crate::jobs`].

mod check;
mod files;
mod list;
mod restore;
mod retention_out;
mod status;
mod verify_out;

use crate::config::{Config, ConfigErrors};
use crate::jobs::JobFailed;
use crate::jobs::backup::{self, BackupRequest};
use crate::jobs::restore::{RestoreRequest, Selector, TargetOverride};
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Repository};
use crate::telemetry::LogFormat;
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit codes (documented in README.md and docs/operations.md).
pub const EXIT_OK: u8 = 0;
pub const EXIT_JOB_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;

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
    /// every checksum and frame checked, the archive read by pg_restore).
    Verify(VerifyArgs),
    /// Restore a backup into a scratch database, compare row counts, run the configured checks,
    /// measure the restore time, and drop the scratch database.
    TestRestore(CatArgs),
    /// Apply the retention policies: print the plan (keep/delete and why) and execute it.
    Retention(RetentionArgs),
    /// Run as a service: schedules, reload on SIGHUP, graceful stop on SIGTERM.
    Run,
    /// What the running daemon is doing: next and last run of every schedule, running jobs.
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
    /// Send a test message through every notification channel and ping (or the one named);
    /// exit 1 if any fails.
    NotifyTest(NotifyTestArgs),
    /// Create an age identity file (like `age-keygen -o FILE`) and print its public key, the
    /// recipient to put in encryption.recipients.
    Keygen(KeygenArgs),
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
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct RestoreFilesArgs {
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
pub struct KeygenArgs {
    /// Where to write the identity (mode 0600; an existing file is never overwritten).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
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
    Full,
    Incremental,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[arg(long, value_enum, default_value = "full")]
    pub kind: KindArg,
    /// The database to back up (default: the only configured one).
    #[arg(long)]
    pub database: Option<String>,
    /// Accept a dump much smaller than the previous full backup (after a real cleanup).
    #[arg(long)]
    pub allow_shrink: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
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
    #[arg(long)]
    pub database: Option<String>,
    /// The database to restore into.
    #[arg(long)]
    pub target_database: String,
    /// Target server host (default: restore.target, else the backup's own server).
    #[arg(long)]
    pub target_host: Option<String>,
    #[arg(long)]
    pub target_port: Option<u16>,
    #[arg(long)]
    pub target_user: Option<String>,
    /// Create the target database when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Drop the target's objects before restoring them (needs --yes).
    #[arg(long)]
    pub clean: bool,
    /// Confirm --clean.
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
    /// Do not restore object ownership (pg_restore --no-owner).
    #[arg(long)]
    pub no_owner: bool,
    /// Also replay the saved roles and tablespaces (pg_dumpall --globals-only) first.
    #[arg(long)]
    pub globals: bool,
    /// Check everything and verify the backup's content, but change nothing.
    #[arg(long)]
    pub dry_run: bool,
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

impl KeyArgs {
    /// The config, with the identity file added after checking it can be read, and its
    /// repository.
    async fn open(&self, cli: &Cli) -> Result<(Config, Repository)> {
        let mut config = load_config(cli)?;
        if let Some(path) = &self.identity {
            std::fs::metadata(path).with_context(|| format!("--identity {}: cannot read it", path.display()))?;
            config.encryption.extra_identity_files.push(path.clone());
        }
        let repo = Repository::open(&config).await?;
        Ok((config, repo))
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest"])))]
pub struct CatArgs {
    pub backup_id: Option<String>,
    #[arg(long)]
    pub latest: bool,
    #[arg(long)]
    pub database: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["backup_id", "latest", "all"])))]
pub struct VerifyArgs {
    pub backup_id: Option<String>,
    /// The newest backup of --database (or of every configured database).
    #[arg(long)]
    pub latest: bool,
    /// Every backup (of --database, or all).
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub database: Option<String>,
    /// Read and check every stored byte (default: quick, objects and sizes only).
    #[arg(long)]
    pub deep: bool,
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
    #[arg(long)]
    pub json: bool,
}

/// An error with the exit code it maps to.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigErrors>().is_some() {
        EXIT_CONFIG
    } else if err.downcast_ref::<JobFailed>().is_some() {
        EXIT_JOB_FAILED
    } else {
        EXIT_ERROR
    }
}

pub fn load_config(cli: &Cli) -> Result<Config> {
    let Some(path) = &cli.config else {
        bail!("no config file: pass --config PATH or set PGBACKD_CONFIG (see config/pgbackd.yaml)");
    };
    let config = Config::load(path)?;
    // pg_dump and the other children get none of the environment variables the config took a
    // secret from (their passwords come in a private password file)
    crate::process::withhold_env_holding(&config.secret_values());
    log_config_warnings(&config);
    Ok(config)
}

/// Logs the config's warnings (once logging runs).
pub fn log_config_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(problem = %w, "a file holding secrets is readable by others (strict: true makes this an error)");
    }
}

/// Cancels `token` on the first SIGINT/SIGTERM; a second one exits at once.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("signal received: cancelling (send it again to exit at once)");
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}

/// Runs a command. `daemon_config` is the config `run` was started with (read before logging).
pub async fn run(cli: Cli, daemon_config: Option<Config>) -> Result<ExitCode> {
    let cancel = CancellationToken::new();
    if !matches!(cli.command, Command::Run) {
        cancel_on_signals(cancel.clone());
    }
    let interactive = std::io::stderr().is_terminal();
    // the daemon's config was read before logging started: its warnings are logged now
    if let Some(c) = &daemon_config {
        log_config_warnings(c);
    }
    match &cli.command {
        Command::Run => {
            let config = match daemon_config {
                Some(c) => c,
                None => load_config(&cli)?,
            };
            let deps = crate::daemon::Deps {
                clock: Arc::new(crate::daemon::SystemClock),
                host: Arc::new(crate::daemon::RealHost),
                signals: crate::daemon::os_signals()?,
                config_path: cli.config.clone(),
            };
            crate::daemon::run(config, deps).await?;
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::Status(args) => {
            let config = load_config(&cli)?;
            status::print(&config, args.json)?;
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::Healthcheck => {
            let config = load_config(&cli)?;
            let verdict = status::health(&config, chrono::Utc::now());
            match &verdict {
                Ok(()) => println!("healthy"),
                Err(problems) => {
                    for p in problems {
                        println!("unhealthy: {p}");
                    }
                }
            }
            Ok(ExitCode::from(if verdict.is_ok() { EXIT_OK } else { EXIT_JOB_FAILED }))
        }
        Command::Demo(args) => crate::demo::run(args, &cancel).await,
        Command::BackupFiles(args) => files::backup(&cli, args, &cancel).await,
        Command::ListFiles(args) => files::list(&cli, args).await,
        Command::RestoreFiles(args) => files::restore(&cli, args, &cancel).await,
        Command::NotifyTest(args) => {
            let config = load_config(&cli)?;
            let names = config.notifications.channel_names();
            if names.is_empty() {
                bail!("no notification channel is configured (see notifications: in docs/monitoring.md)");
            }
            if let Some(c) = &args.channel
                && !names.contains(c)
            {
                bail!("no channel named {c:?}; configured: {}", names.join(", "));
            }
            let notifier = crate::notify::Notifier::new(&config)?;
            let results = notifier.test(args.channel.as_deref(), chrono::Utc::now()).await;
            let mut failed = false;
            for (name, r) in &results {
                match r {
                    Ok(()) => println!("ok      {name}"),
                    Err(e) => {
                        failed = true;
                        println!("FAILED  {name}: {e:#}");
                    }
                }
            }
            Ok(ExitCode::from(if failed { EXIT_JOB_FAILED } else { EXIT_OK }))
        }
        Command::Keygen(args) => {
            let public = crate::crypto::write_new_identity(&args.output, chrono::Utc::now())?;
            eprintln!("identity written to {} (keep it secret, keep a copy offline)", args.output.display());
            println!("{public}");
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::CheckConfig(args) => {
            let config = load_config(&cli)?;
            println!(
                "{}: configuration is valid",
                config.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            );
            for db in &config.databases {
                println!("  database {:<20} {}", db.name, db.connection);
            }
            for s in &config.schedules {
                println!("  schedule {:<20} {:?} ({})", s.kind.name(), s.schedule.expr(), s.schedule.timezone());
            }
            let repo = Repository::open(&config).await?;
            for t in repo.targets() {
                let kind = if t.required { "required" } else { "optional" };
                println!("  target   {:<20} {} ({kind})", t.name(), t.store.describe());
            }
            if !args.connect {
                return Ok(ExitCode::from(EXIT_OK));
            }
            Ok(ExitCode::from(if check::connect(&config, &repo).await { EXIT_OK } else { EXIT_JOB_FAILED }))
        }
        Command::Backup(args) => {
            let config = load_config(&cli)?;
            let repo = Repository::open(&config).await?;
            let db = config.select_database(args.database.as_deref())?;
            let kind = match args.kind {
                KindArg::Full => BackupKind::Full,
                KindArg::Incremental => BackupKind::Incremental,
            };
            let req = BackupRequest {
                config: &config,
                database: db,
                kind,
                trigger: Trigger::Manual,
                allow_shrink: args.allow_shrink,
                interactive,
                progress: Default::default(),
                run_id: crate::jobs::report::new_run_id(),
            };
            let started = chrono::Utc::now();
            let result = backup::run(&req, &repo, &cancel, started).await;
            crate::jobs::report::record(
                &config.reports.dir,
                &crate::jobs::report::Report::of_backup(&req.run_id, &db.name, "manual", started, &result),
            );
            let m = result.map_err(|e| anyhow::Error::new(JobFailed(e)))?;
            println!("{}", m.id);
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::List(args) => {
            let config = load_config(&cli)?;
            let repo = Repository::open(&config).await?;
            if let Some(d) = &args.database {
                config.select_database(Some(d))?;
            }
            let backups = repo.list_with_targets(args.database.as_deref()).await?;
            list::print(&backups, args.json)?;
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::Restore(args) => {
            let (config, repo) = args.keys.open(&cli).await?;
            let m = crate::jobs::restore::resolve(
                &selector(args.backup_id.as_deref(), args.database.clone()),
                &config,
                &repo,
            )
            .await?;
            let req = RestoreRequest {
                target_database: args.target_database.clone(),
                target: TargetOverride {
                    host: args.target_host.clone(),
                    port: args.target_port,
                    user: args.target_user.clone(),
                    server: None,
                },
                create: args.create,
                clean: args.clean,
                yes: args.yes,
                jobs: args.jobs,
                schemas: args.schemas.clone(),
                tables: args.tables.clone(),
                no_owner: args.no_owner,
                globals: args.globals,
                dry_run: args.dry_run,
                interactive,
            };
            let report = crate::jobs::restore::run(&m, &req, &config, &repo, &cancel)
                .await
                .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
            restore::print(&report, args.json)?;
            Ok(ExitCode::from(if report.mismatches.is_empty() { EXIT_OK } else { EXIT_JOB_FAILED }))
        }
        Command::Verify(args) => {
            let (config, repo) = args.keys.open(&cli).await?;
            let listed = repo.list_with_targets(args.database.as_deref()).await?;
            let chosen: Vec<&crate::repo::Listed> = match (&args.backup_id, args.latest) {
                (Some(id), _) => {
                    let one = listed.iter().find(|l| &l.manifest.id == id);
                    match one {
                        Some(l) => vec![l],
                        None => {
                            repo.find(id).await?;
                            bail!("backup {id} is not readable on any target")
                        }
                    }
                }
                (None, true) => {
                    let dbs: Vec<String> = match &args.database {
                        Some(d) => vec![d.clone()],
                        None => config.databases.iter().map(|d| d.name.clone()).collect(),
                    };
                    dbs.iter().filter_map(|d| listed.iter().rev().find(|l| &l.manifest.database == d)).collect()
                }
                (None, false) => listed.iter().collect(),
            };
            if chosen.is_empty() {
                bail!("no backups to verify in {}", repo.describe());
            }
            let mode = if args.deep { crate::config::VerifyMode::Deep } else { crate::config::VerifyMode::Quick };
            let mut results = Vec::new();
            for l in chosen {
                let run_id = crate::jobs::report::new_run_id();
                let started = chrono::Utc::now();
                let v = crate::jobs::verify::verify(l, mode, &config, &repo, &cancel, &Default::default()).await;
                crate::jobs::report::record(
                    &config.reports.dir,
                    &crate::jobs::report::Report::of_verification(&run_id, "manual", started, &v),
                );
                results.push(v);
            }
            verify_out::print(&results, args.json)?;
            Ok(ExitCode::from(if results.iter().all(|r| r.ok) { EXIT_OK } else { EXIT_JOB_FAILED }))
        }
        Command::TestRestore(args) => {
            let (config, repo) = args.keys.open(&cli).await?;
            let m = crate::jobs::restore::resolve(
                &selector(args.backup_id.as_deref(), args.database.clone()),
                &config,
                &repo,
            )
            .await?;
            let run_id = crate::jobs::report::new_run_id();
            let started = chrono::Utc::now();
            let t = crate::jobs::test_restore::run(&m, &config, &repo, &cancel).await;
            crate::jobs::report::record(
                &config.reports.dir,
                &crate::jobs::report::Report::of_test_restore(&run_id, "manual", started, &t),
            );
            verify_out::print_test_restore(&t)?;
            Ok(ExitCode::from(if t.ok { EXIT_OK } else { EXIT_JOB_FAILED }))
        }
        Command::Retention(args) => {
            let config = load_config(&cli)?;
            let repo = Repository::open(&config).await?;
            let now = match &args.at {
                Some(t) => crate::jobs::retention::parse_at(t).map_err(|e| anyhow::anyhow!("--at: {e}"))?,
                None => chrono::Utc::now(),
            };
            let databases: Vec<String> = match &args.database {
                Some(d) => vec![config.select_database(Some(d))?.name.clone()],
                None => config.databases.iter().map(|d| d.name.clone()).collect(),
            };
            let mut runs = Vec::new();
            for db in &databases {
                let started = chrono::Utc::now();
                let run = crate::jobs::retention::run_for_database(
                    &config,
                    &repo,
                    db,
                    now,
                    args.dry_run,
                    &std::collections::HashSet::new(),
                )
                .await
                .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
                record_retention(&config, started, &run);
                runs.push(run);
            }
            // the file and configuration sets too, unless one database was asked for
            let sets = config
                .files
                .iter()
                .map(|s| (crate::fileset::SetKind::Files, s))
                .chain(config.configs.iter().map(|s| (crate::fileset::SetKind::Configs, s)));
            for (kind, set) in sets.filter(|_| args.database.is_none()) {
                let started = chrono::Utc::now();
                let run = crate::fileset::retention(&config, &repo, kind, &set.name, now, args.dry_run)
                    .await
                    .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
                record_retention(&config, started, &run);
                runs.push(run);
            }
            retention_out::print(&runs, args.json)?;
            let failed = runs.iter().any(|r| r.applied.as_ref().is_some_and(|a| !a.errors.is_empty()));
            Ok(ExitCode::from(if failed { EXIT_JOB_FAILED } else { EXIT_OK }))
        }
        Command::Cat(args) => {
            let (config, repo) = args.keys.open(&cli).await?;
            if std::io::stdout().is_terminal() {
                bail!(
                    "refusing to write a binary archive to a terminal: redirect it, e.g. pgbackd cat ID > backup.dump"
                );
            }
            let m = crate::jobs::restore::resolve(
                &selector(args.backup_id.as_deref(), args.database.clone()),
                &config,
                &repo,
            )
            .await?;
            let mut out = tokio::io::stdout();
            crate::jobs::restore::cat(&m, &repo, &mut out, &cancel)
                .await
                .context("writing the archive to stdout")
                .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
            Ok(ExitCode::from(EXIT_OK))
        }
    }
}

/// Writes the report of an applied (not dry-run) retention run.
fn record_retention(
    config: &Config,
    started: chrono::DateTime<chrono::Utc>,
    run: &crate::jobs::retention::RetentionRun,
) {
    if !run.dry_run {
        let run_id = crate::jobs::report::new_run_id();
        crate::jobs::report::record(
            &config.reports.dir,
            &crate::jobs::report::Report::of_retention(&run_id, "manual", started, run),
        );
    }
}

fn selector(id: Option<&str>, database: Option<String>) -> Selector {
    match id {
        Some(id) => Selector::Id(id.to_owned()),
        None => Selector::Latest { database },
    }
}
