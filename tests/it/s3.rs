//! S3 storage against real S3-compatible servers (LocalStack, s3s-fs), several targets at once,
//! multipart aborts, and a fault-injecting proxy.

use crate::fault_proxy::FaultProxy;
use crate::harness::*;
use crate::s3_servers::{S3Server, localstack, rt, s3s};
use pgbackd::storage::Store;
use std::sync::atomic::Ordering;

fn load_data(env: &TestEnv) {
    env.psql(
        "create table items (id int primary key, name text, price numeric(10,2), tags jsonb);
         insert into items select g, 'item ' || g, g * 0.5, jsonb_build_array(g % 7, 'x') from generate_series(1, 30000) g;
         create sequence s; select setval('s', 42);",
    );
}

/// About 20 MB of random bytes (40 MB as COPY hex): several 5 MiB parts even after compression.
pub(crate) fn load_incompressible(env: &TestEnv) {
    env.psql(
        "create table noise (id int primary key, data bytea);
         insert into noise select g, decode(string_agg(md5(random()::text || g || s), ''), 'hex')
         from generate_series(1, 20000) g, generate_series(1, 64) s group by g;",
    );
}

pub(crate) fn assert_identical(db: &str, target: &str) {
    let tables = user_tables(db);
    assert_eq!(tables, user_tables(target));
    for t in &tables {
        assert_eq!(fingerprint(db, t), fingerprint(target, t), "table {t} differs");
    }
}

