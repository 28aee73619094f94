//! The shipped systemd unit, checked with the real `systemd-analyze` (package systemd;
//! scripts/deps.sh installs it): it verifies without a warning, its sandbox scores at most 3.0,
//! and every directory the example config writes to is writable under it.

use crate::harness::*;
use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pgbackd.service")).unwrap()
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze is not installed: run scripts/deps.sh (apt install systemd)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_systemd_unit_verifies_is_sandboxed_and_can_write_where_the_example_config_writes() {
    let dir = tempfile::tempdir().unwrap();
    // the unit as installed, with the binary where this build has it
    let unit = dir.path().join("pgbackd.service");
    std::fs::write(&unit, unit_text().replace("/usr/local/bin/pgbackd", BIN)).unwrap();
    let (ok, text) = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify: {text}");
    let (ok, text) = systemd_analyze(&["security", "--offline=true", "--threshold=30", unit.to_str().unwrap()]);
    let score = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_owned();
    assert!(ok, "systemd-analyze security scores the unit above 3.0: {score}\n{text}");

    // what the example config writes to is writable in the sandbox (ProtectSystem=strict
    // makes everything else read-only), and the socket directory is optional
    let text = unit_text();
    let writable: Vec<String> = text
        .lines()
        .filter_map(|l| {
            if let Some(v) = l.strip_prefix("ReadWritePaths=") {
                Some(v.to_owned())
            } else if let Some(v) = l.strip_prefix("StateDirectory=") {
                Some(format!("/var/lib/{v}"))
            } else {
                l.strip_prefix("LogsDirectory=").map(|v| format!("/var/log/{v}"))
            }
        })
        .collect();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgbackd.yaml")).unwrap();
    for key in ["dir: /var/lib/pgbackd/reports", "dir: /var/log/pgbackd"] {
        let path = key.trim_start_matches("dir: ");
        assert!(example.contains(key), "config/pgbackd.yaml no longer has {key}: update this test");
        assert!(
            writable.iter().any(|w| path.starts_with(w.as_str())),
            "{path} is not writable under the unit: {writable:?}"
        );
    }
    assert!(text.contains("WorkingDirectory=/var/lib/pgbackd"), "relative paths need a writable working directory");
    assert!(text.contains("ReadOnlyPaths=-/var/run/postgresql"), "the socket directory must be optional");
}
