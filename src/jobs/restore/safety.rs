//! The safety backup a `--clean` restore takes of its target before dropping anything: an
//! ordinary full backup with trigger `safety_before_restore`, with its own report, kept by
//! `retention.safety_backup` and never anybody's `--latest`.

use crate::config::{Connection, DatabaseConfig};
use crate::jobs::backup;
use crate::jobs::context::JobContext;
use crate::jobs::{JobKind, JobRun, JobSpec, Produced, RunOutcome, report};
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Subject};
use anyhow::{Context, Result};

/// Backs up database `name` on `server`; returns the backup's id.
pub(super) async fn take(ctx: &JobContext, name: &str, server: &Connection) -> Result<String> {
    let config = &*ctx.config;
    let safety_db = DatabaseConfig { name: name.to_owned(), connection: server.clone() };
    let breq = backup::Request {
        database: &safety_db,
        kind: BackupKind::Full,
        trigger: Trigger::SafetyBeforeRestore,
        allow_shrink: true,
    };
    let begun = ctx.now();
    let taken = backup::run(ctx, &breq).await;
    // the safety backup's own report, in reports/backup/ beside the others
    let spec = JobSpec::new(JobKind::FullBackup, Subject::Database(name.to_owned()), Trigger::SafetyBeforeRestore);
    let run = JobRun {
        span: tracing::Span::current(),
        started_at: begun,
        finished_at: ctx.now(),
        outcome: match &taken {
            Ok(_) => RunOutcome::Success,
            Err(e) => RunOutcome::Failed(anyhow::anyhow!("{e:#}")),
        },
        produced: match &taken {
            Ok(m) => Produced::Backup(Box::new(m.clone())),
            Err(_) => Produced::Nothing,
        },
        spec,
    };
    if let Err(e) = report::write(&config.reports.dir, &run.spec.subject, &report::Report::from(&run)) {
        tracing::warn!(error = %format!("{e:#}"), "could not write the safety backup's report");
    }
    let safety = taken.context("the safety backup of the restore target failed, so nothing was restored")?;
    tracing::info!(safety_backup_id = %safety.id, "safety backup of the target taken");
    Ok(safety.id)
}
