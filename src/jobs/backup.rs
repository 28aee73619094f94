//! A logical backup of one database: `pg_dump --format=custom --compress=0` streamed through the
//! pipeline into every storage target, `pg_dumpall --globals-only` beside it, the manifest
//! written last. Any failure removes everything the attempt wrote. An incremental stores each
//! segment as a delta against a base the policy of [`choose_base`] picks (by default the newest
//! backup, up to `backup.max_chain` links after a full).

use super::context::JobContext;
use crate::config::{Config, Connection, DatabaseConfig, IncrementalBase, RowCounts};
use crate::pg::archive::{ArchiveError, ArchiveFilter, ArchiveSummary};
use crate::pg::{self, Tools};
use crate::pipeline::{self, PipelineOptions, StreamError};
use crate::process::{ChildSpec, ProcessError, Running, run_capture};
use crate::progress;
use crate::repo::manifest::{CheckOutcome, Content, Dump, Source, Trigger};
use crate::repo::{BackupKind, Manifest, Subject, keys};
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a child gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

pub struct Request<'a> {
    /// What to dump (a configured database, or a restore target before `--clean`).
    pub database: &'a DatabaseConfig,
    pub kind: BackupKind,
    pub trigger: Trigger,
    /// Accept a dump much smaller than the previous full (after a legitimate cleanup).
    pub allow_shrink: bool,
}

/// With `wal.restore_point_before_backup`, a restore point `before-<id>` on the cluster the
/// database is in (the same server as `wal.server`), so a point-in-time recovery can stop just
/// before the dump began. A failure is a warning: the dump does not depend on it.
async fn restore_point_before(ctx: &JobContext, db: &crate::config::DatabaseConfig, id: &str) {
    let Some(wal) = ctx.config.wal.as_ref().filter(|w| w.restore_point_before_backup) else { return };
    if (wal.server.host.as_str(), wal.server.port) != (db.connection.host.as_str(), db.connection.port) {
        return;
    }
    let name = format!("before-{id}");
    match crate::wal::restore_point::create(&ctx.config, &ctx.repository, &name, ctx.now(), &ctx.cancel).await {
        Ok(p) => tracing::info!(restore_point = %p.name, lsn = %p.lsn.0, "restore point created before the backup"),
        Err(e) => {
            tracing::warn!(restore_point = %name, error = %format!("{e:#}"), "no restore point before the backup")
        }
    }
}

/// Takes a backup; returns its manifest.
pub async fn run(ctx: &JobContext, req: &Request<'_>) -> Result<Manifest> {
    let repo = &ctx.repository;
    let db = req.database;
    let subject = Subject::Database(db.name.clone());
    let started = Instant::now();
    let now = ctx.now();
    repo.sweep_leftovers(&subject, now, ctx.config.retention.orphan_grace).await;
    // an incremental is a delta against a base the policy picks; without a good one, a full
    let (base, chain, instead_warning) = match req.kind {
        BackupKind::Incremental => match choose_base(ctx, &subject).await? {
            Choice::On(b, chain) => (Some(*b), chain, None),
            Choice::Full(p) => (None, Vec::new(), p.report()),
        },
        BackupKind::Full => (None, Vec::new(), None),
    };
    let kind = if base.is_some() { BackupKind::Incremental } else { BackupKind::Full };
    // the base is read while this backup runs: retention keeps it meanwhile
    let base_lock = match &base {
        Some(b) => Some(ctx.read_lock(b, "incremental backup based on").await?),
        None => None,
    };
    let id = keys::new_backup_id(now, kind.name());
    tracing::info!(backup_id = %id, kind = kind.name(), base_id = base.as_ref().map(|b| b.id.as_str()), "backup started");

    restore_point_before(ctx, db, &id).await;
    let attempt = Attempt { ctx, req, subject: &subject, kind, base: base.as_ref(), chain: &chain, id: &id, now };
    let result = take(&attempt, instead_warning).await;
    if let Some(l) = base_lock {
        l.release().await;
    }
    ctx.end_attempt(&subject, &id, "backup", started, result).await
}

