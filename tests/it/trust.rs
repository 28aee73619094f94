//! Nothing in the repository can be lost, faked or left behind: damaged and edited manifests,
//! cancelled steps, damaged globals, bad key material, kill -9 leftovers, unknown outcomes.

use crate::harness::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn backup_dir(env: &TestEnv, id: &str) -> PathBuf {
    env.repository().join(&env.db).join(id)
}

fn database_exists(name: &str) -> bool {
    cluster().psql("postgres", &format!("select count(*) from pg_database where datname = '{name}'")).unwrap() == "1"
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn small(env: &TestEnv) {
    env.psql("create table t (id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 3000) g;");
}

#[test]
fn damaged_manifests_are_listed_as_damaged_and_fail_verification() {
    let env = TestEnv::new("damaged");
    small(&env);
    let (a, b, c) = (env.backup(), env.backup(), env.backup());
    let manifest = |id: &str| backup_dir(&env, id).join("manifest.json");
    let text = std::fs::read(manifest(&a)).unwrap();
    std::fs::write(manifest(&a), &text[..text.len() / 2]).unwrap();
    std::fs::write(manifest(&b), b"{}").unwrap();

    let list = env.list_json();
    let status = |id: &str| list.iter().find(|e| e["id"] == id).map(|e| e["status"].clone());
    assert_eq!(status(&a), Some("damaged".into()), "{list:?}");
    assert_eq!(status(&b), Some("damaged".into()), "{list:?}");
    assert_eq!(status(&c), Some("ok".into()), "{list:?}");
    let text_list = env.run(&["list"]);
    assert!(
        stdout(&text_list).contains(a.as_str()) && stdout(&text_list).contains("DAMAGED"),
        "{}",
        stdout(&text_list)
    );

    let out = env.run(&["verify", "--all", "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for id in [&a, &b] {
        assert!(text.contains(&format!("FAILED {id}")), "{text}");
    }
    assert!(text.contains(&format!("PASSED {c}")) && text.contains("3 verified, 2 failed"), "{text}");
    // and nothing restores from a damaged one
    let target = unique("damaged_r");
    let out = env.run(&["restore", &a, "--target-database", &target, "--create"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains(&a) && stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
    assert!(!database_exists(&target));
}

/// Any edit of an unencrypted manifest is caught before the restore touches the server.
#[test]
fn edits_to_an_unencrypted_manifest_are_refused_before_anything_is_written() {
    let env = TestEnv::new("edited");
    small(&env);
    let id = env.backup();
    let path = backup_dir(&env, &id).join("manifest.json");
    let good = std::fs::read_to_string(&path).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 4] = [
        ("a table's row count", |m| m["tables"][0]["rows"] = 3001.into()),
        ("a frame's raw_len", |m| m["data"]["frames"][0]["raw_len"] = 1.into()),
        ("the raw SHA-256", |m| m["data"]["raw_sha256"] = "0".repeat(64).into()),
        ("a block key", |m| m["blocks"][0]["key"] = "public.other".into()),
    ];
    for (what, edit) in edits {
        let mut m: serde_json::Value = serde_json::from_str(&good).unwrap();
        edit(&mut m);
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let target = unique("edited_r");
        let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
        assert_ne!(out.status.code(), Some(0), "{what}: restored");
        assert!(stderr(&out).contains("does not match its digest"), "{what}: {}", stderr(&out));
        assert!(!database_exists(&target), "{what}: the refused restore created {target}");
        let out = env.run(&["verify", &id]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stdout(&out).contains("does not match its digest"), "{what}: {}", stdout(&out));
    }
    std::fs::write(&path, &good).unwrap();
    assert!(env.run(&["verify", &id, "--deep"]).status.success());
}

#[test]
fn a_backup_cancelled_while_pg_dumpall_runs_is_a_failed_backup() {
    let env = TestEnv::new("cancelglobals");
    small(&env);
    let bin = env.fake_tool("pg_dumpall", "pg_dumpall_hang.sh");
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    let child = env.command(&["backup"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("pg_dumpall to hang", Duration::from_secs(30), || pgrep("sleep 4325"));
    send_signal(child.id(), libc::SIGTERM, false);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled while pg_dumpall --globals-only ran"), "{}", stderr(&out));
    assert!(stdout(&out).trim().is_empty(), "a cancelled backup printed an id");
    assert!(env.list_json().is_empty(), "a cancelled backup is listed");
    assert!(env.repository_files().is_empty(), "{:?}", env.repository_files());
    assert_eq!(env.attempt_outcome("full_backup").as_deref(), Some("cancelled"));
    assert!(!pgrep("sleep 4325"), "pg_dumpall is still running");
}

#[test]
fn damaged_globals_fail_a_restore_before_the_database_is_created() {
    let env = TestEnv::new("globalsbad");
    small(&env);
    let id = env.backup();
    let globals = backup_dir(&env, &id).join("globals.sql.zst");
    let good = std::fs::read(&globals).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, bytes) in
        [("corrupt", Some(flipped)), ("truncated", Some(good[..good.len() / 2].to_vec())), ("missing", None)]
    {
        match bytes {
            Some(b) => std::fs::write(&globals, b).unwrap(),
            None => std::fs::remove_file(&globals).unwrap(),
        }
        let target = unique("globals_r");
        let out = env.run(&["restore", &id, "--target-database", &target, "--create", "--globals"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("globals") && stderr(&out).contains("nothing was restored"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(!database_exists(&target), "{what}: an empty {target} was left behind");
    }
    std::fs::write(&globals, &good).unwrap();
}

#[test]
fn a_failed_create_restore_drops_what_it_created_unless_asked_to_keep_it() {
    let env = TestEnv::new("dropfailed");
    small(&env);
    let id = env.backup();
    // pg_restore fails half way: the data is cut, its checksums made to match
    let bin = env.fake_tool("pg_restore", "pg_restore_fail.sh");
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    let target = unique("dropfailed_r");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("the database \"{target}\" it created was dropped")), "{}", stderr(&out));
    assert!(!database_exists(&target));
    let out = env.run(&["restore", &id, "--target-database", &target, "--create", "--keep-failed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("was kept"), "{}", stderr(&out));
    assert!(database_exists(&target));
}

#[test]
fn bad_key_material_is_a_config_error_naming_the_key() {
    let env = TestEnv::new("badkeys");
    let short = env.dir.path().join("short.key");
    std::fs::write(&short, "hunter2\n").unwrap();
    let garbage = env.dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key at all\n").unwrap();
    for (yaml, key, message) in [
        (
            "encryption:\n  enabled: true\n  recipients: [age1notarealkey]\n".to_owned(),
            "encryption.recipients",
            "not an age X25519 recipient",
        ),
        (
            format!("encryption:\n  enabled: true\n  key_file: {}\n", short.display()),
            "encryption.key_file",
            "is too short",
        ),
        (
            format!(
                "encryption:\n  enabled: true\n  recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]\n  identity_file: {}\n",
                garbage.display()
            ),
            "encryption.identity_file",
            "not an age identity",
        ),
    ] {
        env.write_config(&yaml);
        let out = env.run(&["check-config"]);
        assert_eq!(out.status.code(), Some(78), "{yaml}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(key) && err.contains(message) && !stdout(&out).contains("valid"), "{yaml}: {err}");
        assert!(!err.contains("hunter2"), "the passphrase was printed: {err}");
    }
}

/// The leftovers of a backup killed with kill -9: shown by verify, removed by the next backup
/// once older than orphan_grace; no password file or plaintext anywhere.
#[test]
fn kill_9_leaves_nothing_that_is_not_found_and_removed() {
    let env = TestEnv::new("kill9");
    env.psql("create table big (id int, v text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 80000) g;");
    let first = env.backup();
    let bin = env.fake_bin("pg_dump_hang_after_14mb.sh");
    env.write_config(&format!("pg_bin_dir: {}\nretention:\n  orphan_grace: 1s\n", bin.display()));
    let before_tmp = tmp_names();
    let mut child = env.command(&["backup"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let partial = || files_under(&env.repository()).into_iter().any(|f| f.to_string_lossy().contains(".pgbackd-tmp-"));
    wait_until("a half-written data file", Duration::from_secs(30), partial);
    wait_until("pg_dump to hang", Duration::from_secs(30), || pgrep("sleep 4322"));
    send_signal(child.id(), libc::SIGKILL, false);
    child.wait().unwrap();
    kill_all("sleep 4322");
    assert!(partial(), "the temp file is the leftover under test");
    // no secret or plaintext file anywhere in TMPDIR
    let new_tmp: Vec<String> = tmp_names().into_iter().filter(|n| !before_tmp.contains(n)).collect();
    assert!(new_tmp.iter().all(|n| !n.starts_with("pgbackd-")), "{new_tmp:?}");

    let out = env.run(&["verify", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 leftover of stopped processes")
            && stderr(&out).contains("data.zst (unfinished write)"),
        "{}",
        stderr(&out)
    );
    // the record of the killed attempt says it never finished: retention waits
    assert_eq!(env.attempt_outcome("full_backup").as_deref(), Some("running"));
    let out = env.run(&["retention"]);
    assert!(
        stdout(&out).contains("SKIPPED") && stdout(&out).contains("has not recorded how it ended"),
        "{}",
        stdout(&out)
    );
    std::thread::sleep(Duration::from_millis(1100));
    env.write_config("retention:\n  orphan_grace: 1s\n");
    env.backup();
    assert!(!partial(), "the next backup removed the leftover");
    let out = env.run(&["verify", &first]);
    assert!(!stderr(&out).contains("leftovers"), "{}", stderr(&out));
}

/// A backup killed after its data was committed but before its manifest leaves data without a
/// manifest: `verify` shows it, the next backup removes it once older than orphan_grace.
#[test]
fn data_without_a_manifest_is_shown_then_swept_by_the_next_backup() {
    let env = TestEnv::new("orphan");
    small(&env);
    let id = env.backup();
    let orphan = env.repository().join(&env.db).join("20261201T000000Z-full-0a0b0c");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::copy(backup_dir(&env, &id).join("data.zst"), orphan.join("data.zst")).unwrap();
    let out = env.run(&["verify", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("20261201T000000Z-full-0a0b0c/ (data without a manifest)"), "{}", stderr(&out));
    assert_eq!(env.list_json().len(), 1, "an orphan is not a backup");
    env.write_config("retention:\n  orphan_grace: 0s\n");
    env.backup();
    assert!(!orphan.exists(), "the next backup removed the orphan");
}

fn tmp_names() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn kill_all(pattern: &str) {
    let _ = Command::new("pkill").args(["-9", "-f", pattern]).status();
}

/// When the repository and the reports share a full disk, a failed backup cannot write its
/// report; retention still knows, from the repository's attempt record, and deletes nothing.
#[test]
fn a_full_disk_does_not_make_retention_delete_good_backups() {
    let env = TestEnv::new("diskfull");
    let Some(small) = Tmpfs::mount(&env, "6m", "a_full_disk_does_not_make_retention_delete_good_backups") else {
        return;
    };
    let mount = small.0.clone();
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 2000) g;");
    let text = format!(
        "local_backup_dir: {}\nreports:\n  dir: {}\nretention:\n  full_backup:\n    keep_last: 1\n    min_keep: 1\n\
         monitoring:\n  listen: off\n  min_free_space: 0\n",
        mount.join("repo").display(),
        mount.join("reports").display()
    );
    write_config_without_local(&env, &text);
    let ids: Vec<String> = (0..3).map(|_| env.backup()).collect();
    // fill the disk but for 256 KiB (the disk guard lets a backup of the previous one's size
    // start), then a backup that is larger fails, and cannot write its report
    let filler = mount.join("filler");
    let _ = Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).arg("bs=64k").status();
    assert!(Command::new("truncate").args(["-s", "-256K"]).arg(&filler).status().unwrap().success());
    env.psql("insert into t select g, md5(g::text) from generate_series(2001, 60000) g;");
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("No space left on device") && err.contains("the filesystem is full: free space on it"),
        "the message says what to do: {err}"
    );
    std::fs::remove_file(&filler).unwrap();
    let out = env.run(&["retention"]);
    assert!(stdout(&out).contains("SKIPPED"), "{}", stdout(&out));
    let listed: Vec<String> = env.list_json().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, ids, "retention deleted backups while backups fail");
}

/// A small tmpfs in the test's directory, unmounted when dropped; `None` (the test skips, saying
/// so) where mounting is not allowed, never in CI.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(env: &TestEnv, size: &str, test: &str) -> Option<Tmpfs> {
        let mount = env.dir.path().join("small");
        std::fs::create_dir_all(&mount).unwrap();
        let opts = format!("size={size}");
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(&mount).status();
        if !mounted.is_ok_and(|s| s.success()) {
            assert!(std::env::var("CI").is_err(), "CI: {test} needs to mount a tmpfs (run as root)");
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here (run as root)");
            return None;
        }
        Some(Tmpfs(mount))
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).status();
        assert!(ok.is_ok_and(|s| s.success()), "remounting {} {opts}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A repository on a read-only mount (a snapshot, a write-protected disk): backups and retention
/// fail saying why and what to do; restore and verify still work, reading without a lock.
#[test]
fn a_read_only_repository_can_be_restored_from_and_says_why_it_cannot_be_written() {
    let env = TestEnv::new("readonly");
    let Some(mount) = Tmpfs::mount(&env, "16m", "a_read_only_repository_can_be_restored_from") else {
        return;
    };
    small(&env);
    let text = format!(
        "local_backup_dir: {}\nreports:\n  dir: {}\nmonitoring:\n  listen: off\n  min_free_space: 0\n",
        mount.0.join("repo").display(),
        env.dir.path().join("reports").display()
    );
    write_config_without_local(&env, &text);
    let id = env.backup();
    mount.remount("ro");
    let hint = "Read-only file system (os error 30); the filesystem is mounted read-only: remount it read-write";
    // (retention first: a failed backup would make it skip, rightly)
    for job in ["retention", "backup"] {
        let out = env.run(&[job]);
        assert_eq!(out.status.code(), Some(1), "{job}: {}", stderr(&out));
        assert!(stderr(&out).contains(hint), "{job}: {}", stderr(&out));
    }
    let out = env.run(&["verify", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = unique("readonly_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the target is read-only: reading it without a lock"), "{}", stderr(&out));
    assert_eq!(fingerprint(&target, "t"), fingerprint(&env.db, "t"));
    mount.remount("rw");
    assert_eq!(env.list_json().len(), 1);
}

fn write_config_without_local(env: &TestEnv, extra: &str) {
    let c = cluster();
    let text = format!(
        "database:\n  host: {}\n  port: {}\n  username: postgres\n  database: {}\n{extra}",
        c.socket_dir(),
        c.port,
        env.db
    );
    std::fs::write(&env.config, text).unwrap();
}

fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep").args(["-f", pattern]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn locks_of(env: &TestEnv) -> Vec<PathBuf> {
    files_under(&env.repository().join(".locks").join(&env.db))
}

/// A restore from the command line while retention runs in another process: retention keeps
/// what the restore reads, and the restore completes.
#[test]
fn retention_in_another_process_keeps_what_a_restore_reads() {
    let env = TestEnv::new("race");
    small(&env);
    let policy = "retention:\n  full_backup:\n    keep_last: 1\n    min_keep: 1\n";
    env.write_config(policy);
    let ids: Vec<String> = (0..3).map(|_| env.backup()).collect();
    let bin = env.fake_tool("pg_restore", "pg_restore_slow.sh");
    env.write_config(&format!("{policy}pg_bin_dir: {}\n", bin.display()));
    let target = unique("race_r");
    let restore = env
        .command(&["restore", &ids[0], "--target-database", &target, "--create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the restore's lock", Duration::from_secs(20), || !locks_of(&env).is_empty());
    let out = env.run(&["retention"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains(&format!("floor: in use by restore of {} (pid {}", ids[0], restore.id())), "{plan}");
    let left: Vec<String> = env.list_json().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(left, [ids[0].clone(), ids[2].clone()], "only the unused older backup goes");
    let out = restore.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("row counts of all 1 tables match"), "{}", stdout(&out));
    assert!(locks_of(&env).is_empty(), "{:?}", locks_of(&env));
}

/// A deleted manifest.json is a damaged backup, not an orphan: listed, failing verification,
/// kept by retention's sweep; `pgbackd forget` shows it, then deletes it on --yes. A full that an
/// incremental needs, or a backup a reader holds, is refused.
#[test]
fn a_deleted_manifest_stays_visible_until_forgotten_on_purpose() {
    let env = TestEnv::new("forget");
    small(&env);
    env.write_config("retention:\n  orphan_grace: 0s\n  full_backup:\n    keep_last: 10\n");
    let (a, b) = (env.backup(), env.backup());
    env.psql("update t set v = 'changed' where id < 30");
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inc = stdout(&out).trim().to_owned();
    std::fs::remove_file(backup_dir(&env, &a).join("manifest.json")).unwrap();

    let status = |id: &str| env.list_json().iter().find(|e| e["id"] == id).map(|e| e["status"].clone());
    assert_eq!(status(&a), Some("damaged".into()));
    let out = env.run(&["verify", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("FAILED {a}")) && stdout(&out).contains("manifest.json is missing"),
        "{}",
        stdout(&out)
    );
    let out = env.run(&["retention"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(backup_dir(&env, &a).exists(), "retention swept a damaged backup as an orphan");

    // the plan, then the deletion
    let out = env.run(&["forget", &a]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("DAMAGED backup {a}")) && stdout(&out).contains("run again with --yes"),
        "{}",
        stdout(&out)
    );
    assert!(backup_dir(&env, &a).exists());
    let out = env.run(&["forget", &a, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("deleted from local"), "{}", stdout(&out));
    assert!(!backup_dir(&env, &a).exists() && status(&a).is_none());

    // the base of an incremental is refused
    let out = env.run(&["forget", &b, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("is read by the restores of {inc}")), "{}", stderr(&out));
    assert_eq!(status(&b), Some("ok".into()));

    // a backup a reader holds is refused, naming the reader
    let bin = env.fake_tool("pg_restore", "pg_restore_slow.sh");
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    let target = unique("forget_r");
    let mut restore = env
        .command(&["restore", &inc, "--target-database", &target, "--create"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the restore's lock", Duration::from_secs(20), || !locks_of(&env).is_empty());
    let out = env.run(&["forget", &inc, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("is in use by restore of {inc}")), "{}", stderr(&out));
    assert!(restore.wait().unwrap().success());
    assert_eq!(status(&inc), Some("ok".into()));
}

/// A delete lock held by a process on another host holds off a reader (which names it), is kept
/// by `unlock` while it is refreshed, removed by `unlock --all`; a stale one is ignored.
#[test]
fn a_delete_lock_of_another_host_holds_off_readers_until_unlocked() {
    let env = TestEnv::new("hostlock");
    small(&env);
    env.write_config("locks:\n  wait: 2s\n");
    let id = env.backup();
    let dir = env.repository().join(".locks").join(&env.db);
    std::fs::create_dir_all(&dir).unwrap();
    let lock = |refreshed: chrono::DateTime<chrono::Utc>| {
        serde_json::json!({
            "id": "20261201T000000Z-4242-abcdef01", "kind": "delete", "subject": {"database": env.db},
            "purpose": "retention", "host": "other-host", "pid": 4242, "process": null,
            "created_at": refreshed, "refreshed_at": refreshed,
        })
    };
    let path = dir.join("20261201T000000Z-4242-abcdef01.json");
    std::fs::write(&path, serde_json::to_vec(&lock(chrono::Utc::now())).unwrap()).unwrap();
    let started = Instant::now();
    let out = env.run(&["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for locks.wait");
    assert!(stderr(&out).contains("is locked by retention (pid 4242 on other-host"), "{}", stderr(&out));
    let out = env.run(&["unlock"]);
    assert!(stdout(&out).contains("kept live delete lock") && path.exists(), "{}", stdout(&out));
    let out = env.run(&["unlock", "--all"]);
    assert!(stdout(&out).contains("removed live delete lock") && !path.exists(), "{}", stdout(&out));
    assert!(env.run(&["verify", &id]).status.success());
    // a lock nobody refreshed for an hour protects nothing, and unlock removes it
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, serde_json::to_vec(&lock(chrono::Utc::now() - chrono::Duration::hours(1))).unwrap()).unwrap();
    let out = env.run(&["verify", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("ignoring a stale lock"), "{}", stderr(&out));
    let out = env.run(&["unlock"]);
    assert!(stdout(&out).contains("removed stale delete lock") && !path.exists(), "{}", stdout(&out));
}
