//! Writing a file set as a tar stream (ustar headers with PAX records for long paths and link
//! targets and for sub-second mtimes): directories, regular files (SHA-256 of each, as read),
//! symlinks, hard links (by device and inode), modes, owners and mtimes. Files that vanish or
//! change while read are warnings; unreadable ones are errors; neither stops the archive.

use super::{FileKind, FileProblem, FileRecord};
use globset::GlobSet;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What to archive.
#[derive(Debug, Clone)]
pub struct Sources {
    pub paths: Vec<PathBuf>,
    pub exclude: GlobSet,
    pub one_file_system: bool,
    pub follow_symlinks: bool,
}

/// A file as the previous backup of the set recorded it, and which backup holds its content.
#[derive(Debug, Clone)]
pub struct Previous {
    pub record: FileRecord,
    pub holder: String,
}

/// What was archived, and what went wrong on the way.
#[derive(Debug, Default)]
pub struct Archived {
    pub records: Vec<FileRecord>,
    pub problems: Vec<FileProblem>,
    /// Bytes of file content.
    pub total_bytes: u64,
    /// Bytes of content in this archive (less than `total_bytes` in an incremental).
    pub archived_bytes: u64,
}

/// The name a path has in the archive: absolute paths lose their leading `/` (as tar does).
pub fn archive_name(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    sources: Sources,
    out: Archived,
    /// (device, inode) of files with several links -> their first archive name.
    links: HashMap<(u64, u64), String>,
    cancel: Arc<AtomicBool>,
    /// For an incremental: the previous backup's files by path.
    previous: HashMap<String, Previous>,
    /// (device, inode) of the directories being walked: a followed symlink back to one of them
    /// would loop.
    ancestors: std::collections::HashSet<(u64, u64)>,
}

/// Reads exactly `len` bytes: a file that shrank is padded with zeros (and reported), one that
/// grew is cut; the SHA-256 covers what went into the archive.
struct Exact<R: Read> {
    inner: R,
    left: u64,
    short: bool,
    sha: Sha256,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = if self.short { 0 } else { self.inner.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.sha.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn set_name(header: &mut tar::Header, pax: &mut Vec<(&'static str, Vec<u8>)>, name: &str, link: Option<&str>) {
    // ustar holds 100 bytes of name and of link name; longer ones go in PAX records, and the
    // header keeps a truncated copy for readers that ignore PAX
    let fits = |s: &str| s.len() <= 100 && s.is_ascii();
    if fits(name) {
        let _ = header.set_path(name);
    } else {
        pax.push(("path", name.as_bytes().to_vec()));
    }
    if !fits(name) || header.path_bytes().is_empty() {
        let raw = &mut header.as_old_mut().name;
        let n = name.len().min(99);
        raw[..n].copy_from_slice(&name.as_bytes()[..n]);
    }
    if let Some(link) = link {
        if fits(link) {
            let _ = header.set_link_name(link);
        } else {
            pax.push(("linkpath", link.as_bytes().to_vec()));
            let raw = &mut header.as_old_mut().linkname;
            let n = link.len().min(99);
            raw[..n].copy_from_slice(&link.as_bytes()[..n]);
        }
    }
}

impl<W: Write> Writer<W> {
    fn problem(&mut self, path: &Path, problem: String, error: bool) {
        if error {
            tracing::error!(path = %path.display(), problem = %problem, "file not backed up");
        } else {
            tracing::warn!(path = %path.display(), problem = %problem, "file changed during the backup");
        }
        self.out.problems.push(FileProblem { path: path.display().to_string(), problem, error });
    }

    fn header(&self, meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(size);
        h
    }

    fn emit<R: Read>(
        &mut self,
        mut header: tar::Header,
        name: &str,
        link: Option<&str>,
        meta: &std::fs::Metadata,
        data: R,
    ) -> io::Result<()> {
        let mut pax = Vec::new();
        set_name(&mut header, &mut pax, name, link);
        if meta.mtime_nsec() != 0 {
            pax.push(("mtime", format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()).into_bytes()));
        }
        if !pax.is_empty() {
            self.tar.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))?;
        }
        header.set_cksum();
        self.tar.append(&header, data)
    }

    fn record(&mut self, name: String, kind: FileKind, meta: &std::fs::Metadata) -> FileRecord {
        FileRecord {
            path: name,
            kind,
            size: 0,
            sha256: None,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            target: None,
            stored_in: None,
            inode: meta.ino(),
        }
    }

    fn excluded(&self, path: &Path, root: &Path) -> bool {
        let rel = path.strip_prefix(root).unwrap_or(path);
        self.sources.exclude.is_match(path) || (!rel.as_os_str().is_empty() && self.sources.exclude.is_match(rel))
    }

