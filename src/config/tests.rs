//! Config validation tables: each invalid config gives every error with its path and location.

use super::*;
use crate::schedule::Schedule;
use rstest::rstest;
use std::time::Duration;

fn env(name: &str) -> Option<String> {
    match name {
        "POSTGRES_PASSWORD" => Some("pg-secret".into()),
        "AWS_ACCESS_KEY" => Some("AKIAEXAMPLE".into()),
        "AWS_SECRET_KEY" => Some("aws-secret".into()),
        "SMTP_USERNAME" => Some("mailer".into()),
        "SMTP_PASSWORD" => Some("smtp-secret".into()),
        "SLACK_WEBHOOK" => Some("https://hooks.slack.com/services/T/B/X".into()),
        "PGPORT_OVERRIDE" => Some("6543".into()),
        _ => None,
    }
}

fn errors(yaml: &str) -> String {
    match Config::from_yaml(yaml, "test.yaml", &env) {
        Ok(_) => "valid".into(),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = "database:\n  database: app\nlocal_backup_dir: /var/lib/pgbackd\n";

#[test]
fn minimal_config_has_sensible_defaults() {
    let c = Config::from_yaml(MINIMAL, "m.yaml", &env).unwrap();
    assert_eq!(c.databases.len(), 1);
    let db = &c.databases[0];
    assert_eq!(db.name, "app");
    assert_eq!(
        db.connection,
        Connection {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: "app".into()
        }
    );
    assert!(c.compression.enabled);
    assert_eq!(c.compression.level, DEFAULT_LEVEL);
    assert_eq!(c.backup.segment_size, DEFAULT_SEGMENT_SIZE);
    assert_eq!(c.backup.row_counts, RowCounts::Exact);
    assert_eq!(c.backup.stall_timeout, Duration::from_secs(600));
    assert!(c.restore.safety_backup);
}

#[test]
fn reference_config_parses_and_only_reports_features_not_built_yet() {
    let text = include_str!("../../config/reference.yaml");
    let err = Config::from_yaml(text, "reference.yaml", &env).unwrap_err();
    insta::assert_snapshot!(err.to_string());
    // the one remaining error is what each user must add (the key file): nothing is unknown or
    // mistyped
    assert!(
        err.issues.iter().all(|i| i.path == "encryption.key_file" && i.message.contains("does not exist")),
        "{err}"
    );
    // with a key file it loads as shipped; its file and config backup schedules, without sets,
    // are warnings with their lines
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("backup_encryption_key");
    std::fs::write(&key, "a long enough passphrase\n").unwrap();
    let text = text.replace("key_file: config/backup_encryption_key", &format!("key_file: {}", key.display()));
    let c = Config::from_yaml(&text, "reference.yaml", &env).unwrap();
    // and its `channel: #backups`, which YAML reads as no channel
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("channel: has no value: \"#backups\""), "{:?}", c.warnings);
    assert!(c.warnings[1..].iter().all(|w| w.contains("does nothing") && w.contains("(line ")), "{:?}", c.warnings);
}

#[test]
fn reference_config_keys_keep_their_meaning() {
    // the reference config with the features this build lacks switched off or removed
    let original = include_str!("../../config/reference.yaml");
    let unbuilt = ["file_backup", "config_backup"];
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("backup_encryption_key");
    std::fs::write(&key, "a long enough passphrase\n").unwrap();
    let text: String = original
        .replace("enabled: true\n    from:", "enabled: false\n    from:")
        .replace("key_file: config/backup_encryption_key", &format!("key_file: {}", key.display()))
        .lines()
        .filter(|l| !unbuilt.iter().any(|k| l.starts_with(&format!("  {k}: \""))))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::from_yaml(&text, "reference.yaml", &env).unwrap();
    let db = &c.databases[0];
    assert_eq!(db.name, "cryoprotect");
    assert_eq!(
        (db.connection.host.as_str(), db.connection.port, db.connection.user.as_str()),
        ("localhost", 5432, "postgres")
    );
    assert_eq!(db.connection.password.as_ref().unwrap().expose(), "pg-secret");
    assert_eq!(c.targets.len(), 1, "aws.enabled is false");
    assert_eq!(c.targets[0].kind, storage::TargetKind::Local { path: PathBuf::from("backups/database") });
    assert_eq!(c.file_backup_dir, Some(PathBuf::from("backups/files")));
    assert_eq!(c.config_backup_dir, Some(PathBuf::from("backups/config")));
    let days = |p: &Option<KindPolicy>| p.as_ref().and_then(|p| p.keep_within).map(|d| d.as_secs() / 86400);
    assert_eq!(days(&c.retention.full_backup), Some(30));
    assert_eq!(days(&c.retention.incremental_backup), Some(7));
    assert_eq!(days(&c.retention.config_backup), Some(90));
    assert_eq!(c.retention.full_backup.as_ref().unwrap().min_keep, 3);
    assert_eq!(c.compression.level, 9);
    assert!(c.encryption.enabled);
    assert_eq!(c.encryption.key_file.as_deref(), Some(key.as_path()));
    let kinds: Vec<_> = c.schedules.iter().map(|s| (s.kind, s.schedule.expr())).collect();
    assert_eq!(
        kinds,
        [
            (JobKind::FullBackup, "0 1 * * *"),
            (JobKind::IncrementalBackup, "0 */6 * * *"),
            (JobKind::Verification, "0 4 * * *"),
            (JobKind::TestRestore, "0 5 * * 0"),
            (JobKind::Retention, "0 6 * * *")
        ]
    );
    // the other schedules are valid cron, kept for the jobs later releases add
    for k in unbuilt {
        let line = original.lines().find(|l| l.starts_with(&format!("  {k}: \""))).unwrap();
        let expr = line.split('"').nth(1).unwrap();
        assert!(Schedule::parse(expr, None).is_ok(), "{k}: {expr}");
    }
}

#[test]
fn disabled_sections_tolerate_unset_variables() {
    let yaml = format!("{MINIMAL}aws:\n  enabled: false\n  access_key: ${{NOT_SET_ANYWHERE}}\n");
    assert_eq!(errors(&yaml), "valid");
}

#[test]
fn several_databases_override_connection_fields() {
    let yaml = "database:\n  host: db.internal\n  username: backup\n  password: ${POSTGRES_PASSWORD}\n  database: app\n\
                databases:\n  - reports\n  - name: billing-eu\n    database: billing\n    host: eu.internal\n    port: ${PGPORT_OVERRIDE}\n\
                local_backup_dir: /r\n";
    let c = Config::from_yaml(yaml, "t", &env).unwrap();
    let names: Vec<_> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["app", "reports", "billing-eu"]);
    let eu = &c.databases[2].connection;
    assert_eq!(
        (eu.host.as_str(), eu.port, eu.user.as_str(), eu.dbname.as_str()),
        ("eu.internal", 6543, "backup", "billing")
    );
    assert_eq!(eu.password.as_ref().unwrap().expose(), "pg-secret");
    assert_eq!(c.databases[1].connection.host, "db.internal");
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-file\n").unwrap();
    let yaml = format!("database:\n  database: app\n  password_file: {}\nlocal_backup_dir: /r\n", f.display());
    let c = Config::from_yaml(&yaml, "t", &env).unwrap();
    assert_eq!(c.databases[0].connection.password.as_ref().unwrap().expose(), "from-file");
    // and a secret never shows in Debug output
    assert!(!format!("{c:?}").contains("from-file"));
}

