//! File and configuration backups: a set of paths streamed as a tar archive through the same
//! segment -> zstd -> (age) -> SHA-256 -> storage pipeline as database dumps, committed by a
//! manifest written last that lists every file with its SHA-256. Files that change or vanish
//! while read are warnings; unreadable ones make the backup `partial`, never a silent success.
//!
//! Layout: `<files|configs>/<set>/<id>/data.tar.zst[.age]` and `manifest.json`, in
//! `file_backup_dir` / `config_backup_dir` when set, else in the repository's targets.

pub mod archive;
pub mod restore;

use crate::config::{Config, FileSetConfig};
use crate::crypto::EncryptionInfo;
use crate::pipeline::{self, PipelineOptions};
use crate::repo::manifest::{StoredObject, Trigger};
use crate::storage::{Store, Target};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;

pub const MANIFEST_SCHEMA: u32 = 1;

/// Application files (`files:`, job `file_backup`) or configuration (`configs:`, `config_backup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    Files,
    Configs,
}

impl SetKind {
    pub fn prefix(self) -> &'static str {
        match self {
            SetKind::Files => "files",
            SetKind::Configs => "configs",
        }
    }

    /// The name a set's retention and verification runs go by beside the databases:
    /// `files:NAME` or `configs:NAME`.
    pub fn target_name(self, set: &str) -> String {
        format!("{}:{set}", self.prefix())
    }

    /// The set a [`SetKind::target_name`] names; `None` for a database.
    pub fn parse_target_name(name: &str) -> Option<(SetKind, &str)> {
        [SetKind::Files, SetKind::Configs]
            .into_iter()
            .find_map(|k| name.strip_prefix(k.prefix()).and_then(|r| r.strip_prefix(':')).map(|set| (k, set)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// One archived path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The name in the archive (the absolute path without its leading `/`).
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
    /// A symlink's target, or the first name of a hard-linked file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The earlier backup whose archive holds this (unchanged) file's content; `None`: this
    /// backup's own archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_in: Option<String>,
    /// For change detection by the next backup.
    #[serde(default)]
    pub inode: u64,
}

/// A file that changed, vanished (warnings) or could not be read (`error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProblem {
    pub path: String,
    pub problem: String,
    pub error: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileManifest {
    pub schema_version: u32,
    pub id: String,
    pub kind: SetKind,
    /// The `name` of the source set.
    pub set: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub host: String,
    pub sources: Vec<String>,
    pub data: StoredObject,
    pub file_count: u64,
    pub total_bytes: u64,
    /// Unchanged files were left in earlier backups (`holders`), not archived again.
    #[serde(default)]
    pub incremental: bool,
    /// The earlier backups holding content of this one: restore reads them too, retention
    /// keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<String>,
    /// `success`, or `partial` when a file could not be read, vanished or changed while read.
    pub outcome: String,
    pub problems: Vec<FileProblem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub files: Vec<FileRecord>,
    pub targets: Vec<String>,
    pub pgbackd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl FileManifest {
    /// The bytes the MAC covers: the manifest without its MAC.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.mac = None;
        serde_json::to_vec(&m).expect("manifest serializes")
    }
}

/// Where a kind of file backup is stored: its own directory when configured, else the
/// repository's targets.
pub fn targets(config: &Config, kind: SetKind, repo: &crate::repo::Repository) -> Result<Vec<Target>> {
    let dir = match kind {
        SetKind::Files => &config.file_backup_dir,
        SetKind::Configs => &config.config_backup_dir,
    };
    match dir {
        Some(d) => Ok(vec![Target {
            store: Arc::new(crate::storage::local::LocalStore::new(kind.prefix(), d)?),
            required: true,
        }]),
        None => Ok(repo.targets().to_vec()),
    }
}

fn prefix(kind: SetKind, set: &str, id: &str) -> String {
    format!("{}/{set}/{id}", kind.prefix())
}

fn new_id(now: DateTime<Utc>, kind: SetKind) -> String {
    format!("{}-{}-{:06x}", now.format("%Y%m%dT%H%M%SZ"), kind.prefix(), rand::random::<u32>() & 0xff_ffff)
}

/// Backs up source set `set`; `Ok` also for a partial backup (see `outcome` and `problems`).
pub async fn backup(
    config: &Config,
    set: &FileSetConfig,
    kind: SetKind,
    trigger: Trigger,
    cancel: &CancellationToken,
    now: DateTime<Utc>,
) -> Result<FileManifest> {
    let repo = crate::repo::Repository::open(config).await?;
    let targets = targets(config, kind, &repo)?;
    let id = new_id(now, kind);
    let started = std::time::Instant::now();
    tracing::info!(set = %set.name, backup_id = %id, "file backup started");
    let result = take(config, set, kind, trigger, &repo, &targets, cancel, now, &id).await;
    match &result {
        Ok(m) => tracing::info!(
            backup_id = %m.id,
            files = m.file_count,
            raw_bytes = m.data.raw_bytes,
            stored_bytes = m.data.stored_bytes,
            outcome = %m.outcome,
            duration_s = format!("{:.1}", started.elapsed().as_secs_f64()),
            "file backup finished"
        ),
        Err(e) => {
            tracing::error!(backup_id = %id, error = %format!("{e:#}"), "file backup failed");
            for t in &targets {
                let p = format!("{}/", prefix(kind, &set.name, &id));
                if let Ok(objs) = t.store.list(&p).await {
                    let keys: Vec<String> = objs.into_iter().map(|o| o.key).collect();
                    let _ = t.store.delete(&keys).await;
                }
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn take(
    config: &Config,
    set: &FileSetConfig,
    kind: SetKind,
    trigger: Trigger,
    repo: &crate::repo::Repository,
    targets: &[Target],
    cancel: &CancellationToken,
    now: DateTime<Utc>,
    id: &str,
) -> Result<FileManifest> {
    let sources = set.sources()?;
    // an incremental against the newest backup of the set, up to full_every - 1 in a row
    let history = list_newest(targets, kind, &set.name, set.full_every as usize).await.unwrap_or_default();
    let in_a_row = history.iter().rev().take_while(|m| m.incremental).count() as u32;
    let mut warnings = Vec::new();
    let previous: std::collections::HashMap<String, archive::Previous> = match history.last() {
        Some(prev) if set.full_every > 1 && in_a_row + 1 < set.full_every => match authenticate(repo, prev) {
            Ok(_) => prev
                .files
                .iter()
                .filter(|r| r.kind == FileKind::File && r.sha256.is_some())
                .map(|r| {
                    let holder = r.stored_in.clone().unwrap_or_else(|| prev.id.clone());
                    (r.path.clone(), archive::Previous { record: r.clone(), holder })
                })
                .collect(),
            Err(e) => {
                warnings.push(format!("the previous backup {} cannot be read here ({e:#}): this one is full", prev.id));
                Default::default()
            }
        },
        _ => Default::default(),
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
    let level = config.compression.enabled.then_some(config.compression.level);
    let opts = PipelineOptions {
        segment_size: config.backup.segment_size as usize,
        level,
        threads: config.compression_threads(),
        stall_timeout: config.backup.stall_timeout,
        delta: None,
        encrypt: repo.encrypts_with().cloned(),
    };
    let key = format!(
        "{}/data.tar{}{}",
        prefix(kind, &set.name, id),
        if level.is_some() { ".zst" } else { "" },
        if opts.encrypt.is_some() { ".age" } else { "" }
    );
    let mut segments = pipeline::read_segments(reader, opts.segment_size, Arc::default(), pipeline::Unfiltered);
    let streamed = pipeline::store_stream_to(&mut segments, targets, &key, &opts, cancel).await;
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
    let (encryption, mac_key) = match repo.encrypts_with() {
        Some(c) => {
            let (info, key) = c.new_backup_key()?;
            (Some(info), Some(key))
        }
        None => (None, None),
    };
    // a file not captured as it was (unreadable, vanished, changed while read) makes it partial
    let partial = !archived.problems.is_empty();
    let mut holders: Vec<String> = archived.records.iter().filter_map(|r| r.stored_in.clone()).collect();
    holders.sort();
    holders.dedup();
    let mut m = FileManifest {
        schema_version: MANIFEST_SCHEMA,
        id: id.to_owned(),
        kind,
        set: set.name.clone(),
        trigger,
        started_at: now,
        finished_at: Utc::now().max(now),
        host: crate::notify::hostname(),
        sources: set.paths.iter().map(|p| p.display().to_string()).collect(),
        file_count: archived.records.iter().filter(|r| r.kind == FileKind::File).count() as u64,
        total_bytes: archived.total_bytes,
        // self-contained unless some file's content is left in an earlier backup
        incremental: !holders.is_empty(),
        holders,
        outcome: if partial { "partial".into() } else { "success".into() },
        problems: archived.problems,
        warnings,
        files: archived.records,
        data: committed.object,
        targets: committed.targets,
        pgbackd_version: env!("CARGO_PKG_VERSION").to_owned(),
        encryption,
        mac: None,
    };
    if let Some(k) = mac_key {
        m.mac = Some(crate::crypto::mac(&k, &m.mac_input()));
    }
    let bytes = Bytes::from(serde_json::to_vec_pretty(&m)?);
    let manifest_key = format!("{}/{}", prefix(kind, &set.name, id), crate::repo::MANIFEST_FILE);
    for t in targets.iter().filter(|t| m.targets.iter().any(|n| n == t.name())) {
        t.store.put(&manifest_key, bytes.clone()).await.with_context(|| format!("writing {manifest_key}"))?;
    }
    Ok(m)
}

/// Every file backup of `set`, oldest first (from the first target that lists it).
pub async fn list(targets: &[Target], kind: SetKind, set: &str) -> Result<Vec<FileManifest>> {
    list_newest(targets, kind, set, usize::MAX).await
}

/// The newest `n` file backups of `set`, oldest first: only their manifests are read (ids start
/// with their UTC time, so they sort in time order).
pub async fn list_newest(targets: &[Target], kind: SetKind, set: &str, n: usize) -> Result<Vec<FileManifest>> {
    let mut out: Vec<FileManifest> = Vec::new();
    for t in targets {
        let objects = t.store.list(&format!("{}/{set}/", kind.prefix())).await?;
        let mut keys: Vec<&String> = objects
            .iter()
            .map(|o| &o.key)
            .filter(|k| k.ends_with(&format!("/{}", crate::repo::MANIFEST_FILE)))
            .collect();
        keys.sort();
        for key in keys.iter().rev().take(n) {
            if out.iter().any(|m| key.contains(&format!("/{}/", m.id))) {
                continue;
            }
            if let Some(bytes) = t.store.get(key).await? {
                let m: FileManifest =
                    serde_json::from_slice(&bytes).with_context(|| format!("reading {key} on {}", t.name()))?;
                if !out.iter().any(|x| x.id == m.id) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    let skip = out.len().saturating_sub(n);
    Ok(out.split_off(skip))
}

/// The store holding backup `m` whole (its data object at the recorded size).
pub async fn locate(targets: &[Target], m: &FileManifest) -> Result<Arc<dyn Store>> {
    let mut problems = Vec::new();
    for t in targets {
        match t.store.size(&m.data.key).await {
            Ok(Some(s)) if s == m.data.stored_bytes => return Ok(t.store.clone()),
            Ok(Some(s)) => problems.push(format!(
                "{}: {}",
                t.name(),
                crate::repo::size_problem(&m.data.key, s, m.data.stored_bytes)
            )),
            Ok(None) => problems.push(format!("{}: {} is missing", t.name(), m.data.key)),
            Err(e) => problems.push(format!("{}: {e:#}", t.name())),
        }
    }
    bail!("file backup {} of {} is not readable on any target ({})", m.id, m.set, problems.join("; "))
}

/// Checks an encrypted file backup's manifest MAC and returns what decrypts its data.
pub fn authenticate(repo: &crate::repo::Repository, m: &FileManifest) -> Result<Option<crate::pipeline::Decryption>> {
    let what = format!("file backup {} of {}", m.id, m.set);
    repo.check_manifest(&what, m.encryption.as_ref(), m.data.encrypted, m.mac.as_deref(), || m.mac_input())
}

/// Retention of one source set: the database plan (the kind's policy, `retention.file_backup`
/// or `config_backup`; a set without one keeps everything) plus a floor: every backup that
/// holds unchanged files of a kept backup is kept too. Applied manifest first, like backups.
pub async fn retention(
    config: &Config,
    repo: &crate::repo::Repository,
    kind: SetKind,
    set: &str,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<crate::jobs::retention::RetentionRun> {
    use crate::jobs::retention::{Candidate, RetentionRun, plan};
    let targets = targets(config, kind, repo)?;
    let mut run = RetentionRun {
        database: kind.target_name(set),
        at: now,
        dry_run,
        skipped: None,
        decisions: Vec::new(),
        applied: None,
    };
    let job = match kind {
        SetKind::Files => "file_backup",
        SetKind::Configs => "config_backup",
    };
    if config.retention.skip_after_failure {
        let attempts = crate::jobs::report::read_all(&config.reports.dir, job);
        if let Some(r) = attempts.iter().rfind(|r| r.database == set)
            && r.outcome == crate::jobs::report::Outcome::Failed
        {
            run.skipped = Some(format!(
                "the newest {job} of {set} (run {}) failed: retention is skipped so that no good backup is deleted \
                 while backups fail (retention.skip_after_failure)",
                r.run_id
            ));
            return Ok(run);
        }
    }
    let backups = list(&targets, kind, set).await?;
    let candidates: Vec<Candidate> = backups
        .iter()
        .map(|m| Candidate {
            id: m.id.clone(),
            kind: crate::repo::BackupKind::Full,
            started_at: m.started_at,
            stored_bytes: m.data.stored_bytes,
            base_id: None,
            deep_verified: false,
            in_use: false,
        })
        .collect();
    let policy = match kind {
        SetKind::Files => config.retention.file_backup.clone(),
        SetKind::Configs => config.retention.config_backup.clone(),
    };
    let rules = crate::config::Retention { full_backup: policy, incremental_backup: None, ..config.retention.clone() };
    run.decisions = plan(&candidates, &rules, config.timezone, now);
    // the floor: holders of kept backups' unchanged files
    let kept: Vec<String> = run.decisions.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect();
    for id in kept {
        let Some(m) = backups.iter().find(|m| m.id == id) else { continue };
        for h in &m.holders {
            if let Some(d) = run.decisions.iter_mut().find(|d| &d.id == h) {
                if !d.keep {
                    d.reasons.clear();
                }
                d.keep = true;
                d.reasons.push(format!("floor: holds unchanged files of kept backup {id}"));
            }
        }
    }
    for d in &mut run.decisions {
        if let Some(r) = d.reasons.iter_mut().find(|r| r.contains("full backups")) {
            *r = r.replace("full backups", &format!("{job}s"));
        }
    }
    if dry_run {
        return Ok(run);
    }
    let applied =
        crate::jobs::retention::delete_marked(&run.decisions, &targets, |id| format!("{}/", prefix(kind, set, id)))
            .await;
    run.applied = Some(applied);
    Ok(run)
}

/// Verifies the newest backup of a set (every backup with `all`): quick, every archive present
/// at its recorded size; deep, every frame and every file's SHA-256 read back (a dry-run
/// restore, which also reads the holders of an incremental's unchanged files).
pub async fn verify(
    config: &Config,
    repo: &crate::repo::Repository,
    kind: SetKind,
    set: &str,
    deep: bool,
    all: bool,
    cancel: &CancellationToken,
) -> Result<(Vec<String>, u64)> {
    let targets = targets(config, kind, repo)?;
    let backups = list(&targets, kind, set).await?;
    // no backup yet: nothing to verify (like a database without backups); freshness is the
    // backup job's to report
    let chosen: Vec<&FileManifest> = if all { backups.iter().collect() } else { backups.last().into_iter().collect() };
    let mut verified = Vec::new();
    let mut bytes = 0;
    for m in chosen {
        authenticate(repo, m)?;
        locate(&targets, m).await?;
        if deep {
            let req = restore::Request {
                to: PathBuf::from("/nonexistent"),
                globs: Vec::new(),
                dry_run: true,
                overwrite: false,
            };
            let r = restore::run(m, &backups, &targets, repo, &req, cancel).await?;
            bytes += r.bytes;
        }
        verified.push(m.id.clone());
    }
    Ok((verified, bytes))
}
