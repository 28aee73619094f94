//! `pgbackd rollback`: the database `restore --replace` replaced, or the SQLite file
//! `restore-sqlite --replace` replaced, swapped back in.

use super::EXIT_OK;
use super::args::RollbackArgs;
use crate::jobs::JobContext;
use crate::jobs::refuse;
use crate::sqlite::{self, place};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;

pub async fn run(ctx: &JobContext, args: &RollbackArgs) -> Result<ExitCode> {
    if let Some(file) = &args.sqlite {
        return sqlite_file(ctx, file, args).await;
    }
    let db = ctx.config.select_database(args.database.as_deref())?;
    let target = args.target_database.clone().unwrap_or_else(|| db.name.clone());
    let t = args.server.overrides();
    let conn = crate::jobs::restore::server(&ctx.config, db, &t, &target);
    let r = crate::jobs::restore::rollback(&conn, &target, args.from.as_deref(), args.yes, ctx.now()).await?;
    say!("{} is {} again (the database that restore --replace replaced)", r.restored_from, r.database);
    if !r.set_aside_as.is_empty() {
        say!(
            "the database swapped out is kept as {}: drop it when you are sure (DROP DATABASE \"{}\")",
            r.set_aside_as,
            r.set_aside_as
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `rollback --sqlite FILE [--from KEPT]`: the kept copy (the newest `FILE.pre-*` by default)
/// back at FILE; the file swapped out kept as `FILE.rolled-back-TIME`.
async fn sqlite_file(ctx: &JobContext, file: &Path, args: &RollbackArgs) -> Result<ExitCode> {
    let target = std::path::absolute(file).with_context(|| format!("--sqlite {}", file.display()))?;
    let kept = place::kept_copies(&target);
    let from = match &args.from {
        Some(f) => {
            let f = std::path::absolute(f)?;
            if !f.is_file() {
                refuse!(
                    "{} is not a file: the kept copies of {} are: {}",
                    f.display(),
                    target.display(),
                    listed(&kept)
                );
            }
            f
        }
        None => match kept.last() {
            Some(k) => k.clone(),
            None => refuse!(
                "no kept copy of {} (FILE.pre-BACKUP, left by `pgbackd restore-sqlite --replace`) is beside it: \
                 nothing to roll back to",
                target.display()
            ),
        },
    };
    // the file's users, and those of the kept copy (a process still writing to the file a restore
    // replaced)
    let mut users = sqlite::users(&target);
    users.extend(sqlite::users(&from));
    users.sort_unstable();
    users.dedup();
    if !users.is_empty() && !args.yes {
        let pids: Vec<String> = users.iter().map(u32::to_string).collect();
        refuse!(
            "{} or {} is open in process {}: stop it first (it would go on using the swapped-out file), or add --yes",
            target.display(),
            from.display(),
            pids.join(", ")
        );
    }
    let stamp = ctx.now().format("%Y%m%dT%H%M%SZ");
    let aside = place::free_name(&sqlite::with_suffix(&target, &format!(".rolled-back-{stamp}")));
    let (t, f) = (target.clone(), from.clone());
    let swapped =
        tokio::task::spawn_blocking(move || place::rollback(&t, &f, &aside)).await.context("rollback thread")??;
    say!("{} is back at {} (the file that restore-sqlite --replace replaced)", from.display(), target.display());
    if let Some(a) = swapped {
        say!("the file swapped out is kept as {}: delete it when you are sure", a.display());
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn listed(kept: &[std::path::PathBuf]) -> String {
    if kept.is_empty() {
        return "none".into();
    }
    kept.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", ")
}
