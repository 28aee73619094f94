//! Failure paths: every broken dump is a failed job with a precise error, nothing listed, and
//! nothing left in the repository.

use crate::harness::*;

fn env_with_fake(name: &str, script: &str, extra: &str) -> TestEnv {
    let env = TestEnv::new(name);
    env.psql(
        "create table big (id int, v text); insert into big select g, md5(g::text) from generate_series(1, 20000) g;",
    );
    let bin = env.fake_bin(script);
    env.write_config(&format!("pg_bin_dir: {}\n{extra}", bin.display()));
    env
}

fn assert_failed_cleanly(env: &TestEnv, out: &std::process::Output, expected: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a failed job:\n{err}");
    for e in expected {
        assert!(err.contains(e), "stderr lacks {e:?}:\n{err}");
    }
    assert!(stdout(out).trim().is_empty(), "a failed backup printed an id: {}", stdout(out));
    assert!(env.list_json().is_empty(), "a failed backup is listed");
    assert!(env.repository_files().is_empty(), "files left behind: {:?}", env.repository_files());
    // nor empty directories: a failed backup leaves only its attempt record
    let dirs: Vec<_> = std::fs::read_dir(env.repository().join(&env.db))
        .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n != ".attempts").collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "directories left behind: {dirs:?}");
}

#[test]
fn pg_dump_failing_halfway() {
    let env = env_with_fake("half", "pg_dump_half_then_fail.sh", "");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["pg_dump", "exited with status 1", "PQgetResult() failed"]);
}

#[test]
fn pg_dump_killed_by_sigkill() {
    let env = env_with_fake("sigkill", "pg_dump_sigkill.sh", "");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["killed by signal 9 (SIGKILL)"]);
}

#[test]
fn pg_dump_writing_nothing() {
    let env = env_with_fake("silent", "pg_dump_silent.sh", "");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["exited successfully but wrote nothing"]);
    // with row counting off too
    let env = env_with_fake("silent_nocount", "pg_dump_silent.sh", "backup:\n  row_counts: off\n");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["wrote nothing"]);
}

#[test]
fn pg_dump_flooding_stderr() {
    let env = env_with_fake("flood", "pg_dump_stderr_flood.sh", "");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(
        &env,
        &out,
        &["exited with status 1", "final flood error", "earlier bytes of stderr omitted"],
    );
    // the error carries a tail, not 10 MB
    assert!(stderr(&out).len() < 100_000, "stderr is {} bytes", stderr(&out).len());
}

