//! Round trips on real data: backup -> restore -> identical content.

use crate::harness::*;
use pgbackd::pg::cluster::Cluster;

/// Mixed data: numeric, text with awkward characters, jsonb, bytea, large objects, sequences, an
/// extension, a non-public schema, a role owning objects, an empty and a zero-column table.
pub fn load_mixed_data(env: &TestEnv, role: &str) {
    env.psql(&format!(
        "create extension if not exists pgcrypto;
         create role {role} nologin;
         create schema sales authorization {role};
         create table sales.orders (id bigserial primary key, amount numeric(20,6), note text, meta jsonb,
                                    payload bytea, created timestamptz default '2026-01-01');
         insert into sales.orders (amount, note, meta, payload)
           select g * 1.000001, case g % 5 when 0 then null when 1 then E'tab\\there' when 2 then E'line\\nbreak'
                                when 3 then E'back\\\\slash' else 'ünïcødé ✓ ' || g end,
                  jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g % 7)), gen_random_bytes(32)
           from generate_series(1, 5000) g;
         alter table sales.orders owner to {role};
         create table public.docs (id int primary key, body text);
         insert into public.docs values (1, E'first\\n\\\\.\\nthird'), (2, '\\.'), (3, '');
         create table public.hashes (id int primary key, h text default encode(digest('x', 'sha256'), 'hex'));
         insert into public.hashes (id) select generate_series(1, 100);
         create sequence public.counter start 100;
         select nextval('public.counter'), nextval('public.counter'), nextval('public.counter');
         create table public.empty_table (a int);
         create table public.no_columns ();
         insert into public.no_columns default values; insert into public.no_columns default values;
         select lo_from_bytea(0, convert_to('large object one', 'UTF8'));
         select lo_from_bytea(0, decode(repeat(md5(random()::text), 3125), 'hex'));"
    ));
}

#[test]
fn round_trip_of_mixed_data_is_identical() {
    let env = TestEnv::new("mixed");
    let role = unique("owner");
    load_mixed_data(&env, &role);
    let id = env.backup();

    // list --json: the stable fields
    let list = env.list_json();
    assert_eq!(list.len(), 1);
    let b = &list[0];
    for field in [
        "id",
        "database",
        "kind",
        "base_id",
        "started_at",
        "finished_at",
        "raw_bytes",
        "stored_bytes",
        "raw_sha256",
        "targets",
        "verified_at",
        "verify_outcome",
    ] {
        assert!(b.get(field).is_some(), "list --json lacks {field}: {b}");
    }
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["kind"], "full");
    assert_eq!(b["targets"], serde_json::json!(["local"]));
    assert!(b["stored_bytes"].as_u64().unwrap() < b["raw_bytes"].as_u64().unwrap());

    // the manifest's row counts are exact
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repository().join(&env.db).join(&id).join("manifest.json")).unwrap())
            .unwrap();
    let rows = |schema: &str, name: &str| {
        manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == schema && t["name"] == name)
            .map(|t| t["rows"].as_u64().unwrap())
    };
    assert_eq!(rows("sales", "orders"), Some(5000));
    assert_eq!(rows("public", "docs"), Some(3));
    assert_eq!(rows("public", "empty_table"), Some(0));
    assert_eq!(rows("public", "no_columns"), Some(2));
    assert_eq!(manifest["large_objects"], 2);
    assert!(manifest["globals"]["raw_bytes"].as_u64().unwrap() > 0);

    let target = unique("mixed_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "restore failed:\n{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("row counts of all 5 tables match"), "{}", stdout(&out));

    let tables = user_tables(&env.db);
    assert_eq!(tables, user_tables(&target));
    assert_eq!(tables.len(), 5);
    for t in &tables {
        assert_eq!(fingerprint(&env.db, t), fingerprint(&target, t), "table {t} differs");
    }
    let c = cluster();
    let seq = "select last_value || ',' || is_called from public.counter";
    assert_eq!(c.psql(&env.db, seq).unwrap(), c.psql(&target, seq).unwrap());
    let lo = "select string_agg(md5(lo_get(oid)), ',' order by md5(lo_get(oid))) from pg_largeobject_metadata";
    assert_eq!(c.psql(&env.db, lo).unwrap(), c.psql(&target, lo).unwrap());
    assert_eq!(c.psql(&target, "select tableowner from pg_tables where tablename = 'orders'").unwrap(), role);
    assert_eq!(c.psql(&target, "select extname from pg_extension where extname = 'pgcrypto'").unwrap(), "pgcrypto");
}

