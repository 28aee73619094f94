//! Verification: prove a stored backup is whole and readable, on every target that holds it.
//!
//! Quick: the manifest parses with a known schema version, and every object it references is on
//! the target with its recorded size; content is not read. Deep: every stored byte is read back;
//! each frame's SHA-256, the whole stored object's and the raw stream's SHA-256 are checked (for an
//! encrypted backup: the manifest's authentication code, and every age chunk's tag), every
//! zstd frame is decoded, and the archive is read whole by `pg_restore -f /dev/null`, which
//! parses every TOC entry and data block (a dump truncated at 60 % passes `pg_restore --list` but
//! not this). Results are recorded beside the manifest (`annotations.json`).

use crate::config::{Config, VerifyMode};
use crate::jobs::backup::KILL_GRACE;
use crate::jobs::restore::describe_backup;
use crate::pg::Tools;
use crate::pipeline::{self, Counter, RawCheck};
use crate::process::{ChildSpec, Running};
use crate::repo::manifest::{TargetCheck, VerificationRecord};
use crate::repo::{Listed, Repository};
use crate::storage::Store;
use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use serde::Serialize;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

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
    pub database: String,
    pub mode: &'static str,
    pub ok: bool,
    pub targets: Vec<TargetOutcome>,
    pub duration_seconds: f64,
}

pub fn mode_name(mode: VerifyMode) -> &'static str {
    match mode {
        VerifyMode::Quick => "quick",
        VerifyMode::Deep => "deep",
    }
}

/// Verifies one backup on every target holding it and records the result.
pub async fn verify(
    listed: &Listed,
    mode: VerifyMode,
    config: &Config,
    repo: &Repository,
    cancel: &CancellationToken,
    progress: &Arc<Counter>,
) -> Verified {
    let started = std::time::Instant::now();
    let m = &listed.manifest;
    let what = describe_backup(m);
    let tools = Tools::locate(config.pg_bin_dir.as_deref());
    let mut targets = Vec::new();
    // every target the backup was written to: a missing copy is a failure too
    let mut names: Vec<String> = m.targets.clone();
    for t in &listed.targets {
        if !names.contains(t) {
            names.push(t.clone());
        }
    }
    for name in names {
        let Some(target) = repo.targets().iter().find(|t| t.name() == name) else {
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
            VerifyMode::Quick => quick(&target.store, listed, &where_, repo).await.map(|()| 0),
            VerifyMode::Deep => deep(&target.store, listed, &where_, repo, &tools, cancel, progress).await,
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
        database: m.database.clone(),
        mode: mode_name(mode),
        ok,
        targets,
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    if !cancel.is_cancelled() {
        let record = VerificationRecord {
            verified_at: Utc::now(),
            mode: verified.mode.to_owned(),
            outcome: if ok { "passed" } else { "failed" }.to_owned(),
            targets: verified
                .targets
                .iter()
                .map(|t| TargetCheck {
                    target: t.target.clone(),
                    outcome: if t.ok { "passed" } else { "failed" }.to_owned(),
                    error: t.error.clone(),
                })
                .collect(),
        };
        if let Err(e) = repo.annotate(m, |a| a.verification = Some(record.clone())).await {
            tracing::warn!(backup_id = %m.id, error = %format!("{e:#}"), "could not record the verification result");
        }
    }
    if ok {
        tracing::info!(backup_id = %m.id, mode = verified.mode, duration_s = format!("{:.1}", verified.duration_seconds), "backup verified");
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

/// Quick: the manifest (authenticated, for an encrypted backup, where an identity is configured)
/// and the size of every object.
async fn quick(store: &Arc<dyn Store>, listed: &Listed, what: &str, repo: &Repository) -> Result<()> {
    let m = &listed.manifest;
    let key = crate::repo::manifest_key(&m.database, &m.id);
    let bytes = store.get(&key).await?.with_context(|| format!("{what}: the manifest is missing"))?;
    let on_target = crate::repo::Manifest::parse(&bytes, &key)?;
    if on_target.encryption.is_some() && repo.crypto().is_some_and(|c| c.can_decrypt()) {
        repo.authenticate(&on_target).with_context(|| format!("on target {}", store.name()))?;
    }
    check_size(store, &m.data.key, m.data.stored_bytes, what).await?;
    if let Some(g) = &m.globals {
        check_size(store, &g.key, g.stored_bytes, what).await?;
    }
    Ok(())
}

async fn deep(
    store: &Arc<dyn Store>,
    listed: &Listed,
    what: &str,
    repo: &Repository,
    tools: &Tools,
    cancel: &CancellationToken,
    progress: &Arc<Counter>,
) -> Result<u64> {
    quick(store, listed, what, repo).await?;
    let m = &listed.manifest;
    let decryption = repo.authenticate(m)?;
    if let Some(g) = &m.globals {
        pipeline::read_small_object(store, g, what, decryption.as_ref()).await?;
    }
    // pg_restore reads the whole archive and writes the SQL it would run to /dev/null
    let spec = ChildSpec::new(tools.path("pg_restore")).arg("--file=/dev/null").stdin(true).stdout(false);
    let mut child = Running::spawn(&spec)?;
    let mut stdin = child.take_stdin().context("pg_restore has no stdin")?;
    let reader = repo.reader(m, Some(store.clone())).await?;
    let streamed = pipeline::restore_stream(&reader, &mut stdin, RawCheck::Sha256, cancel, progress).await;
    let _ = stdin.shutdown().await;
    drop(stdin);
    match streamed {
        Ok(()) => {
            child
                .wait()
                .await
                .map_err(|e| anyhow!(e).context(format!("{what}: pg_restore cannot read the archive")))?;
            Ok(m.data.stored_bytes + m.globals.as_ref().map(|g| g.stored_bytes).unwrap_or(0))
        }
        Err(e) => {
            let _ = child.terminate(KILL_GRACE).await;
            Err(e)
        }
    }
}
