//! A backup of a SQLite database file: a consistent snapshot taken with SQLite's online backup
//! API into a scratch file (in `$TMPDIR`), its tables counted and `PRAGMA quick_check`ed, then
//! streamed through the same segment -> zstd -> (age) -> SHA-256 -> storage pipeline as dumps
//! into every target, the manifest last. Every `full_every`th backup is a full; the others are
//! delta frames against the one before, as incremental dumps are (the same base policy,
//! `backup.max_chain` included). A failure removes what the attempt wrote.

use super::backup::{Choice, choose_base, within_timeout};
use super::context::JobContext;
use crate::config::SqliteConfig;
use crate::pipeline::{self, PipelineOptions, Unfiltered};
use crate::progress;
use crate::repo::manifest::{Content, Trigger};
use crate::repo::{BackupKind, Manifest, Subject, keys};
use crate::sqlite::Snapshot;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The scratch directories of snapshots in `$TMPDIR`: `pgbackd-sqlite-<random>/snapshot.db`.
const SCRATCH_PREFIX: &str = "pgbackd-sqlite-";

/// The configured file a subject names.
pub fn file_of<'c>(config: &'c crate::config::Config, subject: &Subject) -> Result<&'c SqliteConfig> {
    let Subject::Sqlite(name) = subject else { bail!("{} is not a SQLite database", subject.describe()) };
    config.sqlite.iter().find(|s| &s.name == name).with_context(|| {
        let names: Vec<&str> = config.sqlite.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no SQLite database {name:?} under sqlite: (configured: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        )
    })
}

/// Backs up the file `subject` names: a full when `full` or when the policy says so, else an
/// incremental.
pub async fn run(ctx: &JobContext, subject: &Subject, trigger: Trigger, full: bool) -> Result<Manifest> {
    let file = file_of(&ctx.config, subject)?;
    let repo = &ctx.repository;
    let now = ctx.now();
    let grace = ctx.config.retention.orphan_grace;
    repo.sweep_leftovers(subject, now, grace).await;
    // snapshots a killed run left in $TMPDIR
    for p in crate::sqlite::sweep(&std::env::temp_dir(), SCRATCH_PREFIX, grace) {
        tracing::info!(path = %p.display(), "removed the scratch snapshot of an interrupted backup");
    }
    let mut warnings = Vec::new();
    let since = repo.since_full(subject).await?;
    let (base, chain) = if full || since.is_empty() || since.len() >= file.full_every as usize {
        (None, Vec::new())
    } else {
        match choose_base(ctx, subject).await? {
            Choice::On(b, chain) => (Some(*b), chain),
            Choice::Full(p) => {
                warnings.extend(p.report());
                (None, Vec::new())
            }
        }
    };
    let kind = if base.is_some() { BackupKind::Incremental } else { BackupKind::Full };
    let base_lock = match &base {
        Some(b) => Some(ctx.read_lock(b, "incremental backup based on").await?),
        None => None,
    };
    let id = keys::new_backup_id(now, kind.name());
    tracing::info!(backup_id = %id, kind = kind.name(), base_id = base.as_ref().map(|b| b.id.as_str()), path = %file.path.display(), "SQLite backup started");
    let started = std::time::Instant::now();
    // the backup's own limit, backup.timeout, below the caller's cancellation
    let own = ctx.with_cancel(ctx.cancel.child_token());
    let attempt = take(&own, file, subject, trigger, &id, kind, base.as_ref(), &chain, warnings);
    let result = within_timeout(ctx.config.backup.timeout, &own.cancel, attempt).await;
    if let Some(l) = base_lock {
        l.release().await;
    }
    ctx.end_attempt(subject, &id, "SQLite backup", started, result).await
}

