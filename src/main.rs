//! The `pgbackd` binary: parse the command line, start logging, run, map errors to exit codes
//! (0 ok, 1 job failed, 2 usage or runtime error, 78 invalid config; archive-get: 1 not archived,
//! 126 any error, which stops PostgreSQL's recovery).

use clap::Parser;
use pgbackd::cli::{self, Cli};
use pgbackd::config::ConfigErrors;
use pgbackd::telemetry::Sink;
use std::process::ExitCode;

fn main() -> ExitCode {
    // run by ssh as its askpass helper (an SFTP target's encrypted key_file): answer its one
    // question with the passphrase it was given, and nothing else
    #[cfg(feature = "sftp")]
    if let Some(pass) = std::env::var_os(pgbackd::storage::sftp::ASKPASS_ENV)
        && std::env::var_os("SSH_ASKPASS_REQUIRE").is_some()
        && std::env::args_os().len() == 2
    {
        use std::io::Write;
        use std::os::unix::ffi::OsStrExt;
        let mut out = std::io::stdout();
        let _ = out.write_all(pass.as_bytes()).and_then(|()| out.write_all(b"\n"));
        return ExitCode::SUCCESS;
    }
    limit_heap_growth();
    let cli = Cli::parse();
    // the daemon's config is read before logging starts: logging.file comes from it
    let daemon_config = match &cli.command {
        cli::Command::Run => match cli::load_config(&cli) {
            Ok(c) => Some(c),
            Err(err) => return report(err),
        },
        _ => None,
    };
    // the demo tells its own story on stdout; its logs only need to show problems
    let quiet_demo = matches!(cli.command, cli::Command::Demo(_)) && cli.log_level == "info";
    let level = if quiet_demo { "warn" } else { &cli.log_level };
    // the daemon owns stdout; other commands print their results there and log to stderr
    let sink = if daemon_config.is_some() { Sink::Stdout } else { Sink::Stderr };
    let log_file = daemon_config.as_ref().and_then(|c| c.log_file.as_ref());
    let _log_guard = match pgbackd::telemetry::init(level, cli.log_format, sink, log_file) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    let archive_get = matches!(cli.command, cli::Command::ArchiveGet(_));
    match runtime.block_on(cli::run(cli, daemon_config)) {
        Ok(code) => code,
        // restore_command: an exit above 125 stops the recovery; any other failure would be taken
        // for a file missing from the archive, and a recovery to the end of the WAL would end
        // (and promote) early at a damaged segment without anyone noticing
        Err(err) if archive_get => {
            eprintln!(
                "error: {}; exit {} so that PostgreSQL stops the recovery instead of taking the file for missing",
                pgbackd::secret::redact(&format!("{err:#}")),
                cli::EXIT_RESTORE_ABORT
            );
            ExitCode::from(cli::EXIT_RESTORE_ABORT)
        }
        Err(err) => report(err),
    }
}

/// Prints an error and maps it to its exit code.
fn report(err: anyhow::Error) -> ExitCode {
    let code = cli::exit_code_for(&err);
    match err.downcast_ref::<ConfigErrors>() {
        Some(config_errors) => eprint!("{}", pgbackd::secret::redact(&config_errors.to_string())),
        None => eprintln!("error: {}", pgbackd::secret::redact(&format!("{err:#}"))),
    }
    ExitCode::from(code)
}

/// Segment buffers are a few MiB each; glibc would otherwise keep freed ones in per-thread heaps
/// (its mmap threshold grows after the first free), so resident memory would track the peak of
/// every thread instead of what is in flight. A fixed 1 MiB threshold returns them to the OS.
fn limit_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    // (No safe wrapper exists for it: the one reviewed unsafe block of the binary.)
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
