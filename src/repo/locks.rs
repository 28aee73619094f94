//! Locks across processes and hosts, kept in the repository as restic keeps them: a lock is an
//! object under `.locks/<subject>/` on every target of the subject, naming its holder (host,
//! pid, what it does, since when) and refreshed while held; a lock not refreshed for
//! `locks.stale_after`, or held by a process of this host that no longer runs, is stale and
//! ignored (`pgbackd unlock` removes it).
//!
//! Readers (restore, cat, verify, test restore, a backup reading its base) take `read` locks that
//! name the backups they read; deleters (retention) take a `delete` lock. Each writes its lock
//! first and looks at the others second, so whichever order two processes come in, one of them
//! sees the other: a reader that sees a delete lock withdraws and waits; a deleter that sees
//! another deleter withdraws and waits; a deleter that sees readers keeps every backup they name.

use super::{Repository, Subject, keys};
use crate::clock::Clock;
pub use crate::config::LockSettings;
use anyhow::{Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// Reads the backups it names: they must not be deleted meanwhile.
    Read,
    /// Deletes backups and orphaned data: one at a time, and no new reader meanwhile.
    Delete,
}

impl LockKind {
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Read => "read",
            LockKind::Delete => "delete",
        }
    }
}

/// A lock as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub id: String,
    pub kind: LockKind,
    pub subject: Subject,
    /// For a read lock: the backups it reads.
    #[serde(default)]
    pub backups: Vec<String>,
    /// What holds it: `restore`, `verification`, `retention`, ...
    pub purpose: String,
    pub host: String,
    pub pid: u32,
    /// Tells this process from a later one with the same pid (boot id, start time).
    pub process: Option<(String, u64)>,
    pub created_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
}

