//! The shipped systemd unit, checked with the real `systemd-analyze` (package systemd;
//! scripts/deps.sh installs it): it verifies without a warning, its sandbox scores at most 3.0,
//! and every directory the example config writes to is writable under it.

use crate::harness::*;
use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    repo_file("deploy/pgbackd.service")
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
    let example = repo_file("config/pgbackd.yaml");
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

/// The compose file as a new user gets it: images pinned to a version (never `latest`), every
/// secret a docker secret backed by a file, none in the environment, and pgbackd given exactly
/// the secrets its config reads (not MinIO's root credentials); retention, verification and a
/// weekly test restore scheduled; `.env.example` names every variable the compose file uses.
#[test]
fn the_compose_file_pins_its_images_and_hands_pgbackd_only_its_own_secrets() {
    let compose: serde_json::Value = serde_saphyr::from_str(&repo_file("docker-compose.backup.yml")).unwrap();
    let config = repo_file("config/docker-compose.yaml");
    let env_example = repo_file(".env.example");
    let services = compose["services"].as_object().unwrap();
    let declared = compose["secrets"].as_object().unwrap();
    for (name, svc) in services {
        if let Some(image) = svc["image"].as_str() {
            // ${VAR:-default}: the default and .env.example's value are both pinned
            let (var, default) = image
                .strip_prefix("${")
                .and_then(|i| i.strip_suffix('}'))
                .and_then(|i| i.split_once(":-"))
                .unwrap_or_else(|| panic!("{name}: image {image} should be ${{VAR:-default}}"));
            let pinned = env_example
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{var}=")))
                .unwrap_or_else(|| panic!("{var} is not in .env.example"));
            for tag in [default, pinned] {
                let version = tag.rsplit_once(':').map(|(_, v)| v).unwrap_or("");
                assert!(!version.is_empty() && version != "latest", "{name}: {tag} is not pinned");
            }
        }
        for (k, v) in svc["environment"].as_object().into_iter().flatten() {
            let secretish = ["PASSWORD", "SECRET", "ACCESS_KEY", "ROOT_USER"].iter().any(|s| k.contains(s));
            assert!(!secretish || k.ends_with("_FILE"), "{name}: {k}={v} puts a secret in the environment");
        }
        assert!(svc.get("env_file").is_none(), "{name}: secrets come from docker secrets, not env files");
        for s in svc["secrets"].as_array().into_iter().flatten() {
            let s = s.as_str().unwrap();
            assert!(declared.contains_key(s), "{name} uses the undeclared secret {s}");
            assert!(declared[s]["file"].as_str().unwrap().starts_with("./secrets/"), "{s}");
        }
    }
    let given: Vec<&str> =
        services["pgbackd"]["secrets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let read = docker_secrets(&config);
    let (mut g, mut r) = (given.clone(), read.clone());
    g.sort();
    r.sort();
    assert_eq!(g, r, "pgbackd should get exactly the secrets config/docker-compose.yaml reads");
    assert!(!given.iter().any(|s| s.contains("root")), "pgbackd must not get MinIO's root credentials");
    // the bucket-scoped user: the policy file is mounted and names only the bucket
    let init = services["minio-init"]["entrypoint"].to_string();
    assert!(init.contains("admin policy attach") && init.contains("admin user add"), "{init}");
    let policy: serde_json::Value = serde_json::from_str(&repo_file("deploy/minio-pgbackd-policy.json")).unwrap();
    for st in policy["Statement"].as_array().unwrap() {
        for r in st["Resource"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(r == "arn:aws:s3:::pgbackd" || r == "arn:aws:s3:::pgbackd/*", "{r}");
        }
    }
    for job in ["retention:", "verification:", "test_restore: \"0 5 * * 0\""] {
        assert!(config.contains(&format!("  {job}")), "config/docker-compose.yaml schedules no {job}");
    }
}

/// The Dockerfile passes hadolint (scripts/s3-tools.sh installs it from PyPI): with the reasons
/// for the two rules it waives written beside them.
#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = crate::s3_servers::tools_dir().join("localstack/bin/hadolint");
    let out = Command::new(&hadolint)
        .args(["--no-color", "Dockerfile"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/s3-tools.sh", hadolint.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "hadolint Dockerfile:\n{text}");
    let dockerfile = repo_file("Dockerfile");
    for m in 13..=17 {
        assert!(dockerfile.contains(&format!("{m} ")) || dockerfile.contains(&format!("{m}\"")), "client {m}");
    }
    assert!(dockerfile.contains("--mount=type=cache"), "the cargo build is cached");
    assert!(
        !dockerfile.lines().any(|l| l.starts_with("FROM") && (l.contains(":latest") || l.contains(":1-"))),
        "pinned bases"
    );
}

/// scripts/package.sh builds a .deb (of this build's binary) that installs the binary, the unit
/// pointing at it, the example config as a conffile, completions and man pages; unpacked into a
/// scratch root, its binary runs and its config passes check-config.
#[test]
fn the_deb_installs_a_binary_that_checks_its_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package.sh"))
        .args(["--binary", BIN, "--uncompressed", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "package.sh: {}", String::from_utf8_lossy(&out.stderr));
    let deb = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned();
    assert!(deb.ends_with("_amd64.deb"), "{deb}");
    let info = Command::new("dpkg-deb").args(["--info", &deb]).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("Package: pgbackd") && info.contains("postinst"), "{info}");
    let control = Command::new("dpkg-deb").args(["--field", &deb, "Version"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&control.stdout).trim(), env!("CARGO_PKG_VERSION"));
    let postinst = Command::new("dpkg-deb").args(["--ctrl-tarfile", &deb]).output().unwrap();
    assert!(String::from_utf8_lossy(&postinst.stdout).contains("adduser --system --group"), "the pgbackd user");

    let root = dir.path().join("root");
    let x = Command::new("dpkg").args(["-x", &deb]).arg(&root).status().unwrap();
    assert!(x.success());
    for f in [
        "usr/bin/pgbackd",
        "lib/systemd/system/pgbackd.service",
        "etc/pgbackd/pgbackd.yaml",
        "usr/share/bash-completion/completions/pgbackd",
        "usr/share/zsh/vendor-completions/_pgbackd",
        "usr/share/man/man1/pgbackd.1.gz",
        "usr/share/man/man1/pgbackd-restore-cluster.1.gz",
        "usr/share/doc/pgbackd/operations.md",
    ] {
        assert!(root.join(f).is_file(), "the .deb has no {f}");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/pgbackd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pgbackd run") && !unit.contains("/usr/local/bin"), "{unit}");
    let bin = root.join("usr/bin/pgbackd");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("pgbackd {}", env!("CARGO_PKG_VERSION")));
    // the installed example, with the one secret it needs from the environment (as the unit's
    // EnvironmentFile gives it)
    let check = Command::new(&bin)
        .args(["check-config", "--config"])
        .arg(root.join("etc/pgbackd/pgbackd.yaml"))
        .env("POSTGRES_PASSWORD", "example")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "check-config of the installed example: {text}");
    assert!(text.contains("schedule full_backup"), "{text}");
}
