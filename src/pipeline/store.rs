//! The writing half: compressed frames (deltas for incrementals) in order, optionally through
//! one age stream per object, hashed, fanned out to every target; then committed or aborted.

use super::object::{CompressionAlgorithm, Frame, StoredObject};
use super::{Filter, PipelineOptions, Segments, StreamError, delta};
use crate::storage::{ObjectWriter, Target};
use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Collects what the age stream writer emits, for the writer to send on.
#[derive(Clone, Default)]
struct CipherBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl CipherBuffer {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl std::io::Write for CipherBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `data` to every sink at once; an optional target that fails is dropped with a warning.
async fn fan_out(
    sinks: &mut Vec<Sink>,
    data: Bytes,
    cancel: &CancellationToken,
    warnings: &mut Vec<String>,
) -> Result<(), StreamError> {
    if data.is_empty() {
        return Ok(());
    }
    // every target gets the bytes before the next frame: the slowest sets the pace
    let writes = sinks.iter_mut().map(|s| s.writer.write(data.clone()));
    let results = tokio::select! {
        _ = cancel.cancelled() => return Err(StreamError::Cancelled),
        r = futures_util::future::join_all(writes) => r,
    };
    let mut failed = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            if sinks[i].required {
                return Err(StreamError::Store(e.context(format!("writing to target {}", sinks[i].target))));
            }
            warnings.push(optional_target_warning(&sinks[i].target, &e));
            failed.push(i);
        }
    }
    for i in failed.into_iter().rev() {
        let s = sinks.remove(i);
        let _ = s.writer.abort().await;
    }
    Ok(())
}

/// One target's writer for the object being stored.
pub struct Sink {
    pub target: String,
    pub required: bool,
    pub writer: Box<dyn ObjectWriter>,
}

/// A fully written but not yet committed object on every target.
pub struct Staged {
    pub object: StoredObject,
    sinks: Vec<Sink>,
    /// Optional targets dropped on the way, and why.
    pub warnings: Vec<String>,
}

/// A committed object: on which targets it is, and what went wrong with optional ones.
pub struct Committed {
    pub object: StoredObject,
    pub targets: Vec<String>,
    pub warnings: Vec<String>,
}

impl Staged {
    /// Makes the object durable and visible on every target; checks each stored size. An
    /// optional target that fails is dropped with a warning; a required one fails the commit.
    pub async fn commit(self) -> Result<Committed> {
        let Staged { object, sinks, mut warnings, .. } = self;
        let meta: Vec<(String, bool)> = sinks.iter().map(|s| (s.target.clone(), s.required)).collect();
        let results = futures_util::future::join_all(sinks.into_iter().map(|s| s.writer.finish())).await;
        let mut targets = Vec::new();
        for ((name, required), result) in meta.into_iter().zip(results) {
            let checked = result.and_then(|size| {
                anyhow::ensure!(
                    size == object.stored_bytes,
                    "{} has {size} bytes, {} were sent",
                    object.key,
                    object.stored_bytes
                );
                Ok(())
            });
            match checked {
                Ok(()) => targets.push(name),
                Err(e) if required => return Err(e.context(format!("storing {} on target {name}", object.key))),
                Err(e) => warnings.push(optional_target_warning(&name, &e)),
            }
        }
        Ok(Committed { object, targets, warnings })
    }

    pub async fn abort(self) {
        abort_all(self.sinks).await;
    }
}

fn optional_target_warning(name: &str, e: &anyhow::Error) -> String {
    let w = format!("optional target {name} does not hold this backup: {e:#}");
    tracing::warn!(target_name = name, error = %format!("{e:#}"), "optional storage target failed; continuing without it");
    w
}

async fn abort_all(sinks: Vec<Sink>) {
    for s in sinks {
        if let Err(e) = s.writer.abort().await {
            tracing::warn!(target_name = %s.target, error = %format!("{e:#}"), "could not remove a partial object");
        }
    }
}

