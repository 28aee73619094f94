//! `notifications:` (email, Slack, webhooks, healthchecks pings) and `monitoring:` (the HTTP
//! endpoint, freshness, the disk guard).

use super::node::{Node, Value};
use super::reader::{ByteSize, Ctx, Dur, MapReader, read_list};
use super::{JobKind, read_secret};
use crate::secret::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// What a channel is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job failed (once per failing job and database, until it recovers).
    Failure,
    /// A job succeeded.
    Success,
    /// A job succeeded after a failure was notified.
    Recovered,
    /// A database has had no successful full backup for `monitoring.max_age`.
    Stale,
    /// `pgbackd notify-test`.
    Test,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Failure => "failure",
            EventKind::Success => "success",
            EventKind::Recovered => "recovered",
            EventKind::Stale => "stale",
            EventKind::Test => "test",
        }
    }

    fn from_name(s: &str) -> Option<EventKind> {
        [EventKind::Failure, EventKind::Success, EventKind::Recovered, EventKind::Stale]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// The events a channel gets unless it says otherwise: failures, and their follow-ups.
pub const DEFAULT_EVENTS: [EventKind; 3] = [EventKind::Failure, EventKind::Recovered, EventKind::Stale];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    StartTls,
    /// TLS from the first byte, usually port 465.
    Tls,
    /// No encryption (a local relay only).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailChannel {
    pub events: Vec<EventKind>,
    pub from: String,
    pub to: Vec<String>,
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A PEM file of extra CA certificates (a private relay's).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlackChannel {
    pub events: Vec<EventKind>,
    pub webhook_url: Secret,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookChannel {
    pub name: String,
    pub events: Vec<EventKind>,
    pub url: Secret,
    pub method: String,
    /// Header values may hold tokens: secrets.
    pub headers: Vec<(String, Secret)>,
    /// A body template (`{{field}}` placeholders, JSON-escaped); `None`: the event as JSON.
    pub body: Option<String>,
}

/// healthchecks.io-style pings for one job kind: start, success and failure URLs, so an external
/// dead man's switch notices when runs stop.
#[derive(Debug, Clone, PartialEq)]
pub struct PingConfig {
    pub name: String,
    pub job: JobKind,
    /// Only runs on this database (default: every database).
    pub database: Option<String>,
    pub start_url: Option<Secret>,
    pub success_url: Secret,
    pub fail_url: Secret,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotificationsConfig {
    pub email: Option<EmailChannel>,
    pub slack: Option<SlackChannel>,
    pub webhooks: Vec<WebhookChannel>,
    pub healthchecks: Vec<PingConfig>,
    /// At most this many messages per channel per hour (pings are not limited).
    pub max_per_hour: u32,
    /// Delivery attempts per message.
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub retry_backoff: Duration,
    /// How long one delivery attempt may take.
    pub timeout: Duration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            email: None,
            slack: None,
            webhooks: Vec::new(),
            healthchecks: Vec::new(),
            max_per_hour: 20,
            attempts: 4,
            retry_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(20),
        }
    }
}

impl NotificationsConfig {
    /// Every channel's name, in order: `email`, `slack`, then the webhooks' names.
    pub fn channel_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.email.is_some() {
            out.push("email".to_owned());
        }
        if self.slack.is_some() {
            out.push("slack".to_owned());
        }
        out.extend(self.webhooks.iter().map(|w| w.name.clone()));
        out.extend(self.healthchecks.iter().map(|p| p.name.clone()));
        out
    }

    /// Every secret it holds (for keeping them from children's environments).
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut out: Vec<&Secret> = Vec::new();
        if let Some(e) = &self.email {
            out.extend(e.password.iter());
        }
        if let Some(s) = &self.slack {
            out.push(&s.webhook_url);
        }
        for w in &self.webhooks {
            out.push(&w.url);
            out.extend(w.headers.iter().map(|(_, v)| v));
        }
        for p in &self.healthchecks {
            out.extend(p.start_url.iter().chain([&p.success_url, &p.fail_url]));
        }
        out
    }
}

/// `monitoring:`
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoringConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served (`None`: off).
    pub listen: Option<String>,
    /// How old the newest successful full backup may be (default: twice the full_backup
    /// schedule's period, else 48 h).
    pub max_age: Option<Duration>,
    /// A backup to a local target fails early when its filesystem has less free space than the
    /// estimate (the previous backup's size plus this margin)...
    pub min_free_space: u64,
    /// ... and warns when less than this share of the filesystem would stay free.
    pub warn_free_percent: f64,
    /// The read-only status page at `/` (and the JSON at `/status`).
    pub status_page: StatusPageConfig,
    /// `POST /trigger`: jobs run on request (`pgbackd trigger`); off without a token.
    pub trigger: Option<TriggerConfig>,
}

