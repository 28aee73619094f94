//! SQLite database files as a backup subject: a consistent snapshot through SQLite's online
//! backup API (what `sqlite3 .backup` does), what a snapshot holds (its tables and their rows),
//! the checks a reconstructed file must pass (`PRAGMA integrity_check`, `PRAGMA
//! foreign_key_check`, the row counts of the snapshot), and who has a file open. Placing a
//! restored file over a live one, with a rollback copy, is [`place`].
//!
//! Everything here is blocking (rusqlite): callers run it on a blocking thread.

pub mod place;

use anyhow::{Context, Result, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Rows of one table as of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

/// What a SQLite backup holds (the manifest's content): the file it was taken of and the
/// snapshot's own facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The machine the file was read on.
    pub host: String,
    pub path: String,
    /// The SQLite library that took the snapshot (bundled with pgbackd).
    pub sqlite_version: String,
    /// The source's journal mode as its header says: `wal`, or `rollback` (delete, truncate or
    /// persist); a restored file keeps it.
    pub journal_mode: String,
    pub page_size: u64,
    pub page_count: u64,
    /// `PRAGMA user_version` (applications keep their schema version there).
    pub user_version: i64,
    /// Every table (not SQLite's own, not virtual tables) with its rows in the snapshot.
    pub tables: Vec<TableRows>,
}

/// What [`snapshot`] found besides the file it wrote.
#[derive(Debug, Clone)]
pub struct Taken {
    pub journal_mode: String,
    pub inspected: Inspected,
    /// How long SQLite was busy (writers holding the lock) before the copy could run.
    pub waited: Duration,
}

/// A database file's size and tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub page_size: u64,
    pub page_count: u64,
    pub user_version: i64,
    pub tables: Vec<TableRows>,
}

/// Why `path` cannot be backed up as a SQLite database, if it cannot: missing, not a regular
/// file, empty, or without SQLite's header. Else its journal mode as the header says (`wal`, or
/// `rollback` for the rollback-journal modes, which the file does not tell apart).
pub fn check_source(path: &Path) -> Result<&'static str> {
    let meta = std::fs::metadata(path).with_context(|| format!("{} cannot be read", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() == 0 {
        bail!(
            "{} is empty: there is no database to back up yet (SQLite writes its header on the first write)",
            path.display()
        );
    }
    let mut head = [0u8; 20];
    use std::io::Read;
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("reading the header of {}", path.display()))?;
    if n < head.len() || &head[..16] != HEADER {
        bail!("{} is not a SQLite database (its first bytes are not \"SQLite format 3\")", path.display());
    }
    // the file format's write and read versions: 2 in WAL mode
    Ok(if head[18] == 2 { "wal" } else { "rollback" })
}

/// Copies the live database at `source` into the new file `into` with the online backup API, in
/// one step under one read transaction: a consistent image of one moment, with every transaction
/// committed before it and none after, whatever the journal mode. In WAL mode writers go on
/// meanwhile; in rollback-journal mode they wait for the copy, as with `sqlite3 .backup`. While
/// a writer holds the database (rollback mode), the copy waits up to `busy` for it. `stop` ends
/// the wait early.
pub fn snapshot(source: &Path, into: &Path, busy: Duration, stop: &AtomicBool) -> Result<Taken> {
    let journal_mode = check_source(source)?;
    // read-write when the file allows it (a hot journal left by a crashed writer is rolled back
    // as any SQLite reader would), read-only otherwise; never created
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening {}", source.display()))?;
    src.busy_timeout(busy.min(Duration::from_secs(1)))?;
    let mut dst = Connection::open(into).with_context(|| format!("creating the snapshot file {}", into.display()))?;
    let started = Instant::now();
    {
        let backup = Backup::new(&src, &mut dst).context("starting SQLite's online backup")?;
        loop {
            match backup.step(-1).with_context(|| format!("copying {}", source.display()))? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked => {
                    if stop.load(Ordering::Relaxed) {
                        bail!("cancelled while waiting for writers of {}", source.display());
                    }
                    if started.elapsed() >= busy {
                        bail!(
                            "{} stayed locked by a writer for {} (sqlite[].busy_timeout): no consistent copy could \
                             be taken; the next run tries again (or raise busy_timeout)",
                            source.display(),
                            crate::units::duration(busy)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => bail!("SQLite's online backup of {} answered an unknown step result", source.display()),
            }
            if stop.load(Ordering::Relaxed) {
                bail!("cancelled while copying {}", source.display());
            }
        }
    }
    let waited = started.elapsed();
    drop(src);
    dst.close().map_err(|(_, e)| e).context("closing the snapshot file")?;
    let snap = open_private(into)?;
    let problems =
        pragma_rows(&snap, "PRAGMA quick_check(20)").with_context(|| format!("checking {}", into.display()))?;
    if !problems.is_empty() {
        bail!(
            "the snapshot of {} fails PRAGMA quick_check: the database is damaged ({}); nothing was stored and \
             earlier backups are kept: repair it (e.g. sqlite3 {} .recover) or restore one",
            source.display(),
            problems.join("; "),
            source.display()
        );
    }
    let inspected = inspect(&snap, into)?;
    Ok(Taken { journal_mode: journal_mode.to_owned(), inspected, waited })
}

/// Opens a file nobody else writes (a snapshot, a file being restored) read-only, without locks,
/// `-wal` or `-shm` files: nothing is written beside it.
fn open_private(path: &Path) -> Result<Connection> {
    let uri = format!("file:{}?immutable=1", uri_path(path));
    Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))
}

