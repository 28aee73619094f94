//! Restoring a file backup into a directory: every stored frame is checked first, then the tar
//! stream is unpacked with each file's SHA-256 checked against the manifest as it is written,
//! modes, mtimes (and owners, as root) set, symlinks and hard links recreated, runs of zeros
//! left as holes. Refuses a non-empty directory unless told to overwrite.

use super::{FileKind, FileRecord};
use crate::pipeline::{Counter, ObjectReader, RawCheck};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Request {
    pub to: PathBuf,
    /// Only paths matching one of these globs (and the directories above them).
    pub globs: Vec<String>,
    pub dry_run: bool,
    pub overwrite: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Restored {
    pub backup_id: String,
    pub to: String,
    pub dry_run: bool,
    pub files: u64,
    pub bytes: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Every file whose content was checked against its SHA-256.
    pub checked: u64,
    pub written: Vec<String>,
}

/// A path from the archive as a relative path below the target; `..` and absolute components
/// are refused (a crafted archive must not write outside the target).
fn safe_relative(name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => bail!("refusing the archive path {}: it leaves the target directory", name.display()),
        }
    }
    Ok(out)
}

/// Refuses to write below a symlink inside the target: an archive holding `a -> /etc` and then
/// `a/passwd` must not write outside it.
fn no_symlink_between(to: &Path, rel: &Path) -> Result<()> {
    let mut p = to.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "refusing to write {}: {} is a symlink (it could lead outside the target)",
                rel.display(),
                p.display()
            );
        }
    }
    Ok(())
}

/// Writes `r` to `f`, leaving runs of 64 KiB of zeros as holes; returns the bytes and SHA-256.
fn write_sparse(r: &mut impl Read, f: &mut std::fs::File, sha: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = r.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if n == buf.len() && buf.iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    f.set_len(total)?;
    Ok(total)
}

fn set_times(path: &Path, rec: &FileRecord, symlink: bool) -> std::io::Result<()> {
    let t = filetime::FileTime::from_unix_time(rec.mtime, rec.mtime_nsec);
    if symlink { filetime::set_symlink_file_times(path, t, t) } else { filetime::set_file_times(path, t, t) }
}

fn set_owner(path: &Path, rec: &FileRecord) {
    // only root can give files away; others keep their own ownership
    if rustix::process::geteuid().is_root() {
        let _ = std::os::unix::fs::lchown(path, Some(rec.uid), Some(rec.gid));
    }
}

/// Unpacks one or more archives of a backup (the holders of its unchanged files first, its own
/// last) below `req.to`, checking every file against the backup's manifest.
struct Unpacker {
    /// The backup being restored (its own archive holds its changed files).
    backup_id: String,
    /// Every path it holds, as its manifest lists them.
    files: Vec<FileRecord>,
    req: Request,
    globs: globset::GlobSet,
    records: HashMap<String, FileRecord>,
    out: Restored,
    dirs: Vec<(PathBuf, FileRecord)>,
    seen: std::collections::HashSet<String>,
}

impl Unpacker {
    fn new(backup_id: &str, files: &[FileRecord], req: &Request) -> Result<Unpacker> {
        let mut b = globset::GlobSetBuilder::new();
        for g in &req.globs {
            b.add(globset::Glob::new(g).with_context(|| format!("--path {g:?} is not a valid glob"))?);
        }
        Ok(Unpacker {
            backup_id: backup_id.to_owned(),
            files: files.to_vec(),
            req: req.clone(),
            globs: b.build()?,
            records: files.iter().map(|r| (r.path.clone(), r.clone())).collect(),
            out: Restored {
                backup_id: backup_id.to_owned(),
                to: req.to.display().to_string(),
                dry_run: req.dry_run,
                ..Default::default()
            },
            dirs: Vec::new(),
            seen: Default::default(),
        })
    }

    fn wanted(&self, name: &str) -> bool {
        self.req.globs.is_empty() || self.globs.is_match(name) || self.globs.is_match(format!("/{name}"))
    }

