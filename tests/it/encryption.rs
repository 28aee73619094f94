//! Encryption at rest: age round trips (recipients and key_file; full and incremental; local and
//! S3), wrong and rotated keys, and damaged ciphertext or manifests failing verify and restore.

use crate::harness::*;
use crate::s3_servers::{S3Server, s3s};
use age::secrecy::ExposeSecret;
use sha2::Digest;
use std::path::{Path, PathBuf};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

fn load(env: &TestEnv) {
    env.psql(
        "create table items (id int primary key, name text, tags jsonb);
         insert into items select g, 'item ' || g, jsonb_build_array(g % 7, md5(g::text)) from generate_series(1, 40000) g;
         create table notes (id int primary key, body text);
         insert into notes select g, repeat(md5(g::text), 4) from generate_series(1, 5000) g;",
    );
}

fn churn(env: &TestEnv) {
    env.psql(
        "update items set name = name || ' (changed)' where id % 100 = 0;
         insert into notes select m + g, 'late ' || (m + g) from (select max(id) m from notes) n, generate_series(1, 100) g;",
    );
}

/// A new age identity written to `dir/name` (mode 0600); returns the file and its public key.
fn identity_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("# test identity\n{}\n", id.to_string().expose_secret())).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

fn fingerprint_of(public: &str) -> String {
    pgbackd::crypto::fingerprint(&public.parse().unwrap())
}

fn assert_identical(db: &str, target: &str) {
    let tables = user_tables(db);
    assert_eq!(tables, user_tables(target));
    for t in &tables {
        assert_eq!(fingerprint(db, t), fingerprint(target, t), "table {t} differs");
    }
}

fn database_exists(name: &str) -> bool {
    cluster().psql("postgres", &format!("select count(*) from pg_database where datname = '{name}'")).unwrap().trim()
        == "1"
}

fn restore(env: &TestEnv, id: &str, extra: &[&str]) -> (std::process::Output, String) {
    let target = unique("enc_restored");
    let mut args = vec!["restore", id, "--target-database", &target, "--create"];
    args.extend_from_slice(extra);
    (env.run(&args), target)
}

/// Every object of a backup in the local repository is an age file; the manifest is plain JSON
/// (and its digest an empty object).
fn assert_local_objects_encrypted(env: &TestEnv, id: &str) {
    let dir = env.repository().join(&env.db).join(id);
    let files = files_under(&dir);
    assert!(files.iter().any(|f| f.ends_with("manifest.json")), "{files:?}");
    let digest = |f: &Path| f.file_name().unwrap().to_string_lossy().starts_with("manifest.sha256.");
    assert_eq!(files.iter().filter(|f| digest(f)).count(), 1, "{files:?}");
    for f in files.iter().filter(|f| !f.ends_with("manifest.json") && !digest(f)) {
        assert!(f.extension().is_some_and(|e| e == "age"), "{} is not an .age object", f.display());
        assert!(std::fs::read(f).unwrap().starts_with(AGE_MAGIC), "{} is not an age file", f.display());
    }
}

