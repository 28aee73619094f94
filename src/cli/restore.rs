//! `pgbackd restore`, `restore-files`, `restore-sqlite` and `cat`.

use super::args::{CatArgs, RestoreArgs, RestoreFilesArgs, RestoreSqliteArgs};
use super::{EXIT_JOB_FAILED, EXIT_OK, JobFailed, failure, run_job};
use crate::jobs::JobContext;
use crate::jobs::kind::JobKind;
use crate::jobs::restore::{RestoreReport, RestoreRequest};
use crate::jobs::run::{JobSpec, Produced, RestoreTo, Select};
use crate::repo::manifest::Trigger;
use crate::repo::{Manifest, Subject};
use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// The backup a command names: its id, else the newest of `--database` (or of the only
/// configured database).
pub async fn named_backup(ctx: &JobContext, id: Option<&str>, database: Option<&str>) -> Result<Manifest> {
    match id {
        Some(id) => ctx.repository.find(id).await,
        None => {
            let subject = match database {
                Some(d) => super::subject_arg(&ctx.config, d)?,
                None => Subject::Database(ctx.config.select_database(None)?.name.clone()),
            };
            ctx.repository
                .latest(&subject, None)
                .await?
                .with_context(|| format!("{} has no backups yet in {}", subject.describe(), ctx.repository.describe()))
        }
    }
}

pub async fn database(ctx: &JobContext, args: &RestoreArgs) -> Result<ExitCode> {
    let m = named_backup(ctx, args.backup_id.as_deref(), args.database.as_deref()).await?;
    let req = RestoreRequest {
        target_database: args.target_database.clone(),
        target: args.server.overrides(),
        create: args.create,
        clean: args.clean,
        replace: args.replace,
        yes: args.yes,
        jobs: args.jobs,
        schemas: args.schemas.clone(),
        tables: args.tables.clone(),
        no_owner: args.no_owner,
        no_privileges: args.no_privileges,
        encoding: args.encoding.clone(),
        locale: args.locale.clone(),
        icu_locale: args.icu_locale.clone(),
        globals: args.globals,
        dry_run: args.dry_run,
        keep_failed: args.keep_failed,
    };
    let mut spec = JobSpec::new(JobKind::Restore, m.subject.clone(), Trigger::Manual);
    spec.params.select = Select::Id(m.id.clone());
    spec.params.restore = Some(RestoreTo::Database(Box::new(req)));
    let run = run_job(ctx, spec).await;
    let Produced::Restore(report) = &run.produced else { return Err(failure(run)) };
    print(report, args.json)?;
    Ok(ExitCode::from(if report.matches() { EXIT_OK } else { EXIT_JOB_FAILED }))
}

