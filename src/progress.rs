//! Progress of a long stream: a bar on an interactive terminal (bytes, rate, elapsed, and with an
//! expected size the percentage and ETA), never in logs or when piped; when stderr is not a
//! terminal, a `progress` log event every 30 seconds (with `percent` and `eta_s` when expected).

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

/// Reports progress of `counter` until the tracker is dropped or finished. `expected` is the
/// size the stream will probably reach (a restore's exact raw size; for a backup the previous
/// full's, else the database's): a percentage and ETA are shown from it, never above 99 % before
/// the end.
pub fn track(label: &str, counter: Arc<Counter>, interactive: bool, expected: Option<u64>) -> Tracker {
    let expected = expected.filter(|&e| e > 0);
    if let Some(e) = expected {
        counter.set_expected(e);
    }
    let tty = interactive && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = ProgressBar::with_draw_target(expected, ProgressDrawTarget::stderr());
        let template = match expected {
            Some(_) => "{msg} [{bar:25}] {percent:>2}% {bytes} of ~{total_bytes} at {bytes_per_sec}, ETA {eta}",
            None => "{spinner} {msg} {bytes} at {bytes_per_sec}, {elapsed_precise}",
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .map(|s| s.progress_chars("=> "))
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
            let estimate = expected.map(|e| Estimate::at(bytes, e, start.elapsed()));
            match &b {
                Some(bar) => {
                    if let Some(e) = &estimate {
                        bar.set_length(e.total);
                    }
                    bar.set_position(bytes);
                }
                None if last_log.elapsed() >= Duration::from_secs(30) => {
                    let secs = last_log.elapsed().as_secs_f64();
                    let mbps = (bytes - last_bytes) as f64 / secs / 1e6;
                    let (percent, eta_s) = estimate.map(|e| (e.percent, e.eta.as_secs())).unzip();
                    tracing::info!(what = %label, bytes, percent, eta_s, mb_per_s = format!("{mbps:.1}"), elapsed_s = start.elapsed().as_secs(), "progress");
                    last_log = Instant::now();
                    last_bytes = bytes;
                }
                None => {}
            }
        }
    });
    Tracker { bar, task }
}

/// Where a stream stands against its expected size (the terminal bar, the progress log events
/// and the daemon's status page all say this).
#[derive(Debug, PartialEq)]
pub struct Estimate {
    /// The expected total, raised to just above what was read when the stream outgrows it.
    pub total: u64,
    pub percent: u32,
    pub eta: Duration,
}

impl Estimate {
    pub fn at(bytes: u64, expected: u64, elapsed: Duration) -> Estimate {
        // a stream larger than expected is near its end, never "done" before it is
        let total = expected.max(bytes + bytes / 200 + 1);
        let percent = ((bytes as f64 / total as f64 * 100.0) as u32).min(99);
        let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
        let eta = if rate > 0.0 { Duration::from_secs_f64((total - bytes) as f64 / rate) } else { Duration::ZERO };
        Estimate { total, percent, eta }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Estimate;
    use std::time::Duration;

    #[test]
    fn percentage_and_eta_from_the_expected_size() {
        let e = Estimate::at(250, 1000, Duration::from_secs(10));
        assert_eq!(e, Estimate { total: 1000, percent: 25, eta: Duration::from_secs(30) });
        // outgrowing the estimate: just below 100 %, a short ETA, never "done" early
        let e = Estimate::at(2000, 1000, Duration::from_secs(10));
        assert_eq!((e.percent, e.total), (99, 2011));
        assert!(e.eta < Duration::from_millis(200), "{e:?}");
        assert_eq!(Estimate::at(0, 1000, Duration::ZERO).percent, 0);
    }
}
