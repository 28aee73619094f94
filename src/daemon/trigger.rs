//! Jobs run on request (`POST /trigger`, `pgbackd trigger`): which subject a request names,
//! and starting it through the same dispatch as a schedule. A request for a job that is going
//! already on that subject gets that run (a backup that started before a deployment is as good
//! a pre-deployment backup as a new one).

use super::dispatch::{Dispatched, Generation, Runs, Shared, start};
use super::scheduler::Scheduler;
use crate::config::{Config, Overlap};
use crate::jobs::kind::JobKind;
use crate::jobs::run::JobSpec;
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::oneshot;

/// What `POST /trigger` carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriggerBody {
    /// A schedule key (`full_backup`, `verification`, ...) or `restore_point`.
    pub job: String,
    /// A database's name, or `files:NAME`, `configs:NAME`, `cluster:NAME`; may be left out when
    /// the job has one possible subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A restore point's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The answer to a trigger: the run that does it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Triggered {
    pub run_id: String,
    pub job: String,
    pub subject: String,
    /// The same job on the same subject was going already: this is that run.
    pub attached: bool,
}

/// A request passed from the HTTP endpoint to the daemon's loop.
pub struct Request {
    pub body: TriggerBody,
    pub reply: oneshot::Sender<Result<Triggered, String>>,
}

/// The subject a request names (`app`, `files:uploads`, or `uploads` when only one subject has
/// that name), or the job's only possible subject; the refusal says what to choose from.
pub fn resolve(config: &Config, kind: JobKind, requested: Option<&str>) -> Result<Subject, String> {
    let candidates = crate::jobs::context::subjects_for(config, kind);
    let listed = || candidates.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    if candidates.is_empty() {
        return Err(match kind {
            JobKind::BaseBackup | JobKind::RecoveryDrill | JobKind::RestorePoint => {
                format!("{} needs WAL archiving: the daemon's config has no wal: section", kind.name())
            }
            JobKind::FileBackup => "the daemon's config has no files: source sets".to_owned(),
            JobKind::ConfigBackup => "the daemon's config has no configs: source sets".to_owned(),
            JobKind::SqliteBackup => "the daemon's config has no sqlite: files".to_owned(),
            _ => "the daemon's config has no databases".to_owned(),
        });
    }
    match requested {
        Some(name) => {
            let exact = candidates.iter().find(|s| s.to_string() == name);
            let by_name: Vec<&Subject> = candidates.iter().filter(|s| s.name() == name).collect();
            match (exact, by_name.as_slice()) {
                (Some(s), _) => Ok(s.clone()),
                (None, [s]) => Ok((*s).clone()),
                (None, []) => Err(format!("{} cannot run on {name:?}: choose one of {}", kind.name(), listed())),
                (None, _) => Err(format!("{name:?} names several subjects: choose one of {}", listed())),
            }
        }
        None => match candidates.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(format!("{} of which? Add --database with one of {}", kind.name(), listed())),
        },
    }
}

/// Starts the requested job (or finds it running) and answers.
pub fn handle(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    sched: &Scheduler,
    request: Request,
    runs: &mut Runs,
) {
    let answer = start_requested(shared, generation, sched, &request.body, runs);
    match &answer {
        Ok(t) => tracing::info!(
            job_kind = %t.job,
            subject = %t.subject,
            run_id = %t.run_id,
            attached = t.attached,
            "job requested over HTTP"
        ),
        Err(e) => tracing::warn!(job_kind = %request.body.job, problem = %e, "job request refused"),
    }
    let _ = request.reply.send(answer);
}

fn start_requested(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    sched: &Scheduler,
    body: &TriggerBody,
    runs: &mut Runs,
) -> Result<Triggered, String> {
    let config = &generation.config;
    let Some(kind) = JobKind::triggerable(&body.job) else {
        let mut kinds: Vec<&str> = JobKind::SCHEDULED.iter().map(|k| k.name()).collect();
        kinds.push(JobKind::RestorePoint.name());
        return Err(format!("unknown job {:?}: choose one of {}", body.job, kinds.join(", ")));
    };
    let subject = resolve(config, kind, body.database.as_deref())?;
    let mut spec = JobSpec::new(kind, subject.clone(), Trigger::Request);
    match (kind, &body.name) {
        (JobKind::RestorePoint, Some(name)) => {
            crate::wal::restore_point::check_name(name).map_err(|e| format!("{e:#}"))?;
            spec.params.restore_point = Some(name.clone());
        }
        (JobKind::RestorePoint, None) => return Err("a restore point needs a name (--name)".to_owned()),
        (_, Some(_)) => return Err(format!("--name is for restore_point, not {}", kind.name())),
        (_, None) => {}
    }
    // the timeout of the kind's schedule, as a scheduled run would have
    let timeout = sched.entries.iter().find(|e| e.kind == kind).and_then(|e| e.timeout);
    spec.params.timeout = Some(timeout.unwrap_or(config.backup.timeout));
    let answer = |run_id: String, attached| Triggered {
        run_id,
        job: kind.name().to_owned(),
        subject: subject.to_string(),
        attached,
    };
    // the same job on the subject is going: the request follows that run (not an overlap)
    if let Some(running) = runs.running.get(&(kind, subject.clone())) {
        return Ok(answer(running.clone(), true));
    }
    Ok(match start(shared, generation, spec, Overlap::Skip, runs) {
        Dispatched::Started(id) => answer(id, false),
        Dispatched::Busy { running, .. } => answer(running, true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!("databases: [app, shop]\nlocal_backup_dir: /r\n{extra}");
        Config::from_yaml(&yaml, "t", &|_| None).unwrap()
    }

    #[test]
    fn a_request_names_its_subject_or_the_job_has_only_one() {
        let c = config("files:\n  - name: uploads\n    paths: [/srv/uploads]\n");
        let db = |n: &str| Subject::Database(n.to_owned());
        assert_eq!(resolve(&c, JobKind::FullBackup, Some("shop")), Ok(db("shop")));
        let e = resolve(&c, JobKind::FullBackup, None).unwrap_err();
        assert!(e.contains("--database") && e.contains("app, shop"), "{e}");
        let e = resolve(&c, JobKind::FullBackup, Some("nope")).unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("app, shop"), "{e}");
        // a file set by its plain name or as files:NAME; it is not a database
        let uploads = Subject::Files("uploads".into());
        assert_eq!(resolve(&c, JobKind::FileBackup, None), Ok(uploads.clone()));
        assert_eq!(resolve(&c, JobKind::Verification, Some("files:uploads")), Ok(uploads.clone()));
        assert_eq!(resolve(&c, JobKind::Verification, Some("uploads")), Ok(uploads));
        assert!(resolve(&c, JobKind::FullBackup, Some("uploads")).is_err());
        let e = resolve(&c, JobKind::RestorePoint, None).unwrap_err();
        assert!(e.contains("wal:"), "{e}");
        let c = config("wal:\n  name: main\n");
        assert_eq!(resolve(&c, JobKind::RestorePoint, None), Ok(Subject::Cluster("main".into())));
    }
}
