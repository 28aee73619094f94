//! `pgbackd restore` output.

use crate::jobs::restore::RestoreReport;
use anyhow::Result;
use std::io::Write;

pub fn print(r: &RestoreReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    if r.dry_run {
        writeln!(out, "dry run: backup {} of {} would be restored into {}", r.backup_id, r.database, r.target)?;
        writeln!(
            out,
            "  its {} bytes were read and verified (SHA-256 of every frame and of the whole stream)",
            r.raw_bytes
        )?;
        writeln!(out, "  {} tables would have their row counts checked; nothing was changed", r.tables_checked)?;
        return Ok(());
    }
    writeln!(out, "restored backup {} of {} into {} in {:.1}s", r.backup_id, r.database, r.target, r.duration_seconds)?;
    if r.created {
        writeln!(out, "  created the target database")?;
    }
    if let Some(id) = &r.safety_backup_id {
        writeln!(out, "  safety backup of the target taken first: {id}")?;
    }
    for w in &r.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    if r.mismatches.is_empty() {
        writeln!(out, "  row counts of all {} tables match the backup", r.tables_checked)?;
    } else {
        writeln!(out, "  ROW COUNT MISMATCH in {} of {} tables:", r.mismatches.len(), r.tables_checked)?;
        for m in &r.mismatches {
            let found = m.found.map(|n| n.to_string()).unwrap_or_else(|| "table missing".into());
            writeln!(out, "    {}.{}: expected {}, found {}", m.schema, m.table, m.expected, found)?;
        }
    }
    Ok(())
}
