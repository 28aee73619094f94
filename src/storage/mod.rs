//! Storage targets behind one small trait: a repository only needs to create objects by streaming,
//! put and get small ones atomically, read ranges, list by prefix and delete.
//!
//! Keys are `/`-separated relative paths (`app/20261122T010000Z-full-3f9a1c/data.zst`); only
//! [`crate::repo`] decides them.

pub mod local;

use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// A storage target (local directory, S3 bucket prefix).
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
