//! `pgbackd retention`: one retention job per subject, and the plans as a table with the reasons.

use super::args::RetentionArgs;
use super::{EXIT_JOB_FAILED, EXIT_OK, failure, run_job};
use crate::jobs::JobContext;
use crate::jobs::kind::JobKind;
use crate::jobs::retention::RetentionRun;
use crate::jobs::run::{JobSpec, Produced};
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use crate::units::bytes as human_bytes;
use anyhow::Result;
use std::io::Write;
use std::process::ExitCode;

/// Every configured database, file set and configuration set (or the one `--database` names).
pub async fn run(ctx: &JobContext, args: &RetentionArgs) -> Result<ExitCode> {
    let config = &ctx.config;
    let at = match &args.at {
        Some(t) => Some(crate::jobs::retention::parse_at(t).map_err(|e| anyhow::anyhow!("--at: {e}"))?),
        None => None,
    };
    let subjects: Vec<Subject> = match &args.database {
        Some(d) => vec![Subject::Database(config.select_database(Some(d))?.name.clone())],
        None => {
            let mut subjects = crate::jobs::context::configured_subjects(config);
            // databases that are not configured but hold safety backups (restore --clean targets)
            for m in ctx.repository.list(None).await? {
                if m.trigger == Trigger::SafetyBeforeRestore && !subjects.contains(&m.subject) {
                    subjects.push(m.subject.clone());
                }
            }
            subjects
        }
    };
    let mut runs = Vec::new();
    for subject in subjects {
        let mut spec = JobSpec::new(JobKind::Retention, subject, Trigger::Manual);
        spec.params.dry_run = args.dry_run;
        spec.params.at = at;
        let run = run_job(ctx, spec).await;
        match run.produced {
            Produced::Retention(r) => runs.push(*r),
            _ => return Err(failure(run)),
        }
    }
    print(&runs, args.json)?;
    let failed = runs.iter().any(|r| r.applied.as_ref().is_some_and(|a| !a.errors.is_empty()));
    Ok(ExitCode::from(if failed { EXIT_JOB_FAILED } else { EXIT_OK }))
}

fn age(d: chrono::Duration) -> String {
    match d.num_hours() {
        h if h < 0 => "future".into(),
        h if h < 48 => format!("{h}h"),
        h => format!("{}d", h / 24),
    }
}

pub fn print(runs: &[RetentionRun], json: bool) -> Result<()> {
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, runs)?;
        writeln!(out)?;
        return Ok(());
    }
    for r in runs {
        let mode = if r.dry_run { "plan (dry run, nothing deleted)" } else { "plan, applied" };
        writeln!(out, "{} as of {}: {mode}", r.subject.describe(), r.at.format("%Y-%m-%d %H:%M:%S UTC"))?;
        if let Some(s) = &r.skipped {
            writeln!(out, "  SKIPPED: {s}")?;
            continue;
        }
        if r.decisions.is_empty() {
            writeln!(out, "  no backups")?;
            print_wal(&mut out, r)?;
            continue;
        }
        writeln!(out, "  {:<36} {:>6} {:<12} {:>10}  {:<6} REASONS", "ID", "AGE", "KIND", "SIZE", "ACTION")?;
        for d in &r.decisions {
            writeln!(
                out,
                "  {:<36} {:>6} {:<12} {:>10}  {:<6} {}",
                d.id,
                age(r.at - d.started_at),
                if matches!(r.subject, Subject::Cluster(_)) { "base" } else { d.kind.name() },
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
            for o in &a.leftovers_removed {
                writeln!(out, "  removed an unfinished write: {o}")?;
            }
            for w in &a.warnings {
                writeln!(out, "  warning: {w}")?;
            }
            for e in &a.errors {
                writeln!(out, "  ERROR {e}")?;
            }
        }
        print_wal(&mut out, r)?;
    }
    Ok(())
}

/// A cluster's WAL: per target and archive, what is deleted and why, and what was.
fn print_wal(out: &mut impl Write, r: &RetentionRun) -> Result<()> {
    let Some(w) = &r.wal else { return Ok(()) };
    for a in &w.archives {
        let action = match (&a.first_deleted, &a.last_deleted) {
            (Some(first), Some(last)) => format!(
                "{} {} files ({}), {first} .. {last}",
                if r.dry_run { "would delete" } else { "DELETE" },
                a.files_to_delete,
                human_bytes(a.bytes_to_delete)
            ),
            _ => "delete nothing".into(),
        };
        writeln!(
            out,
            "  WAL of system {} on {}: keep {} files; {action}: {}",
            a.system_identifier, a.target, a.files_kept, a.reason
        )?;
    }
    for e in &w.errors {
        writeln!(out, "  WAL ERROR {e}")?;
    }
    if let Some(d) = &w.deleted
        && d.files > 0
    {
        writeln!(out, "  deleted {} WAL files, freed {}", d.files, human_bytes(d.bytes))?;
    }
    Ok(())
}
