//! The local filesystem target: one directory tree, files 0600, directories 0700.
//!
//! Objects are written to a temporary name beside their final one, fsynced, renamed into place
//! and the directory fsynced, so a crash leaves either nothing or the whole object.

use super::{ObjectInfo, ObjectWriter, Partial, Store};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const TEMP_MARKER: &str = ".pgbackd-tmp-";

/// A filesystem call failed: what was done, the system's words, and what to do about the causes
/// an operator can fix (a full disk or quota, a read-only mount, missing permissions).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error}{}", hint(.error).map(|h| format!("; {h}")).unwrap_or_default())]
pub struct FsError {
    what: String,
    error: std::io::Error,
}

impl FsError {
    pub fn kind(&self) -> std::io::ErrorKind {
        self.error.kind()
    }
}

/// Whether `e` is a write refused by a read-only filesystem.
pub fn is_read_only(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<FsError>().is_some_and(|f| f.kind() == std::io::ErrorKind::ReadOnlyFilesystem))
}

/// `error` while `what` (e.g. "writing /backups/app/…/data.zst"), as an error that says what to do.
pub fn fs_error(what: String, error: std::io::Error) -> anyhow::Error {
    FsError { what, error }.into()
}

/// What to do about `e`, when it is something an operator fixes.
pub fn hint(e: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull => Some(
            "the filesystem is full: free space on it (`pgbackd retention --dry-run` shows what the policy would \
             delete), or move the directory to a larger disk"
                .into(),
        ),
        K::QuotaExceeded => Some("the disk quota of this user is used up: raise it or free space".into()),
        K::ReadOnlyFilesystem => {
            Some("the filesystem is mounted read-only: remount it read-write, or configure a writable directory".into())
        }
        K::PermissionDenied => Some(format!(
            "pgbackd runs as uid {} and may not do this there: give that user the directory (chown -R), or run \
             pgbackd as its owner",
            rustix::process::geteuid().as_raw()
        )),
        _ => None,
    }
}

/// Free and total bytes of the filesystem holding `path` (or its nearest existing parent).
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}

pub struct LocalStore {
    name: String,
    root: PathBuf,
}

impl LocalStore {
    pub fn new(name: &str, root: &Path) -> Result<LocalStore> {
        let root = if root.is_absolute() {
            root.to_owned()
        } else {
            std::env::current_dir().context("reading the current directory")?.join(root)
        };
        Ok(LocalStore { name: name.to_owned(), root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("invalid object key {key:?}");
        }
        Ok(self.root.join(key))
    }
}

fn make_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fs_error(format!("creating directory {}", dir.display()), e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fs_error(format!("syncing directory {}", dir.display()), e))
}

/// Removes the directories above `path` that are left empty, up to (not including) `root`.
fn prune_empty_dirs(path: &Path, root: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix: u64 = rand::random();
    path.with_file_name(format!("{TEMP_MARKER}{suffix:016x}-{name}"))
}

fn open_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fs_error(format!("creating {}", path.display()), e))
}

fn commit(temp: &Path, path: &Path) -> Result<()> {
    fs::rename(temp, path).map_err(|e| fs_error(format!("renaming {} to {}", temp.display(), path.display()), e))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("storage task panicked")?
}

#[async_trait]
impl Store for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        let temp = temp_path(&path);
        let (p, t) = (path.clone(), temp.clone());
        let file = blocking(move || {
            make_dirs(p.parent().expect("key has a parent"))?;
            open_new(&t)
        })
        .await?;
        Ok(Box::new(LocalWriter { file: Some(file), temp, path, root: self.root.clone(), written: 0 }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || {
            make_dirs(path.parent().expect("key has a parent"))?;
            let temp = temp_path(&path);
            let result = (|| {
                let mut f = open_new(&temp)?;
                f.write_all(&data).map_err(|e| fs_error(format!("writing {}", temp.display()), e))?;
                f.sync_all().map_err(|e| fs_error(format!("syncing {}", temp.display()), e))?;
                commit(&temp, &path)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&temp);
            }
            result
        })
        .await
    }

    async fn overwrite(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let same_size = fs::metadata(&path).is_ok_and(|m| m.len() == data.len() as u64);
        if !same_size {
            return self.put(key, data).await;
        }
        blocking(move || {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| fs_error(format!("opening {}", path.display()), e))?;
            f.write_all(&data)
                .and_then(|()| f.sync_data())
                .map_err(|e| fs_error(format!("writing {}", path.display()), e))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || match fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fs_error(format!("reading {}", path.display()), e)),
        })
        .await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        blocking(move || {
            let mut f = File::open(&path).map_err(|e| fs_error(format!("opening {}", path.display()), e))?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).with_context(|| {
                format!(
                    "reading {len} bytes at offset {offset} of {}: the object is shorter than recorded",
                    path.display()
                )
            })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fs_error(format!("reading {}", path.display()), e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            // start from the deepest directory the prefix names
            let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let start = if dir_part.is_empty() { root.clone() } else { root.join(dir_part) };
            walk(&root, &start, &prefix, false, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn partials(&self, prefix: &str) -> Result<Vec<Partial>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut temps = Vec::new();
            let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let start = if dir_part.is_empty() { root.clone() } else { root.join(dir_part) };
            walk(&root, &start, &prefix, true, &mut temps)?;
            Ok(temps
                .into_iter()
                .map(|t| {
                    // `<dir>/.pgbackd-tmp-<16 hex>-<name>` would have been `<dir>/<name>`
                    let (dir, file) = t.key.rsplit_once('/').unwrap_or(("", &t.key));
                    let name = file.strip_prefix(TEMP_MARKER).and_then(|f| f.get(17..)).unwrap_or(file);
                    let key = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
                    Partial { key, id: t.key, since: t.modified, size: Some(t.size) }
                })
                .collect())
        })
        .await
    }

    async fn remove_partial(&self, partial: &Partial) -> Result<()> {
        self.delete(std::slice::from_ref(&partial.id)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.path(k)).collect::<Result<_>>()?;
        let root = self.root.clone();
        blocking(move || {
            for p in &paths {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fs_error(format!("deleting {}", p.display()), e)),
                }
                prune_empty_dirs(p, &root);
            }
            Ok(())
        })
        .await
    }
}

