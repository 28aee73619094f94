//! Reading an encrypted object by range: the age header is fetched once (the fetch grows while
//! many recipients' stanzas do not fit), then only the 64 KiB STREAM chunks that hold the bytes
//! asked for are fetched and decrypted, each authenticated by its tag.

use crate::crypto::{Crypto, EncryptionInfo};
use crate::storage::Store;
use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

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
pub(super) struct Decrypting {
    d: Decryption,
    window: WindowHandle,
    stream: Arc<std::sync::Mutex<Option<age::stream::StreamReader<WindowHandle>>>>,
    /// Where the encrypted chunks start (after the age header).
    payload_start: tokio::sync::OnceCell<u64>,
    /// SHA-256 of the stored (encrypted) bytes fetched so far, while they are fetched in order.
    stored_sha: std::sync::Mutex<Option<(u64, Sha256)>>,
}

impl Decrypting {
    pub(super) fn new(d: Decryption, size: u64) -> Decrypting {
        Decrypting {
            d,
            window: WindowHandle(Arc::new(std::sync::Mutex::new(Window {
                size,
                start: 0,
                data: Bytes::new(),
                tail_start: 0,
                tail: Bytes::new(),
                pos: 0,
            }))),
            stream: Default::default(),
            payload_start: Default::default(),
            stored_sha: std::sync::Mutex::new(Some((0, Sha256::new()))),
        }
    }

    /// The SHA-256 of the whole stored object, when all `total` bytes were read in order.
    pub(super) fn stored_sha256(&self, total: u64) -> Option<String> {
        let guard = self.stored_sha.lock().ok()?;
        let (upto, sha) = guard.as_ref()?;
        (*upto == total).then(|| hex::encode(sha.clone().finalize()))
    }

    /// Opens the age stream: fetches the header (growing the fetch if it has many recipients)
    /// and unwraps the file key; returns where the encrypted chunks start.
    async fn open(&self, store: &Arc<dyn Store>, key: &str, what: &str) -> Result<u64> {
        let (d, size) = (self, self.window.lock().size);
        let open = async {
            let mut len = size.min(HEADER_FETCH);
            loop {
                let prefix = store.read_range(key, 0, len).await?;
                {
                    let mut w = d.window.lock();
                    (w.start, w.data, w.pos) = (0, prefix.clone(), 0);
                }
                let (window, dec, what) = (d.window.clone(), d.d.clone(), what.to_owned());
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
                            let tail = store.read_range(key, tail_start, size - tail_start).await?;
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
    pub(super) async fn range(
        &self,
        store: &Arc<dyn Store>,
        key: &str,
        what: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let d = self;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let payload = self.open(store, key, what).await?;
        let size = self.window.lock().size;
        let (first, last) = (offset / AGE_CHUNK, (offset + len - 1) / AGE_CHUNK);
        let start = payload + first * AGE_STORED_CHUNK;
        let end = (payload + (last + 1) * AGE_STORED_CHUNK).min(size);
        anyhow::ensure!(
            start < end,
            "{}: plaintext bytes {offset}..{} lie past the end of the {size} encrypted bytes: the object is truncated",
            what,
            offset + len
        );
        let data = store.read_range(key, start, end - start).await?;
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
        let (window, stream, what) = (d.window.clone(), d.stream.clone(), what.to_owned());
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
}
