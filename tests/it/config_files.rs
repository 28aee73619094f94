//! Every file in config/ parses; check-config reports errors with exit 78.

use crate::harness::*;
use std::process::Command;

fn example_env(name: &str) -> Option<String> {
    match name {
        "POSTGRES_PASSWORD"
        | "MINIO_ROOT_USER"
        | "MINIO_ROOT_PASSWORD"
        | "AWS_ACCESS_KEY"
        | "AWS_SECRET_KEY"
        | "SMTP_USERNAME"
        | "SMTP_PASSWORD"
        | "SLACK_WEBHOOK" => Some(format!("example-{name}")),
        n if n.starts_with("DEMO_") => Some(if n == "DEMO_PGPORT" { "5432".into() } else { "/tmp/demo".into() }),
        _ => None,
    }
}

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match pgbackd::config::Config::from_yaml(&text, &name, &example_env) {
            Ok(c) => assert!(!c.databases.is_empty(), "{name}"),
            // the reference config schedules file and config backups without saying which paths,
            // and names a key file its users keep beside it; only those may fail
            Err(e) if name == "reference.yaml" => assert!(
                e.issues.iter().all(|i| i.message.contains("source sets under")
                    || (i.path == "encryption.key_file" && i.message.contains("does not exist"))),
                "{e}"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(seen >= 3, "expected the example configs in {}", dir.display());
}

#[test]
fn check_config_exits_78_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "database:\n  database: app\n  port: huge\nlocal_backup_dir: /r\nschedules:\n  full_backup: \"99 * * * *\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains("2 configuration errors"), "{err}");
    assert!(err.contains("database.port") && err.contains("line 3"), "{err}");
    assert!(err.contains("schedules.full_backup"), "{err}");

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("PGBACKD_CONFIG", dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("cannot read the config file"));
}

#[test]
fn check_config_accepts_a_valid_file() {
    let env = TestEnv::new("checkcfg");
    let out = env.run(&["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("configuration is valid"));
}
