//! Restoring a SQLite backup: the file rebuilt from its frames (an incremental's chain decoded
//! down to its full), every frame and the whole file's SHA-256 checked, then `PRAGMA
//! integrity_check`, `PRAGMA foreign_key_check` and the snapshot's row counts on the rebuilt file.
//! To a path, the file is written and checked beside the target before it takes the target's
//! place; an existing database is replaced only with `--replace`, and kept as the rollback copy
//! `<file>.pre-<backup id>` (see `crate::sqlite::place`).

use crate::jobs::context::JobContext;
use crate::jobs::refuse;
use crate::pipeline::{self, RawCheck};
use crate::repo::Manifest;
use crate::sqlite::{self, Checked, place};
use crate::storage::Store;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Where a SQLite backup is restored to.
#[derive(Debug, Clone)]
pub struct Request {
    pub to: PathBuf,
    /// Replace a database that is there (kept as the rollback copy).
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup_id: String,
    pub subject: String,
    pub path: String,
    pub bytes: u64,
    pub journal_mode: String,
    pub tables_checked: usize,
    /// The database that was at the path, kept for `pgbackd rollback --sqlite`.
    pub kept: Option<String>,
    /// Processes that had the replaced file open: they go on using the old file until restarted.
    pub in_use_by: Vec<u32>,
    pub duration_seconds: f64,
}

/// Rebuilds backup `m`'s file into the new file `into` from `store` (default: the first target
/// holding it), every frame and the whole file's SHA-256 checked, and checks the database.
pub async fn rebuild(ctx: &JobContext, m: &Manifest, store: Option<Arc<dyn Store>>, into: &Path) -> Result<Checked> {
    let snapshot = m.sqlite().with_context(|| format!("{} is not a SQLite backup", m.describe()))?.clone();
    let reader = ctx.repository.reader(m, store).await?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(into)
        .await
        .with_context(|| format!("creating {}", into.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    pipeline::restore_stream(&reader, &mut out, RawCheck::Sha256, &ctx.cancel, &ctx.progress).await?;
    out.flush().await?;
    let file = out.into_inner();
    file.sync_all().await.with_context(|| format!("syncing {}", into.display()))?;
    drop(file);
    let path = into.to_owned();
    tokio::task::spawn_blocking(move || sqlite::check(&path, &snapshot)).await.context("check thread")?
}

/// The refusal for a database (or the files SQLite keeps beside one) at `target`.
fn occupied_message(target: &Path, there: &[PathBuf], users: &[u32], m: &Manifest) -> String {
    let names: Vec<String> = there.iter().map(|p| p.display().to_string()).collect();
    let (verb, is) = if there.len() == 1 { ("exists", "is") } else { ("exist", "are") };
    let used = if users.is_empty() {
        String::new()
    } else {
        let pids: Vec<String> = users.iter().map(u32::to_string).collect();
        format!(" and {is} open in process {} (stop it first: it would go on using the replaced file)", pids.join(", "))
    };
    format!(
        "{} {verb}{used}: a restore never overwrites a database without --replace. With --replace the backup is \
         written and checked beside it first, then takes its place, and what is there now is kept as {}.pre-{} \
         (`pgbackd rollback --sqlite {}` swaps it back). Or restore to another --to path.",
        names.join(", "),
        target.display(),
        m.id,
        target.display()
    )
}

/// Restores backup `m` to `req.to` (see the module's doc).
pub async fn run(ctx: &JobContext, m: &Manifest, req: &Request) -> Result<Restored> {
    let started = std::time::Instant::now();
    let snapshot = m.sqlite().with_context(|| format!("{} is not a SQLite backup", m.describe()))?;
    let target = std::path::absolute(&req.to).with_context(|| format!("--to {}", req.to.display()))?;
    let Some(name) = target.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
        refuse!("--to {} names no file: give the database file's path", req.to.display());
    };
    let dir = target.parent().context("the target has no directory")?.to_owned();
    if !dir.is_dir() {
        refuse!("{} is not a directory: create it first, or give another --to", dir.display());
    }
    if target.is_dir() {
        refuse!(
            "{} is a directory: give the database file's path (e.g. {}/app.db)",
            target.display(),
            target.display()
        );
    }
    let there = place::occupied(&target);
    let users = sqlite::users(&target);
    if !there.is_empty() && !req.replace {
        refuse!("{}", occupied_message(&target, &there, &users, m));
    }
    let lock = ctx.read_lock(m, "SQLite restore").await?;
    // written beside the target (same filesystem: the rename is atomic), removed on any failure;
    // what a killed restore left there goes first
    let prefix = format!(".{name}.pgbackd-restore-");
    for p in sqlite::sweep(&dir, &prefix, ctx.config.retention.orphan_grace) {
        tracing::info!(path = %p.display(), "removed the file of an interrupted restore");
    }
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {} (pgbackd needs write access there)", dir.display()))?
        .into_temp_path();
    let rebuilt = rebuild(ctx, m, None, &tmp).await;
    lock.release().await;
    let checked = rebuilt?;
    if !checked.ok() {
        bail!(
            "the file rebuilt from {} fails its checks ({}): nothing was changed at {}",
            m.describe(),
            checked.summary(),
            target.display()
        );
    }
    // the replaced file's owner and mode, so the application can open the new one
    if let Ok(old) = std::fs::metadata(&target) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
        if let Err(e) = std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid())) {
            tracing::warn!(error = %e, "the restored file keeps pgbackd's owner, not the replaced file's");
        }
    }
    let users = sqlite::users(&target);
    if !users.is_empty() {
        tracing::warn!(pids = ?users, path = %target.display(), "the replaced database is open in other processes: restart them");
    }
    let kept_as = place::free_name(&sqlite::with_suffix(&target, &format!(".pre-{}", m.id)));
    let (from, to) = (tmp.to_path_buf(), target.clone());
    let kept = tokio::task::spawn_blocking(move || place::install(&from, &to, &kept_as))
        .await
        .context("install thread")?
        .map_err(|e| anyhow!(e).context(format!("putting the restored file at {}", target.display())))?;
    // renamed: nothing to remove any more
    tmp.keep().ok();
    let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or_default();
    tracing::info!(backup_id = %m.id, path = %target.display(), kept = ?kept, "SQLite database restored");
    Ok(Restored {
        backup_id: m.id.clone(),
        subject: m.subject.to_string(),
        path: target.display().to_string(),
        bytes,
        journal_mode: snapshot.journal_mode.clone(),
        tables_checked: checked.tables_checked,
        kept: kept.map(|k| k.display().to_string()),
        in_use_by: users,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}
