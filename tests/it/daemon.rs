//! The real daemon binary against the test cluster: scheduled backups, SIGTERM, SIGHUP, the stall
//! guard, status and healthcheck, and no secret in anything it writes.

use crate::harness::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Daemon {
    pub(crate) child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    pub(crate) fn start(env: &TestEnv, vars: &[(&str, &str)]) -> Daemon {
        let log = env.dir.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&env.config)
            .arg("run")
            .env("REAL_PG_BIN", real_pg_bin())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Daemon { child: cmd.spawn().unwrap(), log }
    }

    fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig, false);
    }

    /// SIGTERM, then the exit code and how long the stop took.
    pub(crate) fn stop(mut self) -> (Option<i32>, Duration, String) {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), start.elapsed(), std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A test that panics must not leave its daemon running (scheduling jobs into a deleted
/// directory while the other tests run).
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reports(dir: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = std::fs::read_dir(dir.join("backup"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by_key(|r| r["started_at"].as_str().unwrap_or("").to_owned());
    out
}

fn pgrep(pattern: &str) -> bool {
    !Command::new("pgrep").args(["-f", pattern]).output().unwrap().stdout.is_empty()
}

#[test]
fn scheduled_backups_to_local_and_s3_status_healthcheck_and_no_secret_anywhere() {
    use age::secrecy::ExposeSecret;
    let env = TestEnv::new("daemon");
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g;");
    // every kind of secret the config can hold: the database password, S3 keys, an age identity
    // and a passphrase
    let secret = "Daemon-Secret-Pa55word";
    let s3 = crate::s3_servers::s3s();
    let bucket = s3.bucket();
    let identity = age::x25519::Identity::generate().to_string().expose_secret().to_owned();
    let passphrase = "daemon test passphrase, long enough";
    // notification URLs and tokens are secrets too (deliveries fail here: nothing listens)
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let slack_url = format!("http://127.0.0.1:{dead}/services/T0/B0/Slack-Secret-Path");
    let hook_token = "Webhook-Secret-Token";
    let mport = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (id_file, key_file) = (env.dir.path().join("identity.txt"), env.dir.path().join("passphrase"));
    std::fs::write(&id_file, format!("{identity}\n")).unwrap();
    std::fs::write(&key_file, format!("{passphrase}\n")).unwrap();
    let bin = env.fake_bin("pg_dump_record_argv.sh");
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!(
        "pg_bin_dir: {}\nschedules:\n  full_backup: \"*/3 * * * * *\"\n  verification: \"*/4 * * * * *\"\n\
         \x20 test_restore: \"*/5 * * * * *\"\ndaemon:\n  catch_up: false\nreports:\n  dir: {}\nstorage:\n{}\
         encryption:\n  enabled: true\n  key_file: {}\n  identity_file: {}\n  passphrase_work_factor: 10\n\
         notifications:\n  attempts: 1\n  slack:\n    enabled: true\n    webhook_url: {slack_url}\n    events: [success]\n\
         \x20 webhooks:\n    - name: ops\n      url: {slack_url}\n      headers: {{Authorization: \"Bearer {hook_token}\"}}\n\
         \x20     events: [success]\nmonitoring:\n  listen: 127.0.0.1:{mport}\n  max_age: 1h\n",
        bin.display(),
        reports_dir.display(),
        s3.target_yaml("offsite", &bucket, ""),
        key_file.display(),
        id_file.display(),
    ));
    let secret_file = env.dir.path().join("pg_password");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "  username: postgres\n",
        &format!("  username: postgres\n  password_file: {}\n", secret_file.display()),
    );
    std::fs::write(&env.config, text).unwrap();
    let record = env.dir.path().to_string_lossy().into_owned();
    let expected = secret_file.to_string_lossy().into_owned();
    let vars = [("RECORD_DIR", record.as_str()), ("EXPECTED_PASSWORD_FILE", expected.as_str())];
    let daemon = Daemon::start(&env, &vars);

    wait_until("two scheduled backups", Duration::from_secs(60), || env.list_json().len() >= 2);
    let list = env.list_json();
    assert!(list.iter().all(|b| b["trigger"] == "schedule"), "{list:?}");
    assert!(list.iter().all(|b| b["encryption"]["mode"] == "passphrase"), "{list:?}");
    wait_until("two reports", Duration::from_secs(10), || reports(&reports_dir).len() >= 2);
    let r = reports(&reports_dir);
    assert!(r.iter().all(|r| r["outcome"] == "success" && r["job_kind"] == "full_backup"), "{r:?}");
    assert!(r.iter().any(|r| r["backup_id"] == list[0]["id"]));
    // the scheduled checks read the encrypted backups (with the passphrase)
    wait_until("a passed verification and test restore", Duration::from_secs(60), || {
        let listed = env.list_json();
        listed.iter().any(|b| b["verify_outcome"] == "passed")
            && listed.iter().any(|b| b["test_restore_outcome"] == "passed")
    });

    let status = env.run(&["status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["schedules"][0]["kind"], "full_backup");
    assert!(s["schedules"][0]["next_run"].is_string());
    assert!(s["databases"][&env.db]["last_full_success"].is_string());
    let human = env.run(&["status"]);
    assert!(stdout(&human).contains("running"), "{}", stdout(&human));
    let health = env.run(&["healthcheck"]);
    assert!(health.status.success(), "{}", stdout(&health));
    // the status board takes in a finished verification or test restore a moment after its
    // manifest annotation that `list` shows: scrape once /metrics has both results
    let scrape = || crate::s3_servers::http_get(&format!("127.0.0.1:{mport}"), "/metrics").unwrap_or_default();
    wait_until("the verification and test restore in /metrics", Duration::from_secs(30), || {
        let m = scrape();
        m.contains("pgbackd_verification_success{") && m.contains("pgbackd_restore_duration_seconds{")
    });
    let metrics = scrape();
    assert!(metrics.contains("pgbackd_up 1"), "{metrics}");
    // after backups, a verification and a test restore: every dashboard panel finds its series
    // and labels in a real scrape
    crate::notify::assert_dashboard_matches(&metrics);
    let status_http = crate::s3_servers::http_get(&format!("127.0.0.1:{mport}"), "/status").unwrap_or_default();
    let listing = env.run(&["list"]);
    let check = env.run(&["check-config"]);

    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // a stopped daemon: `status` says so at once and exits 3 (LSB "not running"), JSON too
    let stopped = env.run(&["status", "--json"]);
    assert_eq!(stopped.status.code(), Some(3), "{}", stdout(&stopped));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stopped.stdout).unwrap()["running"], false);
    let stopped = env.run(&["status"]);
    assert_eq!(stopped.status.code(), Some(3));
    assert!(stdout(&stopped).contains("NOT RUNNING (stopped"), "{}", stdout(&stopped));
    assert!(log.contains("\"message\":\"daemon started\"") && log.contains("\"message\":\"job finished\""), "{log}");
    assert!(log.contains("\"run_id\""), "job events carry the run id: {log}");
    // values as values, never Rust's Debug text (`Some(...)`, `None`)
    for line in log.lines().filter(|l| l.contains("daemon started")) {
        assert!(line.contains("\"next_run\":\"20") || line.contains("\"next_run\":\"none\""), "{line}");
    }
    for out in [&log, &stdout(&listing), &stdout(&check), &status_http] {
        assert!(!out.contains("Some(") && !out.contains(":None"), "Debug formatting in output: {out}");
    }
    let argv = std::fs::read_to_string(env.dir.path().join("argv")).unwrap();
    let environ = std::fs::read_to_string(env.dir.path().join("environ")).unwrap();
    assert_eq!(std::fs::read_to_string(env.dir.path().join("env")).unwrap().trim(), "ok");
    for f in std::fs::read_to_string(env.dir.path().join("pgpassfiles")).unwrap().lines() {
        assert!(!Path::new(f).exists(), "the password file {f} was left behind");
    }

    // no secret appears anywhere: logs, reports, status, list, the children's argv and
    // environment, the local repository and every object in the bucket
    let mut haystacks = vec![
        ("log".to_owned(), log.clone()),
        ("argv".into(), argv),
        ("environment".into(), environ),
        ("status".into(), stdout(&status)),
        ("status text".into(), stdout(&human)),
        ("list".into(), stdout(&listing) + &stderr(&listing)),
        ("check-config".into(), stdout(&check) + &stderr(&check)),
        ("metrics".into(), metrics),
        ("status endpoint".into(), status_http),
    ];
    for f in files_under(&reports_dir).into_iter().chain(env.repository_files()) {
        haystacks.push((f.display().to_string(), String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned()));
    }
    let client = s3.client();
    for key in s3.keys(&bucket) {
        let body = crate::s3_servers::rt().block_on(async {
            let o = client.get_object().bucket(&bucket).key(&key).send().await.unwrap();
            o.body.collect().await.unwrap().into_bytes()
        });
        haystacks.push((format!("s3 {key}"), String::from_utf8_lossy(&body).into_owned()));
    }
    assert!(haystacks.len() > 12, "{:?}", haystacks.iter().map(|h| &h.0).collect::<Vec<_>>());
    assert!(log.contains("notification failed"), "{log}");
    for value in [secret, s3.access_key, s3.secret_key, identity.as_str(), passphrase, "Slack-Secret-Path", hook_token]
    {
        for (what, text) in &haystacks {
            assert!(!text.contains(value), "a secret ({}...) leaked into {what}", &value[..4]);
        }
    }
}

#[test]
fn sigterm_during_a_hanging_dump_stops_within_the_grace_period_and_leaves_nothing() {
    let env = TestEnv::new("daemonterm");
    env.psql("create table t (id int); insert into t select generate_series(1, 100000);");
    let bin = env.fake_bin("pg_dump_hang_daemon.sh");
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!(
        "pg_bin_dir: {}\nschedules:\n  full_backup: \"0 1 * * *\"\ndaemon:\n  shutdown_grace: 2s\nreports:\n  dir: {}\n",
        bin.display(),
        reports_dir.display()
    ));
    // no backup yet: catch-up starts one at once, and it hangs
    let daemon = Daemon::start(&env, &[]);
    wait_until("the catch-up dump to start", Duration::from_secs(30), || pgrep("sleep 4323"));
    let (code, took, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // grace (2 s) plus the child's SIGTERM; well under the 10 s SIGKILL fallback
    assert!(took < Duration::from_secs(12), "stopping took {took:?}");
    assert!(log.contains("shutdown grace period over"), "{log}");
    assert!(!pgrep("sleep 4323"), "pg_dump is still running");
    assert!(env.list_json().is_empty());
    assert!(env.repository_files().is_empty(), "{:?}", env.repository_files());
    let r = reports(&reports_dir);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["outcome"], "cancelled");
    assert_eq!(r[0]["trigger"], "catch_up");
    // the repository itself remembers how the attempt ended
    assert_eq!(env.attempt_outcome("full_backup").as_deref(), Some("cancelled"));
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_schedules() {
    let env = TestEnv::new("daemonhup");
    env.psql("create table t (id int); insert into t values (1);");
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!(
        "schedules:\n  full_backup: \"*/2 * * * * *\"\ndaemon:\n  catch_up: false\nreports:\n  dir: {}\n",
        reports_dir.display()
    ));
    let daemon = Daemon::start(&env, &[]);
    wait_until("a first backup", Duration::from_secs(30), || !env.list_json().is_empty());
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, good.replace("\"*/2 * * * * *\"", "\"99 * * * *\"")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the reload to be refused", Duration::from_secs(10), || {
        daemon.log().contains("configuration not reloaded")
    });
    // key material is checked at load too: a recipient that does not parse is refused the same way
    std::fs::write(&env.config, format!("{good}encryption:\n  enabled: true\n  recipients: [age1notarealkey]\n"))
        .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the reload with a bad key to be refused", Duration::from_secs(10), || {
        daemon.log().contains("encryption.recipients")
    });
    // a readable config again for the listing helper (the daemon is not told)
    std::fs::write(&env.config, &good).unwrap();
    let before = env.list_json().len();
    wait_until("another backup on the old schedule", Duration::from_secs(30), || env.list_json().len() > before);
    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(log.contains("schedules.full_backup") && log.contains("99 * * * *"), "{log}");
    assert_eq!(log.matches("configuration not reloaded").count(), 2, "{log}");
    let backups = env.list_json();
    assert!(
        backups.iter().all(|b| b["encryption"].is_null()),
        "backups after the refused reloads use the old config: {backups:?}"
    );
}

