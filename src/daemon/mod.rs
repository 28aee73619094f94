//! `pgbackd run`: the long-running service. Schedules jobs from the `schedules:` block
//! ([`scheduler`]), starts them through the overlap rule, per-subject conflict locks and a
//! global concurrency limit ([`dispatch`]), keeps the status board and its file, serves the HTTP
//! endpoint ([`http`], [`metrics`]), reloads its config on SIGHUP and stops gracefully on
//! SIGTERM ([`signals`]). Jobs are `jobs::run`, exactly as on the command line.
//!
//! One cancellation tree below the root token the daemon is given: its jobs' token and its
//! services' token. The main loop stops scheduling on the first SIGTERM/SIGINT; running jobs get
//! `daemon.shutdown_grace` to finish, then (or at a second signal) the jobs' token is cancelled,
//! which stops their children (SIGTERM, SIGKILL after 10 s), aborts uploads and removes partial
//! data. Time comes from a [`Clock`], so the loop runs under `tokio::time::pause`.

pub mod dispatch;
pub mod http;
pub mod metrics;
pub mod page;
pub mod scheduler;
pub mod signals;
pub mod trigger;

use crate::clock::Clock;
use crate::config::Config;
use crate::config::notify::EventKind;
use crate::jobs::kind::JobKind;
use crate::jobs::report;
use crate::jobs::run::Arms;
use crate::notify::{Event, Notifier};
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Repository, Subject};
use crate::status::{self, Board, ScheduleStatus, Status};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use dispatch::{Generation, Runs, Shared, dispatch};
use scheduler::{Scheduler, needs_catch_up};
pub use signals::{Signal, os_signals};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Deps {
    pub clock: Arc<dyn Clock>,
    /// What runs the jobs: `jobs::run::Jobs`, or a fake for the scheduling tests.
    pub arms: Arc<dyn Arms>,
    pub signals: mpsc::Receiver<Signal>,
    /// Re-read on SIGHUP (None: reload keeps the current config).
    pub config_path: Option<PathBuf>,
    /// The root of the cancellation tree.
    pub cancel: CancellationToken,
}

/// How often the status file is refreshed when nothing happens.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);

fn schedule_statuses(sched: &Scheduler, now: DateTime<Utc>, old: &[ScheduleStatus]) -> Vec<ScheduleStatus> {
    sched
        .entries
        .iter()
        .map(|e| {
            let last_run =
                old.iter().find(|o| o.kind == e.kind && o.cron == e.schedule.expr()).and_then(|o| o.last_run.clone());
            ScheduleStatus {
                kind: e.kind,
                cron: e.schedule.expr().to_owned(),
                timezone: e.schedule.timezone().to_string(),
                databases: e.subjects.iter().map(|s| s.to_string()).collect(),
                next_run: e.next,
                period_seconds: e.schedule.period(now).map(|p| p.num_seconds()),
                last_run,
            }
        })
        .collect()
}

/// A new configuration generation: the config and its repository.
async fn open_generation(config: Config) -> Result<Arc<Generation>> {
    let repository = Repository::open(&config).await.context("opening the repository")?;
    Ok(Arc::new(Generation { config: Arc::new(config), repository: Arc::new(repository) }))
}

