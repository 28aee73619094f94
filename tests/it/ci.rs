//! Jobs on request (`pgbackd trigger`, `POST /trigger`) against a real daemon: a backup started
//! and followed, a second request joining the running one, a failing job, refusals and exit
//! codes; and the GitHub Actions and GitLab CI examples of docs/ci.md run as written.

use crate::daemon::Daemon;
use crate::harness::*;
use crate::notify::{free_port, http_get, wait_until};
use crate::wal::Archiving;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A random token in a 0600 file.
fn token_file(dir: &Path) -> (PathBuf, String) {
    let token = format!("{:032x}", rand_u128());
    let path = dir.join("trigger-token");
    std::fs::write(&path, &token).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (path, token)
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).unwrap();
    u128::from_le_bytes(b)
}

/// `pgbackd trigger ARGS` with only the environment given (no config).
fn trigger(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("trigger").args(args).stdin(Stdio::null()).env_remove("PGBACKD_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn trigger_runs_a_backup_joins_a_running_one_reports_failures_and_refuses_with_exit_codes() {
    let env = TestEnv::new("trigger");
    env.psql("create table t (id int); insert into t select generate_series(1, 1000);");
    let (token_path, token) = token_file(env.dir.path());
    let port = free_port();
    // pg_dump waits 3 s before dumping: a second request arrives while the first backup runs
    let bin = env.fake_tool("pg_dump", "pg_dump_slow_start.sh");
    let missing = format!("{}_missing", env.db);
    env.write_config(&format!(
        "databases: [{missing}]\npg_bin_dir: {}\nschedules:\n  full_backup: \"0 3 * * *\"\ndaemon:\n  catch_up: false\n\
         monitoring:\n  listen: 127.0.0.1:{port}\n  trigger:\n    token_file: {}\n",
        bin.display(),
        token_path.display()
    ));
    let daemon = Daemon::start(&env, &[]);
    wait_until("the daemon's endpoint", Duration::from_secs(30), || http_get(port, "/healthz").is_some());
    let url = format!("http://127.0.0.1:{port}");
    let auth = [("PGBACKD_URL", url.as_str()), ("PGBACKD_TRIGGER_TOKEN", token.as_str())];

    // which database? the refusal lists them, and nothing runs
    let o = trigger(&["full_backup"], &auth);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{}, {missing}", env.db)), "{}", stderr(&o));

    // a backup followed to its end; a second request while it runs follows the same run
    let first = env
        .command(&["trigger", "full_backup", "--database", &env.db, "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first backup to run", Duration::from_secs(30), || {
        http_get(port, "/status")
            .and_then(|(_, s)| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["running"].as_array().is_some_and(|r| !r.is_empty()))
    });
    let second = trigger(&["full_backup", "-d", &env.db, "--wait"], &auth);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(second.status.success(), "{}", stderr(&second));
    let id = stdout(&first).trim().to_owned();
    assert_eq!(stdout(&second).trim(), id, "both requests end with the one backup");
    assert!(stderr(&first).contains("started as run"), "{}", stderr(&first));
    assert!(stderr(&second).contains("was already running as run"), "{}", stderr(&second));
    assert!(stderr(&second).contains("succeeded in") && stderr(&second).contains(&id), "{}", stderr(&second));
    let listed = env.list_json();
    assert_eq!(listed.len(), 1, "one backup for two requests: {listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["trigger"], "request", "{listed:?}");

    // a job that fails: exit 1 and why
    let o = trigger(&["full_backup", "-d", &missing, "--wait"], &auth);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("failed after") && stderr(&o).contains("does not exist"), "{}", stderr(&o));

    // a verification, as JSON
    let o = trigger(&["verification", "-d", &env.db, "--wait", "--json"], &auth);
    assert!(o.status.success(), "{}", stderr(&o));
    let state: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(state["state"], "finished", "{state}");
    assert_eq!(state["outcome"], "success", "{state}");
    assert_eq!(state["kind"], "verification", "{state}");

    // refusals: a wrong token, an unknown job, no daemon at all
    let wrong = env.dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef").unwrap();
    let o = trigger(&["full_backup", "-d", &env.db, "--url", &url, "--token-file", wrong.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("401") && stderr(&o).contains("wrong or missing token"), "{}", stderr(&o));
    let o = trigger(&["vacuum"], &auth);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown job \"vacuum\"") && stderr(&o).contains("restore_point"), "{}", stderr(&o));
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let o = trigger(&["full_backup"], &[("PGBACKD_URL", &nobody), ("PGBACKD_TRIGGER_TOKEN", &token)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no daemon answers"), "{}", stderr(&o));
    // with the daemon's config the address and token are found there
    let o = env.run(&["trigger", "full_backup", "-d", &env.db]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim().len(), 8, "the run id: {}", stdout(&o));

    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(&token), "the token is in the daemon's log");
    assert!(log.contains("job requested over HTTP"), "{log}");
}

/// The fenced ```yaml blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<serde_json::Value> {
    markdown
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .map(|block| serde_saphyr::from_str::<serde_json::Value>(block).unwrap_or_else(|e| panic!("{e}:\n{block}")))
        .collect()
}

/// GitHub's `${{ ... }}` expressions, from `known`; an unknown one fails the test (the example and
/// this test must change together).
fn expand(text: &str, known: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("an unclosed ${{") + start;
        let expr = rest[start + 3..end].trim();
        out.push_str(known.get(expr).unwrap_or_else(|| panic!("docs/ci.md uses ${{{{ {expr} }}}}: teach this test")));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Runs one script as the CI services do (bash, -e, pipefail), with pgbackd on the PATH.
fn shell(script: &str, cwd: &Path, env: &BTreeMap<String, String>) -> Output {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("PGBACKD_CONFIG")
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The uid and gid of the PostgreSQL server's OS user when the tests run as root (the daemon
/// shares the repository with archive_command, which runs as that user).
fn server_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| {
        let o = Command::new("id").args([flag, "postgres"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().unwrap()
    };
    Some((id("-u"), id("-g")))
}

#[test]
fn the_github_actions_and_gitlab_ci_examples_run_against_a_real_daemon() {
    let doc = repo_file("docs/ci.md");
    let blocks = yaml_blocks(&doc);
    let github =
        blocks.iter().find(|b| b["jobs"]["deploy"]["steps"].is_array()).expect("a GitHub workflow in docs/ci.md");
    let gitlab = blocks.iter().find(|b| b["stages"].is_array()).expect("a GitLab CI file in docs/ci.md");

    // an archiving cluster (restore points need one) with a database `app`, and its daemon
    let a = Archiving::start("");
    a.psql("create database app");
    a.cluster.psql("app", "create table t (id int); insert into t select generate_series(1, 500);").unwrap();
    let (token_path, token) = token_file(a.dir.path());
    a.cluster.give_to_server(&token_path).unwrap();
    let reports = a.dir.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    a.cluster.give_to_server(&reports).unwrap();
    let port = free_port();
    let config = std::fs::read_to_string(&a.config).unwrap().replace(
        "monitoring: {listen: off}",
        &format!(
            "monitoring:\n  listen: 127.0.0.1:{port}\n  trigger:\n    token_file: {}\n\
             database: {{host: 127.0.0.1, port: {}, username: postgres, database: app}}\ndaemon: {{catch_up: false}}",
            token_path.display(),
            a.cluster.port
        ),
    );
    std::fs::write(&a.config, config).unwrap();
    let log = a.dir.path().join("daemon.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&a.config).arg("run").stdin(Stdio::null()).stdout(std::fs::File::create(&log).unwrap());
    cmd.stderr(Stdio::null());
    if let Some((uid, gid)) = server_user() {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut daemon = Killed(cmd.spawn().unwrap());
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the daemon's endpoint", Duration::from_secs(30), || http_get(port, "/healthz").is_some());
    let url = format!("http://127.0.0.1:{port}");
    let listed = || {
        let o = a.run(&["list", "--json"], a.dir.path());
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap_or_default()
    };
    let restore_point = |name: &str| {
        crate::wal::walk(&a.dir.path().join("repository/clusters/main/restore-points"))
            .iter()
            .any(|p| p.file_name().is_some_and(|f| f.to_string_lossy() == format!("{name}.json")))
    };

    // GitHub Actions: the job's env, each step that calls pgbackd (the others are the
    // application's own), step outputs through $GITHUB_OUTPUT
    let work = tempfile::tempdir().unwrap();
    let output_file = work.path().join("github_output");
    std::fs::write(&output_file, "").unwrap();
    let mut known: BTreeMap<String, String> = BTreeMap::from([
        ("vars.PGBACKD_URL".into(), url.clone()),
        ("secrets.PGBACKD_TRIGGER_TOKEN".into(), token.clone()),
        ("github.run_id".into(), "4242".into()),
    ]);
    let job = &github["jobs"]["deploy"];
    let mut env: BTreeMap<String, String> =
        job["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), expand(v.as_str().unwrap(), &known))).collect();
    env.insert("GITHUB_OUTPUT".into(), output_file.display().to_string());
    let mut ran = 0;
    for step in job["steps"].as_array().unwrap() {
        let Some(run) = step["run"].as_str().filter(|r| r.contains("pgbackd")) else { continue };
        if step["if"].is_string() {
            // the failure path: its expressions at least resolve
            expand(run, &known);
            continue;
        }
        let o = shell(&expand(run, &known), work.path(), &env);
        assert!(o.status.success(), "step {:?} failed:\n{}{}\n{}", step["name"], stdout(&o), stderr(&o), daemon_log());
        ran += 1;
        if let Some(id) = step["id"].as_str() {
            for line in std::fs::read_to_string(&output_file).unwrap().lines() {
                if let Some((k, v)) = line.split_once('=') {
                    known.insert(format!("steps.{id}.outputs.{k}"), v.to_owned());
                }
            }
        }
    }
    assert_eq!(ran, 3, "the backup, the restore point and the verification");
    let backup_id = known.get("steps.backup.outputs.backup_id").expect("the backup step's output").clone();
    let backups = listed();
    let b =
        backups.iter().find(|b| b["id"] == backup_id.as_str()).unwrap_or_else(|| panic!("{backup_id}: {backups:?}"));
    assert_eq!(b["trigger"], "request");
    assert!(restore_point("before-deploy-4242"), "the restore point is recorded");

    // GitLab CI: the jobs in stage order that call pgbackd, sharing a working directory (the
    // artifacts), the pipeline's variables with the URL pointing here and the masked token
    let work = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = gitlab["variables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    env.insert("PGBACKD_URL".into(), url.clone());
    env.insert("PGBACKD_TRIGGER_TOKEN".into(), token.clone());
    env.insert("CI_PIPELINE_ID".into(), "4343".into());
    let mut ran = Vec::new();
    for stage in gitlab["stages"].as_array().unwrap() {
        for (name, job) in gitlab.as_object().unwrap() {
            if job["stage"] != *stage {
                continue;
            }
            let lines: Vec<&str> = job["script"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
            if !lines.iter().any(|l| l.contains("pgbackd")) {
                continue;
            }
            let o = shell(&lines.join("\n"), work.path(), &env);
            assert!(o.status.success(), "job {name} failed:\n{}{}\n{}", stdout(&o), stderr(&o), daemon_log());
            ran.push(name.clone());
        }
    }
    assert_eq!(ran, ["backup-before-deploy", "verify-after-deploy"]);
    let saved = std::fs::read_to_string(work.path().join("backup_id.txt")).unwrap().trim().to_owned();
    assert!(listed().iter().any(|b| b["id"] == saved.as_str() && b["trigger"] == "request"), "{saved}");
    assert!(restore_point("before-deploy-4343"), "the restore point is recorded");
    let verifications: Vec<serde_json::Value> = std::fs::read_dir(reports.join("backup_verification"))
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert_eq!(verifications.len(), 2, "{verifications:?}");
    assert!(verifications.iter().all(|v| v["outcome"] == "success" && v["trigger"] == "request"), "{verifications:?}");

    crate::harness::send_signal(daemon.0.id(), libc::SIGTERM, false);
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{}", daemon_log());
    assert!(!daemon_log().contains(&token), "the token is in the daemon's log");
}
