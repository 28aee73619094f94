//! A physical base backup of the cluster whose WAL is archived: `pg_basebackup -D - -Ft -X none
//! --checkpoint=fast --manifest-checksums=SHA256` streamed through the pipeline into every
//! target, PostgreSQL's `backup_manifest` stored beside it, the manifest written last once the
//! WAL the backup needs is in the archive. Any failure removes everything the attempt wrote.

use super::backup::KILL_GRACE;
use super::context::JobContext;
use crate::config::WalSettings;
use crate::pg::basebackup::{Label, LsnText, PgManifest, TarError, TarFilter, TarSummary};
use crate::pg::{self, Tools};
use crate::pipeline::growing::GrowingFile;
use crate::pipeline::{self, StreamError};
use crate::process::{ChildSpec, ProcessError, Running};
use crate::progress;
use crate::repo::manifest::{BaseBackup, Content, Source, TablespaceArchive, Trigger};
use crate::repo::{BackupKind, Manifest, Subject, keys};
use crate::wal::names::SegmentName;
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the server says before the backup starts.
struct ServerFacts {
    version_num: u32,
    version: String,
    wal_segment_size: u64,
    /// User tablespaces (OID, name, location): with any, pg_basebackup writes a tar per tablespace.
    tablespaces: Vec<(u32, String, String)>,
    archive_mode: String,
}

/// Takes a base backup of the configured cluster; returns its manifest.
pub async fn run(ctx: &JobContext, cluster: &str, trigger: Trigger) -> Result<Manifest> {
    let config = &*ctx.config;
    let wal = crate::wal::settings(config)?;
    anyhow::ensure!(
        wal.name == cluster,
        "cluster {cluster:?} is not the one this config archives (wal.name is {:?})",
        wal.name
    );
    let repo = &ctx.repository;
    let subject = Subject::Cluster(cluster.to_owned());
    let now = ctx.now();
    repo.sweep_leftovers(&subject, now, config.retention.orphan_grace).await;
    let id = keys::new_backup_id(now, "base");
    tracing::info!(backup_id = %id, "base backup started");
    let started = Instant::now();
    let result = take(ctx, wal, &subject, &id, trigger, now).await;
    ctx.end_attempt(&subject, &id, "base backup", started, result).await
}

async fn server_facts(wal: &WalSettings) -> Result<ServerFacts> {
    let client = pg::connect(&wal.server).await?;
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('server_version'), \
             pg_size_bytes(current_setting('wal_segment_size')), current_setting('archive_mode')",
            &[],
        )
        .await
        .context("querying the server's version and WAL settings")?;
    let tablespaces = client
        .query(
            "select oid::oid, spcname::text, pg_tablespace_location(oid) from pg_tablespace \
             where spcname not in ('pg_default', 'pg_global') order by 1",
            &[],
        )
        .await
        .context("listing the server's tablespaces")?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let num: i32 = row.get(0);
    let seg: i64 = row.get(2);
    Ok(ServerFacts {
        version_num: num as u32,
        version: row.get(1),
        wal_segment_size: seg as u64,
        tablespaces,
        archive_mode: row.get(3),
    })
}

