//! The one way a job runs, from the command line and from the daemon alike:
//! [`run`]`(JobSpec, &JobContext) -> JobRun`. It opens the job's span, enforces its timeout, runs
//! the arm for its kind and subject, and classifies the result; what the finished run then
//! causes (log line, metrics, report, status, notification) is `telemetry::events`' job.

use super::context::JobContext;
pub use super::context::Select;
use super::kind::JobKind;
use super::report::Outcome;
use super::restore::{RestoreReport, RestoreRequest};
use super::retention::RetentionRun;
use super::test_restore::TestRestored;
use super::verify::Verification;
use super::{backup, file_backup, restore, retention, test_restore, verify};
use crate::config::VerifyMode;
use crate::fileset::restore::{Request as FilesRequest, Restored};
use crate::repo::manifest::Trigger;
use crate::repo::{Attempt, AttemptOutcome, BackupKind, Manifest, Subject};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tracing::Instrument;

/// One run of a job: what, of what, why, and how.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub kind: JobKind,
    pub subject: Subject,
    pub trigger: Trigger,
    /// In every log line, report and notification of the run.
    pub run_id: String,
    pub params: Params,
}

impl JobSpec {
    /// A run with the configured behaviour (what the daemon's schedules run).
    pub fn new(kind: JobKind, subject: Subject, trigger: Trigger) -> JobSpec {
        JobSpec { kind, subject, trigger, run_id: new_run_id(), params: Params::default() }
    }
}

/// What a command line says beyond kind and subject; the defaults are the configured behaviour.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// Which backups a verification, test restore or restore reads.
    pub select: Select,
    /// Verification depth (default: `verification.mode`).
    pub verify_mode: Option<VerifyMode>,
    /// Verification of a cluster: its WAL archive only, not its base backups.
    pub wal_only: bool,
    /// Backups: accept a dump much smaller than the previous full.
    pub allow_shrink: bool,
    /// Retention: plan only.
    pub dry_run: bool,
    /// Retention: plan as of this time instead of now.
    pub at: Option<DateTime<Utc>>,
    /// Restore: where to, and how.
    pub restore: Option<RestoreTo>,
    /// Cancel the job after this long (the daemon's per-schedule timeout).
    pub timeout: Option<Duration>,
    /// A restore point job: the point's name.
    pub restore_point: Option<String>,
    /// A SQLite backup: a full, whatever `full_every` says.
    pub full: bool,
}

/// Where a restore writes.
#[derive(Debug, Clone)]
pub enum RestoreTo {
    Database(Box<RestoreRequest>),
    Directory(FilesRequest),
    /// A cluster's data directory, recovered to a moment (`restore-cluster`).
    Cluster(Box<super::recovery::Request>),
    /// A SQLite database file's path (`restore-sqlite`).
    Sqlite(super::restore::sqlite::Request),
}

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    Success,
    /// Stored, but not everything was captured as it was (a file backup): why.
    Partial(String),
    Failed(anyhow::Error),
    /// Stopped by a signal or the daemon's shutdown: what the job said.
    Cancelled(String),
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunOutcome::Success => f.write_str("succeeded"),
            RunOutcome::Partial(why) => write!(f, "partly succeeded: {why}"),
            RunOutcome::Failed(e) => write!(f, "failed: {e:#}"),
            RunOutcome::Cancelled(why) => write!(f, "was cancelled: {why}"),
        }
    }
}

/// What a run produced, for printing and for its report.
#[derive(Debug)]
pub enum Produced {
    Nothing,
    Backup(Box<Manifest>),
    Verified(Box<Verification>),
    TestRestore(Box<TestRestored>),
    Retention(Box<RetentionRun>),
    Restore(Box<RestoreReport>),
    FilesRestored(Box<Restored>),
    SqliteRestored(Box<super::restore::sqlite::Restored>),
    ClusterRecovered(Box<super::recovery::ClusterRecovery>),
    Drill(Box<super::recovery::drill::DrillReport>),
    RestorePoint(Box<crate::wal::restore_point::RestorePoint>),
}

