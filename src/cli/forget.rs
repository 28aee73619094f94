//! `pgbackd forget ID`: deletes one backup on purpose, a damaged one included; shows the plan
//! unless given `--yes`, and refuses what a reader holds or an incremental needs.

use super::args::ForgetArgs;
use super::{EXIT_JOB_FAILED, EXIT_OK};
use crate::jobs::JobContext;
use crate::units;
use anyhow::Result;
use std::process::ExitCode;

pub async fn run(ctx: &JobContext, args: &ForgetArgs) -> Result<ExitCode> {
    let f = crate::jobs::retention::forget(ctx, &args.backup_id, args.yes).await?;
    let on = f.targets.join(", ");
    match &f.backup {
        Ok(l) => {
            let m = &l.manifest;
            say!(
                "{} ({}, started {}, {} stored) on {on}",
                m.describe(),
                m.kind.name(),
                m.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                units::bytes(m.stored_bytes())
            );
        }
        Err(problem) => say!("DAMAGED backup {} of {} on {on}: {problem}", f.id, f.subject.describe()),
    }
    if let Some(why) = f.refusal() {
        tell!("refused: {why}");
        return Ok(ExitCode::from(EXIT_JOB_FAILED));
    }
    let Some(deleted) = &f.deleted else {
        say!("would delete it from {on}; run again with --yes to delete it");
        return Ok(ExitCode::from(EXIT_OK));
    };
    let mut failed = false;
    for (target, result) in deleted {
        match result {
            Ok(bytes) => say!("deleted from {target} ({})", units::bytes(*bytes)),
            Err(e) => {
                failed = true;
                tell!("could not delete from {target}: {e:#}; run again to finish");
            }
        }
    }
    Ok(ExitCode::from(if failed { EXIT_JOB_FAILED } else { EXIT_OK }))
}
