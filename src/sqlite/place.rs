//! Putting a file where a SQLite database is, keeping what was there: a restore with `--replace`
//! and `pgbackd rollback --sqlite`. The new file is written and checked beside the target first;
//! then the old database moves aside with the files SQLite keeps beside it (`-wal`, `-journal`:
//! an old WAL replayed into the new file would corrupt it), its `-shm` index is removed (SQLite
//! rebuilds it), the old file is hard-linked to its rollback name and the new one renamed over
//! the target in one step, so the target path never goes missing.

use super::with_suffix;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The files beside a database that belong to it and move with it.
const COMPANIONS: [&str; 2] = ["-wal", "-journal"];

/// What is at `target` now: the database file and any `-wal`, `-journal` or `-shm` beside it.
pub fn occupied(target: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-journal", "-shm"]
        .iter()
        .map(|s| with_suffix(target, s))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// `base`, or `base.2`, `base.3`... if a file of that name (or its `-wal`) exists.
pub fn free_name(base: &Path) -> PathBuf {
    let taken = |p: &Path| p.symlink_metadata().is_ok() || with_suffix(p, "-wal").symlink_metadata().is_ok();
    if !taken(base) {
        return base.to_owned();
    }
    (2..).map(|n| with_suffix(base, &format!(".{n}"))).find(|p| !taken(p)).expect("a free name")
}

/// Puts `new` (a checked file in `target`'s directory, with no `-wal` or `-journal` of its own) at
/// `target`. What was there is kept as `kept` (returned), its `-wal` and `-journal` beside it;
/// `None` when nothing but perhaps a `-shm` was there.
pub fn install(new: &Path, target: &Path, kept: &Path) -> Result<Option<PathBuf>> {
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let had = target.symlink_metadata().is_ok();
    let mut moved = false;
    for suffix in COMPANIONS {
        let from = with_suffix(target, suffix);
        if from.symlink_metadata().is_ok() {
            moved = true;
            let to = with_suffix(kept, suffix);
            std::fs::rename(&from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    let shm = with_suffix(target, "-shm");
    if let Err(e) = std::fs::remove_file(&shm)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e).with_context(|| format!("removing {}", shm.display()));
    }
    if had {
        // the old file stays at `target` until the rename replaces it
        if let Err(e) = std::fs::hard_link(target, kept) {
            tracing::debug!(error = %e, "no hard link; renaming the old file aside instead");
            std::fs::rename(target, kept)
                .with_context(|| format!("moving {} to {}", target.display(), kept.display()))?;
        }
    }
    std::fs::rename(new, target).with_context(|| format!("renaming {} to {}", new.display(), target.display()))?;
    sync_dir(dir)?;
    // a `-wal` or `-journal` left without its database is kept too (and said)
    Ok((had || moved).then(|| kept.to_owned()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// The rollback copies restores kept of `target` (`<file>.pre-<backup id>`), oldest first.
pub fn kept_copies(target: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.pre-");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && !["-wal", "-journal", "-shm"].iter().any(|s| n.ends_with(s)))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Folds a kept copy's `-wal` into it and rolls back a hot `-journal` (what SQLite does when it
/// reads the file), so it can move as one file. A `-journal` SQLite leaves after reading is not
/// hot (a transaction that never wrote to the file, cut off by a kill): it is removed.
fn settle(path: &Path) -> Result<()> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("opening {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let _: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .with_context(|| format!("reading {}", path.display()))?;
    c.pragma_update(None, "wal_checkpoint", "TRUNCATE").ok();
    c.close().map_err(|(_, e)| e).with_context(|| format!("closing {}", path.display()))?;
    let wal = with_suffix(path, "-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} still has {} with content after a checkpoint: a process has it open; stop it first",
            path.display(),
            wal.display()
        );
    }
    for suffix in COMPANIONS {
        std::fs::remove_file(with_suffix(path, suffix)).ok();
    }
    Ok(())
}

/// Swaps the kept copy `from` back in at `target`; the file swapped out is kept as `aside`.
pub fn rollback(target: &Path, from: &Path, aside: &Path) -> Result<Option<PathBuf>> {
    super::check_source(from).with_context(|| format!("the rollback copy {}", from.display()))?;
    settle(from)?;
    install(from, target, aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn rows(path: &Path) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        c.prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn install_keeps_the_old_database_with_its_wal_and_rollback_swaps_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        // the live database, in WAL mode with a committed row still in its -wal
        let live = Connection::open(&target).unwrap();
        live.execute_batch("PRAGMA journal_mode=wal; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('old');").unwrap();
        assert!(with_suffix(&target, "-wal").metadata().unwrap().len() > 0);
        std::mem::forget(live); // as a crashed process would leave it: -wal and -shm beside
        let new = dir.path().join(".app.db.restoring");
        let c = Connection::open(&new).unwrap();
        c.execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('restored');").unwrap();
        drop(c);
        let kept = free_name(&dir.path().join("app.db.pre-B1"));
        assert_eq!(install(&new, &target, &kept).unwrap(), Some(kept.clone()));
        assert_eq!(rows(&target), ["restored"]);
        assert!(!with_suffix(&target, "-shm").exists());
        // the kept copy still has its WAL: the row committed there is not lost
        assert_eq!(rows(&kept), ["old"]);
        assert_eq!(kept_copies(&target), std::slice::from_ref(&kept));
        // a second kept copy of the same backup gets its own name
        assert_eq!(free_name(&dir.path().join("app.db.pre-B1")), dir.path().join("app.db.pre-B1.2"));

        let aside = dir.path().join("app.db.rolled-back");
        assert_eq!(rollback(&target, &kept, &aside).unwrap(), Some(aside.clone()));
        assert_eq!(rows(&target), ["old"]);
        assert_eq!(rows(&aside), ["restored"]);
        assert!(!kept.exists());
    }

    #[test]
    fn a_kept_copy_with_a_journal_left_by_a_killed_writer_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        let c = Connection::open(&target).unwrap();
        c.execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('committed');").unwrap();
        drop(c);
        let kept = dir.path().join("app.db.pre-B");
        std::fs::copy(&target, &kept).unwrap();
        // a stale journal (a transaction killed before it wrote): not hot, only in the way
        std::fs::write(with_suffix(&kept, "-journal"), vec![0u8; 512]).unwrap();
        let aside = dir.path().join("app.db.rolled-back");
        rollback(&target, &kept, &aside).unwrap();
        assert_eq!(rows(&target), ["committed"]);
        assert!(!with_suffix(&target, "-journal").exists() && !with_suffix(&kept, "-journal").exists());
    }

    #[test]
    fn install_where_nothing_was() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("n");
        std::fs::write(&new, "x").unwrap();
        let target = dir.path().join("fresh.db");
        assert_eq!(install(&new, &target, &dir.path().join("k")).unwrap(), None);
        assert!(target.exists() && !dir.path().join("k").exists());
        assert_eq!(occupied(&target), std::slice::from_ref(&target));
    }
}
