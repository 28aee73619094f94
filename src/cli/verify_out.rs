//! Output of `pgbackd verify` and `pgbackd test-restore`.

use crate::jobs::test_restore::TestRestored;
use crate::jobs::verify::Verified;
use anyhow::Result;
use std::io::Write;

pub fn print(results: &[Verified], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, results)?;
        writeln!(out)?;
        return Ok(());
    }
    for v in results {
        let scope = if v.mode == "quick" {
            "quick: manifest and objects present with their recorded sizes; content not read"
        } else {
            "deep: every byte read, every checksum and frame checked, archive read by pg_restore"
        };
        writeln!(out, "{} {} ({}): {}", if v.ok { "PASSED" } else { "FAILED" }, v.backup_id, v.database, scope)?;
        for t in &v.targets {
            match &t.error {
                None => writeln!(out, "  ok      target {}", t.target)?,
                Some(e) => writeln!(out, "  FAILED  target {}: {e}", t.target)?,
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    writeln!(out, "{} verified, {failed} failed", results.len())?;
    Ok(())
}

pub fn print_test_restore(t: &TestRestored) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} test restore of {} ({}) into {}: {:.1}s, {} bytes restored, {} tables checked",
        if t.ok { "PASSED" } else { "FAILED" },
        t.backup_id,
        t.database,
        t.scratch_database,
        t.restore_seconds,
        t.restored_bytes.unwrap_or(0),
        t.tables_checked
    )?;
    for m in &t.mismatches {
        let found = m.found.map(|n| n.to_string()).unwrap_or_else(|| "table missing".into());
        writeln!(out, "  ROW COUNT MISMATCH {}.{}: expected {}, found {found}", m.schema, m.table, m.expected)?;
    }
    for c in &t.checks {
        let got = c.got.clone().or_else(|| c.error.clone()).unwrap_or_else(|| "no row".into());
        writeln!(
            out,
            "  {}  check {}: got {got}, expected {}",
            if c.ok { "ok    " } else { "FAILED" },
            c.name,
            c.expect
        )?;
    }
    if let Some(e) = &t.error {
        writeln!(out, "  error: {e}")?;
    }
    writeln!(out, "  scratch database dropped")?;
    Ok(())
}