/// A path as the path of a `file:` URI (`%`, `?`, `#` and spaces escaped).
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Page size and count, `user_version`, and every table's rows (SQLite's own tables and virtual
/// tables left out: a virtual table's rows live in its shadow tables, which are counted) of the
/// database `c` has open at `path`.
fn inspect(c: &Connection, path: &Path) -> Result<Inspected> {
    let what = || format!("reading {}", path.display());
    let page_size: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0)).with_context(what)?;
    let page_count: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0)).with_context(what)?;
    let user_version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).with_context(what)?;
    let names: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .with_context(what)?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let rows: i64 = c.query_row(&sql, [], |r| r.get(0)).with_context(|| format!("counting the rows of {name}"))?;
        tables.push(TableRows { name, rows: rows as u64 });
    }
    Ok(Inspected { page_size: page_size as u64, page_count: page_count as u64, user_version, tables })
}

/// The rows of an integrity pragma; none when it says `ok`.
fn pragma_rows(c: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let rows: Vec<String> = c.prepare(sql)?.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
    Ok(if rows == ["ok"] { Vec::new() } else { rows })
}

/// What the checks of a reconstructed file found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Checked {
    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` complaints.
    pub problems: Vec<String>,
    pub tables_checked: usize,
    /// Tables whose rows differ from the snapshot's: (table, expected, found; None: missing).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.mismatches.is_empty()
    }

    /// Everything wrong, in one line.
    pub fn summary(&self) -> String {
        let mut out: Vec<String> = self.problems.clone();
        for (t, expected, found) in &self.mismatches {
            match found {
                Some(n) => out.push(format!("table {t} has {n} rows, the snapshot had {expected}")),
                None => out.push(format!("table {t} is missing")),
            }
        }
        out.join("; ")
    }
}

/// Checks a file reconstructed from a backup against the snapshot it was: `PRAGMA
/// integrity_check` (every page, index and constraint), `PRAGMA foreign_key_check`, the page size
/// and count, and every table's rows.
pub fn check(path: &Path, expected: &Snapshot) -> Result<Checked> {
    let c = open_private(path)?;
    let what = || format!("checking {}", path.display());
    let mut problems: Vec<String> = pragma_rows(&c, "PRAGMA integrity_check(100)")
        .with_context(what)?
        .into_iter()
        .map(|p| format!("integrity_check: {p}"))
        .collect();
    let fk: Vec<String> = c
        .prepare("PRAGMA foreign_key_check")
        .and_then(|mut s| {
            s.query_map([], |r| {
                let (table, rowid, parent): (String, Option<i64>, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
                Ok(format!(
                    "foreign_key_check: a row of {table} (rowid {}) has no parent in {parent}",
                    rowid.map_or("-".into(), |i| i.to_string())
                ))
            })?
            .take(100)
            .collect()
        })
        .with_context(what)?;
    problems.extend(fk);
    let found = inspect(&c, path)?;
    if (found.page_size, found.page_count) != (expected.page_size, expected.page_count) {
        problems.push(format!(
            "the file has {} pages of {} bytes, the snapshot had {} of {}",
            found.page_count, found.page_size, expected.page_count, expected.page_size
        ));
    }
    let mut mismatches = Vec::new();
    for t in &expected.tables {
        let rows = found.tables.iter().find(|f| f.name == t.name).map(|f| f.rows);
        if rows != Some(t.rows) {
            mismatches.push((t.name.clone(), t.rows, rows));
        }
    }
    Ok(Checked { problems, tables_checked: expected.tables.len(), mismatches })
}

/// The processes that have `path` (or its `-wal` or `-shm`) open or locked, other than this one:
/// found in `/proc/*/fd` (processes this user may inspect) and `/proc/locks` (every process).
pub fn users(path: &Path) -> Vec<u32> {
    let me = std::process::id();
    let files: Vec<PathBuf> = ["", "-wal", "-shm", "-journal"].iter().map(|s| with_suffix(path, s)).collect();
    let canonical: Vec<PathBuf> = files.iter().filter_map(|f| f.canonicalize().ok()).collect();
    let mut pids: Vec<u32> = Vec::new();
    if !canonical.is_empty()
        && let Ok(procs) = std::fs::read_dir("/proc")
    {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
            if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| canonical.contains(&t))) {
                pids.push(pid);
            }
        }
    }
    // /proc/locks: "1: POSIX  ADVISORY  READ 1234 08:01:5678 0 EOF" (device in hex)
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| format!("{:02x}:{:02x}:{}", libc::major(m.dev()), libc::minor(m.dev()), m.ino()))
        .collect();
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        for line in locks.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1:" "POSIX" "ADVISORY" "READ" pid dev:ino ... (a blocked waiter has "->" after "1:")
            let fields: Vec<&str> = fields.into_iter().filter(|f| *f != "->").collect();
            if let (Some(pid), Some(id)) = (fields.get(4), fields.get(5))
                && inodes.iter().any(|i| i == id)
                && let Ok(pid) = pid.parse::<u32>()
            {
                pids.push(pid);
            }
        }
    }
    pids.retain(|p| *p != me);
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Removes what killed runs left in `dir`: entries named `prefix...` (a snapshot's scratch
/// directory, a restore's file beside its target) older than `grace` that no process has open.
/// Returns what it removed.
pub fn sweep(dir: &Path, prefix: &str, grace: Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let path = e.path();
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a >= grace));
        // a scratch directory holds snapshot.db; a restore's file is itself the database
        let file = if path.is_dir() { path.join("snapshot.db") } else { path.clone() };
        if !old || !users(&file).is_empty() {
            continue;
        }
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover"),
        }
    }
    removed
}

