//! Verification and test restores against real backups.

use crate::backup_restore::load_mixed_data;
use crate::harness::*;
use std::process::Command;

fn data_path(env: &TestEnv, id: &str) -> std::path::PathBuf {
    env.repository().join(&env.db).join(id).join("data.zst")
}

fn manifest_path(env: &TestEnv, id: &str) -> std::path::PathBuf {
    env.repository().join(&env.db).join(id).join("manifest.json")
}

fn small_backup(name: &str) -> (TestEnv, String) {
    let env = TestEnv::new(name);
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 60000) g;");
    let id = env.backup();
    (env, id)
}

/// Scratch databases of this test's database (other tests run test restores at the same time).
fn scratch_databases(env: &TestEnv) -> Vec<String> {
    cluster()
        .psql(
            "postgres",
            &format!("select datname from pg_database where datname like 'pgbackd\\_restore\\_{}\\_%'", env.db),
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn deep_verify_names_a_flipped_byte_and_quick_does_not_claim_to_read_content() {
    let (env, id) = small_backup("vflip");
    let out = env.run(&["verify", &id, "--deep"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("PASSED") && stdout(&out).contains("read by pg_restore"));
    let listed = env.list_json();
    assert_eq!(listed[0]["verify_outcome"], "passed");
    assert_eq!(listed[0]["verify_mode"], "deep");
    assert!(listed[0]["verified_at"].is_string());

    let path = data_path(&env, &id);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let quick = env.run(&["verify", &id]);
    assert!(quick.status.success(), "sizes still match: {}", stdout(&quick));
    assert!(stdout(&quick).contains("content not read"), "{}", stdout(&quick));

    let deep = env.run(&["verify", &id, "--deep"]);
    assert_eq!(deep.status.code(), Some(1));
    let text = stdout(&deep);
    assert!(text.contains("FAILED") && text.contains(&id) && text.contains("target local"), "{text}");
    assert!(text.contains("frame ") && text.contains("stored offset"), "{text}");
    assert_eq!(env.list_json()[0]["verify_outcome"], "failed");
    // a report per run
    let reports = files_under(&env.dir.path().join("reports/backup_verification"));
    assert!(reports.len() >= 3, "{reports:?}");
}

#[test]
fn a_truncated_object_fails_both_modes_and_a_deleted_one_fails_quick() {
    let (env, id) = small_backup("vtrunc");
    let path = data_path(&env, &id);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    for args in [vec!["verify", id.as_str()], vec!["verify", id.as_str(), "--deep"]] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(stdout(&out).contains("it is truncated"), "{}", stdout(&out));
    }
    std::fs::remove_file(&path).unwrap();
    let out = env.run(&["verify", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("data.zst is missing"), "{}", stdout(&out));
}

#[test]
fn a_consistent_but_truncated_archive_passes_pg_restore_list_but_not_deep_verify() {
    let (env, id) = small_backup("vlist");
    // rewrite the backup as the first 60 % of its archive, with matching checksums and sizes
    let archive = env.run(&["cat", &id]).stdout;
    let cut = &archive[..archive.len() * 6 / 10];
    let cut_path = env.dir.path().join("cut.dump");
    std::fs::write(&cut_path, cut).unwrap();
    let list = Command::new(real_pg_bin().join("pg_restore")).arg("--list").arg(&cut_path).output().unwrap();
    assert!(list.status.success(), "pg_restore --list accepts the truncated archive");
    let stored = zstd::bulk::compress(cut, 1).unwrap();
    std::fs::write(data_path(&env, &id), &stored).unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    };
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_path(&env, &id)).unwrap()).unwrap();
    m["data"]["raw_bytes"] = cut.len().into();
    m["data"]["stored_bytes"] = stored.len().into();
    m["data"]["raw_sha256"] = sha(cut).into();
    m["data"]["stored_sha256"] = sha(&stored).into();
    m["data"]["frames"] = serde_json::json!([{
        "raw_offset": 0, "raw_len": cut.len(), "stored_offset": 0, "stored_len": stored.len(), "stored_sha256": sha(&stored)
    }]);
    std::fs::write(manifest_path(&env, &id), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    reseal(manifest_path(&env, &id).parent().unwrap());

    assert!(env.run(&["verify", &id]).status.success(), "quick checks sizes only");
    let deep = env.run(&["verify", &id, "--deep"]);
    assert_eq!(deep.status.code(), Some(1), "{}", stdout(&deep));
    assert!(stdout(&deep).contains("pg_restore cannot read the archive"), "{}", stdout(&deep));
}

#[test]
fn test_restore_of_mixed_data_passes_measures_and_drops_the_scratch_database() {
    let env = TestEnv::new("trmixed");
    load_mixed_data(&env, &unique("tr_owner"));
    env.write_config(
        "test_restore:\n  jobs: 2\n  checks:\n    - name: orders exist\n      sql: select count(*) from sales.orders\n      expect: \">= 5000\"\n\
         \x20   - name: docs\n      sql: select count(*) from public.docs\n      expect: \"3\"\n",
    );
    let id = env.backup();
    let out = env.run(&["test-restore", "--latest"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("PASSED") && text.contains("check orders exist: got 5000"), "{text}");
    assert!(scratch_databases(&env).is_empty(), "{:?}", scratch_databases(&env));
    let listed = env.list_json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["test_restore_outcome"], "passed");
    assert!(listed[0]["restore_seconds"].as_f64().unwrap() > 0.0);
    let reports = files_under(&env.dir.path().join("reports/database_restore"));
    assert_eq!(reports.len(), 1);
}

#[test]
fn test_restore_fails_on_wrong_row_counts_or_a_failing_check_and_always_drops_the_scratch() {
    let env = TestEnv::new("trfail");
    env.psql("create table t (id int); insert into t select generate_series(1, 500);");
    let id = env.backup();
    // a failing user check
    env.write_config(
        "test_restore:\n  checks:\n    - {name: enough rows, sql: select count(*) from t, expect: \"> 1000\"}\n",
    );
    let out = env.run(&["test-restore", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAILED  check enough rows: got 500"), "{}", stdout(&out));
    assert!(stdout(&out).contains("checks failed: enough rows"));
    assert!(scratch_databases(&env).is_empty());
    // row counts that disagree with the data
    env.write_config("");
    let path = manifest_path(&env, &id);
    let text = std::fs::read_to_string(&path).unwrap().replace("\"rows\": 500", "\"rows\": 499");
    std::fs::write(&path, text).unwrap();
    reseal(path.parent().unwrap());
    let out = env.run(&["test-restore", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("ROW COUNT MISMATCH public.t: expected 499, found 500"), "{}", stdout(&out));
    assert!(stdout(&out).contains("row counts differ from the backup in: public.t"));
    assert!(scratch_databases(&env).is_empty());
    assert_eq!(env.list_json()[0]["test_restore_outcome"], "failed");
}

#[test]
fn a_leftover_scratch_database_is_dropped_and_nothing_else_is_touched() {
    let (env, _) = small_backup("trleft");
    let c = cluster();
    let leftover = format!("pgbackd_restore_{}_crashed", env.db);
    c.psql("postgres", &format!("create database {leftover}")).unwrap();
    let bystander = unique("bystander");
    c.psql("postgres", &format!("create database {bystander}")).unwrap();
    let out = env.run(&["test-restore", "--latest"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(scratch_databases(&env).is_empty(), "{:?}", scratch_databases(&env));
    let exists =
        c.psql("postgres", &format!("select count(*) from pg_database where datname = '{bystander}'")).unwrap();
    assert_eq!(exists, "1");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&files_under(&env.dir.path().join("reports/database_restore"))[0]).unwrap(),
    )
    .unwrap();
    assert!(report["warnings"].to_string().contains(&leftover), "{report}");
}