impl Lock {
    /// The holder, for messages: `restore (pid 123 on db1, since 2026-12-01 10:00:00 UTC)`.
    pub fn holder(&self) -> String {
        format!(
            "{} (pid {} on {}, since {})",
            self.purpose,
            self.pid,
            self.host,
            self.created_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    /// Why it no longer protects anything, if it does not.
    pub fn stale(&self, now: DateTime<Utc>, stale_after: Duration) -> Option<String> {
        let age = now - self.refreshed_at;
        if age > chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX) {
            return Some(format!("not refreshed for {}s (locks.stale_after)", age.num_seconds()));
        }
        if self.host == crate::process::hostname() {
            let alive = crate::process::process_identity(self.pid);
            let same = match (&alive, &self.process) {
                (Some(now), Some(then)) => now == then,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !same {
                return Some(format!("its process {} on this host is gone", self.pid));
            }
        }
        None
    }
}

/// A held lock: refreshed in the background until released (or dropped: then it is removed in
/// the background too).
pub struct Held {
    lock: Lock,
    keys: Vec<(Arc<dyn crate::storage::Store>, String)>,
    stop: CancellationToken,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Removes the lock from every target (once the refresher has stopped, so that no refresh
    /// writes it again).
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(r) = self.refresher.take() {
            let _ = r.await;
        }
        remove(std::mem::take(&mut self.keys)).await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            self.stop.cancel();
            let keys = std::mem::take(&mut self.keys);
            crate::tasks::spawn(async move {
                let _ = r.await;
                remove(keys).await;
            });
        }
    }
}

async fn remove(keys: Vec<(Arc<dyn crate::storage::Store>, String)>) {
    for (store, key) in keys {
        if let Err(e) = store.delete(std::slice::from_ref(&key)).await {
            tracing::warn!(key = %key, error = %format!("{e:#}"), "could not remove a lock: `pgbackd unlock` removes it once stale");
        }
    }
}

/// A delete lock, and the backups that readers hold (they must be kept).
pub struct DeleteLock {
    pub held: Held,
    /// Backup id -> who reads it.
    pub in_use: BTreeMap<String, String>,
}

impl Repository {
    /// Every lock of `subject` (of every subject, with `None`) on every target, by id.
    pub async fn locks(&self, subject: Option<&Subject>) -> Result<Vec<(String, Lock)>> {
        let places: Vec<(&crate::storage::Target, String)> = match subject {
            Some(s) => self.targets_for(s).iter().map(|t| (t, keys::locks_prefix(Some(s)))).collect(),
            None => self.places(None).into_iter().map(|(t, _)| (t, keys::locks_prefix(None))).collect(),
        };
        let mut out: BTreeMap<String, (String, Lock)> = BTreeMap::new();
        for (t, prefix) in places {
            let objects = match t.store.list(&prefix).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list the locks of a target");
                    continue;
                }
            };
            for o in objects.iter().filter(|o| o.key.ends_with(".json")) {
                let Ok(Some(bytes)) = t.store.get(&o.key).await else { continue };
                let Ok(lock) = serde_json::from_slice::<Lock>(&bytes) else {
                    tracing::warn!(key = %o.key, "ignoring an unreadable lock");
                    continue;
                };
                if subject.is_some_and(|s| *s != lock.subject) {
                    continue;
                }
                // the freshest copy of a lock held on several targets
                let newer = out.get(&lock.id).is_none_or(|(_, l)| lock.refreshed_at > l.refreshed_at);
                if newer {
                    out.insert(lock.id.clone(), (t.name().to_owned(), lock));
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Removes a lock from every target holding it (`pgbackd unlock`).
    pub async fn remove_lock(&self, lock: &Lock) -> Result<()> {
        let key = keys::lock(&lock.subject, &lock.id);
        for t in self.targets_for(&lock.subject) {
            t.store.delete(std::slice::from_ref(&key)).await?;
        }
        Ok(())
    }

    /// Takes a read lock on `backups` of `subject`, waiting (up to `locks.wait`) while a deleter
    /// holds the subject.
    pub async fn lock_read(
        &self,
        subject: &Subject,
        backups: Vec<String>,
        purpose: &str,
        settings: LockSettings,
        clock: &Arc<dyn Clock>,
        cancel: &CancellationToken,
    ) -> Result<Held> {
        let lock = self.new_lock(LockKind::Read, subject, backups, purpose, clock.now());
        self.acquire(lock, settings, clock, cancel, |l| l.kind == LockKind::Delete).await.map(|(held, _)| held)
    }

    /// Takes the delete lock of `subject`, waiting (up to `locks.wait`) while another deleter
    /// holds it; returns it with every backup that a reader holds.
    pub async fn lock_delete(
        &self,
        subject: &Subject,
        purpose: &str,
        settings: LockSettings,
        clock: &Arc<dyn Clock>,
        cancel: &CancellationToken,
    ) -> Result<DeleteLock> {
        let lock = self.new_lock(LockKind::Delete, subject, Vec::new(), purpose, clock.now());
        let (held, others) = self.acquire(lock, settings, clock, cancel, |l| l.kind == LockKind::Delete).await?;
        let mut in_use = BTreeMap::new();
        for l in others.iter().filter(|l| l.kind == LockKind::Read) {
            for b in &l.backups {
                in_use.insert(b.clone(), l.holder());
            }
        }
        Ok(DeleteLock { held, in_use })
    }

    fn new_lock(
        &self,
        kind: LockKind,
        subject: &Subject,
        backups: Vec<String>,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Lock {
        let pid = std::process::id();
        Lock {
            id: format!("{}-{pid}-{:08x}", now.format("%Y%m%dT%H%M%SZ"), rand::random::<u32>()),
            kind,
            subject: subject.clone(),
            backups,
            purpose: purpose.to_owned(),
            host: crate::process::hostname(),
            pid,
            process: crate::process::process_identity(pid),
            created_at: now,
            refreshed_at: now,
        }
    }

    /// Writes `lock`, then looks at the other live locks: if one `conflicts`, withdraws and waits
    /// for it to go (up to `locks.wait`). Returns the held lock and the other live locks.
    async fn acquire(
        &self,
        lock: Lock,
        settings: LockSettings,
        clock: &Arc<dyn Clock>,
        cancel: &CancellationToken,
        conflicts: impl Fn(&Lock) -> bool,
    ) -> Result<(Held, Vec<Lock>)> {
        let started = tokio::time::Instant::now();
        let mut announced = None;
        loop {
            let held = self.write_lock(&lock, clock).await?;
            let mut others = Vec::new();
            for (_, other) in self.locks(Some(&lock.subject)).await? {
                if other.id == lock.id {
                    continue;
                }
                match other.stale(clock.now(), settings.stale_after) {
                    Some(why) => tracing::warn!(
                        lock = %other.id,
                        holder = %other.holder(),
                        reason = %why,
                        "ignoring a stale lock (`pgbackd unlock` removes it)"
                    ),
                    None => others.push(other),
                }
            }
            let Some(blocker) = others.iter().find(|o| conflicts(o)).cloned() else {
                return Ok((held, others));
            };
            held.release().await;
            if started.elapsed() >= settings.wait {
                bail!(
                    "{} is locked by {} (a {} lock): gave up after locks.wait ({}); if that process is gone, \
                     `pgbackd unlock` removes its lock once stale",
                    lock.subject.describe(),
                    blocker.holder(),
                    blocker.kind.name(),
                    crate::units::duration(settings.wait)
                );
            }
            if announced.as_ref() != Some(&blocker.id) {
                tracing::warn!(holder = %blocker.holder(), subject = %lock.subject, "waiting for a lock");
                announced = Some(blocker.id.clone());
            }
            let pause = Duration::from_millis(500 + u64::from(rand::random::<u16>() % 1000));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => bail!("cancelled while waiting for the lock of {}", lock.subject.describe()),
            }
        }
    }

    /// Writes `lock` to every target of its subject (a required target must take it) and starts
    /// refreshing it.
    async fn write_lock(&self, lock: &Lock, clock: &Arc<dyn Clock>) -> Result<Held> {
        let key = keys::lock(&lock.subject, &lock.id);
        let bytes = Bytes::from(serde_json::to_vec_pretty(lock)?);
        let mut keys = Vec::new();
        for t in self.targets_for(&lock.subject) {
            match t.store.put(&key, bytes.clone()).await {
                Ok(()) => keys.push((t.store.clone(), key.clone())),
                // a read-only repository (a snapshot, a mounted backup disk): nothing can delete
                // from it, so reading it needs no lock
                Err(e) if lock.kind == LockKind::Read && crate::storage::local::is_read_only(&e) => {
                    tracing::warn!(target_name = t.name(), "the target is read-only: reading it without a lock")
                }
                Err(e) if t.required => {
                    remove(keys).await;
                    bail!("cannot write a lock on target {} ({}): {e:#}", t.name(), t.store.describe());
                }
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot write a lock on an optional target")
                }
            }
        }
        let token = CancellationToken::new();
        let (stop, mut refreshed, stores, clock) = (token.clone(), lock.clone(), keys.clone(), clock.clone());
        let refresher = crate::tasks::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(REFRESH) => {}
                }
                refreshed.refreshed_at = clock.now();
                let Ok(bytes) = serde_json::to_vec_pretty(&refreshed) else { break };
                for (store, key) in &stores {
                    if stop.is_cancelled() {
                        break;
                    }
                    if let Err(e) = store.put(key, Bytes::from(bytes.clone())).await {
                        tracing::warn!(key = %key, error = %format!("{e:#}"), "could not refresh a lock");
                    }
                }
            }
        });
        Ok(Held { lock: lock.clone(), keys, stop: token, refresher: Some(refresher) })
    }
}

