//! Reads typed values out of a [`Node`] tree, collecting every problem with its path and location.
//!
//! `${VAR}` and `${VAR:-default}` are resolved here, inside scalars only (never over the file's
//! text, which could change the YAML structure); `$$` is a literal `$`.

use super::node::{Loc, Node, Value};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One configuration problem: the dotted path of the field, what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
    pub loc: Option<Loc>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(top level)" } else { &self.path };
        write!(f, "{path}: {}", self.message)?;
        if let Some(loc) = self.loc
            && loc.line > 0
        {
            write!(f, " ({loc})")?;
        }
        Ok(())
    }
}

/// Looks up environment variables; injectable so tests do not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub struct Ctx<'a> {
    env: EnvLookup<'a>,
    issues: RefCell<Vec<ConfigIssue>>,
    /// Inside a section that is switched off, unset variables are not errors.
    lenient_vars: Cell<bool>,
    secret_files: RefCell<Vec<PathBuf>>,
    warnings: RefCell<Vec<String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(env: EnvLookup<'a>) -> Self {
        Ctx {
            env,
            issues: RefCell::new(Vec::new()),
            lenient_vars: Cell::new(false),
            secret_files: RefCell::default(),
            warnings: RefCell::default(),
        }
    }

    /// Something the config says that does nothing, or may not mean what it says: logged at load.
    pub fn warn(&self, path: &str, message: impl Into<String>, loc: Option<Loc>) {
        let at = loc.map(|l| format!(" ({l})")).unwrap_or_default();
        self.warnings.borrow_mut().push(format!("{path}: {}{at}", message.into()));
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.borrow().clone()
    }

    pub fn error(&self, path: &str, message: impl Into<String>, loc: Option<Loc>) {
        self.issues.borrow_mut().push(ConfigIssue { path: path.to_owned(), message: message.into(), loc });
    }

    /// Remembers a file that holds a secret (its permissions are checked after loading).
    pub fn note_secret_file(&self, path: &std::path::Path) {
        self.secret_files.borrow_mut().push(path.to_owned());
    }

    pub fn secret_files(&self) -> Vec<PathBuf> {
        self.secret_files.borrow().clone()
    }

    pub fn into_issues(self) -> Vec<ConfigIssue> {
        self.issues.into_inner()
    }

    pub fn has_errors(&self) -> bool {
        !self.issues.borrow().is_empty()
    }

    /// Runs `f` with unset variables tolerated (for sections with `enabled: false`).
    pub fn lenient<T>(&self, on: bool, f: impl FnOnce() -> T) -> T {
        let before = self.lenient_vars.replace(on || self.lenient_vars.get());
        let out = f();
        self.lenient_vars.set(before);
        out
    }

    /// The scalar's text with variables resolved; `None` (after recording an error) otherwise.
    /// `Ok(None)` means an unset variable inside a lenient section.
    fn scalar_text(&self, node: &Node) -> Result<Option<String>, String> {
        match &node.value {
            Value::Str(s) => match interpolate(s, self.env) {
                Ok(v) => Ok(Some(v)),
                Err(VarError::Unset(_)) if self.lenient_vars.get() => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            Value::Int(i) => Ok(Some(i.to_string())),
            Value::Float(f) => Ok(Some(f.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(format!("expected a single value, found {}", other.kind())),
        }
    }

    /// Reads a node as `T`, recording an error at `path` on failure.
    pub fn read<T: FromNode>(&self, node: &Node, path: &str) -> Option<T> {
        match T::from_node(node, self) {
            Ok(Some(v)) => Some(v),
            Ok(None) => None,
            Err(msg) => {
                self.error(path, msg, Some(node.loc));
                None
            }
        }
    }

    /// Opens a mapping node for field-by-field reading.
    pub fn map<'n>(&'a self, node: &'n Node, path: &str) -> Option<MapReader<'a, 'n>> {
        match &node.value {
            Value::Map(entries) => Some(MapReader {
                ctx: self,
                path: path.to_owned(),
                entries,
                used: vec![false; entries.len()],
                asked: Vec::new(),
                loc: node.loc,
            }),
            Value::Null => Some(MapReader {
                ctx: self,
                path: path.to_owned(),
                entries: &[],
                used: vec![],
                asked: Vec::new(),
                loc: node.loc,
            }),
            other => {
                self.error(path, format!("expected a mapping, found {}", other.kind()), Some(node.loc));
                None
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum VarError {
    Unset(String),
    Malformed(String),
    Newline(String),
}

impl fmt::Display for VarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarError::Unset(v) => write!(f, "environment variable {v} is not set (set it, or write ${{{v}:-default}})"),
            VarError::Malformed(s) => write!(
                f,
                "malformed variable reference in {s:?} (write ${{NAME}} or ${{NAME:-default}}; $$ for a literal $)"
            ),
            VarError::Newline(v) => write!(f, "environment variable {v} contains a newline, which is not allowed here"),
        }
    }
}

/// Resolves `${NAME}`, `${NAME:-default}` and `$$` in one scalar.
pub fn interpolate(s: &str, env: EnvLookup<'_>) -> Result<String, VarError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| VarError::Malformed(s.to_owned()))?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(VarError::Malformed(s.to_owned()));
            }
            let value = match (env)(name).filter(|v| !(v.is_empty() && default.is_some())) {
                Some(v) => v,
                None => match default {
                    Some(d) => d.to_owned(),
                    None => return Err(VarError::Unset(name.to_owned())),
                },
            };
            if value.contains('\n') {
                return Err(VarError::Newline(name.to_owned()));
            }
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            // A lone `$` not followed by `{` or `$` is literal (e.g. in a cron-free password).
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A mapping being read field by field; `finish` reports the keys nobody asked for.
pub struct MapReader<'a, 'n> {
    ctx: &'a Ctx<'a>,
    path: String,
    entries: &'n [(Node, Node)],
    used: Vec<bool>,
    /// Every key the reader asked for: the known keys, for "did you mean" hints.
    asked: Vec<String>,
    loc: Loc,
}

impl<'a, 'n> MapReader<'a, 'n> {
    pub fn ctx(&self) -> &'a Ctx<'a> {
        self.ctx
    }

    pub fn loc(&self) -> Loc {
        self.loc
    }

    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// The node under `key`; `None` when absent or null.
    pub fn node(&mut self, key: &str) -> Option<&'n Node> {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_owned());
        }
        let idx = self.entries.iter().position(|(k, _)| k.key_text() == key)?;
        self.used[idx] = true;
        let node = &self.entries[idx].1;
        (!matches!(node.value, Value::Null)).then_some(node)
    }

    /// Where `key`'s value is, else where the mapping is.
    pub fn loc_of(&self, key: &str) -> Loc {
        self.entries.iter().find(|(k, _)| k.key_text() == key).map(|(_, v)| v.loc).unwrap_or(self.loc)
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, v)| k.key_text() == key && !matches!(v.value, Value::Null))
    }

    pub fn opt<T: FromNode>(&mut self, key: &str) -> Option<T> {
        let node = self.node(key)?;
        self.ctx.read(node, &self.child_path(key))
    }

    pub fn req<T: FromNode>(&mut self, key: &str) -> Option<T> {
        if !self.has(key) {
            self.ctx.error(&self.child_path(key), "is required", Some(self.loc));
            // mark as used so it is not also reported as unknown
            let _ = self.node(key);
            return None;
        }
        self.opt(key)
    }

    /// A nested mapping (absent or null gives an empty one).
    pub fn map(&mut self, key: &str) -> Option<MapReader<'a, 'n>> {
        let path = self.child_path(key);
        match self.node(key) {
            Some(node) => self.ctx.map(node, &path),
            None => {
                Some(MapReader { ctx: self.ctx, path, entries: &[], used: vec![], asked: Vec::new(), loc: self.loc })
            }
        }
    }

    /// The raw entries of a free-form mapping (e.g. `schedules:`), all marked used.
    pub fn entries(&mut self) -> &'n [(Node, Node)] {
        self.used.iter_mut().for_each(|u| *u = true);
        self.entries
    }

    /// Reports every key that was not read, with the closest known key as a hint.
    pub fn finish(self) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if !self.used[i] {
                let key = k.key_text();
                let hint = self
                    .asked
                    .iter()
                    .map(|known| (edit_distance(&key, known), known))
                    .filter(|(d, _)| *d <= 2)
                    .min()
                    .map(|(_, known)| format!("; did you mean {known:?}?"))
                    .or_else(|| {
                        // what other tools call it
                        let synonym = SYNONYMS.iter().find(|(other, _)| *other == key).map(|(_, ours)| *ours)?;
                        self.asked.iter().any(|a| a == synonym).then(|| format!("; pgbackd calls it {synonym:?}"))
                    })
                    .unwrap_or_else(|| " (see docs/configuration.md)".into());
                self.ctx.error(&self.child_path(&key), format!("unknown key{hint}"), Some(k.loc));
            }
        }
    }
}

