//! Verification: prove a stored backup is whole and readable, on every target that holds it.
//!
//! Quick: the manifest parses with a known schema version, every object it references is on
//! the target with its recorded size, and an incremental's chain down to its full is there and
//! readable; content is not read. Deep: every stored byte is read back; each frame's SHA-256, the
//! whole stored object's and the raw stream's SHA-256 are checked (for an encrypted backup: the
//! manifest's authentication code, and every age chunk's tag), every zstd frame is decoded (an
//! incremental's through its chain), and the archive is read whole by `pg_restore -f /dev/null`,
//! which parses every TOC entry and data block (a dump truncated at 60 % passes `pg_restore
//! --list` but not this). Results are recorded beside the manifest (`annotations.json`).

use super::context::JobContext;
use super::context::Select;
use crate::config::{VerifyMode, VerifyScope};
use crate::pg::Tools;
use crate::pipeline::{self, RawCheck};
use crate::process::ChildSpec;
use crate::repo::manifest::{CheckOutcome, Content, TargetCheck, VerificationRecord};
use crate::repo::{Listed, Repository, Subject};
use crate::storage::Store;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct TargetOutcome {
    pub target: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Stored bytes read back (0 for quick checks).
    pub bytes_read: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub backup_id: String,
    /// The subject (`app`, `files:uploads`).
    pub database: String,
    pub subject: Subject,
    pub mode: VerifyMode,
    pub ok: bool,
    pub targets: Vec<TargetOutcome>,
    pub duration_seconds: f64,
}

/// What a verification run found: each backup's result, and the unfinished writes (of processes
/// stopped mid-write) under the subject, which the next backup or retention removes once they
/// are older than `retention.orphan_grace`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub backups: Vec<Verified>,
    pub leftovers: Vec<crate::repo::Leftover>,
    /// For a cluster: its WAL archive, from the oldest kept base backup's start to the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::check::WalVerification>,
}

impl Verification {
    /// What failed, one line per backup or WAL archive target (empty when all passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .backups
            .iter()
            .filter(|v| !v.ok)
            .map(|v| {
                let why: Vec<String> =
                    v.targets.iter().filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target))).collect();
                let why = if why.is_empty() { "no target holds the backup".to_owned() } else { why.join("; ") };
                format!("{}: {why}", v.backup_id)
            })
            .collect();
        if let Some(w) = self.wal.as_ref().filter(|w| !w.ok()) {
            out.extend(w.failures().into_iter().map(|f| format!("WAL archive: {f}")));
        }
        out
    }
}

/// Verifies the backups of `subject` that `select` picks (by default `verification.scope`).
pub async fn run(ctx: &JobContext, subject: &Subject, select: &Select, mode: VerifyMode) -> Result<Verification> {
    let listing = ctx.repository.listing(Some(subject)).await?;
    run_listed(ctx, subject, &listing, select, mode).await
}

