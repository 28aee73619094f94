//! What a job run causes, in one place (as vector's internal events emit log and metric
//! together): its start and end log lines, its JSON report, the status board's counters and
//! per-subject state (which `/metrics`, `status` and `healthcheck` read), and its notification.
//! The command line passes only a reports directory; the daemon also its board and notifier.

use crate::jobs::kind::JobKind;
use crate::jobs::report::{self, Outcome, Report};
use crate::jobs::run::{JobRun, JobSpec, Produced};
use crate::notify::{Event, Notifier};
use crate::pipeline::Counter;
use crate::status::{Board, JobStats, RunSummary, RunningStatus};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::Arc;

/// Where a run's effects go.
#[derive(Clone, Copy)]
pub struct Sinks<'a> {
    pub reports: &'a Path,
    pub board: Option<&'a Board>,
    pub notifier: Option<&'a Notifier>,
}

/// A run starts: its log line, its place among the running jobs, its `start` pings.
pub fn job_started(spec: &JobSpec, at: DateTime<Utc>, progress: &Arc<Counter>, sinks: &Sinks<'_>) {
    tracing::info!(
        job_kind = spec.kind.name(),
        subject = %spec.subject,
        run_id = %spec.run_id,
        trigger = spec.trigger.name(),
        "job started"
    );
    if let Some(board) = sinks.board {
        board.track_progress(&spec.run_id, progress.clone());
        board.update(|s| {
            s.counters.jobs_started += 1;
            s.running.push(RunningStatus {
                run_id: spec.run_id.clone(),
                kind: spec.kind,
                database: spec.subject.to_string(),
                trigger: spec.trigger,
                started_at: at,
                bytes: 0,
                expected_bytes: None,
                percent: None,
                eta_seconds: None,
            });
        });
    }
    if let Some(n) = sinks.notifier {
        n.job_started(spec.kind, &spec.subject.to_string());
    }
}

/// A run ended: its log line, its report, the board, the notification.
pub fn job_finished(run: &JobRun, sinks: &Sinks<'_>) {
    let report = Report::from(run);
    run.span.in_scope(|| match run.status() {
        Outcome::Success => tracing::info!(
            backup_id = report.backup_id.as_deref().unwrap_or(""),
            raw_bytes = report.raw_bytes,
            stored_bytes = report.stored_bytes,
            duration_s = format!("{:.1}", report.duration_seconds),
            mb_per_s = report.mb_per_second.map(|m| format!("{m:.1}")),
            "job finished"
        ),
        outcome => {
            tracing::error!(outcome = outcome.name(), error = report.error.as_deref().unwrap_or(""), "job failed")
        }
    });
    let dry_run_retention = matches!(&run.produced, Produced::Retention(r) if r.dry_run);
    if !dry_run_retention && let Err(e) = report::write(sinks.reports, &run.spec.subject, &report) {
        tracing::warn!(error = %format!("{e:#}"), "could not write the job report");
    }
    if let Some(board) = sinks.board {
        update_board(board, run, &report);
    }
    if let Some(n) = sinks.notifier
        && run.status() != Outcome::Cancelled
    {
        let kind = if run.status() == Outcome::Success {
            crate::config::notify::EventKind::Success
        } else {
            crate::config::notify::EventKind::Failure
        };
        let mut event = Event::new(kind, run.spec.kind.name(), &report.database, run.finished_at);
        event.run_id = Some(run.spec.run_id.clone());
        event.backup_id = report.backup_id.clone();
        event.error = report.error.clone();
        event.raw_bytes = report.raw_bytes;
        event.stored_bytes = report.stored_bytes;
        event.duration_seconds = Some(report.duration_seconds);
        event.mb_per_second = report.mb_per_second;
        event.sha256 = run.backup().map(|m| m.data.raw_sha256.clone());
        event.next_run = sinks.board.and_then(|b| b.update(|s| s.next_run(run.spec.kind)));
        n.job_finished(run.spec.kind, event);
    }
}

