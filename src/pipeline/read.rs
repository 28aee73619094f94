//! Reading stored objects back: every frame's SHA-256 checked before it is decoded; an
//! incremental's frames decoded with the matching region of its base full as reference.

use super::Counter;
use super::delta;
use super::object::{CompressionAlgorithm, StoredObject};
use crate::crypto::{Crypto, EncryptionInfo};
use crate::storage::Store;
use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Decoded frames kept by a base reader: consecutive delta frames use overlapping base regions.
const BASE_CACHE_FRAMES: usize = 8;

/// The age STREAM chunk: 64 KiB of plaintext, stored with a 16-byte tag.
const AGE_CHUNK: u64 = 64 * 1024;
const AGE_STORED_CHUNK: u64 = AGE_CHUNK + 16;

/// What decrypts an encrypted backup's objects.
#[derive(Clone)]
pub struct Decryption {
    pub crypto: Arc<Crypto>,
    pub info: EncryptionInfo,
}

/// The fetched part of an encrypted object, seen by the (blocking) age reader as the whole file:
/// a read outside it is an error, never a short read (age would take it for the last chunk).
/// The last chunk is kept too: age reads it to learn the length when seeking to a chunk start.
struct Window {
    size: u64,
    start: u64,
    data: Bytes,
    tail_start: u64,
    tail: Bytes,
    pos: u64,
}

#[derive(Clone)]
struct WindowHandle(Arc<std::sync::Mutex<Window>>);

impl WindowHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Read for WindowHandle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut w = self.lock();
        if w.pos >= w.size {
            return Ok(0);
        }
        let pos = w.pos;
        let inside = |start: u64, data: &Bytes| pos >= start && pos < start + data.len() as u64;
        let (start, data) = if inside(w.start, &w.data) {
            (w.start, w.data.clone())
        } else if inside(w.tail_start, &w.tail) {
            (w.tail_start, w.tail.clone())
        } else {
            return Err(std::io::Error::other(OUTSIDE_WINDOW));
        };
        let from = (pos - start) as usize;
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        w.pos += n as u64;
        Ok(n)
    }
}

impl Seek for WindowHandle {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let mut w = self.lock();
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => w.size.checked_add_signed(d),
            SeekFrom::Current(d) => w.pos.checked_add_signed(d),
        };
        w.pos = target.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(w.pos)
    }
}

const OUTSIDE_WINDOW: &str = "read outside the fetched range";

/// The first fetch of an age header; it grows ×4 while the recipients' stanzas do not fit.
/// (Small in tests, so that a few recipients exercise the growth.)
const HEADER_FETCH: u64 = if cfg!(test) { 1024 } else { 64 * 1024 };

/// An encrypted object's age stream, opened once (the key unwrap can be an scrypt), read by range.
struct Decrypting {
    d: Decryption,
    window: WindowHandle,
    stream: Arc<std::sync::Mutex<Option<age::stream::StreamReader<WindowHandle>>>>,
    /// Where the encrypted chunks start (after the age header).
    payload_start: tokio::sync::OnceCell<u64>,
    /// SHA-256 of the stored (encrypted) bytes fetched so far, while they are fetched in order.
    stored_sha: std::sync::Mutex<Option<(u64, Sha256)>>,
}

/// Reads one stored object: frames checked and decoded, raw ranges assembled.
pub struct ObjectReader {
    store: Arc<dyn Store>,
    object: StoredObject,
    /// Names the backup in errors ("backup X of database Y").
    what: String,
    /// The base full's reader, for an incremental's delta frames.
    base: Option<Arc<ObjectReader>>,
    cache: tokio::sync::Mutex<VecDeque<(usize, Bytes)>>,
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
            (true, Some(d)) => Some(Decrypting {
                d,
                window: WindowHandle(Arc::new(std::sync::Mutex::new(Window {
                    size: object.stored_bytes,
                    start: 0,
                    data: Bytes::new(),
                    tail_start: 0,
                    tail: Bytes::new(),
                    pos: 0,
                }))),
                stream: Default::default(),
                payload_start: Default::default(),
                stored_sha: std::sync::Mutex::new(Some((0, Sha256::new()))),
            }),
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

    /// A reader for an incremental: `base` reads its base full (and caches its decoded frames).
    pub fn with_base(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        decryption: Option<Decryption>,
        base: Arc<ObjectReader>,
    ) -> Result<Arc<ObjectReader>> {
        Ok(Arc::new(ObjectReader::build(store, object, what, Some(base), 0, decryption)?))
    }