#[allow(clippy::too_many_arguments)]
async fn take(
    ctx: &JobContext,
    file: &SqliteConfig,
    subject: &Subject,
    trigger: Trigger,
    id: &str,
    kind: BackupKind,
    base: Option<&Manifest>,
    chain: &[Manifest],
    mut warnings: Vec<String>,
) -> Result<Manifest> {
    let (config, repo) = (&*ctx.config, &*ctx.repository);
    let now = ctx.now();
    // the snapshot: one read transaction of the live file, copied into a scratch file
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir()
        .context("creating a scratch directory for the snapshot (in $TMPDIR, which needs room for the database)")?;
    let snap_path = scratch.path().join("snapshot.db");
    let stop = Arc::new(AtomicBool::new(false));
    let taken = {
        let (source, into, flag, busy) = (file.path.clone(), snap_path.clone(), stop.clone(), file.busy_timeout);
        let work = tokio::task::spawn_blocking(move || crate::sqlite::snapshot(&source, &into, busy, &flag));
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = ctx.cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                let _ = work.await;
                bail!("the backup was cancelled while the snapshot was taken: nothing was stored");
            }
        }
    }
    .context("snapshot thread")?
    .with_context(|| format!("sqlite[{}].path {}", file.name, file.path.display()))?;
    if taken.waited > std::time::Duration::from_secs(1) {
        tracing::info!(waited_s = format!("{:.1}", taken.waited.as_secs_f64()), "the snapshot waited for writers");
    }
    let size = std::fs::metadata(&snap_path).context("the snapshot file")?.len();
    let expected = taken.inspected.page_size * taken.inspected.page_count;
    if size != expected {
        bail!(
            "the snapshot is {size} bytes, not its {} pages of {} bytes",
            taken.inspected.page_count,
            taken.inspected.page_size
        );
    }

    // streamed like a dump: a full compresses each segment, an incremental stores it as a delta
    // frame against the same bytes of its base (pages keep their place in the file)
    let delta = match base {
        Some(b) => Some(pipeline::Delta {
            base: repo.base_reader(b, chain, id, config.backup.incremental_slack).await?,
            base_blocks: Vec::new(),
            new_blocks: Arc::new(std::sync::Mutex::new(Vec::new())),
            slack: config.backup.incremental_slack,
            // a changed row is rewritten elsewhere in its page: find its old bytes, however short
            search: pipeline::delta::Search::Short,
        }),
        None => None,
    };
    let segment_size =
        if delta.is_some() { config.backup.incremental_segment_size } else { config.backup.segment_size } as usize;
    // always zstd frames: deltas are, and a database file compresses well
    let opts = PipelineOptions { segment_size, level: Some(config.compression.level), delta, ..ctx.stream_options() };
    let key = keys::sqlite_data(subject, id, opts.encrypt.is_some());
    let reader = std::fs::File::open(&snap_path).context("opening the snapshot")?;
    let tracker = progress::track(&format!("backup {subject}"), ctx.progress.clone(), ctx.interactive, Some(size));
    let mut segments = pipeline::read_segments(reader, opts.segment_size, ctx.progress.clone(), Unfiltered);
    let streamed = pipeline::store_stream_to(&mut segments, repo.targets_for(subject), &key, &opts, &ctx.cancel).await;
    drop(tracker);
    drop(segments);
    let staged = streamed.map_err(|e| anyhow!(e).context("storing the snapshot"))?;
    if staged.object.raw_bytes != size {
        let stored = staged.object.raw_bytes;
        staged.abort().await;
        bail!("{stored} bytes of the snapshot's {size} were stored: the scratch file changed while read");
    }
    let committed = staged.commit().await?;
    drop(scratch);
    warnings.extend(committed.warnings);
    let content = Content::Sqlite(Snapshot {
        host: crate::notify::hostname(),
        path: file.path.display().to_string(),
        sqlite_version: rusqlite::version().to_owned(),
        journal_mode: taken.journal_mode,
        page_size: taken.inspected.page_size,
        page_count: taken.inspected.page_count,
        user_version: taken.inspected.user_version,
        tables: taken.inspected.tables,
    });
    let mut m = Manifest::new(id.to_owned(), subject.clone(), kind, trigger, now, committed.object, content);
    m.depends_on = base.map(|b| b.id.clone()).into_iter().collect();
    m.finished_at = ctx.now().max(now);
    m.targets = committed.targets;
    m.warnings = warnings;
    if ctx.cancel.is_cancelled() {
        bail!("the backup was cancelled before its manifest was written: nothing was committed");
    }
    repo.commit(m).await
}
