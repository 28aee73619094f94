//! `pgbackd unlock`: the repository's locks, and the removal of those that protect nothing.

use super::EXIT_OK;
use super::args::UnlockArgs;
use crate::jobs::JobContext;
use anyhow::Result;
use std::process::ExitCode;

pub async fn run(ctx: &JobContext, args: &UnlockArgs) -> Result<ExitCode> {
    let locks = ctx.repository.locks(None).await?;
    if locks.is_empty() {
        say!("no locks");
        return Ok(ExitCode::from(EXIT_OK));
    }
    for (target, lock) in locks {
        let what = format!("{} lock {} of {} on {target}: {}", lock.kind.name(), lock.id, lock.subject, lock.holder());
        match (lock.stale(ctx.now(), ctx.config.locks.stale_after), args.all) {
            (Some(why), _) => {
                ctx.repository.remove_lock(&lock).await?;
                say!("removed stale {what} ({why})");
            }
            (None, true) => {
                ctx.repository.remove_lock(&lock).await?;
                say!("removed live {what}");
            }
            (None, false) => say!("kept live {what} (--all removes it: only if that process is not running)"),
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
