//! `pgbackd trigger JOB`: asks a running daemon to run a job (`POST /trigger`) and, with
//! `--wait`, follows the run (`GET /runs/{id}?wait=`) to its end. The daemon does the work with
//! its own credentials; this side needs only the endpoint and the trigger token.

use super::args::TriggerArgs;
use super::{Cli, EXIT_ERROR, EXIT_JOB_FAILED, EXIT_NOT_RUNNING, EXIT_OK};
use crate::daemon::trigger::{TriggerBody, Triggered};
use crate::jobs::report::Outcome;
use crate::status::RunState;
use crate::storage::root_cause;
use anyhow::{Context, Result, bail};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the daemon is and how to prove the right to ask it.
struct Daemon {
    url: String,
    token: String,
    http: reqwest::Client,
}

/// The environment variable a pipeline's secret store fills.
const TOKEN_VAR: &str = "PGBACKD_TRIGGER_TOKEN";

/// `--url`, else `http://` + the config's `monitoring.listen` (an unspecified address means this
/// host); `--token-file`, else `$PGBACKD_TRIGGER_TOKEN`, else the config's trigger token.
fn locate(cli: &Cli, args: &TriggerArgs) -> Result<Daemon> {
    let from_env = std::env::var(TOKEN_VAR).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    let config = match (&args.url, &args.token_file, &from_env, &cli.config) {
        (Some(_), Some(_), _, _) | (Some(_), None, Some(_), _) => None,
        (_, _, _, Some(_)) => Some(super::load_config(cli)?),
        _ => bail!(
            "which daemon? Pass --config (the daemon's config file), or --url and a token (--token-file, or the \
             {TOKEN_VAR} variable)"
        ),
    };
    let url = match (&args.url, &config) {
        (Some(u), _) => u.trim_end_matches('/').to_owned(),
        (None, Some(c)) => {
            let listen = c.monitoring.listen.as_deref().with_context(
                || "monitoring.listen is off in the config: the daemon serves no endpoint to trigger jobs through",
            )?;
            let addr: std::net::SocketAddr =
                listen.parse().with_context(|| format!("monitoring.listen {listen:?} is not an address"))?;
            let ip = match addr.ip() {
                std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                ip => ip,
            };
            format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
        }
        (None, None) => unreachable!("a config is read when no --url is given"),
    };
    let token = match (&args.token_file, from_env, &config) {
        (Some(path), _, _) => std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}: cannot read it", path.display()))?
            .trim()
            .to_owned(),
        (None, Some(t), _) => t,
        (None, _, Some(c)) => match &c.monitoring.trigger {
            Some(t) => t.token.expose().to_owned(),
            None => bail!(
                "the config has no monitoring.trigger: set monitoring.trigger.token_file there (and reload the \
                 daemon), or pass --token-file"
            ),
        },
        (None, _, None) => bail!("no trigger token: pass --token-file or set {TOKEN_VAR}"),
    };
    crate::secret::register([&crate::secret::Secret::new(token.clone())]);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(90))
        .build()
        .context("setting up the HTTP client")?;
    Ok(Daemon { url, token, http })
}

/// What went wrong talking to the daemon, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Daemon {
    /// Sends a request; the daemon's `{"error": ...}` becomes the message of a refusal (exit 2),
    /// no answer at all an exit 3.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| Failure {
            code: EXIT_NOT_RUNNING,
            message: format!(
                "no daemon answers at {} ({}): is `pgbackd run` running, with monitoring.listen there?",
                self.url,
                root_cause(&e)
            ),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let said = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        Err(Failure { code: EXIT_ERROR, message: format!("the daemon at {} refused ({status}): {said}", self.url) })
    }

    async fn trigger(&self, body: &TriggerBody) -> Result<Triggered, Failure> {
        let r = self.send(self.http.post(format!("{}/trigger", self.url)).json(body)).await?;
        r.json()
            .await
            .map_err(|e| Failure { code: EXIT_ERROR, message: format!("the daemon's answer is not a run: {e}") })
    }

    /// The run's state, waiting up to `wait` seconds on the daemon's side for its end.
    async fn state(&self, run_id: &str, wait: u64) -> Result<RunState, Failure> {
        let r = self.send(self.http.get(format!("{}/runs/{run_id}?wait={wait}", self.url))).await?;
        r.json().await.map_err(|e| Failure {
            code: EXIT_ERROR,
            message: format!("the daemon's answer is not a run's state: {e}"),
        })
    }
}

