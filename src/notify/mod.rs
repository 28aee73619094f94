//! Notifications: what happened (an [`Event`]), who is told (channels: email, Slack, webhooks)
//! and when (de-duplication, rate limits), plus healthchecks.io-style pings.
//!
//! Rules: one `failure` per failing job and database until it succeeds again, then one
//! `recovered`; one `stale` per stale episode; at most `max_per_hour` messages per channel.
//! Deliveries run in their own tasks with retries and backoff: they are logged and counted, and
//! never fail, block or slow a job. Channel URLs and credentials are secrets: errors never carry
//! them (reqwest's URL is stripped).

mod channels;
#[cfg(feature = "email")]
mod email;

use crate::config::notify::{EventKind, NotificationsConfig};
use crate::config::{Config, JobKind};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::task::TaskTracker;

pub use channels::render_template;

/// What a notification is about.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub job_kind: String,
    pub database: String,
    /// The machine pgbackd runs on.
    pub host: String,
    pub at: DateTime<Utc>,
    pub run_id: Option<String>,
    pub backup_id: Option<String>,
    /// The error chain (with pg_dump's stderr tail) of a failure; why a database is stale.
    pub error: Option<String>,
    pub raw_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub mb_per_second: Option<f64>,
    pub sha256: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    /// Failed runs in a row (for failures and recoveries).
    pub consecutive_failures: u32,
}

pub use crate::process::hostname;

impl Event {
    /// An event about a job run on a database, everything else empty.
    pub fn new(event: EventKind, job_kind: &str, database: &str, at: DateTime<Utc>) -> Event {
        Event {
            event,
            job_kind: job_kind.to_owned(),
            database: database.to_owned(),
            host: hostname(),
            at,
            run_id: None,
            backup_id: None,
            error: None,
            raw_bytes: None,
            stored_bytes: None,
            duration_seconds: None,
            mb_per_second: None,
            sha256: None,
            next_run: None,
            consecutive_failures: 0,
        }
    }

    /// Masks secrets in the free-text error (a server's message may echo a URL or password).
    fn redact(&mut self) {
        if let Some(e) = &mut self.error {
            *e = crate::secret::redact(e).into_owned();
        }
    }

    pub fn subject(&self) -> String {
        let what = format!("{} of {} on {}", self.job_kind, self.database, self.host);
        match self.event {
            EventKind::Failure => format!("[pgbackd] FAILED: {what}"),
            EventKind::Success => format!("[pgbackd] ok: {what}"),
            EventKind::Recovered => format!("[pgbackd] RECOVERED: {what}"),
            EventKind::Stale => format!("[pgbackd] STALE: no recent full backup of {} on {}", self.database, self.host),
            EventKind::Test => format!("[pgbackd] test message from {}", self.host),
        }
    }

    /// The message body: one fact per line.
    pub fn text(&self) -> String {
        let mut lines = vec![self.subject(), String::new()];
        let mut add = |k: &str, v: String| lines.push(format!("{k:<13} {v}"));
        add("event", self.event.name().to_owned());
        add("database", self.database.clone());
        add("job", self.job_kind.clone());
        add("host", self.host.clone());
        add("at", self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        if let Some(v) = &self.backup_id {
            add("backup", v.clone());
        }
        if let Some(v) = &self.run_id {
            add("run", v.clone());
        }
        if let Some(v) = self.raw_bytes {
            add("size", format!("{v} bytes raw"));
        }
        if let Some(v) = self.stored_bytes {
            add("stored", format!("{v} bytes"));
        }
        if let Some(v) = self.duration_seconds {
            add("duration", format!("{v:.1} s"));
        }
        if let Some(v) = self.mb_per_second {
            add("throughput", format!("{v:.1} MB/s"));
        }
        if let Some(v) = &self.sha256 {
            add("sha256", v.clone());
        }
        if self.consecutive_failures > 0 {
            add("failures", format!("{} in a row", self.consecutive_failures));
        }
        if let Some(v) = self.next_run {
            add("next run", v.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        if let Some(e) = &self.error {
            lines.push(String::new());
            lines.push(e.clone());
        }
        lines.join("\n")
    }
}

/// One place messages go.
#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    fn name(&self) -> &str;
    /// The events it was configured for.
    fn events(&self) -> &[EventKind];
    /// Whether it gets `kind` (test messages always).
    fn wants(&self, kind: EventKind) -> bool {
        kind == EventKind::Test || self.events().contains(&kind)
    }
    async fn send(&self, event: &Event) -> Result<()>;
}

/// Configured channels and pings (rebuilt on reload; the de-duplication state is kept).
struct Channels {
    list: Vec<Arc<dyn Channel>>,
    pings: Vec<channels::Ping>,
    cfg: NotificationsConfig,
}

#[derive(Default)]
struct State {
    /// Failed runs in a row per (job kind, database); present = a failure was notified.
    failing: HashMap<(String, String), u32>,
    stale: HashSet<String>,
    /// When each channel last sent, for the hourly limit.
    recent: HashMap<String, VecDeque<DateTime<Utc>>>,
}

/// Delivery counts per channel, for metrics.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DeliveryCounts {
    pub sent: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    /// Dropped by the hourly limit.
    pub rate_limited: BTreeMap<String, u64>,
    /// Repeated failures not sent again (one alert per failing job until it recovers).
    pub suppressed: u64,
}

pub struct Notifier {
    channels: RwLock<Arc<Channels>>,
    state: Mutex<State>,
    counts: Arc<Mutex<DeliveryCounts>>,
    /// Deliveries in flight (spawned on the process's tracker, counted here for `flush`).
    deliveries: TaskTracker,
}

impl Notifier {
    pub fn new(config: &Config) -> Result<Notifier> {
        Ok(Notifier {
            channels: RwLock::new(Arc::new(build(config)?)),
            state: Mutex::new(State::default()),
            counts: Default::default(),
            deliveries: TaskTracker::new(),
        })
    }