    fn walk(&mut self, path: &Path, root: &Path, root_dev: u64) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        if self.excluded(path, root) {
            return Ok(());
        }
        let lmeta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.problem(path, "vanished before it was read".into(), false);
                return Ok(());
            }
            Err(e) => {
                self.problem(path, format!("cannot read its metadata: {e}"), true);
                return Ok(());
            }
        };
        let meta = if lmeta.file_type().is_symlink() && self.sources.follow_symlinks {
            match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) => {
                    self.problem(path, format!("a symlink that cannot be followed: {e}"), false);
                    lmeta
                }
            }
        } else {
            lmeta
        };
        let name = archive_name(path);
        let ft = meta.file_type();
        if ft.is_dir() {
            if !self.ancestors.insert((meta.dev(), meta.ino())) {
                self.problem(path, "a symlink loop (it leads back to a directory above it): skipped".into(), false);
                return Ok(());
            }
            let walked = self.dir(path, root, root_dev, name, &meta);
            self.ancestors.remove(&(meta.dev(), meta.ino()));
            walked?;
        } else if ft.is_symlink() {
            let target = match std::fs::read_link(path) {
                Ok(t) => t.to_string_lossy().into_owned(),
                Err(e) => {
                    self.problem(path, format!("cannot read the link: {e}"), true);
                    return Ok(());
                }
            };
            let h = self.header(&meta, tar::EntryType::Symlink, 0);
            self.emit(h, &name, Some(&target), &meta, io::empty())?;
            let mut r = self.record(name, FileKind::Symlink, &meta);
            r.target = Some(target);
            self.out.records.push(r);
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    let h = self.header(&meta, tar::EntryType::Link, 0);
                    self.emit(h, &name, Some(&first), &meta, io::empty())?;
                    let mut r = self.record(name, FileKind::HardLink, &meta);
                    r.target = Some(first);
                    self.out.records.push(r);
                    return Ok(());
                }
                self.links.insert(key, name.clone());
            }
            self.file(path, name, &meta)?;
        } else {
            self.problem(
                path,
                "not a regular file, directory or symlink (socket, fifo or device): skipped".into(),
                false,
            );
        }
        Ok(())
    }

    fn dir(
        &mut self,
        path: &Path,
        root: &Path,
        root_dev: u64,
        name: String,
        meta: &std::fs::Metadata,
    ) -> io::Result<()> {
        let meta = meta.clone();
        let h = self.header(&meta, tar::EntryType::Directory, 0);
        self.emit(h, &format!("{name}/"), None, &meta, io::empty())?;
        let r = self.record(name, FileKind::Dir, &meta);
        self.out.records.push(r);
        if self.sources.one_file_system && meta.dev() != root_dev {
            return Ok(());
        }
        let mut children: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.problem(path, format!("cannot list the directory: {e}"), true);
                return Ok(());
            }
        };
        children.sort();
        for c in children {
            self.walk(&c, root, root_dev)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, name: String, meta: &std::fs::Metadata) -> io::Result<()> {
        // unchanged since the previous backup (same size, mtime to the nanosecond, inode and
        // mode): recorded with the previous hash, its content left where it is stored
        if let Some(p) = self.previous.get(&name).cloned()
            && p.record.kind == FileKind::File
            && p.record.size == meta.len()
            && p.record.mtime == meta.mtime()
            && p.record.mtime_nsec == meta.mtime_nsec() as u32
            && p.record.inode == meta.ino()
            && p.record.mode == meta.mode() & 0o7777
        {
            let mut r = self.record(name, FileKind::File, meta);
            r.size = meta.len();
            r.sha256 = p.record.sha256.clone();
            r.stored_in = Some(p.holder);
            self.out.total_bytes += r.size;
            self.out.records.push(r);
            return Ok(());
        }
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.problem(path, "vanished before it was read".into(), false);
                return Ok(());
            }
            Err(e) => {
                self.problem(path, format!("cannot be read: {e}"), true);
                return Ok(());
            }
        };
        let size = meta.len();
        let h = self.header(meta, tar::EntryType::Regular, size);
        let mut exact = Exact { inner: f, left: size, short: false, sha: Sha256::new() };
        self.emit(h, &name, None, meta, &mut exact)?;
        let sha = hex::encode(exact.sha.clone().finalize());
        let short = exact.short;
        drop(exact);
        let mut r = self.record(name, FileKind::File, meta);
        r.size = size;
        r.sha256 = Some(sha);
        self.out.total_bytes += size;
        self.out.archived_bytes += size;
        self.out.records.push(r);
        let after = std::fs::symlink_metadata(path);
        if short {
            self.problem(path, format!("shrank while being read: its {size} bytes were padded with zeros"), false);
        } else if let Ok(a) = &after
            && (a.len() != size || a.mtime() != meta.mtime() || a.mtime_nsec() != meta.mtime_nsec())
        {
            self.problem(
                path,
                format!("changed while being read (now {} bytes): the first {size} bytes were backed up", a.len()),
                false,
            );
        } else if after.is_err() {
            self.problem(path, "was deleted while being read: its content as read was backed up".into(), false);
        }
        Ok(())
    }
}

/// Writes `sources` as a tar stream to `out`; stops early (an error) when `cancel` is set.
/// With `previous` (an incremental), unchanged files are recorded but not archived again.
pub fn write<W: Write>(
    sources: &Sources,
    out: W,
    cancel: Arc<AtomicBool>,
    previous: HashMap<String, Previous>,
) -> io::Result<Archived> {
    let mut w = Writer {
        tar: tar::Builder::new(out),
        sources: sources.clone(),
        out: Archived::default(),
        links: HashMap::new(),
        cancel,
        previous,
        ancestors: Default::default(),
    };
    for root in &sources.paths {
        match std::fs::metadata(root) {
            Ok(m) => w.walk(root, root, m.dev())?,
            Err(e) => w.problem(root, format!("the source path cannot be read: {e}"), true),
        }
    }
    // the end-of-archive blocks, and whatever a buffered `out` still holds
    w.tar.into_inner()?.flush()?;
    Ok(w.out)
}