/// One backup attempt: what it is and where it goes.
struct Attempt<'a> {
    ctx: &'a JobContext,
    req: &'a Request<'a>,
    subject: &'a Subject,
    kind: BackupKind,
    base: Option<&'a Manifest>,
    /// The base's own chain, nearest first (empty when the base is a full).
    chain: &'a [Manifest],
    id: &'a str,
    now: chrono::DateTime<chrono::Utc>,
}

async fn take(a: &Attempt<'_>, instead_warning: Option<String>) -> Result<Manifest> {
    let (ctx, req) = (a.ctx, a.req);
    let (config, repo) = (&*ctx.config, &*ctx.repository);
    let db = req.database;
    let conn = &db.connection;
    let client = pg::connect(conn).await?;
    let server = pg::server_info(&client).await?;
    let tools = Tools::matching(config.pg_bin_dir.as_deref(), server.major());
    let (dump_major, dump_version) = tools.version("pg_dump").await?;
    let properties = match pg::database::DatabaseProperties::read(&client, server.version_num).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the database's properties cannot be read; a restore with --create will use the server's defaults");
            None
        }
    };
    drop(client);
    pg::check_dump_version(dump_major, &dump_version, &server, &tools)?;
    let previous_full = match a.base {
        Some(b) if b.kind == BackupKind::Full => Some(b.clone()),
        _ => repo.latest(a.subject, Some(BackupKind::Full)).await?,
    };
    let previous_same = match a.kind {
        BackupKind::Full => previous_full.clone(),
        BackupKind::Incremental => repo.latest(a.subject, Some(BackupKind::Incremental)).await?,
    };
    let space_warnings = check_disk_space(config, previous_same.as_ref())?;

    // the backup's own limit, backup.timeout, below the caller's cancellation
    let cancel = ctx.cancel.child_token();
    // for the progress bar's percentage and ETA: the dump is about as large as the last one
    let expected = previous_full.as_ref().map(Manifest::raw_bytes).unwrap_or(server.database_size);
    let (committed, archive, dump_stderr) =
        within_timeout(config.backup.timeout, &cancel, dump(a, &tools, &cancel, expected)).await?;
    let pipeline::Committed { object: data, targets: mut holding, mut warnings } = committed;
    warnings.extend(space_warnings);
    check_size(data.raw_bytes, config, previous_full.as_ref(), req.allow_shrink)?;

    if !dump_stderr.trim().is_empty() {
        tracing::warn!(stderr = %dump_stderr.trim(), "pg_dump wrote warnings");
        warnings.push(format!("pg_dump: {}", dump_stderr.trim()));
    }
    let globals = if config.backup.globals {
        match dump_globals(&tools, conn, &ctx.cancel).await {
            Ok((sql, warning)) => {
                warnings.extend(warning);
                let level = config.compression.enabled.then_some(config.compression.level);
                let key = keys::globals(a.subject, a.id, repo.encrypts_with().is_some());
                Some(
                    pipeline::store_small_object(
                        repo.targets_for(a.subject),
                        &mut holding,
                        &key,
                        &sql,
                        level,
                        repo.encrypts_with().map(|c| c.as_ref()),
                        &mut warnings,
                    )
                    .await?,
                )
            }
            // a cancelled backup is a failed backup, at every step
            Err(e) if ctx.cancel.is_cancelled() => {
                return Err(e.context("the backup was cancelled while pg_dumpall --globals-only ran"));
            }
            Err(e) => {
                let w = format!("roles and tablespaces (pg_dumpall --globals-only) were not saved: {e:#}");
                tracing::warn!(warning = %w, "globals not saved");
                warnings.push(w);
                None
            }
        }
    } else {
        None
    };

    let archive = archive.context("the dump stream ended without an archive summary")?;
    if !archive.understood {
        warnings.push(format!(
            "pg_dump wrote archive version {}, newer than this pgbackd knows: the archive is stored as written, \
             without row counts (upgrade pgbackd)",
            archive.archive_version
        ));
    }
    if let Some(why) = instead_warning {
        warnings.push(why);
    }
    let tables = match config.backup.row_counts {
        RowCounts::Exact => archive.tables,
        RowCounts::Off => Vec::new(),
    };
    let content = Content::Dump(Dump {
        source: Source {
            host: conn.host.clone(),
            port: conn.port,
            user: conn.user.clone(),
            dbname: conn.dbname.clone(),
        },
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        pg_dump_version: dump_version,
        archive_version: archive.archive_version,
        database_size: server.database_size,
        globals,
        row_counts: config.backup.row_counts,
        tables,
        large_objects: archive.large_objects,
        blocks: archive.blocks,
        relations: archive.relations,
        schemas: archive.schemas,
        database: properties,
    });
    let mut manifest = Manifest::new(a.id.to_owned(), a.subject.clone(), a.kind, req.trigger, a.now, data, content);
    manifest.depends_on = a.base.map(|b| b.id.clone()).into_iter().collect();
    manifest.finished_at = ctx.now().max(a.now);
    manifest.targets = holding;
    manifest.warnings = warnings;
    if ctx.cancel.is_cancelled() {
        bail!("the backup was cancelled before its manifest was written: nothing was committed");
    }
    repo.commit(manifest).await
}

