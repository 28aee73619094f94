//! WAL archiving: a real PostgreSQL 15 cluster whose archive_command is `pgbackd archive-push %p`,
//! and `archive-get` as restore_command would call it. Each test starts its own cluster (the
//! shared one cannot turn archive_mode on).

use crate::harness::BIN;
use crate::s3_servers::localstack;
use pgbackd::pg::cluster::Cluster;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Archiving {
    pub(crate) cluster: Cluster,
    pub(crate) config: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

impl Archiving {
    /// A cluster archiving into a new local repository with `extra` appended to the config.
    pub(crate) fn start(extra: &str) -> Archiving {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = dir.path().join("pgbackd.yaml");
        let repository = dir.path().join("repository");
        std::fs::create_dir(&repository).unwrap();
        std::fs::write(
            &config,
            format!(
                "local_backup_dir: {}\nreports: {{dir: {}}}\nmonitoring: {{listen: off}}\nwal: {{name: main}}\n{extra}",
                repository.display(),
                dir.path().join("reports").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let command = format!("{BIN} -c {} archive-push %p", config.display());
        let cluster = Cluster::start_with(
            dir.path(),
            &[
                ("wal_level", "replica"),
                ("archive_mode", "on"),
                ("archive_command", &command),
                ("archive_timeout", "0"),
            ],
        )
        .expect("an archiving cluster");
        cluster.give_to_server(&repository).unwrap();
        // base backups and streaming connect to it
        let mut text = std::fs::read_to_string(&config).unwrap();
        text = text.replace(
            "wal: {name: main}",
            &format!("wal: {{name: main, server: {{host: 127.0.0.1, port: {}, username: postgres}}}}", cluster.port),
        );
        std::fs::write(&config, text).unwrap();
        Archiving { cluster, config, dir }
    }

    /// A cluster archiving into an encrypted repository on a local directory and LocalStack's S3:
    /// the identity outside the server's reach, a copy of it the server's user can read, the bucket.
    pub(crate) fn encrypted_on_s3() -> Encrypted {
        let keys = tempfile::tempdir().unwrap();
        let identity = keys.path().join("identity.txt");
        let keygen = Command::new(BIN).args(["keygen", "-o"]).arg(&identity).output().unwrap();
        assert!(keygen.status.success(), "{}", stderr(&keygen));
        let public = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
        let server = localstack();
        let bucket = server.bucket();
        let a = Archiving::start(&format!(
            "encryption:\n  enabled: true\n  recipients: [{public}]\nstorage:\n{}",
            server.target_yaml("offsite", &bucket, "")
        ));
        let readable = a.dir.path().join("identity.txt");
        std::fs::copy(&identity, &readable).unwrap();
        a.cluster.give_to_server(&readable).unwrap();
        Encrypted { a, keys, identity, readable, server, bucket }
    }

    /// `pgbackd ARGS` as the server's OS user (the repository is the server's: archive_command
    /// writes into it too).
    pub(crate) fn run_as_server(&self, args: &[&str]) -> Output {
        let config = self.config.to_string_lossy().into_owned();
        let mut all = vec!["-c", config.as_str(), "--log-format", "json"];
        all.extend_from_slice(args);
        as_server(Path::new(BIN), &all)
    }

    pub(crate) fn psql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql).unwrap()
    }

    /// Writes some WAL and switches to a new segment; returns the name of the segment switched from.
    pub(crate) fn switch(&self) -> String {
        switch_wal(&self.cluster)
    }

    /// Waits until PostgreSQL reports `segment` archived (or fails showing the server log).
    pub(crate) fn wait_archived(&self, segment: &str) {
        let start = Instant::now();
        loop {
            let last = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if last.as_str() >= segment {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.cluster.dir.join("server.log")).unwrap_or_default();
                panic!("{segment} not archived after 60 s (last: {last:?}); server log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn system_id(&self) -> String {
        self.psql("select system_identifier from pg_control_system()")
    }

    pub(crate) fn run(&self, args: &[&str], cwd: &Path) -> Output {
        Command::new(BIN).arg("-c").arg(&self.config).args(args).current_dir(cwd).stdin(Stdio::null()).output().unwrap()
    }

    /// Every stored object under the cluster's WAL archive, as paths.
    pub(crate) fn stored(&self) -> Vec<PathBuf> {
        let mut out = walk(&self.dir.path().join("repository/clusters/main/wal"));
        out.sort();
        out
    }

    pub(crate) fn stored_copy(&self, file: &str) -> PathBuf {
        let found: Vec<PathBuf> = self
            .stored()
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{file}-")))
            .collect();
        assert_eq!(found.len(), 1, "one copy of {file} expected: {found:?}");
        found.into_iter().next().unwrap()
    }
}

/// [`Archiving::encrypted_on_s3`].
pub(crate) struct Encrypted {
    pub(crate) a: Archiving,
    /// Holds `identity`: keep it bound while the identity is used.
    pub(crate) keys: tempfile::TempDir,
    pub(crate) identity: PathBuf,
    pub(crate) readable: PathBuf,
    pub(crate) server: &'static crate::s3_servers::S3Server,
    pub(crate) bucket: String,
}

/// Writes some WAL on `cluster` and switches to a new segment; returns the name of the segment
/// switched from.
pub(crate) fn switch_wal(cluster: &Cluster) -> String {
    let psql = |sql: &str| cluster.psql("postgres", sql).unwrap();
    psql(
        "create table if not exists churn (v text); insert into churn select md5(g::text) from generate_series(1, 20000) g",
    );
    let lsn = psql("select pg_switch_wal()");
    psql(&format!("select pg_walfile_name('{lsn}')"))
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn archive_command_stores_every_segment_as_zstd_named_by_its_hash_and_archive_get_returns_it() {
    let a = Archiving::start("");
    let first = a.switch();
    let second = a.switch();
    a.wait_archived(&second);
    let sysid = a.system_id();
    for seg in [&first, &second] {
        let stored = a.stored_copy(seg);
        let key = stored.strip_prefix(a.dir.path().join("repository")).unwrap().to_string_lossy().into_owned();
        assert!(key.starts_with(&format!("clusters/main/wal/{sysid}/{}/{seg}-", &seg[..16])), "{key}");
        assert!(key.ends_with(".zst"), "{key}");
        // a plain zstd file: `zstd -d` gives the segment, whose SHA-256 the name carries
        let raw = Command::new("zstd").args(["-dc"]).arg(&stored).output().unwrap();
        assert!(raw.status.success());
        assert_eq!(raw.stdout.len(), 16 << 20);
        assert!(key.contains(&sha256(&raw.stdout)), "{key}");
        assert!(std::fs::metadata(&stored).unwrap().len() < (16 << 20) / 2, "compressed");

        // restore_command runs in the data directory: the system id comes from its pg_control
        let dest = a.dir.path().join(format!("got-{seg}"));
        let got = a.run(&["archive-get", seg, &dest.to_string_lossy()], &a.cluster.data());
        assert!(got.status.success(), "{}", stderr(&got));
        assert_eq!(std::fs::read(&dest).unwrap(), raw.stdout);
    }
    // past the end of the archive (PostgreSQL asks on purpose): exit 1, saying so, nothing written
    let dest = a.dir.path().join("none");
    let missing = a.run(&["archive-get", "0000000100000000000000FE", &dest.to_string_lossy()], &a.cluster.data());
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("0000000100000000000000FE: not in the WAL archive"), "{}", stderr(&missing));
    assert!(!dest.exists());
    // the same with the system id given, from anywhere; another cluster's id finds nothing
    let dest = a.dir.path().join("by-id");
    let by_id = a.run(&["archive-get", &first, &dest.to_string_lossy(), "--system-id", &sysid], Path::new("/"));
    assert!(by_id.status.success(), "{}", stderr(&by_id));
    let other = a.run(&["archive-get", &first, &dest.to_string_lossy(), "--system-id", "42"], Path::new("/"));
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
}

#[test]
fn a_second_push_of_the_same_file_succeeds_and_a_different_one_is_refused_without_overwriting() {
    let a = Archiving::start("");
    let seg = a.switch();
    a.wait_archived(&seg);
    let stored = a.stored_copy(&seg);
    let before = std::fs::read(&stored).unwrap();

    // a copy of the archived segment in a pg_wal directory of its own (as after a crash, when
    // PostgreSQL pushes a segment again)
    let wal = a.dir.path().join("again/pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    let path = wal.join(&seg);
    let got = a.run(&["archive-get", &seg, &path.to_string_lossy(), "--system-id", &a.system_id()], Path::new("/"));
    assert!(got.status.success(), "{}", stderr(&got));
    let again = a.run(&["archive-push", &path.to_string_lossy()], Path::new("/"));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(a.stored(), vec![stored.clone()], "nothing new stored");

    // the same name, different contents after the header: refused, naming both hashes and the key
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100_000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let conflict = a.run(&["archive-push", &path.to_string_lossy()], Path::new("/"));
    assert_eq!(conflict.status.code(), Some(2), "{}", stderr(&conflict));
    let msg = stderr(&conflict);
    assert!(msg.contains(&format!("{seg} is already archived")) && msg.contains("different contents"), "{msg}");
    assert!(msg.contains(&sha256(&bytes)) && msg.contains("nothing was overwritten"), "{msg}");
    assert!(msg.contains(&stored.file_name().unwrap().to_string_lossy().into_owned()), "{msg}");
    assert_eq!(std::fs::read(&stored).unwrap(), before, "the stored copy is untouched");

    // a file renamed to another segment's name is refused by its own header
    let renamed = wal.join("0000000100000000000000F0");
    std::fs::write(&renamed, &bytes).unwrap();
    let wrong = a.run(&["archive-push", &renamed.to_string_lossy()], Path::new("/"));
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains(&format!("its header says it is segment {seg}")), "{}", stderr(&wrong));
    // and something that is not a WAL file at all
    let junk = wal.join("notes.txt");
    std::fs::write(&junk, "x").unwrap();
    let junk = a.run(&["archive-push", &junk.to_string_lossy()], Path::new("/"));
    assert_eq!(junk.status.code(), Some(2));
    assert!(stderr(&junk).contains("not a file PostgreSQL archives"), "{}", stderr(&junk));
}

#[test]
fn history_and_backup_files_are_archived_under_the_data_directorys_system_id() {
    let a = Archiving::start("");
    // pg_basebackup makes the server archive a backup history file (.backup)
    // (it waits for its last segment to be archived: bounded, so a broken archive_command fails the test)
    let out = Command::new("timeout")
        .arg("120")
        .arg(a.cluster.bin().join("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-p", &a.cluster.port.to_string(), "-U", "postgres", "-D", "-", "-Ft", "-X", "none"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let seg = a.switch();
    a.wait_archived(&seg);
    let backup = a.stored().into_iter().find(|p| p.to_string_lossy().contains(".backup-")).expect("a .backup file");
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    let file = &name[..name.find(".backup").unwrap() + 7];
    let dest = a.dir.path().join("label");
    let got = a.run(&["archive-get", file, &dest.to_string_lossy()], &a.cluster.data());
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(String::from_utf8_lossy(&std::fs::read(&dest).unwrap()).contains("START WAL LOCATION"));

    // a timeline history file has no header: its cluster is the data directory's (--pgdata)
    let history = a.dir.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let data = a.cluster.data();
    let pushed =
        a.run(&["archive-push", &history.to_string_lossy(), "--pgdata", &data.to_string_lossy()], Path::new("/"));
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let stored = a.stored_copy("00000002.history");
    assert!(stored.parent().unwrap().ends_with(format!("wal/{}", a.system_id())), "{}", stored.display());
    // without a data directory to read, it says how to give one
    let lost = a.run(&["archive-push", &history.to_string_lossy()], Path::new("/"));
    assert_eq!(lost.status.code(), Some(2));
    assert!(stderr(&lost).contains("--pgdata"), "{}", stderr(&lost));
}

#[test]
fn a_corrupt_stored_copy_is_refused_by_name_and_a_second_target_serves_it() {
    let second = tempfile::tempdir().unwrap();
    let a =
        Archiving::start(&format!("storage:\n  - {{name: second, type: local, path: {}}}\n", second.path().display()));
    a.cluster.give_to_server(second.path()).unwrap();
    std::fs::set_permissions(second.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let seg = a.switch();
    a.wait_archived(&seg);
    let stored = a.stored_copy(&seg);
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();
    // the first target's copy is damaged: the second one's is used
    let dest = a.dir.path().join("seg");
    let got = a.run(&["archive-get", &seg, &dest.to_string_lossy()], &a.cluster.data());
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(stderr(&got).contains("damaged WAL copy"), "{}", stderr(&got));
    assert!(a.stored_copy(&seg).to_string_lossy().contains(&sha256(&std::fs::read(&dest).unwrap())));
    // with the second copy gone too: an error naming the damaged key (not "not archived")
    for e in walk(second.path()) {
        std::fs::remove_file(e).unwrap();
    }
    std::fs::remove_file(&dest).unwrap();
    let bad = a.run(&["archive-get", &seg, &dest.to_string_lossy()], &a.cluster.data());
    // above 125: PostgreSQL stops the recovery instead of taking the damaged file for missing
    assert_eq!(bad.status.code(), Some(126), "{}", stderr(&bad));
    let msg = stderr(&bad);
    assert!(msg.contains("no copy can be used") && msg.contains(&seg) && msg.contains("stops the recovery"), "{msg}");
    assert!(!dest.exists());
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn encrypted_wal_needs_the_identity_to_come_back_and_reaches_s3() {
    let Encrypted { a, keys: _keys, identity, readable, server, bucket } = Archiving::encrypted_on_s3();
    let seg = a.switch();
    a.wait_archived(&seg);
    let stored = a.stored_copy(&seg);
    assert!(stored.to_string_lossy().ends_with(".zst.age"), "{}", stored.display());
    let s3_keys = server.keys(&bucket);
    assert!(s3_keys.iter().any(|k| k.contains(&format!("/{seg}-")) && k.ends_with(".zst.age")), "{s3_keys:?}");

    let dest = a.dir.path().join("seg");
    let without = a.run(&["archive-get", &seg, &dest.to_string_lossy()], &a.cluster.data());
    assert_eq!(without.status.code(), Some(126), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("--identity") || stderr(&without).contains("identity_file"),
        "{}",
        stderr(&without)
    );
    assert!(!dest.exists());
    let with = a.run(
        &["archive-get", &seg, &dest.to_string_lossy(), "--identity", &identity.to_string_lossy()],
        &a.cluster.data(),
    );
    assert!(with.status.success(), "{}", stderr(&with));
    assert!(stored.to_string_lossy().contains(&sha256(&std::fs::read(&dest).unwrap())));

    // the S3 copy alone serves it too
    std::fs::remove_file(&stored).unwrap();
    std::fs::remove_file(&dest).unwrap();
    let from_s3 = a.run(
        &["archive-get", &seg, &dest.to_string_lossy(), "--identity", &identity.to_string_lossy()],
        &a.cluster.data(),
    );
    assert!(from_s3.status.success(), "{}", stderr(&from_s3));

    // a base backup: encrypted on both targets, deep-verified from S3 with its WAL
    let taken = a.run_as_server(&["base-backup"]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let id = String::from_utf8_lossy(&taken.stdout).trim().to_owned();
    let s3_keys = server.keys(&bucket);
    for file in ["base.tar.zst.age", "backup_manifest.zst.age", "manifest.json"] {
        assert!(s3_keys.iter().any(|k| k.contains(&id) && k.ends_with(file)), "{file} on S3: {s3_keys:?}");
    }
    let local = a.dir.path().join(format!("repository/clusters/main/{id}"));
    std::fs::remove_dir_all(&local).unwrap();
    let deep = a.run_as_server(&["verify", "--deep", &id, "--identity", &readable.to_string_lossy()]);
    let out = String::from_utf8_lossy(&deep.stdout).into_owned();
    assert!(out.contains("pg_verifybackup") && out.contains("offsite"), "{out}{}", stderr(&deep));
    // the local copy is gone: that target fails, S3's passes
    assert_eq!(deep.status.code(), Some(1), "{out}");
    assert!(out.contains("local"), "{out}");
}

/// One value from a recovered copy's server on `port`.
pub(crate) fn query_at(bin: &Path, port: u16, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `program` with `args` as the server's OS user (postgres when the tests run as root).
pub(crate) fn as_server(program: &Path, args: &[&str]) -> Output {
    as_server_in(&std::env::temp_dir(), program, args)
}

/// [`as_server`] with `TMPDIR` set to `tmp`.
pub(crate) fn as_server_in(tmp: &Path, program: &Path, args: &[&str]) -> Output {
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).env("TMPDIR", tmp).stdin(Stdio::null()).output().unwrap()
}

/// `zstd -dc TAR | tar -x` into `into` (created).
fn untar(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -x -C '{}'", tar.display(), into.display()))
        .status()
        .unwrap();
    assert!(unpacked.success(), "{} does not extract", tar.display());
}

/// A copy of the cluster recovering from the archive (restore_command = archive-get) in
/// `data`, on a free port; stopped when dropped.
struct Recovered {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Recovered {
    /// Starts the server in `data` (a base backup's files, `extra` appended to its settings)
    /// and waits until recovery has ended.
    fn start(a: &Archiving, data: &Path, extra: &str) -> Recovered {
        let bin = a.cluster.bin().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nrestore_command = '{BIN} -c {} archive-get %f %p'\n{extra}",
            data.display(),
            a.config.display()
        ));
        std::fs::write(&auto, text).unwrap();
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        a.cluster.give_to_server(data).unwrap();
        let log = data.with_extension("log");
        std::fs::write(&log, "").unwrap();
        a.cluster.give_to_server(&log).unwrap();
        let r = Recovered { bin, data: data.to_owned(), log, port };
        let started = as_server(
            &r.bin.join("pg_ctl"),
            &["-D", &r.data.to_string_lossy(), "-l", &r.log.to_string_lossy(), "-w", "-t", "120", "start"],
        );
        assert!(started.status.success(), "{}\n{}", stderr(&started), r.server_log());
        let begun = Instant::now();
        while r.query("select pg_is_in_recovery()") != "f" {
            assert!(begun.elapsed() < Duration::from_secs(120), "recovery did not finish:\n{}", r.server_log());
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }

    fn query(&self, sql: &str) -> String {
        query_at(&self.bin, self.port, sql)
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Recovered {
    fn drop(&mut self) {
        as_server(&self.bin.join("pg_ctl"), &["-D", &self.data.to_string_lossy(), "-m", "immediate", "-w", "stop"]);
    }
}

#[test]
fn a_base_backup_recovers_to_the_last_archived_commit_through_archive_get_as_restore_command() {
    let a = Archiving::start("");
    a.psql("create table marks (n int primary key, at timestamptz default now()); insert into marks (n) values (1)");
    let base = a.dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    a.cluster.give_to_server(&base).unwrap();
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let port = a.cluster.port.to_string();
    let bin = a.cluster.bin().to_owned();
    let b = as_server(
        &bin.join("pg_basebackup"),
        &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", &base.to_string_lossy(), "-X", "none", "-c", "fast"],
    );
    assert!(b.status.success(), "{}", stderr(&b));
    // changes after the base backup live only in the archived WAL
    for n in 2..=50 {
        a.psql(&format!("insert into marks (n) values ({n})"));
        if n % 10 == 0 {
            a.switch();
        }
    }
    let last = a.switch();
    a.wait_archived(&last);
    let expected = a.psql("select count(*), max(n) from marks");

    // the copy recovers from the archive alone: pg_wal of the base backup is empty (-X none)
    // the recovered copy keeps archive_command: once promoted it archives timeline 2 into the
    // same archive (beside the original, which goes on with timeline 1)
    let copy = Recovered::start(&a, &base, "");
    let query = |sql: &str| copy.query(sql);
    let server_log = || copy.server_log();
    let recovered = query("select count(*), max(n) from marks");
    // timeline 2 goes on archiving: its history file and segments
    query("insert into marks (n) values (51)");
    let lsn = query("select pg_switch_wal()");
    let on_two = query(&format!("select pg_walfile_name('{lsn}')"));
    let start = Instant::now();
    while query("select coalesce(last_archived_wal, '') from pg_stat_archiver") < on_two {
        assert!(start.elapsed() < Duration::from_secs(60), "timeline 2 not archived:\n{}", server_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(recovered, expected, "every archived commit is back:\n{}", server_log());
    assert!(server_log().contains("restored log file"), "{}", server_log());
    drop(copy);
    assert!(on_two.starts_with("00000002"), "{on_two}");
    a.stored_copy("00000002.history");

    // the archive verifies across the switch: timeline 1 up to the switch, timeline 2 after it
    let verified = a.run(&["verify", "--wal", "--deep"], Path::new("/"));
    let out = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{out}{}", stderr(&verified));
    assert!(out.contains("on timeline 2") && out.contains(&format!(".. {on_two}")), "{out}");
}

#[test]
fn verify_wal_names_the_first_missing_segment_and_deep_finds_a_damaged_one() {
    let a = Archiving::start("");
    let mut segments = Vec::new();
    for _ in 0..5 {
        segments.push(a.switch());
    }
    a.wait_archived(segments.last().unwrap());
    let verify = |deep: bool| {
        let args: &[&str] = if deep { &["verify", "--wal", "--deep"] } else { &["verify", "--wal"] };
        let o = a.run(args, Path::new("/"));
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (code, out) = verify(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("PASSED WAL archive of cluster main") && out.contains(segments.last().unwrap()), "{out}");

    // a byte flipped in one stored file: quick does not read content, deep names the file
    let flipped = a.stored_copy(&segments[3]);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&flipped, &bytes).unwrap();
    assert_eq!(verify(false).0, Some(0));
    let (code, out) = verify(true);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&flipped.file_name().unwrap().to_string_lossy().into_owned()) && out.contains("corrupt"),
        "{out}"
    );

    // two stored segments deleted: the gap is named by its first missing segment
    std::fs::remove_file(a.stored_copy(&segments[1])).unwrap();
    std::fs::remove_file(a.stored_copy(&segments[2])).unwrap();
    let (code, out) = verify(false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{} to {} are missing (2 segments)", segments[1], segments[2])), "{out}");
    // and the run's report says so
    let reports = a.dir.path().join("reports/backup_verification");
    let report: String = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .find(|r| r.contains("are missing"))
        .expect("a failed verification report");
    assert!(
        report.contains("\"database\": \"cluster:main\"") || report.contains("\"database\":\"cluster:main\""),
        "{report}"
    );
}

#[test]
fn a_base_backup_taken_under_pgbench_load_recovers_with_its_wal_and_verifies_deep() {
    let a = Archiving::start("");
    let port = a.cluster.port.to_string();
    let bin = a.cluster.bin().to_owned();
    let pgbench = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        Command::new(bin.join("pgbench")).args(&all).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let init = pgbench(&["-i", "-s", "5", "-q"]).wait_with_output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // four clients write all through the backup
    let mut load = pgbench(&["-c", "4", "-T", "30", "-n"]);
    let taken = a.run_as_server(&["base-backup"]);
    let err = stderr(&taken);
    assert!(taken.status.success(), "{err}");
    let id = String::from_utf8_lossy(&taken.stdout).trim().to_owned();
    assert!(id.contains("-base-"), "{id}");
    assert!(err.contains("needs WAL 0000000"), "{err}");
    let _ = load.kill();
    let _ = load.wait();
    a.psql("create table after_backup as select 42 as answer");
    let last = a.switch();
    a.wait_archived(&last);
    let expected = a.psql("select sum(abalance), count(*) from pgbench_accounts");

    // the manifest says where in the WAL it starts and ends, from its own backup_label
    let listed = a.run(&["list", "--json"], Path::new("/"));
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let base = json.as_array().unwrap().iter().find(|b| b["id"] == id.as_str()).expect("listed");
    assert_eq!(base["database"], "cluster:main", "{base}");
    let manifest_path = a.dir.path().join(format!("repository/clusters/main/{id}/manifest.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["content"], "base");
    assert_eq!(manifest["system_identifier"].to_string(), a.system_id());
    let (start, stop) = (manifest["start_wal"].as_str().unwrap(), manifest["stop_wal"].as_str().unwrap());
    assert!(start <= stop && manifest["backup_label"].as_str().unwrap().contains(start), "{manifest}");
    assert!(manifest["backup_manifest"]["key"].as_str().unwrap().ends_with("backup_manifest.zst"));

    // deep: extracted, pg_verifybackup with the WAL from the archive
    let deep = a.run_as_server(&["verify", "--deep", &id]);
    let out = String::from_utf8_lossy(&deep.stdout).into_owned();
    assert!(deep.status.success(), "{out}{}", stderr(&deep));
    assert!(out.contains("pg_verifybackup"), "{out}");

    // restored by hand: zstd -d | tar -x, restore_command = archive-get, recovery to the end
    let data = a.dir.path().join("restored");
    untar(&a.dir.path().join(format!("repository/clusters/main/{id}/base.tar.zst")), &data);
    let copy = Recovered::start(&a, &data, "archive_mode = off\n");
    let recovered = copy.query("select sum(abalance), count(*) from pgbench_accounts");
    let answer = copy.query("select answer from after_backup");
    let log = copy.server_log();
    drop(copy);
    assert_eq!(recovered, expected, "{log}");
    assert_eq!(answer, "42");

    // the segment the backup starts with deleted: the WAL check names it and the backup
    std::fs::remove_file(a.stored_copy(start)).unwrap();
    let wal = a.run(&["verify", "--wal"], Path::new("/"));
    let out = String::from_utf8_lossy(&wal.stdout).into_owned();
    assert_eq!(wal.status.code(), Some(1), "{out}");
    assert!(out.contains(start) && out.contains(&format!("base backup {id} starts there")), "{out}");
    let deep = a.run_as_server(&["verify", "--deep", &id]);
    let out = String::from_utf8_lossy(&deep.stdout).into_owned();
    assert_eq!(deep.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("WAL segment {start}, which the backup needs, is not in the archive")), "{out}");
}

#[test]
fn a_base_backup_of_a_server_that_archives_nothing_is_refused_and_a_cut_one_leaves_nothing() {
    let a = Archiving::start("");
    // archive_mode off: no WAL would ever reach the archive
    a.psql("alter system set archive_mode = off");
    a.cluster.restart().unwrap();
    let refused = a.run_as_server(&["base-backup"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("archive_mode is off on the server"), "{}", stderr(&refused));

    // a pg_basebackup that dies midway: the stream is not a whole tar, nothing is kept
    let fake = a.dir.path().join("bin");
    std::fs::create_dir(&fake).unwrap();
    let script = fake.join("pg_basebackup");
    let real = a.cluster.bin().join("pg_basebackup");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\n\
             {real} \"$@\" | head -c 1000000\necho 'pg_basebackup: error: connection lost' >&2\nexit 1\n",
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut text = std::fs::read_to_string(&a.config).unwrap();
    text.push_str(&format!("pg_bin_dir: {}\n", fake.display()));
    std::fs::write(&a.config, text).unwrap();
    a.psql("alter system set archive_mode = on");
    a.cluster.restart().unwrap();
    let cut = a.run_as_server(&["base-backup"]);
    let err = stderr(&cut);
    assert_eq!(cut.status.code(), Some(1), "{err}");
    assert!(err.contains("connection lost"), "{err}");
    let left = walk(&a.dir.path().join("repository/clusters/main"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("-base-"))
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "{left:?}");

    // with a tablespace, pg_basebackup writes its tars into a spool directory: one killed
    // midway leaves nothing in the repository and nothing in the spool
    let location = a.dir.path().join("ts_cut");
    std::fs::create_dir(&location).unwrap();
    a.cluster.give_to_server(&location).unwrap();
    a.psql(&format!("create tablespace ts_cut location '{}'", location.display()));
    a.psql("create table in_ts tablespace ts_cut as select g, md5(g::text) from generate_series(1, 100000) g");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\n\
             {real} \"$@\" --max-rate=2M &\nsleep 2\nkill $!\n\
             echo 'pg_basebackup: error: connection lost' >&2\nexit 1\n",
            real = real.display()
        ),
    )
    .unwrap();
    let tmp = a.dir.path().join("tmp");
    // the spool of a pgbackd killed with -9 (no such process), removed by the next base backup
    let killed = tmp.join("pgbackd-base-4999999-x1y2z3/archives");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("base.tar"), vec![7u8; 4096]).unwrap();
    a.cluster.give_to_server(&tmp).unwrap();
    let config = a.config.to_string_lossy().into_owned();
    let cut = as_server_in(&tmp, Path::new(BIN), &["-c", &config, "base-backup"]);
    let err = stderr(&cut);
    assert_eq!(cut.status.code(), Some(1), "{err}");
    assert!(err.contains("connection lost") && err.contains("is not a whole tar archive"), "{err}");
    let left = walk(&a.dir.path().join("repository/clusters/main"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("-base-"))
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "{left:?}");
    let spooled: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(spooled.is_empty(), "the spool directory is removed: {spooled:?}");

    // one that writes nothing at all is stopped by the stall guard, and says what to look at
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\nexec sleep 120\n",
            real = real.display()
        ),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&a.config).unwrap();
    text.push_str("backup: {stall_timeout: 2s}\n");
    std::fs::write(&a.config, text).unwrap();
    let started = Instant::now();
    let stalled = as_server_in(&tmp, Path::new(BIN), &["-c", &config, "base-backup"]);
    let err = stderr(&stalled);
    assert_eq!(stalled.status.code(), Some(1), "{err}");
    assert!(err.contains("wrote no further tar and no backup_manifest for 2s (backup.stall_timeout)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "stopped long before the fake's 120 s");
    // killed as pgbackd exits: give the kernel a moment to remove it on a loaded machine
    let killed = Instant::now();
    while !pids_with("sleep 120").is_empty() && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids_with("sleep 120").is_empty(), "the stalled pg_basebackup is stopped");
}

#[test]
fn retention_keeps_exactly_the_wal_the_kept_base_backups_need_and_list_shows_the_window() {
    let a = Archiving::start("retention: {base_backup: {keep_last: 1, min_keep: 1}}\n");
    let last = a.switch();
    a.wait_archived(&last);
    let backup = || {
        let o = a.run_as_server(&["base-backup"]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let old = backup();
    for _ in 0..2 {
        let last = a.switch();
        a.wait_archived(&last);
    }
    let new = backup();
    let last = a.switch();
    a.wait_archived(&last);
    let manifest = |id: &str| -> serde_json::Value {
        let p = a.dir.path().join(format!("repository/clusters/main/{id}/manifest.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let keep_from = manifest(&new)["start_wal"].as_str().unwrap().to_owned();
    let old_start = manifest(&old)["start_wal"].as_str().unwrap().to_owned();
    assert!(old_start < keep_from, "{old_start} {keep_from}");
    // the archived files a name says are older than keep_from (segments, partials, .backup)
    let older = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().split('-').next().unwrap().to_owned())
            .filter(|n| !n.ends_with(".history") && n[8..24] < keep_from[8..24])
            .collect()
    };
    let before = a.stored();
    let doomed = older(&before);
    assert!(doomed.contains(&old_start), "{doomed:?}");

    // the plan names both backups and the WAL, and deletes nothing
    let plan = a.run_as_server(&["retention", "--dry-run"]);
    let out = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.status.success(), "{out}{}", stderr(&plan));
    let line = |id: &str| out.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} in {out}")).to_owned();
    assert!(line(&old).contains("DELETE") && line(&old).contains("no rule keeps it"), "{out}");
    assert!(line(&new).contains("keep_last 1"), "{out}");
    let wal = out.lines().find(|l| l.contains("WAL of system")).expect("a WAL line");
    assert!(
        wal.contains(&format!("would delete {} files", doomed.len()))
            && wal.contains(&format!("older than {keep_from}, where the oldest kept base backup {new} starts")),
        "{out}"
    );
    assert_eq!(a.stored(), before, "a dry run deletes nothing");

    // applied: the old backup and exactly the WAL before the kept one's start are gone
    let applied = a.run_as_server(&["retention"]);
    let out = String::from_utf8_lossy(&applied.stdout).into_owned();
    assert!(applied.status.success(), "{out}{}", stderr(&applied));
    assert!(out.contains(&format!("deleted {} WAL files", doomed.len())), "{out}");
    assert!(!a.dir.path().join(format!("repository/clusters/main/{old}")).exists());
    let after = a.stored();
    assert!(older(&after).is_empty(), "{after:?}");
    assert_eq!(after.len(), before.len() - doomed.len(), "only the older WAL is deleted");
    let verify = a.run(&["verify", "--wal"], Path::new("/"));
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let again = a.run_as_server(&["retention"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("delete nothing"));

    // list: the archive's range and how far the kept backup restores
    let listed = a.run(&["list"], Path::new("/"));
    let out = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(out.contains(&format!("segments {keep_from} .. {last} (timeline 1)")), "{out}");
    assert!(out.contains(&format!("base backup {new}: restorable from ")), "{out}");
    let json: serde_json::Value = serde_json::from_slice(&a.run(&["list", "--json"], Path::new("/")).stdout).unwrap();
    let entry = json.as_array().unwrap().iter().find(|e| e["id"] == new.as_str()).unwrap().clone();
    assert_eq!(entry["wal"]["start_wal"], keep_from.as_str(), "{entry}");
    assert_eq!(entry["wal"]["reach"][0]["last_segment"], last.as_str(), "{entry}");
    assert!(entry["wal"]["reach"][0]["until"].is_string(), "{entry}");
}

/// A cluster that archives nothing itself, and a config whose daemon streams its WAL
/// (`method: stream`) into a local repository, serving /metrics on `port`.
struct Streaming {
    cluster: Cluster,
    config: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Streaming {
    fn start(extra: &str) -> Streaming {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let cluster =
            Cluster::start_with(dir.path(), &[("wal_level", "replica"), ("max_wal_senders", "5")]).expect("a cluster");
        let port = crate::notify::free_port();
        let config = dir.path().join("pgbackd.yaml");
        std::fs::write(
            &config,
            format!(
                "local_backup_dir: {repo}\nreports: {{dir: {reports}}}\nmonitoring: {{listen: 127.0.0.1:{port}}}\n\
                 wal:\n  name: main\n  method: stream\n  spool_dir: {spool}\n  \
                 server: {{host: 127.0.0.1, port: {pg}, username: postgres}}\n{extra}",
                repo = dir.path().join("repository").display(),
                reports = dir.path().join("reports").display(),
                spool = dir.path().join("spool").display(),
                pg = cluster.port,
            ),
        )
        .unwrap();
        Streaming { cluster, config, dir, port }
    }

    fn daemon(&self) -> Daemon {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(["--log-format", "json", "run"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map(Daemon)
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn psql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql).unwrap()
    }

    fn switch(&self) -> String {
        switch_wal(&self.cluster)
    }

    /// The archived file names (segments, partials, history files).
    fn archived(&self) -> Vec<String> {
        walk(&self.dir.path().join("repository/clusters/main/wal"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().split('-').next().unwrap().to_owned())
            .collect()
    }

    fn wait_stored(&self, file: &str) {
        let start = Instant::now();
        while !self.archived().iter().any(|n| n == file) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{file} not stored after 60 s; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("-c").arg(&self.config).args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn metrics(&self) -> String {
        crate::notify::http_get(self.port, "/metrics").map(|(_, t)| t).unwrap_or_default()
    }
}

/// A daemon that a failing test does not leave behind.
struct Daemon(std::process::Child);

impl Daemon {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of the processes whose command line holds `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
        })
        .collect()
}

#[test]
fn streaming_survives_a_server_restart_and_a_killed_receiver_without_losing_a_segment() {
    let s = Streaming::start("");
    let mut daemon = s.daemon();
    // the slot is created, and the first base backup taken without a schedule
    crate::notify::wait_until("the first base backup", Duration::from_secs(90), || {
        let listed = s.run(&["list", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&listed.stdout)
            .is_ok_and(|j| j.as_array().is_some_and(|a| a.iter().any(|b| b["kind"] == "base")))
    });
    assert_eq!(s.psql("select slot_type from pg_replication_slots where slot_name = 'pgbackd_main'"), "physical");
    for _ in 0..2 {
        let seg = s.switch();
        s.wait_stored(&seg);
    }

    // pg_receivewal killed: it is restarted and continues where it was
    let spool = s.dir.path().join("spool").display().to_string();
    let receivers = pids_with(&format!("--directory {spool}"));
    assert_eq!(receivers.len(), 1, "{receivers:?}\n{}", s.log());
    crate::harness::send_signal(receivers[0] as u32, libc::SIGKILL, false);
    let seg = s.switch();
    s.wait_stored(&seg);
    crate::notify::wait_until("a new receiver", Duration::from_secs(30), || {
        pids_with(&format!("--directory {spool}")).iter().any(|p| *p != receivers[0])
    });

    // the server restarted: the receiver loses its connection, and comes back
    s.cluster.restart().unwrap();
    for _ in 0..2 {
        let seg = s.switch();
        s.wait_stored(&seg);
    }
    let metrics = s.metrics();
    let restarts = crate::notify::metric(&metrics, "pgbackd_wal_receiver_restarts_total{cluster=\"main\"}");
    assert!(restarts.is_some_and(|r| r >= 2.0), "{metrics}");
    assert!(
        crate::notify::metric(&metrics, "pgbackd_wal_segments_stored_total{cluster=\"main\",target=\"local\"}")
            .is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
    // the spool keeps only the newest completed segment and the partial one
    let spooled: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".partial"))
        .collect();
    assert!(spooled.len() <= 2, "{spooled:?}");

    // wal-flush stores the partial segment the receiver is writing
    s.psql("create table flushed as select 1 as one");
    crate::notify::wait_until("the receiver's partial segment", Duration::from_secs(30), || {
        std::fs::read_dir(&spool).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    });
    let flushed = s.run(&["wal-flush"]);
    let out = String::from_utf8_lossy(&flushed.stdout).into_owned();
    assert!(flushed.status.success(), "{out}{}", stderr(&flushed));
    assert!(out.contains(".partial"), "{out}{}", stderr(&flushed));
    assert!(s.archived().iter().any(|n| n.ends_with(".partial")), "{:?}", s.archived());

    // a clean stop: no segment from the base backup's start on is missing
    crate::harness::send_signal(daemon.id(), libc::SIGTERM, false);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{}", s.log());
    assert!(s.log().contains("what it received is stored"), "{}", s.log());
    let verify = s.run(&["verify", "--wal", "--deep"]);
    let out = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(verify.status.success(), "{out}{}", stderr(&verify));
}

#[test]
fn a_slot_nobody_reads_alerts_and_fails_readyz() {
    let hooks = crate::notify::Receiver::start();
    // a receiver that never runs: the slot is created and holds the server's WAL back
    let s = Streaming::start(&format!(
        "  slot_lag_alert: 1MiB\ndaemon: {{shutdown_grace: 2s}}\nnotifications:\n  webhooks:\n    - name: ops\n      url: http://{}/hook\n",
        hooks.addr
    ));
    let fake = s.dir.path().join("bin");
    std::fs::create_dir(&fake).unwrap();
    for tool in ["pg_basebackup", "pg_dump", "pg_restore", "psql", "pg_verifybackup"] {
        std::os::unix::fs::symlink(s.cluster.bin().join(tool), fake.join(tool)).unwrap();
    }
    let script = fake.join("pg_receivewal");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_receivewal: error: could not connect: nothing here' >&2\nexit 1\n")
        .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("pg_bin_dir: {}\n", fake.display()));
    std::fs::write(&s.config, text).unwrap();
    let mut daemon = s.daemon();
    crate::notify::wait_until("the slot", Duration::from_secs(30), || {
        s.cluster
            .psql("postgres", "select count(*) from pg_replication_slots where slot_name = 'pgbackd_main'")
            .is_ok_and(|n| n == "1")
    });
    for _ in 0..3 {
        s.switch();
    }
    crate::notify::wait_until("the slot alert", Duration::from_secs(60), || !hooks.to("/hook").is_empty());
    let got = hooks.to("/hook");
    let v: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    let text = v["text"].as_str().unwrap_or_default();
    assert!(text.contains("replication slot pgbackd_main holds back") && text.contains("no receiver uses it"), "{v}");
    let (code, body) = crate::notify::http_get(s.port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    let metrics = s.metrics();
    let held =
        crate::notify::metric(&metrics, "pgbackd_wal_slot_retained_bytes{cluster=\"main\",slot=\"pgbackd_main\"}");
    assert!(held.is_some_and(|b| b > 1048576.0), "{metrics}");
    assert!(crate::notify::metric(&metrics, "pgbackd_wal_receiver_up{cluster=\"main\"}") == Some(0.0), "{metrics}");
    assert!(s.log().contains("nothing here"), "LOG{}", s.log());
    crate::harness::send_signal(daemon.id(), libc::SIGTERM, false);
    let _ = daemon.wait();
}

#[test]
fn a_cluster_with_a_tablespace_is_stored_a_tar_per_tablespace_and_recovers_with_it_moved() {
    let a = Archiving::start("");
    let location = a.dir.path().join("ts_one");
    std::fs::create_dir(&location).unwrap();
    std::fs::set_permissions(&location, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    a.cluster.give_to_server(&location).unwrap();
    a.psql(&format!("create tablespace ts_one location '{}'", location.display()));
    a.psql("create table in_ts tablespace ts_one as select g, md5(g::text) as h from generate_series(1, 200000) g");
    let oid = a.psql("select oid from pg_tablespace where spcname = 'ts_one'");
    let expected = a.psql("select count(*), sum(g), max(h) from in_ts");

    let taken = a.run_as_server(&["base-backup"]);
    let err = stderr(&taken);
    assert!(taken.status.success(), "{err}");
    let id = String::from_utf8_lossy(&taken.stdout).trim().to_owned();
    assert!(err.contains(&format!("tablespace ts_one (OID {oid}, at {})", location.display())), "{err}");
    let dir = a.dir.path().join(format!("repository/clusters/main/{id}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let ts = &manifest["tablespaces"][0];
    assert_eq!(ts["name"], "ts_one", "{manifest}");
    assert_eq!(ts["oid"].to_string(), oid);
    assert_eq!(ts["location"], location.to_string_lossy().as_ref());
    let ts_tar = dir.join(format!("tablespace-{oid}.tar.zst"));
    assert_eq!(ts["data"]["key"].as_str().unwrap(), format!("clusters/main/{id}/tablespace-{oid}.tar.zst"));
    assert!(ts_tar.is_file());
    // the table's 200k rows are in the tablespace's tar, not the data directory's
    assert!(ts["data"]["raw_bytes"].as_u64().unwrap() > 10 << 20, "{ts}");
    assert!(manifest["tablespace_map"].as_str().unwrap().contains(&oid), "{manifest}");

    // deep: both tars extracted where pg_verifybackup expects them, every file's checksum checked
    let deep = a.run_as_server(&["verify", "--deep", &id]);
    let out = String::from_utf8_lossy(&deep.stdout).into_owned();
    assert!(deep.status.success(), "{out}{}", stderr(&deep));
    // a damaged tablespace tar is found
    let damaged = a.dir.path().join("damaged");
    std::fs::copy(&ts_tar, &damaged).unwrap();
    let mut bytes = std::fs::read(&ts_tar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&ts_tar, &bytes).unwrap();
    let deep = a.run_as_server(&["verify", "--deep", &id]);
    let out = String::from_utf8_lossy(&deep.stdout).into_owned();
    assert_eq!(deep.status.code(), Some(1), "{out}");
    assert!(out.contains("the tar archive of tablespace ts_one does not extract"), "{out}");
    std::fs::rename(&damaged, &ts_tar).unwrap();
    // the copy put back is root's when the tests run as root: the server's user reads it
    a.cluster.give_to_server(&ts_tar).unwrap();

    // recovered with the tablespace somewhere else: tablespace_map says where
    let last = a.switch();
    a.wait_archived(&last);
    let data = a.dir.path().join("restored");
    untar(&dir.join("base.tar.zst"), &data);
    let moved = a.dir.path().join("ts_moved");
    untar(&ts_tar, &moved);
    a.cluster.give_to_server(&moved).unwrap();
    std::fs::set_permissions(&moved, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(data.join("tablespace_map"), format!("{oid} {}\n", moved.display())).unwrap();
    let copy = Recovered::start(&a, &data, "archive_mode = off\n");
    let recovered = copy.query("select count(*), sum(g), max(h) from in_ts");
    let at = copy.query("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts_one'");
    let log = copy.server_log();
    drop(copy);
    assert_eq!(recovered, expected, "{log}");
    assert_eq!(at, moved.to_string_lossy());

    // restore-cluster: the live tablespace's directory is not empty, so it must be mapped
    let parent = a.dir.path().join("pitr");
    std::fs::create_dir(&parent).unwrap();
    a.cluster.give_to_server(&parent).unwrap();
    let pgdata = parent.join("data").to_string_lossy().into_owned();
    let refused = a.run_as_server(&["restore-cluster", "--pgdata", &pgdata, "--latest"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--tablespace-map ts_one=NEW_DIRECTORY"), "{}", stderr(&refused));
    let unknown =
        a.run_as_server(&["restore-cluster", "--pgdata", &pgdata, "--latest", "--tablespace-map", "ts_two=/x"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("has no tablespace \"ts_two\"; it has ts_one"), "{}", stderr(&unknown));
    let mapped = parent.join("ts_mapped");
    let port = crate::notify::free_port().to_string();
    let map = format!("ts_one={}", mapped.display());
    let o = a.run_as_server(&[
        "restore-cluster",
        "--pgdata",
        &pgdata,
        "--latest",
        "--tablespace-map",
        &map,
        "--start",
        "--port",
        &port,
        "--no-archive",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains(&format!("tablespace ts_one (OID {oid}) in {}", mapped.display())), "{out}");
    let port: u16 = port.parse().unwrap();
    let recovered = query_at(a.cluster.bin(), port, "select count(*), sum(g), max(h) from in_ts");
    let at = query_at(
        a.cluster.bin(),
        port,
        "select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts_one'",
    );
    as_server(&a.cluster.bin().join("pg_ctl"), &["-D", &pgdata, "-m", "immediate", "-w", "stop"]);
    assert_eq!(recovered, expected);
    assert_eq!(at, mapped.to_string_lossy());
}