    /// A new config's channels; the de-duplication state stays.
    pub fn reconfigure(&self, config: &Config) -> Result<()> {
        let built = Arc::new(build(config)?);
        *self.channels.write().unwrap_or_else(|e| e.into_inner()) = built;
        Ok(())
    }

    fn current(&self) -> Arc<Channels> {
        self.channels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was delivered, failed and dropped per channel; every configured channel and ping is
    /// there from the start, at 0, so that `increase()` over a counter sees its first event.
    pub fn counts(&self) -> DeliveryCounts {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ch = self.current();
        for name in ch.list.iter().map(|c| c.name().to_owned()).chain(ch.pings.iter().map(|p| p.name.clone())) {
            c.sent.entry(name.clone()).or_default();
            c.failed.entry(name).or_default();
        }
        c
    }

    /// A run starts: `start` pings.
    pub fn job_started(&self, kind: JobKind, database: &str) {
        let ch = self.current();
        for p in ch.pings.iter().filter(|p| p.matches(kind, database)) {
            if let Some(url) = p.start_url.clone() {
                self.spawn_ping(&ch, p.name.clone(), url, None);
            }
        }
    }

    /// A run ended with `event.event` = `Failure` or `Success`: pings always; messages by the
    /// de-duplication rules.
    pub fn job_finished(&self, kind: JobKind, mut event: Event) {
        event.redact();
        let ch = self.current();
        let failed = event.event == EventKind::Failure;
        for p in ch.pings.iter().filter(|p| p.matches(kind, &event.database)) {
            let (url, body) = if failed { (&p.fail_url, event.error.clone()) } else { (&p.success_url, None) };
            self.spawn_ping(&ch, p.name.clone(), url.clone(), body);
        }
        let key = (kind.name().to_owned(), event.database.clone());
        let send = {
            let mut st = self.state();
            if failed {
                let n = st.failing.entry(key).or_insert(0);
                *n += 1;
                event.consecutive_failures = *n;
                *n == 1
            } else if let Some(n) = st.failing.remove(&key) {
                event.event = EventKind::Recovered;
                event.consecutive_failures = n;
                true
            } else {
                true
            }
        };
        if !send {
            self.counts.lock().unwrap_or_else(|e| e.into_inner()).suppressed += 1;
            tracing::info!(
                database = %event.database,
                job_kind = %event.job_kind,
                failures = event.consecutive_failures,
                "still failing: no new alert until it recovers"
            );
            return;
        }
        // a recovery is news for channels that want recoveries, and success for those that
        // want every success
        let recovered = event.event == EventKind::Recovered;
        let targets: Vec<Arc<dyn Channel>> = ch
            .list
            .iter()
            .filter(|c| c.wants(event.event) || (recovered && c.wants(EventKind::Success)))
            .cloned()
            .collect();
        self.deliver(&ch, targets, event);
    }

    /// `database` has had no successful full backup for too long: one `stale` per episode.
    pub fn stale(&self, mut event: Event) {
        event.redact();
        if !self.state().stale.insert(event.database.clone()) {
            return;
        }
        tracing::warn!(database = %event.database, problem = event.error.as_deref().unwrap_or(""), "backups are stale");
        let ch = self.current();
        let targets = ch.list.iter().filter(|c| c.wants(EventKind::Stale)).cloned().collect();
        self.deliver(&ch, targets, event);
    }

    /// `database` is fresh again: a later staleness is a new episode.
    pub fn fresh(&self, database: &str) {
        self.state().stale.remove(database);
    }

    /// Sends `event` through `targets` in background tasks, within each channel's hourly limit.
    fn deliver(&self, ch: &Arc<Channels>, targets: Vec<Arc<dyn Channel>>, event: Event) {
        let event = Arc::new(event);
        for c in targets {
            let allowed = {
                let mut st = self.state();
                let recent = st.recent.entry(c.name().to_owned()).or_default();
                while recent.front().is_some_and(|t| event.at - *t > chrono::Duration::hours(1)) {
                    recent.pop_front();
                }
                let ok = (recent.len() as u32) < ch.cfg.max_per_hour;
                if ok {
                    recent.push_back(event.at);
                }
                ok
            };
            if !allowed {
                *self
                    .counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rate_limited
                    .entry(c.name().to_owned())
                    .or_default() += 1;
                tracing::warn!(
                    channel = c.name(),
                    max_per_hour = ch.cfg.max_per_hour,
                    "notification dropped: hourly limit reached"
                );
                continue;
            }
            let (event, counts, cfg) = (event.clone(), self.counts.clone(), ch.cfg.clone());
            crate::tasks::spawn(self.deliveries.track_future(async move {
                let name = c.name().to_owned();
                let result = with_retries(&cfg, &name, || c.send(&event)).await;
                record(&counts, &name, &result, event.event.name());
            }));
        }
    }

    fn spawn_ping(&self, ch: &Arc<Channels>, name: String, url: crate::secret::Secret, body: Option<String>) {
        let (counts, cfg, client) = (self.counts.clone(), ch.cfg.clone(), channels::http_client(ch.cfg.timeout));
        crate::tasks::spawn(self.deliveries.track_future(async move {
            let result = with_retries(&cfg, &name, || channels::ping(&client, &url, body.as_deref())).await;
            record(&counts, &name, &result, "ping");
        }));
    }

    /// `pgbackd notify-test`: one test message through each channel (or the one named), sent
    /// now, one attempt each; the result per channel.
    pub async fn test(&self, only: Option<&str>, now: DateTime<Utc>) -> Vec<(String, Result<()>)> {
        let ch = self.current();
        let mut out = Vec::new();
        let mut event = Event::new(EventKind::Test, "notify-test", "-", now);
        event.error = Some("This is a test message from `pgbackd notify-test`: this channel works.".into());
        for c in ch.list.iter().filter(|c| only.is_none_or(|n| n == c.name())) {
            let r = tokio::time::timeout(ch.cfg.timeout, c.send(&event))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {}", crate::units::duration(ch.cfg.timeout))));
            out.push((c.name().to_owned(), r));
        }
        let client = channels::http_client(ch.cfg.timeout);
        for p in ch.pings.iter().filter(|p| only.is_none_or(|n| n == p.name)) {
            // the success URL: a test must not mark the check as failed
            out.push((p.name.clone(), channels::ping(&client, &p.success_url, None).await));
        }
        out
    }

    /// Waits (at most `limit`) for deliveries in flight, at shutdown.
    pub async fn flush(&self, limit: Duration) {
        self.deliveries.close();
        let _ = tokio::time::timeout(limit, self.deliveries.wait()).await;
    }
}

fn build(config: &Config) -> Result<Channels> {
    let cfg = config.notifications.clone();
    let (list, pings) = channels::build(&cfg)?;
    Ok(Channels { list, pings, cfg })
}

async fn with_retries<F, Fut>(cfg: &NotificationsConfig, name: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut wait = cfg.retry_backoff;
    let mut attempt = 1;
    loop {
        let r = tokio::time::timeout(cfg.timeout, f())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {}", crate::units::duration(cfg.timeout))));
        match r {
            Ok(()) => return Ok(()),
            Err(e) if attempt < cfg.attempts => {
                tracing::warn!(channel = name, attempt, error = %format!("{e:#}"), retry_in_s = wait.as_secs_f64(), "notification not delivered: retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.context(format!("after {attempt} attempts"))),
        }
    }
}

fn record(counts: &Mutex<DeliveryCounts>, name: &str, result: &Result<()>, what: &str) {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(()) => {
            *c.sent.entry(name.to_owned()).or_default() += 1;
            tracing::info!(channel = name, event = what, "notification delivered");
        }
        Err(e) => {
            *c.failed.entry(name.to_owned()).or_default() += 1;
            tracing::error!(channel = name, event = what, error = %format!("{e:#}"), "notification failed");
        }
    }
}

#[cfg(test)]
mod tests;