async fn take(
    ctx: &JobContext,
    wal: &WalSettings,
    subject: &Subject,
    id: &str,
    trigger: Trigger,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Manifest> {
    let (config, repo) = (&*ctx.config, &*ctx.repository);
    let conn = &wal.server;
    let server = server_facts(wal).await?;
    let server_major = server.version_num / 10000;
    let tools = Tools::matching(config.pg_bin_dir.as_deref(), server_major);
    let (tool_major, tool_version) = tools.version("pg_basebackup").await?;
    if tool_major < server_major {
        bail!(
            "pg_basebackup {tool_version} cannot back up PostgreSQL {} (server {}): install postgresql-client-{} or \
             set pg_bin_dir to the bin directory of a pg_basebackup of version {} or newer",
            server_major,
            server.version,
            server_major,
            server_major
        );
    }
    if server_major < 13 {
        bail!("PostgreSQL {} writes no backup manifest: base backups need PostgreSQL 13 or newer", server.version);
    }
    if wal.method == crate::config::WalMethod::ArchiveCommand && server.archive_mode == "off" {
        bail!(
            "archive_mode is off on the server, so no WAL reaches the archive and a base backup could never be \
             restored: set archive_mode = on and archive_command = 'pgbackd -c CONFIG archive-push %p' (then \
             restart PostgreSQL), or use wal.method: stream"
        );
    }

    let streamed = if server.tablespaces.is_empty() {
        stream(ctx, &tools, wal, subject, id).await?
    } else {
        stream_tablespaces(ctx, &tools, wal, subject, id).await?
    };
    let Streamed { base, summary, tablespaces: tablespace_tars, manifest_beside, stderr } = streamed;
    let pipeline::Committed { object: data, targets: mut holding, mut warnings } = base;
    let mut tablespaces = Vec::new();
    for (oid, stored) in tablespace_tars {
        // the backup is on a target only if every one of its tars is
        holding.retain(|t| stored.targets.contains(t));
        warnings.extend(stored.warnings);
        let known = server.tablespaces.iter().find(|(o, _, _)| *o == oid);
        let mapped = summary.tablespace_map.as_deref().and_then(|m| tablespace_location(m, oid));
        let location = match (mapped, known) {
            (Some(l), _) => l,
            (None, Some((_, _, l))) => l.clone(),
            (None, None) => {
                bail!("pg_basebackup wrote a tar of tablespace {oid}, which its tablespace_map does not list")
            }
        };
        let name = known.map(|(_, n, _)| n.clone()).unwrap_or_else(|| format!("tablespace {oid}"));
        tablespaces.push(TablespaceArchive { oid, name, location, data: stored.object });
    }
    if let Some(map) = summary.tablespace_map.as_deref() {
        let map = String::from_utf8_lossy(map);
        for line in map.lines().filter(|l| !l.is_empty()) {
            let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
            anyhow::ensure!(
                oid.is_some_and(|oid| tablespaces.iter().any(|t| t.oid == oid)),
                "the base backup's tablespace_map lists {line:?}, but pg_basebackup wrote no tar of that tablespace"
            );
        }
    }
    let label_text = summary.backup_label.as_deref().context("the base backup has no backup_label")?;
    let label_text = String::from_utf8_lossy(label_text).into_owned();
    let label = Label::parse(&label_text).map_err(|e| anyhow!("the base backup's {e}"))?;
    let control = summary.pg_control.as_deref().context("the base backup has no global/pg_control")?;
    let system_identifier = u64::from_le_bytes(
        control.get(..8).and_then(|b| b.try_into().ok()).context("the base backup's global/pg_control is truncated")?,
    );
    let pg_manifest_bytes = summary
        .backup_manifest
        .as_deref()
        .or(manifest_beside.as_deref())
        .context("pg_basebackup wrote no backup_manifest (is it older than PostgreSQL 13?)")?;
    let pg_manifest = PgManifest::parse(pg_manifest_bytes).map_err(|e| anyhow!("the base backup's {e}"))?;
    let last = *pg_manifest.wal_ranges.last().expect("parse checks there is one");
    let stop_segment =
        SegmentName::containing(last.timeline, last.end_lsn.0.0.saturating_sub(1), server.wal_segment_size);
    if !stderr.trim().is_empty() {
        let text = stderr.trim();
        // what every backup with -X none and archiving says; anything else is worth keeping
        if !text.lines().all(|l| l.contains("all required WAL segments have been archived")) {
            tracing::info!(stderr = %text, "pg_basebackup said");
        }
    }

    // a base backup is restorable only with the WAL up to its end: wait for it to be archived
    tracing::debug!(segment = %stop_segment, "pg_basebackup done; waiting for the backup's last WAL segment");
    wait_for_wal(ctx, wal, system_identifier, stop_segment).await?;
    tracing::debug!(segment = %stop_segment, "the backup's WAL is archived");

    let level = config.compression.enabled.then_some(config.compression.level);
    let manifest_object = pipeline::store_small_object(
        repo.targets_for(subject),
        &mut holding,
        &keys::base_pg_manifest(subject, id, repo.encrypts_with().is_some()),
        pg_manifest_bytes,
        level,
        repo.encrypts_with().map(|c| c.as_ref()),
        &mut warnings,
    )
    .await?;
    let content = Content::Base(BaseBackup {
        source: Source {
            host: conn.host.clone(),
            port: conn.port,
            user: conn.user.clone(),
            dbname: conn.dbname.clone(),
        },
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        pg_basebackup_version: tool_version,
        system_identifier,
        wal_segment_size: server.wal_segment_size,
        timeline: label.timeline,
        start_lsn: LsnText(label.start_lsn),
        checkpoint_lsn: LsnText(label.checkpoint_lsn),
        stop_lsn: last.end_lsn,
        start_wal: label.start_wal.clone(),
        stop_wal: stop_segment.to_string(),
        wal_ranges: pg_manifest.wal_ranges.clone(),
        backup_from: label.from.clone(),
        label: label.label.clone(),
        backup_label: label_text,
        tablespace_map: summary
            .tablespace_map
            .filter(|t| !t.is_empty())
            .map(|t| String::from_utf8_lossy(&t).into_owned()),
        files: pg_manifest.files,
        backup_manifest: manifest_object,
        tablespaces,
    });
    let mut manifest = Manifest::new(id.to_owned(), subject.clone(), BackupKind::Full, trigger, now, data, content);
    manifest.finished_at = ctx.now().max(now);
    manifest.targets = holding;
    manifest.warnings = warnings;
    if ctx.cancel.is_cancelled() {
        bail!("the base backup was cancelled before its manifest was written: nothing was committed");
    }
    let m = repo.commit(manifest).await?;
    tracing::info!(
        backup_id = %m.id,
        start_wal = %label.start_wal,
        stop_wal = %stop_segment,
        "base backup committed"
    );
    Ok(m)
}

/// What pg_basebackup wrote, stored: the data directory's tar and each tablespace's.
struct Streamed {
    base: pipeline::Committed,
    summary: TarSummary,
    /// (OID, stored tar) of each user tablespace.
    tablespaces: Vec<(u32, pipeline::Committed)>,
    /// PostgreSQL's `backup_manifest` when pg_basebackup wrote it beside the tars (with
    /// tablespaces; without, it is the last member of the one tar).
    manifest_beside: Option<Vec<u8>>,
    stderr: String,
}

/// The pg_basebackup command line writing into `dir` (`-` for stdout).
fn command(tools: &Tools, wal: &WalSettings, id: &str, dir: &std::ffi::OsStr) -> ChildSpec {
    pg::conn_env(
        ChildSpec::new(tools.path("pg_basebackup")).arg("-D").arg(dir).args([
            "--format=tar",
            "--wal-method=none",
            "--checkpoint=fast",
            "--manifest-checksums=SHA256",
            "--no-password",
        ]),
        &wal.server,
    )
    .arg(format!("--label=pgbackd {id}"))
}

/// Where `tablespace_map` (lines of `<oid> <path>`) puts tablespace `oid`.
fn tablespace_location(map: &[u8], oid: u32) -> Option<String> {
    String::from_utf8_lossy(map).lines().find_map(|l| {
        let (o, path) = l.split_once(' ')?;
        (o.parse::<u32>().ok()? == oid).then(|| path.to_owned())
    })
}

/// Runs pg_basebackup into the pipeline; commits the data object only if it succeeded.
async fn stream(ctx: &JobContext, tools: &Tools, wal: &WalSettings, subject: &Subject, id: &str) -> Result<Streamed> {
    let repo = &*ctx.repository;
    let spec = command(tools, wal, id, "-".as_ref());
    let mut child = Running::spawn(&spec)?;
    tracing::debug!(pid = child.pid(), command = child.command(), "pg_basebackup started");
    let stdout = child.take_stdout().context("pg_basebackup has no stdout")?;
    let stdout = std::fs::File::from(stdout.into_owned_fd().context("taking pg_basebackup's stdout")?);
    crate::process::set_blocking(&stdout);
    let opts = ctx.stream_options();
    let key = keys::base_data(subject, id, opts.level.is_some(), opts.encrypt.is_some());
    let moved = ctx.progress.clone();
    let tracker = progress::track(
        &format!("base backup {}", subject.name()),
        moved.clone(),
        ctx.interactive,
        previous_size(ctx, subject).await,
    );
    let mut segments = pipeline::read_segments(stdout, opts.segment_size, moved, TarFilter::new());
    let cancel = ctx.cancel.child_token();
    let streamed = pipeline::store_stream_to(&mut segments, repo.targets_for(subject), &key, &opts, &cancel).await;
    let summary = segments.summary();
    drop(tracker);
    drop(segments);
    let staged = match streamed {
        Ok(s) => s,
        Err(StreamError::Filter(e)) => {
            let tar =
                e.downcast::<TarError>().map(|t| *t).map_err(|o| anyhow!("reading pg_basebackup's output: {o}"))?;
            // the stream is not a whole archive: pg_basebackup usually died, and says why
            return Err(match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(Err(e)) => {
                    explain(e, wal).context(format!("pg_basebackup failed and its output is incomplete ({tar})"))
                }
                Ok(Ok(_)) => {
                    anyhow!("pg_basebackup exited successfully but its output is not a whole tar archive: {tar}")
                }
                Err(_) => anyhow!("pg_basebackup's output is not a whole tar archive ({tar}) and it did not exit"),
            });
        }
        Err(e) => return Err(super::backup::stream_stopped(child, e, "pg_basebackup").await),
    };
    let stderr = match child.wait().await {
        Ok(stderr) => stderr,
        Err(e) => {
            staged.abort().await;
            return Err(explain(e, wal));
        }
    };
    let Some(summary) = summary else {
        staged.abort().await;
        bail!("the base backup stream ended without a summary");
    };
    let base = staged.commit().await?;
    Ok(Streamed { base, summary, tablespaces: Vec::new(), manifest_beside: None, stderr })
}