#[test]
fn scheduled_verification_and_test_restore_run_and_report() {
    let env = TestEnv::new("daemonverify");
    env.psql("create table t (id int); insert into t select generate_series(1, 1000);");
    env.backup();
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!(
        "schedules:\n  full_backup: \"0 1 * * *\"\n  verification: \"*/2 * * * * *\"\n  test_restore: \"*/3 * * * * *\"\n\
         daemon:\n  catch_up: false\nreports:\n  dir: {}\n",
        reports_dir.display()
    ));
    let daemon = Daemon::start(&env, &[]);
    let count = |sub: &str| files_under(&reports_dir.join(sub)).len();
    wait_until("a verification and a test restore", Duration::from_secs(60), || {
        count("backup_verification") >= 1 && count("database_restore") >= 1
    });
    let (code, _, _) = daemon.stop();
    assert_eq!(code, Some(0));
    let listed = env.list_json();
    assert_eq!(listed[0]["verify_outcome"], "passed");
    assert_eq!(listed[0]["verify_mode"], "deep");
    assert_eq!(listed[0]["test_restore_outcome"], "passed");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports_dir.join("status.json")).unwrap()).unwrap();
    let db = &status["databases"][&env.db];
    assert!(db["last_restore_seconds"].as_f64().unwrap() > 0.0, "{status}");
    assert_eq!(db["last_verification_outcome"], "success");
}

