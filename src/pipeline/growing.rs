//! A file another process is still writing, read as a stream: reads wait at the current end
//! until the writer is done with the file, and what has been read is punched out of it, so the
//! file never holds much more than the reader lags behind.
//!
//! `pg_basebackup -D DIR -Ft` writes one tar per tablespace into DIR, one after another; the
//! base backup reads each while it grows. The writer is done with a file once the next file of
//! the same kind (name suffix) appears in its directory or the writer has exited: pg_basebackup
//! closes a tar before it creates the next one, but opens `backup_manifest.tmp` while the last
//! tar is still open (it flushes that tar only at the end), so other files say nothing.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a read at the current end waits before looking again.
const POLL: Duration = Duration::from_millis(10);
/// Punch out what was read every this many bytes.
const PUNCH_EVERY: u64 = 8 << 20;

/// Reads a file that grows until its writer moves on (see the module docs).
pub struct GrowingFile {
    file: File,
    dir: PathBuf,
    name: String,
    /// The suffix of the files that follow this one (`.tar`).
    suffix: &'static str,
    /// Set when the writer has exited (or was stopped): the file will not grow any more.
    writer_gone: Arc<AtomicBool>,
    /// No more growth expected: the next read at the end is the end.
    done: bool,
    read: u64,
    punched: u64,
    punch: bool,
}

impl GrowingFile {
    /// Opens `dir/name`, which its writer has created; it is whole once a file ending in
    /// `suffix` (the next one) appears beside it, or `writer_gone` is set.
    pub fn open(
        dir: PathBuf,
        name: String,
        suffix: &'static str,
        writer_gone: Arc<AtomicBool>,
    ) -> std::io::Result<GrowingFile> {
        let path = dir.join(&name);
        // the punching needs a descriptor open for writing; without one the file just stays whole
        let (file, punch) = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => (f, true),
            Err(_) => (File::open(&path)?, false),
        };
        Ok(GrowingFile { file, dir, name, suffix, writer_gone, done: false, read: 0, punched: 0, punch })
    }

    /// Whether the writer has moved on from this file.
    fn writer_done(&self) -> bool {
        if self.writer_gone.load(Ordering::Acquire) {
            return true;
        }
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .any(|e| e.file_name().to_str().is_some_and(|n| n != self.name && n.ends_with(self.suffix))),
            Err(_) => true,
        }
    }

    /// Gives the disk space of what was read back (best effort: a file system without hole
    /// punching keeps the file whole until it is removed).
    fn punch_read(&mut self) {
        if !self.punch || self.read - self.punched < PUNCH_EVERY {
            return;
        }
        let upto = self.read & !((1 << 20) - 1);
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, self.punched, upto - self.punched) {
            Ok(()) => self.punched = upto,
            Err(e) => {
                tracing::debug!(file = %self.dir.join(&self.name).display(), error = %e, "cannot punch holes: the spool file keeps its size until it is removed");
                self.punch = false;
            }
        }
    }
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                self.punch_read();
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if self.writer_done() {
                // what the writer wrote before it moved on is all there: one more read gets it
                self.done = true;
                continue;
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_while_the_file_grows_and_stops_once_the_next_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut w = File::create(&path).unwrap();
        let gone = Arc::new(AtomicBool::new(false));
        let mut r = GrowingFile::open(dir.path().to_owned(), "a.tar".into(), ".tar", gone).unwrap();
        let writer = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                for i in 0..20u8 {
                    w.write_all(&vec![i; 1 << 20]).unwrap();
                    std::thread::sleep(Duration::from_millis(3));
                    if i == 10 {
                        // a file of another kind (pg_basebackup's manifest) does not end the tar
                        File::create(dir.join("backup_manifest.tmp")).unwrap();
                    }
                }
                w.flush().unwrap();
                File::create(dir.join("b.tar")).unwrap();
            })
        };
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all.len(), 20 << 20);
        assert!(all.chunks(1 << 20).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        // what was read is given back (tmpfs and ext4 punch; the size stays)
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 20 << 20);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 20 << 20,
            "{} bytes allocated",
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512
        );
    }

    #[test]
    fn a_writer_that_exits_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.tar"), b"partial").unwrap();
        let gone = Arc::new(AtomicBool::new(false));
        let mut r = GrowingFile::open(dir.path().to_owned(), "base.tar".into(), ".tar", gone.clone()).unwrap();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gone.store(true, Ordering::Release);
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        setter.join().unwrap();
        assert_eq!(all, b"partial");
    }
}
