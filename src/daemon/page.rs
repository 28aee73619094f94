//! The read-only status page the daemon serves at `/`: per database, file set and cluster the
//! newest backups, verification and test-restore results with the RTO trend as a small chart,
//! the problems `/readyz` reports, running jobs with their progress, next runs, the WAL archive's
//! freshness, storage targets and the last runs. Server-rendered HTML (maud escapes every value),
//! inline CSS and SVG, no script and no external asset; it reloads itself every 30 seconds.

use crate::config::Config;
use crate::jobs::kind::JobKind;
use crate::jobs::report::{Outcome, Report};
use crate::status::{Problem, Status};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::BTreeMap;
use std::path::Path;

/// How many points the RTO chart shows.
const RTO_POINTS: usize = 30;
/// How many backups per subject, and runs in all, the page lists.
const BACKUPS_LISTED: usize = 5;
const RUNS_LISTED: usize = 25;

/// What the reports directory says of each subject's past runs.
#[derive(Debug, Default)]
pub struct History {
    pub subjects: BTreeMap<String, SubjectHistory>,
}

#[derive(Debug, Default)]
pub struct SubjectHistory {
    /// Newest first.
    pub backups: Vec<Report>,
    /// Newest first.
    pub verifications: Vec<Report>,
    /// Test restores and recovery drills, oldest first (the RTO chart).
    pub restores: Vec<Report>,
}

impl History {
    /// Reads the reports under `dir` (files; call it off the async threads): in each directory
    /// the newest first, by name, and only as many per subject as the page shows.
    pub fn read(dir: &Path) -> History {
        let mut h = History::default();
        for sub in ["backup", "file_backup", "config_backup", "base_backup"] {
            for r in newest(dir, sub, BACKUPS_LISTED, |_| true) {
                h.subjects.entry(r.database.clone()).or_default().backups.push(r);
            }
        }
        for r in newest(dir, "backup_verification", 1, |_| true) {
            h.subjects.entry(r.database.clone()).or_default().verifications.push(r);
        }
        for sub in ["database_restore", "recovery_drill"] {
            for r in newest(dir, sub, RTO_POINTS, |r| r.job_kind != JobKind::Restore) {
                h.subjects.entry(r.database.clone()).or_default().restores.push(r);
            }
        }
        for s in h.subjects.values_mut() {
            s.backups.sort_by_key(|r| std::cmp::Reverse(r.started_at));
            s.backups.truncate(BACKUPS_LISTED);
            s.verifications.sort_by_key(|r| std::cmp::Reverse(r.started_at));
            s.restores.sort_by_key(|r| r.started_at);
            let skip = s.restores.len().saturating_sub(RTO_POINTS);
            s.restores.drain(..skip);
        }
        h
    }
}

/// The newest `per_subject` reports of each subject in `dir/sub` that `keep` accepts. Report
/// names start with their start time and end with `-<subject>-<run id>.json`
/// (`jobs::report::write`), so a subject that has enough is skipped without reading its files.
fn newest(dir: &Path, sub: &str, per_subject: usize, keep: impl Fn(&Report) -> bool) -> Vec<Report> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(sub))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for name in names {
        // `<time>-<kind>-<subject>-<run id>.json`: the kind has no '-', the run id neither
        let subject = name.trim_end_matches(".json").rsplit_once('-').map(|(head, _)| head).and_then(|head| {
            let mut parts = head.splitn(3, '-');
            parts.nth(2).map(str::to_owned)
        });
        if subject.as_ref().is_some_and(|s| counts.get(s).is_some_and(|&c| c >= per_subject)) {
            continue;
        }
        let Some(r) =
            std::fs::read(dir.join(sub).join(&name)).ok().and_then(|b| serde_json::from_slice::<Report>(&b).ok())
        else {
            continue;
        };
        if !keep(&r) {
            continue;
        }
        let c = counts.entry(r.database.clone()).or_default();
        if *c < per_subject {
            *c += 1;
            out.push(r);
        }
    }
    out
}

