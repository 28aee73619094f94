//! Reading stored objects back: every frame's SHA-256 checked before it is decoded; an
//! incremental's frames decoded with the matching region of its base as reference, the base read
//! the same way down its chain to a full.

use super::Counter;
use super::buffers::POOL;
use super::decrypt::Decrypting;
pub use super::decrypt::Decryption;
use super::delta;
use super::object::{CompressionAlgorithm, StoredObject};
use crate::storage::Store;
use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames a base reader keeps beyond the overlap of consecutive delta frames' regions: the one
/// the next region reaches into.
const BASE_CACHE_SPARE_FRAMES: u64 = 1;

/// A decoded frame, or the one decode of it under way (tasks wanting it wait for that one).
type Cached = Arc<tokio::sync::OnceCell<Bytes>>;

/// Reads one stored object: frames checked and decoded, raw ranges assembled.
pub struct ObjectReader {
    store: Arc<dyn Store>,
    object: StoredObject,
    /// Names the backup in errors ("backup X of database Y").
    what: String,
    /// The base's reader, for an incremental's delta frames (itself with its base, down to the
    /// full, for a chain of incrementals).
    base: Option<Arc<ObjectReader>>,
    /// Recently used frames, least recently used first.
    cache: std::sync::Mutex<VecDeque<(usize, Cached)>>,
    cache_frames: usize,
    decrypting: Option<Decrypting>,
}

impl ObjectReader {
    pub fn new(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        decryption: Option<Decryption>,
    ) -> Result<Arc<ObjectReader>> {
        Ok(Arc::new(ObjectReader::build(store, object, what, None, 0, decryption)?))
    }

    fn build(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        base: Option<Arc<ObjectReader>>,
        cache_frames: usize,
        decryption: Option<Decryption>,
    ) -> Result<ObjectReader> {
        let decrypting = match (object.encrypted, decryption) {
            (false, _) => None,
            (true, None) => {
                anyhow::bail!("{what}: {} is encrypted but the manifest has no encryption record", object.key)
            }
            (true, Some(d)) => Some(Decrypting::new(d, object.stored_bytes)),
        };
        Ok(ObjectReader {
            store,
            object,
            what: what.to_owned(),
            base,
            cache: Default::default(),
            cache_frames,
            decrypting,
        })
    }

    /// A reader for an incremental: `base` reads its base (and caches its decoded frames).
    pub fn with_base(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        decryption: Option<Decryption>,
        base: Arc<ObjectReader>,
    ) -> Result<Arc<ObjectReader>> {
        Ok(Arc::new(ObjectReader::build(store, object, what, Some(base), 0, decryption)?))
    }

    /// A reader used as a base: it keeps the decoded frames that consecutive delta frames'
    /// regions share (`overlap` bytes: twice the slack) and a spare one; every link of a chain
    /// keeps its own. `base` is its own base when it is an incremental itself.
    pub fn as_base(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        decryption: Option<Decryption>,
        base: Option<Arc<ObjectReader>>,
        overlap: u64,
    ) -> Result<Arc<ObjectReader>> {
        let largest = object.frames.iter().map(|f| f.raw_len).max().unwrap_or(1).max(1);
        let frames = (overlap.div_ceil(largest) + BASE_CACHE_SPARE_FRAMES) as usize;
        Ok(Arc::new(ObjectReader::build(store, object, what, base, frames, decryption)?))
    }

    pub fn object(&self) -> &StoredObject {
        &self.object
    }

    pub fn raw_len(&self) -> u64 {
        self.object.raw_bytes
    }

    /// The stored bytes of frame `index` (decrypted), with their SHA-256 checked.
    pub async fn stored_frame(&self, index: usize) -> Result<Bytes> {
        let f = &self.object.frames[index];
        let stored = match &self.decrypting {
            None => self.store.read_range(&self.object.key, f.stored_offset, f.stored_len).await,
            Some(d) => d.range(&self.store, &self.object.key, &self.what, f.stored_offset, f.stored_len).await,
        }
        .with_context(|| format!("{}: reading frame {index} at stored offset {}", self.what, f.stored_offset))?;
        let got = hex::encode(Sha256::digest(&stored));
        anyhow::ensure!(
            got == f.stored_sha256,
            "{}: frame {index} (stored offset {}, {} bytes) has SHA-256 {got}, the manifest says {}: the stored data is corrupt",
            self.what,
            f.stored_offset,
            f.stored_len,
            f.stored_sha256
        );
        Ok(stored)
    }