/// With user tablespaces, `pg_basebackup -D -` refuses (it writes one tar only): it writes one tar
/// per tablespace into a spool directory instead, and each is streamed into the pipeline while it
/// grows (read parts punched out of the file: the spool holds little more than the reader lags).
/// Each tar is committed once it is whole; the caller removes them if the backup then fails.
async fn stream_tablespaces(
    ctx: &JobContext,
    tools: &Tools,
    wal: &WalSettings,
    subject: &Subject,
    id: &str,
) -> Result<Streamed> {
    sweep_spools(&std::env::temp_dir());
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SPOOL_PREFIX}{}-", std::process::id()))
        .tempdir()
        .context("creating a spool directory for the base backup's tablespaces (in $TMPDIR)")?;
    // pg_basebackup creates it and refuses one that is not empty
    let dir = scratch.path().join("archives");
    let spec = command(tools, wal, id, dir.as_os_str());
    let child = Running::spawn(&spec)?;
    tracing::debug!(pid = child.pid(), command = child.command(), "pg_basebackup started");
    let gone = Arc::new(AtomicBool::new(false));
    let stop = ctx.cancel.child_token();
    let waiting = async {
        let exit = child.wait_or_stop(&stop, KILL_GRACE).await;
        gone.store(true, Ordering::Release);
        exit
    };
    let reading = async {
        let read = read_archives(ctx, &dir, &gone, subject, id, &stop).await;
        if read.is_err() {
            stop.cancel();
        }
        read
    };
    let ((stopped, exit), read) = tokio::join!(waiting, reading);
    let (mut archives, stderr) = match (read, exit) {
        (Ok(archives), Ok(stderr)) => (archives, stderr),
        // pg_basebackup failed by itself: its error says why, and the tar it was writing is cut
        (read, Err(e)) if !stopped => {
            let e = explain(e, wal);
            return Err(match read {
                Err(r) => e.context(format!("pg_basebackup failed and its output is incomplete ({r:#})")),
                Ok(_) => e,
            });
        }
        (Err(r), _) => return Err(r),
        (Ok(_), Err(_)) => bail!("the base backup was cancelled: nothing was committed"),
    };
    let manifest = tokio::fs::read(dir.join("backup_manifest"))
        .await
        .with_context(|| format!("pg_basebackup wrote no backup_manifest into {}", dir.display()))?;
    let at = archives.iter().position(|a| a.oid.is_none()).context("pg_basebackup wrote no base.tar")?;
    let base = archives.remove(at);
    let tablespaces = archives.into_iter().map(|a| (a.oid.expect("only base.tar has none"), a.stored)).collect();
    Ok(Streamed { base: base.stored, summary: base.summary, tablespaces, manifest_beside: Some(manifest), stderr })
}
/// Spool directories are `pgbackd-base-<pid>-<random>` in $TMPDIR.
const SPOOL_PREFIX: &str = "pgbackd-base-";

