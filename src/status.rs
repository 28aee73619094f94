//! What the daemon is doing, for `pgbackd status`, `pgbackd healthcheck`, `/readyz` and
//! `/metrics`: the live status board, written to `<reports.dir>/status.json` every 30 seconds and
//! on every job start and end, and the freshness rules that judge it.

use crate::config::Config;
use crate::jobs::kind::JobKind;
use crate::jobs::report::Outcome;
use crate::pipeline::Counter;
use crate::repo::manifest::Trigger;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    pub pid: u32,
    pub started_at: Option<DateTime<Utc>>,
    /// Refreshed every 30 seconds while the daemon runs: a stale value means it is gone.
    pub updated_at: Option<DateTime<Utc>>,
    pub config: Option<String>,
    pub shutting_down: bool,
    /// Set by the daemon's last write as it exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    pub schedules: Vec<ScheduleStatus>,
    pub running: Vec<RunningStatus>,
    pub databases: BTreeMap<String, DatabaseStatus>,
    pub counters: Counters,
    /// The last run of each job kind per subject: `jobs[subject][kind]`.
    #[serde(default)]
    pub jobs: BTreeMap<String, BTreeMap<JobKind, JobStats>>,
    /// Size and count of the backups on each storage target (refreshed after backups and
    /// retention runs).
    #[serde(default)]
    pub targets: BTreeMap<String, TargetStats>,
    #[serde(default)]
    pub notifications: crate::notify::DeliveryCounts,
    /// The cluster's WAL archiving (with a `wal:` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::receiver::WalStatus>,
    /// The daemon's last runs, newest first (at most [`RECENT_RUNS`]): what `pgbackd trigger
    /// --wait` and the status page read.
    #[serde(default)]
    pub recent_runs: Vec<RecentRun>,
}

/// Where one run of the daemon stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Dispatched, waiting for a slot or for another job on its subject.
    Waiting,
    Running(RunningStatus),
    Finished(RecentRun),
}

/// How many finished runs the board remembers.
pub const RECENT_RUNS: usize = 100;

/// A finished run of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecentRun {
    pub kind: JobKind,
    #[serde(flatten)]
    pub run: RunSummary,
}

impl Status {
    /// Remembers a finished run (newest first, bounded).
    pub fn remember(&mut self, kind: JobKind, run: RunSummary) {
        self.recent_runs.insert(0, RecentRun { kind, run });
        self.recent_runs.truncate(RECENT_RUNS);
    }