    /// The SHA-256 of the whole stored (encrypted) object, when it was read in full and in order.
    pub fn encrypted_sha256(&self) -> Option<String> {
        self.decrypting.as_ref()?.stored_sha256(self.object.stored_bytes)
    }

    /// Decodes frame `index` from its (checked) stored bytes.
    pub async fn decode(&self, index: usize, stored: Bytes) -> Result<Bytes> {
        let f = self.object.frames[index].clone();
        let what = self.what.clone();
        let raw_len = f.raw_len as usize;
        let raw: Bytes = match self.object.compression {
            CompressionAlgorithm::None => stored,
            CompressionAlgorithm::Zstd => tokio::task::spawn_blocking(move || {
                let mut out = POOL.take(raw_len);
                zstd::bulk::Decompressor::new()
                    .and_then(|mut d| d.decompress_to_buffer(&stored[..], &mut out))
                    .map(|_| POOL.freeze(out))
            })
            .await
            .context("decompression task failed")?
            .with_context(|| {
                format!("{what}: frame {index} (stored offset {}) does not decompress", f.stored_offset)
            })?,
            CompressionAlgorithm::ZstdPatch => {
                let base =
                    self.base.as_ref().with_context(|| format!("{what}: an incremental frame without its base"))?;
                let (start, len) = (f.base_offset.unwrap_or(0), f.base_len.unwrap_or(0));
                let reference = base.base_range(start, start + len).await?;
                tokio::task::spawn_blocking(move || {
                    let mut out = POOL.take(raw_len);
                    delta::decompress_into(&stored, &reference, &mut out).map(|()| POOL.freeze(out))
                })
                .await
                .context("decompression task failed")?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{what}: frame {index} (stored offset {}) does not decode against its base: {e}",
                        f.stored_offset
                    )
                })?
            }
        };
        anyhow::ensure!(
            raw.len() as u64 == f.raw_len,
            "{}: frame {index} decoded to {} bytes, the manifest says {}",
            self.what,
            raw.len(),
            f.raw_len
        );
        Ok(raw)
    }

    /// Frame `index`, decoded (from the cache when it was read recently; tasks asking for the
    /// same frame at once share one decode, which matters down a chain of incrementals).
    pub async fn frame(&self, index: usize) -> Result<Bytes> {
        if self.cache_frames == 0 {
            return self.fetch(index).await;
        }
        // a failed decode leaves the cell empty: the next asker tries again
        self.cached(index).get_or_try_init(|| self.fetch(index)).await.cloned()
    }

    /// The cache's cell for frame `index` (new and empty if it was not there), now the most
    /// recently used.
    fn cached(&self, index: usize) -> Cached {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match cache.iter().position(|(i, _)| *i == index) {
            Some(p) => cache.remove(p).expect("the position was just found"),
            None => (index, Cached::default()),
        };
        let cell = entry.1.clone();
        cache.push_back(entry);
        while cache.len() > self.cache_frames {
            cache.pop_front();
        }
        cell
    }

    async fn fetch(&self, index: usize) -> Result<Bytes> {
        let stored = self.stored_frame(index).await?;
        self.decode(index, stored).await
    }

    /// The raw bytes `[start, end)`, assembled from the frames that hold them (a slice of the
    /// frame when one holds them all). The frames are all decoded before the copy is made, so
    /// down a chain only one level at a time holds a region being assembled.
    pub async fn range(&self, start: u64, end: u64) -> Result<Bytes> {
        anyhow::ensure!(end <= self.object.raw_bytes, "{}: range {start}..{end} is past the end", self.what);
        let first = self.object.frames.partition_point(|f| f.raw_offset + f.raw_len <= start);
        let mut parts = Vec::new();
        for index in first..self.object.frames.len() {
            let f = &self.object.frames[index];
            if f.raw_offset >= end {
                break;
            }
            let raw = self.frame(index).await?;
            let from = start.saturating_sub(f.raw_offset) as usize;
            let to = (end - f.raw_offset).min(f.raw_len) as usize;
            parts.push(raw.slice(from..to));
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut out = POOL.take((end - start) as usize);
        for p in &parts {
            out.extend_from_slice(p);
        }
        Ok(POOL.freeze(out))
    }

    /// [`ObjectReader::range`] as a boxed future that is `Send`: a link's decode awaits the
    /// range of the link below (a recursive future must be boxed).
    fn base_range(
        &self,
        start: u64,
        end: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes>> + Send + '_>> {
        Box::pin(self.range(start, end))
    }

    /// Checks the SHA-256 of every stored frame (and of the base's), without decoding: cheap,
    /// compressed bytes only; done before a restore touches its target.
    pub async fn check_stored(&self) -> Result<()> {
        for index in 0..self.object.frames.len() {
            self.stored_frame(index).await?;
        }
        if let Some(base) = &self.base {
            Box::pin(base.check_stored()).await?;
        }
        Ok(())
    }
}

