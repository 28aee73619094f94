//! Running `pg_restore` (and psql for the globals): the verified stream on its stdin, or a
//! spooled file for `--jobs N`; which of its errors are harmless; hints for the ones that are not.

use super::{RestoreRequest, Selection};
use crate::config::{Connection, SpoolPlace};
use crate::jobs::backup::KILL_GRACE;
use crate::jobs::context::JobContext;
use crate::pg::{self, Tools};
use crate::pipeline::{self, Counter, ObjectReader, RawCheck};
use crate::process::{ChildSpec, Running};
use crate::progress;
use crate::repo::Manifest;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Runs pg_restore into `target`; returns warnings (errors of pg_restore that change nothing).
pub(super) async fn pg_restore(
    ctx: &JobContext,
    req: &RestoreRequest,
    selection: &Selection,
    tools: &Tools,
    archive: Archive<'_>,
    m: &Manifest,
    target: &Connection,
) -> Result<Vec<String>> {
    let what = m.describe();
    let cancel = &ctx.cancel;
    let mut spec = ChildSpec::new(tools.path("pg_restore")).arg("--no-password").arg(pg::dbname_arg(&target.dbname));
    if req.clean {
        spec = spec.args(["--clean", "--if-exists"]);
    }
    if req.no_owner {
        spec = spec.arg("--no-owner");
    }
    if req.no_privileges {
        spec = spec.arg("--no-privileges");
    }
    for s in &selection.schemas {
        spec = spec.arg(format!("--schema={s}"));
    }
    for t in &selection.tables {
        spec = spec.arg(format!("--table={t}"));
    }
    let moved = ctx.progress.clone();
    let _tracker = progress::track(&format!("restore {}", m.id), moved.clone(), ctx.interactive, Some(m.raw_bytes()));
    let ran = match archive {
        Archive::Spooled { file, jobs } => {
            const SPOOL_FD: i32 = 4;
            let spool = Arc::new(std::os::fd::OwnedFd::from(file));
            let spec =
                spec.arg(format!("--jobs={jobs}")).arg(format!("/proc/self/fd/{SPOOL_FD}")).pass_fd(spool, SPOOL_FD);
            let spec = pg::conn_env(spec, target).stdout(false);
            let child = Running::spawn(&spec)?;
            tokio::select! {
                r = child.wait() => r.map_err(anyhow::Error::from),
                _ = cancel.cancelled() => bail!("{what}: restore cancelled"),
            }
        }
        Archive::Stream(reader) => {
            let spec = pg::conn_env(spec, target);
            stream_into(&spec, reader, RawCheck::FramesOnly, selection.stream_until, cancel, &moved).await
        }
    };
    match ran {
        Ok(_) => Ok(Vec::new()),
        Err(e) if req.clean => match harmless_clean_errors(&e) {
            Some(n) => Ok(vec![format!(
                "pg_restore --clean could not drop {n} constraints of partitions, which went with their parent's \
                 (harmless: the row counts below are checked)"
            )]),
            None => Err(e.context(format!("pg_restore of {what} into {:?} failed", target.dbname))),
        },
        Err(e) => {
            let text = format!("{e:#}");
            let hint = match (
                text.contains("role") && text.contains("does not exist"),
                req.no_owner && req.no_privileges,
            ) {
                (true, false) => {
                    ": roles of the source server are missing here; restore them with --globals, or leave ownership \
                     and grants out with --no-owner --no-privileges"
                }
                (true, true) => {
                    ": an object names a role of the source server (a policy, a default privilege...): create that role \
                     here, or restore the roles with --globals"
                }
                _ => "",
            };
            Err(e.context(format!("pg_restore of {what} into {:?} failed{hint}", target.dbname)))
        }
    }
}

/// What pg_restore reads: the verified stream on its stdin, or a spool (for `--jobs N`).
pub(super) enum Archive<'a> {
    Stream(&'a Arc<ObjectReader>),
    /// For `pg_restore --jobs jobs`.
    Spooled {
        file: std::fs::File,
        jobs: u32,
    },
}

