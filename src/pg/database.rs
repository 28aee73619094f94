//! A database's own properties, which live outside its dump: encoding, collation and ctype (or
//! the ICU locale), connection limit, owner, comment, ACL, `ALTER DATABASE ... SET` and
//! `ALTER ROLE ... IN DATABASE ... SET` settings. Read when a backup is taken, recorded in the
//! manifest, used to create the database a restore writes into (as `pg_restore --create` would,
//! under any name), applied once the restore is done, and compared afterwards.

use super::quote_ident;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `libc` or `icu` (PostgreSQL 15+; `libc` before).
    pub locale_provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_locale: Option<String>,
    /// -1: no limit.
    pub connection_limit: i32,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `datacl` items (`grantee=privileges/grantor`); `None` is the default ACL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// `ALTER DATABASE ... SET`: `name=value` as the server stores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// `ALTER ROLE r IN DATABASE ... SET`, per role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_settings: Vec<RoleSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSettings {
    pub role: String,
    pub settings: Vec<String>,
}

/// What a restore asks to be different from the recorded properties (a target server without
/// the source's locale), and what it leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub encoding: Option<String>,
    /// Both collation and ctype.
    pub locale: Option<String>,
    pub icu_locale: Option<String>,
    /// Leave the owner to the restoring user (`--no-owner`).
    pub no_owner: bool,
    /// Leave the ACL at the default (`--no-privileges`).
    pub no_privileges: bool,
}

impl DatabaseProperties {
    /// The properties of the database `client` is connected to.
    pub async fn read(client: &Client, server_version_num: u32) -> Result<DatabaseProperties> {
        let (provider, icu) = match server_version_num {
            v if v >= 170000 => ("d.datlocprovider::text", "d.datlocale"),
            v if v >= 150000 => ("d.datlocprovider::text", "d.daticulocale"),
            _ => ("'c'", "null::text"),
        };
        let row = client
            .query_one(
                &format!(
                    "select pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, {provider}, {icu}, \
                     d.datconnlimit, pg_get_userbyid(d.datdba)::text, shobj_description(d.oid, 'pg_database'), \
                     d.datacl::text[], \
                     coalesce((select s.setconfig from pg_db_role_setting s where s.setdatabase = d.oid and s.setrole = 0), '{{}}') \
                     from pg_database d where d.datname = current_database()"
                ),
                &[],
            )
            .await
            .context("reading the database's properties (encoding, locale, settings, ACL)")?;
        let provider: String = row.get(3);
        let roles = client
            .query(
                "select r.rolname::text, s.setconfig from pg_db_role_setting s join pg_roles r on r.oid = s.setrole \
                 join pg_database d on d.oid = s.setdatabase where d.datname = current_database() order by 1",
                &[],
            )
            .await
            .context("reading the per-role settings of the database")?;
        Ok(DatabaseProperties {
            encoding: row.get(0),
            collate: row.get(1),
            ctype: row.get(2),
            locale_provider: if provider == "i" { "icu".into() } else { "libc".into() },
            icu_locale: row.get(4),
            connection_limit: row.get(5),
            owner: row.get(6),
            comment: row.get(7),
            acl: row.get(8),
            settings: row.get(9),
            role_settings: roles.iter().map(|r| RoleSettings { role: r.get(0), settings: r.get(1) }).collect(),
        })
    }

    /// These properties as `o` changes them: what the restored database should have.
    pub fn expected(&self, o: &Overrides) -> DatabaseProperties {
        let mut p = self.clone();
        if let Some(e) = &o.encoding {
            p.encoding = e.to_uppercase();
        }
        if let Some(l) = &o.locale {
            p.collate = l.clone();
            p.ctype = l.clone();
        }
        if let Some(l) = &o.icu_locale {
            p.locale_provider = "icu".into();
            p.icu_locale = Some(l.clone());
        }
        p
    }

    /// `CREATE DATABASE name` with these properties' encoding, locale and connection limit, from
    /// template0 (as pg_restore --create does); the owner and the rest come with [`apply`].
    pub fn create_statement(&self, name: &str) -> String {
        let mut sql = format!(
            "CREATE DATABASE {} WITH TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(name),
            literal(&self.encoding),
            literal(&self.collate),
            literal(&self.ctype)
        );
        if self.locale_provider == "icu" {
            sql.push_str(" LOCALE_PROVIDER icu");
            if let Some(l) = &self.icu_locale {
                sql.push_str(&format!(" ICU_LOCALE {}", literal(l)));
            }
        }
        if self.connection_limit != -1 {
            sql.push_str(&format!(" CONNECTION LIMIT {}", self.connection_limit));
        }
        sql
    }