/// Runs `work`, which stops when `cancel` is cancelled, within `backup.timeout` (`limit`): past
/// it, `cancel` is cancelled and what `work` then returns is the result (its error with the
/// timeout as context; a backup committed right at the limit is a backup all the same).
pub(super) async fn within_timeout<T>(
    limit: Duration,
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = tokio::time::sleep(limit) => {
            cancel.cancel();
            work.await.map_err(|e| {
                e.context(format!(
                    "the backup exceeded backup.timeout ({}) and was cancelled",
                    crate::units::duration(limit)
                ))
            })
        }
    }
}

/// What an incremental request is a delta against (with that base's chain, nearest first), or
/// why it is a full backup instead.
pub(super) enum Choice {
    On(Box<Manifest>, Vec<Manifest>),
    Full(Promotion),
}

pub(super) struct Promotion {
    why: String,
    /// Something is wrong (no full yet, a base that cannot be read here or failed its check),
    /// not the planned end of a chain.
    warning: bool,
}

impl Promotion {
    /// Logs why the backup is a full; the warning the backup records, if it is one.
    pub(super) fn report(self) -> Option<String> {
        if self.warning {
            tracing::warn!(warning = %self.why, "taking a full backup instead of an incremental");
            Some(self.why)
        } else {
            tracing::info!(reason = %self.why, "taking a full backup instead of an incremental");
            None
        }
    }
}

