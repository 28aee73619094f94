//! Point-in-time recovery: `restore-cluster` of a real archiving PostgreSQL 15 cluster to times,
//! a restore point, an LSN and the end of the WAL, across a timeline switch, from an encrypted
//! repository on S3; and what it refuses.

use crate::harness::BIN;
use crate::notify::free_port;
use crate::wal::{Archiving, as_server, query_at, stderr, walk};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A directory the server's OS user may create data directories in.
fn server_dir(a: &Archiving, name: &str) -> PathBuf {
    let d = a.dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    a.cluster.give_to_server(&d).unwrap();
    d
}

/// A server `restore-cluster --start` left running; stopped when dropped.
struct Restored {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    out: String,
}

impl Restored {
    fn query(&self, sql: &str) -> String {
        query_at(&self.bin, self.port, sql)
    }

    fn markers(&self) -> Vec<String> {
        let m = self.query("select string_agg(n::text, ',' order by n) from marks");
        m.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        as_server(&self.bin.join("pg_ctl"), &["-D", &self.data.to_string_lossy(), "-m", "immediate", "-w", "stop"]);
    }
}

fn restore_cluster(a: &Archiving, args: &[&str]) -> Output {
    let mut all = vec!["restore-cluster"];
    all.extend_from_slice(args);
    a.run_as_server(&all)
}

/// `restore-cluster --pgdata DIR --start --port P ARGS`, which must succeed.
fn recover(a: &Archiving, data: &Path, args: &[&str]) -> Restored {
    let port = free_port();
    let (d, p) = (data.to_string_lossy().into_owned(), port.to_string());
    let mut all = vec!["--pgdata", &d, "--start", "--port", &p];
    all.extend_from_slice(args);
    let o = restore_cluster(a, &all);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = std::fs::read_to_string(data.join("log/pgbackd-recovery.log")).unwrap_or_default();
    assert!(o.status.success(), "{args:?}: {out}{}\nserver log:\n{log}", stderr(&o));
    Restored { bin: a.cluster.bin().to_owned(), data: data.to_owned(), port, out }
}

/// Inserts marker `n` and returns the server's clock just after it committed.
fn mark(a: &Archiving, n: u32) -> String {
    a.psql(&format!("insert into marks (n) values ({n})"));
    let t = a.psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(150));
    t
}

fn pgbench(a: &Archiving, args: &[&str]) {
    let port = a.cluster.port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    all.extend_from_slice(args);
    all.push("postgres");
    let o = Command::new(a.cluster.bin().join("pgbench")).args(&all).output().unwrap();
    assert!(o.status.success(), "pgbench {args:?}: {}", stderr(&o));
}

