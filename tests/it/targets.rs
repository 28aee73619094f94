//! The Azure Blob, GCS and SFTP targets against real local servers (Azurite, fake-gcs-server,
//! OpenSSH's sshd): a backup fanned out to five targets at once restored from each, nothing left
//! behind by a failed or cancelled backup, injected faults, listing pages and batch deletes, and
//! the errors an operator gets (host keys, keys, permissions, credentials, missing containers).

use crate::fault_proxy::FaultProxy;
use crate::harness::*;
use crate::s3::{assert_identical, load_incompressible};
use crate::s3_servers::{localstack, rt};
use crate::target_servers::{azurite, fake_gcs, files_under, sshd};
use std::path::Path;
use std::sync::atomic::Ordering;

fn load_data(env: &TestEnv) {
    env.psql(
        "create table items (id int primary key, name text, price numeric(10,2), tags jsonb);
         insert into items select g, 'item ' || g, g * 0.5, jsonb_build_array(g % 7, 'x') from generate_series(1, 30000) g;
         create table noise (id int primary key, data bytea);
         insert into noise select g, decode(string_agg(md5(random()::text || g || s), ''), 'hex')
         from generate_series(1, 1500) g, generate_series(1, 64) s group by g;",
    );
}

fn not_attempts(keys: Vec<String>) -> Vec<String> {
    keys.into_iter().filter(|k| !k.contains("/.attempts/") && !k.starts_with(".attempts/")).collect()
}