    /// Gives database `name` its owner, comment, ACL and settings (connected to any database of
    /// the server, as a user allowed to). Each statement that fails (a role the target server
    /// lacks) is returned as a warning; the rest are applied.
    pub async fn apply(&self, client: &Client, name: &str, o: &Overrides) -> Vec<String> {
        let db = quote_ident(name);
        let mut statements = Vec::new();
        if !o.no_owner {
            statements.push(format!("ALTER DATABASE {db} OWNER TO {}", quote_ident(&self.owner)));
        }
        if let Some(c) = &self.comment {
            statements.push(format!("COMMENT ON DATABASE {db} IS {}", literal(c)));
        }
        if let (Some(acl), false) = (&self.acl, o.no_privileges) {
            let owner = if o.no_owner { "CURRENT_USER".to_owned() } else { quote_ident(&self.owner) };
            statements.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
            statements.push(format!("REVOKE ALL ON DATABASE {db} FROM {owner}"));
            for item in acl {
                statements.extend(grant_statements(item, &db, o.no_owner.then_some(self.owner.as_str())));
            }
        }
        let mut warnings = Vec::new();
        for s in statements {
            if let Err(e) = client.batch_execute(&s).await {
                warnings.push(format!("database property not restored: {s}: {}", db_error(&e)));
            }
        }
        for setting in &self.settings {
            if let Err(e) = set(client, &format!("DATABASE {db}"), setting).await {
                warnings.push(format!("database setting {setting:?} not restored: {e:#}"));
            }
        }
        for r in &self.role_settings {
            for setting in &r.settings {
                let target = format!("ROLE {} IN DATABASE {db}", quote_ident(&r.role));
                if let Err(e) = set(client, &target, setting).await {
                    warnings
                        .push(format!("setting {setting:?} of role {} in the database not restored: {e:#}", r.role));
                }
            }
        }
        warnings
    }

    /// How `found` (the restored database) differs from these (the expected) properties, in
    /// words; empty when it does not. The owner is not compared with `no_owner`, the ACL not
    /// with `no_privileges`.
    pub fn differences(&self, found: &DatabaseProperties, o: &Overrides) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, want: String, got: String| {
            if want != got {
                out.push(format!("{what}: the backup has {want}, the restored database {got}"));
            }
        };
        cmp("encoding", self.encoding.clone(), found.encoding.clone());
        cmp("LC_COLLATE", self.collate.clone(), found.collate.clone());
        cmp("LC_CTYPE", self.ctype.clone(), found.ctype.clone());
        cmp("locale provider", self.locale_provider.clone(), found.locale_provider.clone());
        cmp("ICU locale", show(&self.icu_locale), show(&found.icu_locale));
        cmp("connection limit", self.connection_limit.to_string(), found.connection_limit.to_string());
        if !o.no_owner {
            cmp("owner", self.owner.clone(), found.owner.clone());
        }
        cmp("comment", show(&self.comment), show(&found.comment));
        if !o.no_privileges {
            let acl = |a: &Option<Vec<String>>, owner: &str| {
                let mut items: Vec<String> = a
                    .iter()
                    .flatten()
                    .map(|i| i.split_once('/').map_or(i.as_str(), |(g, _)| g).to_owned())
                    .map(|i| if o.no_owner && i.starts_with(&format!("{owner}=")) { "<owner>".into() } else { i })
                    .collect();
                items.sort();
                items.join(", ")
            };
            cmp("ACL", acl(&self.acl, &self.owner), acl(&found.acl, &found.owner));
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.join("; ")
        };
        cmp("settings (ALTER DATABASE SET)", sorted(&self.settings), sorted(&found.settings));
        for r in &self.role_settings {
            let got =
                found.role_settings.iter().find(|f| f.role == r.role).map(|f| f.settings.as_slice()).unwrap_or(&[]);
            cmp(&format!("settings of role {} in the database", r.role), sorted(&r.settings), sorted(got));
        }
        out
    }
}

