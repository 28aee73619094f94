//! `pgbackd status` and `pgbackd healthcheck`: read the status file the daemon keeps.

use super::{EXIT_JOB_FAILED, EXIT_NOT_RUNNING, EXIT_OK};
use crate::config::Config;
use crate::status::{self, Status};
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::io::Write;
use std::process::ExitCode;

fn outcome(o: Option<crate::jobs::report::Outcome>) -> &'static str {
    o.map_or("-", |o| o.name())
}

/// `pgbackd healthcheck`: exit 0 when healthy, 1 (with the reasons) otherwise.
pub fn healthcheck(config: &Config) -> Result<ExitCode> {
    let verdict = health(config, Utc::now());
    match &verdict {
        Ok(()) => say!("healthy"),
        Err(problems) => {
            for p in problems {
                say!("unhealthy: {p}");
            }
        }
    }
    Ok(ExitCode::from(if verdict.is_ok() { EXIT_OK } else { EXIT_JOB_FAILED }))
}

/// A status older than this means the daemon is gone (it refreshes every 30 seconds).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(2);

pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        s if s < 0 => "in the future".into(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

pub fn print(config: &Config, json: bool) -> Result<ExitCode> {
    let now = Utc::now();
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
    let status = status::read(&config.reports.dir);
    if json {
        // the daemon's own view when it runs; otherwise what the config schedules
        let (value, alive) = match &status {
            Ok(s) => {
                let alive = running(s, now);
                let mut v = serde_json::to_value(s)?;
                v["running"] = alive.into();
                (v, alive)
            }
            Err(e) => (serde_json::json!({ "running": false, "error": format!("{e:#}") }), false),
        };
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(exit(alive));
    }
    let s = match status {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "daemon: not running ({e:#})")?;
            for sch in &config.schedules {
                let next = sch.schedule.next_after(now).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
                writeln!(
                    out,
                    "  {:<20} {:<16} next {}",
                    sch.kind.name(),
                    sch.schedule.expr(),
                    next.unwrap_or_default()
                )?;
            }
            return Ok(exit(false));
        }
    };
    let updated = s.updated_at.map(|t| ago(t, now)).unwrap_or_else(|| "never".into());
    let alive = running(&s, now);
    writeln!(
        out,
        "daemon: pid {}, {}, started {}, status updated {updated}{}",
        s.pid,
        match (alive, s.stopped_at) {
            (true, _) => "running".to_owned(),
            (false, Some(t)) => format!("NOT RUNNING (stopped {})", ago(t, now)),
            (false, None) => "NOT RUNNING (stale status)".to_owned(),
        },
        s.started_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default(),
        if s.shutting_down { ", shutting down" } else { "" }
    )?;
    writeln!(out, "\n{:<20} {:<18} {:<14} {:<22} LAST RUN", "SCHEDULE", "CRON", "TIMEZONE", "NEXT RUN (UTC)")?;
    for sch in &s.schedules {
        let last = sch
            .last_run
            .as_ref()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    ago(r.finished_at, now),
                    r.outcome.name(),
                    r.database,
                    r.backup_id.clone().or_else(|| r.error.clone()).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<20} {:<18} {:<14} {:<22} {last}",
            sch.kind.name(),
            sch.cron,
            sch.timezone,
            sch.next_run.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "never".into())
        )?;
    }
    if !s.running.is_empty() {
        writeln!(out, "\nRUNNING")?;
        for r in &s.running {
            writeln!(
                out,
                "  {} {} on {} ({}), started {}, {} bytes so far",
                r.run_id,
                r.kind.name(),
                r.database,
                r.trigger.name(),
                ago(r.started_at, now),
                r.bytes
            )?;
        }
    }
    writeln!(out, "\nDATABASES")?;
    for (name, d) in &s.databases {
        let what = if ["files:", "configs:", "sqlite:"].iter().any(|p| name.starts_with(p)) {
            "backup"
        } else {
            "full backup"
        };
        writeln!(
            out,
            "  {name:<20} last {what} {} {}, last attempt {}",
            d.last_full_success.map(|t| ago(t, now)).unwrap_or_else(|| "never".into()),
            d.last_full_backup_id.as_deref().unwrap_or(""),
            outcome(d.last_outcome)
        )?;
        if let Some(t) = d.last_verification_at {
            writeln!(out, "  {:<20} last verification {} {}", "", ago(t, now), outcome(d.last_verification_outcome))?;
        }
        if let Some(t) = d.last_test_restore_at {
            writeln!(
                out,
                "  {:<20} last test restore {} {}, restore time (RTO) {}",
                "",
                ago(t, now),
                outcome(d.last_test_restore_outcome),
                d.last_restore_seconds.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into())
            )?;
        }
        if let Some(t) = d.last_drill_at {
            writeln!(
                out,
                "  {:<20} last recovery drill {} {}, RTO {}{}",
                "",
                ago(t, now),
                outcome(d.last_drill_outcome),
                d.last_drill_rto_seconds.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into()),
                d.last_drill_rpo_seconds.map(|s| format!(", RPO {s:.1}s")).unwrap_or_default()
            )?;
        }
    }
    if let Some(w) = &s.wal {
        writeln!(out, "\nWAL of cluster {} ({})", w.cluster, w.method.name())?;
        writeln!(
            out,
            "  last archived {}{}, lag {} ({} s waiting)",
            w.last_archived_segment.as_deref().unwrap_or("none"),
            w.last_archived_at.map(|t| format!(" {}", ago(t, now))).unwrap_or_default(),
            w.archive_lag_bytes.map(crate::units::bytes).unwrap_or_else(|| "-".into()),
            w.archive_lag_seconds.map(|l| format!("{l:.0}")).unwrap_or_else(|| "-".into())
        )?;
        if w.method == crate::config::WalMethod::Stream {
            writeln!(
                out,
                "  receiver {}, {} restarts, spool {}, slot {} holds back {}{}",
                if w.receiver_running { "running" } else { "NOT running" },
                w.receiver_restarts,
                crate::units::bytes(w.spool_bytes),
                w.slot.as_deref().unwrap_or("-"),
                w.slot_retained_bytes.map(crate::units::bytes).unwrap_or_else(|| "-".into()),
                w.receiver_last_error.as_ref().map(|e| format!("\n  last error: {e}")).unwrap_or_default()
            )?;
        }
        if let Some(e) = &w.server_error {
            writeln!(out, "  server not answering: {e}")?;
        }
    }
    let c = &s.counters;
    writeln!(
        out,
        "\njobs: {} started, {} succeeded, {} failed, {} cancelled; overlaps: {} skipped, {} queued",
        c.jobs_started, c.jobs_succeeded, c.jobs_failed, c.jobs_cancelled, c.overlap_skipped, c.overlap_queued
    )?;
    Ok(exit(alive))
}