#[test]
fn pg_dump_hanging_is_stopped_by_the_stall_guard() {
    let env = env_with_fake("hang", "pg_dump_hang.sh", "backup:\n  stall_timeout: 1s\n");
    let started = std::time::Instant::now();
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["produced no data for 1s", "stall_timeout"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 4321"]).output().unwrap();
    assert!(left.stdout.is_empty(), "the hanging pg_dump is still running");
}

#[test]
fn pg_dump_trickling_forever_is_stopped_by_the_job_timeout() {
    let env = env_with_fake("trickle", "pg_dump_trickle.sh", "backup:\n  timeout: 2s\n  stall_timeout: 1s\n");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(&env, &out, &["exceeded backup.timeout"]);
}

#[test]
fn pg_dump_older_than_the_server_is_refused() {
    let env = env_with_fake("oldclient", "pg_dump_old_version.sh", "");
    let out = env.run(&["backup"]);
    assert_failed_cleanly(
        &env,
        &out,
        &["pg_dump 9.6.24", "cannot dump PostgreSQL 15", "install postgresql-client-15", "pg_bin_dir"],
    );
}

#[test]
fn password_reaches_pg_dump_only_through_a_private_password_file() {
    let env = TestEnv::new("secret");
    env.psql("create table t (id int); insert into t values (1);");
    let bin = env.fake_bin("pg_dump_record_argv.sh");
    let secret = "Sup3r-Secret-Pa55";
    // a role that must give its password, over TCP: the backup works only if it arrives
    env.write_config(&format!("pg_bin_dir: {}\n", bin.display()));
    env.use_password_role(secret);
    let record = env.dir.path().to_string_lossy().into_owned();
    let expected = env.dir.path().join("expected_password");
    std::fs::write(&expected, secret).unwrap();
    let expected = expected.to_string_lossy().into_owned();
    let vars = [("TEST_DB_PASSWORD", secret), ("RECORD_DIR", record.as_str()), ("EXPECTED_PASSWORD_FILE", &expected)];
    let out = env.run_env(&["backup"], &vars);
    assert!(out.status.success(), "{}", stderr(&out));
    let argv = std::fs::read_to_string(env.dir.path().join("argv")).unwrap();
    assert!(argv.contains("--format=custom") && !argv.contains(secret), "argv: {argv}");
    assert_eq!(std::fs::read_to_string(env.dir.path().join("env")).unwrap().trim(), "ok");
    let environ = std::fs::read_to_string(env.dir.path().join("environ")).unwrap();
    // not even the variable the config took it from
    assert!(environ.contains("PGPASSFILE=") && !environ.contains(secret), "environment: {environ}");
    // the password file has no name on any filesystem (a memfd, pg_dump's fd 3): nothing can be
    // left behind, not even by kill -9
    for f in std::fs::read_to_string(env.dir.path().join("pgpassfiles")).unwrap().lines() {
        assert!(f.starts_with("/proc/self/fd/3 /memfd:pgbackd-pgpass"), "a password file with a name: {f}");
    }
    assert!(!stderr(&out).contains(secret) && !stdout(&out).contains(secret));
    for f in env.repository_files() {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds the password", f.display());
    }
    // and it is the password that let it in
    let wrong = [("TEST_DB_PASSWORD", "not-the-password"), vars[1], vars[2]];
    let out = env.run_env(&["backup"], &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("password authentication failed")
            && stderr(&out).contains("the password is wrong: check database.password"),
        "{}",
        stderr(&out)
    );
}

/// PostgreSQL down, a role or database that does not exist, a host that does not resolve: each
/// fails the backup with the server's words and what to change.
#[test]
fn connection_failures_say_what_to_do() {
    let env = TestEnv::new("connfail");
    let original = std::fs::read_to_string(&env.config).unwrap();
    let c = cluster();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases = [
        (
            format!("  host: 127.0.0.1\n  port: {dead}\n"),
            vec![
                "Connection refused",
                "nothing listens there: start PostgreSQL, or check database.host and database.port",
            ],
        ),
        (
            format!("  host: /nonexistent-socket-dir\n  port: {}\n", c.port),
            vec!["no server listens on the socket in /nonexistent-socket-dir"],
        ),
        (
            format!("  host: no-such-host.invalid\n  port: {}\n", c.port),
            vec!["the host name no-such-host.invalid does not resolve: check database.host"],
        ),
    ];
    let endpoint = format!("  host: {}\n  port: {}\n", c.socket_dir(), c.port);
    for (replacement, expected) in cases {
        std::fs::write(&env.config, original.replace(&endpoint, &replacement)).unwrap();
        let out = env.run(&["backup"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        for e in expected {
            assert!(stderr(&out).contains(e), "lacks {e:?}: {}", stderr(&out));
        }
    }
    let renamed = [
        (
            "  username: postgres\n",
            "  username: nosuchrole\n",
            "create the role (CREATE ROLE nosuchrole LOGIN) or fix database.username",
        ),
        (
            &format!("  database: {}\n", env.db),
            "  database: nosuchdb\n",
            "check database.database, or create it (createdb nosuchdb)",
        ),
    ];
    for (from, to, expected) in renamed {
        std::fs::write(&env.config, original.replace(from, to)).unwrap();
        let out = env.run(&["backup"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "lacks {expected:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("db error"), "{}", stderr(&out));
    }
}

#[test]
fn restore_refuses_a_flipped_byte_and_names_the_backup() {
    let env = TestEnv::new("flip");
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 50000) g;");
    let id = env.backup();
    let data = env.repository().join(&env.db).join(&id).join("data.zst");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
    let target = unique("flip_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&id) && err.contains("frame") && err.contains("corrupt"), "{err}");
    // nothing was written to the target: it was not even created
    let exists =
        cluster().psql("postgres", &format!("select count(*) from pg_database where datname = '{target}'")).unwrap();
    assert_eq!(exists, "0");
    let out = env.run(&["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "cat wrote data from a corrupt backup");
}

#[test]
fn unknown_backup_and_usage_errors_exit_2() {
    let env = TestEnv::new("usage");
    let out = env.run(&["restore", "20260101T000000Z-full-abcdef", "--target-database", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no backup with id 20260101T000000Z-full-abcdef"));
    let out = env.run(&["restore", "--target-database", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = std::process::Command::new(BIN).arg("list").env_remove("PGBACKD_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--config"));
}

/// A role that may not read a table: the real pg_dump fails, and the message says which grant
/// fixes it.
#[test]
fn a_role_without_read_privileges_is_told_which_grant_is_missing() {
    let env = TestEnv::new("noprivs");
    let role = format!("{}_ro", env.db);
    env.psql(&format!("create table secret (id int); insert into secret values (1); create role {role} login;"));
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("  username: postgres\n", &format!("  username: {role}\n"));
    std::fs::write(&env.config, text).unwrap();
    let out = env.run(&["backup"]);
    assert_failed_cleanly(
        &env,
        &out,
        &[
            "permission denied for table secret",
            &format!("what to do: the role {role} may not read everything"),
            "GRANT pg_read_all_data",
        ],
    );
    env.psql(&format!("grant pg_read_all_data to {role}"));
    let out = env.run(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