pub async fn run(cli: &Cli, args: &TriggerArgs, cancel: &CancellationToken) -> Result<ExitCode> {
    let daemon = locate(cli, args)?;
    let limit = match &args.timeout {
        Some(t) => Some(crate::config::reader::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout {t:?}: {e}"))?),
        None => None,
    };
    let body = TriggerBody { job: args.job.clone(), database: args.database.clone(), name: args.name.clone() };
    let started = match daemon.trigger(&body).await {
        Ok(t) => t,
        Err(f) => return failed(f),
    };
    let what = format!("{} of {}", started.job, started.subject);
    if started.attached {
        tell!("{what} was already running as run {}: following that run", started.run_id);
    } else {
        tell!("{what} started as run {}", started.run_id);
    }
    if !args.wait {
        if args.json {
            say!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            say!("{}", started.run_id);
        }
        return Ok(ExitCode::from(EXIT_OK));
    }
    let since = Instant::now();
    let mut last_said = Instant::now();
    let mut unreachable = 0;
    let finished = loop {
        let asked = tokio::select! {
            s = daemon.state(&started.run_id, 20) => s,
            _ = cancel.cancelled() => {
                tell!("stopped waiting; run {} goes on in the daemon", started.run_id);
                return Ok(ExitCode::from(EXIT_JOB_FAILED));
            }
        };
        let value = match asked {
            Ok(v) => {
                unreachable = 0;
                v
            }
            // a daemon restarting, a network blip: a few tries before giving up
            Err(f) if f.code == EXIT_NOT_RUNNING && unreachable < 5 => {
                unreachable += 1;
                tokio::time::sleep(Duration::from_secs(2 * unreachable)).await;
                continue;
            }
            Err(f) => return failed(f),
        };
        if let RunState::Finished(r) = value {
            break r;
        }
        if last_said.elapsed() >= Duration::from_secs(30) {
            tell!("{what}: {}", describe(&value));
            last_said = Instant::now();
        }
        if let Some(limit) = limit
            && since.elapsed() >= limit
        {
            tell!(
                "{what} is still going after {}: stopped waiting (run {} goes on in the daemon)",
                crate::units::approx(limit),
                started.run_id
            );
            return Ok(ExitCode::from(EXIT_JOB_FAILED));
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&RunState::Finished(finished.clone()))?);
    }
    let run = finished.run;
    let took = crate::units::approx((run.finished_at - run.started_at).to_std().unwrap_or_default());
    match run.outcome {
        Outcome::Success => {
            let stored = crate::jobs::kind::JobKind::triggerable(&started.job).is_some_and(|k| k.is_backup());
            let result = match (&run.backup_id, &run.restore_point) {
                (Some(id), _) if stored => format!(": backup {id}"),
                (Some(id), _) => format!(" (backup {id})"),
                (None, Some(p)) => format!(": restore point {p}"),
                (None, None) => String::new(),
            };
            tell!("{what} succeeded in {took}{result}");
            if !args.json {
                say!("{}", run.backup_id.or(run.restore_point).unwrap_or(run.run_id));
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        other => {
            tell!("{what} {} after {took}: {}", other.name(), run.error.as_deref().unwrap_or("no error was recorded"));
            Ok(ExitCode::from(EXIT_JOB_FAILED))
        }
    }
}

fn failed(f: Failure) -> Result<ExitCode> {
    tell!("error: {}", f.message);
    Ok(ExitCode::from(f.code))
}

/// A run that has not ended, in a phrase.
fn describe(state: &RunState) -> String {
    match state {
        RunState::Waiting => "waiting for its turn (another job on the subject, or max_concurrent_jobs)".into(),
        RunState::Running(r) => match (r.percent, r.expected_bytes) {
            (Some(p), Some(e)) => format!(
                "running, {p}% of ~{}{}",
                crate::units::bytes(e),
                r.eta_seconds
                    .map(|s| format!(", ETA {}", crate::units::approx(Duration::from_secs(s))))
                    .unwrap_or_default()
            ),
            _ => format!("running, {} so far", crate::units::bytes(r.bytes)),
        },
        RunState::Finished(r) => r.run.outcome.name().to_owned(),
    }
}
