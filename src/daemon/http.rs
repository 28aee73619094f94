//! The daemon's HTTP endpoint (`monitoring.listen`, default 127.0.0.1:9187): `/healthz` (alive),
//! `/readyz` (fresh: 503 with the reasons otherwise), `/metrics` (Prometheus text), the
//! read-only status page `/` and its JSON `/status`, and, with `monitoring.trigger`, jobs on
//! request: `POST /trigger` and `GET /runs/{run_id}`.
//!
//! Who may see what: `/healthz`, `/readyz` and `/metrics` are open (probes and scrapers). The
//! page and `/status` need `monitoring.status_page.token` when one is set; without one they are
//! served on a loopback listener only. Triggering always needs its own token, and from another
//! host only when `behind_tls_proxy` says a TLS proxy carries it (a request through a proxy on
//! this host counts as from another host). Tokens are compared in constant time.

use super::trigger::{self, TriggerBody};
use crate::clock::Clock;
use crate::config::Config;
use crate::secret::Secret;
use crate::status::{self, Board, RunState};
use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the endpoints read: the live status board, the clock and the config in force.
#[derive(Clone)]
pub struct Endpoint {
    pub board: Arc<Board>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<RwLock<Arc<Config>>>,
    /// Live delivery counts (the board's copy is refreshed only now and then).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// The daemon's loop, which starts requested jobs (`None`: nothing can be triggered).
    pub triggers: Option<mpsc::Sender<trigger::Request>>,
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

/// A refusal: its status and a sentence (JSON `{"error": ...}` for the API, text for the page).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    /// Ask a browser for the token (Basic auth, the token as the password).
    challenge: bool,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into(), challenge: false }
    }

    /// The refusal with `body` (JSON for the API, a page for the browser), and, when the token
    /// is what is missing, the header that makes a browser ask for it.
    fn respond(self, body: impl IntoResponse) -> Response {
        let mut r = (self.status, body).into_response();
        if self.challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"pgbackd\", charset=\"UTF-8\""),
            );
        }
        r
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        self.respond(body)
    }
}

/// The token a request carries: `Authorization: Bearer TOKEN`, or Basic auth with the token as
/// the password (any user name), which is what a browser sends.
fn presented(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, password)| password.to_owned());
    }
    None
}

/// Whether `presented` is `expected`, in time that does not depend on where they differ.
fn token_matches(presented: Option<&str>, expected: &Secret) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let Some(p) = presented else { return false };
    // equal-length digests: neither the position of a difference nor the length leaks
    let (a, b) = (sha2::Sha256::digest(p.as_bytes()), sha2::Sha256::digest(expected.expose().as_bytes()));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// A request from this host, not relayed by a proxy on it.
fn local_request(peer: SocketAddr, headers: &HeaderMap) -> bool {
    let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| headers.contains_key(*h));
    peer.ip().is_loopback() && !relayed
}

/// May this request see the status page and `/status`?
fn may_view(config: &Config, headers: &HeaderMap) -> Result<(), Refusal> {
    let page = &config.monitoring.status_page;
    if !page.enabled {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "the status page is off (monitoring.status_page.enabled)"));
    }
    match &page.token {
        Some(token) if token_matches(presented(headers).as_deref(), token) => Ok(()),
        Some(_) => Err(Refusal {
            challenge: true,
            ..Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the status page needs monitoring.status_page.token: send it as a bearer token, or as the password \
                 your browser asks for",
            )
        }),
        None if config.monitoring.loopback() => Ok(()),
        None => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the status page is not served on a listener other hosts can reach without a token: set \
             monitoring.status_page.token_file (or listen on 127.0.0.1)",
        )),
    }
}

/// May this request trigger jobs or follow their runs?
fn may_trigger(config: &Config, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(t) = &config.monitoring.trigger else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "triggering jobs is off on this daemon: set monitoring.trigger.token_file in its config (docs/ci.md)",
        ));
    };
    if !t.behind_tls_proxy && !local_request(peer, headers) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "trigger requests from other hosts are refused: their token would cross the network in clear. Put a \
             TLS proxy in front of the daemon and set monitoring.trigger.behind_tls_proxy: true (docs/ci.md), or \
             run pgbackd trigger on the daemon's host",
        ));
    }
    if !token_matches(presented(headers).as_deref(), &t.token) {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "wrong or missing token: send monitoring.trigger.token as `Authorization: Bearer TOKEN` \
             (pgbackd trigger --token-file, or PGBACKD_TRIGGER_TOKEN)",
        ));
    }
    Ok(())
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