    /// The next scheduled run of a job kind (of any of its schedules).
    pub fn next_run(&self, kind: JobKind) -> Option<DateTime<Utc>> {
        self.schedules.iter().filter(|x| x.kind == kind).filter_map(|x| x.next_run).min()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct JobStats {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub last_duration_seconds: Option<f64>,
    pub last_raw_bytes: Option<u64>,
    pub last_stored_bytes: Option<u64>,
    pub last_mb_per_second: Option<f64>,
    pub runs: u64,
    pub failures: u64,
}

/// How many damaged backups a problem names; `pgbackd list` shows them all.
pub const DAMAGED_NAMED: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TargetStats {
    pub backups: u64,
    pub stored_bytes: u64,
    /// Manifests that cannot be trusted (unreadable, malformed, not matching their digest).
    #[serde(default)]
    pub damaged: u64,
    /// The ids of the first damaged ones (at most [`DAMAGED_NAMED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_ids: Vec<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleStatus {
    pub kind: JobKind,
    pub cron: String,
    pub timezone: String,
    pub databases: Vec<String>,
    pub next_run: Option<DateTime<Utc>>,
    /// Seconds between two runs (the freshness the healthcheck expects).
    pub period_seconds: Option<i64>,
    pub last_run: Option<RunSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    /// The subject (`app`, `files:uploads`).
    pub database: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub backup_id: Option<String>,
    /// A restore point job: the point's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunningStatus {
    pub run_id: String,
    pub kind: JobKind,
    /// The subject (`app`, `files:uploads`).
    pub database: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub bytes: u64,
    /// The size the job expects to move (a restore's exact raw size, a backup's estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_bytes: Option<u64>,
    /// From `bytes` and `expected_bytes`: never 100 before the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

impl RunningStatus {
    /// Bytes moved, and with an expected size the percentage and ETA, as of `now`.
    fn fill_progress(&mut self, counter: &Counter, now: DateTime<Utc>) {
        self.bytes = counter.get();
        self.expected_bytes = counter.expected();
        let elapsed = (now - self.started_at).to_std().unwrap_or_default();
        let estimate = self.expected_bytes.map(|e| crate::progress::Estimate::at(self.bytes, e, elapsed));
        self.percent = estimate.as_ref().map(|e| e.percent);
        self.eta_seconds = estimate.map(|e| e.eta.as_secs());
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DatabaseStatus {
    /// When the newest successful full backup started (for a file set: its newest backup).
    pub last_full_success: Option<DateTime<Utc>>,
    pub last_full_backup_id: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub last_verification_at: Option<DateTime<Utc>>,
    pub last_verification_outcome: Option<Outcome>,
    pub last_test_restore_at: Option<DateTime<Utc>>,
    pub last_test_restore_outcome: Option<Outcome>,
    /// The measured recovery time: how long the last test restore took.
    pub last_restore_seconds: Option<f64>,
    /// The last recovery drill of a cluster: when, how, its RTO (to a ready server) and RPO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_rto_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_rpo_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counters {
    pub jobs_started: u64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    pub jobs_cancelled: u64,
    /// Runs skipped because the previous run of the same job was still going.
    pub overlap_skipped: u64,
    pub overlap_queued: u64,
}

/// The live status, shared by the daemon's tasks.
pub struct Board {
    inner: Mutex<Status>,
    progress: Mutex<BTreeMap<String, Arc<Counter>>>,
    /// The WAL monitor's and receiver's status, copied in on every snapshot.
    wal: Mutex<Option<crate::wal::receiver::Shared>>,
    /// Runs dispatched that wait for their turn (a slot, the subject's locks).
    waiting: Mutex<std::collections::BTreeSet<String>>,
    path: PathBuf,
}

impl Board {
    pub fn new(dir: &Path, status: Status) -> Board {
        Board {
            inner: Mutex::new(status),
            progress: Mutex::new(BTreeMap::new()),
            wal: Mutex::new(None),
            waiting: Mutex::new(Default::default()),
            path: dir.join(STATUS_FILE),
        }
    }

    /// Marks a dispatched run as waiting for its turn, or no longer.
    pub fn waiting(&self, run_id: &str, waits: bool) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waits {
            w.insert(run_id.to_owned());
        } else {
            w.remove(run_id);
        }
    }

    /// Where a run stands: waiting, running (with its progress) or finished; `None` for a run
    /// this daemon does not know (another daemon's, or older than its memory).
    pub fn run_state(&self, run_id: &str, now: DateTime<Utc>) -> Option<RunState> {
        let counter = self.progress.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).cloned();
        let known = self.update(|s| {
            if let Some(r) = s.recent_runs.iter().find(|r| r.run.run_id == run_id) {
                return Some(RunState::Finished(r.clone()));
            }
            let mut r = s.running.iter().find(|r| r.run_id == run_id)?.clone();
            if let Some(c) = &counter {
                r.fill_progress(c, now);
            }
            Some(RunState::Running(r))
        });
        known.or_else(|| {
            self.waiting.lock().unwrap_or_else(|e| e.into_inner()).contains(run_id).then_some(RunState::Waiting)
        })
    }

    pub fn track_wal(&self, wal: crate::wal::receiver::Shared) {
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = Some(wal);
    }

    /// Copies the WAL status in.
    pub fn sync_wal(&self) {
        let wal = self.wal.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = wal {
            let now = w.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.update(|s| s.wal = Some(now));
        }
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut Status) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn track_progress(&self, run_id: &str, counter: Arc<Counter>) {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id.to_owned(), counter);
    }

    pub fn untrack_progress(&self, run_id: &str) {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).remove(run_id);
    }

    /// The status as of `now`, with running jobs' progress filled in.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Status {
        self.sync_wal();
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.update(|s| {
            s.updated_at = Some(now);
            for r in &mut s.running {
                if let Some(c) = progress.get(&r.run_id) {
                    r.fill_progress(c, now);
                }
            }
            s.clone()
        })
    }

