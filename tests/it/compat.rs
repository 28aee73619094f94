//! Backups taken by an earlier pgbackd stay readable: the repository of pgbackd 0.1 (manifest
//! schema 1, `tests/fixtures/repo-v1`) is listed, verified deep, restored (databases and file
//! sets, plain and encrypted), an edited encrypted manifest of it is refused, and a new
//! incremental is taken on top of its full backup.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const FULL: &str = "20261201T184848Z-full-ccc0c1";
const INCREMENTAL: &str = "20261201T184848Z-incremental-46c71e";
const FILES_FULL: &str = "20261201T184848Z-files-c91756";
const FILES_INCREMENTAL: &str = "20261201T184848Z-files-8e6c70";
const ENCRYPTED_FULL: &str = "20261201T184848Z-full-c659c3";

fn fixture(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1").join(part)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of one fixture repository and a config reading it: database `legacy` is this test's
/// database on the test cluster, file set `uploads` the fixture's set.
fn setup(env: &TestEnv, which: &str, extra: &str) {
    copy_tree(&fixture(which), &env.repository());
    let c = cluster();
    let text = format!(
        "databases:\n  - name: legacy\n    host: {}\n    port: {}\n    username: postgres\n    database: {}\n\
         local_backup_dir: {}\nfiles:\n  - name: uploads\n    paths: [/tmp/fx/src]\nreports:\n  dir: {}\n\
         monitoring:\n  listen: off\n{extra}",
        c.socket_dir(),
        c.port,
        env.db,
        env.repository().display(),
        env.dir.path().join("reports").display()
    );
    std::fs::write(&env.config, text).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status, stdout(out), stderr(out));
    stdout(out)
}

fn assert_restored_rows(db: &str) {
    assert_eq!(cluster().psql(db, "select count(*) from t").unwrap(), "2000");
    assert_eq!(cluster().psql(db, "select count(*) from u").unwrap(), "51");
    assert_eq!(cluster().psql(db, "select count(*) from t where v = 'changed'").unwrap(), "19");
}

fn assert_restored_files(dir: &Path) {
    let src = fixture("src");
    for rel in ["a.txt", "sub/b.bin", "c.txt"] {
        let restored = std::fs::read(dir.join("tmp/fx/src").join(rel)).unwrap();
        assert_eq!(restored, std::fs::read(src.join(rel)).unwrap(), "{rel}");
    }
}

#[test]
fn a_schema_1_repository_lists_verifies_and_restores() {
    let env = TestEnv::new("compat");
    setup(&env, "plain", "");
    let list = env.list_json();
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for id in [FULL, INCREMENTAL, FILES_FULL, FILES_INCREMENTAL] {
        assert!(ids.contains(&id), "{id} not listed: {ids:?}");
    }
    let inc = list.iter().find(|e| e["id"] == INCREMENTAL).unwrap();
    assert_eq!((inc["database"].as_str(), inc["base_id"].as_str()), (Some("legacy"), Some(FULL)));

    let out = env.run(&["verify", "--all", "--deep", "--json"]);
    let verified: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(verified.as_array().unwrap().len(), 4, "{verified}");
    assert!(verified.as_array().unwrap().iter().all(|v| v["ok"] == true), "{verified}");

    let target = unique("compat_restored");
    ok(&env.run(&["restore", INCREMENTAL, "--target-database", &target, "--create"]));
    assert_restored_rows(&target);

    let to = env.dir.path().join("restored-files");
    let out = env.run(&["restore-files", "--latest", "--name", "uploads", "--to", to.to_str().unwrap()]);
    assert!(ok(&out).contains("3 files checked"), "{}", stdout(&out));
    assert_restored_files(&to);

    // a new incremental is a delta against the newest backup, the schema 1 incremental (a chain
    // down to the schema 1 full), and restores
    env.psql("create table t(id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1,2000) g; \
              update t set v = 'changed' where id < 20; create table u(x int); insert into u select generate_series(1,51)");
    let out = env.run(&["backup", "--kind", "incremental", "--database", "legacy"]);
    let new_id = ok(&out).trim().to_owned();
    let list = env.list_json();
    let new = list.iter().find(|e| e["id"] == new_id.as_str()).unwrap();
    assert_eq!((new["base_id"].as_str(), new["chain"].as_u64()), (Some(INCREMENTAL), Some(3)), "{new}");
    let target = unique("compat_new");
    ok(&env.run(&["restore", &new_id, "--target-database", &target, "--create"]));
    assert_restored_rows(&target);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.repository().join("legacy").join(&new_id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["schema_version"], 2);
}

#[test]
fn an_encrypted_schema_1_repository_authenticates_and_an_edit_is_refused() {
    let env = TestEnv::new("compatenc");
    let identity = env.dir.path().join("identity.txt");
    std::fs::copy(fixture("identity.txt"), &identity).unwrap();
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    setup(&env, "encrypted", "");
    let key = ["--identity", identity.to_str().unwrap()];

    let out = env.run(&[&["verify", "--all", "--deep"][..], &key].concat());
    assert!(ok(&out).contains("2 verified, 0 failed"), "{}", stdout(&out));
    let target = unique("compat_enc");
    ok(&env.run(&[&["restore", ENCRYPTED_FULL, "--target-database", &target, "--create"][..], &key].concat()));
    assert_restored_rows(&target);
    let to = env.dir.path().join("restored-files");
    ok(&env
        .run(&[&["restore-files", "--latest", "--name", "uploads", "--to", to.to_str().unwrap()][..], &key].concat()));
    assert_restored_files(&to);

    // one row count edited in the old manifest: its MAC no longer matches
    let path = env.repository().join("legacy").join(ENCRYPTED_FULL).join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"rows\": 2000"));
    std::fs::write(&path, text.replace("\"rows\": 2000", "\"rows\": 2001")).unwrap();
    let out = env.run(
        &[&["restore", ENCRYPTED_FULL, "--target-database", &unique("compat_edit"), "--create"][..], &key].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not match its authentication code"), "{}", stderr(&out));
}