/// Whether [`restore_stream`] also hashes the decoded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCheck {
    /// Check the SHA-256 of the whole stored object and of the whole raw stream too (verify,
    /// cat, dry runs).
    Sha256,
    /// Only each frame's stored SHA-256 and decoded length: zstd decoding is deterministic, so
    /// verified frames decode to the recorded bytes. Saves a hash pass where CPU is contended
    /// (a restore shares the machine with pg_restore and the server).
    FramesOnly,
}

/// Streams an object's raw bytes into `out` (pg_restore's stdin, stdout, a spool file), frame by
/// frame, each checked before it is decoded; the next two frames are decoded while one is written.
pub async fn restore_stream<W: AsyncWrite + Unpin + Send>(
    reader: &Arc<ObjectReader>,
    out: &mut W,
    check: RawCheck,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<()> {
    stream_frames(reader, out, check, None, cancel, moved).await
}

/// Writes an object's raw bytes into `file` (a spool for a parallel pg_restore): several frames at
/// once (two per core, up to 8), each read, checked against its stored SHA-256, decoded and
/// written at its raw offset by a task of its own, since nothing else runs meanwhile (an
/// encrypted object's frames are read in order, then decoded and written in parallel).
pub async fn spool_to_file(
    reader: &Arc<ObjectReader>,
    file: &std::fs::File,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let what = reader.what.clone();
    let frames = reader.object().frames.len();
    // two frames per core in flight, so a core never waits for its next frame's read or write
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get() * 2).clamp(2, 8);
    // an encrypted object is one age stream, read in order; a plain one frame by frame, each
    // frame read, checked, decoded and written by a task of its own (on its own core)
    let in_order = reader.decrypting.is_some();
    // dropped on an error or cancellation: its tasks are aborted
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while next < frames && running.len() < parallel {
            let stored = if in_order { Some(reader.stored_frame(next).await?) } else { None };
            let (r, index, out) = (reader.clone(), next, file.try_clone().context("opening the spool file")?);
            running.spawn(async move {
                let stored = match stored {
                    Some(s) => s,
                    None => r.stored_frame(index).await?,
                };
                let raw = r.decode(index, stored).await?;
                let (offset, len) = (r.object().frames[index].raw_offset, raw.len() as u64);
                tokio::task::spawn_blocking(move || out.write_all_at(&raw, offset))
                    .await
                    .context("spool write task failed")?
                    .context("writing the spool file")?;
                anyhow::Ok(len)
            });
            next += 1;
        }
        let done = tokio::select! {
            _ = cancel.cancelled() => anyhow::bail!("{what}: cancelled"),
            d = running.join_next() => d,
        };
        match done {
            Some(written) => moved.add(written.context("a spool task failed")??),
            None => break,
        }
    }
    Ok(())
}

