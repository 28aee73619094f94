//! A JSON report per job run, in the reference layout: `reports/backup/`,
//! `reports/backup_verification/`, `reports/database_restore/`, `reports/backup_retention/`.
//! Reports are pruned after `reports.keep`.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    /// Job kind (`full_backup`, `restore`, ...).
    pub job_kind: String,
    pub database: String,
    /// `schedule`, `catch_up`, `manual`.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub outcome: Outcome,
    pub backup_id: Option<String>,
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

impl Report {
    /// The report of a backup run, from its result.
    pub fn of_backup(
        run_id: &str,
        database: &str,
        trigger: &str,
        started_at: DateTime<Utc>,
        result: &Result<crate::repo::Manifest>,
    ) -> Report {
        let finished_at = Utc::now();
        let duration_seconds = (finished_at - started_at).num_milliseconds() as f64 / 1000.0;
        let m = result.as_ref().ok();
        Report {
            run_id: run_id.to_owned(),
            job_kind: "full_backup".into(),
            database: database.to_owned(),
            trigger: trigger.to_owned(),
            started_at,
            finished_at,
            duration_seconds,
            outcome: if m.is_some() { Outcome::Success } else { Outcome::Failed },
            backup_id: m.map(|m| m.id.clone()),
            raw_bytes: m.map(|m| m.data.raw_bytes),
            stored_bytes: m.map(|m| m.data.stored_bytes),
            mb_per_second: m.map(|m| m.data.raw_bytes as f64 / duration_seconds.max(0.001) / 1e6),
            targets: m.map(|m| m.targets.clone()).unwrap_or_default(),
            warnings: m.map(|m| m.warnings.clone()).unwrap_or_default(),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            details: None,
        }
    }
}

impl Report {
    fn blank(run_id: &str, job_kind: &str, database: &str, trigger: &str, started_at: DateTime<Utc>) -> Report {
        let finished_at = Utc::now();
        Report {
            run_id: run_id.to_owned(),
            job_kind: job_kind.to_owned(),
            database: database.to_owned(),
            trigger: trigger.to_owned(),
            started_at,
            finished_at,
            duration_seconds: (finished_at - started_at).num_milliseconds() as f64 / 1000.0,
            outcome: Outcome::Success,
            backup_id: None,
            raw_bytes: None,
            stored_bytes: None,
            mb_per_second: None,
            targets: Vec::new(),
            warnings: Vec::new(),
            error: None,
            details: None,
        }
    }

    /// The report of a file or configuration backup (`partial` when files were not captured).
    pub fn of_file_backup(
        run_id: &str,
        trigger: &str,
        started_at: DateTime<Utc>,
        kind: crate::fileset::SetKind,
        set: &str,
        result: &Result<crate::fileset::FileManifest>,
    ) -> Report {
        let job = match kind {
            crate::fileset::SetKind::Files => "file_backup",
            crate::fileset::SetKind::Configs => "config_backup",
        };
        let mut rep = Report::blank(run_id, job, set, trigger, started_at);
        match result {
            Ok(m) => {
                rep.backup_id = Some(m.id.clone());
                rep.raw_bytes = Some(m.total_bytes);
                rep.stored_bytes = Some(m.data.stored_bytes);
                rep.mb_per_second = Some(m.data.raw_bytes as f64 / rep.duration_seconds.max(0.001) / 1e6);
                rep.targets = m.targets.clone();
                rep.warnings = m.warnings.clone();
                if !m.problems.is_empty() {
                    rep.outcome = Outcome::Partial;
                    let p: Vec<String> = m.problems.iter().map(|p| format!("{}: {}", p.path, p.problem)).collect();
                    rep.error = Some(format!("partial: {}", p.join("; ")));
                }
            }
            Err(e) => {
                rep.outcome = Outcome::Failed;
                rep.error = Some(format!("{e:#}"));
            }
        }
        rep
    }