/// Full, then two incrementals (a chain), of an encrypted repository on a local and an S3 target:
/// both restore identically (the chain's top from S3 alone), deep verification passes, `cat`
/// decrypts.
fn round_trip(name: &str, server: &S3Server, encryption: &str, read_args: &[&str]) {
    let env = TestEnv::new(name);
    load(&env);
    let bucket = server.bucket();
    env.write_config(&format!("storage:\n{}{encryption}", server.target_yaml("offsite", &bucket, "")));
    let full = env.backup();
    assert_local_objects_encrypted(&env, &full);
    let keys = server.keys(&bucket);
    let data_keys: Vec<&String> = keys
        .iter()
        .filter(|k| k.contains(&full) && !k.ends_with("manifest.json") && !k.contains("/manifest.sha256."))
        .collect();
    assert!(!data_keys.is_empty() && data_keys.iter().all(|k| k.ends_with(".age")), "{keys:?}");

    churn(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inc = stdout(&out).trim().to_owned();
    assert!(inc.contains("-incremental-"), "{inc}: {}", stderr(&out));
    assert_local_objects_encrypted(&env, &inc);
    // and a second, a delta against the first: a chain of three encrypted backups
    churn(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (first, inc) = (inc, stdout(&out).trim().to_owned());
    assert_local_objects_encrypted(&env, &inc);
    let list = env.list_json();
    let top = list.iter().find(|b| b["id"] == inc.as_str()).unwrap();
    assert_eq!((top["base_id"].as_str(), top["chain"].as_u64()), (Some(first.as_str()), Some(3)), "{top}");
    for b in &list {
        assert!(b["encryption"]["mode"].is_string(), "{b}");
    }

    // cat decrypts to the archive pg_dump wrote
    let mut args = vec!["cat", inc.as_str()];
    args.extend_from_slice(read_args);
    let out = env.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.starts_with(b"PGDMP"));
    let listed = list.iter().find(|b| b["id"] == inc.as_str()).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&out.stdout)), listed["raw_sha256"].as_str().unwrap());

    let (out, target) = restore(&env, &full, read_args);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    env.psql("select 1"); // the source is still there
    assert!(database_exists(&target));

    let mut verify = vec!["verify", "--all", "--deep"];
    verify.extend_from_slice(read_args);
    let out = env.run(&verify);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    // the chain's top, through its links, from S3 only (ranged reads of encrypted objects)
    std::fs::remove_dir_all(env.repository().join(&env.db)).unwrap();
    let (out, target) = restore(&env, &inc, read_args);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_identical(&env.db, &target);
    let out = env.run(&verify);
    let text = stdout(&out);
    assert_eq!(text.matches("ok      target offsite").count(), 3, "{text}");
    assert!(!text.contains("FAILED  target offsite"), "{text}");
}

#[test]
fn recipients_round_trip_full_and_incremental_local_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (id_file, public) = identity_file(dir.path(), "identity.txt");
    // the backups are written by a host that can also read them (incrementals need the base)
    let encryption =
        format!("encryption:\n  enabled: true\n  recipients: [{public}]\n  identity_file: {}\n", id_file.display());
    round_trip("encrcpt", s3s(), &encryption, &[]);
}

#[test]
fn key_file_passphrase_round_trip_full_and_incremental_local_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("backup_encryption_key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let encryption =
        format!("encryption:\n  enabled: true\n  key_file: {}\n  passphrase_work_factor: 10\n", key.display());
    round_trip("enckey", s3s(), &encryption, &[]);
}