/// Removes the spool directories of pgbackd processes that are gone (killed midway: a spool
/// is removed when its backup ends, however it ends).
fn sweep_spools(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SPOOL_PREFIX)).and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        // another user's process answers EPERM: alive too
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH));
        if !alive {
            tracing::info!(path = %e.path().display(), "removing the spool of a base backup whose pgbackd is gone");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One tar of the spool directory, stored.
struct SpooledArchive {
    /// The tablespace's OID (`<oid>.tar`); `None` for `base.tar`.
    oid: Option<u32>,
    stored: pipeline::Committed,
    summary: TarSummary,
}

/// Streams each tar pg_basebackup writes into `dir`, in the order it writes them, until it
/// writes the `backup_manifest` (which comes last) or exits.
async fn read_archives(
    ctx: &JobContext,
    dir: &Path,
    gone: &Arc<AtomicBool>,
    subject: &Subject,
    id: &str,
    stop: &CancellationToken,
) -> Result<Vec<SpooledArchive>> {
    let repo = &*ctx.repository;
    let opts = ctx.stream_options();
    let mut archives: Vec<SpooledArchive> = Vec::new();
    let moved = ctx.progress.clone();
    let tracker = progress::track(
        &format!("base backup {}", subject.name()),
        moved.clone(),
        ctx.interactive,
        previous_size(ctx, subject).await,
    );
    while let Some(name) = next_archive(dir, gone, stop, opts.stall_timeout).await? {
        let oid = match name.as_str() {
            "base.tar" => None,
            other => Some(
                other
                    .strip_suffix(".tar")
                    .and_then(|o| o.parse::<u32>().ok())
                    .with_context(|| format!("pg_basebackup wrote {other:?}, which names no tablespace"))?,
            ),
        };
        let (compressed, encrypted) = (opts.level.is_some(), opts.encrypt.is_some());
        let key = match oid {
            None => keys::base_data(subject, id, compressed, encrypted),
            Some(oid) => keys::tablespace_data(subject, id, oid, compressed, encrypted),
        };
        let file = GrowingFile::open(dir.to_owned(), name.clone(), ".tar", gone.clone())
            .with_context(|| format!("opening {}", dir.join(&name).display()))?;
        let mut segments = pipeline::read_segments(file, opts.segment_size, moved.clone(), TarFilter::new());
        let streamed = pipeline::store_stream_to(&mut segments, repo.targets_for(subject), &key, &opts, stop).await;
        let summary = segments.summary();
        drop(segments);
        let staged = match streamed {
            Ok(s) => s,
            Err(StreamError::Filter(e)) => bail!("{name} is not a whole tar archive: {e}"),
            Err(StreamError::Cancelled) => bail!("the base backup was cancelled: nothing was committed"),
            Err(StreamError::Stalled(d)) => bail!(
                "pg_basebackup wrote nothing into {name} for {} (backup.stall_timeout) and was stopped; with -X \
                 none it waits at the end for the WAL to be archived: is archiving working? (pg_stat_archiver)",
                crate::units::duration(d)
            ),
            Err(e) => return Err(anyhow!(e).context(format!("storing pg_basebackup's {name}"))),
        };
        let Some(summary) = summary else {
            staged.abort().await;
            bail!("the stream of {name} ended without a summary");
        };
        let stored = staged.commit().await?;
        tokio::fs::remove_file(dir.join(&name)).await.with_context(|| format!("removing the spooled {name}"))?;
        tracing::debug!(archive = %name, raw_bytes = stored.object.raw_bytes, "tar of the base backup stored");
        archives.push(SpooledArchive { oid, stored, summary });
    }
    drop(tracker);
    Ok(archives)
}

/// The next tar in `dir` once pg_basebackup has created it; `None` once no more will come. A
/// pg_basebackup that creates nothing for `stall` (waiting for an archiver that fails, say) is
/// stopped, as the stall guard stops one that writes nothing to stdout.
async fn next_archive(
    dir: &Path,
    gone: &AtomicBool,
    stop: &CancellationToken,
    stall: Duration,
) -> Result<Option<String>> {
    let since = tokio::time::Instant::now();
    loop {
        // read before looking: a tar created just before the writer exits is still seen
        let finished = gone.load(Ordering::Acquire);
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow!(e).context(format!("reading the spool directory {}", dir.display()))),
        };
        names.sort();
        if let Some(tar) = names.iter().find(|n| n.ends_with(".tar")) {
            return Ok(Some(tar.clone()));
        }
        if finished || names.iter().any(|n| n.starts_with("backup_manifest")) {
            return Ok(None);
        }
        if since.elapsed() >= stall {
            bail!(
                "pg_basebackup wrote no further tar and no backup_manifest for {} (backup.stall_timeout) and was \
                 stopped; with -X none it waits for the WAL to be archived: is archiving working? (pg_stat_archiver)",
                crate::units::duration(stall)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.cancelled() => bail!("the base backup was cancelled: nothing was committed"),
        }
    }
}

