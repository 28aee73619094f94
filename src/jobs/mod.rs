//! Jobs: the operations, shared by the command line and the daemon so they cannot drift.
//!
//! [`run::run`]`(JobSpec, &JobContext) -> JobRun` is the only way any job runs; each kind is an
//! arm: [`backup`] (database dumps), [`file_backup`] (file and configuration sets),
//! [`sqlite_backup`] (SQLite database files), [`base_backup`] (physical base backups of a
//! cluster), [`verify`],
//! [`test_restore`], [`retention`], [`restore`]. [`report`] stores the JSON report of a run.

pub mod backup;
pub mod base_backup;
pub mod context;
pub mod file_backup;
pub mod kind;
pub mod recovery;
pub mod report;
pub mod restore;
pub mod retention;
pub mod run;
pub mod sqlite_backup;
pub mod test_restore;
pub mod verify;

pub use context::JobContext;
pub use kind::JobKind;
pub use run::{JobRun, JobSpec, Params, Produced, RestoreTo, RunOutcome, Select, run};

use std::fmt;

/// How a command ended, for exit codes: a job that ran and failed is exit 1.
#[derive(Debug)]
pub struct JobFailed(pub anyhow::Error);

impl fmt::Display for JobFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for JobFailed {}

/// A request refused before anything was changed (a non-empty target without `--clean`, a table
/// the backup does not have, a missing `--yes`): a usage error, exit 2, not a failed job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    /// Whether `e` is, or was caused by, a refusal.
    pub fn in_chain(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<Refused>())
    }
}

/// `anyhow::bail!` for refusals.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::jobs::Refused(format!($($arg)*))))
    };
}
pub(crate) use refuse;
