//! A JSON report per job run, in the reference layout: `reports/backup/`,
//! `reports/backup_verification/`, `reports/database_restore/`, `reports/backup_retention/`,
//! `reports/file_backup/`, `reports/config_backup/`. Reports are pruned after `reports.keep`.
//! What goes into a report is decided from the finished run (`telemetry::events`); this module
//! only stores and reads them.

use super::kind::JobKind;
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a run ended, as reports, the status file and metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// Stored, but not everything was captured as it was (a file backup with unreadable,
    /// vanished or changed files): never reported as a success.
    Partial,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub job_kind: JobKind,
    /// The subject: a database's name, `files:NAME` or `configs:NAME`.
    pub database: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub outcome: Outcome,
    pub backup_id: Option<String>,
    /// A restore point job: the point's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    pub raw_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub mb_per_second: Option<f64>,
    pub targets: Vec<String>,
    pub warnings: Vec<String>,
    /// The whole error chain, when the job failed.
    pub error: Option<String>,
    /// Job-specific detail (a retention run's plan and what it deleted, per target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The reference layout's directory for a job kind on a subject.
pub fn subdir(kind: JobKind, subject: &Subject) -> &'static str {
    match kind {
        JobKind::FullBackup | JobKind::IncrementalBackup => "backup",
        JobKind::Verification => "backup_verification",
        JobKind::Restore if subject.is_file_set() => "file_restore",
        JobKind::TestRestore | JobKind::Restore => "database_restore",
        JobKind::Retention => "backup_retention",
        JobKind::FileBackup => "file_backup",
        JobKind::ConfigBackup => "config_backup",
        JobKind::SqliteBackup => "sqlite_backup",
        JobKind::BaseBackup => "base_backup",
        JobKind::RecoveryDrill => "recovery_drill",
        JobKind::RestorePoint => "restore_point",
    }
}

const SUBDIRS: [&str; 11] = [
    "backup",
    "backup_verification",
    "database_restore",
    "file_restore",
    "backup_retention",
    "file_backup",
    "config_backup",
    "sqlite_backup",
    "base_backup",
    "recovery_drill",
    "restore_point",
];

/// Writes `report` of a run on `subject` under `dir` (0600 file, 0700 directories); returns its path.
pub fn write(dir: &Path, subject: &Subject, report: &Report) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let sub = dir.join(subdir(report.job_kind, subject));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&sub)
        .map_err(|e| crate::storage::local::fs_error(format!("creating {}", sub.display()), e))?;
    let name = format!(
        "{}-{}-{}-{}.json",
        report.started_at.format("%Y%m%dT%H%M%SZ"),
        report.job_kind.name(),
        report.database,
        report.run_id
    );
    let path = sub.join(name);
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| crate::storage::local::fs_error(format!("writing {}", tmp.display()), e))?;
    let text = serde_json::to_string_pretty(report)?;
    if let Err(e) = f.write_all(crate::secret::redact(&text).as_bytes()).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::storage::local::fs_error(format!("writing {}", tmp.display()), e));
    }
    std::fs::rename(&tmp, &path)
        .map_err(|e| crate::storage::local::fs_error(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// Every report of one subdirectory, oldest first.
pub fn read_all(dir: &Path, sub: &str) -> Vec<Report> {
    let mut out: Vec<Report> = std::fs::read_dir(dir.join(sub))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Report>(&b).ok())
        .collect();
    out.sort_by_key(|r| r.started_at);
    out
}

/// The newest report of a `kind` run on `subject`.
pub fn newest(dir: &Path, kind: JobKind, subject: &Subject) -> Option<Report> {
    let name = subject.to_string();
    read_all(dir, subdir(kind, subject)).into_iter().rfind(|r| r.job_kind == kind && r.database == name)
}

/// Deletes reports that finished more than `keep` before `now`; returns how many.
pub fn prune(dir: &Path, keep: std::time::Duration, now: DateTime<Utc>) -> usize {
    let cutoff = now - chrono::Duration::from_std(keep).unwrap_or_default();
    let mut removed = 0;
    for sub in SUBDIRS {
        for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            let path = entry.path();
            let old = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Report>(&b).ok())
                .is_some_and(|r| r.finished_at < cutoff);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn report(at: DateTime<Utc>) -> Report {
        Report {
            run_id: super::super::run::new_run_id(),
            job_kind: JobKind::FullBackup,
            database: "app".into(),
            trigger: Trigger::Schedule,
            started_at: at,
            finished_at: at,
            duration_seconds: 0.0,
            outcome: Outcome::Success,
            backup_id: None,
            restore_point: None,
            raw_bytes: None,
            stored_bytes: None,
            mb_per_second: None,
            targets: vec![],
            warnings: vec![],
            error: None,
            details: None,
        }
    }

    #[test]
    fn write_read_prune() {
        let dir = tempfile::tempdir().unwrap();
        let app = Subject::Database("app".into());
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        write(dir.path(), &app, &report(now - chrono::Duration::days(40))).unwrap();
        write(dir.path(), &app, &report(now - chrono::Duration::days(1))).unwrap();
        assert_eq!(read_all(dir.path(), "backup").len(), 2);
        assert_eq!(prune(dir.path(), std::time::Duration::from_secs(30 * 86400), now), 1);
        let left = read_all(dir.path(), "backup");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].started_at, now - chrono::Duration::days(1));
        assert!(newest(dir.path(), JobKind::FullBackup, &app).is_some());
        assert!(newest(dir.path(), JobKind::IncrementalBackup, &app).is_none());
    }
}
