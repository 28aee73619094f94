//! Incremental backups: deltas against the previous backup (a chain down to a full) or the
//! newest full, that restore to exactly the dump taken; chains bounded by `backup.max_chain`,
//! and followed by verify, list, forget and retention.

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

fn incremental(env: &TestEnv) -> String {
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn fingerprints(db: &str) -> Vec<(String, String)> {
    user_tables(db).into_iter().map(|t| (fingerprint(db, &t), t)).collect()
}

/// With `max_chain: 3`, three incrementals each based on the one before (stored as little as one
/// round's change), each restoring to its own moment, then a full starting the next chain; with
/// `incremental_base: full`, differentials.
#[test]
fn a_chain_of_incrementals_restores_every_link_and_a_full_starts_the_next_at_max_chain() {
    let env = TestEnv::new("incchain");
    load(&env);
    env.write_config("backup:\n  max_chain: 3\n");
    let full = env.backup();
    let mut chain = vec![full.clone()];
    let mut states = Vec::new();
    for _ in 0..3 {
        churn(&env);
        chain.push(incremental(&env));
        states.push(fingerprints(&env.db));
    }
    let list = env.list_json();
    let of = |id: &str| list.iter().find(|b| b["id"] == id).unwrap().clone();
    let full_stored = of(&full)["stored_bytes"].as_u64().unwrap();
    for (n, id) in chain.iter().enumerate().skip(1) {
        let b = of(id);
        assert_eq!((b["kind"].as_str(), b["base_id"].as_str()), (Some("incremental"), Some(chain[n - 1].as_str())));
        assert_eq!(b["chain"], n + 1, "{b}");
        assert!(b["stored_bytes"].as_u64().unwrap() * 10 < full_stored, "{b}");
        // cat reconstructs each link exactly as taken
        let out = env.run(&["cat", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&out.stdout)), b["raw_sha256"].as_str().unwrap());
    }
    // the oldest and the newest link restore to the data of their own moment
    for (n, state) in [(1, &states[0]), (3, &states[2])] {
        let target = unique("incchain_r");
        let out = env.run(&["restore", &chain[n], "--target-database", &target, "--create", "--jobs", "2"]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        assert_eq!(&fingerprints(&target), state, "link {n}");
    }
    let out = env.run(&["verify", "--all", "--deep"]);
    assert!(out.status.success(), "{}", stdout(&out));

    // the chain is 3 long: the next incremental request takes a full, without a warning
    churn(&env);
    let next = incremental(&env);
    assert!(next.contains("-full-"), "{next}");
    let list = env.list_json();
    let promoted = list.iter().find(|b| b["id"] == next.as_str()).unwrap();
    assert_eq!((promoted["kind"].as_str(), promoted["chain"].as_u64()), (Some("full"), Some(1)));
    assert_eq!(promoted["warnings"], serde_json::json!([]), "{promoted}");
    // and the one after it starts the new chain
    churn(&env);
    let after = incremental(&env);
    assert_eq!(env.list_json().iter().find(|b| b["id"] == after.as_str()).unwrap()["base_id"], next.as_str());

    // differentials: each incremental on the newest full, at most max_chain of them
    env.write_config("backup:\n  max_chain: 2\n  incremental_base: full\n");
    churn(&env);
    let diff = incremental(&env);
    let list = env.list_json();
    let d = list.iter().find(|b| b["id"] == diff.as_str()).unwrap();
    assert_eq!((d["base_id"].as_str(), d["chain"].as_u64()), (Some(next.as_str()), Some(2)), "{d}");
    churn(&env);
    assert!(incremental(&env).contains("-full-"), "a third since the full is over max_chain 2");
}

/// A chain is only as good as its links: forget refuses a link others need, retention keeps or
/// deletes chains whole, and a missing or corrupt link is named by list, verify and restore,
/// and makes the next incremental request a full with a warning.
#[test]
fn a_broken_link_is_named_everywhere_and_the_next_incremental_is_a_full() {
    let env = TestEnv::new("inclink");
    load(&env);
    let full = env.backup();
    let mut ids = vec![full.clone()];
    for _ in 0..3 {
        churn(&env);
        ids.push(incremental(&env));
    }
    let (i1, i2, i3) = (ids[1].clone(), ids[2].clone(), ids[3].clone());

    // forget names every backup whose restore reads it, newest first
    let out = env.run(&["forget", &i1, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("is read by the restores of {i3}, {i2}")), "{}", stderr(&out));

    // retention keeping only the newest incremental keeps its whole chain, each link saying why
    env.write_config(
        "retention:\n  full_backup: {keep_last: 1, min_keep: 1}\n  incremental_backup: {keep_last: 1, min_keep: 1}\n",
    );
    let out = env.run(&["retention", "--dry-run", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decisions = runs[0]["decisions"].as_array().unwrap();
    for (id, by) in [(&i2, &i3), (&i1, &i2), (&full, &i1)] {
        let d = decisions.iter().find(|x| x["id"] == id.as_str()).unwrap();
        assert_eq!(d["keep"], true, "{d}");
        assert!(d["reasons"].to_string().contains(&format!("base of kept incremental {by}")), "{d}");
    }
    env.write_config("");

    // a corrupt frame in the first link: the newest link's deep verification names it
    let data = env.repository().join(&env.db).join(&i1).join("data.zst");
    let good = std::fs::read(&data).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x08;
    std::fs::write(&data, &bad).unwrap();
    let out = env.run(&["verify", &i3, "--deep"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&format!("base backup {i1}")), "{}", stdout(&out));
    // its own verification fails too, and is recorded: the next incremental is a full, and says why
    assert_eq!(env.run(&["verify", &i1, "--deep"]).status.code(), Some(1));
    churn(&env);
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let instead = stdout(&out).trim().to_owned();
    assert!(instead.contains("-full-"), "{instead}");
    let list = env.list_json();
    let w = list.iter().find(|b| b["id"] == instead.as_str()).unwrap()["warnings"].to_string();
    assert!(w.contains(&i1) && w.contains("failed its last verification"), "{w}");
    std::fs::write(&data, &good).unwrap();

    // a link gone (its directory deleted by hand): list says which, quick verify and restore fail
    std::fs::remove_dir_all(env.repository().join(&env.db).join(&i2)).unwrap();
    let list = env.list_json();
    let top = list.iter().find(|b| b["id"] == i3.as_str()).unwrap();
    assert_eq!((top["status"].as_str(), top["chain"].is_null()), (Some("broken"), true), "{top}");
    let out = env.run(&["list"]);
    assert!(stdout(&out).contains(&format!("broken: it needs {i2}, which is missing or damaged")), "{}", stdout(&out));
    let out = env.run(&["verify", &i3]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&i2), "{}", stdout(&out));
    let target = unique("inclink_r");
    let out = env.run(&["restore", &i3, "--target-database", &target, "--create"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("depends on backup {i2}")), "{}", stderr(&out));
}
