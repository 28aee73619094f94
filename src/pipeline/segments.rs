//! The first stage: a producer's byte stream cut into raw segments by a dedicated reader thread,
//! optionally through a [`Filter`] that inspects and rewrites the stream as it passes (pg_dump's
//! archive filter counts rows and re-chunks data blocks; a tar stream passes as it is).

use super::{Counter, StreamError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A stream transformation run on the reader thread: what it is fed, it appends to the segment
/// being filled; at the end of the stream it says what it learnt.
pub trait Filter: Send + 'static {
    /// What the filter learnt from the whole stream (row counts, block positions).
    type Summary: Send + 'static;
    /// Why the stream is not what the filter expects (a truncated archive).
    type Error: std::error::Error + Send + Sync + 'static;
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn finish(self) -> Result<Self::Summary, Self::Error>;
}

/// Passes the stream on unchanged.
pub struct Unfiltered;

impl Filter for Unfiltered {
    type Summary = ();
    type Error = std::convert::Infallible;
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Self::Error> {
        out.extend_from_slice(data);
        Ok(())
    }
    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Segment buffers handed back when the last reference to a segment drops, so a backup reuses a
/// few buffers instead of mapping (and page-faulting) fresh memory for every segment.
#[derive(Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

const POOL_MAX: usize = 4;

impl BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut v| v.pop());
        match reused {
            Some(mut b) if b.capacity() >= capacity => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(capacity),
        }
    }

    fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self.clone() })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut v) = self.pool.0.lock()
            && v.len() < POOL_MAX
        {
            v.push(std::mem::take(&mut self.buf));
        }
    }
}

type FilterResult<F> = Result<Option<<F as Filter>::Summary>, <F as Filter>::Error>;

/// Raw segments of a stream, cut by a dedicated reader thread.
pub struct Segments<F: Filter = Unfiltered> {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    moved: Arc<Counter>,
    thread: Option<std::thread::JoinHandle<FilterResult<F>>>,
    summary: Option<F::Summary>,
}

/// Reads `input` on its own thread with blocking reads, in segments of about `size` bytes, each
/// read passed through `filter`; its summary is [`Segments::summary`] once the stream has ended.
///
/// A thread instead of async reads: pg_dump writes in small pieces, and waking a task for each
/// one costs more CPU than compressing the data. When a read returns little, the thread waits a
/// fraction of a millisecond so the pipe fills and the next read takes a large piece.
pub fn read_segments<R: std::io::Read + Send + 'static, F: Filter>(
    mut input: R,
    size: usize,
    moved: Arc<Counter>,
    mut filter: F,
) -> Segments<F> {
    const READ_SIZE: usize = 1 << 20;
    let (tx, rx) = mpsc::channel(2);
    let counter = moved.clone();
    let spawned = std::thread::Builder::new().name("pgbackd-read".into()).spawn(move || {
        let mut buf = vec![0u8; READ_SIZE];
        let pool = BufferPool::default();
        let mut seg: Vec<u8> = pool.take(size + READ_SIZE);
        loop {
            let want = size.saturating_sub(seg.len()).clamp(1, READ_SIZE);
            let n = match input.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return Ok(None);
                }
            };
            counter.add(n as u64);
            filter.feed(&buf[..n], &mut seg)?;
            if seg.len() >= size || (n == 0 && !seg.is_empty()) {
                let full = std::mem::replace(&mut seg, pool.take(size + READ_SIZE));
                if tx.blocking_send(Ok(pool.freeze(full))).is_err() {
                    return Ok(None); // the consumer stopped
                }
            }
            if n == 0 {
                return filter.finish().map(Some);
            }
            if n < 64 * 1024 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    });
    match spawned {
        Ok(thread) => Segments { rx, moved, thread: Some(thread), summary: None },
        Err(e) => {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(e));
            Segments { rx, moved, thread: None, summary: None }
        }
    }
}

impl<F: Filter> Segments<F> {
    async fn thread_result(&mut self) -> Result<FilterResult<F>, StreamError> {
        let Some(thread) = self.thread.take() else {
            return Ok(Ok(None));
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .ok_or_else(|| StreamError::Store(anyhow::anyhow!("the reader thread panicked")))
    }

    /// What the filter learnt, once the stream has ended.
    pub fn summary(&mut self) -> Option<F::Summary> {
        self.summary.take()
    }

    /// The next segment; `None` at end of stream. Fails if no byte moved for `stall`.
    pub(super) async fn next(
        &mut self,
        stall: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Bytes>, StreamError> {
        let tick = (stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut last = self.moved.get();
        let mut last_change = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(StreamError::Cancelled),
                item = self.rx.recv() => return match item {
                    Some(Ok(b)) => Ok(Some(b)),
                    Some(Err(e)) => Err(StreamError::Read(e)),
                    // the reader ended: at end of input, or because the filter refused the stream
                    None => match self.thread_result().await? {
                        Err(e) => Err(StreamError::Filter(Box::new(e))),
                        Ok(summary) => {
                            self.summary = summary;
                            Ok(None)
                        }
                    },
                },
                _ = tokio::time::sleep(tick) => {
                    let now = self.moved.get();
                    if now != last {
                        last = now;
                        last_change = tokio::time::Instant::now();
                    } else if last_change.elapsed() >= stall {
                        return Err(StreamError::Stalled(stall));
                    }
                }
            }
        }
    }
}
