//! The reader of `retention:`: a policy per kind of backup (`full_backup: 30` days, or the long
//! form with keep_* rules).

use super::model::{KindPolicy, Retention};
use super::node::{Node, Value};
use super::reader::{ByteSize, Ctx, Dur, MapReader};
use std::time::Duration;

pub(super) fn read_retention(top: &mut MapReader<'_, '_>) -> Retention {
    let mut r = Retention::default();
    let Some(mut m) = top.map("retention") else {
        return r;
    };
    let ctx = m.ctx();
    for (key, slot) in [
        ("full_backup", &mut r.full_backup),
        ("incremental_backup", &mut r.incremental_backup),
        ("file_backup", &mut r.file_backup),
        ("sqlite_backup", &mut r.sqlite_backup),
        ("config_backup", &mut r.config_backup),
        ("base_backup", &mut r.base_backup),
    ] {
        let path = m.child_path(key);
        let Some(node) = m.node(key) else { continue };
        *slot = match &node.value {
            Value::Map(_) => read_kind_policy(ctx, node, &path),
            _ => match ctx.read::<u32>(node, &path) {
                Some(0) => {
                    ctx.error(&path, "0 days would delete every backup; give at least 1", Some(node.loc));
                    None
                }
                Some(days) => Some(KindPolicy {
                    keep_within: Some(Duration::from_secs(u64::from(days) * 86400)),
                    min_keep: 3,
                    ..Default::default()
                }),
                None => None,
            },
        };
    }
    let path = m.child_path("safety_backup");
    if let Some(node) = m.node("safety_backup") {
        let policy = match &node.value {
            Value::Map(_) => read_kind_policy(ctx, node, &path),
            _ => match ctx.read::<u32>(node, &path) {
                Some(days) if days > 0 => Some(KindPolicy {
                    keep_within: Some(Duration::from_secs(u64::from(days) * 86400)),
                    min_keep: 0,
                    ..Default::default()
                }),
                Some(_) => {
                    ctx.error(
                        &path,
                        "0 days would delete every safety backup at once; give at least 1",
                        Some(node.loc),
                    );
                    None
                }
                None => None,
            },
        };
        if let Some(p) = policy {
            r.safety_backup = p;
        }
    }
    r.skip_after_failure = m.opt::<bool>("skip_after_failure").unwrap_or(true);
    if let Some(d) = m.opt::<Dur>("orphan_grace") {
        r.orphan_grace = d.0;
    }
    m.finish();
    r
}

fn read_kind_policy(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<KindPolicy> {
    let mut m = ctx.map(node, path)?;
    let mut count = |key: &str| {
        let n = m.opt::<u32>(key);
        if n == Some(0) {
            ctx.error(&m.child_path(key), "must be at least 1 (leave it out to not use the rule)", Some(m.loc_of(key)));
        }
        n.filter(|n| *n > 0)
    };
    let keep_last = count("keep_last");
    let keep_hourly = count("keep_hourly");
    let keep_daily = count("keep_daily");
    let keep_weekly = count("keep_weekly");
    let keep_monthly = count("keep_monthly");
    let keep_yearly = count("keep_yearly");
    let keep_within = m.opt::<Dur>("keep_within").map(|d| d.0);
    let max_total_size = m.opt::<ByteSize>("max_total_size").map(|b| b.0);
    let min_keep = m.opt::<u32>("min_keep").unwrap_or(3);
    let loc = m.loc();
    m.finish();
    let policy = KindPolicy {
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        max_total_size,
        min_keep,
    };
    let has_rule = keep_last.is_some()
        || keep_hourly.is_some()
        || keep_daily.is_some()
        || keep_weekly.is_some()
        || keep_monthly.is_some()
        || keep_yearly.is_some()
        || keep_within.is_some();
    if !has_rule {
        ctx.error(
            path,
            "an empty policy would keep nothing but the floor: give at least one keep_* rule \
             (or remove the key to keep every backup of this kind)",
            Some(loc),
        );
        return None;
    }
    Some(policy)
}