/// The base policy. `backup.incremental_base: previous` (the default) bases an incremental on
/// the newest backup, full or incremental, so each stores one period's change, and a restore
/// decodes the chain back to its full; `full` bases every incremental on the newest full (a
/// differential: one delta to decode, but the change since the full grows in each). Either way
/// at most `backup.max_chain` incrementals follow a full: the next request takes a full, as
/// does one whose base, or any backup under it, cannot be read here or failed its last
/// verification on every target.
pub(super) async fn choose_base(ctx: &JobContext, subject: &Subject) -> Result<Choice> {
    let repo = &ctx.repository;
    let settings = &ctx.config.backup;
    let warn = |why: String| Ok(Choice::Full(Promotion { why, warning: true }));
    let since = repo.since_full(subject).await?;
    let Some(full) = since.last() else {
        return warn(
            "an incremental backup was asked for, but there was no full backup to base it on: this is a full backup"
                .into(),
        );
    };
    let candidate = match settings.incremental_base {
        IncrementalBase::Previous => &since[0],
        IncrementalBase::Full => full,
    };
    let chain = match repo.chain(candidate).await {
        Ok(c) => c,
        Err(e) => return warn(format!("the newest backup cannot be an incremental's base: {e:#}")),
    };
    let (links, counted) = match settings.incremental_base {
        IncrementalBase::Previous => (chain.len() + 1, "the chain of incrementals on"),
        IncrementalBase::Full => (since.len(), "the incrementals since"),
    };
    if links > settings.max_chain as usize {
        return Ok(Choice::Full(Promotion {
            why: format!(
                "{counted} full backup {} would be {links} long, more than backup.max_chain ({}): a full backup \
                 starts the next chain",
                full.id, settings.max_chain
            ),
            warning: false,
        }));
    }
    for b in std::iter::once(candidate).chain(&chain) {
        // an encrypted base must be readable here (a recipients-only daemon cannot decrypt it)
        if let Err(e) = repo.authenticate(b) {
            return warn(format!(
                "{} cannot be read here to base an incremental on ({e:#}): this is a full backup; to take \
                 incrementals of encrypted backups the daemon needs encryption.identity_file or key_file",
                b.describe()
            ));
        }
        let checked = repo.annotations(b).await.verification;
        if let Some(v) = checked.filter(|v| v.targets.iter().all(|t| t.outcome == CheckOutcome::Failed)) {
            let error = v.targets.iter().find_map(|t| t.error.clone()).unwrap_or_default();
            return warn(format!(
                "{} failed its last verification ({}): an incremental on it could not be restored, so this is \
                 a full backup ({error})",
                b.describe(),
                v.verified_at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
    }
    Ok(Choice::On(Box::new(candidate.clone()), chain))
}

/// The disk guard: before a backup to a local target, the space it needs is estimated from the
/// previous backup of the same kind (plus `monitoring.min_free_space`). Too little free space on
/// a required target fails the backup at once, instead of filling the disk; less than
/// `warn_free_percent` left afterwards is a warning. Returns the warnings.
fn check_disk_space(config: &Config, previous: Option<&Manifest>) -> Result<Vec<String>> {
    let estimate = previous.map_or(0, Manifest::stored_bytes);
    let mut warnings = Vec::new();
    for t in &config.targets {
        let crate::config::storage::TargetKind::Local { path } = &t.kind else { continue };
        let Some((free, total)) = crate::storage::local::free_space(path) else { continue };
        match disk_verdict(free, total, estimate, &config.monitoring) {
            Ok(None) => {}
            Ok(Some(w)) => {
                let w = format!("local target {} ({}): {w}", t.name, path.display());
                tracing::warn!(warning = %w, "low disk space");
                warnings.push(w);
            }
            Err(e) if t.required => bail!(
                "local target {} ({}): {e}; free space there, lower the retention, or move local_backup_dir",
                t.name,
                path.display()
            ),
            Err(e) => {
                let w = format!("optional local target {} ({}): {e}; it will likely fail", t.name, path.display());
                tracing::warn!(warning = %w, "low disk space");
                warnings.push(w);
            }
        }
    }
    Ok(warnings)
}

/// `Err`: not enough space for the estimate; `Ok(Some)`: enough, but little left afterwards.
fn disk_verdict(
    free: u64,
    total: u64,
    estimate: u64,
    m: &crate::config::notify::MonitoringConfig,
) -> std::result::Result<Option<String>, String> {
    let mib = crate::units::bytes;
    let need = estimate + m.min_free_space;
    if free < need {
        return Err(format!(
            "only {} free, and this backup needs about {} (the previous one's size, {}, plus monitoring.min_free_space)",
            mib(free),
            mib(need),
            mib(estimate)
        ));
    }
    let left = (free - estimate) as f64 / total.max(1) as f64 * 100.0;
    Ok((left < m.warn_free_percent).then(|| {
        format!(
            "about {left:.1}% of the filesystem will be free after this backup (below monitoring.warn_free_percent, {}%)",
            m.warn_free_percent
        )
    }))
}

/// Runs pg_dump into the pipeline; commits the data object only if pg_dump succeeded.
async fn dump(
    a: &Attempt<'_>,
    tools: &Tools,
    cancel: &CancellationToken,
    expected: u64,
) -> Result<(pipeline::Committed, Option<ArchiveSummary>, String)> {
    let (config, repo) = (&*a.ctx.config, &*a.ctx.repository);
    let db = a.req.database;
    let spec = pg::conn_env(
        ChildSpec::new(tools.path("pg_dump"))
            .args(["--format=custom", "--compress=0", "--no-password"])
            .arg(pg::dbname_arg(&db.connection.dbname)),
        &db.connection,
    );
    let mut child = Running::spawn(&spec)?;
    tracing::debug!(pid = child.pid(), command = child.command(), "pg_dump started");
    let stdout = child.take_stdout().context("pg_dump has no stdout")?;
    let stdout = std::fs::File::from(stdout.into_owned_fd().context("taking pg_dump's stdout")?);
    crate::process::set_blocking(&stdout);
    let new_blocks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let delta = match a.base {
        Some(b) => Some(pipeline::Delta {
            base: repo.base_reader(b, a.chain, a.id, config.backup.incremental_slack).await?,
            base_blocks: b.dump().map(|d| d.blocks.clone()).unwrap_or_default(),
            new_blocks: new_blocks.clone(),
            slack: config.backup.incremental_slack,
            search: pipeline::delta::Search::Long,
        }),
        None => None,
    };
    // deltas are zstd frames whatever compression.enabled says
    let level = (config.compression.enabled || delta.is_some()).then_some(config.compression.level);
    let segment_size =
        if delta.is_some() { config.backup.incremental_segment_size } else { config.backup.segment_size } as usize;
    let opts = PipelineOptions { segment_size, level, delta, ..a.ctx.stream_options() };
    let key = keys::dump_data(a.subject, a.id, level.is_some(), opts.encrypt.is_some());
    let moved = a.ctx.progress.clone();
    let tracker = progress::track(&format!("backup {}", db.name), moved.clone(), a.ctx.interactive, Some(expected));
    let filter = ArchiveFilter::new().with_shared_blocks(new_blocks);
    let mut segments = pipeline::read_segments(stdout, opts.segment_size, moved.clone(), filter);
    let streamed = pipeline::store_stream_to(&mut segments, repo.targets_for(a.subject), &key, &opts, cancel).await;
    let archive = segments.summary();
    drop(tracker);
    drop(segments);
    let staged = match streamed {
        Ok(s) => s,
        Err(StreamError::Filter(e)) => {
            // the archive filter's errors are ArchiveErrors
            let a = match e.downcast::<ArchiveError>() {
                Ok(a) => *a,
                Err(other) => return Err(anyhow!("reading pg_dump's output: {other}")),
            };
            // The stream ended but is not a whole archive: pg_dump usually died. Its own exit
            // status and stderr say why; the archive error is the fallback.
            return Err(match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(Err(e)) => pg::explain_tool_failure(e, &db.connection)
                    .context(format!("pg_dump failed and its output is incomplete ({a})")),
                Ok(Ok(_)) if a == ArchiveError::Empty => {
                    anyhow!("pg_dump exited successfully but wrote nothing: refusing to record an empty backup")
                }
                Ok(Ok(_)) => anyhow!("pg_dump exited successfully but its output is not a complete archive: {a}"),
                Err(_) => anyhow!("pg_dump's output is not a complete archive ({a}) and pg_dump did not exit"),
            });
        }
        Err(e) => return Err(stream_stopped(child, e, "pg_dump").await),
    };
    let stderr = match child.wait().await {
        Ok(stderr) => stderr,
        Err(e) => {
            staged.abort().await;
            return Err(pg::explain_tool_failure(e, &db.connection));
        }
    };
    if staged.object.raw_bytes == 0 {
        staged.abort().await;
        bail!("pg_dump exited successfully but wrote nothing: refusing to record an empty backup");
    }
    let object = staged.commit().await?;
    Ok((object, archive, stderr))
}

/// Why a child's stream stopped before its end (cancelled, stalled, storage failed), with the
/// child stopped: for every backup a child process feeds.
pub(super) async fn stream_stopped(child: Running, e: StreamError, tool: &str) -> anyhow::Error {
    let tail = child.stderr_tail();
    let command = child.command().to_owned();
    let _ = child.terminate(KILL_GRACE).await;
    match e {
        StreamError::Cancelled => anyhow!(ProcessError::Cancelled { command }),
        StreamError::Stalled(d) => anyhow!(
            "{tool} produced no data for {} (backup.stall_timeout) and was stopped{}",
            crate::units::duration(d),
            if tail.trim().is_empty() {
                String::new()
            } else {
                format!("; its stderr ends with:\n{}", tail.trim_end())
            }
        ),
        other => anyhow!(other).context(format!("storing {tool}'s output")),
    }
}

/// The size rules: a dump below `min_size`, or far below the previous full, is a failed backup.
fn check_size(raw: u64, config: &Config, previous_full: Option<&Manifest>, allow_shrink: bool) -> Result<()> {
    if raw < config.backup.min_size {
        bail!(
            "pg_dump wrote only {raw} bytes, less than backup.min_size ({} bytes): refusing to record it as a backup",
            config.backup.min_size
        );
    }
    let ratio = config.backup.min_size_ratio;
    if let Some(prev) = previous_full
        && !allow_shrink
        && ratio > 0.0
        && (raw as f64) < ratio * prev.data.raw_bytes as f64
    {
        bail!(
            "this dump is {raw} bytes, less than {:.0}% of the previous full backup {} ({} bytes): \
                 if the database really shrank, run `pgbackd backup --kind full --allow-shrink` once \
                 (or lower backup.min_size_ratio)",
            ratio * 100.0,
            prev.id,
            prev.data.raw_bytes
        );
    }
    Ok(())
}

/// `pg_dumpall --globals-only`, falling back to `--no-role-passwords` for non-superusers.
async fn dump_globals(
    tools: &Tools,
    conn: &Connection,
    cancel: &CancellationToken,
) -> Result<(Vec<u8>, Option<String>)> {
    const MAX: usize = 256 << 20;
    let base = |extra: &[&str]| {
        pg::conn_env(
            ChildSpec::new(tools.path("pg_dumpall"))
                .args(["--globals-only", "--no-password"])
                .args(extra.iter().copied()),
            conn,
        )
    };
    let run = |spec: ChildSpec| async move {
        tokio::select! {
            r = run_capture(&spec, MAX) => r,
            _ = cancel.cancelled() => Err(ProcessError::Cancelled { command: spec.display() }),
        }
    };
    match run(base(&[])).await {
        Ok(sql) => Ok((sql, None)),
        Err(ProcessError::Failed { stderr_tail, .. }) if stderr_tail.contains("permission denied") => {
            let sql =
                run(base(&["--no-role-passwords"])).await.context("pg_dumpall --globals-only --no-role-passwords")?;
            Ok((
                sql,
                Some(format!(
                    "user {} may not read role passwords: roles were saved without passwords (--no-role-passwords)",
                    conn.user
                )),
            ))
        }
        Err(e) => Err(pg::explain_tool_failure(e, conn)),
    }
}

#[cfg(test)]
mod tests {
    use super::disk_verdict;
    use crate::config::notify::MonitoringConfig;

    #[test]
    fn the_disk_guard_fails_early_and_warns_when_little_is_left() {
        const MIB: u64 = 1024 * 1024;
        let m = MonitoringConfig { min_free_space: 64 * MIB, warn_free_percent: 10.0, ..Default::default() };
        // plenty of room
        assert_eq!(disk_verdict(500 * MIB, 1000 * MIB, 100 * MIB, &m), Ok(None));
        // room, but 7 % left afterwards
        let w = disk_verdict(250 * MIB, 1000 * MIB, 180 * MIB, &m).unwrap().unwrap();
        assert!(w.contains("7.0%") && w.contains("warn_free_percent"), "{w}");
        // the previous backup plus the margin does not fit
        let e = disk_verdict(250 * MIB, 1000 * MIB, 190 * MIB, &m).unwrap_err();
        assert!(e.contains("only 250.0 MiB free") && e.contains("254.0 MiB"), "{e}");
        // no previous backup: only the margin counts
        assert!(disk_verdict(32 * MIB, 1000 * MIB, 0, &m).is_err());
    }
}
