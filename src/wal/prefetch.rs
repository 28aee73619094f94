//! Fetching ahead of recovery (as pgBackRest's asynchronous archive-get): PostgreSQL asks
//! restore_command for one segment at a time and replays it before asking for the next, so a
//! fetch from the repository (list, read, decrypt, decompress, hash) would stall replay each
//! time. The first `archive-get` of a segment starts a prefetcher (one per queue, held by a lock)
//! that keeps the next `wal.prefetch` segments, each checked against its SHA-256, in a queue
//! directory beside the requested file (`pg_wal/pgbackd-prefetch-<system id>/`); the next
//! `archive-get` renames its segment from there. The prefetcher follows the newest request
//! (`.wanted`), removes what recovery has passed, and exits (removing the queue) once nothing was
//! asked for `IDLE`.

use super::archive::WalArchive;
use super::names::{SegmentName, WalFile};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the prefetcher waits for a new request before it exits.
pub const IDLE: Duration = Duration::from_secs(30);

/// The queue of one archive beside one data directory.
#[derive(Debug, Clone)]
pub struct Queue {
    pub dir: PathBuf,
}

impl Queue {
    /// The queue beside `dest` (the `%p` PostgreSQL gave, in `pg_wal`).
    pub fn beside(dest: &Path, system_identifier: u64) -> Queue {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Queue { dir: dir.join(format!("pgbackd-prefetch-{system_identifier}")) }
    }

    fn wanted_file(&self) -> PathBuf {
        self.dir.join(".wanted")
    }

    /// Moves a prefetched `segment` to `dest`; false when it is not queued.
    pub fn take(&self, segment: SegmentName, dest: &Path) -> bool {
        std::fs::rename(self.dir.join(segment.to_string()), dest).is_ok()
    }

    /// Says that recovery asked for `segment` (the prefetcher fetches what follows it).
    pub fn want(&self, segment: SegmentName) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self.dir.join(".wanted.tmp");
        std::fs::write(&tmp, segment.to_string())?;
        std::fs::rename(&tmp, self.wanted_file())?;
        Ok(())
    }

    fn wanted(&self) -> Option<SegmentName> {
        SegmentName::parse(std::fs::read_to_string(self.wanted_file()).ok()?.trim())
    }

    /// The queue's lock: held by its one prefetcher. `None` when another process holds it.
    fn lock(&self) -> Result<Option<std::fs::File>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .context("opening the prefetch lock")?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(f)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(e).context("locking the prefetch queue")),
        }
    }

    /// Whether a prefetcher holds the queue.
    pub fn has_prefetcher(&self) -> bool {
        matches!(self.lock(), Ok(None))
    }

    /// The segments queued now.
    fn queued(&self) -> BTreeSet<SegmentName> {
        std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().filter_map(|e| SegmentName::parse(&e.file_name().to_string_lossy())).collect())
            .unwrap_or_default()
    }
}

/// Starts a prefetcher for `queue` (a detached `pgbackd archive-prefetch`) unless one runs.
pub fn ensure_prefetcher(queue: &Queue, args: &[std::ffi::OsString]) -> Result<()> {
    if queue.has_prefetcher() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating pgbackd to start the prefetcher")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // its own process group: PostgreSQL's signals to the restore command do not reach it
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().context("starting the WAL prefetcher")?;
    Ok(())
}

