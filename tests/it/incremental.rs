//! Incremental backups: deltas against the newest full that restore to exactly the dump taken.

use crate::harness::*;
use std::process::Command;

/// A data set shaped like the benchmark's: numbers, jsonb documents, incompressible blobs.
fn load(env: &TestEnv) {
    env.psql(
        "create table accounts (aid int primary key, bid int, abalance int, filler char(84));
         insert into accounts select g, g % 10, 0, '' from generate_series(1, 60000) g;
         create table documents (id bigserial primary key, created timestamptz not null default '2026-01-01',
                                 title text, body jsonb);
         insert into documents (title, body) select 'document ' || g || ' ' || md5(g::text),
                jsonb_build_object('text', repeat(md5(g::text), 3), 'score', (g % 997) / 997.0)
         from generate_series(1, 20000) g;
         create table blobs (id int primary key, data bytea);
         insert into blobs select g, decode(string_agg(md5(g::text || s), ''), 'hex')
         from generate_series(1, 300) g, generate_series(1, 32) s group by g;",
    );
}

/// About 1 % scattered change, like bench/lib/churn.sh.
fn churn(env: &TestEnv) {
    env.psql(
        "update accounts set abalance = abalance + 1 where aid % 100 = 0;
         update documents set body = jsonb_set(body, '{score}', to_jsonb(id * 2)) where id % 100 = 0;
         delete from documents where id % 1000 = 999;
         insert into documents (title, body) select 'new ' || g, jsonb_build_object('text', md5(g::text))
         from generate_series(1, 200) g;
         update blobs set data = decode(md5(id::text), 'hex') || data where id % 100 = 0;",
    );
}

/// About 1 % appended and edited at the end, like bench/lib/churn_clustered.sh.
fn churn_clustered(env: &TestEnv) {
    env.psql(
        "insert into documents (title, body) select 'late ' || g, jsonb_build_object('n', g) from generate_series(1, 200) g;
         update documents set title = title || ' (edited)' where id > (select max(id) - 100 from documents);
         delete from documents where id < (select min(id) + 100 from documents);",
    );
}

/// The SQL pg_restore would run for an archive, without the lines that differ between any two
/// runs: comments (timestamps) and psql's per-run `\restrict` keys.
fn sql_of(archive: &std::path::Path) -> Vec<String> {
    let out = Command::new(real_pg_bin().join("pg_restore")).arg("-f").arg("-").arg(archive).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(str::to_owned)
        .collect()
}

fn assert_same_sql(a: &[String], b: &[String]) {
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!("the restored SQL differs at line {i}: {:?} vs {:?}", a.get(i), b.get(i));
    }
}