#[test]
fn a_recipients_only_daemon_cannot_read_and_restores_need_the_identity() {
    let env = TestEnv::new("encwriteonly");
    load(&env);
    let (id_file, public) = identity_file(env.dir.path(), "identity.txt");
    env.write_config(&format!("encryption:\n  enabled: true\n  recipients: [{public}]\n"));
    let full = env.backup();
    let fp = fingerprint_of(&public);
    let list = env.list_json();
    assert_eq!(list[0]["encryption"]["recipients"], serde_json::json!([fp]));
    let human = stdout(&env.run(&["list"]));
    assert!(human.contains("KEY") && human.contains(&fp), "{human}");
    // the manifest names the key by fingerprint, never the key itself
    let manifest = std::fs::read_to_string(env.repository().join(&env.db).join(&full).join("manifest.json")).unwrap();
    assert!(manifest.contains(&fp) && !manifest.contains(&public), "{manifest}");

    // restore without the identity: refused before the target is created, naming backup and key
    let (out, target) = restore(&env, &full, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&full) && err.contains(&fp) && err.contains("--identity"), "{err}");
    assert!(!database_exists(&target));
    let out = env.run(&["verify", &full, "--deep"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&fp), "{}", stdout(&out));

    // an incremental needs the base's plaintext: without an identity it is a full, and says why
    churn(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout(&out).trim().to_owned();
    assert!(second.contains("-full-"), "{second}");
    let listed = env.list_json();
    let warnings = listed.iter().find(|b| b["id"] == second.as_str()).unwrap()["warnings"].to_string();
    assert!(warnings.contains("identity_file"), "{warnings}");

    // with --identity (or PGBACKD_IDENTITY) everything reads
    let id_arg = id_file.to_str().unwrap();
    let (out, target) = restore(&env, &second, &["--identity", id_arg]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_identical(&env.db, &target);
    let out = env.run_env(&["verify", "--all", "--deep"], &[("PGBACKD_IDENTITY", id_arg)]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = env.run(&["test-restore", &full, "--identity", id_arg]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn key_rotation_keeps_old_backups_readable_with_old_identities() {
    let env = TestEnv::new("encrotate");
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 3000) g;");
    let (old_id, old_pub) = identity_file(env.dir.path(), "old.txt");
    let (new_id, new_pub) = identity_file(env.dir.path(), "new.txt");
    env.write_config(&format!("encryption:\n  enabled: true\n  recipients: [{old_pub}]\n"));
    let first = env.backup();
    env.write_config(&format!("encryption:\n  enabled: true\n  recipients: [{new_pub}]\n"));
    let second = env.backup();
    let (old_fp, new_fp) = (fingerprint_of(&old_pub), fingerprint_of(&new_pub));
    let list = env.list_json();
    assert_eq!(list[0]["encryption"]["recipients"], serde_json::json!([old_fp]));
    assert_eq!(list[1]["encryption"]["recipients"], serde_json::json!([new_fp]));

    // the new identity alone reads the new backup, and names the old key for the old one
    let (out, target) = restore(&env, &first, &["--identity", new_id.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&first) && err.contains(&old_fp) && err.contains(&new_fp), "{err}");
    assert!(!database_exists(&target));
    // an identity file holding both keys reads both
    let both = env.dir.path().join("both.txt");
    let text = format!("{}{}", std::fs::read_to_string(&old_id).unwrap(), std::fs::read_to_string(&new_id).unwrap());
    std::fs::write(&both, text).unwrap();
    let out = env.run(&["verify", "--all", "--deep", "--identity", both.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    for id in [&first, &second] {
        let (out, target) = restore(&env, id, &["--identity", both.to_str().unwrap()]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        assert_identical(&env.db, &target);
    }
}

/// Damages one file of a backup, checks verify --deep and restore fail naming the backup and
/// `expect`, and that restore created nothing; then puts the file back.
fn assert_damage_is_caught(env: &TestEnv, id: &str, file: &Path, damage: impl Fn(&mut Vec<u8>), expect: &str) {
    let good = std::fs::read(file).unwrap();
    let mut bad = good.clone();
    damage(&mut bad);
    std::fs::write(file, &bad).unwrap();
    // an edited manifest with its digest fixed up: what only the MAC can catch
    let manifest = file.ends_with("manifest.json");
    if manifest {
        reseal(file.parent().unwrap());
    }
    let out = env.run(&["verify", id, "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains(id) && text.contains(expect), "verify of {}:\n{text}", file.display());
    let (out, target) = restore(env, id, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(id) && err.contains(expect), "restore of {}:\n{err}", file.display());
    assert!(!database_exists(&target), "the restore created {target}");
    std::fs::write(file, &good).unwrap();
    if manifest {
        reseal(file.parent().unwrap());
    }
}

#[test]
fn truncated_or_flipped_ciphertext_and_edited_manifests_fail_verify_and_restore() {
    let env = TestEnv::new("enctamper");
    load(&env);
    let (id_file, _) = identity_file(env.dir.path(), "identity.txt");
    env.write_config(&format!("encryption:\n  enabled: true\n  key_file: {}\n", id_file.display()));
    let id = env.backup();
    let dir = env.repository().join(&env.db).join(&id);
    let data = dir.join("data.zst.age");
    assert!(data.exists(), "{:?}", files_under(&dir));

    assert_damage_is_caught(&env, &id, &data, |b| b.truncate(b.len() - 1000), "truncated");
    assert_damage_is_caught(&env, &id, &data, |b| b.truncate(b.len() - 70_000), "truncated");
    assert_damage_is_caught(
        &env,
        &id,
        &data,
        |b| {
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
        },
        "damaged or was modified",
    );
    // the manifest: a row count edited, one byte flipped in a hash
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\"rows\": 40000"), "{text}");
    assert_damage_is_caught(
        &env,
        &id,
        &manifest,
        |b| *b = String::from_utf8_lossy(b).replace("\"rows\": 40000", "\"rows\": 40001").into_bytes(),
        "authentication code",
    );
    let sha_at = text.find("\"raw_sha256\": \"").unwrap() + 16;
    assert_damage_is_caught(
        &env,
        &id,
        &manifest,
        |b| b[sha_at] = if b[sha_at] == b'0' { b'1' } else { b'0' },
        "authentication code",
    );
    // undamaged again: everything passes
    let out = env.run(&["verify", &id, "--deep"]);
    assert!(out.status.success(), "{}", stdout(&out));
}
