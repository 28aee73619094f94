//! `pgbackd retention` output: the plan as a table, with the reasons.

use crate::cli::list::human_bytes;
use crate::jobs::retention::RetentionRun;
use anyhow::Result;
use std::io::Write;

fn age(d: chrono::Duration) -> String {
    match d.num_hours() {
        h if h < 0 => "future".into(),
        h if h < 48 => format!("{h}h"),
        h => format!("{}d", h / 24),
    }
}

pub fn print(runs: &[RetentionRun], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, runs)?;
        writeln!(out)?;
        return Ok(());
    }
    for r in runs {
        let mode = if r.dry_run { "plan (dry run, nothing deleted)" } else { "plan, applied" };
        writeln!(out, "database {} as of {}: {mode}", r.database, r.at.format("%Y-%m-%d %H:%M:%S UTC"))?;
        if let Some(s) = &r.skipped {
            writeln!(out, "  SKIPPED: {s}")?;
            continue;
        }
        if r.decisions.is_empty() {
            writeln!(out, "  no backups")?;
            continue;
        }
        writeln!(out, "  {:<32} {:>6} {:<12} {:>10}  {:<6} REASONS", "ID", "AGE", "KIND", "SIZE", "ACTION")?;
        for d in &r.decisions {
            writeln!(
                out,
                "  {:<32} {:>6} {:<12} {:>10}  {:<6} {}",
                d.id,
                age(r.at - d.started_at),
                d.kind.name(),
                human_bytes(d.stored_bytes),
                if d.keep { "keep" } else { "DELETE" },
                d.reasons.join("; ")
            )?;
        }
        let freed: u64 = r.decisions.iter().filter(|d| !d.keep).map(|d| d.stored_bytes).sum();
        writeln!(out, "  {} kept, {} to delete ({})", r.kept(), r.to_delete(), human_bytes(freed))?;
        if let Some(a) = &r.applied {
            writeln!(out, "  deleted {} backups, freed {}", a.deleted.len(), human_bytes(a.bytes_freed))?;
            for (target, (n, bytes)) in &a.per_target {
                writeln!(out, "    target {target}: {n} backups, {}", human_bytes(*bytes))?;
            }
            for o in &a.orphans_removed {
                writeln!(out, "  removed data without a manifest: {o}")?;
            }
            for e in &a.errors {
                writeln!(out, "  ERROR {e}")?;
            }
        }
    }
    Ok(())
}
