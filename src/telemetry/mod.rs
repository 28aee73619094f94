//! Logging: tracing to stdout for the daemon and to stderr for one-shot commands (whose stdout
//! carries ids, JSON and archives), JSON lines when that stream is not a terminal, human-readable
//! otherwise, plus an optional rolling JSON file (`logging.file`). `RUST_LOG` overrides
//! `--log-level`. Every line is redacted ([`crate::secret::redact`]). Messages are constant sentences; data goes in fields. [`events`]: what a job run
//! causes (log line, report, status, notification), in one place.

pub mod events;

use crate::config::{LogFile, Rotation};
use crate::secret::Redacting;
use std::io::IsTerminal;
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("pgbackd={level},warn")))
}

/// Starts logging. With `file`, a rolling JSON log is written there too; the returned guard
/// flushes it when dropped (keep it for the life of the process).
pub fn init(
    level: &str,
    format: LogFormat,
    sink: Sink,
    file: Option<&LogFile>,
) -> Result<Option<tracing_appender::non_blocking::WorkerGuard>, String> {
    let tty = match sink {
        Sink::Stdout => std::io::stdout().is_terminal(),
        Sink::Stderr => std::io::stderr().is_terminal(),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !tty,
    };
    let writer = move || -> Box<dyn std::io::Write> {
        match sink {
            Sink::Stdout => Box::new(Redacting(std::io::stdout())),
            Sink::Stderr => Box::new(Redacting(std::io::stderr())),
        }
    };
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
    });
    let pretty_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_target(false).with_writer(writer));
    let (file_layer, guard) = match file {
        Some(f) => {
            let appender = RollingFileAppender::builder()
                .rotation(match f.rotation {
                    Rotation::Hourly => AppenderRotation::HOURLY,
                    Rotation::Daily => AppenderRotation::DAILY,
                    Rotation::Never => AppenderRotation::NEVER,
                })
                .filename_prefix("pgbackd")
                .filename_suffix("log")
                .max_log_files(f.keep)
                .build(&f.dir)
                .map_err(|e| format!("cannot open the log directory {}: {e}", f.dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(Redacting(appender));
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_ansi(false)
                .with_writer(writer);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(json_layer)
        .with(pretty_layer)
        .with(file_layer)
        .try_init();
    Ok(guard)
}