/// The archive of `m` in a file for a parallel pg_restore, which needs a seekable one: every
/// frame checked as it is written. The file has no name (gone when the last descriptor closes,
/// even after kill -9: decrypted data never outlives the restore), is in memory when `place`
/// allows (filling a disk file's page cache costs about twice as much) and is not fsynced
/// (nobody reads it after a crash).
pub(super) async fn spool(
    reader: &Arc<ObjectReader>,
    m: &Manifest,
    place: SpoolPlace,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<std::fs::File> {
    let in_memory = match place {
        SpoolPlace::Memory => true,
        SpoolPlace::Disk => false,
        SpoolPlace::Auto => available_memory().is_some_and(|free| m.data.raw_bytes <= free / 4),
    };
    let spool = if in_memory {
        let fd = rustix::fs::memfd_create("pgbackd-spool", rustix::fs::MemfdFlags::CLOEXEC)
            .context("creating the in-memory spool (restore.spool: memory)")?;
        std::fs::File::from(fd)
    } else {
        tempfile::tempfile().context("creating the spool file in TMPDIR (restore.spool: disk)")?
    };
    pipeline::spool_to_file(reader, &spool, cancel, moved).await?;
    // pg_dump wrote to a pipe and could not record where each table's data is: with the
    // offsets, pg_restore's workers seek instead of scanning the file for every table
    let blocks: Vec<u64> = m.dump().map(|d| d.blocks.iter().map(|b| b.raw_offset).collect()).unwrap_or_default();
    let set = pg::archive::set_data_offsets(&spool, &blocks).context("writing data offsets into the spool")?;
    tracing::debug!(bytes = m.data.raw_bytes, offsets = set, in_memory, "archive spooled for the parallel pg_restore");
    Ok(spool)
}

/// Memory this process can still use: the system's available memory, or less when its cgroup
/// (a container's memory limit) leaves less.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let system = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
        let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        // "max" (no limit) does not parse: the system's figure stands
        let max: u64 = std::fs::read_to_string(dir.join("memory.max")).ok()?.trim().parse().ok()?;
        let current: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
        Some(max.saturating_sub(current))
    });
    Some(cgroup.map_or(system, |c| c.min(system)))
}

/// With `--clean`, pg_restore cannot drop a partition's constraint that it inherited (dropping
/// the parent's already did); if those are all of its errors, how many.
fn harmless_clean_errors(e: &anyhow::Error) -> Option<usize> {
    let Some(crate::process::ProcessError::Failed { stderr_tail, code: 1, .. }) =
        e.chain().find_map(|c| c.downcast_ref::<crate::process::ProcessError>())
    else {
        return None;
    };
    let ignored: usize = stderr_tail
        .lines()
        .find_map(|l| l.split_once("errors ignored on restore: ").and_then(|(_, n)| n.trim().parse().ok()))?;
    let harmless =
        stderr_tail.lines().filter(|l| l.contains("ERROR:") && l.contains("cannot drop inherited constraint")).count();
    let errors = stderr_tail.lines().filter(|l| l.contains("ERROR:")).count();
    (ignored > 0 && harmless == ignored && errors == ignored).then_some(ignored)
}

/// Runs `spec` (pg_restore) with the verified archive of `reader` on its stdin, the first
/// `until` raw bytes of it when given (what a partial restore needs); returns its stderr. A
/// child that closes its stdin early (pg_restore has read all it needs) and succeeds is a
/// success; a stream that fails otherwise stops the child (its stderr tail goes into the
/// error); a child that fails is the error.
pub(crate) async fn stream_into(
    spec: &ChildSpec,
    reader: &Arc<ObjectReader>,
    check: RawCheck,
    until: Option<u64>,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<String> {
    let spec = spec.clone().stdin(true).stdout(false);
    let mut child = Running::spawn(&spec)?;
    let mut stdin = child.take_stdin().with_context(|| format!("{} has no stdin", spec.display()))?;
    let streamed = match until {
        Some(limit) => pipeline::restore_prefix(reader, &mut stdin, limit, cancel, moved).await,
        None => pipeline::restore_stream(reader, &mut stdin, check, cancel, moved).await,
    };
    let _ = stdin.shutdown().await;
    drop(stdin);
    // pg_restore stopped reading early: it had what it needed, or it failed (then its exit
    // says so)
    let finished = match &streamed {
        Ok(()) => true,
        Err(e) => broken_pipe(e),
    };
    if finished {
        let program = spec.program_name().to_owned();
        // dropping the child on cancellation kills it
        return tokio::select! {
            r = child.wait() => Ok(r?),
            _ = cancel.cancelled() => bail!("{program} was stopped: the restore was cancelled"),
        };
    }
    let e = streamed.expect_err("not finished");
    let tail = child.stderr_tail();
    let _ = child.terminate(KILL_GRACE).await;
    Err(if tail.trim().is_empty() {
        e
    } else {
        e.context(format!("{}'s stderr ends with:\n{}", spec.program_name(), tail.trim_end()))
    })
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Replays `pg_dumpall --globals-only` with psql into the maintenance database. Errors such as
/// "role already exists" are expected on a server that has them; others are returned as warnings.
pub(super) async fn apply_globals(tools: &Tools, sql: &[u8], target: &Connection) -> Result<Vec<String>> {
    // on psql's stdin: the roles (with their password hashes) never touch a file
    let spec = pg::conn_env(
        ChildSpec::new(tools.path("psql"))
            .args(["--no-psqlrc", "--quiet", "--no-password", "-v", "ON_ERROR_STOP=0", "--file", "-"])
            .arg(pg::dbname_arg("postgres")),
        target,
    )
    .stdin(true)
    .stdout(false);
    let mut running = Running::spawn(&spec)?;
    let mut stdin = running.take_stdin().context("psql has no stdin")?;
    let written = stdin.write_all(sql).await;
    drop(stdin);
    let stderr = running.wait().await?;
    written.context("writing the globals to psql")?;
    let warnings: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .map(|l| format!("globals: {}", l.trim()))
        .collect();
    Ok(warnings)
}