/// A finished run.
#[derive(Debug)]
pub struct JobRun {
    pub spec: JobSpec,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub produced: Produced,
    /// The run's span (`job{kind, subject, run_id}`), for what is logged about it afterwards.
    pub span: tracing::Span,
}

impl JobRun {
    /// A run that never started (cancelled while waiting for its turn).
    pub fn not_started(spec: JobSpec, at: DateTime<Utc>, why: &str) -> JobRun {
        let span = job_span(&spec);
        JobRun {
            spec,
            started_at: at,
            finished_at: at,
            outcome: RunOutcome::Cancelled(why.to_owned()),
            produced: Produced::Nothing,
            span,
        }
    }

    pub fn status(&self) -> Outcome {
        match self.outcome {
            RunOutcome::Success => Outcome::Success,
            RunOutcome::Partial(_) => Outcome::Partial,
            RunOutcome::Failed(_) => Outcome::Failed,
            RunOutcome::Cancelled(_) => Outcome::Cancelled,
        }
    }

    /// The whole error chain, when the run did not succeed.
    pub fn error(&self) -> Option<String> {
        match &self.outcome {
            RunOutcome::Success => None,
            RunOutcome::Partial(why) | RunOutcome::Cancelled(why) => Some(why.clone()),
            RunOutcome::Failed(e) => Some(format!("{e:#}")),
        }
    }

    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }

    /// The backup a backup job stored.
    pub fn backup(&self) -> Option<&Manifest> {
        match &self.produced {
            Produced::Backup(m) => Some(m),
            _ => None,
        }
    }
}

pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn job_span(spec: &JobSpec) -> tracing::Span {
    tracing::info_span!(
        "job",
        job_kind = spec.kind.name(),
        subject = %spec.subject,
        run_id = %spec.run_id,
        trigger = spec.trigger.name()
    )
}

/// The work of each kind of job. [`Jobs`] is the real one; the daemon's scheduling tests put a
/// fake here and keep everything around it.
#[async_trait]
pub trait Arms: Send + Sync {
    async fn perform(&self, spec: &JobSpec, ctx: &JobContext) -> Result<Produced>;
}

/// The real jobs.
pub struct Jobs;

/// Runs a job.
pub async fn run(spec: JobSpec, ctx: &JobContext) -> JobRun {
    run_with(&Jobs, spec, ctx).await
}

