//! The reader of `schedules:`: a cron expression (and options) per job kind.

use super::model::{DatabaseConfig, JobKind, Overlap, ScheduleConfig};
use super::node::Value;
use super::reader::{Dur, MapReader};
use crate::schedule::Schedule;
use chrono_tz::Tz;

pub(super) fn read_schedules(
    top: &mut MapReader<'_, '_>,
    default_tz: Tz,
    databases: &[DatabaseConfig],
) -> (Vec<ScheduleConfig>, Vec<usize>) {
    let mut out = Vec::new();
    // schedules without their own catch_up, which take daemon.catch_up
    let mut unset_catch_up = Vec::new();
    let Some(mut m) = top.map("schedules") else {
        return (out, unset_catch_up);
    };
    let ctx = m.ctx();
    let base = m.child_path("");
    for (key, value) in m.entries() {
        let name = key.key_text();
        let path = format!("{base}{name}");
        let Some(kind) = JobKind::scheduled(&name) else {
            ctx.error(
                &path,
                format!(
                    "unknown job kind; expected one of: {}",
                    JobKind::SCHEDULED.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                ),
                Some(key.loc),
            );
            continue;
        };
        let mut overlap = Overlap::Skip;
        let mut catch_up = None;
        let mut timeout = None;
        let (expr, tz_name, dbs, loc) = match &value.value {
            Value::Map(_) => {
                let Some(mut sm) = ctx.map(value, &path) else {
                    continue;
                };
                let expr = sm.req::<String>("cron");
                let tz = sm.opt::<String>("timezone");
                let dbs = sm.opt::<Vec<String>>("databases").unwrap_or_default();
                overlap = sm.opt::<Overlap>("overlap").unwrap_or(Overlap::Skip);
                catch_up = sm.opt::<bool>("catch_up");
                timeout = sm.opt::<Dur>("timeout").map(|d| d.0);
                sm.finish();
                (expr, tz, dbs, value.loc)
            }
            _ => (ctx.read::<String>(value, &path), None, Vec::new(), value.loc),
        };
        let Some(expr) = expr else { continue };
        let tz_text = tz_name.unwrap_or_else(|| default_tz.name().to_owned());
        match Schedule::parse(&expr, Some(&tz_text)) {
            Ok(schedule) => {
                for db in &dbs {
                    if !databases.iter().any(|d| &d.name == db) {
                        ctx.error(
                            &format!("{path}.databases"),
                            format!("database {db:?} is not configured"),
                            Some(loc),
                        );
                    }
                }
                // resolved against daemon.catch_up once that section is read
                out.push(ScheduleConfig {
                    kind,
                    schedule,
                    databases: dbs,
                    overlap,
                    catch_up: catch_up.unwrap_or(true),
                    timeout,
                    loc: Some(key.loc),
                });
                if catch_up.is_none() {
                    unset_catch_up.push(out.len() - 1);
                }
            }
            Err(e) => ctx.error(&path, e, Some(loc)),
        }
    }
    m.finish();
    (out, unset_catch_up)
}