/// How often a held lock is rewritten with a new `refreshed_at`.
const REFRESH: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn repo(dir: &std::path::Path) -> Repository {
        Repository::local_for_tests(dir)
    }

    fn quick() -> LockSettings {
        LockSettings { stale_after: Duration::from_secs(600), wait: Duration::from_millis(1500) }
    }

    #[tokio::test]
    async fn readers_are_kept_by_deleters_and_deleters_hold_off_readers() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cancel = CancellationToken::new();
        let app = Subject::Database("app".into());
        let reader =
            r.lock_read(&app, vec!["b1".into(), "b0".into()], "restore of b1", quick(), &clock, &cancel).await.unwrap();
        // a deleter sees what the reader holds
        let deleter = r.lock_delete(&app, "retention", quick(), &clock, &cancel).await.unwrap();
        assert_eq!(deleter.in_use.keys().collect::<Vec<_>>(), ["b0", "b1"]);
        assert!(deleter.in_use["b1"].starts_with("restore of b1 (pid "), "{:?}", deleter.in_use);
        // a second deleter waits, then gives up naming the first
        let err = r.lock_delete(&app, "retention", quick(), &clock, &cancel).await.err().unwrap();
        assert!(format!("{err:#}").contains("is locked by retention (pid"), "{err:#}");
        // a new reader waits for the deleter too
        let err = r.lock_read(&app, vec!["b2".into()], "cat", quick(), &clock, &cancel).await.err().unwrap();
        assert!(format!("{err:#}").contains("a delete lock"), "{err:#}");
        // another subject is not concerned
        let other = r.lock_read(&Subject::Files("app".into()), vec![], "verification", quick(), &clock, &cancel).await;
        assert!(other.is_ok());
        deleter.held.release().await;
        let later = r.lock_read(&app, vec!["b2".into()], "cat", quick(), &clock, &cancel).await.unwrap();
        reader.release().await;
        later.release().await;
        other.unwrap().release().await;
        assert!(r.locks(None).await.unwrap().is_empty(), "released locks are gone");
    }

    #[tokio::test]
    async fn stale_locks_are_ignored_and_a_dropped_lock_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cancel = CancellationToken::new();
        let app = Subject::Database("app".into());
        // a deleter on another host that stopped refreshing an hour ago, and one of a process of
        // this host that is gone
        let mut old = r.new_lock(LockKind::Delete, &app, vec![], "retention", clock.now() - chrono::Duration::hours(1));
        old.host = "elsewhere".into();
        let mut gone = r.new_lock(LockKind::Delete, &app, vec![], "retention", clock.now());
        gone.pid = u32::MAX - 1;
        gone.process = Some(("boot".into(), 1));
        for l in [&old, &gone] {
            let bytes = Bytes::from(serde_json::to_vec(l).unwrap());
            r.targets[0].store.put(&keys::lock(&app, &l.id), bytes).await.unwrap();
        }
        assert!(old.stale(clock.now(), quick().stale_after).unwrap().contains("not refreshed"));
        assert!(gone.stale(clock.now(), quick().stale_after).unwrap().contains("is gone"));
        let reader = r.lock_read(&app, vec!["b1".into()], "restore", quick(), &clock, &cancel).await.unwrap();
        drop(reader);
        for _ in 0..100 {
            if r.locks(Some(&app)).await.unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.locks(Some(&app)).await.unwrap().len(), 2, "the dropped lock is removed in the background");
    }
}