#[test]
fn cat_output_is_a_standard_archive_and_the_object_a_standard_zst() {
    let env = TestEnv::new("cat");
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 20000) g;");
    let id = env.backup();
    let out = env.run(&["cat", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = out.stdout;
    assert_eq!(&archive[..5], b"PGDMP");
    // zstd -d < data.zst gives the same bytes
    let data = env.repository().join(&env.db).join(&id).join("data.zst");
    let unzstd = std::process::Command::new("zstd").args(["-d", "-c"]).arg(&data).output().expect("zstd is installed");
    assert!(unzstd.status.success());
    assert_eq!(unzstd.stdout, archive);
    // and pg_restore reads it
    let path = env.dir.path().join("x.dump");
    std::fs::write(&path, &archive).unwrap();
    let list = std::process::Command::new(real_pg_bin().join("pg_restore")).arg("--list").arg(&path).output().unwrap();
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public t"));
}

#[test]
fn parallel_restore_filters_and_dry_run() {
    let env = TestEnv::new("filters");
    env.psql(
        "create schema a; create schema b;
         create table a.one (id int primary key); insert into a.one select generate_series(1, 1000);
         create table b.two (id int primary key); insert into b.two select generate_series(1, 2000);
         create table b.three (id int primary key); insert into b.three select generate_series(1, 3000);",
    );
    let id = env.backup();

    // dry run: verified, nothing created
    let dry = unique("dry");
    let out = env.run(&["restore", &id, "--target-database", &dry, "--create", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing was changed"));
    let exists =
        cluster().psql("postgres", &format!("select count(*) from pg_database where datname = '{dry}'")).unwrap();
    assert_eq!(exists, "0");

    // --jobs 2 spools to a file; the whole database comes back
    let par = unique("par");
    let out = env.run(&["restore", "--latest", "--target-database", &par, "--create", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for t in ["a.one", "b.two", "b.three"] {
        assert_eq!(fingerprint(&env.db, t), fingerprint(&par, t));
    }

    // --schema b --table two: only that table is restored and checked
    let one = unique("one");
    let out =
        env.run(&["restore", &id, "--target-database", &one, "--create", "--schema", "b", "--table", "two", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tables_checked"], 1);
    assert_eq!(user_tables(&one), vec!["b.two"]);
}

#[test]
fn a_parallel_restore_spools_in_memory_or_to_an_unlinked_file_as_configured() {
    let env = TestEnv::new("spool");
    env.psql("create table t (id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g;");
    let id = env.backup();
    let bin = env.fake_tool("pg_restore", "pg_restore_record_input.sh");
    for (place, expected) in
        [("memory", "/memfd:pgbackd-spool"), ("disk", "(deleted)"), ("auto", "/memfd:pgbackd-spool")]
    {
        env.write_config(&format!("pg_bin_dir: {}\nrestore:\n  spool: {place}\n", bin.display()));
        let target = unique("spool");
        let out = env.run(&["restore", &id, "--target-database", &target, "--create", "--jobs", "2"]);
        assert!(out.status.success(), "{place}: {}", stderr(&out));
        assert_eq!(fingerprint(&env.db, "t"), fingerprint(&target, "t"), "{place}");
        let inputs = std::fs::read_to_string(bin.join("inputs")).unwrap();
        let input = inputs.lines().last().unwrap();
        // in memory (a small archive, under auto too), or a file in TMPDIR that has no name
        if expected.starts_with('/') {
            assert!(input.starts_with(expected), "{place}: pg_restore read {input}");
        } else {
            assert!(
                input.starts_with('/') && !input.starts_with("/memfd:") && input.ends_with(expected),
                "{place}: pg_restore read {input}"
            );
        }
    }
    // a place that does not exist is refused at load, naming the field
    env.write_config("restore:\n  spool: ramdisk\n");
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restore.spool") && stderr(&out).contains("expected auto, memory or disk"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn restore_protects_a_non_empty_target_and_takes_a_safety_backup() {
    let env = TestEnv::new("safety");
    env.psql("create table t (id int); insert into t select generate_series(1, 100);");
    let id = env.backup();
    env.psql("insert into t select generate_series(101, 150);");

    // refusals are usage errors: exit 2, nothing changed
    let out = env.run(&["restore", &id, "--target-database", &env.db]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--clean"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("add --yes"), "{}", stderr(&out));
    assert_eq!(env.psql("select count(*) from t"), "150");

    let out = env.run(&["restore", &id, "--target-database", &env.db, "--clean", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("safety backup of the target taken first"), "{}", stdout(&out));
    assert_eq!(env.psql("select count(*) from t"), "100");
    // the safety backup holds the 150 rows and is listed
    let list = env.list_json();
    assert_eq!(list.len(), 2);
    let safety = list.iter().find(|b| b["trigger"] == "safety_before_restore").expect("safety backup listed");
    let back = unique("back");
    let out = env.run(&["restore", safety["id"].as_str().unwrap(), "--target-database", &back, "--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cluster().psql(&back, "select count(*) from t").unwrap(), "150");
}

#[test]
fn row_count_mismatch_fails_the_restore() {
    let env = TestEnv::new("rows");
    env.psql("create table t (id int); insert into t select generate_series(1, 10);");
    let id = env.backup();
    let path = env.repository().join(&env.db).join(&id).join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"rows\": 10", "\"rows\": 11");
    std::fs::write(&path, text).unwrap();
    reseal(path.parent().unwrap());
    let target = unique("rows_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("public.t: expected 11, found 10"), "{}", stdout(&out));
}

#[test]
fn roles_come_back_from_globals_into_a_fresh_cluster() {
    let env = TestEnv::new("globals");
    let role = unique("globals_owner");
    env.psql(&format!(
        "create role {role} nologin; create table t (id int); alter table t owner to {role}; insert into t values (1);"
    ));
    let id = env.backup();

    let fresh = Cluster::start(&std::env::temp_dir()).unwrap();
    let port = fresh.port.to_string();
    let socket = fresh.socket_dir();
    let out = env.run(&[
        "restore",
        &id,
        "--target-database",
        "copy",
        "--create",
        "--globals",
        "--target-host",
        &socket,
        "--target-port",
        &port,
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        fresh.psql("postgres", &format!("select count(*) from pg_roles where rolname = '{role}'")).unwrap(),
        "1"
    );
    assert_eq!(fresh.psql("copy", "select tableowner from pg_tables where tablename = 't'").unwrap(), role);
}

#[test]
fn shrinking_dump_fails_unless_allowed() {
    let env = TestEnv::new("shrink");
    env.psql(
        "create table t (id int, v text); insert into t select g, repeat('x', 100) from generate_series(1, 50000) g;",
    );
    env.backup();
    env.psql("truncate t;");
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--allow-shrink"), "{}", stderr(&out));
    assert_eq!(env.list_json().len(), 1);
    let out = env.run(&["backup", "--allow-shrink"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.list_json().len(), 2);
}

#[test]
fn a_backup_user_without_superuser_rights_gets_a_warning_not_a_failure() {
    let env = TestEnv::new("nonsuper");
    let user = unique("backup_user");
    env.psql(&format!(
        "create table t (id int); insert into t values (1), (2);
         create role {user} login; grant select on t to {user};"
    ));
    let text =
        std::fs::read_to_string(&env.config).unwrap().replace("username: postgres", &format!("username: {user}"));
    std::fs::write(&env.config, text).unwrap();
    let id = env.backup();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repository().join(&env.db).join(&id).join("manifest.json")).unwrap())
            .unwrap();
    let warnings = manifest["warnings"].to_string();
    assert!(warnings.contains("without passwords"), "{warnings}");
    assert!(manifest["globals"]["raw_bytes"].as_u64().unwrap() > 0);
    assert_eq!(env.list_json()[0]["warnings"].as_array().unwrap().len(), 1);
}

#[test]
fn a_dump_below_min_size_fails() {
    let env = TestEnv::new("minsize");
    env.psql("create table t (id int); insert into t values (1);");
    env.write_config("backup:\n  min_size: 100MiB\n");
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("less than backup.min_size (104857600 bytes)"), "{}", stderr(&out));
    assert!(env.list_json().is_empty());
    assert!(env.repository_files().is_empty(), "{:?}", env.repository_files());
}

/// `backup --all`: every configured database, one id per line; one that fails is named, the
/// others are still backed up, and the exit is 1.
#[test]
fn backup_all_backs_up_every_database_and_names_the_one_that_failed() {
    let env = TestEnv::new("all");
    env.psql("create table t (id int); insert into t select generate_series(1, 10);");
    let c = cluster();
    let db = |name: &str, dbname: &str| {
        format!(
            "  - name: {name}\n    host: {}\n    port: {}\n    username: postgres\n    database: {dbname}\n",
            c.socket_dir(),
            c.port
        )
    };
    let config = |dbs: &str| {
        format!(
            "databases:\n{dbs}local_backup_dir: {}\nreports:\n  dir: {}\nmonitoring:\n  listen: off\n",
            env.repository().display(),
            env.dir.path().join("reports").display()
        )
    };
    std::fs::write(&env.config, config(&(db("one", &env.db) + &db("two", &env.db)))).unwrap();
    let out = env.run(&["backup", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("one ") && lines[1].starts_with("two "), "{text}");
    // a missing database in the middle: the third still runs
    let missing = format!("{}_missing", env.db);
    std::fs::write(&env.config, config(&(db("one", &env.db) + &db("gone", &missing) + &db("three", &env.db)))).unwrap();
    let out = env.run(&["backup", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("one ")) && text.lines().any(|l| l.starts_with("three ")), "{text}");
    assert!(stderr(&out).contains("backup of database gone failed") && stderr(&out).contains("1 of 3 backups failed"));
    let out = env.run(&["backup", "--all", "--database", "one"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Chunk boundaries follow the data, not the timing of pg_dump's pipe: two backups of a database
/// that did not change are the same archive, byte for byte, but for pg_dump's own timestamp in
/// the header (and so the same size and the same data blocks).
#[test]
fn two_backups_of_an_unchanged_database_are_the_same_archive_but_for_its_timestamp() {
    let env = TestEnv::new("same_bytes");
    env.psql(
        "create table t (id int primary key, v text); \
         insert into t select g, repeat(md5(g::text), 12) from generate_series(1, 40000) g; \
         create table small (k text); insert into small values ('a'), ('b');",
    );
    let (first, second) = (env.backup(), env.backup());
    let cat = |id: &str| {
        let o = env.run(&["cat", id]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    let (a, b) = (cat(&first), cat(&second));
    assert!(a.len() > 10 << 20, "a dump large enough for many pipe reads: {} bytes", a.len());
    assert_eq!(a.len(), b.len(), "the same size");
    // "PGDMP", the version, sizes and format (11 bytes), the compression int (5), then the
    // creation time as seven ints: bytes 16 to 50
    let differing: Vec<usize> = a.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect();
    assert!(
        differing.iter().all(|&i| (16..51).contains(&i)),
        "bytes differ outside the header's timestamp: {differing:?}"
    );
    let listed = env.list_json();
    let raw_bytes = |id: &str| listed.iter().find(|m| m["id"] == id).map(|m| m["raw_bytes"].clone());
    assert_eq!(raw_bytes(&first), raw_bytes(&second));
}