#[test]
fn a_backup_fanned_out_to_local_s3_azure_gcs_and_sftp_restores_from_each_of_them() {
    let (s3, az, gcs, ssh) = (localstack(), azurite(), fake_gcs(), sshd());
    let env = TestEnv::new("fanout");
    load_data(&env);
    let (bucket, container, gbucket, path) = (s3.bucket(), az.container(), gcs.bucket(), ssh.path());
    let uploads = env.dir.path().join("uploads");
    std::fs::create_dir_all(uploads.join("deep/er")).unwrap();
    std::fs::write(uploads.join("a.txt"), "first file\n").unwrap();
    std::fs::write(uploads.join("deep/er/b.bin"), vec![7u8; 3 << 20]).unwrap();
    let targets = [
        ("s3", s3.target_yaml("s3", &bucket, "")),
        ("azure", az.target_yaml("azure", &container, "")),
        ("gcs", gcs.target_yaml("gcs", &gbucket, "")),
        ("sftp", ssh.target_yaml("sftp", &path, "")),
    ];
    let files = format!("files:\n  - name: uploads\n    paths: [{}]\n", uploads.display());
    let all: String = targets.iter().map(|(_, y)| y.as_str()).collect();
    env.write_config(&format!("{files}storage:\n{all}"));
    let full = env.backup();
    env.psql("update items set price = price + 1 where id % 100 = 0; insert into items values (40001, 'new', 1, '[]')");
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let incremental = stdout(&out).trim().to_owned();
    let out = env.run(&["backup-files", "--name", "uploads"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.list_json();
    for b in &list {
        assert_eq!(b["targets"], serde_json::json!(["local", "s3", "azure", "gcs", "sftp"]), "{b}");
    }
    assert_eq!(list[1]["id"], incremental.as_str(), "{list:?}");
    assert_eq!(list[1]["base_id"], full.as_str(), "{list:?}");
    // deep verification decodes every copy through its own target
    let out = env.run(&["verify", "--all", "--deep"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for name in ["local", "s3", "azure", "gcs", "sftp"] {
        assert!(stdout(&out).contains(&format!("ok      target {name}")), "{}", stdout(&out));
    }

    // each target alone restores the incremental (through its base) and the file set
    for (name, yaml) in &targets {
        env.write_config_with(false, &format!("{files}storage:\n{yaml}"));
        let list = env.list_json();
        assert_eq!(list.len(), 3, "{name}: {list:?}");
        let db = unique(&format!("fan_{name}"));
        let out = env.run(&["restore", &incremental, "--target-database", &db, "--create"]);
        assert!(out.status.success(), "restore from {name}: {}", stderr(&out));
        assert_identical(&env.db, &db);
        let to = env.dir.path().join(format!("files-from-{name}"));
        let out = env.run(&["restore-files", "--latest", "--name", "uploads", "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "restore-files from {name}: {}", stderr(&out));
        let restored = to.join(uploads.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(restored.join("deep/er/b.bin")).unwrap(), vec![7u8; 3 << 20], "{name}");
        assert_eq!(std::fs::read_to_string(restored.join("a.txt")).unwrap(), "first file\n", "{name}");
    }
    // what the servers hold, seen behind pgbackd's back: no temporary files, no staged blocks
    assert!(files_under(&path).iter().all(|f| !f.contains(".pgbackd-tmp-")), "{:?}", files_under(&path));
    assert!(files_under(&path).iter().any(|f| f.ends_with(&format!("{incremental}/manifest.json"))));
    let committed = az.blobs(&container, false);
    assert_eq!(az.blobs(&container, true), committed, "uncommitted blocks left");
    assert!(committed.iter().any(|b| b.ends_with(&format!("{full}/data.zst"))), "{committed:?}");
    assert!(gcs.objects(&gbucket).iter().any(|o| o.ends_with(&format!("{full}/manifest.json"))));
}

#[test]
fn a_failed_or_cancelled_backup_leaves_nothing_on_azure_gcs_or_sftp() {
    let (az, gcs, ssh) = (azurite(), fake_gcs(), sshd());
    let env = TestEnv::new("tfail");
    load_incompressible(&env);
    let (container, gbucket, path) = (az.container(), gcs.bucket(), ssh.path());
    let storage = format!(
        "storage:\n{}{}{}",
        az.target_yaml("azure", &container, ""),
        gcs.target_yaml("gcs", &gbucket, ""),
        ssh.target_yaml("sftp", &path, "")
    );
    let left = |what: &str| {
        let sftp = not_attempts(files_under(&path));
        let azure = not_attempts(az.blobs(&container, true));
        let google = not_attempts(gcs.objects(&gbucket));
        assert!(sftp.is_empty() && azure.is_empty() && google.is_empty(), "{what}: left {sftp:?} {azure:?} {google:?}");
    };
    // pg_dump fails after 14 MB: several blocks and chunks were sent by then
    let bin = env.fake_bin("pg_dump_fail_after_14mb.sh");
    env.write_config_with(false, &format!("pg_bin_dir: {}\n{storage}", bin.display()));
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exited with status 1"), "{}", stderr(&out));
    left("after a failed backup");

    // pg_dump hangs after 14 MB and the backup is cancelled (SIGTERM)
    let bin = env.fake_bin("pg_dump_hang_after_14mb.sh");
    env.write_config_with(false, &format!("pg_bin_dir: {}\n{storage}", bin.display()));
    let child = env
        .command(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !files_under(&path).iter().any(|f| f.contains(".pgbackd-tmp-") && f.contains("data.zst")) {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the SFTP upload did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    send_signal(child.id(), libc::SIGTERM, false);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    left("after a cancelled backup");
}

#[test]
fn twenty_percent_injected_faults_on_azure_and_gcs_still_give_an_identical_restore() {
    let (az, gcs) = (azurite(), fake_gcs());
    let env = TestEnv::new("tfaults");
    load_data(&env);
    let (container, gbucket) = (az.container(), gcs.bucket());
    let az_upstream = az.endpoint.trim_end_matches(&format!("/{}", crate::target_servers::AZURE_ACCOUNT)).to_owned();
    let az_proxy = FaultProxy::start(&az_upstream, 5);
    let gcs_proxy = FaultProxy::start(&gcs.endpoint, 5);
    let az_yaml = az.target_yaml("azure", &container, "").replace(&az_upstream, &az_proxy.endpoint);
    let gcs_yaml = gcs.target_yaml("gcs", &gbucket, "").replace(&gcs.endpoint, &gcs_proxy.endpoint);
    env.write_config_with(false, &format!("storage:\n{az_yaml}{gcs_yaml}"));
    let id = env.backup();
    for (name, yaml) in [("azure", &az_yaml), ("gcs", &gcs_yaml)] {
        env.write_config_with(false, &format!("storage:\n{yaml}"));
        let target = unique(&format!("tfaults_{name}"));
        let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_identical(&env.db, &target);
    }
    for (name, proxy) in [("azure", &az_proxy), ("gcs", &gcs_proxy)] {
        let (requests, failed) =
            (proxy.stats.requests.load(Ordering::Relaxed), proxy.stats.failed.load(Ordering::Relaxed));
        assert!(requests >= 10 && failed == requests / 5, "{name}: {failed} of {requests} requests failed");
    }
    assert_eq!(az.blobs(&container, true), az.blobs(&container, false), "uncommitted blocks left");
}

#[test]
fn listing_pages_and_batch_deletes_on_azure_gcs_and_sftp() {
    use pgbackd::config::storage::{AzureAuth, AzureConfig, GcsConfig, SftpConfig, Upload};
    use pgbackd::secret::Secret;
    use pgbackd::storage::Store;
    let (az, gcs, ssh) = (azurite(), fake_gcs(), sshd());
    let upload = Upload { part_size: 1 << 20, max_concurrent_parts: 4, max_attempts: 3 };
    let azure = pgbackd::storage::azure::AzureStore::new(
        "azure",
        &AzureConfig {
            account: crate::target_servers::AZURE_ACCOUNT.into(),
            container: az.container(),
            prefix: "p".into(),
            endpoint: Some(az.endpoint.clone()),
            auth: AzureAuth::AccessKey(Secret::new(crate::target_servers::AZURE_KEY)),
            upload,
        },
    )
    .unwrap();
    let google = pgbackd::storage::gcs::GcsStore::new(
        "gcs",
        &GcsConfig {
            bucket: gcs.bucket(),
            prefix: "p".into(),
            endpoint: Some(gcs.endpoint.clone()),
            credentials_file: None,
            anonymous: true,
            upload,
        },
    )
    .unwrap();
    let path = ssh.path();
    let sftp = pgbackd::storage::sftp::SftpStore::new(
        "sftp",
        &SftpConfig {
            host: "127.0.0.1".into(),
            port: ssh.port,
            user: ssh.user.clone(),
            path: path.to_string_lossy().into_owned(),
            key_file: Some(ssh.key.clone()),
            key_passphrase: None,
            known_hosts: Some(ssh.known_hosts.clone()),
            max_concurrent_writes: 16,
            max_attempts: 3,
        },
    )
    .unwrap();
    let stores: [(&dyn Store, usize); 3] = [(&azure, 1105), (&google, 1105), (&sftp, 300)];
    rt().block_on(async {
        for (store, count) in stores {
            let keys: Vec<String> = (0..count).map(|i| format!("db/{:02}/{i:05}", i % 7)).collect();
            let puts = keys.iter().map(|k| store.put(k, bytes::Bytes::from(k.clone())));
            for r in futures_util::future::join_all(puts).await {
                r.unwrap();
            }
            // a neighbour the prefix must not match
            store.put("dbx/other", bytes::Bytes::from_static(b"x")).await.unwrap();
            let listed = store.list("db/").await.unwrap();
            assert_eq!(listed.len(), count, "{}", store.name());
            assert!(listed.iter().all(|o| o.size == o.key.len() as u64), "{}", store.name());
            assert_eq!(
                store.list("db/03/").await.unwrap().len(),
                keys.iter().filter(|k| k.starts_with("db/03/")).count()
            );
            assert_eq!(store.get(&keys[5]).await.unwrap().unwrap(), keys[5].as_bytes());
            assert_eq!(store.read_range(&keys[5], 3, 2).await.unwrap(), &keys[5].as_bytes()[3..5]);
            // one missing key among them is no error
            let mut doomed = keys.clone();
            doomed.push("db/00/missing".into());
            store.delete(&doomed).await.unwrap();
            assert!(store.list("db/").await.unwrap().is_empty(), "{}", store.name());
            assert_eq!(store.list("dbx/").await.unwrap().len(), 1, "{}", store.name());
            assert_eq!(store.get("db/00/00000").await.unwrap(), None);
        }
    });
    // SFTP removed the directories it emptied (as a local target does)
    assert_eq!(files_under(&path), vec!["dbx/other".to_owned()]);
    assert!(!path.join("db").exists());
}

fn check_connect(env: &TestEnv, storage: &str) -> (bool, String) {
    env.write_config_with(false, &format!("storage:\n{storage}"));
    let out = env.run(&["check-config", "--connect"]);
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

#[test]
fn sftp_refuses_unknown_and_changed_host_keys_and_bad_keys_and_says_what_to_do() {
    let ssh = sshd();
    let env = TestEnv::new("hostkeys");
    // the refusals below must not write anything: a directory of its own shows it
    let path = ssh.path();
    let with = |known_hosts: &Path, key: &Path| {
        ssh.target_yaml("vault", &path, "")
            .replace(&ssh.known_hosts.display().to_string(), &known_hosts.display().to_string())
            .replace(&format!("key_file: {}", ssh.key.display()), &format!("key_file: {}", key.display()))
    };
    let (ok, text) = check_connect(&env, &ssh.target_yaml("vault", &ssh.path(), ""));
    assert!(ok, "{text}");

    // an empty known_hosts: the server is unknown, and pgbackd says how to add it
    let empty = env.dir.path().join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let (ok, text) = check_connect(&env, &with(&empty, &ssh.key));
    assert!(!ok);
    assert!(text.contains("is not in") && text.contains("never trusts an unknown host"), "{text}");
    assert!(text.contains(&format!("ssh-keyscan -p {} 127.0.0.1 >> {}", ssh.port, empty.display())), "{text}");
    assert!(!path.exists(), "something was written to an unverified server");

    // a different key recorded for the same host: refused as a possible interception
    let other = env.dir.path().join("other_host_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let changed = env.dir.path().join("known_hosts_changed");
    let fields: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(&changed, format!("[127.0.0.1]:{} {}\n", ssh.port, fields.join(" "))).unwrap();
    let (ok, text) = check_connect(&env, &with(&changed, &ssh.key));
    assert!(!ok);
    assert!(text.contains("DIFFERS") && text.contains("intercepting"), "{text}");

    // no known_hosts file at all
    let (ok, text) = check_connect(&env, &with(&env.dir.path().join("nowhere"), &ssh.key));
    assert!(!ok);
    assert!(text.contains("does not exist") && text.contains("ssh-keyscan"), "{text}");

    // a key the server does not know
    let (ok, text) = check_connect(&env, &with(&ssh.known_hosts, &other));
    assert!(!ok);
    assert!(text.contains("refused the key") && text.contains("authorized_keys"), "{text}");

    // a directory the user may not write: the write step fails and says so
    let (ok, text) = check_connect(&env, &ssh.target_yaml("vault", Path::new("/proc/pgbackd-cannot-be-here"), ""));
    assert!(!ok);
    assert!(text.contains("FAILED  target vault") && text.contains("write"), "{text}");
}

#[test]
fn azure_and_gcs_errors_say_what_to_do() {
    let (az, gcs) = (azurite(), fake_gcs());
    let env = TestEnv::new("terrors");
    let container = az.container();
    // a wrong account key
    let wrong = az.target_yaml("azure", &container, "    max_attempts: 2\n").replace(
        crate::target_servers::AZURE_KEY,
        "AAAAvdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    );
    let (ok, text) = check_connect(&env, &wrong);
    assert!(!ok);
    assert!(text.contains("AuthenticationFailed") && text.contains("check the target's access_key"), "{text}");
    // a container that does not exist
    let (ok, text) = check_connect(&env, &az.target_yaml("azure", "no-such-container", ""));
    assert!(!ok);
    assert!(text.contains("ContainerNotFound") && text.contains("create it"), "{text}");
    // a bucket that does not exist
    let (ok, text) = check_connect(&env, &gcs.target_yaml("gcs", "no-such-bucket", "    max_attempts: 2\n"));
    assert!(!ok);
    assert!(text.contains("FAILED  target gcs") && text.contains("HTTP 404"), "{text}");
    // nothing listening
    let down = gcs.target_yaml("gcs", "b", "    max_attempts: 2\n").replace(&gcs.endpoint, "http://127.0.0.1:9");
    let (ok, text) = check_connect(&env, &down);
    assert!(!ok);
    assert!(text.contains("cannot reach http://127.0.0.1:9"), "{text}");
    // a connection string is read for its parts; a broken one is named
    let (ok, text) = check_connect(
        &env,
        &format!(
            "  - name: azure\n    type: azure\n    container: {container}\n    connection_string: \"AccountName=x\"\n"
        ),
    );
    assert!(!ok);
    assert!(text.contains("storage[0].connection_string") && text.contains("AccountKey"), "{text}");
}

#[test]
fn wal_archived_to_azure_gcs_and_sftp_comes_back_from_each_alone() {
    use crate::wal::Archiving;
    let (az, gcs, ssh) = (azurite(), fake_gcs(), sshd());
    let (container, gbucket, path) = (az.container(), gcs.bucket(), ssh.path());
    let targets = [
        ("azure", az.target_yaml("azure", &container, "")),
        ("gcs", gcs.target_yaml("gcs", &gbucket, "")),
        ("sftp", ssh.target_yaml("sftp", &path, "")),
    ];
    let all: String = targets.iter().map(|(_, y)| y.as_str()).collect();
    // archive_command runs as the server's user: pgbackd reaches all three as it
    let a = Archiving::start(&format!("storage:\n{all}"));
    let seg = a.switch();
    a.wait_archived(&seg);
    let local = std::fs::read(a.stored_copy(&seg)).unwrap();
    for (name, yaml) in &targets {
        let config = a.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, format!("monitoring: {{listen: off}}\nwal: {{name: main}}\nstorage:\n{yaml}")).unwrap();
        let dest = a.dir.path().join(format!("{seg}.{name}"));
        let got = std::process::Command::new(BIN)
            .arg("-c")
            .arg(&config)
            .args(["archive-get", &seg, &dest.to_string_lossy()])
            .current_dir(a.cluster.data())
            .output()
            .unwrap();
        assert!(got.status.success(), "archive-get from {name}: {}", stderr(&got));
        let segment = std::fs::read(&dest).unwrap();
        assert_eq!(segment.len(), 16 << 20, "{name}");
        // the same bytes the local copy decompresses to
        let raw = std::process::Command::new("zstd").arg("-dc").arg(a.stored_copy(&seg)).output().unwrap();
        assert_eq!(segment, raw.stdout, "{name}");
        assert!(!local.is_empty());
    }
    assert!(
        files_under(&path).iter().any(|f| f.contains(&format!("/{seg}-")) && f.ends_with(".zst")),
        "{:?}",
        files_under(&path)
    );
    assert!(gcs.objects(&gbucket).iter().any(|o| o.contains(&format!("/{seg}-"))));
    assert!(az.blobs(&container, false).iter().any(|b| b.contains(&format!("/{seg}-"))));
}

#[test]
fn a_temporary_file_left_on_sftp_by_kill_9_is_shown_then_removed() {
    let ssh = sshd();
    let env = TestEnv::new("sftpkill");
    load_incompressible(&env);
    let path = ssh.path();
    let storage = format!("storage:\n{}", ssh.target_yaml("sftp", &path, ""));
    env.write_config_with(false, &storage);
    let first = env.backup();
    let bin = env.fake_bin("pg_dump_hang_after_14mb.sh");
    env.write_config_with(false, &format!("pg_bin_dir: {}\nretention:\n  orphan_grace: 1s\n{storage}", bin.display()));
    let mut child = env
        .command(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = || files_under(&path).iter().any(|f| f.contains(".pgbackd-tmp-") && f.ends_with("data.zst"));
    let start = std::time::Instant::now();
    while !partial() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no temporary file on the SFTP server");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    send_signal(child.id(), libc::SIGKILL, false);
    child.wait().unwrap();
    let _ = std::process::Command::new("pkill").args(["-f", "sleep 4322"]).status();
    assert!(partial(), "the temporary file is the leftover under test");

    let out = env.run(&["verify", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 leftover of stopped processes") && stderr(&out).contains("sftp:"),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.write_config_with(false, &format!("retention:\n  orphan_grace: 1s\n{storage}"));
    env.backup();
    assert!(!partial(), "the next backup removed the leftover: {:?}", files_under(&path));
}

#[test]
fn sftp_signs_in_with_an_encrypted_key_and_its_passphrase_or_through_the_agent() {
    let ssh = sshd();
    let env = TestEnv::new("sftpkeys");
    // an encrypted copy of the authorized key
    let encrypted = env.dir.path().join("encrypted_key");
    std::fs::copy(&ssh.key, &encrypted).unwrap();
    std::fs::set_permissions(&encrypted, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "correct horse", "-P", "", "-f"])
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success());
    let with_key = |extra: &str| {
        ssh.target_yaml("vault", &ssh.path(), extra)
            .replace(&format!("key_file: {}", ssh.key.display()), &format!("key_file: {}", encrypted.display()))
    };
    let (ok, text) = check_connect(&env, &with_key("    key_passphrase: correct horse\n"));
    assert!(ok, "{text}");
    assert!(!text.contains("correct horse"), "the passphrase was printed: {text}");
    let (ok, text) = check_connect(&env, &with_key("    key_passphrase: wrong\n"));
    assert!(!ok);
    assert!(text.contains("refused") && text.contains("key_passphrase"), "{text}");
    let (ok, text) = check_connect(&env, &with_key(""));
    assert!(!ok, "{text}");

    // no key_file: the agent's keys
    let sock = env.dir.path().join("agent.sock");
    let agent = std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Kill(agent);
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let added = std::process::Command::new("ssh-add").arg(&ssh.key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let yaml = ssh.target_yaml("vault", &ssh.path(), "").replace(&format!("    key_file: {}\n", ssh.key.display()), "");
    env.write_config_with(false, &format!("storage:\n{yaml}"));
    let sock_text = sock.to_string_lossy().into_owned();
    let out = env.run_env(&["check-config", "--connect"], &[("SSH_AUTH_SOCK", sock_text.as_str())]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok      target vault"), "{}", stdout(&out));
}