/// Runs a job with these arms (see [`Arms`]).
pub async fn run_with(arms: &dyn Arms, spec: JobSpec, ctx: &JobContext) -> JobRun {
    let span = job_span(&spec);
    let started_at = ctx.now();
    // a backup says in the repository that it starts before it starts, and how it ended
    let mut attempt = spec.kind.is_backup().then(|| Attempt {
        run_id: spec.run_id.clone(),
        job_kind: spec.kind.name().to_owned(),
        started_at,
        finished_at: None,
        outcome: AttemptOutcome::Running,
        host: crate::notify::hostname(),
        pid: std::process::id(),
        error: None,
    });
    if let Some(a) = &attempt
        && let Err(e) = ctx.repository.record_attempt(&spec.subject, a).instrument(span.clone()).await
    {
        let outcome = RunOutcome::Failed(e.context("the backup did not start"));
        return JobRun { spec, started_at, finished_at: ctx.now(), outcome, produced: Produced::Nothing, span };
    }
    let cancel = ctx.cancel.child_token();
    let job_ctx = ctx.with_cancel(cancel.clone());
    let (result, timed_out) = async {
        let work = arms.perform(&spec, &job_ctx);
        let Some(limit) = spec.params.timeout else { return (work.await, None) };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => (r, None),
            _ = tokio::time::sleep(limit) => {
                // let the job clean up (children stopped, uploads aborted) before reporting
                cancel.cancel();
                (work.await, Some(limit))
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (outcome, produced) = match result {
        Ok(p) => (classify(&p), p),
        Err(e) => (RunOutcome::Failed(e), Produced::Nothing),
    };
    let outcome = match (outcome, timed_out) {
        (RunOutcome::Success, _) => RunOutcome::Success,
        (RunOutcome::Failed(e), Some(limit)) => RunOutcome::Failed(
            e.context(format!("exceeded the job timeout ({}) and was cancelled", crate::units::duration(limit))),
        ),
        (RunOutcome::Partial(why), Some(limit)) => RunOutcome::Failed(
            anyhow!("{why}")
                .context(format!("exceeded the job timeout ({}) and was cancelled", crate::units::duration(limit))),
        ),
        // stopped from outside: a signal, the daemon's shutdown
        (RunOutcome::Failed(e), None) if ctx.cancel.is_cancelled() => RunOutcome::Cancelled(format!("{e:#}")),
        (other, _) => other,
    };
    let run = JobRun { spec, started_at, finished_at: ctx.now().max(started_at), outcome, produced, span };
    if let Some(a) = &mut attempt {
        a.finished_at = Some(run.finished_at);
        a.outcome = match run.status() {
            Outcome::Success => AttemptOutcome::Success,
            Outcome::Partial => AttemptOutcome::Partial,
            Outcome::Failed => AttemptOutcome::Failed,
            Outcome::Cancelled => AttemptOutcome::Cancelled,
        };
        a.error = run.error();
        if let Err(e) = ctx.repository.record_attempt(&run.spec.subject, a).instrument(run.span.clone()).await {
            // the record still says `running`: retention treats that as a failed backup too
            run.span.in_scope(|| tracing::warn!(error = %format!("{e:#}"), "could not record how the backup ended"));
        }
    }
    run
}

/// Whether what a job produced is a success.
fn classify(p: &Produced) -> RunOutcome {
    match p {
        Produced::Backup(m) if !m.problems().is_empty() => {
            let problems: Vec<String> = m.problems().iter().map(|p| format!("{}: {}", p.path, p.problem)).collect();
            RunOutcome::Partial(format!(
                "partial: {} of the files were not captured as they were: {}",
                problems.len(),
                problems.join("; ")
            ))
        }
        Produced::Verified(v) => match v.failures() {
            f if f.is_empty() => RunOutcome::Success,
            f => RunOutcome::Failed(anyhow!("{}", f.join("; "))),
        },
        Produced::TestRestore(t) => match &t.error {
            None => RunOutcome::Success,
            Some(e) => RunOutcome::Failed(anyhow!("{e}")),
        },
        Produced::Retention(r) => match r.applied.as_ref().filter(|a| !a.errors.is_empty()) {
            None => RunOutcome::Success,
            Some(a) => RunOutcome::Failed(anyhow!("{}", a.errors.join("; "))),
        },
        Produced::Drill(d) if !d.failures.is_empty() => RunOutcome::Failed(anyhow!("{}", d.failures.join("; "))),
        Produced::Restore(r) if !r.mismatches.is_empty() => {
            let tables: Vec<String> = r.mismatches.iter().map(|m| format!("{}.{}", m.schema, m.table)).collect();
            RunOutcome::Failed(anyhow!("row counts differ from the backup in: {}", tables.join(", ")))
        }
        _ => RunOutcome::Success,
    }
}

#[async_trait]
impl Arms for Jobs {
    async fn perform(&self, spec: &JobSpec, ctx: &JobContext) -> Result<Produced> {
        let p = &spec.params;
        match (spec.kind, &spec.subject) {
            (JobKind::FullBackup | JobKind::IncrementalBackup, Subject::Database(name)) => {
                let kind = if spec.kind == JobKind::FullBackup { BackupKind::Full } else { BackupKind::Incremental };
                let db = ctx.config.select_database(Some(name))?.clone();
                let req = backup::Request { database: &db, kind, trigger: spec.trigger, allow_shrink: p.allow_shrink };
                Ok(Produced::Backup(Box::new(backup::run(ctx, &req).await?)))
            }
            (JobKind::FileBackup, s @ Subject::Files(_)) | (JobKind::ConfigBackup, s @ Subject::Configs(_)) => {
                Ok(Produced::Backup(Box::new(file_backup::run(ctx, s, spec.trigger).await?)))
            }
            (JobKind::SqliteBackup, s @ Subject::Sqlite(_)) => {
                Ok(Produced::Backup(Box::new(super::sqlite_backup::run(ctx, s, spec.trigger, p.full).await?)))
            }
            (JobKind::BaseBackup, Subject::Cluster(name)) => {
                Ok(Produced::Backup(Box::new(super::base_backup::run(ctx, name, spec.trigger).await?)))
            }
            (JobKind::Verification, Subject::Cluster(name)) => {
                let mode = p.verify_mode.unwrap_or(ctx.config.verification.mode);
                Ok(Produced::Verified(Box::new(verify::cluster(ctx, name, &p.select, mode, p.wal_only).await?)))
            }
            (JobKind::Verification, s) => {
                let mode = p.verify_mode.unwrap_or(ctx.config.verification.mode);
                Ok(Produced::Verified(Box::new(verify::run(ctx, s, &p.select, mode).await?)))
            }
            (JobKind::TestRestore, s @ Subject::Sqlite(_)) => {
                let m = test_restore::choose(ctx, s, &p.select).await?;
                Ok(Produced::TestRestore(Box::new(test_restore::sqlite(ctx, &m).await)))
            }
            (JobKind::TestRestore, s @ Subject::Database(_)) => {
                let m = test_restore::choose(ctx, s, &p.select).await?;
                Ok(Produced::TestRestore(Box::new(test_restore::run(ctx, &m).await)))
            }
            (JobKind::Retention, s) => {
                let at = p.at.unwrap_or_else(|| ctx.now());
                Ok(Produced::Retention(Box::new(retention::run(ctx, s, at, p.dry_run).await?)))
            }
            (JobKind::RestorePoint, Subject::Cluster(_)) => {
                let name = p.restore_point.as_deref().context("a restore point needs a name")?;
                use crate::wal::restore_point::{NameRefused, create};
                let point = create(&ctx.config, &ctx.repository, name, ctx.now(), &ctx.cancel).await.map_err(|e| {
                    // a malformed or used name: refused before anything was done (exit 2)
                    match e.downcast::<NameRefused>() {
                        Ok(r) => anyhow::Error::new(super::Refused(r.0)),
                        Err(e) => e,
                    }
                })?;
                Ok(Produced::RestorePoint(Box::new(point)))
            }
            (JobKind::RecoveryDrill, Subject::Cluster(name)) => {
                Ok(Produced::Drill(Box::new(super::recovery::drill::run(ctx, name).await?)))
            }
            (JobKind::Restore, Subject::Cluster(name)) => match &p.restore {
                Some(RestoreTo::Cluster(req)) => {
                    Ok(Produced::ClusterRecovered(Box::new(super::recovery::run(ctx, name, req).await?)))
                }
                _ => bail!("a cluster is restored into a data directory (pgbackd restore-cluster --pgdata DIR)"),
            },
            (JobKind::Restore, s) => {
                let m = restore::choose(ctx, s, &p.select).await?;
                match &p.restore {
                    Some(RestoreTo::Database(req)) => {
                        Ok(Produced::Restore(Box::new(restore::run(ctx, &m, req).await?)))
                    }
                    Some(RestoreTo::Directory(req)) => {
                        Ok(Produced::FilesRestored(Box::new(restore::files(ctx, &m, req).await?)))
                    }
                    Some(RestoreTo::Sqlite(req)) => {
                        Ok(Produced::SqliteRestored(Box::new(restore::sqlite::run(ctx, &m, req).await?)))
                    }
                    Some(RestoreTo::Cluster(_)) => bail!("only a cluster's base backups restore into a data directory"),
                    None => bail!("a restore needs a target (a database, a directory or a file)"),
                }
            }
            (kind, s) => bail!("a {} job cannot run on {}", kind.name(), s.describe()),
        }
    }
}