fn show(v: &Option<String>) -> String {
    v.as_ref().map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The server's message of `e` (without the "db error: ERROR:" wrapping), else `e` as it prints.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// `ALTER <target> SET name FROM CURRENT` after setting `name=value` in this session, so the
/// server parses the value as it stored it (lists such as search_path included).
async fn set(client: &Client, target: &str, setting: &str) -> Result<()> {
    let (name, value) = setting.split_once('=').context("not name=value")?;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
        "not a setting name"
    );
    let applied = async {
        client.execute("select pg_catalog.set_config($1, $2, false)", &[&name, &value]).await?;
        client.batch_execute(&format!("ALTER {target} SET {name} FROM CURRENT")).await
    }
    .await;
    let _ = client.batch_execute(&format!("RESET {name}")).await;
    applied.map_err(|e| anyhow::anyhow!(db_error(&e)))
}

/// The GRANTs of one ACL item (`grantee=privileges/grantor`, an empty grantee being PUBLIC); with
/// `owner_as_current`, the source owner's own item goes to the restoring user.
fn grant_statements(item: &str, db: &str, owner_as_current: Option<&str>) -> Vec<String> {
    let Some((grantee, rest)) = item.split_once('=') else { return Vec::new() };
    let privileges = rest.split_once('/').map_or(rest, |(p, _)| p);
    let grantee = match grantee.trim_matches('"') {
        "" => "PUBLIC".to_owned(),
        g if Some(g) == owner_as_current => "CURRENT_USER".to_owned(),
        g => quote_ident(&g.replace("\"\"", "\"")),
    };
    let mut plain = Vec::new();
    let mut with_option = Vec::new();
    let mut chars = privileges.chars().peekable();
    while let Some(c) = chars.next() {
        let name = match c {
            'C' => "CREATE",
            'T' => "TEMPORARY",
            'c' => "CONNECT",
            _ => continue,
        };
        if chars.peek() == Some(&'*') {
            chars.next();
            with_option.push(name);
        } else {
            plain.push(name);
        }
    }
    let mut out = Vec::new();
    if !plain.is_empty() {
        out.push(format!("GRANT {} ON DATABASE {db} TO {grantee}", plain.join(", ")));
    }
    if !with_option.is_empty() {
        out.push(format!("GRANT {} ON DATABASE {db} TO {grantee} WITH GRANT OPTION", with_option.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_items_become_grants() {
        assert_eq!(
            grant_statements("=Tc/app", "\"x\"", None),
            vec!["GRANT TEMPORARY, CONNECT ON DATABASE \"x\" TO PUBLIC"]
        );
        assert_eq!(
            grant_statements("app=C*Tc/app", "\"x\"", Some("app")),
            vec![
                "GRANT TEMPORARY, CONNECT ON DATABASE \"x\" TO CURRENT_USER",
                "GRANT CREATE ON DATABASE \"x\" TO CURRENT_USER WITH GRANT OPTION"
            ]
        );
        assert_eq!(
            grant_statements("\"odd role\"=c/app", "d", None),
            vec!["GRANT CONNECT ON DATABASE d TO \"odd role\""]
        );
    }

    #[test]
    fn the_create_statement_carries_encoding_locale_and_limit() {
        let p = DatabaseProperties {
            encoding: "LATIN1".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale_provider: "libc".into(),
            icu_locale: None,
            connection_limit: 5,
            owner: "app".into(),
            comment: Some("it's ours".into()),
            acl: None,
            settings: vec!["search_path=app, public".into()],
            role_settings: Vec::new(),
        };
        assert_eq!(
            p.create_statement("shop copy"),
            "CREATE DATABASE \"shop copy\" WITH TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' CONNECTION LIMIT 5"
        );
        let o = Overrides { locale: Some("en_US.utf8".into()), encoding: Some("utf8".into()), ..Overrides::default() };
        let e = p.expected(&o);
        assert_eq!((e.encoding.as_str(), e.collate.as_str()), ("UTF8", "en_US.utf8"));
        let mut found = e.clone();
        found.settings.clear();
        assert_eq!(
            e.differences(&found, &o),
            vec!["settings (ALTER DATABASE SET): the backup has search_path=app, public, the restored database "]
        );
    }
}