/// Keys other backup tools use, and ours: a hint where edit distance cannot find one.
const SYNONYMS: &[(&str, &str)] = &[
    ("targets", "storage"),
    ("repositories", "storage"),
    ("repository", "local_backup_dir"),
    ("repo", "local_backup_dir"),
    ("backup_dir", "local_backup_dir"),
    ("databases", "database"),
    ("user", "username"),
    ("dbname", "database"),
    ("host_name", "host"),
    ("cron", "schedules"),
    ("schedule", "schedules"),
    ("keep", "retention"),
    ("alerts", "notifications"),
    ("s3", "storage"),
    ("encrypt", "encryption"),
];

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Conversion from a node; `Ok(None)` means "unset variable in a lenient section".
pub trait FromNode: Sized {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String>;
}

impl FromNode for String {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        ctx.scalar_text(node)
    }
}

impl FromNode for PathBuf {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        match ctx.scalar_text(node)? {
            Some(s) if s.trim().is_empty() => Err("expected a path, found an empty string".into()),
            Some(s) => Ok(Some(PathBuf::from(s))),
            None => Ok(None),
        }
    }
}

impl FromNode for bool {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        if let Value::Bool(b) = node.value {
            return Ok(Some(b));
        }
        match ctx.scalar_text(node)?.as_deref() {
            None => Ok(None),
            Some("true" | "yes" | "on") => Ok(Some(true)),
            Some("false" | "no" | "off") => Ok(Some(false)),
            Some(other) => Err(format!("expected true or false, found {other:?}")),
        }
    }
}