    /// One archive: the backup's own (`holder` = its id), or an earlier one holding some of its
    /// unchanged files (only those are taken from it).
    fn archive(&mut self, input: impl Read, holder: &str, what: &str) -> Result<()> {
        let own = holder == self.backup_id;
        let req = self.req.clone();
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().with_context(|| format!("{what}: reading the archive"))? {
            let mut entry = entry.with_context(|| format!("{what}: reading the archive"))?;
            let name = entry
                .path()
                .with_context(|| format!("{what}: an entry's name"))?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let rel = safe_relative(Path::new(&name))?;
            let rec = match self.records.get(&name) {
                Some(r) if own || r.stored_in.as_deref() == Some(holder) => r.clone(),
                // an earlier backup's file that changed or went since: not this backup's
                _ if !own => continue,
                _ => {
                    bail!("{what}: the archive holds {name}, which the manifest does not list: the backup was modified")
                }
            };
            if own && rec.stored_in.is_some() {
                continue;
            }
            self.seen.insert(name.clone());
            if !req.dry_run {
                no_symlink_between(&req.to, &rel)?;
            }
            let dest = req.to.join(&rel);
            let wanted = self.wanted(&name);
            match rec.kind {
                // directories: made as they come (or as parents of what matches --path); their
                // modes and times are set at the end
                FileKind::Dir if !req.dry_run && wanted => {
                    std::fs::create_dir_all(&dest)
                        .map_err(|e| crate::storage::local::fs_error(format!("creating {}", dest.display()), e))?;
                    self.dirs.push((dest, rec.clone()));
                    self.out.directories += 1;
                }
                FileKind::File => {
                    let mut sha = Sha256::new();
                    let bytes = if req.dry_run || !wanted {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut n = 0u64;
                        loop {
                            let k = entry.read(&mut buf)?;
                            if k == 0 {
                                break;
                            }
                            sha.update(&buf[..k]);
                            n += k as u64;
                        }
                        n
                    } else {
                        if let Some(parent) = dest.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| {
                                crate::storage::local::fs_error(format!("creating {}", parent.display()), e)
                            })?;
                        }
                        if req.overwrite && dest.symlink_metadata().is_ok() {
                            std::fs::remove_file(&dest).with_context(|| format!("replacing {}", dest.display()))?;
                        }
                        let mut f =
                            std::fs::OpenOptions::new().write(true).create_new(true).open(&dest).map_err(|e| {
                                crate::storage::local::fs_error(format!("creating {}", dest.display()), e)
                            })?;
                        write_sparse(&mut entry, &mut f, &mut sha)
                            .map_err(|e| crate::storage::local::fs_error(format!("writing {}", dest.display()), e))?
                    };
                    let got = hex::encode(sha.finalize());
                    if Some(&got) != rec.sha256.as_ref() || bytes != rec.size {
                        bail!(
                            "{what}: {name} does not match the manifest ({bytes} bytes with SHA-256 {got}; recorded {} \
                             bytes, {}): the backup is damaged",
                            rec.size,
                            rec.sha256.as_deref().unwrap_or("-")
                        );
                    }
                    self.out.checked += 1;
                    if req.dry_run || !wanted {
                        continue;
                    }
                    std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(rec.mode))?;
                    set_owner(&dest, &rec);
                    set_times(&dest, &rec, false)?;
                    self.out.files += 1;
                    self.out.bytes += bytes;
                    self.out.written.push(name.clone());
                }
                FileKind::Symlink if !req.dry_run && wanted => {
                    let target = rec.target.as_deref().context("a symlink without a target")?;
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    if req.overwrite && dest.symlink_metadata().is_ok() {
                        std::fs::remove_file(&dest)?;
                    }
                    std::os::unix::fs::symlink(target, &dest).map_err(|e| {
                        crate::storage::local::fs_error(format!("creating the link {}", dest.display()), e)
                    })?;
                    set_owner(&dest, &rec);
                    let _ = set_times(&dest, &rec, true);
                    self.out.symlinks += 1;
                    self.out.written.push(name.clone());
                }
                FileKind::HardLink if !req.dry_run && wanted => {
                    let first = req.to.join(safe_relative(Path::new(
                        rec.target.as_deref().context("a hard link without a target")?,
                    ))?);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    if req.overwrite && dest.symlink_metadata().is_ok() {
                        std::fs::remove_file(&dest)?;
                    }
                    std::fs::hard_link(&first, &dest).with_context(|| {
                        format!("linking {} to {} (add the first name to --path too)", dest.display(), first.display())
                    })?;
                    self.out.hard_links += 1;
                    self.out.written.push(name.clone());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn finish(mut self, what: &str) -> Result<Restored> {
        if let Some(missing) = self.files.iter().find(|r| !self.seen.contains(&r.path)) {
            let place = missing.stored_in.as_deref().unwrap_or("its own archive");
            bail!("{what}: {} is missing from {place}: the backup is truncated or damaged", missing.path);
        }
        // deepest first, so that setting a parent's mtime is not undone by its children
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (path, rec) in &self.dirs {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(rec.mode))?;
            set_owner(path, rec);
            set_times(path, rec, false)?;
        }
        Ok(self.out)
    }
}

