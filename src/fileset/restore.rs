//! Restoring a file backup into a directory: every stored frame is checked first, then the tar
//! stream is unpacked with each file's SHA-256 checked against the manifest as it is written,
//! modes, mtimes (and owners, as root) set, symlinks and hard links recreated, runs of zeros
//! left as holes. Refuses a non-empty directory unless told to overwrite.

use super::{FileKind, FileManifest, FileRecord};
use crate::pipeline::{Counter, Decryption, ObjectReader, RawCheck};
use crate::storage::Store;
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = std::os::unix::fs::lchown(path, Some(rec.uid), Some(rec.gid));
    }
}

/// Unpacks the tar stream `input` below `req.to`, checking against `m`.
fn unpack(input: impl Read, m: &FileManifest, req: &Request, what: &str) -> Result<Restored> {
    let globs = {
        let mut b = globset::GlobSetBuilder::new();
        for g in &req.globs {
            b.add(globset::Glob::new(g).with_context(|| format!("--path {g:?} is not a valid glob"))?);
        }
        b.build()?
    };
    let wanted = |name: &str| req.globs.is_empty() || globs.is_match(name) || globs.is_match(format!("/{name}"));
    let records: HashMap<&str, &FileRecord> = m.files.iter().map(|r| (r.path.as_str(), r)).collect();
    let mut out = Restored {
        backup_id: m.id.clone(),
        to: req.to.display().to_string(),
        dry_run: req.dry_run,
        ..Default::default()
    };
    let mut dirs: Vec<(PathBuf, &FileRecord)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
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
        let Some(rec) = records.get(name.as_str()).copied() else {
            bail!("{what}: the archive holds {name}, which the manifest does not list: the backup was modified");
        };
        seen.insert(name.clone());
        let dest = req.to.join(&rel);
        match rec.kind {
            // directories: made as they come (or as parents of what matches --path); their modes
            // and times are set at the end
            FileKind::Dir if !req.dry_run && wanted(&name) => {
                std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
                dirs.push((dest, rec));
                out.directories += 1;
            }
            FileKind::File => {
                let mut sha = Sha256::new();
                let bytes = if req.dry_run || !wanted(&name) {
                    let mut sink = std::io::sink();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    loop {
                        let k = entry.read(&mut buf)?;
                        if k == 0 {
                            break;
                        }
                        sha.update(&buf[..k]);
                        sink.write_all(&buf[..k])?;
                        n += k as u64;
                    }
                    n
                } else {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                    }
                    if req.overwrite && dest.symlink_metadata().is_ok() {
                        std::fs::remove_file(&dest).with_context(|| format!("replacing {}", dest.display()))?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dest)
                        .with_context(|| format!("creating {}", dest.display()))?;
                    write_sparse(&mut entry, &mut f, &mut sha).with_context(|| format!("writing {}", dest.display()))?
                };
                let got = hex::encode(sha.finalize());
                if Some(&got) != rec.sha256.as_ref() || bytes != rec.size {
                    bail!(
                        "{what}: {name} does not match the manifest ({bytes} bytes with SHA-256 {got}; recorded {} bytes, {}): \
                         the backup is damaged",
                        rec.size,
                        rec.sha256.as_deref().unwrap_or("-")
                    );
                }
                out.checked += 1;
                if req.dry_run || !wanted(&name) {
                    continue;
                }
                std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(rec.mode))?;
                set_owner(&dest, rec);
                set_times(&dest, rec, false)?;
                out.files += 1;
                out.bytes += bytes;
                out.written.push(name.clone());
            }
            FileKind::Symlink if !req.dry_run && wanted(&name) => {
                let target = rec.target.as_deref().context("a symlink without a target")?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if req.overwrite && dest.symlink_metadata().is_ok() {
                    std::fs::remove_file(&dest)?;
                }
                std::os::unix::fs::symlink(target, &dest)
                    .with_context(|| format!("creating the link {}", dest.display()))?;
                set_owner(&dest, rec);
                let _ = set_times(&dest, rec, true);
                out.symlinks += 1;
                out.written.push(name.clone());
            }
            FileKind::HardLink if !req.dry_run && wanted(&name) => {
                let first = req
                    .to
                    .join(safe_relative(Path::new(rec.target.as_deref().context("a hard link without a target")?))?);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if req.overwrite && dest.symlink_metadata().is_ok() {
                    std::fs::remove_file(&dest)?;
                }
                std::fs::hard_link(&first, &dest).with_context(|| {
                    format!("linking {} to {} (add the first name to --path too)", dest.display(), first.display())
                })?;
                out.hard_links += 1;
                out.written.push(name.clone());
            }
            _ => {}
        }
    }
    if let Some(missing) = m.files.iter().find(|r| !seen.contains(&r.path)) {
        bail!("{what}: the archive ends before {}: the backup is truncated", missing.path);
    }
    // deepest first, so that setting a parent's mtime is not undone by its children
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (path, rec) in dirs {
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(rec.mode))?;
        set_owner(&path, rec);
        set_times(&path, rec, false)?;
    }
    Ok(out)
}

/// Restores backup `m` (stored on `store`) as `req` asks.
pub async fn run(
    m: &FileManifest,
    store: Arc<dyn Store>,
    decryption: Option<Decryption>,
    req: &Request,
    cancel: &CancellationToken,
) -> Result<Restored> {
    let what = format!("file backup {} of {}", m.id, m.set);
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
    let reader = ObjectReader::new(store, m.data.clone(), &what, decryption)?;
    // every stored frame is checked before anything is written
    reader.check_stored().await?;
    if !req.dry_run {
        std::fs::create_dir_all(&req.to).with_context(|| format!("creating {}", req.to.display()))?;
    }
    let (pipe_r, pipe_w) = std::io::pipe()?;
    let unpacker = {
        let (m, req, what) = (m.clone(), req.clone(), what.clone());
        tokio::task::spawn_blocking(move || unpack(pipe_r, &m, &req, &what))
    };
    let mut w = tokio::fs::File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(pipe_w)));
    let streamed = async {
        crate::pipeline::restore_stream(&reader, &mut w, RawCheck::Sha256, cancel, &Counter::default()).await?;
        tokio::io::AsyncWriteExt::flush(&mut w).await?;
        anyhow::Ok(())
    }
    .await;
    drop(w);
    let unpacked = unpacker.await.map_err(|e| anyhow!("the unpacking task failed: {e}"))?;
    // the unpacker's error is the precise one (the stream then fails on a closed pipe)
    let restored = unpacked?;
    streamed?;
    Ok(restored)
}