/// `monitoring.status_page`: served without a token to anyone on a loopback listener; on any
/// other listener only with `Authorization: Bearer <token>` (or the token as a Basic-auth
/// password, which browsers ask for), and not at all without a token configured.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPageConfig {
    pub enabled: bool,
    pub token: Option<Secret>,
}

/// `monitoring.trigger`.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerConfig {
    /// Every request carries it as `Authorization: Bearer <token>`.
    pub token: Secret,
    /// Requests from other hosts are accepted (a TLS proxy in front keeps the token off the
    /// network in clear); without it only loopback peers may trigger.
    pub behind_tls_proxy: bool,
}

impl MonitoringConfig {
    /// Whether the endpoint listens on a loopback address only.
    pub fn loopback(&self) -> bool {
        self.listen
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_loopback())
    }

    pub fn secrets(&self) -> Vec<&Secret> {
        self.status_page.token.iter().chain(self.trigger.as_ref().map(|t| &t.token)).collect()
    }
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            listen: Some("127.0.0.1:9187".into()),
            max_age: None,
            min_free_space: 64 * 1024 * 1024,
            warn_free_percent: 10.0,
            status_page: StatusPageConfig { enabled: true, token: None },
            trigger: None,
        }
    }
}

fn read_events(m: &mut MapReader<'_, '_>) -> Vec<EventKind> {
    let Some(names) = m.opt::<Vec<String>>("events") else { return DEFAULT_EVENTS.to_vec() };
    let mut out = Vec::new();
    for n in names {
        match EventKind::from_name(&n) {
            Some(k) => out.push(k),
            None => m.ctx().error(
                &m.child_path("events"),
                format!("unknown event {n:?}; expected failure, success, recovered or stale"),
                Some(m.loc_of("events")),
            ),
        }
    }
    out
}

/// A disabled `email:`/`slack:` section: its known keys are accepted as they are (the reference
/// config ships them with unset variables), unknown ones still reported.
fn skip_disabled(mut m: MapReader<'_, '_>, keys: &[&str]) {
    for k in keys {
        let _ = m.node(k);
    }
    m.finish();
}

const EMAIL_KEYS: [&str; 10] = [
    "from",
    "to",
    "smtp_server",
    "smtp_port",
    "tls",
    "smtp_username",
    "smtp_password",
    "smtp_password_file",
    "ca_file",
    "events",
];

fn read_email(mut m: MapReader<'_, '_>) -> Option<EmailChannel> {
    if !m.opt::<bool>("enabled").unwrap_or(false) {
        skip_disabled(m, &EMAIL_KEYS);
        return None;
    }
    let channel = {
        let from = m.req::<String>("from");
        let to = match m.node("to").map(|n| &n.value) {
            Some(Value::Seq(_)) => m.opt::<Vec<String>>("to"),
            _ => m.req::<String>("to").map(|t| vec![t]),
        };
        let server = m.req::<String>("smtp_server");
        let port = m.opt::<u16>("smtp_port");
        let tls = match m.opt::<String>("tls").as_deref() {
            None => Some(if port == Some(465) { SmtpTls::Tls } else { SmtpTls::StartTls }),
            Some("starttls") => Some(SmtpTls::StartTls),
            Some("tls") => Some(SmtpTls::Tls),
            Some("none") => Some(SmtpTls::None),
            Some(other) => {
                m.ctx().error(
                    &m.child_path("tls"),
                    format!("expected starttls, tls or none, found {other:?}"),
                    Some(m.loc_of("tls")),
                );
                None
            }
        };
        let username = m.opt::<String>("smtp_username").filter(|u| !u.is_empty());
        let password = read_secret(&mut m, "smtp_password").filter(|p| !p.expose().is_empty());
        let ca_file = m.opt::<PathBuf>("ca_file");
        if let Some(p) = &ca_file
            && !p.exists()
        {
            m.ctx().error(
                &m.child_path("ca_file"),
                format!("{} does not exist", p.display()),
                Some(m.loc_of("ca_file")),
            );
        }
        if username.is_some() != password.is_some() {
            m.ctx().error(
                &m.child_path("smtp_password"),
                "give both smtp_username and smtp_password, or neither",
                Some(m.loc()),
            );
        }
        #[cfg(not(feature = "email"))]
        m.ctx().error(
            &m.child_path("smtp_server"),
            "this pgbackd was built without email support: build it with the default features (cargo feature \
             email), or remove notifications.email",
            Some(m.loc()),
        );
        #[cfg(feature = "email")]
        for (key, addr) in from.iter().map(|f| ("from", f)).chain(to.iter().flatten().map(|t| ("to", t))) {
            if addr.parse::<lettre::message::Mailbox>().is_err() {
                m.ctx().error(
                    &m.child_path(key),
                    format!("{addr:?} is not an email address (name@example.com, or Name <name@example.com>)"),
                    Some(m.loc_of(key)),
                );
            }
        }
        let events = read_events(&mut m);
        Some(EmailChannel {
            events,
            from: from?,
            to: to?,
            server: server?,
            port: port.unwrap_or(if tls == Some(SmtpTls::Tls) { 465 } else { 587 }),
            tls: tls?,
            username,
            password,
            ca_file,
        })
    };
    m.finish();
    channel
}