/// [`run`] on a listing already made.
async fn run_listed(
    ctx: &JobContext,
    subject: &Subject,
    listing: &crate::repo::Listing,
    select: &Select,
    mode: VerifyMode,
) -> Result<Verification> {
    let repo = &ctx.repository;
    let listed = &listing.backups;
    // a damaged manifest is a failed verification, whatever was asked for
    let mut out: Vec<Verified> = listing
        .damaged
        .iter()
        .filter(|d| match select {
            Select::Id(id) => &d.id == id,
            _ => true,
        })
        .map(|d| damaged(d, mode))
        .collect();
    let chosen: Vec<&Listed> = match select {
        Select::Id(id) => match listed.iter().find(|l| &l.manifest.id == id) {
            Some(l) => vec![l],
            None if !out.is_empty() => Vec::new(),
            None => {
                repo.find_in(Some(subject), id).await?;
                bail!("backup {id} is not readable on any target")
            }
        },
        Select::Latest => listed.last().into_iter().collect(),
        Select::All => listed.iter().collect(),
        Select::Configured => match ctx.config.verification.scope {
            VerifyScope::All => listed.iter().collect(),
            VerifyScope::Latest => listed.last().into_iter().collect(),
            VerifyScope::Unverified => listed.iter().filter(|l| l.annotations.verification.is_none()).collect(),
        },
    };
    let manifests: Vec<crate::repo::Manifest> = chosen.iter().map(|l| l.manifest.clone()).collect();
    let lock =
        if manifests.is_empty() { None } else { Some(ctx.read_lock_all(subject, &manifests, "verification").await?) };
    for l in chosen {
        if ctx.cancel.is_cancelled() {
            break;
        }
        out.push(verify(ctx, l, mode).await);
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
    if ctx.cancel.is_cancelled() {
        bail!("cancelled after {} of the backups were verified", out.len());
    }
    let (leftovers, problems) = repo.leftovers(subject).await;
    for p in problems {
        tracing::debug!(problem = %p, "cannot list the unfinished writes of a target");
    }
    Ok(Verification { backups: out, leftovers, wal: None })
}

/// Verifies a cluster: its base backups that `select` picks (none with `wal_only`), then its
/// WAL archive on every target, from the start of the oldest base backup to the newest segment.
pub async fn cluster(
    ctx: &JobContext,
    name: &str,
    select: &Select,
    mode: VerifyMode,
    wal_only: bool,
) -> Result<Verification> {
    let subject = Subject::Cluster(name.to_owned());
    let repo = &ctx.repository;
    let listing = repo.listing(Some(&subject)).await?;
    let mut v = if wal_only {
        Verification { backups: Vec::new(), leftovers: Vec::new(), wal: None }
    } else {
        run_listed(ctx, &subject, &listing, select, mode).await?
    };
    // the WAL the base backups need is checked under their read locks, as any reader: retention
    // keeps a base backup that is read, and with it the WAL from its start
    let bases: Vec<crate::repo::Manifest> = listing.backups.into_iter().map(|l| l.manifest).collect();
    let lock =
        if bases.is_empty() { None } else { Some(ctx.read_lock_all(&subject, &bases, "WAL verification").await?) };
    // listed again under the lock: a base backup retention deleted in between needs nothing
    let held: Vec<crate::repo::Manifest> = match &lock {
        Some(_) => {
            let now = repo.listing(Some(&subject)).await?;
            now.backups.into_iter().map(|l| l.manifest).filter(|m| bases.iter().any(|b| b.id == m.id)).collect()
        }
        None => Vec::new(),
    };
    let starts = wal_needs(&held);
    v.wal =
        Some(crate::wal::check::verify(name, repo.targets(), repo.crypto().cloned(), mode, &starts, &ctx.cancel).await);
    if let Some(lock) = lock {
        lock.release().await;
    }
    Ok(v)
}

/// What the base backups need of each archive (oldest start, newest end).
fn wal_needs(bases: &[crate::repo::Manifest]) -> crate::wal::check::Starts {
    use crate::wal::names::SegmentName;
    let mut out = crate::wal::check::Starts::new();
    for m in bases {
        let Some(b) = m.base_backup() else { continue };
        let (Some(from), Some(to)) = (SegmentName::parse(&b.start_wal), SegmentName::parse(&b.stop_wal)) else {
            continue;
        };
        let size = b.wal_segment_size;
        out.entry(b.system_identifier)
            .and_modify(|n| {
                if from.number(size) < n.from.number(size) {
                    n.from = from;
                    n.backup = m.id.clone();
                }
                if to.number(size) > n.to.number(size) {
                    n.to = to;
                }
            })
            .or_insert(crate::wal::check::Need { from, backup: m.id.clone(), to });
    }
    out
}

/// The failed verification of a damaged manifest (nothing else of it can be checked).
fn damaged(d: &crate::repo::Damaged, mode: VerifyMode) -> Verified {
    Verified {
        backup_id: d.id.clone(),
        database: d.subject.to_string(),
        subject: d.subject.clone(),
        mode,
        ok: false,
        targets: vec![TargetOutcome {
            target: d.target.clone(),
            ok: false,
            error: Some(format!("the manifest cannot be trusted: {}", d.problem)),
            bytes_read: 0,
        }],
        duration_seconds: 0.0,
    }
}

/// Verifies one backup on every target holding it and records the result.
pub async fn verify(ctx: &JobContext, listed: &Listed, mode: VerifyMode) -> Verified {
    let (repo, cancel) = (&*ctx.repository, &ctx.cancel);
    let started = std::time::Instant::now();
    let m = &listed.manifest;
    let what = m.describe();
    let tools = Tools::locate(ctx.config.pg_bin_dir.as_deref());
    let mut targets = Vec::new();
    // an incremental restores only with every backup of its chain, down to its full, wherever
    // each is held: the same answer for every target of this one, found once
    let chain = chain_problem(repo, m).await;
    // every target the backup was written to: a missing copy is a failure too
    let mut names: Vec<String> = m.targets.clone();
    for t in &listed.targets {
        if !names.contains(t) {
            names.push(t.clone());
        }
    }
    for name in names {
        let Some(store) = repo.store_named(m, &name) else {
            targets.push(TargetOutcome {
                target: name.clone(),
                ok: false,
                error: Some(format!("target {name} is not configured any more: cannot check its copy")),
                bytes_read: 0,
            });
            continue;
        };
        let where_ = format!("{what} on target {name}");
        let result = match mode {
            VerifyMode::Quick => quick(&store, listed, &where_, repo, chain.as_deref()).await.map(|()| 0),
            VerifyMode::Deep => deep(ctx, &store, listed, &where_, &tools, chain.as_deref()).await,
        };
        targets.push(match result {
            Ok(bytes_read) => TargetOutcome { target: name, ok: true, error: None, bytes_read },
            Err(e) => {
                tracing::error!(backup_id = %m.id, target_name = %name, error = %format!("{e:#}"), "verification failed");
                TargetOutcome { target: name, ok: false, error: Some(format!("{e:#}")), bytes_read: 0 }
            }
        });
    }
    let ok = !targets.is_empty() && targets.iter().all(|t| t.ok);
    let verified = Verified {
        backup_id: m.id.clone(),
        database: m.subject.to_string(),
        subject: m.subject.clone(),
        mode,
        ok,
        targets,
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    if !cancel.is_cancelled() {
        let record = VerificationRecord {
            verified_at: ctx.now(),
            mode,
            outcome: CheckOutcome::of(ok),
            targets: verified
                .targets
                .iter()
                .map(|t| TargetCheck {
                    target: t.target.clone(),
                    outcome: CheckOutcome::of(t.ok),
                    error: t.error.clone(),
                })
                .collect(),
        };
        if let Err(e) = repo.annotate(m, |a| a.verification = Some(record.clone())).await {
            tracing::warn!(backup_id = %m.id, error = %format!("{e:#}"), "could not record the verification result");
        }
    }
    if ok {
        tracing::info!(backup_id = %m.id, mode = mode.name(), duration_s = format!("{:.1}", verified.duration_seconds), "backup verified");
    }
    verified
}

async fn check_size(store: &Arc<dyn Store>, key: &str, expected: u64, what: &str) -> Result<()> {
    match store.size(key).await.with_context(|| format!("{what}: checking {key}"))? {
        Some(size) if size == expected => Ok(()),
        Some(size) => bail!("{what}: {}", crate::repo::size_problem(key, size, expected)),
        None => bail!("{what}: {key} is missing"),
    }
}

/// Why an incremental's chain cannot be read (a link missing, damaged, or on no target with its
/// recorded size), if it cannot.
async fn chain_problem(repo: &Repository, m: &crate::repo::Manifest) -> Option<String> {
    let links = async {
        for b in repo.chain(m).await? {
            repo.locate(&b)
                .await
                .with_context(|| format!("{} is a delta against it (down its chain)", m.describe()))?;
        }
        anyhow::Ok(())
    };
    links.await.err().map(|e| format!("{e:#}"))
}

/// Quick: the manifest (authenticated, for an encrypted backup, where an identity is configured),
/// the size of every object, and the chain under an incremental (`chain`: why it cannot be read).
async fn quick(
    store: &Arc<dyn Store>,
    listed: &Listed,
    what: &str,
    repo: &Repository,
    chain: Option<&str>,
) -> Result<()> {
    let m = &listed.manifest;
    // this target's own copy of the manifest, against its own digest
    let digests: Vec<String> = store
        .list(&crate::repo::keys::backup_dir(&m.subject, &m.id))
        .await?
        .iter()
        .filter_map(|o| o.key.rsplit('/').next().and_then(crate::repo::keys::digest_in).map(str::to_owned))
        .collect();
    let on_target = crate::repo::read_manifest_from(store, &m.subject, &m.id, &digests)
        .await?
        .with_context(|| format!("{what}: the manifest is missing"))?;
    if on_target != *m {
        bail!("{what}: this target's manifest differs from the one listed: the copies were edited");
    }
    if on_target.encryption.is_some() && repo.crypto().is_some_and(|c| c.can_decrypt()) {
        repo.authenticate(&on_target).with_context(|| format!("on target {}", store.name()))?;
    }
    for o in m.objects() {
        check_size(store, &o.key, o.stored_bytes, what).await?;
    }
    if let Some(problem) = chain {
        bail!("{problem}");
    }
    Ok(())
}

/// Deep: quick, then every stored byte read back and decoded, and the content proven whole: a
/// dump's archive read by `pg_restore -f /dev/null`, a file backup's every file checked against
/// its SHA-256 (a dry-run restore, which reads the holders of unchanged files too).
async fn deep(
    ctx: &JobContext,
    store: &Arc<dyn Store>,
    listed: &Listed,
    what: &str,
    tools: &Tools,
    chain: Option<&str>,
) -> Result<u64> {
    let repo = &ctx.repository;
    quick(store, listed, what, repo, chain).await?;
    let m = &listed.manifest;
    let decryption = repo.authenticate(m)?;
    match &m.content {
        Content::Dump(d) => {
            if let Some(g) = &d.globals {
                pipeline::read_small_object(store, g, what, decryption.as_ref()).await?;
            }
            // pg_restore reads the whole archive and writes the SQL it would run to /dev/null
            let spec = ChildSpec::new(tools.path("pg_restore")).arg("--file=/dev/null");
            let reader = repo.reader(m, Some(store.clone())).await?;
            super::restore::stream_into(&spec, &reader, RawCheck::Sha256, None, &ctx.cancel, &ctx.progress)
                .await
                .map_err(|e| anyhow!(e).context(format!("{what}: pg_restore cannot read the archive")))?;
        }
        Content::Base(b) => base_backup(ctx, store, listed, b, what, tools, decryption.as_ref()).await?,
        Content::Sqlite(_) => {
            let scratch = tempfile::Builder::new()
                .prefix("pgbackd-verify-")
                .tempdir()
                .context("creating a scratch directory for the SQLite file (in $TMPDIR)")?;
            let checked =
                super::restore::sqlite::rebuild(ctx, m, Some(store.clone()), &scratch.path().join("rebuilt.db"))
                    .await?;
            if !checked.ok() {
                bail!("{what}: the rebuilt file fails its checks: {}", checked.summary());
            }
        }
        Content::Files(_) => {
            let req = crate::fileset::restore::Request {
                to: std::path::PathBuf::from("/nonexistent"),
                globs: Vec::new(),
                dry_run: true,
                overwrite: false,
            };
            super::restore::files_from(ctx, m, &req, Some(store.clone())).await?;
        }
    }
    Ok(m.stored_bytes())
}

/// Deep, for a base backup: the tar extracted to a scratch directory (in `$TMPDIR`), the WAL it
/// needs fetched from the archive into its `pg_wal`, and `pg_verifybackup` run against
/// PostgreSQL's own manifest: every file's size and SHA-256, and the WAL from the backup's start to
/// its end parsed by `pg_waldump`. The manifest stored beside the tar must be the one inside it.
async fn base_backup(
    ctx: &JobContext,
    store: &Arc<dyn Store>,
    listed: &Listed,
    b: &crate::repo::manifest::BaseBackup,
    what: &str,
    tools: &Tools,
    decryption: Option<&pipeline::Decryption>,
) -> Result<()> {
    let m = &listed.manifest;
    let beside = pipeline::read_small_object(store, &b.backup_manifest, what, decryption).await?;
    let scratch = tempfile::Builder::new()
        .prefix("pgbackd-verify-")
        .tempdir()
        .context("creating a scratch directory for the base backup (in $TMPDIR)")?;
    let dir = scratch.path().to_owned();
    let tar = ChildSpec::new("tar").args(["--extract", "--file=-", "--no-same-owner", "--directory"]).arg(&dir);
    let reader = ctx.repository.reader(m, Some(store.clone())).await?;
    super::restore::stream_into(&tar, &reader, RawCheck::Sha256, None, &ctx.cancel, &ctx.progress)
        .await
        .map_err(|e| anyhow!(e).context("the data directory's tar archive does not extract"))?;
    // each tablespace where the data directory's pg_tblspc link would point
    for t in &b.tablespaces {
        let into = dir.join("pg_tblspc").join(t.oid.to_string());
        tokio::fs::create_dir_all(&into).await?;
        let tar = ChildSpec::new("tar").args(["--extract", "--file=-", "--no-same-owner", "--directory"]).arg(&into);
        let ts_what = format!("{what}, tablespace {} ({})", t.name, t.oid);
        let reader = crate::pipeline::ObjectReader::new(store.clone(), t.data.clone(), &ts_what, decryption.cloned())?;
        super::restore::stream_into(&tar, &reader, RawCheck::Sha256, None, &ctx.cancel, &ctx.progress)
            .await
            .map_err(|e| anyhow!(e).context(format!("the tar archive of tablespace {} does not extract", t.name)))?;
    }
    match tokio::fs::read(dir.join("backup_manifest")).await {
        Ok(inside) if inside != beside => {
            bail!("{what}: the backup_manifest stored beside the archive differs from the one inside it")
        }
        Ok(_) => {}
        // with tablespaces pg_basebackup writes it beside the tars only
        Err(_) if !b.tablespaces.is_empty() => tokio::fs::write(dir.join("backup_manifest"), &beside).await?,
        Err(e) => return Err(anyhow!(e).context(format!("{what}: the tar archive holds no backup_manifest"))),
    }
    // the WAL from the backup's start to its end, on each timeline it spans
    let archive = crate::wal::open(&ctx.config, &ctx.repository, b.system_identifier)
        .with_context(|| format!("{what}: checking its WAL"))?;
    let wal_dir = dir.join("pg_wal");
    tokio::fs::create_dir_all(&wal_dir).await?;
    let size = b.wal_segment_size;
    for r in &b.wal_ranges {
        use crate::wal::names::{SegmentName, WalFile};
        let mut seg = SegmentName::containing(r.timeline, r.start_lsn.0.0, size);
        let last = SegmentName::containing(r.timeline, r.end_lsn.0.0.saturating_sub(1).max(r.start_lsn.0.0), size);
        loop {
            let raw = archive
                .get(WalFile::Segment(seg))
                .await?
                .with_context(|| format!("{what}: WAL segment {seg}, which the backup needs, is not in the archive"))?;
            tokio::fs::write(wal_dir.join(seg.to_string()), &raw).await?;
            if seg >= last {
                break;
            }
            seg = seg.next(size);
        }
    }
    let spec =
        ChildSpec::new(tools.path("pg_verifybackup")).arg("--quiet").arg("--wal-directory").arg(&wal_dir).arg(&dir);
    crate::process::run_capture(&spec, 1 << 20)
        .await
        .map_err(|e| anyhow!(e).context(format!("{what}: pg_verifybackup found the backup damaged")))?;
    Ok(())
}
