//! Secrets: values that never print. Debug and Display show `***`; and every string pgbackd
//! logs, prints or reports goes through [`redact`], which replaces each configured secret value
//! (and the parts of secret URLs a server may echo back, such as a webhook's path) with `***`.

use std::borrow::Cow;
use std::fmt;
use std::sync::RwLock;

/// Values shorter than this are not redacted (they would mask ordinary words); a config's
/// secrets are longer.
const MIN_REDACTED: usize = 6;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds the values of `secrets` to what [`redact`] masks: each whole value, and for a URL its
/// user info, its path and its query values (a server may echo any of them in an error).
pub fn register<'a>(secrets: impl IntoIterator<Item = &'a Secret>) {
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    for s in secrets {
        for part in parts(s.expose()) {
            if part.len() >= MIN_REDACTED && !known.contains(&part) {
                known.push(part);
            }
        }
    }
    // longest first, so a URL goes whole before its path does
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// A value and what a server may echo of it.
fn parts(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    if let Some((_, rest)) = value.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            out.push(userinfo.to_owned());
            out.extend(userinfo.split_once(':').map(|(_, pw)| pw.to_owned()));
        }
        if !path.is_empty() {
            out.push(format!("/{path}"));
            out.push(path.to_owned());
            let (p, query) = path.split_once('?').unwrap_or((path, ""));
            out.push(format!("/{p}"));
            out.push(p.to_owned());
            out.extend(query.split('&').filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_owned())));
        }
    }
    // as JSON writes it, and as a URL encodes it
    let escaped: Vec<String> = out.iter().map(|v| serde_json::to_string(v).unwrap_or_default()).collect();
    out.extend(escaped.into_iter().map(|e| e.trim_matches('"').to_owned()));
    out
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| text.contains(k.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), "***");
        }
    }
    Cow::Owned(out)
}

/// A writer that redacts what passes through it (whole lines at a time, as log lines are
/// written).
pub struct Redacting<W>(pub W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes()).map(|()| buf.len()),
            Err(_) => self.0.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself: only for handing to a child's environment or a network client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_and_what_servers_echo_of_them_are_redacted() {
        super::register([
            &super::Secret::new("pg-Pa55word"),
            &super::Secret::new("https://hooks.example.com/services/T000/B000/XXXXSECRET?token=q1w2e3r4"),
            &super::Secret::new("abc"),
        ]);
        let text = "auth failed for pg-Pa55word; 404 for /services/T000/B000/XXXXSECRET?token=q1w2e3r4 and \
                    services/T000/B000/XXXXSECRET; token q1w2e3r4; abc stays";
        let out = super::redact(text);
        assert!(!out.contains("Pa55word") && !out.contains("XXXXSECRET") && !out.contains("q1w2e3r4"), "{out}");
        assert!(out.contains("abc stays"), "short values are not masked: {out}");
        assert_eq!(super::redact("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn never_prints() {
        let s = super::Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
