//! A cluster's WAL archive in the repository: push (`archive_command`, the receiver's completed
//! segments) and get (`restore_command`), each file compressed, hashed and encrypted like every
//! other object, on every target.
//!
//! Each archived file's key carries the SHA-256 of its contents (`repo::keys::wal_object`), so a
//! second push of the same file is recognised without reading anything, a different one is
//! refused, and a get checks what it read against the name. Files are small (a segment is 16 MiB
//! by default): they are read, compressed and stored whole.

use super::names::WalFile;
use crate::crypto::{Crypto, EncryptionInfo};
use crate::repo::keys;
use crate::storage::{ObjectInfo, Target};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A file is compressed as one zstd frame per core (up to 4), in parallel: fewer, larger frames
/// than that only add threads and contexts (measured: 1 MiB frames were slower on 2 cores).
fn frame_size(len: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    len.div_ceil(cores).max(1 << 20)
}

/// The WAL archive of one cluster (one system identifier) on the repository's targets.
pub struct WalArchive {
    cluster: String,
    system_identifier: u64,
    targets: Vec<Target>,
    /// What new files are encrypted to and what decrypts stored ones.
    crypto: Option<Arc<Crypto>>,
    /// zstd level; `None` stores files uncompressed.
    level: Option<i32>,
}

/// What one push did.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// Targets the file was written to now.
    pub written: Vec<String>,
    /// Targets that already held exactly this file.
    pub already: Vec<String>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Optional targets that failed, with why.
    pub warnings: Vec<String>,
}

/// One archived file as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Archived {
    pub file: WalFile,
    pub sha256: String,
    pub key: String,
    pub stored_bytes: u64,
    /// When it was stored (as the target lists it).
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl Archived {
    /// The archived file a listed object is, if it is one.
    pub fn from_listing(o: &ObjectInfo) -> Option<Archived> {
        let (f, sha, _, _) = keys::parse_wal_object(&o.key)?;
        Some(Archived {
            file: WalFile::parse(f)?,
            sha256: sha.to_owned(),
            key: o.key.clone(),
            stored_bytes: o.size,
            modified: o.modified,
        })
    }
}

impl WalArchive {
    pub fn new(
        cluster: &str,
        system_identifier: u64,
        targets: Vec<Target>,
        crypto: Option<Arc<Crypto>>,
        level: Option<i32>,
    ) -> WalArchive {
        WalArchive { cluster: cluster.to_owned(), system_identifier, targets, crypto, level }
    }

    pub fn system_identifier(&self) -> u64 {
        self.system_identifier
    }

    fn encrypting(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref().filter(|c| c.encrypts())
    }

    /// The copies of `file` on `target`.
    async fn copies(&self, target: &Target, file: &WalFile) -> Result<Vec<Archived>> {
        let name = file.to_string();
        let prefix = format!("{}{name}-", keys::wal_dir(&self.cluster, self.system_identifier, &name));
        let listed = target
            .store
            .list(&prefix)
            .await
            .with_context(|| format!("listing the WAL archive on {}", target.store.describe()))?;
        Ok(listed.iter().filter_map(Archived::from_listing).filter(|a| a.file == *file).collect())
    }