/// [`restore_stream`] of the first `limit` raw bytes only (what a partial restore needs), each
/// frame read checked.
pub async fn restore_prefix<W: AsyncWrite + Unpin + Send>(
    reader: &Arc<ObjectReader>,
    out: &mut W,
    limit: u64,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<()> {
    stream_frames(reader, out, RawCheck::FramesOnly, Some(limit), cancel, moved).await
}

async fn stream_frames<W: AsyncWrite + Unpin + Send>(
    reader: &Arc<ObjectReader>,
    out: &mut W,
    check: RawCheck,
    limit: Option<u64>,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<()> {
    let object = reader.object().clone();
    let what = reader.what.clone();
    let wanted = match limit {
        Some(l) => object.frames.iter().take_while(|f| f.raw_offset < l).count(),
        None => object.frames.len(),
    };
    // a prefix has no recorded SHA-256 of its own
    debug_assert!(limit.is_none() || check == RawCheck::FramesOnly);
    let (tx, mut rx) = mpsc::channel::<Result<Bytes>>(2);
    let fetch = {
        let reader = reader.clone();
        let object = object.clone();
        let what = what.clone();
        async move {
            use futures_util::StreamExt;
            let mut stored_sha = Sha256::new();
            // frames decode two at a time (in order out): a chain's links below share the
            // frames both need; an encrypted object is one age stream, read in order
            let ahead = if reader.decrypting.is_some() { 1 } else { 2 };
            let mut frames = futures_util::stream::iter(0..wanted)
                .map(|index| {
                    let reader = reader.clone();
                    async move {
                        let stored = reader.stored_frame(index).await?;
                        let raw = reader.decode(index, stored.clone()).await?;
                        anyhow::Ok((stored, raw))
                    }
                })
                .buffered(ahead);
            while let Some(item) = frames.next().await {
                let item = item.map(|(stored, raw)| {
                    if check == RawCheck::Sha256 {
                        stored_sha.update(&stored);
                    }
                    raw
                });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            if check == RawCheck::Sha256 {
                let got = hex::encode(stored_sha.finalize());
                let problem = if got != object.frames_sha256() {
                    Some(format!(
                        "{what}: the {} {} has SHA-256 {got}, the manifest says {}",
                        if object.encrypted { "decrypted object" } else { "stored object" },
                        object.key,
                        object.frames_sha256()
                    ))
                } else if object.encrypted {
                    match reader.encrypted_sha256() {
                        Some(s) if s == object.stored_sha256 => None,
                        Some(s) => Some(format!(
                            "{what}: the stored (encrypted) object {} has SHA-256 {s}, the manifest says {}",
                            object.key, object.stored_sha256
                        )),
                        None => Some(format!("{what}: {} was not read in full", object.key)),
                    }
                } else {
                    None
                };
                if let Some(p) = problem {
                    let _ = tx.send(Err(anyhow::anyhow!(p))).await;
                }
            }
        }
    };
    let fetcher = crate::tasks::spawn(fetch);
    let mut sha = Sha256::new();
    let mut frames = 0usize;
    let result: Result<()> = async {
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => anyhow::bail!("{what}: cancelled"),
                n = rx.recv() => n,
            };
            let Some(item) = next else { break };
            let mut raw = item?;
            if check == RawCheck::Sha256 {
                sha.update(&raw);
            }
            if let Some(l) = limit {
                let offset = object.frames[frames].raw_offset;
                raw.truncate(usize::try_from(l.saturating_sub(offset)).unwrap_or(usize::MAX).min(raw.len()));
            }
            out.write_all(&raw).await.context("writing the restored stream")?;
            moved.add(raw.len() as u64);
            frames += 1;
        }
        anyhow::ensure!(frames == wanted, "{what}: only {frames} of {wanted} frames could be read");
        out.flush().await.context("flushing the restored stream")?;
        let got = hex::encode(sha.finalize_reset());
        anyhow::ensure!(
            check == RawCheck::FramesOnly || got == object.raw_sha256,
            "{what}: the restored stream has SHA-256 {got}, the manifest says {}",
            object.raw_sha256
        );
        Ok(())
    }
    .await;
    fetcher.abort();
    result
}

/// Reads a small single-frame object (such as globals) whole and verifies it.
pub async fn read_small_object(
    store: &Arc<dyn Store>,
    object: &StoredObject,
    what: &str,
    decryption: Option<&Decryption>,
) -> Result<Bytes> {
    let stored = store
        .get(&object.key)
        .await?
        .with_context(|| format!("{what}: {} is missing from {}", object.key, store.describe()))?;
    let got = hex::encode(Sha256::digest(&stored));
    anyhow::ensure!(
        got == object.stored_sha256,
        "{what}: {} has SHA-256 {got}, the manifest says {}",
        object.key,
        object.stored_sha256
    );
    let stored = match (object.encrypted, decryption) {
        (false, _) => stored,
        (true, None) => anyhow::bail!("{what}: {} is encrypted but the manifest has no encryption record", object.key),
        (true, Some(d)) => Bytes::from(d.crypto.decrypt_all(&stored, what, &d.info)?),
    };
    let raw = match object.compression {
        CompressionAlgorithm::None => stored,
        _ => Bytes::from(
            zstd::bulk::decompress(&stored, object.raw_bytes as usize)
                .with_context(|| format!("{what}: {} does not decompress", object.key))?,
        ),
    };
    let got = hex::encode(Sha256::digest(&raw));
    anyhow::ensure!(
        got == object.raw_sha256,
        "{what}: {} decompresses to SHA-256 {got}, the manifest says {}",
        object.key,
        object.raw_sha256
    );
    Ok(raw)
}