#[test]
fn scheduled_retention_deletes_by_the_policy() {
    let env = TestEnv::new("daemonret");
    env.psql("create table t (id int); insert into t values (1);");
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!("reports:\n  dir: {}\n", reports_dir.display()));
    env.backup();
    env.backup();
    env.backup();
    env.write_config(&format!(
        "retention:\n  full_backup:\n    keep_last: 1\n    min_keep: 1\nschedules:\n  full_backup: \"0 1 * * *\"\n\
         \x20 retention: \"*/2 * * * * *\"\ndaemon:\n  catch_up: false\nreports:\n  dir: {}\n",
        reports_dir.display()
    ));
    let daemon = Daemon::start(&env, &[]);
    wait_until("a retention run", Duration::from_secs(30), || {
        !files_under(&reports_dir.join("backup_retention")).is_empty()
    });
    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0));
    assert_eq!(env.list_json().len(), 1, "{log}");
    assert!(log.contains("backup deleted by retention"), "{log}");
}

#[test]
fn a_stalled_dump_is_cancelled_by_the_stall_guard() {
    let env = TestEnv::new("daemonstall");
    env.psql("create table t (id int); insert into t select generate_series(1, 100000);");
    let bin = env.fake_bin("pg_dump_hang_daemon.sh");
    let reports_dir = env.dir.path().join("reports");
    env.write_config(&format!(
        "pg_bin_dir: {}\nbackup:\n  stall_timeout: 2s\nschedules:\n  full_backup: \"0 1 * * *\"\nreports:\n  dir: {}\n",
        bin.display(),
        reports_dir.display()
    ));
    let daemon = Daemon::start(&env, &[("HANG_SECONDS", "4324")]);
    wait_until("the stalled run to fail", Duration::from_secs(40), || !reports(&reports_dir).is_empty());
    let r = reports(&reports_dir);
    assert_eq!(r[0]["outcome"], "failed");
    assert!(r[0]["error"].as_str().unwrap().contains("stall_timeout"), "{:?}", r[0]);
    assert!(!pgrep("sleep 4324"), "the stalled pg_dump is still running");
    let (code, _, _) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(env.list_json().is_empty());
    assert!(env.repository_files().is_empty());
}