fn read_slack(mut m: MapReader<'_, '_>) -> Option<SlackChannel> {
    if !m.opt::<bool>("enabled").unwrap_or(false) {
        skip_disabled(m, &["webhook_url", "webhook_url_file", "channel", "events"]);
        return None;
    }
    let channel = {
        let url = read_secret(&mut m, "webhook_url").filter(|u| !u.expose().is_empty());
        if url.is_none() {
            m.ctx().error(&m.child_path("webhook_url"), "the Slack incoming webhook URL is required", Some(m.loc()));
        }
        let channel = m.opt::<String>("channel").filter(|c| !c.is_empty());
        let events = read_events(&mut m);
        Some(SlackChannel { events, webhook_url: url?, channel })
    };
    m.finish();
    channel
}

fn check_url(m: &MapReader<'_, '_>, key: &str, url: &Secret) {
    let u = url.expose();
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        // the value is a secret: never echo it
        m.ctx().error(&m.child_path(key), "expected an http:// or https:// URL", Some(m.loc_of(key)));
    }
}

fn read_webhook(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<WebhookChannel> {
    let mut m = ctx.map(node, path)?;
    let name = m.req::<String>("name");
    let url = read_secret(&mut m, "url");
    if let Some(u) = &url {
        check_url(&m, "url", u);
    } else {
        m.ctx().error(&m.child_path("url"), "required", Some(m.loc()));
    }
    let method = m.opt::<String>("method").unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
    if !["POST", "PUT", "GET"].contains(&method.as_str()) {
        m.ctx().error(&m.child_path("method"), "expected POST, PUT or GET", Some(m.loc_of("method")));
    }
    let mut headers = Vec::new();
    if let Some(mut h) = m.map("headers") {
        let base = h.child_path("");
        for (key, value) in h.entries() {
            let k = key.key_text();
            if let Some(v) = ctx.read::<String>(value, &format!("{base}{k}")) {
                headers.push((k, Secret::new(v)));
            }
        }
        h.finish();
    }
    let body = m.opt::<String>("body");
    let events = read_events(&mut m);
    m.finish();
    Some(WebhookChannel { name: name?, events, url: url?, method, headers, body })
}

fn read_ping(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<PingConfig> {
    let mut m = ctx.map(node, path)?;
    let name = m.opt::<String>("name");
    let job = m.req::<String>("job").and_then(|j| match JobKind::scheduled(&j) {
        Some(k) => Some(k),
        None => {
            m.ctx().error(&m.child_path("job"), format!("unknown job kind {j:?}"), Some(m.loc_of("job")));
            None
        }
    });
    let database = m.opt::<String>("database");
    // `url:` is healthchecks.io's form (start = url/start, fail = url/fail); or each URL alone
    let url = read_secret(&mut m, "url");
    let start_url = read_secret(&mut m, "start_url");
    let success_url = read_secret(&mut m, "success_url");
    let fail_url = read_secret(&mut m, "fail_url");
    for (key, u) in [("url", &url), ("start_url", &start_url), ("success_url", &success_url), ("fail_url", &fail_url)] {
        if let Some(u) = u {
            check_url(&m, key, u);
        }
    }
    let base = url.as_ref().map(|u| u.expose().trim_end_matches('/').to_owned());
    let join = |suffix: &str| base.as_ref().map(|b| Secret::new(format!("{b}{suffix}")));
    let start_url = start_url.or_else(|| join("/start"));
    let success_url = success_url.or_else(|| join(""));
    let fail_url = fail_url.or_else(|| join("/fail"));
    if success_url.is_none() || fail_url.is_none() {
        m.ctx().error(&m.child_path("url"), "give url (healthchecks.io), or success_url and fail_url", Some(m.loc()));
    }
    m.finish();
    let job = job?;
    Some(PingConfig {
        name: name.unwrap_or_else(|| format!("healthchecks-{}", job.name())),
        job,
        database,
        start_url,
        success_url: success_url?,
        fail_url: fail_url?,
    })
}

pub fn read_notifications(top: &mut MapReader<'_, '_>) -> NotificationsConfig {
    let mut cfg = NotificationsConfig::default();
    let Some(mut n) = top.map("notifications") else { return cfg };
    cfg.email = n.map("email").and_then(read_email);
    cfg.slack = n.map("slack").and_then(read_slack);
    cfg.webhooks = read_list(&mut n, "webhooks", read_webhook);
    cfg.healthchecks = read_list(&mut n, "healthchecks", read_ping);
    cfg.max_per_hour = n.opt::<u32>("max_per_hour").unwrap_or(cfg.max_per_hour);
    cfg.attempts = n.opt::<u32>("attempts").unwrap_or(cfg.attempts).max(1);
    cfg.retry_backoff = n.opt::<Dur>("retry_backoff").map(|d| d.0).unwrap_or(cfg.retry_backoff);
    cfg.timeout = n.opt::<Dur>("timeout").map(|d| d.0).unwrap_or(cfg.timeout);
    let names = cfg.channel_names();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            n.ctx().error(&n.child_path(""), format!("channel name {name:?} is used twice"), Some(n.loc()));
        }
    }
    n.finish();
    cfg
}

