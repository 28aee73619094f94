//! Stream stages between a child process and storage: segment -> compress -> hash -> store, and
//! back: read -> verify -> decompress -> hash -> write.
//!
//! Backup: the input is cut into raw segments of `segment_size`; each becomes an independent zstd
//! frame, compressed on the blocking pool (`threads` at a time, order preserved), so the stored
//! object is an ordinary `.zst` file and every frame can be read on its own. A dedicated thread
//! hashes the raw stream (SHA-256) and feeds the archive row counter; the writer hashes the stored
//! bytes and fans each frame out to every target. Memory is bounded by a few segments in flight,
//! never by the size of the dump. Nothing is committed here: [`Staged`] is finished or aborted by
//! the caller once it knows the producer succeeded.

pub use object::{CompressionAlgorithm, Frame, StoredObject};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone)]
pub struct PipelineOptions {
    pub segment_size: usize,
    /// zstd level; `None` stores frames uncompressed.
    pub level: Option<i32>,
    pub threads: usize,
    pub stall_timeout: Duration,
    /// For an incremental: compress each segment against the aligned region of this base.
    pub delta: Option<Delta>,
    /// Encrypt what is stored (one age stream per object).
    pub encrypt: Option<Arc<crate::crypto::Crypto>>,
}

/// How an incremental's segments find their reference in its base.
#[derive(Clone)]
pub struct Delta {
    pub base: Arc<ObjectReader>,
    /// Where each data block starts in the base (from its manifest).
    pub base_blocks: Vec<delta::BlockStart>,
    /// Where each data block starts in the new dump, filled in by the reader as it streams.
    pub new_blocks: Arc<std::sync::Mutex<Vec<delta::BlockStart>>>,
    /// Bytes of base taken on either side of the aligned position.
    pub slack: u64,
    /// How hard each frame looks for matches in its reference.
    pub search: delta::Search,
}

/// Why a stream stopped. Callers branch on `Cancelled` and `Stalled`.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cancelled")]
    Cancelled,
    #[error("no data arrived for {0:?} (stall_timeout)")]
    Stalled(Duration),
    #[error("reading the dump stream: {0}")]
    Read(#[source] std::io::Error),
    /// The stream is not what its [`Filter`] expects (for a dump: not a whole pg_dump archive).
    #[error("{0}")]
    Filter(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Store(anyhow::Error),
}

/// Bytes moved so far, shared with progress reporting and the stall guard, and the size the
/// stream is expected to reach (0: unknown), for the percentage the status page shows.
#[derive(Debug, Default)]
pub struct Counter {
    moved: AtomicU64,
    expected: AtomicU64,
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.moved.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
    pub fn set_expected(&self, bytes: u64) {
        self.expected.store(bytes, Ordering::Relaxed);
    }
    /// The expected size, when the job knows one.
    pub fn expected(&self) -> Option<u64> {
        Some(self.expected.load(Ordering::Relaxed)).filter(|&e| e > 0)
    }
}

mod buffers;
mod decrypt;
pub mod delta;
pub mod growing;
pub mod object;
mod read;
mod segments;
mod store;
pub use read::{Decryption, ObjectReader, RawCheck, read_small_object, restore_prefix, restore_stream, spool_to_file};
pub use segments::{Filter, Segments, Unfiltered, read_segments};
pub use store::{
    Committed, Sink, Staged, compress_frame, put_on_targets, store_small_object, store_stream, store_stream_to,
};

#[cfg(test)]
mod tests;
