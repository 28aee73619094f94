//! The channels: Slack incoming webhooks, generic webhooks, email over SMTP (lettre), and
//! healthchecks.io-style pings.

use super::{Channel, Event};
use crate::config::JobKind;
use crate::config::notify::{EventKind, NotificationsConfig, PingConfig, WebhookChannel};
use crate::secret::Secret;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::time::Duration;

pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("pgbackd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// An HTTP request's outcome. The URL may hold a token: an error names only its origin.
async fn check(resp: std::result::Result<reqwest::Response, reqwest::Error>) -> Result<()> {
    let resp = resp.map_err(describe)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    bail!("HTTP {status}: {}", body.trim())
}

/// A request that got no answer, in words: which server, and the cause at the bottom of the chain
/// ("Connection refused", "failed to lookup address"), with what to check.
fn describe(e: reqwest::Error) -> anyhow::Error {
    let origin = e.url().map(|u| u.origin().ascii_serialization()).unwrap_or_else(|| "the server".into());
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = if std::ptr::addr_eq(cause, &e) { String::new() } else { format!(": {cause}") };
    if e.is_timeout() {
        anyhow!("no answer from {origin} in time{cause}; check that it is up, or raise notifications.timeout")
    } else if e.is_connect() {
        anyhow!("cannot connect to {origin}{cause}; check the URL's host and port and that the receiver runs")
    } else {
        anyhow!("request to {origin} failed{cause}")
    }
}

/// A healthchecks.io-style ping: POST, with the error as the body of a failure ping.
pub async fn ping(client: &reqwest::Client, url: &Secret, body: Option<&str>) -> Result<()> {
    // healthchecks.io keeps the first 100 kB of a ping body
    let body: String = body.unwrap_or("").chars().take(100_000).collect();
    check(client.post(url.expose()).body(body).send().await).await
}

pub struct Ping {
    pub name: String,
    job: JobKind,
    database: Option<String>,
    pub start_url: Option<Secret>,
    pub success_url: Secret,
    pub fail_url: Secret,
}

impl Ping {
    pub fn matches(&self, kind: JobKind, database: &str) -> bool {
        self.job == kind && self.database.as_deref().is_none_or(|d| d == database)
    }
}

struct Slack {
    events: Vec<EventKind>,
    url: Secret,
    channel: Option<String>,
    client: reqwest::Client,
}

#[async_trait::async_trait]
impl Channel for Slack {
    fn name(&self) -> &str {
        "slack"
    }
    fn events(&self) -> &[EventKind] {
        &self.events
    }
    async fn send(&self, e: &Event) -> Result<()> {
        let mut body = serde_json::json!({
            "text": format!("*{}*\n```{}```", e.subject(), e.text().split_once("\n\n").map(|x| x.1).unwrap_or("")),
        });
        if let Some(c) = &self.channel {
            body["channel"] = serde_json::Value::String(c.clone());
        }
        check(self.client.post(self.url.expose()).json(&body).send().await).await.context("slack")
    }
}

struct Webhook {
    cfg: WebhookChannel,
    client: reqwest::Client,
}

/// Fills `{{field}}` placeholders with the event's fields (and `subject`, `text`), escaped for a
/// JSON string; unknown or empty fields become empty.
pub fn render_template(template: &str, e: &Event) -> String {
    let mut fields = match serde_json::to_value(e) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    fields.insert("subject".into(), e.subject().into());
    fields.insert("text".into(), e.text().into());
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = rest[start + 2..start + 2 + len].trim();
        let value = match fields.get(key) {
            Some(serde_json::Value::String(s)) => {
                let quoted = serde_json::to_string(s).unwrap_or_default();
                quoted[1..quoted.len() - 1].to_owned()
            }
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        out.push_str(&value);
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

#[async_trait::async_trait]
impl Channel for Webhook {
    fn name(&self) -> &str {
        &self.cfg.name
    }
    fn events(&self) -> &[EventKind] {
        &self.cfg.events
    }
    async fn send(&self, e: &Event) -> Result<()> {
        let method = reqwest::Method::from_bytes(self.cfg.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut req = self.client.request(method, self.cfg.url.expose());
        let mut has_type = false;
        for (k, v) in &self.cfg.headers {
            has_type |= k.eq_ignore_ascii_case("content-type");
            req = req.header(k.as_str(), v.expose());
        }
        if !has_type {
            req = req.header("content-type", "application/json");
        }
        let body = match &self.cfg.body {
            Some(t) => render_template(t, e),
            None => serde_json::to_string(&serde_json::json!({
                "subject": e.subject(),
                "text": e.text(),
                "event": e,
            }))?,
        };
        check(req.body(body).send().await).await.with_context(|| format!("webhook {}", self.cfg.name))
    }
}

/// The channels and pings of a `notifications:` block.
/// Message channels and pings.
pub type Built = (Vec<Arc<dyn Channel>>, Vec<Ping>);

pub fn build(cfg: &NotificationsConfig) -> Result<Built> {
    let client = http_client(cfg.timeout);
    let mut list: Vec<Arc<dyn Channel>> = Vec::new();
    #[cfg(feature = "email")]
    if let Some(e) = &cfg.email {
        list.push(Arc::new(super::email::Email::new(e, cfg.timeout)?));
    }
    if let Some(s) = &cfg.slack {
        list.push(Arc::new(Slack {
            events: s.events.clone(),
            url: s.webhook_url.clone(),
            channel: s.channel.clone(),
            client: client.clone(),
        }));
    }
    for w in &cfg.webhooks {
        list.push(Arc::new(Webhook { cfg: w.clone(), client: client.clone() }));
    }
    let pings = cfg
        .healthchecks
        .iter()
        .map(|p: &PingConfig| Ping {
            name: p.name.clone(),
            job: p.job,
            database: p.database.clone(),
            start_url: p.start_url.clone(),
            success_url: p.success_url.clone(),
            fail_url: p.fail_url.clone(),
        })
        .collect();
    Ok((list, pings))
}
