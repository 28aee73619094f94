//! The daemon's scheduling under paused tokio time, with a fake job host (the real jobs are
//! covered by the process-level tests in tests/it/daemon.rs).

use super::*;
use crate::clock::TokioClock;
use crate::jobs::JobContext;
use crate::jobs::report::{Outcome, Report};
use crate::jobs::run::{JobSpec, Produced};
use crate::repo::Manifest;
use async_trait::async_trait;
use chrono::TimeZone;
use std::sync::Mutex;

/// Records every run; each run takes `duration` unless cancelled, and "stores" a backup named
/// after its run.
struct FakeJobs {
    clock: Arc<TokioClock>,
    duration: Duration,
    runs: Mutex<Vec<(DateTime<Utc>, String, &'static str)>>,
    cancelled: Mutex<Vec<String>>,
}

#[async_trait]
impl Arms for FakeJobs {
    async fn perform(&self, job: &JobSpec, ctx: &JobContext) -> Result<Produced> {
        self.runs.lock().unwrap().push((self.clock.now(), job.subject.to_string(), job.trigger.name()));
        ctx.progress.add(1);
        tokio::select! {
            _ = tokio::time::sleep(self.duration) => {
                let m = Manifest::for_tests(job.subject.clone(), &format!("b-{}", job.run_id), BackupKind::Full, self.clock.now());
                Ok(Produced::Backup(Box::new(m)))
            }
            _ = ctx.cancel.cancelled() => {
                self.cancelled.lock().unwrap().push(job.run_id.clone());
                anyhow::bail!("cancelled")
            }
        }
    }
}

struct World {
    host: Arc<FakeJobs>,
    tx: mpsc::Sender<Signal>,
    daemon: tokio::task::JoinHandle<Result<()>>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
}

fn yaml(dir: &std::path::Path, schedules: &str, extra: &str) -> String {
    format!(
        "databases: [app]\nlocal_backup_dir: {}\nmonitoring:\n  listen: off\nreports:\n  dir: {}\nschedules:\n{schedules}{extra}",
        dir.join("repository").display(),
        dir.join("reports").display()
    )
}

async fn start(
    at: DateTime<Utc>,
    schedules: &str,
    extra: &str,
    duration: Duration,
    last_success: Option<DateTime<Utc>>,
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(dir.path(), schedules, extra);
    let config_path = dir.path().join("pgbackd.yaml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_yaml(&text, "t", &|_| None).unwrap();
    if let Some(at) = last_success {
        // a full backup taken before the daemon started
        let repo = Repository::open(&config).await.unwrap();
        let mut m =
            Manifest::for_tests(Subject::Database("app".into()), "20261122T100000Z-full-000001", BackupKind::Full, at);
        m.targets = vec!["local".into()];
        repo.write_manifest(&m).await.unwrap();
    }
    let clock = Arc::new(TokioClock::starting_at(at));
    let host =
        Arc::new(FakeJobs { clock: clock.clone(), duration, runs: Mutex::default(), cancelled: Mutex::default() });
    let (tx, rx) = mpsc::channel(4);
    let deps = Deps {
        clock,
        arms: host.clone(),
        signals: rx,
        config_path: Some(config_path.clone()),
        cancel: CancellationToken::new(),
    };
    let daemon = tokio::spawn(run(config, deps));
    World { host, tx, daemon, dir, config_path }
}

impl World {
    /// Stops the daemon; its runs, final status, host and reports.
    async fn stop(self) -> (Vec<(DateTime<Utc>, String, &'static str)>, Status, Arc<FakeJobs>, Vec<Report>) {
        self.tx.send(Signal::Terminate).await.unwrap();
        self.daemon.await.unwrap().unwrap();
        let status = status::read(&self.dir.path().join("reports")).unwrap();
        let runs = self.host.runs.lock().unwrap().clone();
        let reports = report::read_all(&self.dir.path().join("reports"), "backup");
        (runs, status, self.host, reports)
    }

    fn reports(&self) -> Vec<Report> {
        report::read_all(&self.dir.path().join("reports"), "backup")
    }
}

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
}

const NO_CATCH_UP: &str = "daemon:\n  catch_up: false\n";

#[tokio::test(start_paused = true)]
async fn six_field_schedule_fires_every_ten_seconds() {
    let w = start(t(12, 0, 5), "  full_backup: \"*/10 * * * * *\"\n", NO_CATCH_UP, Duration::from_secs(1), None).await;
    tokio::time::sleep(Duration::from_secs(36)).await;
    let (runs, status, _, _) = w.stop().await;
    let times: Vec<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(times, [t(12, 0, 10), t(12, 0, 20), t(12, 0, 30), t(12, 0, 40)]);
    assert_eq!(status.counters.jobs_succeeded, 4);
    assert_eq!(status.databases["app"].last_full_backup_id.as_deref().map(|s| s.starts_with("b-")), Some(true));
}

#[tokio::test(start_paused = true)]
async fn five_field_schedule_and_macros() {
    let w = start(t(12, 3, 0), "  full_backup: \"*/5 * * * *\"\n", NO_CATCH_UP, Duration::from_secs(1), None).await;
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let (runs, status, _, _) = w.stop().await;
    let times: Vec<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(times, [t(12, 5, 0), t(12, 10, 0)]);
    assert_eq!(status.schedules[0].next_run, Some(t(12, 15, 0)));

    let w = start(t(12, 3, 0), "  full_backup: \"@hourly\"\n", NO_CATCH_UP, Duration::from_secs(1), None).await;
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let (runs, _, _, _) = w.stop().await;
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [t(13, 0, 0), t(14, 0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn berlin_across_both_dst_switches() {
    let sched = "  full_backup:\n    cron: \"30 2 * * *\"\n    timezone: Europe/Berlin\n";
    let spring = Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap();
    let w = start(spring, sched, NO_CATCH_UP, Duration::from_secs(60), None).await;
    tokio::time::sleep(Duration::from_secs(3 * 86400)).await;
    let (runs, _, _, _) = w.stop().await;
    let utc = |d, h, m| Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap();
    // 02:30 CET, then 03:00 CEST on the day 02:30 does not exist, then 02:30 CEST
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [utc(28, 1, 30), utc(29, 1, 0), utc(30, 0, 30)]);

    let fall = Utc.with_ymd_and_hms(2026, 10, 23, 12, 0, 0).unwrap();
    let w = start(fall, sched, NO_CATCH_UP, Duration::from_secs(60), None).await;
    tokio::time::sleep(Duration::from_secs(3 * 86400)).await;
    let (runs, _, _, _) = w.stop().await;
    let utc = |d, h, m| Utc.with_ymd_and_hms(2026, 10, d, h, m, 0).unwrap();
    // 02:30 happens twice on the 25th; the job runs once
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [utc(24, 0, 30), utc(25, 0, 30), utc(26, 1, 30)]);
}

#[tokio::test(start_paused = true)]
async fn overlapping_runs_are_skipped_and_counted() {
    let w = start(t(12, 0, 5), "  full_backup: \"*/10 * * * * *\"\n", NO_CATCH_UP, Duration::from_secs(25), None).await;
    tokio::time::sleep(Duration::from_secs(56)).await;
    let (runs, status, _, _) = w.stop().await;
    // 10 runs until 35; 20 and 30 are skipped; 40 runs until 65; 50 and 12:01:00 are skipped
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [t(12, 0, 10), t(12, 0, 40)]);
    assert_eq!(status.counters.overlap_skipped, 4);
}

#[tokio::test(start_paused = true)]
async fn overlapping_runs_can_queue_once() {
    let sched = "  full_backup:\n    cron: \"*/10 * * * * *\"\n    overlap: queue\n";
    let w = start(t(12, 0, 5), sched, NO_CATCH_UP, Duration::from_secs(15), None).await;
    tokio::time::sleep(Duration::from_secs(46)).await;
    let (runs, status, _, _) = w.stop().await;
    // 10-25; 20 queued, runs 25-40; 30 queued, runs 40-55; 40 and 50 find one already queued
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [t(12, 0, 10), t(12, 0, 25), t(12, 0, 40)]);
    assert_eq!(status.counters.overlap_queued, 3);
    assert!(status.counters.overlap_skipped >= 1);
}

#[tokio::test(start_paused = true)]
async fn catch_up_runs_once_at_start_only_when_needed() {
    let sched = "  full_backup: \"0 1 * * *\"\n";
    // never backed up: one run right away, then the schedule
    let w = start(t(12, 0, 0), sched, "", Duration::from_secs(60), None).await;
    tokio::time::sleep(Duration::from_secs(14 * 3600)).await;
    let (runs, _, _, _) = w.stop().await;
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].0, runs[0].2), (t(12, 0, 0), "catch_up"));
    assert_eq!(runs[1].0, Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap());

    // backed up two hours ago: nothing until the schedule
    let w = start(t(12, 0, 0), sched, "", Duration::from_secs(60), Some(t(10, 0, 0))).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let (runs, status, _, _) = w.stop().await;
    assert!(runs.is_empty(), "{runs:?}");
    assert_eq!(status.databases["app"].last_full_success, Some(t(10, 0, 0)));
}

