//! Restores a disaster can count on: partial restores checked against the backup, databases that
//! come back with their properties, `--replace` with rollback, `--clean` on partitioned tables,
//! restores onto a server without the source's roles, safety backups, and the schema check of
//! test restores. On a fixture database holding every kind of object the tests can create.

use crate::harness::*;

/// The fixture objects in `env`'s database, with roles named after it; returns the role prefix.
fn objects(env: &TestEnv) -> String {
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/restore_objects.sql")).unwrap();
    env.psql(&sql.replace("ROLE", &env.db));
    env.db.clone()
}

fn exists(db: &str) -> bool {
    cluster().psql("postgres", &format!("select count(*) from pg_database where datname = '{db}'")).unwrap().trim()
        == "1"
}

fn q(db: &str, sql: &str) -> String {
    cluster().psql(db, sql).unwrap().trim().to_owned()
}

#[test]
fn partial_restores_are_checked_against_the_backup_and_read_only_what_they_need() {
    let env = TestEnv::new("rsel");
    objects(&env);
    let id = env.backup();
    // the whole of it in parallel, from a spool whose TOC has the data offsets written in
    let whole = unique("rsel_w");
    let out = env.run(&["restore", &id, "--target-database", &whole, "--create", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(q(&whole, "select count(*) from pg_largeobject_metadata"), "1");
    assert_eq!(q(&whole, "select count(*) from audit.log"), "150", "with its inheritance child");
    // a hit: without --jobs, pg_restore stops reading early; that is a success with counted rows
    let target = unique("rsel_t");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create", "--table", "public.film_actor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("restored only: public.film_actor") && stdout(&out).contains("of all 1 tables match"),
        "{}",
        stdout(&out)
    );
    assert_eq!(q(&target, "select count(*) from public.film_actor"), "300");
    // a whole schema, with its partitions
    let target2 = unique("rsel_s");
    let out = env.run(&["restore", &id, "--target-database", &target2, "--create", "--schema", "sales"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(q(&target2, "select count(*) from sales.orders"), "2000");
    // misses: exit 2, nothing created, the nearest name suggested
    for (args, says) in [
        (vec!["--table", "no_such_table"], "has no table, view or sequence \"no_such_table\""),
        (vec!["--table", "audit.film_actor"], "in schema \"audit\""),
        (vec!["--schema", "pubic"], "no schema \"pubic\" (did you mean \"public\"?)"),
        (vec!["--table", "public.film_actor", "--table", "sales.orders"], "would also restore sales.film_actor"),
    ] {
        let miss = unique("rsel_m");
        let mut a = vec!["restore", id.as_str(), "--target-database", miss.as_str(), "--create"];
        a.extend(args.iter());
        let out = env.run(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(says) && stderr(&out).contains("nothing was restored"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!exists(&miss), "{args:?} created the target");
    }
}

#[test]
fn a_created_database_comes_back_with_its_encoding_locale_settings_comment_and_grants() {
    let env = TestEnv::new("rprops");
    let c = cluster();
    let reader = format!("{}_dbreader", env.db);
    c.psql("postgres", &format!("drop database {}", env.db)).unwrap();
    c.psql(
        "postgres",
        &format!(
            "create database {} encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' template template0 connection limit 40",
            env.db
        ),
    )
    .unwrap();
    c.psql(
        "postgres",
        &format!(
            "create role {reader}; alter database {0} set search_path = app, public; \
             alter role {reader} in database {0} set work_mem = '8MB'; comment on database {0} is 'the old shop'; \
             revoke all on database {0} from public; grant connect on database {0} to {reader}",
            env.db
        ),
    )
    .unwrap();
    env.psql("create schema app; create table app.items (id int primary key, name text); insert into app.items select g, 'caf' || chr(233) || g from generate_series(1, 100) g;");
    let id = env.backup();
    let target = unique("rprops_t");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let props = |db: &str| {
        q(
            "postgres",
            &format!(
                "select pg_encoding_to_char(encoding) || ' ' || datcollate || ' ' || datconnlimit || ' ' || \
                 shobj_description(oid, 'pg_database') || ' ' || array_to_string(array(select unnest(datacl)::text \
                 order by 1), ',') || ' ' || (select array_to_string(array_agg(array_to_string(setconfig, ';') order by \
                 setrole), '|') from pg_db_role_setting where setdatabase = d.oid) from pg_database d where datname = '{db}'"
            ),
        )
    };
    let (source, restored) = (props(&env.db), props(&target));
    assert!(source.starts_with("LATIN1 C 40 the old shop"), "{source}");
    // the ACL names the restoring owner where the source named its owner: both are postgres here
    assert_eq!(restored, source);
    // unqualified queries of the application still find its schema
    assert_eq!(q(&target, "select count(*) from items"), "100");
    // the test restore compares them too, with the schema
    let out = env.run(&["test-restore", &id]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // a server without the locale: an override, named in the error's advice
    let out =
        env.run(&["restore", &id, "--target-database", &unique("rprops_bad"), "--create", "--locale", "xx_NO.SUCH"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--locale, --encoding or --icu-locale"), "{}", stderr(&out));
}

#[test]
fn replace_swaps_in_a_checked_copy_keeps_the_old_one_and_rollback_swaps_it_back() {
    let env = TestEnv::new("rrepl");
    objects(&env);
    let id = env.backup();
    env.psql("create table after_backup (x int); insert into after_backup values (1);");
    // refusals first: exit 2, nothing changed
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--replace"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("add --yes"), "{}", stderr(&out));
    let out = env.run(&["restore", &id, "--target-database", &env.db]);
    assert_eq!(out.status.code(), Some(2), "a non-empty target: {}", stderr(&out));
    assert!(stderr(&out).contains("--replace --yes"), "{}", stderr(&out));
    // a failure mid-restore leaves the target exactly as it was, and no copy behind
    let bin = env.fake_tool("pg_restore", "pg_restore_fail.sh");
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{good}pg_bin_dir: {}\n", bin.display())).unwrap();
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--replace", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("was left as it was"), "{}", stderr(&out));
    assert_eq!(env.psql("select count(*) from after_backup").trim(), "1");
    assert!(!exists(&format!("{}_pgbackd_replacing", env.db)));
    std::fs::write(&env.config, &good).unwrap();
    // the real thing
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--replace", "--yes"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let kept = format!("{}_pre_{id}", env.db);
    assert!(stdout(&out).contains(&format!("the old one is kept as {kept}")), "{}", stdout(&out));
    assert_eq!(env.psql("select count(*) from pg_tables where tablename = 'after_backup'").trim(), "0");
    assert_eq!(env.psql("select count(*) from sales.orders").trim(), "2000");
    assert_eq!(q(&kept, "select count(*) from after_backup"), "1", "the old database is kept whole");
    // rollback: the kept one has the name again, the replaced-in one is set aside
    let out = env.run(&["rollback", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.psql("select count(*) from after_backup").trim(), "1");
    assert!(!exists(&kept));
    assert!(stdout(&out).contains("_rolled_back_"), "{}", stdout(&out));
    let out = env.run(&["rollback", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "nothing left to roll back: {}", stderr(&out));
}

#[test]
fn clean_in_place_works_on_partitioned_tables_and_safety_backups_are_their_own() {
    let env = TestEnv::new("rclean");
    objects(&env);
    env.write_config("retention:\n  safety_backup:\n    keep_last: 1\n    min_keep: 0\n");
    let id = env.backup();
    env.psql("delete from sales.orders where id > 1000;");
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--clean", "--yes"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(env.psql("select count(*) from sales.orders").trim(), "2000");
    let safety: Vec<serde_json::Value> =
        env.list_json().into_iter().filter(|b| b["trigger"] == "safety_before_restore").collect();
    assert_eq!(safety.len(), 1, "{:?}", env.list_json());
    let out = env.run(&["list"]);
    assert!(stdout(&out).contains(" safety "), "list shows the trigger: {}", stdout(&out));
    assert!(
        std::fs::read_dir(env.dir.path().join("reports/backup")).unwrap().count() >= 2,
        "the safety backup's report"
    );
    // --latest is the real backup, not the safety copy
    let out = env.run(&["restore", "--latest", "--target-database", &unique("rclean_l"), "--create", "--dry-run"]);
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    // a second clean restore, then retention keeps one safety backup and every real one
    assert!(env.run(&["restore", &id, "--target-database", &env.db, "--clean", "--yes"]).status.success());
    assert!(env.run(&["retention"]).status.success());
    let after = env.list_json();
    assert_eq!(after.iter().filter(|b| b["trigger"] == "safety_before_restore").count(), 1);
    assert!(after.iter().any(|b| b["id"] == id));
    // the safety backups of a database that is not in the configuration are pruned too
    let other = unique("rclean_o");
    assert!(env.run(&["restore", &id, "--target-database", &other, "--create"]).status.success());
    for _ in 0..2 {
        let out = env.run(&["restore", &id, "--target-database", &other, "--clean", "--yes"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let of_other = |l: &[serde_json::Value]| l.iter().filter(|b| b["database"] == other.as_str()).count();
    assert_eq!(of_other(&env.list_json()), 2);
    let out = env.run(&["retention"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(of_other(&env.list_json()), 1, "{}", stdout(&out));
    // a clean restore that fails after the drop names the safety backup that holds what was there
    let bin = env.fake_tool("pg_restore", "pg_restore_fail.sh");
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{good}pg_bin_dir: {}\n", bin.display())).unwrap();
    let out = env.run(&["restore", &id, "--target-database", &env.db, "--clean", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let named = env.list_json().into_iter().filter(|b| b["trigger"] == "safety_before_restore").any(|b| {
        let sid = b["id"].as_str().unwrap().to_owned();
        err.contains(&format!("the safety backup {sid} holds what it had: pgbackd restore {sid} --target-database"))
    });
    assert!(named, "{err}");
}

#[test]
fn no_privileges_restores_onto_a_server_without_the_roles() {
    let env = TestEnv::new("rnopriv");
    objects(&env);
    // a policy names its role whatever the options: that needs the role (see below)
    env.psql("drop policy film_readers on public.film");
    let id = env.backup();
    let other = pgbackd::pg::cluster::Cluster::start(env.dir.path()).expect("a second cluster");
    let port = other.port.to_string();
    let host = other.socket_dir();
    let target = unique("rnopriv_t");
    let base = [
        "restore",
        id.as_str(),
        "--target-database",
        target.as_str(),
        "--create",
        "--target-host",
        host.as_str(),
        "--target-port",
        port.as_str(),
    ];
    let out = env.run(&[&base[..], &["--no-owner"]].concat());
    assert_eq!(out.status.code(), Some(1), "grants to missing roles fail: {}", stderr(&out));
    assert!(stderr(&out).contains("--no-owner --no-privileges"), "{}", stderr(&out));
    let out = env.run(&[&base[..], &["--no-owner", "--no-privileges"]].concat());
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(other.psql(&target, "select count(*) from sales.orders").unwrap().trim(), "2000");
    // an object that names a role needs it, and says so
    env.psql(&format!("create policy p on public.film for select to {}_reader using (true)", env.db));
    let id = env.backup();
    let target = unique("rnopriv_p");
    let out = env.run(&[
        "restore",
        &id,
        "--target-database",
        &target,
        "--create",
        "--target-host",
        &host,
        "--target-port",
        &port,
        "--no-owner",
        "--no-privileges",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("an object names a role of the source server"), "{}", stderr(&out));
    other.stop();
}

#[test]
fn a_test_restore_with_an_object_missing_fails_and_names_it() {
    let env = TestEnv::new("rschema");
    objects(&env);
    let id = env.backup();
    let bin = env.fake_tool("pg_restore", "pg_restore_drops_a_view.sh");
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    let out = env.run(&["test-restore", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("restored schema differs") && text.contains("CREATE VIEW public.v_film"), "{text}");
}

#[test]
fn a_cancelled_replace_leaves_the_target_as_it_was() {
    let env = TestEnv::new("rcancel");
    objects(&env);
    let id = env.backup();
    env.psql("create table after_backup (x int);");
    let bin = env.fake_tool("pg_restore", "pg_restore_slow.sh");
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    let child = env
        .command(&["restore", &id, "--target-database", &env.db, "--replace", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staging = format!("{}_pgbackd_replacing", env.db);
    let start = std::time::Instant::now();
    while !exists(&staging) {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the copy was never created");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    send_signal(child.id(), libc::SIGTERM, false);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("was left as it was"), "{}", stderr(&out));
    assert_eq!(env.psql("select count(*) from pg_tables where tablename = 'after_backup'").trim(), "1");
    assert!(!exists(&staging), "the copy was dropped");
    assert!(!exists(&format!("{}_pre_{id}", env.db)));
}