/// zstd compression contexts, reused across frames: at most one per running compression.
struct Compressors {
    level: i32,
    idle: std::sync::Mutex<Vec<zstd::bulk::Compressor<'static>>>,
}

impl Compressors {
    fn compress(&self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut c = match reused {
            Some(c) => c,
            None => new_compressor(self.level)?,
        };
        let out = c.compress(data);
        if let Ok(mut v) = self.idle.lock() {
            v.push(c);
        }
        out
    }
}

/// A zstd compressor for `level`, tuned for COPY text: up to level 15 a minimum match length of 7
/// (zstd uses 4-5 at most levels; its lazy strategies cap it at 6) skips short matches whose
/// encoding costs more than the literals. Measured on the benchmark data set (docs/performance.md):
/// 3-8 % smaller at every level from 2 to 9, and no slower.
fn new_compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    if (1..=15).contains(&level) {
        c.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))?;
    }
    Ok(c)
}

/// Compresses one segment into one zstd frame (content size recorded in the frame header).
pub fn compress_frame(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    new_compressor(level)?.compress(data)
}

/// Streams `input` into `key` on every writer. Aborts every writer on failure.
pub async fn store_stream<F: Filter>(
    input: &mut Segments<F>,
    key: &str,
    opts: &PipelineOptions,
    sinks: Vec<Sink>,
    cancel: &CancellationToken,
) -> Result<Staged, StreamError> {
    // hashing thread: SHA-256 of the raw stream, in order
    let (inspect_tx, mut inspect_rx) = mpsc::channel::<Bytes>(2);
    let inspector = std::thread::Builder::new()
        .name("pgbackd-hash".into())
        .spawn(move || {
            let mut sha = Sha256::new();
            while let Some(seg) = inspect_rx.blocking_recv() {
                sha.update(&seg);
            }
            hex::encode(sha.finalize())
        })
        .map_err(|e| StreamError::Store(anyhow::anyhow!("starting the hashing thread: {e}")))?;

    let threads = opts.threads.max(1);
    let level = opts.level;
    // at most `threads` frames compress at once, each with a reused context
    let slots = Arc::new(tokio::sync::Semaphore::new(threads));
    let compressors = Arc::new(Compressors { level: level.unwrap_or(0), idle: std::sync::Mutex::new(Vec::new()) });
    // each frame: raw length, and the task compressing it (stored bytes, their SHA-256, base
    // range if a delta); the frame's hash is taken there, beside the compression, not in the writer
    type FrameJob = tokio::task::JoinHandle<Result<(Bytes, [u8; 32], Option<(u64, u64)>), String>>;
    let (frame_tx, mut frame_rx) = mpsc::channel::<(u64, FrameJob)>(threads);

    let reader = async {
        let mut raw_total = 0u64;
        loop {
            let Some(seg) = input.next(opts.stall_timeout, cancel).await? else {
                break;
            };
            let offset = raw_total;
            raw_total += seg.len() as u64;
            if inspect_tx.send(seg.clone()).await.is_err() {
                break;
            }
            let raw_len = seg.len() as u64;
            let permit = slots.clone().acquire_owned().await.map_err(|_| StreamError::Cancelled)?;
            let compressors = compressors.clone();
            let delta = opts.delta.clone();
            let job = crate::tasks::spawn(async move {
                let _permit = permit;
                match delta {
                    Some(d) => {
                        let (start, end) = {
                            let new_blocks = d.new_blocks.lock().map_err(|_| "block list poisoned".to_owned())?;
                            delta::reference_range(
                                offset,
                                raw_len,
                                &new_blocks,
                                &d.base_blocks,
                                d.base.raw_len(),
                                d.slack,
                            )
                        };
                        let reference = d.base.range(start, end).await.map_err(|e| format!("{e:#}"))?;
                        let level = level.unwrap_or(1);
                        let search = d.search;
                        let (stored, sha) = tokio::task::spawn_blocking(move || {
                            delta::compress(&seg, &reference, level, search).map(|c| {
                                let sha = Sha256::digest(&c).into();
                                (c, sha)
                            })
                        })
                        .await
                        .map_err(|e| format!("compression task failed: {e}"))??;
                        Ok((Bytes::from(stored), sha, Some((start, end - start))))
                    }
                    None => tokio::task::spawn_blocking(move || {
                        let stored = match level {
                            Some(_) => Bytes::from(compressors.compress(&seg)?),
                            None => seg,
                        };
                        let sha = Sha256::digest(&stored).into();
                        Ok((stored, sha, None))
                    })
                    .await
                    .map_err(|e| format!("compression task failed: {e}"))?
                    .map_err(|e: std::io::Error| format!("zstd compression failed: {e}")),
                }
            });
            if frame_tx.send((raw_len, job)).await.is_err() {
                break; // the writer failed; its error is reported
            }
        }
        drop(frame_tx);
        Ok::<u64, StreamError>(raw_total)
    };

    let writer = async {
        let mut sinks = sinks;
        let mut warnings = Vec::new();
        let mut frames_sha = opts.encrypt.is_some().then(Sha256::new);
        let mut object_sha = Sha256::new();
        let mut frames = Vec::new();
        let (mut raw_offset, mut stored_offset, mut written) = (0u64, 0u64, 0u64);
        // with encryption, frames go through one age stream; what it emits is what is stored
        let cipher = CipherBuffer::default();
        let mut encryptor = match &opts.encrypt {
            Some(c) => match c.encryptor().and_then(|e| Ok(e.wrap_output(cipher.clone())?)) {
                Ok(w) => Some(w),
                Err(e) => {
                    return (sinks, warnings, Err(StreamError::Store(e)), frames, None, String::new(), 0);
                }
            },
            None => None,
        };
        let result: Result<(), StreamError> = async {
            while let Some((raw_len, job)) = frame_rx.recv().await {
                let (stored, frame_sha, base_range) = job
                    .await
                    .map_err(|e| StreamError::Store(anyhow::anyhow!("compression task failed: {e}")))?
                    .map_err(|e| StreamError::Store(anyhow::anyhow!("compressing a segment: {e}")))?;
                // unencrypted, the frames are what is stored: object_sha covers them
                if let Some(sha) = frames_sha.as_mut() {
                    sha.update(&stored);
                }
                frames.push(Frame {
                    raw_offset,
                    raw_len,
                    stored_offset,
                    stored_len: stored.len() as u64,
                    stored_sha256: hex::encode(frame_sha),
                    base_offset: base_range.map(|r| r.0),
                    base_len: base_range.map(|r| r.1),
                });
                raw_offset += raw_len;
                stored_offset += stored.len() as u64;
                let out = match encryptor.as_mut() {
                    Some(w) => {
                        w.write_all(&stored).map_err(|e| StreamError::Store(anyhow::anyhow!("encrypting: {e}")))?;
                        cipher.take()
                    }
                    None => stored,
                };
                object_sha.update(&out);
                written += out.len() as u64;
                fan_out(&mut sinks, out, cancel, &mut warnings).await?;
            }
            if let Some(w) = encryptor.take() {
                w.finish().map_err(|e| StreamError::Store(anyhow::anyhow!("encrypting: {e}")))?;
                let out = cipher.take();
                object_sha.update(&out);
                written += out.len() as u64;
                fan_out(&mut sinks, out, cancel, &mut warnings).await?;
            }
            Ok(())
        }
        .await;
        drop(frame_rx);
        let frames_sha = frames_sha.map(|s| hex::encode(s.finalize()));
        (sinks, warnings, result, frames, frames_sha, hex::encode(object_sha.finalize()), written)
    };

    let (read_result, (sinks, warnings, write_result, frames, frames_sha256, stored_sha256, stored_bytes)) =
        tokio::join!(reader, writer);
    drop(inspect_tx);
    let raw_sha256 = tokio::task::spawn_blocking(move || inspector.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .ok_or_else(|| StreamError::Store(anyhow::anyhow!("the hashing thread panicked")));

    let outcome = (|| {
        write_result?;
        let raw_bytes = read_result?;
        Ok::<_, StreamError>((raw_bytes, raw_sha256?))
    })();
    match outcome {
        Ok((raw_bytes, raw_sha256)) => Ok(Staged {
            object: StoredObject {
                key: key.to_owned(),
                compression: match (&opts.delta, level) {
                    (Some(_), _) => CompressionAlgorithm::ZstdPatch,
                    (None, Some(_)) => CompressionAlgorithm::Zstd,
                    (None, None) => CompressionAlgorithm::None,
                },
                compression_level: level,
                raw_bytes,
                stored_bytes,
                raw_sha256,
                stored_sha256,
                frames,
                encrypted: opts.encrypt.is_some(),
                frames_sha256,
            },
            sinks,
            warnings,
        }),
        Err(e) => {
            abort_all(sinks).await;
            Err(e)
        }
    }
}

/// Opens `key` on every target and streams `input` into it. An optional target that cannot
/// even start the object is left out with a warning.
pub async fn store_stream_to<F: Filter>(
    input: &mut Segments<F>,
    targets: &[Target],
    key: &str,
    opts: &PipelineOptions,
    cancel: &CancellationToken,
) -> Result<Staged, StreamError> {
    let mut sinks = Vec::with_capacity(targets.len());
    let mut skipped = Vec::new();
    for t in targets {
        match t.store.create(key).await {
            Ok(writer) => sinks.push(Sink { target: t.name().to_owned(), required: t.required, writer }),
            Err(e) if !t.required => skipped.push(optional_target_warning(t.name(), &e)),
            Err(e) => {
                abort_all(sinks).await;
                return Err(StreamError::Store(e.context(format!("creating {key} on {}", t.store.describe()))));
            }
        }
    }
    let mut staged = store_stream(input, key, opts, sinks, cancel).await?;
    skipped.append(&mut staged.warnings);
    staged.warnings = skipped;
    Ok(staged)
}

/// Writes a small object to the targets named in `holding` (those that hold the backup so far).
/// An optional target that fails is removed from `holding` with a warning.
pub async fn put_on_targets(
    targets: &[Target],
    holding: &mut Vec<String>,
    key: &str,
    data: Bytes,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let chosen: Vec<&Target> = targets.iter().filter(|t| holding.iter().any(|h| h == t.name())).collect();
    for t in chosen {
        if let Err(e) = t.store.put(key, data.clone()).await {
            if t.required {
                return Err(e.context(format!("writing {key} to {}", t.store.describe())));
            }
            warnings.push(optional_target_warning(t.name(), &e));
            holding.retain(|h| h != t.name());
        }
    }
    Ok(())
}

/// Compresses a small object whole (such as globals) and stores it like [`put_on_targets`].
pub async fn store_small_object(
    targets: &[Target],
    holding: &mut Vec<String>,
    key: &str,
    raw: &[u8],
    level: Option<i32>,
    encrypt: Option<&crate::crypto::Crypto>,
    warnings: &mut Vec<String>,
) -> Result<StoredObject> {
    let compressed = match level {
        Some(l) => Bytes::from(compress_frame(raw, l).context("compressing")?),
        None => Bytes::copy_from_slice(raw),
    };
    let stored = match encrypt {
        Some(c) => Bytes::from(c.encrypt(&compressed).context("encrypting")?),
        None => compressed.clone(),
    };
    let object = StoredObject {
        key: key.to_owned(),
        compression: if level.is_some() { CompressionAlgorithm::Zstd } else { CompressionAlgorithm::None },
        compression_level: level,
        raw_bytes: raw.len() as u64,
        stored_bytes: stored.len() as u64,
        raw_sha256: hex::encode(Sha256::digest(raw)),
        stored_sha256: hex::encode(Sha256::digest(&stored)),
        frames: Vec::new(),
        encrypted: encrypt.is_some(),
        frames_sha256: encrypt.is_some().then(|| hex::encode(Sha256::digest(&compressed))),
    };
    put_on_targets(targets, holding, key, stored, warnings).await?;
    Ok(object)
}
