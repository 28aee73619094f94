//! Streaming the WAL (`wal.method: stream`) and watching the archive, in the daemon.
//!
//! The receiver runs `pg_receivewal` (through the one child-process wrapper) on a physical
//! replication slot it creates, into a local spool, and stores each completed segment and
//! history file through [`super::push`] on every target. A spool file is removed once every
//! required target has it, except the newest completed segment: `pg_receivewal` continues after
//! the newest file it finds, and an empty directory would make one older than PostgreSQL 15 start
//! at the server's current position and skip WAL. On shutdown, and with `pgbackd wal-flush`, the
//! partial segment is stored too (it supersedes an older stored copy of itself). A receiver that
//! exits is restarted with backoff (1 s doubling to 60 s; back to 1 s after a minute running); the
//! slot keeps the server's WAL meanwhile, so a restart loses nothing.
//!
//! The monitor (both methods) asks the server every [`MONITOR_INTERVAL`] for its WAL position, the
//! slot's retained WAL and the archiver's progress: [`WalStatus`], for `/metrics`, `/readyz` and
//! the alerts.

use super::SystemOf;
use super::names::WalFile;
use crate::config::{Config, WalMethod, WalSettings};
use crate::pg::{self, Tools};
use crate::process::{ChildSpec, Running};
use crate::repo::Repository;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the spool is scanned for completed segments.
pub const SPOOL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the server is asked for its WAL position, slot and archiver.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);
/// How long pg_receivewal gets to write its last data after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the daemon knows about the WAL archiving of its cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalStatus {
    pub cluster: String,
    pub method: WalMethod,
    pub slot: Option<String>,
    /// pg_receivewal runs now (stream).
    pub receiver_running: bool,
    pub receiver_restarts: u64,
    pub receiver_last_error: Option<String>,
    /// The newest segment stored on every required target, and when.
    pub last_archived_segment: Option<String>,
    pub last_archived_at: Option<DateTime<Utc>>,
    /// Segments and history files stored per target since the daemon started (stream).
    pub stored_per_target: BTreeMap<String, u64>,
    /// Bytes waiting in the spool (stream).
    pub spool_bytes: u64,
    /// The server's WAL beyond the end of the newest archived segment.
    pub archive_lag_bytes: Option<u64>,
    /// How long a completed segment has waited to be archived (0 when none waits).
    pub archive_lag_seconds: Option<f64>,
    /// The WAL the slot holds back on the server, and whether a receiver uses it.
    pub slot_retained_bytes: Option<u64>,
    pub slot_active: Option<bool>,
    /// The archiver's last failure (archive_command).
    pub last_failed_segment: Option<String>,
    /// When the monitor last asked the server, when it last answered, and why it did not.
    pub checked_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub server_error: Option<String>,
}

/// The WAL status, shared by the receiver, the monitor and the status board.
pub type Shared = Arc<Mutex<WalStatus>>;

fn update<T>(s: &Shared, f: impl FnOnce(&mut WalStatus) -> T) -> T {
    f(&mut s.lock().unwrap_or_else(|e| e.into_inner()))
}

/// What the receiver reads its configuration and repository from (the daemon's current ones,
/// which a reload replaces).
pub type Current = Arc<dyn Fn() -> (Arc<Config>, Arc<Repository>) + Send + Sync>;

/// The spool: the directory pg_receivewal writes.
pub struct Spool {
    pub dir: PathBuf,
    /// Files stored on every required target (by this process).
    stored: BTreeSet<String>,
}

/// What one pass over the spool did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub stored: Vec<String>,
    pub already: Vec<String>,
    pub removed: Vec<String>,
    /// The first file that could not be stored (the pass stops there: files go in order).
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub written_per_target: BTreeMap<String, u64>,
}

/// The spool's files in the order they are stored: completed segments and history files
/// (timeline by timeline), then the partial segment when `with_partial`.
pub fn to_store(names: &[String], stored: &BTreeSet<String>, with_partial: bool) -> Vec<WalFile> {
    let mut files: Vec<WalFile> = names
        .iter()
        .filter(|n| !stored.contains(*n))
        .filter_map(|n| WalFile::parse(n))
        .filter(|f| match f {
            WalFile::Segment(_) | WalFile::History(_) => true,
            WalFile::Partial(_) => with_partial,
            WalFile::BackupHistory(..) => false,
        })
        .collect();
    // a history file before the first segment of its timeline
    files.sort_by_key(|f| match f {
        WalFile::History(t) => (*t, 0, 0, 0),
        WalFile::Segment(s) => (s.timeline, s.log, s.seg, 1),
        WalFile::Partial(s) => (s.timeline, s.log, s.seg, 2),
        WalFile::BackupHistory(s, _) => (s.timeline, s.log, s.seg, 3),
    });
    files
}