fn round_trip(name: &str, change: fn(&TestEnv)) {
    let env = TestEnv::new(name);
    load(&env);
    let full_id = env.backup();
    change(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inc_id = stdout(&out).trim().to_owned();
    assert!(inc_id.contains("-incremental-"), "{inc_id}");
    // a fresh dump of the same (unchanged since) database, for comparison
    let fresh = env.dir.path().join("fresh.dump");
    let dump = Command::new(real_pg_bin().join("pg_dump"))
        .args(["-Fc", "-Z0", "-h", &cluster().socket_dir(), "-p", &cluster().port.to_string(), "-U", "postgres", "-f"])
        .arg(&fresh)
        .arg(&env.db)
        .output()
        .unwrap();
    assert!(dump.status.success());

    let list = env.list_json();
    let inc = list.iter().find(|b| b["id"] == inc_id.as_str()).unwrap();
    let full = list.iter().find(|b| b["id"] == full_id.as_str()).unwrap();
    assert_eq!(inc["kind"], "incremental");
    assert_eq!(inc["base_id"], full_id.as_str());
    let (inc_stored, full_stored) = (inc["stored_bytes"].as_u64().unwrap(), full["stored_bytes"].as_u64().unwrap());
    assert!(inc_stored * 10 < full_stored, "incremental {inc_stored} bytes vs full {full_stored}");

    // cat reconstructs the archive as taken: its SHA-256 is the one recorded at backup time
    let archive = env.dir.path().join("inc.dump");
    let out = env.run(&["cat", &inc_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&archive, &out.stdout).unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&out.stdout)), inc["raw_sha256"].as_str().unwrap());
    // and it restores to what a fresh dump of the database holds
    assert_same_sql(&sql_of(&archive), &sql_of(&fresh));

    let target = unique(&format!("{name}_restored"));
    let out = env.run(&["restore", &inc_id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for t in user_tables(&env.db) {
        assert_eq!(fingerprint(&env.db, &t), fingerprint(&target, &t), "table {t} differs");
    }
    let out = env.run(&["verify", &inc_id, "--deep"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = env.run(&["test-restore", &inc_id]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn an_incremental_after_scattered_change_restores_identically() {
    round_trip("incscatter", churn);
}

#[test]
fn an_incremental_after_clustered_change_restores_identically() {
    round_trip("incclustered", churn_clustered);
}

#[test]
fn a_corrupt_base_fails_the_incrementals_verification_and_names_the_base() {
    let env = TestEnv::new("incbase");
    load(&env);
    let full_id = env.backup();
    churn(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    let inc_id = stdout(&out).trim().to_owned();
    let data = env.repository().join(&env.db).join(&full_id).join("data.zst");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&data, &bytes).unwrap();
    let out = env.run(&["verify", &inc_id, "--deep"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("base backup {full_id}")) && text.contains(&format!("incremental {inc_id}")),
        "{text}"
    );
    let target = unique("incbase_restored");
    let out = env.run(&["restore", &inc_id, "--target-database", &target, "--create"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&full_id), "{}", stderr(&out));
}

#[test]
fn without_a_full_an_incremental_is_a_full_and_says_so() {
    let env = TestEnv::new("incfirst");
    env.psql("create table t (id int); insert into t values (1);");
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("-full-"));
    let list = env.list_json();
    assert_eq!(list[0]["kind"], "full");
    assert!(list[0]["warnings"].to_string().contains("no full backup to base it on"), "{}", list[0]);
}

#[test]
fn retention_keeps_the_base_of_a_kept_incremental() {
    let env = TestEnv::new("incret");
    load(&env);
    let base = env.backup();
    churn(&env);
    assert!(env.run(&["backup", "--kind", "incremental"]).status.success());
    let newer = env.backup();
    env.write_config(
        "retention:\n  full_backup:\n    keep_last: 1\n    min_keep: 1\n  incremental_backup:\n    keep_last: 5\n",
    );
    let out = env.run(&["retention", "--dry-run", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = runs[0]["decisions"].as_array().unwrap();
    let base_d = d.iter().find(|x| x["id"] == base.as_str()).unwrap();
    assert_eq!(base_d["keep"], true, "{base_d}");
    assert!(base_d["reasons"].to_string().contains("base of kept incremental"));
    assert_eq!(d.iter().find(|x| x["id"] == newer.as_str()).unwrap()["keep"], true);
}

/// Each run's report says what ran: a manual incremental is an `incremental_backup`, a full a
/// `full_backup`, both with the backup they stored.
#[test]
fn reports_name_the_kind_of_backup_that_ran() {
    let env = TestEnv::new("increport");
    env.psql("create table t (id int primary key); insert into t select generate_series(1, 1000)");
    let full = env.backup();
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inc = stdout(&out).trim().to_owned();
    let reports: Vec<serde_json::Value> = files_under(&env.dir.path().join("reports/backup"))
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    let kind_of = |id: &str| reports.iter().find(|r| r["backup_id"] == id).map(|r| r["job_kind"].clone());
    assert_eq!(kind_of(&full), Some("full_backup".into()), "{reports:?}");
    assert_eq!(kind_of(&inc), Some("incremental_backup".into()), "{reports:?}");
    assert!(reports.iter().all(|r| r["trigger"] == "manual" && r["outcome"] == "success"), "{reports:?}");
}