    /// Writes the status file atomically (0600).
    pub fn write(&self, now: DateTime<Utc>) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let status = self.snapshot(now);
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(crate::secret::redact(&serde_json::to_string_pretty(&status)?).as_bytes())?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| crate::storage::local::fs_error(format!("writing {}", self.path.display()), e))
    }
}

/// How old `database`'s newest successful full backup may be (for `sqlite:NAME`, its newest
/// backup): `monitoring.max_age`, else twice the period of the full_backup (sqlite_backup)
/// schedule that covers it; `None`: not checked.
pub fn max_age_for(config: &Config, database: &str, now: DateTime<Utc>) -> Option<chrono::Duration> {
    if let Some(m) = config.monitoring.max_age {
        return chrono::Duration::from_std(m).ok();
    }
    let sqlite = database.starts_with("sqlite:");
    config
        .schedules
        .iter()
        .filter(|s| s.kind == if sqlite { JobKind::SqliteBackup } else { JobKind::FullBackup })
        .filter(|s| sqlite || s.databases.is_empty() || s.databases.iter().any(|d| d == database))
        .filter_map(|s| s.schedule.period(now))
        .min()
        .map(|p| p * 2)
}

/// Why a database is not healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub database: String,
    /// No successful full backup for longer than the max age (counting from the daemon's start
    /// when there never was one): the `stale` alert.
    pub stale: bool,
    pub message: String,
}

fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Freshness of every configured database and SQLite file: its newest successful full backup
/// (a SQLite file's newest backup) is younger than its max age, and its latest verification did
/// not fail.
pub fn problems(s: &Status, config: &Config, now: DateTime<Utc>) -> Vec<Problem> {
    let mut out = Vec::new();
    let sqlite: Vec<String> = config.sqlite.iter().map(|f| format!("sqlite:{}", f.name)).collect();
    for db in config.databases.iter().map(|d| d.name.as_str()).chain(sqlite.iter().map(String::as_str)) {
        let d = s.databases.get(db);
        let (what, backup, schedule) = match db.strip_prefix("sqlite:") {
            Some(name) => (format!("SQLite database {name}"), "backup", "sqlite_backup"),
            None => (format!("database {db}"), "full backup", "full_backup"),
        };
        if let Some(max_age) = max_age_for(config, db, now) {
            match d.and_then(|d| d.last_full_success) {
                None => out.push(Problem {
                    database: db.to_owned(),
                    stale: s.started_at.is_some_and(|t| now - t > max_age),
                    message: format!("{what} has no successful {backup}"),
                }),
                Some(t) if now - t > max_age => out.push(Problem {
                    database: db.to_owned(),
                    stale: true,
                    message: format!(
                        "{what}: the newest successful {backup} is {} old, more than the allowed {} \
                         (monitoring.max_age, default twice the {schedule} schedule's period)",
                        human(now - t),
                        human(max_age)
                    ),
                }),
                Some(_) => {}
            }
        }
        if let Some(d) = d
            && d.last_verification_outcome == Some(Outcome::Failed)
        {
            out.push(Problem {
                database: db.to_owned(),
                stale: false,
                message: format!(
                    "{what}: the latest verification failed ({}): see `pgbackd verify --latest --deep`",
                    d.last_verification_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                ),
            });
        }
    }
    out.extend(wal_problems(s, config, now));
    for (target, t) in s.targets.iter().filter(|(_, t)| t.damaged > 0) {
        out.push(Problem {
            database: String::new(),
            stale: false,
            message: format!(
                "target {target} holds {} damaged manifest{} ({}{}): those backups cannot be trusted; `pgbackd list` \
                 and `pgbackd verify --all` name them all",
                t.damaged,
                if t.damaged == 1 { "" } else { "s" },
                t.damaged_ids.join(", "),
                if t.damaged as usize > t.damaged_ids.len() { ", ..." } else { "" }
            ),
        });
    }
    out
}

/// What the WAL alerts are keyed by: the cluster (archiving behind, server silent) and its slot.
pub fn wal_alert_keys(config: &Config) -> Vec<String> {
    config.wal.as_ref().map_or_else(Vec::new, |w| vec![format!("cluster:{}", w.name), format!("slot:{}", w.slot)])
}

