//! `pgbackd list`: a table for people, a stable JSON array for scripts.

use crate::repo::Listed;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;

/// One element of `list --json`. Stable: fields are only ever added.
#[derive(Debug, Serialize)]
pub struct ListEntry<'a> {
    pub id: &'a str,
    pub database: &'a str,
    pub kind: &'a str,
    pub base_id: Option<&'a str>,
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
    pub server_version: &'a str,
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
}

#[derive(Debug, Serialize)]
pub struct ListEncryption<'a> {
    /// `recipients` (an age identity decrypts) or `passphrase`.
    pub mode: &'a str,
    pub recipients: &'a [String],
}

/// Which key a backup needs, in a word or a few fingerprints.
pub fn key_needed(m: &crate::repo::Manifest) -> String {
    match &m.encryption {
        None => "-".into(),
        Some(e) if e.mode == "passphrase" => "passphrase".into(),
        Some(e) => e.recipients.join(","),
    }
}

pub fn entry(l: &Listed) -> ListEntry<'_> {
    let m = &l.manifest;
    ListEntry {
        id: &m.id,
        database: &m.database,
        kind: m.kind.name(),
        base_id: m.base_id.as_deref(),
        trigger: m.trigger,
        status: "ok",
        started_at: m.started_at,
        finished_at: m.finished_at,
        duration_seconds: m.duration_seconds(),
        raw_bytes: m.data.raw_bytes,
        stored_bytes: m.data.stored_bytes,
        raw_sha256: &m.data.raw_sha256,
        stored_sha256: &m.data.stored_sha256,
        tables: m.tables.len(),
        targets: &l.targets,
        server_version: &m.server_version,
        verified_at: l.annotations.verification.as_ref().map(|v| v.verified_at),
        verify_outcome: l.annotations.verification.as_ref().map(|v| v.outcome.as_str()),
        verify_mode: l.annotations.verification.as_ref().map(|v| v.mode.as_str()),
        test_restored_at: l.annotations.test_restore.as_ref().map(|t| t.tested_at),
        test_restore_outcome: l.annotations.test_restore.as_ref().map(|t| t.outcome.as_str()),
        restore_seconds: l.annotations.test_restore.as_ref().map(|t| t.restore_seconds),
        warnings: &m.warnings,
        encryption: m
            .encryption
            .as_ref()
            .map(|e| ListEncryption { mode: e.mode.as_str(), recipients: e.recipients.as_slice() }),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub fn print(backups: &[Listed], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let entries: Vec<ListEntry> = backups.iter().map(entry).collect();
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    if backups.is_empty() {
        writeln!(out, "no backups")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36} {:<16} {:<11} {:<20} {:>8} {:>10} {:>10} {:<12} {:<14} {:<24} STATUS",
        "ID", "DATABASE", "KIND", "STARTED (UTC)", "SECONDS", "RAW", "STORED", "SHA256", "TARGETS", "KEY"
    )?;
    for l in backups {
        let m = &l.manifest;
        writeln!(
            out,
            "{:<36} {:<16} {:<11} {:<20} {:>8.1} {:>10} {:>10} {:<12} {:<14} {:<24} ok{}",
            m.id,
            m.database,
            m.kind.name(),
            m.started_at.format("%Y-%m-%d %H:%M:%S"),
            m.duration_seconds(),
            human_bytes(m.data.raw_bytes),
            human_bytes(m.data.stored_bytes),
            &m.data.raw_sha256[..12.min(m.data.raw_sha256.len())],
            l.targets.join(","),
            key_needed(m),
            if m.warnings.is_empty() { String::new() } else { format!(" ({} warnings)", m.warnings.len()) }
        )?;
    }
    Ok(())
}