/// pg_basebackup's failures, with what to do about the usual ones.
fn explain(e: ProcessError, wal: &WalSettings) -> anyhow::Error {
    if let ProcessError::Failed { stderr_tail, .. } = &e {
        let hint = if stderr_tail.contains("no pg_hba.conf entry for replication connection") {
            Some(format!(
                "allow replication connections of user {} from this host in pg_hba.conf (`host replication {} \
                 <address> scram-sha-256`) and reload PostgreSQL",
                wal.server.user, wal.server.user
            ))
        } else if stderr_tail.contains("must be superuser or replication role")
            || stderr_tail.contains("permission denied to start WAL sender")
        {
            Some(format!(
                "give user {} the REPLICATION attribute (ALTER ROLE {} REPLICATION)",
                wal.server.user, wal.server.user
            ))
        } else if stderr_tail.contains("number of requested standby connections exceeds max_wal_senders")
            || stderr_tail.contains("max_wal_senders")
        {
            Some("raise max_wal_senders on the server (each base backup and the WAL receiver use one)".into())
        } else {
            None
        };
        if let Some(hint) = hint {
            return anyhow!(e).context(hint);
        }
    }
    pg::explain_tool_failure(e, &wal.server)
}

/// Waits until the segment holding the backup's end is on every required target.
async fn wait_for_wal(ctx: &JobContext, wal: &WalSettings, system_identifier: u64, stop: SegmentName) -> Result<()> {
    crate::wal::wait_archived(&ctx.config, &ctx.repository, system_identifier, stop, &ctx.cancel)
        .await
        .map_err(|e| match e {
            crate::wal::NotArchived::Cancelled => {
                anyhow!("the base backup was cancelled while it waited for its WAL to be archived")
            }
            crate::wal::NotArchived::Error(e) => e,
            crate::wal::NotArchived::TimedOut { missing } => anyhow!(
                "the base backup's last WAL segment {stop} is not archived on {missing} after {} (wal.archive_timeout): \
                 without it the backup cannot be restored, so it is not kept; {}",
                crate::units::duration(wal.archive_timeout),
                crate::wal::archiving_hint(wal)
            ),
        })
}

/// The newest base backup's raw size: what the progress bar expects this one to reach.
async fn previous_size(ctx: &JobContext, subject: &Subject) -> Option<u64> {
    ctx.repository.latest(subject, None).await.ok().flatten().map(|m| m.raw_bytes())
}