pub async fn files(ctx: &JobContext, args: &RestoreFilesArgs) -> Result<ExitCode> {
    let (_, subject) = super::backup::set_subject(&args.set);
    crate::jobs::file_backup::set_of(&ctx.config, &subject)?;
    let name = &args.set.name;
    let m = match &args.backup_id {
        Some(id) => ctx
            .repository
            .find_in(Some(&subject), id)
            .await
            .with_context(|| format!("no file backup {id} of {name} (see pgbackd list-files --name {name})"))?,
        None => {
            ctx.repository.latest(&subject, None).await?.with_context(|| format!("{name} has no file backups yet"))?
        }
    };
    let req = crate::fileset::restore::Request {
        to: args.to.clone(),
        globs: args.paths.clone(),
        dry_run: args.dry_run,
        overwrite: args.overwrite,
    };
    let mut spec = JobSpec::new(JobKind::Restore, subject, Trigger::Manual);
    spec.params.select = Select::Id(m.id.clone());
    spec.params.restore = Some(RestoreTo::Directory(req));
    let run = run_job(ctx, spec).await;
    let Produced::FilesRestored(r) = &run.produced else { return Err(failure(run)) };
    if args.json {
        say!("{}", serde_json::to_string_pretty(r.as_ref())?);
    } else {
        say!(
            "{} {}: {} files ({} bytes), {} directories, {} symlinks, {} hard links; {} files checked against their SHA-256",
            if r.dry_run { "checked (dry run)" } else { "restored into" },
            r.to,
            r.files,
            r.bytes,
            r.directories,
            r.symlinks,
            r.hard_links,
            r.checked
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pgbackd restore-sqlite`.
pub async fn sqlite(ctx: &JobContext, args: &RestoreSqliteArgs) -> Result<ExitCode> {
    let file = ctx.config.select_sqlite(args.name.as_deref())?;
    let subject = Subject::Sqlite(file.name.clone());
    let m = match &args.backup_id {
        Some(id) => ctx.repository.find_in(Some(&subject), id).await.with_context(|| {
            format!("no backup {id} of SQLite database {} (see pgbackd list --database {subject})", file.name)
        })?,
        None => ctx
            .repository
            .latest(&subject, None)
            .await?
            .with_context(|| format!("SQLite database {} has no backups yet", file.name))?,
    };
    let mut spec = JobSpec::new(JobKind::Restore, subject, Trigger::Manual);
    spec.params.select = Select::Id(m.id.clone());
    spec.params.restore =
        Some(RestoreTo::Sqlite(crate::jobs::restore::sqlite::Request { to: args.to.clone(), replace: args.replace }));
    let run = run_job(ctx, spec).await;
    let Produced::SqliteRestored(r) = &run.produced else { return Err(failure(run)) };
    if args.json {
        say!("{}", serde_json::to_string_pretty(r.as_ref())?);
        return Ok(ExitCode::from(EXIT_OK));
    }
    say!(
        "restored {} to {}: {} bytes, journal mode {}; integrity_check, foreign_key_check and the rows of {} \
         tables checked",
        r.backup_id,
        r.path,
        r.bytes,
        r.journal_mode,
        r.tables_checked
    );
    if let Some(k) = &r.kept {
        say!(
            "the database that was there is kept as {k}: `pgbackd rollback --sqlite {}` swaps it back; delete it \
             when you are sure",
            r.path
        );
    }
    if !r.in_use_by.is_empty() {
        let pids: Vec<String> = r.in_use_by.iter().map(u32::to_string).collect();
        tell!("warning: process {} had the replaced file open and goes on using it: restart it", pids.join(", "));
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `pgbackd cat`: the raw archive on stdout, verified frame by frame.
pub async fn cat(ctx: &JobContext, args: &CatArgs) -> Result<ExitCode> {
    if std::io::stdout().is_terminal() {
        bail!("refusing to write a binary archive to a terminal: redirect it, e.g. pgbackd cat ID > backup.dump");
    }
    let m = named_backup(ctx, args.backup_id.as_deref(), args.database.as_deref()).await?;
    let mut out = tokio::io::stdout();
    crate::jobs::restore::cat(ctx, &m, &mut out)
        .await
        .context("writing the archive to stdout")
        .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
    Ok(ExitCode::from(EXIT_OK))
}

pub fn print(r: &RestoreReport, json: bool) -> Result<()> {
    let mut out = crate::secret::Redacting(std::io::stdout().lock());
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
    if !r.selected.is_empty() {
        writeln!(out, "  restored only: {}", r.selected.join(", "))?;
    }
    if let Some(kept) = &r.kept_as {
        writeln!(
            out,
            "  replaced the database; the old one is kept as {kept} (drop it when done, or `pgbackd rollback` swaps it back)"
        )?;
    } else if r.created {
        writeln!(out, "  created the target database")?;
    }
    if let Some(id) = &r.safety_backup_id {
        writeln!(out, "  safety backup of the target taken first: {id}")?;
    }
    for w in &r.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    if !r.property_differences.is_empty() {
        writeln!(out, "  DATABASE PROPERTIES DIFFER from the backup:")?;
        for d in &r.property_differences {
            writeln!(out, "    {d}")?;
        }
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
