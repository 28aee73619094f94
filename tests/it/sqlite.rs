//! SQLite files as a subject: snapshots under a concurrent writer (WAL and rollback-journal
//! mode) restore whole and consistent; incrementals chain and restore; deep verification and
//! test restores check the rebuilt file and catch a damaged frame or wrong row counts; a restore
//! refuses a file in use without --replace, and with it keeps a rollback copy that `rollback
//! --sqlite` swaps back.

use crate::harness::*;
use rusqlite::Connection;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn sqlite_config(env: &TestEnv, path: &Path, extra: &str) {
    env.write_config(&format!("sqlite:\n  - name: app\n    path: {}\n    busy_timeout: 30s\n{extra}", path.display()));
}

/// tests/fixtures/sqlite_writer.py, running: the last transaction it committed.
struct Writer {
    child: Child,
    committed: Arc<AtomicU64>,
}

impl Writer {
    fn start(db: &Path, mode: &str) -> Writer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sqlite_writer.py");
        let mut child =
            Command::new("python3").arg(script).arg(db).arg(mode).stdout(Stdio::piped()).spawn().expect("python3");
        let committed = Arc::new(AtomicU64::new(0));
        let (out, c) = (child.stdout.take().unwrap(), committed.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(n) = line.trim().parse() {
                    c.store(n, Ordering::SeqCst);
                }
            }
        });
        Writer { child, committed }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed() < n {
            assert!(Instant::now() < deadline, "the writer committed only {} of {n}", self.committed());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python process that opens `db`, runs `statements` (one per line, autocommit unless they
/// begin a transaction), then holds the database open; returned once it has run them.
fn holding(db: &Path, statements: &str) -> Child {
    let script = format!(
        "import sqlite3, time\nc = sqlite3.connect('{}', isolation_level=None)\n{}\nprint('ready', flush=True)\ntime.sleep(120)",
        db.display(),
        statements.lines().map(|s| format!("c.execute({s:?})")).collect::<Vec<_>>().join("\n")
    );
    let mut child = Command::new("python3").arg("-c").arg(script).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the Python holder of {} did not start", db.display());
    child
}

fn integrity(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

fn query_u64(path: &Path, sql: &str) -> u64 {
    let c = Connection::open(path).unwrap();
    c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// Every row of table `t` (`id`, `v`) in order, as one string.
fn contents(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT group_concat(id || '=' || v, ',') FROM (SELECT id, v FROM t ORDER BY id)", [], |r| r.get(0))
        .unwrap()
}

fn backup(env: &TestEnv) -> String {
    let out = env.run(&["backup-sqlite"]);
    assert!(out.status.success(), "backup-sqlite failed:\n{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn listed(env: &TestEnv, id: &str) -> serde_json::Value {
    env.list_json().into_iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("{id} is not listed"))
}

#[test]
fn a_snapshot_under_a_concurrent_writer_restores_whole_with_every_transaction_committed_before_it() {
    for mode in ["wal", "delete"] {
        let env = TestEnv::new("sqlite_live");
        let db = env.dir.path().join("app.db");
        let writer = Writer::start(&db, mode);
        writer.wait_for(200);
        sqlite_config(&env, &db, "");
        let before = writer.committed();
        let id = backup(&env);
        let after = writer.committed();
        // the writer goes on after the snapshot
        writer.wait_for(after + 50);
        drop(writer);
        let b = listed(&env, &id);
        assert_eq!(
            (b["kind"].as_str(), b["database"].as_str(), b["tables"].as_u64()),
            (Some("full"), Some("sqlite:app"), Some(2))
        );

        let to = env.dir.path().join("restored").join("app.db");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let out = env.run(&["restore-sqlite", &id, "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("integrity_check, foreign_key_check and the rows of 2 tables checked"),
            "{}",
            stdout(&out)
        );
        assert_eq!(integrity(&to), "ok", "{mode}");
        // every transaction committed before the snapshot, none torn: the ledger is 1..=n without a
        // gap and the money is all there
        let n = query_u64(&to, "SELECT max(n) FROM ledger");
        assert_eq!(query_u64(&to, "SELECT count(*) FROM ledger"), n, "{mode}: a gap in the ledger");
        assert!(n >= before, "{mode}: the snapshot has {n} transactions, {before} were committed before it began");
        assert!(n <= after + 50, "{mode}: {n} transactions, more than were ever committed");
        assert_eq!(query_u64(&to, "SELECT sum(balance) FROM accounts"), 10_000, "{mode}: a torn transfer");
        // the journal mode comes back as it was (header byte 18: 2 in WAL mode)
        let header = std::fs::read(&to).unwrap();
        assert_eq!(header[18] == 2, mode == "wal", "{mode}");
        // nothing left beside it
        let left: Vec<PathBuf> = files_under(to.parent().unwrap());
        assert_eq!(left, std::slice::from_ref(&to), "{mode}");
    }
}

#[test]
fn incrementals_chain_verify_deep_and_a_damaged_frame_or_wrong_row_count_is_refused() {
    let env = TestEnv::new("sqlite_inc");
    let db = env.dir.path().join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = wal;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40000)
         INSERT INTO t SELECT i, 'row ' || i || ' ' || hex(randomblob(16)) FROM s;",
    )
    .unwrap();
    sqlite_config(&env, &db, "    full_every: 3\nretention:\n  sqlite_backup:\n    keep_last: 2\n    min_keep: 1\n");
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for round in 0..4 {
        if round > 0 {
            c.execute(&format!("UPDATE t SET v = 'changed in {round} ' || id WHERE id % 100 = {round}"), []).unwrap();
        }
        states.push(contents(&db));
        ids.push(backup(&env));
    }
    drop(c);
    let kinds: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let b = listed(&env, id);
            (b["kind"].as_str().unwrap().to_owned(), b["base_id"].as_str().unwrap_or("-").to_owned())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("full".to_owned(), "-".to_owned()),
            ("incremental".to_owned(), ids[0].clone()),
            ("incremental".to_owned(), ids[1].clone()),
            ("full".to_owned(), "-".to_owned()),
        ]
    );
    // an incremental stores the change, not the file
    let (full, inc) = (listed(&env, &ids[0]), listed(&env, &ids[1]));
    assert!(
        inc["stored_bytes"].as_u64().unwrap() * 10 < full["stored_bytes"].as_u64().unwrap(),
        "incremental {} vs full {}",
        inc["stored_bytes"],
        full["stored_bytes"]
    );

    let out = env.run(&["verify", "--all", "--deep"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("4 verified, 0 failed") && stdout(&out).contains("integrity_check"),
        "{}",
        stdout(&out)
    );
    // the end of a chain restores the state it was taken in, decoded through both deltas
    let to = env.dir.path().join("chain.db");
    let out = env.run(&["restore-sqlite", &ids[2], "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(contents(&to), states[2]);
    assert_ne!(states[2], states[1]);
    let out = env.run(&["test-restore", &ids[2]]);
    assert!(out.status.success() && stdout(&out).contains("PASSED"), "{}{}", stdout(&out), stderr(&out));
    // retention keeps what the kept incremental is a delta against
    let out = env.run(&["retention", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = runs.as_array().unwrap().iter().find(|r| r["subject"]["sqlite"] == "app").expect("a plan for sqlite:app");
    let decisions = run["decisions"].as_array().unwrap();
    assert!(decisions.iter().all(|d| d["keep"] == true), "{run}");
    let first = decisions.iter().find(|d| d["id"] == ids[0].as_str()).unwrap();
    assert!(first["reasons"].to_string().contains("base of kept incremental"), "{first}");

    // a row count the file does not have: the test restore says which table
    let full_dir = env.repository().join("sqlite/app").join(&ids[3]);
    let manifest_path = full_dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["tables"][0]["rows"] = serde_json::json!(40_001);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    reseal(&full_dir);
    let out = env.run(&["test-restore", &ids[3]]);
    assert!(!out.status.success(), "a wrong row count passed");
    assert!(stdout(&out).contains("ROW COUNT MISMATCH main.t: expected 40001, found 40000"), "{}", stdout(&out));

    // one flipped byte in the full under the chain: verification names it, restores refuse it
    let data = env.repository().join("sqlite/app").join(&ids[0]).join("data.sqlite.zst");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let out = env.run(&["verify", &ids[2], "--deep"]);
    assert!(!out.status.success(), "a damaged frame passed deep verification");
    assert!(
        stdout(&out).contains(&format!("FAILED {}", ids[2])) && stdout(&out).contains("SHA-256"),
        "{}",
        stdout(&out)
    );
    let to = env.dir.path().join("damaged.db");
    let out = env.run(&["restore-sqlite", &ids[2], "--to", to.to_str().unwrap()]);
    assert!(!out.status.success(), "a damaged chain restored");
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));
    let beside: Vec<PathBuf> =
        files_under(env.dir.path()).into_iter().filter(|p| p.to_string_lossy().contains("damaged.db")).collect();
    assert!(beside.is_empty(), "a failed restore left {beside:?}");
}

#[test]
fn a_restore_refuses_a_file_in_use_without_replace_and_rollback_swaps_the_kept_copy_back() {
    let env = TestEnv::new("sqlite_replace");
    let db = env.dir.path().join("live.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode = wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'backed up');")
        .unwrap();
    drop(c);
    sqlite_config(&env, &db, "");
    let id = backup(&env);
    // the application goes on: a row committed into the WAL, the file held open
    let mut app = holding(&db, "PRAGMA wal_autocheckpoint=0\nINSERT INTO t VALUES (2, 'after the backup')");
    let live = contents(&db);
    let before = std::fs::read(&db).unwrap();

    let target = db.to_str().unwrap();
    let out = env.run(&["restore-sqlite", "--latest", "--to", target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    // live.db, its -wal and -shm
    assert!(e.contains(&format!("-shm exist and are open in process {}", app.id())) && e.contains("--replace"), "{e}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "a refused restore touched the file");

    let out = env.run(&["restore-sqlite", "--latest", "--to", target, "--replace"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = PathBuf::from(format!("{target}.pre-{id}"));
    assert!(stdout(&out).contains(&format!("kept as {}", kept.display())), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("process {} had the replaced file open", app.id())), "{}", stderr(&out));
    assert_eq!(contents(&db), "1=backed up");
    assert_eq!(integrity(&db), "ok");
    // the kept copy has its WAL beside it: the row committed after the backup is still there
    assert!(PathBuf::from(format!("{}-wal", kept.display())).exists());
    let _ = app.kill();
    let _ = app.wait();
    assert_eq!(contents(&kept), live);

    let out = env.run(&["rollback", "--sqlite", target]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("is back at"), "{}", stdout(&out));
    assert_eq!(contents(&db), live);
    assert!(!kept.exists());
    let aside: Vec<PathBuf> = files_under(env.dir.path())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("live.db.rolled-back-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(contents(&aside[0]), "1=backed up");
    // nothing more to roll back to
    let out = env.run(&["rollback", "--sqlite", target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no kept copy"), "{}", stderr(&out));

    // restoring into a directory that does not exist is refused before anything is read
    let out = env.run(&["restore-sqlite", "--latest", "--to", "/nonexistent/dir/app.db"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/dir is not a directory"), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_not_a_sqlite_database_fails_the_backup_with_its_config_field() {
    let env = TestEnv::new("sqlite_bad");
    let not_db = env.dir.path().join("notes.txt");
    std::fs::write(&not_db, "some text that is long enough to have a header").unwrap();
    sqlite_config(&env, &not_db, "");
    let out = env.run(&["backup-sqlite"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("sqlite[app].path") && e.contains("notes.txt is not a SQLite database"), "{e}");
    let left: Vec<PathBuf> = files_under(&env.repository().join("sqlite"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.attempts/"))
        .collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
    // a missing file is never created
    let gone = env.dir.path().join("gone.db");
    sqlite_config(&env, &gone, "");
    let out = env.run(&["backup-sqlite"]);
    assert!(!out.status.success() && stderr(&out).contains("gone.db cannot be read"), "{}", stderr(&out));
    assert!(!gone.exists());
}

#[test]
fn the_daemon_backs_up_on_schedule_test_restores_applies_retention_and_reports_freshness() {
    let env = TestEnv::new("sqlite_daemon");
    let db = env.dir.path().join("app.db");
    let writer = Writer::start(&db, "wal");
    writer.wait_for(20);
    let reports_dir = env.dir.path().join("reports");
    sqlite_config(
        &env,
        &db,
        &format!(
            "    full_every: 2\nschedules:\n  sqlite_backup: \"* * * * * *\"\n  test_restore: \"*/2 * * * * *\"\n\
             \x20 retention: \"*/3 * * * * *\"\nretention:\n  sqlite_backup:\n    keep_last: 2\n    min_keep: 1\n\
             daemon:\n  catch_up: false\nreports:\n  dir: {}\n",
            reports_dir.display()
        ),
    );
    // one backup before the schedules start, so a test restore always has one to take
    backup(&env);
    let daemon = crate::daemon::Daemon::start(&env, &[]);
    // the reports of sqlite:app's runs in `sub`
    let reports = |sub: &str| -> Vec<serde_json::Value> {
        files_under(&reports_dir.join(sub))
            .iter()
            .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).ok()?).ok())
            .filter(|r| r["database"] == "sqlite:app")
            .collect()
    };
    let count = |sub: &str| reports(sub).len();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(count("sqlite_backup") >= 5 && count("database_restore") >= 1 && count("backup_retention") >= 2) {
        assert!(Instant::now() < deadline, "the daemon's jobs did not run:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, log) = daemon.stop();
    drop(writer);
    assert_eq!(code, Some(0), "{log}");
    for sub in ["sqlite_backup", "database_restore", "backup_retention"] {
        for r in reports(sub) {
            assert_eq!(r["outcome"], "success", "{sub}: {r}");
        }
    }
    // fulls and incrementals alternate (full_every 2); retention kept the newest two and whatever
    // the newest incremental is a delta against
    let listed = env.list_json();
    assert!((2..=3).contains(&listed.len()), "{listed:?}");
    let newest = listed.last().unwrap();
    if newest["kind"] == "incremental" {
        assert!(listed.iter().any(|b| b["id"] == newest["base_id"]), "the base of the newest was deleted: {listed:?}");
    }
    assert!(listed.iter().all(|b| b["database"] == "sqlite:app"));
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports_dir.join("status.json")).unwrap()).unwrap();
    let app = &status["databases"]["sqlite:app"];
    assert!(app["last_full_success"].is_string() && app["last_test_restore_outcome"] == "success", "{status}");
    // fresh: healthcheck is satisfied by the SQLite file's backups alone
    let out = env.run(&["healthcheck"]);
    assert!(
        !stdout(&out).contains("sqlite:app") && !stderr(&out).contains("SQLite database app"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn a_snapshot_that_waits_past_backup_timeout_is_cancelled_and_leaves_nothing() {
    let env = TestEnv::new("sqlite_timeout");
    let db = env.dir.path().join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');").unwrap();
    drop(c);
    // a rollback-journal writer holding an exclusive lock: nobody may read
    let mut holder = holding(&db, "BEGIN EXCLUSIVE\nINSERT INTO t VALUES (2, 'y')");
    env.write_config(&format!(
        "sqlite:\n  - {{name: app, path: {}, busy_timeout: 10m}}\nbackup:\n  timeout: 2s\n",
        db.display()
    ));
    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let started = Instant::now();
    let out = env.run_env(&["backup-sqlite"], &[("TMPDIR", tmp.to_str().unwrap())]);
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exceeded backup.timeout (2s)"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(15), "the cancelled snapshot took {took:?}");
    let left: Vec<PathBuf> = files_under(&env.repository().join("sqlite"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.attempts/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // the scratch snapshot (in this run's own TMPDIR) is gone
    let scratch: Vec<PathBuf> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");
}
