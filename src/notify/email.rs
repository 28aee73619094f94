//! Email over SMTP with STARTTLS or implicit TLS, authentication and private CAs (lettre);
//! cargo feature `email`.

use super::{Channel, Event};
use crate::config::notify::{EmailChannel, EventKind, SmtpTls};
use anyhow::{Context, Result, anyhow};
use std::time::Duration;

pub struct Email {
    cfg: EmailChannel,
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
}

impl Email {
    pub fn new(cfg: &EmailChannel, timeout: Duration) -> Result<Email> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let mut tls = TlsParameters::builder(cfg.server.clone());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let cert =
                Certificate::from_pem(&pem).map_err(|e| anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
            tls = tls.add_root_certificate(cert);
        }
        let params = tls.build().map_err(|e| anyhow!("email: TLS setup for {}: {e}", cfg.server))?;
        let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(&cfg.server)
            .port(cfg.port)
            .timeout(Some(timeout))
            .tls(match cfg.tls {
                SmtpTls::StartTls => Tls::Required(params),
                SmtpTls::Tls => Tls::Wrapper(params),
                SmtpTls::None => Tls::None,
            });
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                u.clone(),
                p.expose().to_owned(),
            ));
        }
        Ok(Email { cfg: cfg.clone(), transport: b.build() })
    }
}

#[async_trait::async_trait]
impl Channel for Email {
    fn name(&self) -> &str {
        "email"
    }
    fn events(&self) -> &[EventKind] {
        &self.cfg.events
    }
    async fn send(&self, e: &Event) -> Result<()> {
        use lettre::AsyncTransport;
        let mut m = lettre::Message::builder()
            .from(self.cfg.from.parse().map_err(|err| anyhow!("email: from address {:?}: {err}", self.cfg.from))?)
            .subject(e.subject());
        for to in &self.cfg.to {
            m = m.to(to.parse().map_err(|err| anyhow!("email: to address {to:?}: {err}"))?);
        }
        let msg = m
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(e.text())
            .map_err(|err| anyhow!("email: {err}"))?;
        self.transport
            .send(msg)
            .await
            .map_err(|err| anyhow!("email via {}:{}: {err}", self.cfg.server, self.cfg.port))?;
        Ok(())
    }
}
