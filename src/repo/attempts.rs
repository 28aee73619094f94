//! The record of each subject's newest backup attempt, kept in the repository itself (beside the
//! backups, on every target), so that what retention needs to know does not depend on a
//! writable reports directory: a backup records that it started before it starts, and how it
//! ended when it ends. A record that says `running` of a process that is gone is a crash.

use super::{Repository, Subject, keys};
use anyhow::{Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Started and not (yet) ended: in progress, or its process died.
    Running,
    Success,
    Partial,
    Failed,
    Cancelled,
}

/// One backup attempt of a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub run_id: String,
    /// The backup job (`full_backup`, `incremental_backup`, `file_backup`, `config_backup`).
    pub job_kind: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: AttemptOutcome,
    pub host: String,
    pub pid: u32,
    pub error: Option<String>,
}

/// A record is always this long (padded with spaces), so that it can be rewritten in place.
const SLOT: usize = 4096;

/// `attempt` as JSON of exactly [`SLOT`] bytes (a long error is shortened to fit).
fn slot(attempt: &Attempt) -> Vec<u8> {
    let mut a = attempt.clone();
    loop {
        let mut bytes = serde_json::to_vec_pretty(&a).expect("an attempt serializes");
        if bytes.len() < SLOT {
            bytes.resize(SLOT - 1, b' ');
            bytes.push(b'\n');
            return bytes;
        }
        let e = a.error.take().unwrap_or_default();
        let keep = e.len().saturating_sub(bytes.len() - SLOT + 64);
        let cut = (0..=keep.min(e.len())).rev().find(|i| e.is_char_boundary(*i)).unwrap_or(0);
        a.error = Some(format!("{}...", &e[..cut]));
    }
}

impl Repository {
    /// Records `attempt` on every target of `subject`; fails if a required target cannot take it
    /// (a backup that cannot even say it started does not start).
    pub async fn record_attempt(&self, subject: &Subject, attempt: &Attempt) -> Result<()> {
        let key = keys::attempt(subject, &attempt.job_kind);
        let bytes = Bytes::from(slot(attempt));
        for t in self.targets_for(subject) {
            // in place: the record can still say how a backup ended on a disk it filled
            match t.store.overwrite(&key, bytes.clone()).await {
                Ok(()) => {}
                Err(e) if t.required => {
                    bail!("cannot record the backup attempt on target {} ({}): {e:#}", t.name(), t.store.describe())
                }
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot record the backup attempt on an optional target")
                }
            }
        }
        Ok(())
    }

    /// The newest recorded attempt of each backup job of `subject` (from whichever target has
    /// the newest); unreadable records are skipped with a warning.
    pub async fn attempts(&self, subject: &Subject) -> Result<Vec<Attempt>> {
        let prefix = keys::attempts_prefix(subject);
        let mut newest: std::collections::BTreeMap<String, Attempt> = Default::default();
        for t in self.targets_for(subject) {
            let objects = match t.store.list(&prefix).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot read the backup attempts");
                    continue;
                }
            };
            for o in objects.iter().filter(|o| o.key.ends_with(".json") && !o.key[prefix.len()..].contains('/')) {
                let Ok(Some(bytes)) = t.store.get(&o.key).await else { continue };
                match serde_json::from_slice::<Attempt>(&bytes) {
                    Ok(a) => {
                        let keep = newest.get(&a.job_kind).is_none_or(|b| {
                            (a.started_at, a.finished_at.is_some()) > (b.started_at, b.finished_at.is_some())
                        });
                        if keep {
                            newest.insert(a.job_kind.clone(), a);
                        }
                    }
                    Err(e) => tracing::warn!(key = %o.key, error = %e, "ignoring an unreadable backup attempt record"),
                }
            }
        }
        Ok(newest.into_values().collect())
    }
}
