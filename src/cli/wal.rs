//! `pgbackd archive-push` and `archive-get`: what PostgreSQL's archive_command and
//! restore_command call, one WAL file at a time; `wal-flush`: the streaming spool stored now.

use super::args::{ArchiveGetArgs, ArchivePushArgs};
use super::{EXIT_JOB_FAILED, EXIT_OK};
use crate::jobs::JobContext;
use anyhow::Result;
use std::process::ExitCode;

pub async fn push(ctx: &JobContext, args: &ArchivePushArgs) -> Result<ExitCode> {
    let (file, pushed) = crate::wal::push(
        &ctx.config,
        &ctx.repository,
        &args.path,
        crate::wal::SystemOf::DataDirectory(args.pgdata.as_deref()),
    )
    .await?;
    for w in &pushed.warnings {
        tell!("warning: {w}");
    }
    if pushed.written.is_empty() {
        tracing::info!(file = %file, targets = ?pushed.already, "WAL file already archived with the same contents");
    } else {
        tracing::debug!(
            file = %file, raw = pushed.raw_bytes, stored = pushed.stored_bytes, written = ?pushed.written,
            "WAL file archived"
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

pub async fn get(ctx: &JobContext, args: &ArchiveGetArgs) -> Result<ExitCode> {
    if crate::wal::get(&ctx.config, &ctx.repository, &args.file, &args.dest, args.system_id).await? {
        tracing::debug!(file = %args.file, dest = %args.dest.display(), "WAL file restored");
        return Ok(ExitCode::from(EXIT_OK));
    }
    // PostgreSQL asks for files past the end of the archive on purpose: a plain "not there"
    tell!("{}: not in the WAL archive on {}", args.file, ctx.repository.describe());
    Ok(ExitCode::from(EXIT_JOB_FAILED))
}

pub async fn flush(ctx: &JobContext) -> Result<ExitCode> {
    let pass = crate::wal::receiver::flush(&ctx.config, &ctx.repository).await?;
    for w in &pass.warnings {
        tell!("warning: {w}");
    }
    for name in &pass.stored {
        say!("stored {name}");
    }
    for name in &pass.already {
        say!("already stored {name}");
    }
    if pass.stored.is_empty() && pass.already.is_empty() {
        say!("the spool {} holds nothing to store", crate::wal::settings(&ctx.config)?.spool_dir.display());
    }
    if let Some(e) = &pass.error {
        tell!("error: {e}: it stays in the spool; the daemon's receiver retries it");
        return Ok(ExitCode::from(EXIT_JOB_FAILED));
    }
    Ok(ExitCode::from(EXIT_OK))
}