macro_rules! int_from_node {
    ($($t:ty),*) => {$(
        impl FromNode for $t {
            fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
                let Some(text) = ctx.scalar_text(node)? else { return Ok(None) };
                let n: i128 = text.trim().parse().map_err(|_| format!("expected an integer, found {text:?}"))?;
                <$t>::try_from(n).map(Some).map_err(|_| {
                    format!("{n} is out of range {}..={}", <$t>::MIN, <$t>::MAX)
                })
            }
        }
    )*};
}
int_from_node!(u8, u16, u32, u64, usize, i32, i64);

impl FromNode for f64 {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = ctx.scalar_text(node)? else {
            return Ok(None);
        };
        text.trim().parse().map(Some).map_err(|_| format!("expected a number, found {text:?}"))
    }
}

impl<T: FromNode> FromNode for Vec<T> {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(v) = T::from_node(item, ctx)? {
                        out.push(v);
                    }
                }
                Ok(Some(out))
            }
            // A single value stands for a one-element list.
            _ => Ok(T::from_node(node, ctx)?.map(|v| vec![v])),
        }
    }
}

/// A duration written as `30s`, `10m`, `6h`, `1d`, `500ms` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("expected a duration like 30s, 10m, 6h or 7d, found {text:?}"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" => n / 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86400.0,
        "w" | "week" | "weeks" => n * 7.0 * 86400.0,
        u => {
            return Err(format!("unknown duration unit {u:?} in {text:?} (use ms, s, m, h, d or w)"));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl FromNode for Dur {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = ctx.scalar_text(node)? else {
            return Ok(None);
        };
        parse_duration(&text).map(|d| Some(Dur(d)))
    }
}

/// A byte size written as `8MiB`, `500GiB`, `1GB`, `64k` or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("expected a size like 8MiB or 500GiB, found {text:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        u => {
            return Err(format!("unknown size unit {u:?} in {text:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"));
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("invalid size {text:?}"));
    }
    Ok(v as u64)
}

impl FromNode for ByteSize {
    fn from_node(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Self>, String> {
        let Some(text) = ctx.scalar_text(node)? else {
            return Ok(None);
        };
        parse_byte_size(&text).map(|b| Some(ByteSize(b)))
    }
}

/// Implements [`FromNode`] for a fieldless enum from a list of accepted spellings.
#[macro_export]
macro_rules! enum_from_node {
    ($t:ty, $what:literal, { $($name:literal => $variant:expr),+ $(,)? }) => {
        impl $crate::config::reader::FromNode for $t {
            fn from_node(
                node: &$crate::config::node::Node,
                ctx: &$crate::config::reader::Ctx<'_>,
            ) -> Result<Option<Self>, String> {
                let Some(text) = <String as $crate::config::reader::FromNode>::from_node(node, ctx)? else {
                    return Ok(None);
                };
                match text.as_str() {
                    $($name => Ok(Some($variant)),)+
                    other => Err(format!(
                        concat!("expected ", $what, " (one of: {}), found {:?}"),
                        [$($name),+].join(", "),
                        other
                    )),
                }
            }
        }
    };
}

/// The items of a list under `key`, each read by `item` with its path (`key[i]`); anything
/// but a list is an error.
pub fn read_list<T>(
    top: &mut MapReader<'_, '_>,
    key: &str,
    item: impl Fn(&Ctx<'_>, &Node, &str) -> Option<T>,
) -> Vec<T> {
    let ctx = top.ctx();
    let path = top.child_path(key);
    let mut out = Vec::new();
    if let Some(list) = top.node(key) {
        match &list.value {
            Value::Seq(items) => {
                for (i, node) in items.iter().enumerate() {
                    out.extend(item(ctx, node, &format!("{path}[{i}]")));
                }
            }
            other => ctx.error(&path, format!("expected a list, found {}", other.kind()), Some(list.loc)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("${PW}", &env).unwrap(), "s3cret");
        assert_eq!(interpolate("x-${PW}-y", &env).unwrap(), "x-s3cret-y");
        assert_eq!(interpolate("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("$$HOME", &env).unwrap(), "$HOME");
        assert_eq!(interpolate("a$b", &env).unwrap(), "a$b");
        assert_eq!(interpolate("${NOPE}", &env).unwrap_err(), VarError::Unset("NOPE".into()));
        assert!(matches!(interpolate("${PW", &env), Err(VarError::Malformed(_))));
        assert!(matches!(interpolate("${1X}", &env), Err(VarError::Malformed(_))));
        assert_eq!(interpolate("${NL}", &env).unwrap_err(), VarError::Newline("NL".into()));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(parse_byte_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_byte_size("1 KiB").unwrap(), 1024);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("512").unwrap(), 512);
        assert!(parse_byte_size("lots").is_err());
    }
}