/// The spool files that can go: stored history files, and stored completed segments but the
/// newest segment in the spool (pg_receivewal continues after it).
pub fn to_remove(names: &[String], stored: &BTreeSet<String>) -> Vec<String> {
    let newest = names
        .iter()
        .filter_map(|n| WalFile::parse(n))
        .filter_map(|f| match f {
            WalFile::Segment(s) | WalFile::Partial(s) => Some(s),
            _ => None,
        })
        .max();
    names
        .iter()
        .filter(|n| stored.contains(*n))
        .filter(|n| match WalFile::parse(n) {
            Some(WalFile::History(_)) => true,
            Some(WalFile::Segment(s)) => Some(s) != newest,
            _ => false,
        })
        .cloned()
        .collect()
}

impl Spool {
    /// The configured spool directory, created (0700) if missing.
    pub fn open(wal: &WalSettings) -> Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = wal.spool_dir.clone();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating the WAL spool {} (wal.spool_dir)", dir.display()))?;
        Ok(Spool { dir, stored: BTreeSet::new() })
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).with_context(|| format!("reading the spool {}", self.dir.display()))? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                out.push(n.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes in the spool.
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Stores what the spool holds that is not stored yet (the partial segment too with
    /// `with_partial`), then removes what may go. `system_identifier` is the server's (for
    /// history files, which have no header).
    pub async fn pass(
        &mut self,
        config: &Config,
        repository: &Repository,
        system_identifier: u64,
        with_partial: bool,
    ) -> Result<Pass> {
        let names = self.names()?;
        let mut pass = Pass::default();
        for file in to_store(&names, &self.stored, with_partial) {
            let name = file.to_string();
            let path = self.dir.join(&name);
            match super::push(config, repository, &path, SystemOf::Known(system_identifier)).await {
                Ok((_, pushed)) => {
                    for t in &pushed.written {
                        *pass.written_per_target.entry(t.clone()).or_default() += 1;
                    }
                    pass.warnings.extend(pushed.warnings);
                    if pushed.written.is_empty() {
                        pass.already.push(name.clone());
                    } else {
                        pass.stored.push(name.clone());
                    }
                    if !matches!(file, WalFile::Partial(_)) {
                        self.stored.insert(name);
                    }
                }
                // renamed meanwhile (complete: the next pass stores it), or not written yet
                Err(_) if matches!(file, WalFile::Partial(_)) && !path.exists() => {}
                Err(e) if matches!(file, WalFile::Partial(_)) => {
                    pass.warnings.push(format!("the partial segment {name} is not stored: {e:#}"))
                }
                Err(e) => {
                    pass.error = Some(format!("{name}: {e:#}"));
                    break;
                }
            }
        }
        for name in to_remove(&self.names()?, &self.stored) {
            match std::fs::remove_file(self.dir.join(&name)) {
                Ok(()) => pass.removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => pass.warnings.push(format!("cannot remove {name} from the spool: {e}")),
            }
        }
        Ok(pass)
    }
}

/// Creates the physical replication slot if it does not exist (reserving WAL at once).
async fn ensure_slot(client: &tokio_postgres::Client, wal: &WalSettings) -> Result<bool> {
    let exists = client
        .query_opt("select slot_type::text from pg_replication_slots where slot_name = $1", &[&wal.slot])
        .await
        .context("looking for the replication slot")?;
    match exists {
        Some(row) => {
            let kind: String = row.get(0);
            anyhow::ensure!(
                kind == "physical",
                "replication slot {} exists but is a {kind} slot: drop it or set wal.slot to another name",
                wal.slot
            );
            Ok(false)
        }
        None => {
            client.execute("select pg_create_physical_replication_slot($1, true)", &[&wal.slot]).await.with_context(
                || {
                    format!(
                        "creating the replication slot {} (the user needs the REPLICATION attribute, and the server \
                         max_replication_slots > its slots in use)",
                        wal.slot
                    )
                },
            )?;
            tracing::info!(slot = %wal.slot, "replication slot created");
            Ok(true)
        }
    }
}

/// The server's system identifier.
async fn system_identifier(client: &tokio_postgres::Client) -> Result<u64> {
    let row = client
        .query_one("select system_identifier::text from pg_control_system()", &[])
        .await
        .context("reading the server's system identifier")?;
    let text: String = row.get(0);
    text.parse().with_context(|| format!("system identifier {text:?}"))
}

fn receivewal(tools: &Tools, wal: &WalSettings, dir: &Path) -> ChildSpec {
    let mut spec = pg::conn_env(
        ChildSpec::new(tools.path("pg_receivewal")).args(["--no-loop", "--no-password", "--status-interval=1"]),
        &wal.server,
    )
    .arg("--directory")
    .arg(dir.as_os_str().to_owned())
    .arg(format!("--slot={}", wal.slot));
    if wal.synchronous {
        spec = spec.arg("--synchronous");
    }
    spec
}

/// Supervises pg_receivewal until `cancel`, storing the spool as it fills; at the end stores the
/// partial segment too.
pub async fn supervise(current: Current, status: Shared, cancel: CancellationToken) {
    let (config, _) = current();
    let Some(wal) = config.wal.clone() else { return };
    let mut spool = match Spool::open(&wal) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "WAL streaming cannot start");
            update(&status, |s| s.receiver_last_error = Some(format!("{e:#}")));
            return;
        }
    };
    let tools = Tools::locate(config.pg_bin_dir.as_deref());
    let mut backoff = Duration::from_secs(1);
    let mut system: Option<u64> = None;
    while !cancel.is_cancelled() {
        let started = Instant::now();
        let outcome = async {
            // asked at every start: a server replaced by a new initdb has a new archive
            let client = pg::connect(&wal.server).await?;
            let id = system_identifier(&client).await?;
            if system.is_some_and(|old| old != id) {
                tracing::warn!(was = system, now = id, "the server's system identifier changed: a new archive begins");
            }
            system = Some(id);
            ensure_slot(&client, &wal).await?;
            drop(client);
            let child = Running::spawn(&receivewal(&tools, &wal, &spool.dir))?;
            tracing::info!(pid = child.pid(), slot = %wal.slot, spool = %spool.dir.display(), "WAL receiver started");
            update(&status, |s| s.receiver_running = true);
            let waiting = child.wait_or_stop(&cancel, STOP_GRACE);
            tokio::pin!(waiting);
            let result = loop {
                tokio::select! {
                    r = &mut waiting => break r,
                    _ = tokio::time::sleep(SPOOL_INTERVAL) => {
                        let (config, repo) = current();
                        store(&mut spool, &config, &repo, id, false, &status).await;
                    }
                }
            };
            update(&status, |s| s.receiver_running = false);
            anyhow::Ok((id, result))
        }
        .await;
        match outcome {
            Ok((_, (true, _))) => break,
            Ok((_, (false, result))) => {
                let why = match result {
                    Ok(tail) => format!("pg_receivewal exited: {}", tail.trim()),
                    Err(e) => format!("{e}"),
                };
                tracing::warn!(error = %why, retry_in_s = backoff.as_secs(), "WAL receiver stopped; restarting it");
                update(&status, |s| {
                    s.receiver_restarts += 1;
                    s.receiver_last_error = Some(why);
                });
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "WAL receiver cannot start; retrying");
                update(&status, |s| {
                    s.receiver_restarts += 1;
                    s.receiver_last_error = Some(format!("{e:#}"));
                });
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
        // what the stopped receiver completed is stored while it is down
        if let Some(id) = system {
            let (config, repo) = current();
            store(&mut spool, &config, &repo, id, false, &status).await;
        }
    }
    // the last completed segments and the partial one
    if let Some(id) = system {
        let (config, repo) = current();
        let stored = store(&mut spool, &config, &repo, id, true, &status).await;
        tracing::info!(spool = %spool.dir.display(), stored = ?stored, "WAL receiver stopped; what it received is stored");
    }
}

