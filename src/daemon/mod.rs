//! `pgbackd run`: the long-running service. Schedules jobs from the `schedules:` block, runs them
//! with overlap rules, per-database conflict locks and a global concurrency limit, writes a report
//! per run and a status file, reloads its config on SIGHUP, and stops gracefully on SIGTERM.
//!
//! One cancellation tree: the main loop stops scheduling on the first SIGTERM/SIGINT; running
//! jobs get `daemon.shutdown_grace` to finish, then (or at a second signal) their tokens are
//! cancelled, which stops their children (SIGTERM, SIGKILL after 10 s), aborts uploads and
//! removes partial data. Time comes from a [`Clock`], so the loop runs under `tokio::time::pause`.

pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod status;

use crate::config::notify::EventKind;
use crate::config::{Config, JobKind, Overlap};
use crate::jobs::backup::{self, BackupRequest};
use crate::jobs::report::{self, Outcome, Report};
use crate::notify::{Event, Notifier};
use crate::pipeline::Counter;
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Repository};
use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scheduler::{Scheduler, needs_catch_up};
use status::{Board, DatabaseStatus, JobStats, RunSummary, RunningStatus, ScheduleStatus, Status, TargetStats};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{RwLock, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Wall-clock time for the scheduler.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that advances with tokio's clock: under `tokio::time::pause()` a test controls it.
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base: DateTime<Utc>) -> TokioClock {
        TokioClock { base, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

/// What the OS (or a test) tells the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT: stop; a second one cancels running jobs at once.
    Terminate,
    /// SIGHUP: reload the config.
    Reload,
}

/// One run of a job on one database.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub run_id: String,
    pub kind: JobKind,
    pub database: String,
    /// `schedule` or `catch_up`.
    pub trigger: &'static str,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct JobResult {
    pub failed: Option<String>,
    /// For test restores: how long the restore took (the measured recovery time).
    pub restore_seconds: Option<f64>,
    /// Job-specific detail for the report (a retention plan).
    pub details: Option<serde_json::Value>,
    pub cancelled: bool,
    pub backup_id: Option<String>,
    pub raw_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    /// SHA-256 of a backup's raw stream.
    pub raw_sha256: Option<String>,
    /// Stored, with problems (`failed` says which): a partial file backup.
    pub partial: bool,
    pub targets: Vec<String>,
    pub warnings: Vec<String>,
}

/// Runs jobs and answers questions about the repository: the real one, or a fake for tests of
/// the scheduling logic.
#[async_trait]
pub trait JobHost: Send + Sync {
    async fn run(
        &self,
        job: &JobSpec,
        config: Arc<Config>,
        progress: Arc<Counter>,
        cancel: CancellationToken,
    ) -> JobResult;
    /// When the newest successful full backup of `database` started (for catch-up).
    async fn last_full_success(&self, config: &Config, database: &str) -> Result<Option<(DateTime<Utc>, String)>>;
    /// Backups and bytes on each storage target, for metrics.
    async fn target_stats(&self, _config: &Config) -> Result<BTreeMap<String, TargetStats>> {
        Ok(BTreeMap::new())
    }
}

/// The production host: real backups into the configured repository.
pub struct RealHost;

async fn run_backup(
    job: &JobSpec,
    config: Arc<Config>,
    progress: Arc<Counter>,
    cancel: CancellationToken,
) -> JobResult {
    let result: Result<crate::repo::Manifest> = async {
        let db = config.select_database(Some(&job.database))?;
        let repo = Repository::open(&config).await?;
        let req = BackupRequest {
            config: &config,
            database: db,
            kind: if job.kind == JobKind::IncrementalBackup { BackupKind::Incremental } else { BackupKind::Full },
            trigger: Trigger::Schedule,
            allow_shrink: false,
            interactive: false,
            progress,
            run_id: job.run_id.clone(),
        };
        backup::run(&req, &repo, &cancel, Utc::now()).await
    }
    .await;
    match result {
        Ok(m) => JobResult {
            backup_id: Some(m.id.clone()),
            raw_bytes: Some(m.data.raw_bytes),
            stored_bytes: Some(m.data.stored_bytes),
            raw_sha256: Some(m.data.raw_sha256.clone()),
            targets: m.targets.clone(),
            warnings: m.warnings.clone(),
            ..Default::default()
        },
        Err(e) => JobResult { failed: Some(format!("{e:#}")), cancelled: cancel.is_cancelled(), ..Default::default() },
    }
}

