//! `pgbackd notify-test`: a test message through each notification channel and ping.

use super::args::NotifyTestArgs;
use super::{EXIT_JOB_FAILED, EXIT_OK};
use crate::config::Config;
use anyhow::{Result, bail};
use std::process::ExitCode;

pub async fn test(config: &Config, args: &NotifyTestArgs) -> Result<ExitCode> {
    let names = config.notifications.channel_names();
    if names.is_empty() {
        bail!("no notification channel is configured (see notifications: in docs/monitoring.md)");
    }
    if let Some(c) = &args.channel
        && !names.contains(c)
    {
        bail!("no channel named {c:?}; configured: {}", names.join(", "));
    }
    let notifier = crate::notify::Notifier::new(config)?;
    let results = notifier.test(args.channel.as_deref(), chrono::Utc::now()).await;
    let mut failed = false;
    for (name, r) in &results {
        match r {
            Ok(()) => say!("ok      {name}"),
            Err(e) => {
                failed = true;
                say!("FAILED  {name}: {e:#}");
            }
        }
    }
    Ok(ExitCode::from(if failed { EXIT_JOB_FAILED } else { EXIT_OK }))
}