/// The prefetcher: until nothing was asked for `idle`, keeps the `depth` segments after the
/// newest request queued. Returns when idle (the queue removed) or when another prefetcher
/// holds the queue.
pub async fn run(archive: &WalArchive, queue: &Queue, depth: usize, segment_size: u64, idle: Duration) -> Result<()> {
    let Some(_lock) = queue.lock()? else { return Ok(()) };
    let mut last_wanted = None;
    let mut since = Instant::now();
    // segments the archive does not hold (yet): asked again only once recovery moves on
    let mut absent: BTreeSet<SegmentName> = BTreeSet::new();
    loop {
        let wanted = queue.wanted();
        if wanted != last_wanted {
            last_wanted = wanted;
            since = Instant::now();
            absent.clear();
        } else if since.elapsed() > idle {
            break;
        }
        let Some(w) = wanted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let queued = queue.queued();
        // what recovery passed, or read on another timeline, is not needed any more
        for s in &queued {
            if s.timeline != w.timeline || s.number(segment_size) <= w.number(segment_size) {
                let _ = std::fs::remove_file(queue.dir.join(s.to_string()));
            }
        }
        let mut next = Vec::new();
        let mut s = w;
        for _ in 0..depth {
            s = s.next(segment_size);
            if absent.contains(&s) {
                break;
            }
            if !queued.contains(&s) {
                next.push(s);
            }
        }
        if next.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // two at a time: decoding runs on blocking threads while the other is read
        next.truncate(2);
        let second = next.get(1).copied();
        let (a, b) = tokio::join!(archive.get(WalFile::Segment(next[0])), async {
            match second {
                Some(s) => Some(archive.get(WalFile::Segment(s)).await),
                None => None,
            }
        });
        let fetched = std::iter::once(a).chain(b);
        for (s, got) in next.into_iter().zip(fetched) {
            match got {
                Ok(Some(raw)) => {
                    let tmp = queue.dir.join(format!(".{s}.tmp"));
                    std::fs::write(&tmp, &raw).with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, queue.dir.join(s.to_string()))?;
                }
                Ok(None) => {
                    absent.insert(s);
                }
                // archive-get fetches it itself and reports the damage
                Err(e) => {
                    tracing::warn!(segment = %s, error = %format!("{e:#}"), "not prefetched");
                    absent.insert(s);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&queue.dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_segment_is_taken_once_and_one_prefetcher_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let q = Queue::beside(&dest, 42);
        assert!(q.dir.ends_with("pgbackd-prefetch-42"));
        let seg = SegmentName::parse("000000010000000000000003").unwrap();
        assert!(!q.take(seg, &dest));
        q.want(seg).unwrap();
        assert_eq!(q.wanted(), Some(seg));
        std::fs::write(q.dir.join(seg.to_string()), b"wal").unwrap();
        assert_eq!(q.queued().into_iter().collect::<Vec<_>>(), vec![seg]);
        assert!(q.take(seg, &dest));
        assert_eq!(std::fs::read(&dest).unwrap(), b"wal");
        assert!(!q.take(seg, &dest));
        assert!(!q.has_prefetcher());
        let held = q.lock().unwrap().expect("free");
        assert!(q.has_prefetcher());
        assert!(q.lock().unwrap().is_none());
        drop(held);
        assert!(!q.has_prefetcher());
    }

    #[tokio::test]
    async fn the_prefetcher_keeps_the_next_segments_queued_drops_passed_ones_and_exits_when_idle() {
        const SIZE: u64 = 1 << 20;
        let repo = tempfile::tempdir().unwrap();
        let store = crate::storage::local::LocalStore::new("local", repo.path()).unwrap();
        let targets = vec![crate::storage::Target { store: std::sync::Arc::new(store), required: true }];
        let archive = WalArchive::new("main", 7, targets, None, Some(1));
        let seg = |n: u64| SegmentName::containing(1, n * SIZE, SIZE);
        let body = |n: u64| bytes::Bytes::from(vec![n as u8; SIZE as usize]);
        for n in 1..=5 {
            archive.push(WalFile::Segment(seg(n)), body(n)).await.unwrap();
        }
        let pg_wal = tempfile::tempdir().unwrap();
        let q = Queue::beside(&pg_wal.path().join("RECOVERYXLOG"), 7);
        q.want(seg(1)).unwrap();
        let (q2, dir) = (q.clone(), q.dir.clone());
        let prefetcher = tokio::spawn(async move { run(&archive, &q2, 3, SIZE, Duration::from_millis(600)).await });
        let wait_for = |want: Vec<SegmentName>| {
            let q = q.clone();
            async move {
                for _ in 0..100 {
                    if q.queued().into_iter().collect::<Vec<_>>() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("queue holds {:?}, not {want:?}", q.queued());
            }
        };
        // depth 3 after segment 1
        wait_for(vec![seg(2), seg(3), seg(4)]).await;
        assert_eq!(std::fs::read(dir.join(seg(3).to_string())).unwrap(), body(3).to_vec());
        // recovery took 2 and 3 and asks for 4: 5 follows, and 6 is not archived
        let out = pg_wal.path().join("RECOVERYXLOG");
        assert!(q.take(seg(2), &out) && q.take(seg(3), &out));
        q.want(seg(4)).unwrap();
        wait_for(vec![seg(5)]).await;
        // nothing asked for a while: it exits and removes the queue
        tokio::time::timeout(Duration::from_secs(5), prefetcher).await.unwrap().unwrap().unwrap();
        assert!(!dir.exists());
    }
}
