//! `pgbackd completions SHELL` and `pgbackd man`: generated from the clap tree, so they never
//! drift from `--help` (clap_complete, clap_mangen).

use super::EXIT_OK;
use super::args::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;
use std::process::ExitCode;

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgbackd", &mut out);
    print(&out)
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn print(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::from(EXIT_OK)),
    }
}

/// The top page on stdout, or every page (`pgbackd.1`, `pgbackd-backup.1`, ...) into `dir`.
pub fn man(dir: Option<&Path>) -> Result<ExitCode> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return print(&out);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).title(name.to_uppercase()).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("pgbackd-{}", sub.get_name());
        write(&name, sub.clone().display_name(name.clone()).bin_name(format!("pgbackd {}", sub.get_name())))?;
    }
    write("pgbackd", cmd)?;
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_gets_a_man_page_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        super::man(Some(dir.path())).unwrap();
        let page = std::fs::read_to_string(dir.path().join("pgbackd-restore-cluster.1")).unwrap();
        assert!(page.contains(".TH PGBACKD-RESTORE-CLUSTER") && page.contains("\\-\\-to\\-time"), "{page}");
        let top = std::fs::read_to_string(dir.path().join("pgbackd.1")).unwrap();
        assert!(top.contains("recovery\\-drill") && top.contains("completions"), "{top}");
        // hidden commands have no page
        assert!(!dir.path().join("pgbackd-archive-prefetch.1").exists());
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut <super::Cli as clap::CommandFactory>::command(),
            "pgbackd",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("restore-cluster") && bash.contains("--to-restore-point"), "{bash}");
    }
}
