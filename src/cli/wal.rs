//! `pgbackd archive-push` and `archive-get`: what PostgreSQL's archive_command and
//! restore_command call, one WAL file at a time; `wal-flush`: the streaming spool stored now.

use super::args::{ArchiveGetArgs, ArchivePrefetchArgs, ArchivePushArgs};
use super::{EXIT_JOB_FAILED, EXIT_OK};
use crate::jobs::JobContext;
use crate::wal::names::{SegmentName, WalFile};
use crate::wal::prefetch::Queue;
use anyhow::{Context, Result};
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
    let file = WalFile::parse(&args.file)
        .with_context(|| format!("{:?} is not a WAL file name; restore_command should pass %f %p", args.file))?;
    let system_identifier = crate::wal::system_of(&args.dest, args.system_id)?;
    let depth = ctx.config.wal.as_ref().map_or(0, |w| w.prefetch);
    let queue = Queue::beside(&args.dest, system_identifier);
    if let (WalFile::Segment(s), true) = (file, depth > 0)
        && queue.take(s, &args.dest)
    {
        tracing::debug!(file = %args.file, "WAL segment restored from the prefetch queue");
        prefetch_after(ctx, args, &queue, s, system_identifier, None);
        return Ok(ExitCode::from(EXIT_OK));
    }
    if let Some(segment_size) =
        crate::wal::get(&ctx.config, &ctx.repository, file, &args.dest, system_identifier).await?
    {
        tracing::debug!(file = %args.file, dest = %args.dest.display(), "WAL file restored");
        if let (WalFile::Segment(s), true) = (file, depth > 0) {
            prefetch_after(ctx, args, &queue, s, system_identifier, segment_size);
        }
        return Ok(ExitCode::from(EXIT_OK));
    }
    // PostgreSQL asks for files past the end of the archive on purpose: a plain "not there"
    tell!("{}: not in the WAL archive on {}", args.file, ctx.repository.describe());
    Ok(ExitCode::from(EXIT_JOB_FAILED))
}

/// Tells the prefetcher recovery asked for `segment`, and starts one if none runs (a failure
/// only costs speed: it is logged, and archive-get fetches each segment itself).
fn prefetch_after(
    ctx: &JobContext,
    args: &ArchiveGetArgs,
    queue: &Queue,
    segment: SegmentName,
    system_identifier: u64,
    segment_size: Option<u64>,
) {
    let started = (|| -> Result<()> {
        queue.want(segment)?;
        let (Some(config), Some(size)) = (&ctx.config.path, segment_size) else { return Ok(()) };
        let config = std::fs::canonicalize(config)?;
        let mut argv: Vec<std::ffi::OsString> = vec!["-c".into(), config.into(), "archive-prefetch".into()];
        argv.extend(["--system-id".into(), system_identifier.to_string().into()]);
        argv.extend(["--queue".into(), queue.dir.clone().into_os_string()]);
        argv.extend(["--segment-size".into(), size.to_string().into()]);
        if let Some(id) = &args.keys.identity {
            argv.extend(["--identity".into(), std::fs::canonicalize(id)?.into_os_string()]);
        }
        crate::wal::prefetch::ensure_prefetcher(queue, &argv)
    })();
    if let Err(e) = started {
        tracing::warn!(error = %format!("{e:#}"), "WAL prefetch not started; each segment is fetched when asked");
    }
}

/// The prefetcher `archive-get` starts (a hidden command).
pub async fn prefetch(ctx: &JobContext, args: &ArchivePrefetchArgs) -> Result<ExitCode> {
    let archive = crate::wal::open(&ctx.config, &ctx.repository, args.system_id)?;
    let depth = ctx.config.wal.as_ref().map_or(0, |w| w.prefetch) as usize;
    let queue = Queue { dir: args.queue.clone() };
    crate::wal::prefetch::run(&archive, &queue, depth, args.segment_size, crate::wal::prefetch::IDLE).await?;
    Ok(ExitCode::from(EXIT_OK))
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
