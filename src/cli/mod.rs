//! The command line: the clap tree ([`args`]) and one file per command. Commands parse, build a
//! `JobSpec`, call `jobs::run` and print what it produced; the work is in [`crate::jobs`].

/// `println!` with every configured secret masked (see [`crate::secret::redact`]).
macro_rules! say {
    ($($t:tt)*) => { println!("{}", $crate::secret::redact(&format!($($t)*))) };
}

/// `eprintln!` with every configured secret masked.
macro_rules! tell {
    ($($t:tt)*) => { eprintln!("{}", $crate::secret::redact(&format!($($t)*))) };
}

pub mod args;
mod backup;
mod check;
mod forget;
mod list;
mod manual;
mod notify;
mod recovery;
mod restore;
mod retention;
mod rollback;
mod status;
mod trigger;
mod unlock;
mod verify;
mod wal;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigErrors};
use crate::jobs::run::{JobRun, JobSpec, RunOutcome};
use crate::jobs::{JobContext, JobFailed};
use crate::repo::Repository;
use crate::telemetry::events::{self, Sinks};
use anyhow::{Context, Result, bail};
use args::KeyArgs;
pub use args::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit codes (documented in README.md and docs/operations.md).
pub const EXIT_OK: u8 = 0;
pub const EXIT_JOB_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
/// `status`: no daemon runs (LSB: program is not running).
pub const EXIT_NOT_RUNNING: u8 = 3;
pub const EXIT_CONFIG: u8 = 78;
/// archive-get's failure (not "not archived"): above 125, PostgreSQL stops the recovery.
pub const EXIT_RESTORE_ABORT: u8 = 126;

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
    crate::secret::register(config.secret_values());
    log_config_warnings(&config);
    Ok(config)
}

/// Logs the config's warnings (once logging runs).
pub fn log_config_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(problem = %w, "configuration warning");
    }
}

/// The context one-shot commands run jobs in: the config (with `--identity` added to what
/// decrypts), its repository, the system clock, the root cancellation token.
pub(crate) async fn context(cli: &Cli, keys: Option<&KeyArgs>, cancel: &CancellationToken) -> Result<JobContext> {
    let mut config = load_config(cli)?;
    if let Some(path) = keys.and_then(|k| k.identity.as_ref()) {
        std::fs::metadata(path).with_context(|| format!("--identity {}: cannot read it", path.display()))?;
        config.encryption.extra_identity_files.push(path.clone());
    }
    let repository = Repository::open(&config).await?;
    Ok(JobContext {
        config: Arc::new(config),
        repository: Arc::new(repository),
        clock: Arc::new(SystemClock),
        cancel: cancel.clone(),
        progress: Default::default(),
        interactive: std::io::stderr().is_terminal(),
    })
}

/// Runs one job as every command does: `jobs::run`, then what it causes (its log line and report).
pub(crate) async fn run_job(ctx: &JobContext, spec: JobSpec) -> JobRun {
    let sinks = Sinks { reports: &ctx.config.reports.dir, board: None, notifier: None };
    events::job_started(&spec, ctx.now(), &ctx.progress, &sinks);
    let run = crate::jobs::run(spec, ctx).await;
    events::job_finished(&run, &sinks);
    run
}

/// A run that failed or was cancelled, as the error that exits 1.
pub(crate) fn failure(run: JobRun) -> anyhow::Error {
    match run.outcome {
        // refused before anything changed: a usage error (exit 2)
        RunOutcome::Failed(e) if crate::jobs::Refused::in_chain(&e) => e,
        RunOutcome::Failed(e) => anyhow::Error::new(JobFailed(e)),
        other => {
            let why = match other {
                RunOutcome::Partial(w) | RunOutcome::Cancelled(w) => w,
                _ => "the job did not succeed".into(),
            };
            anyhow::Error::new(JobFailed(anyhow::anyhow!(why)))
        }
    }
}

/// What `--database` names where any backed-up subject may be meant: `sqlite:NAME` a SQLite
/// database of the config, anything else a configured database.
pub fn subject_arg(config: &Config, name: &str) -> Result<crate::repo::Subject> {
    use crate::repo::Subject;
    Ok(match name.strip_prefix("sqlite:") {
        Some(n) => Subject::Sqlite(config.select_sqlite(Some(n))?.name.clone()),
        None => Subject::Database(config.select_database(Some(name))?.name.clone()),
    })
}