#[rstest]
#[case::unknown_keys("databse:\n  host: x\nlocal_backup_dir: /r\ndatabase:\n  database: a\n  hots: y\n")]
#[case::wrong_types(
    "database:\n  database: app\n  port: abc\nlocal_backup_dir: /r\ncompression:\n  enabled: maybe\n  level: 40\n"
)]
#[case::unset_variable("database:\n  database: app\n  password: ${DB_PASSWORD}\nlocal_backup_dir: ${BACKUP_DIR}\n")]
#[case::bad_cron_and_kind(
    "database:\n  database: app\nlocal_backup_dir: /r\nschedules:\n  full_backup: \"0 25 * * *\"\n  nightly: \"0 1 * * *\"\n  verification: {cron: \"@daily\", timezone: Mars/Base}\n"
)]
#[case::missing_required("compression:\n  level: 3\n")]
#[case::bad_sizes_and_durations(
    "database:\n  database: app\nlocal_backup_dir: /r\nbackup:\n  segment_size: 1KiB\n  min_size: lots\n  stall_timeout: 10 parsecs\n  row_counts: approximate\n"
)]
#[case::zero_retention_and_long_form(
    "database:\n  database: app\nlocal_backup_dir: /r\nretention:\n  full_backup: 0\n  incremental_backup: {keep_last: 0}\n  file_backup: {min_keep: 2}\n  weekly: 4\n"
)]
#[case::duplicate_database("database:\n  database: app\ndatabases:\n  - app\n  - name: ../etc\nlocal_backup_dir: /r\n")]
#[case::both_password_forms(
    "database:\n  database: app\n  password: x\n  password_file: /nonexistent\nlocal_backup_dir: /r\n"
)]
#[case::encryption_and_notification_errors(
    "database:\n  database: app\nlocal_backup_dir: /r\nencryption:\n  enabled: true\n  key_file: k\nnotifications:\n  slack:\n    enabled: true\n    events: [failure, sometimes]\n  webhooks:\n    - name: ops\n      url: not-a-url-but-a-secret\n  healthchecks:\n    - job: backups\nmonitoring:\n  listen: nowhere\n"
)]
#[case::email_and_file_sets(
    "database:\n  database: app\nlocal_backup_dir: /r\nnotifications:\n  email:\n    enabled: true\n    from: not an address\n    to: [ok@example.com, also bad]\n    smtp_server: smtp.example.com\n    tls: ssl\n    smtp_username: u\nfiles:\n  - name: up/loads\n    paths: [relative/path]\n    exclude: [\"[unclosed\"]\n    full_every: 0\nschedules:\n  config_backup: \"0 3 * * 0\"\n"
)]
#[case::yaml_syntax("database: [unclosed\n")]
#[case::not_a_mapping("- just\n- a list\n")]
#[case::wal_name("wal:\n  name: ../other\n  method: push\n  slot: Bad-Slot\nlocal_backup_dir: /r\n")]
fn invalid_configs(#[case] yaml: &str) {
    let name =
        format!("invalid_{}", std::thread::current().name().unwrap_or("case").rsplit("::").next().unwrap_or("case"));
    insta::assert_snapshot!(name, errors(yaml), yaml);
}

