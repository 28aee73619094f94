//! Progress of a long stream: a bar on an interactive terminal (bytes, rate, elapsed), never in
//! logs or when piped; when stderr is not a terminal, a `progress` log event every 30 seconds.

use crate::pipeline::Counter;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub struct Tracker {
    bar: Option<ProgressBar>,
    task: JoinHandle<()>,
}

/// Reports progress of `counter` until the tracker is dropped or finished.
pub fn track(label: &str, counter: Arc<Counter>, interactive: bool) -> Tracker {
    let tty = interactive && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} at {bytes_per_sec}, {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label.to_owned());
        bar
    });
    let label = label.to_owned();
    let b = bar.clone();
    let task = crate::tasks::spawn(async move {
        let start = Instant::now();
        let mut last_log = Instant::now();
        let mut last_bytes = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let bytes = counter.get();
            match &b {
                Some(bar) => bar.set_position(bytes),
                None if last_log.elapsed() >= Duration::from_secs(30) => {
                    let secs = last_log.elapsed().as_secs_f64();
                    let mbps = (bytes - last_bytes) as f64 / secs / 1e6;
                    tracing::info!(what = %label, bytes, mb_per_s = format!("{mbps:.1}"), elapsed_s = start.elapsed().as_secs(), "progress");
                    last_log = Instant::now();
                    last_bytes = bytes;
                }
                None => {}
            }
        }
    });
    Tracker { bar, task }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