fn base_backup(a: &Archiving) -> String {
    let taken = a.run_as_server(&["base-backup"]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    String::from_utf8_lossy(&taken.stdout).trim().to_owned()
}

#[test]
fn recovery_to_each_moment_and_to_a_restore_point_finds_exactly_the_markers_committed_before_it() {
    let a = Archiving::start("");
    a.psql("create table marks (n int primary key, at timestamptz default clock_timestamp())");
    pgbench(&a, &["-i", "-q", "-s", "2"]);
    let base = base_backup(&a);
    pgbench(&a, &["-c", "2", "-t", "300"]);
    let t1 = mark(&a, 1);
    pgbench(&a, &["-c", "2", "-t", "300"]);
    let t2 = mark(&a, 2);
    let point = a.run_as_server(&["restore-point", "before-3"]);
    assert!(point.status.success(), "{}", stderr(&point));
    assert!(stderr(&point).contains("archived"), "{}", stderr(&point));
    let t3 = mark(&a, 3);
    // where WAL is inserted now: past marker 3's commit record. (The write position,
    // pg_current_wal_lsn(), may still be before it: the test cluster commits asynchronously, and
    // recovery to that LSN then rightly stopped before marker 3, a flake seen once.)
    let lsn_after_3 = a.psql("select pg_current_wal_insert_lsn()");
    mark(&a, 4);
    a.wait_archived(&a.switch());

    let dirs = server_dir(&a, "restores");
    for (i, (t, want)) in [(&t1, "1"), (&t2, "1,2"), (&t3, "1,2,3")].into_iter().enumerate() {
        let r = recover(&a, &dirs.join(format!("t{i}")), &["--to-time", t, "--no-archive"]);
        assert_eq!(r.markers().join(","), want, "recovered to {t}:\n{}", r.out);
        assert!(r.out.contains(&format!("restored base backup {base}")), "{}", r.out);
        assert!(r.out.contains("recovered in") && r.out.contains("last commit"), "{}", r.out);
        // promoted, writable, and it does not archive into the production archive
        assert_eq!(r.query("select pg_is_in_recovery()"), "f");
        assert_eq!(r.query("show archive_mode"), "off");
        assert_eq!(r.query("select count(*) > 0 from pgbench_history"), "t");
    }
    let r = recover(&a, &dirs.join("point"), &["--to-restore-point", "before-3", "--no-archive"]);
    assert_eq!(r.markers().join(","), "1,2", "{}", r.out);
    let r = recover(&a, &dirs.join("lsn"), &["--to-lsn", &lsn_after_3, "--no-archive", "--json"]);
    assert_eq!(r.markers().join(","), "1,2,3", "{}", r.out);
    let json: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(json["target"]["type"], "lsn");
    assert_eq!(json["backup_id"], base.as_str());
    let conf = std::fs::read_to_string(r.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains(&format!("recovery_target_lsn = '{lsn_after_3}'")) && conf.contains("archive-get %f %p"),
        "{conf}"
    );

    // a target before the base backup ended cannot be reached from it: refused, nothing written
    let early = dirs.join("early");
    let o = restore_cluster(&a, &["--pgdata", &early.to_string_lossy(), "--to-time", "2020-01-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no base backup ends before time 2020-01-01"), "{}", stderr(&o));
    assert!(!early.exists());
    // a moment the archive does not reach yet says how to get there
    let o = restore_cluster(&a, &["--pgdata", &early.to_string_lossy(), "--to-time", "2099-01-01 00:00:00+00"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not reach") && stderr(&o).contains("pg_switch_wal"), "{}", stderr(&o));
    // a non-empty data directory is never written into
    let busy = dirs.join("t0");
    let o = restore_cluster(&a, &["--pgdata", &busy.to_string_lossy(), "--latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not empty"), "{}", stderr(&o));
    // an unknown restore point name is refused by PostgreSQL's own check at the end of the WAL
    let taken = a.run_as_server(&["restore-point", "before-3"]);
    assert_eq!(taken.status.code(), Some(2), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("already recorded"), "{}", stderr(&taken));
}

#[test]
fn latest_after_a_killed_source_recovers_every_archived_commit_and_a_missing_segment_is_refused_by_name() {
    let a = Archiving::start("");
    a.psql("create table marks (n int primary key)");
    base_backup(&a);
    let mut segments = Vec::new();
    for n in 1..=6 {
        a.psql(&format!("insert into marks values ({n})"));
        segments.push(a.switch());
    }
    a.wait_archived(segments.last().unwrap());
    // the source crashes (kill -9 of the postmaster)
    let pid: i32 = std::fs::read_to_string(a.cluster.data().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
    let dirs = server_dir(&a, "restores");
    let r = recover(&a, &dirs.join("latest"), &["--latest", "--no-archive"]);
    assert_eq!(r.markers().join(","), "1,2,3,4,5,6", "{}", r.out);
    drop(r);

    // a segment in the middle lost from the repository: refused, naming it, before anything is written
    let lost = &segments[2];
    let stored: Vec<PathBuf> = walk(&a.dir.path().join("repository/clusters/main/wal"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{lost}-")))
        .collect();
    assert_eq!(stored.len(), 1);
    std::fs::remove_file(&stored[0]).unwrap();
    let gone = dirs.join("gap");
    let o = restore_cluster(&a, &["--pgdata", &gone.to_string_lossy(), "--latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains(&format!("{lost} is missing")) && msg.contains("--to-lsn"), "{msg}");
    assert!(!gone.exists());
}

#[test]
fn a_recovered_and_promoted_cluster_archives_on_timeline_2_and_recovers_again_across_the_switch() {
    // encrypted, on a local directory and S3
    let crate::wal::Encrypted { a, readable, server, bucket, .. } = Archiving::encrypted_on_s3();
    let id = readable.to_string_lossy().into_owned();
    a.psql("create table marks (n int primary key)");
    base_backup(&a);
    a.psql("insert into marks values (1)");
    a.wait_archived(&a.switch());
    // the source is gone; only S3 holds the repository
    a.cluster.stop();
    std::fs::remove_dir_all(a.dir.path().join("repository/clusters")).unwrap();

    let dirs = server_dir(&a, "restores");
    // archiving stays on: the promoted copy continues the cluster, on timeline 2
    let first = recover(&a, &dirs.join("first"), &["--latest", "--identity", &id]);
    assert_eq!(first.markers().join(","), "1", "{}", first.out);
    assert!(first.out.contains("timeline 2"), "{}", first.out);
    first.query("insert into marks values (2)");
    let seg = first.query("select pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    let mut waited = 0;
    while first.query("select coalesce(last_archived_wal, '') from pg_stat_archiver") < seg {
        waited += 1;
        assert!(waited < 300, "the promoted copy did not archive {seg}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(first);
    let keys = server.keys(&bucket);
    assert!(keys.iter().any(|k| k.contains("/00000002.history-")), "{keys:?}");

    // from the same base backup (timeline 1) across the switch to timeline 2's newest commit
    let second = recover(&a, &dirs.join("second"), &["--latest", "--no-archive", "--identity", &id]);
    assert_eq!(second.markers().join(","), "1,2", "{}", second.out);
    assert!(second.out.contains("timeline 3"), "{}", second.out);
    // on timeline 1 only (before the switch): marker 2 is not there
    let old = recover(&a, &dirs.join("old"), &["--latest", "--timeline", "1", "--no-archive", "--identity", &id]);
    assert_eq!(old.markers().join(","), "1", "{}", old.out);
}

#[test]
fn the_recovery_drill_reads_every_table_checks_it_and_fails_naming_a_corrupted_segment() {
    let a = Archiving::start(
        "recovery_drill: {pick: latest, max_rto: 10m}\ntest_restore:\n  checks:\n    - {name: three marks, sql: \
         'select count(*) from marks', expect: '3'}\n",
    );
    a.psql("create table marks (n int primary key)");
    pgbench(&a, &["-i", "-q", "-s", "1"]);
    base_backup(&a);
    let mut after = Vec::new();
    for n in 1..=3 {
        a.psql(&format!("insert into marks values ({n})"));
        after.push(a.switch());
    }
    a.wait_archived(after.last().unwrap());
    // a scratch copy a crashed pgbackd left behind
    let tmp = server_dir(&a, "tmp");
    let stale = tmp.join("pgbackd-drill-999999-x");
    std::fs::create_dir_all(stale.join("data")).unwrap();
    a.cluster.give_to_server(&stale).unwrap();
    let config = a.config.to_string_lossy().into_owned();
    let o = crate::wal::as_server_in(&tmp, Path::new(BIN), &["-c", &config, "recovery-drill", "--json"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], serde_json::json!([]), "{out}");
    assert_eq!(r["swept"].as_array().unwrap().len(), 1, "{out}");
    let postgres = r["databases"].as_array().unwrap().iter().find(|d| d["name"] == "postgres").unwrap();
    let rows = |t: &str| postgres["tables"].as_array().unwrap().iter().find(|x| x[0] == t).map(|x| x[1].clone());
    assert_eq!(rows("public.marks"), Some(serde_json::json!(3)), "{out}");
    assert_eq!(rows("public.pgbench_accounts"), Some(serde_json::json!(100000)), "{out}");
    assert_eq!(r["amcheck"], "passed", "{out}");
    assert!(r["checksums"].as_str().unwrap().starts_with("off"), "{out}");
    assert_eq!(r["checks"][0]["ok"], true, "{out}");
    assert!(r["rto_seconds"].as_f64().unwrap() > 0.0, "{out}");
    assert_eq!(r["schema_differences"], serde_json::json!([]), "{out}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the scratch copies are removed: {left:?}");

    // a flipped byte in a segment the recovery needs: the drill fails naming it
    let victim = &after[1];
    let stored: Vec<PathBuf> = walk(&a.dir.path().join("repository/clusters/main/wal"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{victim}-")))
        .collect();
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&stored[0], bytes).unwrap();
    let o = crate::wal::as_server_in(&tmp, Path::new(BIN), &["-c", &config, "recovery-drill"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("drill FAILED") && out.contains(victim.as_str()), "{out}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the scratch copy is removed after a failed drill too: {left:?}");
}

#[test]
fn with_restore_points_before_backups_a_recovery_stops_just_before_a_dump_began() {
    let a = Archiving::start("");
    let text = std::fs::read_to_string(&a.config).unwrap().replace(
        "username: postgres}}",
        &format!(
            "username: postgres}}, restore_point_before_backup: true}}\ndatabase: {{host: 127.0.0.1, port: {}, \
             username: postgres, database: postgres}}",
            a.cluster.port
        ),
    );
    std::fs::write(&a.config, text).unwrap();
    a.psql("create table marks (n int primary key)");
    a.psql("insert into marks values (1)");
    base_backup(&a);
    a.psql("insert into marks values (2)");
    let dump = a.run_as_server(&["backup"]);
    assert!(dump.status.success(), "{}", stderr(&dump));
    let id = String::from_utf8_lossy(&dump.stdout).trim().to_owned();
    assert!(stderr(&dump).contains(&format!("before-{id}")), "{}", stderr(&dump));
    a.psql("insert into marks values (3)");
    a.wait_archived(&a.switch());
    let dirs = server_dir(&a, "restores");
    let r = recover(&a, &dirs.join("before"), &["--to-restore-point", &format!("before-{id}"), "--no-archive"]);
    assert_eq!(r.markers().join(","), "1,2", "{}", r.out);
    drop(r);

    // a time after the last archived commit: PostgreSQL cannot prove it reached it, and says so
    a.psql("insert into marks values (4)");
    std::thread::sleep(Duration::from_millis(1500));
    let t = a.psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(500));
    // the WAL switched and archived without a later commit
    let point = a.run_as_server(&["restore-point", "no-commit-after"]);
    assert!(point.status.success(), "{}", stderr(&point));
    let late = dirs.join("late");
    let port = free_port().to_string();
    let o = restore_cluster(
        &a,
        &["--pgdata", &late.to_string_lossy(), "--to-time", &t, "--start", "--port", &port, "--no-archive"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("without passing the target") && stderr(&o).contains("--latest"), "{}", stderr(&o));
}