#[test]
fn storage_targets_from_the_reference_keys_and_the_storage_list() {
    let yaml = "database:\n  database: app\nlocal_backup_dir: /var/backups\n\
                aws:\n  enabled: true\n  access_key: ${AWS_ACCESS_KEY}\n  secret_key: ${AWS_SECRET_KEY}\n  region: eu-west-1\n  bucket: b1\n  prefix: /db/\n\
                storage:\n  - name: minio\n    type: s3\n    endpoint: http://minio:9000\n    bucket: b2\n    required: false\n    \
                sse: aws:kms\n    kms_key_id: k1\n    part_size: 64MiB\n    max_concurrent_parts: 2\n    storage_class: STANDARD_IA\n  \
                - name: nas\n    type: local\n    path: /mnt/nas\n";
    let c = Config::from_yaml(yaml, "t", &env).unwrap();
    let names: Vec<_> = c.targets.iter().map(|t| (t.name.as_str(), t.required)).collect();
    assert_eq!(names, [("local", true), ("s3", true), ("minio", false), ("nas", true)]);
    let storage::TargetKind::S3(aws) = &c.targets[1].kind else { panic!("aws is not s3") };
    assert_eq!((aws.bucket.as_str(), aws.prefix.as_str(), aws.region.as_str()), ("b1", "db", "eu-west-1"));
    assert_eq!(aws.access_key.as_ref().unwrap().expose(), "AKIAEXAMPLE");
    assert!(!aws.force_path_style, "AWS itself uses virtual-hosted style");
    let storage::TargetKind::S3(minio) = &c.targets[2].kind else { panic!("minio is not s3") };
    assert!(minio.force_path_style, "an endpoint implies path style unless told otherwise");
    assert_eq!(minio.access_key, None, "no keys: the AWS credential chain");
    assert_eq!((minio.sse, minio.kms_key_id.as_deref()), (Some(storage::Sse::Kms), Some("k1")));
    assert_eq!((minio.part_size, minio.max_concurrent_parts), (64 << 20, 2));
}

#[rstest]
#[case::bad_targets(
    "database:\n  database: app\nstorage:\n  - name: x\n    type: ftp\n  - name: y\n    type: s3\n    endpoint: minio:9000\n    \
     bucket: b\n    part_size: 1MiB\n    kms_key_id: k\n    access_key: only-one\n  - name: y\n    type: local\n    path: /p\n"
)]
#[case::no_required_target(
    "database:\n  database: app\nstorage:\n  - name: nas\n    type: local\n    path: /p\n    required: false\n"
)]
fn invalid_storage(#[case] yaml: &str) {
    let name =
        format!("storage_{}", std::thread::current().name().unwrap_or("case").rsplit("::").next().unwrap_or("case"));
    insta::assert_snapshot!(name, errors(yaml), yaml);
}

