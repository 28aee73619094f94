//! `/metrics`: the daemon's status in Prometheus text format (version 0.0.4). Labels are bounded:
//! database, job kind, target and channel names from the config.

use crate::config::Config;
use crate::config::storage::TargetKind;
use crate::status::{JobStats, Problem, Status};
use chrono::{DateTime, Utc};
use std::fmt::Write;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
}

impl Out {
    /// Starts a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP pgbackd_{name} {help}\n# TYPE pgbackd_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.text, "pgbackd_{name}{labels} {value}");
    }
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Renders the metrics of `s` as of `now`; `problems` decides `pgbackd_ready`.
pub fn render(s: &Status, config: &Config, problems: &[Problem], now: DateTime<Utc>) -> String {
    let mut o = Out { text: String::new() };
    o.family("up", "gauge", "1 while the daemon runs.");
    o.sample("up", &[], 1.0);
    o.family("ready", "gauge", "1 when every database is fresh and its latest verification passed (/readyz).");
    o.sample("ready", &[], if problems.is_empty() { 1.0 } else { 0.0 });
    o.family("database_ready", "gauge", "1 when this database is fresh and its latest verification passed.");
    for db in &config.databases {
        let ok = !problems.iter().any(|p| p.database == db.name);
        o.sample("database_ready", &[("database", &db.name)], if ok { 1.0 } else { 0.0 });
    }

    // per database and job kind: the last run
    type Get = fn(&JobStats) -> Option<f64>;
    let per_job: [(&str, &str, &str, Get); 7] = [
        ("last_success_timestamp_seconds", "gauge", "When the last successful run started (Unix time).", |j| {
            j.last_success_at.map(ts)
        }),
        ("last_attempt_timestamp_seconds", "gauge", "When the last run started (Unix time).", |j| {
            j.last_attempt_at.map(ts)
        }),
        ("last_attempt_success", "gauge", "1 if the last run succeeded, 0 if it failed or was cancelled.", |j| {
            j.last_outcome.map(|o| if o == crate::jobs::report::Outcome::Success { 1.0 } else { 0.0 })
        }),
        ("last_duration_seconds", "gauge", "How long the last run took.", |j| j.last_duration_seconds),
        ("last_raw_bytes", "gauge", "Raw (uncompressed) bytes of the last successful run.", |j| {
            j.last_raw_bytes.map(|b| b as f64)
        }),
        ("last_stored_bytes", "gauge", "Stored bytes of the last successful backup.", |j| {
            j.last_stored_bytes.map(|b| b as f64)
        }),
        ("last_throughput_bytes_per_second", "gauge", "Raw bytes per second of the last successful run.", |j| {
            j.last_mb_per_second.map(|m| m * 1e6)
        }),
    ];
    for (name, kind, help, get) in per_job {
        o.family(name, kind, help);
        for (db, kinds) in &s.jobs {
            for (job, stats) in kinds {
                if let Some(v) = get(stats) {
                    o.sample(name, &[("database", db), ("job_kind", job.name())], v);
                }
            }
        }
    }
    o.family("job_runs_total", "counter", "Runs since the daemon started.");
    o.family("job_failures_total", "counter", "Failed runs since the daemon started.");
    for (db, kinds) in &s.jobs {
        for (job, stats) in kinds {
            o.sample("job_runs_total", &[("database", db), ("job_kind", job.name())], stats.runs as f64);
            o.sample("job_failures_total", &[("database", db), ("job_kind", job.name())], stats.failures as f64);
        }
    }

    // per database: freshness, verification, measured restore time
    o.family("full_backup_timestamp_seconds", "gauge", "When the newest successful full backup started (Unix time).");
    o.family("full_backup_age_seconds", "gauge", "Age of the newest successful full backup.");
    o.family("verification_success", "gauge", "1 if the latest verification passed, 0 if it failed.");
    o.family("test_restore_success", "gauge", "1 if the latest test restore passed, 0 if it failed.");
    o.family("restore_duration_seconds", "gauge", "Restore time of the latest test restore (measured RTO).");
    for (db, d) in &s.databases {
        let l = [("database", db.as_str())];
        if let Some(t) = d.last_full_success {
            o.sample("full_backup_timestamp_seconds", &l, ts(t));
            o.sample("full_backup_age_seconds", &l, (now - t).num_milliseconds() as f64 / 1000.0);
        }
        let ok = |x: crate::jobs::report::Outcome| if x == crate::jobs::report::Outcome::Success { 1.0 } else { 0.0 };
        if let Some(v) = d.last_verification_outcome {
            o.sample("verification_success", &l, ok(v));
        }
        if let Some(v) = d.last_test_restore_outcome {
            o.sample("test_restore_success", &l, ok(v));
        }
        if let Some(v) = d.last_restore_seconds {
            o.sample("restore_duration_seconds", &l, v);
        }
    }

    // per cluster: the last recovery drill
    let ok = |x: crate::jobs::report::Outcome| if x == crate::jobs::report::Outcome::Success { 1.0 } else { 0.0 };
    o.family("recovery_drill_success", "gauge", "1 if the latest recovery drill of a cluster passed, 0 if it failed.");
    for (db, d) in &s.databases {
        if let Some(v) = d.last_drill_outcome {
            o.sample("recovery_drill_success", &[("database", db.as_str())], ok(v));
        }
    }
    o.family("recovery_drill_rto_seconds", "gauge", "Seconds the latest recovery drill took to a ready server (RTO).");
    for (db, d) in &s.databases {
        if let Some(v) = d.last_drill_rto_seconds {
            o.sample("recovery_drill_rto_seconds", &[("database", db.as_str())], v);
        }
    }
    o.family(
        "recovery_drill_rpo_seconds",
        "gauge",
        "Seconds between the latest drill's target and its last replayed commit.",
    );
    for (db, d) in &s.databases {
        if let Some(v) = d.last_drill_rpo_seconds {
            o.sample("recovery_drill_rpo_seconds", &[("database", db.as_str())], v);
        }
    }

    // per target: what the repository holds, and local free space
    o.family("repository_backups", "gauge", "Backups held by a storage target.");
    o.family("repository_bytes", "gauge", "Stored bytes of the backups held by a storage target.");
    o.family("repository_damaged_manifests", "gauge", "Manifests on a storage target that cannot be trusted.");
    for (t, st) in &s.targets {
        o.sample("repository_backups", &[("target", t)], st.backups as f64);
        o.sample("repository_bytes", &[("target", t)], st.stored_bytes as f64);
        o.sample("repository_damaged_manifests", &[("target", t)], st.damaged as f64);
    }
    o.family("local_free_bytes", "gauge", "Free bytes on the filesystem of a local target.");
    o.family("local_size_bytes", "gauge", "Size of the filesystem of a local target.");
    for t in &config.targets {
        if let TargetKind::Local { path } = &t.kind
            && let Some((free, total)) = crate::storage::local::free_space(path)
        {
            o.sample("local_free_bytes", &[("target", &t.name)], free as f64);
            o.sample("local_size_bytes", &[("target", &t.name)], total as f64);
        }
    }

    // the WAL archive (with a wal: section)
    o.family("wal_archive_lag_bytes", "gauge", "Server WAL beyond the end of the newest archived segment.");
    o.family(
        "wal_archive_lag_seconds",
        "gauge",
        "How long a completed WAL segment has waited to be archived (0: none waits).",
    );
    o.family("wal_last_archived_timestamp_seconds", "gauge", "When the newest WAL segment was archived (Unix time).");
    o.family(
        "wal_last_archived_segment_number",
        "gauge",
        "The newest archived WAL segment, as a number (its name's log * 2^32 + seg).",
    );
    o.family("wal_receiver_up", "gauge", "1 while pg_receivewal runs (wal.method stream).");
    o.family(
        "wal_receiver_restarts_total",
        "counter",
        "Times pg_receivewal exited or could not start and was restarted.",
    );
    o.family("wal_spool_bytes", "gauge", "Bytes of received WAL in the spool.");
    o.family("wal_segments_stored_total", "counter", "WAL files the receiver stored, per target.");
    o.family("wal_slot_retained_bytes", "gauge", "WAL the replication slot holds back on the server.");
    o.family("wal_server_up", "gauge", "1 when the server answered the WAL monitor's last question.");
    if let (Some(w), Some(wal)) = (&s.wal, &config.wal) {
        let l = [("cluster", w.cluster.as_str())];
        if let Some(v) = w.archive_lag_bytes {
            o.sample("wal_archive_lag_bytes", &l, v as f64);
        }
        if let Some(v) = w.archive_lag_seconds {
            o.sample("wal_archive_lag_seconds", &l, v);
        }
        if let Some(t) = w.last_archived_at {
            o.sample("wal_last_archived_timestamp_seconds", &l, ts(t));
        }
        if let Some(seg) = w.last_archived_segment.as_deref().and_then(crate::wal::names::SegmentName::parse) {
            o.sample("wal_last_archived_segment_number", &l, ((seg.log as u64) << 32 | seg.seg as u64) as f64);
        }
        if wal.method == crate::config::WalMethod::Stream {
            o.sample("wal_receiver_up", &l, if w.receiver_running { 1.0 } else { 0.0 });
            o.sample("wal_receiver_restarts_total", &l, w.receiver_restarts as f64);
            o.sample("wal_spool_bytes", &l, w.spool_bytes as f64);
            for (t, n) in &w.stored_per_target {
                o.sample("wal_segments_stored_total", &[("cluster", &w.cluster), ("target", t)], *n as f64);
            }
        }
        if let Some(v) = w.slot_retained_bytes {
            o.sample("wal_slot_retained_bytes", &[("cluster", &w.cluster), ("slot", &wal.slot)], v as f64);
        }
        if w.checked_at.is_some() {
            o.sample("wal_server_up", &l, if w.server_error.is_none() { 1.0 } else { 0.0 });
        }
    }

    // the daemon
    o.family("jobs_running", "gauge", "Jobs running now.");
    o.sample("jobs_running", &[], s.running.len() as f64);
    o.family("jobs_skipped_overlap_total", "counter", "Runs skipped because the previous run was still going.");
    o.sample("jobs_skipped_overlap_total", &[], s.counters.overlap_skipped as f64);
    o.family("jobs_queued_overlap_total", "counter", "Runs queued behind the previous run.");
    o.sample("jobs_queued_overlap_total", &[], s.counters.overlap_queued as f64);
    let n = &s.notifications;
    o.family("notifications_sent_total", "counter", "Notifications and pings delivered, per channel.");
    for (c, v) in &n.sent {
        o.sample("notifications_sent_total", &[("channel", c)], *v as f64);
    }
    o.family("notification_failures_total", "counter", "Notifications and pings not delivered after every retry.");
    for (c, v) in &n.failed {
        o.sample("notification_failures_total", &[("channel", c)], *v as f64);
    }
    o.family("notifications_rate_limited_total", "counter", "Notifications dropped by max_per_hour.");
    for (c, v) in &n.rate_limited {
        o.sample("notifications_rate_limited_total", &[("channel", c)], *v as f64);
    }
    o.family("notifications_suppressed_total", "counter", "Repeated failure alerts not sent (one per failing job).");
    o.sample("notifications_suppressed_total", &[], n.suppressed as f64);
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric families `render` can emit (from its `# TYPE` lines).
    fn families() -> Vec<String> {
        let yaml = "databases: [app]\nlocal_backup_dir: /tmp\n";
        let config = Config::from_yaml(yaml, "t", &|_| None).unwrap();
        render(&Status::default(), &config, &[], Utc::now())
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_dashboard_the_alert_rules_and_the_docs_name_only_metrics_that_exist() {
        let known = families();
        for (file, text) in [
            ("deploy/grafana-dashboard.json", include_str!("../../deploy/grafana-dashboard.json")),
            ("deploy/prometheus-alerts.yml", include_str!("../../deploy/prometheus-alerts.yml")),
            ("docs/monitoring.md", include_str!("../../docs/monitoring.md")),
        ] {
            let mut rest = text;
            let mut seen = 0;
            while let Some(i) = rest.find("pgbackd_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                if name == "pgbackd_" || name.starts_with("pgbackd_restore_app") {
                    continue;
                }
                seen += 1;
                assert!(known.contains(&name), "{file} names {name}, which /metrics does not have");
            }
            assert!(seen > 5, "{file}");
        }
    }

    #[test]
    fn a_recovery_drill_is_one_sample_per_cluster_under_its_family() {
        let yaml = "databases: [app]\nlocal_backup_dir: /tmp\n";
        let config = Config::from_yaml(yaml, "t", &|_| None).unwrap();
        let mut status = Status::default();
        let d = status.databases.entry("cluster:main".into()).or_default();
        d.last_drill_outcome = Some(crate::jobs::report::Outcome::Failed);
        d.last_drill_rto_seconds = Some(42.5);
        let text = render(&status, &config, &[], Utc::now());
        assert!(text.contains("pgbackd_recovery_drill_success{database=\"cluster:main\"} 0\n"), "{text}");
        assert!(text.contains("pgbackd_recovery_drill_rto_seconds{database=\"cluster:main\"} 42.5\n"), "{text}");
        assert!(!text.contains("pgbackd_recovery_drill_rpo_seconds{"), "no RPO for a latest drill");
        // each family's samples follow its TYPE line
        let ty = text.find("# TYPE pgbackd_recovery_drill_rto_seconds").unwrap();
        assert!(text.find("pgbackd_recovery_drill_rto_seconds{").unwrap() > ty);
    }

    #[test]
    fn labels_are_escaped() {
        let yaml = "databases: [\"we\\\"ird\"]\nlocal_backup_dir: /tmp\n";
        let config = Config::from_yaml(yaml, "t", &|_| None).unwrap();
        let text = render(&Status::default(), &config, &[], Utc::now());
        assert!(text.contains(r#"pgbackd_database_ready{database="we\"ird"} 1"#), "{text}");
    }
}
