//! Cron expression + timezone -> the next run time after `now`. Pure: no clock, no tokio.
//!
//! Accepts standard 5-field expressions (`0 */6 * * *`), 6 fields with leading seconds, and the
//! `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` macros. Times are computed in an IANA
//! timezone from the bundled tz database (chrono-tz), so a slim container needs no zoneinfo.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;

#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expr, self.tz)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Schedule {
    /// Parses `expr` for `timezone` (an IANA name such as `Europe/Berlin`; `UTC` by default).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let tz = parse_timezone(timezone.unwrap_or("UTC"))?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{expr:?} has {fields} fields; expected 5 (minute hour day-of-month month day-of-week), \
                 6 (with leading seconds) or a macro such as @daily"
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))?;
        Ok(Schedule { expr: expr.to_owned(), cron, tz })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first scheduled time strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The gap between the run before `now` and the one after it: how often the job runs.
    pub fn period(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let next = self.next_after(now)?;
        let prev = self.previous_at_or_before(now)?;
        Some(next - prev)
    }

    /// The last scheduled time at or before `now`.
    pub fn previous_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }
}

pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("unknown timezone {name:?}: use an IANA name such as UTC or Europe/Berlin"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_fields_every_six_hours() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 7, 30, 0).unwrap();
        assert_eq!(s.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap());
    }

    #[test]
    fn six_fields_and_macros() {
        let s = Schedule::parse("*/10 * * * * *", None).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 7, 30, 3).unwrap();
        assert_eq!(s.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 7, 30, 10).unwrap());
        let d = Schedule::parse("@daily", Some("Europe/Berlin")).unwrap();
        // midnight in Berlin (CET, UTC+1) is 23:00 UTC
        assert_eq!(d.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap());
        let w = Schedule::parse("@weekly", None).unwrap();
        assert_eq!(w.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap());
        assert!(Schedule::parse("@hourly", None).is_ok() && Schedule::parse("@monthly", None).is_ok());
    }

    /// The next `n` runs after `from`, as local times.
    fn runs(s: &Schedule, from: DateTime<Utc>, n: usize) -> Vec<String> {
        let mut t = from;
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.with_timezone(&s.timezone()).format("%m-%d %H:%M %Z").to_string()
            })
            .collect()
    }

    #[test]
    fn berlin_spring_forward_runs_once() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let from = Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap();
        assert_eq!(runs(&s, from, 3), ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]);
    }

    #[test]
    fn berlin_fall_back_runs_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice, the job once
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let from = Utc.with_ymd_and_hms(2026, 10, 23, 12, 0, 0).unwrap();
        assert_eq!(runs(&s, from, 3), ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]);
        // an hourly job still runs every real hour through the repeated one
        let h = Schedule::parse("0 * * * *", Some("Europe/Berlin")).unwrap();
        let from = Utc.with_ymd_and_hms(2026, 10, 24, 23, 30, 0).unwrap();
        assert_eq!(runs(&h, from, 3), ["10-25 02:00 CEST", "10-25 02:00 CET", "10-25 03:00 CET"]);
    }

    #[test]
    fn period_is_the_gap_between_runs() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 7, 30, 0).unwrap();
        assert_eq!(s.period(now), Some(chrono::Duration::hours(6)));
    }

    #[test]
    fn rejects_bad_expressions() {
        assert!(Schedule::parse("0 25 * * *", None).is_err());
        assert!(Schedule::parse("* * *", None).is_err());
        assert!(Schedule::parse("0 1 * * *", Some("Mars/Olympus")).is_err());
    }
}
