//! Starting scheduled runs: the overlap rule (skip or queue one), the global concurrency limit,
//! per-subject conflict locks, and each run as a task of the daemon's job group. The run itself
//! is `jobs::run`, its effects `telemetry::events`; nothing here knows what a job does.

use super::scheduler::Entry;
use crate::clock::Clock;
use crate::config::{Config, Overlap};
use crate::jobs::kind::JobKind;
use crate::jobs::run::{Arms, JobRun, JobSpec};
use crate::jobs::{JobContext, report::Outcome};
use crate::notify::Notifier;
use crate::pipeline::Counter;
use crate::repo::manifest::Trigger;
use crate::repo::{Repository, Subject};
use crate::status::{Board, TargetStats};
use crate::telemetry::events::{self, Sinks};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{RwLock, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// One configuration and the repository opened for it: what every job of it runs with. The
/// daemon swaps in a new generation on a valid reload; running jobs keep theirs.
pub struct Generation {
    pub config: Arc<Config>,
    pub repository: Arc<Repository>,
}

/// A job kind on a subject: at most one runs at a time (the overlap rule).
pub type JobKey = (JobKind, Subject);

/// Per-subject conflict locks: retention takes the write side, every other job the read side;
/// backups of one subject also take its backup mutex, so two never run at once.
#[derive(Default)]
pub struct Locks {
    by_subject: std::sync::Mutex<HashMap<Subject, SubjectLocks>>,
}

/// A held conflict lock (kept alive for the length of a run).
enum Held {
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// One subject's conflict lock and backup mutex.
type SubjectLocks = (Arc<RwLock<()>>, Arc<tokio::sync::Mutex<()>>);

impl Locks {
    fn of(&self, subject: &Subject) -> SubjectLocks {
        self.by_subject.lock().unwrap_or_else(|e| e.into_inner()).entry(subject.clone()).or_default().clone()
    }
}

/// Everything a job task needs, shared.
pub struct Shared {
    pub clock: Arc<dyn Clock>,
    pub arms: Arc<dyn Arms>,
    pub board: Arc<Board>,
    pub limit: Arc<Semaphore>,
    pub locks: Locks,
    /// The daemon's running jobs (spawned on the process's tracker, counted here).
    pub jobs: TaskTracker,
    /// Cancels every running job (grace period over, second signal); a child of the root.
    pub jobs_cancel: CancellationToken,
    pub done: mpsc::UnboundedSender<JobKey>,
    pub notifier: Arc<Notifier>,
    /// The generation in force (replaced on reload), for the stats refresh.
    pub current: std::sync::RwLock<Arc<Generation>>,
}

impl Shared {
    pub fn generation(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refreshes the per-target backup counts and sizes in the background.
    pub fn refresh_target_stats(self: &Arc<Self>) {
        let shared = self.clone();
        let generation = self.generation();
        crate::tasks::spawn(async move {
            match target_stats(&generation.repository).await {
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

/// Backups and bytes on each storage target, for metrics.
async fn target_stats(repo: &Repository) -> anyhow::Result<BTreeMap<String, TargetStats>> {
    let mut out: BTreeMap<String, TargetStats> =
        repo.targets().iter().map(|t| (t.name().to_owned(), TargetStats::default())).collect();
    let listing = repo.listing(None).await?;
    for l in &listing.backups {
        let bytes = l.manifest.stored_bytes();
        for t in &l.targets {
            let s = out.entry(t.clone()).or_default();
            s.backups += 1;
            s.stored_bytes += bytes;
        }
    }
    for d in &listing.damaged {
        let s = out.entry(d.target.clone()).or_default();
        s.damaged += 1;
        if s.damaged_ids.len() < crate::status::DAMAGED_NAMED {
            s.damaged_ids.push(d.id.clone());
        }
    }
    Ok(out)
}

/// The daemon's bookkeeping of runs: those going (with their run ids), and those queued behind
/// them.
#[derive(Default)]
pub struct Runs {
    pub running: HashMap<JobKey, String>,
    pub queued: HashSet<JobKey>,
}

/// What became of a request to run a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// A new run, with its id.
    Started(String),
    /// The same job on the same subject is going already (run `running`): this one is queued
    /// behind it, or skipped.
    Busy { running: String, queued: bool },
}

/// Starts one run of `entry` on `subject`, or applies the overlap rule if one is already going.
pub fn dispatch(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    entry: &Entry,
    subject: &Subject,
    trigger: Trigger,
    runs: &mut Runs,
) -> Dispatched {
    let mut spec = JobSpec::new(entry.kind, subject.clone(), trigger);
    spec.params.timeout = Some(entry.timeout.unwrap_or(generation.config.backup.timeout));
    start(shared, generation, spec, entry.overlap, runs)
}

/// Starts `spec` as a task of the daemon's job group, or applies `overlap` if the same kind of
/// job on the same subject is going.
pub fn start(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    spec: JobSpec,
    overlap: Overlap,
    runs: &mut Runs,
) -> Dispatched {
    let key = (spec.kind, spec.subject.clone());
    if let Some(running) = runs.running.get(&key) {
        let (kind, subject) = (spec.kind.name(), &spec.subject);
        let queued = match overlap {
            Overlap::Queue if !runs.queued.contains(&key) => {
                runs.queued.insert(key.clone());
                shared.board.update(|s| s.counters.overlap_queued += 1);
                tracing::warn!(job_kind = kind, subject = %subject, "previous run still going: this run is queued");
                true
            }
            _ => {
                shared.board.update(|s| s.counters.overlap_skipped += 1);
                tracing::warn!(job_kind = kind, subject = %subject, "previous run still going: this run is skipped");
                false
            }
        };
        return Dispatched::Busy { running: running.clone(), queued };
    }
    let run_id = spec.run_id.clone();
    runs.running.insert(key.clone(), run_id.clone());
    shared.board.waiting(&run_id, true);
    let span =
        tracing::info_span!("dispatch", job_kind = spec.kind.name(), subject = %spec.subject, run_id = %spec.run_id);
    let task = run_job(shared.clone(), generation.clone(), spec, key).instrument(span);
    crate::tasks::spawn(shared.jobs.track_future(task));
    Dispatched::Started(run_id)
}

/// One run: waits for its turn (a slot, the subject's locks), runs, and reports.
async fn run_job(shared: Arc<Shared>, generation: Arc<Generation>, spec: JobSpec, key: JobKey) {
    let cancel = shared.jobs_cancel.child_token();
    // wait for a slot and for conflicting jobs on this subject, unless cancelled meanwhile
    let acquired = async {
        let permit = shared.limit.clone().acquire_owned().await.ok()?;
        let (rw, backup_mutex) = shared.locks.of(&spec.subject);
        // retention deletes: it waits for every other job on the subject, and they for it
        let conflict = match spec.kind {
            JobKind::Retention => Held::Exclusive(rw.write_owned().await),
            _ => Held::Shared(rw.read_owned().await),
        };
        // a verification starts by listing the subject's backups: one being committed meanwhile
        // has its manifest on one target and not yet on the next, and would fail there
        if spec.kind == JobKind::Verification {
            drop(backup_mutex.lock().await);
        }
        let one_backup = if spec.kind.is_backup() { Some(backup_mutex.lock_owned().await) } else { None };
        Some((permit, conflict, one_backup))
    };
    let guards = tokio::select! {
        g = acquired => g,
        _ = cancel.cancelled() => None,
    };
    let config = &generation.config;
    let ctx = JobContext {
        config: config.clone(),
        repository: generation.repository.clone(),
        clock: shared.clock.clone(),
        cancel,
        progress: Arc::new(Counter::default()),
        interactive: false,
    };
    let sinks = Sinks { reports: &config.reports.dir, board: Some(&shared.board), notifier: Some(&shared.notifier) };
    let started = ctx.now();
    // no start ping for a run that will not start
    let start_sinks = Sinks { notifier: guards.as_ref().and(Some(&*shared.notifier)), ..sinks };
    events::job_started(&spec, started, &ctx.progress, &start_sinks);
    shared.board.waiting(&spec.run_id, false);
    let _ = shared.board.write(started);
    let run = match &guards {
        None => JobRun::not_started(spec, started, "cancelled before it started"),
        Some(_) => crate::jobs::run::run_with(&*shared.arms, spec, &ctx).await,
    };
    drop(guards);
    events::job_finished(&run, &sinks);
    if run.status() == Outcome::Success && (run.spec.kind.is_backup() || run.spec.kind == JobKind::Retention) {
        shared.refresh_target_stats();
    }
    let _ = shared.board.write(run.finished_at);
    let _ = shared.done.send(key);
}
