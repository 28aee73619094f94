//! Retention: a pure, explained plan of which backups to keep, then its execution, for every
//! subject alike.
//!
//! [`plan`] takes the backups of one subject, its policies and `now`, and returns a [`Decision`]
//! per backup with the reasons. A backup is kept if any rule keeps it (restic `forget` semantics:
//! `keep_last`, `keep_hourly` ... `keep_yearly` keep the newest backup of each of the last N
//! periods that have one, in the configured timezone; `keep_within` keeps everything younger),
//! and whatever the rules say, a floor is kept: the newest `min_keep` backups of each group, the
//! newest backup that passed deep verification, every backup a kept one depends on (an
//! incremental dump's chain down to its full, the holders of a file backup's unchanged files),
//! and any backup a running job reads. `max_total_size` then deletes the oldest backups kept only by count rules
//! until the group fits (the floor and `keep_within` are never deleted for size). A group without
//! a policy keeps all. Databases plan incrementals and fulls as two groups (`incremental_backup`,
//! `full_backup`); a file or configuration set is one group (`file_backup`, `config_backup`).
//!
//! [`apply`] executes exactly a plan through the repository: manifest first (the backup
//! disappears), then its data, on every target. A crash in between leaves data without a
//! manifest, which a later run removes once it is older than `orphan_grace` (an upload in
//! progress has no manifest yet either).

use super::context::JobContext;
use super::kind::JobKind;
use crate::config::{KindPolicy, Retention};
use crate::repo::{BackupKind, Listed, Repository, Subject};
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
    /// The backups it reads (an incremental dump's base, holders of unchanged files).
    pub depends_on: Vec<String>,
    /// Its last verification was deep and passed.
    pub deep_verified: bool,
    /// A running job (of any process, on any host) reads it: who.
    pub in_use: Option<String>,
    /// Taken of a restore target before `restore --clean` (its own policy group).
    pub safety: bool,
}

impl Candidate {
    pub fn from_listed(l: &Listed, in_use: &BTreeMap<String, String>) -> Candidate {
        let m = &l.manifest;
        Candidate {
            id: m.id.clone(),
            kind: m.kind,
            started_at: m.started_at,
            stored_bytes: m.stored_bytes(),
            depends_on: m.depends_on.clone(),
            deep_verified: l.annotations.deep_verified(),
            in_use: in_use.get(&m.id).cloned(),
            safety: m.trigger == crate::repo::manifest::Trigger::SafetyBeforeRestore,
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub safety: bool,
}

/// Backups planned together under one policy.
pub struct Group<'a> {
    /// Which backups (`None`: all of the subject's).
    pub kind: Option<BackupKind>,
    /// What they are, in reasons: `full backups`, `file_backups`.
    pub label: &'static str,
    pub policy: Option<&'a KindPolicy>,
    /// Safety backups (taken before `restore --clean`) form their own group.
    pub safety: bool,
}

/// A subject's policies: its groups in planning order, and the words for the dependency floor.
pub struct Policies<'a> {
    pub groups: Vec<Group<'a>>,
    /// Why a backup a kept one depends on is kept (`base of kept incremental X`).
    pub depended_on: fn(&str) -> String,
}

