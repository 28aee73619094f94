//! What the OS (or a test) tells the daemon: stop, or reload.

use anyhow::Result;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT: stop; a second one cancels running jobs at once.
    Terminate,
    /// SIGHUP: reload the config.
    Reload,
}

/// Forwards SIGTERM/SIGINT and SIGHUP to the daemon until `stop`.
pub fn os_signals(stop: CancellationToken) -> Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    crate::tasks::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = stop.cancelled() => break,
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Terminate,
                _ = hup.recv() => Signal::Reload,
            };
            tracing::info!(signal = ?s, "signal received");
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
