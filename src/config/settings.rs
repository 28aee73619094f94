//! Readers of the settings sections: `compression:`, `backup:`, `encryption:`,
//! `verification:`, `daemon:`, `reports:`, `logging:`, `wal:`.

use super::model::*;
use super::reader::{ByteSize, Dur, MapReader};
use std::path::PathBuf;
use std::time::Duration;

pub(super) fn read_compression(top: &mut MapReader<'_, '_>) -> Option<Compression> {
    let mut m = top.map("compression")?;
    let enabled = m.opt::<bool>("enabled").unwrap_or(true);
    let level_node = m.node("level");
    let level = match level_node {
        Some(node) => {
            let path = m.child_path("level");
            let level = m.ctx().read::<i32>(node, &path).unwrap_or(DEFAULT_LEVEL);
            if !(-7..=22).contains(&level) || level == 0 {
                m.ctx().error(
                    &path,
                    format!("zstd level {level} is out of range: use 1-19 (20-22 need much memory; -7..-1 are faster)"),
                    Some(node.loc),
                );
            }
            level
        }
        None => DEFAULT_LEVEL,
    };
    let threads = m.opt::<usize>("threads").unwrap_or(0);
    m.finish();
    Some(Compression { enabled, level, threads })
}

pub(super) fn read_backup(top: &mut MapReader<'_, '_>) -> Option<BackupSettings> {
    let mut m = top.map("backup")?;
    let ctx = m.ctx();
    let segment_size = m.opt::<ByteSize>("segment_size").map(|b| b.0).unwrap_or(DEFAULT_SEGMENT_SIZE);
    if !((64 << 10)..=(256 << 20)).contains(&segment_size) {
        ctx.error(
            &m.child_path("segment_size"),
            "must be between 64KiB and 256MiB (4MiB is a good default)",
            Some(m.loc_of("segment_size")),
        );
    }
    let min_size = m.opt::<ByteSize>("min_size").map(|b| b.0).unwrap_or(1024);
    let min_size_ratio = m.opt::<f64>("min_size_ratio").unwrap_or(0.1);
    if !(0.0..=1.0).contains(&min_size_ratio) {
        ctx.error(&m.child_path("min_size_ratio"), "must be between 0 (off) and 1", Some(m.loc_of("min_size_ratio")));
    }
    let row_counts = m.opt::<RowCounts>("row_counts").unwrap_or(RowCounts::Exact);
    let globals = m.opt::<bool>("globals").unwrap_or(true);
    let timeout = m.opt::<Dur>("timeout").map(|d| d.0).unwrap_or(Duration::from_secs(12 * 3600));
    let stall_timeout = m.opt::<Dur>("stall_timeout").map(|d| d.0).unwrap_or(Duration::from_secs(600));
    let incremental_segment_size = m.opt::<ByteSize>("incremental_segment_size").map(|b| b.0).unwrap_or(8 << 20);
    let incremental_slack = m.opt::<ByteSize>("incremental_slack").map(|b| b.0).unwrap_or(4 << 20);
    if !((1 << 20)..=(64 << 20)).contains(&incremental_segment_size) {
        ctx.error(
            &m.child_path("incremental_segment_size"),
            "must be between 1MiB and 64MiB (8MiB is a good default)",
            Some(m.loc_of("incremental_segment_size")),
        );
    }
    if incremental_slack > (256 << 20) {
        ctx.error(&m.child_path("incremental_slack"), "must be at most 256MiB", Some(m.loc_of("incremental_slack")));
    }
    let incremental_base = m.opt::<IncrementalBase>("incremental_base").unwrap_or(IncrementalBase::Previous);
    let max_chain = m.opt::<u32>("max_chain").unwrap_or(DEFAULT_MAX_CHAIN);
    if !(1..=MAX_CHAIN_LIMIT).contains(&max_chain) {
        ctx.error(
            &m.child_path("max_chain"),
            format!(
                "must be between 1 and {MAX_CHAIN_LIMIT} (incrementals after a full before the next incremental \
                 request takes a full; {DEFAULT_MAX_CHAIN} is a good default)"
            ),
            Some(m.loc_of("max_chain")),
        );
    }
    for (key, d) in [("timeout", timeout), ("stall_timeout", stall_timeout)] {
        if d.is_zero() {
            ctx.error(&m.child_path(key), "must be greater than zero", Some(m.loc_of(key)));
        }
    }
    m.finish();
    Some(BackupSettings {
        segment_size,
        min_size,
        min_size_ratio,
        row_counts,
        globals,
        timeout,
        stall_timeout,
        incremental_segment_size,
        incremental_slack,
        incremental_base,
        max_chain,
    })
}