/// Streams one stored archive into the unpacker (in a blocking task) and gets it back.
async fn unpack_one(
    mut u: Unpacker,
    reader: Arc<ObjectReader>,
    holder: String,
    what: String,
    cancel: &CancellationToken,
) -> Result<Unpacker> {
    let (pipe_r, pipe_w) = std::io::pipe()?;
    crate::process::enlarge_pipe(&pipe_w);
    let task = tokio::task::spawn_blocking(move || {
        // tar reads 512-byte headers: read the pipe in large pieces
        let r = u.archive(std::io::BufReader::with_capacity(1 << 20, pipe_r), &holder, &what);
        (u, r)
    });
    let mut w = tokio::fs::File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(pipe_w)));
    let streamed = async {
        crate::pipeline::restore_stream(&reader, &mut w, RawCheck::Sha256, cancel, &Counter::default()).await?;
        tokio::io::AsyncWriteExt::flush(&mut w).await?;
        anyhow::Ok(())
    }
    .await;
    drop(w);
    let (u, unpacked) = task.await.map_err(|e| anyhow!("the unpacking task failed: {e}"))?;
    // the unpacker's error is the precise one (the stream then fails on a closed pipe)
    unpacked?;
    streamed?;
    Ok(u)
}

/// One stored archive a restore reads: the backup's own, or an earlier backup's that holds some of
/// its unchanged files.
pub struct Archive {
    pub backup_id: String,
    /// Names the backup in errors.
    pub what: String,
    pub reader: Arc<ObjectReader>,
}

/// Restores backup `backup_id`, whose manifest lists `files`, as `req` asks, from `archives`: the
/// holders of its unchanged files oldest first, its own last. Every stored frame of every archive
/// is checked before anything is written.
pub async fn run(
    backup_id: &str,
    what: &str,
    files: &[FileRecord],
    archives: Vec<Archive>,
    req: &Request,
    cancel: &CancellationToken,
) -> Result<Restored> {
    if !req.dry_run {
        let non_empty = std::fs::read_dir(&req.to).map(|mut d| d.next().is_some()).unwrap_or(false);
        if non_empty && !req.overwrite {
            bail!(
                "{} is not empty: restore into an empty or new directory, or add --overwrite to replace the files the \
                 backup holds",
                req.to.display()
            );
        }
    }
    for a in &archives {
        a.reader.check_stored().await?;
    }
    if !req.dry_run {
        std::fs::create_dir_all(&req.to)
            .map_err(|e| crate::storage::local::fs_error(format!("creating {}", req.to.display()), e))?;
    }
    let mut u = Unpacker::new(backup_id, files, req)?;
    for a in archives {
        u = unpack_one(u, a.reader, a.backup_id, a.what, cancel).await?;
    }
    u.finish(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_cannot_leave_the_target() {
        assert_eq!(safe_relative(Path::new("srv/app/a.jpg")).unwrap(), PathBuf::from("srv/app/a.jpg"));
        assert_eq!(safe_relative(Path::new("/etc/app.conf")).unwrap(), PathBuf::from("etc/app.conf"));
        assert!(safe_relative(Path::new("srv/../../etc/passwd")).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("evil")).unwrap();
        assert!(no_symlink_between(dir.path(), Path::new("real/file")).is_ok());
        let err = no_symlink_between(dir.path(), Path::new("evil/passwd")).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        // the link itself may be restored (its own name is the last component)
        assert!(no_symlink_between(dir.path(), Path::new("evil")).is_ok());
    }

    #[test]
    fn zeros_become_holes_and_the_hash_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut data = vec![0u8; 10 * 64 * 1024];
        data[5] = 1;
        data[9 * 64 * 1024 + 7] = 2;
        let mut f = std::fs::File::create(&path).unwrap();
        let mut sha = Sha256::new();
        let n = write_sparse(&mut &data[..], &mut f, &mut sha).unwrap();
        drop(f);
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(hex::encode(sha.finalize()), hex::encode(Sha256::digest(&data)));
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < data.len() as u64);
    }
}
