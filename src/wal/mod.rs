//! Continuous archiving of a cluster's WAL: the files PostgreSQL archives (`names`), timelines and
//! the gaps in an archive (`timeline`), the archive in the repository (`archive`), its
//! verification (`check`), what retention deletes of it (`expire`), the moments it reaches (`window`),
//! the daemon's streaming and watching of it (`receiver`), and the two commands PostgreSQL calls, `archive-push %p`
//! (`archive_command`) and `archive-get %f %p` (`restore_command`).
//!
//! The archive is per system identifier: it is read from the segment's own page header (and from
//! the data directory's `pg_control` for history files), so a second cluster archiving under the
//! same `wal.name` cannot mix its segments with the first one's.

pub mod archive;
pub mod check;
pub mod expire;
pub mod names;
pub mod prefetch;
pub mod receiver;
pub mod restore_point;
pub mod timeline;
pub mod window;

use crate::config::{Config, WalSettings};
use crate::repo::Repository;
use anyhow::{Context, Result};
use archive::{Pushed, WalArchive};
use bytes::Bytes;
use names::{SegmentHeader, WalFile, control_system_identifier};
use std::path::{Path, PathBuf};

/// The `wal:` section, or what to add.
pub fn settings(config: &Config) -> Result<&WalSettings> {
    config.wal.as_ref().with_context(|| {
        format!(
            "{} has no wal: section: add `wal: {{name: main}}` (the cluster's name in the repository) to archive \
             WAL with archive_command = 'pgbackd -c CONFIG archive-push %p'",
            config.path.as_ref().map_or("the config".into(), |p| p.display().to_string())
        )
    })
}

/// The archive of `system_identifier` under the configured cluster name.
pub fn open(config: &Config, repository: &Repository, system_identifier: u64) -> Result<WalArchive> {
    let wal = settings(config)?;
    let level = config.compression.enabled.then_some(config.compression.level);
    Ok(WalArchive::new(
        &wal.name,
        system_identifier,
        repository.targets().to_vec(),
        repository.crypto().cloned(),
        level,
    ))
}

/// The data directory an archived path belongs to: `--pgdata`, else the directory above the
/// `pg_wal` the file is in, else the working directory (PostgreSQL runs archive and restore
/// commands in the data directory).
fn data_directory(path: &Path, pgdata: Option<&Path>) -> PathBuf {
    if let Some(d) = pgdata {
        return d.to_owned();
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match parent {
        Some(p) if p.file_name().is_some_and(|n| n == "pg_wal") => {
            p.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."))
        }
        _ => PathBuf::from("."),
    }
}

/// Where the system identifier of a file without a page header (a history file) comes from.
#[derive(Debug, Clone, Copy)]
pub enum SystemOf<'a> {
    /// The data directory's `pg_control` (`--pgdata`, else found from the file's path).
    DataDirectory(Option<&'a Path>),
    /// Known already (the receiver asked the server).
    Known(u64),
}

/// `archive-push PATH`: one file PostgreSQL completed, into the archive on every target.
pub async fn push(
    config: &Config,
    repository: &Repository,
    path: &Path,
    system: SystemOf<'_>,
) -> Result<(WalFile, Pushed)> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let file = WalFile::parse(name).with_context(|| {
        format!(
            "{}: not a file PostgreSQL archives (a segment, .partial, .history or .backup file); \
             archive_command should pass %p",
            path.display()
        )
    })?;
    let raw = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
    let system_identifier = if file.has_page_header() {
        let header = SegmentHeader::read(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let WalFile::Segment(s) = file {
            anyhow::ensure!(
                header.segment() == s,
                "{}: its header says it is segment {}, not {s}: refusing to archive a renamed file",
                path.display(),
                header.segment()
            );
        }
        header.system_identifier
    } else {
        match system {
            SystemOf::Known(id) => id,
            SystemOf::DataDirectory(pgdata) => {
                let dir = data_directory(path, pgdata);
                control_system_identifier(&dir).map_err(|e| {
                    anyhow::anyhow!(
                        "{name} has no header naming its cluster and its data directory's system identifier is \
                         unreadable ({e}): run archive-push from the data directory (archive_command does) or pass \
                         --pgdata"
                    )
                })?
            }
        }
    };
    let archive = open(config, repository, system_identifier)?;
    let pushed = archive.push(file, Bytes::from(raw)).await?;
    Ok((file, pushed))
}

/// The archive `archive-get` reads: `--system-id`, else the data directory's (restore_command
/// runs in it).
pub fn system_of(dest: &Path, given: Option<u64>) -> Result<u64> {
    match given {
        Some(s) => Ok(s),
        None => control_system_identifier(&data_directory(dest, None)).map_err(|e| {
            anyhow::anyhow!(
                "which cluster's archive to read: {e}; run archive-get from the data directory (restore_command \
                 does) or pass --system-id"
            )
        }),
    }
}

/// `archive-get FILE DEST`: the archived `FILE` written to `DEST` (atomically: a temporary file
/// beside it, renamed). `Ok(None)` when the archive does not hold it, else its size and, for a
/// segment, the segment size its header states.
pub async fn get(
    config: &Config,
    repository: &Repository,
    file: WalFile,
    dest: &Path,
    system_identifier: u64,
) -> Result<Option<Option<u64>>> {
    let archive = open(config, repository, system_identifier)?;
    let Some(raw) = archive.get(file).await? else { return Ok(None) };
    let segment_size = match file {
        WalFile::Segment(_) => SegmentHeader::read(&raw).ok().map(|h| h.segment_size as u64),
        _ => None,
    };
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || write_atomically(&dest, &raw)).await.context("write task failed")??;
    Ok(Some(segment_size))
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".pgbackd-wal-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // not synced: PostgreSQL reads the file at once and asks again after a crash
    temp.write_all(data).with_context(|| format!("writing {}", dest.display()))?;
    temp.persist(dest).map_err(|e| anyhow::anyhow!("renaming into {}: {}", dest.display(), e.error))?;
    Ok(())
}

/// Why [`wait_archived`] gave up.
#[derive(Debug)]
pub enum NotArchived {
    /// Still missing on these required targets after `wal.archive_timeout`.
    TimedOut {
        missing: String,
    },
    Cancelled,
    Error(anyhow::Error),
}

/// Waits (up to `wal.archive_timeout`) until `segment` is on every required target.
pub async fn wait_archived(
    config: &Config,
    repository: &Repository,
    system_identifier: u64,
    segment: names::SegmentName,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), NotArchived> {
    let wal = settings(config).map_err(NotArchived::Error)?;
    let archive = open(config, repository, system_identifier).map_err(NotArchived::Error)?;
    let deadline = tokio::time::Instant::now() + wal.archive_timeout;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let missing = archive.missing_on_required(WalFile::Segment(segment)).await.map_err(NotArchived::Error)?;
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NotArchived::TimedOut { missing: missing.join(", ") });
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(NotArchived::Cancelled),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
}

/// What to check when WAL does not reach the archive, for the configured method.
pub fn archiving_hint(wal: &WalSettings) -> &'static str {
    match wal.method {
        crate::config::WalMethod::ArchiveCommand => {
            "is archive_command set to 'pgbackd -c CONFIG archive-push %p' with this repository? \
             (pg_stat_archiver shows its failures)"
        }
        crate::config::WalMethod::Stream => "is the daemon's WAL receiver running? (pgbackd status)",
    }
}