pub(super) fn read_encryption(top: &mut MapReader<'_, '_>) -> EncryptionConfig {
    let Some(mut m) = top.map("encryption") else { return EncryptionConfig::default() };
    let ctx = m.ctx();
    let enabled = m.opt::<bool>("enabled").unwrap_or(false);
    let recipients = m.opt::<Vec<String>>("recipients").unwrap_or_default();
    let recipients_file = m.opt::<PathBuf>("recipients_file");
    let identity_file = m.opt::<PathBuf>("identity_file");
    let key_file = m.opt::<PathBuf>("key_file");
    let passphrase_work_factor = m.opt::<u8>("passphrase_work_factor").unwrap_or(16);
    if !(10..=22).contains(&passphrase_work_factor) {
        ctx.error(
            &m.child_path("passphrase_work_factor"),
            "must be between 10 and 22",
            Some(m.loc_of("passphrase_work_factor")),
        );
    }
    let strict = m.opt::<bool>("strict").unwrap_or(false);
    for path in [&identity_file, &key_file].into_iter().flatten() {
        ctx.note_secret_file(path);
    }
    let cfg = EncryptionConfig {
        enabled,
        recipients,
        recipients_file,
        identity_file,
        key_file,
        passphrase_work_factor,
        strict,
        extra_identity_files: Vec::new(),
    };
    // the key material itself: what backups would be encrypted to, and what reads them
    for issue in cfg.check() {
        let loc = Some(m.loc_of(issue.key));
        ctx.error(&m.child_path(issue.key), issue.message, loc);
    }
    m.finish();
    cfg
}
pub(super) fn read_locks(top: &mut MapReader<'_, '_>) -> LockSettings {
    let Some(mut m) = top.map("locks") else { return LockSettings::default() };
    let d = LockSettings::default();
    let stale_after = m.opt::<Dur>("stale_after").map_or(d.stale_after, |x| x.0);
    let wait = m.opt::<Dur>("wait").map_or(d.wait, |x| x.0);
    if stale_after < std::time::Duration::from_secs(180) {
        m.ctx().error(
            &m.child_path("stale_after"),
            "must be at least 3m (held locks are refreshed every minute)",
            Some(m.loc_of("stale_after")),
        );
    }
    m.finish();
    LockSettings { stale_after, wait }
}

pub(super) fn read_verification(top: &mut MapReader<'_, '_>) -> Option<VerificationSettings> {
    let mut m = top.map("verification")?;
    let mode = m.opt::<VerifyMode>("mode").unwrap_or(VerifyMode::Deep);
    let scope = m.opt::<VerifyScope>("scope").unwrap_or(VerifyScope::Unverified);
    m.finish();
    Some(VerificationSettings { mode, scope })
}

pub(super) fn read_daemon(top: &mut MapReader<'_, '_>) -> Option<DaemonSettings> {
    let mut m = top.map("daemon")?;
    let max_concurrent_jobs = m.opt::<usize>("max_concurrent_jobs").unwrap_or(2);
    if max_concurrent_jobs == 0 {
        m.ctx().error(
            &m.child_path("max_concurrent_jobs"),
            "must be at least 1",
            Some(m.loc_of("max_concurrent_jobs")),
        );
    }
    let shutdown_grace = m.opt::<Dur>("shutdown_grace").map(|d| d.0).unwrap_or(Duration::from_secs(300));
    let catch_up = m.opt::<bool>("catch_up").unwrap_or(true);
    m.finish();
    Some(DaemonSettings { max_concurrent_jobs: max_concurrent_jobs.max(1), shutdown_grace, catch_up })
}