/// The board's counters, the run's schedule, the subject's job statistics and freshness.
fn update_board(board: &Board, run: &JobRun, report: &Report) {
    let spec = &run.spec;
    let outcome = run.status();
    let (started, finished) = (run.started_at, run.finished_at);
    board.untrack_progress(&spec.run_id);
    board.update(|s| {
        s.running.retain(|r| r.run_id != spec.run_id);
        match outcome {
            Outcome::Success => s.counters.jobs_succeeded += 1,
            Outcome::Failed | Outcome::Partial => s.counters.jobs_failed += 1,
            Outcome::Cancelled => s.counters.jobs_cancelled += 1,
        }
        let summary = RunSummary {
            run_id: spec.run_id.clone(),
            database: report.database.clone(),
            trigger: spec.trigger,
            started_at: started,
            finished_at: finished,
            outcome,
            backup_id: report.backup_id.clone(),
            restore_point: report.restore_point.clone(),
            error: report.error.clone(),
        };
        for sch in s.schedules.iter_mut().filter(|x| x.kind == spec.kind) {
            sch.last_run = Some(summary.clone());
        }
        s.remember(spec.kind, summary);
        let j: &mut JobStats = s.jobs.entry(report.database.clone()).or_default().entry(spec.kind).or_default();
        j.runs += 1;
        j.last_attempt_at = Some(started);
        j.last_outcome = Some(outcome);
        j.last_duration_seconds = Some(report.duration_seconds);
        if outcome == Outcome::Success {
            j.last_success_at = Some(started);
            j.last_raw_bytes = report.raw_bytes;
            j.last_stored_bytes = report.stored_bytes;
            j.last_mb_per_second = report.mb_per_second;
        } else {
            j.failures += 1;
        }
        let d = s.databases.entry(report.database.clone()).or_default();
        d.last_attempt_at = Some(started);
        d.last_outcome = Some(outcome);
        match (spec.kind, &run.produced) {
            // a set's or SQLite file's newest backup always restores whole (holders and chains
            // are kept): it is its "full"
            (JobKind::FullBackup | JobKind::FileBackup | JobKind::ConfigBackup | JobKind::SqliteBackup, _)
                if outcome == Outcome::Success =>
            {
                d.last_full_success = Some(started);
                d.last_full_backup_id = report.backup_id.clone();
            }
            (JobKind::Verification, _) => {
                d.last_verification_at = Some(finished);
                d.last_verification_outcome = Some(outcome);
            }
            (JobKind::TestRestore, produced) => {
                d.last_test_restore_at = Some(finished);
                d.last_test_restore_outcome = Some(outcome);
                if let Produced::TestRestore(t) = produced {
                    d.last_restore_seconds = Some(t.restore_seconds);
                }
            }
            (JobKind::RecoveryDrill, produced) => {
                d.last_drill_at = Some(finished);
                d.last_drill_outcome = Some(outcome);
                if let Produced::Drill(x) = produced {
                    d.last_drill_rto_seconds = x.rto_seconds;
                    d.last_drill_rpo_seconds = x.rpo_seconds;
                }
            }
            _ => {}
        }
    });
}