/// One pass over the spool, its findings logged and counted; returns the files it stored.
async fn store(
    spool: &mut Spool,
    config: &Config,
    repo: &Repository,
    id: u64,
    partial: bool,
    status: &Shared,
) -> Vec<String> {
    match spool.pass(config, repo, id, partial).await {
        Ok(p) => {
            for w in &p.warnings {
                tracing::warn!(warning = %w, "WAL spool");
            }
            if let Some(e) = &p.error {
                tracing::error!(error = %e, "a received WAL file cannot be stored: it stays in the spool and is retried");
            }
            let newest = p.stored.iter().chain(&p.already).filter_map(|n| WalFile::parse(n)).filter_map(|f| match f {
                WalFile::Segment(s) => Some(s),
                _ => None,
            });
            let newest = newest.max();
            update(status, |s| {
                for (t, n) in &p.written_per_target {
                    *s.stored_per_target.entry(t.clone()).or_default() += n;
                }
                if let Some(seg) = newest {
                    let name = seg.to_string();
                    if s.last_archived_segment.as_ref().is_none_or(|l| *l < name) {
                        s.last_archived_segment = Some(name);
                        s.last_archived_at = Some(Utc::now());
                    }
                }
                s.spool_bytes = spool.bytes();
                if p.error.is_some() {
                    s.receiver_last_error = p.error.clone();
                }
            });
            for name in &p.stored {
                tracing::debug!(file = %name, "received WAL stored");
            }
            p.stored
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the WAL spool");
            Vec::new()
        }
    }
}

