use super::*;
use chrono::TimeZone;

/// Records what it is sent (or fails every time).
struct Recorder {
    events: Vec<EventKind>,
    got: Mutex<Vec<(EventKind, u32)>>,
    fail: bool,
}

#[async_trait::async_trait]
impl Channel for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn events(&self) -> &[EventKind] {
        &self.events
    }
    async fn send(&self, e: &Event) -> Result<()> {
        self.got.lock().unwrap().push((e.event, e.consecutive_failures));
        if self.fail { Err(anyhow::anyhow!("receiver down")) } else { Ok(()) }
    }
}

fn notifier(events: &[EventKind], fail: bool, cfg: NotificationsConfig) -> (Notifier, Arc<Recorder>) {
    let rec = Arc::new(Recorder { events: events.to_vec(), got: Mutex::new(Vec::new()), fail });
    let channels = Channels { list: vec![rec.clone() as Arc<dyn Channel>], pings: Vec::new(), cfg };
    let n = Notifier {
        channels: RwLock::new(Arc::new(channels)),
        state: Mutex::new(State::default()),
        counts: Default::default(),
        deliveries: TaskTracker::new(),
    };
    (n, rec)
}

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, 0, 0).unwrap()
}

fn run(n: &Notifier, kind: EventKind, db: &str, h: u32) {
    n.job_finished(JobKind::FullBackup, Event::new(kind, "full_backup", db, at(h)));
}

#[tokio::test]
async fn one_alert_per_failing_job_then_one_recovery() {
    let (n, rec) = notifier(&crate::config::notify::DEFAULT_EVENTS, false, NotificationsConfig::default());
    run(&n, EventKind::Failure, "app", 1);
    run(&n, EventKind::Failure, "app", 2);
    run(&n, EventKind::Failure, "app", 3);
    run(&n, EventKind::Failure, "other", 3);
    run(&n, EventKind::Success, "app", 4);
    run(&n, EventKind::Success, "app", 5);
    run(&n, EventKind::Failure, "app", 6);
    n.flush(Duration::from_secs(5)).await;
    let mut got = rec.got.lock().unwrap().clone();
    got.sort_by_key(|g| (g.0, g.1));
    assert_eq!(
        got,
        vec![(EventKind::Failure, 1), (EventKind::Failure, 1), (EventKind::Failure, 1), (EventKind::Recovered, 3)]
    );
    let c = n.counts();
    assert_eq!(c.suppressed, 2);
    assert_eq!(c.sent.get("recorder"), Some(&4));
}

#[tokio::test]
async fn successes_only_when_asked_and_stale_once_per_episode() {
    let (n, rec) = notifier(&[EventKind::Success, EventKind::Stale], false, NotificationsConfig::default());
    run(&n, EventKind::Success, "app", 1);
    run(&n, EventKind::Failure, "app", 2);
    // a recovery is also a success for a channel that wants successes
    run(&n, EventKind::Success, "app", 3);
    n.stale(Event::new(EventKind::Stale, "full_backup", "app", at(4)));
    n.stale(Event::new(EventKind::Stale, "full_backup", "app", at(5)));
    n.fresh("app");
    n.stale(Event::new(EventKind::Stale, "full_backup", "app", at(6)));
    n.flush(Duration::from_secs(5)).await;
    let got: Vec<EventKind> = rec.got.lock().unwrap().iter().map(|g| g.0).collect();
    assert_eq!(got.iter().filter(|k| **k == EventKind::Success).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|k| **k == EventKind::Recovered).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|k| **k == EventKind::Stale).count(), 2, "{got:?}");
    assert!(!got.contains(&EventKind::Failure));
}

#[tokio::test]
async fn the_hourly_limit_drops_and_counts() {
    let cfg = NotificationsConfig { max_per_hour: 2, ..Default::default() };
    let (n, rec) = notifier(&[EventKind::Stale], false, cfg);
    for (db, h) in [("a", 1), ("b", 1), ("c", 1), ("d", 3)] {
        n.stale(Event::new(EventKind::Stale, "full_backup", db, at(h)));
    }
    n.flush(Duration::from_secs(5)).await;
    assert_eq!(rec.got.lock().unwrap().len(), 3);
    assert_eq!(n.counts().rate_limited.get("recorder"), Some(&1));
}

#[tokio::test]
async fn failed_deliveries_are_retried_then_counted() {
    let cfg = NotificationsConfig { attempts: 3, retry_backoff: Duration::from_millis(1), ..Default::default() };
    let (n, rec) = notifier(&[EventKind::Failure], true, cfg);
    run(&n, EventKind::Failure, "app", 1);
    n.flush(Duration::from_secs(5)).await;
    assert_eq!(rec.got.lock().unwrap().len(), 3);
    assert_eq!(n.counts().failed.get("recorder"), Some(&1));
}

#[test]
fn templates_fill_fields_escaped_for_json() {
    let mut e = Event::new(EventKind::Failure, "full_backup", "app", at(1));
    e.error = Some("pg_dump: error: \"quoted\"\nsecond line".into());
    e.raw_bytes = Some(42);
    let body =
        render_template(r#"{"db": "{{database}}", "err": "{{ error }}", "n": {{raw_bytes}}, "x": "{{nope}}"}"#, &e);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["db"], "app");
    assert_eq!(v["err"], "pg_dump: error: \"quoted\"\nsecond line");
    assert_eq!(v["n"], 42);
    assert_eq!(v["x"], "");
}

#[test]
fn messages_carry_the_facts() {
    let mut e = Event::new(EventKind::Failure, "full_backup", "app", at(1));
    e.error = Some("pg_dump exited with status 1: connection refused".into());
    e.next_run = Some(at(7));
    let t = e.text();
    assert!(e.subject().starts_with("[pgbackd] FAILED: full_backup of app"), "{}", e.subject());
    assert!(t.contains("connection refused") && t.contains("next run") && t.contains("2026-11-22T07:00:00Z"), "{t}");
}