#[test]
fn the_permission_warning_is_for_files_that_hold_a_secret_and_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, yaml: &str, mode: u32, gid: Option<u32>| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(g) = gid {
            std::os::unix::fs::chown(&path, None, Some(g)).unwrap();
        }
        Config::load(&path).unwrap().warnings
    };
    let literal = "database:\n  host: db\n  database: app\n  password: Literal-Pa55word\nlocal_backup_dir: /r\n";
    let from_env =
        "database:\n  host: db\n  database: app\n  password: ${PGBACKD_TEST_UNSET_PW:-}\nlocal_backup_dir: /r\n";
    // a secret as it is, readable by others: warned, with the remedy
    let w = load("literal.yaml", literal, 0o644, None);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("readable by others") && w[0].contains("chmod 600"), "{w:?}");
    // no secret in the file (it comes from the environment): no warning, whatever the mode
    assert!(load("env.yaml", from_env, 0o644, None).is_empty());
    // group-readable by this process's own group (root:pgbackd 0640 for a service in pgbackd): fine
    assert!(load("group.yaml", literal, 0o640, None).is_empty());
    // group-readable by another group: warned (only where the test may give a file away)
    if rustix::process::geteuid().is_root() {
        let other = rustix::process::getegid().as_raw() + 1;
        let w = load("other.yaml", literal, 0o640, Some(other));
        assert!(w.len() == 1 && w[0].contains("a group other than the process's own"), "{w:?}");
    }
}

#[test]
fn file_and_config_schedules_without_sets_warn_with_their_line_and_do_nothing() {
    let yaml = "database: {host: db, database: app}\nlocal_backup_dir: /r\nschedules:\n  full_backup: \"0 1 * * *\"\n  file_backup: \"0 2 * * *\"\n  config_backup: \"0 3 * * *\"\n";
    let c = Config::from_yaml(yaml, "m.yaml", &env).unwrap();
    let kinds: Vec<&str> = c.schedules.iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["full_backup"], "the set-less schedules are dropped");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("schedules.file_backup:") && c.warnings[0].contains("(line 5, column 3)"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[1].contains("configs:") && c.warnings[1].contains("line 6"), "{:?}", c.warnings);
    // with a set, the schedule stays and nothing is said
    let with = format!("{yaml}files:\n  - {{name: etc, paths: [/etc/hostname]}}\n");
    let c = Config::from_yaml(&with, "m.yaml", &env).unwrap();
    assert!(c.schedules.iter().any(|s| s.kind.name() == "file_backup"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn a_value_that_yaml_reads_as_a_comment_is_flagged_with_its_line() {
    let yaml = "database: {host: db, database: app}\nlocal_backup_dir: /r\nnotifications:\n  slack:\n    enabled: false\n    channel: #backups\n    webhook_url: https://hooks.slack.com/services/T/B/X   # the incoming webhook\nlogging:\n  file:   #optional\n    dir: /var/log/pgbackd\n";
    let c = Config::from_yaml(yaml, "m.yaml", &env).unwrap();
    assert_eq!(
        c.warnings.len(),
        1,
        "only channel: a spaced comment and a comment before a block are comments: {:?}",
        c.warnings
    );
    assert!(
        c.warnings[0].starts_with("channel: has no value: \"#backups\"")
            && c.warnings[0].contains("(line 6, column 5)"),
        "{:?}",
        c.warnings
    );
    // every shipped example is clean
    for text in [include_str!("../../config/pgbackd.yaml"), include_str!("../../config/docker-compose.yaml")] {
        let ctx = Ctx::new(&env);
        super::warn_comment_values(&ctx, text);
        assert!(ctx.warnings().is_empty(), "{:?}", ctx.warnings());
    }
}

#[test]
fn a_wal_only_config_needs_no_database() {
    let c = Config::from_yaml("wal: {name: main}\nlocal_backup_dir: /r\n", "t", &|_| None).unwrap();
    assert!(c.databases.is_empty());
    assert_eq!(c.wal.unwrap().name, "main");
    let c = Config::from_yaml("wal: {}\nlocal_backup_dir: /r\n", "t", &|_| None).unwrap();
    assert_eq!(c.wal.unwrap().name, "main", "the default name");
    let c = Config::from_yaml("database: {database: app}\nlocal_backup_dir: /r\n", "t", &|_| None).unwrap();
    assert_eq!(c.wal, None, "no wal: section, no WAL archiving");
}

#[test]
fn the_trigger_needs_a_real_token_and_warns_on_a_listener_other_hosts_reach() {
    let yaml = |m: &str| format!("{MINIMAL}monitoring:\n{m}");
    let e = errors(&yaml("  trigger:\n    behind_tls_proxy: true\n"));
    assert!(e.contains("monitoring.trigger.token_file: triggering jobs over HTTP needs a token"), "{e}");
    let e = errors(&yaml("  trigger:\n    token: short\n  status_page:\n    token: has a space in it\n"));
    assert!(e.contains("monitoring.trigger.token: a token needs at least 16 characters"), "{e}");
    assert!(e.contains("monitoring.status_page.token: a token needs"), "{e}");
    let e = errors(&yaml("  listen: off\n  trigger:\n    token: 0123456789abcdef\n"));
    assert!(e.contains("monitoring.listen is off"), "{e}");
    let token = "0123456789abcdef0123";
    let c = Config::from_yaml(&yaml(&format!("  trigger:\n    token: {token}\n")), "t", &env).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(c.secret_values().iter().any(|s| s.expose() == token), "the token is redacted like every secret");
    let c = Config::from_yaml(&yaml(&format!("  listen: 0.0.0.0:9187\n  trigger:\n    token: {token}\n")), "t", &env)
        .unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("0.0.0.0:9187 is not a loopback address")), "{:?}", c.warnings);
    let c = Config::from_yaml(
        &yaml(&format!("  listen: 0.0.0.0:9187\n  trigger:\n    token: {token}\n    behind_tls_proxy: true\n")),
        "t",
        &env,
    )
    .unwrap();
    assert!(c.warnings.is_empty() && c.monitoring.trigger.as_ref().unwrap().behind_tls_proxy, "{:?}", c.warnings);
    assert!(c.monitoring.status_page.enabled && !c.monitoring.loopback());
}