fn round_trip_through(server: &S3Server) {
    let env = TestEnv::new(&format!("s3rt_{}", server.name));
    load_data(&env);
    let bucket = server.bucket();
    env.write_config(&format!("storage:\n{}", server.target_yaml("offsite", &bucket, "")));
    let id = env.backup();
    let list = env.list_json();
    assert_eq!(list[0]["targets"], serde_json::json!(["local", "offsite"]));
    assert!(server.keys(&bucket).iter().any(|k| k.ends_with(&format!("{id}/manifest.json"))));

    // without the local copy, the restore reads from S3
    std::fs::remove_dir_all(env.repository().join(&env.db).join(&id)).unwrap();
    assert_eq!(env.list_json()[0]["targets"], serde_json::json!(["offsite"]));
    let target = unique("s3rt_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_identical(&env.db, &target);

    // deep verification reads the S3 copy (ranged reads) and finds the local one gone
    let out = env.run(&["verify", &id, "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("ok      target offsite") && text.contains("FAILED  target local"), "{text}");
    let out = env.run(&["test-restore", &id]);
    assert!(out.status.success(), "test restore from S3: {}", stdout(&out));
}

#[test]
fn backup_to_local_and_localstack_in_one_run_restores_from_s3() {
    round_trip_through(localstack());
}

#[test]
fn backup_to_local_and_s3s_with_signature_checks_restores_from_s3() {
    round_trip_through(s3s());
}

#[test]
fn an_s3_only_repository_works_without_checksums_too() {
    let server = s3s();
    let env = TestEnv::new("s3only");
    load_data(&env);
    let bucket = server.bucket();
    env.write_config_with(false, &format!("storage:\n{}", server.target_yaml("s3", &bucket, "    checksum: none\n")));
    let id = env.backup();
    let target = unique("s3only_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_identical(&env.db, &target);
}

#[test]
fn a_large_object_is_uploaded_in_more_than_three_parts() {
    let server = localstack();
    let env = TestEnv::new("parts");
    load_incompressible(&env);
    let bucket = server.bucket();
    env.write_config_with(false, &format!("storage:\n{}", server.target_yaml("s3", &bucket, "")));
    let id = env.backup();
    let key = format!("backups/{}/{id}/data.zst", env.db);
    let client = server.client();
    let head = rt().block_on(client.head_object().bucket(&bucket).key(&key).part_number(1).send()).unwrap();
    let parts = head.parts_count().unwrap_or(1);
    assert!(parts > 3, "{key} has {parts} parts");
    assert_eq!(server.open_uploads(&bucket), 0);
    let target = unique("parts_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_identical(&env.db, &target);
}

#[test]
fn listing_pages_past_a_thousand_keys_and_deletes_batch() {
    let server = s3s();
    let bucket = server.bucket();
    let cfg = pgbackd::config::storage::S3Config {
        bucket: bucket.clone(),
        prefix: "many".into(),
        region: "us-east-1".into(),
        endpoint: Some(server.endpoint.clone()),
        force_path_style: true,
        access_key: Some(pgbackd::secret::Secret::new(server.access_key)),
        secret_key: Some(pgbackd::secret::Secret::new(server.secret_key)),
        storage_class: None,
        sse: None,
        kms_key_id: None,
        part_size: 5 << 20,
        max_concurrent_parts: 4,
        checksum: pgbackd::config::storage::Checksum::Sha256,
        max_attempts: 3,
    };
    rt().block_on(async {
        let store = std::sync::Arc::new(pgbackd::storage::s3::S3Store::new("s3", &cfg).await.unwrap());
        let keys: Vec<String> = (0..1105).map(|i| format!("db/{i:05}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in keys.chunks(100) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for k in chunk {
                    store.put(&k, bytes::Bytes::from_static(b"x")).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let listed = store.list("db/").await.unwrap();
        assert_eq!(listed.len(), 1105);
        assert_eq!(listed[1104].key, "db/01104");
        store.delete(&keys).await.unwrap();
        assert!(store.list("db/").await.unwrap().is_empty());
    });
}

#[test]
fn a_failed_backup_aborts_its_multipart_upload() {
    let server = localstack();
    let env = TestEnv::new("s3fail");
    load_incompressible(&env);
    let bucket = server.bucket();
    let bin = env.fake_bin("pg_dump_fail_after_14mb.sh");
    env.write_config_with(
        false,
        &format!("pg_bin_dir: {}\nstorage:\n{}", bin.display(), server.target_yaml("s3", &bucket, "")),
    );
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exited with status 1"), "{}", stderr(&out));
    assert_eq!(server.open_uploads(&bucket), 0, "orphaned multipart upload");
    assert!(server.data_keys(&bucket).is_empty(), "{:?}", server.keys(&bucket));
}

#[test]
fn a_cancelled_backup_aborts_its_multipart_upload() {
    let server = localstack();
    let env = TestEnv::new("s3cancel");
    load_incompressible(&env);
    let bucket = server.bucket();
    let bin = env.fake_bin("pg_dump_hang_after_14mb.sh");
    env.write_config_with(
        false,
        &format!("pg_bin_dir: {}\nstorage:\n{}", bin.display(), server.target_yaml("s3", &bucket, "")),
    );
    let child = env
        .command(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until parts are being uploaded
    let start = std::time::Instant::now();
    while server.open_uploads(&bucket) == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no multipart upload started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    send_signal(child.id(), libc::SIGTERM, false);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert_eq!(server.open_uploads(&bucket), 0, "orphaned multipart upload");
    assert!(server.data_keys(&bucket).is_empty(), "{:?}", server.keys(&bucket));
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 4322"]).output().unwrap();
    assert!(left.stdout.is_empty(), "the hanging pg_dump is still running");
}

#[test]
fn twenty_percent_injected_faults_still_give_an_identical_restore() {
    let server = localstack();
    let env = TestEnv::new("faults");
    load_data(&env);
    load_incompressible(&env);
    let bucket = server.bucket();
    let proxy = FaultProxy::start(&server.endpoint, 5);
    let yaml = server.target_yaml("s3", &bucket, "").replace(&server.endpoint, &proxy.endpoint);
    env.write_config_with(false, &format!("storage:\n{yaml}"));
    let id = env.backup();
    let target = unique("faults_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_identical(&env.db, &target);
    let (requests, failed) = (proxy.stats.requests.load(Ordering::Relaxed), proxy.stats.failed.load(Ordering::Relaxed));
    assert!(requests >= 20 && failed == requests / 5, "{failed} of {requests} requests failed");
    assert_eq!(server.open_uploads(&bucket), 0);
}

#[test]
fn all_requests_failing_is_a_clear_failure_and_nothing_is_listed() {
    let server = localstack();
    let env = TestEnv::new("allfail");
    load_data(&env);
    let bucket = server.bucket();
    let proxy = FaultProxy::start(&server.endpoint, 1);
    let yaml = server.target_yaml("s3", &bucket, "    max_attempts: 2\n").replace(&server.endpoint, &proxy.endpoint);
    env.write_config_with(false, &format!("storage:\n{yaml}"));
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("s3://")
            && (err.contains("InternalError (HTTP 500)")
                || err.contains("SlowDown (HTTP 503)")
                || err.contains("cannot reach")),
        "{err}"
    );
    assert!(err.lines().count() < 20, "{err}");
    assert!(proxy.stats.failed.load(Ordering::Relaxed) > 0);
    // seen directly, without the proxy: nothing was stored
    assert!(server.keys(&bucket).is_empty(), "{:?}", server.keys(&bucket));
    assert_eq!(server.open_uploads(&bucket), 0);
}

#[test]
fn an_optional_target_that_is_down_gives_a_warning_not_a_failure() {
    let env = TestEnv::new("optional");
    load_data(&env);
    let down = "  - name: offsite\n    type: s3\n    endpoint: http://127.0.0.1:9\n    bucket: nowhere\n    \
                access_key: a\n    secret_key: b\n    required: false\n    max_attempts: 2\n";
    env.write_config(&format!("storage:\n{down}"));
    let id = env.backup();
    let list = env.list_json();
    assert_eq!(list[0]["targets"], serde_json::json!(["local"]));
    let warnings = list[0]["warnings"].to_string();
    assert!(warnings.contains("optional target offsite"), "{warnings}");
    let manifest = std::fs::read_to_string(env.repository().join(&env.db).join(&id).join("manifest.json")).unwrap();
    assert!(manifest.contains("\"targets\": [\n    \"local\"\n  ]"), "{manifest}");
}

#[test]
fn check_config_connect_probes_every_target() {
    let server = localstack();
    let env = TestEnv::new("probe");
    let bucket = server.bucket();
    env.write_config(&format!("storage:\n{}", server.target_yaml("offsite", &bucket, "")));
    let out = env.run(&["check-config", "--connect"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for step in ["write", "read", "list", "delete"] {
        assert!(
            text.contains(&format!("ok      target offsite (s3://{bucket}/backups at {}): {step}", server.endpoint)),
            "{text}"
        );
    }
    assert!(text.contains(&format!("ok      database {}", env.db)), "{text}");
    assert!(server.keys(&bucket).is_empty(), "the probe left {:?}", server.keys(&bucket));

    let down = "  - name: offsite\n    type: s3\n    endpoint: http://127.0.0.1:9\n    bucket: nowhere\n    \
                access_key: a\n    secret_key: b\n    max_attempts: 1\n";
    env.write_config(&format!("storage:\n{down}"));
    let out = env.run(&["check-config", "--connect"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAILED  target offsite"), "{}", stdout(&out));
}

#[test]
fn retention_deletes_on_every_target() {
    let server = localstack();
    let env = TestEnv::new("s3ret");
    load_data(&env);
    let bucket = server.bucket();
    env.write_config(&format!(
        "retention:\n  full_backup:\n    keep_last: 1\n    min_keep: 1\nstorage:\n{}",
        server.target_yaml("offsite", &bucket, "")
    ));
    let old = env.backup();
    let new = env.backup();
    let out = env.run(&["retention", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let per_target = &runs[0]["applied"]["per_target"];
    assert_eq!((per_target["local"][0].as_u64(), per_target["offsite"][0].as_u64()), (Some(1), Some(1)), "{runs}");
    let keys = server.keys(&bucket);
    assert!(!keys.iter().any(|k| k.contains(&old)), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains(&new)));
    assert_eq!(env.list_json().len(), 1);
}

#[test]
fn an_incremental_on_s3_reads_its_base_by_ranges_and_restores_identically() {
    let server = s3s();
    let env = TestEnv::new("s3inc");
    load_data(&env);
    let bucket = server.bucket();
    env.write_config_with(false, &format!("storage:\n{}", server.target_yaml("s3", &bucket, "")));
    env.backup();
    env.psql("update items set price = price + 1 where id % 50 = 0; insert into items select g, 'late', 1, '[]' from generate_series(30001, 30100) g;");
    let out = env.run(&["backup", "--kind", "incremental"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let target = unique("s3inc_restored");
    let out = env.run(&["restore", &id, "--target-database", &target, "--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_identical(&env.db, &target);
    let out = env.run(&["verify", &id, "--deep"]);
    assert!(out.status.success(), "{}", stdout(&out));
}

/// kill -9 mid-upload leaves a multipart upload: verify shows it, the next backup aborts it once
/// it is older than orphan_grace.
#[test]
fn a_multipart_upload_left_by_kill_9_is_shown_then_aborted_on_s3() {
    let server = localstack();
    let env = TestEnv::new("s3kill9");
    load_incompressible(&env);
    let bucket = server.bucket();
    let storage = format!("storage:\n{}", server.target_yaml("s3", &bucket, ""));
    env.write_config_with(false, &format!("retention:\n  orphan_grace: 1s\n{storage}"));
    let first = env.backup();
    let bin = env.fake_bin("pg_dump_hang_after_14mb.sh");
    env.write_config_with(false, &format!("pg_bin_dir: {}\nretention:\n  orphan_grace: 1s\n{storage}", bin.display()));
    let mut child = env
        .command(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while server.open_uploads(&bucket) == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no multipart upload started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    send_signal(child.id(), libc::SIGKILL, false);
    child.wait().unwrap();
    let _ = std::process::Command::new("pkill").args(["-9", "-f", "sleep 4322"]).status();
    assert_eq!(server.open_uploads(&bucket), 1, "the upload kill -9 left behind");
    let out = env.run(&["verify", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 leftover of stopped processes")
            && stderr(&out).contains("(unfinished write)")
            && stderr(&out).contains("s3:"),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.write_config_with(false, &format!("retention:\n  orphan_grace: 1s\n{storage}"));
    env.backup();
    assert_eq!(server.open_uploads(&bucket), 0, "the next backup aborted it");
}

/// Each way an S3 target can be wrong fails with the server's words and what to change, never
/// the SDK's Debug dump: endpoint down, host that does not resolve, no such bucket, access
/// denied, an unknown access key, a wrong secret key.
#[test]
fn s3_errors_say_what_to_do() {
    let (ls, s3s) = (localstack(), s3s());
    let env = TestEnv::new("s3errors");
    load_data(&env);
    let bucket = s3s.bucket();
    let denying = FaultProxy::denying(&ls.endpoint);
    let ls_bucket = ls.bucket();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let good = s3s.target_yaml("s3", &bucket, "    max_attempts: 1\n");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            good.replace(&s3s.endpoint, &format!("http://127.0.0.1:{dead}")),
            vec!["cannot reach http://127.0.0.1:", "Connection refused", "check the target's endpoint (host, port"],
        ),
        (
            good.replace("127.0.0.1", "no-such-host.invalid"),
            vec!["the host name does not resolve: check the target's endpoint"],
        ),
        (
            ls.target_yaml("s3", "no-such-bucket-here", "    max_attempts: 1\n"),
            vec!["NoSuchBucket (HTTP 404)", "the bucket no-such-bucket-here does not exist at", "create it"],
        ),
        (
            ls.target_yaml("s3", &ls_bucket, "    max_attempts: 1\n").replace(&ls.endpoint, &denying.endpoint),
            vec!["AccessDenied (HTTP 403)", "grant s3:ListBucket, s3:GetObject, s3:PutObject"],
        ),
        (
            good.replace(s3s.access_key, "WRONGACCESSKEY"),
            vec!["(HTTP 403)", "the server does not know this access key: check the target's access_key"],
        ),
        (
            good.replace(s3s.secret_key, "not-the-secret-key"),
            vec!["SignatureDoesNotMatch (HTTP 403)", "the secret key does not belong to the access key"],
        ),
    ];
    for (yaml, expected) in cases {
        env.write_config_with(false, &format!("storage:\n{yaml}"));
        let out = env.run(&["backup"]);
        assert_eq!(out.status.code(), Some(1), "{yaml}\n{}", stderr(&out));
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        for e in expected {
            assert!(last.contains(e), "lacks {e:?}: {last}");
        }
        for debug in ["DispatchFailure", "Some(", "ConnectorError", "{ "] {
            assert!(!err.contains(debug), "Debug output ({debug}) in: {err}");
        }
    }
}