    /// The required targets that do not hold `file` (or cannot say).
    pub async fn missing_on_required(&self, file: WalFile) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for t in self.targets.iter().filter(|t| t.required) {
            if self.copies(t, &file).await?.is_empty() {
                missing.push(t.name().to_owned());
            }
        }
        Ok(missing)
    }

    /// Stores `raw` as `file` on every target that does not hold it yet. Pushing a file that is
    /// already archived with the same contents succeeds (PostgreSQL retries after a crash);
    /// one archived with different contents is an error, and nothing is overwritten, except for a
    /// partial segment: it grows while the receiver writes it, and the newer copy replaces the
    /// older one once it is stored.
    pub async fn push(&self, file: WalFile, raw: Bytes) -> Result<Pushed> {
        let name = file.to_string();
        // hashed and compressed at once (a re-push, which wastes the compression, is rare)
        let (sha, stored) = self.encode(raw.clone(), &name).await?;
        let mut pushed =
            Pushed { written: vec![], already: vec![], raw_bytes: raw.len() as u64, stored_bytes: 0, warnings: vec![] };
        let mut missing = Vec::new();
        for t in &self.targets {
            let copies = match self.copies(t, &file).await {
                Ok(c) => c,
                Err(e) if !t.required => {
                    pushed.warnings.push(format!("optional target {} skipped: {e:#}", t.name()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if copies.iter().any(|c| c.sha256 == sha) {
                pushed.already.push(t.name().to_owned());
            } else if matches!(file, WalFile::Partial(_)) {
                // a partial segment grows: a newer copy supersedes the stored one (removed below)
                missing.push((t, copies));
            } else if let Some(other) = copies.first() {
                bail!(
                    "{name} is already archived on {} with different contents (stored SHA-256 {}, this file {sha}); \
                     nothing was overwritten. Either two clusters archive under wal.name {:?} (give each its own), \
                     or the stored copy was pushed by hand before PostgreSQL had finished the segment: then remove \
                     {} and PostgreSQL's next retry archives the complete one",
                    t.store.describe(),
                    other.sha256,
                    self.cluster,
                    other.key
                );
            } else {
                missing.push((t, copies));
            }
        }
        if missing.is_empty() {
            return Ok(pushed);
        }
        pushed.stored_bytes = stored.len() as u64;
        let key = keys::wal_object(
            &self.cluster,
            self.system_identifier,
            &name,
            &sha,
            self.level.is_some(),
            self.encrypting().is_some(),
        );
        for (t, superseded) in missing {
            match t.store.put(&key, stored.clone()).await {
                Ok(()) => {
                    pushed.written.push(t.name().to_owned());
                    let old: Vec<String> = superseded.into_iter().map(|c| c.key).collect();
                    if !old.is_empty()
                        && let Err(e) = t.store.delete(&old).await
                    {
                        pushed.warnings.push(format!("an older copy of {name} stays on {}: {e:#}", t.name()));
                    }
                }
                Err(e) if !t.required => {
                    pushed.warnings.push(format!("optional target {} does not hold {name}: {e:#}", t.name()))
                }
                Err(e) => return Err(e.context(format!("archiving {name} to {}", t.store.describe()))),
            }
        }
        Ok(pushed)
    }

    /// The SHA-256 of `raw`, and `raw` compressed (in parallel frames) and encrypted, as stored.
    async fn encode(&self, raw: Bytes, name: &str) -> Result<(String, Bytes)> {
        let level = self.level;
        let crypto = self.encrypting().cloned();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(String, Bytes)> {
            let (sha, frames) = std::thread::scope(|s| {
                let sha = s.spawn(|| hex::encode(Sha256::digest(&raw)));
                let frames: Option<Vec<std::io::Result<Vec<u8>>>> = level.map(|level| {
                    let handles: Vec<_> = raw
                        .chunks(frame_size(raw.len()))
                        .map(|c| s.spawn(move || crate::pipeline::compress_frame(c, level)))
                        .collect();
                    handles.into_iter().map(|h| h.join().expect("compression thread panicked")).collect()
                });
                (sha.join().expect("hash thread panicked"), frames)
            });
            let compressed = match frames {
                None => raw.to_vec(),
                Some(frames) => {
                    let mut out = Vec::with_capacity(raw.len() / 4);
                    for f in frames {
                        out.extend_from_slice(&f.with_context(|| format!("compressing {name}"))?);
                    }
                    out
                }
            };
            let stored = match crypto {
                Some(c) => c.encrypt(&compressed).with_context(|| format!("encrypting {name}"))?,
                None => compressed,
            };
            Ok((sha, Bytes::from(stored)))
        })
        .await
        .context("WAL compression task failed")?
    }

    /// `file`'s contents, checked against the SHA-256 its key carries: from the first target
    /// holding an intact copy (a damaged copy is reported and the next target tried). `None` when
    /// no target holds it, which is what `restore_command` reports for a file that was never
    /// archived (PostgreSQL asks for files past the end of the archive on purpose).
    pub async fn get(&self, file: WalFile) -> Result<Option<Bytes>> {
        let name = file.to_string();
        let mut damaged = Vec::new();
        for t in &self.targets {
            let copies = match self.copies(t, &file).await {
                Ok(c) => c,
                Err(e) => {
                    damaged.push(format!("{e:#}"));
                    continue;
                }
            };
            for copy in copies {
                match self.read_copy(t, &copy).await {
                    Ok(raw) => return Ok(Some(raw)),
                    Err(e) => {
                        tracing::warn!(file = %name, target_name = t.name(), error = %format!("{e:#}"), "damaged WAL copy; trying the next");
                        damaged.push(format!("{e:#}"));
                    }
                }
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        bail!("{name} is archived but no copy can be used: {}", damaged.join("; "))
    }

    /// Reads one stored copy and checks it.
    pub async fn read_copy(&self, target: &Target, copy: &Archived) -> Result<Bytes> {
        let stored = target
            .store
            .get(&copy.key)
            .await?
            .with_context(|| format!("{} vanished from {}", copy.key, target.store.describe()))?;
        let (_, sha, compressed, encrypted) =
            keys::parse_wal_object(&copy.key).with_context(|| format!("{} is not a WAL object name", copy.key))?;
        let (sha, key, describe) = (sha.to_owned(), copy.key.clone(), target.store.describe());
        let crypto = self.crypto.clone();
        tokio::task::spawn_blocking(move || -> Result<Bytes> {
            let what = format!("{key} on {describe}");
            let plain = match (encrypted, crypto) {
                (false, _) => stored.to_vec(),
                (true, Some(c)) => c.decrypt_all(&stored, &what, &wal_encryption_info(&c))?,
                (true, None) => bail!(
                    "{what} is encrypted and this configuration has no encryption section: set encryption.identity_file \
                     (or key_file) to the identity the archive was encrypted to"
                ),
            };
            let raw = if compressed {
                zstd::stream::decode_all(plain.as_slice()).with_context(|| format!("{what} does not decompress"))?
            } else {
                plain
            };
            let got = hex::encode(Sha256::digest(&raw));
            anyhow::ensure!(got == sha, "{what} has SHA-256 {got}, its name says {sha}: the stored data is corrupt");
            Ok(Bytes::from(raw))
        })
        .await
        .context("WAL read task failed")?
    }
}

/// Every file archived under `cluster` on `target` (one listing), by system identifier, each
/// archive's files in order.
pub async fn by_system_identifier(cluster: &str, target: &Target) -> anyhow::Result<BTreeMap<u64, Vec<Archived>>> {
    let root = crate::repo::keys::wal_root(cluster);
    let listed = target
        .store
        .list(&root)
        .await
        .with_context(|| format!("listing the WAL archive on {}", target.store.describe()))?;
    let mut out: BTreeMap<u64, Vec<Archived>> = BTreeMap::new();
    for o in &listed {
        let id = o.key.strip_prefix(&root).and_then(|k| k.split('/').next()).and_then(|id| id.parse::<u64>().ok());
        if let (Some(id), Some(a)) = (id, Archived::from_listing(o)) {
            out.entry(id).or_default().push(a);
        }
    }
    for files in out.values_mut() {
        files.sort_by_key(|a| a.file);
    }
    Ok(out)
}

/// What a WAL object needs to decrypt, for messages (WAL files have no manifest of their own:
/// they are encrypted to the configured recipients).
fn wal_encryption_info(c: &Crypto) -> EncryptionInfo {
    EncryptionInfo { format: "age".into(), mode: c.mode(), recipients: c.fingerprints(), auth_key: String::new() }
}
