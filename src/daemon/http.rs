//! The daemon's HTTP endpoint (`monitoring.listen`, default 127.0.0.1:9187): `/healthz` (alive),
//! `/readyz` (fresh: 503 with the reasons otherwise), `/metrics` (Prometheus text) and `/status`
//! (the JSON of `pgbackd status --json`).

use crate::clock::Clock;
use crate::config::Config;
use crate::status::{self, Board};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What the endpoints read: the live status board, the clock and the config in force.
#[derive(Clone)]
pub struct Endpoint {
    pub board: Arc<Board>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<RwLock<Arc<Config>>>,
    /// Live delivery counts (the board's copy is refreshed only now and then).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

impl Endpoint {
    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn snapshot(&self, now: chrono::DateTime<chrono::Utc>) -> status::Status {
        if let Some(n) = &self.notifier {
            let counts = n.counts();
            self.board.update(|s| s.notifications = counts);
        }
        self.board.snapshot(now)
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(e): State<Endpoint>) -> Response {
    let now = e.clock.now();
    let problems = e.board.update(|s| status::problems(s, &e.config(), now));
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let text: String = problems.iter().map(|p| format!("{}\n", p.message)).collect();
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    }
}

async fn metrics(State(e): State<Endpoint>) -> Response {
    let now = e.clock.now();
    let config = e.config();
    let s = e.snapshot(now);
    let problems = status::problems(&s, &config, now);
    let body = super::metrics::render(&s, &config, &problems, now);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn status_json(State(e): State<Endpoint>) -> Response {
    let s = e.snapshot(e.clock.now());
    match serde_json::to_vec_pretty(&s) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

pub fn router(endpoint: Endpoint) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/status", axum::routing::get(status_json))
        .with_state(endpoint)
}

/// Binds `addr` (an error names the config key) and serves until `stop`.
pub async fn start(
    addr: &str,
    endpoint: Endpoint,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("monitoring.listen {addr}: cannot listen ({e}): choose another address, or set it to off")
    })?;
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /healthz /readyz /metrics /status");
    Ok(crate::tasks::spawn(async move {
        let served = axum::serve(listener, router(endpoint)).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the monitoring endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DatabaseStatus, Status};
    use chrono::{DateTime, TimeZone, Utc};
    use std::sync::Mutex;

    /// A clock the test moves.
    struct ManualClock(Mutex<DateTime<Utc>>);

    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Every line is a comment or `name{labels} value` with a number for value.
    pub fn assert_prometheus_text(text: &str) {
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "not a number: {line:?}");
            let name = series.split('{').next().unwrap();
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name: {line:?}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line:?}");
            }
        }
    }

    #[tokio::test]
    async fn readyz_follows_the_injected_clock_and_new_backups() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "databases: [app]\nlocal_backup_dir: {}\nreports:\n  dir: {}\nschedules:\n  full_backup: \"0 1 * * *\"\n",
            dir.path().join("repo").display(),
            dir.path().display()
        );
        let config = Arc::new(Config::from_yaml(&yaml, "t", &|_| None).unwrap());
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
        let mut s = Status { started_at: Some(t0), ..Default::default() };
        s.databases.insert("app".into(), DatabaseStatus { last_full_success: Some(t0), ..Default::default() });
        let board = Arc::new(Board::new(dir.path(), s));
        let clock = Arc::new(ManualClock(Mutex::new(t0 + chrono::Duration::hours(1))));
        let endpoint = Endpoint {
            board: board.clone(),
            clock: clock.clone(),
            config: Arc::new(RwLock::new(config)),
            notifier: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, router(endpoint))
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        // a daily schedule: more than two days without a full backup is stale
        *clock.0.lock().unwrap() = t0 + chrono::Duration::hours(49);
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("database app") && text.contains("2d 1h old"), "{text}");
        let (_, m) = get(addr, "/metrics").await;
        assert_prometheus_text(&m);
        assert!(
            m.contains("pgbackd_ready 0") && m.contains("pgbackd_full_backup_age_seconds{database=\"app\"} 176400"),
            "{m}"
        );
        // a new backup makes it ready again
        board
            .update(|s| s.databases.get_mut("app").unwrap().last_full_success = Some(t0 + chrono::Duration::hours(48)));
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, json) = get(addr, "/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["databases"]["app"]["last_full_success"].is_string(), "{v}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
