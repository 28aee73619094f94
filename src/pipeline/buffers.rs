//! Reused buffers for decoded frames and delta references. Decoding an incremental's chain
//! allocates a frame and a reference region at every link for every frame: with glibc's fixed
//! 1 MiB mmap threshold (see `main.rs`) each was fresh memory, faulted in and zeroed by the kernel
//! page by page, which was a third of the decode time. Buffers come back here when the last
//! [`Bytes`] sharing them is dropped, and are kept up to [`KEEP_BYTES`].

use bytes::Bytes;
use std::sync::Mutex;

/// At most this many bytes of idle buffers are kept (more are freed).
const KEEP_BYTES: usize = 64 << 20;

/// Capacities are rounded up to this, so regions of slightly different sizes share buffers.
const GRAIN: usize = 1 << 20;

/// The process's pool.
pub static POOL: Pool = Pool::new(KEEP_BYTES);

/// Idle buffers, up to `keep` bytes of them.
pub struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl Pool {
    pub const fn new(keep: usize) -> Pool {
        Pool { idle: Mutex::new(Vec::new()), keep }
    }

    /// An empty buffer of at least `capacity` bytes: the smallest idle one that fits, or a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let best = idle.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity).min_by_key(|(_, b)| b.capacity());
        match best.map(|(i, _)| i) {
            Some(i) => {
                let mut b = idle.swap_remove(i);
                b.clear();
                b
            }
            None => {
                drop(idle);
                Vec::with_capacity(capacity.div_ceil(GRAIN) * GRAIN)
            }
        }
    }

    /// Shares `buffer` as [`Bytes`]; it comes back to the pool when the last of them is dropped.
    pub fn freeze(&'static self, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < GRAIN {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Pooled { buffer, pool: self })
    }

    /// Keeps `buffer` if it fits in `keep`, freeing smaller idle ones to make room (a large
    /// buffer serves any request, a small one only small ones).
    fn give_back(&self, buffer: Vec<u8>) {
        if buffer.capacity() > self.keep {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(buffer);
        idle.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        let mut kept = 0;
        idle.retain(|b| {
            kept += b.capacity();
            kept <= self.keep
        });
    }
}

struct Pooled {
    buffer: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_share_is_dropped_and_is_reused() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(8 << 20)));
        let mut b = pool.take(3 << 20);
        assert!(b.capacity() >= 3 << 20);
        b.extend_from_slice(&[7u8; 1000]);
        let ptr = b.as_ptr();
        let shared = pool.freeze(b);
        let part = shared.slice(10..20);
        drop(shared);
        assert_eq!(&part[..], &[7u8; 10]);
        drop(part);
        // the same memory again, empty
        let again = pool.take(2 << 20);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        // one larger than any idle one is new
        let large = pool.take(100 << 20);
        assert_ne!(large.as_ptr(), ptr);
        // one larger than `keep` is freed, not kept
        drop(pool.freeze(large));
        drop(pool.freeze(again));
        assert_eq!(pool.take(100 << 20).capacity(), 100 << 20, "rounded to the grain");
        let kept = pool.take(1 << 20);
        assert_eq!(kept.as_ptr(), ptr, "the small one was kept");
        drop(kept);
        // past `keep`, the smaller idle buffers go first
        let (small, big) = (pool.take(3 << 20), pool.take(6 << 20));
        let big_ptr = big.as_ptr();
        drop(pool.freeze(small));
        drop(pool.freeze(big));
        let left = pool.take(1 << 20);
        assert_eq!(left.as_ptr(), big_ptr, "only the 6 MiB one is left of 9 MiB over 8");
    }
}