/// Backs up one source set of `files:` or `configs:` (`job.database` is the set's name).
async fn run_file_backup(
    job: &JobSpec,
    config: Arc<Config>,
    kind: crate::fileset::SetKind,
    cancel: CancellationToken,
) -> JobResult {
    let sets = match kind {
        crate::fileset::SetKind::Files => &config.files,
        crate::fileset::SetKind::Configs => &config.configs,
    };
    let Some(set) = sets.iter().find(|s| s.name == job.database) else {
        return JobResult { failed: Some(format!("no source set {:?}", job.database)), ..Default::default() };
    };
    match crate::fileset::backup(&config, set, kind, Trigger::Schedule, &cancel, Utc::now()).await {
        Ok(m) => {
            let problems: Vec<String> = m.problems.iter().map(|p| format!("{}: {}", p.path, p.problem)).collect();
            JobResult {
                failed: (!problems.is_empty()).then(|| {
                    format!(
                        "partial: {} of the files were not captured as they were: {}",
                        problems.len(),
                        problems.join("; ")
                    )
                }),
                partial: !problems.is_empty(),
                backup_id: Some(m.id.clone()),
                raw_bytes: Some(m.total_bytes),
                stored_bytes: Some(m.data.stored_bytes),
                raw_sha256: Some(m.data.raw_sha256.clone()),
                targets: m.targets.clone(),
                warnings: problems,
                ..Default::default()
            }
        }
        Err(e) => JobResult { failed: Some(format!("{e:#}")), cancelled: cancel.is_cancelled(), ..Default::default() },
    }
}

/// Verifies the backups of one database that `verification.scope` selects.
async fn run_verification(
    job: &JobSpec,
    config: Arc<Config>,
    progress: Arc<Counter>,
    cancel: CancellationToken,
) -> JobResult {
    use crate::config::VerifyScope;
    if let Some((kind, set)) = crate::fileset::SetKind::parse_target_name(&job.database) {
        let deep = config.verification.mode == crate::config::VerifyMode::Deep;
        let all = config.verification.scope == VerifyScope::All;
        let result = async {
            let repo = Repository::open(&config).await?;
            crate::fileset::verify(&config, &repo, kind, set, deep, all, &cancel).await
        }
        .await;
        return match result {
            Ok((ids, bytes)) => JobResult {
                backup_id: ids.last().cloned(),
                raw_bytes: Some(bytes),
                warnings: vec![format!("{} file backups verified", ids.len())],
                ..Default::default()
            },
            Err(e) => {
                JobResult { failed: Some(format!("{e:#}")), cancelled: cancel.is_cancelled(), ..Default::default() }
            }
        };
    }
    let listed = async {
        let repo = Repository::open(&config).await?;
        let listed = repo.list_with_targets(Some(&job.database)).await?;
        anyhow::Ok((repo, listed))
    }
    .await;
    let (repo, listed) = match listed {
        Ok(v) => v,
        Err(e) => return JobResult { failed: Some(format!("{e:#}")), ..Default::default() },
    };
    let chosen: Vec<&crate::repo::Listed> = match config.verification.scope {
        VerifyScope::All => listed.iter().collect(),
        VerifyScope::Latest => listed.last().into_iter().collect(),
        VerifyScope::Unverified => listed.iter().filter(|l| l.annotations.verification.is_none()).collect(),
    };
    let mut failures = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for l in &chosen {
        if cancel.is_cancelled() {
            break;
        }
        let v = crate::jobs::verify::verify(l, config.verification.mode, &config, &repo, &cancel, &progress).await;
        bytes += v.targets.iter().map(|t| t.bytes_read).sum::<u64>();
        last = Some(v.backup_id.clone());
        if !v.ok {
            let why: Vec<String> = v.targets.iter().filter_map(|t| t.error.clone()).collect();
            failures.push(format!("{}: {}", v.backup_id, why.join("; ")));
        }
    }
    let failed = match (failures.is_empty(), cancel.is_cancelled()) {
        (false, _) => Some(failures.join("; ")),
        (true, true) => Some("cancelled".to_owned()),
        (true, false) => None,
    };
    JobResult {
        failed,
        cancelled: cancel.is_cancelled(),
        backup_id: last,
        raw_bytes: Some(bytes),
        warnings: vec![format!("{} backups verified ({:?})", chosen.len(), config.verification.mode)],
        ..Default::default()
    }
}

