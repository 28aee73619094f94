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
        | "SLACK_WEBHOOK"
        | "AZURE_SAS_TOKEN" => Some(format!("example-{name}")),
        n if n.starts_with("DEMO_") => Some(if n == "DEMO_PGPORT" { "5432".into() } else { "/tmp/demo".into() }),
        _ => None,
    }
}

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // docker secrets the compose config reads: files in a scratch /run/secrets
    let secrets = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        let mut text = std::fs::read_to_string(&path).unwrap();
        for file in docker_secrets(&text) {
            std::fs::write(secrets.path().join(file), format!("example-{file}\n")).unwrap();
        }
        text = text.replace("/run/secrets/", &format!("{}/", secrets.path().display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match pgbackd::config::Config::from_yaml(&text, &name, &example_env) {
            // a WAL-only sidecar config names no database
            Ok(c) => assert!(!c.databases.is_empty() || c.wal.is_some(), "{name}"),
            // the reference config names a key file its users keep beside it; only that may fail
            Err(e) if name == "reference.yaml" => assert!(
                e.issues.iter().all(|i| i.path == "encryption.key_file" && i.message.contains("does not exist")),
                "{e}"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(seen >= 3, "expected the example configs in {}", dir.display());
}

/// `pgbackd check-config` of `yaml`, written to `dir/name`.
fn check_config(dir: &std::path::Path, name: &str, yaml: &str) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap()
}

#[test]
fn check_config_shows_what_does_nothing_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        dir.path(),
        "setless.yaml",
        "database:\n  database: app\nlocal_backup_dir: /r\nschedules:\n  full_backup: \"0 1 * * *\"\n  file_backup: \"0 2 * * *\"\n",
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("warning  schedules.file_backup:")
            && text.contains("does nothing")
            && text.contains("(line 6, column 3)"),
        "{text}"
    );
    assert!(!text.contains("schedule file_backup"), "a schedule that does nothing is not listed as one: {text}");
}

#[test]
fn check_config_exits_78_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        dir.path(),
        "bad.yaml",
        "database:\n  database: app\n  port: huge\nlocal_backup_dir: /r\nschedules:\n  full_backup: \"99 * * * *\"\n",
    );
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

/// Broken files get our own words with line and column, never the parser's internals.
#[test]
fn broken_yaml_is_explained_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = String::from("a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
    for i in 1..12 {
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
    }
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("dup", b"database:\n  host: a\n  host: b\n".to_vec(), "the key `host` appears twice", "(line 3, column 3)"),
        ("bomb", bomb.into_bytes(), "the file is too large for a configuration", "(line "),
        (
            "latin1",
            b"database:\n  host: caf\xe9\n".to_vec(),
            "the file is not UTF-8 text: byte 0xE9",
            "(line 2, column 12)",
        ),
        ("tab", b"database:\n\thost: a\n".to_vec(), "YAML indents with spaces only", "(line 2, column 2)"),
        ("multi", b"a: 1\n---\nb: 2\n".to_vec(), "more than one YAML document", "(line 3, column 1)"),
        ("unclosed", b"database:\n  host: [a, b\n".to_vec(), "the bracket '[' is never closed", "(line 2, column 9)"),
        // another tool's name for a key
        (
            "synonym",
            b"database:\n  user: x\n".to_vec(),
            "database.user: unknown key; pgbackd calls it \"username\"",
            "(line 2, column 3)",
        ),
    ];
    for (name, bytes, message, at) in cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, bytes).unwrap();
        let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{name}");
        let err = stderr(&out);
        assert!(err.contains(message) && err.contains(at), "{name}: {err}");
        for internal in ["DuplicateKeyPolicy", "budget", "Nodes {", "from_str", "Options"] {
            assert!(!err.contains(internal), "{name}: parser internals ({internal}) in {err}");
        }
    }
}