    /// A reader used as a base: it keeps a few decoded frames.
    pub fn as_base(
        store: Arc<dyn Store>,
        object: StoredObject,
        what: &str,
        decryption: Option<Decryption>,
    ) -> Result<Arc<ObjectReader>> {
        Ok(Arc::new(ObjectReader::build(store, object, what, None, BASE_CACHE_FRAMES, decryption)?))
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
            Some(d) => self.decrypt_range(d, f.stored_offset, f.stored_len).await,
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

    /// Opens the age stream: fetches the header (growing the fetch if it has many recipients)
    /// and unwraps the file key; returns where the encrypted chunks start.
    async fn open(&self, d: &Decrypting) -> Result<u64> {
        let size = self.object.stored_bytes;
        let open = async {
            let mut len = size.min(HEADER_FETCH);
            loop {
                let prefix = self.store.read_range(&self.object.key, 0, len).await?;
                {
                    let mut w = d.window.lock();
                    (w.start, w.data, w.pos) = (0, prefix.clone(), 0);
                }
                let (window, dec, what) = (d.window.clone(), d.d.clone(), self.what.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    let stream = dec.crypto.decrypt(window.clone(), &what, &dec.info)?;
                    let start = window.lock().pos;
                    Ok::<_, anyhow::Error>((stream, start))
                })
                .await
                .context("decryption task failed")?;
                match opened {
                    Ok((stream, start)) => {
                        if size > start {
                            let tail_start = start + (size - start - 1) / AGE_STORED_CHUNK * AGE_STORED_CHUNK;
                            let tail = self.store.read_range(&self.object.key, tail_start, size - tail_start).await?;
                            let mut w = d.window.lock();
                            (w.tail_start, w.tail) = (tail_start, tail);
                        }
                        *d.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
                        if let Some((upto, sha)) = d.stored_sha.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                            sha.update(&prefix[..start as usize]);
                            *upto = start;
                        }
                        return Ok(start);
                    }
                    Err(e) if len < size && format!("{e:#}").contains(OUTSIDE_WINDOW) => len = size.min(len * 4),
                    Err(e) => return Err(e),
                }
            }
        };
        d.payload_start.get_or_try_init(|| open).await.copied()
    }

    /// `len` bytes at `offset` of an encrypted object's plaintext: fetches the age chunks that
    /// hold them, decrypts (each chunk is authenticated) and cuts.
    async fn decrypt_range(&self, d: &Decrypting, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let payload = self.open(d).await?;
        let size = self.object.stored_bytes;
        let (first, last) = (offset / AGE_CHUNK, (offset + len - 1) / AGE_CHUNK);
        let start = payload + first * AGE_STORED_CHUNK;
        let end = (payload + (last + 1) * AGE_STORED_CHUNK).min(size);
        anyhow::ensure!(
            start < end,
            "{}: plaintext bytes {offset}..{} lie past the end of the {size} encrypted bytes: the object is truncated",
            self.what,
            offset + len
        );
        let data = self.store.read_range(&self.object.key, start, end - start).await?;
        if let Ok(mut guard) = d.stored_sha.lock()
            && let Some((upto, sha)) = guard.as_mut()
        {
            if start <= *upto && *upto < end {
                sha.update(&data[(*upto - start) as usize..]);
                *upto = end;
            } else if start > *upto {
                *guard = None; // not read in order: no whole-object hash
            }
        }
        let (window, stream, what) = (d.window.clone(), d.stream.clone(), self.what.clone());
        tokio::task::spawn_blocking(move || {
            let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
            let stream = stream.as_mut().context("the age stream is not open")?;
            {
                let mut w = window.lock();
                (w.start, w.data) = (start, data);
            }
            let mut out = vec![0u8; len as usize];
            stream.seek(SeekFrom::Start(offset)).and_then(|_| stream.read_exact(&mut out)).map_err(|e| {
                anyhow::anyhow!(
                    "{what}: the encrypted bytes {start}..{end} do not decrypt ({e}): the stored data is damaged or was modified"
                )
            })?;
            Ok(Bytes::from(out))
        })
        .await
        .context("decryption task failed")?
    }

    /// The SHA-256 of the whole stored (encrypted) object, when it was read in full and in order.
    pub fn encrypted_sha256(&self) -> Option<String> {
        let d = self.decrypting.as_ref()?;
        let guard = d.stored_sha.lock().ok()?;
        let (upto, sha) = guard.as_ref()?;
        (*upto == self.object.stored_bytes).then(|| hex::encode(sha.clone().finalize()))
    }

    /// Decodes frame `index` from its (checked) stored bytes.
    pub async fn decode(&self, index: usize, stored: Bytes) -> Result<Bytes> {
        let f = self.object.frames[index].clone();
        let what = self.what.clone();
        let raw_len = f.raw_len as usize;
        let raw: Vec<u8> = match self.object.compression {
            CompressionAlgorithm::None => stored.to_vec(),
            CompressionAlgorithm::Zstd => tokio::task::spawn_blocking(move || zstd::bulk::decompress(&stored, raw_len))
                .await
                .context("decompression task failed")?
                .with_context(|| {
                    format!("{what}: frame {index} (stored offset {}) does not decompress", f.stored_offset)
                })?,
            CompressionAlgorithm::ZstdPatch => {
                let base =
                    self.base.as_ref().with_context(|| format!("{what}: an incremental frame without its base"))?;
                let (start, len) = (f.base_offset.unwrap_or(0), f.base_len.unwrap_or(0));
                let reference = Box::pin(base.range(start, start + len)).await?;
                tokio::task::spawn_blocking(move || delta::decompress(&stored, &reference, raw_len))
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
        Ok(Bytes::from(raw))
    }

    /// Frame `index`, decoded (from the cache when it was read recently).
    pub async fn frame(&self, index: usize) -> Result<Bytes> {
        if self.cache_frames > 0
            && let Some((_, b)) = self.cache.lock().await.iter().find(|(i, _)| *i == index)
        {
            return Ok(b.clone());
        }
        let stored = self.stored_frame(index).await?;
        let raw = self.decode(index, stored).await?;
        if self.cache_frames > 0 {
            let mut cache = self.cache.lock().await;
            cache.push_back((index, raw.clone()));
            while cache.len() > self.cache_frames {
                cache.pop_front();
            }
        }
        Ok(raw)
    }

    /// The raw bytes `[start, end)`, assembled from the frames that hold them.
    pub async fn range(&self, start: u64, end: u64) -> Result<Bytes> {
        anyhow::ensure!(end <= self.object.raw_bytes, "{}: range {start}..{end} is past the end", self.what);
        let mut out = BytesMut::with_capacity((end - start) as usize);
        let first = self.object.frames.partition_point(|f| f.raw_offset + f.raw_len <= start);
        for index in first..self.object.frames.len() {
            let f = &self.object.frames[index];
            if f.raw_offset >= end {
                break;
            }
            let raw = self.frame(index).await?;
            let from = start.saturating_sub(f.raw_offset) as usize;
            let to = (end - f.raw_offset).min(f.raw_len) as usize;
            out.extend_from_slice(&raw[from..to]);
        }
        Ok(out.freeze())
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
/// frame, each checked before it is decoded; the next frame is fetched while one is written.
pub async fn restore_stream<W: AsyncWrite + Unpin + Send>(
    reader: &Arc<ObjectReader>,
    out: &mut W,
    check: RawCheck,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<()> {
    let object = reader.object().clone();
    let what = reader.what.clone();
    let (tx, mut rx) = mpsc::channel::<Result<Bytes>>(2);
    let fetch = {
        let reader = reader.clone();
        let object = object.clone();
        let what = what.clone();
        async move {
            let mut stored_sha = Sha256::new();
            for index in 0..object.frames.len() {
                let item = match reader.stored_frame(index).await {
                    Ok(stored) => {
                        if check == RawCheck::Sha256 {
                            stored_sha.update(&stored);
                        }
                        reader.decode(index, stored).await
                    }
                    Err(e) => Err(e),
                };
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
    let fetcher = tokio::spawn(fetch);
    let mut sha = Sha256::new();
    let mut frames = 0usize;
    let result: Result<()> = async {
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => anyhow::bail!("{what}: cancelled"),
                n = rx.recv() => n,
            };
            let Some(item) = next else { break };
            let raw = item?;
            if check == RawCheck::Sha256 {
                sha.update(&raw);
            }
            out.write_all(&raw).await.context("writing the restored stream")?;
            moved.add(raw.len() as u64);
            frames += 1;
        }
        anyhow::ensure!(
            frames == object.frames.len(),
            "{what}: only {frames} of {} frames could be read",
            object.frames.len()
        );
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