/// Applies retention to one database. The daemon holds the database's exclusive lock meanwhile,
/// so no backup, verification or restore of it is reading what this deletes.
async fn run_retention(job: &JobSpec, config: Arc<Config>) -> JobResult {
    let started = Utc::now();
    let result = async {
        let repo = Repository::open(&config).await?;
        match crate::fileset::SetKind::parse_target_name(&job.database) {
            Some((kind, set)) => crate::fileset::retention(&config, &repo, kind, set, started, false).await,
            None => {
                crate::jobs::retention::run_for_database(&config, &repo, &job.database, started, false, &HashSet::new())
                    .await
            }
        }
    }
    .await;
    match result {
        Ok(run) => {
            let report = Report::of_retention(&job.run_id, job.trigger, started, &run);
            JobResult {
                failed: report.error.clone(),
                raw_bytes: run.applied.as_ref().map(|a| a.bytes_freed),
                targets: report.targets.clone(),
                warnings: report.warnings.clone(),
                details: report.details,
                ..Default::default()
            }
        }
        Err(e) => JobResult { failed: Some(format!("{e:#}")), ..Default::default() },
    }
}

/// Test-restores the backup of one database that `test_restore.pick` selects.
async fn run_test_restore(job: &JobSpec, config: Arc<Config>, cancel: CancellationToken) -> JobResult {
    let result: Result<crate::jobs::test_restore::TestRestored> = async {
        let repo = Repository::open(&config).await?;
        let backups = repo.list(Some(&job.database)).await?;
        let m = crate::jobs::test_restore::pick(&backups, config.test_restore.pick)
            .with_context(|| format!("database {} has no backup to test-restore", job.database))?
            .clone();
        Ok(crate::jobs::test_restore::run(&m, &config, &repo, &cancel).await)
    }
    .await;
    match result {
        Ok(t) => JobResult {
            failed: t.error.clone(),
            cancelled: cancel.is_cancelled(),
            backup_id: Some(t.backup_id.clone()),
            raw_bytes: t.restored_bytes,
            restore_seconds: Some(t.restore_seconds),
            warnings: t.leftovers_dropped.iter().map(|d| format!("dropped leftover scratch database {d}")).collect(),
            ..Default::default()
        },
        Err(e) => JobResult { failed: Some(format!("{e:#}")), cancelled: cancel.is_cancelled(), ..Default::default() },
    }
}

#[async_trait]
impl JobHost for RealHost {
    async fn run(
        &self,
        job: &JobSpec,
        config: Arc<Config>,
        progress: Arc<Counter>,
        cancel: CancellationToken,
    ) -> JobResult {
        match job.kind {
            JobKind::FullBackup | JobKind::IncrementalBackup => run_backup(job, config, progress, cancel).await,
            JobKind::Verification => run_verification(job, config, progress, cancel).await,
            JobKind::TestRestore => run_test_restore(job, config, cancel).await,
            JobKind::Retention => run_retention(job, config).await,
            JobKind::FileBackup => run_file_backup(job, config, crate::fileset::SetKind::Files, cancel).await,
            JobKind::ConfigBackup => run_file_backup(job, config, crate::fileset::SetKind::Configs, cancel).await,
        }
    }

    async fn last_full_success(&self, config: &Config, database: &str) -> Result<Option<(DateTime<Utc>, String)>> {
        let repo = Repository::open(config).await?;
        Ok(repo.latest(database, Some(BackupKind::Full)).await?.map(|m| (m.started_at, m.id)))
    }