impl<'a> Policies<'a> {
    /// Incrementals first, so the fulls they depend on join the floor before the full rules run.
    pub fn database(r: &'a Retention) -> Policies<'a> {
        Policies {
            groups: vec![
                Group { kind: None, label: "safety backups", policy: Some(&r.safety_backup), safety: true },
                Group {
                    kind: Some(BackupKind::Incremental),
                    label: "incremental backups",
                    policy: r.incremental_backup.as_ref(),
                    safety: false,
                },
                Group {
                    kind: Some(BackupKind::Full),
                    label: "full backups",
                    policy: r.full_backup.as_ref(),
                    safety: false,
                },
            ],
            depended_on: |id| format!("base of kept incremental {id}"),
        }
    }

    /// A database that is not in the configuration (the target of a `restore --clean`, kept
    /// only for its safety backups): only its safety backups are planned; the rest are kept.
    pub fn unconfigured_database(r: &'a Retention) -> Policies<'a> {
        let mut p = Policies::database(r);
        for g in p.groups.iter_mut().filter(|g| !g.safety) {
            g.policy = None;
        }
        p
    }

    pub fn for_subject(subject: &Subject, r: &'a Retention) -> Policies<'a> {
        let holds: fn(&str) -> String = |id| format!("holds unchanged files of kept backup {id}");
        let (label, policy, depended_on) = match subject {
            Subject::Database(_) => return Policies::database(r),
            Subject::Files(_) => ("file_backups", r.file_backup.as_ref(), holds),
            Subject::Configs(_) => ("config_backups", r.config_backup.as_ref(), holds),
            Subject::Cluster(_) => ("base_backups", r.base_backup.as_ref(), holds),
            // incrementals of a SQLite file are deltas against the backup before, as dumps are
            Subject::Sqlite(_) => ("sqlite_backups", r.sqlite_backup.as_ref(), Policies::database(r).depended_on),
        };
        Policies { groups: vec![Group { kind: None, label, policy, safety: false }], depended_on }
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

/// Floor reasons: nothing may delete these.
const FLOOR: &str = "floor:";

/// Decides, for the backups of one database, which to keep and why. Pure: same inputs, same plan.
pub fn plan(backups: &[Candidate], retention: &Retention, tz: Tz, now: DateTime<Utc>) -> Vec<Decision> {
    plan_with(backups, &Policies::database(retention), tz, now)
}

/// Decides, for the backups of one subject, which to keep and why, under `policies`.
pub fn plan_with(backups: &[Candidate], policies: &Policies<'_>, tz: Tz, now: DateTime<Utc>) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = backups
        .iter()
        .map(|b| Decision {
            id: b.id.clone(),
            kind: b.kind,
            started_at: b.started_at,
            stored_bytes: b.stored_bytes,
            keep: false,
            reasons: Vec::new(),
            safety: b.safety,
        })
        .collect();
    // newest first
    decisions.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
    let by_id: BTreeMap<String, &Candidate> = backups.iter().map(|b| (b.id.clone(), b)).collect();

    for group in &policies.groups {
        let idx: Vec<usize> = (0..decisions.len())
            .filter(|&i| group.kind.is_none_or(|k| decisions[i].kind == k) && decisions[i].safety == group.safety)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let Some(policy) = group.policy else {
            for &i in &idx {
                decisions[i].keep = true;
                decisions[i].reasons.push(format!("no retention policy for {}", group.label));
            }
            continue;
        };
        // what the backups kept so far depend on is floor before this group's rules run
        keep_dependencies(&mut decisions, &by_id, policies.depended_on, Some(&idx));
        apply_rules(&mut decisions, &idx, &by_id, policy, tz, now);
        if let Some(max) = policy.max_total_size {
            cap_size(&mut decisions, &idx, &by_id, max);
        }
        // the links of a chain under a kept incremental
        keep_dependencies(&mut decisions, &by_id, policies.depended_on, Some(&idx));
    }
    // and what backups kept by their own group's rules depend on
    keep_dependencies(&mut decisions, &by_id, policies.depended_on, None);
    for d in &mut decisions {
        if !d.keep && d.reasons.is_empty() {
            d.reasons.push("no rule keeps it".into());
        }
    }
    decisions
}

/// Keeps (as floor) every backup that a kept backup depends on, transitively; only among `only`
/// when given.
fn keep_dependencies(
    decisions: &mut [Decision],
    by_id: &BTreeMap<String, &Candidate>,
    why: fn(&str) -> String,
    only: Option<&[usize]>,
) {
    // one reason per backup: the oldest kept backup that depends on it
    let already = format!("{FLOOR} {}", why(""));
    loop {
        let mut needed: BTreeMap<String, String> = BTreeMap::new();
        for d in decisions.iter().filter(|d| d.keep) {
            for dep in &by_id[&d.id].depends_on {
                needed.insert(dep.clone(), d.id.clone());
            }
        }
        let mut changed = false;
        for (dep, by) in needed {
            let Some(i) = decisions.iter().position(|d| d.id == dep) else { continue };
            if only.is_some_and(|o| !o.contains(&i)) {
                continue;
            }
            let reason = format!("{FLOOR} {}", why(&by));
            let d = &mut decisions[i];
            if d.keep && d.reasons.iter().any(|r| r.starts_with(&already)) {
                continue;
            }
            if !d.keep {
                // whatever had it deleted (the size cap) yields to the floor
                d.reasons.clear();
                changed = true;
            }
            d.keep = true;
            d.reasons.push(reason);
        }
        if !changed {
            break;
        }
    }
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
        if let Some(holder) = &c.in_use {
            keep(&mut decisions[i], format!("{FLOOR} in use by {holder}"));
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
                keep(&mut decisions[i], format!("keep_within {}", crate::units::duration(within)));
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
}

/// The size cap: drops the oldest backups kept by count rules only until the group fits in
/// `max` bytes (the floor and the age rule, keep_within, are stronger than it). What the group
/// keeps includes the backups the kept ones read (a chain's links below a kept incremental):
/// dropping a link that a kept backup still reads frees nothing, so a chain goes from its
/// newest link down, or stays whole.
fn cap_size(decisions: &mut [Decision], idx: &[usize], by_id: &BTreeMap<String, &Candidate>, max: u64) {
    let total = |decisions: &[Decision]| -> u64 {
        let mut needed: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> =
            idx.iter().filter(|&&i| decisions[i].keep).map(|&i| decisions[i].id.as_str()).collect();
        while let Some(id) = todo.pop() {
            if needed.insert(id) {
                todo.extend(by_id[id].depends_on.iter().map(String::as_str).filter(|d| by_id.contains_key(*d)));
            }
        }
        idx.iter().filter(|&&i| needed.contains(decisions[i].id.as_str())).map(|&i| decisions[i].stored_bytes).sum()
    };
    for &i in idx.iter().rev() {
        if total(decisions) <= max {
            break;
        }
        let d = &mut decisions[i];
        if d.keep && !d.reasons.iter().any(|r| r.starts_with(FLOOR) || r.starts_with("keep_within")) {
            d.keep = false;
            d.reasons.push(format!("over max_total_size ({max} bytes): oldest deleted first"));
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
    /// Unfinished writes (temp files, multipart uploads of killed processes) older than
    /// `orphan_grace`, removed.
    #[serde(default)]
    pub leftovers_removed: Vec<String>,
    pub errors: Vec<String>,
    /// What could not be checked (a target that cannot list its unfinished uploads).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Executes `decisions` for `subject`: deletes exactly the backups marked for deletion (manifest
/// first), then removes orphaned data older than the grace period. Running it twice deletes
/// nothing more.
pub async fn apply(
    decisions: &[Decision],
    subject: &Subject,
    repo: &Repository,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Applied {
    let mut out = Applied::default();
    for d in decisions.iter().filter(|d| !d.keep) {
        for (target, result) in repo.delete(subject, &d.id).await {
            match result {
                Ok(0) => {}
                Ok(bytes) => {
                    let e = out.per_target.entry(target).or_default();
                    e.0 += 1;
                    e.1 += bytes;
                    out.bytes_freed += bytes;
                }
                Err(e) => out.errors.push(format!("{}: {e:#}", d.id)),
            }
        }
        tracing::info!(backup_id = %d.id, reasons = %d.reasons.join("; "), "backup deleted by retention");
        out.deleted.push(d.id.clone());
    }
    let cutoff = now - chrono::Duration::from_std(retention.orphan_grace).unwrap_or_default();
    let (removed, errors) = repo.remove_orphans(subject, cutoff).await;
    out.orphans_removed = removed;
    out.errors.extend(errors);
    let (removed, problems) = repo.remove_leftovers(subject, cutoff).await;
    out.leftovers_removed = removed;
    out.warnings.extend(problems);
    out
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

/// One subject's retention run: the plan, and what applying it did.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionRun {
    /// The subject (`app`, `files:uploads`).
    pub database: String,
    pub subject: Subject,
    pub at: DateTime<Utc>,
    pub dry_run: bool,
    /// Why retention did not run for this subject, if it did not.
    pub skipped: Option<String>,
    pub decisions: Vec<Decision>,
    pub applied: Option<Applied>,
    /// A cluster's WAL: what is older than the oldest kept base backup's start, per target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalRetention>,
}

/// The WAL part of a cluster's retention run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalRetention {
    pub archives: Vec<crate::wal::expire::WalExpiry>,
    /// Targets whose archive could not be listed (nothing of it is deleted).
    pub errors: Vec<String>,
    pub deleted: Option<crate::wal::expire::WalDeleted>,
}

impl WalRetention {
    pub fn files_to_delete(&self) -> usize {
        self.archives.iter().map(|a| a.files_to_delete).sum()
    }

    pub fn bytes_to_delete(&self) -> u64 {
        self.archives.iter().map(|a| a.bytes_to_delete).sum()
    }
}

/// Plans the deletion of the WAL of cluster `name` that none of the base backups `decisions`
/// keep needs, on every target.
async fn plan_wal(repo: &Repository, name: &str, listed: &[Listed], decisions: &[Decision]) -> WalRetention {
    use crate::wal::{expire, names::SegmentName};
    let kept: Vec<expire::KeptStart> = listed
        .iter()
        .filter(|l| decisions.iter().any(|d| d.keep && d.id == l.manifest.id))
        .filter_map(|l| {
            let b = l.manifest.base_backup()?;
            Some(expire::KeptStart {
                system_identifier: b.system_identifier,
                start: SegmentName::parse(&b.start_wal)?,
                backup: l.manifest.id.clone(),
            })
        })
        .collect();
    let mut out = WalRetention::default();
    for t in repo.targets() {
        match crate::wal::archive::by_system_identifier(name, t).await {
            Ok(archives) => out.archives.extend(expire::plan(t.name(), &archives, &kept)),
            Err(e) => out.errors.push(format!("{}: {e:#}: none of its WAL is deleted", t.name())),
        }
    }
    out
}

impl RetentionRun {
    pub fn kept(&self) -> usize {
        self.decisions.iter().filter(|d| d.keep).count()
    }

    pub fn to_delete(&self) -> usize {
        self.decisions.iter().filter(|d| !d.keep).count()
    }
}

/// The backup jobs whose newest attempt decides whether retention of `subject` runs.
fn backup_jobs(subject: &Subject) -> &'static [JobKind] {
    match subject {
        Subject::Database(_) => &[JobKind::FullBackup, JobKind::IncrementalBackup],
        Subject::Files(_) => &[JobKind::FileBackup],
        Subject::Configs(_) => &[JobKind::ConfigBackup],
        Subject::Cluster(_) => &[JobKind::BaseBackup],
        Subject::Sqlite(_) => &[JobKind::SqliteBackup],
    }
}

/// Why retention of `subject` must not run now, if it must not: the newest backup attempt did
/// not succeed, or nobody knows how it ended (still running, or its process died; no record at
/// all while backups exist). The repository's attempt records decide; reports, for backups of
/// pgbackd 0.1, which kept none.
async fn unsafe_to_delete(ctx: &JobContext, subject: &Subject, has_backups: bool) -> Result<Option<String>> {
    use crate::repo::AttemptOutcome;
    let jobs = backup_jobs(subject);
    let names: Vec<&str> = jobs.iter().map(|j| j.name()).collect();
    let recorded = ctx.repository.attempts(subject).await?;
    let newest_record =
        recorded.into_iter().filter(|a| names.contains(&a.job_kind.as_str())).max_by_key(|a| a.started_at);
    let newest_report = jobs
        .iter()
        .filter_map(|j| super::report::newest(&ctx.config.reports.dir, *j, subject))
        .max_by_key(|r| r.started_at);
    let when = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC");
    // a report newer than every record is of a run that could not write its record
    let (newest_record, newest_report) = match (newest_record, newest_report) {
        (Some(a), Some(r)) if r.started_at > a.started_at => (None, Some(r)),
        (Some(a), _) => (Some(a), None),
        (None, r) => (None, r),
    };
    let why = match (newest_record, newest_report) {
        (Some(a), _) => match a.outcome {
            AttemptOutcome::Success | AttemptOutcome::Partial => None,
            AttemptOutcome::Running => Some(format!(
                "the newest backup attempt of {subject} ({}, run {} started {} by pid {} on {}) has not recorded how it \
                 ended: it is still running, or its process stopped",
                a.job_kind,
                a.run_id,
                when(a.started_at),
                a.pid,
                a.host
            )),
            outcome => Some(format!(
                "the newest backup attempt of {subject} ({}, run {} at {}) {}",
                a.job_kind,
                a.run_id,
                when(a.started_at),
                if outcome == AttemptOutcome::Cancelled { "was cancelled" } else { "failed" }
            )),
        },
        (_, Some(r)) => (r.outcome == super::report::Outcome::Failed).then(|| {
            format!(
                "the newest backup attempt of {subject} ({}, run {} at {}) failed",
                r.job_kind.name(),
                r.run_id,
                when(r.started_at)
            )
        }),
        (None, None) if has_backups => {
            Some(format!("no backup attempt of {subject} is recorded, so whether the newest succeeded is unknown"))
        }
        (None, None) => None,
    };
    Ok(why.map(|w| {
        format!(
            "{w}: retention is skipped so that no good backup is deleted while backups fail, until a backup succeeds \
             (retention.skip_after_failure)"
        )
    }))
}

/// Plans (and unless `dry_run`, applies) retention for one subject as of `now`. Skipped when the
/// newest backup attempt failed and `retention.skip_after_failure` is on: the backups that exist
/// may be the last good ones.
pub async fn run(ctx: &JobContext, subject: &Subject, now: DateTime<Utc>, dry_run: bool) -> Result<RetentionRun> {
    let (config, repo) = (&*ctx.config, &*ctx.repository);
    let mut run = RetentionRun {
        database: subject.to_string(),
        subject: subject.clone(),
        at: now,
        dry_run,
        skipped: None,
        decisions: Vec::new(),
        applied: None,
        wal: None,
    };
    let listed = repo.list_with_targets(Some(subject)).await?;
    // a database that is not configured has no backup jobs of its own, only the safety backups
    // restores took of it (and only those are planned): there is no failing backup to wait for
    let configured = !matches!(subject, Subject::Database(name) if config.database(name).is_none());
    if config.retention.skip_after_failure
        && configured
        && let Some(why) = unsafe_to_delete(ctx, subject, !listed.is_empty()).await?
    {
        tracing::warn!(subject = %subject, reason = %why, "retention skipped");
        run.skipped = Some(why);
        return Ok(run);
    }
    // what any process on any host reads is kept: a delete lock (no new reader starts until it
    // is released) tells which backups the readers already hold; a dry run only looks
    let (lock, in_use) = if dry_run {
        (None, readers(ctx, subject).await?)
    } else {
        let d = repo.lock_delete(subject, "retention", config.locks, &ctx.clock, &ctx.cancel).await?;
        (Some(d.held), d.in_use)
    };
    // listed again under the lock: what a backup committed meanwhile is planned too
    let listed = if lock.is_some() { repo.list_with_targets(Some(subject)).await? } else { listed };
    let candidates: Vec<Candidate> = listed.iter().map(|l| Candidate::from_listed(l, &in_use)).collect();
    let policies = if configured {
        Policies::for_subject(subject, &config.retention)
    } else {
        Policies::unconfigured_database(&config.retention)
    };
    run.decisions = plan_with(&candidates, &policies, config.timezone, now);
    if let Subject::Cluster(name) = subject {
        run.wal = Some(plan_wal(repo, name, &listed, &run.decisions).await);
    }
    if !dry_run {
        let mut applied = apply(&run.decisions, subject, repo, &config.retention, now).await;
        // the WAL after the base backups: a crash in between leaves WAL the next run deletes
        if let Some(w) = &mut run.wal {
            let deleted = crate::wal::expire::apply(&w.archives, repo.targets()).await;
            applied.errors.extend(w.errors.iter().cloned());
            applied.errors.extend(deleted.errors.iter().cloned());
            w.deleted = Some(deleted);
        }
        run.applied = Some(applied);
    }
    if let Some(l) = lock {
        l.release().await;
    }
    Ok(run)
}

/// The backups of `subject` that live read locks hold, with the holder: what a dry run shows as
/// in use (a real run takes the delete lock instead, which also stops new readers).
async fn readers(ctx: &JobContext, subject: &Subject) -> Result<BTreeMap<String, String>> {
    let mut in_use = BTreeMap::new();
    for (_, l) in ctx.repository.locks(Some(subject)).await? {
        if l.kind == crate::repo::locks::LockKind::Read && l.stale(ctx.now(), ctx.config.locks.stale_after).is_none() {
            in_use.extend(l.backups.iter().map(|b| (b.clone(), l.holder())));
        }
    }
    Ok(in_use)
}

/// `pgbackd forget ID`: one backup, trusted or damaged, deleted on purpose (planned, then
/// applied with `apply`).
#[derive(Debug)]
pub struct Forget {
    pub id: String,
    pub subject: Subject,
    /// The backup as listed, or why its manifest cannot be trusted.
    pub backup: std::result::Result<Listed, String>,
    /// The targets holding it.
    pub targets: Vec<String>,
    /// The backups whose restores read this one (the incrementals of a chain above it, file
    /// backups holding its files), newest first: forget refuses.
    pub needed_by: Vec<String>,
    /// Who reads it now: forget refuses.
    pub in_use: Option<String>,
    /// What the deletion did, per target (when applied).
    pub deleted: Option<crate::repo::Deleted>,
}

impl Forget {
    /// Why it must not be deleted, if it must not.
    pub fn refusal(&self) -> Option<String> {
        if !self.needed_by.is_empty() {
            return Some(format!(
                "backup {} is read by the restores of {}: forget those first, newest first (or let retention \
                 remove the chain as a whole)",
                self.id,
                self.needed_by.join(", ")
            ));
        }
        self.in_use.as_ref().map(|h| format!("backup {} is in use by {h}: try again when it is done", self.id))
    }
}

/// Plans (and with `apply`, performs) the deletion of backup `id`.
pub async fn forget(ctx: &JobContext, id: &str, apply: bool) -> Result<Forget> {
    let repo = &ctx.repository;
    let subject = repo.subject_of(id).await?;
    let (lock, in_use) = if apply {
        let d = repo.lock_delete(&subject, "forget", ctx.config.locks, &ctx.clock, &ctx.cancel).await?;
        (Some(d.held), d.in_use)
    } else {
        (None, readers(ctx, &subject).await?)
    };
    let plan = async {
        let listing = repo.listing(Some(&subject)).await?;
        let good = listing.backups.iter().find(|l| l.manifest.id == id).cloned();
        let damaged: Vec<_> = listing.damaged.iter().filter(|d| d.id == id).collect();
        let mut targets: Vec<String> = good.iter().flat_map(|l| l.targets.clone()).collect();
        targets.extend(damaged.iter().map(|d| d.target.clone()));
        targets.sort();
        targets.dedup();
        let backup = match good {
            Some(l) => Ok(l),
            None => Err(damaged.iter().map(|d| d.problem.as_str()).collect::<Vec<_>>().join("; ")),
        };
        let needed_by = listing.dependents(id);
        anyhow::Ok(Forget {
            id: id.to_owned(),
            subject: subject.clone(),
            backup,
            targets,
            needed_by,
            in_use: in_use.get(id).cloned(),
            deleted: None,
        })
    }
    .await;
    let result = match plan {
        Ok(mut f) if apply && f.refusal().is_none() => {
            f.deleted = Some(repo.delete(&subject, id).await);
            Ok(f)
        }
        other => other,
    };
    if let Some(l) = lock {
        l.release().await;
    }
    result
}