#[tokio::test(start_paused = true)]
async fn reload_changes_schedules_and_a_broken_config_keeps_the_old_ones() {
    let w = start(t(12, 0, 5), "  full_backup: \"0 * * * *\"\n", NO_CATCH_UP, Duration::from_secs(1), None).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // a broken config is refused
    std::fs::write(&w.config_path, "schedules: [this is not right\n").unwrap();
    w.tx.send(Signal::Reload).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // a valid one is applied: every 10 seconds from now on
    std::fs::write(&w.config_path, yaml(w.dir.path(), "  full_backup: \"*/10 * * * * *\"\n", NO_CATCH_UP)).unwrap();
    w.tx.send(Signal::Reload).await.unwrap();
    tokio::time::sleep(Duration::from_secs(22)).await;
    let (runs, status, _, _) = w.stop().await;
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [t(12, 0, 30), t(12, 0, 40)]);
    assert_eq!(status.schedules[0].cron, "*/10 * * * * *");
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_grace_period_then_cancels() {
    let extra = "daemon:\n  catch_up: false\n  shutdown_grace: 30s\n";
    let w = start(t(12, 0, 5), "  full_backup: \"*/10 * * * * *\"\n", extra, Duration::from_secs(3600), None).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stop_at = tokio::time::Instant::now();
    let (runs, status, host, reports) = w.stop().await;
    assert_eq!(runs.len(), 1, "no new runs after the signal");
    assert_eq!(stop_at.elapsed(), Duration::from_secs(30), "cancelled exactly at the end of the grace period");
    assert_eq!(host.cancelled.lock().unwrap().len(), 1);
    assert_eq!(status.counters.jobs_cancelled, 1);
    assert!(status.running.is_empty());
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Outcome::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_cancels_at_once_and_a_job_timeout_fails_the_run() {
    let extra = "daemon:\n  catch_up: false\n  shutdown_grace: 1h\n";
    let w = start(t(12, 0, 5), "  full_backup: \"*/10 * * * * *\"\n", extra, Duration::from_secs(3600), None).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.tx.send(Signal::Terminate).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stop_at = tokio::time::Instant::now();
    let (_, status, _, _) = w.stop().await;
    assert!(stop_at.elapsed() < Duration::from_secs(1));
    assert_eq!(status.counters.jobs_cancelled, 1);

    let sched = "  full_backup:\n    cron: \"*/10 * * * * *\"\n    timeout: 5s\n";
    let w = start(t(12, 0, 5), sched, NO_CATCH_UP, Duration::from_secs(3600), None).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(w.reports().len(), 1, "the 12:00:10 run timed out at 12:00:15");
    // the 12:00:20 run is still going: stopping waits for it, and it times out too
    let (_, status, _, reports) = w.stop().await;
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.outcome == Outcome::Failed));
    assert!(reports[0].error.as_deref().unwrap().contains("exceeded the job timeout (5s)"));
    assert_eq!(status.counters.jobs_failed, 2);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_jobs_serialises_databases() {
    let schedules = "  full_backup: \"*/30 * * * * *\"\n";
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "databases: [app, crm]\nlocal_backup_dir: {}\nmonitoring:\n  listen: off\nreports:\n  dir: {}\nschedules:\n{schedules}\
         daemon:\n  catch_up: false\n  max_concurrent_jobs: 1\n",
        dir.path().join("repository").display(),
        dir.path().display()
    );
    let config = Config::from_yaml(&text, "t", &|_| None).unwrap();
    let clock = Arc::new(TokioClock::starting_at(t(12, 0, 5)));
    let host = Arc::new(FakeJobs {
        clock: clock.clone(),
        duration: Duration::from_secs(10),
        runs: Mutex::default(),
        cancelled: Mutex::default(),
    });
    let (tx, rx) = mpsc::channel(4);
    let deps = Deps { clock, arms: host.clone(), signals: rx, config_path: None, cancel: CancellationToken::new() };
    let daemon = tokio::spawn(run(config, deps));
    tokio::time::sleep(Duration::from_secs(30)).await;
    tx.send(Signal::Terminate).await.unwrap();
    daemon.await.unwrap().unwrap();
    let runs = host.runs.lock().unwrap().clone();
    assert_eq!(
        runs.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
        [(t(12, 0, 30), "app"), (t(12, 0, 40), "crm")]
    );
}