/// `path` with `suffix` appended to its file name (`app.db` + `-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, wal: bool) -> PathBuf {
        let path = dir.join("t.db");
        let c = Connection::open(&path).unwrap();
        if wal {
            c.pragma_update(None, "journal_mode", "wal").unwrap();
        }
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE \"odd \"\"name\" (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id));
             INSERT INTO parent (name) VALUES ('a'), ('b');
             INSERT INTO \"odd \"\"name\" (parent) VALUES (1), (1), (2);",
        )
        .unwrap();
        path
    }

    #[test]
    fn a_snapshot_holds_every_committed_row_and_passes_its_checks() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let source = db(dir.path(), wal);
            // an open writer connection with committed rows still in its WAL
            let live = Connection::open(&source).unwrap();
            live.execute("INSERT INTO parent (name) VALUES ('c')", []).unwrap();
            let into = dir.path().join("snap.db");
            let taken = snapshot(&source, &into, Duration::from_secs(5), &AtomicBool::new(false)).unwrap();
            assert_eq!(taken.journal_mode, if wal { "wal" } else { "rollback" });
            let rows: Vec<(&str, u64)> = taken.inspected.tables.iter().map(|t| (t.name.as_str(), t.rows)).collect();
            assert_eq!(rows, [("odd \"name", 3), ("parent", 3)]);
            let snap = Snapshot {
                host: "h".into(),
                path: source.display().to_string(),
                sqlite_version: rusqlite::version().into(),
                journal_mode: taken.journal_mode.clone(),
                page_size: taken.inspected.page_size,
                page_count: taken.inspected.page_count,
                user_version: 0,
                tables: taken.inspected.tables.clone(),
            };
            assert_eq!(std::fs::metadata(&into).unwrap().len(), snap.page_size * snap.page_count);
            let checked = check(&into, &snap).unwrap();
            assert!(checked.ok(), "{checked:?}");
            // nothing written beside the private file
            assert!(!with_suffix(&into, "-wal").exists() && !with_suffix(&into, "-shm").exists());
            // a row more than the snapshot had is a mismatch; an orphan row a foreign key problem
            let w = Connection::open(&into).unwrap();
            w.execute_batch("PRAGMA foreign_keys = OFF; INSERT INTO \"odd \"\"name\" (parent) VALUES (9)").unwrap();
            drop(w);
            let c = check(&into, &snap).unwrap();
            assert_eq!(c.mismatches, [("odd \"name".to_owned(), 3, Some(4))]);
            assert!(c.problems.iter().any(|p| p.contains("foreign_key_check") && p.contains("parent")), "{c:?}");
            drop(live);
        }
    }

    #[test]
    fn not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "just some text, longer than sixteen bytes").unwrap();
        let e = format!("{:#}", snapshot(&text, &dir.path().join("s"), Duration::from_secs(1), &stop).unwrap_err());
        assert!(e.contains("notes.txt is not a SQLite database"), "{e}");
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, "").unwrap();
        let e = format!("{:#}", snapshot(&empty, &dir.path().join("s"), Duration::from_secs(1), &stop).unwrap_err());
        assert!(e.contains("empty.db is empty"), "{e}");
        let e = format!(
            "{:#}",
            snapshot(&dir.path().join("gone.db"), &dir.path().join("s"), Duration::from_secs(1), &stop).unwrap_err()
        );
        assert!(e.contains("gone.db cannot be read"), "{e}");
        assert!(!dir.path().join("gone.db").exists(), "never created");
    }

    #[test]
    fn a_writer_holding_the_lock_makes_the_copy_wait_then_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let source = db(dir.path(), false);
        let writer = Connection::open(&source).unwrap();
        // an exclusive transaction: in rollback mode nobody may read
        writer.execute_batch("BEGIN EXCLUSIVE; INSERT INTO parent (name) VALUES ('x');").unwrap();
        let started = Instant::now();
        let e = snapshot(&source, &dir.path().join("s.db"), Duration::from_millis(600), &AtomicBool::new(false))
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert!(format!("{e:#}").contains("stayed locked by a writer"), "{e:#}");
        writer.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn sweep_removes_old_leftovers_nobody_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("pgbackd-sqlite-old");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("snapshot.db"), "x").unwrap();
        let fresh = dir.path().join("pgbackd-sqlite-fresh");
        std::fs::create_dir(&fresh).unwrap();
        let other = dir.path().join("other-old");
        std::fs::write(&other, "x").unwrap();
        let busy = dir.path().join("pgbackd-sqlite-busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("snapshot.db"), "x").unwrap();
        let hour_ago = filetime::FileTime::from_system_time(std::time::SystemTime::now() - Duration::from_secs(3600));
        for p in [&old, &other, &busy] {
            filetime::set_file_mtime(p, hour_ago).unwrap();
        }
        // another process has `busy`'s snapshot open (users() leaves this process out)
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<'{}'; sleep 30", busy.join("snapshot.db").display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while users(&busy.join("snapshot.db")).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let removed = sweep(dir.path(), "pgbackd-sqlite-", Duration::from_secs(600));
        assert_eq!(removed, std::slice::from_ref(&old));
        assert!(!old.exists() && fresh.exists() && other.exists() && busy.exists());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn users_are_found_through_their_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), true);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<'{}'; sleep 30", path.display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !users(&path).contains(&child.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(users(&path).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!users(&path).contains(&child.id()));
        assert_eq!(uri_path(Path::new("/a b/c%d?.db")), "/a%20b/c%25d%3F.db");
    }
}