/// Runs the daemon until it is told to stop.
pub async fn run(config: Config, deps: Deps) -> Result<()> {
    let Deps { clock, arms, mut signals, config_path, cancel } = deps;
    let mut generation = open_generation(config).await?;
    let started = clock.now();
    let mut sched = Scheduler::new(&generation.config, started);
    let board = Arc::new(Board::new(
        &generation.config.reports.dir,
        Status {
            pid: std::process::id(),
            started_at: Some(started),
            config: config_path.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        },
    ));
    board.update(|s| s.schedules = schedule_statuses(&sched, started, &[]));
    // healthcheck (the status file) and /readyz agree from the first second
    let last_fulls = read_freshness(&board, &generation).await;
    // the scratch copy of a drill a crash interrupted: its server stopped, removed
    if generation.config.wal.is_some() {
        let tools = crate::pg::Tools::locate(generation.config.pg_bin_dir.as_deref());
        crate::jobs::recovery::drill::sweep(&std::env::temp_dir(), &tools).await;
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let notifier = Arc::new(Notifier::new(&generation.config).context("setting up notifications")?);
    let shared = Arc::new(Shared {
        clock: clock.clone(),
        arms,
        board: board.clone(),
        limit: Arc::new(Semaphore::new(generation.config.daemon.max_concurrent_jobs)),
        locks: Default::default(),
        jobs: TaskTracker::new(),
        jobs_cancel: cancel.child_token(),
        done: done_tx,
        notifier: notifier.clone(),
        current: std::sync::RwLock::new(generation.clone()),
    });
    // the status writer and the HTTP endpoint stop last, after the jobs
    let services = cancel.child_token();
    let http_config = Arc::new(std::sync::RwLock::new(generation.config.clone()));
    // jobs asked for over HTTP reach the loop through this channel (when monitoring.trigger is set)
    let (trigger_tx, mut trigger_rx) = mpsc::channel::<trigger::Request>(16);
    let http = match &generation.config.monitoring.listen {
        Some(addr) => {
            let endpoint = http::Endpoint {
                board: board.clone(),
                clock: clock.clone(),
                config: http_config.clone(),
                notifier: Some(notifier.clone()),
                triggers: Some(trigger_tx),
            };
            Some(http::start(addr, endpoint, services.clone()).await?)
        }
        None => None,
    };
    tracing::info!(
        schedules = sched.entries.len(),
        databases = generation.config.databases.len(),
        next_run = %next_run_text(sched.next_wake()),
        "daemon started"
    );

    // the status file: on every job start and end, and every 30 s (the healthcheck calls a
    // status older than two minutes a dead daemon)
    let writer = {
        let (board, clock, stop, notifier) = (board.clone(), clock.clone(), services.clone(), notifier.clone());
        crate::tasks::spawn(async move {
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
            // the last write says the daemon is gone: `status` exits 3 at once, not two minutes later
            board.update(|s| s.stopped_at = Some(clock.now()));
            let _ = board.write(clock.now());
        })
    };
    let pruned = report::prune(&generation.config.reports.dir, generation.config.reports.keep, started);
    if pruned > 0 {
        tracing::info!(reports = pruned, "old reports deleted");
    }

    // WAL: the monitor (both methods) and, for `method: stream`, the receiver
    let wal_status: Option<crate::wal::receiver::Shared> = generation.config.wal.as_ref().map(|w| {
        Arc::new(std::sync::Mutex::new(crate::wal::receiver::WalStatus {
            cluster: w.name.clone(),
            method: w.method,
            ..Default::default()
        }))
    });
    let receiver_stop = cancel.child_token();
    let mut wal_tasks = Vec::new();
    if let (Some(w), Some(status)) = (&generation.config.wal, &wal_status) {
        let current: crate::wal::receiver::Current = {
            let shared = shared.clone();
            Arc::new(move || {
                let g = shared.current.read().unwrap_or_else(|e| e.into_inner()).clone();
                (g.config.clone(), g.repository.clone())
            })
        };
        board.track_wal(status.clone());
        wal_tasks.push(crate::tasks::spawn(crate::wal::receiver::monitor(
            current.clone(),
            status.clone(),
            receiver_stop.clone(),
        )));
        if w.method == crate::config::WalMethod::Stream {
            wal_tasks.push(crate::tasks::spawn(crate::wal::receiver::supervise(
                current,
                status.clone(),
                receiver_stop.clone(),
            )));
        }
    }

    let mut runs = Runs::default();
    catch_up(&shared, &generation, &sched, &last_fulls, &mut runs).await;
    first_base_backup(&shared, &generation, &sched, &mut runs).await;
    shared.refresh_target_stats();

    // the main loop: fire what is due, then sleep until the next run (waking at least every
    // minute to re-read the wall clock), a signal, or a finished job
    loop {
        let now = clock.now();
        for i in sched.due(now) {
            let entry = sched.entries[i].clone();
            for subject in &entry.subjects {
                dispatch(&shared, &generation, &entry, subject, Trigger::Schedule, &mut runs);
            }
        }
        board.update(|s| s.schedules = schedule_statuses(&sched, now, &s.schedules));
        check_staleness(&board, &generation.config, &notifier, now);
        let wait = sched
            .next_wake()
            .map(|t| (t - clock.now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60))
            .min(next_staleness(&board, &generation.config, clock.now()).unwrap_or(Duration::MAX))
            // the WAL monitor's findings are judged as they come
            .min(if wal_status.is_some() { crate::wal::receiver::MONITOR_INTERVAL } else { Duration::MAX });
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(Signal::Reload) => {
                    if let Some(new) = reload(config_path.as_deref(), &generation.config, &notifier).await {
                        generation = new;
                        *shared.current.write().unwrap_or_else(|e| e.into_inner()) = generation.clone();
                        *http_config.write().unwrap_or_else(|e| e.into_inner()) = generation.config.clone();
                        sched.reload(&generation.config, clock.now());
                        tracing::info!(schedules = sched.entries.len(), next_run = %next_run_text(sched.next_wake()), "configuration reloaded");
                    }
                }
                Some(Signal::Terminate) | None => break,
            },
            Some(request) = trigger_rx.recv() => {
                trigger::handle(&shared, &generation, &sched, request, &mut runs);
            }
            Some(key) = done_rx.recv() => {
                runs.running.remove(&key);
                let entry = sched.entries.iter().find(|e| e.kind == key.0).cloned();
                if let (true, Some(entry)) = (runs.queued.remove(&key), entry) {
                    dispatch(&shared, &generation, &entry, &key.1, Trigger::Schedule, &mut runs);
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    // shutdown: no new jobs (a trigger is answered "stopping"); running ones get the grace
    // period, then are cancelled
    drop(trigger_rx);
    board.update(|s| s.shutting_down = true);
    shared.jobs.close();
    let grace = generation.config.daemon.shutdown_grace;
    if !shared.jobs.is_empty() {
        tracing::info!(running = shared.jobs.len(), grace_s = grace.as_secs(), "stopping: waiting for running jobs");
        tokio::select! {
            _ = shared.jobs.wait() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("shutdown grace period over: cancelling running jobs");
                shared.jobs_cancel.cancel();
            }
            _ = signals.recv() => {
                tracing::warn!("second signal: cancelling running jobs now");
                shared.jobs_cancel.cancel();
            }
        }
        shared.jobs.wait().await;
    }
    // the receiver stores what it received, the partial segment too, before the daemon goes;
    // the monitor stops with it
    receiver_stop.cancel();
    for t in wal_tasks {
        let _ = t.await;
    }
    // alerts about the last runs still go out
    notifier.flush(Duration::from_secs(10)).await;
    services.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    let _ = writer.await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Re-reads the config and opens its repository; `None` (and the running one stays) if either
/// fails. A config's secrets are withheld from children from now on.
async fn reload(path: Option<&std::path::Path>, current: &Config, notifier: &Notifier) -> Option<Arc<Generation>> {
    let Some(path) = path else {
        tracing::warn!("no config file to reload");
        return None;
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for issue in &errors.issues {
                tracing::error!(file = %errors.file, problem = %issue, "invalid configuration");
            }
            tracing::error!(errors = errors.issues.len(), "configuration not reloaded: keeping the running one");
            return None;
        }
    };
    crate::process::withhold_env_holding(&new.secret_values());
    crate::secret::register(new.secret_values());
    if new.monitoring.listen != current.monitoring.listen {
        tracing::warn!("monitoring.listen changed: restart the daemon to serve on the new address");
    }
    let generation = match open_generation(new).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "configuration not reloaded: keeping the running one");
            return None;
        }
    };
    if let Err(e) = notifier.reconfigure(&generation.config) {
        tracing::error!(error = %format!("{e:#}"), "notifications not reconfigured: keeping the previous channels");
    }
    Some(generation)
}