/// The files below `dir` whose keys start with `prefix`: finished objects, or (`temps`) only the
/// temp files of unfinished writes.
fn walk(root: &Path, dir: &Path, prefix: &str, temps: bool, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fs_error(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| fs_error(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| fs_error(format!("reading {}", path.display()), e))?;
        let key = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        if meta.is_dir() {
            if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) || prefix.is_empty() {
                walk(root, &path, prefix, temps, out)?;
            }
        } else if key.starts_with(prefix) && entry.file_name().to_string_lossy().starts_with(TEMP_MARKER) == temps {
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from),
            });
        }
    }
    Ok(())
}

struct LocalWriter {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    /// The store's root: an aborted write removes the directories it left empty, up to here.
    root: PathBuf,
    written: u64,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let mut file = self.file.take().context("object already finished")?;
        let temp = self.temp.clone();
        let len = data.len() as u64;
        let file = blocking(move || {
            file.write_all(&data).map_err(|e| fs_error(format!("writing {}", temp.display()), e))?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        self.written += len;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let file = self.file.take().context("object already finished")?;
        let (temp, path) = (self.temp.clone(), self.path.clone());
        let written = self.written;
        let result = blocking(move || {
            file.sync_all().map_err(|e| fs_error(format!("syncing {}", temp.display()), e))?;
            drop(file);
            commit(&temp, &path)?;
            Ok(written)
        })
        .await;
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
            prune_empty_dirs(&self.temp, &self.root);
        }
        // the temp name is gone either way; Drop must not remove anything
        self.temp = PathBuf::new();
        result
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file = None;
        let temp = std::mem::take(&mut self.temp);
        let root = self.root.clone();
        blocking(move || {
            match fs::remove_file(&temp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fs_error(format!("removing {}", temp.display()), e)),
            }
            prune_empty_dirs(&temp, &root);
            Ok(())
        })
        .await
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
            prune_empty_dirs(&self.temp, &self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn an_unfinished_write_is_a_partial_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new("local", dir.path()).unwrap();
        let mut w = store.create("db/b1/data.zst").await.unwrap();
        w.write(Bytes::from_static(b"half")).await.unwrap();
        // a process killed here leaves the temp file: not listed, but a partial
        std::mem::forget(w);
        assert!(store.list("db/").await.unwrap().is_empty());
        let partials = store.partials("db/").await.unwrap();
        assert_eq!(partials.len(), 1, "{partials:?}");
        assert_eq!(partials[0].key, "db/b1/data.zst");
        assert_eq!(partials[0].size, Some(4));
        assert!(partials[0].since.is_some());
        assert!(store.partials("other/").await.unwrap().is_empty());
        store.remove_partial(&partials[0]).await.unwrap();
        assert!(store.partials("db/").await.unwrap().is_empty());
        assert!(!dir.path().join("db").exists(), "empty directories go too");
    }

    #[tokio::test]
    async fn write_list_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new("local", dir.path()).unwrap();
        let mut w = store.create("db/b1/data.zst").await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        // not visible before finish
        assert!(store.list("db/").await.unwrap().is_empty());
        w.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 11);
        store.put("db/b1/manifest.json", Bytes::from_static(b"{}")).await.unwrap();
        let keys: Vec<_> = store.list("db/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["db/b1/data.zst", "db/b1/manifest.json"]);
        assert_eq!(&store.read_range("db/b1/data.zst", 6, 5).await.unwrap()[..], b"world");
        assert!(store.read_range("db/b1/data.zst", 6, 50).await.is_err());
        let mode = fs::metadata(dir.path().join("db/b1/data.zst")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dir.path().join("db/b1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        store.delete(&["db/b1/data.zst".into(), "db/b1/manifest.json".into(), "db/b1/gone".into()]).await.unwrap();
        assert!(!dir.path().join("db").exists());
    }

    #[tokio::test]
    async fn abort_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new("local", dir.path()).unwrap();
        let mut w = store.create("db/x/data").await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        w.abort().await.unwrap();
        let w2 = store.create("db/y/data").await.unwrap();
        drop(w2);
        let files: Vec<_> = walkdir(dir.path());
        assert!(files.is_empty(), "{files:?}");
        // nor the directories they made
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "directories left behind");
    }

    fn walkdir(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.path().is_dir() {
                out.extend(walkdir(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