pub(super) fn read_reports(top: &mut MapReader<'_, '_>) -> Option<ReportSettings> {
    let mut m = top.map("reports")?;
    let dir = m.opt::<PathBuf>("dir").unwrap_or_else(|| PathBuf::from("reports"));
    let keep = m.opt::<Dur>("keep").map(|d| d.0).unwrap_or(Duration::from_secs(30 * 86400));
    m.finish();
    Some(ReportSettings { dir, keep })
}

pub(super) fn read_logging(top: &mut MapReader<'_, '_>) -> Option<LogFile> {
    let mut m = top.map("logging")?;
    let file = if m.has("file") {
        let mut f = m.map("file")?;
        let dir = f.req::<PathBuf>("dir");
        let rotation = f.opt::<Rotation>("rotation").unwrap_or(Rotation::Daily);
        let keep = f.opt::<usize>("keep").unwrap_or(14).max(1);
        f.finish();
        dir.map(|dir| LogFile { dir, rotation, keep })
    } else {
        None
    };
    m.finish();
    file
}

/// `wal:`: the cluster whose WAL is archived, by its name in the repository, and how.
pub(super) fn read_wal(top: &mut MapReader<'_, '_>, defaults: &super::connections::ConnFields) -> Option<WalSettings> {
    // absent means no WAL archiving (map() would give an empty section with its defaults)
    if !top.has("wal") {
        return None;
    }
    let mut m = top.map("wal")?;
    let name = m.opt::<String>("name").unwrap_or_else(|| "main".into());
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        m.ctx().error(
            &m.child_path("name"),
            format!("{name:?} cannot name a cluster in the repository: use letters, digits, '-', '_' and '.'"),
            Some(m.loc_of("name")),
        );
    }
    let method = m.opt::<WalMethod>("method").unwrap_or(WalMethod::ArchiveCommand);
    let server = super::connections::read_wal_server(&mut m, defaults);
    let default_slot = format!(
        "pgbackd_{}",
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>()
    );
    let slot = m.opt::<String>("slot").unwrap_or(default_slot);
    if slot.is_empty()
        || slot.len() > 63
        || !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        m.ctx().error(
            &m.child_path("slot"),
            format!("{slot:?} cannot name a replication slot: use at most 63 lower-case letters, digits and '_'"),
            Some(m.loc_of("slot")),
        );
    }
    let synchronous = m.opt::<bool>("synchronous").unwrap_or(false);
    let spool_dir = m.opt::<PathBuf>("spool_dir").unwrap_or_else(|| PathBuf::from("wal-spool"));
    let archive_timeout = m.opt::<Dur>("archive_timeout").map(|d| d.0).unwrap_or(Duration::from_secs(60));
    let slot_lag_alert = m.opt::<ByteSize>("slot_lag_alert").map(|b| b.0).unwrap_or(1 << 30);
    let max_lag = m.opt::<Dur>("max_lag").map(|d| d.0).unwrap_or(Duration::from_secs(300));
    let prefetch = m.opt::<u32>("prefetch").unwrap_or(8).min(64);
    let restore_point_before_backup = m.opt::<bool>("restore_point_before_backup").unwrap_or(false);
    m.finish();
    Some(WalSettings {
        name,
        method,
        server: server?,
        slot,
        synchronous,
        spool_dir,
        archive_timeout,
        slot_lag_alert,
        max_lag,
        prefetch,
        restore_point_before_backup,
    })
}

pub(super) fn read_recovery_drill(top: &mut MapReader<'_, '_>) -> Option<super::model::RecoveryDrillSettings> {
    let mut m = top.map("recovery_drill")?;
    let d = super::model::RecoveryDrillSettings::default();
    let pick = m.opt::<super::model::DrillPick>("pick").unwrap_or(d.pick);
    let max_rto = m.opt::<Dur>("max_rto").map(|d| d.0);
    let amcheck = m.opt::<bool>("amcheck").unwrap_or(d.amcheck);
    let heapallindexed = m.opt::<bool>("heapallindexed").unwrap_or(d.heapallindexed);
    let shared_buffers = m.opt::<ByteSize>("shared_buffers").map_or(d.shared_buffers, |b| format!("{}kB", b.0 / 1024));
    m.finish();
    Some(super::model::RecoveryDrillSettings { pick, max_rto, amcheck, heapallindexed, shared_buffers })
}