/// At start, before the status file and `/readyz` say anything: each database's newest full
/// backup (its freshness), on the board; returns them for [`catch_up`].
async fn read_freshness(board: &Board, generation: &Generation) -> HashMap<Subject, Option<DateTime<Utc>>> {
    let mut last_fulls = HashMap::new();
    for db in &generation.config.databases {
        let subject = Subject::Database(db.name.clone());
        let last = match generation.repository.latest(&subject, Some(BackupKind::Full)).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(subject = %subject, error = %format!("{e:#}"), "cannot read the repository");
                None
            }
        };
        if let Some(m) = &last {
            board.update(|s| {
                let d = s.databases.entry(db.name.clone()).or_default();
                d.last_full_success = Some(m.started_at);
                d.last_full_backup_id = Some(m.id.clone());
            });
        }
        last_fulls.insert(subject, last.map(|m| m.started_at));
    }
    last_fulls
}

/// At start: runs a full backup now for each database whose last success (`last_fulls`) is
/// older than a period of its schedule.
async fn catch_up(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    sched: &Scheduler,
    last_fulls: &HashMap<Subject, Option<DateTime<Utc>>>,
    runs: &mut Runs,
) {
    let now = shared.clock.now();
    for entry in sched.entries.iter().filter(|e| e.catch_up && e.kind == JobKind::FullBackup) {
        for subject in &entry.subjects {
            let last = last_fulls.get(subject).copied().flatten();
            if needs_catch_up(&entry.schedule, last, now) && !runs.running.contains_key(&(entry.kind, subject.clone()))
            {
                tracing::info!(subject = %subject, job_kind = entry.kind.name(), "no recent successful run: catching up now");
                dispatch(shared, generation, entry, subject, Trigger::CatchUp, runs);
            }
        }
    }
}