pub fn read_monitoring(top: &mut MapReader<'_, '_>) -> MonitoringConfig {
    let mut cfg = MonitoringConfig::default();
    let Some(mut m) = top.map("monitoring") else { return cfg };
    if let Some(listen) = m.opt::<String>("listen") {
        cfg.listen = match listen.as_str() {
            "" | "off" | "false" => None,
            addr => {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    m.ctx().error(
                        &m.child_path("listen"),
                        format!("expected an address like 127.0.0.1:9187, or off; found {addr:?}"),
                        Some(m.loc_of("listen")),
                    );
                }
                Some(addr.to_owned())
            }
        };
    }
    cfg.max_age = m.opt::<Dur>("max_age").map(|d| d.0);
    cfg.min_free_space = m.opt::<ByteSize>("min_free_space").map(|b| b.0).unwrap_or(cfg.min_free_space);
    if let Some(p) = m.opt::<f64>("warn_free_percent") {
        if !(0.0..100.0).contains(&p) {
            m.ctx().error(
                &m.child_path("warn_free_percent"),
                "must be between 0 and 100",
                Some(m.loc_of("warn_free_percent")),
            );
        }
        cfg.warn_free_percent = p;
    }
    if let Some(mut p) = m.map("status_page") {
        cfg.status_page.enabled = p.opt::<bool>("enabled").unwrap_or(true);
        cfg.status_page.token = read_token(&mut p);
        p.finish();
    }
    if let Some(mut t) = m.map("trigger").filter(|_| m.has("trigger")) {
        let given = t.has("token") || t.has("token_file");
        let token = read_token(&mut t);
        let behind_tls_proxy = t.opt::<bool>("behind_tls_proxy").unwrap_or(false);
        if !given {
            t.ctx().error(
                &t.child_path("token_file"),
                "triggering jobs over HTTP needs a token: set token_file (e.g. the output of `openssl rand -hex 32`), \
                 or remove monitoring.trigger",
                Some(t.loc()),
            );
        }
        cfg.trigger = token.map(|token| TriggerConfig { token, behind_tls_proxy });
        t.finish();
    }
    if cfg.trigger.is_some() && cfg.listen.is_none() {
        m.ctx().error(
            &m.child_path("trigger"),
            "monitoring.listen is off: the trigger endpoint needs it (e.g. 127.0.0.1:9187)",
            Some(m.loc_of("trigger")),
        );
    }
    if let Some(t) = &cfg.trigger
        && !cfg.loopback()
        && !t.behind_tls_proxy
        && cfg.listen.is_some()
    {
        m.ctx().warn(
            &m.child_path("trigger"),
            format!(
                "{} is not a loopback address: trigger requests from other hosts are refused, as their token would cross \
                 the network in clear; put a TLS proxy in front and set behind_tls_proxy: true (docs/ci.md)",
                cfg.listen.as_deref().unwrap_or_default()
            ),
            Some(m.loc_of("trigger")),
        );
    }
    m.finish();
    cfg
}

/// A bearer token (`token: ${ENV}` or `token_file:`): at least 16 characters, so it cannot be
/// guessed.
fn read_token(m: &mut MapReader<'_, '_>) -> Option<Secret> {
    let token = read_secret(m, "token")?;
    if token.expose().chars().count() < 16 || token.expose().chars().any(char::is_whitespace) {
        let key = if m.has("token_file") { "token_file" } else { "token" };
        m.ctx().error(
            &m.child_path(key),
            "a token needs at least 16 characters and no spaces: make one with `openssl rand -hex 32`",
            Some(m.loc_of(key)),
        );
        return None;
    }
    Some(token)
}