    /// The report of a retention run.
    pub fn of_retention(
        run_id: &str,
        trigger: &str,
        started_at: DateTime<Utc>,
        r: &crate::jobs::retention::RetentionRun,
    ) -> Report {
        let mut rep = Report::blank(run_id, "retention", &r.database, trigger, started_at);
        if let Some(s) = &r.skipped {
            rep.warnings.push(s.clone());
        }
        if let Some(a) = &r.applied {
            rep.raw_bytes = Some(a.bytes_freed);
            rep.targets = a.per_target.keys().cloned().collect();
            if !a.errors.is_empty() {
                rep.outcome = Outcome::Failed;
                rep.error = Some(a.errors.join("; "));
            }
        }
        let kept: Vec<&str> = r.decisions.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
        rep.details = Some(serde_json::json!({
            "dry_run": r.dry_run,
            "kept": kept,
            "deleted": r.applied.as_ref().map(|a| a.deleted.clone()).unwrap_or_default(),
            "bytes_freed": r.applied.as_ref().map(|a| a.bytes_freed).unwrap_or(0),
            "per_target": r.applied.as_ref().map(|a| a.per_target.clone()).unwrap_or_default(),
            "orphans_removed": r.applied.as_ref().map(|a| a.orphans_removed.clone()).unwrap_or_default(),
            "plan": r.decisions,
        }));
        rep
    }

    /// The report of a verification.
    pub fn of_verification(
        run_id: &str,
        trigger: &str,
        started_at: DateTime<Utc>,
        v: &crate::jobs::verify::Verified,
    ) -> Report {
        let mut r = Report::blank(run_id, "verification", &v.database, trigger, started_at);
        r.backup_id = Some(v.backup_id.clone());
        r.targets = v.targets.iter().map(|t| t.target.clone()).collect();
        r.raw_bytes = Some(v.targets.iter().map(|t| t.bytes_read).sum());
        if !v.ok {
            r.outcome = Outcome::Failed;
            let errors: Vec<String> =
                v.targets.iter().filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target))).collect();
            r.error = Some(if errors.is_empty() { "no target holds the backup".into() } else { errors.join("; ") });
        }
        r.warnings = vec![format!("mode: {}", v.mode)];
        r
    }

    /// The report of a test restore.
    pub fn of_test_restore(
        run_id: &str,
        trigger: &str,
        started_at: DateTime<Utc>,
        t: &crate::jobs::test_restore::TestRestored,
    ) -> Report {
        let mut r = Report::blank(run_id, "test_restore", &t.database, trigger, started_at);
        r.backup_id = Some(t.backup_id.clone());
        r.raw_bytes = t.restored_bytes;
        if !t.ok {
            r.outcome = Outcome::Failed;
            r.error = t.error.clone();
        }
        r.warnings = t.leftovers_dropped.iter().map(|d| format!("dropped leftover scratch database {d}")).collect();
        r
    }
}

/// The reference layout's directory for a job kind.
pub fn subdir(job_kind: &str) -> &'static str {
    match job_kind {
        "verification" => "backup_verification",
        "test_restore" | "restore" => "database_restore",
        "retention" => "backup_retention",
        "file_backup" => "file_backup",
        "config_backup" => "config_backup",
        _ => "backup",
    }
}

pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Writes `report` under `dir` (0600 file, 0700 directories); returns its path.
pub fn write(dir: &Path, report: &Report) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let sub = dir.join(subdir(&report.job_kind));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&sub)
        .with_context(|| format!("creating {}", sub.display()))?;
    let name = format!(
        "{}-{}-{}-{}.json",
        report.started_at.format("%Y%m%dT%H%M%SZ"),
        report.job_kind,
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
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(report)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes a report and logs (never fails the job) if it cannot.
pub fn record(dir: &Path, report: &Report) {
    if let Err(e) = write(dir, report) {
        tracing::warn!(error = %format!("{e:#}"), "could not write the job report");
    }
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

/// Deletes reports that finished more than `keep` before `now`; returns how many.
pub fn prune(dir: &Path, keep: std::time::Duration, now: DateTime<Utc>) -> usize {
    let cutoff = now - chrono::Duration::from_std(keep).unwrap_or_default();
    let mut removed = 0;
    for sub in ["backup", "backup_verification", "database_restore", "backup_retention", "file_backup", "config_backup"]
    {
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
            run_id: new_run_id(),
            job_kind: "full_backup".into(),
            database: "app".into(),
            trigger: "schedule".into(),
            started_at: at,
            finished_at: at,
            duration_seconds: 0.0,
            outcome: Outcome::Success,
            backup_id: None,
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
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        write(dir.path(), &report(now - chrono::Duration::days(40))).unwrap();
        write(dir.path(), &report(now - chrono::Duration::days(1))).unwrap();
        assert_eq!(read_all(dir.path(), "backup").len(), 2);
        assert_eq!(prune(dir.path(), std::time::Duration::from_secs(30 * 86400), now), 1);
        let left = read_all(dir.path(), "backup");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].started_at, now - chrono::Duration::days(1));
    }
}