/// The seconds a test restore or drill took to give the data back (its RTO).
fn rto_seconds(r: &Report) -> Option<f64> {
    let detail = |key: &str| r.details.as_ref().and_then(|d| d.get(key)).and_then(|v| v.as_f64());
    match r.job_kind {
        JobKind::TestRestore => detail("restore_seconds").or(Some(r.duration_seconds)),
        JobKind::RecoveryDrill => detail("rto_seconds"),
        _ => None,
    }
}

/// Everything one rendering reads.
pub struct PageData<'a> {
    pub status: &'a Status,
    pub config: &'a Config,
    pub problems: &'a [Problem],
    pub history: &'a History,
    pub now: DateTime<Utc>,
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
header p { margin: 0; color: #555; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { font-weight: 600; background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
.outcome.success { color: #1b7f3b; }
.outcome.failed, .outcome.partial, .outcome.cancelled, td.failed { color: #b3261e; font-weight: 600; }
tr.failed td, tr.partial td, tr.cancelled td { background: #fdecea; }
.none { color: #888; }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 1rem; font-weight: 600; }
.badge.ready { background: #e3f4e8; color: #1b7f3b; } .badge.problems { background: #fdecea; color: #b3261e; }
ul.problems { background: #fdecea; color: #b3261e; border-left: 4px solid #b3261e; padding: .6rem 1.6rem; }
.error { color: #b3261e; font-size: 12px; max-width: 42rem; overflow-wrap: anywhere; }
svg.rto { vertical-align: middle; } td.rto { white-space: nowrap; }
svg.rto polyline { fill: none; stroke: #3460a8; stroke-width: 1.5; }
svg.rto circle { fill: #3460a8; } svg.rto circle.failed { fill: #b3261e; }
progress { width: 10rem; vertical-align: middle; }
footer { margin-top: 2rem; color: #777; font-size: 12px; }
"#;

fn outcome_name(o: Option<Outcome>) -> &'static str {
    o.map_or("none", |o| o.name())
}

/// An outcome as a coloured word (class `outcome` and the outcome's name).
fn outcome(o: Option<Outcome>) -> Markup {
    let name = outcome_name(o);
    html! { span class={ "outcome " (name) } { (if o.is_none() { "never" } else { name }) } }
}

/// `2026-12-06 05:12 UTC (3m ago)`.
fn when(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match at {
        None => html! { span class="none" { "never" } },
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) {
                (t.format("%Y-%m-%d %H:%M UTC")) " (" (relative(t, now)) ")"
            }
        },
    }
}

fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = now - t;
    let (future, secs) = if d.num_seconds() < 0 { (true, -d.num_seconds()) } else { (false, d.num_seconds()) };
    let text = crate::units::approx(std::time::Duration::from_secs(secs as u64));
    if future { format!("in {text}") } else { format!("{text} ago") }
}

fn seconds(s: f64) -> String {
    crate::units::approx(std::time::Duration::from_secs_f64(s.max(0.0)))
}

/// The RTO trend: a line over the last test restores and drills, a red dot for each failure.
fn rto_chart(runs: &[Report]) -> Markup {
    let points: Vec<(f64, bool)> =
        runs.iter().filter_map(|r| rto_seconds(r).map(|s| (s, r.outcome != Outcome::Success))).collect();
    if points.is_empty() {
        return html! { span class="none" { "no test restore yet" } };
    }
    let (w, h, pad) = (120.0, 30.0, 3.0);
    let max = points.iter().map(|p| p.0).fold(0.0_f64, f64::max).max(0.001);
    let step = if points.len() > 1 { (w - 2.0 * pad) / (points.len() - 1) as f64 } else { 0.0 };
    let xy: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (pad + step * i as f64, h - pad - (s / max) * (h - 2.0 * pad)))
        .collect();
    let line: Vec<String> = xy.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let label: Vec<String> = points.iter().map(|(s, _)| seconds(*s)).collect();
    let last = points.last().map(|p| p.0).unwrap_or_default();
    html! {
        svg class="rto" width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img"
            aria-label={ "RTO of the last " (points.len()) " test restores: " (label.join(", ")) } {
            title { "RTO: " (label.join(", ")) }
            @if xy.len() > 1 { polyline points=(line.join(" ")) {} }
            @for ((x, y), (_, failed)) in xy.iter().zip(&points) {
                circle class=[failed.then_some("failed")] cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2.2" {}
            }
        }
        " " span class="num" { (seconds(last)) }
    }
}

/// The subjects to show: every configured one, and any the board knows of.
fn subjects(d: &PageData<'_>) -> Vec<String> {
    let mut out: Vec<String> =
        crate::jobs::context::configured_subjects(d.config).iter().map(|s| s.to_string()).collect();
    for name in d.status.databases.keys().chain(d.status.jobs.keys()) {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

fn next_run_of(s: &Status, subject: &str) -> Option<(DateTime<Utc>, JobKind)> {
    s.schedules
        .iter()
        .filter(|x| x.databases.iter().any(|d| d == subject))
        .filter_map(|x| x.next_run.map(|t| (t, x.kind)))
        .min()
}

fn subjects_table(d: &PageData<'_>) -> Markup {
    let empty = Default::default();
    html! {
        table id="subjects" {
            thead { tr {
                th { "Subject" } th { "Newest backup" } th { "Last backup run" } th { "Verification" }
                th { "Test restore" } th { "RTO trend" } th { "Next run" }
            } }
            tbody {
                @for name in subjects(d) {
                    @let db = d.status.databases.get(&name);
                    @let h = d.history.subjects.get(&name).unwrap_or(&empty);
                    @let last_backup = h.backups.first();
                    @let failing = db.and_then(|x| x.last_outcome).filter(|o| *o != Outcome::Success);
                    @let stale = d.problems.iter().any(|p| p.database == name);
                    tr class=[failing.map(|o| o.name()).or(stale.then_some("failed"))] data-subject=(name) {
                        td { strong { (name) } }
                        td {
                            (when(db.and_then(|x| x.last_full_success), d.now))
                            @if let Some(id) = db.and_then(|x| x.last_full_backup_id.as_ref()) { br; code { (id) } }
                        }
                        td {
                            @match last_backup {
                                Some(r) => {
                                    (outcome(Some(r.outcome))) " " (r.job_kind.name()) ", " (when(Some(r.started_at), d.now))
                                    @if let Some(b) = r.stored_bytes { ", " (crate::units::bytes(b)) " stored" }
                                    @if let Some(e) = &r.error { div class="error" { (e) } }
                                }
                                None => span class="none" { "none" },
                            }
                        }
                        td {
                            (outcome(db.and_then(|x| x.last_verification_outcome)))
                            @if let Some(at) = db.and_then(|x| x.last_verification_at) { " " (when(Some(at), d.now)) }
                            @if let Some(e) = h.verifications.first().filter(|r| r.outcome != Outcome::Success).and_then(|r| r.error.as_ref()) {
                                div class="error" { (e) }
                            }
                        }
                        td {
                            @let tr = db.and_then(|x| x.last_test_restore_outcome.map(|o| (o, x.last_test_restore_at)));
                            @let drill = db.and_then(|x| x.last_drill_outcome.map(|o| (o, x.last_drill_at)));
                            @match (tr, drill) {
                                (Some((o, at)), _) => { (outcome(Some(o))) " " (when(at, d.now)) }
                                (None, Some((o, at))) => { "drill " (outcome(Some(o))) " " (when(at, d.now)) }
                                (None, None) => span class="none" { "never" },
                            }
                            @if let Some(r) = h.restores.last().filter(|r| r.outcome != Outcome::Success) {
                                @if let Some(e) = &r.error { div class="error" { (e) } }
                            }
                        }
                        td class="rto" { (rto_chart(&h.restores)) }
                        td {
                            @match next_run_of(d.status, &name) {
                                Some((t, kind)) => { (kind.name()) " " (when(Some(t), d.now)) }
                                None => span class="none" { "not scheduled" },
                            }
                        }
                    }
                }
            }
        }
    }
}

fn running_table(s: &Status, now: DateTime<Utc>) -> Markup {
    html! {
        @if s.running.is_empty() {
            p class="none" id="running" { "No job is running." }
        } @else {
            table id="running" {
                thead { tr { th { "Job" } th { "Subject" } th { "Trigger" } th { "Started" } th { "Progress" } } }
                tbody {
                    @for r in &s.running {
                        tr {
                            td { (r.kind.name()) br; code { (r.run_id) } }
                            td { (r.database) }
                            td { (r.trigger.name()) }
                            td { (when(Some(r.started_at), now)) }
                            td {
                                @match (r.percent, r.expected_bytes) {
                                    (Some(p), Some(e)) => {
                                        progress max="100" value=(p) { (p) "%" } " " (p) "% of ~" (crate::units::bytes(e))
                                        @if let Some(eta) = r.eta_seconds { ", ETA " (crate::units::approx(std::time::Duration::from_secs(eta))) }
                                    }
                                    _ => { (crate::units::bytes(r.bytes)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn schedules_table(s: &Status, now: DateTime<Utc>) -> Markup {
    html! {
        @if s.schedules.is_empty() {
            p class="none" { "No schedule is configured." }
        } @else {
            table id="schedules" {
                thead { tr { th { "Job" } th { "When" } th { "Subjects" } th { "Next run" } th { "Last run" } } }
                tbody {
                    @for x in &s.schedules {
                        @let last = x.last_run.as_ref();
                        tr class=[last.map(|l| l.outcome).filter(|o| *o != Outcome::Success).map(|o| o.name())] {
                            td { (x.kind.name()) }
                            td { code { (x.cron) } " " (x.timezone) }
                            td { (x.databases.join(", ")) }
                            td { (when(x.next_run, now)) }
                            td {
                                @match last {
                                    Some(l) => {
                                        (outcome(Some(l.outcome))) " " (l.database) " " (when(Some(l.finished_at), now))
                                        @if let Some(e) = &l.error { div class="error" { (e) } }
                                    }
                                    None => span class="none" { "not yet" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn wal_section(s: &Status, now: DateTime<Utc>) -> Markup {
    let Some(w) = &s.wal else { return html! {} };
    html! {
        h2 { "WAL archive (cluster " (w.cluster) ")" }
        table id="wal" {
            tbody {
                tr { th { "Newest archived segment" } td {
                    @match &w.last_archived_segment { Some(seg) => { code { (seg) } " " (when(w.last_archived_at, now)) } None => span class="none" { "none yet" } }
                } }
                tr { th { "Archive lag" } td {
                    @if let Some(b) = w.archive_lag_bytes { (crate::units::bytes(b)) }
                    @if let Some(sec) = w.archive_lag_seconds { ", oldest waiting segment " (seconds(sec)) }
                    @if w.archive_lag_bytes.is_none() && w.archive_lag_seconds.is_none() { span class="none" { "unknown" } }
                } }
                @if let Some(slot) = &w.slot {
                    tr { th { "Receiver" } td class=[(!w.receiver_running).then_some("failed")] {
                        (if w.receiver_running { "running" } else { "stopped" }) " on slot " code { (slot) }
                        ", " (w.receiver_restarts) " restarts"
                        @if let Some(b) = w.slot_retained_bytes { ", slot holds " (crate::units::bytes(b)) }
                        @if let Some(e) = &w.receiver_last_error { div class="error" { (e) } }
                    } }
                }
                @if let Some(e) = &w.server_error { tr class="failed" { th { "Server" } td { div class="error" { (e) } } } }
                @if let Some(seg) = &w.last_failed_segment { tr class="failed" { th { "Last failed segment" } td { code { (seg) } } } }
            }
        }
    }
}

fn targets_table(s: &Status) -> Markup {
    html! {
        @if !s.targets.is_empty() {
            h2 { "Storage targets" }
            table id="targets" {
                thead { tr { th { "Target" } th class="num" { "Backups" } th class="num" { "Stored" } th class="num" { "Damaged" } } }
                tbody {
                    @for (name, t) in &s.targets {
                        tr class=[(t.damaged > 0).then_some("failed")] {
                            td { (name) } td class="num" { (t.backups) } td class="num" { (crate::units::bytes(t.stored_bytes)) }
                            td class="num" { (t.damaged) @if !t.damaged_ids.is_empty() { " (" (t.damaged_ids.join(", ")) ")" } }
                        }
                    }
                }
            }
        }
    }
}

fn recent_runs(s: &Status, now: DateTime<Utc>) -> Markup {
    html! {
        @if s.recent_runs.is_empty() {
            p class="none" id="recent" { "No job has finished since the daemon started." }
        } @else {
            table id="recent" {
                thead { tr { th { "Finished" } th { "Job" } th { "Subject" } th { "Trigger" } th { "Outcome" } th { "Took" } th { "Result" } } }
                tbody {
                    @for r in s.recent_runs.iter().take(RUNS_LISTED) {
                        @let run = &r.run;
                        tr class=[(run.outcome != Outcome::Success).then_some(run.outcome.name())] data-run=(run.run_id) {
                            td { (when(Some(run.finished_at), now)) }
                            td { (r.kind.name()) }
                            td { (run.database) }
                            td { (run.trigger.name()) }
                            td { (outcome(Some(run.outcome))) }
                            td class="num" { (seconds((run.finished_at - run.started_at).num_milliseconds() as f64 / 1000.0)) }
                            td {
                                @if let Some(id) = &run.backup_id { code { (id) } }
                                @if let Some(p) = &run.restore_point { "restore point " code { (p) } }
                                @if let Some(e) = &run.error { div class="error" { (e) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The whole page.
pub fn render(d: &PageData<'_>) -> String {
    let s = d.status;
    let host = crate::notify::hostname();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="30";
                // no favicon request: the page loads nothing but itself
                link rel="icon" href="data:,";
                title { "pgbackd on " (host) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "pgbackd on " (host) " "
                        @if d.problems.is_empty() { span class="badge ready" id="health" { "ready" } }
                        @else { span class="badge problems" id="health" { (crate::units::count(d.problems.len(), "problem")) } }
                    }
                    p {
                        "Running since " (when(s.started_at, d.now))
                        @if let Some(c) = &s.config { ", config " code { (c) } }
                        @if s.shutting_down { ", " strong class="outcome failed" { "stopping" } }
                        "."
                    }
                }
                @if !d.problems.is_empty() {
                    ul class="problems" id="problems" { @for p in d.problems { li { (p.message) } } }
                }
                h2 { "Databases, file sets and clusters" }
                (subjects_table(d))
                h2 { "Running jobs" }
                (running_table(s, d.now))
                h2 { "Schedules" }
                (schedules_table(s, d.now))
                (wal_section(s, d.now))
                (targets_table(s))
                h2 { "Last runs" }
                (recent_runs(s, d.now))
                footer {
                    "Generated " (d.now.format("%Y-%m-%d %H:%M:%S UTC")) "; reloads every 30 s. "
                    "The same as JSON: " a href="status" { "/status" } "; metrics: " a href="metrics" { "/metrics" } "."
                }
            }
        }
    };
    page.into_string()
}

/// A page that says why the status page is not shown.
pub fn refusal(message: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "pgbackd" } style { (PreEscaped(STYLE)) } }
            body { h1 { "pgbackd" } p class="outcome failed" { (message) } }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::report;
    use crate::repo::manifest::Trigger;
    use crate::status::{DatabaseStatus, RunSummary};
    use chrono::TimeZone;

    fn config() -> Config {
        Config::from_yaml("databases: [app, shop]\nlocal_backup_dir: /r\n", "t", &|_| None).unwrap()
    }

    fn report(kind: JobKind, subject: &str, at: DateTime<Utc>, outcome: Outcome, seconds: f64) -> Report {
        Report {
            run_id: "r1".into(),
            job_kind: kind,
            database: subject.into(),
            trigger: Trigger::Schedule,
            started_at: at,
            finished_at: at + chrono::Duration::seconds(seconds as i64),
            duration_seconds: seconds,
            outcome,
            backup_id: None,
            restore_point: None,
            raw_bytes: None,
            stored_bytes: Some(1 << 20),
            mb_per_second: None,
            targets: vec![],
            warnings: vec![],
            error: (outcome != Outcome::Success).then(|| "pg_dump: error: <script>alert(1)</script>".into()),
            details: None,
        }
    }

    #[test]
    fn a_failing_subject_is_red_values_are_escaped_and_the_rto_is_charted() {
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let t = now - chrono::Duration::hours(2);
        let mut s = Status { started_at: Some(t), ..Default::default() };
        s.databases.insert(
            "app".into(),
            DatabaseStatus {
                last_full_success: Some(t),
                last_outcome: Some(Outcome::Success),
                last_test_restore_outcome: Some(Outcome::Success),
                last_test_restore_at: Some(t),
                ..Default::default()
            },
        );
        s.databases.insert("shop".into(), DatabaseStatus { last_outcome: Some(Outcome::Failed), ..Default::default() });
        s.remember(
            JobKind::FullBackup,
            RunSummary {
                run_id: "abc123".into(),
                database: "shop".into(),
                trigger: Trigger::Schedule,
                started_at: t,
                finished_at: t,
                outcome: Outcome::Failed,
                backup_id: None,
                restore_point: None,
                error: Some("pg_dump: error: <b>connection refused</b>".into()),
            },
        );
        let mut history = History::default();
        let app = history.subjects.entry("app".into()).or_default();
        app.restores = (0..4)
            .map(|i| {
                report(JobKind::TestRestore, "app", t + chrono::Duration::minutes(i), Outcome::Success, 10.0 + i as f64)
            })
            .collect();
        app.restores.push(report(JobKind::TestRestore, "app", t, Outcome::Failed, 30.0));
        history.subjects.entry("shop".into()).or_default().backups =
            vec![report(JobKind::FullBackup, "shop", t, Outcome::Failed, 1.0)];
        let problems =
            vec![Problem { database: "shop".into(), stale: true, message: "database shop: no full backup".into() }];
        let html = render(&PageData { status: &s, config: &config(), problems: &problems, history: &history, now });

        assert!(html.contains(r#"<tr class="failed" data-subject="shop">"#), "{html}");
        assert!(html.contains(r#"<tr data-subject="app">"#), "{html}");
        assert!(html.contains(r#"<tr class="failed" data-run="abc123">"#), "{html}");
        // nothing a job printed becomes markup
        assert!(!html.contains("<script>") && !html.contains("<b>connection"), "{html}");
        assert!(html.contains("&lt;b&gt;connection refused&lt;/b&gt;"), "{html}");
        // five points, the failed one red
        assert_eq!(html.matches("<circle").count(), 5, "{html}");
        assert_eq!(html.matches(r#"<circle class="failed""#).count(), 1, "{html}");
        assert!(html.contains("1 problem") && html.contains("database shop: no full backup"), "{html}");
        assert!(!html.contains("Some(") && !html.contains("None"), "{html}");
    }

    #[test]
    fn the_history_is_read_from_the_reports_newest_backups_first() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let subject = crate::repo::Subject::Database("app".into());
        for i in 0..7 {
            let mut r = report(JobKind::FullBackup, "app", t + chrono::Duration::hours(i), Outcome::Success, 1.0);
            r.run_id = format!("b{i}");
            report::write(dir.path(), &subject, &r).unwrap();
        }
        let mut r = report(JobKind::TestRestore, "app", t, Outcome::Success, 12.0);
        r.details = Some(serde_json::json!({ "restore_seconds": 9.5 }));
        report::write(dir.path(), &subject, &r).unwrap();
        let h = History::read(dir.path());
        let app = &h.subjects["app"];
        assert_eq!(app.backups.len(), BACKUPS_LISTED);
        assert_eq!(app.backups[0].run_id, "b6");
        assert_eq!(app.restores.iter().map(rto_seconds).collect::<Vec<_>>(), vec![Some(9.5)]);
    }
}