/// Whether the daemon that wrote `s` still refreshes it.
fn running(s: &Status, now: DateTime<Utc>) -> bool {
    s.stopped_at.is_none() && s.updated_at.is_some_and(|t| now - t < STALE_AFTER)
}

/// `status` exits 0 while the daemon runs and 3 when it does not (the LSB convention of
/// `systemctl status`), so a script can tell "not running" from an error (2).
fn exit(alive: bool) -> ExitCode {
    ExitCode::from(if alive { EXIT_OK } else { EXIT_NOT_RUNNING })
}

/// Healthy when the daemon is alive and every database is fresh ([`status::problems`]):
/// freshness, not only liveness.
pub fn health(config: &Config, now: DateTime<Utc>) -> Result<(), Vec<String>> {
    let s: Status = status::read(&config.reports.dir).map_err(|e| vec![format!("{e:#}")])?;
    let mut problems = Vec::new();
    if !running(&s, now) {
        problems.push(match (s.stopped_at, s.updated_at) {
            (Some(t), _) => format!("the daemon stopped {}: it is not running", ago(t, now)),
            (None, Some(t)) => format!("the daemon's status was last updated {}: it is not running", ago(t, now)),
            (None, None) => "the daemon never wrote its status".into(),
        });
    }
    problems.extend(status::problems(&s, config, now).into_iter().map(|p| p.message));
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Board, DatabaseStatus};
    use chrono::TimeZone;

    fn setup(updated: DateTime<Utc>, last_full: Option<DateTime<Utc>>) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "databases: [app]\nlocal_backup_dir: /r\nreports:\n  dir: {}\nschedules:\n  full_backup: \"0 1 * * *\"\n",
            dir.path().display()
        );
        let config = Config::from_yaml(&yaml, "t", &|_| None).unwrap();
        let mut s = Status::default();
        s.databases.insert("app".into(), DatabaseStatus { last_full_success: last_full, ..Default::default() });
        Board::new(dir.path(), s).write(updated).unwrap();
        (dir, config)
    }

    #[test]
    fn healthy_only_when_alive_and_fresh() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let (_d, c) = setup(now - chrono::Duration::seconds(20), Some(now - chrono::Duration::hours(11)));
        assert_eq!(health(&c, now), Ok(()));
        // a daily schedule: older than two days is stale
        let (_d, c) = setup(now, Some(now - chrono::Duration::hours(49)));
        let p = health(&c, now).unwrap_err();
        assert!(p[0].contains("database app") && p[0].contains("2d 1h old") && p[0].contains("allowed 2d 0h"), "{p:?}");
        let (_d, c) = setup(now, None);
        assert_eq!(health(&c, now).unwrap_err(), vec!["database app has no successful full backup".to_owned()]);
        // the latest verification failed: unhealthy however fresh the backup
        let (d, c) = setup(now, Some(now - chrono::Duration::hours(1)));
        let mut s = crate::status::read(d.path()).unwrap();
        let db = s.databases.get_mut("app").unwrap();
        db.last_verification_outcome = Some(crate::jobs::report::Outcome::Failed);
        db.last_verification_at = Some(now);
        Board::new(d.path(), s).write(now).unwrap();
        let p = health(&c, now).unwrap_err();
        assert!(p[0].contains("latest verification failed"), "{p:?}");
        // the daemon stopped writing its status: not running, whatever the backups say
        let (_d, c) = setup(now - chrono::Duration::minutes(5), Some(now - chrono::Duration::hours(1)));
        assert!(health(&c, now).unwrap_err()[0].contains("not running"));
    }

    #[test]
    fn no_status_file_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("databases: [app]\nlocal_backup_dir: /r\nreports:\n  dir: {}\n", dir.path().display());
        let c = Config::from_yaml(&yaml, "t", &|_| None).unwrap();
        assert!(health(&c, Utc::now()).unwrap_err()[0].contains("is `pgbackd run` running"));
    }
}