#[test]
fn azure_gcs_and_sftp_targets_and_their_credentials() {
    let yaml = "database:\n  database: app\nlocal_backup_dir: /var/backups\nstorage:\n\
                - name: az1\n    type: azure\n    container: pgb\n    prefix: /prod/\n    connection_string: \"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn\"\n\
                - name: az2\n    type: azure\n    account: acme\n    container: pgb\n    sas_token: \"?sv=2022&sig=x\"\n\
                - name: az3\n    type: azure\n    account: acme\n    container: pgb\n    part_size: 8MiB\n\
                - name: gcs\n    type: gcs\n    bucket: b\n    part_size: 512KiB\n    required: false\n\
                - name: box\n    type: sftp\n    host: h.example\n    user: u\n    path: /srv/pg/\n"
        .replace("\n- name", "\n  - name");
    let c = Config::from_yaml(&yaml, "t", &env).unwrap();
    let storage::TargetKind::Azure(a) = &c.targets[1].kind else { panic!("az1 is not azure") };
    assert_eq!((a.account.as_str(), a.prefix.as_str()), ("acme", "prod"));
    assert_eq!(a.endpoint.as_deref(), Some("https://acme.blob.core.chinacloudapi.cn"));
    assert!(matches!(&a.auth, storage::AzureAuth::AccessKey(k) if k.expose() == "a2V5"));
    let storage::TargetKind::Azure(a) = &c.targets[2].kind else { panic!("az2 is not azure") };
    assert!(matches!(&a.auth, storage::AzureAuth::Sas(s) if s.expose() == "sv=2022&sig=x"), "the leading ? goes");
    let storage::TargetKind::Azure(a) = &c.targets[3].kind else { panic!("az3 is not azure") };
    assert_eq!((&a.auth, a.upload.part_size, a.endpoint.as_deref()), (&storage::AzureAuth::Ambient, 8 << 20, None));
    let storage::TargetKind::Gcs(g) = &c.targets[4].kind else { panic!("gcs is not gcs") };
    assert_eq!(
        (g.upload.part_size, g.credentials_file.as_deref(), g.anonymous, c.targets[4].required),
        (512 << 10, None, false, false)
    );
    let storage::TargetKind::Sftp(s) = &c.targets[5].kind else { panic!("box is not sftp") };
    assert_eq!((s.port, s.path.as_str(), s.max_concurrent_writes, s.key_file.as_deref()), (22, "/srv/pg", 16, None));
    // Azurite's shortcut
    let dev = storage::parse_connection_string("UseDevelopmentStorage=true").unwrap();
    assert_eq!(dev.endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
    // the secrets are redacted from logs
    assert!(c.secret_values().iter().any(|s| s.expose() == "a2V5"));
}

#[test]
fn wrong_azure_gcs_and_sftp_targets_are_named() {
    let text = errors(
        &"database:\n  database: app\nlocal_backup_dir: /b\nstorage:\n\
         - name: a\n    type: azure\n    container: pgb\n    access_key: k\n    sas_token: s\n\
         - name: b\n    type: azure\n    container: x\n\
         - name: c\n    type: azure\n    container: pgb\n    connection_string: \"AccountName=acme\"\n\
         - name: d\n    type: gcs\n    bucket: b\n    part_size: 300KiB\n\
         - name: e\n    type: sftp\n    host: h\n    path: /p\n    key_passphrase: x\n"
            .replace("\n- name", "\n  - name"),
    );
    assert!(
        text.contains("storage[0].connection_string: give one of connection_string, access_key and sas_token"),
        "{text}"
    );
    assert!(text.contains("storage[1].account: is required"), "{text}");
    assert!(text.contains("\"x\" is not a valid container name"), "{text}");
    assert!(
        text.contains(
            "storage[2].connection_string: is not an Azure Storage connection string: it has neither AccountKey"
        ),
        "{text}"
    );
    assert!(text.contains("storage[3].part_size: must be a multiple of 256KiB"), "{text}");
    assert!(text.contains("storage[4].user"), "{text}");
    assert!(text.contains("storage[4].key_passphrase: is only used with key_file"), "{text}");
}

#[test]
fn sqlite_files_are_read_checked_and_scheduled() {
    let yaml = "local_backup_dir: /r\nsqlite:\n  - name: app\n    path: /srv/app/app.db\n  - {name: cache, path: /srv/cache.db, full_every: 1, busy_timeout: 5s}\nschedules:\n  sqlite_backup: \"*/15 * * * *\"\nretention:\n  sqlite_backup: 14\n";
    let c = Config::from_yaml(yaml, "s.yaml", &env).unwrap();
    assert!(c.databases.is_empty(), "a config of SQLite files alone needs no database");
    let got: Vec<(&str, &str, u32, u64)> = c
        .sqlite
        .iter()
        .map(|s| (s.name.as_str(), s.path.to_str().unwrap(), s.full_every, s.busy_timeout.as_secs()))
        .collect();
    assert_eq!(got, [("app", "/srv/app/app.db", 7, 60), ("cache", "/srv/cache.db", 1, 5)]);
    assert_eq!(c.schedules.iter().map(|s| s.kind.name()).collect::<Vec<_>>(), ["sqlite_backup"]);
    assert!(c.retention.sqlite_backup.as_ref().is_some_and(|p| p.keep_within.is_some()));
    let subjects = crate::jobs::context::subjects_for(&c, crate::jobs::JobKind::SqliteBackup);
    assert_eq!(subjects.iter().map(ToString::to_string).collect::<Vec<_>>(), ["sqlite:app", "sqlite:cache"]);
    let tested = crate::jobs::context::subjects_for(&c, crate::jobs::JobKind::TestRestore);
    assert_eq!(tested.len(), 2);

    let bad = errors(
        "local_backup_dir: /r\nsqlite:\n  - {name: a/b, path: relative.db}\n  - {name: x, path: /d.db, full_every: 0, busy_timeout: 0s}\n  - {name: x, path: /e.db}\n  - {name: y, path: /d.db}\n",
    );
    for want in [
        "sqlite[0].path: relative.db is not an absolute path",
        "sqlite[1].full_every: must be 1 (always full) or more",
        "sqlite[1].busy_timeout: 0 would fail every backup",
        "sqlite[2].name: \"x\" is used twice",
        "sqlite[3].path: /d.db is already backed up as \"x\"",
    ] {
        assert!(bad.contains(want), "missing {want:?} in:\n{bad}");
    }
    // a schedule without files says so, and is dropped
    let c =
        Config::from_yaml(&format!("{MINIMAL}schedules:\n  sqlite_backup: \"0 * * * *\"\n"), "s.yaml", &env).unwrap();
    assert!(c.schedules.is_empty());
    assert!(
        c.warnings[0].starts_with("schedules.sqlite_backup:") && c.warnings[0].contains("sqlite:"),
        "{:?}",
        c.warnings
    );
}