    async fn target_stats(&self, config: &Config) -> Result<BTreeMap<String, TargetStats>> {
        let repo = Repository::open(config).await?;
        let mut out: BTreeMap<String, TargetStats> =
            repo.targets().iter().map(|t| (t.name().to_owned(), TargetStats::default())).collect();
        for l in repo.list_with_targets(None).await? {
            let bytes = l.manifest.data.stored_bytes + l.manifest.globals.as_ref().map_or(0, |g| g.stored_bytes);
            for t in &l.targets {
                let s = out.entry(t.clone()).or_default();
                s.backups += 1;
                s.stored_bytes += bytes;
            }
        }
        Ok(out)
    }
}

pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub host: Arc<dyn JobHost>,
    pub signals: mpsc::Receiver<Signal>,
    /// Re-read on SIGHUP (None: reload keeps the current config).
    pub config_path: Option<PathBuf>,
}

type JobKey = (JobKind, String);

/// How often the status file is refreshed when nothing happens.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);

/// Per-database conflict locks: retention takes the write side, every other job the read side;
/// backups of one database also take its backup mutex, so two never run at once.
#[derive(Default)]
struct Locks {
    by_db: std::sync::Mutex<HashMap<String, DbLocks>>,
}

/// A held per-database conflict lock (kept alive for the length of a run).
#[allow(dead_code)]
enum DbGuard {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// One database's conflict lock and backup mutex.
type DbLocks = (Arc<RwLock<()>>, Arc<tokio::sync::Mutex<()>>);

impl Locks {
    fn of(&self, db: &str) -> DbLocks {
        self.by_db.lock().unwrap_or_else(|e| e.into_inner()).entry(db.to_owned()).or_default().clone()
    }
}

/// Everything a job task needs, shared.
struct Shared {
    clock: Arc<dyn Clock>,
    host: Arc<dyn JobHost>,
    board: Arc<Board>,
    limit: Arc<Semaphore>,
    locks: Locks,
    tracker: TaskTracker,
    jobs_cancel: CancellationToken,
    done: mpsc::UnboundedSender<JobKey>,
    notifier: Arc<Notifier>,
    /// The config in force (replaced on reload), for the stats refresh and the HTTP endpoint.
    config: Arc<std::sync::RwLock<Arc<Config>>>,
}

impl Shared {
    /// Refreshes the per-target backup counts and sizes in the background.
    fn refresh_target_stats(self: &Arc<Self>) {
        let shared = self.clone();
        let config = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(async move {
            match shared.host.target_stats(&config).await {
                Ok(stats) => {
                    let now = shared.clock.now();
                    shared.board.update(|s| {
                        s.targets =
                            stats.into_iter().map(|(k, v)| (k, TargetStats { updated_at: Some(now), ..v })).collect()
                    });
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not list the repository for metrics"),
            }
        });
    }
}

fn schedule_statuses(sched: &Scheduler, now: DateTime<Utc>, old: &[ScheduleStatus]) -> Vec<ScheduleStatus> {
    sched
        .entries
        .iter()
        .map(|e| {
            let last_run = old
                .iter()
                .find(|o| o.kind == e.kind.name() && o.cron == e.schedule.expr())
                .and_then(|o| o.last_run.clone());
            ScheduleStatus {
                kind: e.kind.name().to_owned(),
                cron: e.schedule.expr().to_owned(),
                timezone: e.schedule.timezone().to_string(),
                databases: e.databases.clone(),
                next_run: e.next,
                period_seconds: e.schedule.period(now).map(|p| p.num_seconds()),
                last_run,
            }
        })
        .collect()
}

/// Runs the daemon until it is told to stop.
pub async fn run(config: Config, deps: Deps) -> Result<()> {
    let Deps { clock, host, mut signals, config_path } = deps;
    let mut config = Arc::new(config);
    let started = clock.now();
    let mut sched = Scheduler::new(&config, started);
    let board = Arc::new(Board::new(
        &config.reports.dir,
        Status {
            pid: std::process::id(),
            started_at: Some(started),
            config: config_path.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        },
    ));
    board.update(|s| s.schedules = schedule_statuses(&sched, started, &[]));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobKey>();
    let notifier = Arc::new(Notifier::new(&config).context("setting up notifications")?);
    let shared = Arc::new(Shared {
        clock: clock.clone(),
        host: host.clone(),
        board: board.clone(),
        limit: Arc::new(Semaphore::new(config.daemon.max_concurrent_jobs)),
        locks: Locks::default(),
        tracker: TaskTracker::new(),
        jobs_cancel: CancellationToken::new(),
        done: done_tx,
        notifier: notifier.clone(),
        config: Arc::new(std::sync::RwLock::new(config.clone())),
    });
    let http_stop = CancellationToken::new();
    let http = match &config.monitoring.listen {
        Some(addr) => {
            let endpoint = http::Endpoint {
                board: board.clone(),
                clock: clock.clone(),
                config: shared.config.clone(),
                notifier: Some(notifier.clone()),
            };
            Some(http::start(addr, endpoint, http_stop.clone()).await?)
        }
        None => None,
    };
    tracing::info!(
        schedules = sched.entries.len(),
        databases = config.databases.len(),
        next_run = ?sched.next_wake(),
        "daemon started"
    );

    // the status file: on every job start and end, and every 30 s (the healthcheck calls a
    // status older than two minutes a dead daemon)
    let writer_stop = CancellationToken::new();
    let writer = {
        let (board, clock, stop, notifier) = (board.clone(), clock.clone(), writer_stop.clone(), notifier.clone());
        tokio::spawn(async move {
            loop {
                board.update(|s| s.notifications = notifier.counts());
                if let Err(e) = board.write(clock.now()) {
                    tracing::warn!(error = %format!("{e:#}"), "could not write the status file");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(STATUS_INTERVAL) => {}
                }
            }
            let _ = board.write(clock.now());
        })
    };
    let pruned = report::prune(&config.reports.dir, config.reports.keep, started);
    if pruned > 0 {
        tracing::info!(reports = pruned, "old reports deleted");
    }

    let mut running: HashSet<JobKey> = HashSet::new();
    let mut queued: HashSet<JobKey> = HashSet::new();

    // what the repository holds: each database's newest full (freshness, catch-up), and sizes
    let mut last_fulls = HashMap::new();
    for db in config.databases.iter().map(|d| d.name.clone()) {
        let last = match host.last_full_success(&config, &db).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(database = %db, error = %format!("{e:#}"), "cannot read the repository");
                None
            }
        };
        if let Some((at, id)) = &last {
            board.update(|s| {
                let d = s.databases.entry(db.clone()).or_default();
                d.last_full_success = Some(*at);
                d.last_full_backup_id = Some(id.clone());
            });
        }
        last_fulls.insert(db, last);
    }
    shared.refresh_target_stats();

