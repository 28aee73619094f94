//! Retention plans: one table per rule and their union (snapshots of whole plans), and
//! properties over random histories.

use super::*;
use proptest::prelude::*;
use rstest::rstest;
use std::time::Duration;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn full(days_ago: i64, hour: u32) -> Candidate {
    let t = (now() - chrono::Duration::days(days_ago)).date_naive().and_hms_opt(hour, 0, 0).unwrap().and_utc();
    Candidate {
        id: format!("{}-full", t.format("%Y%m%dT%H%M")),
        kind: BackupKind::Full,
        started_at: t,
        stored_bytes: 100,
        depends_on: Vec::new(),
        deep_verified: false,
        in_use: None,
        safety: false,
    }
}

fn daily(days: i64) -> Vec<Candidate> {
    (0..days).map(|d| full(d + 1, 1)).collect()
}

fn policy(f: impl FnOnce(&mut KindPolicy)) -> Retention {
    let mut p = KindPolicy { min_keep: 3, ..Default::default() };
    f(&mut p);
    Retention { full_backup: Some(p.clone()), incremental_backup: Some(p), ..Default::default() }
}

/// A plan as a table a person can check.
fn table(decisions: &[Decision]) -> String {
    decisions
        .iter()
        .map(|d| {
            format!(
                "{:<22} {:>4}d {:<11} {:<6} {}",
                d.id,
                (now() - d.started_at).num_days(),
                d.kind.name(),
                if d.keep { "keep" } else { "DELETE" },
                d.reasons.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary(decisions: &[Decision]) -> (usize, usize) {
    (decisions.iter().filter(|d| d.keep).count(), decisions.iter().filter(|d| !d.keep).count())
}

#[rstest]
#[case::reference_days_30("reference_days_30", daily(45), policy(|p| p.keep_within = Some(Duration::from_secs(30 * 86400))), (29, 16))]
#[case::a_week_of_failures("backups_stopped_40_days_ago", (40..50).map(|d| full(d, 1)).collect(), policy(|p| p.keep_within = Some(Duration::from_secs(30 * 86400))), (3, 7))]
#[case::keep_last("keep_last", daily(10), policy(|p| { p.keep_last = Some(5); p.min_keep = 1; }), (5, 5))]
#[case::hourly("keep_hourly", (0..6).flat_map(|h| [full(1, h), full(1, h)]).collect(), policy(|p| { p.keep_hourly = Some(4); p.min_keep = 0; }), (4, 8))]
#[case::gfs("daily_weekly_monthly", daily(120), policy(|p| { p.keep_daily = Some(7); p.keep_weekly = Some(4); p.keep_monthly = Some(3); }), (11, 109))]
#[case::yearly("keep_yearly", (0..5).map(|y| full(y * 365 + 30, 1)).collect(), policy(|p| { p.keep_yearly = Some(3); p.min_keep = 0; }), (3, 2))]
fn rules(
    #[case] name: &str,
    #[case] backups: Vec<Candidate>,
    #[case] retention: Retention,
    #[case] expected: (usize, usize),
) {
    let plan = plan(&backups, &retention, Tz::UTC, now());
    insta::assert_snapshot!(format!("retention_{name}"), table(&plan));
    assert_eq!(summary(&plan), expected);
}

#[test]
fn the_size_cap_deletes_oldest_first_but_not_the_floor_or_young_backups() {
    let mut backups = daily(10);
    for b in &mut backups {
        b.stored_bytes = 1000;
    }
    let r = policy(|p| {
        p.keep_last = Some(10);
        p.keep_within = Some(Duration::from_secs(2 * 86400));
        p.max_total_size = Some(5500);
        p.min_keep = 3;
    });
    let plan = plan(&backups, &r, Tz::UTC, now());
    insta::assert_snapshot!("retention_max_total_size", table(&plan));
    assert_eq!(summary(&plan), (5, 5));
    // a cap below the floor keeps the floor
    let r = policy(|p| {
        p.keep_last = Some(10);
        p.max_total_size = Some(10);
    });
    assert_eq!(summary(&super::plan(&backups, &r, Tz::UTC, now())), (3, 7));
}

#[test]
fn the_newest_deep_verified_and_in_use_backups_are_kept() {
    let mut backups = daily(20);
    backups[15].deep_verified = true;
    backups[17].deep_verified = true;
    backups[19].in_use = Some("a running job".into());
    let r = policy(|p| {
        p.keep_last = Some(2);
        p.min_keep = 2;
    });
    let plan = plan(&backups, &r, Tz::UTC, now());
    insta::assert_snapshot!("retention_verified_and_in_use", table(&plan));
    let kept: Vec<&str> = plan.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
    assert_eq!(
        kept,
        [backups[0].id.as_str(), backups[1].id.as_str(), backups[15].id.as_str(), backups[19].id.as_str()]
    );
}

#[test]
fn a_kept_incremental_keeps_its_base_full() {
    let base = full(20, 1);
    let mut backups = vec![base.clone(), full(10, 1), full(5, 1)];
    let mut inc = full(2, 7);
    inc.id = "20261120T0700-incr".into();
    inc.kind = BackupKind::Incremental;
    inc.depends_on = vec![base.id.clone()];
    backups.push(inc);
    let r = Retention {
        full_backup: Some(KindPolicy { keep_last: Some(1), min_keep: 1, ..Default::default() }),
        incremental_backup: Some(KindPolicy {
            keep_within: Some(Duration::from_secs(7 * 86400)),
            min_keep: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan = plan(&backups, &r, Tz::UTC, now());
    insta::assert_snapshot!("retention_incremental_base", table(&plan));
    assert!(plan.iter().find(|d| d.id == base.id).unwrap().keep);
    assert_eq!(summary(&plan), (3, 1));
}

/// Two weekly chains of six daily incrementals each, every incremental a delta against the one
/// before: keeping the newest incremental keeps its whole chain down to its full, whatever the
/// size cap says, and the older chain goes as a whole.
#[test]
fn a_kept_incremental_keeps_its_whole_chain_and_the_size_cap_cannot_break_it() {
    let mut backups = Vec::new();
    for week in [2i64, 1] {
        let f = full(week * 7, 1);
        let mut below = f.id.clone();
        backups.push(f);
        for day in 1..=6 {
            let mut inc = full(week * 7 - day, 1);
            inc.id = format!("{}-incr", inc.started_at.format("%Y%m%dT%H%M"));
            inc.kind = BackupKind::Incremental;
            inc.stored_bytes = 2;
            inc.depends_on = vec![below];
            below = inc.id.clone();
            backups.push(inc);
        }
    }
    // three incrementals kept by keep_last, in 3 bytes: dropping the older two for size frees
    // nothing while the newest reads them
    let incrementals = KindPolicy { keep_last: Some(3), min_keep: 1, max_total_size: Some(3), ..Default::default() };
    let fulls = KindPolicy { keep_last: Some(1), min_keep: 1, ..Default::default() };
    let r = Retention { full_backup: Some(fulls), incremental_backup: Some(incrementals), ..Default::default() };
    let plan = plan(&backups, &r, Tz::UTC, now());
    insta::assert_snapshot!("retention_incremental_chain", table(&plan));
    let kept: Vec<&str> = plan.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
    let newer_week: Vec<&str> = backups[7..].iter().rev().map(|c| c.id.as_str()).collect();
    assert_eq!(kept, newer_week, "the newest chain, whole, and nothing of the older one");
    // each link says which kept incremental needs it
    let link = plan.iter().find(|d| d.id == backups[9].id).unwrap();
    assert_eq!(link.reasons, [format!("floor: base of kept incremental {}", backups[10].id)]);
}

/// A file set is one group: its incrementals count with its fulls, and every backup holding
/// unchanged files of a kept one is kept, even past the size cap, with the reason.
#[test]
fn a_file_set_keeps_the_holders_of_a_kept_backup_whatever_the_size_cap_says() {
    let mut holder = full(9, 1);
    holder.stored_bytes = 1000;
    let mut inc = full(1, 1);
    inc.kind = BackupKind::Incremental;
    inc.depends_on = vec![holder.id.clone()];
    let mut other = full(5, 1);
    other.stored_bytes = 1000;
    let policy = KindPolicy { keep_last: Some(3), max_total_size: Some(500), min_keep: 1, ..Default::default() };
    let r = Retention { file_backup: Some(policy), ..Default::default() };
    let subject = crate::repo::Subject::Files("uploads".into());
    let plan =
        plan_with(&[holder.clone(), other.clone(), inc.clone()], &Policies::for_subject(&subject, &r), Tz::UTC, now());
    let of = |id: &str| plan.iter().find(|d| d.id == id).unwrap();
    assert!(of(&inc.id).keep, "the newest, min_keep");
    assert!(!of(&other.id).keep, "kept by keep_last only, dropped for size: {:?}", of(&other.id).reasons);
    assert!(of(&holder.id).keep);
    assert!(
        of(&holder.id).reasons.contains(&format!("floor: holds unchanged files of kept backup {}", inc.id)),
        "{:?}",
        of(&holder.id).reasons
    );
    // no policy for configuration sets: everything is kept, and says so
    let configs = crate::repo::Subject::Configs("etc".into());
    let all = plan_with(&[holder, inc], &Policies::for_subject(&configs, &r), Tz::UTC, now());
    assert!(all.iter().all(|d| d.keep && d.reasons[0] == "no retention policy for config_backups"), "{all:?}");
}

#[test]
fn no_policy_keeps_everything_and_daily_buckets_follow_the_timezone() {
    let backups = daily(5);
    let plan = plan(&backups, &Retention::default(), Tz::UTC, now());
    assert!(plan.iter().all(|d| d.keep && d.reasons == ["no retention policy for full backups"]));
    // 23:30 and 00:30 UTC are the same day in New York: one of the two is kept
    let late = vec![full(3, 23), full(2, 0)];
    let r = policy(|p| {
        p.keep_daily = Some(5);
        p.min_keep = 0;
    });
    assert_eq!(summary(&super::plan(&late, &r, Tz::UTC, now())), (2, 0));
    let ny: Tz = "America/New_York".parse().unwrap();
    assert_eq!(summary(&super::plan(&late, &r, ny, now())), (1, 1));
}

#[test]
fn at_accepts_dates_and_times() {
    assert_eq!(parse_at("2026-11-22").unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap());
    assert_eq!(parse_at("2026-11-22T06:00:00+01:00").unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap());
    assert!(parse_at("yesterday").is_err());
}

fn arb_history() -> impl Strategy<Value = Vec<Candidate>> {
    let item = (0i64..400 * 24, any::<bool>(), 1u64..1000, any::<bool>(), prop::bool::weighted(0.05), any::<bool>());
    prop::collection::vec(item, 0..60).prop_map(|items| {
        let mut out: Vec<Candidate> = Vec::new();
        for (i, (hours_ago, incremental, size, verified, in_use, chained)) in items.into_iter().enumerate() {
            let started_at = now() - chrono::Duration::hours(hours_ago) + chrono::Duration::seconds(i as i64);
            // an incremental depends on the newest backup older than itself (a chain), or on
            // the newest full older than itself (a differential), if there is one
            let base = out
                .iter()
                .filter(|c| (chained || c.kind == BackupKind::Full) && c.started_at < started_at)
                .max_by_key(|c| c.started_at)
                .map(|c| c.id.clone());
            let kind = if incremental && base.is_some() { BackupKind::Incremental } else { BackupKind::Full };
            out.push(Candidate {
                id: format!("b{i:03}"),
                kind,
                started_at,
                stored_bytes: size,
                depends_on: if kind == BackupKind::Incremental { base.into_iter().collect() } else { Vec::new() },
                deep_verified: verified,
                in_use: in_use.then(|| "a running job".to_owned()),
                safety: false,
            });
        }
        out
    })
}

fn arb_policy() -> impl Strategy<Value = KindPolicy> {
    let n = || prop::option::of(1u32..10);
    (n(), n(), n(), n(), n(), n(), prop::option::of(1u64..60), prop::option::of(100u64..20000), 0u32..5).prop_map(
        |(last, hourly, daily, weekly, monthly, yearly, within_days, max, min_keep)| KindPolicy {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_yearly: yearly,
            keep_within: within_days.map(|d| Duration::from_secs(d * 86400)),
            max_total_size: max,
            min_keep,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_floor_always_holds_and_bases_are_never_lost(
        history in arb_history(),
        full_policy in arb_policy(),
        incr_policy in arb_policy(),
        offset_days in -30i64..30,
    ) {
        let at = now() + chrono::Duration::days(offset_days);
        let r = Retention { full_backup: Some(full_policy.clone()), incremental_backup: Some(incr_policy.clone()), ..Default::default() };
        let plan = plan(&history, &r, Tz::UTC, at);
        prop_assert_eq!(plan.len(), history.len());
        let keep: BTreeMap<&str, bool> = plan.iter().map(|d| (d.id.as_str(), d.keep)).collect();
        for (kind, p) in [(BackupKind::Full, &full_policy), (BackupKind::Incremental, &incr_policy)] {
            let mut of_kind: Vec<&Candidate> = history.iter().filter(|c| c.kind == kind).collect();
            of_kind.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
            for c in of_kind.iter().take(p.min_keep as usize) {
                prop_assert!(keep[c.id.as_str()], "min_keep: {} deleted", c.id);
            }
            if let Some(v) = of_kind.iter().find(|c| c.deep_verified) {
                prop_assert!(keep[v.id.as_str()], "newest deep-verified {} deleted", v.id);
            }
            // age rule: nothing younger than keep_within (as of `at`) is deleted
            if let Some(w) = p.keep_within {
                for c in &of_kind {
                    let age = at - c.started_at;
                    if age < chrono::Duration::from_std(w).unwrap() {
                        prop_assert!(keep[c.id.as_str()], "{} is younger than keep_within", c.id);
                    }
                }
            }
        }
        for c in &history {
            if c.in_use.is_some() {
                prop_assert!(keep[c.id.as_str()], "in-use {} deleted", c.id);
            }
            if c.kind == BackupKind::Incremental && keep[c.id.as_str()] {
                let base = c.depends_on[0].as_str();
                prop_assert!(keep[base], "base {} of kept {} deleted", base, c.id);
            }
        }
        // applying the plan and planning again deletes nothing more
        let remaining: Vec<Candidate> = history.iter().filter(|c| keep[c.id.as_str()]).cloned().collect();
        let again = super::plan(&remaining, &r, Tz::UTC, at);
        let newly: Vec<&str> = again.iter().filter(|d| !d.keep).map(|d| d.id.as_str()).collect();
        prop_assert!(newly.is_empty(), "second run deletes {:?}", newly);
    }
}