#[test]
fn healthcheck_and_readyz_agree_from_the_first_status_the_daemon_writes() {
    let env = TestEnv::new("daemon_fresh");
    env.psql("create table t (id int); insert into t select generate_series(1, 100);");
    let id = env.backup();
    let mport = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // nothing runs for hours: only the start-up status says the backup is fresh
    env.write_config(&format!(
        "schedules:\n  full_backup: \"0 3 * * *\"\ndaemon:\n  catch_up: false\nmonitoring:\n  listen: 127.0.0.1:{mport}\n"
    ));
    // a status file left by an earlier daemon must not count
    let status_file = env.dir.path().join("reports").join("status.json");
    let _ = std::fs::remove_file(&status_file);
    let daemon = Daemon::start(&env, &[]);
    let pid = daemon.child.id();
    wait_until("the daemon's first status", Duration::from_secs(30), || {
        std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["pid"] == pid)
    });
    let health = env.run(&["healthcheck"]);
    let ready = crate::s3_servers::http_get(&format!("127.0.0.1:{mport}"), "/readyz").unwrap_or_default();
    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(health.status.success(), "healthcheck right after start: {}{}", stdout(&health), stderr(&health));
    assert!(ready.contains("ready"), "/readyz right after start: {ready}");
    let status: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(status["databases"][&env.db]["last_full_backup_id"], id.as_str(), "{status}");
}
