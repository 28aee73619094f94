//! Retention on a real repository: dry runs change nothing, apply deletes exactly the plan, a crash
//! between manifest and data deletion is cleaned up, failed backups stop retention.

use crate::harness::*;
use chrono::{Duration, Utc};

/// Backs up `ages.len()` times and backdates each backup by the given number of days.
fn aged_backups(env: &TestEnv, ages: &[i64]) -> Vec<String> {
    ages.iter()
        .map(|days| {
            let id = env.backup();
            let path = env.repository().join(&env.db).join(&id).join("manifest.json");
            let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let at = Utc::now() - Duration::days(*days);
            m["started_at"] = at.to_rfc3339().into();
            m["finished_at"] = (at + Duration::seconds(1)).to_rfc3339().into();
            std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            reseal(path.parent().unwrap());
            id
        })
        .collect()
}

fn repository_snapshot(env: &TestEnv) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> =
        env.repository_files().iter().map(|f| (f.display().to_string(), std::fs::metadata(f).unwrap().len())).collect();
    files.sort();
    files
}

#[test]
fn a_dry_run_changes_nothing_and_apply_deletes_exactly_the_plan() {
    let env = TestEnv::new("ret");
    env.psql("create table t (id int); insert into t select generate_series(1, 1000);");
    env.write_config("retention:\n  full_backup:\n    keep_within: 15d\n    min_keep: 1\n");
    let ids = aged_backups(&env, &[40, 35, 20, 10, 1]);
    let before = repository_snapshot(&env);

    let out = env.run(&["retention", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = runs[0]["decisions"].as_array().unwrap();
    let to_delete: Vec<&str> = plan.iter().filter(|d| d["keep"] == false).map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(to_delete, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert!(plan.iter().filter(|d| d["keep"] == true).all(|d| d["reasons"].to_string().contains("keep_within 15d")));
    assert_eq!(repository_snapshot(&env), before, "a dry run changed the repository");
    let table = stdout(&env.run(&["retention", "--dry-run"]));
    assert!(table.contains("DELETE") && table.contains("no rule keeps it") && table.contains("3 to delete"), "{table}");

    let out = env.run(&["retention"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let left: Vec<String> = env.list_json().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(left, [ids[3].clone(), ids[4].clone()]);
    for id in &ids[..3] {
        assert!(!env.repository().join(&env.db).join(id).exists(), "{id} still has data");
    }
    let reports = files_under(&env.dir.path().join("reports/backup_retention"));
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&reports[0]).unwrap()).unwrap();
    assert_eq!(report["details"]["deleted"].as_array().unwrap().len(), 3);
    assert!(report["details"]["bytes_freed"].as_u64().unwrap() > 0);
    assert!(report["details"]["per_target"]["local"][0] == 3, "{report}");

    // a second run deletes nothing more
    let after = repository_snapshot(&env);
    assert!(env.run(&["retention"]).status.success());
    assert_eq!(repository_snapshot(&env), after);
}

#[test]
fn at_previews_the_future_and_requires_a_dry_run() {
    let env = TestEnv::new("retat");
    env.psql("create table t (id int);");
    env.write_config("retention:\n  full_backup: 7\n");
    aged_backups(&env, &[6, 5, 4, 3]);
    let in_ten_days = (Utc::now() + Duration::days(10)).format("%Y-%m-%d").to_string();
    let out = env.run(&["retention", "--dry-run", "--at", &in_ten_days, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // ten days on, all are older than 7 days: only the floor (min_keep 3) keeps any
    let kept = runs[0]["decisions"].as_array().unwrap().iter().filter(|d| d["keep"] == true).count();
    assert_eq!(kept, 3);
    assert_eq!(env.list_json().len(), 4);
    let out = env.run(&["retention", "--at", &in_ten_days]);
    assert_eq!(out.status.code(), Some(2), "--at without --dry-run is a usage error");
}

#[test]
fn a_crash_between_manifest_and_data_deletion_is_cleaned_up_by_the_next_run() {
    let env = TestEnv::new("retorphan");
    env.psql("create table t (id int); insert into t values (1);");
    let ids = aged_backups(&env, &[3, 2]);
    // the crash: deletion removes the manifest and its digest first; the data stayed
    let dir = env.repository().join(&env.db).join(&ids[0]);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" || name.starts_with("manifest.sha256.") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    assert_eq!(env.list_json().len(), 1);
    // within the grace period (an upload in progress looks the same) the data is left alone
    env.write_config("retention:\n  full_backup: 30\n");
    assert!(env.run(&["retention"]).status.success());
    assert!(env.repository().join(&env.db).join(&ids[0]).join("data.zst").exists());
    env.write_config("retention:\n  full_backup: 30\n  orphan_grace: 1s\n");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = env.run(&["retention"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(&format!("removed data without a manifest: local:{}", ids[0])), "{}", stdout(&out));
    assert!(!env.repository().join(&env.db).join(&ids[0]).exists());
    assert_eq!(env.list_json().len(), 1, "the good backup is untouched");
}

#[test]
fn retention_is_skipped_while_the_newest_backup_attempt_failed() {
    let env = TestEnv::new("retskip");
    env.psql("create table t (id int); insert into t select generate_series(1, 1000);");
    env.write_config("retention:\n  full_backup:\n    keep_within: 1d\n    min_keep: 1\n");
    aged_backups(&env, &[10, 9, 8]);
    let bin = env.fake_bin("pg_dump_half_then_fail.sh");
    env.write_config(&format!(
        "pg_bin_dir: {}\nretention:\n  full_backup:\n    keep_within: 1d\n    min_keep: 1\n",
        bin.display()
    ));
    assert_eq!(env.run(&["backup"]).status.code(), Some(1));
    let out = env.run(&["retention"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("SKIPPED: the newest backup attempt"), "{}", stdout(&out));
    assert_eq!(env.list_json().len(), 3, "nothing deleted while backups fail");
    // with the check off, the policy applies
    env.write_config("retention:\n  full_backup:\n    keep_within: 1d\n    min_keep: 1\n  skip_after_failure: false\n");
    assert!(env.run(&["retention"]).status.success());
    assert_eq!(env.list_json().len(), 1);
}
