//! `pgbackd backup`, `pgbackd backup-files`, `pgbackd backup-sqlite` and `pgbackd base-backup`:
//! one backup now; its id on stdout.

use super::args::{BackupArgs, FilesArgs, KindArg, SqliteBackupArgs};
use super::{EXIT_JOB_FAILED, EXIT_OK, failure, run_job};
use crate::jobs::JobContext;
use crate::jobs::kind::JobKind;
use crate::jobs::run::{JobSpec, RunOutcome};
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use anyhow::Result;
use std::process::ExitCode;

pub async fn database(ctx: &JobContext, args: &BackupArgs) -> Result<ExitCode> {
    if args.all {
        return every_database(ctx, args).await;
    }
    let db = ctx.config.select_database(args.database.as_deref())?;
    let run = run_job(ctx, spec(args, &db.name)).await;
    match (&run.outcome, run.backup()) {
        (RunOutcome::Success, Some(m)) => {
            say!("{}", m.id);
            Ok(ExitCode::from(EXIT_OK))
        }
        _ => Err(failure(run)),
    }
}

fn spec(args: &BackupArgs, database: &str) -> JobSpec {
    let kind = match args.kind {
        KindArg::Full => JobKind::FullBackup,
        KindArg::Incremental => JobKind::IncrementalBackup,
    };
    let mut spec = JobSpec::new(kind, Subject::Database(database.to_owned()), Trigger::Manual);
    spec.params.allow_shrink = args.allow_shrink;
    spec
}

/// `backup --all`: every configured database in config order, each one's id on stdout as
/// `NAME ID`; a failure is reported and the next database still runs; exit 1 if any failed.
async fn every_database(ctx: &JobContext, args: &BackupArgs) -> Result<ExitCode> {
    let mut failed = Vec::new();
    for db in &ctx.config.databases {
        if ctx.cancel.is_cancelled() {
            failed.push(format!("{}: cancelled before it started", db.name));
            continue;
        }
        let run = run_job(ctx, spec(args, &db.name)).await;
        match (&run.outcome, run.backup()) {
            (RunOutcome::Success, Some(m)) => say!("{} {}", db.name, m.id),
            _ => {
                let e = failure(run);
                tell!("error: backup of database {} failed: {e:#}", db.name);
                failed.push(format!("{}: {e:#}", db.name));
            }
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::from(EXIT_OK));
    }
    tell!("{} of {} backups failed: {}", failed.len(), ctx.config.databases.len(), failed.join("; "));
    Ok(ExitCode::from(EXIT_JOB_FAILED))
}

/// A base backup of the cluster of `wal:`.
pub async fn base(ctx: &JobContext) -> Result<ExitCode> {
    let wal = crate::wal::settings(&ctx.config)?;
    let run =
        run_job(ctx, JobSpec::new(JobKind::BaseBackup, Subject::Cluster(wal.name.clone()), Trigger::Manual)).await;
    match (&run.outcome, run.backup()) {
        (RunOutcome::Success, Some(m)) => {
            say!("{}", m.id);
            if let Some(b) = m.base_backup() {
                tell!(
                    "{}: {} files, {} raw, {} stored; needs WAL {} to {} (timeline {}, system {})",
                    m.id,
                    b.files,
                    crate::units::bytes(m.raw_bytes()),
                    crate::units::bytes(m.stored_bytes()),
                    b.start_wal,
                    b.stop_wal,
                    b.timeline,
                    b.system_identifier
                );
                for t in &b.tablespaces {
                    tell!(
                        "  tablespace {} (OID {}, at {}): {} raw, {} stored",
                        t.name,
                        t.oid,
                        t.location,
                        crate::units::bytes(t.data.raw_bytes),
                        crate::units::bytes(t.data.stored_bytes)
                    );
                }
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        _ => Err(failure(run)),
    }
}

/// A file or configuration set; exit 1 when the backup is partial (its id is still printed).
pub async fn files(ctx: &JobContext, args: &FilesArgs) -> Result<ExitCode> {
    let (kind, subject) = set_subject(args);
    crate::jobs::file_backup::set_of(&ctx.config, &subject)?;
    let run = run_job(ctx, JobSpec::new(kind, subject, Trigger::Manual)).await;
    let Some(m) = run.backup() else { return Err(failure(run)) };
    let set = m.file_set();
    say!("{}", m.id);
    tell!(
        "{}: {} files, {} bytes, {} stored bytes, outcome {}",
        m.id,
        set.map_or(0, |f| f.file_count),
        m.raw_bytes(),
        m.data.stored_bytes,
        run.status().name()
    );
    for p in m.problems() {
        tell!("  {} {}: {}", if p.error { "ERROR  " } else { "WARNING" }, p.path, p.problem);
    }
    Ok(ExitCode::from(if matches!(run.outcome, RunOutcome::Success) { EXIT_OK } else { EXIT_JOB_FAILED }))
}

/// `pgbackd backup-sqlite`: prints the backup id.
pub async fn sqlite(ctx: &JobContext, args: &SqliteBackupArgs) -> Result<ExitCode> {
    let file = ctx.config.select_sqlite(args.name.as_deref())?;
    let mut spec = JobSpec::new(JobKind::SqliteBackup, Subject::Sqlite(file.name.clone()), Trigger::Manual);
    spec.params.full = args.full;
    let run = run_job(ctx, spec).await;
    let Some(m) = run.backup() else { return Err(failure(run)) };
    say!("{}", m.id);
    let tables = m.sqlite().map_or(0, |s| s.tables.len());
    tell!(
        "{}: {} backup of {} ({} tables, {} bytes, {} stored){}",
        m.id,
        m.kind.name(),
        file.path.display(),
        tables,
        m.data.raw_bytes,
        m.data.stored_bytes,
        m.depends_on.first().map(|b| format!(", a delta against {b}")).unwrap_or_default()
    );
    Ok(ExitCode::from(EXIT_OK))
}

/// The job and subject of `--name SET [--configs]`.
pub fn set_subject(args: &FilesArgs) -> (JobKind, Subject) {
    if args.configs {
        (JobKind::ConfigBackup, Subject::Configs(args.name.clone()))
    } else {
        (JobKind::FileBackup, Subject::Files(args.name.clone()))
    }
}
