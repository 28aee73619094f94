//! `pgbackd verify` and `pgbackd test-restore`.

use super::args::{CatArgs, VerifyArgs};
use super::{EXIT_JOB_FAILED, EXIT_OK, failure, run_job};
use crate::config::VerifyMode;
use crate::jobs::JobContext;
use crate::jobs::kind::JobKind;
use crate::jobs::run::{JobSpec, Produced, Select};
use crate::jobs::test_restore::TestRestored;
use crate::jobs::verify::Verified;
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use anyhow::{Result, bail};
use std::io::Write;
use std::process::ExitCode;

/// One verification job per subject: the backup named, the newest of each configured database
/// (`--latest`), or every backup (`--all`), of `--database` or all.
pub async fn backups(ctx: &JobContext, args: &VerifyArgs) -> Result<ExitCode> {
    if args.wal {
        return wal(ctx, args).await;
    }
    let database = match &args.database {
        Some(d) => Some(super::subject_arg(&ctx.config, d)?),
        None => None,
    };
    let jobs: Vec<(Subject, Select)> = match (&args.backup_id, args.latest) {
        (Some(id), _) => vec![(ctx.repository.subject_of(id).await?, Select::Id(id.clone()))],
        (None, true) => match database {
            Some(s) => vec![(s, Select::Latest)],
            None => ctx
                .config
                .databases
                .iter()
                .map(|d| Subject::Database(d.name.clone()))
                .chain(ctx.config.sqlite.iter().map(|s| Subject::Sqlite(s.name.clone())))
                .chain(ctx.config.wal.iter().map(|w| Subject::Cluster(w.name.clone())))
                .map(|s| (s, Select::Latest))
                .collect(),
        },
        (None, false) => match database {
            Some(s) => vec![(s, Select::All)],
            None => ctx.repository.subjects().await?.into_iter().map(|s| (s, Select::All)).collect(),
        },
    };
    let mode = if args.deep { VerifyMode::Deep } else { VerifyMode::Quick };
    let (mut results, mut leftovers, mut wals) = (Vec::new(), Vec::new(), Vec::new());
    for (subject, select) in jobs {
        let mut spec = JobSpec::new(JobKind::Verification, subject, Trigger::Manual);
        spec.params.select = select;
        spec.params.verify_mode = Some(mode);
        let run = run_job(ctx, spec).await;
        match run.produced {
            Produced::Verified(v) => {
                results.extend(v.backups);
                leftovers.extend(v.leftovers);
                wals.extend(v.wal);
            }
            _ => return Err(failure(run)),
        }
    }
    if results.is_empty() {
        bail!("no backups to verify in {}", ctx.repository.describe());
    }
    if args.json {
        let mut out = crate::secret::Redacting(std::io::stdout().lock());
        match wals.is_empty() {
            true => serde_json::to_writer_pretty(&mut out, &results)?,
            false => serde_json::to_writer_pretty(&mut out, &serde_json::json!({"backups": results, "wal": wals}))?,
        }
        writeln!(out)?;
    } else {
        print(&results, false)?;
        for w in &wals {
            print_wal(w)?;
        }
    }
    if !leftovers.is_empty() {
        let grace = crate::units::duration(ctx.config.retention.orphan_grace);
        tell!(
            "{} of stopped processes (not backups; the next backup or retention removes them once they \
             are older than retention.orphan_grace, {grace}):",
            crate::units::count(leftovers.len(), "leftover")
        );
        for l in &leftovers {
            let since = l.since.map(|t| t.format(" since %Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default();
            tell!("  {}:{} ({}){since}", l.target, l.key, l.what.describe());
        }
    }
    let ok = results.iter().all(|r| r.ok) && wals.iter().all(|w| w.ok());
    Ok(ExitCode::from(if ok { EXIT_OK } else { EXIT_JOB_FAILED }))
}

/// `verify --wal`: one verification job on the cluster's WAL archive.
async fn wal(ctx: &JobContext, args: &VerifyArgs) -> Result<ExitCode> {
    let name = crate::wal::settings(&ctx.config)?.name.clone();
    let mut spec = JobSpec::new(JobKind::Verification, Subject::Cluster(name), Trigger::Manual);
    spec.params.verify_mode = Some(if args.deep { VerifyMode::Deep } else { VerifyMode::Quick });
    spec.params.wal_only = true;
    let run = run_job(ctx, spec).await;
    let Produced::Verified(v) = &run.produced else { return Err(failure(run)) };
    let Some(w) = &v.wal else { return Err(failure(run)) };
    if args.json {
        let mut out = crate::secret::Redacting(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, w)?;
        writeln!(out)?;
    } else {
        print_wal(w)?;
    }
    Ok(ExitCode::from(if w.ok() { EXIT_OK } else { EXIT_JOB_FAILED }))
}

pub async fn test_restore(ctx: &JobContext, args: &CatArgs) -> Result<ExitCode> {
    let m = super::restore::named_backup(ctx, args.backup_id.as_deref(), args.database.as_deref()).await?;
    let mut spec = JobSpec::new(JobKind::TestRestore, m.subject.clone(), Trigger::Manual);
    spec.params.select = Select::Id(m.id.clone());
    let run = run_job(ctx, spec).await;
    let Produced::TestRestore(t) = &run.produced else { return Err(failure(run)) };
    print_test_restore(t)?;
    Ok(ExitCode::from(if t.ok { EXIT_OK } else { EXIT_JOB_FAILED }))
}

pub fn print(results: &[Verified], json: bool) -> Result<()> {
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, results)?;
        writeln!(out)?;
        return Ok(());
    }
    for v in results {
        let scope = match (v.mode, &v.subject) {
            (VerifyMode::Quick, _) => "quick: manifest and objects present with their recorded sizes; content not read",
            (VerifyMode::Deep, Subject::Database(_)) => {
                "deep: every byte read, every checksum and frame checked, archive read by pg_restore"
            }
            (VerifyMode::Deep, Subject::Cluster(_)) => {
                "deep: every byte read and checked, extracted and checked by pg_verifybackup with its WAL"
            }
            (VerifyMode::Deep, Subject::Files(_) | Subject::Configs(_)) => {
                "deep: every byte read, every checksum and frame checked, every file's SHA-256 checked"
            }
            (VerifyMode::Deep, Subject::Sqlite(_)) => {
                "deep: every byte read and checked, the file rebuilt and passing integrity_check, foreign_key_check \
                 and its row counts"
            }
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
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
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
    let removed = if t.database.starts_with("sqlite:") { "scratch file removed" } else { "scratch database dropped" };
    writeln!(out, "  {removed}")?;
    Ok(())
}

/// The WAL archive's verification, per target, in words.
fn print_wal(w: &crate::wal::check::WalVerification) -> Result<()> {
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
    let scope = match w.mode {
        VerifyMode::Quick => "quick: every segment present; content not read",
        VerifyMode::Deep => "deep: every file read and checked against its SHA-256",
    };
    writeln!(out, "{} WAL archive of cluster {} ({scope})", if w.ok() { "PASSED" } else { "FAILED" }, w.cluster)?;
    for t in &w.targets {
        let range = match (&t.first_segment, &t.last_segment) {
            (Some(a), Some(b)) => format!("{a} .. {b} on timeline {}", t.timeline),
            _ => "no segments".into(),
        };
        writeln!(
            out,
            "  {}  target {} (system {}): {} files, {range}",
            if t.ok { "ok    " } else { "FAILED" },
            t.target,
            t.system_identifier,
            t.files
        )?;
        for problem in t.gaps.iter().chain(&t.damaged) {
            writeln!(out, "          {problem}")?;
        }
    }
    let problems = if w.targets.is_empty() { w.failures() } else { w.errors.clone() };
    for e in problems {
        writeln!(out, "  FAILED  {e}")?;
    }
    Ok(())
}
