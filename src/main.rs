//! The `pgbackd` binary: parse the command line, start logging, run, map errors to exit codes
//! (0 ok, 1 job failed, 2 usage or runtime error, 78 invalid config).

use clap::Parser;
use pgbackd::cli::{self, Cli};
use pgbackd::config::ConfigErrors;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    pgbackd::telemetry::init(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            let code = cli::exit_code_for(&err);
            match err.downcast_ref::<ConfigErrors>() {
                Some(config_errors) => eprint!("{config_errors}"),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::from(code)
        }
    }
}