/// Asks the server, every [`MONITOR_INTERVAL`] until `cancel`, how far the archive is behind.
pub async fn monitor(current: Current, status: Shared, cancel: CancellationToken) {
    loop {
        let (config, _) = current();
        if let Some(wal) = config.wal.as_ref() {
            let observed = observe(wal).await;
            let now = Utc::now();
            update(&status, |s| {
                s.checked_at = Some(now);
                match observed {
                    Ok(o) => {
                        s.server_error = None;
                        s.answered_at = Some(now);
                        apply_observation(s, wal, &o, now);
                    }
                    Err(e) => s.server_error = Some(format!("{e:#}")),
                }
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
        }
    }
}

/// What the server says about its WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub current_lsn: u64,
    pub segment_size: u64,
    pub slot_retained: Option<u64>,
    pub slot_active: Option<bool>,
    pub archiver_last: Option<String>,
    pub archiver_last_at: Option<DateTime<Utc>>,
    pub archiver_failed: Option<String>,
}

async fn observe(wal: &WalSettings) -> Result<Observation> {
    let client = pg::connect(&wal.server).await?;
    let row = client
        .query_one(
            "select pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn() \
             else pg_current_wal_lsn() end, '0/0')::bigint, \
             pg_size_bytes(current_setting('wal_segment_size')), \
             (select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint from pg_replication_slots \
              where slot_name = $1), \
             (select active from pg_replication_slots where slot_name = $1), \
             a.last_archived_wal::text, a.last_archived_time, a.last_failed_wal::text from pg_stat_archiver a",
            &[&wal.slot],
        )
        .await
        .context("asking the server for its WAL position")?;
    let lsn: Option<i64> = row.get(0);
    let size: i64 = row.get(1);
    let retained: Option<i64> = row.get(2);
    Ok(Observation {
        current_lsn: lsn.unwrap_or(0).max(0) as u64,
        segment_size: size as u64,
        slot_retained: retained.map(|r| r.max(0) as u64),
        slot_active: row.get(3),
        archiver_last: row.get(4),
        archiver_last_at: row.get::<_, Option<std::time::SystemTime>>(5).map(DateTime::<Utc>::from),
        archiver_failed: row.get(6),
    })
}

/// Folds an observation into the status: the lag is from the end of the newest archived
/// segment (the receiver's, else the archiver's) to the server's position.
pub fn apply_observation(s: &mut WalStatus, wal: &WalSettings, o: &Observation, now: DateTime<Utc>) {
    s.cluster = wal.name.clone();
    s.method = wal.method;
    if wal.method == WalMethod::Stream {
        s.slot = Some(wal.slot.clone());
        s.slot_retained_bytes = o.slot_retained;
        s.slot_active = o.slot_active;
    } else {
        // archive_command: PostgreSQL's archiver says what it archived
        if let Some(last) = &o.archiver_last
            && super::names::SegmentName::parse(last).is_some()
            && s.last_archived_segment.as_ref().is_none_or(|l| l < last)
        {
            s.last_archived_segment = Some(last.clone());
            s.last_archived_at = o.archiver_last_at;
        }
        s.last_failed_segment = o.archiver_failed.clone();
    }
    let end = s
        .last_archived_segment
        .as_deref()
        .and_then(super::names::SegmentName::parse)
        .map(|seg| (seg.number(o.segment_size) + 1) * o.segment_size);
    match end {
        Some(end) => {
            let lag = o.current_lsn.saturating_sub(end);
            s.archive_lag_bytes = Some(lag);
            // a completed segment is waiting once the server is past the next one's end
            s.archive_lag_seconds = Some(if lag >= o.segment_size {
                s.last_archived_at.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            } else {
                0.0
            });
        }
        None => {
            s.archive_lag_bytes = Some(o.current_lsn);
            s.archive_lag_seconds = None;
        }
    }
}

/// `pgbackd wal-flush`: stores what the spool holds, the partial segment included (the daemon's
/// receiver may be running: what it stores meanwhile is recognised as stored).
pub async fn flush(config: &Config, repository: &Repository) -> Result<Pass> {
    let wal = super::settings(config)?;
    anyhow::ensure!(
        wal.method == WalMethod::Stream,
        "wal.method is archive_command: PostgreSQL archives each segment itself; to archive the current one now, run \
         `select pg_switch_wal()` on the server"
    );
    let mut spool = Spool::open(wal)?;
    let id = system_identifier(&pg::connect(&wal.server).await?).await?;
    spool.pass(config, repository, id, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_spool_is_stored_in_order_and_keeps_its_newest_segment() {
        let spool = names(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000005.partial",
            "something.tmp",
        ]);
        let none = BTreeSet::new();
        let order: Vec<String> = to_store(&spool, &none, false).iter().map(|f| f.to_string()).collect();
        assert_eq!(
            order,
            ["000000010000000000000003", "000000010000000000000004", "00000002.history", "000000020000000000000004"]
        );
        assert_eq!(to_store(&spool, &none, true).last().unwrap().to_string(), "000000020000000000000005.partial");
        let stored: BTreeSet<String> = order.iter().cloned().collect();
        assert!(to_store(&spool, &stored, false).is_empty());
        // the partial segment is the newest: every stored completed segment can go
        assert_eq!(
            to_remove(&spool, &stored),
            ["000000010000000000000003", "000000010000000000000004", "00000002.history", "000000020000000000000004"]
        );
        // without it, the newest completed segment stays for pg_receivewal to continue after
        let done = names(&["000000010000000000000003", "000000010000000000000004"]);
        let stored: BTreeSet<String> = done.iter().cloned().collect();
        assert_eq!(to_remove(&done, &stored), ["000000010000000000000003"]);
        // nothing that is not stored goes
        assert!(to_remove(&done, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_lag_counts_from_the_end_of_the_newest_archived_segment() {
        let config =
            Config::from_yaml("local_backup_dir: /r\nwal: {name: main, method: stream}\n", "t", &|_| None).unwrap();
        let wal = config.wal.clone().unwrap();
        let now = Utc::now();
        let mut s = WalStatus {
            last_archived_segment: Some("000000010000000000000003".into()),
            last_archived_at: Some(now - chrono::Duration::seconds(30)),
            ..Default::default()
        };
        let size = 16 << 20;
        let o = Observation {
            current_lsn: 4 * size + 100,
            segment_size: size,
            slot_retained: Some(5000),
            slot_active: Some(true),
            archiver_last: None,
            archiver_last_at: None,
            archiver_failed: None,
        };
        apply_observation(&mut s, &wal, &o, now);
        // segment 3 ends at 4 * size: 100 bytes of the current segment wait, no completed one
        assert_eq!((s.archive_lag_bytes, s.archive_lag_seconds), (Some(100), Some(0.0)));
        assert_eq!((s.slot_retained_bytes, s.slot.as_deref()), (Some(5000), Some("pgbackd_main")));
        let o = Observation { current_lsn: 5 * size + 1, ..o };
        apply_observation(&mut s, &wal, &o, now);
        assert_eq!(s.archive_lag_seconds, Some(30.0));
    }
}