/// Cancels `token` on the first SIGINT/SIGTERM; a second one exits at once.
fn cancel_on_signals(token: CancellationToken) {
    crate::tasks::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {}, _ = token.cancelled() => return }
        tracing::warn!("signal received: cancelling (send it again to exit at once)");
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}

/// Runs a command. `daemon_config` is the config `run` was started with (read before logging).
pub async fn run(cli: Cli, daemon_config: Option<Config>) -> Result<ExitCode> {
    // the root of the one cancellation tree
    let cancel = CancellationToken::new();
    let code = dispatch(&cli, daemon_config, &cancel).await;
    // what is still running (a child being stopped, a connection closing) ends with the root
    cancel.cancel();
    crate::tasks::wait_all(std::time::Duration::from_secs(2)).await;
    code
}

async fn dispatch(cli: &Cli, daemon_config: Option<Config>, cancel: &CancellationToken) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Run) {
        cancel_on_signals(cancel.clone());
    }
    match &cli.command {
        Command::Run => {
            let config = match daemon_config {
                Some(c) => {
                    // read (and its secrets withheld) before logging started: its warnings are logged now
                    log_config_warnings(&c);
                    c
                }
                None => load_config(cli)?,
            };
            let deps = crate::daemon::Deps {
                clock: Arc::new(SystemClock),
                arms: Arc::new(crate::jobs::run::Jobs),
                signals: crate::daemon::os_signals(cancel.clone())?,
                config_path: cli.config.clone(),
                cancel: cancel.clone(),
            };
            crate::daemon::run(config, deps).await?;
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::Status(args) => status::print(&load_config(cli)?, args.json),
        Command::Trigger(args) => trigger::run(cli, args, cancel).await,
        Command::Healthcheck => status::healthcheck(&load_config(cli)?),
        Command::Demo(args) => crate::demo::run(args, cancel).await,
        Command::NotifyTest(args) => notify::test(&load_config(cli)?, args).await,
        Command::Keygen(args) => {
            let public = crate::crypto::write_new_identity(&args.output, chrono::Utc::now())?;
            tell!("identity written to {} (keep it secret, keep a copy offline)", args.output.display());
            say!("{public}");
            Ok(ExitCode::from(EXIT_OK))
        }
        Command::Completions(args) => manual::completions(args.shell),
        Command::Man(args) => manual::man(args.dir.as_deref()),
        Command::CheckConfig(args) => check::run(&context(cli, None, cancel).await?, args).await,
        Command::Backup(args) => backup::database(&context(cli, None, cancel).await?, args).await,
        Command::BackupFiles(args) => backup::files(&context(cli, None, cancel).await?, args).await,
        Command::BackupSqlite(args) => backup::sqlite(&context(cli, None, cancel).await?, args).await,
        Command::RestoreSqlite(args) => restore::sqlite(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::BaseBackup => backup::base(&context(cli, None, cancel).await?).await,
        Command::List(args) => list::backups(&context(cli, None, cancel).await?, args).await,
        Command::ListFiles(args) => list::files(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::Restore(args) => restore::database(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::RestoreFiles(args) => restore::files(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::Cat(args) => restore::cat(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::Verify(args) => verify::backups(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::TestRestore(args) => verify::test_restore(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::Retention(args) => retention::run(&context(cli, None, cancel).await?, args).await,
        Command::Forget(args) => forget::run(&context(cli, None, cancel).await?, args).await,
        Command::Unlock(args) => unlock::run(&context(cli, None, cancel).await?, args).await,
        Command::Rollback(args) => rollback::run(&context(cli, None, cancel).await?, args).await,
        Command::ArchivePush(args) => wal::push(&context(cli, None, cancel).await?, args).await,
        Command::ArchiveGet(args) => wal::get(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::WalFlush => wal::flush(&context(cli, None, cancel).await?).await,
        Command::RestoreCluster(args) => {
            recovery::restore_cluster(&context(cli, Some(&args.keys), cancel).await?, args).await
        }
        Command::RecoveryDrill(args) => recovery::drill(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::ArchivePrefetch(args) => wal::prefetch(&context(cli, Some(&args.keys), cancel).await?, args).await,
        Command::RestorePoint(args) => recovery::restore_point(&context(cli, None, cancel).await?, args).await,
    }
}