/// The WAL archive is behind (a completed segment waits longer than `wal.max_lag`), the server
/// has not answered the monitor for that long, or the slot holds back more than
/// `wal.slot_lag_alert`. Each is a `stale` alert.
fn wal_problems(s: &Status, config: &Config, now: DateTime<Utc>) -> Vec<Problem> {
    let (Some(wal), Some(ws)) = (&config.wal, &s.wal) else { return Vec::new() };
    let cluster = format!("cluster:{}", wal.name);
    let max_lag = chrono::Duration::from_std(wal.max_lag).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    let problem = |database: &str, message: String| Problem { database: database.to_owned(), stale: true, message };
    if let Some(lag) = ws.archive_lag_seconds.filter(|l| *l > wal.max_lag.as_secs_f64()) {
        let why = match (wal.method, &ws.receiver_last_error, &ws.last_failed_segment) {
            (crate::config::WalMethod::Stream, Some(e), _) => format!("the receiver's last error: {e}"),
            (crate::config::WalMethod::Stream, None, _) => "is the daemon's pg_receivewal running?".to_owned(),
            (_, _, Some(f)) => format!(
                "PostgreSQL's archive_command last failed on {f}: the server log says why (pgbackd archive-push's \
                 message)"
            ),
            _ => "is archive_command set to pgbackd archive-push and archive_mode on?".to_owned(),
        };
        out.push(problem(
            &cluster,
            format!(
                "cluster {}: a completed WAL segment has waited {} to be archived (the newest archived is {}), more \
                 than wal.max_lag {}: {why}",
                wal.name,
                human(chrono::Duration::milliseconds((lag * 1000.0) as i64)),
                ws.last_archived_segment.as_deref().unwrap_or("none"),
                human(max_lag)
            ),
        ));
    }
    if let Some(e) = &ws.server_error {
        let since = ws.answered_at.or(s.started_at);
        if since.is_some_and(|t| now - t > max_lag) {
            out.push(problem(
                &cluster,
                format!(
                    "cluster {}: the server has not answered the WAL monitor for more than wal.max_lag {}: {e}",
                    wal.name,
                    human(max_lag)
                ),
            ));
        }
    }
    if let Some(held) = ws.slot_retained_bytes.filter(|b| *b > wal.slot_lag_alert) {
        let who = if ws.slot_active == Some(true) {
            "its receiver is behind"
        } else {
            "no receiver uses it (is the daemon's pg_receivewal running?)"
        };
        out.push(problem(
            &format!("slot:{}", wal.slot),
            format!(
                "cluster {}: replication slot {} holds back {} of WAL on the server, more than wal.slot_lag_alert {}: \
                 {who}. The server keeps that WAL until the slot advances, and its disk fills: see \"WAL streaming\" \
                 in docs/operations.md (max_slot_wal_keep_size; dropping the slot)",
                wal.name,
                wal.slot,
                crate::units::bytes(held),
                crate::units::bytes(wal.slot_lag_alert)
            ),
        ));
    }
    out
}

/// Reads the status file a daemon writes.
pub fn read(dir: &Path) -> Result<Status> {
    let path = dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("no daemon status at {} (is `pgbackd run` running with this config?)", path.display())
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_sqlite_file_is_stale_after_twice_its_schedule_period() {
        let yaml = "local_backup_dir: /r\nsqlite:\n  - {name: app, path: /srv/app.db}\nschedules:\n  sqlite_backup: \"0 * * * *\"\n";
        let config = Config::from_yaml(yaml, "s.yaml", &|_: &str| None).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let mut s = Status { started_at: Some(now - chrono::Duration::hours(5)), ..Default::default() };
        let p = problems(&s, &config, now);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].stale && p[0].message == "SQLite database app has no successful backup", "{p:?}");
        s.databases.entry("sqlite:app".into()).or_default().last_full_success =
            Some(now - chrono::Duration::minutes(90));
        assert!(problems(&s, &config, now).is_empty(), "90 minutes is within twice an hourly period");
        s.databases.get_mut("sqlite:app").unwrap().last_full_success = Some(now - chrono::Duration::hours(3));
        let p = problems(&s, &config, now);
        assert!(
            p[0].message.contains("newest successful backup is 3h old") && p[0].message.contains("sqlite_backup"),
            "{p:?}"
        );
    }
}
