//! `backup-files`, `list-files`, `restore-files`: file and configuration backups
//! ([`crate::fileset`]).

use super::{Cli, EXIT_JOB_FAILED, EXIT_OK, FilesArgs, ListFilesArgs, RestoreFilesArgs, load_config};
use crate::config::Config;
use crate::jobs::JobFailed;
use crate::repo::manifest::Trigger;
use anyhow::{Context, Result};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub async fn backup(cli: &Cli, args: &FilesArgs, cancel: &CancellationToken) -> Result<ExitCode> {
    let config = load_config(cli)?;
    let (kind, set) = file_set(&config, &args.name, args.configs)?;
    let started = chrono::Utc::now();
    let result = crate::fileset::backup(&config, set, kind, Trigger::Manual, cancel, started).await;
    let run_id = crate::jobs::report::new_run_id();
    crate::jobs::report::record(
        &config.reports.dir,
        &crate::jobs::report::Report::of_file_backup(&run_id, "manual", started, kind, &set.name, &result),
    );
    let m = result.map_err(|e| anyhow::Error::new(JobFailed(e)))?;
    println!("{}", m.id);
    eprintln!(
        "{}: {} files, {} bytes, {} stored bytes, outcome {}",
        m.id, m.file_count, m.total_bytes, m.data.stored_bytes, m.outcome
    );
    for p in &m.problems {
        eprintln!("  {} {}: {}", if p.error { "ERROR  " } else { "WARNING" }, p.path, p.problem);
    }
    Ok(ExitCode::from(if m.outcome == "success" { EXIT_OK } else { EXIT_JOB_FAILED }))
}

pub async fn list(cli: &Cli, args: &ListFilesArgs) -> Result<ExitCode> {
    let (config, repo) = args.keys.open(cli).await?;
    let (kind, _) = file_set(&config, &args.set.name, args.set.configs)?;
    let targets = crate::fileset::targets(&config, kind, &repo)?;
    let list = crate::fileset::list(&targets, kind, &args.set.name).await?;
    if args.json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "set": m.set, "kind": m.kind, "started_at": m.started_at,
                    "outcome": m.outcome, "files": m.file_count, "bytes": m.total_bytes,
                    "incremental": m.incremental, "holders": m.holders,
                    "stored_bytes": m.data.stored_bytes, "problems": m.problems, "targets": m.targets,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<40} {:<9} {:>8} {:>14} {:>14}", "ID", "OUTCOME", "FILES", "BYTES", "STORED");
        for m in &list {
            println!(
                "{:<40} {:<9} {:>8} {:>14} {:>14}",
                m.id, m.outcome, m.file_count, m.total_bytes, m.data.stored_bytes
            );
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

pub async fn restore(cli: &Cli, args: &RestoreFilesArgs, cancel: &CancellationToken) -> Result<ExitCode> {
    let (config, repo) = args.keys.open(cli).await?;
    let (kind, _) = file_set(&config, &args.set.name, args.set.configs)?;
    let targets = crate::fileset::targets(&config, kind, &repo)?;
    let list = crate::fileset::list(&targets, kind, &args.set.name).await?;
    let m = match &args.backup_id {
        Some(id) => list.iter().find(|m| &m.id == id).with_context(|| {
            format!("no file backup {id} of {} (see pgbackd list-files --name {})", args.set.name, args.set.name)
        })?,
        None => list.last().with_context(|| format!("{} has no file backups yet", args.set.name))?,
    };
    let req = crate::fileset::restore::Request {
        to: args.to.clone(),
        globs: args.paths.clone(),
        dry_run: args.dry_run,
        overwrite: args.overwrite,
    };
    let r = crate::fileset::restore::run(m, &list, &targets, &repo, &req, cancel)
        .await
        .map_err(|e| anyhow::Error::new(JobFailed(e)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
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

/// The source set `name` of `files:` (or `configs:`).
fn file_set<'c>(
    config: &'c Config,
    name: &str,
    configs: bool,
) -> Result<(crate::fileset::SetKind, &'c crate::config::FileSetConfig)> {
    let (kind, sets, key) = if configs {
        (crate::fileset::SetKind::Configs, &config.configs, "configs")
    } else {
        (crate::fileset::SetKind::Files, &config.files, "files")
    };
    let set = sets.iter().find(|s| s.name == name).with_context(|| {
        let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no source set {name:?} under {key}: (configured: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        )
    })?;
    Ok((kind, set))
}