async fn status_json(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    if let Err(r) = may_view(&e.config(), &headers) {
        return r.into_response();
    }
    let s = e.snapshot(e.clock.now());
    match serde_json::to_string_pretty(&s) {
        Ok(body) => {
            ([(header::CONTENT_TYPE, "application/json")], crate::secret::redact(&body).into_owned()).into_response()
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn page(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    let config = e.config();
    if let Err(r) = may_view(&config, &headers) {
        let page = Html(super::page::refusal(&r.message));
        return r.respond(page);
    }
    let now = e.clock.now();
    let s = e.snapshot(now);
    let problems = status::problems(&s, &config, now);
    // the reports (history of runs) are files: read them off the async threads
    let reports_dir = config.reports.dir.clone();
    let history =
        tokio::task::spawn_blocking(move || super::page::History::read(&reports_dir)).await.unwrap_or_default();
    let html = super::page::render(&super::page::PageData {
        status: &s,
        config: &config,
        problems: &problems,
        history: &history,
        now,
    });
    (
        [(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::secret::redact(&html).into_owned(),
    )
        .into_response()
}

async fn trigger(
    State(e): State<Endpoint>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = may_trigger(&e.config(), peer, &headers) {
        return r.into_response();
    }
    let body: TriggerBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(err) => {
            return Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not a trigger ({err}): send {{\"job\": \"full_backup\", \"database\": \"app\"}}"),
            )
            .into_response();
        }
    };
    let stopping = || Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping: try again once it runs");
    let Some(loop_tx) = &e.triggers else { return stopping().into_response() };
    let (reply, answer) = oneshot::channel();
    if loop_tx.send(trigger::Request { body, reply }).await.is_err() {
        return stopping().into_response();
    }
    match answer.await {
        Ok(Ok(t)) => (StatusCode::ACCEPTED, Json(t)).into_response(),
        Ok(Err(why)) => Refusal::new(StatusCode::BAD_REQUEST, why).into_response(),
        Err(_) => stopping().into_response(),
    }
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    /// Seconds to wait for the run to finish before answering (at most 60).
    wait: Option<u64>,
}

/// The longest a `GET /runs/{id}?wait=` holds the connection.
const MAX_WAIT: Duration = Duration::from_secs(60);

async fn run_state(
    State(e): State<Endpoint>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    if let Err(r) = may_trigger(&e.config(), peer, &headers) {
        return r.into_response();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_WAIT);
    loop {
        let state = e.board.run_state(&run_id, e.clock.now());
        let finished = matches!(state, Some(RunState::Finished(_)));
        if finished || tokio::time::Instant::now() >= until {
            return match state {
                Some(s) => {
                    let text = serde_json::to_string(&s).unwrap_or_default();
                    ([(header::CONTENT_TYPE, "application/json")], crate::secret::redact(&text).into_owned())
                        .into_response()
                }
                None => Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "run {run_id} is not known to this daemon (it remembers its last {} runs; a restarted daemon \
                         forgets them): see the reports directory",
                        status::RECENT_RUNS
                    ),
                )
                .into_response(),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn router(endpoint: Endpoint) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(page))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/status", axum::routing::get(status_json))
        .route("/trigger", axum::routing::post(trigger))
        .route("/runs/{run_id}", axum::routing::get(run_state))
        .with_state(endpoint)
}

/// Serves `router` on `listener` until `stop`, with each request's peer address known.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(endpoint).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
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
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = endpoint.config();
    let page = match (&config.monitoring.status_page, config.monitoring.loopback()) {
        (p, _) if !p.enabled => "off",
        (p, _) if p.token.is_some() => "with its token",
        (_, true) => "on",
        (_, false) => "off on this listener (no token)",
    };
    let trigger = if config.monitoring.trigger.is_some() { "on" } else { "off" };
    tracing::info!(address = %local, status_page = page, trigger, "serving /healthz /readyz /metrics / /status");
    Ok(crate::tasks::spawn(async move {
        if let Err(e) = serve(listener, endpoint, stop).await {
            tracing::error!(error = %e, "the monitoring endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::kind::JobKind;
    use crate::jobs::report::Outcome;
    use crate::repo::manifest::Trigger;
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
            triggers: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, endpoint, stop.clone()));

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

    fn config_with(monitoring: &str) -> Arc<Config> {
        let yaml = format!("databases: [app]\nlocal_backup_dir: /r\nmonitoring:\n{monitoring}");
        Arc::new(Config::from_yaml(&yaml, "t", &|_| None).unwrap())
    }

    /// Serves an endpoint with `config` whose trigger requests a fake loop answers (with run
    /// `r1`); the address and a stop token.
    async fn serve_with(config: Arc<Config>, board: Arc<Board>) -> (SocketAddr, CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<trigger::Request>(4);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let answer = match r.body.database.as_deref() {
                    Some("app") => Ok(trigger::Triggered {
                        run_id: "r1".into(),
                        job: r.body.job.clone(),
                        subject: "app".into(),
                        attached: false,
                    }),
                    other => Err(format!("no database {other:?}")),
                };
                let _ = r.reply.send(answer);
            }
        });
        let endpoint = Endpoint {
            board,
            clock: Arc::new(crate::clock::SystemClock),
            config: Arc::new(RwLock::new(config)),
            notifier: None,
            triggers: Some(tx),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, endpoint, stop.clone()));
        (addr, stop)
    }

    async fn request(
        addr: SocketAddr,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        let mut r = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b.to_owned());
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn the_page_is_open_on_loopback_needs_its_token_elsewhere_and_takes_it_as_bearer_or_basic() {
        let dir = tempfile::tempdir().unwrap();
        let board = Arc::new(Board::new(dir.path(), Status::default()));
        use reqwest::Method;
        // loopback, no token: open
        let (addr, stop) = serve_with(config_with("  listen: 127.0.0.1:9187\n"), board.clone()).await;
        let (code, html) = request(addr, Method::GET, "/", &[], None).await;
        assert_eq!(code, 200);
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("pgbackd on "), "{html}");
        assert_eq!(request(addr, Method::GET, "/status", &[], None).await.0, 200);
        stop.cancel();
        // another listener without a token: not served, and the page says how to turn it on
        let (addr, stop) = serve_with(config_with("  listen: 0.0.0.0:9187\n"), board.clone()).await;
        let (code, text) = request(addr, Method::GET, "/", &[], None).await;
        assert_eq!(code, 403);
        assert!(text.contains("monitoring.status_page.token_file"), "{text}");
        assert_eq!(request(addr, Method::GET, "/status", &[], None).await.0, 403);
        // probes and scrapers are never asked for a token
        assert_eq!(request(addr, Method::GET, "/metrics", &[], None).await.0, 200);
        assert_eq!(request(addr, Method::GET, "/healthz", &[], None).await.0, 200);
        stop.cancel();
        // with a token: needed everywhere, as a bearer token or a browser's Basic password
        let config = config_with(&format!("  listen: 0.0.0.0:9187\n  status_page:\n    token: {TOKEN}\n"));
        let (addr, stop) = serve_with(config, board).await;
        let resp = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"), "a browser asks");
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(request(addr, Method::GET, "/", &[("authorization", &bearer)], None).await.0, 200);
        use base64::Engine;
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}")));
        assert_eq!(request(addr, Method::GET, "/", &[("authorization", &basic)], None).await.0, 200);
        let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
        assert_eq!(request(addr, Method::GET, "/status", &[("authorization", &wrong)], None).await.0, 401);
        stop.cancel();
    }

    #[tokio::test]
    async fn triggers_need_their_token_a_local_peer_or_a_tls_proxy_and_runs_are_followed() {
        use reqwest::Method;
        let dir = tempfile::tempdir().unwrap();
        let board = Arc::new(Board::new(dir.path(), Status::default()));
        let body = Some(r#"{"job": "full_backup", "database": "app"}"#);
        let bearer = format!("Bearer {TOKEN}");
        let auth = [("authorization", bearer.as_str())];

        // off unless configured
        let (addr, stop) = serve_with(config_with("  listen: 127.0.0.1:9187\n"), board.clone()).await;
        let (code, text) = request(addr, Method::POST, "/trigger", &auth, body).await;
        assert_eq!(code, 404);
        assert!(text.contains("monitoring.trigger.token_file"), "{text}");
        stop.cancel();

        let config = config_with(&format!("  listen: 127.0.0.1:9187\n  trigger:\n    token: {TOKEN}\n"));
        let (addr, stop) = serve_with(config, board.clone()).await;
        assert_eq!(request(addr, Method::POST, "/trigger", &[], body).await.0, 401);
        let (code, text) = request(addr, Method::POST, "/trigger", &auth, body).await;
        assert_eq!(code, 202, "{text}");
        let t: trigger::Triggered = serde_json::from_str(&text).unwrap();
        assert_eq!((t.run_id.as_str(), t.subject.as_str(), t.attached), ("r1", "app", false));
        // the loop's refusal, and a body that is not a trigger
        let (code, text) =
            request(addr, Method::POST, "/trigger", &auth, Some(r#"{"job": "full_backup", "database": "x"}"#)).await;
        assert_eq!(code, 400);
        assert!(text.contains("no database"), "{text}");
        let (code, text) = request(addr, Method::POST, "/trigger", &auth, Some("full_backup please")).await;
        assert_eq!(code, 400);
        assert!(text.contains(r#"\"job\""#), "{text}");
        // relayed by a proxy: from another host, refused without behind_tls_proxy
        let relayed = [("authorization", bearer.as_str()), ("x-forwarded-for", "203.0.113.9")];
        let (code, text) = request(addr, Method::POST, "/trigger", &relayed, body).await;
        assert_eq!(code, 403);
        assert!(text.contains("behind_tls_proxy"), "{text}");

        // a run: unknown, waiting, running, finished (a wait returns as soon as it ends)
        assert_eq!(request(addr, Method::GET, "/runs/r9", &auth, None).await.0, 404);
        assert_eq!(request(addr, Method::GET, "/runs/r1", &[], None).await.0, 401);
        board.waiting("r1", true);
        let (_, text) = request(addr, Method::GET, "/runs/r1", &auth, None).await;
        assert!(text.contains(r#""state":"waiting""#), "{text}");
        let now = Utc::now();
        board.waiting("r1", false);
        board.update(|s| {
            s.running.push(crate::status::RunningStatus {
                run_id: "r1".into(),
                kind: JobKind::FullBackup,
                database: "app".into(),
                trigger: Trigger::Request,
                started_at: now,
                bytes: 5,
                expected_bytes: None,
                percent: None,
                eta_seconds: None,
            })
        });
        let (_, text) = request(addr, Method::GET, "/runs/r1", &auth, None).await;
        assert!(text.contains(r#""state":"running""#), "{text}");
        let finisher = {
            let board = board.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                board.update(|s| {
                    s.running.clear();
                    s.remember(
                        JobKind::FullBackup,
                        crate::status::RunSummary {
                            run_id: "r1".into(),
                            database: "app".into(),
                            trigger: Trigger::Request,
                            started_at: now,
                            finished_at: now,
                            outcome: Outcome::Success,
                            backup_id: Some("b1".into()),
                            restore_point: None,
                            error: None,
                        },
                    )
                });
            })
        };
        let asked = std::time::Instant::now();
        let (code, text) = request(addr, Method::GET, "/runs/r1?wait=30", &auth, None).await;
        assert_eq!(code, 200);
        assert!(asked.elapsed() < Duration::from_secs(10), "answered once finished, not after the wait");
        let state: RunState = serde_json::from_str(&text).unwrap();
        match state {
            RunState::Finished(r) => {
                assert_eq!((r.kind, r.run.backup_id.as_deref()), (JobKind::FullBackup, Some("b1")))
            }
            other => panic!("{other:?}"),
        }
        finisher.await.unwrap();
        stop.cancel();

        // behind a TLS proxy: relayed requests are accepted
        let config = config_with(&format!(
            "  listen: 0.0.0.0:9187\n  trigger:\n    token: {TOKEN}\n    behind_tls_proxy: true\n"
        ));
        let (addr, stop) = serve_with(config, board).await;
        assert_eq!(request(addr, Method::POST, "/trigger", &relayed, body).await.0, 202);
        stop.cancel();
    }

    #[test]
    fn tokens_are_read_from_both_header_forms_and_compared_whole() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpzM2NyZXQ6eA==".parse().unwrap()); // user:s3cret:x
        assert_eq!(presented(&h).as_deref(), Some("s3cret:x"));
        let secret = Secret::new(TOKEN);
        assert!(token_matches(Some(TOKEN), &secret));
        assert!(!token_matches(Some(&TOKEN[..31]), &secret));
        assert!(!token_matches(Some(&format!("{TOKEN}0")), &secret));
        assert!(!token_matches(None, &secret));
    }
}
