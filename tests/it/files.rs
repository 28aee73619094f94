//! File backups: a tree with everything awkward round-trips exactly; files that change or vanish
//! mid-backup make it partial, named; restores refuse non-empty directories and damaged data.

use crate::harness::*;
use sha2::Digest;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a restored tree must reproduce, per relative path.
#[derive(Debug, PartialEq)]
struct Facts {
    kind: &'static str,
    sha256: Option<String>,
    mode: u32,
    mtime: (i64, i64),
    link: Option<String>,
    /// For hard links: the other names of the same inode.
    links: u64,
}

fn facts(root: &Path) -> BTreeMap<String, Facts> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Facts>) {
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, sha256, link) = if m.file_type().is_symlink() {
                ("symlink", None, Some(std::fs::read_link(&path).unwrap().to_string_lossy().into_owned()))
            } else if m.is_dir() {
                walk(root, &path, out);
                ("dir", None, None)
            } else {
                ("file", Some(hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))), None)
            };
            let mtime = (m.mtime(), m.mtime_nsec());
            let links = if m.is_file() { m.nlink() } else { 1 };
            out.insert(rel, Facts { kind, sha256, mode: m.mode() & 0o7777, mtime, link, links });
        }
    }
    walk(root, root, &mut out);
    out
}

fn files_config(env: &TestEnv, paths: &[&Path], extra: &str) {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    env.write_config(&format!("files:\n  - name: uploads\n    paths: [{}]\n{extra}", list.join(", ")));
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Nested directories, unicode and very long names, symlinks (relative, absolute, dangling),
/// hard links, empty files, a 200 MB mostly-sparse file, restrictive modes, sub-second mtimes.
fn awkward_tree(root: &Path) {
    write(&root.join("a/b/c/d/nested.txt"), b"nested\n");
    write(&root.join("unicode/ünïcödé ✓ 文件.txt"), "ünï\n".as_bytes());
    // a path over 300 characters: a 200-character directory and a 250-character file name
    let long = root.join("d".repeat(200)).join(format!("{}.bin", "f".repeat(246)));
    write(&long, b"long name\n");
    write(&root.join("empty"), b"");
    write(&root.join("links/target.txt"), b"target\n");
    std::os::unix::fs::symlink("target.txt", root.join("links/relative")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("links/absolute")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", root.join("links/dangling")).unwrap();
    std::fs::hard_link(root.join("links/target.txt"), root.join("links/hard")).unwrap();
    // 200 MB, mostly holes, with data at the start, the middle and the end
    let sparse = root.join("big/sparse.img");
    write(&sparse, b"");
    let f = std::fs::OpenOptions::new().write(true).open(&sparse).unwrap();
    f.set_len(200 * 1024 * 1024).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, 100 * 1024 * 1024 + 123, 200 * 1024 * 1024 - 4096].iter().enumerate() {
        f.write_all_at(format!("block {i} ").repeat(200).as_bytes(), *off).unwrap();
    }
    drop(f);
    write(&root.join("secret/key.pem"), b"-----BEGIN KEY-----\n");
    std::fs::set_permissions(root.join("secret/key.pem"), std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(root.join("unicode/ünïcödé ✓ 文件.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    // sub-second mtimes on a file and a directory
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    filetime::set_file_times(root.join("a/b/c/d/nested.txt"), t, t).unwrap();
    filetime::set_file_times(root.join("a/b"), t, t).unwrap();
}

#[test]
fn an_awkward_tree_round_trips_exactly() {
    let env = TestEnv::new("files");
    let src = env.dir.path().join("src");
    awkward_tree(&src);
    files_config(&env, &[&src], "");
    let out = env.run(&["backup-files", "--name", "uploads"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert!(stderr(&out).contains("outcome success"), "{}", stderr(&out));

    let list = env.run(&["list-files", "--name", "uploads", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["files"], 7, "{list}");
    // the holes compress to nothing
    assert!(list[0]["stored_bytes"].as_u64().unwrap() < 1024 * 1024, "{list}");

    let to = env.dir.path().join("restored");
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("7 files checked against their SHA-256"), "{}", stdout(&out));
    let restored = to.join(src.strip_prefix("/").unwrap());
    let (a, b) = (facts(&src), facts(&restored));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k}");
    }
    // the hard link is a link again, and the sparse file has holes
    let (t, h) = (
        std::fs::metadata(restored.join("links/target.txt")).unwrap(),
        std::fs::metadata(restored.join("links/hard")).unwrap(),
    );
    assert_eq!(t.ino(), h.ino());
    assert!(std::fs::metadata(restored.join("big/sparse.img")).unwrap().blocks() * 512 < 10 * 1024 * 1024);
}

#[test]
fn only_matching_paths_and_dry_runs_and_excludes() {
    let env = TestEnv::new("filesglob");
    let src = env.dir.path().join("src");
    write(&src.join("2025/a.jpg"), b"a");
    write(&src.join("2026/b.jpg"), b"b");
    write(&src.join("2026/c.tmp"), b"c");
    write(&src.join("cache/x"), b"x");
    files_config(&env, &[&src], "    exclude: [\"*.tmp\", \"cache/**\"]\n");
    let id = stdout(&env.run(&["backup-files", "--name", "uploads"])).trim().to_owned();
    let to = env.dir.path().join("partial-restore");
    let glob = format!("{}/2026/**", src.strip_prefix("/").unwrap().display());
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap(), "--path", &glob]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = to.join(src.strip_prefix("/").unwrap());
    assert!(restored.join("2026/b.jpg").exists());
    assert!(!restored.join("2025/a.jpg").exists());
    assert!(!restored.join("2026/c.tmp").exists() && !restored.join("cache").exists(), "excluded files came back");
    let dry = env.dir.path().join("dry");
    let out = env.run(&["restore-files", "--latest", "--name", "uploads", "--to", dry.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success() && stdout(&out).contains("2 files checked"), "{}", stdout(&out));
    assert!(!dry.exists(), "a dry run wrote");
}

/// The pids' open files, to act while a given file is being read.
fn reading(pid: u32, file: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == file)))
        .unwrap_or(false)
}

#[test]
fn a_file_deleted_and_one_growing_during_the_backup_make_it_partial_and_are_named() {
    let env = TestEnv::new("filesrace");
    let src = env.dir.path().join("src");
    // read first (sorted), and long enough to act while it is open
    let growing = src.join("a_growing.log");
    write(&growing, &vec![7u8; 64 * 1024 * 1024]);
    let victim = src.join("z_victim.txt");
    write(&victim, b"about to vanish");
    files_config(&env, &[&src], "");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["backup-files", "--name", "uploads"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !reading(child.id(), &growing) {
        assert!(start.elapsed() < Duration::from_secs(30), "the backup never opened {}", growing.display());
        std::thread::sleep(Duration::from_millis(1));
    }
    // the directory was listed before its first file was opened: the victim is expected
    std::fs::remove_file(&victim).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&growing).unwrap().write_all(b"more log lines\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("outcome partial"), "{err}");
    assert!(err.contains("a_growing.log: changed while being read"), "{err}");
    assert!(err.contains("z_victim.txt: vanished before it was read"), "{err}");
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["outcome"], "partial");
    assert_eq!(list[0]["problems"].as_array().unwrap().len(), 2, "{list}");
    // what was captured restores, and checks out
    let to = env.dir.path().join("restored");
    let out = env.run(&["restore-files", "--latest", "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_unreadable_file_is_an_error_in_a_partial_backup() {
    // root reads everything: run the check only where permissions bind
    let env = TestEnv::new("filesperm");
    let src = env.dir.path().join("src");
    write(&src.join("ok.txt"), b"ok");
    write(&src.join("locked.txt"), b"locked");
    std::fs::set_permissions(src.join("locked.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    files_config(&env, &[&src, Path::new("/nonexistent/source")], "");
    let out = env.run(&["backup-files", "--name", "uploads"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("ERROR") && err.contains("/nonexistent/source: the source path cannot be read"), "{err}");
    if !rustix::process::geteuid().is_root() {
        assert!(err.contains("locked.txt: cannot be read"), "{err}");
    }
}

#[test]
fn restores_refuse_a_non_empty_directory_and_a_flipped_byte() {
    let env = TestEnv::new("filesrefuse");
    let src = env.dir.path().join("src");
    write(&src.join("doc.txt"), &b"some content ".repeat(10_000));
    files_config(&env, &[&src], "");
    let id = stdout(&env.run(&["backup-files", "--name", "uploads"])).trim().to_owned();
    let to = env.dir.path().join("busy");
    write(&to.join("keep.txt"), b"mine");
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty") && stderr(&out).contains("--overwrite"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&to).unwrap().count(), 1);
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap(), "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(to.join("keep.txt")).unwrap(), b"mine");

    let data: PathBuf = files_under(&env.repository().join("files/uploads").join(&id))
        .into_iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("data.tar"))
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let fresh = env.dir.path().join("fresh");
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", fresh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&id) && err.contains("corrupt"), "{err}");
    assert!(!fresh.exists(), "a damaged backup wrote files");
}

#[test]
fn the_daemon_runs_file_and_config_backups_and_reports_partial_ones() {
    let env = TestEnv::new("filesdaemon");
    let src = env.dir.path().join("src");
    write(&src.join("upload.bin"), b"uploaded");
    let etc = env.dir.path().join("etc");
    write(&etc.join("app.conf"), b"setting = 1\n");
    let reports = env.dir.path().join("reports");
    env.write_config(&format!(
        "file_backup_dir: {}\nconfig_backup_dir: {}\nfiles:\n  - name: uploads\n    paths: [{}, /nonexistent/uploads]\n\
         configs:\n  - name: etc\n    paths: [{}]\nschedules:\n  file_backup: \"*/2 * * * * *\"\n  config_backup: \"*/2 * * * * *\"\n\
         \x20 verification: \"*/3 * * * * *\"\ndaemon:\n  catch_up: false\n",
        env.dir.path().join("file-repo").display(),
        env.dir.path().join("config-repo").display(),
        src.display(),
        etc.display()
    ));
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let report = |kind: &str| -> Option<serde_json::Value> {
        files_under(&reports.join(kind)).iter().find_map(|f| serde_json::from_slice(&std::fs::read(f).ok()?).ok())
    };
    let verified = || -> Option<serde_json::Value> {
        files_under(&reports.join("backup_verification"))
            .iter()
            .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).ok()?).ok())
            .find(|r| r["database"] == "configs:etc" && r["outcome"] == "success" && r["backup_id"].is_string())
    };
    let start = Instant::now();
    while report("file_backup").is_none() || report("config_backup").is_none() || verified().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no reports in {}", reports.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    send_signal(daemon.id(), libc::SIGTERM, false);
    daemon.wait().unwrap();
    let files = report("file_backup").unwrap();
    assert_eq!(files["outcome"], "partial", "{files}");
    assert!(files["error"].as_str().unwrap().contains("/nonexistent/uploads"), "{files}");
    let configs = report("config_backup").unwrap();
    assert_eq!(configs["outcome"], "success", "{configs}");
    // stored where the reference config's directories say
    assert!(files_under(&env.dir.path().join("config-repo/configs/etc")).iter().any(|f| f.ends_with("manifest.json")));
    let out = env.run(&["list-files", "--configs", "--name", "etc", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["files"], 1, "{list}");
}

#[test]
fn a_daily_backup_of_a_mostly_unchanged_tree_stores_only_what_changed() {
    let env = TestEnv::new("filesinc");
    let src = env.dir.path().join("src");
    for i in 0..40 {
        let data: Vec<u8> =
            (0..100_000u32).map(|j| (j.wrapping_mul(2654435761).wrapping_add(i * 7919) >> 13) as u8).collect();
        write(&src.join(format!("uploads/{:02}/photo-{i}.jpg", i % 5)), &data);
    }
    files_config(&env, &[&src], "    full_every: 3\n");
    let backup = |env: &TestEnv| {
        let out = env.run(&["backup-files", "--name", "uploads"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let first = backup(&env);
    let snapshot = facts(&src);
    // a day's change: one edited, one new, one deleted
    write(&src.join("uploads/00/photo-0.jpg"), b"edited");
    write(&src.join("uploads/new.jpg"), b"new upload");
    std::fs::remove_file(src.join("uploads/01/photo-1.jpg")).unwrap();
    let second = backup(&env);
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    let (a, b) = (&list[0], &list[1]);
    assert_eq!((a["incremental"].as_bool(), b["incremental"].as_bool()), (Some(false), Some(true)));
    assert_eq!(b["holders"], serde_json::json!([first]));
    assert_eq!(b["files"], 40, "{b}");
    let (full, inc) = (a["stored_bytes"].as_u64().unwrap(), b["stored_bytes"].as_u64().unwrap());
    assert!(inc * 50 < full, "the incremental stored {inc} bytes, the full {full}");

    // the incremental restores to today's tree, the full to yesterday's
    for (id, expected) in [(&second, facts(&src)), (&first, snapshot)] {
        let to = env.dir.path().join(format!("restore-{id}"));
        let out = env.run(&["restore-files", id, "--name", "uploads", "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let got = facts(&to.join(src.strip_prefix("/").unwrap()));
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{id}");
        for (k, v) in &expected {
            assert_eq!(Some(v), got.get(k), "{id}: {k}");
        }
    }
    // full_every: 3 -> the third in a row is full again
    let third = backup(&env);
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    assert_eq!(list[2]["id"], third.as_str());
    assert_eq!(list[2]["incremental"], true);
    let fourth = backup(&env);
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    assert_eq!((list[3]["id"].as_str(), list[3]["incremental"].as_bool()), (Some(fourth.as_str()), Some(false)));
}

#[test]
fn retention_keeps_the_backups_holding_a_kept_incrementals_files() {
    let env = TestEnv::new("filesret");
    let src = env.dir.path().join("src");
    write(&src.join("a.bin"), &vec![1u8; 50_000]);
    write(&src.join("b.bin"), &vec![2u8; 50_000]);
    files_config(&env, &[&src], "    full_every: 2\nretention:\n  file_backup:\n    keep_last: 1\n    min_keep: 1\n");
    let backup = |env: &TestEnv| stdout(&env.run(&["backup-files", "--name", "uploads"])).trim().to_owned();
    let first = backup(&env);
    write(&src.join("b.bin"), b"changed");
    let second = backup(&env);
    let plan = |env: &TestEnv| -> serde_json::Value {
        let out = env.run(&["retention", "--dry-run", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        runs.as_array().unwrap().iter().find(|r| r["database"] == "files:uploads").unwrap().clone()
    };
    let p = plan(&env);
    let d = |p: &serde_json::Value, id: &str| {
        p["decisions"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap().clone()
    };
    assert_eq!(d(&p, &second)["keep"], true);
    let f = d(&p, &first);
    assert_eq!(f["keep"], true, "{f}");
    assert!(f["reasons"].to_string().contains(&format!("holds unchanged files of kept backup {second}")), "{f}");

    // a new full: the incremental and what it needed go
    let third = backup(&env);
    let out = env.run(&["retention"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], third.as_str());
    assert_eq!(list[0]["incremental"], false);
    let to = env.dir.path().join("restored");
    let out = env.run(&["restore-files", "--latest", "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(to.join(src.strip_prefix("/").unwrap()).join("b.bin")).unwrap(), b"changed");
    assert!(!env.repository().join("files/uploads").join(&first).exists());
}

#[test]
fn encrypted_file_backups_round_trip_and_edited_manifests_are_refused() {
    let env = TestEnv::new("filesenc");
    let src = env.dir.path().join("src");
    write(&src.join("contract.pdf"), &b"confidential ".repeat(5000));
    let key = env.dir.path().join("identity.txt");
    let out = Command::new(BIN).args(["keygen", "-o"]).arg(&key).output().unwrap();
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    files_config(&env, &[&src], "");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{text}encryption:\n  enabled: true\n  recipients: [{public}]\n")).unwrap();
    let id = stdout(&env.run(&["backup-files", "--name", "uploads"])).trim().to_owned();
    let dir = env.repository().join("files/uploads").join(&id);
    let data = files_under(&dir).into_iter().find(|f| f.to_string_lossy().ends_with("data.tar.zst.age")).unwrap();
    assert!(std::fs::read(&data).unwrap().starts_with(b"age-encryption.org/v1\n"));
    // without the identity: refused, naming the key
    let to = env.dir.path().join("out");
    let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot decrypt it") && stderr(&out).contains("x25519:"), "{}", stderr(&out));
    assert!(!to.exists(), "a refused restore created the directory");
    let out = env.run(&[
        "restore-files",
        &id,
        "--name",
        "uploads",
        "--to",
        to.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(to.join(src.strip_prefix("/").unwrap()).join("contract.pdf")).unwrap(),
        b"confidential ".repeat(5000)
    );
    // a manifest edited to hide a file
    let manifest = dir.join("manifest.json");
    let edited = std::fs::read_to_string(&manifest).unwrap().replace("\"file_count\": 1", "\"file_count\": 2");
    std::fs::write(&manifest, edited).unwrap();
    // its digest fixed up too: what only the MAC can catch
    reseal(&dir);
    let again = env.dir.path().join("again");
    let out = env.run(&[
        "restore-files",
        &id,
        "--name",
        "uploads",
        "--to",
        again.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("authentication code"), "{}", stderr(&out));
}

#[test]
fn follow_symlinks_backs_up_what_links_point_to() {
    let env = TestEnv::new("filesfollow");
    let src = env.dir.path().join("src");
    let outside = env.dir.path().join("outside");
    write(&outside.join("shared/logo.png"), b"logo");
    write(&src.join("own.txt"), b"own");
    std::os::unix::fs::symlink(outside.join("shared"), src.join("shared")).unwrap();
    // a link back up the tree: followed, it would never end
    std::os::unix::fs::symlink("..", src.join("own-parent")).unwrap();
    for (follow, expect_dir) in [(false, false), (true, true)] {
        files_config(&env, &[&src], &format!("    follow_symlinks: {follow}\n    full_every: 1\n"));
        let out = env.run(&["backup-files", "--name", "uploads"]);
        let id = stdout(&out).trim().to_owned();
        if follow {
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("own-parent/src: a symlink loop"), "{}", stderr(&out));
        } else {
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let to = env.dir.path().join(format!("restored-{follow}"));
        let out = env.run(&["restore-files", &id, "--name", "uploads", "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let shared = to.join(src.strip_prefix("/").unwrap()).join("shared");
        let meta = std::fs::symlink_metadata(&shared).unwrap();
        assert_eq!(meta.is_dir(), expect_dir, "follow_symlinks: {follow}");
        if follow {
            assert_eq!(std::fs::read(shared.join("logo.png")).unwrap(), b"logo");
        } else {
            assert_eq!(std::fs::read_link(&shared).unwrap(), outside.join("shared"));
        }
    }
}

#[test]
fn one_file_system_stays_on_the_source_filesystem() {
    // /dev/shm is its own tmpfs almost everywhere: reached through a followed link from the
    // test's directory, it is another filesystem below the source path
    let env = TestEnv::new("filesonefs");
    let src = env.dir.path().join("src");
    write(&src.join("local.txt"), b"local");
    let other = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm");
    assert_ne!(
        std::fs::metadata(&src).unwrap().dev(),
        std::fs::metadata(other.path()).unwrap().dev(),
        "this test needs /dev/shm on another filesystem than {}",
        src.display()
    );
    write(&other.path().join("elsewhere.txt"), b"elsewhere");
    std::os::unix::fs::symlink(other.path(), src.join("mounted")).unwrap();
    for one in [true, false] {
        files_config(
            &env,
            &[&src],
            &format!("    follow_symlinks: true\n    one_file_system: {one}\n    full_every: 1\n"),
        );
        let out = env.run(&["backup-files", "--name", "uploads"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let id = stdout(&out).trim().to_owned();
        let manifest =
            std::fs::read_to_string(env.repository().join("files/uploads").join(&id).join("manifest.json")).unwrap();
        assert!(manifest.contains("mounted\""), "the mount point itself is recorded");
        assert_eq!(manifest.contains("mounted/elsewhere.txt"), !one, "one_file_system: {one}");
    }
}

#[test]
fn file_backups_go_to_s3_and_restore_from_it_incrementals_too() {
    let env = TestEnv::new("filess3");
    let src = env.dir.path().join("src");
    for i in 0..10 {
        write(&src.join(format!("u/{i}.bin")), &vec![i as u8; 200_000]);
    }
    let server = crate::s3_servers::s3s();
    let bucket = server.bucket();
    // no local target, no file_backup_dir: the repository's S3 target holds the file backups
    let storage = format!("storage:\n{}", server.target_yaml("offsite", &bucket, ""));
    env.write_config_with(false, &format!("{storage}files:\n  - name: uploads\n    paths: [{}]\n", src.display()));
    let first = stdout(&env.run(&["backup-files", "--name", "uploads"])).trim().to_owned();
    write(&src.join("u/3.bin"), b"changed");
    let out = env.run(&["backup-files", "--name", "uploads"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout(&out).trim().to_owned();
    let listed: serde_json::Value =
        serde_json::from_slice(&env.run(&["list-files", "--name", "uploads", "--json"]).stdout).unwrap();
    assert_eq!(listed[1]["id"], second.as_str());
    assert_eq!(listed[1]["incremental"], true, "{listed}");
    assert_eq!(listed[1]["holders"], serde_json::json!([first]));
    let keys = server.keys(&bucket);
    for id in [&first, &second] {
        assert!(keys.iter().any(|k| k.ends_with(&format!("files/uploads/{id}/manifest.json"))), "{keys:?}");
    }
    let to = env.dir.path().join("restored");
    let out = env.run(&["restore-files", &second, "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (facts(&src), facts(&to.join(src.strip_prefix("/").unwrap())));
    assert_eq!(a, b);
}