/// At start, with WAL archiving configured and no base backup of the cluster in the repository:
/// takes the first one now (through the base_backup schedule's entry when there is one), so the
/// archived WAL has something to restore from.
async fn first_base_backup(shared: &Arc<Shared>, generation: &Arc<Generation>, sched: &Scheduler, runs: &mut Runs) {
    let Some(wal) = &generation.config.wal else { return };
    let subject = Subject::Cluster(wal.name.clone());
    match generation.repository.latest(&subject, None).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(subject = %subject, error = %format!("{e:#}"), "cannot tell whether a base backup exists");
            return;
        }
    }
    let entry = match sched.entries.iter().find(|e| e.kind == JobKind::BaseBackup) {
        Some(e) => e.clone(),
        None => {
            tracing::warn!(
                cluster = %wal.name,
                "no base_backup schedule: only this first base backup is taken, and WAL accumulates from it"
            );
            scheduler::Entry {
                kind: JobKind::BaseBackup,
                schedule: crate::schedule::Schedule::parse("@yearly", None).expect("a valid schedule"),
                subjects: vec![subject.clone()],
                overlap: crate::config::Overlap::Skip,
                catch_up: false,
                timeout: None,
                next: None,
            }
        }
    };
    tracing::info!(cluster = %wal.name, "no base backup of the cluster yet: taking the first one now");
    dispatch(shared, generation, &entry, &subject, Trigger::CatchUp, runs);
}

/// Sends one `stale` alert per database whose newest full backup is older than its max age
/// (whether or not a job ran), and per WAL problem (archive behind, server silent, slot holding
/// back WAL), and re-arms each once it is fresh again.
fn check_staleness(board: &Board, config: &Config, notifier: &Notifier, now: DateTime<Utc>) {
    board.sync_wal();
    let problems = board.update(|s| status::problems(s, config, now));
    for key in status::wal_alert_keys(config) {
        match problems.iter().find(|p| p.stale && p.database == key) {
            Some(p) => {
                let mut event = Event::new(EventKind::Stale, "wal_archiving", &key, now);
                event.error = Some(p.message.clone());
                notifier.stale(event);
            }
            None => notifier.fresh(&key),
        }
    }
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

#[cfg(test)]
mod tests;

/// A next run for the log: RFC 3339, or `none` when no schedule is due ever again.
fn next_run_text(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map_or_else(|| "none".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
