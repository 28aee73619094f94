//! Retention: a pure, explained plan of which backups to keep, then its execution.
//!
//! [`plan`] takes the backups of one database, the policies and `now`, and returns a
//! [`Decision`] per backup with the reasons. A backup is kept if any rule keeps it (restic
//! `forget` semantics: `keep_last`, `keep_hourly` ... `keep_yearly` keep the newest backup of
//! each of the last N periods that have one, in the configured timezone; `keep_within` keeps
//! everything younger), and whatever the rules say, a floor is kept: the newest `min_keep`
//! backups of each kind, the newest backup that passed deep verification, every full backup a
//! kept incremental depends on, and any backup a running job reads. `max_total_size` then deletes
//! the oldest backups kept only by count rules until the kind fits (the floor and `keep_within`
//! are never deleted for size). A kind without a policy keeps all.
//!
//! [`apply`] executes exactly a plan: manifest first (the backup disappears), then its data, on
//! every target. A crash in between leaves data without a manifest, which a later run removes
//! once it is older than `orphan_grace` (an upload in progress has no manifest yet either).

use crate::config::{KindPolicy, Retention};
use crate::repo::{self, BackupKind, Listed, Repository};
use anyhow::Result;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// What the planner needs to know about one backup.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub kind: BackupKind,
    pub started_at: DateTime<Utc>,
    pub stored_bytes: u64,
    /// The full backup an incremental depends on.
    pub base_id: Option<String>,
    /// Its last verification was deep and passed.
    pub deep_verified: bool,
    /// A running job reads it.
    pub in_use: bool,
}

