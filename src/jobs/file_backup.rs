//! A file or configuration backup: the set's paths streamed as a tar archive through the same
//! segment -> zstd -> (age) -> SHA-256 -> storage pipeline as dumps, committed by a manifest that
//! lists every file with its SHA-256. Files that change or vanish while read, or cannot be read,
//! make the backup `partial`, never a silent success. An incremental leaves files whose metadata
//! did not change in the earlier backup that holds them (up to `full_every - 1` in a row).

use super::context::JobContext;
use crate::config::FileSetConfig;
use crate::fileset::{FileKind, archive};
use crate::pipeline;
use crate::repo::manifest::{Content, FileSet, FilesOutcome, Trigger};
use crate::repo::{BackupKind, Manifest, Subject, keys};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The source set a subject names.
pub fn set_of<'c>(config: &'c crate::config::Config, subject: &Subject) -> Result<&'c FileSetConfig> {
    let (sets, key) = match subject {
        Subject::Files(_) => (&config.files, "files"),
        Subject::Configs(_) => (&config.configs, "configs"),
        Subject::Database(_) | Subject::Cluster(_) | Subject::Sqlite(_) => {
            bail!("{} is not a file set", subject.describe())
        }
    };
    let name = subject.name();
    sets.iter().find(|s| s.name == name).with_context(|| {
        let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no source set {name:?} under {key}: (configured: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        )
    })
}

/// What the archive writer reads: the set's paths, its excludes as one matcher, its options.
fn sources(set: &FileSetConfig) -> Result<archive::Sources> {
    let mut b = globset::GlobSetBuilder::new();
    for g in &set.exclude {
        b.add(globset::Glob::new(g).with_context(|| format!("{}: exclude glob {g:?}", set.name))?);
    }
    Ok(archive::Sources {
        paths: set.paths.clone(),
        exclude: b.build()?,
        one_file_system: set.one_file_system,
        follow_symlinks: set.follow_symlinks,
    })
}

/// Backs up the set `subject` names; `Ok` also for a partial backup (see its problems).
pub async fn run(ctx: &JobContext, subject: &Subject, trigger: Trigger) -> Result<Manifest> {
    let set = set_of(&ctx.config, subject)?;
    let now = ctx.now();
    ctx.repository.sweep_leftovers(subject, now, ctx.config.retention.orphan_grace).await;
    let tag = if matches!(subject, Subject::Configs(_)) { "configs" } else { "files" };
    let id = keys::new_backup_id(now, tag);
    let started = std::time::Instant::now();
    tracing::info!(backup_id = %id, "file backup started");
    let result = take(ctx, set, subject, trigger, &id).await;
    ctx.end_attempt(subject, &id, "file backup", started, result).await
}

async fn take(
    ctx: &JobContext,
    set: &FileSetConfig,
    subject: &Subject,
    trigger: Trigger,
    id: &str,
) -> Result<Manifest> {
    let repo = &*ctx.repository;
    let now = ctx.now();
    let sources = sources(set)?;
    // an incremental against the newest backup of the set, up to full_every - 1 in a row
    // (only the newest full_every manifests are read)
    let recent = repo.newest(subject, set.full_every as usize).await.unwrap_or_default();
    let in_a_row = recent.iter().rev().take_while(|m| m.kind == BackupKind::Incremental).count() as u32;
    let mut warnings = Vec::new();
    // the previous backup (and those holding its unchanged files) keep holding this one's
    let lock = match recent.last() {
        Some(prev) => Some(ctx.read_lock(prev, "file backup based on").await?),
        None => None,
    };
    let previous: HashMap<String, archive::Previous> = match (recent.last(), recent.last().and_then(|m| m.file_set())) {
        (Some(prev), Some(files)) if set.full_every > 1 && in_a_row + 1 < set.full_every => {
            match repo.authenticate(prev) {
                Ok(_) => files
                    .files
                    .iter()
                    .filter(|r| r.kind == FileKind::File && r.sha256.is_some())
                    .map(|r| {
                        let holder = r.stored_in.clone().unwrap_or_else(|| prev.id.clone());
                        (r.path.clone(), archive::Previous { record: r.clone(), holder })
                    })
                    .collect(),
                Err(e) => {
                    warnings
                        .push(format!("the previous backup {} cannot be read here ({e:#}): this one is full", prev.id));
                    HashMap::new()
                }
            }
        }
        _ => HashMap::new(),
    };
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    crate::process::enlarge_pipe(&writer);
    // tar writes headers of 512 bytes and data in small pieces: batch them
    let writer = std::io::BufWriter::with_capacity(1 << 20, writer);
    let stop = Arc::new(AtomicBool::new(false));
    let walker = {
        let (sources, stop) = (sources.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pgbackd-tar".into())
            .spawn(move || archive::write(&sources, writer, stop, previous))
            .context("starting the archive thread")?
    };
    let opts = ctx.stream_options();
    let key = keys::tar_data(subject, id, opts.level.is_some(), opts.encrypt.is_some());
    let targets = repo.targets_for(subject);
    let mut segments = pipeline::read_segments(reader, opts.segment_size, ctx.progress.clone(), pipeline::Unfiltered);
    let streamed = pipeline::store_stream_to(&mut segments, targets, &key, &opts, &ctx.cancel).await;
    drop(segments);
    if streamed.is_err() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let archived = tokio::task::spawn_blocking(move || walker.join())
        .await
        .context("archive thread")?
        .map_err(|_| anyhow!("the archive thread panicked"))?;
    let staged = streamed.map_err(|e| anyhow!(e).context("storing the archive"))?;
    let archived = match archived {
        Ok(a) => a,
        Err(e) => {
            staged.abort().await;
            bail!("writing the archive of {}: {e}", set.name);
        }
    };
    let committed = staged.commit().await?;
    warnings.extend(committed.warnings);
    let mut holders: Vec<String> = archived.records.iter().filter_map(|r| r.stored_in.clone()).collect();
    holders.sort();
    holders.dedup();
    let content = Content::Files(FileSet {
        host: crate::notify::hostname(),
        sources: set.paths.iter().map(|p| p.display().to_string()).collect(),
        file_count: archived.records.iter().filter(|r| r.kind == FileKind::File).count() as u64,
        total_bytes: archived.total_bytes,
        // a file not captured as it was (unreadable, vanished, changed while read) makes it partial
        outcome: if archived.problems.is_empty() { FilesOutcome::Success } else { FilesOutcome::Partial },
        problems: archived.problems,
        files: archived.records,
    });
    // self-contained unless some file's content is left in an earlier backup
    let kind = if holders.is_empty() { BackupKind::Full } else { BackupKind::Incremental };
    let mut m = Manifest::new(id.to_owned(), subject.clone(), kind, trigger, now, committed.object, content);
    m.depends_on = holders;
    m.finished_at = ctx.now().max(now);
    m.targets = committed.targets;
    m.warnings = warnings;
    if ctx.cancel.is_cancelled() {
        bail!("the backup was cancelled before its manifest was written: nothing was committed");
    }
    let committed = repo.commit(m).await;
    if let Some(l) = lock {
        l.release().await;
    }
    committed
}
