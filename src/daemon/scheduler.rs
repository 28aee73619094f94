//! Which schedule is due when. Pure: the caller passes `now`.

use crate::config::{Config, Overlap, ScheduleConfig};
use crate::jobs::kind::JobKind;
use crate::repo::Subject;
use crate::schedule::Schedule;
use chrono::{DateTime, Utc};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: JobKind,
    pub schedule: Schedule,
    /// What it runs on: the databases it names (all configured ones when it names none); the
    /// file or configuration sets for their backups, SQLite files for theirs; and, for retention and verification
    /// covering every database, the sets too.
    pub subjects: Vec<Subject>,
    pub overlap: Overlap,
    pub catch_up: bool,
    pub timeout: Option<Duration>,
    /// The next time it is due; `None` if the expression never fires again.
    pub next: Option<DateTime<Utc>>,
}

impl Entry {
    fn from_config(s: &ScheduleConfig, config: &Config, now: DateTime<Utc>) -> Entry {
        // a schedule's `databases` narrows the jobs that run on databases only
        let subjects = match s.kind {
            JobKind::FileBackup
            | JobKind::ConfigBackup
            | JobKind::SqliteBackup
            | JobKind::BaseBackup
            | JobKind::RecoveryDrill => crate::jobs::context::subjects_for(config, s.kind),
            _ if s.databases.is_empty() => crate::jobs::context::subjects_for(config, s.kind),
            _ => s.databases.iter().map(|d| Subject::Database(d.clone())).collect(),
        };
        Entry {
            kind: s.kind,
            schedule: s.schedule.clone(),
            subjects,
            overlap: s.overlap,
            catch_up: s.catch_up,
            timeout: s.timeout,
            next: s.schedule.next_after(now),
        }
    }

    fn same_timing(&self, other: &Entry) -> bool {
        self.kind == other.kind && self.schedule == other.schedule
    }
}

#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    pub entries: Vec<Entry>,
}

impl Scheduler {
    pub fn new(config: &Config, now: DateTime<Utc>) -> Scheduler {
        Scheduler { entries: config.schedules.iter().map(|s| Entry::from_config(s, config, now)).collect() }
    }

    /// Entries due at `now`, each once however long ago it was due (a clock jump or a suspended
    /// host gives one run, never a burst); their next time moves past `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if e.next.is_some_and(|t| t <= now) {
                out.push(i);
                e.next = e.schedule.next_after(now);
            }
        }
        out
    }

    /// The earliest next run of any entry.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().filter_map(|e| e.next).min()
    }

    /// Swaps in a new config: entries whose kind and timing did not change keep their next run;
    /// new or changed ones are computed from `now`.
    pub fn reload(&mut self, config: &Config, now: DateTime<Utc>) {
        let old = std::mem::take(&mut self.entries);
        self.entries = config
            .schedules
            .iter()
            .map(|s| {
                let mut e = Entry::from_config(s, config, now);
                if let Some(prev) = old.iter().find(|o| o.same_timing(&e)) {
                    e.next = prev.next;
                }
                e
            })
            .collect();
    }
}

/// Whether a database needs a catch-up run at start: no successful run within one period of the
/// schedule (the time between two of its runs).
pub fn needs_catch_up(schedule: &Schedule, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(period) = schedule.period(now) else { return false };
    match last_success {
        None => true,
        Some(t) => now - t > period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(schedules: &str) -> Config {
        let yaml = format!("database:\n  database: app\nlocal_backup_dir: /r\nschedules:\n{schedules}");
        Config::from_yaml(&yaml, "t", &|_| None).unwrap()
    }

    #[test]
    fn due_fires_once_per_entry_even_after_a_long_gap() {
        let c = config("  full_backup: \"0 * * * *\"\n");
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let mut s = Scheduler::new(&c, t0);
        assert_eq!(s.next_wake(), Some(Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap()));
        assert!(s.due(t0).is_empty());
        // the host slept through five hours: one run, not five
        let later = Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 30).unwrap();
        assert_eq!(s.due(later), vec![0]);
        assert!(s.due(later).is_empty());
        assert_eq!(s.next_wake(), Some(Utc.with_ymd_and_hms(2026, 11, 22, 17, 0, 0).unwrap()));
    }

    #[test]
    fn reload_keeps_unchanged_timing_and_recomputes_changed() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let mut s = Scheduler::new(&config("  full_backup: \"0 * * * *\"\n"), t0);
        s.reload(&config("  full_backup: \"0 * * * *\"\n"), t0 + chrono::Duration::minutes(20));
        assert_eq!(s.entries[0].next, Some(Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap()));
        s.reload(&config("  full_backup: \"15 * * * *\"\n"), t0 + chrono::Duration::minutes(20));
        assert_eq!(s.entries[0].next, Some(Utc.with_ymd_and_hms(2026, 11, 22, 11, 15, 0).unwrap()));
        s.reload(&config(""), t0);
        assert_eq!(s.next_wake(), None);
    }

    #[test]
    fn catch_up_only_when_a_period_passed_without_success() {
        let daily = Schedule::parse("0 1 * * *", None).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        assert!(needs_catch_up(&daily, None, now));
        assert!(!needs_catch_up(&daily, Some(now - chrono::Duration::hours(20)), now));
        assert!(needs_catch_up(&daily, Some(now - chrono::Duration::hours(25)), now));
    }
}