impl Candidate {
    pub fn from_listed(l: &Listed, in_use: &HashSet<String>) -> Candidate {
        let m = &l.manifest;
        Candidate {
            id: m.id.clone(),
            kind: m.kind,
            started_at: m.started_at,
            stored_bytes: m.data.stored_bytes + m.globals.as_ref().map(|g| g.stored_bytes).unwrap_or(0),
            base_id: m.base_id.clone(),
            deep_verified: l
                .annotations
                .verification
                .as_ref()
                .is_some_and(|v| v.mode == "deep" && v.outcome == "passed"),
            in_use: in_use.contains(&m.id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub id: String,
    pub kind: BackupKind,
    pub started_at: DateTime<Utc>,
    pub stored_bytes: u64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

fn policy_for(retention: &Retention, kind: BackupKind) -> Option<&KindPolicy> {
    match kind {
        BackupKind::Full => retention.full_backup.as_ref(),
        BackupKind::Incremental => retention.incremental_backup.as_ref(),
    }
}

/// The period a backup falls in, for the keep_hourly ... keep_yearly rules.
fn bucket(t: DateTime<Utc>, tz: Tz, rule: &str) -> (i32, u32, u32, u32) {
    let l = t.with_timezone(&tz);
    match rule {
        "hourly" => (l.year(), l.ordinal(), l.hour(), 0),
        "daily" => (l.year(), l.ordinal(), 0, 0),
        "weekly" => (l.iso_week().year(), l.iso_week().week(), 0, 0),
        "monthly" => (l.year(), l.month(), 0, 0),
        _ => (l.year(), 0, 0, 0),
    }
}

fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

/// Floor reasons: nothing may delete these.
const FLOOR: &str = "floor:";

/// Decides, for the backups of one database, which to keep and why. Pure: same inputs, same plan.
pub fn plan(backups: &[Candidate], retention: &Retention, tz: Tz, now: DateTime<Utc>) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = backups
        .iter()
        .map(|b| Decision {
            id: b.id.clone(),
            kind: b.kind,
            started_at: b.started_at,
            stored_bytes: b.stored_bytes,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    // newest first
    decisions.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
    let by_id: BTreeMap<String, &Candidate> = backups.iter().map(|b| (b.id.clone(), b)).collect();

    // incrementals first: the fulls they depend on join the floor
    for kind in [BackupKind::Incremental, BackupKind::Full] {
        let idx: Vec<usize> = (0..decisions.len()).filter(|&i| decisions[i].kind == kind).collect();
        if idx.is_empty() {
            continue;
        }
        let Some(policy) = policy_for(retention, kind) else {
            for &i in &idx {
                decisions[i].keep = true;
                decisions[i].reasons.push(format!("no retention policy for {} backups", kind.name()));
            }
            continue;
        };
        if kind == BackupKind::Full {
            let bases: BTreeMap<String, String> = decisions
                .iter()
                .filter(|d| d.kind == BackupKind::Incremental && d.keep)
                .filter_map(|d| by_id[&d.id].base_id.clone().map(|b| (b, d.id.clone())))
                .collect();
            for &i in &idx {
                if let Some(inc) = bases.get(&decisions[i].id) {
                    decisions[i].keep = true;
                    decisions[i].reasons.push(format!("{FLOOR} base of kept incremental {inc}"));
                }
            }
        }
        apply_rules(&mut decisions, &idx, &by_id, policy, tz, now);
    }
    for d in &mut decisions {
        if !d.keep && d.reasons.is_empty() {
            d.reasons.push("no rule keeps it".into());
        }
    }
    decisions
}

fn apply_rules(
    decisions: &mut [Decision],
    idx: &[usize],
    by_id: &BTreeMap<String, &Candidate>,
    policy: &KindPolicy,
    tz: Tz,
    now: DateTime<Utc>,
) {
    let keep = |d: &mut Decision, why: String| {
        d.keep = true;
        d.reasons.push(why);
    };
    // the floor
    for (n, &i) in idx.iter().enumerate() {
        let c = by_id[&decisions[i].id];
        if c.started_at > now {
            keep(&mut decisions[i], format!("{FLOOR} newer than the evaluation time"));
        }
        if (n as u32) < policy.min_keep {
            keep(&mut decisions[i], format!("{FLOOR} newest {} (min_keep)", policy.min_keep));
        }
        if c.in_use {
            keep(&mut decisions[i], format!("{FLOOR} in use by a running job"));
        }
    }
    if let Some(&i) = idx.iter().find(|&&i| by_id[&decisions[i].id].deep_verified) {
        keep(&mut decisions[i], format!("{FLOOR} newest backup that passed deep verification"));
    }
    // the rules
    if let Some(n) = policy.keep_last {
        for &i in idx.iter().take(n as usize) {
            keep(&mut decisions[i], format!("keep_last {n}"));
        }
    }
    if let Some(within) = policy.keep_within {
        let cutoff = now - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
        for &i in idx {
            if decisions[i].started_at > cutoff && decisions[i].started_at <= now {
                keep(&mut decisions[i], format!("keep_within {}", human_duration(within)));
            }
        }
    }
    for (rule, n) in [
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ] {
        let Some(n) = n else { continue };
        let mut seen = HashSet::new();
        for &i in idx {
            if decisions[i].started_at > now {
                continue;
            }
            let b = bucket(decisions[i].started_at, tz, rule);
            if seen.len() < n as usize && seen.insert(b) {
                keep(&mut decisions[i], format!("keep_{rule} {n}"));
            }
        }
    }
    // size cap: drop the oldest kept-by-rules-only backups until the kind fits
    if let Some(max) = policy.max_total_size {
        let mut total: u64 = idx.iter().filter(|&&i| decisions[i].keep).map(|&i| decisions[i].stored_bytes).sum();
        for &i in idx.iter().rev() {
            if total <= max {
                break;
            }
            let d = &mut decisions[i];
            // the floor and the age rule (keep_within) are stronger than the size cap
            if d.keep && !d.reasons.iter().any(|r| r.starts_with(FLOOR) || r.starts_with("keep_within")) {
                d.keep = false;
                total -= d.stored_bytes;
                d.reasons.push(format!("over max_total_size ({max} bytes): oldest deleted first"));
            }
        }
    }
}

/// The result of executing a plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub deleted: Vec<String>,
    pub bytes_freed: u64,
    /// Per target: backups deleted and bytes freed.
    pub per_target: BTreeMap<String, (usize, u64)>,
    /// Backup directories that had data but no manifest (interrupted deletions or uploads),
    /// removed because they were older than `orphan_grace`.
    pub orphans_removed: Vec<String>,
    pub errors: Vec<String>,
}

/// Executes `decisions` for `database`: deletes exactly the backups marked for deletion (manifest
/// first), then removes orphaned data older than the grace period. Running it twice deletes
/// nothing more.
pub async fn apply(
    decisions: &[Decision],
    database: &str,
    repo: &Repository,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Applied {
    let mut out = delete_marked(decisions, repo.targets(), |id| repo::backup_prefix(database, id)).await;
    out.orphans_removed = remove_orphans(database, repo, retention, now, &mut out.errors).await;
    out
}

/// Deletes the backups `decisions` mark for deletion from `targets`, each stored under the
/// directory `dir(id)` (ending in `/`): its manifest first, then the rest.
pub async fn delete_marked(
    decisions: &[Decision],
    targets: &[crate::storage::Target],
    dir: impl Fn(&str) -> String,
) -> Applied {
    let mut out = Applied::default();
    for d in decisions.iter().filter(|d| !d.keep) {
        for t in targets {
            let prefix = dir(&d.id);
            let result: Result<u64> = async {
                let objects = t.store.list(&prefix).await?;
                if objects.is_empty() {
                    return Ok(0);
                }
                let bytes: u64 = objects.iter().map(|o| o.size).sum();
                // the manifest first: from here on the backup does not exist
                t.store.delete(&[format!("{prefix}{}", repo::MANIFEST_FILE)]).await?;
                let rest: Vec<String> = objects.into_iter().map(|o| o.key).collect();
                t.store.delete(&rest).await?;
                Ok(bytes)
            }
            .await;
            match result {
                Ok(0) => {}
                Ok(bytes) => {
                    let e = out.per_target.entry(t.name().to_owned()).or_default();
                    e.0 += 1;
                    e.1 += bytes;
                    out.bytes_freed += bytes;
                }
                Err(e) => out.errors.push(format!("deleting {} from {}: {e:#}", d.id, t.store.describe())),
            }
        }
        tracing::info!(backup_id = %d.id, reasons = %d.reasons.join("; "), "backup deleted by retention");
        out.deleted.push(d.id.clone());
    }
    out
}

type DirSeen = (bool, Option<DateTime<Utc>>, Vec<String>);

/// Removes backup directories with data but no manifest, older than the grace period.
async fn remove_orphans(
    database: &str,
    repo: &Repository,
    retention: &Retention,
    now: DateTime<Utc>,
    errors: &mut Vec<String>,
) -> Vec<String> {
    let cutoff = now - chrono::Duration::from_std(retention.orphan_grace).unwrap_or_default();
    let mut removed = Vec::new();
    for t in repo.targets() {
        let objects = match t.store.list(&format!("{database}/")).await {
            Ok(o) => o,
            Err(e) => {
                errors.push(format!("listing {}: {e:#}", t.store.describe()));
                continue;
            }
        };
        // per backup directory: has a manifest, newest modification, its keys
        let mut dirs: BTreeMap<String, DirSeen> = BTreeMap::new();
        for o in objects {
            let parts: Vec<&str> = o.key.split('/').collect();
            if parts.len() != 3 || !repo::looks_like_backup_id(parts[1]) {
                continue;
            }
            let e = dirs.entry(parts[1].to_owned()).or_default();
            e.0 |= parts[2] == repo::MANIFEST_FILE;
            e.1 = e.1.max(o.modified);
            e.2.push(o.key.clone());
        }
        for (id, (has_manifest, newest, keys)) in dirs {
            // no modification time: assume it is new, never delete it
            if has_manifest || newest.is_none_or(|m| m > cutoff) {
                continue;
            }
            match t.store.delete(&keys).await {
                Ok(()) => {
                    tracing::warn!(backup_id = %id, target_name = t.name(), "removed data without a manifest (an interrupted backup or deletion)");
                    removed.push(format!("{}:{id}", t.name()));
                }
                Err(e) => errors.push(format!("removing orphan {id} from {}: {e:#}", t.store.describe())),
            }
        }
    }
    removed
}

/// Parses `--at`: RFC 3339 (`2026-11-22T06:00:00Z`) or a date (`2026-11-22`, midnight UTC).
pub fn parse_at(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
        .ok_or_else(|| format!("{text:?} is not a time: use 2026-11-22 or 2026-11-22T06:00:00Z"))
}

#[cfg(test)]
mod tests;

/// One database's retention run: the plan, and what applying it did.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionRun {
    pub database: String,
    pub at: DateTime<Utc>,
    pub dry_run: bool,
    /// Why retention did not run for this database, if it did not.
    pub skipped: Option<String>,
    pub decisions: Vec<Decision>,
    pub applied: Option<Applied>,
}

impl RetentionRun {
    pub fn kept(&self) -> usize {
        self.decisions.iter().filter(|d| d.keep).count()
    }

    pub fn to_delete(&self) -> usize {
        self.decisions.iter().filter(|d| !d.keep).count()
    }
}

/// Plans (and unless `dry_run`, applies) retention for one database as of `now`. Skipped when the
/// newest backup attempt failed and `retention.skip_after_failure` is on: the backups that exist
/// may be the last good ones.
pub async fn run_for_database(
    config: &crate::config::Config,
    repo: &Repository,
    database: &str,
    now: DateTime<Utc>,
    dry_run: bool,
    in_use: &HashSet<String>,
) -> Result<RetentionRun> {
    let mut run = RetentionRun {
        database: database.to_owned(),
        at: now,
        dry_run,
        skipped: None,
        decisions: Vec::new(),
        applied: None,
    };
    if config.retention.skip_after_failure {
        let attempts = crate::jobs::report::read_all(&config.reports.dir, "backup");
        let newest = attempts.iter().rfind(|r| r.database == database && r.job_kind == "full_backup");
        if let Some(r) = newest.filter(|r| r.outcome == crate::jobs::report::Outcome::Failed) {
            run.skipped = Some(format!(
                "the newest backup attempt of {database} (run {} at {}) failed: retention is skipped so that no \
                 good backup is deleted while backups fail (retention.skip_after_failure)",
                r.run_id,
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            ));
            tracing::warn!(database = %database, "retention skipped: the newest backup attempt failed");
            return Ok(run);
        }
    }
    let listed = repo.list_with_targets(Some(database)).await?;
    let candidates: Vec<Candidate> = listed.iter().map(|l| Candidate::from_listed(l, in_use)).collect();
    run.decisions = plan(&candidates, &config.retention, config.timezone, now);
    if !dry_run {
        run.applied = Some(apply(&run.decisions, database, repo, &config.retention, now).await);
    }
    Ok(run)
}
