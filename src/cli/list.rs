//! `pgbackd list` and `list-files`: a table for people, a stable JSON array for scripts.

use super::EXIT_OK;
use super::args::{ListArgs, ListFilesArgs};
use crate::jobs::JobContext;
use crate::repo::manifest::FilesOutcome;
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Listed, Listing, Subject};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;

/// `pgbackd list [--database NAME]`: every backup in the repository, or one database's.
pub async fn backups(ctx: &JobContext, args: &ListArgs) -> Result<ExitCode> {
    let subject = match &args.database {
        Some(d) => Some(super::subject_arg(&ctx.config, d)?),
        None => None,
    };
    let listing = ctx.repository.listing(subject.as_ref()).await?;
    let wal = match (&ctx.config.wal, &subject) {
        (Some(w), None) => Some(wal_summaries(ctx, w, &listing).await),
        _ => None,
    };
    print(&listing, wal.as_ref(), args.json)?;
    if !listing.damaged.is_empty() {
        tell!(
            "warning: {} (listed with status damaged): `pgbackd verify --all` fails on them; see \
             docs/operations.md, \"Damaged backups\"",
            crate::units::count(listing.damaged.len(), "damaged manifest")
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pgbackd list-files --name SET [--configs]`.
pub async fn files(ctx: &JobContext, args: &ListFilesArgs) -> Result<ExitCode> {
    let (_, subject) = super::backup::set_subject(&args.set);
    crate::jobs::file_backup::set_of(&ctx.config, &subject)?;
    let list = ctx.repository.list(Some(&subject)).await?;
    if args.json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .filter_map(|m| m.file_set().map(|f| (m, f)))
            .map(|(m, f)| {
                serde_json::json!({
                    "id": m.id, "set": m.subject.name(), "kind": if matches!(m.subject, Subject::Configs(_)) { "configs" } else { "files" }, "started_at": m.started_at,
                    "outcome": f.outcome, "files": f.file_count, "bytes": f.total_bytes,
                    "incremental": m.kind == BackupKind::Incremental, "holders": m.depends_on,
                    "stored_bytes": m.data.stored_bytes, "problems": f.problems, "targets": m.targets,
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        say!("{:<40} {:<9} {:>8} {:>14} {:>14}", "ID", "OUTCOME", "FILES", "BYTES", "STORED");
        for (m, f) in list.iter().filter_map(|m| m.file_set().map(|f| (m, f))) {
            let outcome = if f.outcome == FilesOutcome::Success { "success" } else { "partial" };
            say!("{:<40} {:<9} {:>8} {:>14} {:>14}", m.id, outcome, f.file_count, f.total_bytes, m.data.stored_bytes);
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// One element of `list --json`. Stable: fields are only ever added.
#[derive(Debug, Serialize)]
pub struct ListEntry<'a> {
    pub id: &'a str,
    /// The subject: a database's name, `files:NAME` or `configs:NAME`.
    pub database: String,
    pub subject: &'a Subject,
    pub kind: &'a str,
    /// The backup an incremental is a delta against.
    pub base_id: Option<&'a str>,
    /// How many backups its restore reads: 1 for a full, one more per link of an incremental's
    /// chain down to its full; null when a link is missing (status `broken`).
    pub chain: Option<usize>,
    pub trigger: crate::repo::manifest::Trigger,
    pub status: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub raw_sha256: &'a str,
    pub stored_sha256: &'a str,
    pub tables: usize,
    pub targets: &'a [String],
    /// The server a dump was taken from (null for file sets).
    pub server_version: Option<&'a str>,
    pub verified_at: Option<DateTime<Utc>>,
    /// `passed` or `failed`, null if never verified.
    pub verify_outcome: Option<&'a str>,
    /// `quick` or `deep`.
    pub verify_mode: Option<&'a str>,
    pub test_restored_at: Option<DateTime<Utc>>,
    pub test_restore_outcome: Option<&'a str>,
    /// Seconds the last test restore took: the measured recovery time.
    pub restore_seconds: Option<f64>,
    pub warnings: &'a [String],
    /// Null when not encrypted; else the mode and the recipients' fingerprints (the key it needs).
    pub encryption: Option<ListEncryption<'a>>,
    /// A base backup's WAL: where it starts and ends, and how far the archive reaches from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<BaseWal<'a>>,
}

#[derive(Debug, Serialize)]
pub struct BaseWal<'a> {
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_wal: &'a str,
    pub stop_wal: &'a str,
    /// Per target: the newest segment recovery from it reaches without a gap, and when that was
    /// archived (about the newest moment it restores to).
    pub reach: Vec<TargetReach<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TargetReach<'a> {
    pub target: &'a str,
    #[serde(flatten)]
    pub reach: &'a crate::wal::window::Reach,
}

/// The WAL archives of the configured cluster on every target (a target that cannot be read
/// is reported as such).
pub struct WalSummaries {
    pub cluster: String,
    /// `wal.method: stream`.
    pub stream: bool,
    pub archives: Vec<crate::wal::window::ArchiveSummary>,
    pub errors: Vec<String>,
}

async fn wal_summaries(ctx: &JobContext, wal: &crate::config::WalSettings, listing: &Listing) -> WalSummaries {
    let cluster = wal.name.as_str();
    let bases: Vec<&crate::repo::Manifest> =
        listing.backups.iter().map(|l| &l.manifest).filter(|m| m.base_backup().is_some()).collect();
    let mut out = WalSummaries {
        cluster: cluster.to_owned(),
        stream: wal.method == crate::config::WalMethod::Stream,
        archives: Vec::new(),
        errors: Vec::new(),
    };
    let repo = &ctx.repository;
    for t in repo.targets() {
        match crate::wal::window::summarise(cluster, t, repo.crypto().cloned(), &bases).await {
            Ok(a) => out.archives.extend(a),
            Err(e) => out.errors.push(format!("{}: {e:#}", t.name())),
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct ListEncryption<'a> {
    pub mode: crate::crypto::EncryptionMode,
    pub recipients: &'a [String],
}

/// Which key a backup needs, in a word or a few fingerprints.
pub fn key_needed(m: &crate::repo::Manifest) -> String {
    match &m.encryption {
        None => "-".into(),
        Some(e) if e.mode == crate::crypto::EncryptionMode::Passphrase => "passphrase".into(),
        Some(e) => e.recipients.join(","),
    }
}

pub fn entry<'a>(l: &'a Listed, listing: &Listing) -> ListEntry<'a> {
    let m = &l.manifest;
    let chain = listing.chain_length(&m.id).ok();
    ListEntry {
        id: &m.id,
        database: m.subject.to_string(),
        subject: &m.subject,
        kind: m.kind_label(),
        base_id: m.base_id(),
        chain,
        trigger: m.trigger,
        status: if chain.is_some() { "ok" } else { "broken" },
        started_at: m.started_at,
        finished_at: m.finished_at,
        duration_seconds: m.duration_seconds(),
        raw_bytes: m.data.raw_bytes,
        stored_bytes: m.data.stored_bytes,
        raw_sha256: &m.data.raw_sha256,
        stored_sha256: &m.data.stored_sha256,
        tables: m.dump().map(|d| d.tables.len()).or(m.sqlite().map(|s| s.tables.len())).unwrap_or(0),
        targets: &l.targets,
        server_version: m.dump().map(|d| d.server_version.as_str()),
        verified_at: l.annotations.verification.as_ref().map(|v| v.verified_at),
        verify_outcome: l.annotations.verification.as_ref().map(|v| v.outcome.name()),
        verify_mode: l.annotations.verification.as_ref().map(|v| v.mode.name()),
        test_restored_at: l.annotations.test_restore.as_ref().map(|t| t.tested_at),
        test_restore_outcome: l.annotations.test_restore.as_ref().map(|t| t.outcome.name()),
        restore_seconds: l.annotations.test_restore.as_ref().map(|t| t.restore_seconds),
        warnings: &m.warnings,
        encryption: m.encryption.as_ref().map(|e| ListEncryption { mode: e.mode, recipients: e.recipients.as_slice() }),
        wal: m.base_backup().map(|b| BaseWal {
            timeline: b.timeline,
            start_lsn: b.start_lsn.0.to_string(),
            stop_lsn: b.stop_lsn.0.to_string(),
            start_wal: &b.start_wal,
            stop_wal: &b.stop_wal,
            reach: Vec::new(),
        }),
    }
}

/// An element of `list --json` for a manifest that cannot be trusted.
#[derive(Debug, Serialize)]
pub struct DamagedEntry<'a> {
    pub id: &'a str,
    pub database: String,
    pub subject: &'a Subject,
    /// `damaged`
    pub status: &'a str,
    pub problem: &'a str,
    pub targets: [&'a str; 1],
}

pub fn print(listing: &Listing, wal: Option<&WalSummaries>, json: bool) -> Result<()> {
    let backups = &listing.backups;
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
    let damaged = listing.damaged.iter().map(|d| DamagedEntry {
        id: &d.id,
        database: d.subject.to_string(),
        subject: &d.subject,
        status: "damaged",
        problem: &d.problem,
        targets: [&d.target],
    });
    if json {
        let mut entries = Vec::new();
        for l in backups {
            let mut e = entry(l, listing);
            if let (Some(w), Some(bw)) = (wal, e.wal.as_mut()) {
                for a in &w.archives {
                    bw.reach.extend(
                        a.reach
                            .iter()
                            .filter(|r| r.backup_id == l.manifest.id)
                            .map(|r| TargetReach { target: &a.target, reach: r }),
                    );
                }
            }
            entries.push(serde_json::to_value(e)?);
        }
        for d in damaged {
            entries.push(serde_json::to_value(d)?);
        }
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    if backups.is_empty() && listing.damaged.is_empty() {
        writeln!(out, "no backups")?;
        return print_wal(&mut out, wal);
    }
    writeln!(
        out,
        "{:<36} {:<16} {:<11} {:<9} {:<20} {:>8} {:>10} {:>10} {:<12} {:<14} {:<24} STATUS",
        "ID", "DATABASE", "KIND", "TRIGGER", "STARTED (UTC)", "SECONDS", "RAW", "STORED", "SHA256", "TARGETS", "KEY"
    )?;
    for l in backups {
        let m = &l.manifest;
        writeln!(
            out,
            "{:<36} {:<16} {:<11} {:<9} {:<20} {:>8.1} {:>10} {:>10} {:<12} {:<14} {:<24} {}",
            m.id,
            m.subject.to_string(),
            m.kind_label(),
            match m.trigger {
                Trigger::Manual => "manual",
                Trigger::Schedule => "scheduled",
                Trigger::CatchUp => "catch-up",
                Trigger::SafetyBeforeRestore => "safety",
                Trigger::Request => "request",
            },
            m.started_at.format("%Y-%m-%d %H:%M:%S"),
            m.duration_seconds(),
            crate::units::bytes(m.data.raw_bytes),
            crate::units::bytes(m.data.stored_bytes),
            &m.data.raw_sha256[..12.min(m.data.raw_sha256.len())],
            l.targets.join(","),
            key_needed(m),
            match listing.chain_length(&m.id) {
                Err(missing) => format!("broken: it needs {missing}, which is missing or damaged"),
                Ok(_) if m.warnings.is_empty() => "ok".into(),
                Ok(_) => format!("ok ({} warnings)", m.warnings.len()),
            }
        )?;
    }
    for d in damaged {
        writeln!(out, "{:<36} {:<16} DAMAGED on target {}: {}", d.id, d.database, d.targets[0], d.problem)?;
    }
    print_wal(&mut out, wal)
}

/// The WAL archive: per target and system, its range, and the moments each base backup restores to.
fn print_wal(out: &mut impl Write, wal: Option<&WalSummaries>) -> Result<()> {
    let Some(w) = wal else { return Ok(()) };
    let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    writeln!(out)?;
    if w.archives.is_empty() && w.errors.is_empty() {
        writeln!(
            out,
            "WAL of cluster {}: nothing archived yet ({})",
            w.cluster,
            if w.stream {
                "the daemon's receiver stores it: is `pgbackd run` running? `pgbackd status` says"
            } else {
                "archive_command = 'pgbackd -c CONFIG archive-push %p'"
            }
        )?;
    }
    for a in &w.archives {
        writeln!(
            out,
            "WAL of cluster {} (system {}) on {}: {} files, {}, segments {} .. {} (timeline {}){}",
            w.cluster,
            a.system_identifier,
            a.target,
            a.files,
            crate::units::bytes(a.stored_bytes),
            a.first_segment.as_deref().unwrap_or("none"),
            a.last_segment.as_deref().unwrap_or("none"),
            a.timeline,
            a.newest_archived_at.map(|t| format!(", newest archived {} UTC", time(&t))).unwrap_or_default()
        )?;
        if a.reach.is_empty() {
            writeln!(out, "  no base backup of this system: nothing restores from it (pgbackd base-backup takes one)")?;
        }
        for r in &a.reach {
            let until = match (&r.last_segment, &r.until) {
                (Some(_), Some(u)) => format!("about {} UTC", time(u)),
                (Some(seg), None) => format!("the end of {seg}"),
                (None, _) => "nowhere: its own WAL is incomplete".into(),
            };
            writeln!(
                out,
                "  base backup {}: restorable from {} UTC to {until}{}",
                r.backup_id,
                time(&r.from),
                r.stops_at_gap.as_ref().map(|g| format!(" (stops at a gap: {g})")).unwrap_or_default()
            )?;
        }
    }
    for e in &w.errors {
        writeln!(out, "WAL of cluster {}: ERROR {e}", w.cluster)?;
    }
    Ok(())
}
