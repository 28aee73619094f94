//! Storage targets (local disk, S3, Azure Blob, GCS, SFTP) behind one small trait: a repository only needs to create objects by streaming,
//! put and get small ones atomically, read ranges, list by prefix and delete.
//!
//! Keys are `/`-separated relative paths (`app/20261122T010000Z-full-3f9a1c/data.zst`); only the
//! repository module decides them.

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcs")]
pub mod gcs;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sftp")]
pub mod sftp;

use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A configured storage target: a store, and whether a backup needs it to succeed.
#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn Store>,
    pub required: bool,
}

impl Target {
    pub fn name(&self) -> &str {
        self.store.name()
    }
}

/// Opens the configured targets, in config order.
pub async fn open_targets(configs: &[crate::config::storage::TargetConfig]) -> Result<Vec<Target>> {
    use crate::config::storage::TargetKind;
    let mut out = Vec::with_capacity(configs.len());
    for t in configs {
        let store: Arc<dyn Store> = match &t.kind {
            TargetKind::Local { path } => Arc::new(local::LocalStore::new(&t.name, path)?),
            #[cfg(feature = "s3")]
            TargetKind::S3(cfg) => Arc::new(s3::S3Store::new(&t.name, cfg).await?),
            #[cfg(feature = "azure")]
            TargetKind::Azure(cfg) => Arc::new(azure::AzureStore::new(&t.name, cfg)?),
            #[cfg(feature = "gcs")]
            TargetKind::Gcs(cfg) => Arc::new(gcs::GcsStore::new(&t.name, cfg)?),
            #[cfg(feature = "sftp")]
            TargetKind::Sftp(cfg) => Arc::new(sftp::SftpStore::new(&t.name, cfg)?),
            // refused when the config is read
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "target {}: this pgbackd was built without {} support",
                t.name,
                other.feature().map(|(f, _)| f).unwrap_or("this kind of target")
            ),
        };
        out.push(Target { store, required: t.required });
    }
    Ok(out)
}

/// The cause at the bottom of an error's chain ("Connection refused").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// A storage target (local directory, S3 bucket prefix, Azure container, GCS bucket, SFTP directory).
#[async_trait]
pub trait Store: Send + Sync {
    /// The target's name in manifests and messages (e.g. `local`).
    fn name(&self) -> &str;
    /// Where it is, for humans (e.g. `local:/var/lib/pgbackd`).
    fn describe(&self) -> String;
    /// Starts a streamed object; it becomes visible under `key` only when finished.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Writes a small object atomically (readers see the old or the new version, never a mix).
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Writes a small object of always the same size over its earlier version, in place when the
    /// store can (a local file: no new blocks are needed, so it works on a full disk; a reader
    /// may see a torn write, which it must treat as unreadable). Stores without in-place writes
    /// replace it like [`Store::put`].
    async fn overwrite(&self, key: &str, data: Bytes) -> Result<()> {
        self.put(key, data).await
    }
    /// Reads a small object whole; `Ok(None)` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Reads `len` bytes at `offset`; fails if the object is shorter.
    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// Size of an object, `None` if it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes objects; keys that do not exist are not an error.
    async fn delete(&self, keys: &[String]) -> Result<()>;
    /// Objects under `prefix` that a writer started and never finished (a process killed
    /// mid-write): local temp files, S3 multipart uploads. Listing never shows them.
    async fn partials(&self, prefix: &str) -> Result<Vec<Partial>>;
    /// Removes one of [`Store::partials`] (deletes the temp file, aborts the upload).
    async fn remove_partial(&self, partial: &Partial) -> Result<()>;
}

/// An object a writer started and never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The key it would have had.
    pub key: String,
    /// What the store knows it by: the temp file's key, the multipart upload's id.
    pub id: String,
    /// When it was last written to (local) or started (S3).
    pub since: Option<DateTime<Utc>>,
    pub size: Option<u64>,
}

/// An object being written. Dropping it without `finish` discards what was written.
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the object durable and visible; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Discards the object.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// What `check-config --connect` found on one target.
#[derive(Debug)]
pub struct Probe {
    pub target: String,
    pub describe: String,
    pub required: bool,
    /// Each step and its outcome: write, read back, list, delete.
    pub steps: Vec<(&'static str, Result<()>)>,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|(_, r)| r.is_ok())
    }
}

/// Writes, reads back, lists and deletes a small object on `target`, reporting every step (a
/// missing permission such as s3:DeleteObject shows as that step failing).
pub async fn probe(target: &Target) -> Probe {
    let key = format!(".pgbackd-probe/{:016x}", rand::random::<u64>());
    let body = Bytes::from(format!("pgbackd probe {key}\n"));
    let mut steps = Vec::new();
    let write = target.store.put(&key, body.clone()).await;
    let wrote = write.is_ok();
    steps.push(("write", write));
    if wrote {
        let read = match target.store.get(&key).await {
            Ok(Some(b)) if b == body => Ok(()),
            Ok(Some(_)) => Err(anyhow::anyhow!("read back different bytes")),
            Ok(None) => Err(anyhow::anyhow!("the object just written is not there")),
            Err(e) => Err(e),
        };
        steps.push(("read", read));
        let list = match target.store.list(".pgbackd-probe/").await {
            Ok(objects) if objects.iter().any(|o| o.key == key) => Ok(()),
            Ok(_) => Err(anyhow::anyhow!("the object just written is not listed")),
            Err(e) => Err(e),
        };
        steps.push(("list", list));
        let delete = match target.store.delete(std::slice::from_ref(&key)).await {
            Ok(()) => match target.store.size(&key).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err(anyhow::anyhow!("the object is still there after deleting it")),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        steps.push(("delete", delete));
    }
    Probe { target: target.name().to_owned(), describe: target.store.describe(), required: target.required, steps }
}
