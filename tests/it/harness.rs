//! Test harness: one throwaway PostgreSQL cluster per test binary (stopped at exit, and by a
//! watchdog if the binary dies), a fresh database and repository per test, and a runner for the
//! real `pgbackd` binary.

use pgbackd::pg::cluster::Cluster;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(c) = CLUSTER.get() {
        c.stop();
    }
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let c = Cluster::start(&std::env::temp_dir()).expect("starting the test cluster");
        let group = pgbackd::pg::cluster::PASSWORD_ROLE;
        c.psql("postgres", &format!("create role {group} nologin")).expect("creating the password group role");
        // SAFETY: registers a plain extern "C" function; it only reads a initialized static.
        // (atexit has no safe wrapper: one of the reviewed unsafe blocks.)
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        c
    })
}

/// Sends signal `sig` (`libc::SIGTERM`, ...) to process `pid`, or to its group with `group`.
pub fn send_signal(pid: u32, sig: i32, group: bool) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let (pid, sig) = (Pid::from_raw(pid as i32).expect("a pid"), Signal::from_named_raw(sig).expect("a signal"));
    let _ = if group { kill_process_group(pid, sig) } else { kill_process(pid, sig) };
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

pub const BIN: &str = env!("CARGO_BIN_EXE_pgbackd");

/// The real PostgreSQL client binaries (for fake pg_dump scripts to wrap).
/// A file of the repository (config/, deploy/, ...), as text.
pub fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The docker secrets a config reads: the names after each `/run/secrets/` (prose in comments,
/// such as "/run/secrets)", is not a name).
pub fn docker_secrets(config: &str) -> Vec<&str> {
    config
        .split("/run/secrets/")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next())
        .filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

pub fn real_pg_bin() -> PathBuf {
    cluster().bin().to_path_buf()
}

/// One test's world: a database on the shared cluster, a repository, a config file.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub config: PathBuf,
}

impl TestEnv {
    /// A new, empty database `name_<random>` and a config backing it up into a new repository.
    pub fn new(name: &str) -> TestEnv {
        let c = cluster();
        let db = unique(name);
        c.psql("postgres", &format!("create database {db}")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgbackd.yaml");
        let env = TestEnv { dir, db, config };
        env.write_config("");
        env
    }

    pub fn repository(&self) -> PathBuf {
        self.dir.path().join("repository")
    }

    /// Rewrites the config with `extra` YAML appended (top-level keys).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(true, extra);
    }

    /// Rewrites the config, with or without the local repository target.
    pub fn write_config_with(&self, local: bool, extra: &str) {
        let c = cluster();
        let local = if local { format!("local_backup_dir: {}\n", self.repository().display()) } else { String::new() };
        // reports stay in the test's directory unless the test says otherwise
        let reports = if extra.contains("reports:") {
            String::new()
        } else {
            format!("reports:\n  dir: {}\n", self.dir.path().join("reports").display())
        };
        // daemons in parallel tests must not all listen on the default port
        let reports =
            if extra.contains("monitoring:") { reports } else { format!("{reports}monitoring:\n  listen: off\n") };
        let text = format!(
            "database:\n  host: {}\n  port: {}\n  username: postgres\n  database: {}\n{local}{reports}{extra}",
            c.socket_dir(),
            c.port,
            self.db,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Makes the config log in over TCP as a new role `<database>_pw` that must give `password`
    /// (a member of the cluster's password group); the config reads it from `${TEST_DB_PASSWORD}`.
    /// Returns the role.
    pub fn use_password_role(&self, password: &str) -> String {
        let role = format!("{}_pw", self.db);
        let group = pgbackd::pg::cluster::PASSWORD_ROLE;
        self.psql(&format!("create role {role} login superuser in role {group} password '{password}'"));
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(&format!("  host: {}\n", cluster().socket_dir()), "  host: 127.0.0.1\n")
            .replace("  username: postgres\n", &format!("  username: {role}\n  password: ${{TEST_DB_PASSWORD}}\n"));
        std::fs::write(&self.config, text).unwrap();
        role
    }

    pub fn psql(&self, sql: &str) -> String {
        cluster().psql(&self.db, sql).unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// pgbackd with this config and `args`, for fake tools to find the real ones (`REAL_PG_BIN`),
    /// stdin closed: to spawn (the caller chooses stdout and stderr) or to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args).env("REAL_PG_BIN", real_pg_bin()).stdin(Stdio::null());
        cmd
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running pgbackd")
    }

    /// Runs a backup and returns its id (panics with pgbackd's stderr if it fails).
    pub fn backup(&self) -> String {
        let out = self.run(&["backup", "--kind", "full"]);
        assert!(out.status.success(), "backup failed:\n{}", stderr(&out));
        let id = stdout(&out).trim().to_owned();
        assert!(id.contains("-full-"), "unexpected backup output {id:?}");
        id
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", "--json"]);
        assert!(out.status.success(), "list failed:\n{}", stderr(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("list --json is a JSON array")
    }

    /// Every file in the repository but the records of backup attempts (there must be none after
    /// a failed first backup).
    pub fn repository_files(&self) -> Vec<PathBuf> {
        files_under(&self.repository()).into_iter().filter(|f| !f.to_string_lossy().contains("/.attempts/")).collect()
    }

    /// The recorded outcome of the newest attempt of backup job `job` of this test's database.
    pub fn attempt_outcome(&self, job: &str) -> Option<String> {
        let path = self.repository().join(&self.db).join(".attempts").join(format!("{job}.json"));
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        record["outcome"].as_str().map(str::to_owned)
    }

    /// A bin dir whose pg_dump is the fixture `script`, other tools the real ones.
    pub fn fake_bin(&self, script: &str) -> PathBuf {
        self.fake_tool("pg_dump", script)
    }

    /// A bin dir whose `tool` is the fixture `script`, the other tools the real ones.
    pub fn fake_tool(&self, tool: &str, script: &str) -> PathBuf {
        let dir = self.dir.path().join(format!("bin-{script}"));
        std::fs::create_dir_all(&dir).unwrap();
        for other in ["pg_dump", "pg_dumpall", "pg_restore", "psql"].into_iter().filter(|t| *t != tool) {
            let _ = std::os::unix::fs::symlink(real_pg_bin().join(other), dir.join(other));
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(script);
        std::fs::copy(&src, dir.join(tool)).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        dir
    }
}

/// After a test edits `manifest.json` in `backup_dir` on purpose, makes its digest match again: a
/// consistent forgery (as a bug or an attacker with write access could make), for tests of what
/// the other checks (row counts, MACs, pg_restore) catch.
pub fn reseal(backup_dir: &Path) {
    use sha2::Digest;
    for e in std::fs::read_dir(backup_dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("manifest.sha256.") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(backup_dir.join("manifest.json")).unwrap()));
    std::fs::write(backup_dir.join(format!("manifest.sha256.{sha}")), b"").unwrap();
}

pub fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// md5 of a table's ordered rows in `db`.
pub fn fingerprint(db: &str, table: &str) -> String {
    cluster()
        .psql(
            db,
            &format!("select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) from only {table} t"),
        )
        .unwrap()
}

/// Every user table of `db` as `schema.table`.
pub fn user_tables(db: &str) -> Vec<String> {
    cluster()
        .psql(
            db,
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables \
             where schemaname not in ('pg_catalog','information_schema') order by 1",
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}