    // catch-up: one run now for each database whose last success is older than a period
    for entry in sched.entries.clone().iter().filter(|e| e.catch_up && e.kind == JobKind::FullBackup) {
        for db in &entry.databases {
            let last = last_fulls.get(db).cloned().flatten();
            let key = (entry.kind, db.clone());
            if needs_catch_up(&entry.schedule, last.map(|l| l.0), clock.now()) && !running.contains(&key) {
                tracing::info!(database = %db, job_kind = entry.kind.name(), "no recent successful run: catching up now");
                dispatch(&shared, &config, entry, db, "catch_up", &mut running, &mut queued);
            }
        }
    }

    // the main loop: fire what is due, then sleep until the next run (waking at least every
    // minute to re-read the wall clock), a signal, or a finished job
    loop {
        let now = clock.now();
        for i in sched.due(now) {
            let entry = sched.entries[i].clone();
            for db in &entry.databases {
                dispatch(&shared, &config, &entry, db, "schedule", &mut running, &mut queued);
            }
        }
        board.update(|s| s.schedules = schedule_statuses(&sched, now, &s.schedules));
        check_staleness(&board, &config, &notifier, now);
        let wait = sched
            .next_wake()
            .map(|t| (t - clock.now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60))
            .min(next_staleness(&board, &config, clock.now()).unwrap_or(Duration::MAX));
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(Signal::Reload) => {
                    match config_path.as_deref().map(Config::load) {
                        Some(Ok(new)) => {
                            if let Err(e) = notifier.reconfigure(&new) {
                                tracing::error!(error = %format!("{e:#}"), "notifications not reconfigured: keeping the previous channels");
                            }
                            if new.monitoring.listen != config.monitoring.listen {
                                tracing::warn!("monitoring.listen changed: restart the daemon to serve on the new address");
                            }
                            config = Arc::new(new);
                            *shared.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
                            sched.reload(&config, clock.now());
                            tracing::info!(schedules = sched.entries.len(), next_run = ?sched.next_wake(), "configuration reloaded");
                        }
                        Some(Err(errors)) => {
                            for issue in &errors.issues {
                                tracing::error!(file = %errors.file, problem = %issue, "invalid configuration");
                            }
                            tracing::error!(errors = errors.issues.len(), "configuration not reloaded: keeping the running one");
                        }
                        None => tracing::warn!("no config file to reload"),
                    }
                }
                Some(Signal::Terminate) | None => break,
            },
            Some(key) = done_rx.recv() => {
                running.remove(&key);
                let entry = sched.entries.iter().find(|e| e.kind == key.0).cloned();
                if let (true, Some(entry)) = (queued.remove(&key), entry) {
                    dispatch(&shared, &config, &entry, &key.1, "schedule", &mut running, &mut queued);
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    // shutdown: no new jobs; running ones get the grace period, then are cancelled
    board.update(|s| s.shutting_down = true);
    shared.tracker.close();
    let grace = config.daemon.shutdown_grace;
    if !shared.tracker.is_empty() {
        tracing::info!(running = shared.tracker.len(), grace_s = grace.as_secs(), "stopping: waiting for running jobs");
        tokio::select! {
            _ = shared.tracker.wait() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("shutdown grace period over: cancelling running jobs");
                shared.jobs_cancel.cancel();
            }
            _ = signals.recv() => {
                tracing::warn!("second signal: cancelling running jobs now");
                shared.jobs_cancel.cancel();
            }
        }
        shared.tracker.wait().await;
    }
    // alerts about the last runs still go out
    notifier.flush(Duration::from_secs(10)).await;
    http_stop.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    writer_stop.cancel();
    let _ = writer.await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Starts one run of `entry` on `db`, or applies the overlap rule if one is already going.
fn dispatch(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    entry: &scheduler::Entry,
    db: &str,
    trigger: &'static str,
    running: &mut HashSet<JobKey>,
    queued: &mut HashSet<JobKey>,
) {
    let key = (entry.kind, db.to_owned());
    if running.contains(&key) {
        match entry.overlap {
            Overlap::Queue if !queued.contains(&key) => {
                queued.insert(key);
                shared.board.update(|s| s.counters.overlap_queued += 1);
                tracing::warn!(job_kind = entry.kind.name(), database = %db, "previous run still going: this run is queued");
            }
            _ => {
                shared.board.update(|s| s.counters.overlap_skipped += 1);
                tracing::warn!(job_kind = entry.kind.name(), database = %db, "previous run still going: this run is skipped");
            }
        }
        return;
    }
    running.insert(key.clone());
    let spec = JobSpec { run_id: report::new_run_id(), kind: entry.kind, database: db.to_owned(), trigger };
    let timeout = entry.timeout.unwrap_or(config.backup.timeout);
    let span = tracing::info_span!("job", job_kind = entry.kind.name(), database = %db, run_id = %spec.run_id);
    let (shared2, config) = (shared.clone(), config.clone());
    shared.tracker.spawn(run_job(shared2, config, spec, timeout, key).instrument(span));
}

async fn run_job(shared: Arc<Shared>, config: Arc<Config>, spec: JobSpec, timeout: Duration, key: JobKey) {
    let cancel = shared.jobs_cancel.child_token();
    // wait for a slot and for conflicting jobs on this database, unless cancelled meanwhile
    let acquired = async {
        let permit = shared.limit.clone().acquire_owned().await.ok()?;
        let (rw, backup_mutex) = shared.locks.of(&spec.database);
        // retention deletes: it waits for every other job on the database, and they for it
        let conflict = match spec.kind {
            JobKind::Retention => DbGuard::Exclusive(rw.write_owned().await),
            _ => DbGuard::Shared(rw.read_owned().await),
        };
        let one_backup = match spec.kind {
            JobKind::FullBackup | JobKind::IncrementalBackup => Some(backup_mutex.lock_owned().await),
            _ => None,
        };
        Some((permit, conflict, one_backup))
    };
    let guards = tokio::select! {
        g = acquired => g,
        _ = cancel.cancelled() => None,
    };
    let started = shared.clock.now();
    let progress = Arc::new(Counter::default());
    shared.board.track_progress(&spec.run_id, progress.clone());
    shared.board.update(|s| {
        s.counters.jobs_started += 1;
        s.running.push(RunningStatus {
            run_id: spec.run_id.clone(),
            kind: spec.kind.name().to_owned(),
            database: spec.database.clone(),
            trigger: spec.trigger.to_owned(),
            started_at: started,
            bytes: 0,
        });
    });
    tracing::info!(trigger = spec.trigger, "job started");
    if guards.is_some() {
        shared.notifier.job_started(spec.kind, &spec.database);
    }
    let _ = shared.board.write(started);
    let result = if guards.is_none() {
        JobResult { cancelled: true, failed: Some("cancelled before it started".into()), ..Default::default() }
    } else {
        let fut = shared.host.run(&spec, config.clone(), progress, cancel.clone());
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = tokio::time::sleep(timeout) => {
                // let the job clean up (children stopped, uploads aborted) before reporting
                cancel.cancel();
                let mut r = fut.await;
                r.failed = Some(format!("exceeded the job timeout ({timeout:?}) and was cancelled"));
                r.cancelled = false;
                r
            }
        }
    };
    drop(guards);
    let finished = shared.clock.now();
    let outcome = match (&result.failed, result.cancelled) {
        (Some(_), false) if result.partial => Outcome::Partial,
        (None, _) => Outcome::Success,
        (Some(_), true) => Outcome::Cancelled,
        (Some(_), false) => Outcome::Failed,
    };
    let duration = (finished - started).num_milliseconds() as f64 / 1000.0;
    match outcome {
        Outcome::Success => tracing::info!(
            backup_id = result.backup_id.as_deref().unwrap_or(""),
            raw_bytes = result.raw_bytes,
            stored_bytes = result.stored_bytes,
            duration_s = format!("{duration:.1}"),
            "job finished"
        ),
        _ => tracing::error!(outcome = ?outcome, error = result.failed.as_deref().unwrap_or(""), "job failed"),
    }
    let report = Report {
        run_id: spec.run_id.clone(),
        job_kind: spec.kind.name().to_owned(),
        database: spec.database.clone(),
        trigger: spec.trigger.to_owned(),
        started_at: started,
        finished_at: finished,
        duration_seconds: duration,
        outcome,
        backup_id: result.backup_id.clone(),
        raw_bytes: result.raw_bytes,
        stored_bytes: result.stored_bytes,
        mb_per_second: result.raw_bytes.map(|b| b as f64 / duration.max(0.001) / 1e6),
        targets: result.targets.clone(),
        warnings: result.warnings.clone(),
        error: result.failed.clone(),
        details: result.details.clone(),
    };
    report::record(&config.reports.dir, &report);
    if outcome != Outcome::Cancelled {
        let kind = if outcome == Outcome::Success { EventKind::Success } else { EventKind::Failure };
        let mut event = Event::new(kind, spec.kind.name(), &spec.database, finished);
        event.run_id = Some(spec.run_id.clone());
        event.backup_id = result.backup_id.clone();
        event.error = result.failed.clone();
        event.raw_bytes = result.raw_bytes;
        event.stored_bytes = result.stored_bytes;
        event.duration_seconds = Some(duration);
        event.mb_per_second = report.mb_per_second;
        event.sha256 = result.raw_sha256.clone();
        event.next_run = shared.board.update(|s| s.next_run(spec.kind));
        shared.notifier.job_finished(spec.kind, event);
    }
    if outcome == Outcome::Success
        && matches!(spec.kind, JobKind::FullBackup | JobKind::IncrementalBackup | JobKind::Retention)
    {
        shared.refresh_target_stats();
    }
    shared.board.untrack_progress(&spec.run_id);
    shared.board.update(|s| {
        s.running.retain(|r| r.run_id != spec.run_id);
        match outcome {
            Outcome::Success => s.counters.jobs_succeeded += 1,
            Outcome::Failed | Outcome::Partial => s.counters.jobs_failed += 1,
            Outcome::Cancelled => s.counters.jobs_cancelled += 1,
        }
        let summary = RunSummary {
            run_id: spec.run_id.clone(),
            database: spec.database.clone(),
            trigger: spec.trigger.to_owned(),
            started_at: started,
            finished_at: finished,
            outcome,
            backup_id: result.backup_id.clone(),
            error: result.failed.clone(),
        };
        for sch in s.schedules.iter_mut().filter(|x| x.kind == spec.kind.name()) {
            sch.last_run = Some(summary.clone());
        }
        let j: &mut JobStats =
            s.jobs.entry(spec.database.clone()).or_default().entry(spec.kind.name().to_owned()).or_default();
        j.runs += 1;
        j.last_attempt_at = Some(started);
        j.last_outcome = Some(outcome);
        j.last_duration_seconds = Some(duration);
        if outcome == Outcome::Success {
            j.last_success_at = Some(started);
            j.last_raw_bytes = result.raw_bytes;
            j.last_stored_bytes = result.stored_bytes;
            j.last_mb_per_second = report.mb_per_second;
        } else {
            j.failures += 1;
        }
        s.notifications = shared.notifier.counts();
        let d: &mut DatabaseStatus = s.databases.entry(spec.database.clone()).or_default();
        d.last_attempt_at = Some(started);
        d.last_outcome = Some(outcome);
        match spec.kind {
            JobKind::FullBackup if outcome == Outcome::Success => {
                d.last_full_success = Some(started);
                d.last_full_backup_id = result.backup_id.clone();
            }
            JobKind::Verification => {
                d.last_verification_at = Some(finished);
                d.last_verification_outcome = Some(outcome);
            }
            JobKind::TestRestore => {
                d.last_test_restore_at = Some(finished);
                d.last_test_restore_outcome = Some(outcome);
                d.last_restore_seconds = result.restore_seconds.or(d.last_restore_seconds);
            }
            _ => {}
        }
    });
    let _ = shared.board.write(finished);
    let _ = shared.done.send(key);
}

/// Sends one `stale` alert per database whose newest full backup is older than its max age
/// (whether or not a job ran), and re-arms it once the database is fresh.
fn check_staleness(board: &Board, config: &Config, notifier: &Notifier, now: DateTime<Utc>) {
    let problems = board.update(|s| status::problems(s, config, now));
    for db in &config.databases {
        match problems.iter().find(|p| p.stale && p.database == db.name) {
            Some(p) => {
                let mut event = Event::new(EventKind::Stale, JobKind::FullBackup.name(), &db.name, now);
                event.error = Some(p.message.clone());
                event.next_run = board.update(|s| s.next_run(JobKind::FullBackup));
                notifier.stale(event);
            }
            None => notifier.fresh(&db.name),
        }
    }
}

/// How long until the next database becomes stale (its newest full, or the daemon's start when
/// it has none, plus its max age), so the alert is not late by up to the loop's minute.
fn next_staleness(board: &Board, config: &Config, now: DateTime<Utc>) -> Option<Duration> {
    board.update(|s| {
        config
            .databases
            .iter()
            .filter_map(|db| {
                let since = s.databases.get(&db.name).and_then(|d| d.last_full_success).or(s.started_at)?;
                let due = since + status::max_age_for(config, &db.name, now)? + chrono::Duration::milliseconds(100);
                (due > now).then(|| (due - now).to_std().ok()).flatten()
            })
            .min()
    })
}

/// Forwards SIGTERM/SIGINT and SIGHUP to the daemon.
pub fn os_signals() -> Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Terminate,
                _ = hup.recv() => Signal::Reload,
            };
            tracing::info!(signal = ?s, "signal received");
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests;
