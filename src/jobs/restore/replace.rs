//! `restore --replace` and `pgbackd rollback`: a database is replaced by restoring beside it and
//! swapping names in a moment, never by emptying it first. The replaced database is kept as
//! `<name>_pre_<backup id>` until the operator drops it, or `rollback` swaps it back.
//!
//! The swap: connections to the target are refused (`ALLOW_CONNECTIONS false`), its sessions
//! terminated, it is renamed to the kept name, the restored copy renamed to the target's name,
//! and the kept one accepts connections again. A failure at any step puts the names back.

use crate::config::Connection;
use crate::jobs::refuse;
use crate::pg::{self, quote_ident};
use anyhow::{Context, Result, bail};
use std::time::Duration;
use tokio_postgres::Client;

/// PostgreSQL truncates names to 63 bytes; ours must stay unique, so the target's part is cut.
const NAME_MAX: usize = 63;

fn fit(prefix: &str, suffix: &str) -> String {
    let mut cut = NAME_MAX.saturating_sub(suffix.len()).min(prefix.len());
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &prefix[..cut])
}

/// The name a replaced database is kept under: `<name>_pre_<backup id>`.
pub fn kept_name(target: &str, backup_id: &str) -> String {
    fit(target, &format!("_pre_{backup_id}"))
}

/// The database a `--replace` restores into before the swap.
pub fn staging_name(target: &str) -> String {
    fit(target, "_pgbackd_replacing")
}

/// Gives `staging` the name `target`, keeping the database that had it as `kept`.
pub async fn swap(conn: &Connection, target: &str, staging: &str, kept: &str) -> Result<()> {
    let admin = pg::connect_admin(conn).await?;
    rename_pair(&admin, target, staging, kept)
        .await
        .with_context(|| format!("swapping the restored copy {staging:?} in for {target:?}"))?;
    tracing::info!(database = target, kept_as = kept, "database replaced; the old one is kept");
    Ok(())
}

/// `current` -> `aside`, then `incoming` -> `current`, with `current`'s sessions ended.
async fn rename_pair(admin: &Client, current: &str, incoming: &str, aside: &str) -> Result<()> {
    let (cur, inc, side) = (quote_ident(current), quote_ident(incoming), quote_ident(aside));
    let allowed: bool = admin
        .query_one("select datallowconn from pg_database where datname = $1", &[&current])
        .await
        .with_context(|| format!("reading the database {current:?}"))?
        .get(0);
    admin.batch_execute(&format!("ALTER DATABASE {cur} WITH ALLOW_CONNECTIONS false")).await?;
    let mut renamed = Err(anyhow::anyhow!("not tried"));
    for _ in 0..20 {
        admin
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                &[&current],
            )
            .await?;
        match admin.batch_execute(&format!("ALTER DATABASE {cur} RENAME TO {side}")).await {
            Ok(()) => {
                renamed = Ok(());
                break;
            }
            Err(e) => renamed = Err(anyhow::Error::new(e)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Err(e) = renamed {
        let _ = admin.batch_execute(&format!("ALTER DATABASE {cur} WITH ALLOW_CONNECTIONS {allowed}")).await;
        return Err(e.context(format!("{current:?} still has sessions that do not end; it was left as it was")));
    }
    if let Err(e) = admin.batch_execute(&format!("ALTER DATABASE {inc} RENAME TO {cur}")).await {
        // put the old one back
        let back = admin.batch_execute(&format!("ALTER DATABASE {side} RENAME TO {cur}")).await;
        let _ = admin.batch_execute(&format!("ALTER DATABASE {cur} WITH ALLOW_CONNECTIONS {allowed}")).await;
        return Err(anyhow::Error::new(e).context(match back {
            Ok(()) => format!("{current:?} was left as it was"),
            Err(b) => format!("and renaming {aside:?} back to {current:?} failed too ({b}): rename it by hand"),
        }));
    }
    admin.batch_execute(&format!("ALTER DATABASE {side} WITH ALLOW_CONNECTIONS {allowed}")).await?;
    Ok(())
}

/// What `rollback` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolledBack {
    pub database: String,
    /// The kept database that has the name again.
    pub restored_from: String,
    /// Where the database that was swapped out went.
    pub set_aside_as: String,
}

/// The databases `--replace` kept for `target`, newest first.
async fn kept(admin: &Client, target: &str) -> Result<Vec<String>> {
    let rows = admin.query("select datname::text from pg_database where strpos(datname, '_pre_') > 0", &[]).await?;
    let mut out: Vec<(String, String)> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter_map(|n| {
            let (_, id) = n.rsplit_once("_pre_")?;
            (crate::repo::keys::looks_like_backup_id(id) && kept_name(target, id) == n)
                .then(|| (id.to_owned(), n.clone()))
        })
        .collect();
    out.sort();
    Ok(out.into_iter().rev().map(|(_, n)| n).collect())
}

/// Swaps the newest database `--replace` kept for `target` (or `from`) back in; the database
/// swapped out is kept as `<name>_rolled_back_<time>`.
pub async fn rollback(
    conn: &Connection,
    target: &str,
    from: Option<&str>,
    yes: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RolledBack> {
    let admin = pg::connect_admin(conn).await?;
    let kept = kept(&admin, target).await?;
    let from = match from {
        Some(f) if kept.iter().any(|k| k == f) => f.to_owned(),
        Some(f) => refuse!("{f:?} is not a database kept by `restore --replace` of {target:?} (kept: {})", list(&kept)),
        None => match kept.first() {
            Some(k) => k.clone(),
            None => refuse!("no database kept by `restore --replace` of {target:?} on {}:{}", conn.host, conn.port),
        },
    };
    if !yes {
        refuse!(
            "rollback terminates the connections to {target:?} and swaps {from:?} back in (the current one is kept): add \
             --yes to confirm"
        );
    }
    let aside = fit(target, &format!("_rolled_back_{}", now.format("%Y%m%dT%H%M%SZ")));
    if !pg::database_exists(&admin, target).await? {
        admin
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&from), quote_ident(target)))
            .await?;
        return Ok(RolledBack { database: target.into(), restored_from: from, set_aside_as: String::new() });
    }
    if pg::database_exists(&admin, &aside).await? {
        bail!("a database {aside:?} is already there: try again in a second");
    }
    rename_pair(&admin, target, &from, &aside)
        .await
        .with_context(|| format!("swapping {from:?} back in for {target:?}"))?;
    Ok(RolledBack { database: target.into(), restored_from: from, set_aside_as: aside })
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_in_63_bytes() {
        let id = "20261201T230021Z-full-945aa8";
        assert_eq!(super::kept_name("app", id), "app_pre_20261201T230021Z-full-945aa8");
        let long = "a".repeat(60);
        assert_eq!(super::kept_name(&long, id).len(), 63);
        assert!(super::kept_name(&long, id).ends_with(id));
        assert_eq!(super::staging_name("app"), "app_pgbackd_replacing");
    }
}