impl From<&JobRun> for Report {
    /// Every report kind, from the run: what it did, and what it produced.
    fn from(run: &JobRun) -> Report {
        let duration_seconds = run.duration_seconds();
        let mut r = Report {
            run_id: run.spec.run_id.clone(),
            job_kind: run.spec.kind,
            database: run.spec.subject.to_string(),
            trigger: run.spec.trigger,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_seconds,
            outcome: run.status(),
            backup_id: None,
            raw_bytes: None,
            stored_bytes: None,
            mb_per_second: None,
            targets: Vec::new(),
            warnings: Vec::new(),
            error: run.error(),
            details: None,
            restore_point: None,
        };
        match &run.produced {
            Produced::Nothing => {}
            Produced::Backup(m) => {
                r.backup_id = Some(m.id.clone());
                r.raw_bytes = Some(m.raw_bytes());
                r.stored_bytes = Some(m.data.stored_bytes);
                r.mb_per_second = Some(m.data.raw_bytes as f64 / duration_seconds.max(0.001) / 1e6);
                r.targets = m.targets.clone();
                r.warnings = m.warnings.clone();
            }
            Produced::Verified(v) => {
                let vs = &v.backups;
                r.backup_id = vs.last().map(|v| v.backup_id.clone());
                r.raw_bytes = Some(vs.iter().flat_map(|v| &v.targets).map(|t| t.bytes_read).sum());
                let mut targets: Vec<String> = vs.iter().flat_map(|v| &v.targets).map(|t| t.target.clone()).collect();
                targets.sort();
                targets.dedup();
                r.targets = targets;
                let mode = run.spec.params.verify_mode.or(vs.first().map(|v| v.mode));
                r.warnings = vec![match mode {
                    Some(mode) => format!("{} backups verified ({})", vs.len(), mode.name()),
                    None => "no backups to verify".to_owned(),
                }];
                if !v.leftovers.is_empty() {
                    r.warnings.push(format!(
                        "{} of stopped processes (removed once older than retention.orphan_grace): {}",
                        crate::units::count(v.leftovers.len(), "leftover"),
                        v.leftovers
                            .iter()
                            .map(|l| format!("{}:{} ({})", l.target, l.key, l.what.describe()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if let Some(w) = &v.wal {
                    r.raw_bytes = Some(r.raw_bytes.unwrap_or(0) + w.targets.iter().map(|t| t.bytes_read).sum::<u64>());
                    r.targets.extend(w.targets.iter().map(|t| t.target.clone()));
                    r.targets.sort();
                    r.targets.dedup();
                    r.warnings.push(format!("WAL archive verified ({})", w.mode.name()));
                }
                r.details = json(v.as_ref());
            }
            Produced::TestRestore(t) => {
                r.backup_id = Some(t.backup_id.clone());
                r.raw_bytes = t.restored_bytes;
                r.warnings =
                    t.leftovers_dropped.iter().map(|d| format!("dropped leftover scratch database {d}")).collect();
                r.details = json(t.as_ref());
            }
            Produced::Retention(run) => {
                if let Some(s) = &run.skipped {
                    r.warnings.push(s.clone());
                }
                if let Some(a) = &run.applied {
                    let wal = run.wal.as_ref().and_then(|w| w.deleted.as_ref()).map_or(0, |d| d.bytes);
                    r.raw_bytes = Some(a.bytes_freed + wal);
                    r.targets = a.per_target.keys().cloned().collect();
                    r.warnings.extend(a.warnings.iter().cloned());
                }
                let kept: Vec<&str> = run.decisions.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
                r.details = Some(serde_json::json!({
                    "dry_run": run.dry_run,
                    "kept": kept,
                    "deleted": run.applied.as_ref().map(|a| a.deleted.clone()).unwrap_or_default(),
                    "bytes_freed": run.applied.as_ref().map(|a| a.bytes_freed).unwrap_or(0),
                    "per_target": run.applied.as_ref().map(|a| a.per_target.clone()).unwrap_or_default(),
                    "orphans_removed": run.applied.as_ref().map(|a| a.orphans_removed.clone()).unwrap_or_default(),
                    "leftovers_removed": run.applied.as_ref().map(|a| a.leftovers_removed.clone()).unwrap_or_default(),
                    "plan": run.decisions,
                    "wal": run.wal,
                }));
            }
            Produced::Restore(x) => {
                r.backup_id = Some(x.backup_id.clone());
                r.raw_bytes = Some(x.raw_bytes);
                r.warnings = x.warnings.clone();
                r.details = json(x.as_ref());
            }
            Produced::Drill(x) => {
                r.backup_id = x.backup_id.clone();
                r.raw_bytes = Some(x.databases.iter().map(|d| d.rows).sum());
                r.warnings = x.warnings.clone();
                r.details = json(x.as_ref());
            }
            Produced::ClusterRecovered(x) => {
                r.backup_id = Some(x.backup_id.clone());
                r.raw_bytes = Some(x.restored_bytes);
                r.details = json(x.as_ref());
            }
            Produced::FilesRestored(x) => {
                r.backup_id = Some(x.backup_id.clone());
                r.raw_bytes = Some(x.bytes);
                r.details = json(x.as_ref());
            }
            Produced::SqliteRestored(x) => {
                r.backup_id = Some(x.backup_id.clone());
                r.raw_bytes = Some(x.bytes);
                r.details = json(x.as_ref());
            }
            Produced::RestorePoint(x) => {
                r.restore_point = Some(x.name.clone());
                r.details = json(x.as_ref());
            }
        }
        r
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}
