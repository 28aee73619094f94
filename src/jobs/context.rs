//! What every job runs with: the configuration and repository of the moment, the clock, its
//! cancellation and its progress counter.

use crate::clock::Clock;
use crate::config::Config;
use crate::pipeline::Counter;
use crate::repo::locks::Held;
use crate::repo::{Manifest, Repository, Subject};
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct JobContext {
    pub config: Arc<Config>,
    /// Opened once per configuration and shared by every job of it.
    pub repository: Arc<Repository>,
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the job must stop (a signal, the daemon's shutdown, a timeout).
    pub cancel: CancellationToken,
    /// Bytes moved so far, for status and progress reporting.
    pub progress: Arc<Counter>,
    /// Show progress bars (a one-shot command on a terminal).
    pub interactive: bool,
}

impl JobContext {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A read lock on backup `m` (and the backups it depends on) for `purpose`: retention in any
    /// process on any host keeps them while it is held, and with them, as its floor, the rest of
    /// an incremental's chain; `forget` refuses any link others read.
    pub async fn read_lock(&self, m: &Manifest, purpose: &str) -> Result<Held> {
        self.read_lock_all(&m.subject, std::slice::from_ref(m), &format!("{purpose} of {}", m.id)).await
    }

    /// [`JobContext::read_lock`] on several backups of `subject` at once.
    pub async fn read_lock_all(&self, subject: &Subject, backups: &[Manifest], purpose: &str) -> Result<Held> {
        let mut ids: Vec<String> =
            backups.iter().flat_map(|m| std::iter::once(m.id.clone()).chain(m.depends_on.iter().cloned())).collect();
        ids.sort();
        ids.dedup();
        self.repository.lock_read(subject, ids, purpose, self.config.locks, &self.clock, &self.cancel).await
    }

    /// How a backup's main stream is stored: the configured segment size, compression, threads,
    /// stall guard and encryption (no delta).
    pub fn stream_options(&self) -> crate::pipeline::PipelineOptions {
        let config = &self.config;
        crate::pipeline::PipelineOptions {
            segment_size: config.backup.segment_size as usize,
            level: config.compression.enabled.then_some(config.compression.level),
            threads: config.compression_threads(),
            stall_timeout: config.backup.stall_timeout,
            delta: None,
            encrypt: self.repository.encrypts_with().cloned(),
        }
    }

    /// The end of a backup attempt (`what`: `backup`, `file backup`...) of `subject` with id
    /// `id`: a failure's leftovers are removed (the job's own line says why it failed), a
    /// success is logged with its duration.
    pub async fn end_attempt(
        &self,
        subject: &Subject,
        id: &str,
        what: &str,
        started: std::time::Instant,
        result: Result<Manifest>,
    ) -> Result<Manifest> {
        match &result {
            Err(e) => {
                tracing::debug!(backup_id = %id, error = %format!("{e:#}"), "removing what the failed {what} wrote");
                if let Err(cleanup) = self.repository.remove_failed(subject, id).await {
                    tracing::error!(backup_id = %id, error = %format!("{cleanup:#}"), "could not remove the failed backup's data");
                }
            }
            Ok(_) => tracing::debug!(duration_s = format!("{:.1}", started.elapsed().as_secs_f64()), "{what} stored"),
        }
        result
    }

    /// The same context with another cancellation token (a job's own, below the caller's).
    pub fn with_cancel(&self, cancel: CancellationToken) -> JobContext {
        JobContext { cancel, ..self.clone() }
    }
}

/// Every subject the config backs up: its databases, file sets, configuration sets and the
/// cluster whose WAL it archives.
pub fn configured_subjects(config: &Config) -> Vec<crate::repo::Subject> {
    use crate::repo::Subject;
    let databases = config.databases.iter().map(|d| Subject::Database(d.name.clone()));
    let files = config.files.iter().map(|f| Subject::Files(f.name.clone()));
    let configs = config.configs.iter().map(|f| Subject::Configs(f.name.clone()));
    let cluster = config.wal.iter().map(|w| Subject::Cluster(w.name.clone()));
    let sqlite = config.sqlite.iter().map(|s| Subject::Sqlite(s.name.clone()));
    databases.chain(files).chain(configs).chain(sqlite).chain(cluster).collect()
}

/// The subjects a job of `kind` runs on when nothing narrows it down: file and configuration
/// backups their sets, SQLite backups their files, base backups, drills and restore points the
/// cluster, verification and retention every subject, test restores every database and SQLite
/// file, the other jobs every database.
pub fn subjects_for(config: &Config, kind: crate::jobs::kind::JobKind) -> Vec<crate::repo::Subject> {
    use crate::jobs::kind::JobKind;
    use crate::repo::Subject;
    let keep: fn(&Subject) -> bool = match kind {
        JobKind::FileBackup => |s| matches!(s, Subject::Files(_)),
        JobKind::ConfigBackup => |s| matches!(s, Subject::Configs(_)),
        JobKind::SqliteBackup => |s| matches!(s, Subject::Sqlite(_)),
        JobKind::TestRestore => |s| matches!(s, Subject::Database(_) | Subject::Sqlite(_)),
        JobKind::BaseBackup | JobKind::RecoveryDrill | JobKind::RestorePoint => |s| matches!(s, Subject::Cluster(_)),
        JobKind::Verification | JobKind::Retention => |_| true,
        _ => |s| matches!(s, Subject::Database(_)),
    };
    configured_subjects(config).into_iter().filter(keep).collect()
}

/// Which backups of the subject a job reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Select {
    /// What the config says: `verification.scope`, `test_restore.pick`; the newest for a restore.
    #[default]
    Configured,
    Id(String),
    Latest,
    All,
}
