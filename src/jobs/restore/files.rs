//! Restoring a file backup into a directory: the backups holding its unchanged files are read
//! too, oldest first; the tar domain itself is `fileset::restore`.

use crate::jobs::context::JobContext;
use crate::repo::Manifest;
use crate::storage::Store;
use anyhow::{Context, Result};
use std::sync::Arc;

/// Restores file backup `m` into a directory: the holders of its unchanged files are read too
/// (oldest first), every frame of every archive checked before anything is written.
pub async fn files(
    ctx: &JobContext,
    m: &Manifest,
    req: &crate::fileset::restore::Request,
) -> Result<crate::fileset::restore::Restored> {
    let lock = ctx.read_lock(m, "file restore").await?;
    let restored = files_from(ctx, m, req, None).await;
    lock.release().await;
    restored
}

/// [`files`], reading `m`'s own archive from `store` (default: the first target holding it).
pub async fn files_from(
    ctx: &JobContext,
    m: &Manifest,
    req: &crate::fileset::restore::Request,
    store: Option<Arc<dyn Store>>,
) -> Result<crate::fileset::restore::Restored> {
    let repo = &ctx.repository;
    let what = m.describe();
    let set = m.file_set().with_context(|| format!("{what} is not a file backup"))?;
    let mut chain = Vec::new();
    for h in &m.depends_on {
        let holder = repo.find_in(Some(&m.subject), h).await.with_context(|| {
            format!("{what}: backup {h}, which holds some of its unchanged files, is gone: restore another backup")
        })?;
        chain.push(holder);
    }
    chain.sort_by_key(|b| b.started_at);
    let mut archives = Vec::new();
    for b in &chain {
        archives.push(crate::fileset::restore::Archive {
            backup_id: b.id.clone(),
            what: b.describe(),
            reader: repo.reader(b, None).await?,
        });
    }
    archives.push(crate::fileset::restore::Archive {
        backup_id: m.id.clone(),
        what: what.clone(),
        reader: repo.reader(m, store).await?,
    });
    crate::fileset::restore::run(&m.id, &what, &set.files, archives, req, &ctx.cancel).await
}
