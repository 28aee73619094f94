//! `pgbackd rollback`: the database `restore --replace` replaced, swapped back in.

use super::EXIT_OK;
use super::args::RollbackArgs;
use crate::jobs::JobContext;
use anyhow::Result;
use std::process::ExitCode;

pub async fn run(ctx: &JobContext, args: &RollbackArgs) -> Result<ExitCode> {
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
